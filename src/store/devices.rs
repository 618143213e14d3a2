//! Devices and the identity rules that decide whether an activation is a machine we already know.
//! The rules (docs/device-identity.md) are mirrored by partial unique indexes in the schema, so the
//! database itself refuses a second active row for one machine.

use super::{Conn, Page, Result, Store, StoreError};
use crate::domain::DeviceIdentifiers;
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
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
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts")]
    pub last_activated_at: i64,
    #[serde(serialize_with = "crate::clock::ser::ts_opt")]
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
    pub(crate) fn hostname(&self) -> Option<&str> {
        self.ids.hostname.as_ref().and(self.hostname)
    }
    pub(crate) fn serial(&self) -> Option<&str> {
        self.ids.serial.as_ref().and(self.serial)
    }
    pub(crate) fn uuid(&self) -> Option<&str> {
        self.ids.uuid.as_ref().and(self.uuid)
    }
}

/// Display names compare case-insensitively.
pub fn name_norm(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The active device these identifiers denote, if any:
/// 1. same serial;
/// 2. else same UUID, unless both sides have a serial (then they differ: a cloned image);
/// 3. else same hostname on a device that has neither serial nor UUID (a machine whose agent could
///    not read them before; the repeat then records them).
pub async fn find_active(
    conn: &mut Conn,
    org_id: &str,
    ids: &DeviceIdentifiers,
) -> Result<Option<DeviceRow>> {
    if let Some(serial) = &ids.serial {
        let d = sqlx::query_as::<_, DeviceRow>(
            "SELECT * FROM devices WHERE org_id = $1 AND status = 'active' AND serial_norm = $2",
        )
        .bind(org_id)
        .bind(serial)
        .fetch_optional(&mut *conn)
        .await?;
        if d.is_some() {
            return Ok(d);
        }
    }
    if let Some(uuid) = &ids.uuid {
        let d = sqlx::query_as::<_, DeviceRow>(
            "SELECT * FROM devices WHERE org_id = $1 AND status = 'active' AND uuid_norm = $2
               AND ($3 IS NULL OR serial_norm IS NULL)
             ORDER BY serial_norm IS NOT NULL, id LIMIT 1",
        )
        .bind(org_id)
        .bind(uuid)
        .bind(ids.serial.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        if d.is_some() {
            return Ok(d);
        }
    }
    if let Some(host) = &ids.hostname {
        return Ok(sqlx::query_as::<_, DeviceRow>(
            "SELECT * FROM devices WHERE org_id = $1 AND status = 'active' AND hostname_norm = $2
                   AND serial_norm IS NULL AND uuid_norm IS NULL",
        )
        .bind(org_id)
        .bind(host)
        .fetch_optional(&mut *conn)
        .await?);
    }
    Ok(None)
}

pub async fn insert(conn: &mut Conn, d: &NewDevice<'_>, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (id, org_id, user_id, name, name_norm, hostname, hostname_norm, serial, serial_norm,
                              uuid, uuid_norm, os, os_version, client_version, install_key_hash,
                              credential_hash, token_id, restore_data, replaces, created_at, last_activated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20)",
    )
    .bind(d.id)
    .bind(d.org_id)
    .bind(d.user_id)
    .bind(d.name)
    .bind(name_norm(d.name))
    .bind(d.report.hostname())
    .bind(d.report.ids.hostname.as_deref())
    .bind(d.report.serial())
    .bind(d.report.ids.serial.as_deref())
    .bind(d.report.uuid())
    .bind(d.report.ids.uuid.as_deref())
    .bind(d.report.os)
    .bind(d.report.os_version)
    .bind(d.report.client_version)
    .bind(d.install_key_hash)
    .bind(d.credential_hash)
    .bind(d.token_id)
    .bind(d.restore_data)
    .bind(d.replaces)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Refreshes a known device on a repeated activation: what the client reports now, identifiers
/// it could not read before, and (for a fresh mapping of the same user) a new display name.
/// Conditional on the state the caller saw, so a concurrent change yields `Conflict`.
pub async fn refresh(
    conn: &mut Conn,
    d: &DeviceRow,
    report: &DeviceReport<'_>,
    name: Option<&str>,
    install_key_hash: Option<&str>,
    now: i64,
) -> Result<()> {
    let r = sqlx::query(
        "UPDATE devices SET hostname = COALESCE($3, hostname), hostname_norm = COALESCE($4, hostname_norm),
                serial = COALESCE(serial, $5), serial_norm = COALESCE(serial_norm, $6),
                uuid = COALESCE(uuid, $7), uuid_norm = COALESCE(uuid_norm, $8),
                os = COALESCE($9, os), os_version = COALESCE($10, os_version),
                client_version = COALESCE($11, client_version),
                name = COALESCE($12, name), name_norm = COALESCE($13, name_norm),
                install_key_hash = COALESCE(install_key_hash, $14), last_activated_at = $15
         WHERE id = $1 AND user_id = $2 AND status = 'active'",
    )
    .bind(&d.id)
    .bind(&d.user_id)
    .bind(report.hostname())
    .bind(report.ids.hostname.as_deref())
    .bind(report.serial())
    .bind(report.ids.serial.as_deref())
    .bind(report.uuid())
    .bind(report.ids.uuid.as_deref())
    .bind(report.os)
    .bind(report.os_version)
    .bind(report.client_version)
    .bind(name)
    .bind(name.map(name_norm))
    .bind(install_key_hash)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

/// Moves a device to another user (a mapping said so); a new credential generation cuts off the
/// previous user's client.
#[allow(clippy::too_many_arguments)]
pub async fn reassign(
    conn: &mut Conn,
    d: &DeviceRow,
    user_id: &str,
    name: &str,
    credential_hash: &str,
    token_id: &str,
    restore_data: Option<&str>,
    replaces: Option<&str>,
    now: i64,
) -> Result<()> {
    let r = sqlx::query(
        "UPDATE devices SET user_id = $3, name = $4, name_norm = $5, credential_gen = credential_gen + 1,
                credential_hash = $6, token_id = $7, restore_data = $8, replaces = $9, last_activated_at = $10
         WHERE id = $1 AND user_id = $2 AND status = 'active' AND credential_gen = $11",
    )
    .bind(&d.id)
    .bind(&d.user_id)
    .bind(user_id)
    .bind(name)
    .bind(name_norm(name))
    .bind(credential_hash)
    .bind(token_id)
    .bind(restore_data)
    .bind(replaces)
    .bind(now)
    .bind(d.credential_gen)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

/// Marks `old_id` replaced by `new_id`; `false` when it was no longer active.
pub async fn mark_replaced(conn: &mut Conn, old_id: &str, new_id: &str) -> Result<bool> {
    let r = sqlx::query("UPDATE devices SET status = 'replaced', replaced_by = $2 WHERE id = $1 AND status = 'active'")
        .bind(old_id)
        .bind(new_id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// One of the user's active devices by display name (case-insensitive).
pub async fn active_by_name(
    conn: &mut Conn,
    user_id: &str,
    name: &str,
) -> Result<Option<DeviceRow>> {
    Ok(sqlx::query_as::<_, DeviceRow>(
        "SELECT * FROM devices WHERE user_id = $1 AND status = 'active' AND name_norm = $2 ORDER BY id LIMIT 1",
    )
    .bind(user_id)
    .bind(name_norm(name))
    .fetch_optional(&mut *conn)
    .await?)
}

/// One of the user's active devices by short hostname.
pub async fn active_by_hostname(
    conn: &mut Conn,
    user_id: &str,
    hostname_norm: &str,
) -> Result<Option<DeviceRow>> {
    Ok(sqlx::query_as::<_, DeviceRow>(
        "SELECT * FROM devices WHERE user_id = $1 AND status = 'active' AND hostname_norm = $2 ORDER BY id LIMIT 1",
    )
    .bind(user_id)
    .bind(hostname_norm)
    .fetch_optional(&mut *conn)
    .await?)
}

impl Store {
    pub async fn find_active_device(
        &self,
        org_id: &str,
        ids: &DeviceIdentifiers,
    ) -> Result<Option<DeviceRow>> {
        let mut conn = self.read.acquire().await?;
        find_active(&mut conn, org_id, ids).await
    }

    /// Whether the user with this email has an active device with this name (CSV validation).
    pub async fn user_has_device_named(
        &self,
        org_id: &str,
        email_norm: &str,
        name: &str,
    ) -> Result<Option<bool>> {
        let user: Option<(String,)> =
            sqlx::query_as("SELECT id FROM users WHERE org_id = $1 AND email_norm = $2")
                .bind(org_id)
                .bind(email_norm)
                .fetch_optional(&self.read)
                .await?;
        let Some((user_id,)) = user else {
            return Ok(None);
        };
        let mut conn = self.read.acquire().await?;
        Ok(Some(
            active_by_name(&mut conn, &user_id, name).await?.is_some(),
        ))
    }

    pub async fn device(&self, org_id: &str, id: &str) -> Result<DeviceRow> {
        sqlx::query_as::<_, DeviceRow>("SELECT * FROM devices WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn device_by_credential(&self, credential_hash: &str) -> Result<Option<DeviceRow>> {
        Ok(
            sqlx::query_as::<_, DeviceRow>("SELECT * FROM devices WHERE credential_hash = $1")
                .bind(credential_hash)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    pub async fn list_devices(
        &self,
        org_id: &str,
        user_id: Option<&str>,
        status: Option<&str>,
        page: &Page,
    ) -> Result<Vec<DeviceRow>> {
        Ok(sqlx::query_as::<_, DeviceRow>(
            "SELECT * FROM devices WHERE org_id = $1 AND id > $2 AND ($3 IS NULL OR user_id = $3)
               AND ($4 IS NULL OR status = $4) ORDER BY id LIMIT $5",
        )
        .bind(org_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(user_id)
        .bind(status)
        .bind(i64::from(page.limit))
        .fetch_all(&self.read)
        .await?)
    }

    /// Revokes a device: its credential stops working at once and the identity is freed, so the
    /// machine can only come back through a new mapping.
    pub async fn revoke_device(&self, org_id: &str, id: &str, now: i64) -> Result<DeviceRow> {
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
                .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(d)
    }
}
