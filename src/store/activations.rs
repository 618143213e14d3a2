//! The activation audit trail: one row per attempt, successful or not.

use super::{Conn, Page, Result, Store, new_id};
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

pub async fn insert(conn: &mut Conn, r: &ActivationRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO activations (id, org_id, token_id, created_at, outcome, status, device_id, user_id,
                                  hostname, serial, uuid, login, remote_ip, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(new_id())
    .bind(&r.org_id)
    .bind(&r.token_id)
    .bind(r.created_at)
    .bind(&r.outcome)
    .bind(i64::from(r.status))
    .bind(&r.device_id)
    .bind(&r.user_id)
    .bind(&r.hostname)
    .bind(&r.serial)
    .bind(&r.uuid)
    .bind(&r.login)
    .bind(&r.remote_ip)
    .bind(&r.message)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Records a batch of failed attempts in one transaction (they are queued, see `activation::audit`).
    pub async fn insert_activation_records(&self, records: &[ActivationRecord]) -> Result<()> {
        let mut tx = self.begin().await?;
        for r in records {
            insert(&mut tx, r).await?;
        }
        tx.commit().await?;
        Ok(())
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
