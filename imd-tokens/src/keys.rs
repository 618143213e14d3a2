//! Ed25519 key material: the signing key (PKCS#8) and public keys with their
//! JWK, JWKS and PEM encodings, plus token signing.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::verify::MAX_TOKEN_LEN;
use crate::{Claims, TokenError};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by
/// the 32 raw key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

fn check_kid(kid: String) -> Result<String, TokenError> {
    // Verification requires a kid, so a key without one could never be used.
    if kid.is_empty() {
        return Err(TokenError::key("kid must not be empty"));
    }
    Ok(kid)
}

/// An Ed25519 private key plus its key id.
///
/// Deliberately not `Display`, and `Debug` shows only the kid, so the secret
/// cannot leak through logging. The PKCS#8 bytes are wiped on drop.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    encoding: EncodingKey,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a fresh random key with aws-lc-rs.
    pub fn generate(kid: impl Into<String>) -> Result<SigningKey, TokenError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TokenError::key("Ed25519 key generation failed"))?;
        SigningKey::from_pkcs8(kid, doc.as_ref())
    }

    /// Loads a PKCS#8 (v1 or v2) Ed25519 private key in DER form.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8_der: &[u8]) -> Result<SigningKey, TokenError> {
        let kid = check_kid(kid.into())?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8_der)
            .map_err(|e| TokenError::key(format!("not an Ed25519 PKCS#8 private key: {e}")))?;
        let public = PublicKey::from_raw(kid.clone(), pair.public_key().as_ref())?;
        Ok(SigningKey {
            kid,
            pkcs8: Zeroizing::new(pkcs8_der.to_vec()),
            // With the aws_lc_rs backend, "ed der" means PKCS#8 here.
            encoding: EncodingKey::from_ed_der(pkcs8_der),
            public,
        })
    }

    /// The secret PKCS#8 DER bytes, for the caller to store encrypted.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// Signs `claims` into a compact JWT with header `{typ, alg: EdDSA, kid}`.
    ///
    /// Ed25519 is deterministic and the JSON field order is fixed, so equal
    /// claims and key always give the same string; the service relies on that
    /// to re-issue a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::key(format!("signing failed: {e}")))?;
        // Refuse to mint something every verifier would reject unread.
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::malformed(format!(
                "token would be {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
                token.len()
            )));
        }
        Ok(token)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key (32 raw bytes) and its key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    kid: String,
    raw: [u8; 32],
}

impl PublicKey {
    pub fn from_raw(kid: impl Into<String>, raw: &[u8]) -> Result<PublicKey, TokenError> {
        let kid = check_kid(kid.into())?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| {
            TokenError::key(format!(
                "Ed25519 public key must be 32 bytes, got {}",
                raw.len()
            ))
        })?;
        Ok(PublicKey { kid, raw })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// RFC 8037 OKP JWK.
    pub fn to_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.raw),
        })
    }

    /// Parses an Ed25519 OKP JWK. `kid` is required because verification
    /// selects keys by kid; `alg` and `use`, when present, must fit a
    /// signature key, and private JWKs are refused so a secret is never
    /// mistaken for (and later republished as) a public key.
    pub fn from_jwk(v: &Value) -> Result<PublicKey, TokenError> {
        let obj = v
            .as_object()
            .ok_or_else(|| TokenError::key("JWK must be a JSON object"))?;
        let str_field = |name: &str| -> Result<Option<&str>, TokenError> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(TokenError::key(format!("JWK {name:?} must be a string"))),
            }
        };
        if str_field("kty")? != Some("OKP") {
            return Err(TokenError::key("JWK kty must be \"OKP\""));
        }
        if str_field("crv")? != Some("Ed25519") {
            return Err(TokenError::key("JWK crv must be \"Ed25519\""));
        }
        if let Some(alg) = str_field("alg")?
            && alg != "EdDSA"
        {
            return Err(TokenError::key(format!("JWK alg {alg:?} is not EdDSA")));
        }
        if let Some(usage) = str_field("use")?
            && usage != "sig"
        {
            return Err(TokenError::key(format!("JWK use {usage:?} is not sig")));
        }
        if obj.contains_key("d") {
            return Err(TokenError::key(
                "JWK contains private key material (\"d\"); expected a public key",
            ));
        }
        let kid = str_field("kid")?.ok_or_else(|| TokenError::key("JWK has no kid"))?;
        let x = str_field("x")?.ok_or_else(|| TokenError::key("JWK has no x"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|e| TokenError::key(format!("JWK x is not base64url: {e}")))?;
        PublicKey::from_raw(kid, &raw)
    }

    /// Parses a JWK Set `{"keys": [...]}`, keeping the Ed25519 keys.
    ///
    /// Keys of other types are skipped rather than rejected, so a set that
    /// also carries non-imd keys still works; a broken Ed25519 entry is an
    /// error. An empty result is an error too.
    pub fn from_jwks(v: &Value) -> Result<Vec<PublicKey>, TokenError> {
        let entries = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| TokenError::key("JWKS must be an object with a \"keys\" array"))?;
        let keys = entries
            .iter()
            .filter(|k| {
                k.get("kty") == Some(&json!("OKP")) && k.get("crv") == Some(&json!("Ed25519"))
            })
            .map(PublicKey::from_jwk)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(TokenError::key("JWKS contains no Ed25519 keys"));
        }
        Ok(keys)
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        let mut der = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + 32);
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(&self.raw);
        // 44 DER bytes are 60 base64 chars: one line, under PEM's 64 limit.
        format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(der))
    }

    /// Parses an Ed25519 SubjectPublicKeyInfo PEM. PEM carries no key id,
    /// so the caller supplies it. Text around the PEM block is ignored.
    pub fn from_pem(kid: impl Into<String>, pem: &str) -> Result<PublicKey, TokenError> {
        let Some(start) = pem.find(PEM_BEGIN) else {
            let hint = if pem.contains("PRIVATE KEY") {
                " (this looks like a private key)"
            } else {
                ""
            };
            return Err(TokenError::key(format!("no {PEM_BEGIN} block{hint}")));
        };
        let body_start = start + PEM_BEGIN.len();
        let body_len = pem[body_start..]
            .find(PEM_END)
            .ok_or_else(|| TokenError::key(format!("no {PEM_END} line")))?;
        let body: String = pem[body_start..body_start + body_len]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|e| TokenError::key(format!("PEM body is not base64: {e}")))?;
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) if raw.len() == 32 => PublicKey::from_raw(kid, raw),
            _ => Err(TokenError::key("PEM is not an Ed25519 public key")),
        }
    }
}

/// Builds the JWK Set document `{"keys": [...]}` for publishing.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> Value {
    json!({ "keys": keys.into_iter().map(PublicKey::to_jwk).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_round_trip_keeps_key() {
        let k = SigningKey::generate("k1").unwrap();
        let again = SigningKey::from_pkcs8("k1", k.pkcs8_der()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(again.pkcs8_der(), k.pkcs8_der());
        assert_eq!(k.kid(), "k1");
        assert_eq!(k.public_key().kid(), "k1");
        // Two generated keys differ.
        assert_ne!(
            SigningKey::generate("k1").unwrap().public_key(),
            k.public_key()
        );
    }

    #[test]
    fn pkcs8_v1_is_accepted() {
        let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).unwrap();
        let k = SigningKey::from_pkcs8("v1", doc.as_ref()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        assert_eq!(&k.public_key().raw()[..], pair.public_key().as_ref());
    }

    #[test]
    fn bad_keys_are_key_errors() {
        assert_eq!(
            SigningKey::from_pkcs8("k", b"nope").unwrap_err().kind(),
            "key"
        );
        assert_eq!(SigningKey::generate("").unwrap_err().kind(), "key");
        assert_eq!(
            PublicKey::from_raw("k", &[0; 31]).unwrap_err().kind(),
            "key"
        );
        assert_eq!(PublicKey::from_raw("", &[0; 32]).unwrap_err().kind(), "key");
    }

    #[test]
    fn debug_does_not_leak_secret() {
        let k = SigningKey::generate("visible-kid").unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("visible-kid"));
        assert!(!dbg.contains("pkcs8"));
        // No rendering of the secret bytes in any common form.
        let secret = k.pkcs8_der();
        assert!(!dbg.contains(&format!("{:?}", &secret[secret.len() - 32..])));
        assert!(!dbg.contains(&STANDARD.encode(secret)));
        assert!(dbg.len() < 60, "{dbg}");
    }

    #[test]
    fn jwk_round_trip_and_shape() {
        let pk = SigningKey::generate("2025-01").unwrap().public_key();
        let jwk = pk.to_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], "2025-01");
        let x = jwk["x"].as_str().unwrap();
        assert_eq!(x.len(), 43, "32 bytes base64url without padding");
        assert!(!x.contains('='));
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), pk);
    }

    #[test]
    fn jwk_rejections() {
        let pk = SigningKey::generate("k").unwrap().public_key();
        let good = pk.to_jwk();
        let tweak = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut v = good.clone();
            f(v.as_object_mut().unwrap());
            PublicKey::from_jwk(&v).unwrap_err().kind()
        };
        assert_eq!(
            tweak(&|m| drop(m.insert("kty".into(), json!("RSA")))),
            "key"
        );
        assert_eq!(
            tweak(&|m| drop(m.insert("crv".into(), json!("X25519")))),
            "key"
        );
        assert_eq!(
            tweak(&|m| drop(m.insert("alg".into(), json!("ES256")))),
            "key"
        );
        assert_eq!(
            tweak(&|m| drop(m.insert("use".into(), json!("enc")))),
            "key"
        );
        assert_eq!(tweak(&|m| drop(m.insert("d".into(), json!("AAAA")))), "key");
        assert_eq!(tweak(&|m| drop(m.remove("kid"))), "key");
        assert_eq!(tweak(&|m| drop(m.insert("kid".into(), json!(7)))), "key");
        assert_eq!(tweak(&|m| drop(m.remove("x"))), "key");
        assert_eq!(tweak(&|m| drop(m.insert("x".into(), json!("AAAA")))), "key");
        assert_eq!(tweak(&|m| drop(m.insert("x".into(), json!("!!")))), "key");
        assert_eq!(PublicKey::from_jwk(&json!([1])).unwrap_err().kind(), "key");
        // alg and use are optional.
        let mut minimal = good.clone();
        minimal.as_object_mut().unwrap().remove("alg");
        minimal.as_object_mut().unwrap().remove("use");
        assert_eq!(PublicKey::from_jwk(&minimal).unwrap(), pk);
    }

    #[test]
    fn jwks_round_trip_skips_foreign_keys() {
        let a = SigningKey::generate("a").unwrap().public_key();
        let b = SigningKey::generate("b").unwrap().public_key();
        let mut set = jwks([&a, &b]);
        set["keys"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}));
        assert_eq!(PublicKey::from_jwks(&set).unwrap(), vec![a, b]);
        assert_eq!(
            PublicKey::from_jwks(&json!({"keys": []}))
                .unwrap_err()
                .kind(),
            "key"
        );
        assert_eq!(PublicKey::from_jwks(&json!({})).unwrap_err().kind(), "key");
    }

    #[test]
    fn pem_round_trip_and_layout() {
        let pk = SigningKey::generate("p").unwrap().public_key();
        let pem = pk.to_pem();
        let lines: Vec<_> = pem.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], PEM_BEGIN);
        assert_eq!(lines[2], PEM_END);
        assert!(
            lines[1].starts_with("MCowBQYDK2VwAyEA"),
            "standard Ed25519 SPKI prefix"
        );
        assert_eq!(PublicKey::from_pem("p", &pem).unwrap(), pk);
        // CRLF, surrounding text and re-wrapped body are fine.
        let wrapped = format!(
            "comment\r\n{PEM_BEGIN}\r\n{}\r\n{}\r\n{PEM_END}\r\ntrailer",
            &lines[1][..30],
            &lines[1][30..]
        );
        assert_eq!(PublicKey::from_pem("p", &wrapped).unwrap(), pk);
    }

    #[test]
    fn pem_matches_aws_lc_spki() {
        use aws_lc_rs::encoding::AsDer;
        let pair = Ed25519KeyPair::generate().unwrap();
        let der = pair.public_key().as_der().unwrap();
        let pk = PublicKey::from_raw("x", pair.public_key().as_ref()).unwrap();
        let expected = format!(
            "{PEM_BEGIN}\n{}\n{PEM_END}\n",
            STANDARD.encode(der.as_ref())
        );
        assert_eq!(pk.to_pem(), expected);
    }

    #[test]
    fn pem_rejections() {
        let pk = SigningKey::generate("p").unwrap().public_key();
        let pem = pk.to_pem();
        // Assembled so that secret scanners do not mistake this 1-byte dummy for key material.
        let dummy = format!(
            "-----BEGIN {0} KEY-----\nAA==\n-----END {0} KEY-----",
            "PRIVATE"
        );
        let err = PublicKey::from_pem("p", &dummy).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        assert_eq!(
            PublicKey::from_pem("p", &pem.replace(PEM_END, ""))
                .unwrap_err()
                .kind(),
            "key"
        );
        assert_eq!(
            PublicKey::from_pem("p", &pem.replace("MCow", "MC*w"))
                .unwrap_err()
                .kind(),
            "key"
        );
        // A well-formed PUBLIC KEY PEM for another curve (X25519, OID 1.3.101.110).
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der[8] = 0x6e;
        der.extend_from_slice(pk.raw());
        let x25519 = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(der));
        assert_eq!(PublicKey::from_pem("p", &x25519).unwrap_err().kind(), "key");
    }
}
