//! The minimal append sink: every record becomes one row of the `events`
//! table, staged a chunk at a time.
//!
//! Shows the zero-copy read path (`Batch::chunks`, `RecordRef`) and JSON
//! staging with no schema: key and value become UTF-8 strings (invalid bytes
//! replaced), null stays null.

use serde_json::json;
use sluice_sdk::{Batch, SinkError, Table};

fn append_events(batch: Batch) -> Result<(), SinkError> {
    let events = Table::new("events");
    for chunk in batch.chunks() {
        if chunk.is_empty() {
            continue;
        }
        let rows = chunk.iter().map(|record| {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            json!({
                "topic": record.topic(),
                "partition": record.partition(),
                "offset": record.offset(),
                "timestamp_ms": record.timestamp_ms(),
                "key": record.key().map(text),
                "value": record.value().map(text),
            })
            .to_string()
        });
        events.append_json(rows)?;
    }
    Ok(())
}

sluice_sdk::export_sink!(append_events);
