//! An upsert's source rows reduced to one per key.
//!
//! Within a batch the last staged row for a key wins (the WIT contract), and
//! Delta's MERGE wants at most one source row per key: two would fail the
//! MERGE or, for a new key, insert it twice. The reduction runs over all of
//! a table's staged rows at once, whatever stage call, chunk or format
//! (JSON lines or Arrow IPC) they came in.

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::SchemaRef;
use std::collections::HashMap;

/// The last row of every key of `batches`, in the order keys were first
/// seen. Keys are compared by value (typed, as decoded), not by spelling.
/// With `seq`, "last" is the row with the highest `seq` (its place in
/// staging order) rather than the one furthest down.
pub(crate) fn last_per_key(schema: &SchemaRef, batches: &[RecordBatch], keys: &[String], seq: Option<&[u64]>) -> Result<RecordBatch, String> {
    let all = arrow_select::concat::concat_batches(schema, batches).map_err(|e| e.to_string())?;
    let mut columns = Vec::with_capacity(keys.len());
    for k in keys {
        columns.push(all.column_by_name(k).ok_or_else(|| format!("upsert key `{k}` is not a column"))?.clone());
    }
    let fields = columns.iter().map(|c| SortField::new(c.data_type().clone())).collect();
    let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
    let rows = converter.convert_columns(&columns).map_err(|e| e.to_string())?;
    // Key → (first-seen rank, last row index).
    let mut last: HashMap<arrow_row::Row<'_>, (u64, u32)> = HashMap::with_capacity(rows.num_rows());
    match seq {
        None => {
            for (i, row) in rows.iter().enumerate() {
                let rank = last.len() as u64;
                last.entry(row).and_modify(|e| e.1 = i as u32).or_insert((rank, i as u32));
            }
        }
        Some(seq) => {
            if seq.len() != rows.num_rows() {
                return Err(format!("{} staging places for {} rows", seq.len(), rows.num_rows()));
            }
            // Rank by the earliest place of the key, keep its latest row.
            for (i, row) in rows.iter().enumerate() {
                let e = last.entry(row).or_insert((seq[i], i as u32));
                if seq[i] < e.0 {
                    e.0 = seq[i];
                }
                if seq[i] > seq[e.1 as usize] {
                    e.1 = i as u32;
                }
            }
        }
    }
    if last.len() == all.num_rows() && seq.is_none() {
        return Ok(all);
    }
    let mut keep: Vec<(u64, u32)> = last.into_values().collect();
    keep.sort_unstable();
    let indices = UInt32Array::from_iter_values(keep.into_iter().map(|(_, i)| i));
    arrow_select::take::take_record_batch(&all, &indices).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, ids: &[i64], names: &[&str]) -> RecordBatch {
        let columns: Vec<Arc<dyn arrow_array::Array>> =
            vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names.to_vec()))];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    #[test]
    fn the_last_row_of_each_key_wins_across_batches_in_first_seen_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));
        let batches = [batch(&schema, &[1, 2, 1], &["a", "b", "c"]), batch(&schema, &[3, 2], &["d", "e"])];
        let out = last_per_key(&schema, &batches, &["id".into()], None).unwrap();
        assert_eq!(out, batch(&schema, &[1, 2, 3], &["c", "e", "d"]));
        // Two key columns: (1, "c") and (1, "a") are different keys.
        let out = last_per_key(&schema, &batches, &["id".into(), "name".into()], None).unwrap();
        assert_eq!(out.num_rows(), 5);
        // Rows out of staging order: the highest place wins, keys ranked by
        // their earliest place.
        let out = last_per_key(&schema, &batches, &["id".into()], Some(&[4, 1, 0, 3, 2])).unwrap();
        assert_eq!(out, batch(&schema, &[1, 2, 3], &["a", "e", "d"]));
    }
}
