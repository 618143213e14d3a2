//! `POST /api/v1/activations` (the token is the credential) and `GET /api/v1/device` (the device
//! credential is). Failed attempts are audited and count against the client address's limit.

use std::sync::atomic::Ordering;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;

use super::auth::DeviceAuth;
use super::media;
use super::{ApiError, AppState, Code};
use crate::activation::{ActivationError, AttemptContext};
use crate::domain::request::{ActivationRequest, RawActivation};
use crate::store::ActivationRecord;

/// Reads a body up to `limit` bytes; more is `payload_too_large` (checked against the declared
/// length first, so an honest oversized upload is refused before it is sent).
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    if let Some(len) = req.headers().get(actix_web::http::header::CONTENT_LENGTH)
        && len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("error reading request body: {e}")))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decrements the in-flight counter however the request ends.
struct Inflight<'a>(&'a std::sync::atomic::AtomicU64);
impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn activate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let mut version = None;
    let r = activate_inner(&state, &req, payload, &mut version).await;
    record_activation(version, started, &r);
    r
}

/// One activation in the metrics: IMD version (`unknown` before the token is verified) and
/// outcome (`created`, `repeat` or the error code).
pub fn record_activation(
    version: Option<imd_tokens::ImdVersion>,
    started: std::time::Instant,
    r: &Result<HttpResponse, ApiError>,
) {
    let version = version.map_or("unknown", |v| v.as_str());
    let outcome = match r {
        Ok(resp) if resp.status() == actix_web::http::StatusCode::CREATED => "created",
        Ok(_) => "repeat",
        Err(e) => e.code.as_str(),
    };
    crate::metrics::ACTIVATIONS.inc(&[version, outcome]);
    crate::metrics::ACTIVATION_DURATION.observe(&[version], started.elapsed());
}

async fn activate_inner(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    payload: web::Payload,
    version: &mut Option<imd_tokens::ImdVersion>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let ip = req.peer_addr().map(|a| a.ip());
    if let Some(ip) = ip
        && let Err(secs) = state.limiter.check(ip, now)
    {
        return Err(ApiError::new(
            Code::RateLimited,
            "too many failed activations from this address",
        )
        .with_retry_after(secs));
    }
    let _guard = Inflight(&state.inflight);
    let max = state.limits.max_inflight_activations;
    if state.inflight.fetch_add(1, Ordering::Relaxed) >= max && max > 0 {
        return Err(ApiError::new(
            Code::Unavailable,
            "too many activations in progress; retry shortly",
        ));
    }
    // No Content-Type at all is accepted (minimal clients); any other type is not.
    if media::content_type_is(req, &["application/json"]) == Some(false) {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ));
    }
    let body = read_limited(req, payload, state.limits.activation_body_bytes).await?;
    let remote = ip.map(|i| i.to_string());
    let mut ctx = AttemptContext::default();
    let mut parsed: Option<ActivationRequest> = None;
    let result = async {
        let raw: RawActivation = serde_json::from_slice(&body)
            .map_err(|e| ActivationError::InvalidRequest(format!("malformed JSON body: {e}")))?;
        let request = ActivationRequest::parse(raw).map_err(ActivationError::InvalidRequest)?;
        let r = parsed.insert(request);
        state
            .activator
            .activate(r, remote.as_deref(), now, &mut ctx)
            .await
    }
    .await;
    *version = ctx.version;
    match result {
        Ok(o) => {
            let status = if o.created {
                actix_web::http::StatusCode::CREATED
            } else {
                actix_web::http::StatusCode::OK
            };
            Ok(HttpResponse::build(status).json(o.response))
        }
        Err(e) => {
            let err = ApiError::from(e);
            if let (Some(ip), true) = (ip, err.code.status().is_client_error()) {
                state.limiter.record_failure(ip, now);
            }
            let login = parsed.as_ref().and_then(|p| p.user.display());
            audit_failure(state, ctx, &err, parsed.as_ref(), login, remote, now).await;
            Err(err)
        }
    }
}

/// Records a failed attempt in the audit trail with what is known of it.
pub async fn audit_failure(
    state: &AppState,
    ctx: AttemptContext,
    err: &ApiError,
    req: Option<&ActivationRequest>,
    login: Option<String>,
    remote_ip: Option<String>,
    now: i64,
) {
    state
        .audit
        .record(ActivationRecord {
            org_id: ctx.org_id,
            token_id: ctx.token_id,
            created_at: now,
            outcome: err.code.as_str().into(),
            status: err.code.status().as_u16(),
            device_id: None,
            user_id: None,
            hostname: req.and_then(|p| p.hostname.clone()),
            serial: req.and_then(|p| p.serial.clone()),
            uuid: req.and_then(|p| p.uuid.clone()),
            login,
            remote_ip,
            message: Some(err.message.chars().take(500).collect()),
        })
        .await;
}

pub async fn device(
    state: web::Data<AppState>,
    auth: DeviceAuth,
) -> Result<HttpResponse, ApiError> {
    let d = auth.device;
    let user = state.store.user(&d.org_id, &d.user_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "device": d, "user": user })))
}
