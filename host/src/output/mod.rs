//! The batch output: the table operations a sink staged, and their digest.
//!
//! Staging validates and snapshots rows at the moment the sink calls
//! `stage` (a staged file is read then; later changes to it have no effect),
//! so the output is a plain value: the commit stage applies it, and nothing
//! here touches a table. JSON rows are re-encoded canonically (sorted keys,
//! no whitespace), so sinks written in different languages that stage the
//! same rows produce the same bytes and the same digest. Arrow IPC streams
//! are kept as the sink wrote them and decoded once, here: the commit uses
//! the decoded columns, which share the file's bytes.

use crate::sandbox::batch_log::LogLine;
use crate::limits::{Budget, Limit, LimitExceeded, Limits};
use crate::source::records::BatchSpec;
use crate::sandbox::bindings::sluice::sink::output as wit;
use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use cap_std::fs::Dir;
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod canonical;
mod digest;
#[cfg(test)]
mod fuzz;
mod ipc_stream;
mod json_rows;
pub(crate) mod json_text;

use ipc_stream::arrow_rows;
pub(crate) use json_rows::JsonRows;

use digest::OutputDigest;

/// How staged rows are applied to their table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Append the rows.
    Append,
    /// MERGE on these key columns.
    Upsert {
        /// Key columns.
        keys: Vec<String>,
    },
    /// Delete the rows with these key columns' values (`sluice:sink@0.2.0`).
    Delete {
        /// Key columns.
        keys: Vec<String>,
    },
}

impl WriteMode {
    /// The key columns (none for appends).
    pub fn keys(&self) -> &[String] {
        match self {
            WriteMode::Append => &[],
            WriteMode::Upsert { keys } | WriteMode::Delete { keys } => keys,
        }
    }

    /// The keys, if this mode applies rows by key (an upsert or a delete).
    pub fn merge_keys(&self) -> Option<&[String]> {
        (!matches!(self, WriteMode::Append)).then(|| self.keys())
    }
}

/// Format of staged rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Newline-delimited JSON objects.
    JsonLines,
    /// An Arrow IPC stream.
    ArrowIpc,
}

/// Staged rows, as the host holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagedRows {
    /// Canonical JSON objects, one per line, each line ending in `\n`.
    JsonLines(Bytes),
    /// An Arrow IPC stream, as the sink wrote it, and its record batches.
    ArrowIpc(ArrowRows),
}

/// An Arrow IPC stream as the sink wrote it, with its record batches,
/// decoded (and validated: framing, offsets, UTF-8) once, when staged. The
/// batches' columns point into the stream's bytes rather than copying them.
#[derive(Debug, Clone)]
pub struct ArrowRows {
    bytes: Buffer,
    batches: Vec<RecordBatch>,
}

impl ArrowRows {
    /// The stream's bytes: what the digest covers.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The stream's record batches, in order.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// The stream's bytes, shared.
    pub(crate) fn buffer(&self) -> &Buffer {
        &self.bytes
    }
}

/// The batches are a function of the bytes.
impl PartialEq for ArrowRows {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for ArrowRows {}

impl StagedRows {
    /// The format of these rows.
    pub fn format(&self) -> FileFormat {
        match self {
            StagedRows::JsonLines(_) => FileFormat::JsonLines,
            StagedRows::ArrowIpc(_) => FileFormat::ArrowIpc,
        }
    }

    /// The encoded rows.
    pub fn bytes(&self) -> &[u8] {
        match self {
            StagedRows::JsonLines(b) => b,
            StagedRows::ArrowIpc(a) => a.bytes(),
        }
    }
}

/// One staged operation: a `stage` call of the sink, or several small JSON
/// ones of the same table and mode, merged (after they were digested, so
/// the digest is the same either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedOp {
    /// Target table.
    pub table: String,
    /// Append or upsert.
    pub mode: WriteMode,
    /// The rows.
    pub rows: StagedRows,
    /// Number of rows.
    pub row_count: u64,
}

/// Per-table totals of a batch output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableSummary {
    /// Table.
    pub table: String,
    /// Number of operations: `stage` calls, small adjacent JSON ones of a
    /// table merged into one.
    pub operations: usize,
    /// Rows appended.
    pub appended_rows: u64,
    /// Rows upserted.
    pub upserted_rows: u64,
    /// Rows staged as deletes (keys).
    #[serde(skip_serializing_if = "is_zero")]
    pub deleted_rows: u64,
    /// Encoded bytes of the staged rows.
    pub bytes: u64,
}

/// What running one batch produced. Applying it is the commit stage's job.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    /// The batch.
    pub batch: BatchSpec,
    /// The staged operations, in the order the sink staged them.
    pub ops: Vec<StagedOp>,
    /// SHA-256 over the operations (hex). Identical for identical outputs.
    pub digest: String,
    /// The batch log.
    pub log: Vec<LogLine>,
    /// Records delivered to the sink.
    pub records_in: u64,
    /// Key, value and header bytes delivered to the sink.
    pub record_bytes_in: u64,
    /// Fuel the sink consumed.
    pub fuel_used: u64,
    /// Records of the batch set aside as poison (`pipeline.on_poison =
    /// "quarantine"`): not delivered, written to the quarantine table.
    pub quarantined: u64,
    /// Where the host's time went (not part of the output proper).
    pub timings: Timings,
}

/// Host-side durations of one batch attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Scratch directory, WASI context and store.
    pub setup: std::time::Duration,
    /// Instantiating the component from the pool.
    pub instantiate: std::time::Duration,
    /// The sink's `for-each-batch`, including record delivery and staging.
    pub call: std::time::Duration,
    /// Removing the scratch directory.
    pub teardown: std::time::Duration,
}

impl BatchOutput {
    /// Totals per table, in table-name order.
    pub fn tables(&self) -> Vec<TableSummary> {
        let mut out: Vec<TableSummary> = Vec::new();
        let names: BTreeSet<&str> = self.ops.iter().map(|op| op.table.as_str()).collect();
        for name in names {
            let mut s = TableSummary { table: name.to_owned(), operations: 0, appended_rows: 0, upserted_rows: 0, deleted_rows: 0, bytes: 0 };
            for op in self.ops.iter().filter(|op| op.table == name) {
                s.operations += 1;
                s.bytes += op.rows.bytes().len() as u64;
                match op.mode {
                    WriteMode::Append => s.appended_rows += op.row_count,
                    WriteMode::Upsert { .. } => s.upserted_rows += op.row_count,
                    WriteMode::Delete { .. } => s.deleted_rows += op.row_count,
                }
            }
            out.push(s);
        }
        out
    }
}

/// Bytes of `limits.output_bytes` charged for every `stage` call, beyond its
/// rows: the arguments' bookkeeping and the operation's digest header. A
/// call with no rows still pays it, so a sink cannot make the host keep
/// or hash operations for free.
pub(crate) const OP_CHARGE: u64 = 64;
/// Charged for an operation the host keeps on its own (an Arrow stream, a
/// large JSON operation, or the first of its table): its record and the
/// table name and keys it holds.
pub(crate) const KEPT_OP_CHARGE: u64 = 512;
/// Charged for every staged row beyond its bytes (the newline and the
/// per-row bookkeeping of the commit).
pub(crate) const ROW_CHARGE: u64 = 16;
/// Charged for every Arrow array (field node) and field of a staged stream:
/// what the decoded array or field holds besides the stream's bytes.
pub(crate) const ARRAY_CHARGE: u64 = 256;
/// A row that is not canonical is parsed into a `serde_json::Value` tree,
/// which can take this many times the row's length (`[{"":0},…]`: a B-tree
/// node of ~640 bytes per 7 bytes of text). That much must be left of
/// `limits.output_bytes` while it is parsed.
pub(crate) const PARSE_FACTOR: u64 = 128;
/// JSON operations smaller than this are merged into the previous operation
/// of their table (same mode), once digested: millions of one-row calls
/// become a few operations.
const MERGE_BELOW: usize = 64 << 10;
/// A merged operation is closed at this size, so the commit still decodes
/// a large output on two threads.
const MERGE_UP_TO: usize = 8 << 20;

/// How a table may be staged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Declared {
    /// Any upsert keys (no config to check them against: `sluice exec`).
    AnyKeys,
    /// Upserts only on exactly these keys (`[[tables]] keys`); none: appends only.
    Keys(Vec<String>),
}

/// The tables a batch may stage to.
pub(crate) type DeclaredTables = BTreeMap<String, Declared>;

/// A `stage` call that ends the batch: the sink broke a rule of the
/// pipeline, not just sent rows it could fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageViolation {
    /// An upsert on keys other than the table's declared keys.
    #[error(
        "sink upserted into table `{table}` on [{}], but the table is keyed on [{}] (`tables.keys` in the pipeline config); \
         the pipeline chooses the merge key, not the sink: upsert on the declared keys{}",
        .staged.join(", "), .declared.join(", "),
        if .declared.is_empty() { " (this table declares none, so it takes appends only)" } else { "" }
    )]
    MergeKey {
        /// The table.
        table: String,
        /// The keys the sink gave.
        staged: Vec<String>,
        /// The table's declared keys.
        declared: Vec<String>,
    },
}

/// An open merged operation: small JSON calls of one table appended here.
struct Open {
    /// Index of its operation in `ops`.
    index: usize,
    rows: Vec<u8>,
    count: u64,
}

/// Collects the `stage` calls of one batch, enforcing the output limits.
///
/// Every byte the host keeps or needs for a call is charged against
/// `limits.output_bytes` (and every row against `limits.output_rows`)
/// before it is allocated: a row as it is read from guest memory, a staged
/// file by its length before it is read, a parse by its worst case before
/// it runs.
pub(crate) struct OutputCollector {
    declared: Option<Arc<DeclaredTables>>,
    ops: Vec<StagedOp>,
    /// Per table: the open merged operation, if any.
    open: BTreeMap<String, Open>,
    /// Per table: the mode of its operations (the commit takes one per table).
    modes: BTreeMap<String, WriteMode>,
    digest: OutputDigest,
    rows: Budget,
    bytes: Budget,
}

/// The outer error ends the batch (a limit, a bad call); the inner one is
/// returned to the sink.
pub(crate) type StageResult = wasmtime::Result<Result<(), wit::StageError>>;

fn limit(e: LimitExceeded) -> wasmtime::Error {
    wasmtime::Error::new(e)
}

impl OutputCollector {
    /// `declared`: the tables the pipeline declares; `None` accepts any name.
    pub(crate) fn new(declared: Option<Arc<DeclaredTables>>, limits: &Limits) -> Self {
        Self {
            declared,
            ops: Vec::new(),
            open: BTreeMap::new(),
            modes: BTreeMap::new(),
            digest: OutputDigest::new(),
            rows: Budget::new(Limit::OutputRows, limits),
            bytes: Budget::new(Limit::OutputBytes, limits),
        }
    }

    /// The staged operations, in order, and their digest.
    pub(crate) fn finish(mut self) -> (Vec<StagedOp>, String) {
        let tables: Vec<String> = self.open.keys().cloned().collect();
        tables.iter().for_each(|t| self.close(t));
        (self.ops, self.digest.finish())
    }

    /// Charge bytes the host is about to copy out of guest memory for this
    /// call (a table name, a key).
    pub(crate) fn charge_bytes(&self, n: u64) -> wasmtime::Result<()> {
        self.bytes.charge(n).map_err(limit)
    }

    /// Start a `stage` call: its fixed charge, then whether `table` may be
    /// staged to. `Ok(Err)`: the sink's error to handle.
    pub(crate) fn begin(&self, table: &str) -> StageResult {
        self.charge_bytes(OP_CHARGE)?;
        if let Some(declared) = &self.declared
            && !declared.contains_key(table)
        {
            let known = declared.keys().cloned().collect::<Vec<_>>().join(", ");
            return Ok(Err(wit::StageError::UnknownTable(format!(
                "table `{table}` is not declared by the pipeline (declared: {known})"
            ))));
        }
        Ok(Ok(()))
    }

    /// Check the mode of a call to `table` (after [`begin`](Self::begin)):
    /// declared keys, and one mode per table per batch.
    pub(crate) fn check_mode(&self, table: &str, mode: &WriteMode) -> StageResult {
        if let Some(keys) = mode.merge_keys() {
            if keys.is_empty() {
                return Ok(Err(wit::StageError::InvalidRows(format!("{} needs at least one key column", describe(mode)))));
            }
            if let Some(Declared::Keys(declared)) = self.declared.as_ref().and_then(|d| d.get(table)) {
                let staged: BTreeSet<&String> = keys.iter().collect();
                if staged.len() != keys.len() || staged != declared.iter().collect() {
                    return Err(wasmtime::Error::new(StageViolation::MergeKey {
                        table: table.to_owned(),
                        staged: keys.to_vec(),
                        declared: declared.clone(),
                    }));
                }
            }
        }
        // Upserts and deletes on the same keys mix (one MERGE); appends
        // and keyed operations do not.
        if let Some(previous) = self.modes.get(table)
            && (previous.merge_keys().is_some() != mode.merge_keys().is_some() || previous.keys() != mode.keys())
        {
            return Ok(Err(wit::StageError::InvalidRows(format!(
                "table `{table}` was staged to with {} before; a batch must stage either appends, or upserts \
                 and deletes on the same keys, to a table, not a mix",
                describe(previous)
            ))));
        }
        Ok(Ok(()))
    }

    /// JSON rows given as an iterator (the lazily lifting caller reads them
    /// one at a time itself, with [`push_json_row`](Self::push_json_row)).
    #[cfg(test)]
    pub(crate) fn stage_json<'a>(
        &mut self,
        table: &str,
        mode: WriteMode,
        rows: impl Iterator<Item = wasmtime::Result<std::borrow::Cow<'a, str>>>,
    ) -> StageResult {
        let mut out = JsonRows::new(mode.keys());
        for row in rows {
            if let Err(e) = self.push_json_row(&mut out, row?.as_bytes())? {
                return Ok(Err(e));
            }
        }
        self.finish_json(table, mode, out)?;
        Ok(Ok(()))
    }

    /// One row of a JSON call, charged (a row, its bytes) before it is kept.
    pub(crate) fn push_json_row(&self, rows: &mut JsonRows, row: &[u8]) -> StageResult {
        self.rows.charge(1).map_err(limit)?;
        rows.push(row, &self.bytes).map_err(limit)
    }

    /// A file the sink wrote under `/staging`. Its length is checked against
    /// what is left of `limits.output_bytes` before anything is read (a
    /// sparse file can be far longer than the bytes written into it).
    pub(crate) fn stage_file(&mut self, table: &str, mode: WriteMode, staging: &Dir, path: &str, format: wit::FileFormat) -> StageResult {
        let file = match open_staged_file(staging, path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let relative = path.strip_prefix("/staging/").unwrap_or(path);
        let read_err = |e: std::io::Error| wit::StageError::File(format!("cannot read /staging/{relative}: {e}"));
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Ok(Err(read_err(e))),
        };
        self.bytes.check(len).map_err(limit)?;
        let keys = mode.keys().to_vec();
        match format {
            wit::FileFormat::JsonLines => {
                use std::io::BufRead;
                let mut reader = std::io::BufReader::new(std::io::Read::take(file.into_std(), len));
                let mut out = JsonRows::new(&keys);
                loop {
                    // Each line is read straight into the rows (the file's
                    // length fit the budget), then charged and kept or
                    // re-encoded in place.
                    let start = out.out.len();
                    match reader.read_until(b'\n', &mut out.out) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return Ok(Err(read_err(e))),
                    }
                    if out.out.last() == Some(&b'\n') {
                        out.out.pop();
                    }
                    if out.out[start..].iter().all(u8::is_ascii_whitespace) {
                        out.out.truncate(start);
                        continue;
                    }
                    self.rows.charge(1).map_err(limit)?;
                    self.bytes.charge((out.out.len() - start) as u64 + ROW_CHARGE).map_err(limit)?;
                    if let Err(e) = out.finish_row(start, &self.bytes).map_err(limit)? {
                        return Ok(Err(wit::StageError::InvalidRows(format!("{path}: {}", stage_error_text(e)))));
                    }
                }
                self.finish_json(table, mode, out)?;
            }
            wit::FileFormat::ArrowIpc => {
                // Read into a 64-byte aligned buffer: the decoded columns are
                // slices of it, never realigned copies.
                self.bytes.charge(len).map_err(limit)?;
                let mut buffer = arrow_buffer::MutableBuffer::from_len_zeroed(len as usize);
                if let Err(e) = std::io::Read::read_exact(&mut file.into_std(), buffer.as_slice_mut()) {
                    return Ok(Err(read_err(e)));
                }
                let rows = match arrow_rows(buffer.into(), &keys, path, &self.rows, &self.bytes)? {
                    Ok(rows) => rows,
                    Err(e) => return Ok(Err(e)),
                };
                self.add_kept(table, mode, rows)?;
            }
        }
        Ok(Ok(()))
    }

    /// Digest a JSON operation, then merge it into its table's open
    /// operation when both are small.
    pub(crate) fn finish_json(&mut self, table: &str, mode: WriteMode, rows: JsonRows) -> wasmtime::Result<()> {
        let (out, count) = rows.into_parts();
        self.modes.entry(table.to_owned()).or_insert_with(|| mode.clone());
        if out.len() >= MERGE_BELOW {
            // Large: kept on its own, its bytes shared with the digest.
            self.charge_bytes(KEPT_OP_CHARGE)?;
            let out = Bytes::from(out);
            self.digest.add(table, &mode, FileFormat::JsonLines, digest::Rows::Json(out.clone()));
            self.close(table);
            self.ops.push(StagedOp { table: table.to_owned(), mode, rows: StagedRows::JsonLines(out), row_count: count });
            return Ok(());
        }
        // An upsert and a delete are never merged: their order is kept.
        if self.open.get(table).is_some_and(|open| self.ops[open.index].mode != mode) {
            self.close(table);
        }
        if !self.open.contains_key(table) {
            self.charge_bytes(KEPT_OP_CHARGE)?;
        }
        self.digest.add(table, &mode, FileFormat::JsonLines, digest::Rows::Copied(&out));
        if let Some(open) = self.open.get_mut(table) {
            open.rows.extend_from_slice(&out);
            open.count += count;
            if open.rows.len() >= MERGE_UP_TO {
                self.close(table);
            }
            return Ok(());
        }
        // The first small operation opens a merged one.
        let index = self.ops.len();
        self.ops.push(StagedOp { table: table.to_owned(), mode, rows: StagedRows::JsonLines(Bytes::new()), row_count: 0 });
        self.open.insert(table.to_owned(), Open { index, rows: out, count });
        Ok(())
    }

    /// An operation kept on its own (an Arrow stream).
    fn add_kept(&mut self, table: &str, mode: WriteMode, rows: (StagedRows, u64)) -> wasmtime::Result<()> {
        let (rows, row_count) = rows;
        self.charge_bytes(KEPT_OP_CHARGE)?;
        let digested = match &rows {
            StagedRows::ArrowIpc(a) => digest::Rows::Arrow(a.buffer().clone()),
            StagedRows::JsonLines(b) => digest::Rows::Json(b.clone()),
        };
        self.digest.add(table, &mode, rows.format(), digested);
        self.modes.entry(table.to_owned()).or_insert_with(|| mode.clone());
        self.close(table);
        self.ops.push(StagedOp { table: table.to_owned(), mode, rows, row_count });
        Ok(())
    }

    /// Close `table`'s open merged operation: later calls start a new one.
    fn close(&mut self, table: &str) {
        if let Some(open) = self.open.remove(table) {
            let op = &mut self.ops[open.index];
            op.rows = StagedRows::JsonLines(Bytes::from(open.rows));
            op.row_count = open.count;
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn describe(mode: &WriteMode) -> String {
    match mode {
        WriteMode::Append => "appends".into(),
        WriteMode::Upsert { keys } => format!("upserts on [{}]", keys.join(", ")),
        WriteMode::Delete { keys } => format!("deletes on [{}]", keys.join(", ")),
    }
}

fn stage_error_text(e: wit::StageError) -> String {
    match e {
        wit::StageError::UnknownTable(m) | wit::StageError::InvalidRows(m) | wit::StageError::File(m) => m,
    }
}

fn open_staged_file(staging: &Dir, path: &str) -> Result<cap_std::fs::File, wit::StageError> {
    let relative = path.strip_prefix("/staging/").unwrap_or(path);
    if relative.starts_with('/') {
        return Err(wit::StageError::File(format!("{path}: staged files must be under /staging")));
    }
    // cap-std refuses `..` and symlinks that lead out of the directory.
    let file = staging.open(relative).map_err(|e| wit::StageError::File(format!("cannot read /staging/{relative}: {e}")))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(wit::StageError::File(format!("/staging/{relative} is not a regular file"))),
        Err(e) => Err(wit::StageError::File(format!("cannot read /staging/{relative}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn budget(limit: Limit, n: u64) -> Budget {
        Budget::new(limit, &Limits { output_bytes: n, output_rows: n, ..Limits::default() })
    }

    /// Rows staged through a budget large enough for them.
    pub(super) fn rows(json: &[&str], keys: &[&str]) -> Result<(StagedRows, u64), wit::StageError> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let b = budget(Limit::OutputBytes, 1 << 30);
        let mut out = JsonRows::new(&keys);
        for r in json {
            out.push(r.as_bytes(), &b).expect("within budget")?;
        }
        let (bytes, n) = out.into_parts();
        Ok((StagedRows::JsonLines(bytes.into()), n))
    }

    #[test]
    fn json_rows_are_canonical() {
        let (a, n) = rows(&[r#"{ "b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null} }"#], &[]).unwrap();
        assert_eq!(n, 1);
        assert_eq!(a.bytes(), b"{\"a\":{\"c\":null,\"z\":[1,{\"x\":3,\"y\":2}]},\"b\":1}\n");
        let (b, _) = rows(&[r#"{"a":{"z":[1,{"x":3,"y":2}],"c":null},"b":1}"#], &[]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_rows_name_the_row_and_the_problem() {
        let msg = |r: Result<_, wit::StageError>| stage_error_text(r.unwrap_err());
        assert_eq!(msg(rows(&["{}", "[1]"], &[])), "row 1: not a JSON object");
        assert!(msg(rows(&["{\"a\":"], &[])).starts_with("row 0: not valid JSON"));
        assert_eq!(
            msg(rows(&[r#"{"id":1}"#, r#"{"id":null}"#], &["id"])),
            "row 1: key column `id` is missing or null"
        );
    }

    /// The first row's length no longer sizes the buffer for all of them
    /// (it reserved terabytes for one large row and many small ones); each
    /// row is charged as it comes, and the budget ends it.
    #[test]
    fn json_rows_are_charged_row_by_row_before_they_are_kept() {
        let b = budget(Limit::OutputBytes, 10_000);
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(5000));
        let mut out = JsonRows::new(&[]);
        out.push(big.as_bytes(), &b).unwrap().unwrap();
        for _ in 0..1000 {
            if let Err(e) = out.push(b"{}", &b) {
                assert_eq!(e.limit, Limit::OutputBytes);
                let (bytes, n) = out.into_parts();
                assert!(bytes.capacity() < 20_000, "nothing reserved ahead: {} bytes", bytes.capacity());
                assert_eq!(n, 1 + (10_000 - (5008 + 16)) / 18, "rows fit while their charges do");
                return;
            }
        }
        panic!("18 bytes a row: 1000 empty rows do not fit in 10 000 bytes");
    }

    /// A row that must be parsed needs `PARSE_FACTOR` × its length free:
    /// `[{"":0},…]` takes ~100× its text as a `Value`.
    #[test]
    fn parsing_a_row_needs_room_for_its_tree() {
        // Not canonical (a space), so it is parsed.
        let row = format!("{{\"a\": [{}]}}", vec![r#"{"":0}"#; 1000].join(","));
        let b = budget(Limit::OutputBytes, row.len() as u64 * 10);
        assert_eq!(JsonRows::new(&[]).push(row.as_bytes(), &b).unwrap_err().limit, Limit::OutputBytes);
        let b = budget(Limit::OutputBytes, row.len() as u64 * (PARSE_FACTOR + 3));
        JsonRows::new(&[]).push(row.as_bytes(), &b).unwrap().unwrap();
    }

    pub(super) fn arrow_stream(ids: &[Option<i64>]) -> Vec<u8> {
        arrow_stream_with(ids, arrow_ipc::writer::IpcWriteOptions::default())
    }

    pub(super) fn arrow_stream_with(ids: &[Option<i64>], options: arrow_ipc::writer::IpcWriteOptions) -> Vec<u8> {
        use arrow_array::{Int64Array, RecordBatch};
        use arrow_schema::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap();
        let mut out = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new_with_options(&mut out, &schema, options).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    /// Decode a stream as staging does, with room to spare.
    pub(super) fn arrow(bytes: Vec<u8>, keys: &[String]) -> wasmtime::Result<Result<(StagedRows, u64), wit::StageError>> {
        let (rows, cost) = (budget(Limit::OutputRows, 1 << 40), budget(Limit::OutputBytes, 1 << 40));
        arrow_rows(Buffer::from_vec(bytes), keys, "a.arrow", &rows, &cost)
    }

    #[test]
    fn arrow_streams_are_counted_and_key_checked() {
        let (rows, n) = arrow(arrow_stream(&[Some(1), Some(2), Some(3)]), &["id".into()]).unwrap().unwrap();
        assert_eq!(n, 6, "two record batches of three rows");
        assert_eq!(rows.format(), FileFormat::ArrowIpc);
        let msg = |r: wasmtime::Result<Result<_, wit::StageError>>| stage_error_text(r.unwrap().unwrap_err());
        assert_eq!(
            msg(arrow(arrow_stream(&[Some(1)]), &["order_id".into()])),
            "a.arrow: key column `order_id` is not in the Arrow schema"
        );
        assert_eq!(msg(arrow(arrow_stream(&[Some(1), None]), &["id".into()])), "a.arrow: key column `id` has nulls");
        assert_eq!(
            msg(arrow(b"{\"id\": 1}".to_vec(), &[])),
            "a.arrow: not an Arrow IPC stream: message at byte 0 declares 1684611707 bytes of metadata but 5 remain"
        );
        let mut truncated = arrow_stream(&[Some(1)]);
        truncated.truncate(truncated.len() - 20);
        assert!(msg(arrow(truncated, &[])).contains("-byte body but"));
    }

    /// Compressed buffers declare the length they inflate to: refused
    /// before the decoder allocates it.
    #[test]
    fn compressed_arrow_streams_are_refused() {
        let options = arrow_ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow_ipc::CompressionType::ZSTD))
            .unwrap();
        let err = arrow(arrow_stream_with(&[Some(1); 100], options), &[]).unwrap().unwrap_err();
        assert!(
            stage_error_text(err).contains("its buffers are compressed (LZ4 or ZSTD); stage uncompressed Arrow IPC"),
            "compressed streams are refused"
        );
    }

    /// Rows and arrays are charged from the framing, before decoding.
    #[test]
    fn arrow_rows_are_charged_before_decoding() {
        let stream = arrow_stream(&[Some(1); 10]);
        let rows = budget(Limit::OutputRows, 19);
        let cost = budget(Limit::OutputBytes, 1 << 30);
        let err = arrow_rows(Buffer::from_vec(stream), &[], "a.arrow", &rows, &cost).unwrap_err();
        assert_eq!(err.downcast_ref::<LimitExceeded>().map(|e| e.limit), Some(Limit::OutputRows));
    }

    fn digest(ops: &[StagedOp]) -> String {
        let mut d = OutputDigest::new();
        for op in ops {
            d.add(&op.table, &op.mode, op.rows.format(), digest::Rows::Copied(op.rows.bytes()));
        }
        d.finish()
    }

    fn op(table: &str, mode: WriteMode, rows: &[u8]) -> StagedOp {
        StagedOp { table: table.into(), mode, rows: StagedRows::JsonLines(rows.to_vec().into()), row_count: 1 }
    }

    #[test]
    fn digest_separates_fields() {
        let a = digest(&[op("ab", WriteMode::Append, b"c")]);
        assert_eq!(a, digest(&[op("ab", WriteMode::Append, b"c")]));
        assert_ne!(a, digest(&[op("a", WriteMode::Append, b"bc")]));
        assert_ne!(a, digest(&[op("ab", WriteMode::Upsert { keys: vec!["k".into()] }, b"c")]));
    }

    /// Large operations are hashed on another thread, small ones after
    /// them gathered into parts: the digest is the one of the format,
    /// computed here in one go.
    #[test]
    fn digest_is_the_same_when_hashed_in_the_background() {
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        let big = vec![b'x'; 3 << 20];
        let mut ops = vec![
            op("t", WriteMode::Append, b"small"),
            op("t", WriteMode::Upsert { keys: vec!["id".into(), "k".into()] }, &big),
            op("t", WriteMode::Delete { keys: vec!["id".into(), "k".into()] }, b"{\"id\":1,\"k\":2}"),
            op("u", WriteMode::Append, b"after"),
        ];
        for i in 0..30_000u32 {
            ops.push(op("u", WriteMode::Append, format!("row {i}").as_bytes()));
        }
        let mut h = Sha256::new();
        h.update(b"sluice-output-v1\0");
        for o in &ops {
            field(&mut h, o.table.as_bytes());
            match &o.mode {
                WriteMode::Append => h.update([0]),
                WriteMode::Upsert { keys } => {
                    h.update([1]);
                    h.update((keys.len() as u64).to_be_bytes());
                    keys.iter().for_each(|k| field(&mut h, k.as_bytes()));
                }
                WriteMode::Delete { keys } => {
                    h.update([2]);
                    h.update((keys.len() as u64).to_be_bytes());
                    keys.iter().for_each(|k| field(&mut h, k.as_bytes()));
                }
            }
            h.update([FileFormat::JsonLines as u8]);
            field(&mut h, o.rows.bytes());
        }
        assert_eq!(digest(&ops), hex::encode(h.finalize()));
    }

    fn collector(declared: Option<DeclaredTables>, limits: &Limits) -> OutputCollector {
        OutputCollector::new(declared.map(Arc::new), limits)
    }

    fn stage(c: &mut OutputCollector, table: &str, mode: WriteMode, json: &[&str]) -> StageResult {
        c.begin(table)?.map_err(|e| wasmtime::Error::msg(stage_error_text(e)))?;
        if let Err(e) = c.check_mode(table, &mode)? {
            return Ok(Err(e));
        }
        c.stage_json(table, mode, json.iter().map(|r| Ok(std::borrow::Cow::Borrowed(*r))))
    }

    /// Small JSON calls of a table merge into one operation, whatever was
    /// staged to other tables in between, and the digest is the one of the
    /// calls as made.
    #[test]
    fn small_operations_merge_after_digesting() {
        let upsert = || WriteMode::Upsert { keys: vec!["id".into()] };
        let mut c = collector(None, &Limits::default());
        let mut separate = Vec::new();
        for i in 0..10_000 {
            let row = format!("{{\"id\":{i}}}");
            stage(&mut c, "a", upsert(), &[&row]).unwrap().unwrap();
            separate.push(op("a", upsert(), format!("{row}\n").as_bytes()));
            if i % 1000 == 0 {
                stage(&mut c, "b", WriteMode::Append, &["{}"]).unwrap().unwrap();
                separate.push(op("b", WriteMode::Append, b"{}\n"));
            }
        }
        let (ops, d) = c.finish();
        assert_eq!(d, digest(&separate), "merging does not change the digest");
        let a: Vec<_> = ops.iter().filter(|o| o.table == "a").collect();
        assert!(a.len() <= 2, "10 000 calls, {} operations", a.len());
        assert_eq!(a.iter().map(|o| o.row_count).sum::<u64>(), 10_000);
        let first: Vec<u8> = separate.iter().filter(|o| o.table == "a").flat_map(|o| o.rows.bytes().to_vec()).collect();
        let merged: Vec<u8> = a.iter().flat_map(|o| o.rows.bytes().to_vec()).collect();
        assert_eq!(merged, first, "the rows in the order staged");
    }

    /// Every call costs `OP_CHARGE`, with rows or without: a flood of
    /// empty calls ends at `limits.output_bytes`.
    #[test]
    fn empty_calls_are_charged() {
        let limits = Limits { output_bytes: 64 * 1000, ..Limits::default() };
        let mut c = collector(None, &limits);
        let mut calls = 0;
        let err = loop {
            match stage(&mut c, "t", WriteMode::Append, &[]) {
                Ok(r) => r.unwrap(),
                Err(e) => break e,
            }
            calls += 1;
        };
        assert_eq!(err.downcast_ref::<LimitExceeded>().map(|e| e.limit), Some(Limit::OutputBytes));
        assert!(calls < 1000, "{calls} empty calls fit in 64 000 bytes");
    }

    #[test]
    fn upserts_must_use_the_declared_keys() {
        let declared: DeclaredTables = [
            ("orders".to_owned(), Declared::Keys(vec!["order_id".into()])),
            ("events".to_owned(), Declared::Keys(vec![])),
            ("scratch".to_owned(), Declared::AnyKeys),
        ]
        .into();
        let c = collector(Some(declared), &Limits::default());
        let upsert = |k: &[&str]| WriteMode::Upsert { keys: k.iter().map(|k| k.to_string()).collect() };
        let violation = |table, mode| c.check_mode(table, &mode).unwrap_err().downcast::<StageViolation>().unwrap().to_string();
        assert_eq!(
            violation("orders", upsert(&["customer"])),
            "sink upserted into table `orders` on [customer], but the table is keyed on [order_id] (`tables.keys` in the \
             pipeline config); the pipeline chooses the merge key, not the sink: upsert on the declared keys"
        );
        assert!(violation("orders", upsert(&["order_id", "order_id"])).contains("on [order_id, order_id]"));
        assert!(violation("events", upsert(&["id"])).ends_with("(this table declares none, so it takes appends only)"));
        assert!(c.check_mode("orders", &upsert(&["order_id"])).unwrap().is_ok());
        assert!(c.check_mode("events", &WriteMode::Append).unwrap().is_ok());
        assert!(c.check_mode("scratch", &upsert(&["anything"])).unwrap().is_ok());
    }
}
