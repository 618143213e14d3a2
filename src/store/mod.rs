//! Storage: owns the database, its migrations and every SQL statement. Nothing outside this module
//! writes SQL. SQLite (WAL) is the embedded default, reached three ways:
//! - `hot` + `writer`: the activation hot path, synchronous SQL on a dedicated group-commit thread;
//! - a one-connection async write pool for everything else that writes (admin API), whose
//!   transactions start with `BEGIN IMMEDIATE` so a read-then-write transaction never hits the
//!   lock-upgrade failure that SQLite's busy handler does not cover;
//! - an async pool of readers.
//!
//! Bulk imports take a synchronous connection of their own (`sync_connection`). All of them
//! take turns at SQLite's single write lock through the busy timeout.

pub mod activations;
pub mod devices;
pub mod hot;
pub mod keys;
pub mod mappings;
pub mod orgs;
pub mod tokens;
pub mod users;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

pub use activations::{ActivationRecord, ActivationRow};
pub use devices::{DeviceReport, DeviceRow, NewDevice};
pub use keys::SigningKeyRow;
pub use mappings::{MappingFilter, MappingsOutcome, StoredMapping};
pub use orgs::{AdminKeyRow, OrgRow, OrgSettingsPatch};
pub use tokens::{NewToken, Rotation, TokenRow};
pub use users::{NewUser, UserRow};

pub type Db = Sqlite;
pub type Tx = sqlx::Transaction<'static, Db>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transient: the database is busy or out of connections. Callers answer 503 + Retry-After.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule fired: a concurrent writer got there first.
    #[error("conflicting concurrent write")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Internal(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?} (use sqlite://...)")]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    return StoreError::Conflict;
                }
                // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                if matches!(code & 0xff, 5 | 6) {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Internal(e)
                }
            }
            _ => StoreError::Internal(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub busy_timeout: Duration,
    pub acquire_timeout: Duration,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    write: SqlitePool,
    read: SqlitePool,
    hot: writer::BatchWriter,
    path: std::path::PathBuf,
    busy_timeout: Duration,
}

impl Store {
    /// Opens (creating when missing) the database and applies pending migrations.
    pub async fn open(opts: &StoreOptions) -> Result<Store> {
        if !opts.url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(opts.url.clone()));
        }
        let base = SqliteConnectOptions::from_str(&opts.url)
            .map_err(StoreError::Internal)?
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
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        let hot = writer::BatchWriter::start(base.get_filename(), opts.busy_timeout)?;
        Ok(Store {
            write,
            read,
            hot,
            path: base.get_filename().to_path_buf(),
            busy_timeout: opts.busy_timeout,
        })
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`: takes the write lock up front).
    pub async fn begin(&self) -> Result<Tx> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A synchronous connection for bulk work in a blocking thread (device-map imports).
    pub fn sync_connection(&self) -> Result<rusqlite::Connection> {
        writer::open_sync(&self.path, self.busy_timeout)
    }

    /// The group-commit writer for the activation hot path.
    pub fn hot(&self) -> &writer::BatchWriter {
        &self.hot
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// A new time-ordered id (UUIDv7), so ordering by id is ordering by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Bounds for list endpoints.
#[derive(Debug, Clone)]
pub struct Page {
    pub after: Option<String>,
    pub limit: u32,
}
