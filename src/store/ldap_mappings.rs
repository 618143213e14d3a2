//! AD/LDAP mappings: which directory users of an organization may activate (under a base DN,
//! optionally an OU, a group, a filter) and with which profile, storage region and quota. The
//! v2 resolver reads them in priority order on every activation (one indexed query); priorities
//! and names are unique per organization. Values arrive validated (`domain::ldap`).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct LdapMappingRow {
    pub id: String,
    #[serde(skip)]
    pub org_id: String,
    pub name: String,
    /// Lower first; unique per organization.
    pub priority: i64,
    pub base_dn: String,
    pub ou: Option<String>,
    #[serde(rename = "group")]
    pub group_dn: Option<String>,
    pub filter: Option<String>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub auto_import: bool,
    /// `none` | `upn`: whether a user without `mail` may use its UPN as email.
    pub email_fallback: String,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub updated_at: i64,
}

/// `ldap_mappings.email_fallback` values.
pub const EMAIL_FALLBACKS: [&str; 2] = ["none", "upn"];

/// Every writable field of a mapping (a create, or a patch merged onto the current row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapMappingValues {
    pub name: String,
    pub priority: i64,
    pub base_dn: String,
    pub ou: Option<String>,
    pub group_dn: Option<String>,
    pub filter: Option<String>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub auto_import: bool,
    pub email_fallback: String,
}

impl LdapMappingValues {
    pub fn of(row: &LdapMappingRow) -> Self {
        LdapMappingValues {
            name: row.name.clone(),
            priority: row.priority,
            base_dn: row.base_dn.clone(),
            ou: row.ou.clone(),
            group_dn: row.group_dn.clone(),
            filter: row.filter.clone(),
            profile: row.profile.clone(),
            storage_region: row.storage_region.clone(),
            quota_bytes: row.quota_bytes,
            auto_import: row.auto_import,
            email_fallback: row.email_fallback.clone(),
        }
    }
}

/// What a mapping write did.
pub type LdapMappingWrite = crate::store::MappingWrite<LdapMappingRow>;

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! ldap_mapping_sql {
    () => {
    /// The organization's mappings, by priority (lowest first).
    pub async fn ldap_mappings(&self, org_id: &str) -> crate::store::Result<Vec<LdapMappingRow>> {
        Ok(sqlx::query_as::<_, LdapMappingRow>(
            "SELECT * FROM ldap_mappings WHERE org_id = $1 ORDER BY priority",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn ldap_mapping(&self, org_id: &str, id: &str) -> crate::store::Result<Option<LdapMappingRow>> {
        Ok(sqlx::query_as::<_, LdapMappingRow>(
            "SELECT * FROM ldap_mappings WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Inserts (`id` = None) or replaces the values of mapping `id`, unless another mapping of
    /// the organization holds the priority or the name (checked under the organization's lock,
    /// so the answer names the other mapping; the unique indexes back it). `Ok(None)`: no
    /// mapping `id`.
    pub async fn write_ldap_mapping(
        &self,
        org_id: &str,
        id: Option<&str>,
        v: &LdapMappingValues,
        now: i64,
    ) -> crate::store::Result<Option<LdapMappingWrite>> {
        let mut tx = self.begin().await?;
        self.lock_org(&mut tx, org_id).await?;
        if let Some(clash) = crate::store::mapping_clash!(tx, "ldap_mappings", org_id, v, id) {
            return Ok(Some(clash));
        }
        let q = match id {
            None => sqlx::query_as::<_, LdapMappingRow>(
                "INSERT INTO ldap_mappings (id, org_id, name, priority, base_dn, ou, group_dn,
                        filter, profile, storage_region, quota_bytes, auto_import, email_fallback,
                        created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
                 RETURNING *",
            )
            .bind(crate::store::new_id()),
            Some(id) => sqlx::query_as::<_, LdapMappingRow>(
                "UPDATE ldap_mappings SET name = $3, priority = $4, base_dn = $5, ou = $6,
                        group_dn = $7, filter = $8, profile = $9, storage_region = $10,
                        quota_bytes = $11, auto_import = $12, email_fallback = $13,
                        updated_at = $14
                 WHERE id = $1 AND org_id = $2 RETURNING *",
            )
            .bind(id.to_string()),
        };
        let row = q
            .bind(org_id)
            .bind(&v.name)
            .bind(v.priority)
            .bind(&v.base_dn)
            .bind(&v.ou)
            .bind(&v.group_dn)
            .bind(&v.filter)
            .bind(&v.profile)
            .bind(&v.storage_region)
            .bind(v.quota_bytes)
            .bind(v.auto_import)
            .bind(&v.email_fallback)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        tx.commit().await?;
        Ok(Some(crate::store::MappingWrite::Written(Box::new(row))))
    }

    /// `false`: no such mapping.
    pub async fn delete_ldap_mapping(&self, org_id: &str, id: &str) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM ldap_mappings WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
    };
}
pub(super) use ldap_mapping_sql;
