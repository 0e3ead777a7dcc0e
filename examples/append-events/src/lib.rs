//! The minimal append sink: every record becomes one row of the `events`
//! table, staged a chunk at a time.
//!
//! Shows the zero-copy read path (`Batch::chunks`, `RecordRef`) and JSON
//! staging with no schema: key and value become UTF-8 strings (invalid bytes
//! replaced), null stays null.
//!
//! Rows are written with a small hand-rolled encoder rather than building a
//! `serde_json::Value` per record: this sink is the throughput benchmark's
//! trivial sink, and a `Value` map per record cost ~30 000 Wasm instructions.

use sluice_sdk::{Batch, RecordRef, SinkError, Table};
use std::fmt::Write as _;

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
    let _ = write!(out, ",\"offset\":{},\"partition\":{},\"timestamp_ms\":{},\"topic\":", record.offset(), record.partition(), record.timestamp_ms());
    push_text(&mut out, Some(record.topic().as_bytes()));
    out.push_str(",\"value\":");
    push_text(&mut out, record.value());
    out.push('}');
    out
}

/// Bytes as a JSON string (lossy UTF-8), or `null`.
fn push_text(out: &mut String, bytes: Option<&[u8]>) {
    let Some(bytes) = bytes else {
        out.push_str("null");
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    out.push('"');
    // Copy runs that need no escaping in one go; escapes are ASCII, so byte
    // positions of them are char boundaries.
    let mut run = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&text[run..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&text[run..]);
    out.push('"');
}

sluice_sdk::export_sink!(append_events);
