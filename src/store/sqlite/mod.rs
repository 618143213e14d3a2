//! The embedded SQLite backend (WAL), reached three ways:
//! - `writer`: a group-commit thread owning one rusqlite connection; every `TxJob` (activations,
//!   mapping writes, audit batches) and the readiness probe run there, so what a job reads cannot
//!   change before it writes;
//! - a one-connection async write pool for admin writes, whose transactions start with
//!   `BEGIN IMMEDIATE` so a read-then-write transaction never hits the lock-upgrade failure that
//!   SQLite's busy handler does not cover;
//! - an async pool of readers.
//!
//! Bulk imports take a synchronous connection of their own (`import`). All writers take turns
//! at SQLite's single write lock through the busy timeout.

mod hot;
mod import;
mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::store::{
    ActivationRow, ActivityBucket, AdminKeyRow, AzureConfigRow, AzureMappingRow,
    AzureMappingValues, AzureMappingWrite, ConnectorRow, ConnectorSessionRow, ConsoleSessionRow,
    DeviceRow, FailingDevice, FailureCount, ImportTx, LdapMappingRow, LdapMappingValues,
    LdapMappingWrite, MappingFilter, NewToken, OrgRow, OrgSettingsPatch, Result, Rotation,
    SigningKeyRow, StoreError, StoreOptions, StoredMapping, TokenRollout, TokenRow, TxJob, UserRow,
    pending_migrations,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The database type the shared SQL macros (`*_sql!`) name.
type Db = Sqlite;

pub(super) struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    hot: writer::BatchWriter,
    path: PathBuf,
    busy_timeout: Duration,
    replica_id: String,
}

fn connect_options(opts: &StoreOptions) -> Result<SqliteConnectOptions> {
    let base = SqliteConnectOptions::from_str(&opts.url)
        .map_err(|e| StoreError::UnsupportedUrl(e.to_string()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode survives process crashes; only power loss can drop the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(opts.busy_timeout)
        .pragma("temp_store", "memory")
        // Checkpoints run on their own thread (see `writer`), never inline in a commit.
        .pragma("wal_autocheckpoint", "0");
    if let Some(parent) = base.get_filename().parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    Ok(base)
}

/// Holds an exclusive lock on `<database>.migrate-lock` while migrating, so processes that open
/// one database file at once (a restart overlapping the old process, offline commands) take
/// turns instead of both applying a migration.
async fn migrate_locked(pool: &SqlitePool, db: &Path, apply: bool) -> Result<Vec<i64>> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".migrate-lock");
    let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        f.lock()?;
        Ok(f)
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))?
    .map_err(|e| StoreError::Unavailable(format!("cannot take the migration lock: {e}")))?;
    let r = migrate(pool, apply).await;
    drop(lock);
    r
}

async fn migrate(pool: &SqlitePool, apply: bool) -> Result<Vec<i64>> {
    let applied: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let pending = pending_migrations(&applied, &MIGRATOR, apply)?;
    if !pending.is_empty() {
        MIGRATOR.run(pool).await?;
    }
    Ok(pending)
}

impl SqliteStore {
    pub(super) async fn open(opts: &StoreOptions) -> Result<SqliteStore> {
        let base = connect_options(opts)?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        migrate_locked(&write, base.get_filename(), opts.migrate).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        let hot = writer::BatchWriter::start(base.get_filename(), opts.busy_timeout)?;
        Ok(SqliteStore {
            write,
            read,
            hot,
            path: base.get_filename().to_path_buf(),
            busy_timeout: opts.busy_timeout,
            replica_id: opts.replica_id.clone(),
        })
    }

    pub(super) async fn migrate_only(opts: &StoreOptions) -> Result<Vec<i64>> {
        let options = connect_options(opts)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let applied = migrate_locked(&pool, options.get_filename(), true).await;
        pool.close().await;
        applied
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`: takes the write lock up front).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// `BEGIN IMMEDIATE` already serializes every writer: no finer lock is needed.
    async fn lock_org(
        &self,
        _tx: &mut sqlx::Transaction<'static, Sqlite>,
        _org: &str,
    ) -> Result<()> {
        Ok(())
    }

    async fn lock_name(
        &self,
        _tx: &mut sqlx::Transaction<'static, Sqlite>,
        _name: &str,
    ) -> Result<()> {
        Ok(())
    }

    pub(super) async fn write<J: TxJob>(&self, job: J) -> Result<J::Output, J::Error> {
        let job = Arc::new(job);
        self.hot
            .run(move |conn| {
                let mut tx = hot::SqliteTx(conn);
                crate::store::run_ready(job.run(&mut tx))
            })
            .await
    }

    pub(super) fn import_tx(&self) -> Result<Box<dyn ImportTx>> {
        Ok(Box::new(import::SqliteImport::open(
            &self.path,
            self.busy_timeout,
        )?))
    }

    /// The database server's clock, unix seconds.
    pub(super) async fn database_time(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT CAST(strftime('%s', 'now') AS INTEGER)")
                .fetch_one(&self.read)
                .await?,
        )
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// Through the writer thread, so a stopped writer or a database that cannot take writes
    /// (locked past the busy timeout, disk full, read-only) fails readiness.
    pub(super) async fn probe_write(&self, version: &str, started_at: i64, now: i64) -> Result<()> {
        let (id, version) = (self.replica_id.clone(), version.to_string());
        self.hot
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO replicas (id, version, started_at, seen_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at",
                )?
                .execute(rusqlite::params![id, version, started_at, now])?;
                Ok::<(), StoreError>(())
            })
            .await
    }

    /// SQLite's online backup in one step: one read transaction, so the copy is a consistent
    /// snapshot and concurrent writers (WAL) are never blocked or able to restart it.
    pub(super) async fn backup(&self, out: &Path) -> Result<()> {
        let (src, out) = (self.path.clone(), out.to_path_buf());
        let busy = self.busy_timeout;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
            let tmp = tempfile::Builder::new()
                .prefix(".imd-backup-")
                .tempfile_in(dir.unwrap_or(Path::new(".")))
                .map_err(|e| StoreError::Internal(format!("creating the backup file: {e}")))?;
            let source = writer::open_sync(&src, busy)?;
            let mut dest = rusqlite::Connection::open(tmp.path())?;
            {
                use rusqlite::backup::{Backup, StepResult};
                let backup = Backup::new(&source, &mut dest)?;
                // -1: every page in one step.
                let deadline = std::time::Instant::now() + busy;
                loop {
                    match backup.step(-1)? {
                        StepResult::Done => break,
                        StepResult::More => {}
                        _ if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            return Err(StoreError::Unavailable(
                                "the database stayed locked during the backup".into(),
                            ));
                        }
                    }
                }
            }
            dest.execute_batch("PRAGMA journal_mode = DELETE")?;
            drop(dest);
            // The temp file is created 0600: the copy holds sealed keys and hashes.
            tmp.persist(&out)
                .map_err(|e| StoreError::Internal(format!("writing {}: {e}", out.display())))?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    pub(super) async fn schema(&self) -> Result<Vec<(String, Vec<String>)>> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')
               AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for t in tables {
            let mut cols: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY name")
                    .bind(&t)
                    .fetch_all(&self.read)
                    .await?;
            cols.sort();
            out.push((t, cols));
        }
        Ok(out)
    }

    pub(super) async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        // Copy the WAL back into the database file and truncate it, so a stopped server leaves
        // one self-contained file (the writer thread's commits are all in the WAL by now).
        let (path, busy) = (self.path.clone(), self.busy_timeout);
        let done = tokio::task::spawn_blocking(move || {
            writer::open_sync(&path, busy)
                .and_then(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?))
        })
        .await;
        match done {
            Ok(Ok(())) => tracing::debug!("database checkpointed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "final checkpoint failed; the WAL is replayed at the next start")
            }
            Err(e) => tracing::warn!(error = %e, "final checkpoint did not run"),
        }
    }

    pub(super) fn pool_stats(&self) -> Vec<crate::store::PoolStats> {
        vec![
            crate::store::pool_stats_of("read", &self.read),
            crate::store::pool_stats_of("write", &self.write),
        ]
    }

    pub(super) fn writer_queue_depth(&self) -> usize {
        self.hot.queue_depth()
    }
}

impl SqliteStore {
    crate::store::orgs::org_sql!();
    crate::store::tokens::token_sql!();
    crate::store::keys::key_sql!();
    crate::store::users::user_sql!();
    crate::store::devices::device_sql!();
    crate::store::mappings::mapping_sql!();
    crate::store::activations::activation_sql!();
    crate::store::connectors::connector_sql!();
    crate::store::ldap_mappings::ldap_mapping_sql!();
    crate::store::azure::azure_sql!();
    crate::store::sync::sync_sql!();
    crate::store::console::console_sql!();
}
