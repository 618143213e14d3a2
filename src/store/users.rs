//! Users, unique per organization by normalised email and, for directory users, by (source,
//! directory id); created just in time at activation. Their lifecycle status is set by directory
//! sync: a preserved or deleted user's devices are refused.

use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
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
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub updated_at: i64,
    /// Directory attributes (v2 users), as imported at activation.
    pub display_name: Option<String>,
    pub login: Option<String>,
    pub upn: Option<String>,
    pub dn: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    /// Group DNs, stored as a JSON array.
    #[serde(serialize_with = "groups_array")]
    #[schemars(with = "Option<Vec<String>>")]
    pub groups: Option<String>,
    pub mapping_id: Option<String>,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub preserved_at: Option<i64>,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub deleted_at: Option<i64>,
    /// When the status last changed (sync's lifecycle writes check it).
    #[serde(skip)]
    pub status_changed_at: Option<i64>,
}

fn groups_array<S: serde::Serializer>(g: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    let v: Option<Vec<String>> = g.as_deref().and_then(|g| serde_json::from_str(g).ok());
    v.serialize(s)
}

/// Where a user is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    /// Gone from the directory but kept (devices refused, data kept) until an admin decides.
    Preserved,
    Deleted,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Preserved => "preserved",
            UserStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<UserStatus> {
        match s {
            "active" => Some(UserStatus::Active),
            "preserved" => Some(UserStatus::Preserved),
            "deleted" => Some(UserStatus::Deleted),
            _ => None,
        }
    }
}

impl UserRow {
    /// An unknown value in the column counts as deleted: refuse rather than let a device in.
    pub fn status(&self) -> UserStatus {
        UserStatus::parse(&self.status).unwrap_or(UserStatus::Deleted)
    }
}

/// Filters of the user list (each optional).
#[derive(Debug, Clone, Default)]
pub struct UserFilter<'a> {
    pub email: Option<&'a str>,
    pub status: Option<&'a str>,
    pub source: Option<&'a str>,
    /// A prefix of the email or user name (case-insensitive).
    pub q: Option<&'a str>,
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
    /// Directory attributes imported with a directory user (v2).
    pub attrs: Option<&'a crate::domain::directory::DirectoryAttrs>,
    pub mapping_id: Option<&'a str>,
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! user_sql {
    () => {
    pub async fn user(&self, org_id: &str, id: &str) -> crate::store::Result<UserRow> {
        sqlx::query_as::<_, UserRow>("SELECT * FROM users WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(crate::store::StoreError::NotFound)
    }

    pub async fn user_by_email(&self, org_id: &str, email_norm: &str) -> crate::store::Result<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND email_norm = $2",
        )
        .bind(org_id)
        .bind(email_norm)
        .fetch_optional(&self.read)
        .await?)
    }

    /// A directory user by its login (`login_norm`, see `store::login_norm`).
    pub async fn user_by_login(&self, org_id: &str, source: &str, login_norm: &str) -> crate::store::Result<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND source = $2 AND login_norm = $3 LIMIT 1",
        )
        .bind(org_id)
        .bind(source)
        .bind(login_norm)
        .fetch_optional(&self.read)
        .await?)
    }

    pub async fn user_by_external_id(&self, org_id: &str, source: &str, external_id: &str) -> crate::store::Result<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND source = $2 AND external_id = $3",
        )
        .bind(org_id)
        .bind(source)
        .bind(external_id)
        .fetch_optional(&self.read)
        .await?)
    }

    pub async fn user_by_upn(&self, org_id: &str, source: &str, upn: &str) -> crate::store::Result<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND source = $2 AND lower(upn) = lower($3) LIMIT 1",
        )
        .bind(org_id)
        .bind(source)
        .bind(upn)
        .fetch_optional(&self.read)
        .await?)
    }

    pub async fn set_user_status(
        &self,
        org_id: &str,
        id: &str,
        status: &str,
        now: i64,
    ) -> crate::store::Result<UserRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, UserRow>(
            "UPDATE users SET status = $3, updated_at = $4, status_changed_at = $4,
                    preserved_at = CASE WHEN $3 = 'preserved' THEN $4 ELSE NULL END
              WHERE id = $1 AND org_id = $2 RETURNING *",
        )
        .bind(id)
        .bind(org_id)
        .bind(status)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(crate::store::StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_users(
        &self,
        org_id: &str,
        f: &crate::store::UserFilter<'_>,
        page: &crate::store::Page,
    ) -> crate::store::Result<Vec<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT * FROM users WHERE org_id = $1 AND id > $2 AND ($3 IS NULL OR email_norm = $3)
               AND ($5 IS NULL OR status = $5) AND ($6 IS NULL OR source = $6)
               AND ($7 IS NULL OR LOWER(email_norm) LIKE $7 ESCAPE '\\' OR LOWER(user_name) LIKE $7 ESCAPE '\\')
             ORDER BY id LIMIT $4",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(f.email)
        .bind(i64::from(page.limit))
        .bind(f.status)
        .bind(f.source)
        .bind(f.q.map(crate::store::like_prefix))
        .fetch_all(&self.read)
        .await?)
    }
    };
}
pub(super) use user_sql;
