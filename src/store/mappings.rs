//! Device mappings (IMD v4): pending until a device activates, then kept as consumed for audit.
//! At most one pending mapping per identifier; uploading the identifier again updates it.

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::{StoreError, TxJob, WriteTx};
use crate::domain::MappingRow;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct StoredMapping {
    pub id: String,
    #[serde(skip)]
    pub org_id: String,
    // The mapping fields carry the same names as the CSV columns and the JSON input.
    #[serde(rename = "emailID")]
    pub email: String,
    #[serde(skip)]
    pub email_norm: String,
    #[serde(rename = "userName")]
    pub user_name: String,
    #[serde(rename = "deviceName")]
    pub device_name: String,
    #[serde(rename = "deviceIdentifierType")]
    pub identifier_type: String,
    #[serde(rename = "deviceIdentifier")]
    pub identifier: String,
    #[serde(skip)]
    pub identifier_norm: String,
    #[serde(rename = "oldDeviceName")]
    pub old_device_name: Option<String>,
    #[serde(rename = "restoreData")]
    pub restore_data: Option<String>,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub updated_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub consumed_at: Option<i64>,
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MappingFilter {
    pub email: Option<String>,
    pub identifier_type: Option<String>,
    pub identifier_norm: Option<String>,
    /// "pending" or "consumed".
    pub status: Option<String>,
}

/// The JSON API's write as one transaction: check every `oldDeviceName`, then upsert all or nothing.
pub(super) struct UpsertJob {
    pub org_id: String,
    pub rows: Vec<(usize, MappingRow)>,
    pub apply: bool,
    pub now: i64,
}

impl TxJob for UpsertJob {
    type Output = MappingsOutcome;
    type Error = StoreError;

    fn run<'t>(
        &'t self,
        tx: &'t mut dyn WriteTx,
    ) -> BoxFuture<'t, Result<MappingsOutcome, StoreError>> {
        Box::pin(async move {
            let mut rejected = Vec::new();
            for (index, row) in &self.rows {
                if let Some(problem) = tx.old_device_problem(&self.org_id, row).await? {
                    rejected.push((*index, problem));
                }
            }
            if !rejected.is_empty() || !self.apply {
                return Ok(MappingsOutcome::Rejected(rejected));
            }
            let rows: Vec<MappingRow> = self.rows.iter().map(|(_, r)| r.clone()).collect();
            tx.upsert_mappings(&self.org_id, &rows, self.now).await?;
            let mut stored = Vec::with_capacity(rows.len());
            for r in &rows {
                stored.push(
                    tx.pending_mapping(
                        &self.org_id,
                        r.identifier_type.as_str(),
                        &r.identifier_norm,
                    )
                    .await?
                    .ok_or(StoreError::NotFound)?,
                );
            }
            Ok(MappingsOutcome::Stored(stored))
        })
    }

    fn is_contention(e: &StoreError) -> bool {
        e.is_contention()
    }
}

/// What the JSON API's write did.
#[derive(Debug)]
pub enum MappingsOutcome {
    Stored(Vec<StoredMapping>),
    /// Nothing was written; `(index, problem)` for each unusable `oldDeviceName`.
    Rejected(Vec<(usize, String)>),
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! mapping_sql {
    () => {
    pub async fn list_mappings(
        &self,
        org_id: &str,
        f: &MappingFilter,
        page: &crate::store::Page,
    ) -> crate::store::Result<Vec<StoredMapping>> {
        Ok(sqlx::query_as::<_, StoredMapping>(
            "SELECT * FROM device_mappings WHERE org_id = $1 AND id > $2
               AND ($3 IS NULL OR email_norm = $3)
               AND ($4 IS NULL OR identifier_type = $4)
               AND ($5 IS NULL OR identifier_norm = $5)
               AND ($6 IS NULL OR ($6 = 'pending' AND consumed_at IS NULL) OR ($6 = 'consumed' AND consumed_at IS NOT NULL))
             ORDER BY id LIMIT $7",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(f.email.as_deref())
        .bind(f.identifier_type.as_deref())
        .bind(f.identifier_norm.as_deref())
        .bind(f.status.as_deref())
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn mapping(&self, org_id: &str, id: &str) -> crate::store::Result<StoredMapping> {
        sqlx::query_as::<_, StoredMapping>(
            "SELECT * FROM device_mappings WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?
        .ok_or(crate::store::StoreError::NotFound)
    }

    pub async fn delete_mapping(&self, org_id: &str, id: &str) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        // Consumed mappings are the record of how a device was bound: kept.
        let r = sqlx::query(
            "DELETE FROM device_mappings WHERE id = $1 AND org_id = $2 AND consumed_at IS NULL",
        )
        .bind(id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 1 {
            Ok(())
        } else {
            Err(crate::store::StoreError::NotFound)
        }
    }

    pub async fn count_pending_mappings(&self, org_id: &str) -> crate::store::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM device_mappings WHERE org_id = $1 AND consumed_at IS NULL",
        )
        .bind(org_id)
        .fetch_one(&self.read)
        .await?;
        Ok(n)
    }
    };
}
pub(super) use mapping_sql;
