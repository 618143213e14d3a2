//! Mass-deployment token rows: the server-side state of each JWT (revocation, expiry, uses).
//! The token string itself is never stored; it can be re-derived from the row and its signing key.

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct TokenRow {
    pub id: String,
    pub org_id: String,
    pub version: String,
    pub name: String,
    pub kid: String,
    pub issuer: String,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub issued_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub last_used_at: Option<i64>,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub revoked_at: Option<i64>,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    /// The successor minted by a rotation; this token stops at its (grace) expiry.
    pub rotated_to: Option<String>,
    pub rotated_from: Option<String>,
    /// The `exp` signed into the token string (rotation shortens `expires_at`, not this).
    #[serde(skip)]
    pub signed_expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub version: &'a str,
    pub name: &'a str,
    pub kid: &'a str,
    pub issuer: &'a str,
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
}

/// What a rotation did: the predecessor (with its grace expiry) and the successor.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub previous: TokenRow,
    pub successor: TokenRow,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! token_sql {
    () => {
    pub async fn insert_token(&self, t: &NewToken<'_>) -> crate::store::Result<TokenRow> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (id, org_id, version, name, kid, issuer, issued_at, expires_at, max_uses, created_at,
                                 signed_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $7, $8)",
        )
        .bind(t.id)
        .bind(t.org_id)
        .bind(t.version)
        .bind(t.name)
        .bind(t.kid)
        .bind(t.issuer)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .bind(t.max_uses)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query_as::<_, TokenRow>("SELECT * FROM token_view WHERE id = $1")
            .bind(t.id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn token(&self, org_id: &str, id: &str) -> crate::store::Result<TokenRow> {
        sqlx::query_as::<_, TokenRow>("SELECT * FROM token_view WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(crate::store::StoreError::NotFound)
    }

    pub async fn org_and_token(
        &self,
        org_id: &str,
        token_id: &str,
    ) -> crate::store::Result<(Option<crate::store::OrgRow>, Option<TokenRow>)> {
        let org = sqlx::query_as::<_, crate::store::OrgRow>("SELECT * FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?;
        let token = sqlx::query_as::<_, TokenRow>(
            "SELECT * FROM token_view WHERE id = $1 AND org_id = $2",
        )
        .bind(token_id)
        .bind(org_id)
        .fetch_optional(&self.read)
        .await?;
        Ok((org, token))
    }

    pub async fn list_tokens(&self, org_id: &str, page: &crate::store::Page) -> crate::store::Result<Vec<TokenRow>> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT * FROM token_view WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }

    /// Revokes a token; revoking twice keeps the first time. Devices stay activated.
    pub async fn revoke_token(&self, org_id: &str, id: &str, now: i64) -> crate::store::Result<TokenRow> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row =
            sqlx::query_as::<_, TokenRow>("SELECT * FROM token_view WHERE id = $1 AND org_id = $2")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(crate::store::StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Rotates a token atomically: inserts the successor and cuts the predecessor's life to
    /// `grace_until` (never lengthening it). `Ok(None)`: the token is revoked or already rotated.
    pub async fn rotate_token(
        &self,
        org_id: &str,
        id: &str,
        successor: &NewToken<'_>,
        grace_until: i64,
    ) -> crate::store::Result<Option<Rotation>> {
        let mut tx = self.begin().await?;
        // Two rotations of one token at once: the second waits, then sees `rotated_to` set.
        self.lock_org(&mut tx, org_id).await?;
        let old =
            sqlx::query_as::<_, TokenRow>("SELECT * FROM token_view WHERE id = $1 AND org_id = $2")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(crate::store::StoreError::NotFound)?;
        if old.revoked_at.is_some() || old.rotated_to.is_some() {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO tokens (id, org_id, version, name, kid, issuer, issued_at, expires_at, max_uses, created_at,
                                 rotated_from, signed_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $7, $10, $8)",
        )
        .bind(successor.id)
        .bind(successor.org_id)
        .bind(successor.version)
        .bind(successor.name)
        .bind(successor.kid)
        .bind(successor.issuer)
        .bind(successor.issued_at)
        .bind(successor.expires_at)
        .bind(successor.max_uses)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE tokens SET rotated_to = $3,
                    expires_at = CASE WHEN expires_at IS NULL OR expires_at > $4 THEN $4 ELSE expires_at END
             WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .bind(successor.id)
        .bind(grace_until)
        .execute(&mut *tx)
        .await?;
        let fetch = |tid: &str| {
            sqlx::query_as::<_, TokenRow>("SELECT * FROM token_view WHERE id = $1")
                .bind(tid.to_string())
        };
        let previous = fetch(id).fetch_one(&mut *tx).await?;
        let successor = fetch(successor.id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(Rotation {
            previous,
            successor,
        }))
    }
    };
}
pub(super) use token_sql;
