//! The directory through the connector, over HTTP: the connector channel itself
//! (`GET /api/v1/connectors/channel`, a WebSocket), calls forwarded between replicas, the
//! admin's directory browser, password activation and the web-login password check.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::activation::{audit_failure, read_limited};
use super::auth::{AdminAuth, bearer};
use super::{ApiError, AppState, Code};
use crate::activation::{ActivationError, AttemptContext};
use crate::connector::proto::{self, OpErrorCode, OpResult, Operation};
use crate::crypto::sha256_hex;
use crate::directory::channel::{Accepted, serve};
use crate::directory::hub::{FORWARD_SIGNATURE_HEADER, FORWARD_TIME_HEADER};
use crate::directory::{CallError, ForwardRequest};
use crate::domain::ldap::Dn;
use crate::domain::request::{ActivationRequest, RawActivation, RawDevice, RawUser, login_key};
use crate::resolve::ldap::{Decision, LoginName};
use crate::store::OrgRow;

/// The connector channel: checks the protocol version and the credential before upgrading.
pub async fn channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let theirs = req
        .headers()
        .get(proto::PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if theirs.as_deref() != Some(&proto::PROTOCOL_VERSION.to_string()) {
        return Err(ApiError::new(
            Code::ProtocolVersionUnsupported,
            format!(
                "this imd speaks connector protocol {}, the connector speaks {}; install a connector of the same release as the service",
                proto::PROTOCOL_VERSION,
                theirs
                    .as_deref()
                    .unwrap_or("none (no x-imd-connector-protocol header)")
            ),
        ));
    }
    let credential = bearer(&req).map_err(|_| {
        ApiError::new(
            Code::ConnectorCredentialInvalid,
            "missing connector credential",
        )
    })?;
    let hash = sha256_hex(&credential);
    let Some(connector) = state.store.connector_by_credential(&hash).await? else {
        return Err(ApiError::new(
            Code::ConnectorCredentialInvalid,
            "unknown or retired connector credential; register the connector again with a fresh registration key",
        ));
    };
    let (resp, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::invalid(format!("not a WebSocket upgrade: {e}")))?;
    let accepted = Accepted {
        connector,
        credential_hash: hash,
        remote_addr: req.peer_addr().map(|a| a.ip().to_string()),
    };
    actix_web::rt::spawn(serve(state.hub.clone(), accepted, session, stream));
    Ok(resp)
}

/// A call another replica forwards to this one because it holds the connector's channel.
pub async fn forwarded(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, 1 << 20).await?;
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if !state.hub.verify_forward(
        &header(FORWARD_TIME_HEADER),
        &header(FORWARD_SIGNATURE_HEADER),
        &body,
    ) {
        return Err(ApiError::new(Code::Unauthorized, "bad cluster signature"));
    }
    let call: ForwardRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(HttpResponse::Ok().json(state.hub.call_forwarded(call).await))
}

fn call_error(e: CallError) -> ApiError {
    match e {
        CallError::Unavailable(m) => ApiError::new(
            Code::ConnectorUnavailable,
            format!("the directory connector could not answer: {m}"),
        ),
        CallError::Directory(op) => match op.code {
            OpErrorCode::InvalidRequest => {
                ApiError::invalid(format!("the directory refused the request: {}", op.message))
            }
            OpErrorCode::NotFound => ApiError::new(Code::NotFound, op.message),
            OpErrorCode::CursorExpired => ApiError::invalid(format!(
                "{}; start the listing again without a cursor",
                op.message
            )),
            OpErrorCode::TooLarge | OpErrorCode::Internal => {
                ApiError::new(Code::DirectoryError, op.message)
            }
            OpErrorCode::DirectoryUnavailable | OpErrorCode::Busy | OpErrorCode::Timeout => {
                ApiError::new(Code::ConnectorUnavailable, op.message)
            }
        },
    }
}

async fn browse(
    state: &AppState,
    org_id: &str,
    prefer: Option<&str>,
    op: Operation,
) -> Result<(OpResult, String), ApiError> {
    let deadline = Instant::now() + state.hub.settings().request_timeout;
    state
        .hub
        .call_via(org_id, prefer, op, deadline)
        .await
        .map_err(call_error)
}

pub async fn naming_contexts(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    match browse(&state, &auth.org_id, None, Operation::RootDse).await? {
        (OpResult::RootDse(r), connector) => {
            Ok(HttpResponse::Ok().json(json!({ "root_dse": r, "connector_id": connector })))
        }
        _ => Err(ApiError::new(
            Code::DirectoryError,
            "unexpected answer from the connector",
        )),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OusQuery {
    base: Option<String>,
}

fn base_dn(base: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(b) = base.map(|b| b.trim().to_string()).filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    if b.len() > 2048 {
        return Err(ApiError::invalid("base is longer than 2048 bytes"));
    }
    Dn::parse(&b).map_err(|e| ApiError::invalid(format!("base is not a DN: {e}")))?;
    Ok(Some(b))
}

pub async fn ous(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<OusQuery>,
) -> Result<HttpResponse, ApiError> {
    let base = base_dn(q.into_inner().base)?;
    match browse(&state, &auth.org_id, None, Operation::ListOus { base }).await? {
        (OpResult::Entries { items, .. }, _) => {
            Ok(HttpResponse::Ok().json(json!({ "items": items })))
        }
        _ => Err(ApiError::new(
            Code::DirectoryError,
            "unexpected answer from the connector",
        )),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "DirectoryGroupsQuery")]
#[serde(deny_unknown_fields)]
pub struct GroupsQuery {
    base: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn groups(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<GroupsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let base = base_dn(q.base)?;
    let prefix = q.q.map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
    if let Some(p) = &prefix
        && (p.chars().count() > 256 || p.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "q must be at most 256 characters without control characters",
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 500"));
    }
    // The cursor names the connector that holds the paged search.
    let (prefer, cursor) = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => {
            let (conn, cur) = c
                .split_once('.')
                .ok_or_else(|| ApiError::invalid("malformed cursor"))?;
            (Some(conn.to_string()), Some(cur.to_string()))
        }
        None => (None, None),
    };
    let op = Operation::ListGroups {
        base,
        prefix,
        page_size: limit,
        cursor: cursor.clone(),
    };
    let (result, connector) = browse(&state, &auth.org_id, prefer.as_deref(), op).await?;
    if cursor.is_some() && prefer.as_deref() != Some(connector.as_str()) {
        return Err(ApiError::invalid(
            "the connector holding this listing is gone; start the listing again without a cursor",
        ));
    }
    match result {
        OpResult::Entries { items, next_cursor } => Ok(HttpResponse::Ok().json(json!({
            "items": items,
            "next_cursor": next_cursor.map(|c| format!("{connector}.{c}")),
        }))),
        _ => Err(ApiError::new(
            Code::DirectoryError,
            "unexpected answer from the connector",
        )),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    organization: String,
    login: String,
    domain: Option<String>,
    password: String,
    device: Option<RawDevice>,
}

impl std::fmt::Debug for PasswordBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordBody")
            .field("organization", &self.organization)
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Failed password attempts allowed per login and per source address in `FAILURE_WINDOW`.
const LOGIN_FAILURES: i64 = 5;
const ADDRESS_FAILURES: i64 = 20;
const FAILURE_WINDOW: i64 = 900;

struct Throttle {
    login_key: String,
    address_key: Option<String>,
}

impl Throttle {
    fn new(org: &OrgRow, name: &LoginName, ip: Option<&str>) -> Throttle {
        let who = name
            .login
            .as_deref()
            .or(name.upn.as_deref())
            .map(login_key)
            .unwrap_or_default();
        Throttle {
            login_key: format!("login:{}:{who}", org.id),
            address_key: ip.map(|ip| format!("ip:{ip}")),
        }
    }

    async fn check(&self, state: &AppState, now: i64) -> Result<(), ApiError> {
        let login = state
            .store
            .auth_failures(&self.login_key, now, FAILURE_WINDOW)
            .await?;
        let address = match &self.address_key {
            Some(k) => state.store.auth_failures(k, now, FAILURE_WINDOW).await?,
            None => 0,
        };
        if login >= LOGIN_FAILURES || address >= ADDRESS_FAILURES {
            return Err(ApiError::new(
                Code::RateLimited,
                "too many failed sign-ins for this login or from this address; wait and retry",
            )
            .with_retry_after(60));
        }
        Ok(())
    }

    async fn failed(&self, state: &AppState, now: i64) {
        let _ = state
            .store
            .record_auth_failure(&self.login_key, now, FAILURE_WINDOW)
            .await;
        if let Some(k) = &self.address_key {
            let _ = state
                .store
                .record_auth_failure(k, now, FAILURE_WINDOW)
                .await;
        }
    }

    async fn succeeded(&self, state: &AppState) {
        let _ = state.store.clear_auth_failures(&self.login_key).await;
    }
}

async fn organization(state: &AppState, r: &str) -> Result<OrgRow, ApiError> {
    let r = r.trim();
    if r.is_empty() || r.len() > 128 {
        return Err(ApiError::invalid(
            "organization is required (its id or sign-in name)",
        ));
    }
    state.store.org_by_ref(r).await?.ok_or_else(|| {
        ApiError::new(
            Code::InvalidCredentials,
            "the login or the password is wrong",
        )
    })
}

fn parse_body(body: &[u8]) -> Result<PasswordBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's "invalid type/value" messages quote the value, which may be a password:
        // only the messages that name a field or the position are passed on.
        let msg = e.to_string();
        let safe = msg.starts_with("missing field") || msg.starts_with("unknown field");
        if safe {
            ApiError::invalid(format!("malformed body: {msg}"))
        } else {
            ApiError::invalid(format!(
                "malformed JSON body (line {}, column {}): expected {{\"organization\", \"login\", \"domain\"?, \"password\", \"device\"}} with string values",
                e.line(),
                e.column()
            ))
        }
    })
}

fn user_json(d: &Decision) -> serde_json::Value {
    let a = d.user.attrs.clone().unwrap_or_default();
    json!({
        "external_id": d.user.external_id,
        "email": d.user.email.as_str(),
        "user_name": d.user.user_name,
        "login": a.login,
        "upn": a.upn,
        "dn": a.dn,
        "department": a.department,
        "country": a.country,
        "groups": a.groups,
        "mapping": d.mapping_name,
    })
}

/// `POST /api/v1/auth/ldap`: checks a directory password for a web login.
pub async fn auth_ldap(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let body = read_limited(&req, payload, 16 * 1024).await?;
    let b = parse_body(&body)?;
    if b.device.is_some() {
        return Err(ApiError::invalid("device is not part of a web login"));
    }
    let org = organization(&state, &b.organization).await?;
    let name =
        LoginName::parse(Some(&b.login), b.domain.as_deref(), None).map_err(ApiError::invalid)?;
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    let throttle = Throttle::new(&org, &name, ip.as_deref());
    throttle.check(&state, now).await?;
    match state
        .activator
        .verify_password(&org, &name, &b.password)
        .await
    {
        Ok(d) => {
            throttle.succeeded(&state).await;
            let known = state
                .store
                .user_by_external_id(&org.id, crate::resolve::ldap::SOURCE, &d.user.external_id)
                .await?;
            Ok(HttpResponse::Ok().json(json!({
                "user": user_json(&d),
                "imd_user_id": known.map(|u| u.id),
            })))
        }
        Err(e) => {
            if matches!(
                e,
                ActivationError::InvalidCredentials | ActivationError::UserDisabled(_)
            ) {
                throttle.failed(&state, now).await;
            }
            Err(e.into())
        }
    }
}

/// `POST /api/v1/activations/password`: a manual activation with directory credentials.
pub async fn activate_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let r = activate_password_inner(state, req, payload).await;
    super::activation::record_activation(Some(imd_tokens::ImdVersion::V2), started, &r);
    r
}

async fn activate_password_inner(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let body = read_limited(&req, payload, state.limits.activation_body_bytes).await?;
    let b = parse_body(&body)?;
    let org = organization(&state, &b.organization).await?;
    let name =
        LoginName::parse(Some(&b.login), b.domain.as_deref(), None).map_err(ApiError::invalid)?;
    let request = ActivationRequest::parse(RawActivation {
        // Not a token: password activations are recorded against the organization's
        // password-activation token row instead.
        token: Some("password".into()),
        device: Some(b.device.unwrap_or_default()),
        user: Some(RawUser {
            login: Some(b.login.clone()),
            domain: b.domain.clone(),
            upn: None,
            email: None,
        }),
    })
    .map_err(ApiError::invalid)?;
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    let throttle = Throttle::new(&org, &name, ip.as_deref());
    throttle.check(&state, now).await?;
    let mut ctx = AttemptContext::default();
    let result = state
        .activator
        .activate_with_password(
            &org,
            &name,
            &b.password,
            &request,
            ip.as_deref(),
            now,
            &mut ctx,
        )
        .await;
    match result {
        Ok(o) => {
            throttle.succeeded(&state).await;
            let status = if o.created {
                actix_web::http::StatusCode::CREATED
            } else {
                actix_web::http::StatusCode::OK
            };
            Ok(HttpResponse::build(status).json(o.response))
        }
        Err(e) => {
            if matches!(
                e,
                ActivationError::InvalidCredentials | ActivationError::UserDisabled(_)
            ) {
                throttle.failed(&state, now).await;
            }
            let err = ApiError::from(e);
            audit_failure(
                &state,
                ctx,
                &err,
                Some(&request),
                Some(name.display()),
                ip,
                now,
            )
            .await;
            Err(err)
        }
    }
}
