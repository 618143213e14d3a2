//! Layered, typed configuration: defaults → optional `imd.toml` → `IMD_*` environment variables →
//! command-line flags. Every layer is merged as TOML values and deserialized once, so an unknown key
//! in any layer is an error rather than a silently ignored typo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration (defaults ← imd.toml ← IMD_* environment ← flags): {0}")]
    Invalid(String),
}

/// The service configuration after all layers are applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL clients use to reach this service; it becomes every token's `iss`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Defaults to `sqlite://<data_dir>/imd.db`; `postgres://...` for several replicas.
    #[serde(default)]
    pub database_url: Option<DatabaseUrl>,
    /// Defaults to `<data_dir>/master.key` (created with mode 0600 on first run).
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    #[serde(default = "default_log_format")]
    pub log_format: String,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub resolvers: ResolverSettings,
    #[serde(default)]
    pub connectors: ConnectorSettings,
    #[serde(default)]
    pub azure: AzureSettings,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub console: ConsoleSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub server: ServerSettings,
}

/// Prometheus `/metrics` (docs/metrics.md, `[metrics]`). Not public by default: without
/// `listen` it is served on the main listener to loopback peers only (no proxy headers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    #[serde(deserialize_with = "boolean")]
    pub enabled: bool,
    /// A separate `host:port` that serves only `/metrics` (to anyone who reaches it); the main
    /// listener then has no `/metrics`.
    pub listen: Option<String>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            enabled: true,
            listen: None,
        }
    }
}

/// The HTTP server itself (docs/configuration.md, `[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// On SIGTERM/SIGINT: how long requests in flight may take to finish before they are cut.
    #[serde(deserialize_with = "num")]
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            shutdown_timeout_secs: 10,
        }
    }
}

/// A database URL; its `Debug` form hides the password, so printing settings never leaks it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact_url(&self.0))
    }
}

/// The budget of each resolver with a network phase (AD/LDAP through the connector, Entra ID),
/// separate from the device map's, so a slow directory cannot take the service down with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverSettings {
    /// A look-up that takes longer fails the activation with 503 `directory_unavailable`.
    #[serde(deserialize_with = "num")]
    pub network_timeout_ms: u64,
    /// Look-ups in flight per resolver; more are refused at once (503, retryable).
    #[serde(deserialize_with = "num")]
    pub network_max_in_flight: u64,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            network_timeout_ms: 5000,
            network_max_in_flight: 64,
        }
    }
}

/// On-premises connectors and their channels (docs/configuration.md, `[connectors]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorSettings {
    /// A connector whose last heartbeat is older than this is shown (and treated) as
    /// disconnected.
    #[serde(deserialize_with = "num")]
    pub heartbeat_window_secs: u64,
    /// How often each side pings the other on an idle channel.
    #[serde(deserialize_with = "num")]
    pub heartbeat_interval_secs: u64,
    /// How long the service waits for a connector's answer to one request.
    #[serde(deserialize_with = "num")]
    pub request_timeout_ms: u64,
    /// Requests in flight per channel; more are refused at once.
    #[serde(deserialize_with = "num")]
    pub max_in_flight: u64,
    /// Largest answer a connector may send (one WebSocket message).
    #[serde(deserialize_with = "num")]
    pub max_response_bytes: u64,
    /// Where the other replicas reach this one to have it relay calls to the connectors it
    /// holds (e.g. `https://10.0.0.5:8443`); default: the address this replica listens on.
    pub forward_url: Option<String>,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            heartbeat_window_secs: 30,
            heartbeat_interval_secs: 10,
            request_timeout_ms: 10_000,
            max_in_flight: 64,
            max_response_bytes: 4 * 1024 * 1024,
            forward_url: None,
        }
    }
}

/// Entra ID through Microsoft Graph (docs/configuration.md, `[azure]`). The app registration
/// itself is per organization (`PUT /api/v1/admin/azure`), not configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureSettings {
    /// Everything Graph is asked for one activation (token, user, groups, retries) must finish
    /// within this; past it the activation gets 503 `directory_unavailable`.
    #[serde(deserialize_with = "num")]
    pub timeout_ms: u64,
    /// How long a user look-up (and its groups) is reused; 0 turns the cache off.
    #[serde(deserialize_with = "num")]
    pub lookup_cache_secs: u64,
    /// Retries of one Graph call after throttling (429), 503, 504 or a transport error, each
    /// still inside `timeout_ms`.
    #[serde(deserialize_with = "num")]
    pub max_retries: u64,
}

impl Default for AzureSettings {
    fn default() -> Self {
        AzureSettings {
            timeout_ms: 10_000,
            lookup_cache_secs: 300,
            max_retries: 4,
        }
    }
}

/// Directory sync (docs/sync.md, `[sync]`); the per-organization settings are in the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Run scheduled syncs from this process (several may: a lease keeps one run per
    /// organization).
    #[serde(deserialize_with = "boolean")]
    pub scheduler: bool,
    #[serde(deserialize_with = "num")]
    pub tick_secs: u64,
    #[serde(deserialize_with = "num")]
    pub lease_secs: u64,
    #[serde(deserialize_with = "num")]
    pub batch_size: u64,
    #[serde(deserialize_with = "num")]
    pub page_size: u64,
    #[serde(deserialize_with = "num")]
    pub page_timeout_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            scheduler: true,
            tick_secs: 60,
            lease_secs: 60,
            batch_size: 1000,
            page_size: 500,
            page_timeout_ms: 60_000,
        }
    }
}

/// The admin console (`[console]`, docs/console.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    #[serde(deserialize_with = "boolean")]
    pub enabled: bool,
    /// A session unused this long ends.
    #[serde(deserialize_with = "num")]
    pub idle_timeout_secs: u64,
    /// A session ends this long after sign-in, used or not.
    #[serde(deserialize_with = "num")]
    pub absolute_timeout_secs: u64,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            idle_timeout_secs: 30 * 60,
            absolute_timeout_secs: 12 * 3600,
        }
    }
}

/// Environment values arrive as strings; boolean fields accept both forms.
fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        B(bool),
        S(String),
    }
    match B::deserialize(d)? {
        B::B(b) => Ok(b),
        B::S(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "expected true or false, got {s:?}"
            ))),
        },
    }
}

/// Upper bounds for `[azure]`: a longer deadline would hold activations (and their clients)
/// for minutes; more retries only burn the deadline.
const AZURE_MAX_TIMEOUT_MS: u64 = 120_000;
const AZURE_MAX_RETRIES: u64 = 10;
const AZURE_MAX_CACHE_SECS: u64 = 86_400;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(deserialize_with = "num")]
    pub activation_body_bytes: u64,
    #[serde(deserialize_with = "num")]
    pub json_body_bytes: u64,
    #[serde(deserialize_with = "num")]
    pub device_map_bytes: u64,
    /// Failed activations (4xx) one client address may cause per minute before it gets 429.
    /// 0 turns the limit off.
    #[serde(deserialize_with = "num")]
    pub activation_failures_per_minute: u64,
    /// Activations processed at once; past this, clients get 503 with Retry-After. 0 = no limit.
    #[serde(deserialize_with = "num")]
    pub max_inflight_activations: u64,
    /// Requests with a wrong admin key (API or console sign-in) one client address may make per
    /// minute before it gets 429. 0 turns the limit off.
    #[serde(deserialize_with = "num")]
    pub admin_auth_failures_per_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            activation_body_bytes: 16 * 1024,
            json_body_bytes: 8 * 1024 * 1024,
            device_map_bytes: 256 * 1024 * 1024,
            activation_failures_per_minute: 600,
            max_inflight_activations: 4096,
            admin_auth_failures_per_minute: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Read connections (SQLite) or total connections (PostgreSQL).
    #[serde(deserialize_with = "num")]
    pub max_connections: u64,
    #[serde(deserialize_with = "num")]
    pub busy_timeout_ms: u64,
    /// How long a request waits for a connection before it gets 503.
    #[serde(deserialize_with = "num")]
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            max_connections: 8,
            busy_timeout_ms: 5000,
            acquire_timeout_ms: 5000,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./imd-data")
}
fn default_log_format() -> String {
    "text".into()
}

/// Environment values arrive as strings; numeric fields accept both forms.
fn num<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        N(u64),
        S(String),
    }
    match N::deserialize(d)? {
        N::N(n) => Ok(n),
        N::S(s) => {
            s.trim().replace('_', "").parse().map_err(|_| {
                serde::de::Error::custom(format!("expected a whole number, got {s:?}"))
            })
        }
    }
}

/// Builds settings from the layers. `file` is the explicit `--config` path; without it
/// `./imd.toml` is read when present. `env` is passed in (not read here) so tests control it.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, String)],
) -> Result<Settings, ConfigError> {
    let mut root = toml::Table::new();
    let path = match file {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("imd.toml")).filter(|p| p.exists()),
    };
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path,
                message: e.to_string(),
            })?;
        merge(&mut root, table);
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    for (name, value) in &env {
        let Some(key) = name.strip_prefix("IMD_") else {
            continue;
        };
        // IMD_LOG (the log filter) and IMD_MASTER_KEY (a secret) are read where they are used;
        // they are not settings and must never end up in a settings dump.
        if key == "LOG" || key == "MASTER_KEY" {
            continue;
        }
        // IMD_CONNECTOR_* configure `imd connector` (src/connector/config.rs), which may run
        // on the same host; the service's own section is IMD_CONNECTORS__*.
        if key.starts_with("CONNECTOR_") {
            continue;
        }
        let path: Vec<String> = key.split("__").map(|s| s.to_ascii_lowercase()).collect();
        insert_path(&mut root, &path, toml::Value::String(value.clone()))
            .map_err(|e| ConfigError::Invalid(format!("environment variable {name}: {e}")))?;
    }
    for (key, value) in flags {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        insert_path(&mut root, &path, toml::Value::String(value.clone()))
            .map_err(ConfigError::Invalid)?;
    }
    let settings: Settings = toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
    settings.validate()?;
    Ok(settings)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn insert_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.metrics_listen_addr()?;
        if !(1..=3_600).contains(&self.server.shutdown_timeout_secs) {
            return Err(ConfigError::Invalid(format!(
                "server.shutdown_timeout_secs must be between 1 and 3600, got {}",
                self.server.shutdown_timeout_secs
            )));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url must start with http:// or https://, got {url:?}"
            )));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log_format must be \"text\" or \"json\"".into(),
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file must be set together".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database.max_connections must be at least 1".into(),
            ));
        }
        if self.resolvers.network_timeout_ms == 0 || self.resolvers.network_max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "resolvers.network_timeout_ms and resolvers.network_max_in_flight must be at least 1"
                    .into(),
            ));
        }
        let c = &self.connectors;
        if let Some(u) = &c.forward_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "connectors.forward_url {u:?} must start with http:// or https://"
            )));
        }
        if c.heartbeat_interval_secs == 0
            || c.request_timeout_ms == 0
            || c.max_in_flight == 0
            || c.max_response_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "connectors.heartbeat_interval_secs, request_timeout_ms, max_in_flight and max_response_bytes must be at least 1"
                    .into(),
            ));
        }
        let a = &self.azure;
        if !(1..=AZURE_MAX_TIMEOUT_MS).contains(&a.timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "azure.timeout_ms must be between 1 and {AZURE_MAX_TIMEOUT_MS}, got {}",
                a.timeout_ms
            )));
        }
        if a.max_retries > AZURE_MAX_RETRIES {
            return Err(ConfigError::Invalid(format!(
                "azure.max_retries must be at most {AZURE_MAX_RETRIES}, got {}",
                a.max_retries
            )));
        }
        if a.lookup_cache_secs > AZURE_MAX_CACHE_SECS {
            return Err(ConfigError::Invalid(format!(
                "azure.lookup_cache_secs must be at most {AZURE_MAX_CACHE_SECS} (a day), got {}",
                a.lookup_cache_secs
            )));
        }
        let y = &self.sync;
        if !(1..=86_400).contains(&y.tick_secs)
            || !(5..=3_600).contains(&y.lease_secs)
            || !(1..=10_000).contains(&y.batch_size)
            || !(1..=1_000).contains(&y.page_size)
            || !(100..=600_000).contains(&y.page_timeout_ms)
        {
            return Err(ConfigError::Invalid(
                "sync: tick_secs 1-86400, lease_secs 5-3600, batch_size 1-10000, page_size 1-1000, page_timeout_ms 100-600000".into(),
            ));
        }
        let k = &self.console;
        if !(60..=86_400).contains(&k.idle_timeout_secs)
            || !(k.idle_timeout_secs..=30 * 86_400).contains(&k.absolute_timeout_secs)
        {
            return Err(ConfigError::Invalid(format!(
                "console: idle_timeout_secs must be 60-86400 and absolute_timeout_secs between it and 2592000 (30 days), got {} and {}",
                k.idle_timeout_secs, k.absolute_timeout_secs
            )));
        }
        if c.heartbeat_window_secs <= c.heartbeat_interval_secs {
            return Err(ConfigError::Invalid(format!(
                "connectors.heartbeat_window_secs ({}) must be longer than connectors.heartbeat_interval_secs ({})",
                c.heartbeat_window_secs, c.heartbeat_interval_secs
            )));
        }
        Ok(())
    }

    /// The separate metrics listener, when `metrics.listen` is set (and metrics are enabled).
    pub fn metrics_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        use std::net::ToSocketAddrs;
        match (&self.metrics.listen, self.metrics.enabled) {
            (Some(l), true) => l
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(Some)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!("metrics.listen must be host:port, got {l:?}"))
                }),
            _ => Ok(None),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        self.listen
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                ConfigError::Invalid(format!("listen must be host:port, got {:?}", self.listen))
            })
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .as_ref()
            .map(|u| u.0.clone())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("imd.db").display()))
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// The issuer put in tokens. Without an explicit public URL it is derived from the listen
    /// address, which is right for a single machine and wrong behind a proxy (documented).
    pub fn public_url_or_default(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls.cert_file.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{bound}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_any_layer() {
        let s = load(Some(Path::new("/dev/null")), env(&[]), &[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.limits.device_map_bytes, 256 * 1024 * 1024);
        assert!(s.database_url().ends_with("imd-data/imd.db"));
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[limits]\ndevice_map_bytes = 10\n",
        )
        .unwrap();
        let s = load(
            Some(&file),
            env(&[
                ("IMD_LISTEN", "127.0.0.1:2"),
                ("IMD_LIMITS__DEVICE_MAP_BYTES", "20"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:2");
        assert_eq!(s.limits.device_map_bytes, 20);
        let s = load(
            Some(&file),
            env(&[("IMD_LISTEN", "127.0.0.1:2")]),
            &[("listen", "127.0.0.1:3".into())],
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:3");
        assert_eq!(s.limits.device_map_bytes, 10);
    }

    #[test]
    fn resolver_budgets_must_be_positive_and_database_urls_print_without_passwords() {
        for (k, v) in [
            ("IMD_RESOLVERS__NETWORK_TIMEOUT_MS", "0"),
            ("IMD_RESOLVERS__NETWORK_MAX_IN_FLIGHT", "0"),
        ] {
            let e = load(Some(Path::new("/dev/null")), env(&[(k, v)]), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("resolvers."), "{e}");
        }
        let s = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_DATABASE_URL", "postgres://imd:Sup3rSecret@db/imd")]),
            &[],
        )
        .unwrap();
        assert_eq!(s.database_url(), "postgres://imd:Sup3rSecret@db/imd");
        assert!(!format!("{s:?}").contains("Sup3rSecret"));
    }

    #[test]
    fn connector_settings_have_defaults_and_are_checked() {
        let s = load(Some(Path::new("/dev/null")), env(&[]), &[]).unwrap();
        assert_eq!(s.connectors.heartbeat_window_secs, 30);
        assert_eq!(s.connectors.heartbeat_interval_secs, 10);
        assert_eq!(s.connectors.request_timeout_ms, 10_000);
        assert_eq!(s.connectors.max_in_flight, 64);
        assert_eq!(s.connectors.max_response_bytes, 4_194_304);
        let s = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_CONNECTORS__HEARTBEAT_WINDOW_SECS", "45")]),
            &[],
        )
        .unwrap();
        assert_eq!(s.connectors.heartbeat_window_secs, 45);
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_CONNECTORS__HEARTBEAT_WINDOW_SECS", "5")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat_window_secs"), "{e}");
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_CONNECTORS__HEARTBEAT_WINDOW", "5")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat_window"), "{e}");
    }

    #[test]
    fn azure_settings_have_defaults_are_checked_and_reject_unknown_keys() {
        let s = load(Some(Path::new("/dev/null")), env(&[]), &[]).unwrap();
        assert_eq!(s.azure.timeout_ms, 10_000);
        assert_eq!(s.azure.lookup_cache_secs, 300);
        assert_eq!(s.azure.max_retries, 4);
        let s = load(
            Some(Path::new("/dev/null")),
            env(&[
                ("IMD_AZURE__TIMEOUT_MS", "2500"),
                ("IMD_AZURE__LOOKUP_CACHE_SECS", "0"),
                ("IMD_AZURE__MAX_RETRIES", "0"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            (
                s.azure.timeout_ms,
                s.azure.lookup_cache_secs,
                s.azure.max_retries
            ),
            (2500, 0, 0)
        );
        for (k, v, needle) in [
            ("IMD_AZURE__TIMEOUT_MS", "0", "azure.timeout_ms"),
            ("IMD_AZURE__TIMEOUT_MS", "999999", "azure.timeout_ms"),
            ("IMD_AZURE__MAX_RETRIES", "50", "azure.max_retries"),
            (
                "IMD_AZURE__LOOKUP_CACHE_SECS",
                "100000",
                "azure.lookup_cache_secs",
            ),
            ("IMD_AZURE__TIMEOUT", "5", "timeout"),
        ] {
            let e = load(Some(Path::new("/dev/null")), env(&[(k, v)]), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_in_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imd.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let e = load(Some(&file), env(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_LISTN", "x")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listn"), "{e}");
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_LIMITS__NOPE", "1")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_LIMITS__JSON_BODY_BYTES", "lots")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("whole number"), "{e}");
        let e = load(
            Some(Path::new("/dev/null")),
            env(&[("IMD_PUBLIC_URL", "ftp://x")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("public_url"), "{e}");
    }
}
