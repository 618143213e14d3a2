//! Token signing keys (private halves encrypted by the caller before they get here).

use super::{Result, Store};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key_enc: String,
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl Store {
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        Ok(sqlx::query_as::<_, SigningKeyRow>(
            "SELECT * FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Adds a key and retires every other one from signing (they keep verifying), atomically.
    pub async fn rotate_signing_key(&self, row: &SigningKeyRow, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key_enc, public_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.kid)
        .bind(&row.private_key_enc)
        .bind(&row.public_key)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts the first key only if there is none yet (several replicas may start at once).
    pub async fn insert_first_signing_key(&self, row: &SigningKeyRow) -> Result<()> {
        let mut tx = self.begin().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM signing_keys")
            .fetch_one(&mut *tx)
            .await?;
        if n == 0 {
            sqlx::query(
                "INSERT INTO signing_keys (kid, private_key_enc, public_key, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&row.kid)
            .bind(&row.private_key_enc)
            .bind(&row.public_key)
            .bind(row.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
