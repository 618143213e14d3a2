//! Devices and the identity rules that decide whether an activation is a machine we already know.
//! The rules (docs/device-identity.md) are mirrored by partial unique indexes in the schema, so the
//! database itself refuses a second active row for one machine.

use crate::domain::DeviceIdentifiers;
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, schemars::JsonSchema)]
pub struct DeviceRow {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub name: String,
    #[serde(skip)]
    pub name_norm: String,
    pub hostname: Option<String>,
    #[serde(skip)]
    pub hostname_norm: Option<String>,
    pub serial: Option<String>,
    #[serde(skip)]
    pub serial_norm: Option<String>,
    pub uuid: Option<String>,
    #[serde(skip)]
    pub uuid_norm: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub client_version: Option<String>,
    #[serde(skip)]
    pub install_key_hash: Option<String>,
    #[serde(skip)]
    pub credential_gen: i64,
    #[serde(skip)]
    pub credential_hash: String,
    pub status: String,
    pub token_id: Option<String>,
    pub replaced_by: Option<String>,
    pub replaces: Option<String>,
    pub restore_data: Option<String>,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    #[schemars(with = "crate::clock::ser::Timestamp")]
    pub last_activated_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
    #[schemars(with = "Option<crate::clock::ser::Timestamp>")]
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub report: &'a DeviceReport<'a>,
    pub install_key_hash: Option<&'a str>,
    pub credential_hash: &'a str,
    pub token_id: &'a str,
    pub restore_data: Option<&'a str>,
    pub replaces: Option<&'a str>,
}

/// A known device moving to another user (a new credential generation).
#[derive(Debug, Clone)]
pub struct Reassignment<'a> {
    pub device: &'a DeviceRow,
    pub user_id: &'a str,
    pub name: &'a str,
    pub credential_hash: &'a str,
    pub token_id: &'a str,
    pub restore_data: Option<&'a str>,
    pub replaces: Option<&'a str>,
}

/// What a client reported about its machine. Raw identifier values are kept only where they
/// normalized to something usable, so placeholders like "To Be Filled By O.E.M." never show up.
#[derive(Debug, Clone)]
pub struct DeviceReport<'a> {
    pub ids: &'a DeviceIdentifiers,
    pub hostname: Option<&'a str>,
    pub serial: Option<&'a str>,
    pub uuid: Option<&'a str>,
    pub os: Option<&'a str>,
    pub os_version: Option<&'a str>,
    pub client_version: Option<&'a str>,
}

impl DeviceReport<'_> {
    pub fn hostname(&self) -> Option<&str> {
        self.ids.hostname.as_ref().and(self.hostname)
    }
    pub fn serial(&self) -> Option<&str> {
        self.ids.serial.as_ref().and(self.serial)
    }
    pub fn uuid(&self) -> Option<&str> {
        self.ids.uuid.as_ref().and(self.uuid)
    }
}

/// What `list_devices` narrows by; `None` everywhere lists every device.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter<'a> {
    pub user_id: Option<&'a str>,
    pub status: Option<&'a str>,
    /// The operating system the client reported (case-insensitive).
    pub os: Option<&'a str>,
    /// The source of the device's user (`device_map`, `ldap`, `azure`, ...).
    pub source: Option<&'a str>,
    /// A prefix of the name, hostname, serial number or hardware UUID (case-insensitive).
    pub q: Option<&'a str>,
    /// Last activated at or after / before these times.
    pub seen_after: Option<i64>,
    pub seen_before: Option<i64>,
}

/// Display names compare case-insensitively.
pub fn name_norm(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The SQL, written once and compiled for each backend (`impl` blocks in `sqlite/` and
/// `postgres/`): `self.read` is the reader pool, `self.begin()` a write transaction.
macro_rules! device_sql {
    () => {
    pub async fn device(&self, org_id: &str, id: &str) -> crate::store::Result<DeviceRow> {
        sqlx::query_as::<_, DeviceRow>("SELECT * FROM devices WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(crate::store::StoreError::NotFound)
    }

    /// The device a presented credential authenticates, if its hash matches (constant time).
    pub async fn device_for_credential(&self, credential: &str) -> crate::store::Result<Option<DeviceRow>> {
        let Some(id) = crate::crypto::credential_device_id(credential) else {
            return Ok(None);
        };
        let d = sqlx::query_as::<_, DeviceRow>("SELECT * FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        let presented = crate::crypto::sha256_hex(credential);
        Ok(d.filter(|d| crate::crypto::ct_eq(&d.credential_hash, &presented)))
    }

    pub async fn list_devices(
        &self,
        org_id: &str,
        f: &crate::store::DeviceFilter<'_>,
        page: &crate::store::Page,
    ) -> crate::store::Result<Vec<DeviceRow>> {
        // Braces around a pasted UUID are not part of the stored (normalised) value.
        let q = f.q.map(|q| crate::store::like_prefix(q.trim_matches(['{', '}'])));
        Ok(sqlx::query_as::<_, DeviceRow>(
            "SELECT d.* FROM devices d WHERE d.org_id = $1 AND d.id > $2 AND ($3 IS NULL OR d.user_id = $3)
               AND ($4 IS NULL OR d.status = $4)
               AND ($6 IS NULL OR LOWER(d.os) = LOWER($6))
               AND ($7 IS NULL OR LOWER(d.name_norm) LIKE $7 ESCAPE '\\' OR LOWER(d.hostname_norm) LIKE $7 ESCAPE '\\'
                    OR LOWER(d.serial_norm) LIKE $7 ESCAPE '\\' OR LOWER(d.uuid_norm) LIKE $7 ESCAPE '\\')
               AND ($8 IS NULL OR d.last_activated_at >= $8)
               AND ($9 IS NULL OR d.last_activated_at < $9)
               AND ($10 IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id AND u.source = $10))
             ORDER BY d.id LIMIT $5",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(f.user_id)
        .bind(f.status)
        .bind(i64::from(page.limit))
        .bind(f.os)
        .bind(q)
        .bind(f.seen_after)
        .bind(f.seen_before)
        .bind(f.source)
        .fetch_all(&self.read)
        .await?)
    }

    /// Revokes a device: its credential stops working at once and the identity is freed, so the
    /// machine can only come back through a new mapping.
    pub async fn revoke_device(&self, org_id: &str, id: &str, now: i64) -> crate::store::Result<DeviceRow> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE devices SET status = 'revoked', revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let d =
            sqlx::query_as::<_, DeviceRow>("SELECT * FROM devices WHERE id = $1 AND org_id = $2")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(crate::store::StoreError::NotFound)?;
        tx.commit().await?;
        Ok(d)
    }
    };
}
pub(super) use device_sql;
