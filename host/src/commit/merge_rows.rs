//! The source rows of a MERGE that deletes as well as upserts.
//!
//! Upserts and deletes of one table in one batch apply in staging order,
//! the last operation for a key winning, as one MERGE. So both kinds become
//! rows of one schema (the table's, with every non-key column nullable,
//! plus [`DELETED`]), in staging order, before `last_per_key` keeps the last
//! row of each key. An upsert row is decoded against the table's own
//! schema first, so it is checked exactly as without deletes; a delete row
//! only needs its key columns (anything else in it is ignored).

use super::{StagedOp, StagedRows, decode_with};
use crate::output::WriteMode;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

/// The column marking a source row as a delete. Not a name a table may
/// declare: the config refuses columns starting with `__sluice`.
pub(crate) const DELETED: &str = "__sluice_deleted";

/// The merge schema for `table`, the ops' rows in it, and each row's place
/// in staging order (`seq`, for `last_per_key`).
///
/// A CDC sink stages short runs of upserts and deletes, so a batch can hold
/// a hundred thousand small JSON operations. Decoding each on its own (a
/// JSON reader per operation) cost more than the MERGE, so the JSON rows of
/// all upserts are decoded as one stream, and those of all deletes as
/// another, each row keeping its staging position. A row that does not fit
/// is then looked for op by op, so the error names its row as always.
pub(super) fn decode(table: &SchemaRef, keys: &[String], ops: &[&StagedOp]) -> Result<(SchemaRef, Vec<RecordBatch>, Vec<u64>), String> {
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
    let widen = |b: RecordBatch, delete: bool| -> Result<RecordBatch, String> {
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
    };
    let decode_op = |rows: &StagedRows, delete: bool, first: u64| {
        if delete { decode_with(rows, &key_schema, first, false) } else { decode_with(rows, table, first, true) }
    };
    let mut batches = Vec::new();
    let mut seq: Vec<u64> = Vec::new();
    let mut first = 0u64;
    // JSON rows by kind: their bytes back to back, and their positions.
    let mut json: [(Vec<u8>, Vec<u64>); 2] = Default::default();
    for op in ops {
        let delete = matches!(op.mode, WriteMode::Delete { .. });
        match &op.rows {
            StagedRows::JsonLines(bytes) => {
                let (text, places) = &mut json[usize::from(delete)];
                text.extend_from_slice(bytes);
                places.extend(first..first + op.row_count);
            }
            arrow @ StagedRows::ArrowIpc(_) => {
                for b in decode_op(arrow, delete, first)? {
                    seq.extend(first..first + b.num_rows() as u64);
                    first += b.num_rows() as u64;
                    batches.push(widen(b, delete)?);
                }
                continue;
            }
        }
        first += op.row_count;
    }
    for (delete, (text, places)) in json.into_iter().enumerate().map(|(i, j)| (i == 1, j)) {
        if text.is_empty() {
            continue;
        }
        let decoded = match decode_op(&StagedRows::JsonLines(text.into()), delete, 0) {
            Ok(decoded) => decoded,
            // Find the row op by op, to name it by its place.
            Err(e) => return Err(first_error(ops, &decode_op).unwrap_or(e)),
        };
        let rows: usize = decoded.iter().map(RecordBatch::num_rows).sum();
        if rows != places.len() {
            return Err(format!("{rows} rows decoded where {} were staged", places.len()));
        }
        seq.extend(places);
        for b in decoded {
            batches.push(widen(b, delete)?);
        }
    }
    Ok((merged, batches, seq))
}

/// The error of the first op whose rows do not fit, numbered in staging order.
fn first_error(ops: &[&StagedOp], decode_op: &impl Fn(&StagedRows, bool, u64) -> Result<Vec<RecordBatch>, String>) -> Option<String> {
    let mut first = 0;
    for op in ops {
        if let Err(e) = decode_op(&op.rows, matches!(op.mode, WriteMode::Delete { .. }), first) {
            return Some(e);
        }
        first += op.row_count;
    }
    None
}

/// How many rows of a merge source are deletes.
pub(super) fn deleted(rows: &RecordBatch) -> usize {
    use arrow_array::cast::AsArray;
    rows.column_by_name(DELETED).map_or(0, |c| c.as_boolean().true_count())
}
