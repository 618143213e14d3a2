//! PostgreSQL's `ImportTx`: one pooled connection holding the import's transaction, driven from
//! the import's blocking thread by blocking on each step. Batches arrive as the parser hands
//! them over and go in as one multi-row statement each.

use sqlx::pool::PoolConnection;
use sqlx::{Executor, Postgres};
use tokio::runtime::Handle;

use super::hot;
use crate::domain::MappingRow;
use crate::store::{ImportTx, Result, StoreError};

pub(super) struct PgImport {
    conn: PoolConnection<Postgres>,
    handle: Handle,
    open: bool,
    /// New rows among those upserted (concurrent activations consume mappings meanwhile, so
    /// before/after counts would not add up).
    created: u64,
}

impl PgImport {
    pub(super) fn new(conn: PoolConnection<Postgres>, handle: Handle) -> PgImport {
        PgImport {
            conn,
            handle,
            open: false,
            created: 0,
        }
    }

    fn exec(&mut self, sql: &'static str) -> Result<()> {
        let conn = &mut *self.conn;
        self.handle.block_on(async move {
            conn.execute(sql).await?;
            Ok::<(), StoreError>(())
        })
    }
}

impl ImportTx for PgImport {
    fn begin_write(&mut self) -> Result<()> {
        self.exec("BEGIN")?;
        self.open = true;
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        if self.open {
            self.exec("ROLLBACK")?;
            self.open = false;
        }
        self.created = 0;
        Ok(())
    }

    fn old_device_problem(&mut self, org_id: &str, row: &MappingRow) -> Result<Option<String>> {
        if row.old_device_name.is_none() {
            return Ok(None);
        }
        let conn = &mut *self.conn;
        self.handle
            .block_on(hot::old_device_problem(conn, org_id, row))
    }

    fn upsert(&mut self, org_id: &str, rows: &[MappingRow], now: i64) -> Result<()> {
        let conn = &mut *self.conn;
        self.created += self
            .handle
            .block_on(hot::upsert_mappings(conn, org_id, rows, now))?;
        Ok(())
    }

    fn created(&mut self, _org_id: &str) -> Result<u64> {
        Ok(self.created)
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if !self.open {
            return Err(StoreError::Internal(
                "no import transaction to commit".into(),
            ));
        }
        self.exec("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for PgImport {
    fn drop(&mut self) {
        if self.open {
            // Never hand a connection with an open transaction back to the pool: closing it
            // makes the server roll the transaction back.
            self.conn.close_on_drop();
        }
    }
}
