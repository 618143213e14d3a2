//! Assembling and running the service: `Application::build` opens the store, loads keys, binds the
//! listener (port 0 in tests) and wires the HTTP server; `run_until_stopped` serves until shutdown.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware, web};
use imd_tokens::ImdVersion;

use crate::activation::Activator;
use crate::activation::audit::{AuditSink, AuditStop};
use crate::activation::limiter::FailureLimiter;
use crate::clock::Clock;
use crate::config::Settings;
use crate::crypto::MasterKey;
use crate::directory::graph::GraphClients;
use crate::directory::{Hub, HubSettings};
use crate::http::{self, AppState};
use crate::metrics;
use crate::resolve::{Budget, DeviceMapResolver, LdapResolver, Resolver};
use crate::store::{Store, StoreOptions};
use crate::tokens::{self, TokenService};

pub struct Application {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    public_url: String,
    server: Server,
    /// The separate `/metrics` listener (`metrics.listen`).
    metrics_server: Option<Server>,
    store: Store,
    hub: Arc<Hub>,
    /// The shared state, for the in-flight activation count at shutdown.
    state: web::Data<AppState>,
    audit_stop: AuditStop,
    audit: tokio::task::JoinHandle<()>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
}

/// How this process names itself in the database: host, process id and a random part, so a
/// restarted replica is a new one.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imd".into());
    let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{rand}", std::process::id())
}

pub fn store_options(settings: &Settings, replica_id: &str) -> StoreOptions {
    StoreOptions {
        url: settings.database_url(),
        max_connections: settings.database.max_connections as u32,
        busy_timeout: Duration::from_millis(settings.database.busy_timeout_ms),
        acquire_timeout: Duration::from_millis(settings.database.acquire_timeout_ms),
        replica_id: replica_id.to_string(),
        migrate: true,
    }
}

/// Opens the configured database (migrations applied).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    create_private_dir(&settings.data_dir)?;
    Ok(Store::open(&store_options(settings, &replica_id())).await?)
}

/// Opens the configured database as it is: refuses one that needs migrations (`imd backup`
/// must copy the database a running server uses, never upgrade it first).
pub async fn open_store_unmigrated(settings: &Settings) -> anyhow::Result<Store> {
    let mut opts = store_options(settings, &replica_id());
    opts.migrate = false;
    Ok(Store::open(&opts).await?)
}

/// The master key: `IMD_MASTER_KEY` (base64, for replicas sharing one database) or the key file.
pub fn master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Ok(k) = std::env::var("IMD_MASTER_KEY") {
        return MasterKey::from_base64(k.trim())
            .map_err(|e| anyhow::anyhow!("IMD_MASTER_KEY: {e}"));
    }
    Ok(MasterKey::load_or_create(&settings.master_key_path())?)
}

fn load_tls(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "TLS key {} has permissions {:o}; run `chmod 600` on it",
                key.display(),
                mode & 0o777
            );
        }
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
    Ok(rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// Creates the data directory owner-only (it holds the database and the master key); an existing
/// directory is left as the operator set it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// rustls needs one process-wide crypto provider; installing it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn hub_settings(settings: &Settings) -> HubSettings {
    let c = &settings.connectors;
    HubSettings {
        heartbeat_interval: Duration::from_secs(c.heartbeat_interval_secs),
        heartbeat_window: Duration::from_secs(c.heartbeat_window_secs),
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        max_in_flight: c.max_in_flight as usize,
        max_response_bytes: c.max_response_bytes,
    }
}

/// Where the other replicas reach this one for forwarded connector calls: the configured
/// `connectors.forward_url`, else the bound address (http, or https when TLS is on; an
/// unspecified address becomes loopback, which suits single-host setups only).
fn forward_url(settings: &Settings, addr: SocketAddr) -> String {
    if let Some(u) = &settings.connectors.forward_url {
        return u.clone();
    }
    let scheme = if settings.tls.cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = if addr.ip().is_unspecified() {
        if settings.database_url().starts_with("postgres") {
            tracing::warn!(
                "listening on {addr} without connectors.forward_url: other replicas will try \
                 127.0.0.1 to reach connectors held here; set connectors.forward_url"
            );
        }
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

impl Application {
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        Self::build_with(settings, clock, Vec::new()).await
    }

    /// `build` with more resolvers (IMD versions the built-in set lacks; tests plug in theirs).
    pub async fn build_with(
        settings: Settings,
        clock: Arc<dyn Clock>,
        extra_resolvers: Vec<(ImdVersion, Arc<dyn Resolver>)>,
    ) -> anyhow::Result<Application> {
        install_crypto_provider();
        let now = clock.now();
        create_private_dir(&settings.data_dir)?;
        let replica = replica_id();
        let store = Store::open(&store_options(&settings, &replica)).await?;
        let master = Arc::new(master_key(&settings)?);
        tokens::ensure_signing_key(&store, &master, now).await?;

        let listener = TcpListener::bind(settings.listen_addr()?)?;
        let addr = listener.local_addr()?;
        let public_url = settings.public_url_or_default(addr);
        let tokens = Arc::new(
            TokenService::load(store.clone(), master.clone(), public_url.clone(), now).await?,
        );

        let mut resolvers: HashMap<ImdVersion, Arc<dyn Resolver>> = HashMap::new();
        resolvers.insert(ImdVersion::V4, Arc::new(DeviceMapResolver::new()));
        resolvers.extend(extra_resolvers);
        let hub = Arc::new(Hub::new(
            store.clone(),
            clock.clone(),
            replica.clone(),
            hub_settings(&settings),
            master.cluster_key(),
        ));
        hub.set_forward_url(forward_url(&settings, addr));
        let ldap = Arc::new(LdapResolver::new(hub.clone(), store.clone()));
        let graph = Arc::new(GraphClients::new(
            store.clone(),
            master.clone(),
            GraphClients::http_client(),
            settings.azure.max_retries as u32,
        ));
        let azure = Arc::new(crate::resolve::azure::AzureResolver::new(
            graph.clone(),
            store.clone(),
            Duration::from_millis(settings.azure.timeout_ms),
            Duration::from_secs(settings.azure.lookup_cache_secs),
        ));
        let activator = Activator::new(
            store.clone(),
            tokens.clone(),
            master.credential_key(),
            resolvers,
            Budget {
                timeout: Duration::from_millis(settings.resolvers.network_timeout_ms),
                max_in_flight: settings.resolvers.network_max_in_flight as usize,
            },
        )
        .with_ldap(ldap)
        .with_azure(azure);
        let sync = Arc::new(crate::sync::SyncService::new(
            store.clone(),
            hub.clone(),
            graph.clone(),
            clock.clone(),
            settings.sync.clone(),
            replica.clone(),
            settings.connectors.heartbeat_window_secs,
        ));
        let scheduler = settings
            .sync
            .scheduler
            .then(|| tokio::spawn(sync.clone().scheduler()));
        let (audit, audit_stop, audit_task) = AuditSink::start(store.clone());
        let metrics_sources = web::Data::new(metrics::Sources {
            store: store.clone(),
            hub: hub.clone(),
            audit: audit.clone(),
        });
        let limits = settings.limits.clone();
        let state = web::Data::new(AppState {
            store: store.clone(),
            tokens,
            activator,
            audit,
            limiter: FailureLimiter::new(limits.activation_failures_per_minute),
            clock,
            limits: limits.clone(),
            connectors: settings.connectors.clone(),
            spool_dir: settings.data_dir.join("spool"),
            inflight: AtomicU64::new(0),
            started_at: now,
            hub: hub.clone(),
            master,
            graph,
            azure: settings.azure.clone(),
            sync,
            admin_limiter: FailureLimiter::new(limits.admin_auth_failures_per_minute),
            console: settings.console.clone(),
            secure_cookies: settings.tls.cert_file.is_some() || public_url.starts_with("https://"),
        });
        let app_state = state.clone();

        let console = settings.console.enabled;
        let metrics_addr = settings.metrics_listen_addr()?;
        // `/metrics` on the main listener only when it has no listener of its own.
        let metrics_here = settings.metrics.enabled && metrics_addr.is_none();
        let shutdown_timeout = Duration::from_secs(settings.server.shutdown_timeout_secs);
        let sources = metrics_sources.clone();
        let server = HttpServer::new(move || {
            let limits = limits.clone();
            let app = App::new()
                // Innermost: counts the response each route gave, by route pattern.
                .wrap(middleware::from_fn(metrics::middleware))
                // Every line a request logs is in its `request` span (request_id); the access
                // line, written after the span ends, names the id itself.
                .wrap(middleware::from_fn(http::request_id::middleware))
                .wrap(middleware::Logger::new(
                    "%a \"%r\" %s %b %Dms request_id=%{x-request-id}o",
                ))
                .app_data(state.clone())
                .configure(|c| http::routes(c, &limits))
                .configure(|c| {
                    if console {
                        crate::console::routes(c);
                    }
                });
            let app = if metrics_here {
                app.service(metrics_resource(
                    sources.clone(),
                    metrics::Exposure::LoopbackOnly,
                ))
            } else {
                app
            };
            app.default_service(web::to(http::not_found))
        })
        // Signals are handled in `run_until_stopped` (it closes connector channels itself).
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs());
        let server = match (&settings.tls.cert_file, &settings.tls.key_file) {
            (Some(cert), Some(key)) => server.listen_rustls_0_23(listener, load_tls(cert, key)?)?,
            _ => server.listen(listener)?,
        }
        .run();
        let (metrics_server, metrics_addr) = match metrics_addr {
            None => (None, None),
            Some(a) => {
                let l =
                    TcpListener::bind(a).map_err(|e| anyhow::anyhow!("metrics.listen {a}: {e}"))?;
                let bound = l.local_addr()?;
                let sources = metrics_sources.clone();
                let s = HttpServer::new(move || {
                    App::new()
                        .service(metrics_resource(
                            sources.clone(),
                            metrics::Exposure::Dedicated,
                        ))
                        .default_service(web::to(http::not_found))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(l)?
                .run();
                tracing::info!(addr = %bound, "metrics listening");
                (Some(s), Some(bound))
            }
        };
        Ok(Application {
            addr,
            metrics_addr,
            public_url,
            server,
            metrics_server,
            store,
            hub,
            state: app_state,
            audit_stop,
            audit: audit_task,
            scheduler,
            shutdown_timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The separate metrics listener's address (`metrics.listen`), if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until SIGTERM or SIGINT, then shuts down in order: stop accepting, let
    /// activations in flight finish, close the connector channels (connectors reconnect to
    /// another replica), let the other requests in flight
    /// finish (at most `server.shutdown_timeout_secs`, then they are cut), stop the sync
    /// scheduler, write the queued audit records, close (and on SQLite checkpoint) the database.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let metrics_handle = self.metrics_server.as_ref().map(Server::handle);
        let hub = self.hub.clone();
        let state = self.state.clone();
        let timeout = self.shutdown_timeout;
        let signals = tokio::spawn(async move {
            let why = shutdown_signal().await;
            tracing::info!(
                signal = why,
                timeout_secs = timeout.as_secs(),
                "shutting down: no new connections; waiting for requests in flight"
            );
            // Stop accepting at once (the command is sent before the future is polled).
            let stopped = handle.stop(true);
            // Activations in flight may be waiting on a connector's answer: the channels stay
            // open until they are done (within the bound). Then the channels close, or their
            // open WebSockets would hold the workers for the whole timeout.
            let deadline = tokio::time::Instant::now() + timeout;
            while state.inflight.load(std::sync::atomic::Ordering::Relaxed) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            hub.close_all();
            match metrics_handle {
                Some(m) => {
                    futures_util::future::join(m.stop(true), stopped).await;
                }
                None => stopped.await,
            }
        });
        let metrics = self.metrics_server.map(tokio::spawn);
        let r = self.server.await;
        signals.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        if let Some(s) = self.scheduler {
            // A run it started goes on in the sync runtime until the process exits; its lease
            // expires and another replica (or the next start) takes over.
            s.abort();
        }
        self.audit_stop.stop();
        if tokio::time::timeout(AUDIT_DRAIN, self.audit).await.is_err() {
            tracing::error!("audit records still queued after {AUDIT_DRAIN:?}; giving up on them");
        }
        self.store.close().await;
        tracing::info!("stopped");
        r
    }
}

/// How long shutdown waits for the queued failed-attempt records to be written.
const AUDIT_DRAIN: Duration = Duration::from_secs(10);

/// The `/metrics` resource; other methods on it get the JSON 404 as unknown paths do.
fn metrics_resource(
    sources: web::Data<metrics::Sources>,
    exposure: metrics::Exposure,
) -> actix_web::Resource {
    web::resource("/metrics")
        .app_data(sources)
        .app_data(web::Data::new(exposure))
        .route(web::get().to(metrics::handler))
        .default_service(web::to(http::not_found))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C); names the signal.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
