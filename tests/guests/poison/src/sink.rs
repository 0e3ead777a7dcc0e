// The body of the `poison` and `poison-fixed` guests; each defines `FIXED`.
//
// Each record value is an id; the row `{"id": value}` goes to `events`.
// Except, unless FIXED:
// - `trap:…` traps (a panic: deterministic);
// - `invalid:…` fails the batch as invalid input (deterministic);
// - `oom:…` allocates until the memory limit (a deterministic limit);
// and always:
// - `failed:…` fails the batch as `failed` (an external error: retried,
//   never searched);
// - `slow:…` spins until the deadline (not deterministic: never searched).
// FIXED, the poison values are ordinary ids.

use sluice_sdk::{Batch, SinkError, Table};

fn sink(batch: Batch) -> Result<(), SinkError> {
    let mut rows = Vec::new();
    for chunk in batch.chunks() {
        for record in &chunk {
            let value = String::from_utf8_lossy(record.value().unwrap_or_default()).into_owned();
            match value.split_once(':').map(|(kind, _)| kind) {
                Some("trap") if !FIXED => panic!("poison record {value}"),
                Some("invalid") if !FIXED => return Err(SinkError::invalid_input(format!("cannot parse {value}"))),
                Some("oom") if !FIXED => {
                    let mut hog: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hog.push(vec![1; 1 << 20]);
                    }
                }
                Some("failed") => return Err(SinkError::failed(format!("downstream unavailable for {value}"))),
                Some("slow") => loop {
                    std::hint::black_box(0u64);
                },
                _ => rows.push(serde_json::json!({ "id": value }).to_string()),
            }
        }
    }
    Table::new("events").append_json(rows)?;
    Ok(())
}

sluice_sdk::export_sink!(sink);
