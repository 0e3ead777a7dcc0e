//! Staging output for the pipeline's tables (`output.stage`).
//!
//! Staging only records what the sink wants written: nothing reaches a table
//! until the host commits the batch, once, after the sink returned `Ok`. An
//! error or a trap discards everything staged. Limits on staged rows and bytes
//! apply to the sum of all calls in a batch.

use crate::__private::bindings::sluice::sink::output::{self as wit, Rows, WriteMode};

/// A table declared by the pipeline, to stage rows for.
///
/// JSON rows are objects, one string per row; files are written by the sink
/// under `/staging` first. Upserts MERGE on the given key columns, and within
/// a batch the last staged row for a key wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    name: String,
}

impl Table {
    /// The table called `name`; whether the pipeline declares it is checked
    /// when rows are staged ([`StageError::UnknownTable`]).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stages `rows` (JSON objects) to be appended.
    pub fn append_json<I>(&self, rows: I) -> Result<(), StageError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.stage_json(WriteMode::Append, rows)
    }

    /// Stages `rows` (JSON objects) to be merged on the `keys` columns.
    pub fn upsert_json<I>(&self, keys: &[&str], rows: I) -> Result<(), StageError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.stage_json(WriteMode::Upsert(keys), rows)
    }

    /// Stages deletes of the rows whose `keys` columns equal those of `rows`
    /// (JSON objects; members other than the keys are ignored, so a change
    /// event's `before` image can be passed as it is).
    ///
    /// Upserts and deletes of a table in one batch apply in staging order,
    /// the last for a key winning, as one MERGE; both must use the same keys.
    pub fn delete_json<I>(&self, keys: &[&str], rows: I) -> Result<(), StageError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.stage_json(WriteMode::Delete(keys), rows)
    }

    /// Stages the rows of the file at `path` (relative to `/staging`, or
    /// absolute under `/staging/`) to be appended. The host reads the file
    /// now: later changes to it have no effect.
    pub fn append_file(&self, path: &str, format: FileFormat) -> Result<(), StageError> {
        self.stage(WriteMode::Append, Rows::File((path, format.into_wit())))
    }

    /// Stages the rows of the file at `path` to be merged on the `keys`
    /// columns; see [`append_file`](Self::append_file) for `path`.
    pub fn upsert_file(
        &self,
        keys: &[&str],
        path: &str,
        format: FileFormat,
    ) -> Result<(), StageError> {
        self.stage(
            WriteMode::Upsert(keys),
            Rows::File((path, format.into_wit())),
        )
    }

    /// Stages deletes of the keys in the file at `path`; see
    /// [`delete_json`](Self::delete_json) and [`append_file`](Self::append_file).
    pub fn delete_file(&self, keys: &[&str], path: &str, format: FileFormat) -> Result<(), StageError> {
        self.stage(WriteMode::Delete(keys), Rows::File((path, format.into_wit())))
    }

    /// Stages the rows of `batch` to be appended, as an Arrow IPC stream:
    /// the bulk form, with no per-row encoding or parsing. Its columns must
    /// match the table's by name and type, which the commit checks: the
    /// Arrow type Delta gives each column type (`timestamp` is
    /// `Timestamp(Microsecond, "UTC")` or `"+00:00"`, `timestamp_ntz` the same without a
    /// zone, `date` `Date32`, `decimal(p,s)` `Decimal128(p,s)`, `binary`
    /// `Binary`, `array` `List`, `map` `Map`, `struct` `Struct`). List and
    /// map child field names do not matter.
    ///
    /// The stream goes through a file under `/staging` that this call
    /// creates (a name no other file has) and removes once the host has read
    /// it, so it counts against `limits.staging_bytes`.
    #[cfg(feature = "arrow")]
    pub fn append_arrow(&self, batch: &arrow_array::RecordBatch) -> Result<(), StageError> {
        crate::arrow::stage(&self.name, WriteMode::Append, batch)
    }

    /// Stages the rows of `batch` to be merged on the `keys` columns, which
    /// must be present and hold no nulls; see
    /// [`append_arrow`](Self::append_arrow).
    ///
    /// As with JSON rows, the last row staged for a key in the batch wins,
    /// across calls too.
    #[cfg(feature = "arrow")]
    pub fn upsert_arrow(&self, keys: &[&str], batch: &arrow_array::RecordBatch) -> Result<(), StageError> {
        crate::arrow::stage(&self.name, WriteMode::Upsert(keys), batch)
    }

    /// Stages deletes of the keys in `batch` (its `keys` columns; other
    /// columns are ignored); see [`delete_json`](Self::delete_json).
    #[cfg(feature = "arrow")]
    pub fn delete_arrow(&self, keys: &[&str], batch: &arrow_array::RecordBatch) -> Result<(), StageError> {
        crate::arrow::stage(&self.name, WriteMode::Delete(keys), batch)
    }

    fn stage_json<I>(&self, mode: WriteMode<'_>, rows: I) -> Result<(), StageError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let owned: Vec<String> = rows.into_iter().map(Into::into).collect();
        let rows: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.stage(mode, Rows::Json(&rows))
    }

    fn stage(&self, mode: WriteMode<'_>, rows: Rows<'_>) -> Result<(), StageError> {
        wit::stage(&self.name, mode, rows).map_err(StageError::from_wit)
    }
}

/// The format of a file staged from `/staging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// Newline-delimited JSON objects, one row per line.
    JsonLines,
    /// An Arrow IPC stream: the bulk form, columnar, no per-row parsing.
    ArrowIpc,
}

impl FileFormat {
    fn into_wit(self) -> wit::FileFormat {
        match self {
            Self::JsonLines => wit::FileFormat::JsonLines,
            Self::ArrowIpc => wit::FileFormat::ArrowIpc,
        }
    }
}

/// Why rows could not be staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// The table is not declared by the pipeline config.
    #[error("unknown table: {0}")]
    UnknownTable(String),
    /// The rows are malformed: not JSON objects, not a valid Arrow IPC
    /// stream, or missing a key column. The message says which row.
    #[error("invalid rows: {0}")]
    InvalidRows(String),
    /// The staged file could not be read from `/staging`.
    #[error("staged file: {0}")]
    File(String),
    /// The SDK could not write the file it stages through (Arrow output):
    /// nothing was staged.
    #[error("writing to /staging: {0}")]
    Io(String),
}

impl StageError {
    pub(crate) fn from_wit(e: wit::StageError) -> Self {
        match e {
            wit::StageError::UnknownTable(m) => Self::UnknownTable(m),
            wit::StageError::InvalidRows(m) => Self::InvalidRows(m),
            wit::StageError::File(m) => Self::File(m),
        }
    }
}
