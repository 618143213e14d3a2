//! The token payload: the claim set, its audience constant and the IMD version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TokenError;

/// The only `aud` value imd accepts; it keeps these tokens from being
/// replayed against (or accepted from) anything else using the same keys.
pub const AUDIENCE: &str = "imd:activation";

/// Which IMD protocol version the deployed machines speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImdVersion {
    V2,
    V4,
    V5,
}

impl ImdVersion {
    /// Parses `"v2"`, `"v4"` or `"v5"`, ignoring ASCII case.
    ///
    /// The JSON form inside a token is stricter (lowercase only); this is
    /// for operator input such as CLI flags and config.
    pub fn parse(s: &str) -> Result<ImdVersion, TokenError> {
        match s.to_ascii_lowercase().as_str() {
            "v2" => Ok(ImdVersion::V2),
            "v4" => Ok(ImdVersion::V4),
            "v5" => Ok(ImdVersion::V5),
            _ => Err(TokenError::malformed(format!(
                "unknown IMD version {s:?} (expected v2, v4 or v5)"
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ImdVersion::V2 => "v2",
            ImdVersion::V4 => "v4",
            ImdVersion::V5 => "v5",
        }
    }
}

impl fmt::Display for ImdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImdVersion {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImdVersion::parse(s)
    }
}

/// The claim set of a mass-deployment token.
///
/// Field order is the JSON order, which keeps the encoded token (and so its
/// signature) identical for identical claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Public URL of the imd service that issued the token.
    pub iss: String,
    /// Always [`AUDIENCE`] for tokens we mint.
    pub aud: String,
    /// Organization id.
    pub sub: String,
    /// Token id.
    pub jti: String,
    pub imd: ImdVersion,
    /// Issued-at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds; `None` means the token never expires.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<i64>,
}

impl Claims {
    pub fn new(
        iss: impl Into<String>,
        sub: impl Into<String>,
        jti: impl Into<String>,
        imd: ImdVersion,
        iat: i64,
        exp: Option<i64>,
    ) -> Claims {
        Claims {
            iss: iss.into(),
            aud: AUDIENCE.to_owned(),
            sub: sub.into(),
            jti: jti.into(),
            imd,
            iat,
            exp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_parse_and_display() {
        for (s, v) in [
            ("v2", ImdVersion::V2),
            ("V4", ImdVersion::V4),
            ("v5", ImdVersion::V5),
        ] {
            assert_eq!(ImdVersion::parse(s).unwrap(), v);
            assert_eq!(v.to_string(), s.to_ascii_lowercase());
            assert_eq!(v.as_str().parse::<ImdVersion>().unwrap(), v);
        }
        for bad in ["", "v3", "2", "v2 ", "v10"] {
            assert_eq!(ImdVersion::parse(bad).unwrap_err().kind(), "malformed");
        }
    }

    #[test]
    fn json_names_and_exp_omission() {
        let c = Claims::new(
            "https://imd.example",
            "org-1",
            "t-1",
            ImdVersion::V4,
            100,
            None,
        );
        assert_eq!(c.aud, AUDIENCE);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            json!({"iss":"https://imd.example","aud":"imd:activation","sub":"org-1",
                   "jti":"t-1","imd":"v4","iat":100})
        );
        let with_exp = Claims {
            exp: Some(200),
            ..c.clone()
        };
        assert_eq!(serde_json::to_value(&with_exp).unwrap()["exp"], 200);
        let back: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn missing_or_mistyped_claims_do_not_deserialize() {
        let full = json!({"iss":"i","aud":"imd:activation","sub":"s","jti":"j","imd":"v2","iat":1});
        for field in ["iss", "aud", "sub", "jti", "imd", "iat"] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field);
            assert!(serde_json::from_value::<Claims>(v).is_err(), "{field}");
        }
        let mut v = full.clone();
        v["iat"] = json!("1");
        assert!(serde_json::from_value::<Claims>(v).is_err());
        let mut v = full;
        v["imd"] = json!("V2");
        assert!(serde_json::from_value::<Claims>(v).is_err());
    }
}
