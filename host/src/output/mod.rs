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
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

mod canonical;
mod digest;

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
    JsonLines(Vec<u8>),
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

/// One `stage` call of the sink.
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
    /// Number of `stage` calls.
    pub operations: usize,
    /// Rows appended.
    pub appended_rows: u64,
    /// Rows upserted.
    pub upserted_rows: u64,
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
            let mut s = TableSummary { table: name.to_owned(), operations: 0, appended_rows: 0, upserted_rows: 0, bytes: 0 };
            for op in self.ops.iter().filter(|op| op.table == name) {
                s.operations += 1;
                s.bytes += op.rows.bytes().len() as u64;
                match op.mode {
                    WriteMode::Append => s.appended_rows += op.row_count,
                    WriteMode::Upsert { .. } => s.upserted_rows += op.row_count,
                }
            }
            out.push(s);
        }
        out
    }
}

/// Collects the `stage` calls of one batch, enforcing the output limits.
pub(crate) struct OutputCollector {
    declared: Option<Arc<BTreeSet<String>>>,
    ops: Vec<StagedOp>,
    digest: OutputDigest,
    rows: Budget,
    bytes: Budget,
}

type StageResult = Result<Result<(), wit::StageError>, LimitExceeded>;

impl OutputCollector {
    /// `declared`: the tables the pipeline declares; `None` accepts any name.
    pub(crate) fn new(declared: Option<Arc<BTreeSet<String>>>, limits: &Limits) -> Self {
        Self {
            declared,
            ops: Vec::new(),
            digest: OutputDigest::new(),
            rows: Budget::new(Limit::OutputRows, limits),
            bytes: Budget::new(Limit::OutputBytes, limits),
        }
    }

    /// The staged operations, in order, and their digest.
    pub(crate) fn finish(self) -> (Vec<StagedOp>, String) {
        (self.ops, self.digest.finish())
    }

    /// One `stage` call. The outer error ends the batch (a limit); the inner
    /// one is returned to the sink.
    pub(crate) fn stage(&mut self, table: String, mode: wit::WriteMode, rows: wit::Rows, staging: &Dir) -> StageResult {
        if let Some(declared) = &self.declared
            && !declared.contains(&table)
        {
            let known = declared.iter().cloned().collect::<Vec<_>>().join(", ");
            return Ok(Err(wit::StageError::UnknownTable(format!(
                "table `{table}` is not declared by the pipeline (declared: {known})"
            ))));
        }
        let mode = match mode {
            wit::WriteMode::Append => WriteMode::Append,
            wit::WriteMode::Upsert(keys) if keys.is_empty() => {
                return Ok(Err(wit::StageError::InvalidRows("upsert needs at least one key column".into())));
            }
            wit::WriteMode::Upsert(keys) => WriteMode::Upsert { keys },
        };
        let keys: &[String] = match &mode {
            WriteMode::Append => &[],
            WriteMode::Upsert { keys } => keys,
        };
        let parsed = match rows {
            wit::Rows::Json(rows) => canonical_json_rows(rows.iter().map(|r| r.as_bytes()), keys),
            wit::Rows::File((path, format)) => match read_staged_file(staging, &path) {
                Err(e) => return Ok(Err(e)),
                Ok(bytes) => match format {
                    wit::FileFormat::JsonLines => canonical_json_rows(json_lines(&bytes), keys)
                        .map_err(|e| wit::StageError::InvalidRows(format!("{path}: {}", stage_error_text(e)))),
                    wit::FileFormat::ArrowIpc => arrow_rows(bytes, keys, &path),
                },
            },
        };
        let (rows, row_count) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return Ok(Err(e)),
        };
        self.rows.charge(row_count)?;
        self.bytes.charge(rows.bytes().len() as u64)?;
        let op = StagedOp { table, mode, rows, row_count };
        self.digest.add(&op);
        self.ops.push(op);
        Ok(Ok(()))
    }
}

fn stage_error_text(e: wit::StageError) -> String {
    match e {
        wit::StageError::UnknownTable(m) | wit::StageError::InvalidRows(m) | wit::StageError::File(m) => m,
    }
}

fn json_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

fn canonical_json_rows<'a>(
    rows: impl Iterator<Item = &'a [u8]>,
    keys: &[String],
) -> Result<(StagedRows, u64), wit::StageError> {
    let expected_rows = rows.size_hint().0.max(1);
    let mut out = Vec::new();
    let mut count = 0u64;
    for (i, row) in rows.enumerate() {
        if out.is_empty() {
            // Rows are usually alike: size the output once, not by doubling.
            out.reserve((row.len() + 1).saturating_mul(expected_rows));
        }
        if canonical::is_canonical_row(row, keys) {
            out.extend_from_slice(row);
            out.push(b'\n');
            count += 1;
            continue;
        }
        let invalid = |what: String| wit::StageError::InvalidRows(format!("row {i}: {what}"));
        let value: Value = serde_json::from_slice(row).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(invalid("not a JSON object".into()));
        };
        if let Some(key) = keys.iter().find(|k| map.get(*k).is_none_or(Value::is_null)) {
            return Err(invalid(format!("key column `{key}` is missing or null")));
        }
        write_canonical(&value, &mut out);
        out.push(b'\n');
        count += 1;
    }
    Ok((StagedRows::JsonLines(out), count))
}

/// JSON with object keys sorted and no whitespace. Written out by hand so
/// it does not depend on serde_json's `preserve_order` feature, which any
/// dependency could switch on.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec"),
    }
}

fn read_staged_file(staging: &Dir, path: &str) -> Result<Vec<u8>, wit::StageError> {
    let relative = path.strip_prefix("/staging/").unwrap_or(path);
    if relative.starts_with('/') {
        return Err(wit::StageError::File(format!("{path}: staged files must be under /staging")));
    }
    // cap-std refuses `..` and symlinks that lead out of the directory.
    staging.read(relative).map_err(|e| wit::StageError::File(format!("cannot read /staging/{relative}: {e}")))
}

/// Walk the IPC stream's message frames and check every declared length
/// against the bytes actually there. arrow's reader allocates what a length
/// prefix claims before reading, so without this a 9-byte file could make the
/// host allocate gigabytes.
fn check_ipc_framing(bytes: &[u8]) -> Result<(), String> {
    let word = |at: usize| bytes.get(at..at + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    let mut pos = 0usize;
    while pos < bytes.len() {
        let start = pos;
        let mut len = word(pos).ok_or("truncated message header")?;
        pos += 4;
        if len == -1 {
            // Continuation marker (IPC format ≥ 0.15), then the length.
            len = word(pos).ok_or("truncated message header")?;
            pos += 4;
        }
        if len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let remaining = bytes.len() - pos;
        let len = usize::try_from(len).ok().filter(|&l| l <= remaining).ok_or_else(|| {
            format!("message at byte {start} declares {len} bytes of metadata but {remaining} remain")
        })?;
        let message = arrow_ipc::root_as_message(&bytes[pos..pos + len])
            .map_err(|e| format!("message at byte {start} has invalid metadata: {e}"))?;
        pos += len;
        let remaining = bytes.len() - pos;
        let body = message.bodyLength();
        pos += usize::try_from(body).ok().filter(|&b| b <= remaining).ok_or_else(|| {
            format!("message at byte {start} declares a {body}-byte body but {remaining} bytes remain")
        })?;
    }
    Ok(())
}

fn arrow_rows(bytes: Vec<u8>, keys: &[String], path: &str) -> Result<(StagedRows, u64), wit::StageError> {
    let invalid = |what: String| wit::StageError::InvalidRows(format!("{path}: {what}"));
    check_ipc_framing(&bytes).map_err(|e| invalid(format!("not an Arrow IPC stream: {e}")))?;
    // Decoded from a buffer that owns the bytes, so aligned columns are
    // slices of it (misaligned ones are copied); validation stays on.
    let bytes = Buffer::from_vec(bytes);
    let mut rest = bytes.clone();
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut batches = Vec::new();
    let corrupt = |decoder: &arrow_ipc::reader::StreamDecoder, e| {
        let what = if decoder.schema().is_some() { "corrupt Arrow IPC stream" } else { "not an Arrow IPC stream" };
        invalid(format!("{what}: {e}"))
    };
    loop {
        match decoder.decode(&mut rest) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => break,
            Err(e) => return Err(corrupt(&decoder, e)),
        }
    }
    decoder.finish().map_err(|e| corrupt(&decoder, e))?;
    let schema = decoder.schema().ok_or_else(|| invalid("not an Arrow IPC stream: no schema message".into()))?;
    if let Some(key) = keys.iter().find(|k| schema.field_with_name(k).is_err()) {
        return Err(invalid(format!("key column `{key}` is not in the Arrow schema")));
    }
    for batch in &batches {
        for key in keys {
            let column = batch.column_by_name(key).expect("checked against the schema");
            if arrow_array::Array::null_count(column.as_ref()) > 0 {
                return Err(invalid(format!("key column `{key}` has nulls")));
            }
        }
    }
    let count = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok((StagedRows::ArrowIpc(ArrowRows { bytes, batches }), count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn rows(json: &[&str], keys: &[&str]) -> Result<(StagedRows, u64), wit::StageError> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        canonical_json_rows(json.iter().map(|r| r.as_bytes()), &keys)
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

    fn arrow_stream(ids: &[Option<i64>]) -> Vec<u8> {
        use arrow_array::{Int64Array, RecordBatch};
        use arrow_schema::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap();
        let mut out = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    #[test]
    fn arrow_streams_are_counted_and_key_checked() {
        let (rows, n) = arrow_rows(arrow_stream(&[Some(1), Some(2), Some(3)]), &["id".into()], "a.arrow").unwrap();
        assert_eq!(n, 6, "two record batches of three rows");
        assert_eq!(rows.format(), FileFormat::ArrowIpc);
        let msg = |r: Result<_, wit::StageError>| stage_error_text(r.unwrap_err());
        assert_eq!(
            msg(arrow_rows(arrow_stream(&[Some(1)]), &["order_id".into()], "a.arrow")),
            "a.arrow: key column `order_id` is not in the Arrow schema"
        );
        assert_eq!(msg(arrow_rows(arrow_stream(&[Some(1), None]), &["id".into()], "a.arrow")), "a.arrow: key column `id` has nulls");
        assert_eq!(
            msg(arrow_rows(b"{\"id\": 1}".to_vec(), &[], "a.arrow")),
            "a.arrow: not an Arrow IPC stream: message at byte 0 declares 1684611707 bytes of metadata but 5 remain"
        );
        let mut truncated = arrow_stream(&[Some(1)]);
        truncated.truncate(truncated.len() - 20);
        assert!(msg(arrow_rows(truncated, &[], "a.arrow")).contains("-byte body but"));
    }

    fn digest(ops: &[StagedOp]) -> String {
        let mut d = OutputDigest::new();
        ops.iter().for_each(|op| d.add(op));
        d.finish()
    }

    fn op(table: &str, mode: WriteMode, rows: &[u8]) -> StagedOp {
        StagedOp { table: table.into(), mode, rows: StagedRows::JsonLines(rows.to_vec()), row_count: 1 }
    }

    #[test]
    fn digest_separates_fields() {
        let a = digest(&[op("ab", WriteMode::Append, b"c")]);
        assert_eq!(a, digest(&[op("ab", WriteMode::Append, b"c")]));
        assert_ne!(a, digest(&[op("a", WriteMode::Append, b"bc")]));
        assert_ne!(a, digest(&[op("ab", WriteMode::Upsert { keys: vec!["k".into()] }, b"c")]));
    }

    /// Large operations are hashed on another thread: the digest is the
    /// one of the format, computed here in one go.
    #[test]
    fn digest_is_the_same_when_hashed_in_the_background() {
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        let big = vec![b'x'; 3 << 20];
        let ops = [
            op("t", WriteMode::Append, b"small"),
            op("t", WriteMode::Upsert { keys: vec!["id".into(), "k".into()] }, &big),
            op("u", WriteMode::Append, b"after"),
        ];
        let mut h = Sha256::new();
        h.update(b"sluice-output-v1\0");
        for (o, mode) in ops.iter().zip([&[0u8][..], &[1, 0, 0, 0, 0, 0, 0, 0, 2], &[0]]) {
            field(&mut h, o.table.as_bytes());
            h.update(mode);
            if let WriteMode::Upsert { keys } = &o.mode {
                keys.iter().for_each(|k| field(&mut h, k.as_bytes()));
            }
            h.update([FileFormat::JsonLines as u8]);
            field(&mut h, o.rows.bytes());
        }
        assert_eq!(digest(&ops), hex::encode(h.finalize()));
    }
}
