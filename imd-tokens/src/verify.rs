//! Token decoding and verification: structure and size checks, algorithm
//! pinning, key selection by kid, signature and claim validation.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::{AUDIENCE, Claims, PublicKey, TokenError};

/// Longest token accepted (8 KiB). Real tokens are a few hundred bytes; the
/// cap keeps a hostile client from making us base64- and JSON-decode
/// megabytes on an unauthenticated endpoint.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;

const DEFAULT_LEEWAY: u64 = 60;

/// A decoded but unverified token: for inspection, or to find the kid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Claims,
}

struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

struct RawHeader {
    alg: String,
    kid: Option<String>,
    has_crit: bool,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::malformed(format!(
            "token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        )));
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(header), Some(payload), Some(signature), None)
            if !header.is_empty() && !payload.is_empty() =>
        {
            Ok(Parts {
                header,
                payload,
                signature,
            })
        }
        _ => Err(TokenError::malformed(
            "expected three dot-separated parts (header.payload.signature)",
        )),
    }
}

fn b64_part(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::malformed(format!("{what} is not base64url: {e}")))
}

fn parse_header(part: &str) -> Result<RawHeader, TokenError> {
    let bytes = b64_part(part, "header")?;
    let map: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::malformed(format!("header is not a JSON object: {e}")))?;
    let alg = match map.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(TokenError::malformed("header has no string alg")),
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::malformed("header kid is not a string")),
    };
    Ok(RawHeader {
        alg,
        kid,
        has_crit: map.contains_key("crit"),
    })
}

fn parse_claims(bytes: &[u8]) -> Result<Claims, TokenError> {
    serde_json::from_slice(bytes).map_err(|e| TokenError::malformed(format!("claims: {e}")))
}

/// Decodes header and claims WITHOUT checking the signature or any claim
/// value. Never use the result for an authorization decision.
///
/// Still enforces the size limit, the three-part structure, base64url in
/// every part and a complete, well-typed claim set.
pub fn decode_unverified(token: &str) -> Result<Unverified, TokenError> {
    let parts = split(token)?;
    let header = parse_header(parts.header)?;
    let claims = parse_claims(&b64_part(parts.payload, "payload")?)?;
    b64_part(parts.signature, "signature")?;
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        claims,
    })
}

/// Verifies tokens against a set of public keys; several kids may be valid
/// at once so keys can be rotated without invalidating deployed tokens.
#[derive(Clone)]
pub struct Verifier {
    // Several keys under one kid are all tried; that only happens if the
    // caller supplies them, and is safer than silently keeping one.
    keys: HashMap<String, Vec<DecodingKey>>,
    leeway: u64,
    issuer: Option<String>,
    validation: Validation,
}

impl Verifier {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Verifier {
        let mut map: HashMap<String, Vec<DecodingKey>> = HashMap::new();
        for key in keys {
            let list = map.entry(key.kid().to_owned()).or_default();
            let duplicate = list
                .iter()
                .any(|k| k.try_get_as_bytes().ok() == Some(&key.raw()[..]));
            if !duplicate {
                // With the aws_lc_rs backend, "ed der" accepts the raw 32-byte key.
                list.push(DecodingKey::from_ed_der(key.raw()));
            }
        }
        // jsonwebtoken only checks the signature; every claim rule is applied
        // below against the caller's `now`, so its clock-reading checks are off.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Verifier {
            keys: map,
            leeway: DEFAULT_LEEWAY,
            issuer: None,
            validation,
        }
    }

    /// Clock-skew allowance in seconds for `exp` and `iat` (default 60).
    pub fn with_leeway(mut self, seconds: u64) -> Verifier {
        self.leeway = seconds;
        self
    }

    /// Requires `iss` to equal `iss` exactly.
    pub fn with_issuer(mut self, iss: impl Into<String>) -> Verifier {
        self.issuer = Some(iss.into());
        self
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies `token` at time `now` (unix seconds, supplied by the caller so
    /// that verification is reproducible and testable).
    ///
    /// Checks, in order: size and structure, `alg` == EdDSA, `kid` known,
    /// signature, claim set complete, `aud`, `iss` (if configured), `exp`,
    /// `iat`. The token is used as given: surrounding whitespace is malformed.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let parts = split(token)?;
        let header = parse_header(parts.header)?;
        // Pinned before any key is touched, so alg confusion (HS256 keyed
        // with the public key, "none") can never reach a verifier.
        if header.alg != "EdDSA" {
            return Err(TokenError::WrongAlgorithm(header.alg));
        }
        if header.has_crit {
            return Err(TokenError::malformed(
                "header has critical extensions, none are supported",
            ));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey(None))?;
        let candidates = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(Some(kid.clone())))?;

        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_jwt_error(e)),
            }
        }
        let claims = claims.ok_or(TokenError::BadSignature)?;
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, now: i64) -> Result<(), TokenError> {
        if claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if let Some(iss) = &self.issuer
            && claims.iss != *iss
        {
            return Err(TokenError::WrongIssuer);
        }
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        // RFC 7519: the token is valid strictly before `exp`; leeway extends that.
        if let Some(exp) = claims.exp
            && now >= exp.saturating_add(leeway)
        {
            return Err(TokenError::Expired { exp });
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => TokenError::key(e.to_string()),
        // Everything else left after our own pre-checks is a decoding
        // failure (base64, JSON, claim types) of an authentic-looking token.
        _ => TokenError::malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImdVersion, SigningKey};
    use aws_lc_rs::signature::Ed25519KeyPair;
    use serde_json::json;

    const NOW: i64 = 1_750_000_000;
    const ISS: &str = "https://imd.example.com";

    fn claims() -> Claims {
        Claims::new(
            ISS,
            "org-42",
            "tok-1",
            ImdVersion::V4,
            NOW - 10,
            Some(NOW + 86_400),
        )
    }

    fn setup() -> (SigningKey, Verifier) {
        let key = SigningKey::generate("k1").unwrap();
        let verifier = Verifier::new([key.public_key()]);
        (key, verifier)
    }

    /// Signs arbitrary header/payload JSON with `key`, bypassing the typed
    /// API, to build tokens the signer would never produce.
    fn sign_raw(key: &SigningKey, header: &Value, payload: &Value) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let pair = Ed25519KeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
        format!(
            "{msg}.{}",
            URL_SAFE_NO_PAD.encode(pair.sign(msg.as_bytes()))
        )
    }

    fn kind(r: Result<Claims, TokenError>) -> &'static str {
        r.unwrap_err().kind()
    }

    #[test]
    fn sign_then_verify() {
        let (key, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        assert_eq!(verifier.verify(&token, NOW).unwrap(), claims());
        assert!(verifier.has_kid("k1"));
        assert!(!verifier.has_kid("k2"));
    }

    #[test]
    fn header_is_exactly_typ_alg_kid() {
        let (key, _) = setup();
        let token = key.sign(&claims()).unwrap();
        let header = token.split('.').next().unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header, json!({"typ":"JWT","alg":"EdDSA","kid":"k1"}));
    }

    #[test]
    fn signature_is_plain_ed25519_over_signing_input() {
        // Interop: any JOSE library verifies this with the raw public key.
        let (key, _) = setup();
        let token = key.sign(&claims()).unwrap();
        let (msg, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            key.public_key().raw(),
        )
        .verify(msg.as_bytes(), &sig)
        .unwrap();
    }

    #[test]
    fn jsonwebtoken_ed_key_constructors_with_aws_lc() {
        // Pins the backend behaviour we rely on: from_ed_der takes the raw
        // key (or an SPKI DER), from_ed_components the JWK x value.
        let (key, _) = setup();
        let token = key.sign(&claims()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        let pk = key.public_key();
        let x = pk.to_jwk()["x"].as_str().unwrap().to_owned();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pk.raw());
        for dk in [
            DecodingKey::from_ed_der(pk.raw()),
            DecodingKey::from_ed_components(&x).unwrap(),
            DecodingKey::from_ed_der(&spki),
        ] {
            let data = jsonwebtoken::decode::<Claims>(&token, &dk, &v).unwrap();
            assert_eq!(data.claims, claims());
        }
        let other = SigningKey::generate("k1").unwrap().public_key();
        let err =
            jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_ed_der(other.raw()), &v)
                .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidSignature));
    }

    #[test]
    fn signing_is_deterministic() {
        let (key, _) = setup();
        let a = key.sign(&claims()).unwrap();
        let b = key.sign(&claims()).unwrap();
        assert_eq!(a, b);
        let reloaded = SigningKey::from_pkcs8("k1", key.pkcs8_der()).unwrap();
        assert_eq!(reloaded.sign(&claims()).unwrap(), a);
        let mut other = claims();
        other.jti = "tok-2".into();
        assert_ne!(key.sign(&other).unwrap(), a);
    }

    #[test]
    fn fixed_key_gives_fixed_token() {
        // Regression guard for re-issuing: a dependency upgrade that changed
        // header or claim serialization would change every token string.
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let key = SigningKey::from_pkcs8("fixed", pair.to_pkcs8().unwrap().as_ref()).unwrap();
        let c = Claims::new(ISS, "org-1", "jti-1", ImdVersion::V5, 1_700_000_000, None);
        let token = key.sign(&c).unwrap();
        assert_eq!(token, EXPECTED_FIXED_TOKEN);
    }

    // Cross-checked with Python's `cryptography` Ed25519 from the same seed.
    const EXPECTED_FIXED_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6ImZpeGVkIn0.eyJpc3MiOiJodHRwczovL2ltZC5leGFtcGxlLmNvbSIsImF1ZCI6ImltZDphY3RpdmF0aW9uIiwic3ViIjoib3JnLTEiLCJqdGkiOiJqdGktMSIsImltZCI6InY1IiwiaWF0IjoxNzAwMDAwMDAwfQ.3kqHY6nk4kwXzv_wB9g3lf9a-dWCz5ZAttHQD3Y1Z14M3CDew2pHM1tVetft3OEnP88iUwfJMn2VM2PfiGQYBw";

    #[test]
    fn key_rotation_accepts_every_known_kid() {
        let old = SigningKey::generate("2024").unwrap();
        let new = SigningKey::generate("2025").unwrap();
        let verifier = Verifier::new([old.public_key(), new.public_key()]);
        for k in [&old, &new] {
            assert_eq!(
                verifier.verify(&k.sign(&claims()).unwrap(), NOW).unwrap(),
                claims()
            );
        }
    }

    #[test]
    fn same_kid_with_several_keys_tries_each() {
        let a = SigningKey::generate("k").unwrap();
        let b = SigningKey::generate("k").unwrap();
        let verifier = Verifier::new([a.public_key(), b.public_key(), a.public_key()]);
        assert!(verifier.verify(&a.sign(&claims()).unwrap(), NOW).is_ok());
        assert!(verifier.verify(&b.sign(&claims()).unwrap(), NOW).is_ok());
        let c = SigningKey::generate("k").unwrap();
        assert_eq!(
            kind(verifier.verify(&c.sign(&claims()).unwrap(), NOW)),
            "bad_signature"
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let (key, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        let (h, rest) = token.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        // Swap one payload char for another valid base64url char, mid-string
        // so the base64 stays canonical.
        let mut p = p.as_bytes().to_vec();
        let i = p.len() / 2;
        p[i] = if p[i] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{h}.{}.{s}", String::from_utf8(p).unwrap());
        assert_eq!(kind(verifier.verify(&tampered, NOW)), "bad_signature");

        // Re-encoded claims with a changed value, old signature.
        let mut c = claims();
        c.sub = "org-evil".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{h}.{forged_payload}.{s}");
        assert_eq!(kind(verifier.verify(&forged, NOW)), "bad_signature");

        // Flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        sig[0] ^= 1;
        let bad_sig = format!(
            "{h}.{}.{}",
            rest.split_once('.').unwrap().0,
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert_eq!(kind(verifier.verify(&bad_sig, NOW)), "bad_signature");

        // Truncated signature.
        let short = &token[..token.len() - 4];
        assert!(matches!(
            verifier.verify(short, NOW).unwrap_err().kind(),
            "bad_signature" | "malformed"
        ));
    }

    #[test]
    fn other_key_with_same_kid_is_bad_signature() {
        let (_, verifier) = setup();
        let impostor = SigningKey::generate("k1").unwrap();
        assert_eq!(
            verifier
                .verify(&impostor.sign(&claims()).unwrap(), NOW)
                .unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn swapping_kid_to_another_known_key_is_bad_signature() {
        let a = SigningKey::generate("a").unwrap();
        let b = SigningKey::generate("b").unwrap();
        let verifier = Verifier::new([a.public_key(), b.public_key()]);
        let token = a.sign(&claims()).unwrap();
        let payload_sig = token.split_once('.').unwrap().1;
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"EdDSA","kid":"b"}"#);
        assert_eq!(
            kind(verifier.verify(&format!("{header}.{payload_sig}"), NOW)),
            "bad_signature"
        );
    }

    #[test]
    fn unknown_or_missing_kid() {
        let (_, verifier) = setup();
        let stranger = SigningKey::generate("k9").unwrap();
        assert_eq!(
            verifier
                .verify(&stranger.sign(&claims()).unwrap(), NOW)
                .unwrap_err(),
            TokenError::UnknownKey(Some("k9".into()))
        );
        let (key, verifier) = setup();
        let no_kid = sign_raw(
            &key,
            &json!({"alg":"EdDSA","typ":"JWT"}),
            &serde_json::to_value(claims()).unwrap(),
        );
        assert_eq!(
            verifier.verify(&no_kid, NOW).unwrap_err(),
            TokenError::UnknownKey(None)
        );
        let numeric_kid = sign_raw(
            &key,
            &json!({"alg":"EdDSA","kid":1}),
            &serde_json::to_value(claims()).unwrap(),
        );
        assert_eq!(kind(verifier.verify(&numeric_kid, NOW)), "malformed");
        // An empty verifier knows nothing.
        let token = key.sign(&claims()).unwrap();
        assert_eq!(kind(Verifier::new([]).verify(&token, NOW)), "unknown_key");
    }

    #[test]
    fn other_algorithms_are_never_accepted() {
        let (key, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        let payload = rest.split_once('.').unwrap().0;

        // alg=none with and without a signature part.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        for t in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{rest}"),
        ] {
            assert_eq!(
                verifier.verify(&t, NOW).unwrap_err(),
                TokenError::WrongAlgorithm("none".into())
            );
        }

        // Classic confusion: HS256 keyed with the public key bytes.
        let mut hs = jsonwebtoken::Header::new(Algorithm::HS256);
        hs.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(
            &hs,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(key.public_key().raw()),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&forged, NOW).unwrap_err(),
            TokenError::WrongAlgorithm("HS256".into())
        );

        for alg in ["RS256", "ES256", "eddsa", "EdDSA ", "Ed25519"] {
            let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "k1"}).to_string());
            let t = format!("{h}.{rest}");
            assert_eq!(
                verifier.verify(&t, NOW).unwrap_err(),
                TokenError::WrongAlgorithm(alg.into()),
                "{alg}"
            );
        }

        let no_alg = URL_SAFE_NO_PAD.encode(r#"{"kid":"k1"}"#);
        assert_eq!(
            kind(verifier.verify(&format!("{no_alg}.{rest}"), NOW)),
            "malformed"
        );
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let (key, verifier) = setup();
        let t = sign_raw(
            &key,
            &json!({"alg":"EdDSA","kid":"k1","crit":["b64"],"b64":false}),
            &serde_json::to_value(claims()).unwrap(),
        );
        assert_eq!(kind(verifier.verify(&t, NOW)), "malformed");
    }

    #[test]
    fn garbage_is_malformed() {
        let (key, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        let garbage = [
            String::new(),
            "abc".into(),
            "a.b".into(),
            "..".into(),
            "a.b.c.d".into(),
            format!("{token}.x"),
            format!(" {token}"),
            format!("{token}\n"),
            "!!!.???.***".into(),
            // Header that is JSON but not an object.
            format!("{}.e30.AA", URL_SAFE_NO_PAD.encode("[1]")),
            "\u{fffd}.\u{0}.x".into(),
        ];
        // Header fine, but no claims at all: inspection must refuse it too.
        assert_eq!(
            decode_unverified("eyJhbGciOiJFZERTQSJ9.e30.")
                .unwrap_err()
                .kind(),
            "malformed"
        );
        for g in &garbage {
            assert_eq!(kind(verifier.verify(g, NOW)), "malformed", "{g:?}");
            assert_eq!(
                decode_unverified(g).unwrap_err().kind(),
                "malformed",
                "{g:?}"
            );
        }
    }

    #[test]
    fn oversized_tokens_are_malformed_even_if_signed() {
        let (key, verifier) = setup();
        let mut c = serde_json::to_value(claims()).unwrap();
        c["jti"] = json!("x".repeat(MAX_TOKEN_LEN));
        let big = sign_raw(&key, &json!({"alg":"EdDSA","kid":"k1"}), &c);
        assert!(big.len() > MAX_TOKEN_LEN);
        let err = verifier.verify(&big, NOW).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert_eq!(decode_unverified(&big).unwrap_err().kind(), "malformed");
        // The signer refuses to produce such a token in the first place.
        let mut typed = claims();
        typed.jti = "x".repeat(MAX_TOKEN_LEN);
        assert_eq!(key.sign(&typed).unwrap_err().kind(), "malformed");
        // Pure junk over the limit is refused before any parsing.
        assert_eq!(
            kind(verifier.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW)),
            "malformed"
        );
    }

    #[test]
    fn incomplete_or_mistyped_claims_are_malformed_after_signature() {
        let (key, verifier) = setup();
        let header = json!({"alg":"EdDSA","kid":"k1"});
        let full = serde_json::to_value(claims()).unwrap();
        for field in ["imd", "jti", "iss", "sub", "aud", "iat"] {
            let mut c = full.clone();
            c.as_object_mut().unwrap().remove(field);
            let err = verifier
                .verify(&sign_raw(&key, &header, &c), NOW)
                .unwrap_err();
            assert_eq!(err.kind(), "malformed", "{field}");
            assert!(err.to_string().contains(field), "{err}");
        }
        for (field, bad) in [
            ("imd", json!("v3")),
            ("iat", json!("now")),
            ("iat", json!(1.5)),
            ("exp", json!("later")),
            ("aud", json!(["imd:activation"])),
        ] {
            let mut c = full.clone();
            c[field] = bad;
            assert_eq!(
                kind(verifier.verify(&sign_raw(&key, &header, &c), NOW)),
                "malformed",
                "{field}"
            );
        }
        let not_object = sign_raw(&key, &header, &json!("claims"));
        assert_eq!(kind(verifier.verify(&not_object, NOW)), "malformed");
        // Extra claims are tolerated.
        let mut c = full;
        c["extra"] = json!(true);
        assert!(verifier.verify(&sign_raw(&key, &header, &c), NOW).is_ok());
    }

    #[test]
    fn wrong_audience() {
        let (key, verifier) = setup();
        let mut c = claims();
        c.aud = "imd:admin".into();
        assert_eq!(
            verifier.verify(&key.sign(&c).unwrap(), NOW).unwrap_err(),
            TokenError::WrongAudience
        );
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let (key, verifier) = setup();
        let token = key.sign(&claims()).unwrap();
        assert!(verifier.clone().verify(&token, NOW).is_ok());
        assert!(
            verifier
                .clone()
                .with_issuer(ISS)
                .verify(&token, NOW)
                .is_ok()
        );
        assert_eq!(
            verifier
                .with_issuer("https://other.example")
                .verify(&token, NOW)
                .unwrap_err(),
            TokenError::WrongIssuer
        );
    }

    #[test]
    fn expiry_with_leeway_boundaries() {
        let (key, verifier) = setup();
        let exp = NOW + 1000;
        let mut c = claims();
        c.exp = Some(exp);
        let token = key.sign(&c).unwrap();
        assert!(verifier.verify(&token, exp - 1).is_ok());
        assert!(verifier.verify(&token, exp + 59).is_ok());
        assert_eq!(
            verifier.verify(&token, exp + 60).unwrap_err(),
            TokenError::Expired { exp }
        );
        let strict = verifier.with_leeway(0);
        assert!(strict.verify(&token, exp - 1).is_ok());
        assert_eq!(
            strict.verify(&token, exp).unwrap_err(),
            TokenError::Expired { exp }
        );
        let lenient = strict.with_leeway(u64::MAX);
        assert!(lenient.verify(&token, exp + 1_000_000_000).is_ok());
    }

    #[test]
    fn no_exp_never_expires() {
        let (key, verifier) = setup();
        let mut c = claims();
        c.exp = None;
        let token = key.sign(&c).unwrap();
        assert!(verifier.verify(&token, i64::MAX).is_ok());
    }

    #[test]
    fn issued_in_the_future_is_not_yet_valid() {
        let (key, verifier) = setup();
        let mut c = claims();
        c.iat = NOW + 60;
        let token = key.sign(&c).unwrap();
        assert!(verifier.verify(&token, NOW).is_ok(), "within leeway");
        c.iat = NOW + 61;
        let token = key.sign(&c).unwrap();
        assert_eq!(
            verifier.verify(&token, NOW).unwrap_err(),
            TokenError::NotYetValid
        );
        assert!(verifier.verify(&token, NOW + 1).is_ok());
    }

    #[test]
    fn decode_unverified_reads_without_checking() {
        let stranger = SigningKey::generate("k9").unwrap();
        let mut c = claims();
        c.exp = Some(1);
        c.aud = "other".into();
        let token = stranger.sign(&c).unwrap();
        let u = decode_unverified(&token).unwrap();
        assert_eq!(u.alg, "EdDSA");
        assert_eq!(u.kid.as_deref(), Some("k9"));
        assert_eq!(u.claims, c);

        // Even an alg=none token can be inspected (it is never verified).
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let u = decode_unverified(&format!("{h}.{p}.")).unwrap();
        assert_eq!((u.alg.as_str(), u.kid), ("none", None));

        // But incomplete claims are still rejected.
        let mut partial = serde_json::to_value(claims()).unwrap();
        partial.as_object_mut().unwrap().remove("imd");
        let p = URL_SAFE_NO_PAD.encode(partial.to_string());
        assert_eq!(
            decode_unverified(&format!("{h}.{p}.")).unwrap_err().kind(),
            "malformed"
        );
    }

    #[test]
    fn shareable_across_threads() {
        // The service keeps these in shared state used by every worker.
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<SigningKey>();
        assert_send_sync::<PublicKey>();
    }

    #[test]
    fn debug_lists_kids() {
        let (_, verifier) = setup();
        let dbg = format!("{:?}", verifier.with_issuer(ISS));
        assert!(dbg.contains("\"k1\"") && dbg.contains(ISS), "{dbg}");
    }
}
