//! The activation audit trail: one row per attempt, successful or not.

use super::{Page, Result, Store};
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ActivationRow {
    pub id: String,
    #[serde(skip)]
    pub org_id: Option<String>,
    pub token_id: Option<String>,
    #[serde(serialize_with = "crate::clock::ser::ts")]
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

impl Store {
    /// Records a batch of failed attempts (queued, see `activation::audit`) as one job on the
    /// group-commit writer, the same path successful activations take.
    pub async fn insert_activation_records(&self, records: Vec<ActivationRecord>) -> Result<()> {
        self.hot()
            .run(move |conn| {
                records
                    .iter()
                    .try_for_each(|r| super::hot::insert_activation(conn, r))
            })
            .await
    }

    pub async fn list_activations(
        &self,
        org_id: &str,
        outcome: Option<&str>,
        device_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<ActivationRow>> {
        Ok(sqlx::query_as::<_, ActivationRow>(
            "SELECT * FROM activations WHERE org_id = $1 AND id > $2 AND ($3 IS NULL OR outcome = $3)
               AND ($4 IS NULL OR device_id = $4) ORDER BY id LIMIT $5",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(outcome)
        .bind(device_id)
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }
}
