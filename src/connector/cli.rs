//! `imd connector register | run | check`: the connector's command line. `register` trades a
//! registration key for the credential (saved 0600 in the state directory), `run` keeps the
//! channel to the service in the foreground (systemd or a Windows service wraps it), `check`
//! binds to the directory and prints what it found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use futures_util::future::BoxFuture;

use super::channel::{self, Backend, ChannelOptions};
use super::config::ConnectorConfig;
use super::directory::Directory;
use super::proto::{DirectoryKind, OpError, OpResult, Operation};
use super::state;

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Trade a registration key (from POST /api/v1/admin/connectors) for the connector's
    /// credential, saved in the state directory.
    Register {
        /// The service's URL, e.g. https://imd.example.com.
        #[arg(long)]
        server: String,
        /// The single-use registration key.
        #[arg(long)]
        key: String,
        #[arg(long, value_name = "DIR", default_value = "/var/lib/imd-connector")]
        state_dir: PathBuf,
        /// PEM file pinning the service's CA (else the system roots, or `[server] ca_file`
        /// of --config).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the connector in the foreground: one outbound channel to the service.
    Run {
        #[arg(long, value_name = "FILE", default_value = "/etc/imd/connector.toml")]
        config: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "/var/lib/imd-connector")]
        state_dir: PathBuf,
    },
    /// Bind to the directory with the configured account and print what it reports.
    Check {
        #[arg(long, value_name = "FILE", default_value = "/etc/imd/connector.toml")]
        config: PathBuf,
    },
}

struct DirectoryBackend(Directory);

impl Backend for DirectoryBackend {
    fn kind(&self) -> DirectoryKind {
        self.0.kind()
    }

    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<OpResult, OpError>> {
        Box::pin(self.0.execute(op))
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn run(cmd: ConnectorCommand) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    crate::telemetry::init(false);
    match cmd {
        ConnectorCommand::Register {
            server,
            key,
            state_dir,
            ca_file,
            config,
        } => {
            let ca = match (&ca_file, &config) {
                (Some(f), _) => Some(f.clone()),
                (None, Some(c)) => match ConnectorConfig::load(Some(c)) {
                    Ok(c) => c.server.ca_file.clone(),
                    Err(e) => return fail(e),
                },
                _ => None,
            };
            let tls = match channel::tls_config(ca.as_deref()) {
                Ok(t) => Arc::new(t),
                Err(e) => return fail(e),
            };
            let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc().unix_timestamp());
            match state::register(&server, &key, &state_dir, tls, VERSION, now).await {
                Ok(id) => {
                    println!(
                        "registered connector {} ({}) with {}; credential saved in {}",
                        id.name,
                        id.connector_id,
                        id.server,
                        state::state_path(&state_dir).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        ConnectorCommand::Run { config, state_dir } => {
            let config = match ConnectorConfig::load(Some(&config)) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            for url in &config.directory.urls {
                if url.to_ascii_lowercase().starts_with("ldap://") && !config.directory.starttls {
                    tracing::warn!(
                        %url,
                        "plain LDAP without StartTLS: the bind password and the passwords of \
                         password activations cross the network in clear; use ldaps:// or \
                         starttls = true"
                    );
                }
            }
            let st = match state::load(&state_dir) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let server = match channel::check_server_url(&st.identity.server) {
                Ok(u) => u,
                Err(e) => return fail(e),
            };
            let tls = match channel::tls_config(config.server.ca_file.as_deref()) {
                Ok(t) => Arc::new(t),
                Err(e) => return fail(e),
            };
            let directory = match Directory::new(&config) {
                Ok(d) => d,
                Err(e) => return fail(e.message),
            };
            tracing::info!(
                connector_id = %st.identity.connector_id,
                server = %server,
                kind = directory.kind().as_str(),
                "connector starting"
            );
            let opts = ChannelOptions {
                server,
                credential: st.credential,
                tls,
                version: VERSION.to_string(),
            };
            match channel::run(Arc::new(DirectoryBackend(directory)), opts, shutdown()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        ConnectorCommand::Check { config } => {
            let config = match ConnectorConfig::load(Some(&config)) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            match super::directory::check(&config).await {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.message),
            }
        }
    }
}

async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
