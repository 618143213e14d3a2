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
    // Through the write path (SQLite: the writer thread; PostgreSQL: a write transaction), so a
    // dead writer, a locked or read-only database fails readiness, not only an unreachable one.
    let now = state.clock.now();
    let probe = state
        .store
        .probe_write(env!("CARGO_PKG_VERSION"), state.started_at, now);
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the write path failed");
            return Err(ApiError::new(
                Code::Unavailable,
                "the database does not take writes",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                Code::Unavailable,
                "the database did not take a write within 3 s",
            ));
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "backend": match state.store.kind() {
            crate::store::BackendKind::Sqlite => "sqlite",
            crate::store::BackendKind::Postgres => "postgres",
        },
        "audit_dropped": state.audit.dropped(),
    })))
}

/// JWKS of the token-signing keys, so `imd-tokens inspect --public-key` can verify offline.
/// Re-reads the key ring (at most once a second) so a rotation by another process shows up.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = state.tokens.refresh(state.clock.now()).await {
        tracing::warn!(error = %e, "reloading signing keys failed; serving the loaded set");
    }
    HttpResponse::Ok().json(state.tokens.jwks())
}
