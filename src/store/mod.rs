//! Storage: owns the database, its migrations and every SQL statement; nothing outside this module
//! writes SQL or sees a database type. Two backends sit behind one handle, `Store`:
//! - `sqlite/`: the embedded default (WAL). Activations and other hot writes run as jobs on a
//!   group-commit writer thread; admin writes take turns through a one-connection pool.
//! - `postgres/`: several replicas share one database. Every write is a short transaction on a
//!   pool; hot writes serialize on advisory locks per identity and retry lost races.
//!
//! The layers above ask in domain terms: `Store` methods for reads and admin writes, `TxJob` +
//! `WriteTx` for work that must decide and write in one transaction (an activation), `ImportTx`
//! for bulk device-map imports. Admin SQL is written once (`*_sql!` macro bodies in the row
//! modules) and compiled for both backends; SQL that differs lives in the backend's folder.

pub mod activations;
pub mod azure;
pub mod connectors;
pub mod console;
pub mod devices;
pub mod keys;
pub mod ldap_mappings;
pub mod mappings;
pub mod orgs;
mod postgres;
mod sqlite;
pub mod sync;
pub mod tokens;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use activations::{ActivationFilter, ActivationRecord, ActivationRow};
pub use azure::{
    AZURE_SOURCE_KINDS, AzureConfigRow, AzureMappingRow, AzureMappingValues, AzureMappingWrite,
    azure_secret_aad,
};
pub use connectors::{ConnectorRow, ConnectorSessionRow};
pub use console::{ActivityBucket, ConsoleSessionRow, FailingDevice, FailureCount, TokenRollout};
pub use devices::{DeviceFilter, DeviceReport, DeviceRow, NewDevice, Reassignment, name_norm};
pub use keys::SigningKeyRow;
pub use ldap_mappings::{EMAIL_FALLBACKS, LdapMappingRow, LdapMappingValues, LdapMappingWrite};

pub use mappings::{MappingFilter, MappingsOutcome, StoredMapping};
pub use orgs::{AdminKeyRow, DIRECTORY_OUTAGE_POLICIES, OrgRow, OrgSettingsPatch};
pub use sync::{
    ProfileRow, SyncCounts, SyncRunRow, SyncRunUserRow, SyncSettingsRow, SyncStoredUser,
    SyncUserValues, SyncWrite, SyncWritten, groups_digest,
};
pub use tokens::{NewToken, Rotation, TokenRow};
pub use users::{NewUser, UserFilter, UserRow, UserStatus};

use crate::domain::{DeviceIdentifiers, MappingRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transient: the database is busy, locked or out of connections. Callers answer 503 +
    /// Retry-After.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule fired: a concurrent writer got there first.
    #[error("conflicting concurrent write")]
    Conflict,
    /// A serialization failure or deadlock (PostgreSQL): the whole transaction may be retried.
    #[error("transaction lost a race: {0}")]
    Retry(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Internal(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    /// The database was migrated by a newer imd than this one.
    #[error(
        "the database is at schema version {found}, newer than this imd knows ({known}); run the newer imd, or restore a backup taken before the upgrade"
    )]
    TooNew { found: i64, known: i64 },
    #[error("unsupported database url (use sqlite://PATH or postgres://...): {0}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// A lost race that a fresh attempt of the same transaction resolves.
    pub fn is_contention(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::Retry(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A case-insensitive `LIKE` pattern for "starts with `v`" (a backslash escapes the wildcards).
pub(crate) fn like_prefix(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 1);
    for c in v.trim().to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Removes the password from a database URL (`postgres://imd:secret@db/imd` →
/// `postgres://imd:***@db/imd`), for every message that names the URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = redact_query_password(tail);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Scrubs a URL (and its password, wherever it appears) from an error text.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(pw) = url_password(url)
        && pw.len() >= 3
    {
        out = out.replace(&pw, "***");
    }
    out
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p.to_string())
}

#[derive(Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// How long a statement waits for a lock (SQLite busy timeout, PostgreSQL lock_timeout).
    pub busy_timeout: Duration,
    pub acquire_timeout: Duration,
    /// Names this process in the database (`replicas`, PostgreSQL application_name).
    pub replica_id: String,
    /// Apply pending migrations (`false`: refuse to start on an unmigrated database).
    pub migrate: bool,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("replica_id", &self.replica_id)
            .field("migrate", &self.migrate)
            .finish_non_exhaustive()
    }
}

/// Which backend a `Store` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    pub fn of_url(url: &str) -> Result<BackendKind> {
        if url.starts_with("sqlite:") {
            Ok(BackendKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(BackendKind::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transactions the layers above drive.

/// A boxed future of a transaction step.
pub type TxFuture<'a, T> = BoxFuture<'a, Result<T>>;

/// Something concurrent writers must not do at the same time (one device identity, one user).
/// PostgreSQL turns each into a transaction-scoped advisory lock; SQLite's single writer needs none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey(String);

impl LockKey {
    pub fn new(org_id: &str, kind: &str, value: &str) -> LockKey {
        LockKey(format!("{org_id}\u{1f}{kind}\u{1f}{value}"))
    }

    /// 64 bits of SHA-256: a collision only makes two unrelated activations wait for each other.
    pub(crate) fn hash64(&self) -> i64 {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest.as_ref()[..8]);
        i64::from_be_bytes(b)
    }
}

/// The reads and writes of one write transaction, in domain types. Every method runs inside the
/// transaction `Store::write` opened; nothing is visible to others until the job returns `Ok`.
pub trait WriteTx: Send {
    /// Takes `locks` (held until the transaction ends) and reads the organization and token.
    fn begin_activation<'a>(
        &'a mut self,
        org_id: &'a str,
        token_id: &'a str,
        locks: &'a [LockKey],
    ) -> TxFuture<'a, (Option<OrgRow>, Option<TokenRow>)>;
    /// The active device these identifiers name (docs/device-identity.md: serial, then UUID,
    /// then hostname for hostname-only devices).
    fn find_active<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<DeviceRow>>;
    fn user<'a>(&'a mut self, org_id: &'a str, id: &'a str) -> TxFuture<'a, Option<UserRow>>;
    fn user_by_email<'a>(
        &'a mut self,
        org_id: &'a str,
        email_norm: &'a str,
    ) -> TxFuture<'a, Option<UserRow>>;
    fn user_by_external_id<'a>(
        &'a mut self,
        org_id: &'a str,
        source: &'a str,
        external_id: &'a str,
    ) -> TxFuture<'a, Option<UserRow>>;
    /// Records the directory's immutable id on a user found by email.
    /// Makes an existing user (found by email, no directory id yet) this directory user: its
    /// `source`, external id and directory attributes become those of `u`; the rest (profile,
    /// storage, quota) stays.
    fn link_external_id<'a>(
        &'a mut self,
        user_id: &'a str,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, ()>;
    /// Re-enables a preserved user the directory reports enabled and mapped again (real time,
    /// at activation), with its audit row; `false` if it was not preserved.
    fn reenable_user<'a>(
        &'a mut self,
        org_id: &'a str,
        user_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool>;
    /// The pending mapping for these identifiers: serial, then UUID, then hostname.
    fn find_pending<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<StoredMapping>>;
    fn pending_mapping<'a>(
        &'a mut self,
        org_id: &'a str,
        kind: &'a str,
        value_norm: &'a str,
    ) -> TxFuture<'a, Option<StoredMapping>>;
    fn active_by_name<'a>(
        &'a mut self,
        user_id: &'a str,
        name: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>>;
    fn active_by_hostname<'a>(
        &'a mut self,
        user_id: &'a str,
        hostname_norm: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>>;
    /// Marks an active device replaced; `false` if it was not active any more.
    fn mark_replaced<'a>(&'a mut self, old_id: &'a str, new_id: &'a str) -> TxFuture<'a, bool>;
    fn insert_device<'a>(&'a mut self, d: &'a NewDevice<'a>, now: i64) -> TxFuture<'a, ()>;
    /// A repeat: what the client reports now, identifiers it could not read before, a new
    /// display name from a fresh mapping of the same user.
    fn refresh_device<'a>(
        &'a mut self,
        d: &'a DeviceRow,
        report: &'a DeviceReport<'a>,
        name: Option<&'a str>,
        install_key_hash: Option<&'a str>,
        now: i64,
    ) -> TxFuture<'a, bool>;
    /// Moves a device to another user with a new credential generation; `false` if the device
    /// is no longer as it was read (revoked, moved, re-keyed meanwhile).
    fn reassign_device<'a>(&'a mut self, r: &'a Reassignment<'a>, now: i64) -> TxFuture<'a, bool>;
    /// Marks a pending mapping consumed by a device; `false` if it was consumed already or now
    /// names another user than the one read (`email_norm`).
    fn consume_mapping<'a>(
        &'a mut self,
        mapping_id: &'a str,
        email_norm: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool>;
    /// Notes that a token was presented (at most once a minute per token on PostgreSQL).
    fn touch_token<'a>(&'a mut self, token: &'a TokenRow, now: i64) -> TxFuture<'a, ()>;
    fn insert_activation<'a>(&'a mut self, r: &'a ActivationRecord) -> TxFuture<'a, ()>;
    /// The user with this email, inserted if missing (`ON CONFLICT DO NOTHING` over both
    /// unique rules): `(user, created)`; `None` if the insert lost to a concurrent one under
    /// another rule, which the caller should look up again (by external id).
    fn user_by_email_or_insert<'a>(
        &'a mut self,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, Option<(UserRow, bool)>>;
    /// Writes a new binding's device (a new row or a reassignment) and consumes its mapping
    /// (`(id, email_norm read)`); `false` if either write found its row changed since it was
    /// read (nothing is to be kept then).
    fn bind_device<'a>(
        &'a mut self,
        write: DeviceWrite<'a>,
        mapping: Option<(&'a str, &'a str)>,
        now: i64,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let device_id = match &write {
                DeviceWrite::Insert(d) => {
                    self.insert_device(d, now).await?;
                    d.id
                }
                DeviceWrite::Reassign(r) => {
                    if !self.reassign_device(r, now).await? {
                        return Ok(false);
                    }
                    r.device.id.as_str()
                }
            };
            match mapping {
                Some((m, email)) => self.consume_mapping(m, email, device_id, now).await,
                None => Ok(true),
            }
        })
    }
    /// Records the activation and, with `take_use`, counts a token use last (unless the token
    /// is revoked or, with `max_uses`, used up).
    fn finish_activation<'a>(
        &'a mut self,
        record: &'a ActivationRecord,
        take_use: Option<&'a TokenRow>,
        now: i64,
    ) -> TxFuture<'a, UseOutcome>;
    /// Why a mapping's `oldDeviceName` is unusable, if it is: it must name an active device of
    /// the mapped user when that user already exists.
    fn old_device_problem<'a>(
        &'a mut self,
        org_id: &'a str,
        row: &'a MappingRow,
    ) -> TxFuture<'a, Option<String>>;
    /// Inserts or updates (by identifier) the pending mappings.
    fn upsert_mappings<'a>(
        &'a mut self,
        org_id: &'a str,
        rows: &'a [MappingRow],
        now: i64,
    ) -> TxFuture<'a, ()>;
}

/// What taking a token use found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseOutcome {
    Taken,
    /// `max_uses` reached.
    Exhausted,
    /// Revoked since the transaction read the token row.
    Revoked,
}

/// How a new binding writes its device.
pub enum DeviceWrite<'a> {
    Insert(&'a NewDevice<'a>),
    Reassign(&'a Reassignment<'a>),
}

/// Work that decides and writes in one transaction. It may run more than once (PostgreSQL
/// retries a transaction that lost a race), so it must only act through `tx`.
pub trait TxJob: Send + Sync + 'static {
    type Output: Send + 'static;
    type Error: From<StoreError> + Send + 'static;
    fn run<'t>(
        &'t self,
        tx: &'t mut dyn WriteTx,
    ) -> BoxFuture<'t, Result<Self::Output, Self::Error>>;
    /// Whether a failed attempt lost a race (and a fresh attempt may succeed).
    fn is_contention(e: &Self::Error) -> bool;
}

/// A device-map import's transaction, driven from a blocking thread. Dropping it without
/// `commit` rolls everything back.
pub trait ImportTx: Send {
    /// Starts the write transaction (not called for dry runs: they only read).
    fn begin_write(&mut self) -> Result<()>;
    /// Gives up the write transaction (all-or-nothing upload with a bad row); reads go on.
    fn rollback(&mut self) -> Result<()>;
    fn old_device_problem(&mut self, org_id: &str, row: &MappingRow) -> Result<Option<String>>;
    /// Inserts or updates (by identifier) the pending mappings.
    fn upsert(&mut self, org_id: &str, rows: &[MappingRow], now: i64) -> Result<()>;
    /// How many of the mappings upserted so far were new (not updates).
    fn created(&mut self, org_id: &str) -> Result<u64>;
    fn commit(self: Box<Self>) -> Result<()>;
}

// ---------------------------------------------------------------------------------------------
// The handle.

/// One connection pool's use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `read` / `write` (SQLite), `main` (PostgreSQL).
    pub name: &'static str,
    /// Open connections.
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

fn pool_stats_of<DB: sqlx::Database>(name: &'static str, p: &sqlx::Pool<DB>) -> PoolStats {
    PoolStats {
        name,
        size: p.size(),
        idle: p.num_idle() as u32,
        max: p.options().get_max_connections(),
    }
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish()
    }
}

/// Runs the same expression on whichever backend this store is.
macro_rules! on {
    ($self:ident, $s:ident => $e:expr) => {
        match &*$self.inner {
            Backend::Sqlite($s) => $e,
            Backend::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens (creating an SQLite file when missing) the database; applies pending migrations
    /// when `opts.migrate`; refuses a database migrated by a newer imd.
    pub async fn open(opts: &StoreOptions) -> Result<Store> {
        let backend = match BackendKind::of_url(&opts.url)? {
            BackendKind::Sqlite => Backend::Sqlite(sqlite::SqliteStore::open(opts).await?),
            BackendKind::Postgres => Backend::Postgres(postgres::PgStore::open(opts).await?),
        };
        Ok(Store {
            inner: Arc::new(backend),
        })
    }

    /// Applies pending migrations without serving (`imd migrate`): the versions applied now.
    pub async fn migrate(opts: &StoreOptions) -> Result<Vec<i64>> {
        match BackendKind::of_url(&opts.url)? {
            BackendKind::Sqlite => sqlite::SqliteStore::migrate_only(opts).await,
            BackendKind::Postgres => postgres::PgStore::migrate_only(opts).await,
        }
    }

    pub fn kind(&self) -> BackendKind {
        match &*self.inner {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Runs `job` in one write transaction: `Ok` means its writes are committed, `Err` that none
    /// are. On PostgreSQL a job that lost a race is retried a bounded number of times; if it
    /// still loses, the error is the job's contention error (a 503 upstream, never a 500).
    pub async fn write<J: TxJob>(&self, job: J) -> Result<J::Output, J::Error> {
        on!(self, s => s.write(job).await)
    }

    /// A transaction for a bulk device-map import, to drive from a blocking thread.
    pub fn import_tx(&self) -> Result<Box<dyn ImportTx>> {
        on!(self, s => s.import_tx())
    }

    /// The database server's clock (unix seconds): `imd doctor` compares it with this host's.
    pub async fn database_time(&self) -> Result<i64> {
        on!(self, s => s.database_time().await)
    }

    pub async fn ping(&self) -> Result<()> {
        on!(self, s => s.ping().await)
    }

    /// Proves the write path works by writing this replica's heartbeat row through it.
    pub async fn probe_write(&self, version: &str, started_at: i64, now: i64) -> Result<()> {
        on!(self, s => s.probe_write(version, started_at, now).await)
    }

    /// A consistent online copy of the embedded database (SQLite's online backup).
    pub async fn backup(&self, out: &std::path::Path) -> Result<()> {
        match &*self.inner {
            Backend::Sqlite(s) => s.backup(out).await,
            Backend::Postgres(_) => Err(StoreError::Internal(
                "imd backup copies the embedded SQLite database; for PostgreSQL use pg_dump (docs/deployment.md)".into(),
            )),
        }
    }

    /// Table name → column names, as the database reports them (the schema test compares the
    /// two backends).
    pub async fn schema(&self) -> Result<Vec<(String, Vec<String>)>> {
        on!(self, s => s.schema().await)
    }

    pub async fn close(&self) {
        on!(self, s => s.close().await)
    }

    // Console sessions and overview figures.
    pub async fn create_console_session(
        &self,
        id_hash: &str,
        org_id: &str,
        admin_key_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        on!(self, s => s.create_console_session(id_hash, org_id, admin_key_id, now, expires_at).await)
    }
    pub async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSessionRow>> {
        on!(self, s => s.console_session(id_hash).await)
    }
    pub async fn touch_console_session(&self, id_hash: &str, now: i64) -> Result<()> {
        on!(self, s => s.touch_console_session(id_hash, now).await)
    }
    pub async fn delete_console_session(&self, id_hash: &str) -> Result<()> {
        on!(self, s => s.delete_console_session(id_hash).await)
    }
    pub async fn token_rollout(&self, org_id: &str) -> Result<Vec<TokenRollout>> {
        on!(self, s => s.token_rollout(org_id).await)
    }
    /// `(source, count)` of active users without an active device.
    pub async fn users_without_devices(&self, org_id: &str) -> Result<Vec<(String, i64)>> {
        on!(self, s => s.users_without_devices(org_id).await)
    }
    pub async fn activity(
        &self,
        org_id: &str,
        since: i64,
        until: i64,
        bucket_secs: i64,
    ) -> Result<Vec<ActivityBucket>> {
        on!(self, s => s.activity(org_id, since, until, bucket_secs).await)
    }
    pub async fn top_failures(
        &self,
        org_id: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<FailureCount>> {
        on!(self, s => s.top_failures(org_id, since, limit).await)
    }
    pub async fn failing_devices(
        &self,
        org_id: &str,
        outcome: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<FailingDevice>> {
        on!(self, s => s.failing_devices(org_id, outcome, since, limit).await)
    }

    /// The connection pools' use, as plain numbers (for `/metrics`).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        on!(self, s => s.pool_stats())
    }

    /// Write jobs waiting for SQLite's group-commit writer thread; PostgreSQL has no such
    /// queue (each write takes a pool connection: see `pool_stats`), so 0.
    pub fn writer_queue_depth(&self) -> usize {
        match &*self.inner {
            Backend::Sqlite(s) => s.writer_queue_depth(),
            Backend::Postgres(_) => 0,
        }
    }

    // Organizations and admin keys.
    pub async fn create_org(&self, name: &str, admin_key_hash: &str, now: i64) -> Result<OrgRow> {
        on!(self, s => s.create_org(name, admin_key_hash, now).await)
    }
    pub async fn org(&self, id: &str) -> Result<OrgRow> {
        on!(self, s => s.org(id).await)
    }
    pub async fn update_org(&self, id: &str, p: &OrgSettingsPatch) -> Result<OrgRow> {
        on!(self, s => s.update_org(id, p).await)
    }
    /// An organization by id or by slug (case-insensitive).
    pub async fn org_by_ref(&self, r: &str) -> Result<Option<OrgRow>> {
        on!(self, s => s.org_by_ref(r).await)
    }
    /// `(key id, organization id)` of the live admin key with this hash.
    pub async fn live_admin_key(&self, key_hash: &str) -> Result<Option<(String, String)>> {
        on!(self, s => s.live_admin_key(key_hash).await)
    }
    pub async fn list_admin_keys(&self, org_id: &str) -> Result<Vec<AdminKeyRow>> {
        on!(self, s => s.list_admin_keys(org_id).await)
    }
    pub async fn revoke_admin_key(&self, org_id: &str, id: &str, now: i64) -> Result<bool> {
        on!(self, s => s.revoke_admin_key(org_id, id, now).await)
    }
    pub async fn add_admin_key(
        &self,
        org_id: &str,
        name: &str,
        key_hash: &str,
        now: i64,
    ) -> Result<AdminKeyRow> {
        on!(self, s => s.add_admin_key(org_id, name, key_hash, now).await)
    }

    // Tokens and signing keys.
    pub async fn insert_token(&self, t: &NewToken<'_>) -> Result<TokenRow> {
        on!(self, s => s.insert_token(t).await)
    }
    pub async fn token(&self, org_id: &str, id: &str) -> Result<TokenRow> {
        on!(self, s => s.token(org_id, id).await)
    }
    /// The organization and token rows an activation needs, read without a transaction (the
    /// cheap check before a resolver's network phase).
    pub async fn org_and_token(
        &self,
        org_id: &str,
        token_id: &str,
    ) -> Result<(Option<OrgRow>, Option<TokenRow>)> {
        on!(self, s => s.org_and_token(org_id, token_id).await)
    }
    pub async fn list_tokens(&self, org_id: &str, page: &Page) -> Result<Vec<TokenRow>> {
        on!(self, s => s.list_tokens(org_id, page).await)
    }
    pub async fn revoke_token(&self, org_id: &str, id: &str, now: i64) -> Result<TokenRow> {
        on!(self, s => s.revoke_token(org_id, id, now).await)
    }
    pub async fn rotate_token(
        &self,
        org_id: &str,
        id: &str,
        successor: &NewToken<'_>,
        grace_until: i64,
    ) -> Result<Option<Rotation>> {
        on!(self, s => s.rotate_token(org_id, id, successor, grace_until).await)
    }
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        on!(self, s => s.signing_keys().await)
    }
    pub async fn signing_key_exists(&self, kid: &str) -> Result<bool> {
        on!(self, s => s.signing_key_exists(kid).await)
    }
    pub async fn rotate_signing_key(&self, row: &SigningKeyRow, now: i64) -> Result<()> {
        on!(self, s => s.rotate_signing_key(row, now).await)
    }
    pub async fn insert_first_signing_key(&self, row: &SigningKeyRow) -> Result<()> {
        on!(self, s => s.insert_first_signing_key(row).await)
    }

    // Users and devices.
    pub async fn user(&self, org_id: &str, id: &str) -> Result<UserRow> {
        on!(self, s => s.user(org_id, id).await)
    }
    pub async fn user_by_login(
        &self,
        org_id: &str,
        source: &str,
        login_norm: &str,
    ) -> Result<Option<UserRow>> {
        on!(self, s => s.user_by_login(org_id, source, login_norm).await)
    }

    pub async fn user_by_external_id(
        &self,
        org_id: &str,
        source: &str,
        external_id: &str,
    ) -> Result<Option<UserRow>> {
        on!(self, s => s.user_by_external_id(org_id, source, external_id).await)
    }

    pub async fn user_by_upn(
        &self,
        org_id: &str,
        source: &str,
        upn: &str,
    ) -> Result<Option<UserRow>> {
        on!(self, s => s.user_by_upn(org_id, source, upn).await)
    }

    pub async fn user_by_email(&self, org_id: &str, email_norm: &str) -> Result<Option<UserRow>> {
        on!(self, s => s.user_by_email(org_id, email_norm).await)
    }
    pub async fn list_users(
        &self,
        org_id: &str,
        f: &UserFilter<'_>,
        page: &Page,
    ) -> Result<Vec<UserRow>> {
        on!(self, s => s.list_users(org_id, f, page).await)
    }
    /// Sets a user's lifecycle status (directory sync will; tests do now).
    pub async fn set_user_status(
        &self,
        org_id: &str,
        id: &str,
        status: UserStatus,
        now: i64,
    ) -> Result<UserRow> {
        on!(self, s => s.set_user_status(org_id, id, status.as_str(), now).await)
    }
    pub async fn device(&self, org_id: &str, id: &str) -> Result<DeviceRow> {
        on!(self, s => s.device(org_id, id).await)
    }
    pub async fn device_for_credential(&self, credential: &str) -> Result<Option<DeviceRow>> {
        on!(self, s => s.device_for_credential(credential).await)
    }
    pub async fn list_devices(
        &self,
        org_id: &str,
        filter: &DeviceFilter<'_>,
        page: &Page,
    ) -> Result<Vec<DeviceRow>> {
        on!(self, s => s.list_devices(org_id, filter, page).await)
    }
    pub async fn revoke_device(&self, org_id: &str, id: &str, now: i64) -> Result<DeviceRow> {
        on!(self, s => s.revoke_device(org_id, id, now).await)
    }

    // Device mappings.
    pub async fn list_mappings(
        &self,
        org_id: &str,
        f: &MappingFilter,
        page: &Page,
    ) -> Result<Vec<StoredMapping>> {
        on!(self, s => s.list_mappings(org_id, f, page).await)
    }
    pub async fn mapping(&self, org_id: &str, id: &str) -> Result<StoredMapping> {
        on!(self, s => s.mapping(org_id, id).await)
    }
    pub async fn delete_mapping(&self, org_id: &str, id: &str) -> Result<()> {
        on!(self, s => s.delete_mapping(org_id, id).await)
    }
    pub async fn count_pending_mappings(&self, org_id: &str) -> Result<i64> {
        on!(self, s => s.count_pending_mappings(org_id).await)
    }
    /// The JSON API's write: checks every row's `oldDeviceName` and, only if all pass and
    /// `apply` (the caller found no other errors), upserts them, in one transaction.
    pub async fn upsert_mappings(
        &self,
        org_id: String,
        rows: Vec<(usize, MappingRow)>,
        apply: bool,
        now: i64,
    ) -> Result<MappingsOutcome> {
        self.write(mappings::UpsertJob {
            org_id,
            rows,
            apply,
            now,
        })
        .await
    }

    // Directory sync (see `sync`).
    pub async fn sync_settings(&self, org_id: &str) -> Result<SyncSettingsRow> {
        on!(self, s => s.sync_settings(org_id).await)
    }
    pub async fn put_sync_settings(
        &self,
        org_id: &str,
        v: &SyncSettingsRow,
        now: i64,
    ) -> Result<()> {
        on!(self, s => s.put_sync_settings(org_id, v, now).await)
    }
    pub async fn profiles(&self, org_id: &str) -> Result<Vec<ProfileRow>> {
        on!(self, s => s.profiles(org_id).await)
    }
    pub async fn profiles_in_use(&self, org_id: &str) -> Result<Vec<(String, i64)>> {
        on!(self, s => s.profiles_in_use(org_id).await)
    }
    pub async fn put_profile(&self, org_id: &str, p: &ProfileRow, now: i64) -> Result<()> {
        on!(self, s => s.put_profile(org_id, p, now).await)
    }
    pub async fn delete_profile(&self, org_id: &str, name: &str) -> Result<bool> {
        on!(self, s => s.delete_profile(org_id, name).await)
    }
    /// Inserts the run and takes the organization's lease; `Err(holder)` when another run holds it.
    pub async fn start_sync_run(
        &self,
        run: &SyncRunRow,
        lease_expires_at: i64,
    ) -> Result<std::result::Result<(), Option<String>>> {
        on!(self, s => s.start_sync_run(run, lease_expires_at).await)
    }
    pub async fn renew_sync_lease(
        &self,
        org_id: &str,
        run_id: &str,
        expires_at: i64,
    ) -> Result<bool> {
        on!(self, s => s.renew_sync_lease(org_id, run_id, expires_at).await)
    }
    #[allow(clippy::too_many_arguments)]
    pub async fn record_sync_run(
        &self,
        org_id: &str,
        run_id: &str,
        status: &str,
        c: &SyncCounts,
        held: (i64, i64),
        sources: &str,
        error: Option<&str>,
        ended_at: Option<i64>,
    ) -> Result<()> {
        on!(self, s => s.record_sync_run(org_id, run_id, status, c, held, sources, error, ended_at).await)
    }
    pub async fn set_sync_run_status(
        &self,
        org_id: &str,
        run_id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool> {
        on!(self, s => s.set_sync_run_status(org_id, run_id, from, to).await)
    }
    pub async fn supersede_pending_runs(&self, org_id: &str, newer: &str) -> Result<u64> {
        on!(self, s => s.supersede_pending_runs(org_id, newer).await)
    }
    pub async fn sync_run(&self, org_id: &str, id: &str) -> Result<SyncRunRow> {
        on!(self, s => s.sync_run(org_id, id).await)
    }
    pub async fn list_sync_runs(&self, org_id: &str, page: &Page) -> Result<Vec<SyncRunRow>> {
        on!(self, s => s.list_sync_runs(org_id, page).await)
    }
    pub async fn last_sync_run(&self, org_id: &str) -> Result<Option<(i64, String)>> {
        on!(self, s => s.last_sync_run(org_id).await)
    }
    pub async fn begin_sync_approval(
        &self,
        org_id: &str,
        run_id: &str,
        holder: &str,
        now: i64,
        lease_expires_at: i64,
    ) -> Result<std::result::Result<(), Option<String>>> {
        on!(self, s => s.begin_sync_approval(org_id, run_id, holder, now, lease_expires_at).await)
    }
    pub async fn end_sync_approval(
        &self,
        org_id: &str,
        run_id: &str,
        status: &str,
        c: &SyncCounts,
    ) -> Result<()> {
        on!(self, s => s.end_sync_approval(org_id, run_id, status, c).await)
    }
    pub async fn sync_run_users(
        &self,
        run_id: &str,
        action: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<SyncRunUserRow>> {
        on!(self, s => s.sync_run_users(run_id, action, after, limit).await)
    }
    pub async fn add_sync_run_users(&self, run_id: &str, rows: &[SyncRunUserRow]) -> Result<()> {
        on!(self, s => s.add_sync_run_users(run_id, rows).await)
    }
    pub async fn mark_sync_run_users_applied(&self, run_id: &str, seqs: &[i64]) -> Result<()> {
        on!(self, s => s.mark_sync_run_users_applied(run_id, seqs).await)
    }
    pub async fn directory_users(&self, org_id: &str, source: &str) -> Result<Vec<SyncStoredUser>> {
        on!(self, s => s.directory_users(org_id, source).await)
    }
    pub async fn has_directory_users(&self, org_id: &str, source: &str) -> Result<bool> {
        on!(self, s => s.has_directory_users(org_id, source).await)
    }
    pub async fn orgs_with_directory_mappings(&self) -> Result<Vec<String>> {
        on!(self, s => s.orgs_with_directory_mappings().await)
    }
    pub async fn azure_sync_state(
        &self,
        org_id: &str,
    ) -> Result<Option<(Option<String>, Option<i64>, Option<String>)>> {
        on!(self, s => s.azure_sync_state(org_id).await)
    }
    pub async fn put_azure_sync_state(
        &self,
        org_id: &str,
        delta_link: Option<&str>,
        full_at: Option<i64>,
        mappings_hash: &str,
        now: i64,
    ) -> Result<()> {
        on!(self, s => s.put_azure_sync_state(org_id, delta_link, full_at, mappings_hash, now).await)
    }
    /// One batch of a sync run's user changes and report lines, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_sync_batch(
        &self,
        org_id: &str,
        run_id: &str,
        actor: &str,
        writes: &[SyncWrite],
        report: &mut [Option<SyncRunUserRow>],
        extra_report: &[SyncRunUserRow],
        now: i64,
    ) -> Result<Option<Vec<SyncWritten>>> {
        on!(self, s => s.apply_sync_batch(org_id, run_id, actor, writes, report, extra_report, now).await)
    }

    // Connectors and their channels (see `connectors`).
    /// A connector with a single-use registration key (given as its SHA-256). A live connector
    /// of that name already in the organization is `StoreError::Conflict`.
    pub async fn create_connector(
        &self,
        org_id: &str,
        name: &str,
        registration_key_hash: &str,
        key_expires_at: i64,
        now: i64,
    ) -> Result<ConnectorRow> {
        on!(self, s => s.create_connector(org_id, name, registration_key_hash, key_expires_at, now).await)
    }
    /// The organization's live connectors, by name.
    pub async fn connectors(&self, org_id: &str) -> Result<Vec<ConnectorRow>> {
        on!(self, s => s.connectors(org_id).await)
    }
    pub async fn connector(&self, org_id: &str, id: &str) -> Result<Option<ConnectorRow>> {
        on!(self, s => s.connector(org_id, id).await)
    }
    /// A fresh registration key for a live connector (the unused old one stops working);
    /// `None` for an unknown or retired connector.
    pub async fn reissue_registration_key(
        &self,
        org_id: &str,
        id: &str,
        key_hash: &str,
        expires_at: i64,
    ) -> Result<Option<ConnectorRow>> {
        on!(self, s => s.reissue_registration_key(org_id, id, key_hash, expires_at).await)
    }
    /// Uses a registration key (atomically, once): sets the new credential, retiring the old
    /// one. `None`: the key is used, expired (`expires_at <= now`) or unknown, or its connector
    /// is retired.
    pub async fn register_connector(
        &self,
        key_hash: &str,
        credential_hash: &str,
        version: &str,
        hostname: Option<&str>,
        now: i64,
    ) -> Result<Option<ConnectorRow>> {
        on!(self, s => s.register_connector(key_hash, credential_hash, version, hostname, now).await)
    }
    /// Retires a connector (credential and key cleared, session row deleted); `false` if there
    /// is no such live connector.
    pub async fn retire_connector(&self, org_id: &str, id: &str, now: i64) -> Result<bool> {
        on!(self, s => s.retire_connector(org_id, id, now).await)
    }
    /// The live connector whose current credential hashes to `credential_hash`.
    pub async fn connector_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<ConnectorRow>> {
        on!(self, s => s.connector_by_credential(credential_hash).await)
    }
    pub async fn upsert_connector_session(&self, row: &ConnectorSessionRow) -> Result<()> {
        on!(self, s => s.upsert_connector_session(row).await)
    }
    /// A heartbeat; `false` tells the hub to close the channel (session replaced or gone, or
    /// the connector re-registered or retired since it authenticated).
    pub async fn touch_connector_session(
        &self,
        connector_id: &str,
        session_id: &str,
        now: i64,
        in_flight: i64,
    ) -> Result<bool> {
        on!(self, s => s.touch_connector_session(connector_id, session_id, now, in_flight).await)
    }
    /// Removes the session row if it is still `session_id`.
    pub async fn remove_connector_session(
        &self,
        connector_id: &str,
        session_id: &str,
    ) -> Result<()> {
        on!(self, s => s.remove_connector_session(connector_id, session_id).await)
    }
    /// Sessions of the organization seen at or after `seen_since` whose credential is still
    /// their connector's.
    pub async fn connector_sessions(
        &self,
        org_id: &str,
        seen_since: i64,
    ) -> Result<Vec<ConnectorSessionRow>> {
        on!(self, s => s.connector_sessions(org_id, seen_since).await)
    }

    // Failed-authentication counters shared by every replica.
    /// Counts a failure under `key`: the failures in the current window (which starts at its
    /// first failure and lasts `window_secs`), this one included.
    pub async fn record_auth_failure(&self, key: &str, now: i64, window_secs: i64) -> Result<i64> {
        on!(self, s => s.record_auth_failure(key, now, window_secs).await)
    }
    pub async fn auth_failures(&self, key: &str, now: i64, window_secs: i64) -> Result<i64> {
        on!(self, s => s.auth_failures(key, now, window_secs).await)
    }
    pub async fn clear_auth_failures(&self, key: &str) -> Result<()> {
        on!(self, s => s.clear_auth_failures(key).await)
    }
    /// Drops counters whose window started before `before`.
    pub async fn prune_auth_failures(&self, before: i64) -> Result<u64> {
        on!(self, s => s.prune_auth_failures(before).await)
    }

    // AD/LDAP mappings.
    /// The organization's mappings by priority, lowest first (one indexed query).
    pub async fn ldap_mappings(&self, org_id: &str) -> Result<Vec<LdapMappingRow>> {
        on!(self, s => s.ldap_mappings(org_id).await)
    }
    pub async fn ldap_mapping(&self, org_id: &str, id: &str) -> Result<Option<LdapMappingRow>> {
        on!(self, s => s.ldap_mapping(org_id, id).await)
    }
    /// A new mapping, unless its priority or name is taken in the organization.
    pub async fn create_ldap_mapping(
        &self,
        org_id: &str,
        v: &LdapMappingValues,
        now: i64,
    ) -> Result<LdapMappingWrite> {
        on!(self, s => s.write_ldap_mapping(org_id, None, v, now).await)?
            .ok_or_else(|| StoreError::Internal("insert returned no row".into()))
    }
    /// Replaces mapping `id`'s values (a patch merged by the caller); `None`: no such mapping.
    pub async fn update_ldap_mapping(
        &self,
        org_id: &str,
        id: &str,
        v: &LdapMappingValues,
        now: i64,
    ) -> Result<Option<LdapMappingWrite>> {
        on!(self, s => s.write_ldap_mapping(org_id, Some(id), v, now).await)
    }
    /// `false`: no such mapping.
    pub async fn delete_ldap_mapping(&self, org_id: &str, id: &str) -> Result<bool> {
        on!(self, s => s.delete_ldap_mapping(org_id, id).await)
    }

    // Entra ID (see `azure`): the app registration and the Azure AD mappings.
    /// The organization's app registration (its secret sealed), if configured.
    pub async fn azure_config(&self, org_id: &str) -> Result<Option<AzureConfigRow>> {
        on!(self, s => s.azure_config(org_id).await)
    }
    /// Inserts or replaces the app registration (`client_secret_enc` already sealed); the
    /// stored row keeps the first `created_at`.
    pub async fn put_azure_config(&self, row: &AzureConfigRow) -> Result<AzureConfigRow> {
        on!(self, s => s.put_azure_config(row).await)
    }
    /// The organization's Azure AD mappings by priority, lowest first (one indexed query).
    pub async fn azure_mappings(&self, org_id: &str) -> Result<Vec<AzureMappingRow>> {
        on!(self, s => s.azure_mappings(org_id).await)
    }
    pub async fn azure_mapping(&self, org_id: &str, id: &str) -> Result<Option<AzureMappingRow>> {
        on!(self, s => s.azure_mapping(org_id, id).await)
    }
    /// A new Azure AD mapping, unless its priority or name is taken in the organization.
    pub async fn create_azure_mapping(
        &self,
        org_id: &str,
        v: &AzureMappingValues,
        now: i64,
    ) -> Result<AzureMappingWrite> {
        on!(self, s => s.write_azure_mapping(org_id, None, v, now).await)?
            .ok_or_else(|| StoreError::Internal("insert returned no row".into()))
    }
    /// Replaces mapping `id`'s values (a patch merged by the caller); `None`: no such mapping.
    pub async fn update_azure_mapping(
        &self,
        org_id: &str,
        id: &str,
        v: &AzureMappingValues,
        now: i64,
    ) -> Result<Option<AzureMappingWrite>> {
        on!(self, s => s.write_azure_mapping(org_id, Some(id), v, now).await)
    }
    /// `false`: no such mapping.
    pub async fn delete_azure_mapping(&self, org_id: &str, id: &str) -> Result<bool> {
        on!(self, s => s.delete_azure_mapping(org_id, id).await)
    }

    // The audit trail.
    /// Records a batch of failed attempts (queued, see `activation::audit`).
    pub async fn insert_activation_records(&self, records: Vec<ActivationRecord>) -> Result<()> {
        self.write(activations::RecordsJob(records)).await
    }
    pub async fn list_activations(
        &self,
        org_id: &str,
        filter: &ActivationFilter<'_>,
        page: &Page,
    ) -> Result<Vec<ActivationRow>> {
        on!(self, s => s.list_activations(org_id, filter, page).await)
    }
}

/// Tooling (the benchmark): a new, empty PostgreSQL database on the server `admin_url` points
/// at; returns its URL. `name`: lowercase letters, digits and `_`.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String> {
    postgres::create_database(admin_url, name).await
}

/// Drops a database `create_postgres_database` made.
pub async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<()> {
    postgres::drop_database(admin_url, name).await
}

/// A new time-ordered id (UUIDv7), so ordering by id is ordering by creation.
/// What a directory-mapping write (LDAP or Azure AD) did: written, or refused because another
/// mapping of the organization holds the priority or the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingWrite<T> {
    Written(Box<T>),
    /// Another mapping of the organization has this priority.
    PriorityTaken {
        id: String,
        name: String,
    },
    /// Another mapping of the organization has this name.
    NameTaken {
        id: String,
    },
}

/// Inside a mapping write's transaction (after `lock_org`): the mapping of `$table` other than
/// `$id` that already holds `$v.priority` or `$v.name`, as the `MappingWrite` refusal (the
/// priority clash first). The unique indexes back the check.
macro_rules! mapping_clash {
    ($tx:ident, $table:literal, $org_id:expr, $v:expr, $id:expr) => {{
        let clash: Option<(String, String, i64)> = sqlx::query_as(concat!(
            "SELECT id, name, priority FROM ",
            $table,
            " WHERE org_id = $1 AND (priority = $2 OR name = $3) AND id <> $4
             ORDER BY priority = $2 DESC LIMIT 1"
        ))
        .bind($org_id)
        .bind($v.priority)
        .bind(&$v.name)
        .bind($id.unwrap_or(""))
        .fetch_optional(&mut *$tx)
        .await?;
        clash.map(|(other, name, priority)| {
            if priority == $v.priority {
                crate::store::MappingWrite::PriorityTaken { id: other, name }
            } else {
                crate::store::MappingWrite::NameTaken { id: other }
            }
        })
    }};
}
pub(crate) use mapping_clash;

/// How a directory login is stored for look-ups (`users.login_norm`): as `login_key` does.
pub fn login_norm(login: &str) -> String {
    crate::domain::request::login_key(login)
}

/// A user's directory attributes as the `users` columns hold them (both backends bind these).
pub(crate) struct AttrCols<'a> {
    pub display_name: Option<&'a str>,
    pub login: Option<&'a str>,
    pub login_norm: Option<String>,
    pub upn: Option<&'a str>,
    pub dn: Option<&'a str>,
    pub department: Option<&'a str>,
    pub country: Option<&'a str>,
    pub groups: Option<String>,
}

impl<'a> AttrCols<'a> {
    pub fn of(a: Option<&'a crate::domain::directory::DirectoryAttrs>) -> AttrCols<'a> {
        AttrCols {
            display_name: a.and_then(|a| a.display_name.as_deref()),
            login: a.and_then(|a| a.login.as_deref()),
            login_norm: a.and_then(|a| a.login.as_deref()).map(login_norm),
            upn: a.and_then(|a| a.upn.as_deref()),
            dn: a.and_then(|a| a.dn.as_deref()),
            department: a.and_then(|a| a.department.as_deref()),
            country: a.and_then(|a| a.country.as_deref()),
            groups: a.map(|a| groups_json(&a.groups)),
        }
    }
}

/// Group DNs as stored in `users.groups`.
pub fn groups_json(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".into())
}

/// The audit reason of a real-time re-enable.
pub const REENABLED_AT_ACTIVATION: &str =
    "re-enabled at activation: the directory reports the user enabled and under a mapping";

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Bounds for list endpoints.
#[derive(Debug, Clone)]
pub struct Page {
    pub after: Option<String>,
    pub limit: u32,
}

/// Polls a future that never waits (SQLite steps run synchronously on the writer's connection)
/// to completion on the current thread.
pub(crate) fn run_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        // Unreachable with SQLite's synchronous steps; yield rather than spin hot if it happens.
        std::thread::yield_now();
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    return StoreError::Conflict;
                }
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                match code.as_str() {
                    // PostgreSQL: serialization failure, deadlock → retry the transaction.
                    "40001" | "40P01" => StoreError::Retry(e.to_string()),
                    // lock_not_available (lock_timeout), query_canceled (statement_timeout),
                    // too many connections, shutting down, read-only (a standby after failover).
                    // 0A000 here: "cached plan must not change result type" after a migration
                    // changed a table under a running replica (retryable; see deployment.md).
                    "55P03" | "57014" | "53300" | "57P01" | "57P02" | "57P03" | "25006"
                    | "0A000" => StoreError::Unavailable(e.to_string()),
                    c if c.starts_with("08") => StoreError::Unavailable(e.to_string()),
                    // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
                    c => match c.parse::<i32>() {
                        Ok(n) if matches!(n & 0xff, 5 | 6) => {
                            StoreError::Unavailable(e.to_string())
                        }
                        _ => StoreError::Internal(e.to_string()),
                    },
                }
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e.to_string())
    }
}

/// The migrations this binary would apply to a database with `applied`. Refuses a database
/// that a newer imd migrated (its highest applied version is unknown here), and one that needs
/// migrations when `apply` is off.
fn pending_migrations(
    applied: &[i64],
    migrator: &sqlx::migrate::Migrator,
    apply: bool,
) -> Result<Vec<i64>> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(found) = applied.iter().copied().max()
        && found > known
    {
        return Err(StoreError::TooNew { found, known });
    }
    let pending: Vec<i64> = migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if !pending.is_empty() && !apply {
        return Err(StoreError::Migrate(format!(
            "the database needs migrations {pending:?}: run `imd migrate`"
        )));
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://imd:s3cret@db.internal:5432/imd"),
            "postgres://imd:***@db.internal:5432/imd"
        );
        assert_eq!(
            redact_url("postgres://db/imd?user=imd&password=s3cret&sslmode=require"),
            "postgres://db/imd?user=imd&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/imd/imd.db"),
            "sqlite:///var/lib/imd/imd.db"
        );
        let msg = scrub(
            "error connecting to postgres://imd:s3cret@db/imd: password s3cret rejected",
            "postgres://imd:s3cret@db/imd",
        );
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn lock_keys_hash_stably_and_differ() {
        let a = LockKey::new("org", "serial", "abc");
        assert_eq!(a.hash64(), LockKey::new("org", "serial", "abc").hash64());
        assert_ne!(a.hash64(), LockKey::new("org", "uuid", "abc").hash64());
    }
}
