//! A trivial benchmark sink: reads every record zero-copy, counts records and
//! value bytes, and stages a single row `{"records": n, "value_bytes": total}`
//! to the `counts` table. Its cost is almost entirely the host's: chunking,
//! the crossing into the guest and the commit.

use sluice_sdk::{Batch, SinkError, Table};

fn count_bytes(batch: Batch) -> Result<(), SinkError> {
    let (mut records, mut value_bytes) = (0u64, 0u64);
    for chunk in batch.chunks() {
        records += chunk.len() as u64;
        value_bytes += chunk
            .iter()
            .filter_map(|r| r.value())
            .map(|v| v.len() as u64)
            .sum::<u64>();
    }
    Table::new("counts").append_json([format!(
        r#"{{"records":{records},"value_bytes":{value_bytes}}}"#
    )])?;
    Ok(())
}

sluice_sdk::export_sink!(count_bytes);
