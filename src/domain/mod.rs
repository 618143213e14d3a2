//! Domain values shared by the activation API and the device map: validated
//! email addresses, device identifiers and their normalization, restore
//! options, device mappings, the parsed activation request, LDAP names and
//! filters (`ldap`). Pure functions
//! only: no I/O, no clock, no storage.

pub mod directory;
mod email;
mod identifiers;
pub mod ldap;
mod mapping;
pub mod request;

use serde::{Deserialize, Serialize};

pub use email::{Email, normalize_email};
pub use identifiers::{
    DeviceIdentifiers, IdentifierType, normalize_hostname, normalize_serial, normalize_uuid,
    validate_hostname,
};
pub use mapping::MappingRow;

/// A validation failure tied to one input field. `field` is a static name so
/// callers can remap it (the device map reports its CSV column names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// What a replacement device gets back from the device it replaces
/// (Druva's `restoreData`: settings, data, or both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RestoreData {
    All,
    System,
    Data,
}

impl RestoreData {
    pub const ALL: [RestoreData; 3] = [RestoreData::All, RestoreData::System, RestoreData::Data];

    /// Case-insensitive, surrounding whitespace ignored.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                FieldError::new(
                    "restoreData",
                    format!("unknown restore option \"{t}\" (expected ALL, SYSTEM or DATA)"),
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RestoreData::All => "ALL",
            RestoreData::System => "SYSTEM",
            RestoreData::Data => "DATA",
        }
    }
}

impl std::fmt::Display for RestoreData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_data_parses_case_insensitively_and_trimmed() {
        assert_eq!(RestoreData::parse("all").unwrap(), RestoreData::All);
        assert_eq!(RestoreData::parse(" System ").unwrap(), RestoreData::System);
        assert_eq!(RestoreData::parse("DATA").unwrap(), RestoreData::Data);
    }

    #[test]
    fn restore_data_rejects_unknown_values() {
        let err = RestoreData::parse("everything").unwrap_err();
        assert_eq!(err.field, "restoreData");
        assert!(err.message.contains("everything"), "{}", err.message);
        assert!(RestoreData::parse("").is_err());
    }

    #[test]
    fn restore_data_serializes_in_uppercase() {
        assert_eq!(
            serde_json::to_string(&RestoreData::System).unwrap(),
            "\"SYSTEM\""
        );
        let back: RestoreData = serde_json::from_str("\"DATA\"").unwrap();
        assert_eq!(back, RestoreData::Data);
        assert_eq!(RestoreData::All.to_string(), "ALL");
    }

    #[test]
    fn field_error_displays_field_and_message() {
        let e = FieldError::new("email", "missing '@'");
        assert_eq!(e.to_string(), "email: missing '@'");
    }
}
