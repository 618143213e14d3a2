//! Who is calling: `AdminAuth` (an organization's admin API key) and `DeviceAuth` (a device
//! credential). Both are bearer secrets looked up by SHA-256; the secrets themselves are never
//! stored or logged.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::{ApiError, AppState, Code, session};
use crate::crypto::sha256_hex;
use crate::store::DeviceRow;

pub fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let h = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing Authorization: Bearer header"))?;
    let s = h
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthorized, "malformed Authorization header"))?;
    let (scheme, value) = s
        .split_once(' ')
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "expected a Bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || value.trim().is_empty() || value.len() > 512 {
        return Err(ApiError::new(Code::Unauthorized, "expected a Bearer token"));
    }
    Ok(value.trim().to_string())
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("app state missing"))
}

/// An authenticated admin, scoped to one organization: every admin query filters by `org_id`.
/// Either an admin key (`Authorization: Bearer`) or a console session cookie; a cookie request
/// that changes state must also carry the session's CSRF token and must not come from another
/// site.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub org_id: String,
}

/// What a wrong admin key gets: 401, or 429 once its address has used up this minute's wrong
/// keys. A right key is never refused (an office behind one address must not be locked out by
/// someone else's typos); the limit slows down and shows up key scanning.
pub fn wrong_admin_key(state: &AppState, req: &HttpRequest, now: i64) -> ApiError {
    if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
        if let Err(secs) = state.admin_limiter.check(ip, now) {
            return ApiError::new(
                Code::RateLimited,
                "too many wrong admin keys from this address",
            )
            .with_retry_after(secs);
        }
        state.admin_limiter.record_failure(ip, now);
    }
    ApiError::new(Code::Unauthorized, "unknown or revoked admin key")
}

/// The console session secret the request's cookie carries. Two different values (a cookie
/// planted for a longer path or a parent domain beside the real one) authenticate nothing.
pub fn session_secret<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<Option<&'r str>, ApiError> {
    let name = session::cookie_name(state.secure_cookies);
    let mut found: Option<&str> = None;
    for (k, v) in req
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
    {
        if k != name {
            continue;
        }
        match found {
            Some(prev) if prev != v.trim() => {
                return Err(ApiError::new(
                    Code::Unauthorized,
                    "the request carries two different console session cookies; sign in again",
                ));
            }
            _ => found = Some(v.trim()),
        }
    }
    Ok(found)
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site`, or, from
/// browsers that do not send it, an `Origin` naming another host.
pub fn cross_site(req: &HttpRequest) -> bool {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match h
        .get(actix_web::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        None => false,
        Some(origin) => {
            let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !host.eq_ignore_ascii_case(req.connection_info().host())
        }
    }
}

/// The console session a cookie names, for a request of the console or the API. Requests the
/// console's page makes by itself (`X-Imd-Background: 1`, the overview's refresh) do not count
/// as use, so an open tab does not keep a session alive.
pub async fn console_session(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Option<session::Session>, ApiError> {
    if !state.console.enabled {
        return Ok(None);
    }
    let Some(secret) = session_secret(state, req)? else {
        return Ok(None);
    };
    let used = req.headers().get("x-imd-background").is_none();
    match session::authenticate(
        &state.store,
        &state.console,
        secret,
        state.clock.now(),
        used,
    )
    .await
    {
        Ok(s) => Ok(Some(s)),
        Err(session::Refused::Unknown) => Err(ApiError::new(
            Code::Unauthorized,
            "this console session has ended; sign in again",
        )),
        Err(session::Refused::Expired) => Err(ApiError::new(
            Code::Unauthorized,
            "this console session has expired; sign in again",
        )),
        Err(session::Refused::Store(e)) => Err(e.into()),
    }
}

/// CSRF protection for cookie-authenticated requests that change state.
pub fn check_csrf(req: &HttpRequest, s: &session::Session) -> Result<(), ApiError> {
    use actix_web::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    // Browsers name the initiator; a cross-site request is refused whatever it carries.
    if cross_site(req) {
        return Err(ApiError::new(
            Code::CsrfFailed,
            "a console request from another site was refused",
        ));
    }
    let presented = req
        .headers()
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !session::csrf_ok(s, presented) {
        return Err(ApiError::new(
            Code::CsrfFailed,
            "missing or wrong X-CSRF-Token for this console session; reload the page",
        ));
    }
    Ok(())
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state(&req)?;
            if req.headers().get(AUTHORIZATION).is_none()
                && let Some(s) = console_session(&state, &req).await?
            {
                check_csrf(&req, &s)?;
                return Ok(AdminAuth { org_id: s.org_id });
            }
            let key = bearer(&req)?;
            match state.store.live_admin_key(&sha256_hex(&key)).await? {
                Some((_, org_id)) => Ok(AdminAuth { org_id }),
                None => Err(wrong_admin_key(&state, &req, state.clock.now())),
            }
        })
    }
}

/// An activated device presenting its credential.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub device: DeviceRow,
}

impl FromRequest for DeviceAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let cred = bearer(&req)?;
            let state = state(&req)?;
            match state.store.device_for_credential(&cred).await? {
                Some(d) if d.status != "revoked" => {
                    // A preserved (or deleted) user's devices stop working until it is
                    // re-enabled.
                    let user = state.store.user(&d.org_id, &d.user_id).await?;
                    match user.status() {
                        crate::store::UserStatus::Active => Ok(DeviceAuth { device: d }),
                        crate::store::UserStatus::Preserved => Err(ApiError::new(
                            Code::UserPreserved,
                            "this device's user is preserved (disabled or gone from the directory); it works again once the user is re-enabled",
                        )),
                        crate::store::UserStatus::Deleted => Err(ApiError::new(
                            Code::UserDeleted,
                            "this device's user has been deleted",
                        )),
                    }
                }
                Some(_) => Err(ApiError::new(
                    Code::Unauthorized,
                    "this device has been revoked",
                )),
                None => Err(ApiError::new(
                    Code::Unauthorized,
                    "unknown device credential",
                )),
            }
        })
    }
}
