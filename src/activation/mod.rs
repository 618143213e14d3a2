//! The activation pipeline, one shape for every IMD version:
//! validate request → verify token → resolve the user (per-version resolver, outside any
//! transaction) → in one write transaction: check the token row, ensure the user (just in time),
//! bind the device, consume the mapping and a token use, record the attempt.
//! Concurrency is handled by conditional writes and unique indexes: a write that finds the world
//! changed since the look-ups aborts the transaction and the attempt is re-run from the look-ups.

pub mod audit;
pub mod limiter;
pub mod request;

use std::collections::HashMap;
use std::sync::Arc;

use imd_tokens::{ImdVersion, TokenError};
use serde::Serialize;

use crate::crypto::{CredentialKey, ct_eq, sha256_hex};
use crate::resolve::{Binding, Resolution, ResolveContext, ResolveError, Resolver};
use crate::store::{
    self, ActivationRecord, DeviceReport, DeviceRow, NewDevice, NewUser, OrgRow, Store, StoreError,
    TokenRow, UserRow, new_id,
};
use crate::tokens::TokenService;
use request::ActivationRequest;

/// Attempts before a contended activation gives up with a retryable error.
const MAX_ATTEMPTS: usize = 5;

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
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ActivationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ActivationError::Unavailable(m),
            StoreError::Conflict => ActivationError::Unavailable("contention".into()),
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
            ResolveError::Unavailable(m) => ActivationError::Unavailable(m),
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
            ActivationError::Unavailable(_) => "unavailable",
            ActivationError::Internal(_) => "internal",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
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
}

pub struct Activator {
    store: Store,
    tokens: Arc<TokenService>,
    credentials: CredentialKey,
    resolvers: HashMap<ImdVersion, Arc<dyn Resolver>>,
}

/// A write that lost a race: re-run from the look-ups.
enum Attempt {
    Done(ActivationOutcome),
    Retry,
}

impl Activator {
    pub fn new(
        store: Store,
        tokens: Arc<TokenService>,
        credentials: CredentialKey,
        resolvers: HashMap<ImdVersion, Arc<dyn Resolver>>,
    ) -> Self {
        Activator {
            store,
            tokens,
            credentials,
            resolvers,
        }
    }

    #[tracing::instrument(skip_all, fields(org_id, token_id, device_id))]
    pub async fn activate(
        &self,
        req: &ActivationRequest,
        remote_ip: Option<&str>,
        now: i64,
        ctx: &mut AttemptContext,
    ) -> Result<ActivationOutcome, ActivationError> {
        let claims = self.tokens.verify(&req.token, now).await?;
        let org = match self.store.org(&claims.sub).await {
            Ok(o) => o,
            Err(StoreError::NotFound) => {
                return Err(ActivationError::TokenInvalid("unknown organization".into()));
            }
            Err(e) => return Err(e.into()),
        };
        ctx.org_id = Some(org.id.clone());
        tracing::Span::current().record("org_id", org.id.as_str());
        let token = match self.store.token(&org.id, &claims.jti).await {
            Ok(t) => t,
            Err(StoreError::NotFound) => {
                return Err(ActivationError::TokenInvalid("unknown token".into()));
            }
            Err(e) => return Err(e.into()),
        };
        ctx.token_id = Some(token.id.clone());
        tracing::Span::current().record("token_id", token.id.as_str());
        check_token_row(&token, now)?;
        if org.require_install_key && req.install_key.is_none() {
            return Err(ActivationError::InvalidRequest(
                "this organization requires device.install_key".into(),
            ));
        }
        let resolver = self.resolvers.get(&claims.imd).ok_or_else(|| {
            ActivationError::TokenInvalid(format!("IMD {} is not enabled", claims.imd.as_str()))
        })?;
        let install_key_hash = req.install_key.as_deref().map(sha256_hex);
        for _ in 0..MAX_ATTEMPTS {
            let mut existing = self.store.find_active_device(&org.id, &req.ids).await?;
            if let Some(d) = existing.as_ref().filter(|d| weak_match(d, req)) {
                // Matched only by hostname although the client now reports hardware identifiers:
                // the same machine only if the same person is signed in; otherwise it is another
                // machine that happens to share the name, and it gets no part of this device.
                let user = self.store.user(&org.id, &d.user_id).await?;
                if !req.user.matches(&user.email_norm, &user.user_name) {
                    existing = None;
                }
            }
            if let Some(d) = &existing {
                check_install_key(d, install_key_hash.as_deref())?;
            }
            let resolution = match resolver
                .resolve(&ResolveContext {
                    org: &org,
                    request: req,
                    existing: existing.as_ref(),
                })
                .await
            {
                Ok(r) => r,
                // The look-ups are separate reads: a concurrent activation of this very device may
                // have consumed the mapping and created the device between them. Look again.
                Err(ResolveError::DeviceNotMapped)
                    if existing.is_none()
                        && self
                            .store
                            .find_active_device(&org.id, &req.ids)
                            .await?
                            .is_some() =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let attempt = self
                .commit(
                    &org,
                    &token,
                    req,
                    existing,
                    resolution,
                    install_key_hash.as_deref(),
                    remote_ip,
                    now,
                )
                .await;
            match attempt {
                Ok(Attempt::Done(o)) => {
                    tracing::Span::current().record("device_id", o.response.device_id.as_str());
                    return Ok(o);
                }
                Ok(Attempt::Retry) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ActivationError::Unavailable(
            "too much contention on this device, retry".into(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        org: &OrgRow,
        token: &TokenRow,
        req: &ActivationRequest,
        existing: Option<DeviceRow>,
        resolution: Resolution,
        install_key_hash: Option<&str>,
        remote_ip: Option<&str>,
        now: i64,
    ) -> Result<Attempt, ActivationError> {
        // For a repeat, the device's user is read before taking the write lock: a device changes
        // user only through `reassign`, which `refresh` (conditional on the user id) detects.
        let keep_user = match (&existing, &resolution) {
            (Some(d), Resolution::Keep) => {
                let user = match self.store.user(&org.id, &d.user_id).await {
                    Err(StoreError::NotFound) => return Ok(Attempt::Retry),
                    other => other?,
                };
                if !req.user.matches(&user.email_norm, &user.user_name) {
                    return Err(ActivationError::DeviceConflict(
                        "this device is already activated for another user".into(),
                    ));
                }
                Some(user)
            }
            _ => None,
        };
        let mut tx = self.store.begin().await?;
        let result = match (&existing, resolution, keep_user) {
            (Some(d), Resolution::Keep, Some(user)) => {
                self.repeat(&mut tx, d, &user, token, req, None, install_key_hash, now)
                    .await
            }
            (_, Resolution::Keep, _) => return Ok(Attempt::Retry),
            (existing, Resolution::Bind(b), _) => {
                self.bind(
                    &mut tx,
                    org,
                    token,
                    req,
                    existing.as_ref(),
                    b,
                    install_key_hash,
                    now,
                )
                .await
            }
        };
        let outcome = match result {
            Ok(o) => o,
            Err(Retryable::Retry) => return Ok(Attempt::Retry),
            Err(Retryable::Fail(e)) => return Err(e),
        };
        let r = &outcome.response;
        store::activations::insert(
            &mut tx,
            &ActivationRecord {
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
                remote_ip: remote_ip.map(str::to_string),
                message: r
                    .replaced_device_id
                    .as_ref()
                    .map(|id| format!("replaced device {id}")),
            },
        )
        .await?;
        match tx.commit().await {
            Ok(()) => Ok(Attempt::Done(outcome)),
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict => Ok(Attempt::Retry),
                other => Err(other.into()),
            },
        }
    }

    /// The same device again, same user: nothing new, the same credential back. `rename` is the
    /// device name of a fresh mapping for the device's current user.
    #[allow(clippy::too_many_arguments)]
    async fn repeat(
        &self,
        tx: &mut store::Conn,
        d: &DeviceRow,
        user: &UserRow,
        token: &TokenRow,
        req: &ActivationRequest,
        rename: Option<&str>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<ActivationOutcome, Retryable> {
        store::devices::refresh(tx, d, &report(req), rename, install_key_hash, now).await?;
        store::tokens::touch(tx, &token.id, now).await?;
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
        tx: &mut store::Conn,
        b: &Binding,
        user: &UserRow,
        user_created: bool,
        req: &ActivationRequest,
        this_device: &str,
    ) -> Result<Option<DeviceRow>, Retryable> {
        if user_created {
            // A user created a moment ago has no devices to replace.
            return Ok(None);
        }
        let old = match (&b.old_device_name, &req.ids.hostname) {
            (Some(old_name), _) => store::devices::active_by_name(tx, &user.id, old_name).await?,
            (None, Some(host)) => store::devices::active_by_hostname(tx, &user.id, host).await?,
            (None, None) => None,
        };
        Ok(old.filter(|o| o.id != this_device))
    }

    #[allow(clippy::too_many_arguments)]
    async fn bind(
        &self,
        tx: &mut store::Conn,
        org: &OrgRow,
        token: &TokenRow,
        req: &ActivationRequest,
        existing: Option<&DeviceRow>,
        b: Box<Binding>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<ActivationOutcome, Retryable> {
        let spec = &b.user;
        let (user, user_created) = store::users::ensure_user(
            tx,
            &NewUser {
                org_id: &org.id,
                email: spec.email.as_str(),
                email_norm: spec.email.normalized(),
                user_name: &spec.user_name,
                external_id: spec.external_id.as_deref(),
                source: spec.source,
                profile: &spec.profile,
                storage_region: &spec.storage_region,
                quota_bytes: spec.quota_bytes,
            },
            now,
        )
        .await?;
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
            return self
                .repeat(tx, d, &user, token, req, Some(&name), install_key_hash, now)
                .await;
        }

        // A new binding: a new device, or a known device moving to another user.
        take_token_use(tx, token, now).await?;
        let device_id = existing.map_or_else(new_id, |d| d.id.clone());
        let replaced = match self
            .superseded(tx, &b, &user, user_created, req, &device_id)
            .await?
        {
            Some(old) => {
                if !store::devices::mark_replaced(tx, &old.id, &device_id).await? {
                    return Err(Retryable::Retry);
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
        match existing {
            Some(d) => {
                // The new user's client gets a new credential generation: the old one stops working.
                store::devices::reassign(
                    tx,
                    d,
                    &user.id,
                    &name,
                    &credential_hash,
                    &token.id,
                    restore.as_deref(),
                    replaced.as_deref(),
                    now,
                )
                .await?;
            }
            None => {
                store::devices::insert(
                    tx,
                    &NewDevice {
                        id: &device_id,
                        org_id: &org.id,
                        user_id: &user.id,
                        name: &name,
                        report: &report(req),
                        install_key_hash,
                        credential_hash: &credential_hash,
                        token_id: &token.id,
                        restore_data: restore.as_deref(),
                        replaces: replaced.as_deref(),
                    },
                    now,
                )
                .await?;
            }
        }
        consume_mapping(tx, &b, &device_id, now).await?;
        Ok(ActivationOutcome {
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
        })
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

/// Errors inside the transaction: either a lost race (re-run) or a real refusal.
enum Retryable {
    Retry,
    Fail(ActivationError),
}

impl From<StoreError> for Retryable {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Retryable::Retry,
            other => Retryable::Fail(other.into()),
        }
    }
}

impl From<ActivationError> for Retryable {
    fn from(e: ActivationError) -> Self {
        Retryable::Fail(e)
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

async fn take_token_use(tx: &mut store::Conn, token: &TokenRow, now: i64) -> Result<(), Retryable> {
    if store::tokens::consume_use(tx, &token.id, now).await? {
        return Ok(());
    }
    // Tell revoked (changed since we looked) from exhausted.
    let row = store::tokens::token_in(tx, &token.id).await?;
    match row {
        Some(t) if t.revoked_at.is_some() => Err(ActivationError::TokenRevoked.into()),
        _ => Err(ActivationError::TokenExhausted.into()),
    }
}

async fn consume_mapping(
    tx: &mut store::Conn,
    b: &Binding,
    device_id: &str,
    now: i64,
) -> Result<(), Retryable> {
    if let Some(m) = &b.mapping_id
        && !store::mappings::consume(tx, m, device_id, now).await?
    {
        return Err(Retryable::Retry);
    }
    Ok(())
}
