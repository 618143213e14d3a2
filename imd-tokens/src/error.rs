//! The single error type of this crate, with stable machine-readable kinds.

/// Everything that can go wrong while building keys, signing, decoding or
/// verifying a token.
///
/// `kind()` gives a stable snake_case name for logs, metrics and API
/// responses; the `Display` text is for humans and may change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed imd token (bad structure, base64, JSON or claims).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the header, payload and key.
    #[error("signature does not verify")]
    BadSignature,
    /// The header names an algorithm other than EdDSA.
    #[error("algorithm {0:?} is not accepted (only EdDSA)")]
    WrongAlgorithm(String),
    /// `aud` is not [`crate::AUDIENCE`].
    #[error("audience is not {:?}", crate::AUDIENCE)]
    WrongAudience,
    /// `iss` differs from the issuer the verifier was configured with.
    #[error("issuer does not match")]
    WrongIssuer,
    /// `exp` (plus leeway) has passed.
    #[error("token expired at unix time {exp}")]
    Expired { exp: i64 },
    /// `iat` lies further in the future than the leeway allows.
    #[error("token is issued in the future")]
    NotYetValid,
    /// The header has no `kid`, or names a key the verifier does not hold.
    #[error("unknown signing key{}", match .0 { Some(kid) => format!(" {kid:?}"), None => " (no kid in header)".to_owned() })]
    UnknownKey(Option<String>),
    /// A key could not be generated, parsed or used.
    #[error("key error: {0}")]
    Key(String),
}

impl TokenError {
    /// Stable snake_case name of the variant.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongAlgorithm(_) => "wrong_algorithm",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::Key(_) => "key",
        }
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> TokenError {
        TokenError::Malformed(msg.into())
    }

    pub(crate) fn key(msg: impl Into<String>) -> TokenError {
        TokenError::Key(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn kinds_are_distinct_and_stable() {
        let all = [
            TokenError::Malformed("x".into()),
            TokenError::BadSignature,
            TokenError::WrongAlgorithm("HS256".into()),
            TokenError::WrongAudience,
            TokenError::WrongIssuer,
            TokenError::Expired { exp: 1 },
            TokenError::NotYetValid,
            TokenError::UnknownKey(None),
            TokenError::Key("x".into()),
        ];
        let kinds: Vec<_> = all.iter().map(TokenError::kind).collect();
        assert_eq!(
            kinds,
            [
                "malformed",
                "bad_signature",
                "wrong_algorithm",
                "wrong_audience",
                "wrong_issuer",
                "expired",
                "not_yet_valid",
                "unknown_key",
                "key"
            ]
        );
        assert_eq!(kinds.iter().collect::<HashSet<_>>().len(), all.len());
    }

    #[test]
    fn display_mentions_kid() {
        assert_eq!(
            TokenError::UnknownKey(Some("k9".into())).to_string(),
            "unknown signing key \"k9\""
        );
        assert_eq!(
            TokenError::UnknownKey(None).to_string(),
            "unknown signing key (no kid in header)"
        );
    }
}
