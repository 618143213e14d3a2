//! SQLite's `WriteTx`: synchronous SQL (rusqlite) on the writer thread's connection, so one
//! activation runs start to end inside one group-committed transaction with no thread hand-off
//! per statement (see `writer`). Statements are cached by rusqlite. The writer is the only
//! writer of these tables' hot rows, so reading and then writing is safe here without locks;
//! the partial unique indexes are the safety net (docs/device-identity.md).

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::domain::{DeviceIdentifiers, MappingRow};
use crate::store::{
    ActivationRecord, DeviceReport, DeviceRow, LockKey, NewDevice, NewUser, OrgRow, Reassignment,
    Result, StoredMapping, TokenRow, TxFuture, UseOutcome, UserRow, WriteTx, name_norm, new_id,
};

// Explicit column lists, read by position: looking columns up by name costs a string
// comparison per column per row, which showed up in profiles of the hot path.
macro_rules! org_cols {
    () => {
        "id, name, default_profile, default_storage_region, default_quota_bytes, require_install_key, created_at, slug, directory_outage"
    };
}
macro_rules! token_cols {
    () => {
        "id, org_id, version, name, kid, issuer, issued_at, expires_at, max_uses, uses, last_used_at, revoked_at, created_at, rotated_to, rotated_from, signed_expires_at"
    };
}
macro_rules! user_cols {
    () => {
        "id, org_id, email, email_norm, user_name, external_id, source, profile, storage_region, quota_bytes, status, created_at, updated_at, display_name, login, upn, dn, department, country, \"groups\", mapping_id, preserved_at, deleted_at, status_changed_at"
    };
}
macro_rules! device_cols {
    () => {
        "id, org_id, user_id, name, name_norm, hostname, hostname_norm, serial, serial_norm, uuid, uuid_norm, os, os_version, client_version, install_key_hash, credential_gen, credential_hash, status, token_id, replaced_by, replaces, restore_data, created_at, last_activated_at, revoked_at"
    };
}
macro_rules! mapping_cols {
    () => {
        "id, org_id, email, email_norm, user_name, device_name, identifier_type, identifier, identifier_norm, old_device_name, restore_data, created_at, updated_at, consumed_at, device_id"
    };
}

fn org_row(r: &Row<'_>) -> rusqlite::Result<OrgRow> {
    Ok(OrgRow {
        id: r.get(0)?,
        name: r.get(1)?,
        default_profile: r.get(2)?,
        default_storage_region: r.get(3)?,
        default_quota_bytes: r.get(4)?,
        require_install_key: r.get(5)?,
        created_at: r.get(6)?,
        slug: r.get(7)?,
        directory_outage: r.get(8)?,
    })
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        org_id: r.get(1)?,
        version: r.get(2)?,
        name: r.get(3)?,
        kid: r.get(4)?,
        issuer: r.get(5)?,
        issued_at: r.get(6)?,
        expires_at: r.get(7)?,
        max_uses: r.get(8)?,
        uses: r.get(9)?,
        last_used_at: r.get(10)?,
        revoked_at: r.get(11)?,
        created_at: r.get(12)?,
        rotated_to: r.get(13)?,
        rotated_from: r.get(14)?,
        signed_expires_at: r.get(15)?,
    })
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        org_id: r.get(1)?,
        email: r.get(2)?,
        email_norm: r.get(3)?,
        user_name: r.get(4)?,
        external_id: r.get(5)?,
        source: r.get(6)?,
        profile: r.get(7)?,
        storage_region: r.get(8)?,
        quota_bytes: r.get(9)?,
        status: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        display_name: r.get(13)?,
        login: r.get(14)?,
        upn: r.get(15)?,
        dn: r.get(16)?,
        department: r.get(17)?,
        country: r.get(18)?,
        groups: r.get(19)?,
        mapping_id: r.get(20)?,
        preserved_at: r.get(21)?,
        deleted_at: r.get(22)?,
        status_changed_at: r.get(23)?,
    })
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        org_id: r.get(1)?,
        user_id: r.get(2)?,
        name: r.get(3)?,
        name_norm: r.get(4)?,
        hostname: r.get(5)?,
        hostname_norm: r.get(6)?,
        serial: r.get(7)?,
        serial_norm: r.get(8)?,
        uuid: r.get(9)?,
        uuid_norm: r.get(10)?,
        os: r.get(11)?,
        os_version: r.get(12)?,
        client_version: r.get(13)?,
        install_key_hash: r.get(14)?,
        credential_gen: r.get(15)?,
        credential_hash: r.get(16)?,
        status: r.get(17)?,
        token_id: r.get(18)?,
        replaced_by: r.get(19)?,
        replaces: r.get(20)?,
        restore_data: r.get(21)?,
        created_at: r.get(22)?,
        last_activated_at: r.get(23)?,
        revoked_at: r.get(24)?,
    })
}

fn mapping_row(r: &Row<'_>) -> rusqlite::Result<StoredMapping> {
    Ok(StoredMapping {
        id: r.get(0)?,
        org_id: r.get(1)?,
        email: r.get(2)?,
        email_norm: r.get(3)?,
        user_name: r.get(4)?,
        device_name: r.get(5)?,
        identifier_type: r.get(6)?,
        identifier: r.get(7)?,
        identifier_norm: r.get(8)?,
        old_device_name: r.get(9)?,
        restore_data: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        consumed_at: r.get(13)?,
        device_id: r.get(14)?,
    })
}

pub fn org(c: &Connection, id: &str) -> Result<Option<OrgRow>> {
    Ok(
        c.prepare_cached(concat!("SELECT ", org_cols!(), " FROM orgs WHERE id = ?1"))?
            .query_row([id], org_row)
            .optional()?,
    )
}

pub fn token(c: &Connection, org_id: &str, id: &str) -> Result<Option<TokenRow>> {
    Ok(c.prepare_cached(concat!(
        "SELECT ",
        token_cols!(),
        " FROM tokens WHERE id = ?1 AND org_id = ?2"
    ))?
    .query_row([id, org_id], token_row)
    .optional()?)
}

pub fn user(c: &Connection, org_id: &str, id: &str) -> Result<Option<UserRow>> {
    Ok(c.prepare_cached(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE id = ?1 AND org_id = ?2"
    ))?
    .query_row([id, org_id], user_row)
    .optional()?)
}

/// The identity rules (docs/device-identity.md); `postgres/hot.rs` has them as one statement.
pub fn find_active(
    c: &Connection,
    org_id: &str,
    ids: &DeviceIdentifiers,
) -> Result<Option<DeviceRow>> {
    if let Some(serial) = &ids.serial {
        let d = c
            .prepare_cached(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE org_id = ?1 AND status = 'active' AND serial_norm = ?2"
            ))?
            .query_row([org_id, serial], device_row)
            .optional()?;
        if d.is_some() {
            return Ok(d);
        }
    }
    if let Some(uuid) = &ids.uuid {
        let d = c
            .prepare_cached(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE org_id = ?1 AND status = 'active' AND uuid_norm = ?2
                   AND (?3 IS NULL OR serial_norm IS NULL)
                 ORDER BY serial_norm IS NOT NULL, id LIMIT 1"
            ))?
            .query_row(params![org_id, uuid, ids.serial], device_row)
            .optional()?;
        if d.is_some() {
            return Ok(d);
        }
    }
    if let Some(host) = &ids.hostname {
        return Ok(c
            .prepare_cached(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE org_id = ?1 AND status = 'active' AND hostname_norm = ?2
                   AND serial_norm IS NULL AND uuid_norm IS NULL"
            ))?
            .query_row([org_id, host], device_row)
            .optional()?);
    }
    Ok(None)
}

/// The pending mapping for one identifier (an indexed equality look-up).
pub fn pending_mapping(
    c: &Connection,
    org_id: &str,
    kind: &str,
    value: &str,
) -> Result<Option<StoredMapping>> {
    Ok(c.prepare_cached(concat!(
        "SELECT ",
        mapping_cols!(),
        " FROM device_mappings WHERE org_id = ?1 AND identifier_type = ?2 AND identifier_norm = ?3
           AND consumed_at IS NULL"
    ))?
    .query_row([org_id, kind, value], mapping_row)
    .optional()?)
}

/// The pending mapping for these identifiers: serial, then UUID, then hostname.
pub fn find_pending(
    c: &Connection,
    org_id: &str,
    ids: &DeviceIdentifiers,
) -> Result<Option<StoredMapping>> {
    for (kind, value) in [
        ("serial-number", &ids.serial),
        ("uuid", &ids.uuid),
        ("hostname", &ids.hostname),
    ] {
        if let Some(value) = value
            && let Some(m) = pending_mapping(c, org_id, kind, value)?
        {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Why a mapping's `oldDeviceName` is unusable, if it is: it must name an active device of the
/// mapped user when that user already exists (a user this mapping will create has no devices).
pub fn old_device_problem(
    c: &Connection,
    org_id: &str,
    row: &MappingRow,
) -> Result<Option<String>> {
    let Some(old) = &row.old_device_name else {
        return Ok(None);
    };
    let user: Option<String> = c
        .prepare_cached("SELECT id FROM users WHERE org_id = ?1 AND email_norm = ?2")?
        .query_row([org_id, row.email.normalized()], |r| r.get(0))
        .optional()?;
    let Some(user_id) = user else { return Ok(None) };
    Ok(match active_by_name(c, &user_id, old)? {
        Some(_) => None,
        None => Some(format!(
            "user {} has no active device named {old:?}",
            row.email.as_str()
        )),
    })
}

pub fn user_by_email(c: &Connection, org_id: &str, email_norm: &str) -> Result<Option<UserRow>> {
    Ok(c.prepare_cached(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE org_id = ?1 AND email_norm = ?2"
    ))?
    .query_row([org_id, email_norm], user_row)
    .optional()?)
}

pub fn user_by_external_id(
    c: &Connection,
    org_id: &str,
    source: &str,
    external_id: &str,
) -> Result<Option<UserRow>> {
    Ok(c.prepare_cached(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE org_id = ?1 AND source = ?2 AND external_id = ?3"
    ))?
    .query_row([org_id, source, external_id], user_row)
    .optional()?)
}

/// Inserts the user unless the email or (source, external id) is taken: `Some` if inserted.
pub fn insert_user(c: &Connection, u: &NewUser<'_>, now: i64) -> Result<Option<UserRow>> {
    let a = crate::store::AttrCols::of(u.attrs);
    Ok(c.prepare_cached(concat!(
        "INSERT INTO users (id, org_id, email, email_norm, user_name, external_id, source, profile,
                            storage_region, quota_bytes, created_at, updated_at, login, login_norm,
                            upn, dn, department, country, \"groups\", mapping_id, display_name)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20)
         ON CONFLICT DO NOTHING
         RETURNING ",
        user_cols!()
    ))?
    .query_row(
        params![
            new_id(),
            u.org_id,
            u.email,
            u.email_norm,
            u.user_name,
            u.external_id,
            u.source,
            u.profile,
            u.storage_region,
            u.quota_bytes,
            now,
            a.login,
            a.login_norm,
            a.upn,
            a.dn,
            a.department,
            a.country,
            a.groups,
            u.mapping_id,
            a.display_name,
        ],
        user_row,
    )
    .optional()?)
}

pub fn reenable_user(c: &Connection, org_id: &str, user_id: &str, now: i64) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE users SET status = 'active', preserved_at = NULL, updated_at = ?3,
                    status_changed_at = ?3
              WHERE id = ?1 AND org_id = ?2 AND status = 'preserved'",
        )?
        .execute(params![user_id, org_id, now])?;
    if n > 0 {
        c.prepare_cached(
            "INSERT INTO user_events (id, org_id, user_id, action, reason, actor, at)
             VALUES (?1, ?2, ?3, 'reenabled', ?4, 'activation', ?5)",
        )?
        .execute(params![
            new_id(),
            org_id,
            user_id,
            crate::store::REENABLED_AT_ACTIVATION,
            now
        ])?;
    }
    Ok(n > 0)
}

pub fn link_external_id(c: &Connection, user_id: &str, u: &NewUser<'_>, now: i64) -> Result<()> {
    let a = crate::store::AttrCols::of(u.attrs);
    c.prepare_cached(
        "UPDATE users SET external_id = ?2, source = ?3, display_name = ?4, login = ?5,
                login_norm = ?6, upn = ?7, dn = ?8, department = ?9, country = ?10,
                \"groups\" = ?11, mapping_id = ?12, updated_at = ?13
          WHERE id = ?1 AND external_id IS NULL",
    )?
    .execute(params![
        user_id,
        u.external_id,
        u.source,
        a.display_name,
        a.login,
        a.login_norm,
        a.upn,
        a.dn,
        a.department,
        a.country,
        a.groups,
        u.mapping_id,
        now
    ])?;
    Ok(())
}

/// Consumes one token use unless revoked or exhausted (condition and increment in one statement).
pub fn consume_use(c: &Connection, token_id: &str, now: i64) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE tokens SET uses = uses + 1, last_used_at = ?2
             WHERE id = ?1 AND revoked_at IS NULL AND (max_uses IS NULL OR uses < max_uses)",
        )?
        .execute(params![token_id, now])?;
    Ok(n == 1)
}

pub fn touch_token(c: &Connection, token_id: &str, now: i64) -> Result<()> {
    c.prepare_cached("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1")?
        .execute(params![token_id, now])?;
    Ok(())
}

pub fn active_by_name(c: &Connection, user_id: &str, name: &str) -> Result<Option<DeviceRow>> {
    Ok(c.prepare_cached(concat!("SELECT ", device_cols!(), " FROM devices WHERE user_id = ?1 AND status = 'active' AND name_norm = ?2 ORDER BY id LIMIT 1"))?
    .query_row([user_id, &name_norm(name)], device_row)
    .optional()?)
}

pub fn active_by_hostname(
    c: &Connection,
    user_id: &str,
    hostname_norm: &str,
) -> Result<Option<DeviceRow>> {
    Ok(c.prepare_cached(concat!("SELECT ", device_cols!(), " FROM devices WHERE user_id = ?1 AND status = 'active' AND hostname_norm = ?2 ORDER BY id LIMIT 1"))?
    .query_row([user_id, hostname_norm], device_row)
    .optional()?)
}

pub fn mark_replaced(c: &Connection, old_id: &str, new_id: &str) -> Result<bool> {
    let n = c
        .prepare_cached("UPDATE devices SET status = 'replaced', replaced_by = ?2 WHERE id = ?1 AND status = 'active'")?
        .execute([old_id, new_id])?;
    Ok(n == 1)
}

pub fn insert_device(c: &Connection, d: &NewDevice<'_>, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO devices (id, org_id, user_id, name, name_norm, hostname, hostname_norm, serial, serial_norm,
                              uuid, uuid_norm, os, os_version, client_version, install_key_hash,
                              credential_hash, token_id, restore_data, replaces, created_at, last_activated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?20)",
    )?
    .execute(params![
        d.id,
        d.org_id,
        d.user_id,
        d.name,
        name_norm(d.name),
        d.report.hostname(),
        d.report.ids.hostname,
        d.report.serial(),
        d.report.ids.serial,
        d.report.uuid(),
        d.report.ids.uuid,
        d.report.os,
        d.report.os_version,
        d.report.client_version,
        d.install_key_hash,
        d.credential_hash,
        d.token_id,
        d.restore_data,
        d.replaces,
        now
    ])?;
    Ok(())
}

/// A repeat: what the client reports now, identifiers it could not read before, a new display
/// name from a fresh mapping of the same user.
pub fn refresh(
    c: &Connection,
    d: &DeviceRow,
    report: &DeviceReport<'_>,
    name: Option<&str>,
    install_key_hash: Option<&str>,
    now: i64,
) -> Result<bool> {
    let n = c.prepare_cached(
        "UPDATE devices SET hostname = COALESCE(?3, hostname), hostname_norm = COALESCE(?4, hostname_norm),
                serial = COALESCE(serial, ?5), serial_norm = COALESCE(serial_norm, ?6),
                uuid = COALESCE(uuid, ?7), uuid_norm = COALESCE(uuid_norm, ?8),
                os = COALESCE(?9, os), os_version = COALESCE(?10, os_version),
                client_version = COALESCE(?11, client_version),
                name = COALESCE(?12, name), name_norm = COALESCE(?13, name_norm),
                install_key_hash = COALESCE(install_key_hash, ?14), last_activated_at = ?15
         WHERE id = ?1 AND user_id = ?2 AND status = 'active'",
    )?
    .execute(params![
        d.id,
        d.user_id,
        report.hostname(),
        report.ids.hostname,
        report.serial(),
        report.ids.serial,
        report.uuid(),
        report.ids.uuid,
        report.os,
        report.os_version,
        report.client_version,
        name,
        name.map(name_norm),
        install_key_hash,
        now
    ])?;
    Ok(n == 1)
}

/// Moves a device to another user with a new credential generation.
pub fn reassign(c: &Connection, r: &Reassignment<'_>, now: i64) -> Result<bool> {
    let n = c.prepare_cached(
        "UPDATE devices SET user_id = ?2, name = ?3, name_norm = ?4, credential_gen = credential_gen + 1,
                credential_hash = ?5, token_id = ?6, restore_data = ?7, replaces = ?8, last_activated_at = ?9
         WHERE id = ?1 AND status = 'active' AND user_id = ?10 AND credential_gen = ?11",
    )?
    .execute(params![
        r.device.id,
        r.user_id,
        r.name,
        name_norm(r.name),
        r.credential_hash,
        r.token_id,
        r.restore_data,
        r.replaces,
        now,
        r.device.user_id,
        r.device.credential_gen
    ])?;
    Ok(n == 1)
}

pub fn consume_mapping(
    c: &Connection,
    mapping_id: &str,
    email_norm: &str,
    device_id: &str,
    now: i64,
) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE device_mappings SET consumed_at = ?3, device_id = ?2
             WHERE id = ?1 AND consumed_at IS NULL AND email_norm = ?4",
        )?
        .execute(params![mapping_id, device_id, now, email_norm])?;
    Ok(n == 1)
}

pub fn insert_activation(c: &Connection, r: &ActivationRecord) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO activations (id, org_id, token_id, created_at, outcome, status, device_id, user_id,
                                  hostname, serial, uuid, login, remote_ip, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        new_id(),
        r.org_id,
        r.token_id,
        r.created_at,
        r.outcome,
        r.status,
        r.device_id,
        r.user_id,
        r.hostname,
        r.serial,
        r.uuid,
        r.login,
        r.remote_ip,
        r.message
    ])?;
    Ok(())
}

/// Inserts or updates (by identifier) one pending mapping.
pub fn upsert_mapping(c: &Connection, org_id: &str, r: &MappingRow, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO device_mappings (id, org_id, email, email_norm, user_name, device_name, identifier_type,
                                      identifier, identifier_norm, old_device_name, restore_data, created_at,
                                      updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
         ON CONFLICT (org_id, identifier_type, identifier_norm) WHERE consumed_at IS NULL DO UPDATE SET
           email = excluded.email, email_norm = excluded.email_norm, user_name = excluded.user_name,
           device_name = excluded.device_name, identifier = excluded.identifier,
           old_device_name = excluded.old_device_name, restore_data = excluded.restore_data,
           updated_at = excluded.updated_at",
    )?
    .execute(params![
        new_id(),
        org_id,
        r.email.as_str(),
        r.email.normalized(),
        r.user_name,
        r.device_name,
        r.identifier_type.as_str(),
        r.identifier,
        r.identifier_norm,
        r.old_device_name,
        r.restore_data.map(|x| x.as_str()),
        now
    ])?;
    Ok(())
}

/// Pending mappings of an organization. Under SQLite's write lock nobody else changes them, so
/// the difference before and after an import is exactly what it created.
pub fn count_pending(c: &Connection, org_id: &str) -> Result<u64> {
    let n: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM device_mappings WHERE org_id = ?1 AND consumed_at IS NULL",
        )?
        .query_row([org_id], |r| r.get(0))?;
    Ok(n as u64)
}

/// The writer's connection seen as a `WriteTx`. Every step completes synchronously.
pub struct SqliteTx<'c>(pub &'c mut Connection);

fn ready<'a, T: Send + 'a>(r: Result<T>) -> TxFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

impl WriteTx for SqliteTx<'_> {
    fn begin_activation<'a>(
        &'a mut self,
        org_id: &'a str,
        token_id: &'a str,
        _locks: &'a [LockKey],
    ) -> TxFuture<'a, (Option<OrgRow>, Option<TokenRow>)> {
        // No locks: the writer thread runs one job at a time.
        let c = &*self.0;
        ready((|| Ok((org(c, org_id)?, token(c, org_id, token_id)?)))())
    }
    fn find_active<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        ready(find_active(&*self.0, org_id, ids))
    }
    fn user<'a>(&'a mut self, org_id: &'a str, id: &'a str) -> TxFuture<'a, Option<UserRow>> {
        ready(user(&*self.0, org_id, id))
    }
    fn user_by_email<'a>(
        &'a mut self,
        org_id: &'a str,
        email_norm: &'a str,
    ) -> TxFuture<'a, Option<UserRow>> {
        ready(user_by_email(&*self.0, org_id, email_norm))
    }
    fn user_by_external_id<'a>(
        &'a mut self,
        org_id: &'a str,
        source: &'a str,
        external_id: &'a str,
    ) -> TxFuture<'a, Option<UserRow>> {
        ready(user_by_external_id(&*self.0, org_id, source, external_id))
    }
    fn user_by_email_or_insert<'a>(
        &'a mut self,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, Option<(UserRow, bool)>> {
        let c = &*self.0;
        ready((|| {
            if let Some(found) = user_by_email(c, u.org_id, u.email_norm)? {
                return Ok(Some((found, false)));
            }
            Ok(insert_user(c, u, now)?.map(|created| (created, true)))
        })())
    }
    fn link_external_id<'a>(
        &'a mut self,
        user_id: &'a str,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, ()> {
        ready(link_external_id(&*self.0, user_id, u, now))
    }
    fn reenable_user<'a>(
        &'a mut self,
        org_id: &'a str,
        user_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool> {
        ready(reenable_user(&*self.0, org_id, user_id, now))
    }
    fn find_pending<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<StoredMapping>> {
        ready(find_pending(&*self.0, org_id, ids))
    }
    fn pending_mapping<'a>(
        &'a mut self,
        org_id: &'a str,
        kind: &'a str,
        value_norm: &'a str,
    ) -> TxFuture<'a, Option<StoredMapping>> {
        ready(pending_mapping(&*self.0, org_id, kind, value_norm))
    }
    fn active_by_name<'a>(
        &'a mut self,
        user_id: &'a str,
        name: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        ready(active_by_name(&*self.0, user_id, name))
    }
    fn active_by_hostname<'a>(
        &'a mut self,
        user_id: &'a str,
        hostname_norm: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        ready(active_by_hostname(&*self.0, user_id, hostname_norm))
    }
    fn mark_replaced<'a>(&'a mut self, old_id: &'a str, new_id: &'a str) -> TxFuture<'a, bool> {
        ready(mark_replaced(&*self.0, old_id, new_id))
    }
    fn insert_device<'a>(&'a mut self, d: &'a NewDevice<'a>, now: i64) -> TxFuture<'a, ()> {
        ready(insert_device(&*self.0, d, now))
    }
    fn refresh_device<'a>(
        &'a mut self,
        d: &'a DeviceRow,
        report: &'a DeviceReport<'a>,
        name: Option<&'a str>,
        install_key_hash: Option<&'a str>,
        now: i64,
    ) -> TxFuture<'a, bool> {
        ready(refresh(&*self.0, d, report, name, install_key_hash, now))
    }
    fn reassign_device<'a>(&'a mut self, r: &'a Reassignment<'a>, now: i64) -> TxFuture<'a, bool> {
        ready(reassign(&*self.0, r, now))
    }
    fn consume_mapping<'a>(
        &'a mut self,
        mapping_id: &'a str,
        email_norm: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool> {
        ready(consume_mapping(
            &*self.0, mapping_id, email_norm, device_id, now,
        ))
    }
    fn touch_token<'a>(&'a mut self, token: &'a TokenRow, now: i64) -> TxFuture<'a, ()> {
        ready(touch_token(&*self.0, &token.id, now))
    }
    fn insert_activation<'a>(&'a mut self, r: &'a ActivationRecord) -> TxFuture<'a, ()> {
        ready(insert_activation(&*self.0, r))
    }
    fn finish_activation<'a>(
        &'a mut self,
        r: &'a ActivationRecord,
        take_use: Option<&'a TokenRow>,
        now: i64,
    ) -> TxFuture<'a, UseOutcome> {
        let c = &*self.0;
        ready((|| {
            insert_activation(c, r)?;
            Ok(match take_use {
                // One writer: revocation was checked in this same transaction, so a refused
                // use means none are left.
                Some(t) if !consume_use(c, &t.id, now)? => UseOutcome::Exhausted,
                _ => UseOutcome::Taken,
            })
        })())
    }
    fn old_device_problem<'a>(
        &'a mut self,
        org_id: &'a str,
        row: &'a MappingRow,
    ) -> TxFuture<'a, Option<String>> {
        ready(old_device_problem(&*self.0, org_id, row))
    }
    fn upsert_mappings<'a>(
        &'a mut self,
        org_id: &'a str,
        rows: &'a [MappingRow],
        now: i64,
    ) -> TxFuture<'a, ()> {
        let c = &*self.0;
        ready(
            rows.iter()
                .try_for_each(|r| upsert_mapping(c, org_id, r, now)),
        )
    }
}
