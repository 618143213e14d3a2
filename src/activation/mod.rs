//! The activation pipeline, one shape for every IMD version and both storage backends:
//! validate request → verify token (cached per token string) → for a resolver with a network
//! phase: a read-only check that the organization and token row are still valid, then the
//! look-up under the resolver's own timeout and in-flight limit → one write transaction
//! (`Store::write`) that checks the organization and token row, identifies the device, resolves
//! the user from the database (v4: the device map), ensures the user (just in time), binds the
//! device, consumes the mapping, records the attempt and, last, takes a token use.
//! The transaction names the identities it touches (`LockKey`s): SQLite's single writer runs
//! jobs one at a time anyway, PostgreSQL takes them as advisory locks, so concurrent
//! activations of one device or one user converge on one row on every replica; the unique
//! indexes are the safety net, and a job that still loses a race is retried.

pub mod audit;
pub mod limiter;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use imd_tokens::{Claims, ImdVersion, TokenError};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::crypto::{CredentialKey, ct_eq, sha256_hex};
use crate::domain::request::ActivationRequest;
use crate::resolve::azure::AzureResolver;
use crate::resolve::ldap::{Decision, LoginName};
use crate::resolve::ttl::TtlMap;
use crate::resolve::{
    Binding, Budget, LdapResolver, LookupContext, Prepared, Resolution, ResolveContext,
    ResolveError, Resolver, UserSpec,
};
use crate::store::{
    ActivationRecord, DeviceReport, DeviceRow, DeviceWrite, LockKey, NewDevice, NewUser, OrgRow,
    Reassignment, Store, StoreError, TokenRow, TxJob, UseOutcome, UserRow, UserStatus, WriteTx,
    new_id,
};
use crate::tokens::TokenService;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("token is not valid: {0}")]
    TokenInvalid(String),
    #[error("token has expired")]
    TokenExpired,
    #[error("token has been revoked")]
    TokenRevoked,
    #[error("token has no uses left")]
    TokenExhausted,
    #[error("{0}")]
    UserNotMapped(String),
    #[error("no device mapping matches this device's identifiers")]
    DeviceNotMapped,
    #[error("{0}")]
    DeviceConflict(String),
    #[error("the user is preserved: its devices cannot activate")]
    UserPreserved,
    #[error("the user is deleted: its devices cannot activate")]
    UserDeleted,
    #[error("directory unavailable: {0}")]
    DirectoryUnavailable(String),
    #[error("{0}")]
    UserNotFound(String),
    #[error("{0}")]
    UserDisabled(String),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("{0}")]
    ConnectorUnavailable(String),
    #[error("directory error: {0}")]
    DirectoryError(String),
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    /// Lost a race with a concurrent writer (retried inside the store; a 503 if it persists).
    #[error("conflicting concurrent activation: {0}")]
    Contention(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ActivationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ActivationError::Unavailable(m),
            e @ (StoreError::Conflict | StoreError::Retry(_)) => {
                ActivationError::Contention(e.to_string())
            }
            other => ActivationError::Internal(other.to_string()),
        }
    }
}

impl From<ResolveError> for ActivationError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::DeviceNotMapped => ActivationError::DeviceNotMapped,
            ResolveError::UserNotMapped(m) => ActivationError::UserNotMapped(m),
            ResolveError::Store(s) => s.into(),
            ResolveError::Unavailable(m) => ActivationError::DirectoryUnavailable(m),
            ResolveError::InvalidRequest(m) => ActivationError::InvalidRequest(m),
            ResolveError::UserNotFound(m) => ActivationError::UserNotFound(m),
            ResolveError::UserDisabled(m) => ActivationError::UserDisabled(m),
            ResolveError::InvalidCredentials => ActivationError::InvalidCredentials,
            ResolveError::ConnectorUnavailable(m) => ActivationError::ConnectorUnavailable(m),
            ResolveError::Directory(m) => ActivationError::DirectoryError(m),
            ResolveError::UserPreserved => ActivationError::UserPreserved,
            ResolveError::UserDeleted => ActivationError::UserDeleted,
        }
    }
}

impl From<crate::tokens::VerifyError> for ActivationError {
    fn from(e: crate::tokens::VerifyError) -> Self {
        match e {
            crate::tokens::VerifyError::Token(t) => t.into(),
            crate::tokens::VerifyError::Store(s) => s.into(),
        }
    }
}

impl From<TokenError> for ActivationError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired { .. } => ActivationError::TokenExpired,
            other => ActivationError::TokenInvalid(other.kind().replace('_', " ")),
        }
    }
}

impl ActivationError {
    /// Stable outcome code, as recorded in the audit trail and sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            ActivationError::InvalidRequest(_) => "invalid_request",
            ActivationError::TokenInvalid(_) => "token_invalid",
            ActivationError::TokenExpired => "token_expired",
            ActivationError::TokenRevoked => "token_revoked",
            ActivationError::TokenExhausted => "token_exhausted",
            ActivationError::UserNotMapped(_) => "user_not_mapped",
            ActivationError::DeviceNotMapped => "device_not_mapped",
            ActivationError::DeviceConflict(_) => "device_conflict",
            ActivationError::UserPreserved => "user_preserved",
            ActivationError::UserDeleted => "user_deleted",
            ActivationError::DirectoryUnavailable(_) => "directory_unavailable",
            ActivationError::UserNotFound(_) => "user_not_found",
            ActivationError::UserDisabled(_) => "user_disabled",
            ActivationError::InvalidCredentials => "invalid_credentials",
            ActivationError::ConnectorUnavailable(_) => "connector_unavailable",
            ActivationError::DirectoryError(_) => "directory_error",
            ActivationError::Unavailable(_) | ActivationError::Contention(_) => "unavailable",
            ActivationError::Internal(_) => "internal",
        }
    }
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ActivationResponse {
    pub device_id: String,
    pub user_id: String,
    pub user_created: bool,
    pub device_created: bool,
    pub replaced_device_id: Option<String>,
    pub restore_data: Option<String>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub device_credential: String,
}

#[derive(Debug, Clone)]
pub struct ActivationOutcome {
    /// 201 for a new binding, 200 for a repeat.
    pub created: bool,
    pub response: ActivationResponse,
}

/// What is known about a request for the audit trail, even when it fails early.
#[derive(Debug, Clone, Default)]
pub struct AttemptContext {
    pub org_id: Option<String>,
    pub token_id: Option<String>,
    /// The token's IMD version, once its signature is verified (for metrics).
    pub version: Option<ImdVersion>,
}

/// A resolver with its share of the service.
struct Slot {
    resolver: Arc<dyn Resolver>,
    /// Network resolvers only: permits for look-ups in flight.
    permits: Option<(Budget, Arc<Semaphore>)>,
}

pub struct Activator {
    store: Store,
    tokens: Arc<TokenService>,
    binder: Binder,
    resolvers: HashMap<ImdVersion, Slot>,
    /// IMD v2's resolver, for password activations and web logins.
    ldap: Option<Arc<LdapResolver>>,
    azure: Option<Arc<AzureResolver>>,
    network_budget: Budget,
    /// The read-only pre-check of network look-ups, kept for `PRECHECK_TTL` (the write
    /// transaction checks the rows again, so a stale entry can only cost a wasted look-up).
    precheck: TtlMap<(String, String), (OrgRow, TokenRow)>,
}

const PRECHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);
const PRECHECK_MAX: usize = 10_000;

/// Password activations have no deployment token; they are recorded against this per-organization
/// token row (never signed, so it cannot be presented). Revoking it turns password activation off.
pub fn password_token_id(org_id: &str) -> String {
    format!("pwd-{org_id}")
}

/// The database half of an activation: runs inside the write transaction, so it owns everything
/// it needs.
#[derive(Clone)]
struct Binder {
    credentials: CredentialKey,
}

impl Activator {
    pub fn new(
        store: Store,
        tokens: Arc<TokenService>,
        credentials: CredentialKey,
        resolvers: HashMap<ImdVersion, Arc<dyn Resolver>>,
        network_budget: Budget,
    ) -> Self {
        let resolvers = resolvers
            .into_iter()
            .map(|(v, resolver)| {
                // Each network resolver gets permits of its own: one slow directory cannot use
                // up another's, and the device map needs none.
                let permits = resolver.network_phase().then(|| {
                    let mut b = network_budget;
                    if let Some(t) = resolver.timeout() {
                        b.timeout = t;
                    }
                    (b, Arc::new(Semaphore::new(b.max_in_flight.max(1))))
                });
                (v, Slot { resolver, permits })
            })
            .collect();
        Activator {
            store,
            tokens,
            binder: Binder { credentials },
            resolvers,
            ldap: None,
            azure: None,
            network_budget,
            precheck: TtlMap::new(PRECHECK_TTL, PRECHECK_MAX),
        }
    }

    /// An admin changed the organization's settings or tokens here: drop its cached pre-checks.
    pub fn org_changed(&self, org_id: &str) {
        self.precheck.retain(|(o, _)| o != org_id);
    }

    async fn org_and_token_cached(
        &self,
        org_id: &str,
        token_id: &str,
    ) -> Result<(OrgRow, TokenRow), ActivationError> {
        let key = (org_id.to_string(), token_id.to_string());
        if let Some(hit) = self.precheck.get(&key) {
            return Ok(hit);
        }
        let (org, token) = self.store.org_and_token(org_id, token_id).await?;
        let org =
            org.ok_or_else(|| ActivationError::TokenInvalid("unknown organization".into()))?;
        let token = token.ok_or_else(|| ActivationError::TokenInvalid("unknown token".into()))?;
        self.precheck.insert(key, (org.clone(), token.clone()));
        Ok((org, token))
    }

    /// Enables IMD v2 (and password activation / web login) with this resolver.
    pub fn with_ldap(mut self, ldap: Arc<LdapResolver>) -> Self {
        let permits = Arc::new(Semaphore::new(self.network_budget.max_in_flight.max(1)));
        // A v2 resolver given explicitly (tests plug in their own) takes precedence.
        self.resolvers.entry(ImdVersion::V2).or_insert(Slot {
            resolver: ldap.clone(),
            permits: Some((self.network_budget, permits)),
        });
        self.ldap = Some(ldap);
        self
    }

    /// An admin changed an organization's AD/LDAP mappings here.
    pub fn ldap_mappings_changed(&self, org_id: &str) {
        if let Some(l) = &self.ldap {
            l.mappings_changed(org_id);
        }
    }

    /// Enables IMD v5 with this resolver (an explicitly given v5 resolver takes precedence).
    pub fn with_azure(mut self, azure: Arc<AzureResolver>) -> Self {
        let mut b = self.network_budget;
        if let Some(t) = azure.timeout() {
            b.timeout = t;
        }
        let permits = Arc::new(Semaphore::new(b.max_in_flight.max(1)));
        self.resolvers.entry(ImdVersion::V5).or_insert(Slot {
            resolver: azure.clone(),
            permits: Some((b, permits)),
        });
        self.azure = Some(azure);
        self
    }

    /// An admin changed the organization's Azure AD settings or mappings here.
    pub fn azure_changed(&self, org_id: &str) {
        if let Some(a) = &self.azure {
            a.changed(org_id);
        }
    }

    fn ldap(&self) -> Result<&Arc<LdapResolver>, ActivationError> {
        self.ldap.as_ref().ok_or_else(|| {
            ActivationError::InvalidRequest("AD/LDAP is not enabled on this service".into())
        })
    }

    /// Verifies a directory password through the connector (web login): the user and its
    /// mapping. Nothing is written; the password is neither kept nor logged.
    #[tracing::instrument(skip_all, fields(org_id = %org.id))]
    pub async fn verify_password(
        &self,
        org: &OrgRow,
        name: &LoginName,
        password: &str,
    ) -> Result<Decision, ActivationError> {
        let deadline = tokio::time::Instant::now() + self.network_budget.timeout;
        Ok(self
            .ldap()?
            .verify_password(org, name, password, deadline)
            .await?)
    }

    /// A manual activation with directory credentials instead of a token: bind as the user,
    /// then the same pipeline as a v2 activation.
    #[allow(clippy::too_many_arguments)] // the v2 request's parts plus the attempt's context
    #[tracing::instrument(skip_all, fields(org_id = %org.id))]
    #[allow(clippy::too_many_arguments)]
    pub async fn activate_with_password(
        &self,
        org: &OrgRow,
        name: &LoginName,
        password: &str,
        req: &ActivationRequest,
        remote_ip: Option<&str>,
        now: i64,
        ctx: &mut AttemptContext,
    ) -> Result<ActivationOutcome, ActivationError> {
        let ldap = self.ldap()?.clone();
        ctx.org_id = Some(org.id.clone());
        let token = self.password_token(org, now).await?;
        ctx.token_id = Some(token.id.clone());
        if token.revoked_at.is_some() {
            return Err(ActivationError::TokenRevoked);
        }
        let decision = self.verify_password(org, name, password).await?;
        self.store
            .write(ActivationJob {
                binder: self.binder.clone(),
                resolver: ldap,
                locks: lock_keys(&org.id, req),
                org_id: org.id.clone(),
                token_id: token.id.clone(),
                req: req.clone(),
                remote_ip: remote_ip.map(str::to_string),
                prepared: Prepared::User(decision.user),
                now,
            })
            .await
    }

    /// The organization's password-activation token row, created on first use.
    async fn password_token(&self, org: &OrgRow, now: i64) -> Result<TokenRow, ActivationError> {
        let id = password_token_id(&org.id);
        for _ in 0..2 {
            match self.store.token(&org.id, &id).await {
                Ok(t) => return Ok(t),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            let kid = self
                .tokens
                .current_kid()
                .ok_or_else(|| ActivationError::Internal("no signing key is loaded".into()))?;
            let new = crate::store::NewToken {
                id: &id,
                org_id: &org.id,
                version: ImdVersion::V2.as_str(),
                name: "password activation (directory credentials)",
                kid: &kid,
                issuer: self.tokens.issuer(),
                issued_at: now,
                expires_at: None,
                max_uses: None,
            };
            match self.store.insert_token(&new).await {
                Ok(t) => return Ok(t),
                // Created concurrently: read it.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ActivationError::Contention(
            "the password-activation token was created concurrently".into(),
        ))
    }

    /// Whether tokens of this IMD version can activate here (a resolver is configured).
    pub fn supports(&self, version: ImdVersion) -> bool {
        self.resolvers.contains_key(&version)
    }

    #[tracing::instrument(skip_all, fields(org_id, token_id))]
    pub async fn activate(
        &self,
        req: &ActivationRequest,
        remote_ip: Option<&str>,
        now: i64,
        ctx: &mut AttemptContext,
    ) -> Result<ActivationOutcome, ActivationError> {
        let claims = self.tokens.verify(&req.token, now).await?;
        // Signed by us, so these name the organization and token even if the request fails later.
        ctx.org_id = Some(claims.sub.clone());
        ctx.token_id = Some(claims.jti.clone());
        ctx.version = Some(claims.imd);
        tracing::Span::current().record("org_id", claims.sub.as_str());
        tracing::Span::current().record("token_id", claims.jti.as_str());
        let slot = self.resolvers.get(&claims.imd).ok_or_else(|| {
            ActivationError::TokenInvalid(format!("IMD {} is not enabled", claims.imd.as_str()))
        })?;
        let prepared = match &slot.permits {
            None => Prepared::Nothing,
            Some((budget, permits)) => {
                self.lookup(slot, *budget, permits, &claims, req, now)
                    .await?
            }
        };
        self.store
            .write(ActivationJob {
                binder: self.binder.clone(),
                resolver: slot.resolver.clone(),
                locks: lock_keys(&claims.sub, req),
                org_id: claims.sub,
                token_id: claims.jti,
                req: req.clone(),
                remote_ip: remote_ip.map(str::to_string),
                prepared,
                now,
            })
            .await
    }

    /// The network phase: only for a live organization and token, bounded in time and in how
    /// many run at once; nothing is written here.
    async fn lookup(
        &self,
        slot: &Slot,
        budget: Budget,
        permits: &Arc<Semaphore>,
        claims: &Claims,
        req: &ActivationRequest,
        now: i64,
    ) -> Result<Prepared, ActivationError> {
        let (org, token) = self.org_and_token_cached(&claims.sub, &claims.jti).await?;
        check_token_row(&token, now)?;
        let name = slot.resolver.name();
        let _permit = permits.clone().try_acquire_owned().map_err(|_| {
            ActivationError::DirectoryUnavailable(format!(
                "{name}: {} look-ups already in flight",
                budget.max_in_flight
            ))
        })?;
        let deadline = tokio::time::Instant::now() + budget.timeout;
        let lc = LookupContext {
            org: &org,
            token: &token,
            claims,
            request: req,
            deadline,
            now,
        };
        let started = std::time::Instant::now();
        let r = match tokio::time::timeout_at(deadline, slot.resolver.lookup(&lc)).await {
            Ok(found) => found.map_err(ActivationError::from),
            Err(_) => Err(ActivationError::DirectoryUnavailable(format!(
                "{name} did not answer within {} ms",
                budget.timeout.as_millis()
            ))),
        };
        record_lookup(name, started, r.as_ref().err());
        r
    }
}

/// One directory look-up in the metrics: by resolver, ok or the error's code.
fn record_lookup(resolver: &str, started: std::time::Instant, err: Option<&ActivationError>) {
    let result = err.map_or("ok", ActivationError::code);
    crate::metrics::DIRECTORY_LOOKUPS.inc(&[resolver, result]);
    crate::metrics::DIRECTORY_LOOKUP_DURATION.observe(&[resolver], started.elapsed());
}

/// The identities an activation may create or change: every identifier it reports. Two
/// activations that share one wait for each other (PostgreSQL); a hostname-only device and a
/// device reporting that hostname with a serial therefore also take turns.
fn lock_keys(org_id: &str, req: &ActivationRequest) -> Vec<LockKey> {
    [
        ("serial", &req.ids.serial),
        ("uuid", &req.ids.uuid),
        ("hostname", &req.ids.hostname),
    ]
    .into_iter()
    .filter_map(|(kind, v)| v.as_deref().map(|v| LockKey::new(org_id, kind, v)))
    .collect()
}

/// One activation as the store runs it (possibly more than once, see `TxJob`).
struct ActivationJob {
    binder: Binder,
    resolver: Arc<dyn Resolver>,
    locks: Vec<LockKey>,
    org_id: String,
    token_id: String,
    req: ActivationRequest,
    remote_ip: Option<String>,
    prepared: Prepared,
    now: i64,
}

impl TxJob for ActivationJob {
    type Output = ActivationOutcome;
    type Error = ActivationError;

    fn run<'t>(
        &'t self,
        tx: &'t mut dyn WriteTx,
    ) -> BoxFuture<'t, Result<ActivationOutcome, ActivationError>> {
        Box::pin(self.binder.activate(tx, self))
    }

    fn is_contention(e: &ActivationError) -> bool {
        matches!(e, ActivationError::Contention(_))
    }
}

impl Binder {
    async fn activate(
        &self,
        tx: &mut dyn WriteTx,
        job: &ActivationJob,
    ) -> Result<ActivationOutcome, ActivationError> {
        let (req, now) = (&job.req, job.now);
        let (org, token) = tx
            .begin_activation(&job.org_id, &job.token_id, &job.locks)
            .await?;
        let org =
            org.ok_or_else(|| ActivationError::TokenInvalid("unknown organization".into()))?;
        let token = token.ok_or_else(|| ActivationError::TokenInvalid("unknown token".into()))?;
        check_token_row(&token, now)?;
        if org.require_install_key && req.install_key.is_none() {
            return Err(ActivationError::InvalidRequest(
                "this organization requires device.install_key".into(),
            ));
        }
        let install_key_hash = req.install_key.as_deref().map(sha256_hex);

        let mut existing = tx.find_active(&org.id, &req.ids).await?;
        if let Some(d) = existing.as_ref().filter(|d| weak_match(d, req)) {
            // Matched only by hostname although the client now reports hardware identifiers:
            // the same machine only if the same person is signed in; otherwise it is another
            // machine that happens to share the name, and it gets no part of this device.
            let same = tx
                .user(&org.id, &d.user_id)
                .await?
                .is_some_and(|u| req.user.matches(&u.email_norm, &u.user_name));
            if !same {
                existing = None;
            }
        }
        if let Some(d) = &existing {
            check_install_key(d, install_key_hash.as_deref())?;
        }
        let started = std::time::Instant::now();
        let resolution = job
            .resolver
            .resolve(
                &mut *tx,
                &ResolveContext {
                    org: &org,
                    request: req,
                    existing: existing.as_ref(),
                    now,
                },
                &job.prepared,
            )
            .await
            .map_err(ActivationError::from);
        // A resolver without a network phase (the device map) looks up here, in the database;
        // the others were counted in `lookup`.
        if !job.resolver.network_phase() {
            record_lookup(job.resolver.name(), started, resolution.as_ref().err());
        }
        let resolution = resolution?;
        let note = match &resolution {
            Resolution::Bind(b) => b.note.clone(),
            Resolution::Keep => None,
        };
        let (outcome, take_use) = match (&existing, resolution) {
            (Some(d), Resolution::Keep) => {
                let user = tx.user(&org.id, &d.user_id).await?.ok_or_else(|| {
                    ActivationError::Internal(format!("device {} has no user", d.id))
                })?;
                check_user_status(&user)?;
                if !req.user.matches(&user.email_norm, &user.user_name) {
                    return Err(ActivationError::DeviceConflict(
                        "this device is already activated for another user".into(),
                    ));
                }
                let o = self
                    .repeat(
                        tx,
                        d,
                        &user,
                        &token,
                        req,
                        None,
                        install_key_hash.as_deref(),
                        now,
                    )
                    .await?;
                (o, false)
            }
            (None, Resolution::Keep) => return Err(ActivationError::DeviceNotMapped),
            (existing, Resolution::Bind(b)) => {
                self.bind(
                    tx,
                    &org,
                    &token,
                    req,
                    existing.as_ref(),
                    b,
                    install_key_hash.as_deref(),
                    now,
                )
                .await?
            }
        };
        let r = &outcome.response;
        let record = ActivationRecord {
            org_id: Some(org.id.clone()),
            token_id: Some(token.id.clone()),
            created_at: now,
            outcome: if outcome.created {
                "activated"
            } else {
                "reactivated"
            }
            .into(),
            status: if outcome.created { 201 } else { 200 },
            device_id: Some(r.device_id.clone()),
            user_id: Some(r.user_id.clone()),
            hostname: req.hostname.clone(),
            serial: req.serial.clone(),
            uuid: req.uuid.clone(),
            login: req.user.display(),
            remote_ip: job.remote_ip.clone(),
            message: [
                r.replaced_device_id
                    .as_ref()
                    .map(|id| format!("replaced device {id}")),
                note,
            ]
            .into_iter()
            .flatten()
            .reduce(|a, b| format!("{a}; {b}")),
        };
        // The token use last: on PostgreSQL the token row is the hottest row, so its lock is
        // held for as short a time as possible. `max_uses` is enforced by the conditional
        // increment; revocation and expiry were checked in this transaction.
        match tx
            .finish_activation(&record, take_use.then_some(&token), now)
            .await?
        {
            UseOutcome::Taken => Ok(outcome),
            UseOutcome::Exhausted => Err(ActivationError::TokenExhausted),
            UseOutcome::Revoked => Err(ActivationError::TokenRevoked),
        }
    }

    /// The same device again, same user: nothing new, the same credential back. `rename` is the
    /// device name of a fresh mapping for the device's current user.
    #[allow(clippy::too_many_arguments)]
    async fn repeat(
        &self,
        tx: &mut dyn WriteTx,
        d: &DeviceRow,
        user: &UserRow,
        token: &TokenRow,
        req: &ActivationRequest,
        rename: Option<&str>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<ActivationOutcome, ActivationError> {
        if !tx
            .refresh_device(d, &report(req), rename, install_key_hash, now)
            .await?
        {
            return Err(ActivationError::Contention(format!(
                "device {} changed concurrently",
                d.id
            )));
        }
        tx.touch_token(token, now).await?;
        Ok(ActivationOutcome {
            created: false,
            response: self.response(
                &d.id,
                d.credential_gen,
                user,
                false,
                false,
                d.replaces.clone(),
                d.restore_data.clone(),
            ),
        })
    }

    /// The device this binding supersedes: the mapping's `oldDeviceName`, or (the reference
    /// product's default) an active device of the same user with the same hostname.
    async fn superseded(
        &self,
        tx: &mut dyn WriteTx,
        b: &Binding,
        user: &UserRow,
        user_created: bool,
        req: &ActivationRequest,
        this_device: &str,
    ) -> Result<Option<DeviceRow>, ActivationError> {
        if user_created {
            // A user created a moment ago has no devices to replace.
            return Ok(None);
        }
        let old = match (&b.old_device_name, &req.ids.hostname) {
            (Some(old_name), _) => tx.active_by_name(&user.id, old_name).await?,
            (None, Some(host)) => tx.active_by_hostname(&user.id, host).await?,
            (None, None) => None,
        };
        Ok(old.filter(|o| o.id != this_device))
    }

    /// A new binding, or a fresh mapping for a device its user already has. The second value
    /// says whether a token use is to be taken (new bindings only).
    #[allow(clippy::too_many_arguments)]
    async fn bind(
        &self,
        tx: &mut dyn WriteTx,
        org: &OrgRow,
        token: &TokenRow,
        req: &ActivationRequest,
        existing: Option<&DeviceRow>,
        b: Box<Binding>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<(ActivationOutcome, bool), ActivationError> {
        let (mut user, user_created) = ensure_user(tx, &org.id, &b.user, now).await?;
        if user.status() == UserStatus::Preserved
            && b.user.reenable
            && user.source == b.user.source
            && tx.reenable_user(&org.id, &user.id, now).await?
        {
            user.status = UserStatus::Active.as_str().into();
            user.preserved_at = None;
        }
        check_user_status(&user)?;
        let name = b
            .device_name
            .clone()
            .or_else(|| req.hostname.clone())
            .unwrap_or_else(|| "device".into());

        if let Some(d) = existing
            && d.user_id == user.id
        {
            // A fresh mapping for a device its user already has: settle the mapping and take
            // its device name; everything else stays.
            consume_mapping(tx, &b, &d.id, now).await?;
            let o = self
                .repeat(tx, d, &user, token, req, Some(&name), install_key_hash, now)
                .await?;
            return Ok((o, false));
        }

        // A new binding: a new device, or a known device moving to another user.
        let device_id = existing.map_or_else(new_id, |d| d.id.clone());
        let replaced = match self
            .superseded(tx, &b, &user, user_created, req, &device_id)
            .await?
        {
            Some(old) => {
                if !tx.mark_replaced(&old.id, &device_id).await? {
                    // Replaced by a concurrent activation: start over (it is no longer active).
                    return Err(ActivationError::Contention(format!(
                        "device {} was replaced concurrently",
                        old.id
                    )));
                }
                Some(old.id)
            }
            None => None,
        };
        // What to restore only means something when a device was replaced.
        let restore = replaced
            .as_ref()
            .and(b.restore_data)
            .map(|r| r.as_str().to_string());
        let generation = existing.map_or(1, |d| d.credential_gen + 1);
        let credential_hash =
            sha256_hex(&self.credentials.device_credential(&device_id, generation));
        let (reassignment, insert);
        let reported = report(req);
        let write = match existing {
            // The new user's client gets a new credential generation: the old one stops working.
            // The install key stays: it belongs to the machine's agent, not to the user.
            Some(d) => {
                reassignment = Reassignment {
                    device: d,
                    user_id: &user.id,
                    name: &name,
                    credential_hash: &credential_hash,
                    token_id: &token.id,
                    restore_data: restore.as_deref(),
                    replaces: replaced.as_deref(),
                };
                DeviceWrite::Reassign(&reassignment)
            }
            None => {
                insert = NewDevice {
                    id: &device_id,
                    org_id: &org.id,
                    user_id: &user.id,
                    name: &name,
                    report: &reported,
                    install_key_hash,
                    credential_hash: &credential_hash,
                    token_id: &token.id,
                    restore_data: restore.as_deref(),
                    replaces: replaced.as_deref(),
                };
                DeviceWrite::Insert(&insert)
            }
        };
        let mapping = b
            .mapping_id
            .as_deref()
            .map(|m| (m, b.user.email.normalized()));
        if !tx.bind_device(write, mapping, now).await? {
            return Err(mapping_race(&b));
        }
        let outcome = ActivationOutcome {
            created: true,
            response: self.response(
                &device_id,
                generation,
                &user,
                user_created,
                existing.is_none(),
                replaced,
                restore,
            ),
        };
        Ok((outcome, true))
    }

    #[allow(clippy::too_many_arguments)]
    fn response(
        &self,
        device_id: &str,
        generation: i64,
        user: &UserRow,
        user_created: bool,
        device_created: bool,
        replaced: Option<String>,
        restore: Option<String>,
    ) -> ActivationResponse {
        ActivationResponse {
            device_id: device_id.to_string(),
            user_id: user.id.clone(),
            user_created,
            device_created,
            replaced_device_id: replaced,
            restore_data: restore,
            profile: user.profile.clone(),
            storage_region: user.storage_region.clone(),
            quota_bytes: user.quota_bytes,
            device_credential: self.credentials.device_credential(device_id, generation),
        }
    }
}

fn report(req: &ActivationRequest) -> DeviceReport<'_> {
    DeviceReport {
        ids: &req.ids,
        hostname: req.hostname.as_deref(),
        serial: req.serial.as_deref(),
        uuid: req.uuid.as_deref(),
        os: req.os.as_deref(),
        os_version: req.os_version.as_deref(),
        client_version: req.client_version.as_deref(),
    }
}

/// A hostname-only device matched by a request that carries a serial or UUID (rule 3 of the
/// identity rules, the weakest evidence).
fn weak_match(d: &DeviceRow, req: &ActivationRequest) -> bool {
    d.serial_norm.is_none()
        && d.uuid_norm.is_none()
        && (req.ids.serial.is_some() || req.ids.uuid.is_some())
}

fn check_token_row(t: &TokenRow, now: i64) -> Result<(), ActivationError> {
    if t.revoked_at.is_some() {
        return Err(ActivationError::TokenRevoked);
    }
    if t.expires_at.is_some_and(|e| e <= now) {
        return Err(ActivationError::TokenExpired);
    }
    Ok(())
}

/// A device that was activated with an install key only answers to that key.
fn check_install_key(d: &DeviceRow, presented_hash: Option<&str>) -> Result<(), ActivationError> {
    match (&d.install_key_hash, presented_hash) {
        (Some(stored), Some(p)) if ct_eq(stored, p) => Ok(()),
        (Some(_), _) => Err(ActivationError::DeviceConflict(
            "this device was activated with a different install key".into(),
        )),
        (None, _) => Ok(()),
    }
}

/// A preserved or deleted user's devices are refused (directory sync sets those states).
fn check_user_status(u: &UserRow) -> Result<(), ActivationError> {
    match u.status() {
        UserStatus::Active => Ok(()),
        UserStatus::Preserved => Err(ActivationError::UserPreserved),
        UserStatus::Deleted => Err(ActivationError::UserDeleted),
    }
}

/// The user for this binding, created just in time if missing: `(user, created)`. A directory
/// user is matched by its immutable id first (an email can change, the id cannot), then by
/// email (and linked to the id); only then is a new user created.
async fn ensure_user(
    tx: &mut dyn WriteTx,
    org_id: &str,
    spec: &UserSpec,
    now: i64,
) -> Result<(UserRow, bool), ActivationError> {
    let new = NewUser {
        org_id,
        email: spec.email.as_str(),
        email_norm: spec.email.normalized(),
        user_name: &spec.user_name,
        external_id: spec.external_id.as_deref(),
        source: spec.source,
        profile: &spec.profile,
        storage_region: &spec.storage_region,
        quota_bytes: spec.quota_bytes,
        attrs: spec.attrs.as_ref(),
        mapping_id: spec.mapping_id.as_deref(),
    };
    for _ in 0..2 {
        if let Some(ext) = &spec.external_id
            && let Some(u) = tx.user_by_external_id(org_id, spec.source, ext).await?
        {
            return Ok((u, false));
        }
        // The same person known from another directory (a hybrid user activated through v2).
        if let Some((source, ext)) = &spec.also_known_as
            && let Some(u) = tx.user_by_external_id(org_id, source, ext).await?
        {
            return Ok((u, false));
        }
        if let Some((u, created)) = tx.user_by_email_or_insert(&new, now).await? {
            if !created && spec.external_id.is_some() && u.external_id.is_none() {
                tx.link_external_id(&u.id, &new, now).await?;
            }
            return Ok((u, created));
        }
        // Not inserted and not found by email: a concurrent activation created this user
        // under its external id a moment ago; look again.
    }
    Err(ActivationError::Contention(
        "the user was created and removed concurrently".into(),
    ))
}

async fn consume_mapping(
    tx: &mut dyn WriteTx,
    b: &Binding,
    device_id: &str,
    now: i64,
) -> Result<(), ActivationError> {
    if let Some(m) = &b.mapping_id
        && !tx
            .consume_mapping(m, b.user.email.normalized(), device_id, now)
            .await?
    {
        return Err(mapping_race(b));
    }
    Ok(())
}

/// Consumed by a concurrent activation since this transaction read it: start over.
fn mapping_race(b: &Binding) -> ActivationError {
    ActivationError::Contention(format!(
        "mapping {} was consumed concurrently",
        b.mapping_id.as_deref().unwrap_or("-")
    ))
}
