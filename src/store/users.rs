//! Users, unique per organization by lowercase email; created just in time at activation.

use super::{Page, Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    #[serde(skip)]
    pub email_norm: String,
    pub user_name: String,
    pub external_id: Option<String>,
    pub source: String,
    pub profile: String,
    pub storage_region: String,
    pub quota_bytes: Option<i64>,
    pub status: String,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub org_id: &'a str,
    pub email: &'a str,
    pub email_norm: &'a str,
    pub user_name: &'a str,
    pub external_id: Option<&'a str>,
    pub source: &'a str,
    pub profile: &'a str,
    pub storage_region: &'a str,
    pub quota_bytes: Option<i64>,
}

impl Store {
    pub async fn user(&self, org_id: &str, id: &str) -> Result<UserRow> {
        sqlx::query_as::<_, UserRow>("SELECT * FROM users WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn user_by_email(&self, org_id: &str, email_norm: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND email_norm = $2",
        )
        .bind(org_id)
        .bind(email_norm)
        .fetch_optional(&self.read)
        .await?)
    }

    pub async fn list_users(
        &self,
        org_id: &str,
        email: Option<&str>,
        page: &Page,
    ) -> Result<Vec<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND id > $2 AND ($3 IS NULL OR email_norm = $3)
             ORDER BY id LIMIT $4",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(email)
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }
}
