//! Appends every record to two tables, `events` and `audit`, so the crash
//! tests can stop the host between the two tables' commits and check that
//! each record lands in each table exactly once.
//!
//! Rows: `events` gets `{id, topic, partition, offset}` (the id is the
//! record value), `audit` gets `{id, batch_id}`.

use serde_json::json;
use sluice_sdk::{Batch, SinkError, Table};

fn fan_out(batch: Batch) -> Result<(), SinkError> {
    let (events, audit) = (Table::new("events"), Table::new("audit"));
    let batch_id = batch.batch_id();
    for chunk in batch.chunks() {
        let mut event_rows = Vec::new();
        let mut audit_rows = Vec::new();
        for record in &chunk {
            let id = String::from_utf8_lossy(record.value().unwrap_or_default()).into_owned();
            event_rows.push(
                json!({"id": id, "topic": record.topic(), "partition": record.partition(), "offset": record.offset()})
                    .to_string(),
            );
            audit_rows.push(json!({"id": id, "batch_id": batch_id}).to_string());
        }
        if !event_rows.is_empty() {
            events.append_json(event_rows)?;
            audit.append_json(audit_rows)?;
        }
    }
    Ok(())
}

sluice_sdk::export_sink!(fan_out);
