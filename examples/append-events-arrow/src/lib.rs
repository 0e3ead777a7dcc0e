//! `append-events` in Arrow: every record becomes one row of the `events`
//! table, the same rows as the JSON sink, staged a chunk at a time as an
//! Arrow record batch (`Table::append_arrow`, SDK feature `arrow`).
//!
//! Shows the bulk output form: columns are built straight from the chunk,
//! so there is no per-record JSON to write here, nor for the host to parse.
//! Key and value become UTF-8 strings (invalid bytes replaced), null stays
//! null, as in `append-events`.

use sluice_sdk::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use sluice_sdk::arrow::schema::{DataType, Field, Schema, SchemaRef};
use sluice_sdk::arrow::utf8_lossy;
use sluice_sdk::{Batch, Chunk, SinkError, Table};
use std::sync::Arc;

fn append_events(batch: Batch) -> Result<(), SinkError> {
    let events = Table::new("events");
    let schema = schema();
    for chunk in batch.chunks() {
        if chunk.is_empty() {
            continue;
        }
        events.append_arrow(&rows(&schema, &chunk)?)?;
    }
    Ok(())
}

/// The `events` table's columns, in its order.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp_ms", DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ]))
}

fn rows(schema: &SchemaRef, chunk: &Chunk) -> Result<RecordBatch, SinkError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| r.topic()))),
        Arc::new(Int32Array::from_iter_values(chunk.iter().map(|r| r.partition()))),
        Arc::new(Int64Array::from_iter_values(chunk.iter().map(|r| r.offset()))),
        Arc::new(Int64Array::from_iter_values(chunk.iter().map(|r| r.timestamp_ms()))),
        Arc::new(utf8_lossy(chunk.iter().map(|r| r.key()))),
        Arc::new(utf8_lossy(chunk.iter().map(|r| r.value()))),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| SinkError::failed(format!("building the events batch: {e}")))
}

sluice_sdk::export_sink!(append_events);
