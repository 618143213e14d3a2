//! Directory sync's tables: settings per organization, retention per profile, the run lease (one
//! run per organization across processes), run history with per-user detail, the Graph delta
//! state, and the batched user writes a run applies. Every batch is one transaction: applied
//! whole or not at all.

use serde::Serialize;

use crate::domain::directory::DirectoryAttrs;

/// An organization's sync settings (defaults when it never saved any).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct SyncSettingsRow {
    pub auto_sync_interval_hours: i64,
    pub auto_update_user_details: bool,
    pub auto_preserve_unmapped_users: bool,
    pub mass_change_threshold_percent: i64,
    pub mass_change_threshold_min: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    pub updated_at: Option<i64>,
}

impl Default for SyncSettingsRow {
    fn default() -> Self {
        SyncSettingsRow {
            auto_sync_interval_hours: 24,
            auto_update_user_details: true,
            auto_preserve_unmapped_users: false,
            mass_change_threshold_percent: 5,
            mass_change_threshold_min: 10,
            updated_at: None,
        }
    }
}

/// A profile's data-preservation policy.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub auto_delete_preserved: bool,
    pub delete_after_days: i64,
}

impl ProfileRow {
    pub fn defaults(name: &str) -> ProfileRow {
        ProfileRow {
            name: name.to_string(),
            auto_delete_preserved: false,
            delete_after_days: 30,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncCounts {
    pub seen: i64,
    pub imported: i64,
    pub updated: i64,
    pub preserved: i64,
    pub reenabled: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub errors: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRunRow {
    pub id: String,
    pub org_id: String,
    pub run_trigger: String,
    pub dry_run: bool,
    pub as_of: Option<i64>,
    pub status: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub replica_id: String,
    pub seen: i64,
    pub imported: i64,
    pub updated: i64,
    pub preserved: i64,
    pub reenabled: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub errors: i64,
    pub held_preserve: i64,
    pub held_delete: i64,
    pub sources: String,
    pub error: Option<String>,
}

impl SyncRunRow {
    pub fn counts(&self) -> SyncCounts {
        SyncCounts {
            seen: self.seen,
            imported: self.imported,
            updated: self.updated,
            preserved: self.preserved,
            reenabled: self.reenabled,
            deleted: self.deleted,
            skipped: self.skipped,
            errors: self.errors,
        }
    }
}

/// One line of a run's per-user report.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct SyncRunUserRow {
    #[serde(skip)]
    pub seq: i64,
    pub action: String,
    pub user_id: Option<String>,
    pub external_id: Option<String>,
    pub source: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub reason: Option<String>,
    pub applied: bool,
    /// Held-back deletes: the `preserved_at` the run saw.
    #[serde(skip)]
    pub preserved_at: Option<i64>,
}

/// A stored directory user as a run compares it: the columns sync reads, with the group list
/// reduced to a digest (a run holds every user of the organization in memory).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncStoredUser {
    pub id: String,
    pub external_id: String,
    pub email: String,
    pub user_name: String,
    pub status: String,
    pub preserved_at: Option<i64>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub mapping_id: Option<String>,
    pub display_name: Option<String>,
    pub login: Option<String>,
    pub upn: Option<String>,
    pub dn: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    #[sqlx(rename = "groups", try_from = "Option<String>")]
    pub groups_digest: GroupsDigest,
}

impl SyncStoredUser {
    pub fn status(&self) -> crate::store::UserStatus {
        crate::store::UserStatus::parse(&self.status).unwrap_or(crate::store::UserStatus::Deleted)
    }
}

/// The digest of a stored `groups` column (the JSON `groups_json` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupsDigest(pub u64);

impl From<Option<String>> for GroupsDigest {
    fn from(g: Option<String>) -> Self {
        groups_digest(g.as_deref())
    }
}

pub fn groups_digest(groups_json: Option<&str>) -> GroupsDigest {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    groups_json.unwrap_or("").hash(&mut h);
    GroupsDigest(h.finish())
}

/// A user as a sync run writes it (import or update).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncUserValues {
    pub email: String,
    pub email_norm: String,
    pub user_name: String,
    pub external_id: String,
    pub source: &'static str,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub mapping_id: Option<String>,
    pub attrs: DirectoryAttrs,
    /// Leave the stored groups as they are (Azure: a run knows only the mapped groups).
    pub keep_groups: bool,
}

/// One change of a batch. Each names the state it expects, so a change that a concurrent
/// activation (or an admin) made meanwhile is reported, not overwritten.
#[derive(Debug, Clone)]
pub enum SyncWrite {
    Import(SyncUserValues),
    Update {
        user_id: String,
        values: SyncUserValues,
    },
    /// `preserved` → `active`.
    Reenable {
        user_id: String,
        reason: String,
    },
    /// `active` → `preserved`, unless the status changed after `since` (the time the run read
    /// it: an activation may have re-enabled the user meanwhile).
    Preserve {
        user_id: String,
        reason: String,
        since: i64,
    },
    /// `preserved` (since `preserved_at`) → `deleted`: devices revoked, email freed.
    Delete {
        user_id: String,
        preserved_at: i64,
        reason: String,
    },
}

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncWritten {
    /// Applied; the user's id.
    Done(String),
    /// The email belongs to another user (its id).
    EmailTaken(String),
    /// The user is no longer in the state the change expected.
    Changed,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! sync_sql {
    () => {
    pub async fn sync_settings(&self, org_id: &str) -> crate::store::Result<crate::store::SyncSettingsRow> {
        Ok(sqlx::query_as::<_, crate::store::SyncSettingsRow>(
            "SELECT auto_sync_interval_hours, auto_update_user_details, auto_preserve_unmapped_users,
                    mass_change_threshold_percent, mass_change_threshold_min, updated_at
               FROM sync_settings WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?
        .unwrap_or_default())
    }

    pub async fn put_sync_settings(
        &self,
        org_id: &str,
        s: &crate::store::SyncSettingsRow,
        now: i64,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sync_settings (org_id, auto_sync_interval_hours, auto_update_user_details,
                    auto_preserve_unmapped_users, mass_change_threshold_percent,
                    mass_change_threshold_min, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (org_id) DO UPDATE SET
                    auto_sync_interval_hours = excluded.auto_sync_interval_hours,
                    auto_update_user_details = excluded.auto_update_user_details,
                    auto_preserve_unmapped_users = excluded.auto_preserve_unmapped_users,
                    mass_change_threshold_percent = excluded.mass_change_threshold_percent,
                    mass_change_threshold_min = excluded.mass_change_threshold_min,
                    updated_at = excluded.updated_at",
        )
        .bind(org_id)
        .bind(s.auto_sync_interval_hours)
        .bind(s.auto_update_user_details)
        .bind(s.auto_preserve_unmapped_users)
        .bind(s.mass_change_threshold_percent)
        .bind(s.mass_change_threshold_min)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Configured profiles.
    pub async fn profiles(&self, org_id: &str) -> crate::store::Result<Vec<crate::store::ProfileRow>> {
        Ok(sqlx::query_as::<_, crate::store::ProfileRow>(
            "SELECT name, auto_delete_preserved, delete_after_days FROM profiles
              WHERE org_id = $1 ORDER BY name",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Profile names in use (by users, mappings, the organization's default), with how many
    /// users (not deleted) each has.
    pub async fn profiles_in_use(&self, org_id: &str) -> crate::store::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT name, CAST(SUM(n) AS BIGINT) FROM (
                SELECT profile AS name, COUNT(*) AS n FROM users
                 WHERE org_id = $1 AND status <> 'deleted' GROUP BY profile
                UNION ALL SELECT profile, 0 FROM ldap_mappings WHERE org_id = $1
                UNION ALL SELECT profile, 0 FROM azure_mappings WHERE org_id = $1
                UNION ALL SELECT default_profile, 0 FROM orgs WHERE id = $1
             ) p GROUP BY name ORDER BY name",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn put_profile(
        &self,
        org_id: &str,
        p: &crate::store::ProfileRow,
        now: i64,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO profiles (org_id, name, auto_delete_preserved, delete_after_days, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id, name) DO UPDATE SET
                    auto_delete_preserved = excluded.auto_delete_preserved,
                    delete_after_days = excluded.delete_after_days,
                    updated_at = excluded.updated_at",
        )
        .bind(org_id)
        .bind(&p.name)
        .bind(p.auto_delete_preserved)
        .bind(p.delete_after_days)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_profile(&self, org_id: &str, name: &str) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM profiles WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Takes the organization's lease for `run_id` inside `tx`: `None` if taken, else the run
    /// holding a live lease. One statement decides: of two processes racing for an expired or
    /// missing lease, exactly one gets a row back. A lease left by a process that died is taken
    /// over: the run it belonged to is marked failed, and an approval it was applying goes back
    /// to awaiting approval.
    async fn take_sync_lease(
        tx: &mut sqlx::Transaction<'static, Db>,
        org_id: &str,
        run_id: &str,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> crate::store::Result<Option<Option<String>>> {
        let got: Option<String> = sqlx::query_scalar(
            "INSERT INTO sync_leases (org_id, run_id, holder, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (org_id) DO UPDATE SET run_id = excluded.run_id,
                    holder = excluded.holder, expires_at = excluded.expires_at
              WHERE sync_leases.expires_at <= $5
             RETURNING run_id",
        )
        .bind(org_id)
        .bind(run_id)
        .bind(holder)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        if got.is_none() {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT run_id FROM sync_leases WHERE org_id = $1")
                    .bind(org_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            return Ok(Some(holder));
        }
        sqlx::query(
            "UPDATE sync_runs SET status = 'failed', ended_at = $2,
                    error = 'interrupted: the process running it stopped before it ended (its lease expired)'
              WHERE org_id = $1 AND status = 'running' AND id <> $3",
        )
        .bind(org_id)
        .bind(now)
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'needs_approval'
              WHERE org_id = $1 AND status = 'approving' AND id <> $2",
        )
        .bind(org_id)
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
        Ok(None)
    }

    /// Starts a run: inserts its row and takes the organization's lease in one transaction.
    /// `Err(Some(id))`: the run `id` holds a live lease.
    pub async fn start_sync_run(
        &self,
        run: &crate::store::SyncRunRow,
        lease_expires_at: i64,
    ) -> crate::store::Result<Result<(), Option<String>>> {
        let mut tx = self.begin().await?;
        if let Some(holder) = Self::take_sync_lease(
            &mut tx,
            &run.org_id,
            &run.id,
            &run.replica_id,
            run.started_at,
            lease_expires_at,
        )
        .await?
        {
            return Ok(Err(holder));
        }
        sqlx::query(
            "INSERT INTO sync_runs (id, org_id, run_trigger, dry_run, as_of, status, started_at,
                    replica_id, sources)
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, '[]')",
        )
        .bind(&run.id)
        .bind(&run.org_id)
        .bind(&run.run_trigger)
        .bind(run.dry_run)
        .bind(run.as_of)
        .bind(run.started_at)
        .bind(&run.replica_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Takes the lease to apply an approval of `run_id` (no run may go meanwhile) and moves the
    /// run to `approving`. `Err(Some(id))`: a run holds the lease; `Err(None)`: the run is not
    /// awaiting approval.
    pub async fn begin_sync_approval(
        &self,
        org_id: &str,
        run_id: &str,
        holder: &str,
        now: i64,
        lease_expires_at: i64,
    ) -> crate::store::Result<Result<(), Option<String>>> {
        let mut tx = self.begin().await?;
        if let Some(h) = Self::take_sync_lease(&mut tx, org_id, run_id, holder, now, lease_expires_at).await? {
            return Ok(Err(h));
        }
        let n = sqlx::query(
            "UPDATE sync_runs SET status = 'approving'
              WHERE id = $1 AND org_id = $2 AND status = 'needs_approval'",
        )
        .bind(run_id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            // Rolled back: the lease is not kept either.
            return Ok(Err(None));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Ends an approval: the run's status and counts, and the lease released.
    pub async fn end_sync_approval(
        &self,
        org_id: &str,
        run_id: &str,
        status: &str,
        c: &crate::store::SyncCounts,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE sync_runs SET status = $3, imported = $4, updated = $5, preserved = $6,
                    reenabled = $7, deleted = $8, skipped = $9, errors = $10
              WHERE id = $1 AND org_id = $2 AND status = 'approving'",
        )
        .bind(run_id)
        .bind(org_id)
        .bind(status)
        .bind(c.imported)
        .bind(c.updated)
        .bind(c.preserved)
        .bind(c.reenabled)
        .bind(c.deleted)
        .bind(c.skipped)
        .bind(c.errors)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sync_leases WHERE org_id = $1 AND run_id = $2")
            .bind(org_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Extends the run's lease; `false` if it no longer holds it.
    pub async fn renew_sync_lease(&self, org_id: &str, run_id: &str, expires_at: i64) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE sync_leases SET expires_at = $3 WHERE org_id = $1 AND run_id = $2")
            .bind(org_id)
            .bind(run_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Records where a run stands (counts so far, or the end), and at the end releases the lease.
    /// Only a run still `running` is written: one taken over (marked failed) stays failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_sync_run(
        &self,
        org_id: &str,
        run_id: &str,
        status: &str,
        c: &crate::store::SyncCounts,
        held: (i64, i64),
        sources: &str,
        error: Option<&str>,
        ended_at: Option<i64>,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE sync_runs SET status = $3, seen = $4, imported = $5, updated = $6,
                    preserved = $7, reenabled = $8, deleted = $9, skipped = $10, errors = $11,
                    held_preserve = $12, held_delete = $13, sources = $14, error = $15, ended_at = $16
              WHERE id = $1 AND org_id = $2 AND status = 'running'",
        )
        .bind(run_id)
        .bind(org_id)
        .bind(status)
        .bind(c.seen)
        .bind(c.imported)
        .bind(c.updated)
        .bind(c.preserved)
        .bind(c.reenabled)
        .bind(c.deleted)
        .bind(c.skipped)
        .bind(c.errors)
        .bind(held.0)
        .bind(held.1)
        .bind(sources)
        .bind(error)
        .bind(ended_at)
        .execute(&mut *tx)
        .await?;
        if ended_at.is_some() {
            sqlx::query("DELETE FROM sync_leases WHERE org_id = $1 AND run_id = $2")
                .bind(org_id)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a run from `from` to `to` (approve / reject); `false` if it was not in `from`.
    pub async fn set_sync_run_status(
        &self,
        org_id: &str,
        run_id: &str,
        from: &str,
        to: &str,
    ) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE sync_runs SET status = $4 WHERE id = $1 AND org_id = $2 AND status = $3")
            .bind(run_id)
            .bind(org_id)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Earlier runs still waiting for approval are superseded by a newer complete run.
    pub async fn supersede_pending_runs(&self, org_id: &str, newer: &str) -> crate::store::Result<u64> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE sync_runs SET status = 'rejected',
                    error = COALESCE(error, 'superseded by a newer run')
              WHERE org_id = $1 AND status = 'needs_approval' AND id < $2",
        )
        .bind(org_id)
        .bind(newer)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub async fn sync_run(&self, org_id: &str, id: &str) -> crate::store::Result<crate::store::SyncRunRow> {
        sqlx::query_as::<_, crate::store::SyncRunRow>("SELECT * FROM sync_runs WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(crate::store::StoreError::NotFound)
    }

    /// Newest first; the cursor is the last id seen.
    pub async fn list_sync_runs(&self, org_id: &str, page: &crate::store::Page) -> crate::store::Result<Vec<crate::store::SyncRunRow>> {
        Ok(sqlx::query_as::<_, crate::store::SyncRunRow>(
            "SELECT * FROM sync_runs WHERE org_id = $1 AND ($2 IS NULL OR id < $2)
              ORDER BY id DESC LIMIT $3",
        )
        .bind(org_id)
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }

    /// When the newest run that was not a dry run started, and how it ended (the scheduler's
    /// reference).
    pub async fn last_sync_run(&self, org_id: &str) -> crate::store::Result<Option<(i64, String)>> {
        Ok(sqlx::query_as::<_, (i64, String)>(
            "SELECT started_at, status FROM sync_runs WHERE org_id = $1 AND dry_run = FALSE
              ORDER BY id DESC LIMIT 1",
        )
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// The per-user report of a run, in order, optionally one action; `after` is a seq.
    pub async fn sync_run_users(
        &self,
        run_id: &str,
        action: Option<&str>,
        after: i64,
        limit: u32,
    ) -> crate::store::Result<Vec<crate::store::SyncRunUserRow>> {
        Ok(sqlx::query_as::<_, crate::store::SyncRunUserRow>(
            "SELECT seq, action, user_id, external_id, source, email, name, reason, applied,
                    preserved_at
               FROM sync_run_users WHERE run_id = $1 AND ($2 IS NULL OR action = $2) AND seq > $3
              ORDER BY seq LIMIT $4",
        )
        .bind(run_id)
        .bind(action)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?)
    }

    /// Appends report lines (seq numbers chosen by the caller) outside a batch.
    pub async fn add_sync_run_users(
        &self,
        run_id: &str,
        rows: &[crate::store::SyncRunUserRow],
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        for r in rows {
            Self::insert_run_user(&mut tx, run_id, r).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks held-back report lines applied (approve).
    pub async fn mark_sync_run_users_applied(&self, run_id: &str, seqs: &[i64]) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        for s in seqs {
            sqlx::query("UPDATE sync_run_users SET applied = TRUE WHERE run_id = $1 AND seq = $2")
                .bind(run_id)
                .bind(*s)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every user a directory provisioned (`source`, with a directory id), deleted ones too
    /// (they are never imported again), streamed into their compact form.
    pub async fn directory_users(&self, org_id: &str, source: &str) -> crate::store::Result<Vec<crate::store::SyncStoredUser>> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query_as::<_, crate::store::SyncStoredUser>(
            "SELECT id, external_id, email, user_name, status, preserved_at, profile,
                    storage_region, quota_bytes, mapping_id, display_name, login, upn, dn,
                    department, country, \"groups\"
               FROM users WHERE org_id = $1 AND source = $2 AND external_id IS NOT NULL",
        )
        .bind(org_id)
        .bind(source)
        .fetch(&self.read);
        let mut out = Vec::new();
        while let Some(r) = rows.try_next().await? {
            out.push(r);
        }
        Ok(out)
    }

    /// Whether imd stores any user (not deleted) this directory provisioned.
    pub async fn has_directory_users(&self, org_id: &str, source: &str) -> crate::store::Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM (SELECT 1 FROM users WHERE org_id = $1 AND source = $2
                AND external_id IS NOT NULL AND status <> 'deleted' LIMIT 1) x",
        )
        .bind(org_id)
        .bind(source)
        .fetch_one(&self.read)
        .await? > 0)
    }

    /// Organizations with at least one AD/LDAP or Azure AD mapping (the scheduler's candidates).
    pub async fn orgs_with_directory_mappings(&self) -> crate::store::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT org_id FROM ldap_mappings UNION SELECT org_id FROM azure_mappings",
        )
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn azure_sync_state(&self, org_id: &str) -> crate::store::Result<Option<(Option<String>, Option<i64>, Option<String>)>> {
        Ok(sqlx::query_as::<_, (Option<String>, Option<i64>, Option<String>)>(
            "SELECT delta_link, full_at, mappings_hash FROM azure_sync_state WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Stores the delta link a complete Azure pass ended with (`full_at` when it was a full one).
    pub async fn put_azure_sync_state(
        &self,
        org_id: &str,
        delta_link: Option<&str>,
        full_at: Option<i64>,
        mappings_hash: &str,
        now: i64,
    ) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO azure_sync_state (org_id, delta_link, full_at, mappings_hash, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id) DO UPDATE SET delta_link = excluded.delta_link,
                    full_at = COALESCE(excluded.full_at, azure_sync_state.full_at),
                    mappings_hash = excluded.mappings_hash, updated_at = excluded.updated_at",
        )
        .bind(org_id)
        .bind(delta_link)
        .bind(full_at)
        .bind(mappings_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a batch of user changes and their report lines in one transaction: all or none.
    /// `report[i]` describes `writes[i]` (its `user_id` is filled in from the outcome; lines
    /// of changes that did not apply are rewritten as `skipped` with the reason). Fenced by
    /// the lease: `None` (nothing written) when `run_id` no longer holds the organization's
    /// lease at `now`, so a run that lost it can never write after its successor started.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_sync_batch(
        &self,
        org_id: &str,
        run_id: &str,
        actor: &str,
        writes: &[crate::store::SyncWrite],
        report: &mut [Option<crate::store::SyncRunUserRow>],
        extra_report: &[crate::store::SyncRunUserRow],
        now: i64,
    ) -> crate::store::Result<Option<Vec<crate::store::SyncWritten>>> {
        use crate::store::{SyncWrite, SyncWritten};
        use sqlx::Acquire;
        let mut tx = self.begin().await?;
        // A no-op update: it holds the lease row (PostgreSQL row lock; SQLite's write lock)
        // until commit, so a takeover waits for this batch or finds it never happened.
        let fenced = sqlx::query(
            "UPDATE sync_leases SET expires_at = expires_at
              WHERE org_id = $1 AND run_id = $2 AND expires_at > $3",
        )
        .bind(org_id)
        .bind(run_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if fenced == 0 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let r = match w {
                SyncWrite::Import(v) => {
                    let a = crate::store::AttrCols::of(Some(&v.attrs));
                    let id: Option<String> = sqlx::query_scalar(
                        "INSERT INTO users (id, org_id, email, email_norm, user_name, external_id, source,
                                profile, storage_region, quota_bytes, created_at, updated_at, login,
                                login_norm, upn, dn, department, country, \"groups\", mapping_id, display_name)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15,
                                 $16, $17, $18, $19, $20)
                         ON CONFLICT DO NOTHING RETURNING id",
                    )
                    .bind(crate::store::new_id())
                    .bind(org_id)
                    .bind(&v.email)
                    .bind(&v.email_norm)
                    .bind(&v.user_name)
                    .bind(&v.external_id)
                    .bind(v.source)
                    .bind(&v.profile)
                    .bind(&v.storage_region)
                    .bind(v.quota_bytes)
                    .bind(now)
                    .bind(a.login)
                    .bind(a.login_norm)
                    .bind(a.upn)
                    .bind(a.dn)
                    .bind(a.department)
                    .bind(a.country)
                    .bind(a.groups)
                    .bind(v.mapping_id.as_deref())
                    .bind(a.display_name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match id {
                        Some(id) => SyncWritten::Done(id),
                        None => {
                            let by_email: Option<String> = sqlx::query_scalar(
                                "SELECT id FROM users WHERE org_id = $1 AND email_norm = $2",
                            )
                            .bind(org_id)
                            .bind(&v.email_norm)
                            .fetch_optional(&mut *tx)
                            .await?;
                            match by_email {
                                Some(id) => SyncWritten::EmailTaken(id),
                                // Created by an activation since the run read the users.
                                None => SyncWritten::Changed,
                            }
                        }
                    }
                }
                SyncWrite::Update { user_id, values: v } => {
                    let taken: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM users WHERE org_id = $1 AND email_norm = $2 AND id <> $3",
                    )
                    .bind(org_id)
                    .bind(&v.email_norm)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(other) = taken {
                        SyncWritten::EmailTaken(other)
                    } else {
                        let a = crate::store::AttrCols::of(Some(&v.attrs));
                        // In a savepoint: an activation may take the email between the check
                        // and the update, and on PostgreSQL the unique violation would
                        // otherwise abort the whole batch.
                        let mut sp = (&mut tx).begin().await?;
                        let n = sqlx::query(
                            "UPDATE users SET email = $3, email_norm = $4, user_name = $5, profile = $6,
                                    storage_region = $7, quota_bytes = $8, mapping_id = $9,
                                    display_name = $10, login = $11, login_norm = $12, upn = $13,
                                    dn = $14, department = $15, country = $16,
                                    \"groups\" = CASE WHEN $17 THEN \"groups\" ELSE $18 END,
                                    updated_at = $19
                              WHERE id = $1 AND org_id = $2 AND status <> 'deleted'",
                        )
                        .bind(user_id)
                        .bind(org_id)
                        .bind(&v.email)
                        .bind(&v.email_norm)
                        .bind(&v.user_name)
                        .bind(&v.profile)
                        .bind(&v.storage_region)
                        .bind(v.quota_bytes)
                        .bind(v.mapping_id.as_deref())
                        .bind(a.display_name)
                        .bind(a.login)
                        .bind(a.login_norm)
                        .bind(a.upn)
                        .bind(a.dn)
                        .bind(a.department)
                        .bind(a.country)
                        .bind(v.keep_groups)
                        .bind(a.groups)
                        .bind(now)
                        .execute(&mut *sp)
                        .await;
                        match n {
                            Ok(r) => {
                                sp.commit().await?;
                                if r.rows_affected() > 0 {
                                    SyncWritten::Done(user_id.clone())
                                } else {
                                    SyncWritten::Changed
                                }
                            }
                            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                                sp.rollback().await?;
                                SyncWritten::EmailTaken("a user created meanwhile".into())
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                SyncWrite::Reenable { user_id, reason } => {
                    let n = sqlx::query(
                        "UPDATE users SET status = 'active', preserved_at = NULL, updated_at = $3,
                                status_changed_at = $3
                          WHERE id = $1 AND org_id = $2 AND status = 'preserved'",
                    )
                    .bind(user_id)
                    .bind(org_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    Self::user_event(&mut tx, n, org_id, user_id, "reenabled", reason, actor, now).await?
                }
                SyncWrite::Preserve { user_id, reason, since } => {
                    let n = sqlx::query(
                        "UPDATE users SET status = 'preserved', preserved_at = $3, updated_at = $3,
                                status_changed_at = $3
                          WHERE id = $1 AND org_id = $2 AND status = 'active'
                            AND COALESCE(status_changed_at, 0) <= $4",
                    )
                    .bind(user_id)
                    .bind(org_id)
                    .bind(now)
                    .bind(*since)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    Self::user_event(&mut tx, n, org_id, user_id, "preserved", reason, actor, now).await?
                }
                SyncWrite::Delete { user_id, preserved_at, reason } => {
                    // The email is freed (a new person may get it); the directory id stays so
                    // the same directory entry is never imported again.
                    let n = sqlx::query(
                        "UPDATE users SET status = 'deleted', deleted_at = $4, updated_at = $4,
                                status_changed_at = $4, email_norm = 'deleted:' || id,
                                login_norm = NULL
                          WHERE id = $1 AND org_id = $2 AND status = 'preserved' AND preserved_at = $3",
                    )
                    .bind(user_id)
                    .bind(org_id)
                    .bind(*preserved_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n > 0 {
                        sqlx::query(
                            "UPDATE devices SET status = 'revoked', revoked_at = $2
                              WHERE user_id = $1 AND status <> 'revoked'",
                        )
                        .bind(user_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Self::user_event(&mut tx, n, org_id, user_id, "deleted", reason, actor, now).await?
                }
            };
            out.push(r);
        }
        for (line, r) in report.iter_mut().zip(&out) {
            let Some(line) = line else { continue };
            match r {
                SyncWritten::Done(id) => line.user_id = Some(id.clone()),
                SyncWritten::EmailTaken(other) => {
                    line.reason = Some(format!(
                        "the email {} is already used by another user ({other})",
                        line.email.as_deref().unwrap_or("")
                    ));
                    line.action = "skipped".into();
                    line.applied = false;
                }
                SyncWritten::Changed => {
                    line.reason = Some(format!(
                        "not {}: the user changed since the run read it (the next run looks again)",
                        line.action
                    ));
                    line.action = "skipped".into();
                    line.applied = false;
                }
            }
            Self::insert_run_user(&mut tx, run_id, line).await?;
        }
        for line in extra_report {
            Self::insert_run_user(&mut tx, run_id, line).await?;
        }
        tx.commit().await?;
        Ok(Some(out))
    }

    async fn insert_run_user(
        tx: &mut sqlx::Transaction<'static, Db>,
        run_id: &str,
        r: &crate::store::SyncRunUserRow,
    ) -> crate::store::Result<()> {
        sqlx::query(
            "INSERT INTO sync_run_users (run_id, seq, action, user_id, external_id, source, email,
                    name, reason, applied, preserved_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(run_id)
        .bind(r.seq)
        .bind(&r.action)
        .bind(r.user_id.as_deref())
        .bind(r.external_id.as_deref())
        .bind(&r.source)
        .bind(r.email.as_deref())
        .bind(r.name.as_deref())
        .bind(r.reason.as_deref())
        .bind(r.applied)
        .bind(r.preserved_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The audit row of a lifecycle change that applied (`n` rows changed).
    #[allow(clippy::too_many_arguments)]
    async fn user_event(
        tx: &mut sqlx::Transaction<'static, Db>,
        n: u64,
        org_id: &str,
        user_id: &str,
        action: &str,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> crate::store::Result<crate::store::SyncWritten> {
        if n == 0 {
            return Ok(crate::store::SyncWritten::Changed);
        }
        sqlx::query(
            "INSERT INTO user_events (id, org_id, user_id, action, reason, actor, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(crate::store::new_id())
        .bind(org_id)
        .bind(user_id)
        .bind(action)
        .bind(reason)
        .bind(actor)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(crate::store::SyncWritten::Done(user_id.to_string()))
    }
    };
}
pub(super) use sync_sql;
