//! A second version of the example `orders-upsert`, for the replay tests:
//! the same table and rows, except that it drops cancelled orders and
//! rounds amounts to whole units (the nearest 100 cents). Replaying a batch
//! committed by `orders-upsert` with it shows exactly those rows as changed.

use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use sluice_sdk::{Batch, FileFormat, SinkError, Table};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    amount_cents: i64,
    status: String,
}

#[derive(Serialize)]
struct Row {
    order_id: String,
    customer: String,
    amount_cents: i64,
    status: String,
    updated_at_ms: i64,
    source_offset: i64,
}

fn upsert(batch: Batch) -> Result<(), SinkError> {
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for chunk in batch.chunks() {
        for record in &chunk {
            let order: Order = serde_json::from_slice(record.value().unwrap_or_default())
                .map_err(|e| SinkError::invalid_input(format!("offset {}: not an order: {e}", record.offset())))?;
            if order.status == "cancelled" {
                continue;
            }
            let row = Row {
                amount_cents: (order.amount_cents + 50) / 100 * 100,
                order_id: order.order_id,
                customer: order.customer,
                status: order.status,
                updated_at_ms: record.timestamp_ms(),
                source_offset: record.offset(),
            };
            match index.get(&row.order_id) {
                Some(&i) => rows[i] = row,
                None => {
                    index.insert(row.order_id.clone(), rows.len());
                    rows.push(row);
                }
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::File::create("/staging/orders.jsonl")?;
    for row in &rows {
        let line = serde_json::to_string(row).map_err(|e| SinkError::failed(e.to_string()))?;
        writeln!(file, "{line}")?;
    }
    drop(file);
    Table::new("orders").upsert_file(&["order_id"], "/staging/orders.jsonl", FileFormat::JsonLines)?;
    Ok(())
}

sluice_sdk::export_sink!(upsert);
