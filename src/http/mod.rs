//! HTTP surface: routes, shared state, authentication extractors and pagination. Handlers are
//! thin: parse, call the layer below with `now`, shape the response.

mod activation;
mod admin;
pub mod api_routes;
pub mod auth;
mod azure;
mod connectors;
mod device_maps;
mod directory;
pub mod error;
mod health;
mod ldap_mappings;
mod media;
pub mod openapi;
mod overview;
mod pagination;
pub mod request_id;
mod schemas;
pub mod session;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::web;

use crate::activation::Activator;
use crate::activation::audit::AuditSink;
use crate::activation::limiter::FailureLimiter;
use crate::clock::Clock;
use crate::config::{AzureSettings, ConnectorSettings, Limits};
use crate::crypto::MasterKey;
use crate::directory::graph::GraphClients;
use crate::store::Store;
use crate::tokens::TokenService;
use api_routes::JsonLimit;
pub use error::{ApiError, Code};

pub struct AppState {
    pub store: Store,
    pub tokens: Arc<TokenService>,
    pub activator: Activator,
    pub audit: AuditSink,
    pub limiter: FailureLimiter,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    pub connectors: ConnectorSettings,
    /// Where uploads are spooled before they are parsed.
    pub spool_dir: PathBuf,
    pub inflight: AtomicU64,
    /// When this process started (its `replicas` row).
    pub started_at: i64,
    /// Live connector channels, and calls through them.
    pub hub: std::sync::Arc<crate::directory::Hub>,
    /// Seals secrets admins hand in (the Azure client secret).
    pub master: Arc<MasterKey>,
    /// One Microsoft Graph client per organization with an Azure AD configuration.
    pub graph: Arc<GraphClients>,
    pub azure: AzureSettings,
    /// Directory sync runs (started here or by the scheduler).
    pub sync: Arc<crate::sync::SyncService>,
    /// Wrong admin keys per client address (API and console sign-in alike).
    pub admin_limiter: FailureLimiter,
    pub console: crate::config::ConsoleSettings,
    /// Whether browsers reach this service over TLS (here or at a proxy): console cookies are
    /// then `Secure`.
    pub secure_cookies: bool,
}

/// A path with its handlers; any other method on it is 405 in the JSON error shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Registers every route of the table (`api_routes.rs`), one resource per path with its 405
/// default service and its JSON body limit. Nothing else is registered here, so every route is
/// in the OpenAPI description.
pub fn routes(cfg: &mut web::ServiceConfig, limits: &Limits) {
    let json_config = |limit: u64| {
        web::JsonConfig::default()
            .limit(limit as usize)
            .error_handler(|e, _| error::json_error(e).into())
    };
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()));
    for (path, ops) in api_routes::by_path() {
        let mut r = resource(path);
        match ops[0].json_limit {
            JsonLimit::None => {}
            JsonLimit::Activation => r = r.app_data(json_config(limits.activation_body_bytes)),
            JsonLimit::Admin => r = r.app_data(json_config(limits.json_body_bytes)),
        }
        for o in ops {
            r = r.route(o.route());
        }
        cfg.service(r);
    }
}

async fn method_not_allowed(
    req: actix_web::HttpRequest,
) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

/// Unknown paths and methods answer in the same JSON error shape as everything else.
pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}
