//! Device mappings (IMD v4): pending until a device activates, then kept as consumed for audit.
//! At most one pending mapping per identifier; uploading the identifier again updates it.

use super::{Page, Result, Store, StoreError, new_id};
use crate::devicemap::MappingRow;
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
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
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    pub updated_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
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

impl Store {
    /// The JSON API's write: checks every row's `oldDeviceName` and, only if all pass and
    /// `apply` (the caller found no other errors), upserts them — one job on the writer, so the
    /// check and the write see the same state. Rows carry the caller's index for error reports.
    pub async fn upsert_mappings(
        &self,
        org_id: String,
        rows: Vec<(usize, MappingRow)>,
        apply: bool,
        now: i64,
    ) -> Result<MappingsOutcome> {
        self.hot()
            .run(move |conn| {
                let mut rejected = Vec::new();
                for (index, row) in &rows {
                    if let Some(problem) = super::hot::old_device_problem(conn, &org_id, row)? {
                        rejected.push((*index, problem));
                    }
                }
                if !rejected.is_empty() || !apply {
                    return Ok(MappingsOutcome::Rejected(rejected));
                }
                let mut upserter = BulkUpserter::new(conn)?;
                for (_, row) in &rows {
                    upserter.upsert(&org_id, row, now)?;
                }
                let stored = rows
                    .iter()
                    .map(|(_, r)| {
                        super::hot::pending_mapping(
                            conn,
                            &org_id,
                            r.identifier_type.as_str(),
                            &r.identifier_norm,
                        )?
                        .ok_or(StoreError::NotFound)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(MappingsOutcome::Stored(stored))
            })
            .await
    }

    pub async fn list_mappings(
        &self,
        org_id: &str,
        f: &MappingFilter,
        page: &Page,
    ) -> Result<Vec<StoredMapping>> {
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

    pub async fn mapping(&self, org_id: &str, id: &str) -> Result<StoredMapping> {
        sqlx::query_as::<_, StoredMapping>(
            "SELECT * FROM device_mappings WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?
        .ok_or(StoreError::NotFound)
    }

    pub async fn delete_mapping(&self, org_id: &str, id: &str) -> Result<()> {
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
            Err(StoreError::NotFound)
        }
    }

    pub async fn count_pending_mappings(&self, org_id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM device_mappings WHERE org_id = $1 AND consumed_at IS NULL",
        )
        .bind(org_id)
        .fetch_one(&self.read)
        .await?;
        Ok(n)
    }
}

/// What the JSON API's write did.
#[derive(Debug)]
pub enum MappingsOutcome {
    Stored(Vec<StoredMapping>),
    /// Nothing was written; `(index, problem)` for each unusable `oldDeviceName`.
    Rejected(Vec<(usize, String)>),
}

/// Bulk upsert on a synchronous connection (device-map imports): one cached statement, one row at
/// a time, no per-statement thread hand-off.
pub struct BulkUpserter<'c> {
    stmt: rusqlite::CachedStatement<'c>,
}

impl<'c> BulkUpserter<'c> {
    pub fn new(conn: &'c rusqlite::Connection) -> Result<Self> {
        Ok(BulkUpserter {
            stmt: conn.prepare_cached(
                "INSERT INTO device_mappings (id, org_id, email, email_norm, user_name, device_name, identifier_type,
                                              identifier, identifier_norm, old_device_name, restore_data, created_at,
                                              updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
                 ON CONFLICT (org_id, identifier_type, identifier_norm) WHERE consumed_at IS NULL DO UPDATE SET
                   email = excluded.email, email_norm = excluded.email_norm, user_name = excluded.user_name,
                   device_name = excluded.device_name, identifier = excluded.identifier,
                   old_device_name = excluded.old_device_name, restore_data = excluded.restore_data,
                   updated_at = excluded.updated_at",
            )?,
        })
    }

    pub fn upsert(&mut self, org_id: &str, r: &MappingRow, now: i64) -> Result<()> {
        self.stmt.execute(rusqlite::params![
            new_id(),
            org_id,
            r.email.as_str(),
            r.email.normalized(),
            r.user_name,
            r.device_name,
            r.identifier_type.as_str(),
            r.identifier,
            r.identifier_norm,
            r.old_device_name,
            r.restore_data.map(|x| x.as_str()),
            now
        ])?;
        Ok(())
    }
}

/// Pending mappings of an organization (the difference before and after an import is what it created).
pub fn count_pending_sync(conn: &rusqlite::Connection, org_id: &str) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM device_mappings WHERE org_id = ?1 AND consumed_at IS NULL",
        [org_id],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
