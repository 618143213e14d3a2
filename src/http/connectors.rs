//! Connector administration (`/api/v1/admin/connectors`: create with a registration key,
//! list with live status, reissue the key, retire) and the public registration endpoint
//! (`POST /api/v1/connectors/register`), which trades a single-use key for the connector's
//! long-lived credential. Keys and credentials are shown once and stored as SHA-256 only.

use actix_web::{HttpRequest, HttpResponse, web};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::AdminAuth;
use super::{ApiError, AppState, Code};
use crate::clock::ser::{Timestamp, ts, ts_opt};
use crate::connector::proto::{CREDENTIAL_PREFIX, RegisterRequest, RegisterResponse};
use crate::crypto::{random_secret, sha256_hex};
use crate::store::{ConnectorRow, ConnectorSessionRow, StoreError};

/// Registration keys start with this, so a leaked one is recognisable.
pub const REGISTRATION_KEY_PREFIX: &str = "imdr_";
/// How long a registration key works after it is issued.
pub const REGISTRATION_KEY_TTL_SECS: i64 = 24 * 3600;
/// Failed registrations one source address may make per window before it gets 429.
pub const REGISTER_FAILURES_PER_WINDOW: i64 = 20;
pub const REGISTER_FAILURE_WINDOW_SECS: i64 = 15 * 60;

const MAX_CONNECTOR_NAME: usize = 64;

fn connector_name(v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > MAX_CONNECTOR_NAME || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "name must be 1 to {MAX_CONNECTOR_NAME} printable characters"
        )));
    }
    Ok(v.to_string())
}

/// Whether a connector has a live session (seen within the heartbeat window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorStatus {
    Connected,
    Disconnected,
}

/// A connector as the admin API shows it, with its live session (if any) folded in
/// (docs/connector.md).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectorView {
    pub id: String,
    pub name: String,
    pub status: ConnectorStatus,
    #[serde(serialize_with = "ts_opt")]
    #[schemars(with = "Option<Timestamp>")]
    pub last_seen_at: Option<i64>,
    /// The connector's version, as it last reported it.
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub remote_addr: Option<String>,
    /// The directory behind the connector (`ad`, `ldap`, ...), as it last reported it.
    pub directory_kind: Option<String>,
    /// Calls under way on its live session (0 without one).
    pub in_flight: i64,
    pub registered: bool,
    #[serde(serialize_with = "ts_opt")]
    #[schemars(with = "Option<Timestamp>")]
    pub registered_at: Option<i64>,
    /// Null once the key is used.
    #[serde(serialize_with = "ts_opt")]
    #[schemars(with = "Option<Timestamp>")]
    pub registration_key_expires_at: Option<i64>,
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    pub created_at: i64,
}

fn connector_view(c: &ConnectorRow, session: Option<&ConnectorSessionRow>) -> ConnectorView {
    ConnectorView {
        id: c.id.clone(),
        name: c.name.clone(),
        status: if session.is_some() {
            ConnectorStatus::Connected
        } else {
            ConnectorStatus::Disconnected
        },
        last_seen_at: c.last_seen_at.max(session.map(|s| s.last_seen_at)),
        version: session
            .and_then(|s| s.version.clone())
            .or_else(|| c.version.clone()),
        hostname: c.hostname.clone(),
        remote_addr: session
            .and_then(|s| s.remote_addr.clone())
            .or_else(|| c.remote_addr.clone()),
        directory_kind: session
            .and_then(|s| s.directory_kind.clone())
            .or_else(|| c.directory_kind.clone()),
        in_flight: session.map_or(0, |s| s.in_flight),
        registered: c.registered_at.is_some(),
        registered_at: c.registered_at,
        registration_key_expires_at: c.registration_key_expires_at,
        created_at: c.created_at,
    }
}

/// Sessions seen within the heartbeat window count as connected.
async fn live_sessions(
    state: &AppState,
    org_id: &str,
    now: i64,
) -> Result<Vec<ConnectorSessionRow>, ApiError> {
    let window = i64::try_from(state.connectors.heartbeat_window_secs).unwrap_or(i64::MAX / 2);
    Ok(state
        .store
        .connector_sessions(org_id, now.saturating_sub(window))
        .await?)
}

/// A connector's registration key, shown once (create and reissue).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectorKey {
    pub id: String,
    pub name: String,
    /// `imdr_…`; shown only once.
    pub registration_key: String,
    #[serde(serialize_with = "ts_opt")]
    #[schemars(with = "Option<Timestamp>")]
    pub registration_key_expires_at: Option<i64>,
}

fn key_view(c: &ConnectorRow, key: &str) -> ConnectorKey {
    ConnectorKey {
        id: c.id.clone(),
        name: c.name.clone(),
        registration_key: key.to_string(),
        registration_key_expires_at: c.registration_key_expires_at,
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnector {
    name: String,
}

pub async fn create(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<NewConnector>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let name = connector_name(&body.name)?;
    let key = random_secret(REGISTRATION_KEY_PREFIX).map_err(ApiError::internal)?;
    let row = match state
        .store
        .create_connector(
            &auth.org_id,
            &name,
            &sha256_hex(&key),
            now + REGISTRATION_KEY_TTL_SECS,
            now,
        )
        .await
    {
        Ok(row) => row,
        Err(StoreError::Conflict) => {
            return Err(ApiError::new(
                Code::Conflict,
                format!("a connector named {name:?} already exists in this organization"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(connector_id = %row.id, org_id = %auth.org_id, "connector created");
    Ok(HttpResponse::Created().json(key_view(&row, &key)))
}

/// Every connector of the organization with its live status (the list and the overview).
pub(super) async fn views(
    state: &AppState,
    org_id: &str,
    now: i64,
) -> Result<Vec<ConnectorView>, ApiError> {
    let rows = state.store.connectors(org_id).await?;
    let sessions = live_sessions(state, org_id, now).await?;
    Ok(rows
        .iter()
        .map(|c| connector_view(c, sessions.iter().find(|s| s.connector_id == c.id)))
        .collect())
}

pub async fn list(state: web::Data<AppState>, auth: AdminAuth) -> Result<HttpResponse, ApiError> {
    let items = views(&state, &auth.org_id, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(super::pagination::Paged {
        items,
        next_cursor: None,
    }))
}

pub async fn get(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let c = state
        .store
        .connector(&auth.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    let sessions = live_sessions(&state, &auth.org_id, now).await?;
    Ok(HttpResponse::Ok().json(connector_view(
        &c,
        sessions.iter().find(|s| s.connector_id == c.id),
    )))
}

/// A fresh registration key: the unused old one stops working; registering with the new one
/// replaces (and so retires) the connector's current credential.
pub async fn reissue_key(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let key = random_secret(REGISTRATION_KEY_PREFIX).map_err(ApiError::internal)?;
    let row = state
        .store
        .reissue_registration_key(
            &auth.org_id,
            &id,
            &sha256_hex(&key),
            now + REGISTRATION_KEY_TTL_SECS,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    tracing::info!(connector_id = %row.id, "connector registration key reissued");
    Ok(HttpResponse::Ok().json(key_view(&row, &key)))
}

pub async fn retire(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state
        .store
        .retire_connector(&auth.org_id, &id, state.clock.now())
        .await?
    {
        // Its channel on this replica closes now; other replicas close theirs at their next
        // heartbeat, when the session row no longer matches a live credential.
        state.hub.disconnect(&auth.org_id, &id);
        tracing::info!(connector_id = %id, "connector retired");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found("connector"))
    }
}

fn printable(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {max} printable characters"
        )));
    }
    Ok(())
}

/// `POST /api/v1/connectors/register`: no other authentication than the key itself. A used,
/// expired and unknown key get the same answer; failures are counted per source address in
/// the shared `auth_failures` table, so the limit holds across replicas.
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let addr = req
        .peer_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    let limit_key = format!("register:ip:{addr}");
    if state
        .store
        .auth_failures(&limit_key, now, REGISTER_FAILURE_WINDOW_SECS)
        .await?
        >= REGISTER_FAILURES_PER_WINDOW
    {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many failed connector registrations from this address; wait and retry",
        )
        .with_retry_after(60));
    }
    let b = body.into_inner();
    printable("version", &b.version, 64)?;
    if let Some(h) = &b.hostname {
        printable("hostname", h, 255)?;
    }
    let key = b.registration_key.trim();
    let credential = random_secret(CREDENTIAL_PREFIX).map_err(ApiError::internal)?;
    let registered = if key.is_empty() || key.len() > 512 {
        None
    } else {
        state
            .store
            .register_connector(
                &sha256_hex(key),
                &sha256_hex(&credential),
                b.version.trim(),
                b.hostname.as_deref().map(str::trim),
                now,
            )
            .await?
    };
    let Some(row) = registered else {
        state
            .store
            .record_auth_failure(&limit_key, now, REGISTER_FAILURE_WINDOW_SECS)
            .await?;
        tracing::warn!(remote_addr = %addr, "connector registration refused");
        return Err(ApiError::new(
            Code::RegistrationKeyInvalid,
            "this registration key is used, expired or unknown; issue a new one with \
             POST /api/v1/admin/connectors/{id}/registration-key",
        ));
    };
    // A channel still open with the old credential is closed (here at once, elsewhere at the
    // next heartbeat).
    state.hub.disconnect(&row.org_id, &row.id);
    tracing::info!(connector_id = %row.id, org_id = %row.org_id, remote_addr = %addr,
        "connector registered");
    Ok(HttpResponse::Ok().json(RegisterResponse {
        connector_id: row.id,
        org_id: row.org_id,
        name: row.name,
        credential,
    }))
}
