//! Console sign-in sessions and the figures the overview shows (rollout per token, activity over
//! time, the commonest failures). Sessions are stored by the SHA-256 of their cookie secret and
//! die with the admin key that opened them.

/// A live console session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsoleSessionRow {
    pub org_id: String,
    pub admin_key_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

/// One token's rollout: devices bound through it, and how it has been used.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRollout {
    pub token_id: String,
    pub name: String,
    pub version: String,
    pub uses: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub active_devices: i64,
}

/// Activation attempts in one time bucket with one outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActivityBucket {
    pub bucket: i64,
    pub outcome: String,
    pub n: i64,
}

/// A failure code and how often it happened.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailureCount {
    pub outcome: String,
    pub n: i64,
    pub devices: i64,
}

/// A machine behind a failure code (as it identified itself; failed attempts bind no device).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailingDevice {
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub attempts: i64,
    pub last_at: i64,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! console_sql {
    () => {
    pub async fn create_console_session(
        &self,
        id_hash: &str,
        org_id: &str,
        admin_key_id: &str,
        now: i64,
        expires_at: i64,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        // Sessions past their absolute expiry are dropped here, so the table stays small
        // without a sweeper.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, org_id, admin_key_id, created_at, last_seen_at, expires_at)
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(id_hash)
        .bind(org_id)
        .bind(admin_key_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session with this hash, if its admin key is still live.
    pub async fn console_session(&self, id_hash: &str) -> crate::store::Result<Option<ConsoleSessionRow>> {
        Ok(sqlx::query_as::<_, ConsoleSessionRow>(
            "SELECT s.org_id, s.admin_key_id, s.created_at, s.last_seen_at, s.expires_at
               FROM console_sessions s JOIN admin_keys k ON k.id = s.admin_key_id
              WHERE s.id_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(id_hash)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Moves the idle clock on; only forward, so replicas racing on one session agree.
    pub async fn touch_console_session(&self, id_hash: &str, now: i64) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE id_hash = $1 AND last_seen_at < $2")
            .bind(id_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_console_session(&self, id_hash: &str) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every token of the organization with its active devices, newest first (the
    /// password-activation pseudo-token included when it exists).
    pub async fn token_rollout(&self, org_id: &str) -> crate::store::Result<Vec<TokenRollout>> {
        Ok(sqlx::query_as::<_, TokenRollout>(
            "SELECT t.id AS token_id, t.name, t.version, t.uses, t.last_used_at, t.expires_at, t.revoked_at,
                    (SELECT COUNT(*) FROM devices d
                      WHERE d.org_id = t.org_id AND d.token_id = t.id AND d.status = 'active') AS active_devices
               FROM tokens t WHERE t.org_id = $1 ORDER BY t.created_at DESC, t.id DESC LIMIT 200",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Active users with no active device, per source: the machines still to come.
    pub async fn users_without_devices(&self, org_id: &str) -> crate::store::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT u.source, COUNT(*) FROM users u WHERE u.org_id = $1 AND u.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = u.id AND d.status = 'active')
             GROUP BY u.source",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Attempts in `[since, until)`, counted per `bucket_secs` bucket (its start time) and
    /// outcome.
    pub async fn activity(
        &self,
        org_id: &str,
        since: i64,
        until: i64,
        bucket_secs: i64,
    ) -> crate::store::Result<Vec<ActivityBucket>> {
        Ok(sqlx::query_as::<_, ActivityBucket>(
            "SELECT (created_at - ((created_at - $2) % $3)) AS bucket, outcome, COUNT(*) AS n
               FROM activations WHERE org_id = $1 AND created_at >= $2 AND created_at < $4
              GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(org_id)
        .bind(since)
        .bind(bucket_secs)
        .bind(until)
        .fetch_all(&self.read)
        .await?)
    }

    /// The commonest failure codes since `since`, with how many distinct machines had them.
    pub async fn top_failures(&self, org_id: &str, since: i64, limit: i64) -> crate::store::Result<Vec<FailureCount>> {
        Ok(sqlx::query_as::<_, FailureCount>(
            "SELECT outcome, COUNT(*) AS n,
                    COUNT(DISTINCT COALESCE(serial, '') || '|' || COALESCE(uuid, '') || '|' || COALESCE(hostname, '')) AS devices
               FROM activations
              WHERE org_id = $1 AND created_at >= $2 AND outcome NOT IN ('activated', 'reactivated')
              GROUP BY outcome ORDER BY n DESC, outcome LIMIT $3",
        )
        .bind(org_id)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// The machines most recently behind one failure code.
    pub async fn failing_devices(
        &self,
        org_id: &str,
        outcome: &str,
        since: i64,
        limit: i64,
    ) -> crate::store::Result<Vec<FailingDevice>> {
        Ok(sqlx::query_as::<_, FailingDevice>(
            "SELECT hostname, serial, uuid, COUNT(*) AS attempts, MAX(created_at) AS last_at
               FROM activations WHERE org_id = $1 AND outcome = $2 AND created_at >= $3
              GROUP BY hostname, serial, uuid ORDER BY last_at DESC LIMIT $4",
        )
        .bind(org_id)
        .bind(outcome)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }
    };
}
pub(super) use console_sql;
