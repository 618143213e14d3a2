//! Entra ID (Azure AD): each organization's app registration (`azure_config`) and its Azure AD
//! mappings (`azure_mappings`). The client secret arrives sealed with the master key (the HTTP
//! layer seals it, `directory::graph::GraphClients` opens it): this module only ever sees the
//! ciphertext, and no row type prints or serializes it. Mappings follow the AD/LDAP ones:
//! read in priority order on every v5 activation, priorities and names unique per
//! organization, values validated above.

/// An organization's app registration as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AzureConfigRow {
    pub org_id: String,
    pub tenant_id: String,
    pub client_id: String,
    /// `MasterKey::seal(aad = "azure:<org_id>", secret)`.
    pub client_secret_enc: String,
    pub authority_url: String,
    pub graph_url: String,
    pub allow_guests: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for AzureConfigRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConfigRow")
            .field("org_id", &self.org_id)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret_enc", &"<sealed>")
            .field("authority_url", &self.authority_url)
            .field("graph_url", &self.graph_url)
            .field("allow_guests", &self.allow_guests)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// The AAD a client secret is sealed with: binds the ciphertext to its organization.
pub fn azure_secret_aad(org_id: &str) -> String {
    format!("azure:{org_id}")
}

/// `azure_mappings.source_kind` values.
pub const AZURE_SOURCE_KINDS: [&str; 2] = ["group", "attribute"];

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AzureMappingRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    /// Lower first; unique per organization.
    pub priority: i64,
    /// `group` | `attribute`.
    pub source_kind: String,
    /// The group's object id (`source_kind = group`).
    pub group_id: Option<String>,
    /// A Graph user property name (`source_kind = attribute`), e.g. `department`.
    pub attribute: Option<String>,
    pub value: Option<String>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub auto_import: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Every writable field of an Azure AD mapping (a create, or a patch merged onto the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureMappingValues {
    pub name: String,
    pub priority: i64,
    pub source_kind: String,
    pub group_id: Option<String>,
    pub attribute: Option<String>,
    pub value: Option<String>,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub auto_import: bool,
}

impl AzureMappingValues {
    pub fn of(row: &AzureMappingRow) -> Self {
        AzureMappingValues {
            name: row.name.clone(),
            priority: row.priority,
            source_kind: row.source_kind.clone(),
            group_id: row.group_id.clone(),
            attribute: row.attribute.clone(),
            value: row.value.clone(),
            profile: row.profile.clone(),
            storage_region: row.storage_region.clone(),
            quota_bytes: row.quota_bytes,
            auto_import: row.auto_import,
        }
    }
}

/// What an Azure AD mapping write did.
pub type AzureMappingWrite = crate::store::MappingWrite<AzureMappingRow>;

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! azure_sql {
    () => {
    pub async fn azure_config(&self, org_id: &str) -> crate::store::Result<Option<AzureConfigRow>> {
        Ok(sqlx::query_as::<_, AzureConfigRow>("SELECT * FROM azure_config WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?)
    }

    /// Inserts or replaces the organization's app registration (`created_at` of a replaced
    /// row stays); returns the row as stored.
    pub async fn put_azure_config(&self, row: &AzureConfigRow) -> crate::store::Result<AzureConfigRow> {
        let mut tx = self.begin().await?;
        let stored = sqlx::query_as::<_, AzureConfigRow>(
            "INSERT INTO azure_config (org_id, tenant_id, client_id, client_secret_enc,
                    authority_url, graph_url, allow_guests, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (org_id) DO UPDATE SET tenant_id = excluded.tenant_id,
                    client_id = excluded.client_id, client_secret_enc = excluded.client_secret_enc,
                    authority_url = excluded.authority_url, graph_url = excluded.graph_url,
                    allow_guests = excluded.allow_guests, updated_at = excluded.updated_at
             RETURNING *",
        )
        .bind(&row.org_id)
        .bind(&row.tenant_id)
        .bind(&row.client_id)
        .bind(&row.client_secret_enc)
        .bind(&row.authority_url)
        .bind(&row.graph_url)
        .bind(row.allow_guests)
        .bind(row.created_at)
        .bind(row.updated_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The organization's Azure AD mappings, by priority (lowest first).
    pub async fn azure_mappings(&self, org_id: &str) -> crate::store::Result<Vec<AzureMappingRow>> {
        Ok(sqlx::query_as::<_, AzureMappingRow>(
            "SELECT * FROM azure_mappings WHERE org_id = $1 ORDER BY priority",
        )
        .bind(org_id)
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn azure_mapping(&self, org_id: &str, id: &str) -> crate::store::Result<Option<AzureMappingRow>> {
        Ok(sqlx::query_as::<_, AzureMappingRow>(
            "SELECT * FROM azure_mappings WHERE id = $1 AND org_id = $2",
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
    pub async fn write_azure_mapping(
        &self,
        org_id: &str,
        id: Option<&str>,
        v: &AzureMappingValues,
        now: i64,
    ) -> crate::store::Result<Option<AzureMappingWrite>> {
        let mut tx = self.begin().await?;
        self.lock_org(&mut tx, org_id).await?;
        if let Some(clash) = crate::store::mapping_clash!(tx, "azure_mappings", org_id, v, id) {
            return Ok(Some(clash));
        }
        let q = match id {
            None => sqlx::query_as::<_, AzureMappingRow>(
                "INSERT INTO azure_mappings (id, org_id, name, priority, source_kind, group_id,
                        attribute, value, profile, storage_region, quota_bytes, auto_import,
                        created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)
                 RETURNING *",
            )
            .bind(crate::store::new_id()),
            Some(id) => sqlx::query_as::<_, AzureMappingRow>(
                "UPDATE azure_mappings SET name = $3, priority = $4, source_kind = $5,
                        group_id = $6, attribute = $7, value = $8, profile = $9,
                        storage_region = $10, quota_bytes = $11, auto_import = $12,
                        updated_at = $13
                 WHERE id = $1 AND org_id = $2 RETURNING *",
            )
            .bind(id.to_string()),
        };
        let row = q
            .bind(org_id)
            .bind(&v.name)
            .bind(v.priority)
            .bind(&v.source_kind)
            .bind(&v.group_id)
            .bind(&v.attribute)
            .bind(&v.value)
            .bind(&v.profile)
            .bind(&v.storage_region)
            .bind(v.quota_bytes)
            .bind(v.auto_import)
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
    pub async fn delete_azure_mapping(&self, org_id: &str, id: &str) -> crate::store::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM azure_mappings WHERE id = $1 AND org_id = $2")
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
pub(super) use azure_sql;
