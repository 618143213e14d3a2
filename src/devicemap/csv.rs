//! The device map CSV: a streaming reader that checks the header, validates
//! each row and finds duplicate identifiers in bounded memory, and the
//! writer for the failure report admins download, fix and re-import.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::io::{self, Read, Write};

use ::csv::{ByteRecord, ReaderBuilder, StringRecord, Terminator, WriterBuilder};
use serde::Serialize;

use super::MappingRow;
use super::mapping::{Checked, Column, Values, validate_values};
use crate::domain::{FieldError, IdentifierType};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Larger than csv's 8 KiB default: fewer refills on 80 MB uploads.
const READ_BUFFER: usize = 64 * 1024;
const MAX_VALUE_CHARS: usize = 200;
/// The most bytes one record may take, counted from the end of the previous record (so its line
/// ending and any empty lines before it count too). A valid row is at most a few KiB; a longer
/// record is almost always a quote that is never closed, which would otherwise pull the rest of
/// the file into one record. The reader stops at the first record that reaches the limit, so the
/// record buffer never holds more than this.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
const ERROR_COLUMN: &str = "error";
const SAVE_AS_UTF8: &str = "save the file as UTF-8 (\"CSV UTF-8\" in Excel)";

/// A malformed header: nothing in the file is imported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "the device map is empty: the first line must name the columns; the accepted columns are {}",
        accepted_columns()
    )]
    Empty,
    #[error("the header line is not valid UTF-8: {SAVE_AS_UTF8}, not UTF-16 or a legacy code page")]
    NotUtf8,
    #[error(
        "unknown column{} {}: the accepted columns are {}{}",
        plural(.0),
        quoted(.0),
        accepted_columns(),
        separator_hint(.0)
    )]
    UnknownColumns(Vec<String>),
    #[error(
        "missing required column{} {}: the accepted columns are {}",
        plural(.0),
        quoted(.0),
        accepted_columns()
    )]
    MissingColumns(Vec<String>),
    #[error(
        "column{} {} appear{} more than once (column names are not case-sensitive)",
        plural(.0),
        quoted(.0),
        if .0.len() == 1 { "s" } else { "" }
    )]
    DuplicateColumns(Vec<String>),
    #[error(
        "the header line is longer than {MAX_RECORD_BYTES} bytes: check for a quote (\") that is never closed"
    )]
    TooLong,
    #[error("could not read the header line: {0}")]
    Csv(String),
}

fn cr_only() -> HeaderError {
    HeaderError::Csv(
        "the file uses old Mac (CR-only) line endings: save it with Windows (CRLF) or Unix (LF) line endings".into(),
    )
}

fn plural(v: &[String]) -> &'static str {
    if v.len() == 1 { "" } else { "s" }
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn accepted_columns() -> String {
    let names = |required: bool| {
        Column::ALL
            .iter()
            .filter(|c| c.is_required() == required)
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{} (required) and {} (optional)", names(true), names(false))
}

/// Excel in many European locales saves "CSV" with ';' between values, which
/// arrives here as one long unknown column.
fn separator_hint(unknown: &[String]) -> &'static str {
    if unknown.iter().any(|h| h.contains(';')) {
        "; the file seems to use ';' between values: save it with ',' as the separator"
    } else if unknown.iter().any(|h| h.contains('\t')) {
        "; the file seems to use tabs between values: save it as comma-separated CSV"
    } else {
        ""
    }
}

/// One rejected row. A row with several problems yields one `RowError`:
/// `column`/`value` describe the first problem, and `error` then lists all
/// of them as "column: problem; column: problem", which reads better in a
/// spreadsheet than one line per problem.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(rename = "DeviceMapRowError", deny_unknown_fields)]
pub struct RowError {
    /// 1-based physical line where the record starts (the header is line 1).
    pub line: u64,
    pub column: Option<String>,
    /// The offending value, trimmed and cut to 200 characters; `None` when
    /// it is empty or the problem is not in one field.
    pub value: Option<String>,
    pub error: String,
}

impl RowError {
    fn whole_row(line: u64, error: String) -> Self {
        RowError {
            line,
            column: None,
            value: None,
            error,
        }
    }
}

/// Streams a device map: checks the header in `new`, then validates one row
/// per `next_row` call. Memory stays bounded whatever the file size: one
/// reused record buffer plus about 21 bytes of duplicate-detection state
/// per distinct identifier (44 MB of hash table at a million rows, 66 MB
/// peak while the table grows).
pub struct DeviceMapReader<R: Read> {
    csv: ::csv::Reader<Source<R>>,
    headers: Vec<String>,
    /// Column of each field, by position in the file.
    /// One per header field; `None` for the `error` column of a failure report (ignored, so a
    /// downloaded report can be fixed and uploaded as it is).
    columns: Vec<Option<Column>>,
    record: ByteRecord,
    /// `record` as text, built only when asked for (failure reports), so
    /// valid rows pay nothing for it.
    current: OnceCell<StringRecord>,
    seen: SeenIdentifiers,
    errors: Vec<FieldError>,
    rows_read: u64,
    read_error: Option<String>,
    /// Line of the record that reached `MAX_RECORD_BYTES`; reading stopped there.
    too_long_at: Option<u64>,
}

impl<R: Read> DeviceMapReader<R> {
    /// Reads and checks the header. UTF-8 with or without BOM, LF or CRLF,
    /// RFC 4180 quoting. Leading blank lines are skipped.
    pub fn new(reader: R) -> Result<Self, HeaderError> {
        // Only '\n' ends a record ('\r' before it is stripped from the last
        // field), so every record consumes its own line ending; that is what
        // lets `read_raw` work out where a record started.
        let mut csv = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .buffer_capacity(READ_BUFFER)
            .from_reader(Source::new(reader));
        let mut record = ByteRecord::new();
        loop {
            match read_raw(&mut csv, &mut record) {
                Err(e) => return Err(HeaderError::Csv(e.to_string())),
                Ok(None) if csv.get_ref().cut => return Err(HeaderError::TooLong),
                Ok(None) => return Err(HeaderError::Empty),
                // One CR-only "line" of the whole file is the likelier cause: say so.
                Ok(Some(_)) if csv.get_ref().cut && record.as_slice().contains(&b'\r') => {
                    return Err(cr_only());
                }
                Ok(Some(_)) if csv.get_ref().cut => return Err(HeaderError::TooLong),
                Ok(Some(_)) if is_blank(&record) => continue,
                Ok(Some(_)) => break,
            }
        }
        let mut headers = Vec::with_capacity(record.len());
        for i in 0..record.len() {
            let name = std::str::from_utf8(field(&record, i)).map_err(|_| HeaderError::NotUtf8)?;
            if name.contains('\r') {
                return Err(cr_only());
            }
            headers.push(name.to_owned());
        }
        let columns = map_columns(&headers)?;
        Ok(DeviceMapReader {
            csv,
            headers,
            columns,
            record,
            current: OnceCell::new(),
            seen: SeenIdentifiers::new(),
            errors: Vec::new(),
            rows_read: 0,
            read_error: None,
            too_long_at: None,
        })
    }

    /// The file's header names, in file order, as written.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The next data row with the line it starts on, or the reason it was
    /// rejected; `None` at the end. Blank lines (including lines of only
    /// commas, which spreadsheets append) are skipped. After a read error
    /// from the underlying reader, one `RowError` describes it and the
    /// iteration ends (see `read_error`). So it does at a record of
    /// `MAX_RECORD_BYTES` or more (see `stopped_at`): nothing after it is read.
    pub fn next_row(&mut self) -> Option<Result<(u64, MappingRow), RowError>> {
        if self.read_error.is_some() || self.too_long_at.is_some() {
            return None;
        }
        loop {
            self.current = OnceCell::new();
            let line = match read_raw(&mut self.csv, &mut self.record) {
                // Only empty lines (which csv skips) up to the limit.
                Ok(None) if self.csv.get_ref().cut => self.csv.position().line(),
                Ok(None) => return None,
                Ok(Some(line)) => line,
                Err(e) => {
                    let line = self.csv.position().line();
                    let message = e.to_string();
                    self.read_error = Some(message.clone());
                    self.record.clear();
                    return Some(Err(RowError::whole_row(
                        line,
                        format!("could not read the file from line {line} on: {message}"),
                    )));
                }
            };
            if self.csv.get_ref().cut {
                // After an unterminated quote every later quote flips the parser's state, so
                // nothing further can be parsed reliably: stop rather than guess.
                self.too_long_at = Some(line);
                self.rows_read += 1;
                // Give the memory back; the failure report shows the row's fields empty.
                self.record = ByteRecord::new();
                return Some(Err(RowError::whole_row(
                    line,
                    format!(
                        "the record starting on line {line} is longer than {MAX_RECORD_BYTES} bytes, \
                         most likely because a quote (\") is never closed; \
                         the rest of the file was not read"
                    ),
                )));
            }
            if is_blank(&self.record) {
                continue;
            }
            self.rows_read += 1;
            return Some(self.check_record(line));
        }
    }

    /// The raw fields of the record last returned, for failure reports.
    /// Untrimmed; invalid UTF-8 is replaced by U+FFFD.
    pub fn current_record(&self) -> &StringRecord {
        self.current.get_or_init(|| {
            let mut rec =
                StringRecord::with_capacity(self.record.as_slice().len(), self.record.len());
            for i in 0..self.record.len() {
                rec.push_field(&String::from_utf8_lossy(field(&self.record, i)));
            }
            rec
        })
    }

    /// Data rows returned so far, valid or not; blank lines not counted.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Set when the underlying reader failed (e.g. the upload was cut off):
    /// the rows after that point were never seen, so callers should not
    /// treat the import as complete.
    pub fn read_error(&self) -> Option<&str> {
        self.read_error.as_deref()
    }

    /// The line of a record that reached `MAX_RECORD_BYTES`, after which
    /// nothing was read: the rows after it were never seen, so callers
    /// should not treat the import as complete.
    pub fn stopped_at(&self) -> Option<u64> {
        self.too_long_at
    }

    fn check_record(&mut self, line: u64) -> Result<(u64, MappingRow), RowError> {
        let found = self.record.len();
        if found != self.columns.len() {
            return Err(RowError::whole_row(
                line,
                format!("expected {} fields, found {found}", self.columns.len()),
            ));
        }
        let mut values: Values<'_> = [""; Column::COUNT];
        for (i, column) in self.columns.iter().enumerate() {
            let Some(column) = *column else { continue };
            let raw = field(&self.record, i);
            match std::str::from_utf8(raw) {
                Ok(s) => values[column.index()] = s.trim(),
                Err(_) => {
                    return Err(RowError {
                        line,
                        column: Some(column.name().to_owned()),
                        value: Some(truncate(String::from_utf8_lossy(raw).trim())),
                        error: format!(
                            "line {line} is not valid UTF-8 (column {}): {SAVE_AS_UTF8}",
                            column.name()
                        ),
                    });
                }
            }
        }

        self.errors.clear();
        let checked = validate_values(&values, &mut self.errors);
        let identifier = match &checked {
            Checked::Valid(row) => Some((row.identifier_type, row.identifier_norm.as_str())),
            Checked::Invalid { identifier } => identifier.as_ref().map(|(t, n)| (*t, n.as_str())),
        };
        if let Some((t, norm)) = identifier
            && let Some(first) = self.seen.insert(t, norm, line)
        {
            self.errors.push(FieldError::new(
                Column::DeviceIdentifier.name(),
                format!("duplicate identifier: also on line {first}"),
            ));
        }
        match checked {
            Checked::Valid(row) if self.errors.is_empty() => Ok((line, row)),
            _ => Err(row_error(line, &values, &self.errors)),
        }
    }
}

fn row_error(line: u64, values: &Values<'_>, errors: &[FieldError]) -> RowError {
    let first = &errors[0];
    let value = Column::ALL
        .into_iter()
        .find(|c| c.name() == first.field)
        .map(|c| values[c.index()])
        .filter(|v| !v.is_empty())
        .map(truncate);
    let error = if errors.len() == 1 {
        first.message.clone()
    } else {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    RowError {
        line,
        column: Some(first.field.to_owned()),
        value,
        error,
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
    }
}

/// Maps header names to columns, rejecting unknown, duplicated and missing
/// ones. Unknown columns are reported first: a misspelt required column
/// shows up as both unknown and missing, and the unknown-column message
/// already lists every accepted name.
fn map_columns(headers: &[String]) -> Result<Vec<Option<Column>>, HeaderError> {
    let mut seen = [false; Column::COUNT];
    let mut columns = Vec::with_capacity(headers.len());
    let mut unknown: Vec<String> = Vec::new();
    let mut duplicate: Vec<String> = Vec::new();
    for h in headers {
        match Column::from_header(h) {
            Some(c) => {
                if seen[c.index()] && !duplicate.iter().any(|d| d == c.name()) {
                    duplicate.push(c.name().to_owned());
                }
                seen[c.index()] = true;
                columns.push(Some(c));
            }
            None if h.trim().eq_ignore_ascii_case(ERROR_COLUMN) && !columns.contains(&None) => {
                columns.push(None);
            }
            None => {
                let name = h.trim().to_owned();
                if !unknown.contains(&name) {
                    unknown.push(name);
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(HeaderError::UnknownColumns(unknown));
    }
    if !duplicate.is_empty() {
        return Err(HeaderError::DuplicateColumns(duplicate));
    }
    let missing: Vec<String> = Column::ALL
        .into_iter()
        .filter(|c| c.is_required() && !seen[c.index()])
        .map(|c| c.name().to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(HeaderError::MissingColumns(missing));
    }
    Ok(columns)
}

/// Reads the next record and returns the line it starts on.
///
/// `csv::Position` cannot be used directly: a record's position is where
/// the previous read stopped, before any blank lines csv skips. Instead the
/// start is worked back from the end: the reader's line count after the
/// record, minus newlines inside quoted fields, minus the record's own
/// '\n' unless it ended at end of input.
///
/// A record cut at `MAX_RECORD_BYTES` is returned like one that ended at end
/// of input, with `Source::cut` set.
fn read_raw<R: Read>(
    csv: &mut ::csv::Reader<Source<R>>,
    record: &mut ByteRecord,
) -> ::csv::Result<Option<u64>> {
    if !csv.read_byte_record(record)? {
        return Ok(None);
    }
    let end = csv.position();
    let (end_line, end_byte) = (end.line(), end.byte());
    let inside = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
    let source = csv.get_mut();
    // Once the source has reported end of input there are no bytes left, so
    // the record cannot have consumed a terminating '\n'.
    let terminator = u64::from(!(source.eof || source.cut));
    source.record_end = end_byte;
    Ok(Some(end_line.saturating_sub(inside + terminator).max(1)))
}

/// Field `i`, without the '\r' of a CRLF line ending on the last field.
fn field(record: &ByteRecord, i: usize) -> &[u8] {
    let f = &record[i];
    if i + 1 == record.len() {
        f.strip_suffix(b"\r").unwrap_or(f)
    } else {
        f
    }
}

fn is_blank(record: &ByteRecord) -> bool {
    record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

/// The input as csv sees it: a leading UTF-8 BOM removed here rather than
/// by csv, which misses one split across reads, end of input recorded
/// for `read_raw`, and the bytes of one record capped.
///
/// csv grows its record buffer until the record ends, so an unterminated
/// quote would read the rest of the file into one record. Instead, once
/// `MAX_RECORD_BYTES` have been handed out since the end of the last record
/// (`record_end`, which `read_raw` moves on) and csv still asks for more,
/// the source reports end of input and sets `cut`: csv then ends the record
/// there, and the reader stops. One subtraction per read, nothing per byte.
struct Source<R> {
    inner: R,
    head: [u8; 3],
    head_len: usize,
    head_pos: usize,
    started: bool,
    eof: bool,
    /// Bytes handed to csv so far (after any BOM).
    delivered: u64,
    /// csv's byte position at the end of the last complete record.
    record_end: u64,
    /// The current record reached `MAX_RECORD_BYTES`: end of input was
    /// reported early and the rest of the input is never read.
    cut: bool,
}

impl<R: Read> Source<R> {
    fn new(inner: R) -> Self {
        Source {
            inner,
            head: [0; 3],
            head_len: 0,
            head_pos: 0,
            started: false,
            eof: false,
            delivered: 0,
            record_end: 0,
            cut: false,
        }
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            while self.head_len < UTF8_BOM.len() {
                let mut head = [0; 3];
                let n = self.read_inner(&mut head[..UTF8_BOM.len() - self.head_len])?;
                if n == 0 {
                    break;
                }
                self.head[self.head_len..self.head_len + n].copy_from_slice(&head[..n]);
                self.head_len += n;
            }
            if self.head[..self.head_len] == *UTF8_BOM {
                self.head_len = 0;
            }
            self.started = true;
        }
        if self.head_pos < self.head_len {
            let n = buf.len().min(self.head_len - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            self.delivered += n as u64;
            return Ok(n);
        }
        if self.cut || self.eof || buf.is_empty() {
            return Ok(0);
        }
        let in_record = self.delivered.saturating_sub(self.record_end);
        let room = (MAX_RECORD_BYTES as u64).saturating_sub(in_record);
        if room == 0 {
            // A record of exactly the limit may still end the file: look one byte ahead.
            let mut probe = [0u8; 1];
            if self.read_inner(&mut probe)? == 0 {
                self.eof = true;
            } else {
                self.cut = true;
            }
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.read_inner(&mut buf[..want])?;
        self.delivered += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Which (identifier type, normalized identifier) pairs a file has used,
/// and on which line each first appeared.
///
/// Only a 128-bit hash of each pair is kept, not the string: two SipHash-1-3
/// outputs under one random per-file key, made distinct by a domain byte.
/// SipHash is a keyed PRF, so the two halves behave as independent 64-bit
/// hashes, and because the key is secret a crafted file cannot force false
/// "duplicate" reports or degrade the table, which an unkeyed hash such as
/// FNV-1a-128 would allow. Accidental collisions are negligible: about
/// n²/2^129, 1e-27 for a million rows.
pub struct SeenIdentifiers {
    key: RandomState,
    first_line: HashMap<IdKey, u32, BuildHasherDefault<PassThrough>>,
}

/// Stored as four u32 so an entry is 20 bytes, not the 32 a u128 key and
/// u64 line would take after alignment.
#[derive(PartialEq, Eq)]
struct IdKey([u32; 4]);

impl Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random: hand 64 of the bits to the table as is.
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Hasher for keys that are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached through IdKey; fold anything else in rather than drop it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl Default for SeenIdentifiers {
    fn default() -> Self {
        Self::new()
    }
}

impl SeenIdentifiers {
    pub fn new() -> Self {
        SeenIdentifiers {
            key: RandomState::new(),
            first_line: HashMap::default(),
        }
    }

    /// Records the pair as seen on `line`. Returns the earlier line if it
    /// was already there (the first line stays recorded).
    pub fn insert(&mut self, t: IdentifierType, normalized: &str, line: u64) -> Option<u64> {
        let half = |domain: u8| {
            let mut h = self.key.build_hasher();
            h.write_u8(domain);
            h.write_u8(t as u8);
            h.write(normalized.as_bytes());
            h.finish()
        };
        let (a, b) = (half(1), half(2));
        let key = IdKey([a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]);
        match self.first_line.entry(key) {
            Entry::Occupied(e) => Some(u64::from(*e.get())),
            Entry::Vacant(e) => {
                // Lines beyond u32 would need a file over 4 GiB.
                e.insert(u32::try_from(line).unwrap_or(u32::MAX));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.first_line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first_line.is_empty()
    }
}

/// Writes the failure report: the original header plus an `error` column,
/// then each failing row's original fields and its error. Starts with a
/// UTF-8 BOM and uses CRLF so Excel opens it with names intact; the reader
/// accepts both, so fixed rows can be re-imported after deleting the
/// `error` column.
pub struct FailureCsvWriter<W: Write> {
    csv: ::csv::Writer<W>,
    width: usize,
    /// Position of an `error` column the uploaded header already had.
    error_at: Option<usize>,
}

impl<W: Write> FailureCsvWriter<W> {
    pub fn new(mut w: W, headers: &[String]) -> ::csv::Result<Self> {
        w.write_all(UTF8_BOM)?;
        let mut csv = WriterBuilder::new()
            .terminator(Terminator::CRLF)
            .from_writer(w);
        // A re-uploaded failure report already has an error column: reuse it rather than
        // adding a second one (which the importer would reject as unknown).
        let existing = headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(ERROR_COLUMN));
        match existing {
            Some(_) => csv.write_record(headers.iter().map(String::as_str))?,
            None => csv.write_record(
                headers
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once(ERROR_COLUMN)),
            )?,
        }
        Ok(FailureCsvWriter {
            csv,
            width: headers.len(),
            error_at: existing,
        })
    }

    /// Writes `record` padded or cut to the header's width (a row with the
    /// wrong field count says so in its error) with `error` in the error column.
    pub fn write(&mut self, record: &StringRecord, error: &str) -> ::csv::Result<()> {
        let fields = (0..self.width).map(|i| match self.error_at {
            Some(e) if e == i => error,
            _ => record.get(i).unwrap_or_default(),
        });
        match self.error_at {
            Some(_) => self.csv.write_record(fields),
            None => self.csv.write_record(fields.chain(std::iter::once(error))),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.csv.flush()
    }

    /// Flushes and returns the destination. A failed flush leaves the report
    /// unusable, so the error alone is returned, not the writer.
    pub fn into_inner(self) -> io::Result<W> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RestoreData;

    const HEADER: &str = "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier,oldDeviceName,restoreData\n";

    fn open(data: &str) -> DeviceMapReader<&[u8]> {
        DeviceMapReader::new(data.as_bytes()).expect("header should be accepted")
    }

    fn header_error(data: &[u8]) -> HeaderError {
        match DeviceMapReader::new(data) {
            Ok(_) => panic!("header should be rejected"),
            Err(e) => e,
        }
    }

    /// All rows: valid ones as (line, row), rejected ones as errors.
    fn read_all<R: Read>(mut r: DeviceMapReader<R>) -> (Vec<(u64, MappingRow)>, Vec<RowError>) {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        while let Some(res) = r.next_row() {
            match res {
                Ok(row) => ok.push(row),
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }

    fn lines_of(rows: &[(u64, MappingRow)]) -> Vec<u64> {
        rows.iter().map(|(l, _)| *l).collect()
    }

    /// Hands out at most `chunk` bytes per read, like a slow network body.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Generates `rows` valid rows on the fly (serial, UUID and hostname
    /// identifiers in turn; every tenth row replaces an old device), so large
    /// inputs never exist in memory at once.
    struct Generator {
        next: u64,
        rows: u64,
        buf: Vec<u8>,
        pos: usize,
        header: bool,
    }

    impl Generator {
        fn new(rows: u64) -> Self {
            Generator {
                next: 0,
                rows,
                buf: Vec::with_capacity(64 * 1024),
                pos: 0,
                header: true,
            }
        }

        fn refill(&mut self) {
            self.buf.clear();
            self.pos = 0;
            if std::mem::take(&mut self.header) {
                self.buf.extend_from_slice(HEADER.as_bytes());
            }
            while self.buf.len() < 60 * 1024 && self.next < self.rows {
                let i = self.next;
                self.next += 1;
                let (kind, id) = match i % 3 {
                    0 => ("serial-number", format!("SN{i:010}")),
                    1 => ("uuid", format!("{:08x}-1111-4222-8333-{:012x}", i, i)),
                    _ => ("hostname", format!("PC-{i}.corp.example.com")),
                };
                let (old, restore) = if i.is_multiple_of(10) {
                    (format!("OLD-{i}"), "ALL")
                } else {
                    (String::new(), "")
                };
                writeln!(
                    self.buf,
                    "user{i}@example.com,User {i},LAPTOP-{i},{kind},{id},{old},{restore}"
                )
                .unwrap();
            }
        }
    }

    impl Read for Generator {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.buf.len() {
                self.refill();
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_a_valid_row() {
        let data = format!("{HEADER}ann@example.com,ann,ANN-PC,serial-number,c02xk1,OLD-PC,data\n");
        let (ok, bad) = read_all(open(&data));
        assert!(bad.is_empty(), "{bad:?}");
        let (line, row) = &ok[0];
        assert_eq!(*line, 2);
        assert_eq!(row.email.as_str(), "ann@example.com");
        assert_eq!(row.identifier, "c02xk1");
        assert_eq!(row.identifier_norm, "C02XK1");
        assert_eq!(row.old_device_name.as_deref(), Some("OLD-PC"));
        assert_eq!(row.restore_data, Some(RestoreData::Data));
    }

    #[test]
    fn utf8_bom_is_stripped_even_when_split_across_reads() {
        let data = format!("\u{feff}{HEADER}ann@example.com,ann,PC,hostname,pc1,,\n");
        for chunk in [1, 2, 3, 4, 1024] {
            let r = DeviceMapReader::new(Trickle {
                data: data.as_bytes(),
                chunk,
            })
            .unwrap();
            assert_eq!(r.headers()[0], "emailID", "chunk {chunk}");
            let (ok, bad) = read_all(r);
            assert!(bad.is_empty());
            assert_eq!(lines_of(&ok), [2]);
        }
    }

    #[test]
    fn crlf_line_endings_are_accepted_and_not_part_of_values() {
        let data = format!(
            "{}a@example.com,a,PC-A,hostname,pc-a,,\r\n\r\nb@example.com,b,PC-B,hostname,pc-b,OLD,\"SYSTEM\"\r\n",
            HEADER.replace('\n', "\r\n")
        );
        let r = open(&data);
        assert_eq!(r.headers().last().unwrap(), "restoreData");
        let (ok, bad) = read_all(r);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(lines_of(&ok), [2, 4]);
        assert_eq!(ok[1].1.restore_data, Some(RestoreData::System));
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines_and_lines_stay_right() {
        let data = format!(
            "{HEADER}\
             a@example.com,\"Lee, Ann\",\"Ann's \"\"work\"\" PC\",hostname,pc-a,,\n\
             b@example.com,b,\"PC-B\nsecond floor\nroom 2\",hostname,pc-b,,\n\
             c@example.com,c,PC-C,hostname,pc-c,,\n\
             d@example.com,d,PC-D,uuid,bad-uuid,,\n"
        );
        let mut r = open(&data);
        let (ok, bad) = {
            let mut ok = Vec::new();
            let mut bad = Vec::new();
            while let Some(res) = r.next_row() {
                match res {
                    Ok(row) => ok.push(row),
                    Err(e) => bad.push((e, r.current_record().clone())),
                }
            }
            (ok, bad)
        };
        assert_eq!(lines_of(&ok), [2, 6]);
        assert_eq!(ok[0].1.user_name, "Lee, Ann");
        assert_eq!(ok[0].1.device_name, "Ann's \"work\" PC");
        // The multi-line value parses (and is then rejected: a newline is a
        // control character), and the next record's line is still right.
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0.line, 3);
        assert_eq!(bad[0].0.column.as_deref(), Some("deviceName"));
        assert_eq!(&bad[0].1[2], "PC-B\nsecond floor\nroom 2");
        assert_eq!(bad[1].0.line, 7);
    }

    #[test]
    fn newlines_in_user_names_are_rejected_as_control_characters() {
        // The quoted multi-line value above parses; whether it is acceptable
        // is the validator's call, and a newline is a control character.
        let data = format!("{HEADER}b@example.com,\"Bob\nSmith\",PC-B,hostname,pc-b,,\n");
        let (ok, bad) = read_all(open(&data));
        assert!(ok.is_empty());
        assert_eq!(bad[0].column.as_deref(), Some("userName"));
        assert_eq!(bad[0].error, "contains control characters");
    }

    #[test]
    fn line_numbers_are_exact_with_any_read_size() {
        let data = format!(
            "\n{HEADER}\n\
             a@example.com,a,PC-A,hostname,pc-a,,\r\n\
             \n\
             b@example.com,\"b\n\nb\",PC-B,hostname,pc-b,,\n\
             ,,,,,,\n\
             \"c@example.com\",c,PC-C,hostname,pc-c,,"
        );
        for chunk in [1, 2, 5, 7, 64, 100_000] {
            let r = DeviceMapReader::new(Trickle {
                data: data.as_bytes(),
                chunk,
            })
            .unwrap();
            let (ok, bad) = read_all(r);
            let mut lines: Vec<u64> = lines_of(&ok);
            lines.extend(bad.iter().map(|e| e.line));
            lines.sort_unstable();
            // Header on line 2, a on 4, b spans 6-8, the comma-only line 9
            // is skipped, c on 10 ends without a newline.
            assert_eq!(lines, [4, 6, 10], "chunk {chunk}");
        }
    }

    #[test]
    fn header_is_case_insensitive_trimmed_and_in_any_order() {
        let data = "  RESTOREDATA ,deviceidentifier,DeviceName,oldDeviceName,emailid, UserName,DEVICEIDENTIFIERTYPE\n\
                    ALL,pc-9,PC 9,OLD-9,x@example.com,xavier,Hostname\n";
        let r = open(data);
        assert_eq!(r.headers()[0], "  RESTOREDATA ");
        let (ok, bad) = read_all(r);
        assert!(bad.is_empty(), "{bad:?}");
        let row = &ok[0].1;
        assert_eq!(row.email.as_str(), "x@example.com");
        assert_eq!(row.user_name, "xavier");
        assert_eq!(row.device_name, "PC 9");
        assert_eq!(row.identifier_type, IdentifierType::Hostname);
        assert_eq!(row.identifier_norm, "pc-9");
        assert_eq!(row.old_device_name.as_deref(), Some("OLD-9"));
        assert_eq!(row.restore_data, Some(RestoreData::All));
    }

    #[test]
    fn optional_columns_may_be_left_out() {
        let data = "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier\n\
                    a@example.com,a,PC-A,serial-number,SN1\n";
        let (ok, bad) = read_all(open(data));
        assert!(bad.is_empty());
        assert_eq!(ok[0].1.old_device_name, None);
        assert_eq!(ok[0].1.restore_data, None);
    }

    #[test]
    fn unknown_columns_are_rejected_naming_all_of_them() {
        let data = format!("{},email,Department,email\n", HEADER.trim_end());
        let e = header_error(data.as_bytes());
        assert_eq!(
            e,
            HeaderError::UnknownColumns(vec!["email".into(), "Department".into()])
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("unknown columns \"email\", \"Department\""),
            "{msg}"
        );
        for c in Column::ALL {
            assert!(msg.contains(c.name()), "{msg}");
        }
    }

    #[test]
    fn semicolon_separated_files_get_a_hint() {
        let data = HEADER.replace(',', ";");
        let msg = header_error(data.as_bytes()).to_string();
        assert!(msg.contains("use ';' between values"), "{msg}");
    }

    #[test]
    fn missing_required_columns_are_rejected_naming_all_of_them() {
        let e = header_error(b"userName,deviceName,restoreData\n");
        assert_eq!(
            e,
            HeaderError::MissingColumns(vec![
                "emailID".into(),
                "deviceIdentifierType".into(),
                "deviceIdentifier".into()
            ])
        );
        assert!(e.to_string().starts_with(
            "missing required columns \"emailID\", \"deviceIdentifierType\", \"deviceIdentifier\""
        ));
    }

    #[test]
    fn duplicated_columns_are_rejected() {
        let data = format!("{},EmailID, userName\n", HEADER.trim_end());
        let e = header_error(data.as_bytes());
        assert_eq!(
            e,
            HeaderError::DuplicateColumns(vec!["emailID".into(), "userName".into()])
        );
        assert!(e.to_string().contains("more than once"));
    }

    #[test]
    fn empty_inputs_are_rejected_as_empty() {
        for data in ["", "\u{feff}", "\n\n", "\r\n  \r\n", ",,,\n"] {
            assert_eq!(
                header_error(data.as_bytes()),
                HeaderError::Empty,
                "{data:?}"
            );
        }
        assert!(HeaderError::Empty.to_string().contains("emailID"));
    }

    #[test]
    fn header_only_file_has_no_rows() {
        for data in [
            HEADER,
            HEADER.trim_end(),
            "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier\r\n\r\n",
        ] {
            let mut r = open(data);
            assert!(r.next_row().is_none());
            assert_eq!(r.rows_read(), 0);
        }
    }

    #[test]
    fn header_that_is_not_utf8_is_rejected() {
        // UTF-16LE, as Excel's "Unicode Text" writes it.
        let utf16: Vec<u8> = std::iter::once(0xFEFFu16)
            .chain(HEADER.encode_utf16())
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(header_error(&utf16), HeaderError::NotUtf8);
    }

    #[test]
    fn cr_only_line_endings_are_explained() {
        let data = HEADER.replace('\n', "\r") + "a@example.com,a,PC,hostname,pc,,\r";
        let e = header_error(data.as_bytes());
        assert!(e.to_string().contains("CR-only"), "{e}");
    }

    #[test]
    fn bad_enum_values_are_reported() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,mac-address,00:11:22:33:44:55,,\n\
             b@example.com,b,PC-B,hostname,pc-b,OLD,EVERYTHING\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert!(ok.is_empty());
        assert_eq!(bad[0].line, 2);
        assert_eq!(bad[0].column.as_deref(), Some("deviceIdentifierType"));
        assert_eq!(bad[0].value.as_deref(), Some("mac-address"));
        assert_eq!(
            bad[0].error,
            "unknown identifier type \"mac-address\" (expected serial-number, uuid or hostname)"
        );
        assert_eq!(bad[1].column.as_deref(), Some("restoreData"));
        assert_eq!(bad[1].value.as_deref(), Some("EVERYTHING"));
    }

    #[test]
    fn bad_email_is_reported() {
        let data = format!("{HEADER} ann(at)example.com ,a,PC-A,hostname,pc-a,,\n");
        let (_, bad) = read_all(open(&data));
        assert_eq!(bad[0].column.as_deref(), Some("emailID"));
        assert_eq!(bad[0].value.as_deref(), Some("ann(at)example.com"));
        assert_eq!(bad[0].error, "not a valid email address (missing '@')");
    }

    #[test]
    fn bad_uuid_is_reported() {
        let data = format!("{HEADER}a@example.com,a,PC-A,uuid,4c4c4544-0042-3510-8052,,\n");
        let (_, bad) = read_all(open(&data));
        assert_eq!(bad[0].column.as_deref(), Some("deviceIdentifier"));
        assert!(
            bad[0].error.starts_with("not a valid UUID"),
            "{}",
            bad[0].error
        );
    }

    #[test]
    fn placeholder_serial_is_rejected() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,serial-number,To Be Filled By O.E.M.,,\n\
             b@example.com,b,PC-B,serial-number,0000000000,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert!(ok.is_empty());
        assert_eq!(
            bad[0].error,
            "placeholder value \"To Be Filled By O.E.M.\" is not a usable identifier"
        );
        assert_eq!(
            bad[1].error,
            "placeholder value \"0000000000\" is not a usable identifier"
        );
    }

    #[test]
    fn hostnames_are_normalized_to_lowercase_short_names() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,hostname,PC-A.Corp.Example.COM.,,\n\
             b@example.com,b,PC-B,hostname,my pc,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert_eq!(ok[0].1.identifier, "PC-A.Corp.Example.COM.");
        assert_eq!(ok[0].1.identifier_norm, "pc-a");
        assert_eq!(bad[0].column.as_deref(), Some("deviceIdentifier"));
        assert!(bad[0].error.contains("whitespace"), "{}", bad[0].error);
    }

    #[test]
    fn duplicate_identifier_is_reported_with_the_first_line() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,serial-number,SN1,,\n\
             b@example.com,b,PC-B,serial-number,SN2,,\n\
             c@example.com,c,PC-C,serial-number,SN1,,\n\
             d@example.com,d,PC-D,serial-number,SN1,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert_eq!(lines_of(&ok), [2, 3]);
        let want = |line| RowError {
            line,
            column: Some("deviceIdentifier".into()),
            value: Some("SN1".into()),
            error: "duplicate identifier: also on line 2".into(),
        };
        assert_eq!(bad, [want(4), want(5)]);
    }

    #[test]
    fn duplicates_are_found_after_normalization() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,serial-number,abc123,,\n\
             b@example.com,b,PC-B,serial-number,  ABC123 ,,\n\
             c@example.com,c,PC-C,hostname,Laptop-1,,\n\
             d@example.com,d,PC-D,hostname,laptop-1.corp.example.com,,\n\
             e@example.com,e,PC-E,uuid,4c4c4544-0042-3510-8052-b4c04f564433,,\n\
             f@example.com,f,PC-F,UUID,{{4C4C4544004235108052B4C04F564433}},,\n\
             g@example.com,g,PC-G,hostname,abc123,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        // The same text under another identifier type is a different key.
        assert_eq!(lines_of(&ok), [2, 4, 6, 8]);
        let got: Vec<(u64, &str)> = bad.iter().map(|e| (e.line, e.error.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "duplicate identifier: also on line 2"),
                (5, "duplicate identifier: also on line 4"),
                (7, "duplicate identifier: also on line 6"),
            ]
        );
    }

    #[test]
    fn identifier_of_an_invalid_row_still_counts_for_duplicates() {
        let data = format!(
            "{HEADER}not-an-email,a,PC-A,serial-number,SN1,,\n\
             b@example.com,b,PC-B,serial-number,SN1,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert!(ok.is_empty());
        assert_eq!(bad[1].error, "duplicate identifier: also on line 2");
    }

    #[test]
    fn several_problems_in_a_row_are_joined_into_one_error() {
        let data =
            format!("{HEADER}bad,,PC-A,serial-number,SN1,,ALL\n,,PC-B,serial-number,SN2,,\n");
        let (_, bad) = read_all(open(&data));
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].column.as_deref(), Some("emailID"));
        assert_eq!(bad[0].value.as_deref(), Some("bad"));
        assert_eq!(bad[1].value, None, "empty values are not echoed");
        assert_eq!(
            bad[0].error,
            "emailID: not a valid email address (missing '@'); userName: missing value; \
             restoreData: restoreData needs oldDeviceName"
        );
    }

    #[test]
    fn restore_data_without_old_device_name_is_rejected() {
        let data = format!("{HEADER}a@example.com,a,PC-A,serial-number,SN1,  ,ALL\n");
        let (_, bad) = read_all(open(&data));
        assert_eq!(bad[0].column.as_deref(), Some("restoreData"));
        assert_eq!(bad[0].value.as_deref(), Some("ALL"));
        assert_eq!(bad[0].error, "restoreData needs oldDeviceName");
    }

    #[test]
    fn blank_and_comma_only_lines_are_skipped() {
        let data = format!(
            "{HEADER}\n\na@example.com,a,PC-A,hostname,pc-a,,\n   \n,,,,,,\n , , ,,,,\r\n\
             b@example.com,b,PC-B,hostname,pc-b,,\n\n"
        );
        let mut r = open(&data);
        let first = r.next_row().unwrap().unwrap();
        let second = r.next_row().unwrap().unwrap();
        assert!(r.next_row().is_none());
        assert_eq!((first.0, second.0), (4, 8));
        assert_eq!(r.rows_read(), 2);
    }

    #[test]
    fn wrong_field_count_is_reported_without_column() {
        let data = format!(
            "{HEADER}a@example.com,a,PC-A,hostname,pc-a\n\
             b@example.com,b,PC-B,hostname,pc-b,,,extra\n\
             c@example.com,c,PC-C,hostname,pc-c,,\n"
        );
        let (ok, bad) = read_all(open(&data));
        assert_eq!(lines_of(&ok), [4]);
        assert_eq!(
            bad,
            [
                RowError {
                    line: 2,
                    column: None,
                    value: None,
                    error: "expected 7 fields, found 5".into()
                },
                RowError {
                    line: 3,
                    column: None,
                    value: None,
                    error: "expected 7 fields, found 8".into()
                },
            ]
        );
    }

    #[test]
    fn invalid_utf8_in_a_row_names_the_line_and_reading_continues() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"a@example.com,Jos\xe9,PC-A,hostname,pc-a,,\n");
        data.extend_from_slice(b"b@example.com,b,PC-B,hostname,pc-b,,\n");
        let mut r = DeviceMapReader::new(&data[..]).unwrap();
        let e = r.next_row().unwrap().unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.column.as_deref(), Some("userName"));
        assert_eq!(e.value.as_deref(), Some("Jos\u{fffd}"));
        assert!(
            e.error.starts_with("line 2 is not valid UTF-8"),
            "{}",
            e.error
        );
        assert_eq!(&r.current_record()[1], "Jos\u{fffd}");
        assert_eq!(r.next_row().unwrap().unwrap().0, 3);
    }

    #[test]
    fn long_values_are_truncated_in_errors() {
        let long = "é".repeat(300);
        let data = format!("{HEADER}a@example.com,{long},PC-A,hostname,pc-a,,\n");
        let (_, bad) = read_all(open(&data));
        assert_eq!(bad[0].column.as_deref(), Some("userName"));
        assert_eq!(
            bad[0].value.as_ref().unwrap().chars().count(),
            MAX_VALUE_CHARS
        );
    }

    #[test]
    fn current_record_returns_the_raw_fields() {
        let data = format!("{HEADER} a@example.com ,\"Lee, Ann\",PC-A,hostname,pc-a,,\r\n");
        let mut r = open(&data);
        r.next_row().unwrap().unwrap();
        let rec = r.current_record();
        assert_eq!(rec.len(), 7);
        assert_eq!(&rec[0], " a@example.com ");
        assert_eq!(&rec[1], "Lee, Ann");
        assert_eq!(&rec[6], "");
        assert!(r.next_row().is_none());
    }

    #[test]
    fn read_errors_end_the_iteration_and_are_kept() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "upload cut off",
                    ));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = format!("{HEADER}a@example.com,a,PC-A,hostname,pc-a,,\nb@exam");
        let mut r = DeviceMapReader::new(Failing(data.as_bytes())).unwrap();
        assert_eq!(r.next_row().unwrap().unwrap().0, 2);
        let e = r.next_row().unwrap().unwrap_err();
        assert!(e.error.contains("upload cut off"), "{}", e.error);
        assert!(r.next_row().is_none());
        assert!(r.read_error().unwrap().contains("upload cut off"));
    }

    /// Counts the bytes taken from the wrapped reader.
    struct Counting<R> {
        inner: R,
        taken: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    /// `head`, then `tail_rows` valid rows (about 8 MB for 100,000), produced on the fly.
    fn with_tail(head: String, tail_rows: u64) -> impl Read {
        let mut rows = Generator::new(tail_rows);
        rows.header = false;
        io::Cursor::new(head.into_bytes()).chain(rows)
    }

    #[test]
    fn unterminated_quote_stops_at_the_record_cap_without_reading_the_rest() {
        let head = format!(
            "{HEADER}a@example.com,a,PC-A,hostname,pc-a,,\n\
             b@example.com,\"Bob,PC-B,hostname,pc-b,,\n"
        );
        let before_broken = (HEADER.len() + "a@example.com,a,PC-A,hostname,pc-a,,\n".len()) as u64;
        for chunk in [1000, 4096, 100_000] {
            let taken = std::rc::Rc::new(std::cell::Cell::new(0));
            let input = Counting {
                inner: with_tail(head.clone(), 100_000),
                taken: taken.clone(),
            };
            let mut r = DeviceMapReader::new(io::BufReader::with_capacity(chunk, input)).unwrap();
            assert_eq!(r.next_row().unwrap().unwrap().0, 2);
            let e = r.next_row().unwrap().unwrap_err();
            assert_eq!(e.line, 3);
            assert_eq!((e.column.as_deref(), e.value.as_deref()), (None, None));
            assert_eq!(
                e.error,
                "the record starting on line 3 is longer than 65536 bytes, most likely because \
                 a quote (\") is never closed; the rest of the file was not read"
            );
            assert!(r.next_row().is_none());
            assert!(r.next_row().is_none());
            assert_eq!(r.stopped_at(), Some(3));
            assert_eq!(r.read_error(), None);
            assert_eq!(r.rows_read(), 2);
            assert_eq!(r.current_record().len(), 0);
            // Of the ~8 MB only the cap's worth (plus one byte of look-ahead and whatever the
            // BufReader had buffered) was ever read.
            let limit = before_broken + MAX_RECORD_BYTES as u64 + 1 + chunk as u64;
            assert!(
                taken.get() <= limit,
                "read {} bytes, limit {limit}",
                taken.get()
            );
        }
    }

    #[test]
    fn record_buffer_never_exceeds_the_cap() {
        let head = format!("{HEADER}b@example.com,\"Bob,PC-B,hostname,pc-b,,\n");
        let mut r = DeviceMapReader::new(with_tail(head, 100_000)).unwrap();
        let line = read_raw(&mut r.csv, &mut r.record).unwrap().unwrap();
        assert_eq!(line, 2);
        assert!(r.csv.get_ref().cut);
        let len = r.record.as_slice().len();
        assert!(len <= MAX_RECORD_BYTES, "{len}");
        assert!(len > MAX_RECORD_BYTES - 1000, "{len}");
        assert!(r.csv.get_ref().delivered - r.csv.get_ref().record_end <= MAX_RECORD_BYTES as u64);
        // Nothing more comes out of the source.
        assert!(!r.csv.read_byte_record(&mut r.record).unwrap());
    }

    #[test]
    fn records_just_under_the_cap_are_read_and_the_file_goes_on() {
        // A quoted value with newlines whose record is just under the cap: parsed (and refused
        // for its length), then the rows after it read normally with the right lines.
        let prefix = "a@example.com,a,\"";
        let suffix = "\",hostname,pc-a,,\n";
        let filler = "x".repeat(99) + "\n";
        let mut name = String::new();
        while prefix.len() + name.len() + filler.len() + suffix.len() < MAX_RECORD_BYTES {
            name.push_str(&filler);
        }
        let record = format!("{prefix}{name}{suffix}");
        assert!(record.len() <= MAX_RECORD_BYTES && record.len() > MAX_RECORD_BYTES - 100);
        let newlines = name.matches('\n').count() as u64;
        let data = format!("{HEADER}{record}{record}b@example.com,b,PC-B,hostname,pc-b,,\n");
        for chunk in [1, 7, 4096, 100_000] {
            let r = DeviceMapReader::new(Trickle {
                data: data.as_bytes(),
                chunk,
            })
            .unwrap();
            let (ok, bad) = read_all(r);
            assert_eq!(lines_of(&ok), [2 + 2 * (newlines + 1)], "chunk {chunk}");
            assert_eq!(bad.len(), 2);
            assert_eq!(bad[0].line, 2);
            assert_eq!(bad[0].column.as_deref(), Some("deviceName"));
            assert_eq!(bad[1].line, 2 + newlines + 1);
        }
    }

    #[test]
    fn a_last_record_of_exactly_the_cap_is_not_cut() {
        let prefix = "a@example.com,a,PC-A,hostname,pc-a,";
        let data = format!(
            "{HEADER}{prefix}{},",
            "x".repeat(MAX_RECORD_BYTES - prefix.len() - 1)
        );
        let mut r = open(&data);
        let e = r.next_row().unwrap().unwrap_err();
        assert_eq!(e.column.as_deref(), Some("oldDeviceName"));
        assert!(r.next_row().is_none());
        assert_eq!(r.stopped_at(), None);
        // One byte more and it is too long.
        let data = format!("{data} ");
        let mut r = open(&data);
        assert_eq!(r.next_row().unwrap().unwrap_err().line, 2);
        assert_eq!(r.stopped_at(), Some(2));
    }

    #[test]
    fn the_cap_applies_to_empty_lines_before_a_record_too() {
        let data = format!(
            "{HEADER}{}a@example.com,a,PC-A,hostname,pc-a,,\n",
            "\n".repeat(MAX_RECORD_BYTES + 10)
        );
        let mut r = open(&data);
        let e = r.next_row().unwrap().unwrap_err();
        assert!(e.error.contains("longer than 65536 bytes"), "{}", e.error);
        assert!(r.next_row().is_none());
        assert!(r.stopped_at().is_some());
    }

    #[test]
    fn an_overlong_header_is_a_header_error() {
        let data = format!("emailID,\"userName{}", "x,".repeat(MAX_RECORD_BYTES));
        let e = header_error(data.as_bytes());
        assert_eq!(e, HeaderError::TooLong);
        assert!(e.to_string().contains("65536 bytes"), "{e}");
        // A big CR-only file is one long record too, and gets the CR-only explanation.
        let data = HEADER.replace('\n', "\r")
            + &"a@example.com,a,PC,hostname,pc,,\r".repeat(MAX_RECORD_BYTES / 30);
        let e = header_error(data.as_bytes());
        assert!(e.to_string().contains("CR-only"), "{e}");
    }

    #[test]
    fn reader_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<DeviceMapReader<std::fs::File>>();
    }

    #[test]
    fn failure_csv_output_parses_back() {
        let data = format!(
            "\u{feff}{HEADER}a@example.com,\"Lee, Ann\",\"PC \"\"A\"\"\",hostname,pc-a,,ALL\n\
             b@example.com,b,PC-B,hostname,pc-b\n\
             c@example.com,\"multi\nline\",PC-C,hostname,pc-c,,\n"
        );
        let mut r = open(&data);
        let mut w = FailureCsvWriter::new(Vec::new(), r.headers()).unwrap();
        let mut expected = Vec::new();
        while let Some(res) = r.next_row() {
            let e = res.unwrap_err();
            w.write(r.current_record(), &e.error).unwrap();
            let mut fields: Vec<String> = r.current_record().iter().map(str::to_owned).collect();
            fields.resize(7, String::new());
            fields.push(e.error);
            expected.push(fields);
        }
        let out = w.into_inner().unwrap();
        assert!(out.starts_with(UTF8_BOM));
        assert!(out.ends_with(b"\r\n"));

        let mut back = ::csv::ReaderBuilder::new().from_reader(&out[UTF8_BOM.len()..]);
        let header: Vec<String> = back.headers().unwrap().iter().map(str::to_owned).collect();
        let mut want_header: Vec<String> =
            HEADER.trim_end().split(',').map(str::to_owned).collect();
        want_header.push("error".into());
        assert_eq!(header, want_header);
        let rows: Vec<Vec<String>> = back
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(rows[0][1], "Lee, Ann");
        assert_eq!(rows[0][2], "PC \"A\"");
        assert_eq!(rows[0][7], "restoreData needs oldDeviceName");
        assert_eq!(rows[1][7], "expected 7 fields, found 5");
        assert_eq!(rows[2][1], "multi\nline");

        // As downloaded the report is a device map again: its error column is
        // ignored. The short row came back padded with its empty optional
        // columns and is now complete; the other two still fail until fixed.
        let (ok, bad) = read_all(open(std::str::from_utf8(&out).unwrap()));
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].1.device_name, "PC-B");
        assert_eq!(bad.len(), 2);
        // With the column deleted too (BOM and CRLF included).

        let text = String::from_utf8(out).unwrap();
        let fixed: String = text
            .split("\r\n")
            .take(2)
            .map(|line| {
                line.rsplit_once(',')
                    .unwrap()
                    .0
                    .replace(",,ALL", ",OLD-A,ALL")
                    + "\r\n"
            })
            .collect();
        let (ok, bad) = read_all(open(&fixed));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok[0].1.user_name, "Lee, Ann");
        assert_eq!(ok[0].1.device_name, "PC \"A\"");
    }

    #[test]
    fn a_failure_report_of_a_failure_report_keeps_one_error_column() {
        let headers: Vec<String> = HEADER
            .trim_end()
            .split(',')
            .map(str::to_owned)
            .chain(std::iter::once("error".to_owned()))
            .collect();
        let mut w = FailureCsvWriter::new(Vec::new(), &headers).unwrap();
        let record = StringRecord::from(vec![
            "a@example.com",
            "a",
            "PC",
            "hostname",
            "pc",
            "",
            "",
            "old problem",
        ]);
        w.write(&record, "new problem").unwrap();
        let out = w.into_inner().unwrap();
        let mut back = ::csv::ReaderBuilder::new().from_reader(&out[UTF8_BOM.len()..]);
        let header: Vec<String> = back.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header, headers);
        let row = back.records().next().unwrap().unwrap();
        assert_eq!(&row[7], "new problem");
        assert_eq!(row.len(), 8);
    }

    #[test]
    fn ten_thousand_generated_rows_are_all_valid() {
        let mut r = DeviceMapReader::new(Generator::new(10_000)).unwrap();
        let mut expected_line = 2;
        let mut replacements = 0;
        while let Some(res) = r.next_row() {
            let (line, row) = res.unwrap();
            assert_eq!(line, expected_line);
            expected_line += 1;
            replacements += usize::from(row.old_device_name.is_some());
        }
        assert_eq!(r.rows_read(), 10_000);
        assert_eq!(r.seen.len(), 10_000);
        assert_eq!(replacements, 1_000);
    }

    #[test]
    fn seen_identifiers_keep_the_first_line() {
        let mut s = SeenIdentifiers::new();
        assert!(s.is_empty());
        assert_eq!(s.insert(IdentifierType::SerialNumber, "A1", 2), None);
        assert_eq!(s.insert(IdentifierType::Hostname, "A1", 3), None);
        assert_eq!(s.insert(IdentifierType::SerialNumber, "A1", 4), Some(2));
        assert_eq!(s.insert(IdentifierType::SerialNumber, "A1", 5), Some(2));
        assert_eq!(s.len(), 2);
        assert_eq!(std::mem::size_of::<(IdKey, u32)>(), 20);
    }

    /// Peak resident memory of this process, from /proc (Linux only).
    fn peak_rss_mb() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// `cargo test --release -- --ignored --nocapture million_rows`
    #[test]
    #[ignore = "benchmark: run in release"]
    fn million_rows_throughput() {
        const ROWS: u64 = 1_000_000;
        let start = std::time::Instant::now();
        let mut r = DeviceMapReader::new(Generator::new(ROWS)).unwrap();
        let mut valid = 0u64;
        while let Some(res) = r.next_row() {
            res.unwrap();
            valid += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let bytes = r.csv.position().byte();
        assert_eq!(valid, ROWS);
        println!(
            "{ROWS} rows, {:.1} MB in {elapsed:.2} s: {:.0} rows/s, {:.0} MB/s, peak RSS {} MB",
            bytes as f64 / 1e6,
            ROWS as f64 / elapsed,
            bytes as f64 / 1e6 / elapsed,
            peak_rss_mb().map_or("?".into(), |m| format!("{m:.0}")),
        );
    }
}
