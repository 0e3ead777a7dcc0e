//! Row-level differences between two outputs of the same batch, per table,
//! matched by the table's key columns.
//!
//! A table's rows are what its commit would apply: every appended row, and
//! for upserts the last row staged for each key. Rows are matched on the
//! upsert keys (or the table's declared keys); a table without keys matches
//! whole rows, so its diff is the rows one output has more of than the other.

use crate::commit::TableConfig;
use crate::output::{StagedOp, StagedRows, WriteMode};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// How one table's rows differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableDiff {
    /// The table.
    pub table: String,
    /// Columns rows are matched on (empty: whole rows).
    pub keys: Vec<String>,
    /// Rows in the committed output.
    pub committed_rows: u64,
    /// Rows in the replayed output.
    pub replayed_rows: u64,
    /// Rows that differ, in all.
    pub differing_rows: u64,
    /// The first differing rows, in key order.
    pub rows: Vec<RowDiff>,
}

/// One differing row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowDiff {
    /// The key columns' values (the whole row for a table without keys).
    pub key: Value,
    /// The committed row, if the committed output has it.
    pub committed: Option<Value>,
    /// The replayed row, if the replayed output has it.
    pub replayed: Option<Value>,
}

/// Rows of one table, grouped by key (key text → key value, rows).
type Keyed = BTreeMap<String, (Value, Vec<Value>)>;

/// Compare two outputs table by table, listing up to `max_rows` differing
/// rows per table. Tables neither output writes are left out.
pub fn diff(committed: &[StagedOp], replayed: &[StagedOp], tables: &[TableConfig], max_rows: usize) -> Result<Vec<TableDiff>, String> {
    let names: BTreeSet<&str> = committed.iter().chain(replayed).map(|op| op.table.as_str()).collect();
    let mut out = Vec::new();
    for name in names {
        let keys = keys_of(name, committed.iter().chain(replayed), tables);
        let (c, r) = (rows_of(name, committed, &keys)?, rows_of(name, replayed, &keys)?);
        let mut d = TableDiff {
            table: name.to_owned(),
            keys: keys.clone(),
            committed_rows: c.values().map(|(_, rows)| rows.len() as u64).sum(),
            replayed_rows: r.values().map(|(_, rows)| rows.len() as u64).sum(),
            differing_rows: 0,
            rows: Vec::new(),
        };
        let all: BTreeSet<&String> = c.keys().chain(r.keys()).collect();
        for k in all {
            let (key, c_rows) = c.get(k).map_or((None, &[][..]), |(key, rows)| (Some(key), &rows[..]));
            let (r_key, r_rows) = r.get(k).map_or((None, &[][..]), |(key, rows)| (Some(key), &rows[..]));
            for i in 0..c_rows.len().max(r_rows.len()) {
                let (cr, rr) = (c_rows.get(i), r_rows.get(i));
                if cr == rr {
                    continue;
                }
                d.differing_rows += 1;
                if d.rows.len() < max_rows {
                    let key = key.or(r_key).cloned().unwrap_or(Value::Null);
                    d.rows.push(RowDiff { key, committed: cr.cloned(), replayed: rr.cloned() });
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// The columns rows of `table` are matched on.
fn keys_of<'a>(table: &str, mut ops: impl Iterator<Item = &'a StagedOp>, tables: &[TableConfig]) -> Vec<String> {
    let upsert = ops.find_map(|op| match &op.mode {
        WriteMode::Upsert { keys } | WriteMode::Delete { keys } if op.table == table => Some(keys.clone()),
        _ => None,
    });
    upsert.or_else(|| tables.iter().find(|t| t.name == table).map(|t| t.keys.clone())).unwrap_or_default()
}

/// The rows `ops` apply to `table`, grouped by `keys`.
fn rows_of(table: &str, ops: &[StagedOp], keys: &[String]) -> Result<Keyed, String> {
    let mut out = Keyed::new();
    for op in ops.iter().filter(|op| op.table == table) {
        for row in decode(&op.rows).map_err(|e| format!("table `{table}`: {e}"))? {
            let key = if keys.is_empty() {
                row.clone()
            } else {
                Value::Object(keys.iter().map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null))).collect::<Map<_, _>>())
            };
            let slot = out.entry(key.to_string()).or_insert_with(|| (key, Vec::new()));
            match op.mode {
                WriteMode::Append => slot.1.push(row),
                // The last row staged for a key is the one the MERGE applies.
                WriteMode::Upsert { .. } => {
                    slot.1.clear();
                    slot.1.push(row);
                }
                // A delete leaves the key absent: shown as its keys, marked.
                WriteMode::Delete { .. } => {
                    slot.1.clear();
                    let mut marker = slot.0.as_object().cloned().unwrap_or_default();
                    marker.insert("(deleted)".into(), Value::Bool(true));
                    slot.1.push(Value::Object(marker));
                }
            }
        }
    }
    Ok(out)
}

/// Staged rows as JSON objects.
fn decode(rows: &StagedRows) -> Result<Vec<Value>, String> {
    match rows {
        StagedRows::JsonLines(b) => b
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| format!("unreadable staged row: {e}")))
            .collect(),
        StagedRows::ArrowIpc(rows) => {
            let mut writer = arrow_json::ArrayWriter::new(Vec::new());
            for batch in rows.batches() {
                writer.write(batch).map_err(|e| format!("Arrow rows as JSON: {e}"))?;
            }
            writer.finish().map_err(|e| format!("Arrow rows as JSON: {e}"))?;
            let bytes = writer.into_inner();
            if bytes.is_empty() { Ok(Vec::new()) } else { serde_json::from_slice(&bytes).map_err(|e| format!("Arrow rows as JSON: {e}")) }
        }
    }
}

/// The columns whose values differ between two rows, as `column: a → b`.
pub fn changed_columns(committed: &Value, replayed: &Value) -> Vec<String> {
    let (Some(c), Some(r)) = (committed.as_object(), replayed.as_object()) else { return vec![format!("{committed} → {replayed}")] };
    let columns: BTreeSet<&String> = c.keys().chain(r.keys()).collect();
    columns
        .into_iter()
        .filter(|k| c.get(*k) != r.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(absent)".to_owned(), Value::to_string);
            format!("{k}: {} → {}", show(c.get(k)), show(r.get(k)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(table: &str, mode: WriteMode, rows: &[Value]) -> StagedOp {
        let mut b = Vec::new();
        for r in rows {
            b.extend_from_slice(r.to_string().as_bytes());
            b.push(b'\n');
        }
        StagedOp { table: table.into(), mode, rows: StagedRows::JsonLines(b.into()), row_count: rows.len() as u64 }
    }

    fn upsert(rows: &[Value]) -> StagedOp {
        op("orders", WriteMode::Upsert { keys: vec!["id".into()] }, rows)
    }

    #[test]
    fn upserts_are_matched_by_key_and_the_last_row_counts() {
        let committed = [upsert(&[json!({"id": 1, "s": "new"}), json!({"id": 2, "s": "paid"}), json!({"id": 1, "s": "paid"})])];
        let replayed = [upsert(&[json!({"id": 1, "s": "paid"}), json!({"id": 3, "s": "paid"}), json!({"id": 2, "s": "PAID"})])];
        let d = diff(&committed, &replayed, &[], 10).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].committed_rows, d[0].replayed_rows, d[0].differing_rows), (2, 3, 2));
        assert_eq!(
            d[0].rows,
            vec![
                RowDiff { key: json!({"id": 2}), committed: Some(json!({"id": 2, "s": "paid"})), replayed: Some(json!({"id": 2, "s": "PAID"})) },
                RowDiff { key: json!({"id": 3}), committed: None, replayed: Some(json!({"id": 3, "s": "paid"})) },
            ]
        );
        assert_eq!(changed_columns(&json!({"id": 2, "s": "paid"}), &json!({"id": 2, "s": "PAID", "x": 1})), ["s: \"paid\" → \"PAID\"", "x: (absent) → 1"]);
        assert_eq!(diff(&committed, &replayed, &[], 1).unwrap()[0].rows.len(), 1, "the listing is bounded");
    }

    #[test]
    fn appends_without_keys_differ_by_row_multiplicity() {
        let row = json!({"id": 7});
        let committed = [op("events", WriteMode::Append, &[row.clone(), row.clone(), json!({"id": 8})])];
        let replayed = [op("events", WriteMode::Append, &[json!({"id": 8}), row.clone()])];
        let d = diff(&committed, &replayed, &[], 10).unwrap();
        assert_eq!((d[0].committed_rows, d[0].replayed_rows, d[0].differing_rows), (3, 2, 1));
        assert_eq!(d[0].rows, vec![RowDiff { key: row.clone(), committed: Some(row), replayed: None }]);
        assert_eq!(diff(&committed, &committed, &[], 10).unwrap()[0].differing_rows, 0);
    }
}
