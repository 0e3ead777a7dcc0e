//! `sluice exec`: run one batch of a sink over records from a JSONL file,
//! without Kafka, and report the batch output.
//!
//! One JSON object per line:
//!
//! ```json
//! {"topic": "orders", "partition": 0, "offset": 7, "timestamp_ms": 1700000000000,
//!  "key": "o-1", "value": {"order_id": "o-1"}, "headers": {"source": "web"}}
//! ```
//!
//! Every field is optional: the topic defaults to `input`, the partition to
//! 0, the offset to one past the previous record of that partition, the
//! timestamp to 0. `key` and `value` are strings (UTF-8 bytes), any other
//! JSON value (its compact encoding), or null; `key_b64`/`value_b64` carry
//! binary data.

use crate::output::{BatchOutput, StagedRows, TableSummary, WriteMode};
use crate::source::records::OwnedRecord;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A records file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordsFileError {
    /// The file could not be read.
    #[error("cannot read records file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path} line {line}: {what}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    #[serde(alias = "timestamp")]
    timestamp_ms: Option<i64>,
    #[serde(default)]
    key: Value,
    key_b64: Option<String>,
    #[serde(default)]
    value: Value,
    value_b64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
}

/// Read records from a JSONL file (format in the module docs).
pub fn read_records(path: &Path) -> Result<Vec<OwnedRecord>, RecordsFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RecordsFileError::Read { path: shown.clone(), source })?;
    parse_records(&shown, &text)
}

/// Parse records from JSONL text; `name` labels errors.
pub fn parse_records(name: &str, text: &str) -> Result<Vec<OwnedRecord>, RecordsFileError> {
    let mut next_offset: HashMap<(String, i32), i64> = HashMap::new();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |what: String| RecordsFileError::Line { path: name.to_owned(), line: i + 1, what };
        let l: RecordLine = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let topic = l.topic.unwrap_or_else(|| "input".to_owned());
        let partition = l.partition.unwrap_or(0);
        let next = next_offset.entry((topic.clone(), partition)).or_insert(0);
        let offset = l.offset.unwrap_or(*next);
        if offset < *next {
            return Err(err(format!("offset {offset} of {topic}/{partition} is not after the previous record's")));
        }
        *next = offset + 1;
        records.push(OwnedRecord {
            topic,
            partition,
            offset,
            timestamp_ms: l.timestamp_ms.unwrap_or(0),
            key: bytes_field("key", l.key, l.key_b64).map_err(err)?,
            value: bytes_field("value", l.value, l.value_b64).map_err(err)?,
            headers: l.headers.into_iter().map(|(k, v)| (k, v.map(String::into_bytes))).collect(),
        });
    }
    Ok(records)
}

fn bytes_field(name: &str, value: Value, b64: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (value, b64) {
        (Value::Null, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("{name}_b64 is not base64: {e}")),
        (_, Some(_)) => Err(format!("give either {name} or {name}_b64, not both")),
        (Value::Null, None) => Ok(None),
        (Value::String(s), None) => Ok(Some(s.into_bytes())),
        (other, None) => Ok(Some(other.to_string().into_bytes())),
    }
}

/// The report `sluice exec` prints (and `--json` serialises).
#[derive(Debug, Serialize)]
pub struct ExecReport {
    /// The pipeline id the batch ran under.
    pub pipeline_id: String,
    /// The batch id.
    pub batch_id: u64,
    /// SHA-256 of the component (hex).
    pub component_digest: String,
    /// SHA-256 of the batch output (hex).
    pub output_digest: String,
    /// Records delivered to the sink.
    pub records_in: u64,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Per-table totals.
    pub tables: Vec<TableSummary>,
    /// The staged operations, with their rows when asked for.
    pub ops: Vec<OpReport>,
    /// The batch log.
    pub log: Vec<crate::LogLine>,
}

/// One staged operation in an [`ExecReport`].
#[derive(Debug, Serialize)]
pub struct OpReport {
    /// Table.
    pub table: String,
    /// Append or upsert.
    pub mode: WriteMode,
    /// Row format.
    pub format: crate::FileFormat,
    /// Number of rows.
    pub rows: u64,
    /// The rows as JSON (JSON-lines operations only, with `--rows`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Value>>,
}

impl ExecReport {
    /// Build the report of a batch output; `with_rows` includes JSON rows.
    pub fn new(output: &BatchOutput, component_digest: &str, with_rows: bool) -> Self {
        let ops = output
            .ops
            .iter()
            .map(|op| OpReport {
                table: op.table.clone(),
                mode: op.mode.clone(),
                format: op.rows.format(),
                rows: op.row_count,
                data: match (&op.rows, with_rows) {
                    (StagedRows::JsonLines(b), true) => Some(
                        b.split(|&c| c == b'\n')
                            .filter(|l| !l.is_empty())
                            .map(|l| serde_json::from_slice(l).expect("staged rows are canonical JSON"))
                            .collect(),
                    ),
                    _ => None,
                },
            })
            .collect();
        Self {
            pipeline_id: output.batch.pipeline_id.clone(),
            batch_id: output.batch.batch_id,
            component_digest: component_digest.to_owned(),
            output_digest: output.digest.clone(),
            records_in: output.records_in,
            fuel_used: output.fuel_used,
            tables: output.tables(),
            ops,
            log: output.log.clone(),
        }
    }
}

impl std::fmt::Display for ExecReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "batch {} of pipeline {}: ok", self.batch_id, self.pipeline_id)?;
        writeln!(f, "  records in:    {}", self.records_in)?;
        writeln!(f, "  fuel used:     {}", self.fuel_used)?;
        writeln!(f, "  output digest: {}", self.output_digest)?;
        writeln!(f, "  component:     {}", self.component_digest)?;
        if self.tables.is_empty() {
            writeln!(f, "  tables:        (nothing staged)")?;
        }
        for t in &self.tables {
            writeln!(
                f,
                "  table {}: {} appended, {} upserted, {} deleted, {} bytes in {} operation(s)",
                t.table, t.appended_rows, t.upserted_rows, t.deleted_rows, t.bytes, t.operations
            )?;
        }
        for op in &self.ops {
            for row in op.data.iter().flatten() {
                writeln!(f, "    {} {row}", op.table)?;
            }
        }
        if !self.log.is_empty() {
            writeln!(f, "  log:")?;
        }
        for line in &self.log {
            write_log_line(f, line)?;
        }
        Ok(())
    }
}

/// One log line as `sluice` prints it.
pub fn write_log_line(f: &mut impl std::fmt::Write, line: &crate::LogLine) -> std::fmt::Result {
    let level = format!("{:?}", line.level).to_lowercase();
    let source = format!("{:?}", line.source).to_lowercase();
    write!(f, "    [{level:>5} {source}] {}", line.message)?;
    for (k, v) in &line.fields {
        write!(f, " {k}={v}")?;
    }
    writeln!(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_value_forms() {
        let text = r#"{"value": "plain"}
{"value": {"a": 1}, "key": null, "headers": {"h": "v", "n": null}}

{"topic": "t", "partition": 2, "offset": 10, "value_b64": "AAE=", "key": "k"}
{"topic": "t", "partition": 2}
"#;
        let r = parse_records("f", text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].offset, r[1].offset), (0, 1));
        assert_eq!(r[0].value.as_deref(), Some(&b"plain"[..]));
        assert_eq!(r[1].value.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(r[1].headers, [("h".to_string(), Some(b"v".to_vec())), ("n".to_string(), None)]);
        assert_eq!(r[2].value.as_deref(), Some(&[0u8, 1][..]));
        assert_eq!((r[3].topic.as_str(), r[3].partition, r[3].offset), ("t", 2, 11));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_records("f.jsonl", "{}\n{\"offest\": 1}\n").unwrap_err();
        assert!(err.to_string().starts_with("f.jsonl line 2: unknown field `offest`"), "{err}");
        let err = parse_records("f.jsonl", "{\"offset\": 5}\n{\"offset\": 5}\n").unwrap_err();
        assert_eq!(err.to_string(), "f.jsonl line 2: offset 5 of input/0 is not after the previous record's");
    }
}
