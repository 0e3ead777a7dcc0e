//! Schema evolution: how a table's declared columns may differ from the
//! Delta table's, and the one change sluice makes itself.
//!
//! Guarantees:
//! - A nullable column declared in the config but missing from the table is
//!   added by its own Delta commit, just before the next batch commits to
//!   the table (recorded in `commitInfo.sluice.schema_change`). Rows
//!   already in the table read it as null. A crash between the two commits
//!   loses nothing: the next run finds the column there and commits the
//!   batch.
//! - Every other difference is refused before anything is written, with a
//!   message saying what to do: a column dropped or renamed in the config,
//!   a changed type, a column made NOT NULL (or a new one declared so), a
//!   different column order, a different `partition_by`.

use super::{ColumnType, CommitError, TableConfig};
use deltalake::DeltaTable;
use deltalake::kernel::{DataType, StructField};

/// The columns to add to `table` so it has `t`'s declared schema, or the
/// error saying why it cannot get there by adding columns.
pub(super) fn columns_to_add(t: &TableConfig, table: &DeltaTable) -> Result<Vec<StructField>, CommitError> {
    let refuse = |what: String| CommitError::Schema { table: t.name.clone(), what };
    let snapshot = table.snapshot().map_err(super::delta_err(t))?;
    let schema = snapshot.schema();
    let existing: Vec<&StructField> = schema.fields().collect();
    let declared = t.delta_fields();
    for (i, field) in existing.iter().enumerate() {
        let Some(d) = declared.iter().find(|d| d.name() == field.name()) else {
            return Err(refuse(format!(
                "the existing table has column `{}` ({}), which the config no longer declares. sluice never drops or \
                 renames a column: declare it again (to rename, add the new name as a new nullable column and keep \
                 the old one)",
                field.name(),
                shown(field.data_type())
            )));
        };
        if d.data_type() != field.data_type() {
            return Err(refuse(format!(
                "column `{}` is {} in the existing table but declared {}. A type cannot be changed in place: declare \
                 the table's type again, or write to a new column (or a new table) of the new type",
                field.name(),
                shown(field.data_type()),
                shown(d.data_type())
            )));
        }
        if d.is_nullable() != field.is_nullable() {
            let (is, says) = if field.is_nullable() { ("nullable", "NOT NULL") } else { ("NOT NULL", "nullable") };
            return Err(refuse(format!(
                "column `{}` is {is} in the existing table but declared {says} (key columns are always NOT NULL). \
                 Nullability cannot be changed by sluice: declare it as the table has it",
                field.name()
            )));
        }
        if declared.get(i).map(|d| d.name()) != Some(field.name()) {
            return Err(refuse(format!(
                "the config declares the columns in another order than the table holds them ({}). Declare the \
                 table's columns in its order, with new columns after them",
                existing.iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let partitions = snapshot.metadata().partition_columns();
    if partitions != &t.partition_by {
        return Err(refuse(format!(
            "the existing table is partitioned by [{}] but the config says partition_by = [{}]. Partitioning \
             cannot be changed in place: declare the table's partitioning, or write a new table",
            partitions.join(", "),
            t.partition_by.join(", ")
        )));
    }
    let added: Vec<StructField> = declared[existing.len()..].to_vec();
    if let Some(f) = added.iter().find(|f| !f.is_nullable()) {
        return Err(refuse(format!(
            "column `{}` is new and declared NOT NULL, but the rows already in the table have no value for it. \
             Declare it nullable (`nullable = true`, and not a key)",
            f.name()
        )));
    }
    Ok(added)
}

/// A Delta type in the config's spelling when it has one.
fn shown(t: &DataType) -> String {
    ColumnType::from_delta(t).map_or_else(|| format!("{t:?}"), |c| c.to_string())
}
