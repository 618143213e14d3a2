//! Command line: `imd serve`, `imd org create`, `imd keys rotate|list`, `imd demo`, `imd bench`.
//! Offline commands (org, keys) work directly against the configured database.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::clock::{Clock, SystemClock, rfc3339};
use crate::config::{self, Settings};
use crate::crypto::{ADMIN_KEY_PREFIX, random_secret, sha256_hex};
use crate::startup::{self, Application};

#[derive(Debug, Parser)]
#[command(
    name = "imd",
    version,
    about = "Integrated mass deployment activation service"
)]
pub struct Cli {
    /// Config file (default: ./imd.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Default, Clone)]
pub struct StoreArgs {
    /// Data directory (SQLite database, master key). [env: IMD_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL, e.g. sqlite:///var/lib/imd/imd.db. [env: IMD_DATABASE_URL]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080. [env: IMD_LISTEN]
        #[arg(long)]
        listen: Option<String>,
        /// URL clients reach this service at; becomes every token's issuer. [env: IMD_PUBLIC_URL]
        #[arg(long)]
        public_url: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply pending database migrations without serving (`serve` also applies them at start).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take a consistent online copy of the embedded SQLite database while the service runs
    /// (for PostgreSQL use pg_dump: docs/deployment.md).
    Backup {
        /// Where to write the copy (created 0600; an existing file is replaced).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the main job end to end on a temporary embedded database.
    Demo(crate::demo::DemoArgs),
    /// Measure activation throughput and latency, and a large device-map upload.
    Bench(crate::bench::BenchArgs),
    /// The reference activation client (what an agent does at first start); see docs/client.md.
    #[command(subcommand)]
    Client(crate::client::ClientCommand),
    /// The on-premises AD/LDAP connector (docs/connector.md).
    #[command(subcommand)]
    Connector(crate::connector::cli::ConnectorCommand),
    /// Directory sync (docs/sync.md).
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Check the configuration, database, master key, TLS certificate and clock, and print
    /// what to fix. Changes nothing.
    Doctor {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Run one sync of an organization in the foreground and print its report. Connectors are
    /// reached through the running server that holds their channel.
    Run {
        #[arg(long)]
        org: String,
        /// Compute the report and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: evaluate retention as of this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization and print its id and first admin API key.
    Create {
        #[arg(long)]
        name: String,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Start signing with a new key; tokens signed by older keys stay valid.
    Rotate {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List signing keys.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn store_flags(store: &StoreArgs, flags: &mut Vec<(&'static str, String)>) {
    if let Some(d) = &store.data_dir {
        flags.push(("data_dir", d.display().to_string()));
    }
    if let Some(u) = &store.database_url {
        flags.push(("database_url", u.clone()));
    }
}

pub fn settings(
    file: Option<&std::path::Path>,
    flags: &[(&str, String)],
) -> Result<Settings, config::ConfigError> {
    config::load(file, std::env::vars(), flags)
}

pub async fn run(cli: Cli) -> ExitCode {
    match run_inner(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = cli.config.as_deref();
    let mut flags = Vec::new();
    match cli.command {
        Command::Serve {
            listen,
            public_url,
            store,
        } => {
            if let Some(l) = listen {
                flags.push(("listen", l));
            }
            if let Some(u) = public_url {
                flags.push(("public_url", u));
            }
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            crate::telemetry::init(s.log_format == "json");
            let app = Application::build(s, Arc::new(SystemClock)).await?;
            tracing::info!(addr = %app.addr(), public_url = app.public_url(), "imd listening");
            // The one line scripts (and `imd bench`) read to find the port.
            println!(
                "imd listening on {} (public URL {})",
                app.addr(),
                app.public_url()
            );
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { store } => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            startup::create_private_dir(&s.data_dir)?;
            let applied =
                crate::store::Store::migrate(&startup::store_options(&s, &startup::replica_id()))
                    .await?;
            if applied.is_empty() {
                println!("the database is up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { out, store } => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            let db = startup::open_store_unmigrated(&s).await?;
            let started = std::time::Instant::now();
            db.backup(&out).await?;
            db.close().await;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!(
                "backup written to {} ({size} bytes, {} ms)",
                out.display(),
                started.elapsed().as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Org(OrgCommand::Create {
            name,
            json: as_json,
            store,
        }) => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            let name = name.trim().to_string();
            if name.is_empty() || name.chars().count() > 200 {
                anyhow::bail!("--name must be 1 to 200 characters");
            }
            let (org, key) = create_org(&s, &name).await?;
            if as_json {
                println!(
                    "{}",
                    json!({"id": org.id, "name": org.name, "admin_key": key, "created_at": rfc3339(org.created_at)})
                );
            } else {
                println!("organization: {} ({})", org.name, org.id);
                println!("admin key:    {key}");
                println!("Keep this key safe: it is shown only once and stored only as a hash.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Rotate {
            json: as_json,
            store,
        }) => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            startup::install_crypto_provider();
            let db = startup::open_store(&s).await?;
            let master = startup::master_key(&s)?;
            let now = SystemClock.now();
            crate::tokens::ensure_signing_key(&db, &master, now).await?;
            let kid = crate::tokens::rotate(&db, &master, now).await?;
            if as_json {
                println!("{}", json!({"kid": kid}));
            } else {
                println!("new signing key: {kid}");
                println!(
                    "Tokens signed by previous keys remain valid. Running servers sign with the new key from their next mint and publish it at /api/v1/keys within a second."
                );
            }
            db.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::List { store }) => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            let db = startup::open_store(&s).await?;
            for k in db.signing_keys().await? {
                let state = if k.retired_at.is_some() {
                    "verifies only"
                } else {
                    "signing"
                };
                println!("{}  created {}  {state}", k.kid, rfc3339(k.created_at));
            }
            db.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(SyncCommand::Run {
            org,
            dry_run,
            as_of,
            json: as_json,
            store,
        }) => {
            store_flags(&store, &mut flags);
            let s = settings(file, &flags)?;
            sync_run(&s, &org, dry_run, as_of.as_deref(), as_json).await
        }
        Command::Doctor { store } => {
            store_flags(&store, &mut flags);
            let s = match settings(file, &flags) {
                Ok(s) => s,
                Err(e) => {
                    println!("FAIL  configuration    {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            startup::install_crypto_provider();
            let checks = crate::doctor::run_checks(&s, SystemClock.now()).await;
            Ok(crate::doctor::report(&checks))
        }
        Command::Demo(args) => crate::demo::run(args, file).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Client(cmd) => Ok(crate::client::run(cmd).await),
        Command::Connector(cmd) => Ok(crate::connector::cli::run(cmd).await),
    }
}

/// Creates an organization with a fresh admin key; returns the key (shown once, stored hashed).
pub async fn create_org(
    s: &Settings,
    name: &str,
) -> anyhow::Result<(crate::store::OrgRow, String)> {
    let db = startup::open_store(s).await?;
    let key = random_secret(ADMIN_KEY_PREFIX)?;
    let org = db
        .create_org(name, &sha256_hex(&key), SystemClock.now())
        .await?;
    db.close().await;
    Ok((org, key))
}

/// `imd sync run`: one run in this process, with a progress bar on stderr.
async fn sync_run(
    s: &Settings,
    org: &str,
    dry_run: bool,
    as_of: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    startup::install_crypto_provider();
    let db = startup::open_store(s).await?;
    db.org(org)
        .await
        .map_err(|_| anyhow::anyhow!("no organization {org:?} in this database"))?;
    let as_of = as_of
        .map(crate::clock::parse_rfc3339)
        .transpose()
        .map_err(|m| anyhow::anyhow!("--as-of: {m}"))?;
    let master = Arc::new(startup::master_key(s)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let replica = format!("cli-{}", startup::replica_id());
    let hub = Arc::new(crate::directory::Hub::new(
        db.clone(),
        clock.clone(),
        replica.clone(),
        startup::hub_settings(s),
        master.cluster_key(),
    ));
    let graph = Arc::new(crate::directory::graph::GraphClients::new(
        db.clone(),
        master.clone(),
        crate::directory::graph::GraphClients::http_client(),
        s.azure.max_retries as u32,
    ));
    let svc = Arc::new(crate::sync::SyncService::new(
        db.clone(),
        hub,
        graph,
        clock,
        s.sync.clone(),
        replica,
        s.connectors.heartbeat_window_secs,
    ));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("starting");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress: crate::sync::Progress = {
        let bar = bar.clone();
        Arc::new(move |c: &crate::store::SyncCounts| {
            bar.set_message(format!(
                "imported {}  updated {}  re-enabled {}  preserved {}  deleted {}  skipped {}",
                c.imported, c.updated, c.reenabled, c.preserved, c.deleted, c.skipped
            ))
        })
    };
    let opts = crate::sync::RunOptions {
        trigger: crate::sync::Trigger::Cli,
        dry_run,
        as_of,
    };
    let run = svc.run(org, opts, Some(progress)).await;
    bar.finish_and_clear();
    let run = run?;
    let v = crate::sync::run_json(&run);
    if as_json {
        println!("{v}");
    } else {
        let c = run.counts();
        println!(
            "sync run {} ({}{}): {}",
            run.id,
            run.run_trigger,
            if run.dry_run { ", dry run" } else { "" },
            run.status
        );
        println!(
            "  seen {}  imported {}  updated {}  re-enabled {}  preserved {}  deleted {}  skipped {}  errors {}",
            c.seen, c.imported, c.updated, c.reenabled, c.preserved, c.deleted, c.skipped, c.errors
        );
        if run.held_preserve + run.held_delete > 0 {
            println!(
                "  held back for approval: {} preserves, {} deletes (POST /api/v1/admin/sync-runs/{}/approve)",
                run.held_preserve, run.held_delete, run.id
            );
        }
        if let Some(e) = &run.error {
            println!("  error: {e}");
        }
        let mut after = 0;
        loop {
            let lines = db.sync_run_users(&run.id, None, after, 500).await?;
            let Some(last) = lines.last() else { break };
            after = last.seq;
            for l in lines
                .iter()
                .filter(|l| l.action != "imported" && l.action != "updated")
            {
                println!(
                    "  {:<10} {} <{}>: {}",
                    l.action,
                    l.name.as_deref().unwrap_or("-"),
                    l.email.as_deref().unwrap_or("-"),
                    l.reason.as_deref().unwrap_or("")
                );
            }
        }
    }
    db.close().await;
    Ok(if run.status == "failed" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
