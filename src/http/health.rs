//! Liveness, readiness and the public token-verification keys.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::{ApiError, AppState, Code};

/// Liveness: the process answers. Deliberately touches nothing (also the benchmark's baseline).
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the database answers.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|_| ApiError::new(Code::Unavailable, "database not reachable"))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

/// JWKS of the token-signing keys, so `imd-tokens inspect --public-key` can verify offline.
/// Re-reads the key ring (at most once a second) so a rotation by another process shows up.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = state.tokens.refresh(state.clock.now()).await {
        tracing::warn!(error = %e, "reloading signing keys failed; serving the loaded set");
    }
    HttpResponse::Ok().json(state.tokens.jwks())
}
