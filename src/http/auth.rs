//! Who is calling: `AdminAuth` (an organization's admin API key) and `DeviceAuth` (a device
//! credential). Both are bearer secrets looked up by SHA-256; the secrets themselves are never
//! stored or logged.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::{ApiError, AppState, Code};
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
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub org_id: String,
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let key = bearer(&req)?;
            let state = state(&req)?;
            match state.store.org_for_admin_key(&sha256_hex(&key)).await? {
                Some(org_id) => Ok(AdminAuth { org_id }),
                None => Err(ApiError::new(
                    Code::Unauthorized,
                    "unknown or revoked admin key",
                )),
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
