//! Stages exactly the table operations its records spell out, so the tests
//! can drive every write mode and column type through a real component.
//!
//! Each record value is one JSON command:
//! `{"table": "t", "op": "append" | "upsert" | "delete", "keys": ["id"],
//!   "row": {…}, "via": "json" | "arrow"}` (`keys` only for upserts and
//! deletes, `via` defaults to `json`). Consecutive commands of the same
//! table, op and form go into one `stage` call, in record order.
//!
//! `via = "arrow"` decodes the rows in the guest with Arrow's JSON reader
//! against [`types_schema`], the all-types table of `tests/it/table_types.rs`,
//! and stages them as an Arrow IPC stream. Its lists and maps use Arrow's
//! default child names (`item`, `entries`), not Delta's, on purpose: the
//! host must accept them.
//!
//! A record that is not such a command fails the batch as invalid input.

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use sluice_sdk::{Batch, SinkError, Table};
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    row: &'a serde_json::value::RawValue,
}

#[derive(PartialEq)]
struct Group {
    table: String,
    op: String,
    keys: Vec<String>,
    arrow: bool,
}

fn table_ops(batch: Batch) -> Result<(), SinkError> {
    let mut pending: Option<(Group, Vec<String>)> = None;
    for chunk in batch.chunks() {
        for record in &chunk {
            let invalid = |what: &str| SinkError::invalid_input(format!("offset {}: {what}", record.offset()));
            let value = record.value().ok_or_else(|| invalid("null value"))?;
            let command: Value = serde_json::from_slice(value).map_err(|e| invalid(&format!("not JSON: {e}")))?;
            // The row as written: serde_json's Value would round its numbers.
            let raw: Raw<'_> = serde_json::from_slice(value).map_err(|e| invalid(&format!("not JSON: {e}")))?;
            let text = |k: &str| command.get(k).and_then(Value::as_str).map(str::to_owned);
            let group = Group {
                table: text("table").ok_or_else(|| invalid("no table"))?,
                op: text("op").ok_or_else(|| invalid("no op"))?,
                keys: command
                    .get("keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
                arrow: text("via").as_deref() == Some("arrow"),
            };
            let row = raw.row.get().to_owned();
            match &mut pending {
                Some((g, rows)) if *g == group => rows.push(row),
                _ => {
                    if let Some((g, rows)) = pending.take() {
                        stage(&g, rows)?;
                    }
                    pending = Some((group, vec![row]));
                }
            }
        }
    }
    if let Some((g, rows)) = pending {
        stage(&g, rows)?;
    }
    Ok(())
}

fn stage(g: &Group, rows: Vec<String>) -> Result<(), SinkError> {
    let table = Table::new(&g.table);
    let keys: Vec<&str> = g.keys.iter().map(String::as_str).collect();
    if g.arrow {
        let text = rows.join("\n");
        let mut reader = arrow_json::ReaderBuilder::new(types_schema())
            .build(std::io::Cursor::new(text.into_bytes()))
            .map_err(|e| SinkError::failed(e.to_string()))?;
        let batch = reader
            .next()
            .transpose()
            .map_err(|e| SinkError::invalid_input(format!("rows do not fit the types schema: {e}")))?
            .ok_or_else(|| SinkError::failed("no rows"))?;
        return Ok(match g.op.as_str() {
            "append" => table.append_arrow(&batch)?,
            "upsert" => table.upsert_arrow(&keys, &batch)?,
            "delete" => table.delete_arrow(&keys, &batch)?,
            other => return Err(SinkError::invalid_input(format!("unknown op `{other}`"))),
        });
    }
    match g.op.as_str() {
        "append" => table.append_json(rows)?,
        "upsert" => table.upsert_json(&keys, rows)?,
        "delete" => table.delete_json(&keys, rows)?,
        other => return Err(SinkError::invalid_input(format!("unknown op `{other}`"))),
    }
    Ok(())
}

/// The all-types table, in Arrow (the test declares the same columns).
fn types_schema() -> SchemaRef {
    let item = |t: DataType| Arc::new(Field::new("item", t, true));
    let entries = |k: DataType, v: DataType| {
        Arc::new(Field::new("entries", DataType::Struct(Fields::from(vec![Field::new("keys", k, false), Field::new("values", v, true)])), false))
    };
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("l", DataType::Int64, true),
        Field::new("i", DataType::Int32, true),
        Field::new("sh", DataType::Int16, true),
        Field::new("b", DataType::Int8, true),
        Field::new("d", DataType::Float64, true),
        Field::new("f", DataType::Float32, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("bin", DataType::Binary, true),
        Field::new("day", DataType::Date32, true),
        // `+00:00`: the guest's Arrow has no time zone database for "UTC".
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
        Field::new("ntz", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("amount", DataType::Decimal128(18, 2), true),
        Field::new("big", DataType::Decimal128(38, 10), true),
        Field::new("tags", DataType::List(item(DataType::Utf8)), true),
        Field::new("attrs", DataType::Map(entries(DataType::Utf8, DataType::Int64), false), true),
        Field::new(
            "addr",
            DataType::Struct(Fields::from(vec![
                Field::new("city", DataType::Utf8, true),
                Field::new("zip", DataType::Int32, true),
                Field::new("geo", DataType::List(item(DataType::Float64)), true),
            ])),
            true,
        ),
    ]))
}

sluice_sdk::export_sink!(table_ops);
