//! On-premises connectors and their live channels. A connector is created with a single-use
//! registration key and registers once per key, receiving a credential; both secrets are stored
//! as SHA-256 hex only and never leave this module (no row type carries a hash of them except
//! the session's copy of the credential hash it authenticated with, which the hub compares).
//! `connector_sessions` holds one row per connected connector: which replica holds the channel
//! and how to reach it.

use serde::Serialize;

/// A connector as listed (never its credential or registration-key hash).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct ConnectorRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub directory_kind: Option<String>,
    pub remote_addr: Option<String>,
    pub registered_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    /// When the unused registration key stops working; `None` once used (or never issued).
    pub registration_key_expires_at: Option<i64>,
}

/// A connector's live channel on one replica.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConnectorSessionRow {
    pub connector_id: String,
    pub org_id: String,
    /// Identifies this connection: a newer connection of the same connector replaces the row.
    pub session_id: String,
    pub replica_id: String,
    /// Where another replica reaches the replica holding the channel.
    pub forward_url: String,
    /// SHA-256 of the credential this session authenticated with.
    pub credential_hash: String,
    pub connected_at: i64,
    pub last_seen_at: i64,
    pub in_flight: i64,
    pub remote_addr: Option<String>,
    pub version: Option<String>,
    pub directory_kind: Option<String>,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! connector_sql {
    () => {
    /// A new connector with an unused registration key. A live connector of the same name in
    /// the organization is `StoreError::Conflict`.
    pub async fn create_connector(
        &self,
        org_id: &str,
        name: &str,
        registration_key_hash: &str,
        key_expires_at: i64,
        now: i64,
    ) -> crate::store::Result<ConnectorRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, ConnectorRow>(
            "INSERT INTO connectors (id, org_id, name, registration_key_hash,
                                     registration_key_expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(crate::store::new_id())
        .bind(org_id)
        .bind(name)
        .bind(registration_key_hash)
        .bind(key_expires_at)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The organization's live (non-retired) connectors, by name.
    pub async fn connectors(&self, org_id: &str) -> crate::store::Result<Vec<ConnectorRow>> {
        Ok(sqlx::query_as::<_, ConnectorRow>(
            "SELECT * FROM connectors WHERE org_id = $1 AND retired_at IS NULL ORDER BY name, id",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// One live connector of the organization.
    pub async fn connector(&self, org_id: &str, id: &str) -> crate::store::Result<Option<ConnectorRow>> {
        Ok(sqlx::query_as::<_, ConnectorRow>(
            "SELECT * FROM connectors WHERE id = $1 AND org_id = $2 AND retired_at IS NULL",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Replaces the connector's registration key (an unused old one stops working). `None`:
    /// no such live connector.
    pub async fn reissue_registration_key(
        &self,
        org_id: &str,
        id: &str,
        key_hash: &str,
        expires_at: i64,
    ) -> crate::store::Result<Option<ConnectorRow>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, ConnectorRow>(
            "UPDATE connectors SET registration_key_hash = $3, registration_key_expires_at = $4
             WHERE id = $1 AND org_id = $2 AND retired_at IS NULL RETURNING *",
        )
        .bind(id)
        .bind(org_id)
        .bind(key_hash)
        .bind(expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Uses a registration key: if it matches a live connector and has not expired, the
    /// connector's credential becomes `credential_hash` (the previous one stops working) and the
    /// key is cleared. One conditional `UPDATE`, so of two concurrent uses of one key exactly one
    /// matches (on PostgreSQL the second re-checks the row the first wrote). `None`: the key is
    /// used, expired or unknown.
    pub async fn register_connector(
        &self,
        key_hash: &str,
        credential_hash: &str,
        version: &str,
        hostname: Option<&str>,
        now: i64,
    ) -> crate::store::Result<Option<ConnectorRow>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, ConnectorRow>(
            "UPDATE connectors SET credential_hash = $2, registration_key_hash = NULL,
                    registration_key_expires_at = NULL, version = $3, hostname = $4,
                    registered_at = $5
             WHERE registration_key_hash = $1 AND registration_key_expires_at > $5
               AND retired_at IS NULL
             RETURNING *",
        )
        .bind(key_hash)
        .bind(credential_hash)
        .bind(version)
        .bind(hostname)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Retires a connector: its credential and key stop working, its session row goes, and it
    /// leaves every list. `false`: no such live connector.
    pub async fn retire_connector(&self, org_id: &str, id: &str, now: i64) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE connectors SET retired_at = $3, credential_hash = NULL,
                    registration_key_hash = NULL, registration_key_expires_at = NULL
             WHERE id = $1 AND org_id = $2 AND retired_at IS NULL",
        )
        .bind(id)
        .bind(org_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            sqlx::query("DELETE FROM connector_sessions WHERE connector_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// The live connector whose current credential has this SHA-256 (a unique index look-up).
    pub async fn connector_by_credential(
        &self,
        credential_hash: &str,
    ) -> crate::store::Result<Option<ConnectorRow>> {
        Ok(sqlx::query_as::<_, ConnectorRow>(
            "SELECT * FROM connectors WHERE credential_hash = $1 AND retired_at IS NULL",
        )
        .bind(credential_hash)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Records a new channel, replacing the connector's previous session row, and copies what
    /// the connector reported onto the connector row.
    pub async fn upsert_connector_session(
        &self,
        s: &ConnectorSessionRow,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO connector_sessions (connector_id, org_id, session_id, replica_id,
                    forward_url, credential_hash, connected_at, last_seen_at, in_flight,
                    remote_addr, version, directory_kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (connector_id) DO UPDATE SET org_id = excluded.org_id,
                    session_id = excluded.session_id, replica_id = excluded.replica_id,
                    forward_url = excluded.forward_url, credential_hash = excluded.credential_hash,
                    connected_at = excluded.connected_at, last_seen_at = excluded.last_seen_at,
                    in_flight = excluded.in_flight, remote_addr = excluded.remote_addr,
                    version = excluded.version, directory_kind = excluded.directory_kind",
        )
        .bind(&s.connector_id)
        .bind(&s.org_id)
        .bind(&s.session_id)
        .bind(&s.replica_id)
        .bind(&s.forward_url)
        .bind(&s.credential_hash)
        .bind(s.connected_at)
        .bind(s.last_seen_at)
        .bind(s.in_flight)
        .bind(&s.remote_addr)
        .bind(&s.version)
        .bind(&s.directory_kind)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE connectors SET version = COALESCE($2, version),
                    directory_kind = COALESCE($3, directory_kind),
                    remote_addr = COALESCE($4, remote_addr), last_seen_at = $5
             WHERE id = $1",
        )
        .bind(&s.connector_id)
        .bind(&s.version)
        .bind(&s.directory_kind)
        .bind(&s.remote_addr)
        .bind(s.last_seen_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A heartbeat of session `session_id`. `false` when that session is gone or was replaced,
    /// or its credential is no longer the connector's (re-registered or retired): the channel
    /// must be closed.
    pub async fn touch_connector_session(
        &self,
        connector_id: &str,
        session_id: &str,
        now: i64,
        in_flight: i64,
    ) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE connector_sessions SET last_seen_at = $3, in_flight = $4
             WHERE connector_id = $1 AND session_id = $2
               AND credential_hash = (SELECT c.credential_hash FROM connectors c
                                      WHERE c.id = $1 AND c.retired_at IS NULL)",
        )
        .bind(connector_id)
        .bind(session_id)
        .bind(now)
        .bind(in_flight)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Removes the session row if it is still `session_id` (a newer connection keeps its own),
    /// keeping its last heartbeat on the connector row.
    pub async fn remove_connector_session(
        &self,
        connector_id: &str,
        session_id: &str,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE connectors SET last_seen_at = (SELECT s.last_seen_at FROM connector_sessions s
                                                   WHERE s.connector_id = $1 AND s.session_id = $2)
             WHERE id = $1 AND EXISTS (SELECT 1 FROM connector_sessions s
                                       WHERE s.connector_id = $1 AND s.session_id = $2)",
        )
        .bind(connector_id)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM connector_sessions WHERE connector_id = $1 AND session_id = $2")
            .bind(connector_id)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The organization's live sessions: heartbeat at or after `seen_since`, and still
    /// authenticated with their connector's current credential.
    pub async fn connector_sessions(
        &self,
        org_id: &str,
        seen_since: i64,
    ) -> crate::store::Result<Vec<ConnectorSessionRow>> {
        Ok(sqlx::query_as::<_, ConnectorSessionRow>(
            "SELECT s.* FROM connector_sessions s
             JOIN connectors c ON c.id = s.connector_id AND c.retired_at IS NULL
                              AND c.credential_hash = s.credential_hash
             WHERE s.org_id = $1 AND s.last_seen_at >= $2
             ORDER BY s.connector_id",
        )
        .bind(org_id)
        .bind(seen_since)
        .fetch_all(&self.read)
        .await?)
    }

    /// Counts a failure under `key` (a window of `window_secs` starts at the first failure):
    /// the failures in the current window, this one included. One statement, exact across
    /// replicas.
    pub async fn record_auth_failure(
        &self,
        key: &str,
        now: i64,
        window_secs: i64,
    ) -> crate::store::Result<i64> {
        let mut tx = self.begin().await?;
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO auth_failures (key, window_start, failures) VALUES ($1, $2, 1)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN auth_failures.window_start > $2 - $3
                                 THEN auth_failures.failures + 1 ELSE 1 END,
                 window_start = CASE WHEN auth_failures.window_start > $2 - $3
                                     THEN auth_failures.window_start ELSE $2 END
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(window_secs)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// The failures counted under `key` in its current window (0 when it has passed).
    pub async fn auth_failures(&self, key: &str, now: i64, window_secs: i64) -> crate::store::Result<i64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT failures FROM auth_failures WHERE key = $1 AND window_start > $2 - $3",
        )
        .bind(key)
        .bind(now)
        .bind(window_secs)
        .fetch_optional(&self.read)
        .await?;
        Ok(n.unwrap_or(0))
    }

    pub async fn clear_auth_failures(&self, key: &str) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM auth_failures WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops counters whose window ended before `before` (housekeeping).
    pub async fn prune_auth_failures(&self, before: i64) -> crate::store::Result<u64> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM auth_failures WHERE window_start < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
    };
}
pub(super) use connector_sql;
