//! The activation audit trail: one row per attempt, successful or not.

use futures_util::future::BoxFuture;
use serde::Serialize;

use super::{StoreError, TxJob, WriteTx};

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct ActivationRow {
    pub id: String,
    #[serde(skip)]
    pub org_id: Option<String>,
    pub token_id: Option<String>,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    pub outcome: String,
    pub status: i64,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub login: Option<String>,
    pub remote_ip: Option<String>,
    pub message: Option<String>,
}

/// The `outcome` filter value that means "every failed attempt".
pub const FAILED: &str = "failed";

/// What `list_activations` narrows by.
#[derive(Debug, Clone, Default)]
pub struct ActivationFilter<'a> {
    /// An outcome (`activated`, `reactivated` or an error code), or [`FAILED`].
    pub outcome: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub token_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    /// At or after / before these times.
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// What is recorded about one attempt.
#[derive(Debug, Clone, Default)]
pub struct ActivationRecord {
    pub org_id: Option<String>,
    pub token_id: Option<String>,
    pub created_at: i64,
    pub outcome: String,
    pub status: u16,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub login: Option<String>,
    pub remote_ip: Option<String>,
    pub message: Option<String>,
}

/// A batch of failed-attempt records, written in one transaction.
pub(super) struct RecordsJob(pub Vec<ActivationRecord>);

impl TxJob for RecordsJob {
    type Output = ();
    type Error = StoreError;

    fn run<'t>(&'t self, tx: &'t mut dyn WriteTx) -> BoxFuture<'t, Result<(), StoreError>> {
        Box::pin(async move {
            for r in &self.0 {
                tx.insert_activation(r).await?;
            }
            Ok(())
        })
    }

    fn is_contention(e: &StoreError) -> bool {
        e.is_contention()
    }
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! activation_sql {
    () => {
    pub async fn list_activations(
        &self,
        org_id: &str,
        f: &crate::store::ActivationFilter<'_>,
        page: &crate::store::Page,
    ) -> crate::store::Result<Vec<ActivationRow>> {
        let failed = f.outcome == Some(crate::store::activations::FAILED);
        let outcome = f.outcome.filter(|_| !failed);
        Ok(sqlx::query_as::<_, ActivationRow>(
            "SELECT * FROM activations WHERE org_id = $1 AND id > $2 AND ($3 IS NULL OR outcome = $3)
               AND ($4 IS NULL OR device_id = $4) AND ($6 IS NULL OR token_id = $6)
               AND ($7 IS NULL OR user_id = $7) AND ($8 IS NULL OR created_at >= $8)
               AND ($9 IS NULL OR created_at < $9)
               AND ($10 = FALSE OR outcome NOT IN ('activated', 'reactivated'))
             ORDER BY id LIMIT $5",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(outcome)
        .bind(f.device_id)
        .bind(i64::from(page.limit))
        .bind(f.token_id)
        .bind(f.user_id)
        .bind(f.since)
        .bind(f.until)
        .bind(failed)
        .fetch_all(&self.read)
        .await?)
    }
    };
}
pub(super) use activation_sql;
