//! User resolution: given an activation, decide which user the device belongs to. One resolver
//! per IMD version (v4 device map now; v2 LDAP via the connector and v5 Entra ID plug in here).
//! Two phases, so that nothing slow ever runs while a write transaction is open:
//! - `lookup` (network resolvers only) runs before the transaction, after the pipeline checked
//!   that the organization and token row are still valid, under the resolver's own timeout and
//!   in-flight limit (`Budget`), and hands a typed `Prepared` value on;
//! - `resolve` runs inside the activation's write transaction and may only read the database
//!   through `WriteTx` (the v4 device map lives there, and reading it in the same transaction
//!   that consumes it is what makes concurrent activations of one device converge).

pub mod azure;
pub mod coalesce;
mod device_map;
pub mod ldap;
pub mod ttl;

pub use device_map::DeviceMapResolver;
pub use ldap::LdapResolver;

use std::time::Duration;

use futures_util::future::BoxFuture;
use imd_tokens::Claims;

use crate::domain::directory::DirectoryAttrs;
use crate::domain::request::ActivationRequest;
use crate::domain::{Email, RestoreData};
use crate::store::{DeviceRow, OrgRow, StoreError, TokenRow, WriteTx};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no mapping for this device")]
    DeviceNotMapped,
    #[error("{0}")]
    UserNotMapped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The directory could not be asked right now (connector offline, Graph throttling, the
    /// resolver's in-flight limit reached, its timeout passed).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The request names the user in a way this resolver cannot use.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    UserNotFound(String),
    #[error("{0}")]
    UserDisabled(String),
    /// Wrong password (or no such user: the directory does not tell them apart).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// No connector connected, or none answered within the deadline.
    #[error("{0}")]
    ConnectorUnavailable(String),
    /// The directory refused the question (a bad mapping filter, an ambiguous login).
    #[error("directory error: {0}")]
    Directory(String),
    /// A user directory sync preserved (disabled in the directory, or unmapped).
    #[error("the user is preserved: its devices cannot activate")]
    UserPreserved,
    #[error("the user has been deleted")]
    UserDeleted,
}

/// A user as a directory reports it (the network phase's finding).
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    /// The directory's immutable id (AD objectGUID, Entra object id).
    pub external_id: String,
    pub email: Email,
    pub user_name: String,
    /// Disabled in the directory: the activation is refused.
    pub enabled: bool,
    /// Attributes imported with the user (v2).
    pub attrs: Option<DirectoryAttrs>,
    /// What the winning mapping assigns; the organization's defaults otherwise.
    pub assignment: Option<Assignment>,
    /// Recorded in the audit trail with the activation.
    pub note: Option<String>,
    /// The same person's identity in another directory (a hybrid Entra user's AD objectGUID),
    /// so a user an earlier activation created there is found instead of duplicated.
    pub also_known_as: Option<(&'static str, String)>,
}

/// A directory mapping's assignment for users it creates.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub mapping_id: String,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
}

/// What the network phase hands to the in-transaction phase.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per activation, moved into its job once
pub enum Prepared {
    /// No network phase (v4).
    Nothing,
    User(DirectoryUser),
}

/// The user a device is to be bound to; created just in time if missing.
#[derive(Debug, Clone)]
pub struct UserSpec {
    pub email: Email,
    pub user_name: String,
    /// With `source`, the user's identity in its directory; matched before the email.
    pub external_id: Option<String>,
    pub source: &'static str,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub attrs: Option<DirectoryAttrs>,
    pub mapping_id: Option<String>,
    /// Another directory's identity of the same person, matched after `external_id`.
    pub also_known_as: Option<(&'static str, String)>,
    /// The directory itself (not a stored copy) just reported this user enabled and mapped:
    /// a preserved user of this source is re-enabled in real time.
    pub reenable: bool,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub user: UserSpec,
    pub device_name: Option<String>,
    /// The pending mapping this binding consumes (v4).
    pub mapping_id: Option<String>,
    pub old_device_name: Option<String>,
    pub restore_data: Option<RestoreData>,
    /// For the audit trail (e.g. activated from the stored user during an outage).
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Resolution {
    /// A known device that stays with its user (a repeat); the pipeline checks the reported user.
    Keep,
    Bind(Box<Binding>),
}

/// Inputs of the network phase.
pub struct LookupContext<'a> {
    pub org: &'a OrgRow,
    pub token: &'a TokenRow,
    pub claims: &'a Claims,
    pub request: &'a ActivationRequest,
    /// The look-up must be done by then; the pipeline enforces it too.
    pub deadline: tokio::time::Instant,
    /// Unix seconds at the start of the request (time is a parameter).
    pub now: i64,
}

/// Inputs of the in-transaction phase.
pub struct ResolveContext<'a> {
    pub org: &'a OrgRow,
    pub request: &'a ActivationRequest,
    pub existing: Option<&'a DeviceRow>,
    pub now: i64,
}

/// How much of the service one network resolver may occupy. When `max_in_flight` look-ups are
/// running, further activations for it are refused at once (503, retryable) rather than queued,
/// so a hung directory holds at most that many requests and never the device-map path's.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub timeout: Duration,
    pub max_in_flight: usize,
}

pub trait Resolver: Send + Sync {
    /// Shown in logs and errors.
    fn name(&self) -> &'static str;

    /// Whether `lookup` goes over the network (then it runs under the configured `Budget`).
    fn network_phase(&self) -> bool {
        false
    }

    /// This resolver's own look-up timeout, instead of `resolvers.network_timeout_ms`.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Before the transaction: the directory look-up. Only called with a network phase.
    fn lookup<'a>(
        &'a self,
        _ctx: &'a LookupContext<'a>,
    ) -> BoxFuture<'a, Result<Prepared, ResolveError>> {
        Box::pin(async { Ok(Prepared::Nothing) })
    }

    /// Inside the write transaction: decide, reading only the database through `tx`. May run
    /// more than once for one activation (a transaction that lost a race is retried).
    fn resolve<'a>(
        &'a self,
        tx: &'a mut dyn WriteTx,
        ctx: &'a ResolveContext<'a>,
        prepared: &'a Prepared,
    ) -> BoxFuture<'a, Result<Resolution, ResolveError>>;
}

/// During a directory outage, with `directory_outage = "allow_known_users"`: a user stored
/// from the directory at an earlier activation, as the network phase would have found it (the
/// audit row says how it got in). `None` for a user without a directory id or valid email.
pub fn stored_directory_user(u: Option<crate::store::UserRow>) -> Option<DirectoryUser> {
    let u = u?;
    let email = Email::parse(&u.email).ok()?;
    Some(DirectoryUser {
        external_id: u.external_id?,
        email,
        user_name: u.user_name,
        enabled: true,
        attrs: None,
        assignment: None,
        note: Some("directory outage: activated from the stored user (allow_known_users)".into()),
        also_known_as: None,
    })
}

/// For a user the directory reports disabled: a preserved or deleted user is refused as such
/// (the admin sees why in the sync report), any other as disabled.
pub async fn refuse_disabled(
    store: &crate::store::Store,
    org_id: &str,
    source: &str,
    external_id: &str,
    disabled: ResolveError,
) -> ResolveError {
    use crate::store::UserStatus;
    match store
        .user_by_external_id(org_id, source, &external_id.to_ascii_lowercase())
        .await
    {
        Ok(Some(u)) if u.status() == UserStatus::Preserved => ResolveError::UserPreserved,
        Ok(Some(u)) if u.status() == UserStatus::Deleted => ResolveError::UserDeleted,
        _ => disabled,
    }
}

/// The in-transaction phase of a network resolver: bind the user its look-up found.
pub fn bind_prepared(
    org: &OrgRow,
    prepared: &Prepared,
    source: &'static str,
) -> Result<Resolution, ResolveError> {
    match prepared {
        Prepared::User(u) => bind_directory_user(org, u, source),
        Prepared::Nothing => Err(ResolveError::Directory(format!(
            "the {source} look-up did not run"
        ))),
    }
}

/// The binding for a user a directory reported (v2, v5): the device gets that user, created
/// just in time with the organization's defaults.
pub fn bind_directory_user(
    org: &OrgRow,
    u: &DirectoryUser,
    source: &'static str,
) -> Result<Resolution, ResolveError> {
    if !u.enabled {
        return Err(ResolveError::UserDisabled(
            "this user is disabled in the directory".into(),
        ));
    }
    let (profile, storage_region, quota_bytes, mapping_id) = match &u.assignment {
        Some(a) => (
            a.profile.clone(),
            a.storage_region.clone(),
            a.quota_bytes,
            Some(a.mapping_id.clone()),
        ),
        None => (
            org.default_profile.clone(),
            org.default_storage_region.clone(),
            org.default_quota_bytes,
            None,
        ),
    };
    Ok(Resolution::Bind(Box::new(Binding {
        user: UserSpec {
            email: u.email.clone(),
            user_name: u.user_name.clone(),
            external_id: Some(u.external_id.clone()),
            source,
            profile,
            storage_region,
            quota_bytes,
            attrs: u.attrs.clone(),
            mapping_id,
            also_known_as: u.also_known_as.clone(),
            // The outage fall-back's stored copy carries no attributes: it proves nothing.
            reenable: u.attrs.is_some() && u.enabled,
        },
        device_name: None,
        mapping_id: None,
        old_device_name: None,
        restore_data: None,
        note: u.note.clone(),
    })))
}
