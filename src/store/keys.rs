//! Token signing keys (private halves encrypted by the caller before they get here).

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key_enc: String,
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! key_sql {
    () => {
    pub async fn signing_keys(&self) -> crate::store::Result<Vec<SigningKeyRow>> {
        Ok(sqlx::query_as::<_, SigningKeyRow>(
            "SELECT * FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn signing_key_exists(&self, kid: &str) -> crate::store::Result<bool> {
        Ok(sqlx::query_scalar::<_, String>("SELECT kid FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&self.read)
            .await?
            .is_some())
    }

    /// Adds a key and retires every other one from signing (they keep verifying), atomically.
    pub async fn rotate_signing_key(&self, row: &SigningKeyRow, now: i64) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        self.lock_name(&mut tx, "signing_keys").await?;
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
    pub async fn insert_first_signing_key(&self, row: &SigningKeyRow) -> crate::store::Result<()> {
        let mut tx = self.begin().await?;
        // Replicas starting together: the first to get here inserts, the others see its key.
        self.lock_name(&mut tx, "signing_keys").await?;
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
    };
}
pub(super) use key_sql;
