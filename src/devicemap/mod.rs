//! Device maps: admin-supplied mappings from a device (by serial number,
//! UUID or hostname) to the user it belongs to, uploaded as CSV or sent as
//! JSON, validated into `MappingRow`s. Storage and matching live elsewhere.

mod csv;
mod mapping;

pub use self::csv::{
    DeviceMapReader, FailureCsvWriter, HeaderError, MAX_RECORD_BYTES, RowError, SeenIdentifiers,
};
pub use self::mapping::{
    Column, MAX_DEVICE_NAME, MAX_IDENTIFIER, MAX_USER_NAME, MappingInput, MappingRow,
};
pub mod import;
