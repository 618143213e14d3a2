//! Applying an uploaded device map. The upload is spooled to a file first (so a slow uploader never
//! holds the database's write lock), then read twice, streaming, in bounded memory:
//! 1. validate every row (syntax, duplicates, `oldDeviceName` against the database) without writing;
//! 2. unless this is a dry run or an all-or-nothing upload with errors, upsert the good rows in one
//!    transaction. A crash or kill before the commit leaves the previous mappings exactly as they were.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use serde::Serialize;
use tokio::runtime::Handle;

use super::{DeviceMapReader, FailureCsvWriter, HeaderError, MappingRow, RowError};
use crate::store::{self, Store, StoreError};

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

#[derive(Debug, Serialize)]
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
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || run(&handle, &store, &org_id, &path, &opts, now))
        .await
        .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?
}

fn run(
    rt: &Handle,
    store: &Store,
    org_id: &str,
    path: &PathBuf,
    opts: &ImportOptions,
    now: i64,
) -> Result<ImportReport, ImportError> {
    // Pass 1: validate.
    let mut reader = open(path)?;
    let mut failures = if opts.failures_csv {
        Some(FailureCsvWriter::new(
            tempfile::tempfile()?,
            reader.headers(),
        )?)
    } else {
        None
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
        failures_csv: None,
    };
    let mut bad_lines: HashSet<u64> = HashSet::new();
    while let Some(item) = reader.next_row() {
        report.rows_total += 1;
        let err = match item {
            Ok((line, row)) => check_old_device(rt, store, org_id, line, &row)?,
            Err(e) => Some(e),
        };
        match err {
            None => report.rows_valid += 1,
            Some(e) => {
                report.rows_invalid += 1;
                bad_lines.insert(e.line);
                if let Some(w) = failures.as_mut() {
                    w.write(reader.current_record(), &e.error)?;
                }
                if report.errors.len() < opts.max_listed_errors {
                    report.errors.push(e);
                } else {
                    report.errors_truncated = true;
                }
            }
        }
    }
    if let Some(msg) = reader.read_error() {
        return Err(ImportError::Io(std::io::Error::other(msg.to_string())));
    }
    if let Some(w) = failures {
        let mut f = w
            .into_inner()
            .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?;
        use std::io::Seek;
        f.rewind()?;
        report.failures_csv = Some(f);
    }
    let refuse = opts.mode == Mode::AllOrNothing && report.rows_invalid > 0;
    if opts.dry_run || refuse || report.rows_valid == 0 {
        return Ok(report);
    }

    // Pass 2: apply the good rows in one transaction.
    let mut reader = open(path)?;
    let mut tx = rt.block_on(store.begin())?;
    let mut batch: Vec<MappingRow> = Vec::with_capacity(store::mappings::UPSERT_BATCH);
    let mut created = 0;
    let mut applied = 0;
    while let Some(item) = reader.next_row() {
        let Ok((line, row)) = item else { continue };
        if bad_lines.contains(&line) {
            continue;
        }
        batch.push(row);
        if batch.len() == store::mappings::UPSERT_BATCH {
            created += rt.block_on(store::mappings::upsert(&mut tx, org_id, &batch, now))?;
            applied += batch.len() as u64;
            batch.clear();
        }
    }
    if let Some(msg) = reader.read_error() {
        return Err(ImportError::Io(std::io::Error::other(msg.to_string())));
    }
    if !batch.is_empty() {
        created += rt.block_on(store::mappings::upsert(&mut tx, org_id, &batch, now))?;
        applied += batch.len() as u64;
    }
    rt.block_on(tx.commit()).map_err(StoreError::from)?;
    report.applied = true;
    report.created = created;
    report.updated = applied - created;
    Ok(report)
}

/// `oldDeviceName` must name an active device of the mapped user when that user already exists
/// (a user created later by this very mapping cannot have devices yet).
fn check_old_device(
    rt: &Handle,
    store: &Store,
    org_id: &str,
    line: u64,
    row: &MappingRow,
) -> Result<Option<RowError>, ImportError> {
    let Some(old) = &row.old_device_name else {
        return Ok(None);
    };
    match rt.block_on(store.user_has_device_named(org_id, row.email.normalized(), old))? {
        Some(false) => Ok(Some(RowError {
            line,
            column: Some("oldDeviceName".into()),
            value: Some(old.chars().take(200).collect()),
            error: format!(
                "user {} has no active device named {old:?}",
                row.email.as_str()
            ),
        })),
        _ => Ok(None),
    }
}

/// The same check for the JSON API, row by row.
pub async fn old_device_error(
    store: &Store,
    org_id: &str,
    row: &MappingRow,
) -> Result<Option<String>, StoreError> {
    let Some(old) = &row.old_device_name else {
        return Ok(None);
    };
    Ok(
        match store
            .user_has_device_named(org_id, row.email.normalized(), old)
            .await?
        {
            Some(false) => Some(format!(
                "user {} has no active device named {old:?}",
                row.email.as_str()
            )),
            _ => None,
        },
    )
}
