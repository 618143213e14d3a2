//! HTTP surface: routes, shared state, authentication extractors and pagination. Handlers are
//! thin: parse, call the layer below with `now`, shape the response.

mod activation;
mod admin;
mod auth;
mod device_maps;
pub mod error;
mod health;
mod pagination;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::web;

use crate::activation::Activator;
use crate::activation::audit::AuditSink;
use crate::activation::limiter::FailureLimiter;
use crate::clock::Clock;
use crate::config::Limits;
use crate::store::Store;
use crate::tokens::TokenService;
pub use error::{ApiError, Code};

pub struct AppState {
    pub store: Store,
    pub tokens: Arc<TokenService>,
    pub activator: Activator,
    pub audit: AuditSink,
    pub limiter: FailureLimiter,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// Where uploads are spooled before they are parsed.
    pub spool_dir: PathBuf,
    pub inflight: AtomicU64,
}

pub fn routes(cfg: &mut web::ServiceConfig, limits: &Limits) {
    let json_small = web::JsonConfig::default()
        .limit(limits.activation_body_bytes as usize)
        .error_handler(|e, _| error::json_error(e).into());
    let json_admin = web::JsonConfig::default()
        .limit(limits.json_body_bytes as usize)
        .error_handler(|e, _| error::json_error(e).into());
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .service(
            web::scope("/api/v1")
                .route("/keys", web::get().to(health::jwks))
                .service(
                    web::resource("/activations")
                        .app_data(json_small.clone())
                        .route(web::post().to(activation::activate)),
                )
                .route("/device", web::get().to(activation::device))
                .service(
                    web::scope("/admin")
                        .app_data(json_admin)
                        .route("/org", web::get().to(admin::get_org))
                        .route("/org", web::patch().to(admin::patch_org))
                        .route("/tokens", web::post().to(admin::mint_token))
                        .route("/tokens", web::get().to(admin::list_tokens))
                        .route("/tokens/{id}", web::get().to(admin::get_token))
                        .route("/tokens/{id}/revoke", web::post().to(admin::revoke_token))
                        .route("/users", web::get().to(admin::list_users))
                        .route("/users/{id}", web::get().to(admin::get_user))
                        .route("/devices", web::get().to(admin::list_devices))
                        .route("/devices/{id}", web::get().to(admin::get_device))
                        .route("/devices/{id}/revoke", web::post().to(admin::revoke_device))
                        .route("/activations", web::get().to(admin::list_activations))
                        .route("/device-maps", web::post().to(device_maps::upload))
                        .route(
                            "/device-mappings",
                            web::post().to(device_maps::create_mappings),
                        )
                        .route(
                            "/device-mappings",
                            web::get().to(device_maps::list_mappings),
                        )
                        .route(
                            "/device-mappings/{id}",
                            web::get().to(device_maps::get_mapping),
                        )
                        .route(
                            "/device-mappings/{id}",
                            web::delete().to(device_maps::delete_mapping),
                        ),
                ),
        );
}

/// Unknown paths and methods answer in the same JSON error shape as everything else.
pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
