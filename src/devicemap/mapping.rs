//! One device mapping (the fields of Druva's device-mapping API) and the
//! validation rules both the CSV import and the JSON API apply to it.

use serde::{Deserialize, Serialize};

use crate::domain::{Email, FieldError, IdentifierType, RestoreData};

pub const MAX_USER_NAME: usize = 256;
pub const MAX_DEVICE_NAME: usize = 255;
pub const MAX_IDENTIFIER: usize = 255;

/// The device map's columns, in the order the API documents them. The
/// names are the CSV header names and the JSON field names alike, so an
/// error names the same thing whichever way the admin sent the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    EmailId,
    UserName,
    DeviceName,
    DeviceIdentifierType,
    DeviceIdentifier,
    OldDeviceName,
    RestoreData,
}

impl Column {
    pub const COUNT: usize = 7;
    pub const ALL: [Column; Column::COUNT] = [
        Column::EmailId,
        Column::UserName,
        Column::DeviceName,
        Column::DeviceIdentifierType,
        Column::DeviceIdentifier,
        Column::OldDeviceName,
        Column::RestoreData,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::EmailId => "emailID",
            Column::UserName => "userName",
            Column::DeviceName => "deviceName",
            Column::DeviceIdentifierType => "deviceIdentifierType",
            Column::DeviceIdentifier => "deviceIdentifier",
            Column::OldDeviceName => "oldDeviceName",
            Column::RestoreData => "restoreData",
        }
    }

    pub fn is_required(self) -> bool {
        !matches!(self, Column::OldDeviceName | Column::RestoreData)
    }

    /// Matches a header name: surrounding whitespace and case ignored.
    pub fn from_header(name: &str) -> Option<Column> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

pub use crate::domain::MappingRow;

/// JSON form of a mapping for the API. Every field is optional here so that
/// `validate`, not serde, reports what is missing, all at once; unknown
/// fields are still refused so a typo ("emailId") cannot silently drop data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingInput {
    #[serde(rename = "emailID", default, skip_serializing_if = "Option::is_none")]
    pub email_id: Option<String>,
    #[serde(rename = "userName", default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(
        rename = "deviceName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_name: Option<String>,
    #[serde(
        rename = "deviceIdentifierType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_identifier_type: Option<String>,
    #[serde(
        rename = "deviceIdentifier",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_identifier: Option<String>,
    #[serde(
        rename = "oldDeviceName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub old_device_name: Option<String>,
    #[serde(
        rename = "restoreData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_data: Option<String>,
}

impl MappingInput {
    /// All field errors at once, each named by its column/field name.
    pub fn validate(&self) -> Result<MappingRow, Vec<FieldError>> {
        fn v(o: &Option<String>) -> &str {
            o.as_deref().unwrap_or_default().trim()
        }
        let values: Values<'_> = [
            v(&self.email_id),
            v(&self.user_name),
            v(&self.device_name),
            v(&self.device_identifier_type),
            v(&self.device_identifier),
            v(&self.old_device_name),
            v(&self.restore_data),
        ];
        let mut errors = Vec::new();
        match validate_values(&values, &mut errors) {
            Checked::Valid(row) => Ok(row),
            Checked::Invalid { .. } => Err(errors),
        }
    }
}

impl From<&MappingRow> for MappingInput {
    fn from(row: &MappingRow) -> Self {
        MappingInput {
            email_id: Some(row.email.as_str().to_owned()),
            user_name: Some(row.user_name.clone()),
            device_name: Some(row.device_name.clone()),
            device_identifier_type: Some(row.identifier_type.as_str().to_owned()),
            device_identifier: Some(row.identifier.clone()),
            old_device_name: row.old_device_name.clone(),
            restore_data: row.restore_data.map(|r| r.as_str().to_owned()),
        }
    }
}

/// Trimmed values indexed by `Column::index`; "" means absent or empty
/// (the device map does not distinguish an empty cell from a missing one).
pub(crate) type Values<'a> = [&'a str; Column::COUNT];

pub(crate) enum Checked {
    Valid(MappingRow),
    /// The normalized identifier is kept even when other fields fail, so a
    /// later row reusing it is still reported as a duplicate.
    Invalid {
        identifier: Option<(IdentifierType, String)>,
    },
}

/// Applies the row rules, appending one error per bad field (in column
/// order) to `errors`, which the caller passes in empty.
pub(crate) fn validate_values(v: &Values<'_>, errors: &mut Vec<FieldError>) -> Checked {
    let get = |c: Column| v[c.index()];

    let email = required(get(Column::EmailId), Column::EmailId, errors).and_then(|s| {
        Email::parse(s)
            .map_err(|e| fail(errors, Column::EmailId, e.message))
            .ok()
    });
    let user_name = required(get(Column::UserName), Column::UserName, errors)
        .filter(|s| check_text(s, Column::UserName, MAX_USER_NAME, errors));
    let device_name = required(get(Column::DeviceName), Column::DeviceName, errors)
        .filter(|s| check_text(s, Column::DeviceName, MAX_DEVICE_NAME, errors));
    let identifier_type = required(
        get(Column::DeviceIdentifierType),
        Column::DeviceIdentifierType,
        errors,
    )
    .and_then(|s| {
        IdentifierType::parse(s)
            .map_err(|e| fail(errors, Column::DeviceIdentifierType, e.message))
            .ok()
    });
    let identifier = required(
        get(Column::DeviceIdentifier),
        Column::DeviceIdentifier,
        errors,
    )
    .filter(|s| check_text(s, Column::DeviceIdentifier, MAX_IDENTIFIER, errors));
    // Normalizing needs a valid type; with a bad type the type's error is
    // the one worth reporting.
    let normalized = match (identifier_type, identifier) {
        (Some(t), Some(raw)) => match t.normalize(raw) {
            Ok(n) => Some((t, n)),
            Err(e) => {
                fail(errors, Column::DeviceIdentifier, e.message);
                None
            }
        },
        _ => None,
    };
    let old_device_name = optional(get(Column::OldDeviceName))
        .filter(|s| check_text(s, Column::OldDeviceName, MAX_DEVICE_NAME, errors));
    let restore_data = optional(get(Column::RestoreData)).and_then(|s| {
        RestoreData::parse(s)
            .map_err(|e| fail(errors, Column::RestoreData, e.message))
            .ok()
    });
    // Restoring only makes sense from a device being replaced.
    if restore_data.is_some() && get(Column::OldDeviceName).is_empty() {
        fail(
            errors,
            Column::RestoreData,
            "restoreData needs oldDeviceName",
        );
    }

    match (email, user_name, device_name, normalized, identifier) {
        (Some(email), Some(user_name), Some(device_name), Some((t, norm)), Some(raw))
            if errors.is_empty() =>
        {
            Checked::Valid(MappingRow {
                email,
                user_name: user_name.to_owned(),
                device_name: device_name.to_owned(),
                identifier_type: t,
                identifier: raw.to_owned(),
                identifier_norm: norm,
                old_device_name: old_device_name.map(str::to_owned),
                restore_data,
            })
        }
        (_, _, _, normalized, _) => Checked::Invalid {
            identifier: normalized,
        },
    }
}

fn fail(errors: &mut Vec<FieldError>, column: Column, message: impl Into<String>) {
    errors.push(FieldError::new(column.name(), message));
}

fn required<'a>(s: &'a str, column: Column, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    if s.is_empty() {
        fail(errors, column, "missing value");
        None
    } else {
        Some(s)
    }
}

fn optional(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Length in characters (admins count characters, not UTF-8 bytes) and no
/// control characters, which break CSV exports and terminal output later.
fn check_text(s: &str, column: Column, max: usize, errors: &mut Vec<FieldError>) -> bool {
    // Byte length bounds character count, so most values skip the count.
    if s.len() > max && s.chars().count() > max {
        fail(errors, column, format!("longer than {max} characters"));
        false
    } else if s.chars().any(char::is_control) {
        fail(errors, column, "contains control characters");
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(fields: &[(&str, &str)]) -> MappingInput {
        let obj: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(obj)).unwrap()
    }

    fn complete() -> MappingInput {
        input(&[
            ("emailID", " Ann.Lee@Example.com "),
            ("userName", " ann "),
            ("deviceName", "ANN-LAPTOP"),
            ("deviceIdentifierType", "Hostname"),
            ("deviceIdentifier", " Ann-PC.corp.example.com "),
            ("oldDeviceName", "ANN-OLD"),
            ("restoreData", "all"),
        ])
    }

    fn fields_of(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field).collect()
    }

    #[test]
    fn validate_accepts_a_complete_mapping_and_trims_values() {
        let row = complete().validate().unwrap();
        assert_eq!(row.email.as_str(), "Ann.Lee@Example.com");
        assert_eq!(row.user_name, "ann");
        assert_eq!(row.device_name, "ANN-LAPTOP");
        assert_eq!(row.identifier_type, IdentifierType::Hostname);
        assert_eq!(row.identifier, "Ann-PC.corp.example.com");
        assert_eq!(row.identifier_norm, "ann-pc");
        assert_eq!(row.old_device_name.as_deref(), Some("ANN-OLD"));
        assert_eq!(row.restore_data, Some(RestoreData::All));
    }

    #[test]
    fn validate_reports_every_missing_required_field() {
        let errors = MappingInput::default().validate().unwrap_err();
        assert_eq!(
            fields_of(&errors),
            [
                "emailID",
                "userName",
                "deviceName",
                "deviceIdentifierType",
                "deviceIdentifier"
            ]
        );
        assert!(errors.iter().all(|e| e.message == "missing value"));

        // Blank strings count as missing.
        let errors = input(&[("emailID", "  "), ("userName", "")])
            .validate()
            .unwrap_err();
        assert_eq!(errors.len(), 5);
    }

    #[test]
    fn validate_reports_all_invalid_fields_with_column_names() {
        let mut m = complete();
        m.email_id = Some("not-an-email".into());
        m.device_identifier_type = Some("mac-address".into());
        m.restore_data = Some("EVERYTHING".into());
        let errors = m.validate().unwrap_err();
        assert_eq!(
            fields_of(&errors),
            ["emailID", "deviceIdentifierType", "restoreData"]
        );
        assert!(errors[1].message.contains("mac-address"));
    }

    #[test]
    fn unknown_json_field_is_rejected_by_serde() {
        let err =
            serde_json::from_str::<MappingInput>(r#"{"emailID":"a@b.co","emailId":"typo@b.co"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `emailId`"), "{err}");
    }

    #[test]
    fn json_uses_the_csv_column_names() {
        let row = complete().validate().unwrap();
        let json = serde_json::to_value(MappingInput::from(&row)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        let back: MappingInput = serde_json::from_value(json).unwrap();
        assert_eq!(back.validate().unwrap(), row);
        // Absent optional fields are omitted, and null is accepted as absent.
        let m: MappingInput = serde_json::from_str(r#"{"oldDeviceName":null}"#).unwrap();
        assert_eq!(m.old_device_name, None);
        assert_eq!(serde_json::to_string(&m).unwrap(), "{}");
    }

    #[test]
    fn restore_data_without_old_device_name_is_an_error() {
        let mut m = complete();
        m.old_device_name = Some("   ".into());
        let errors = m.validate().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "restoreData");
        assert_eq!(errors[0].message, "restoreData needs oldDeviceName");

        m.restore_data = Some(String::new());
        let row = m.validate().unwrap();
        assert_eq!(row.old_device_name, None);
        assert_eq!(row.restore_data, None);
    }

    #[test]
    fn old_device_name_without_restore_data_is_fine() {
        let mut m = complete();
        m.restore_data = None;
        let row = m.validate().unwrap();
        assert_eq!(row.old_device_name.as_deref(), Some("ANN-OLD"));
        assert_eq!(row.restore_data, None);
    }

    #[test]
    fn text_lengths_are_counted_in_characters() {
        let mut m = complete();
        m.user_name = Some("é".repeat(MAX_USER_NAME));
        m.device_name = Some("d".repeat(MAX_DEVICE_NAME));
        assert!(m.validate().is_ok());

        m.user_name = Some("u".repeat(MAX_USER_NAME + 1));
        m.device_name = Some("d".repeat(MAX_DEVICE_NAME + 1));
        m.old_device_name = Some("o".repeat(MAX_DEVICE_NAME + 1));
        m.device_identifier_type = Some("serial-number".into());
        m.device_identifier = Some("S".repeat(MAX_IDENTIFIER + 1));
        let errors = m.validate().unwrap_err();
        assert_eq!(
            fields_of(&errors),
            [
                "userName",
                "deviceName",
                "deviceIdentifier",
                "oldDeviceName"
            ]
        );
        assert_eq!(errors[0].message, "longer than 256 characters");
    }

    #[test]
    fn control_characters_are_rejected() {
        let mut m = complete();
        m.user_name = Some("ann\u{0}lee".into());
        m.device_name = Some("pc\u{1b}[31m".into());
        let errors = m.validate().unwrap_err();
        assert_eq!(fields_of(&errors), ["userName", "deviceName"]);
        assert_eq!(errors[0].message, "contains control characters");
    }

    #[test]
    fn identifier_is_normalized_by_type() {
        let mut m = complete();
        m.device_identifier_type = Some("uuid".into());
        m.device_identifier = Some("{4c4c4544-0042-3510-8052-b4c04f564433}".into());
        let row = m.validate().unwrap();
        assert_eq!(row.identifier, "{4c4c4544-0042-3510-8052-b4c04f564433}");
        assert_eq!(row.identifier_norm, "4C4C4544-0042-3510-8052-B4C04F564433");

        m.device_identifier = Some("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF".into());
        let errors = m.validate().unwrap_err();
        assert_eq!(errors[0].field, "deviceIdentifier");
        assert!(errors[0].message.starts_with("placeholder value"));
    }

    #[test]
    fn column_names_match_case_insensitively_and_trimmed() {
        assert_eq!(Column::from_header(" EMAILid "), Some(Column::EmailId));
        assert_eq!(
            Column::from_header("deviceidentifiertype"),
            Some(Column::DeviceIdentifierType)
        );
        assert_eq!(Column::from_header("email"), None);
        assert_eq!(Column::ALL.iter().filter(|c| c.is_required()).count(), 5);
    }
}
