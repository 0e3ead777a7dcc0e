//! The source rows of a MERGE that deletes as well as upserts.
//!
//! Upserts and deletes of one table in one batch apply in staging order,
//! the last operation for a key winning, as one MERGE. So both kinds become
//! rows of one schema (the table's, with every non-key column nullable,
//! plus [`DELETED`]), in staging order, before `last_per_key` keeps the last
//! row of each key. An upsert row is decoded against the table's own
//! schema first, so it is checked exactly as without deletes; a delete row
//! only needs its key columns (anything else in it is ignored).

use super::{StagedOp, decode_with};
use crate::output::WriteMode;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

/// The column marking a source row as a delete. Not a name a table may
/// declare: the config refuses columns starting with `__sluice`.
pub(crate) const DELETED: &str = "__sluice_deleted";

/// The merge schema for `table` and the ops' rows in it, in staging order.
pub(super) fn decode(table: &SchemaRef, keys: &[String], ops: &[&StagedOp]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let mut fields: Vec<Field> = table
        .fields()
        .iter()
        .map(|f| if keys.contains(f.name()) { f.as_ref().clone() } else { f.as_ref().clone().with_nullable(true) })
        .collect();
    fields.push(Field::new(DELETED, DataType::Boolean, false));
    let merged: SchemaRef = Arc::new(Schema::new(fields));
    let key_schema: SchemaRef = Arc::new(Schema::new(
        table.fields().iter().filter(|f| keys.contains(f.name())).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
    ));
    let batches = super::decode_each(ops, |op, first| {
        let delete = matches!(op.mode, WriteMode::Delete { .. });
        let decoded = if delete { decode_with(&op.rows, &key_schema, first, false)? } else { decode_with(&op.rows, table, first, true)? };
        decoded
            .into_iter()
            .map(|b| {
                let n = b.num_rows();
                let mut columns: Vec<ArrayRef> = table
                    .fields()
                    .iter()
                    .map(|f| match b.column_by_name(f.name()) {
                        Some(c) => c.clone(),
                        None => new_null_array(f.data_type(), n),
                    })
                    .collect();
                columns.push(Arc::new(BooleanArray::from(vec![delete; n])));
                RecordBatch::try_new(merged.clone(), columns).map_err(|e| format!("rows do not fit: {e}"))
            })
            .collect()
    })?;
    Ok((merged, batches))
}

/// How many rows of a merge source are deletes.
pub(super) fn deleted(rows: &RecordBatch) -> usize {
    use arrow_array::cast::AsArray;
    rows.column_by_name(DELETED).map_or(0, |c| c.as_boolean().true_count())
}
