//! Organizations, their activation defaults, and admin API keys (stored as SHA-256 only).

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub default_profile: String,
    pub default_storage_region: String,
    pub default_quota_bytes: Option<i64>,
    pub require_install_key: bool,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    /// A short public name (lower-case `[a-z0-9-]`), unique across organizations.
    pub slug: Option<String>,
    /// What v2 activations do while the directory is unreachable: `refuse` or
    /// `allow_known_users`.
    pub directory_outage: String,
}

/// `orgs.directory_outage`: what v2 activations do while no connector answers.
pub const DIRECTORY_OUTAGE_POLICIES: [&str; 2] = ["refuse", "allow_known_users"];

/// An admin API key as listed (never the key or its hash).
#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct AdminKeyRow {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub revoked_at: Option<i64>,
}

/// Fields an admin may change; `None` leaves a field as it is. `default_quota_bytes` is doubly
/// optional: `Some(None)` sets "unlimited".
#[derive(Debug, Clone, Default)]
pub struct OrgSettingsPatch {
    pub name: Option<String>,
    pub default_profile: Option<String>,
    pub default_storage_region: Option<String>,
    pub default_quota_bytes: Option<Option<i64>>,
    pub require_install_key: Option<bool>,
    /// `Some(None)` clears the slug. Callers pass it lower-cased and validated; a slug another
    /// organization holds is `StoreError::Conflict`.
    pub slug: Option<Option<String>>,
    pub directory_outage: Option<String>,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! org_sql {
    () => {
    /// Creates an organization and its first admin key (given as a hash) atomically.
    pub async fn create_org(&self, name: &str, admin_key_hash: &str, now: i64) -> crate::store::Result<OrgRow> {
        let mut tx = self.begin().await?;
        let id = crate::store::new_id();
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO admin_keys (id, org_id, name, key_hash, created_at) VALUES ($1, $2, 'initial', $3, $4)",
        )
        .bind(crate::store::new_id())
        .bind(&id)
        .bind(admin_key_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let org = sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(org)
    }

    pub async fn org(&self, id: &str) -> crate::store::Result<OrgRow> {
        sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(crate::store::StoreError::NotFound)
    }

    pub async fn update_org(&self, id: &str, p: &OrgSettingsPatch) -> crate::store::Result<OrgRow> {
        let mut tx = self.begin().await?;
        self.lock_org(&mut tx, id).await?;
        let cur = sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(crate::store::StoreError::NotFound)?;
        sqlx::query(
            "UPDATE orgs SET name = $2, default_profile = $3, default_storage_region = $4,
             default_quota_bytes = $5, require_install_key = $6, slug = $7, directory_outage = $8
             WHERE id = $1",
        )
        .bind(id)
        .bind(p.name.as_ref().unwrap_or(&cur.name))
        .bind(p.default_profile.as_ref().unwrap_or(&cur.default_profile))
        .bind(
            p.default_storage_region
                .as_ref()
                .unwrap_or(&cur.default_storage_region),
        )
        .bind(p.default_quota_bytes.unwrap_or(cur.default_quota_bytes))
        .bind(p.require_install_key.unwrap_or(cur.require_install_key))
        .bind(p.slug.clone().unwrap_or(cur.slug))
        .bind(p.directory_outage.as_ref().unwrap_or(&cur.directory_outage))
        .execute(&mut *tx)
        .await?;
        let org = sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(org)
    }

    /// An organization by id or by slug (case-insensitive: slugs are stored lower-case). An id
    /// wins over a slug that happens to spell it.
    pub async fn org_by_ref(&self, r: &str) -> crate::store::Result<Option<OrgRow>> {
        let by_id = sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(r)
            .fetch_optional(&self.read)
            .await?;
        if by_id.is_some() {
            return Ok(by_id);
        }
        Ok(sqlx::query_as::<_, OrgRow>("SELECT * FROM orgs WHERE slug = $1")
            .bind(r.to_ascii_lowercase())
            .fetch_optional(&self.read)
            .await?)
    }

    /// The live admin key with this hash: `(key id, organization id)`.
    pub async fn live_admin_key(&self, key_hash: &str) -> crate::store::Result<Option<(String, String)>> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, org_id, key_hash FROM admin_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row
            .filter(|(_, _, h)| crate::crypto::ct_eq(h, key_hash))
            .map(|(id, org, _)| (id, org)))
    }

    pub async fn list_admin_keys(&self, org_id: &str) -> crate::store::Result<Vec<AdminKeyRow>> {
        Ok(sqlx::query_as::<_, AdminKeyRow>(
            "SELECT id, name, created_at, revoked_at FROM admin_keys WHERE org_id = $1 ORDER BY id",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Revokes an admin key unless it is the organization's last live one (which would lock the
    /// organization out of its own API). `Ok(false)`: refused for that reason.
    pub async fn revoke_admin_key(&self, org_id: &str, id: &str, now: i64) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        // Every revocation of this organization's keys queues here, so two can never both see
        // "two live keys" and leave none.
        self.lock_org(&mut tx, org_id).await?;
        let target: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT revoked_at FROM admin_keys WHERE id = $1 AND org_id = $2")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((revoked_at,)) = target else {
            return Err(crate::store::StoreError::NotFound);
        };
        if revoked_at.is_none() {
            let (live,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM admin_keys WHERE org_id = $1 AND revoked_at IS NULL",
            )
            .bind(org_id)
            .fetch_one(&mut *tx)
            .await?;
            if live <= 1 {
                return Ok(false);
            }
            sqlx::query("UPDATE admin_keys SET revoked_at = $3 WHERE id = $1 AND org_id = $2")
                .bind(id)
                .bind(org_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn add_admin_key(
        &self,
        org_id: &str,
        name: &str,
        key_hash: &str,
        now: i64,
    ) -> crate::store::Result<AdminKeyRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, AdminKeyRow>(
            "INSERT INTO admin_keys (id, org_id, name, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, created_at, revoked_at",
        )
        .bind(crate::store::new_id())
        .bind(org_id)
        .bind(name)
        .bind(key_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }
    };
}
pub(super) use org_sql;
