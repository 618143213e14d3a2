//! Applying an uploaded device map. The upload is spooled to a file first (so a slow uploader never
//! holds the database's write lock), then read once, streaming, in bounded memory, on two threads:
//! one parses and validates rows (CSV syntax, fields, duplicates) and hands them over in batches;
//! the other checks `oldDeviceName` against the database and upserts the good rows, all inside one
//! transaction. The transaction commits only if the upload is to be applied (not a dry run, and in
//! all-or-nothing mode not a single bad row); a crash or kill before that commit leaves the
//! previous mappings exactly as they were.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use serde::Serialize;

use super::{DeviceMapReader, FailureCsvWriter, HeaderError, MappingRow, RowError};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One bad row and nothing is applied.
    AllOrNothing,
    /// Good rows are applied, bad rows reported.
    Partial,
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub mode: Mode,
    pub dry_run: bool,
    /// Also write the failing rows as CSV (for `Accept: text/csv`).
    pub failures_csv: bool,
    /// How many row errors the JSON report lists (the total is always counted).
    pub max_listed_errors: usize,
}

/// A device-map upload report (docs/csv-format.md), as `POST /api/v1/admin/device-maps` answers.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "DeviceMapReport", deny_unknown_fields)]
pub struct ImportReport {
    pub rows_total: u64,
    pub rows_valid: u64,
    pub rows_invalid: u64,
    /// Whether anything was written.
    pub applied: bool,
    pub created: u64,
    pub updated: u64,
    pub dry_run: bool,
    pub errors: Vec<RowError>,
    pub errors_truncated: bool,
    /// Set when reading stopped at a record of `MAX_RECORD_BYTES` or more (an unterminated quote,
    /// usually) on this line: the rest of the file was not read, so nothing is applied, whatever
    /// the mode. That record is the last entry of `errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_line: Option<u64>,
    #[serde(skip)]
    pub failures_csv: Option<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o error while reading the upload: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the failure report: {0}")]
    Csv(#[from] csv::Error),
}

fn open(path: &PathBuf) -> Result<DeviceMapReader<BufReader<File>>, ImportError> {
    let f = File::open(path)?;
    Ok(DeviceMapReader::new(BufReader::with_capacity(
        256 * 1024,
        f,
    ))?)
}

/// Validates and (maybe) applies the spooled upload at `path`.
pub async fn import(
    store: Store,
    org_id: String,
    path: PathBuf,
    opts: ImportOptions,
    now: i64,
) -> Result<ImportReport, ImportError> {
    tokio::task::spawn_blocking(move || run(&store, &org_id, &path, &opts, now))
        .await
        .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?
}

/// One parsed row as the parsing thread hands it over: the raw record travels only where the
/// writing side may need it for the failure report.
type Parsed = (
    Result<(u64, MappingRow), RowError>,
    Option<csv::StringRecord>,
);

const HANDOFF_BATCH: usize = 1024;

fn run(
    store: &Store,
    org_id: &str,
    path: &PathBuf,
    opts: &ImportOptions,
    now: i64,
) -> Result<ImportReport, ImportError> {
    let mut reader = open(path)?;
    let mut failures = match opts.failures_csv {
        true => Some(FailureCsvWriter::new(
            tempfile::tempfile()?,
            reader.headers(),
        )?),
        false => None,
    };
    let mut report = ImportReport {
        rows_total: 0,
        rows_valid: 0,
        rows_invalid: 0,
        applied: false,
        created: 0,
        updated: 0,
        dry_run: opts.dry_run,
        errors: Vec::new(),
        errors_truncated: false,
        stopped_at_line: None,
        failures_csv: None,
    };

    // Parsing thread: bounded hand-off keeps memory flat whatever the file size.
    let (send, recv) = std::sync::mpsc::sync_channel::<Vec<Parsed>>(8);
    let parser = std::thread::Builder::new()
        .name("imd-csv".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(HANDOFF_BATCH);
            while let Some(item) = reader.next_row() {
                let keep_raw = match &item {
                    Ok((_, row)) => row.old_device_name.is_some(),
                    Err(_) => true,
                };
                batch.push((item, keep_raw.then(|| reader.current_record().clone())));
                if batch.len() == HANDOFF_BATCH && send.send(std::mem::take(&mut batch)).is_err() {
                    return (None, None);
                }
            }
            if !batch.is_empty() {
                let _ = send.send(batch);
            }
            (reader.read_error().map(str::to_string), reader.stopped_at())
        })?;

    // Writing side (this thread): a dry run only reads, so it takes no write lock. An
    // all-or-nothing upload gives the write transaction up at its first bad row and goes on
    // validating without it. Dropping `tx` on any early return rolls back whatever is open.
    let mut tx = store.import_tx()?;
    let mut writing = !opts.dry_run;
    if writing {
        tx.begin_write()?;
    }
    let mut applied = 0u64;
    let mut good: Vec<MappingRow> = Vec::with_capacity(HANDOFF_BATCH);
    for batch in recv {
        for (item, raw) in batch {
            report.rows_total += 1;
            let err = match item {
                Ok((line, row)) => match tx.old_device_problem(org_id, &row)? {
                    Some(error) => Some(RowError {
                        line,
                        column: Some("oldDeviceName".into()),
                        value: row
                            .old_device_name
                            .as_ref()
                            .map(|v| v.chars().take(200).collect()),
                        error,
                    }),
                    None => {
                        report.rows_valid += 1;
                        if writing {
                            good.push(row);
                        }
                        None
                    }
                },
                Err(e) => Some(e),
            };
            if let Some(e) = err {
                report.rows_invalid += 1;
                if writing && opts.mode == Mode::AllOrNothing {
                    // Nothing of this upload will be applied: stop writing, free the lock.
                    tx.rollback()?;
                    writing = false;
                    good.clear();
                }
                if let (Some(w), Some(raw)) = (failures.as_mut(), raw.as_ref()) {
                    w.write(raw, &e.error)?;
                }
                if report.errors.len() < opts.max_listed_errors {
                    report.errors.push(e);
                } else {
                    report.errors_truncated = true;
                }
            }
        }
        // One write per hand-off batch (a multi-row statement on PostgreSQL).
        if writing && !good.is_empty() {
            tx.upsert(org_id, &good, now)?;
            applied += good.len() as u64;
            good.clear();
        }
    }
    let (read_error, stopped_at) = parser
        .join()
        .map_err(|_| ImportError::Io(std::io::Error::other("the CSV parser failed")))?;
    if let Some(msg) = read_error {
        return Err(ImportError::Io(std::io::Error::other(msg)));
    }
    // The file could not be read to its end (see `DeviceMapReader::stopped_at`): applying the rows
    // before the break would silently drop the rest, so even a partial upload applies nothing.
    report.stopped_at_line = stopped_at;
    if stopped_at.is_some() {
        writing = false;
    }
    if let Some(w) = failures {
        let mut f = w
            .into_inner()
            .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?;
        use std::io::Seek;
        f.rewind()?;
        report.failures_csv = Some(f);
    }
    if !writing || applied == 0 {
        tx.rollback()?;
        return Ok(report);
    }
    let created = tx.created(org_id)?.min(applied);
    tx.commit()?;
    report.applied = true;
    report.created = created;
    report.updated = applied - created;
    Ok(report)
}
