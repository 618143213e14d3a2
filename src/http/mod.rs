//! HTTP surface: routes, shared state, authentication extractors and pagination. Handlers are
//! thin: parse, call the layer below with `now`, shape the response.

mod activation;
mod admin;
pub mod auth;
mod azure;
mod connectors;
mod device_maps;
mod directory;
pub mod error;
mod health;
mod ldap_mappings;
mod media;
mod overview;
mod pagination;
pub mod request_id;
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

pub fn routes(cfg: &mut web::ServiceConfig, limits: &Limits) {
    let json_small = web::JsonConfig::default()
        .limit(limits.activation_body_bytes as usize)
        .error_handler(|e, _| error::json_error(e).into());
    let json_admin = web::JsonConfig::default()
        .limit(limits.json_body_bytes as usize)
        .error_handler(|e, _| error::json_error(e).into());
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()))
        .service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(
            web::scope("/api/v1")
                .service(resource("/keys").route(web::get().to(health::jwks)))
                .service(
                    resource("/activations")
                        .app_data(json_small.clone())
                        .route(web::post().to(activation::activate)),
                )
                .service(resource("/device").route(web::get().to(activation::device)))
                .service(
                    resource(crate::connector::proto::REGISTER_PATH.trim_start_matches("/api/v1"))
                        .app_data(json_small)
                        .route(web::post().to(connectors::register)),
                )
                .service(
                    resource("/activations/password")
                        .route(web::post().to(directory::activate_password)),
                )
                .service(resource("/auth/ldap").route(web::post().to(directory::auth_ldap)))
                .service(
                    resource(crate::connector::proto::CHANNEL_PATH.trim_start_matches("/api/v1"))
                        .route(web::get().to(directory::channel)),
                )
                .service(
                    resource("/internal/connector-calls")
                        .route(web::post().to(directory::forwarded)),
                )
                .service(
                    web::scope("/admin")
                        .app_data(json_admin)
                        .service(
                            resource("/org")
                                .route(web::get().to(admin::get_org))
                                .route(web::patch().to(admin::patch_org)),
                        )
                        .service(
                            resource("/admin-keys")
                                .route(web::post().to(admin::create_admin_key))
                                .route(web::get().to(admin::list_admin_keys)),
                        )
                        .service(
                            resource("/admin-keys/{id}/revoke")
                                .route(web::post().to(admin::revoke_admin_key)),
                        )
                        .service(
                            resource("/tokens")
                                .route(web::post().to(admin::mint_token))
                                .route(web::get().to(admin::list_tokens)),
                        )
                        .service(resource("/tokens/{id}").route(web::get().to(admin::get_token)))
                        .service(
                            resource("/tokens/{id}/revoke")
                                .route(web::post().to(admin::revoke_token)),
                        )
                        .service(
                            resource("/tokens/{id}/rotate")
                                .route(web::post().to(admin::rotate_token)),
                        )
                        .service(
                            resource("/tokens/{id}/bundle")
                                .route(web::post().to(admin::token_bundle)),
                        )
                        .service(resource("/overview").route(web::get().to(overview::overview)))
                        .service(resource("/users").route(web::get().to(admin::list_users)))
                        .service(
                            resource("/sync-settings")
                                .route(web::get().to(sync::get_settings))
                                .route(web::put().to(sync::put_settings)),
                        )
                        .service(resource("/profiles").route(web::get().to(sync::list_profiles)))
                        .service(
                            resource("/profiles/{name}")
                                .route(web::get().to(sync::get_profile))
                                .route(web::put().to(sync::put_profile))
                                .route(web::delete().to(sync::delete_profile)),
                        )
                        .service(resource("/sync").route(web::post().to(sync::start)))
                        .service(resource("/sync-runs").route(web::get().to(sync::list_runs)))
                        .service(resource("/sync-runs/{id}").route(web::get().to(sync::get_run)))
                        .service(
                            resource("/sync-runs/{id}/users").route(web::get().to(sync::run_users)),
                        )
                        .service(
                            resource("/sync-runs/{id}/approve")
                                .route(web::post().to(sync::approve)),
                        )
                        .service(
                            resource("/sync-runs/{id}/reject").route(web::post().to(sync::reject)),
                        )
                        .service(resource("/users/{id}").route(web::get().to(admin::get_user)))
                        .service(resource("/devices").route(web::get().to(admin::list_devices)))
                        .service(resource("/devices/{id}").route(web::get().to(admin::get_device)))
                        .service(
                            resource("/devices/{id}/revoke")
                                .route(web::post().to(admin::revoke_device)),
                        )
                        .service(
                            resource("/activations").route(web::get().to(admin::list_activations)),
                        )
                        .service(
                            resource("/device-maps").route(web::post().to(device_maps::upload)),
                        )
                        .service(
                            resource("/directory/naming-contexts")
                                .route(web::get().to(directory::naming_contexts)),
                        )
                        .service(resource("/directory/ous").route(web::get().to(directory::ous)))
                        .service(
                            resource("/directory/groups").route(web::get().to(directory::groups)),
                        )
                        .service(
                            resource("/device-mappings")
                                .route(web::post().to(device_maps::create_mappings))
                                .route(web::get().to(device_maps::list_mappings)),
                        )
                        .service(
                            resource("/device-mappings/{id}")
                                .route(web::get().to(device_maps::get_mapping))
                                .route(web::delete().to(device_maps::delete_mapping)),
                        )
                        .service(
                            resource("/connectors")
                                .route(web::post().to(connectors::create))
                                .route(web::get().to(connectors::list)),
                        )
                        .service(
                            resource("/connectors/{id}")
                                .route(web::get().to(connectors::get))
                                .route(web::delete().to(connectors::retire)),
                        )
                        .service(
                            resource("/connectors/{id}/registration-key")
                                .route(web::post().to(connectors::reissue_key)),
                        )
                        .service(
                            resource("/ldap-mappings")
                                .route(web::post().to(ldap_mappings::create))
                                .route(web::get().to(ldap_mappings::list)),
                        )
                        .service(
                            resource("/ldap-mappings/{id}")
                                .route(web::get().to(ldap_mappings::get))
                                .route(web::patch().to(ldap_mappings::patch))
                                .route(web::delete().to(ldap_mappings::delete)),
                        )
                        .service(
                            resource("/azure")
                                .route(web::put().to(azure::put_config))
                                .route(web::get().to(azure::get_config)),
                        )
                        .service(resource("/azure/test").route(web::post().to(azure::test)))
                        .service(resource("/azure/groups").route(web::get().to(azure::groups)))
                        .service(
                            resource("/azure-mappings")
                                .route(web::post().to(azure::create_mapping))
                                .route(web::get().to(azure::list_mappings)),
                        )
                        .service(
                            resource("/azure-mappings/{id}")
                                .route(web::get().to(azure::get_mapping))
                                .route(web::patch().to(azure::patch_mapping))
                                .route(web::delete().to(azure::delete_mapping)),
                        ),
                ),
        );
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
