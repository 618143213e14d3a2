//! PostgreSQL's `WriteTx`: one short READ COMMITTED transaction per job on a pooled connection.
//! Concurrency across replicas rests on three things:
//! - transaction-scoped advisory locks on the identities a job names (each device identifier,
//!   the user), taken first, so two activations of one machine or one user run one after the
//!   other and each reads what the other wrote;
//! - conditional single-statement writes (`... WHERE consumed_at IS NULL`, `uses < max_uses`,
//!   `ON CONFLICT DO NOTHING`), whose row re-check under READ COMMITTED makes them exact;
//! - the partial unique indexes, whose violations surface as `Conflict` and are retried.
//!
//! Round trips are what cost here (postgres.md §2g), so each step is one statement: identity
//! look-ups are one `UNION ALL`, the org and token one join, the use counter one CTE.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Postgres, Row};

use crate::domain::{DeviceIdentifiers, MappingRow};
use crate::store::{
    ActivationRecord, DeviceReport, DeviceRow, DeviceWrite, LockKey, NewDevice, NewUser, OrgRow,
    Reassignment, StoredMapping, TokenRow, TxFuture, UseOutcome, UserRow, WriteTx, name_norm,
    new_id,
};

/// Use counters of tokens without `max_uses` spread over this many rows.
const USE_SHARDS: i64 = 16;
/// `last_used_at` is written at most this often per token (it is a hot row).
const TOUCH_EVERY: i64 = 60;

pub(super) struct PgTx {
    pub tx: sqlx::Transaction<'static, Postgres>,
}

impl PgTx {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

fn org_token_row(r: &PgRow) -> Result<(OrgRow, Option<TokenRow>), sqlx::Error> {
    let org = OrgRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        default_profile: r.try_get(2)?,
        default_storage_region: r.try_get(3)?,
        default_quota_bytes: r.try_get(4)?,
        require_install_key: r.try_get(5)?,
        created_at: r.try_get(6)?,
        // Appended after the token's columns, so the positions above stay put.
        slug: r.try_get(23)?,
        directory_outage: r.try_get(24)?,
    };
    let token_id: Option<String> = r.try_get(7)?;
    let token = match token_id {
        None => None,
        Some(id) => Some(TokenRow {
            id,
            org_id: r.try_get(8)?,
            version: r.try_get(9)?,
            name: r.try_get(10)?,
            kid: r.try_get(11)?,
            issuer: r.try_get(12)?,
            issued_at: r.try_get(13)?,
            expires_at: r.try_get(14)?,
            max_uses: r.try_get(15)?,
            uses: r.try_get(16)?,
            last_used_at: r.try_get(17)?,
            revoked_at: r.try_get(18)?,
            created_at: r.try_get(19)?,
            rotated_to: r.try_get(20)?,
            rotated_from: r.try_get(21)?,
            signed_expires_at: r.try_get(22)?,
        }),
    };
    Ok((org, token))
}

/// Reads the organization and (if it belongs to it) the token in one statement. `locks`, when
/// given, are taken first in the same statement; its snapshot predates them, which is fine for
/// these two rows (nothing the locks protect).
pub(super) async fn org_and_token(
    conn: &mut PgConnection,
    org_id: &str,
    token_id: &str,
    locks: &[i64],
) -> crate::store::Result<(Option<OrgRow>, Option<TokenRow>)> {
    let row = sqlx::query(
        "SELECT o.id, o.name, o.default_profile, o.default_storage_region, o.default_quota_bytes,
                o.require_install_key, o.created_at,
                t.id, t.org_id, t.version, t.name, t.kid, t.issuer, t.issued_at, t.expires_at,
                t.max_uses, t.uses, t.last_used_at, t.revoked_at, t.created_at, t.rotated_to,
                t.rotated_from, t.signed_expires_at, o.slug, o.directory_outage
         FROM orgs o
         CROSS JOIN (SELECT count(pg_advisory_xact_lock(k)) FROM unnest($3::bigint[]) AS k) AS l
         LEFT JOIN token_view t ON t.id = $2 AND t.org_id = o.id
         WHERE o.id = $1",
    )
    .bind(org_id)
    .bind(token_id)
    .bind(locks)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => {
            if !locks.is_empty() {
                // No such organization: nothing to protect, but keep the lock order promise.
                sqlx::query(
                    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k",
                )
                .bind(locks)
                .execute(&mut *conn)
                .await?;
            }
            Ok((None, None))
        }
        Some(r) => {
            let (org, token) = org_token_row(&r)?;
            Ok((Some(org), token))
        }
    }
}

pub(super) async fn old_device_problem(
    conn: &mut PgConnection,
    org_id: &str,
    row: &MappingRow,
) -> crate::store::Result<Option<String>> {
    let Some(old) = &row.old_device_name else {
        return Ok(None);
    };
    let found: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT u.id, d.id FROM users u
         LEFT JOIN devices d ON d.user_id = u.id AND d.status = 'active' AND d.name_norm = $3
         WHERE u.org_id = $1 AND u.email_norm = $2 LIMIT 1",
    )
    .bind(org_id)
    .bind(row.email.normalized())
    .bind(name_norm(old))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match found {
        None | Some((_, Some(_))) => None,
        Some((_, None)) => Some(format!(
            "user {} has no active device named {old:?}",
            row.email.as_str()
        )),
    })
}

/// One multi-row upsert per batch (`unnest` of column arrays): a round trip per 1,000 rows
/// instead of per row. The parser rejects duplicate identifiers, so no row appears twice.
/// Returns how many rows were new (`xmax = 0`: no previous version of the row).
pub(super) async fn upsert_mappings(
    conn: &mut PgConnection,
    org_id: &str,
    rows: &[MappingRow],
    now: i64,
) -> crate::store::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut cols: [Vec<Option<String>>; 10] = Default::default();
    for r in rows {
        let vals = [
            Some(new_id()),
            Some(r.email.as_str().to_string()),
            Some(r.email.normalized().to_string()),
            Some(r.user_name.clone()),
            Some(r.device_name.clone()),
            Some(r.identifier_type.as_str().to_string()),
            Some(r.identifier.clone()),
            Some(r.identifier_norm.clone()),
            r.old_device_name.clone(),
            r.restore_data.map(|x| x.as_str().to_string()),
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
    }
    let [
        ids,
        emails,
        email_norms,
        users,
        devices,
        kinds,
        idents,
        ident_norms,
        olds,
        restores,
    ] = cols;
    let inserted = sqlx::query(
        "INSERT INTO device_mappings (id, org_id, email, email_norm, user_name, device_name, identifier_type,
                                      identifier, identifier_norm, old_device_name, restore_data, created_at,
                                      updated_at)
         SELECT u.id, $1, u.email, u.email_norm, u.user_name, u.device_name, u.kind, u.ident, u.ident_norm,
                u.old, u.restore, $12, $12
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::text[], $11::text[])
              AS u(id, email, email_norm, user_name, device_name, kind, ident, ident_norm, old, restore)
         ON CONFLICT (org_id, identifier_type, identifier_norm) WHERE consumed_at IS NULL DO UPDATE SET
           email = excluded.email, email_norm = excluded.email_norm, user_name = excluded.user_name,
           device_name = excluded.device_name, identifier = excluded.identifier,
           old_device_name = excluded.old_device_name, restore_data = excluded.restore_data,
           updated_at = excluded.updated_at
         RETURNING (xmax = 0)",
    )
    .bind(org_id)
    .bind(ids)
    .bind(emails)
    .bind(email_norms)
    .bind(users)
    .bind(devices)
    .bind(kinds)
    .bind(idents)
    .bind(ident_norms)
    .bind(olds)
    .bind(restores)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted.iter().filter(|r| r.get::<bool, _>(0)).count() as u64)
}

impl WriteTx for PgTx {
    fn begin_activation<'a>(
        &'a mut self,
        org_id: &'a str,
        token_id: &'a str,
        locks: &'a [LockKey],
    ) -> TxFuture<'a, (Option<OrgRow>, Option<TokenRow>)> {
        Box::pin(async move {
            // Sorted, so two jobs that share keys take them in the same order (no deadlock).
            let mut keys: Vec<i64> = locks.iter().map(LockKey::hash64).collect();
            keys.sort_unstable();
            keys.dedup();
            org_and_token(self.conn(), org_id, token_id, &keys).await
        })
    }

    fn find_active<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, DeviceRow>(
                "SELECT * FROM (
                   (SELECT *, 0 AS prio FROM devices
                     WHERE org_id = $1 AND status = 'active' AND serial_norm = $2)
                   UNION ALL
                   (SELECT *, 1 AS prio FROM devices
                     WHERE org_id = $1 AND status = 'active' AND uuid_norm = $3
                       AND ($2::text IS NULL OR serial_norm IS NULL))
                   UNION ALL
                   (SELECT *, 2 AS prio FROM devices
                     WHERE org_id = $1 AND status = 'active' AND hostname_norm = $4
                       AND serial_norm IS NULL AND uuid_norm IS NULL)
                 ) AS m ORDER BY prio, (serial_norm IS NOT NULL), id LIMIT 1",
            )
            .bind(org_id)
            .bind(ids.serial.as_deref())
            .bind(ids.uuid.as_deref())
            .bind(ids.hostname.as_deref())
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn user<'a>(&'a mut self, org_id: &'a str, id: &'a str) -> TxFuture<'a, Option<UserRow>> {
        Box::pin(async move {
            Ok(
                sqlx::query_as::<_, UserRow>("SELECT * FROM users WHERE id = $1 AND org_id = $2")
                    .bind(id)
                    .bind(org_id)
                    .fetch_optional(self.conn())
                    .await?,
            )
        })
    }

    fn user_by_email<'a>(
        &'a mut self,
        org_id: &'a str,
        email_norm: &'a str,
    ) -> TxFuture<'a, Option<UserRow>> {
        Box::pin(async move {
            // Planned for each call (an unnamed statement): a cached generic plan may take the
            // (org_id, id) index and filter every user of the organization (measured: 3 ms a
            // look-up at 20,000 users) instead of the unique (org_id, email_norm) one.
            Ok(sqlx::query_as::<_, UserRow>(
                "SELECT * FROM users WHERE org_id = $1 AND email_norm = $2",
            )
            .persistent(false)
            .bind(org_id)
            .bind(email_norm)
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn user_by_external_id<'a>(
        &'a mut self,
        org_id: &'a str,
        source: &'a str,
        external_id: &'a str,
    ) -> TxFuture<'a, Option<UserRow>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, UserRow>(
                "SELECT * FROM users WHERE org_id = $1 AND source = $2 AND external_id = $3",
            )
            .persistent(false)
            .bind(org_id)
            .bind(source)
            .bind(external_id)
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn link_external_id<'a>(
        &'a mut self,
        user_id: &'a str,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let a = crate::store::AttrCols::of(u.attrs);
            sqlx::query(
                "UPDATE users SET external_id = $2, source = $3, display_name = $4, login = $5,
                        login_norm = $6, upn = $7, dn = $8, department = $9, country = $10,
                        \"groups\" = $11, mapping_id = $12, updated_at = $13
                  WHERE id = $1 AND external_id IS NULL",
            )
            .bind(user_id)
            .bind(u.external_id)
            .bind(u.source)
            .bind(a.display_name)
            .bind(a.login)
            .bind(a.login_norm)
            .bind(a.upn)
            .bind(a.dn)
            .bind(a.department)
            .bind(a.country)
            .bind(a.groups)
            .bind(u.mapping_id)
            .bind(now)
            .execute(self.conn())
            .await?;
            Ok(())
        })
    }

    fn reenable_user<'a>(
        &'a mut self,
        org_id: &'a str,
        user_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let n = sqlx::query(
                "UPDATE users SET status = 'active', preserved_at = NULL, updated_at = $3,
                        status_changed_at = $3
                  WHERE id = $1 AND org_id = $2 AND status = 'preserved'",
            )
            .bind(user_id)
            .bind(org_id)
            .bind(now)
            .execute(self.conn())
            .await?
            .rows_affected();
            if n > 0 {
                sqlx::query(
                    "INSERT INTO user_events (id, org_id, user_id, action, reason, actor, at)
                     VALUES ($1, $2, $3, 'reenabled', $4, 'activation', $5)",
                )
                .bind(new_id())
                .bind(org_id)
                .bind(user_id)
                .bind(crate::store::REENABLED_AT_ACTIVATION)
                .bind(now)
                .execute(self.conn())
                .await?;
            }
            Ok(n > 0)
        })
    }

    fn find_pending<'a>(
        &'a mut self,
        org_id: &'a str,
        ids: &'a DeviceIdentifiers,
    ) -> TxFuture<'a, Option<StoredMapping>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, StoredMapping>(
                "SELECT * FROM (
                   (SELECT *, 0 AS prio FROM device_mappings WHERE org_id = $1
                      AND identifier_type = 'serial-number' AND identifier_norm = $2 AND consumed_at IS NULL)
                   UNION ALL
                   (SELECT *, 1 AS prio FROM device_mappings WHERE org_id = $1
                      AND identifier_type = 'uuid' AND identifier_norm = $3 AND consumed_at IS NULL)
                   UNION ALL
                   (SELECT *, 2 AS prio FROM device_mappings WHERE org_id = $1
                      AND identifier_type = 'hostname' AND identifier_norm = $4 AND consumed_at IS NULL)
                 ) AS m ORDER BY prio LIMIT 1",
            )
            .bind(org_id)
            .bind(ids.serial.as_deref())
            .bind(ids.uuid.as_deref())
            .bind(ids.hostname.as_deref())
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn pending_mapping<'a>(
        &'a mut self,
        org_id: &'a str,
        kind: &'a str,
        value_norm: &'a str,
    ) -> TxFuture<'a, Option<StoredMapping>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, StoredMapping>(
                "SELECT * FROM device_mappings WHERE org_id = $1 AND identifier_type = $2
                   AND identifier_norm = $3 AND consumed_at IS NULL",
            )
            .bind(org_id)
            .bind(kind)
            .bind(value_norm)
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn active_by_name<'a>(
        &'a mut self,
        user_id: &'a str,
        name: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, DeviceRow>(
                "SELECT * FROM devices WHERE user_id = $1 AND status = 'active' AND name_norm = $2
                 ORDER BY id LIMIT 1",
            )
            .bind(user_id)
            .bind(name_norm(name))
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn active_by_hostname<'a>(
        &'a mut self,
        user_id: &'a str,
        hostname_norm: &'a str,
    ) -> TxFuture<'a, Option<DeviceRow>> {
        Box::pin(async move {
            Ok(sqlx::query_as::<_, DeviceRow>(
                "SELECT * FROM devices WHERE user_id = $1 AND status = 'active' AND hostname_norm = $2
                 ORDER BY id LIMIT 1",
            )
            .bind(user_id)
            .bind(hostname_norm)
            .fetch_optional(self.conn())
            .await?)
        })
    }

    fn mark_replaced<'a>(&'a mut self, old_id: &'a str, new_id: &'a str) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let r = sqlx::query(
                "UPDATE devices SET status = 'replaced', replaced_by = $2 WHERE id = $1 AND status = 'active'",
            )
            .bind(old_id)
            .bind(new_id)
            .execute(self.conn())
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn insert_device<'a>(&'a mut self, d: &'a NewDevice<'a>, now: i64) -> TxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO devices (id, org_id, user_id, name, name_norm, hostname, hostname_norm, serial,
                                      serial_norm, uuid, uuid_norm, os, os_version, client_version,
                                      install_key_hash, credential_hash, token_id, restore_data, replaces,
                                      created_at, last_activated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                         $19, $20, $20)",
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
            .execute(self.conn())
            .await?;
            Ok(())
        })
    }

    fn refresh_device<'a>(
        &'a mut self,
        d: &'a DeviceRow,
        report: &'a DeviceReport<'a>,
        name: Option<&'a str>,
        install_key_hash: Option<&'a str>,
        now: i64,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
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
            .execute(self.conn())
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn reassign_device<'a>(&'a mut self, r: &'a Reassignment<'a>, now: i64) -> TxFuture<'a, bool> {
        Box::pin(async move {
            // Guarded by what was read: a device revoked, moved or re-keyed meanwhile (by an
            // admin, or an activation reporting another of its identifiers) is not overwritten.
            let res = sqlx::query(
                "UPDATE devices SET user_id = $2, name = $3, name_norm = $4, credential_gen = credential_gen + 1,
                        credential_hash = $5, token_id = $6, restore_data = $7, replaces = $8,
                        last_activated_at = $9
                 WHERE id = $1 AND status = 'active' AND user_id = $10 AND credential_gen = $11",
            )
            .bind(&r.device.id)
            .bind(r.user_id)
            .bind(r.name)
            .bind(name_norm(r.name))
            .bind(r.credential_hash)
            .bind(r.token_id)
            .bind(r.restore_data)
            .bind(r.replaces)
            .bind(now)
            .bind(&r.device.user_id)
            .bind(r.device.credential_gen)
            .execute(self.conn())
            .await?;
            Ok(res.rows_affected() == 1)
        })
    }

    fn consume_mapping<'a>(
        &'a mut self,
        mapping_id: &'a str,
        email_norm: &'a str,
        device_id: &'a str,
        now: i64,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            // A re-upload that moved the mapping to another user meanwhile is not consumed for
            // the user read (the retry reads the new one).
            let r = sqlx::query(
                "UPDATE device_mappings SET consumed_at = $3, device_id = $2
                 WHERE id = $1 AND consumed_at IS NULL AND email_norm = $4",
            )
            .bind(mapping_id)
            .bind(device_id)
            .bind(now)
            .bind(email_norm)
            .execute(self.conn())
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn touch_token<'a>(&'a mut self, token: &'a TokenRow, now: i64) -> TxFuture<'a, ()> {
        Box::pin(async move {
            if token.last_used_at.is_some_and(|t| t >= now - TOUCH_EVERY) {
                return Ok(());
            }
            sqlx::query(
                "UPDATE tokens SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - $3)",
            )
            .bind(&token.id)
            .bind(now)
            .bind(TOUCH_EVERY)
            .execute(self.conn())
            .await?;
            Ok(())
        })
    }

    fn insert_activation<'a>(&'a mut self, r: &'a ActivationRecord) -> TxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO activations (id, org_id, token_id, created_at, outcome, status, device_id, user_id,
                                          hostname, serial, uuid, login, remote_ip, message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(new_id())
            .bind(r.org_id.as_deref())
            .bind(r.token_id.as_deref())
            .bind(r.created_at)
            .bind(&r.outcome)
            .bind(i64::from(r.status))
            .bind(r.device_id.as_deref())
            .bind(r.user_id.as_deref())
            .bind(r.hostname.as_deref())
            .bind(r.serial.as_deref())
            .bind(r.uuid.as_deref())
            .bind(r.login.as_deref())
            .bind(r.remote_ip.as_deref())
            .bind(r.message.as_deref())
            .execute(self.conn())
            .await?;
            Ok(())
        })
    }

    fn old_device_problem<'a>(
        &'a mut self,
        org_id: &'a str,
        row: &'a MappingRow,
    ) -> TxFuture<'a, Option<String>> {
        Box::pin(old_device_problem(self.conn(), org_id, row))
    }

    fn upsert_mappings<'a>(
        &'a mut self,
        org_id: &'a str,
        rows: &'a [MappingRow],
        now: i64,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            upsert_mappings(self.conn(), org_id, rows, now).await?;
            Ok(())
        })
    }

    fn user_by_email_or_insert<'a>(
        &'a mut self,
        u: &'a NewUser<'a>,
        now: i64,
    ) -> TxFuture<'a, Option<(UserRow, bool)>> {
        Box::pin(async move {
            // One round trip: insert unless taken, else the existing row. Planned per call
            // (see `user_by_email`). The read half sees the statement's snapshot, so a user a
            // concurrent transaction committed meanwhile needs the second look below.
            let a = crate::store::AttrCols::of(u.attrs);
            let row = sqlx::query(
                "WITH ins AS (
                   INSERT INTO users (id, org_id, email, email_norm, user_name, external_id, source,
                                      profile, storage_region, quota_bytes, created_at, updated_at,
                                      login, login_norm, upn, dn, department, country, \"groups\",
                                      mapping_id, display_name)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15,
                           $16, $17, $18, $19, $20)
                   ON CONFLICT DO NOTHING RETURNING *)
                 SELECT *, TRUE AS created FROM ins
                 UNION ALL
                 SELECT *, FALSE AS created FROM users
                  WHERE org_id = $2 AND email_norm = $4 AND NOT EXISTS (SELECT 1 FROM ins)",
            )
            .persistent(false)
            .bind(new_id())
            .bind(u.org_id)
            .bind(u.email)
            .bind(u.email_norm)
            .bind(u.user_name)
            .bind(u.external_id)
            .bind(u.source)
            .bind(u.profile)
            .bind(u.storage_region)
            .bind(u.quota_bytes)
            .bind(now)
            .bind(a.login)
            .bind(a.login_norm)
            .bind(a.upn)
            .bind(a.dn)
            .bind(a.department)
            .bind(a.country)
            .bind(a.groups)
            .bind(u.mapping_id)
            .bind(a.display_name)
            .fetch_optional(self.conn())
            .await?;
            if let Some(r) = row {
                let created: bool = r.try_get("created")?;
                return Ok(Some((UserRow::from_row(&r)?, created)));
            }
            Ok(self
                .user_by_email(u.org_id, u.email_norm)
                .await?
                .map(|u| (u, false)))
        })
    }

    fn bind_device<'a>(
        &'a mut self,
        write: DeviceWrite<'a>,
        mapping: Option<(&'a str, &'a str)>,
        now: i64,
    ) -> TxFuture<'a, bool> {
        Box::pin(async move {
            let (d, (mapping, email_norm)) = match (write, mapping) {
                (DeviceWrite::Reassign(r), m) => {
                    if !self.reassign_device(r, now).await? {
                        return Ok(false);
                    }
                    return match m {
                        Some((m, email)) => self.consume_mapping(m, email, &r.device.id, now).await,
                        None => Ok(true),
                    };
                }
                (DeviceWrite::Insert(d), None) => {
                    self.insert_device(d, now).await?;
                    return Ok(true);
                }
                (DeviceWrite::Insert(d), Some(m)) => (d, m),
            };
            // The new device and its mapping in one statement (a unique violation on the device
            // aborts both; the mapping update re-checks `consumed_at` against the newest row).
            let consumed: i64 = sqlx::query_scalar(
                "WITH d AS (
                   INSERT INTO devices (id, org_id, user_id, name, name_norm, hostname, hostname_norm,
                                        serial, serial_norm, uuid, uuid_norm, os, os_version,
                                        client_version, install_key_hash, credential_hash, token_id,
                                        restore_data, replaces, created_at, last_activated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                           $18, $19, $20, $20)
                   RETURNING id),
                 m AS (
                   UPDATE device_mappings SET consumed_at = $20, device_id = $1
                   WHERE id = $21 AND consumed_at IS NULL AND email_norm = $22
                     AND EXISTS (SELECT 1 FROM d)
                   RETURNING 1)
                 SELECT count(*) FROM m",
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
            .bind(mapping)
            .bind(email_norm)
            .fetch_one(self.conn())
            .await?;
            Ok(consumed == 1)
        })
    }

    fn finish_activation<'a>(
        &'a mut self,
        r: &'a ActivationRecord,
        take_use: Option<&'a TokenRow>,
        now: i64,
    ) -> TxFuture<'a, UseOutcome> {
        Box::pin(async move {
            let Some(token) = take_use else {
                self.insert_activation(r).await?;
                return Ok(UseOutcome::Taken);
            };
            // The audit row and the use in one statement; the use's row lock comes last and is
            // held only until the commit that follows.
            let q = if token.max_uses.is_some() {
                sqlx::query_as::<_, (i64, Option<bool>)>(
                    "WITH a AS (
                       INSERT INTO activations (id, org_id, token_id, created_at, outcome, status,
                                                device_id, user_id, hostname, serial, uuid, login,
                                                remote_ip, message)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)),
                     u AS (
                       UPDATE tokens SET uses = uses + 1, last_used_at = $15
                       WHERE id = $3 AND revoked_at IS NULL AND uses < max_uses
                       RETURNING 1)
                     SELECT (SELECT count(*) FROM u),
                            (SELECT revoked_at IS NOT NULL FROM tokens WHERE id = $3)",
                )
            } else {
                sqlx::query_as::<_, (i64, Option<bool>)>(
                    "WITH a AS (
                       INSERT INTO activations (id, org_id, token_id, created_at, outcome, status,
                                                device_id, user_id, hostname, serial, uuid, login,
                                                remote_ip, message)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)),
                     live AS (SELECT 1 FROM tokens WHERE id = $3 AND revoked_at IS NULL),
                     u AS (
                       INSERT INTO token_use_counts (token_id, shard, uses)
                       SELECT $3, $16, 1 FROM live
                       ON CONFLICT (token_id, shard) DO UPDATE SET uses = token_use_counts.uses + 1
                       RETURNING 1),
                     t AS (
                       UPDATE tokens SET last_used_at = $15
                       WHERE id = $3 AND (last_used_at IS NULL OR last_used_at < $15 - $17)
                       RETURNING 1)
                     SELECT (SELECT count(*) FROM u) + 0 * (SELECT count(*) FROM t),
                            NOT EXISTS (SELECT 1 FROM live)",
                )
            };
            let shard = i64::from(uuid::Uuid::new_v4().as_bytes()[0]) % USE_SHARDS;
            let (taken, revoked) = q
                .bind(new_id())
                .bind(r.org_id.as_deref())
                .bind(token.id.as_str())
                .bind(r.created_at)
                .bind(&r.outcome)
                .bind(i64::from(r.status))
                .bind(r.device_id.as_deref())
                .bind(r.user_id.as_deref())
                .bind(r.hostname.as_deref())
                .bind(r.serial.as_deref())
                .bind(r.uuid.as_deref())
                .bind(r.login.as_deref())
                .bind(r.remote_ip.as_deref())
                .bind(r.message.as_deref())
                .bind(now)
                .bind(shard)
                .bind(TOUCH_EVERY)
                .fetch_one(self.conn())
                .await?;
            // This statement's snapshot is newer than the token row the job read before its
            // locks: a revocation committed meanwhile is seen here.
            Ok(match (taken, revoked) {
                (1, _) => UseOutcome::Taken,
                (_, Some(true)) => UseOutcome::Revoked,
                _ => UseOutcome::Exhausted,
            })
        })
    }
}
