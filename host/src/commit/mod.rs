//! The Delta commit: applies a batch output to its tables, exactly once.
//!
//! Guarantees:
//! - One Delta transaction per table per batch, carrying `txn(app_id, N)`
//!   and, in the commit metadata, the batch's source ranges and output
//!   digest. Every declared table gets the transaction, even with no rows,
//!   so "every table is at ≥ N" means "batch N is committed".
//! - A table whose `txn` version for the app is already ≥ N is skipped: a
//!   crash between two tables' commits is finished by re-running the
//!   (deterministic) batch, never applied twice.
//! - Rows that do not fit the table's schema fail the commit before anything
//!   is written, naming the table and the column.
//! - Two writers racing on batch N: Delta's conflict check on the app
//!   transaction lets one commit win; the loser sees the version and stops.
//! - Open tables are kept between batches and brought up to date before
//!   every check and every commit (a listing of the log past the version
//!   held), so both see commits made by anyone else; the app's `txn`
//!   version is read from the log only when the table moved past what this
//!   committer wrote or last read.

mod last_per_key;

use crate::output::{BatchOutput, StagedOp, StagedRows, WriteMode};
use arrow_array::RecordBatch;
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, PrimitiveType, StructField, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use url::Url;

/// A column type a table can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Long,
    /// 32-bit integer.
    Integer,
    /// 64-bit float.
    Double,
    /// true/false.
    Boolean,
}

impl ColumnType {
    fn arrow(self) -> ArrowType {
        match self {
            ColumnType::String => ArrowType::Utf8,
            ColumnType::Long => ArrowType::Int64,
            ColumnType::Integer => ArrowType::Int32,
            ColumnType::Double => ArrowType::Float64,
            ColumnType::Boolean => ArrowType::Boolean,
        }
    }

    fn delta(self) -> DataType {
        DataType::Primitive(match self {
            ColumnType::String => PrimitiveType::String,
            ColumnType::Long => PrimitiveType::Long,
            ColumnType::Integer => PrimitiveType::Integer,
            ColumnType::Double => PrimitiveType::Double,
            ColumnType::Boolean => PrimitiveType::Boolean,
        })
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// Whether nulls are allowed (default true; key columns never are).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// A `[[tables]]` entry of a pipeline config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The name sinks stage to.
    pub name: String,
    /// The table's directory.
    pub path: PathBuf,
    /// The schema, used to create the table and to check rows.
    pub columns: Vec<ColumnConfig>,
    /// Key columns (for upserts and reconciliation).
    #[serde(default)]
    pub keys: Vec<String>,
}

impl TableConfig {
    fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.arrow(), c.nullable && !self.keys.contains(&c.name)))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Committing a batch failed. Nothing of the failing table was written.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The rows do not fit the table.
    #[error("table `{table}`: {what}; nothing was committed")]
    Schema {
        /// Table.
        table: String,
        /// What does not fit.
        what: String,
    },
    /// A table the checkpoint says holds committed batches is gone.
    #[error(
        "table `{table}` at {path} does not exist, but the checkpoint records batches committed to it; \
         restore the table (or, to deliberately start over, move the checkpoint away too)"
    )]
    Missing {
        /// Table.
        table: String,
        /// Its directory.
        path: String,
    },
    /// The Delta client's runtime could not be started.
    #[error("cannot start the Delta client: {0}")]
    Io(#[from] std::io::Error),
    /// The sink staged to a table the pipeline does not declare.
    #[error("batch output stages to undeclared table `{0}`")]
    UnknownTable(String),
    /// Delta or the storage under it failed.
    #[error("table `{table}` at {path}: {source}")]
    Delta {
        /// Table.
        table: String,
        /// Its directory.
        path: String,
        /// Why (boxed: Delta's error type is large).
        source: Box<DeltaTableError>,
    },
}

/// Applies batch outputs to the declared Delta tables.
pub struct DeltaCommitter {
    app_id: String,
    tables: Vec<TableConfig>,
    /// Tables that must exist: creating them again would hide lost data.
    existing: BTreeSet<String>,
    /// Tables opened before, by name. Reloading a table from storage for
    /// every check and every commit cost 10–20 ms each.
    open: Mutex<BTreeMap<String, OpenTable>>,
    runtime: tokio::runtime::Runtime,
}

/// A table kept open between batches.
struct OpenTable {
    table: DeltaTable,
    /// The app's `txn` version as of a table version, when known.
    txn: Option<(Option<u64>, Option<i64>)>,
}

/// A table's state, for `sluice status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableState {
    /// The Delta version.
    pub version: u64,
    /// The last batch id committed by this pipeline (its `txn` version).
    pub last_batch: Option<i64>,
}

/// Where a batch landed in one table: found from the commit metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommit {
    /// The Delta version whose commit carries the batch.
    pub version: u64,
    /// The batch output digest recorded in the commit metadata.
    pub output_digest: String,
}

/// One commit of a table's log, as `sluice reconcile` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// The Delta version.
    pub version: u64,
    /// The operation (`WRITE`, `MERGE`, `DELETE`, …).
    pub operation: String,
    /// The `txn` version the commit sets for this pipeline's app id.
    pub txn: Option<i64>,
    /// The batch, when this pipeline made the commit (its metadata).
    pub batch_id: Option<u64>,
    /// The batch's output digest, from the same metadata.
    pub output_digest: Option<String>,
    /// Records delivered to the sink for the batch.
    pub records: Option<u64>,
    /// Rows the commit was asked to write.
    pub rows: Option<u64>,
    /// Rows Delta reports writing: appended, or inserted plus updated.
    pub rows_written: Option<u64>,
    /// The change in the table's row count, when Delta reports it.
    pub rows_added: Option<i64>,
}

/// A table's log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLog {
    /// The latest version.
    pub version: u64,
    /// Every commit still in the log.
    pub entries: Vec<LogEntry>,
    /// Versions before this one are no longer in the log (cleaned up).
    pub first_version: u64,
}

impl DeltaCommitter {
    /// A committer writing as `app_id` (the Delta `txn` application id).
    pub fn new(app_id: impl Into<String>, tables: Vec<TableConfig>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        Ok(Self { app_id: app_id.into(), tables, existing: BTreeSet::new(), open: Mutex::default(), runtime })
    }

    /// Refuse to create these tables: the checkpoint says they hold batches,
    /// so a missing one was lost or moved, not never made.
    pub fn expect_existing(mut self, tables: impl IntoIterator<Item = String>) -> Self {
        self.existing = tables.into_iter().collect();
        self
    }

    /// The declared tables.
    pub fn tables(&self) -> &[TableConfig] {
        &self.tables
    }

    /// Create missing tables from their declared schema and check that
    /// existing ones match it. Returns each table's Delta version.
    pub fn ensure_tables(&self) -> Result<BTreeMap<String, u64>, CommitError> {
        self.runtime.block_on(async {
            let mut versions = BTreeMap::new();
            for t in &self.tables {
                let open = self.latest(t).await?;
                versions.insert(t.name.clone(), open.table.version().unwrap_or(0));
                self.keep(t, open);
            }
            Ok(versions)
        })
    }

    /// Each table's last committed batch id for this app (its `txn` version).
    /// Like [`ensure_tables`](Self::ensure_tables), creates missing tables.
    pub fn committed_batches(&self) -> Result<BTreeMap<String, Option<i64>>, CommitError> {
        self.runtime.block_on(async {
            let mut out = BTreeMap::new();
            for t in &self.tables {
                let mut open = self.latest(t).await?;
                out.insert(t.name.clone(), self.app_txn(t, &mut open).await?);
                self.keep(t, open);
            }
            Ok(out)
        })
    }

    async fn txn_version(&self, t: &TableConfig, table: &DeltaTable) -> Result<Option<i64>, CommitError> {
        let state = table.snapshot().map_err(delta_err(t))?;
        state.transaction_version(table.log_store().as_ref(), &self.app_id).await.map_err(delta_err(t))
    }

    /// Commit `output` to every declared table not already at its batch.
    /// Returns each table's Delta version holding the batch.
    pub fn commit(&self, output: &BatchOutput) -> Result<BTreeMap<String, u64>, CommitError> {
        if let Some(op) = output.ops.iter().find(|op| !self.tables.iter().any(|t| t.name == op.table)) {
            return Err(CommitError::UnknownTable(op.table.clone()));
        }
        // Decode everything first: a bad row fails the batch before any table moves.
        let mut prepared = Vec::new();
        for t in &self.tables {
            let ops: Vec<&StagedOp> = output.ops.iter().filter(|op| op.table == t.name).collect();
            prepared.push((t, prepare(t, &ops)?));
        }
        self.runtime.block_on(async {
            let mut versions = BTreeMap::new();
            let last = prepared.len().saturating_sub(1);
            for (i, (t, write)) in prepared.into_iter().enumerate() {
                versions.insert(t.name.clone(), self.commit_table(t, write, output).await?);
                if i < last {
                    crate::failpoint::hit("between-table-commits");
                }
            }
            Ok(versions)
        })
    }

    /// The commit of batch `n` in each table, searching the newest
    /// `depth` versions of each (a table without it maps to `None`).
    pub fn find_batch(&self, n: u64, depth: u64) -> Result<BTreeMap<String, Option<BatchCommit>>, CommitError> {
        self.runtime.block_on(async {
            let mut out = BTreeMap::new();
            for t in &self.tables {
                let table = self.open(t).await?;
                out.insert(t.name.clone(), find_batch_commit(t, &table, n, depth).await?);
            }
            Ok(out)
        })
    }

    /// Each table's version and last batch id, without creating anything
    /// (`None`: the table does not exist yet).
    pub fn describe(&self) -> BTreeMap<String, Result<Option<TableState>, CommitError>> {
        self.runtime.block_on(async {
            let mut out = BTreeMap::new();
            for t in &self.tables {
                out.insert(t.name.clone(), self.describe_table(t).await);
            }
            out
        })
    }

    async fn describe_table(&self, t: &TableConfig) -> Result<Option<TableState>, CommitError> {
        if !t.path.join("_delta_log").is_dir() {
            return Ok(None);
        }
        let table = DeltaTable::try_from_url(table_url(t)?).await.map_err(delta_err(t))?;
        let Some(version) = table.version() else { return Ok(None) };
        Ok(Some(TableState { version, last_batch: self.txn_version(t, &table).await? }))
    }

    /// Every commit of `table` still in its log, read without creating the
    /// table (`None`: it does not exist).
    pub fn log(&self, table: &str) -> Result<Option<TableLog>, CommitError> {
        let t = self.tables.iter().find(|t| t.name == table).ok_or_else(|| CommitError::UnknownTable(table.to_owned()))?;
        self.runtime.block_on(async {
            if !t.path.join("_delta_log").is_dir() {
                return Ok(None);
            }
            let table = DeltaTable::try_from_url(table_url(t)?).await.map_err(delta_err(t))?;
            let Some(latest) = table.version() else { return Ok(None) };
            let store = table.log_store();
            let mut log = TableLog { version: latest, entries: Vec::new(), first_version: 0 };
            for version in 0..=latest {
                match store.read_commit_entry(version).await.map_err(delta_err(t))? {
                    Some(bytes) => log.entries.push(log_entry(version, &bytes, &self.app_id)),
                    None => log.first_version = version + 1,
                }
            }
            Ok(Some(log))
        })
    }

    /// Run a SQL query over one table (registered as `t`), for summaries
    /// and checks. Rows come back as JSON objects.
    pub fn query(&self, table: &str, sql: &str) -> Result<Vec<serde_json::Value>, CommitError> {
        let t = self.tables.iter().find(|t| t.name == table).ok_or_else(|| CommitError::UnknownTable(table.to_owned()))?;
        let df_err = |e: deltalake::datafusion::error::DataFusionError| delta_err(t)(DeltaTableError::from(e));
        self.runtime.block_on(async {
            let table = self.open(t).await?;
            let ctx = deltalake::datafusion::prelude::SessionContext::new();
            table.update_datafusion_session(&ctx.state()).map_err(delta_err(t))?;
            ctx.register_table("t", table.table_provider().await.map_err(df_err)?).map_err(df_err)?;
            let batches = ctx.sql(sql).await.map_err(df_err)?.collect().await.map_err(df_err)?;
            let mut writer = arrow_json::ArrayWriter::new(Vec::new());
            for b in &batches {
                writer.write(b).map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
            }
            writer.finish().map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
            let bytes = writer.into_inner();
            Ok(if bytes.is_empty() { Vec::new() } else { serde_json::from_slice(&bytes).unwrap_or_default() })
        })
    }

    async fn open(&self, t: &TableConfig) -> Result<DeltaTable, CommitError> {
        open_or_create(t, !self.existing.contains(&t.name)).await
    }

    /// The table at its latest version: the one kept open, updated with
    /// whatever was committed since (by anyone), or opened afresh. It is
    /// taken out of the cache: [`keep`](Self::keep) puts it back once used,
    /// so a failure leaves nothing stale behind.
    async fn latest(&self, t: &TableConfig) -> Result<OpenTable, CommitError> {
        let kept = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&t.name);
        match kept {
            Some(mut open) => {
                open.table.update_incremental(None).await.map_err(delta_err(t))?;
                Ok(open)
            }
            None => Ok(OpenTable { table: self.open(t).await?, txn: None }),
        }
    }

    fn keep(&self, t: &TableConfig, open: OpenTable) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(t.name.clone(), open);
    }

    /// The app's `txn` version at the table's current version, read from
    /// the log only if not already known for that version.
    async fn app_txn(&self, t: &TableConfig, open: &mut OpenTable) -> Result<Option<i64>, CommitError> {
        let version = open.table.version();
        if let Some((at, txn)) = open.txn
            && at == version
        {
            return Ok(txn);
        }
        let txn = self.txn_version(t, &open.table).await?;
        open.txn = Some((version, txn));
        Ok(txn)
    }

    async fn commit_table(&self, t: &TableConfig, write: Prepared, output: &BatchOutput) -> Result<u64, CommitError> {
        let batch_id = output.batch.batch_id as i64;
        let mut open = self.latest(t).await?;
        let skip = self.app_txn(t, &mut open).await?.is_some_and(|v| v >= batch_id);
        if skip {
            let version = open.table.version().unwrap_or(0);
            self.keep(t, open);
            return Ok(version);
        }
        let table = open.table;
        let metadata = serde_json::json!({
            "pipeline_id": output.batch.pipeline_id,
            "batch_id": output.batch.batch_id,
            "ranges": output.batch.ranges,
            "output_digest": output.digest,
            "records": output.records_in,
            // What this transaction writes (upserts: one row per key), for `sluice reconcile`.
            "rows": write.rows(),
        });
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, batch_id))
            .with_metadata([("sluice".to_owned(), metadata)]);
        let table = match write {
            Prepared::Append(batches) => table
                .write(batches)
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(props)
                .await
                .map_err(delta_err(t))?,
            Prepared::Upsert { keys, batches } => {
                let ctx = deltalake::datafusion::prelude::SessionContext::new();
                let source = ctx.read_batches(batches).map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
                let predicate = keys.iter().map(|k| format!("target.`{k}` = source.`{k}`")).collect::<Vec<_>>().join(" AND ");
                let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
                let (table, _metrics) = table
                    .merge(source, predicate)
                    .with_source_alias("source")
                    .with_target_alias("target")
                    .when_matched_update(|u| columns.iter().fold(u, |u, c| u.update(format!("`{c}`"), format!("source.`{c}`"))))
                    .and_then(|m| {
                        m.when_not_matched_insert(|i| columns.iter().fold(i, |i, c| i.set(format!("`{c}`"), format!("source.`{c}`"))))
                    })
                    .map_err(delta_err(t))?
                    .with_commit_properties(props)
                    .await
                    .map_err(delta_err(t))?;
                table
            }
        };
        let version = table.version();
        // The commit carries txn(app, N): no need to read it back.
        self.keep(t, OpenTable { table, txn: Some((version, Some(batch_id))) });
        Ok(version.unwrap_or(0))
    }
}

fn delta_err(t: &TableConfig) -> impl FnOnce(DeltaTableError) -> CommitError + '_ {
    move |source| CommitError::Delta { table: t.name.clone(), path: t.path.display().to_string(), source: Box::new(source) }
}

fn table_url(t: &TableConfig) -> Result<Url, CommitError> {
    let path = std::path::absolute(&t.path).map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
    std::fs::create_dir_all(&path).map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
    Url::from_directory_path(&path)
        .map_err(|()| CommitError::Schema { table: t.name.clone(), what: format!("path {} is not a usable directory", path.display()) })
}

/// The version and digest of batch `n`'s commit, from the commit metadata
/// of the newest `depth` versions.
async fn find_batch_commit(t: &TableConfig, table: &DeltaTable, n: u64, depth: u64) -> Result<Option<BatchCommit>, CommitError> {
    let Some(latest) = table.version() else { return Ok(None) };
    let store = table.log_store();
    for version in (0..=latest).rev().take(depth as usize) {
        let Some(bytes) = store.read_commit_entry(version).await.map_err(delta_err(t))? else { continue };
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            let meta = &action["commitInfo"]["sluice"];
            if meta["batch_id"].as_u64() == Some(n) {
                let output_digest = meta["output_digest"].as_str().unwrap_or_default().to_owned();
                return Ok(Some(BatchCommit { version, output_digest }));
            }
        }
    }
    Ok(None)
}

/// What reconciliation needs from one commit file.
fn log_entry(version: u64, bytes: &[u8], app_id: &str) -> LogEntry {
    let mut e = LogEntry {
        version,
        operation: String::new(),
        txn: None,
        batch_id: None,
        output_digest: None,
        records: None,
        rows: None,
        rows_written: None,
        rows_added: None,
    };
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        let txn = &action["txn"];
        if txn["appId"] == app_id {
            e.txn = txn["version"].as_i64();
        }
        let info = &action["commitInfo"];
        if info.is_null() {
            continue;
        }
        e.operation = info["operation"].as_str().unwrap_or_default().to_owned();
        let meta = &info["sluice"];
        if meta["pipeline_id"] == app_id {
            e.batch_id = meta["batch_id"].as_u64();
            e.output_digest = meta["output_digest"].as_str().map(str::to_owned);
            e.records = meta["records"].as_u64();
            e.rows = meta["rows"].as_u64();
        }
        let m = &info["operationMetrics"];
        let n = |k: &str| m[k].as_i64();
        (e.rows_written, e.rows_added) = match e.operation.as_str() {
            "CREATE TABLE" => (Some(0), Some(0)),
            "WRITE" => (n("num_added_rows").map(|r| r as u64), n("num_added_rows")),
            "MERGE" => match (n("num_target_rows_inserted"), n("num_target_rows_updated"), n("num_target_rows_deleted")) {
                (Some(i), Some(u), d) => (Some((i + u) as u64), Some(i - d.unwrap_or(0))),
                _ => (None, None),
            },
            "DELETE" => (Some(0), n("num_deleted_rows").map(|d| -d)),
            "OPTIMIZE" | "VACUUM START" | "VACUUM END" | "SET TBLPROPERTIES" => (Some(0), Some(0)),
            _ => (None, None),
        };
    }
    e
}

/// Open the table, creating it from the declared schema if it does not
/// exist (when `may_create`), and check that an existing table has that
/// schema.
async fn open_or_create(t: &TableConfig, may_create: bool) -> Result<DeltaTable, CommitError> {
    let table = DeltaTable::try_from_url(table_url(t)?).await.map_err(delta_err(t))?;
    if table.version().is_none() {
        if !may_create {
            return Err(CommitError::Missing { table: t.name.clone(), path: t.path.display().to_string() });
        }
        let columns: Vec<StructField> = t
            .columns
            .iter()
            .map(|c| StructField::new(c.name.clone(), c.data_type.delta(), c.nullable && !t.keys.contains(&c.name)))
            .collect();
        return table.create().with_table_name(&t.name).with_columns(columns).await.map_err(delta_err(t));
    }
    let actual = table.snapshot().map_err(delta_err(t))?.snapshot().arrow_schema();
    let expected = t.arrow_schema();
    for field in expected.fields() {
        match actual.field_with_name(field.name()) {
            Err(_) => {
                return Err(CommitError::Schema {
                    table: t.name.clone(),
                    what: format!("the existing table has no column `{}` (declared {:?})", field.name(), field.data_type()),
                });
            }
            Ok(f) if f.data_type() != field.data_type() => {
                return Err(CommitError::Schema {
                    table: t.name.clone(),
                    what: format!(
                        "column `{}` is {:?} in the existing table but declared {:?}",
                        field.name(),
                        f.data_type(),
                        field.data_type()
                    ),
                });
            }
            Ok(_) => {}
        }
    }
    Ok(table)
}

/// What one table's transaction writes.
enum Prepared {
    Append(Vec<RecordBatch>),
    Upsert { keys: Vec<String>, batches: Vec<RecordBatch> },
}

impl Prepared {
    fn rows(&self) -> usize {
        let (Prepared::Append(batches) | Prepared::Upsert { batches, .. }) = self;
        batches.iter().map(RecordBatch::num_rows).sum()
    }
}

fn prepare(t: &TableConfig, ops: &[&StagedOp]) -> Result<Prepared, CommitError> {
    let schema_err = |what: String| CommitError::Schema { table: t.name.clone(), what };
    let schema = t.arrow_schema();
    let modes: Vec<&WriteMode> = ops.iter().map(|op| &op.mode).collect();
    if modes.windows(2).any(|w| w[0] != w[1]) {
        return Err(schema_err("a batch must stage either appends or upserts on the same keys to a table, not a mix".into()));
    }
    let mut batches = Vec::new();
    match modes.first() {
        None | Some(WriteMode::Append) => {
            batches = coalesce(&schema, decode_all(ops, &schema).map_err(schema_err)?).map_err(schema_err)?;
            if batches.is_empty() {
                // No rows for this table: still commit, so the transaction
                // records that the table has seen this batch.
                batches.push(RecordBatch::new_empty(schema));
            }
            Ok(Prepared::Append(batches))
        }
        Some(WriteMode::Upsert { keys }) => {
            if let Some(k) = keys.iter().find(|k| !t.columns.iter().any(|c| &c.name == *k)) {
                return Err(schema_err(format!("upsert key `{k}` is not a column")));
            }
            let decoded = decode_all(ops, &schema).map_err(schema_err)?;
            if decoded.iter().all(|b| b.num_rows() == 0) {
                // Nothing to merge (a MERGE needs a source with rows): commit
                // an empty write, so the table still records the batch.
                return Ok(Prepared::Append(vec![RecordBatch::new_empty(schema)]));
            }
            batches.push(last_per_key::last_per_key(&schema, &decoded, keys).map_err(schema_err)?);
            Ok(Prepared::Upsert { keys: keys.clone(), batches })
        }
    }
}

/// Runs of small record batches (many small staged operations, each its own
/// batch) concatenated into batches of about `COALESCE_ROWS` rows: the Delta
/// writer pays per batch, so a million one-row batches made the commit slow.
/// Batches of `SMALL_ROWS` rows or more (a staged chunk, a decoded JSON
/// batch) are passed on as they are: copying them would cost more than it
/// saves.
fn coalesce(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, String> {
    const SMALL_ROWS: usize = 1024;
    const COALESCE_ROWS: usize = 64 * 1024;
    if batches.iter().filter(|b| b.num_rows() < SMALL_ROWS).nth(1).is_none() {
        return Ok(batches);
    }
    let mut out = Vec::new();
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    let flush = |run: &mut Vec<RecordBatch>, out: &mut Vec<RecordBatch>| -> Result<(), String> {
        match run.len() {
            0 => {}
            1 => out.push(run.pop().expect("one")),
            _ => out.push(arrow_select::concat::concat_batches(schema, run.iter()).map_err(|e| e.to_string())?),
        }
        run.clear();
        Ok(())
    };
    for b in batches {
        if b.num_rows() >= SMALL_ROWS {
            flush(&mut run, &mut out)?;
            rows = 0;
            out.push(b);
            continue;
        }
        rows += b.num_rows();
        run.push(b);
        if rows >= COALESCE_ROWS {
            flush(&mut run, &mut out)?;
            rows = 0;
        }
    }
    flush(&mut run, &mut out)?;
    Ok(out)
}

/// Every op's rows as Arrow record batches, in op order, decoded on up to
/// two threads: decoding JSON was a third of the commit step. The error is
/// the first failing op's, as when decoding one op after another.
fn decode_all(ops: &[&StagedOp], schema: &SchemaRef) -> Result<Vec<RecordBatch>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let per_thread = ops.len().div_ceil(threads).max(1);
    let decode_slice = |slice: &[&StagedOp]| -> Result<Vec<RecordBatch>, String> {
        let mut out = Vec::new();
        for op in slice {
            out.extend(decode(&op.rows, schema)?);
        }
        Ok(out)
    };
    if ops.len() < 2 || threads < 2 {
        return decode_slice(ops);
    }
    let parts: Vec<Result<Vec<RecordBatch>, String>> = std::thread::scope(|s| {
        let mut chunks = ops.chunks(per_thread);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks.map(|c| s.spawn(move || decode_slice(c))).collect();
        let mut parts = vec![decode_slice(first)];
        parts.extend(others.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("decoding rows panicked".into()))));
        parts
    });
    let mut batches = Vec::new();
    for part in parts {
        batches.extend(part?);
    }
    Ok(batches)
}

/// Rows as Arrow record batches of the table's schema.
fn decode(rows: &StagedRows, schema: &SchemaRef) -> Result<Vec<RecordBatch>, String> {
    match rows {
        StagedRows::JsonLines(b) => {
            let reader = arrow_json::ReaderBuilder::new(schema.clone())
                .with_strict_mode(true)
                .build(std::io::Cursor::new(b))
                .map_err(|e| format!("rows do not fit the schema: {e}"))?;
            reader.collect::<Result<Vec<_>, _>>().map_err(|e| format!("rows do not fit the schema: {e}"))
        }
        // Decoded and validated when staged: only the columns are matched
        // to the table here, which shares them rather than copying.
        StagedRows::ArrowIpc(rows) => {
            let mut out = Vec::new();
            for batch in rows.batches() {
                let columns = schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let col = batch.column_by_name(f.name()).ok_or_else(|| format!("Arrow rows lack column `{}`", f.name()))?;
                        if col.data_type() != f.data_type() {
                            return Err(format!("Arrow column `{}` is {:?}, the table has {:?}", f.name(), col.data_type(), f.data_type()));
                        }
                        Ok(col.clone())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("Arrow rows do not fit: {e}"))?);
            }
            Ok(out)
        }
    }
}
