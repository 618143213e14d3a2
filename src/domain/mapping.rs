//! A validated device mapping (IMD v4): what the CSV and JSON inputs produce and the store keeps.

use super::{Email, IdentifierType, RestoreData};

/// One validated mapping, the unit both the CSV and the JSON API produce.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingRow {
    pub email: Email,
    pub user_name: String,
    pub device_name: String,
    pub identifier_type: IdentifierType,
    /// As given, trimmed: shown back to admins.
    pub identifier: String,
    /// What activation matches on (see `IdentifierType::normalize`).
    pub identifier_norm: String,
    pub old_device_name: Option<String>,
    pub restore_data: Option<RestoreData>,
}
