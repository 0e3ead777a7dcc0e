//! The minimal append sink: every record becomes one row of the `events`
//! table, staged a chunk at a time.
//!
//! Shows the zero-copy read path (`Batch::chunks`, `RecordRef`) and JSON
//! staging with no schema: key and value become UTF-8 strings (invalid bytes
//! replaced), null stays null.
//!
//! Rows are written with the SDK's JSON helpers (`sluice_sdk::json`) rather
//! than a `serde_json::Value` per record: this sink is the throughput
//! benchmark's trivial sink, and a `Value` map per record cost ~30 000 Wasm
//! instructions.

use sluice_sdk::json::{push_int, push_str, push_string};
use sluice_sdk::{Batch, RecordRef, SinkError, Table};

fn append_events(batch: Batch) -> Result<(), SinkError> {
    let events = Table::new("events");
    for chunk in batch.chunks() {
        if chunk.is_empty() {
            continue;
        }
        events.append_json(chunk.iter().map(row))?;
    }
    Ok(())
}

/// `{"key":…,"offset":…,"partition":…,"timestamp_ms":…,"topic":…,"value":…}`
fn row(record: RecordRef<'_>) -> String {
    let mut out = String::with_capacity(96 + record.value().map_or(0, <[u8]>::len) * 5 / 4);
    out.push_str("{\"key\":");
    push_text(&mut out, record.key());
    out.push_str(",\"offset\":");
    push_int(&mut out, record.offset());
    out.push_str(",\"partition\":");
    push_int(&mut out, record.partition().into());
    out.push_str(",\"timestamp_ms\":");
    push_int(&mut out, record.timestamp_ms());
    out.push_str(",\"topic\":");
    push_str(&mut out, record.topic());
    out.push_str(",\"value\":");
    push_text(&mut out, record.value());
    out.push('}');
    out
}

/// Bytes as a JSON string (lossy UTF-8), or `null`.
fn push_text(out: &mut String, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => push_string(out, bytes),
        None => out.push_str("null"),
    }
}

sluice_sdk::export_sink!(append_events);
