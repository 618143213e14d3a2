//! The PostgreSQL backend (14 or newer) for several `imd serve` replicas sharing one database.
//! No state lives in a process: every write is a short transaction on the pool, invariants are
//! held by the database (conditional writes, unique indexes, advisory and row locks), and a
//! transaction that lost a race is retried a bounded number of times with jitter.

mod hot;
mod import;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::store::{
    ActivationRow, ActivityBucket, AdminKeyRow, AzureConfigRow, AzureMappingRow,
    AzureMappingValues, AzureMappingWrite, ConnectorRow, ConnectorSessionRow, ConsoleSessionRow,
    DeviceRow, FailingDevice, FailureCount, ImportTx, LdapMappingRow, LdapMappingValues,
    LdapMappingWrite, MappingFilter, NewToken, OrgRow, OrgSettingsPatch, Result, Rotation,
    SigningKeyRow, StoreError, StoreOptions, StoredMapping, TokenRollout, TokenRow, TxJob, UserRow,
    pending_migrations, scrub,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Attempts of one transaction before its caller gets a retryable 503.
const MAX_ATTEMPTS: u32 = 6;

/// The database type the shared SQL macros (`*_sql!`) name.
type Db = Postgres;

pub(super) struct PgStore {
    pool: PgPool,
    /// The same pool: the portable SQL reads from `read`.
    read: PgPool,
    replica_id: String,
}

fn connect_options(opts: &StoreOptions, role: &str) -> Result<PgConnectOptions> {
    let lock_ms = opts.busy_timeout.as_millis().max(1).to_string();
    Ok(PgConnectOptions::from_str(&opts.url)
        .map_err(|e| StoreError::UnsupportedUrl(scrub(&e.to_string(), &opts.url)))?
        .application_name(&format!("imd-{}-{role}", opts.replica_id))
        .options([
            // A statement waiting on a lock longer than this fails (→ 503), like SQLite's busy
            // timeout; a runaway statement or a forgotten transaction cannot hold locks forever.
            ("lock_timeout", lock_ms.as_str()),
            ("statement_timeout", "120s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ]))
}

async fn connect(opts: &StoreOptions, role: &str, max: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(connect_options(opts, role)?)
        .await
        .map_err(|e| {
            // sqlx errors may echo the URL; the password never leaves this function.
            StoreError::Unavailable(format!(
                "cannot connect to {}: {}",
                crate::store::redact_url(&opts.url),
                scrub(&e.to_string(), &opts.url)
            ))
        })
}

async fn migrate(pool: &PgPool, apply: bool) -> Result<Vec<i64>> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let pending = pending_migrations(&applied, &MIGRATOR, apply)?;
    if !pending.is_empty() {
        // sqlx holds an advisory lock while migrating: replicas starting together take turns.
        MIGRATOR.run(pool).await?;
    }
    Ok(pending)
}

/// Up to ~20 ms, growing with the attempt, randomized so racing replicas spread out.
fn backoff(attempt: u32) -> Duration {
    let cap = 2u64 << attempt.min(4);
    let r = u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
    Duration::from_micros(500 + r * cap * 1000 / 256)
}

impl PgStore {
    pub(super) async fn open(opts: &StoreOptions) -> Result<PgStore> {
        let pool = connect(opts, "pool", opts.max_connections).await?;
        migrate(&pool, opts.migrate).await?;
        Ok(PgStore {
            read: pool.clone(),
            pool,
            replica_id: opts.replica_id.clone(),
        })
    }

    pub(super) async fn migrate_only(opts: &StoreOptions) -> Result<Vec<i64>> {
        let pool = connect(opts, "migrate", 1).await?;
        let r = migrate(&pool, true).await;
        pool.close().await;
        r
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Serializes the writers of one organization's invariants (last admin key, rotation
    /// linked once, settings read-modify-write) until the transaction ends.
    async fn lock_org(
        &self,
        tx: &mut sqlx::Transaction<'static, Postgres>,
        org: &str,
    ) -> Result<()> {
        sqlx::query("SELECT 1 FROM orgs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(org)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A named lock without a row to hang it on (the signing-key ring).
    async fn lock_name(
        &self,
        tx: &mut sqlx::Transaction<'static, Postgres>,
        name: &str,
    ) -> Result<()> {
        let key = crate::store::LockKey::new("", "name", name).hash64();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(super) async fn write<J: TxJob>(&self, job: J) -> Result<J::Output, J::Error> {
        let mut attempt = 1;
        loop {
            match self.attempt(&job).await {
                Err(e) if attempt < MAX_ATTEMPTS && J::is_contention(&e) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt<J: TxJob>(&self, job: &J) -> Result<J::Output, J::Error> {
        let mut tx = hot::PgTx {
            tx: self.pool.begin().await.map_err(StoreError::from)?,
        };
        match job.run(&mut tx).await {
            Ok(v) => {
                // A serialization failure can surface at COMMIT: it is contention like any other.
                tx.tx.commit().await.map_err(StoreError::from)?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.tx.rollback().await;
                Err(e)
            }
        }
    }

    pub(super) fn import_tx(&self) -> Result<Box<dyn ImportTx>> {
        let handle = tokio::runtime::Handle::current();
        let conn = handle.block_on(self.pool.acquire())?;
        Ok(Box::new(import::PgImport::new(conn, handle)))
    }

    /// The database server's clock, unix seconds.
    pub(super) async fn database_time(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A real write: fails on a read-only database (a standby after failover) or a full disk.
    pub(super) async fn probe_write(&self, version: &str, started_at: i64, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (id, version, started_at, seen_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at",
        )
        .bind(&self.replica_id)
        .bind(version)
        .bind(started_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn schema(&self) -> Result<Vec<(String, Vec<String>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'
             ORDER BY table_name, column_name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (t, c) in rows {
            match out.last_mut() {
                Some((last, cols)) if *last == t => cols.push(c),
                _ => out.push((t, vec![c])),
            }
        }
        Ok(out)
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    pub(super) fn pool_stats(&self) -> Vec<crate::store::PoolStats> {
        vec![crate::store::pool_stats_of("main", &self.pool)]
    }
}

impl PgStore {
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

/// A new, empty database on the server `admin_url` points at (tooling: the benchmark); returns its
/// URL. `name` must be a plain identifier.
pub(super) async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    use sqlx::{Connection, Executor};
    check_identifier(name)?;
    let mut c = sqlx::PgConnection::connect(admin_url).await.map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot connect to {}: {}",
            crate::store::redact_url(admin_url),
            scrub(&e.to_string(), admin_url)
        ))
    })?;
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    let _ = c.close().await;
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    Ok(format!("{prefix}/{name}{query}"))
}

/// Drops a database `create_database` made, closing its sessions.
pub(super) async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::{Connection, Executor};
    check_identifier(name)?;
    let mut c = sqlx::PgConnection::connect(admin_url).await?;
    c.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await?;
    let _ = c.close().await;
    Ok(())
}

fn check_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "{name:?} is not a plain database name"
        )))
    }
}
