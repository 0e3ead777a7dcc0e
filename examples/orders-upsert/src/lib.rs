//! Upsert JSON orders into the `orders` table through a staged file.
//!
//! This is the seed paper's cold path (materialise the batch into a staging
//! table, then MERGE) done safely: `/staging` is private to this batch attempt,
//! so a retry or replay starts from an empty directory and never sees or
//! clobbers another attempt's file, and the MERGE only happens when the host
//! commits the batch.
//!
//! Record values are orders such as
//! `{"order_id": "o-1", "customer": "c-7", "amount_cents": 1234, "status": "paid"}`.
//! The sink writes one JSON line per order to `/staging/orders.jsonl`, keeping
//! only the last record of each `order_id` (in first-seen order), and stages
//! an upsert of that file on `order_id`. A malformed record rejects the whole
//! batch as invalid input, naming the record and what was wrong with it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{BufWriter, Write};

use serde::{Deserialize, Serialize};
use sluice_sdk::log::{self, Level};
use sluice_sdk::{Batch, FileFormat, RecordRef, SinkError, Table};

const STAGED_FILE: &str = "/staging/orders.jsonl";

/// A record value as the producers write it.
#[derive(Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    amount_cents: i64,
    status: String,
}

/// A row of the `orders` table.
#[derive(Serialize)]
struct Row {
    order_id: String,
    customer: String,
    amount_cents: i64,
    status: String,
    updated_at_ms: i64,
    source_offset: i64,
}

fn upsert_orders(batch: Batch) -> Result<(), SinkError> {
    let mut rows: Vec<Row> = Vec::new();
    let mut row_of_order: HashMap<String, usize> = HashMap::new();
    let mut records = 0usize;
    for chunk in batch.chunks() {
        for record in &chunk {
            records += 1;
            let row = parse(record)?;
            match row_of_order.entry(row.order_id.clone()) {
                Entry::Occupied(slot) => rows[*slot.get()] = row,
                Entry::Vacant(slot) => {
                    slot.insert(rows.len());
                    rows.push(row);
                }
            }
        }
    }

    if !rows.is_empty() {
        // Closed before staging: the host reads the file when `stage` is called.
        {
            let mut file = BufWriter::new(File::create(STAGED_FILE)?);
            for row in &rows {
                serde_json::to_writer(&mut file, row)
                    .map_err(|e| SinkError::failed(format!("encoding a row: {e}")))?;
                file.write_all(b"\n")?;
            }
            file.flush()?;
        }
        Table::new("orders").upsert_file(&["order_id"], STAGED_FILE, FileFormat::JsonLines)?;
    }

    log::log(
        Level::Info,
        "staged orders upsert",
        &[
            ("batch_id", &batch.batch_id().to_string()),
            ("records", &records.to_string()),
            ("orders", &rows.len().to_string()),
        ],
    );
    Ok(())
}

fn parse(record: RecordRef<'_>) -> Result<Row, SinkError> {
    let invalid = |what: &str| {
        SinkError::invalid_input(format!(
            "topic {} partition {} offset {}: {what}",
            record.topic(),
            record.partition(),
            record.offset()
        ))
    };
    let value = record
        .value()
        .ok_or_else(|| invalid("null value (a tombstone) is not an order"))?;
    let order: Order =
        serde_json::from_slice(value).map_err(|e| invalid(&format!("not an order: {e}")))?;
    Ok(Row {
        order_id: order.order_id,
        customer: order.customer,
        amount_cents: order.amount_cents,
        status: order.status,
        updated_at_ms: record.timestamp_ms(),
        source_offset: record.offset(),
    })
}

sluice_sdk::export_sink!(upsert_orders);
