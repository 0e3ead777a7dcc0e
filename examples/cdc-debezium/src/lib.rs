//! Apply a Debezium change stream to a keyed Delta table: the seed paper's
//! cold path (materialise a batch of changes, then MERGE), done right.
//!
//! Every record is one change of one row of the source table:
//! - `op` `c` (insert), `r` (snapshot read) or `u` (update): the `after`
//!   image is upserted;
//! - `op` `d`: the row is deleted, by the key columns of its `before`
//!   image (or, without one, of the record key);
//! - a Kafka tombstone (a null value, which Debezium sends after a delete
//!   for log compaction): the record key's row is deleted; deleting a row
//!   twice is no change.
//!
//! The envelope may be bare (`{"op", "before", "after", …}`, Debezium's
//! JSON converter with `schemas.enable=false`) or wrapped
//! (`{"schema": …, "payload": {…}}`). Keys are JSON objects of the key
//! columns, bare or wrapped the same way.
//!
//! Changes are staged in record order, runs of upserts and of deletes as
//! one `stage` call each; the host applies them in that order, the last
//! change of a key winning, as one MERGE (update, insert and delete in one
//! Delta commit). So a batch's result is the source table's state after
//! its last change, whatever the batch boundaries.
//!
//! Images are staged as Debezium wrote them, never re-encoded: numbers keep
//! every digit (use `decimal.handling.mode=string` or numbers for
//! decimals), timestamps may be ISO text or epoch microseconds (Debezium's
//! `MicroTimestamp`), dates ISO text or epoch days. Every column of an
//! image must be declared in the table's config. A `t` (truncate) or an
//! unknown op fails the batch as invalid input, naming the record.

use serde_json::value::RawValue;
use sluice_sdk::{Batch, RecordRef, SinkError, Table};
use std::collections::HashMap;

/// The target table and its key columns (as declared in the config).
const TABLE: &str = "customers";
const KEYS: &[&str] = &["id"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Upsert,
    Delete,
}

fn apply_changes(batch: Batch) -> Result<(), SinkError> {
    let table = Table::new(TABLE);
    let mut run: Option<(Change, Vec<String>)> = None;
    let mut flush = |run: &mut Option<(Change, Vec<String>)>| -> Result<(), SinkError> {
        if let Some((change, rows)) = run.take() {
            match change {
                Change::Upsert => table.upsert_json(KEYS, rows)?,
                Change::Delete => table.delete_json(KEYS, rows)?,
            }
        }
        Ok(())
    };
    for chunk in batch.chunks() {
        for record in &chunk {
            let (change, row) = change_of(record)?;
            match &mut run {
                Some((c, rows)) if *c == change => rows.push(row),
                _ => {
                    flush(&mut run)?;
                    run = Some((change, vec![row]));
                }
            }
        }
    }
    flush(&mut run)
}

/// What one record does to the table, and the row (or key) it does it with.
fn change_of(record: RecordRef<'_>) -> Result<(Change, String), SinkError> {
    let invalid = |what: String| {
        SinkError::invalid_input(format!("topic {} partition {} offset {}: {what}", record.topic(), record.partition(), record.offset()))
    };
    let key = || -> Result<String, SinkError> {
        let bytes = record.key().ok_or_else(|| invalid("a delete without a before image needs the record key".into()))?;
        let key = unwrap_payload(bytes).map_err(|e| invalid(format!("the record key is not a JSON object: {e}")))?;
        Ok(key.get().to_owned())
    };
    let Some(value) = record.value() else {
        return Ok((Change::Delete, key()?)); // a tombstone
    };
    let envelope = unwrap_payload(value).map_err(|e| invalid(format!("not a Debezium change event: {e}")))?;
    let fields: HashMap<String, &RawValue> =
        serde_json::from_str(envelope.get()).map_err(|e| invalid(format!("not a Debezium change event: {e}")))?;
    let image = |name: &str| fields.get(name).filter(|v| v.get() != "null").map(|v| v.get().to_owned());
    let op: String = fields
        .get("op")
        .and_then(|v| serde_json::from_str(v.get()).ok())
        .ok_or_else(|| invalid("no `op` (c, r, u, d)".into()))?;
    match op.as_str() {
        "c" | "r" | "u" => Ok((Change::Upsert, image("after").ok_or_else(|| invalid(format!("op `{op}` without an `after` image")))?)),
        "d" => Ok((Change::Delete, match image("before") {
            Some(before) => before,
            None => key()?,
        })),
        "t" => Err(invalid("a truncate event: truncating the table is not applied by this sink".into())),
        other => Err(invalid(format!("unknown op `{other}` (expected c, r, u or d)"))),
    }
}

/// The JSON object in `bytes`, or its `payload` when it is Debezium's
/// `{"schema", "payload"}` wrapper.
fn unwrap_payload(bytes: &[u8]) -> Result<&RawValue, serde_json::Error> {
    let top: &RawValue = serde_json::from_slice(bytes)?;
    let fields: HashMap<String, &RawValue> = serde_json::from_str(top.get())?;
    Ok(match (fields.get("payload"), fields.contains_key("schema")) {
        (Some(payload), true) => payload,
        _ => top,
    })
}

sluice_sdk::export_sink!(apply_changes);
