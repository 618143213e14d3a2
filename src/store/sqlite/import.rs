//! SQLite's `ImportTx`: a synchronous connection of its own, transaction control by hand, so an
//! all-or-nothing upload can give the write lock back at its first bad row and go on validating
//! without it. Closing the connection on any early return rolls back whatever is open.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{hot, writer};
use crate::domain::MappingRow;
use crate::store::{ImportTx, Result, StoreError};

pub(super) struct SqliteImport {
    conn: Connection,
    /// Pending mappings when the write transaction began.
    before: Option<u64>,
}

impl SqliteImport {
    pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteImport> {
        let conn = writer::open_sync(path, busy_timeout)?;
        conn.execute_batch("PRAGMA cache_size = -65536")?;
        Ok(SqliteImport { conn, before: None })
    }
}

impl ImportTx for SqliteImport {
    fn begin_write(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn rollback(&mut self) -> Result<()> {
        self.before = None;
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn old_device_problem(&mut self, org_id: &str, row: &MappingRow) -> Result<Option<String>> {
        hot::old_device_problem(&self.conn, org_id, row)
    }

    fn upsert(&mut self, org_id: &str, rows: &[MappingRow], now: i64) -> Result<()> {
        if self.before.is_none() {
            self.before = Some(hot::count_pending(&self.conn, org_id)?);
        }
        rows.iter()
            .try_for_each(|r| hot::upsert_mapping(&self.conn, org_id, r, now))
    }

    fn created(&mut self, org_id: &str) -> Result<u64> {
        let Some(before) = self.before else {
            return Ok(0);
        };
        Ok(hot::count_pending(&self.conn, org_id)?.saturating_sub(before))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        if self.conn.is_autocommit() {
            return Err(StoreError::Internal(
                "no import transaction to commit".into(),
            ));
        }
        Ok(self.conn.execute_batch("COMMIT")?)
    }
}
