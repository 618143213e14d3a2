//! The activation pipeline, one shape for every IMD version:
//! validate request → verify token (cached per token string) → resolver's network phase, if any
//! (outside any transaction) → one job on the group-commit writer (`store::writer`), which in a
//! single write transaction checks the organization and token row, identifies the device,
//! resolves the user from the database (v4: the device map), ensures the user (just in time),
//! binds the device, consumes the mapping and a token use, and records the attempt.
//! Every job runs serialized on the writer, so what it reads cannot change before it writes:
//! concurrent activations of one device or one user converge on one row by construction, and
//! the unique indexes are the safety net.

pub mod audit;
pub mod limiter;
pub mod request;

use std::collections::HashMap;
use std::sync::Arc;

use imd_tokens::{ImdVersion, TokenError};
use serde::Serialize;

use rusqlite::Connection;

use crate::crypto::{CredentialKey, ct_eq, sha256_hex};
use crate::resolve::{Binding, Resolution, ResolveContext, ResolveError, Resolver};
use crate::store::{
    ActivationRecord, DeviceReport, DeviceRow, NewDevice, NewUser, OrgRow, Store, StoreError,
    TokenRow, UserRow, hot, new_id,
};
use crate::tokens::TokenService;
use request::ActivationRequest;

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
            // Cannot happen on the serialized writer; if a constraint fires anyway, retrying is right.
            StoreError::Conflict => ActivationError::Unavailable("conflicting write".into()),
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
    binder: Binder,
    resolvers: HashMap<ImdVersion, Arc<dyn Resolver>>,
}

/// The database half of an activation: runs as a job on the writer thread, so it owns everything
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
    ) -> Self {
        Activator {
            store,
            tokens,
            binder: Binder { credentials },
            resolvers,
        }
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
        tracing::Span::current().record("org_id", claims.sub.as_str());
        tracing::Span::current().record("token_id", claims.jti.as_str());
        let resolver = self.resolvers.get(&claims.imd).cloned().ok_or_else(|| {
            ActivationError::TokenInvalid(format!("IMD {} is not enabled", claims.imd.as_str()))
        })?;
        let prepared = resolver.prepare(req).await?;
        let binder = self.binder.clone();
        let job = Job {
            org_id: claims.sub,
            token_id: claims.jti,
            req: req.clone(),
            remote_ip: remote_ip.map(str::to_string),
            now,
        };
        self.store
            .hot()
            .run(move |conn| binder.activate(conn, &*resolver, job, prepared))
            .await
    }
}

/// One activation as the writer runs it.
struct Job {
    org_id: String,
    token_id: String,
    req: ActivationRequest,
    remote_ip: Option<String>,
    now: i64,
}

impl Binder {
    fn activate(
        &self,
        conn: &Connection,
        resolver: &dyn Resolver,
        job: Job,
        prepared: crate::resolve::Prepared,
    ) -> Result<ActivationOutcome, ActivationError> {
        let Job {
            org_id,
            token_id,
            req,
            remote_ip,
            now,
        } = job;
        let req = &req;
        let org = hot::org(conn, &org_id)?
            .ok_or_else(|| ActivationError::TokenInvalid("unknown organization".into()))?;
        let token = hot::token(conn, &org.id, &token_id)?
            .ok_or_else(|| ActivationError::TokenInvalid("unknown token".into()))?;
        check_token_row(&token, now)?;
        if org.require_install_key && req.install_key.is_none() {
            return Err(ActivationError::InvalidRequest(
                "this organization requires device.install_key".into(),
            ));
        }
        let install_key_hash = req.install_key.as_deref().map(sha256_hex);

        let mut existing = hot::find_active(conn, &org.id, &req.ids)?;
        if let Some(d) = existing.as_ref().filter(|d| weak_match(d, req)) {
            // Matched only by hostname although the client now reports hardware identifiers:
            // the same machine only if the same person is signed in; otherwise it is another
            // machine that happens to share the name, and it gets no part of this device.
            let same = hot::user(conn, &org.id, &d.user_id)?
                .is_some_and(|u| req.user.matches(&u.email_norm, &u.user_name));
            if !same {
                existing = None;
            }
        }
        if let Some(d) = &existing {
            check_install_key(d, install_key_hash.as_deref())?;
        }
        let resolution = resolver.resolve(
            conn,
            &ResolveContext {
                org: &org,
                request: req,
                existing: existing.as_ref(),
            },
            prepared,
        )?;
        let outcome = match (&existing, resolution) {
            (Some(d), Resolution::Keep) => {
                let user = hot::user(conn, &org.id, &d.user_id)?.ok_or_else(|| {
                    ActivationError::Internal(format!("device {} has no user", d.id))
                })?;
                if !req.user.matches(&user.email_norm, &user.user_name) {
                    return Err(ActivationError::DeviceConflict(
                        "this device is already activated for another user".into(),
                    ));
                }
                self.repeat(
                    conn,
                    d,
                    &user,
                    &token,
                    req,
                    None,
                    install_key_hash.as_deref(),
                    now,
                )?
            }
            (None, Resolution::Keep) => return Err(ActivationError::DeviceNotMapped),
            (existing, Resolution::Bind(b)) => self.bind(
                conn,
                &org,
                &token,
                req,
                existing.as_ref(),
                b,
                install_key_hash.as_deref(),
                now,
            )?,
        };
        let r = &outcome.response;
        hot::insert_activation(
            conn,
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
                remote_ip,
                message: r
                    .replaced_device_id
                    .as_ref()
                    .map(|id| format!("replaced device {id}")),
            },
        )?;
        Ok(outcome)
    }

    /// The same device again, same user: nothing new, the same credential back. `rename` is the
    /// device name of a fresh mapping for the device's current user.
    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &self,
        conn: &Connection,
        d: &DeviceRow,
        user: &UserRow,
        token: &TokenRow,
        req: &ActivationRequest,
        rename: Option<&str>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<ActivationOutcome, ActivationError> {
        hot::refresh(conn, d, &report(req), rename, install_key_hash, now)?;
        hot::touch_token(conn, &token.id, now)?;
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
    fn superseded(
        &self,
        conn: &Connection,
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
            (Some(old_name), _) => hot::active_by_name(conn, &user.id, old_name)?,
            (None, Some(host)) => hot::active_by_hostname(conn, &user.id, host)?,
            (None, None) => None,
        };
        Ok(old.filter(|o| o.id != this_device))
    }

    #[allow(clippy::too_many_arguments)]
    fn bind(
        &self,
        conn: &Connection,
        org: &OrgRow,
        token: &TokenRow,
        req: &ActivationRequest,
        existing: Option<&DeviceRow>,
        b: Box<Binding>,
        install_key_hash: Option<&str>,
        now: i64,
    ) -> Result<ActivationOutcome, ActivationError> {
        let spec = &b.user;
        let (user, user_created) = hot::ensure_user(
            conn,
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
        )?;
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
            consume_mapping(conn, &b, &d.id, now)?;
            return self.repeat(
                conn,
                d,
                &user,
                token,
                req,
                Some(&name),
                install_key_hash,
                now,
            );
        }

        // A new binding: a new device, or a known device moving to another user.
        take_token_use(conn, token, now)?;
        let device_id = existing.map_or_else(new_id, |d| d.id.clone());
        let replaced = match self.superseded(conn, &b, &user, user_created, req, &device_id)? {
            Some(old) => {
                hot::mark_replaced(conn, &old.id, &device_id)?;
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
            // The new user's client gets a new credential generation: the old one stops working.
            // The install key stays: it belongs to the machine's agent, not to the user.
            Some(d) => hot::reassign(
                conn,
                d,
                &user.id,
                &name,
                &credential_hash,
                &token.id,
                restore.as_deref(),
                replaced.as_deref(),
                now,
            )?,
            None => hot::insert_device(
                conn,
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
            )?,
        }
        consume_mapping(conn, &b, &device_id, now)?;
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

/// `max_uses` is enforced by the conditional increment; revocation was checked in this same
/// transaction, so a refusal here means no uses are left.
fn take_token_use(conn: &Connection, token: &TokenRow, now: i64) -> Result<(), ActivationError> {
    if hot::consume_use(conn, &token.id, now)? {
        Ok(())
    } else {
        Err(ActivationError::TokenExhausted)
    }
}

fn consume_mapping(
    conn: &Connection,
    b: &Binding,
    device_id: &str,
    now: i64,
) -> Result<(), ActivationError> {
    if let Some(m) = &b.mapping_id
        && !hot::consume_mapping(conn, m, device_id, now)?
    {
        return Err(ActivationError::Internal(format!(
            "mapping {m} was consumed twice"
        )));
    }
    Ok(())
}
