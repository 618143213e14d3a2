//! User resolution: given an activation, decide which user the device belongs to. One resolver
//! per IMD version (v4 device map now; v2 LDAP via the connector and v5 Entra ID plug in here).
//! Two phases, so that nothing slow ever runs while the write lock is held:
//! - `prepare` runs before the transaction and may go over the network (a directory look-up);
//! - `resolve` runs inside the activation's write transaction and may only read the database
//!   (the v4 device map lives there, and reading it in the same transaction that consumes it is
//!   what makes concurrent activations of one device converge).

mod device_map;

pub use device_map::DeviceMapResolver;

use futures_util::future::BoxFuture;
use rusqlite::Connection;

use crate::activation::request::ActivationRequest;
use crate::domain::{Email, RestoreData};
use crate::store::{DeviceRow, OrgRow, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no mapping for this device")]
    DeviceNotMapped,
    #[error("{0}")]
    UserNotMapped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The directory could not be asked right now (connector offline, Graph throttling).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// The user a device is to be bound to; created just in time if missing.
#[derive(Debug, Clone)]
pub struct UserSpec {
    pub email: Email,
    pub user_name: String,
    pub external_id: Option<String>,
    pub source: &'static str,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub user: UserSpec,
    pub device_name: Option<String>,
    /// The pending mapping this binding consumes (v4).
    pub mapping_id: Option<String>,
    pub old_device_name: Option<String>,
    pub restore_data: Option<RestoreData>,
}

#[derive(Debug, Clone)]
pub enum Resolution {
    /// A known device that stays with its user (a repeat); the pipeline checks the reported user.
    Keep,
    Bind(Box<Binding>),
}

/// What the first phase found out; handed to the second phase unchanged.
pub type Prepared = Option<Box<dyn std::any::Any + Send>>;

/// Inputs of the in-transaction phase.
pub struct ResolveContext<'a> {
    pub org: &'a OrgRow,
    pub request: &'a ActivationRequest,
    pub existing: Option<&'a DeviceRow>,
}

pub trait Resolver: Send + Sync {
    /// Before the transaction: network look-ups, if any. The default needs none.
    fn prepare<'a>(
        &'a self,
        _request: &'a ActivationRequest,
    ) -> BoxFuture<'a, Result<Prepared, ResolveError>> {
        Box::pin(async { Ok(None) })
    }

    /// Inside the write transaction: decide, reading only the database through `conn`.
    fn resolve(
        &self,
        conn: &Connection,
        ctx: &ResolveContext<'_>,
        prepared: Prepared,
    ) -> Result<Resolution, ResolveError>;
}
