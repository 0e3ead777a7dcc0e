//! The Delta commit: applies a batch output to its tables, exactly once.
//!
//! Guarantees:
//! - One Delta transaction per table per batch, carrying `txn(app_id, N)`
//!   and, in the commit metadata, the batch's source ranges and output
//!   digest. Every declared table gets the transaction, even with no rows,
//!   so "every table is at ≥ N" means "batch N is committed".
//! - Before anything is written, every table is checked against the batch
//!   (the table is the truth; see `pipeline::agreement`): a table already
//!   holding N is skipped only if its commit of N records the same ranges
//!   and output digest (a crash between two tables' commits is finished by
//!   re-running the deterministic batch, never applied twice); a table past
//!   N, one whose commit of N records something else, or one that lost
//!   batches it held earlier in this run stops the commit with nothing
//!   written ([`CommitError::Ahead`], [`CommitError::Disagrees`],
//!   [`CommitError::Behind`]).
//! - The commit metadata also records what ran (component and config
//!   digest) and the planned timestamp, so the checkpoint can be rebuilt
//!   from the tables alone (`sluice checkpoint rebuild`).
//! - Rows that do not fit the table's schema fail the commit before anything
//!   is written, naming the table, the row, the column and the value
//!   (`column_type` has the types and the checks Arrow's readers leave out).
//! - Upserts and deletes of a table apply in staging order, the last for a
//!   key winning, as one MERGE (`merge_rows`, `last_per_key`).
//! - Columns added to a table's config are added to the Delta table by a
//!   commit of their own just before the batch's; any other schema change
//!   is refused (`evolution`).
//! - Two writers racing on batch N: Delta's conflict check on the app
//!   transaction lets one commit win; the loser sees the version and stops.
//! - Open tables are kept between batches and brought up to date before
//!   every check and every commit (a listing of the log past the version
//!   held), so both see commits made by anyone else; the app's `txn`
//!   version is read from the log only when the table moved past what this
//!   committer wrote or last read.

pub mod maintenance;
mod column_type;
mod evolution;
mod last_per_key;
mod merge_rows;

pub use column_type::{ColumnType, NestedField};

use crate::now_ms;
use crate::output::{BatchOutput, StagedOp, StagedRows, WriteMode};
use crate::source::records::SourceRange;
use crate::storage::{Location, StorageOptions};
use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use url::Url;

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
    /// Where the table is: a local directory or an object-store URL.
    pub path: Location,
    /// Object-store options for this table, over the pipeline's
    /// `storage_options`. Never serialised (bundles, digests): they may
    /// hold secrets.
    #[serde(default, skip_serializing)]
    pub storage_options: StorageOptions,
    /// The schema, used to create the table and to check rows.
    pub columns: Vec<ColumnConfig>,
    /// Key columns (for upserts, deletes and reconciliation).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Partition columns, given when the table is created (Delta's
    /// `partitionColumns`). Not serialised when empty, so configs without
    /// it keep their digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// Log checkpoints, log cleanup, compaction and VACUUM. Not part of the
    /// config digest or bundles: maintenance changes no rows.
    #[serde(default, skip_serializing)]
    pub maintenance: maintenance::MaintenanceConfig,
}

impl TableConfig {
    /// Whether column `c` may hold nulls (key columns never do).
    fn nullable(&self, c: &ColumnConfig) -> bool {
        c.nullable && !self.keys.contains(&c.name)
    }

    fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.data_type.arrow(), self.nullable(c))).collect::<Vec<_>>(),
        ))
    }

    /// The declared columns as Delta fields.
    fn delta_fields(&self) -> Vec<StructField> {
        self.columns.iter().map(|c| StructField::new(c.name.clone(), c.data_type.delta(), self.nullable(c))).collect()
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
         restore the table (or, to deliberately start over, move the checkpoint and every table of the \
         pipeline away together)"
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
    /// A table holds a later batch of this pipeline than the one committing.
    #[error(
        "table `{table}` (Delta version {version}) already holds batch {holds} of this pipeline, past batch \
         {batch} being committed: another process writes it with the same pipeline.id, or the checkpoint is \
         older than the table. Nothing was committed. Stop the other writer; if the checkpoint is the stale \
         one, rebuild it from the tables with `sluice checkpoint rebuild` and the pipeline's config"
    )]
    Ahead {
        /// Table.
        table: String,
        /// Its Delta version.
        version: u64,
        /// The batch it holds (its `txn` version).
        holds: i64,
        /// The batch being committed.
        batch: u64,
    },
    /// A table holds the batch being committed, with something else in it.
    #[error(
        "table `{table}` (Delta version {version}) holds batch {batch} with {what}: it was committed by \
         another run of the batch (a different checkpoint, component or config). Nothing was committed. \
         See the README's \"agreement\" section: rebuild the checkpoint from the tables \
         (`sluice checkpoint rebuild`) if the tables are right, or restore the table from a backup"
    )]
    Disagrees {
        /// Table.
        table: String,
        /// The Delta version of its commit of the batch.
        version: u64,
        /// The batch.
        batch: u64,
        /// What differs, both sides.
        what: String,
    },
    /// A table lost batches it held earlier in this run (its log was
    /// truncated or restored from a backup while sluice ran).
    #[error(
        "table `{table}` (Delta version {version}) now holds {} but held batch {expected} earlier in this run: \
         its last commits were removed or it was restored from a backup. Nothing was committed. Run \
         `sluice run` again: at start the lost batches are re-run from their recorded plans",
        holds.map_or("no batch".to_owned(), |h| format!("batch {h}"))
    )]
    Behind {
        /// Table.
        table: String,
        /// Its Delta version now.
        version: u64,
        /// The batch it holds now.
        holds: Option<i64>,
        /// The batch it held before.
        expected: i64,
    },
    /// This process lost ownership of the pipeline before committing.
    #[error("table `{table}`: nothing was committed: {why}")]
    NotOwner {
        /// Table.
        table: String,
        /// Why (the lease error).
        why: String,
    },
    /// A newer owner of the pipeline has fenced the table: this process's
    /// lease epoch is stale.
    #[error(
        "table `{table}` was taken over by lease epoch {fenced_by} of this pipeline; this process holds epoch {epoch} \
         and lost its lease. Nothing was committed"
    )]
    Fenced {
        /// Table.
        table: String,
        /// The epoch recorded in the table.
        fenced_by: u64,
        /// This process's epoch.
        epoch: u64,
    },
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
    /// The last batch each table was seen holding: a table found holding
    /// less later lost commits ([`CommitError::Behind`]).
    seen: Mutex<BTreeMap<String, i64>>,
    /// The lease epoch this process writes under, when the checkpoint is
    /// remote (see [`DeltaCommitter::fence_tables`]).
    epoch: Option<u64>,
    /// Each table's version when maintenance last looked at it.
    maintained: Mutex<BTreeMap<String, u64>>,
    runtime: tokio::runtime::Runtime,
}

/// Called just before each table's commit: `Err` (why) when this process
/// may no longer commit.
pub type Guard<'a> = &'a (dyn Fn() -> Result<(), String> + Sync);

/// A guard that always allows (tools without ownership to lose).
pub fn unguarded() -> Result<(), String> {
    Ok(())
}

/// What ran to produce a batch output: recorded in each table's commit so a
/// replay uses what committed and the checkpoint can be rebuilt from the
/// tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// SHA-256 of the sink component that produced the output.
    pub component_digest: String,
    /// The pipeline config digest it ran under.
    pub config_digest: String,
    /// Set for a batch releasing an earlier batch's poison records.
    pub release: Option<crate::checkpoint::Release>,
}

/// A table's standing for the agreement checks: its version, the last batch
/// it holds and that batch's commit (when found near the end of the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The Delta version.
    pub version: u64,
    /// The last batch id committed by this pipeline (its `txn` version).
    pub txn: Option<i64>,
    /// The commit of batch `txn`, with what it records.
    pub commit: Option<BatchCommit>,
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

/// Where a batch landed in one table, and what its commit metadata records.
/// Fields are `None` in commits made by versions of sluice that did not
/// record them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommit {
    /// The Delta version whose commit carries the batch.
    pub version: u64,
    /// The batch.
    pub batch_id: u64,
    /// The batch output digest recorded in the commit metadata.
    pub output_digest: String,
    /// The batch's source ranges.
    pub ranges: Option<Vec<SourceRange>>,
    /// The batch's planned timestamp (the sink's clock).
    pub planned_timestamp_ms: Option<i64>,
    /// The component that produced the output.
    pub component_digest: Option<String>,
    /// The config digest it ran under.
    pub config_digest: Option<String>,
    /// Records delivered to the sink.
    pub records: Option<u64>,
    /// Rows the commit wrote to this table.
    pub rows: Option<u64>,
    /// Set for a batch releasing an earlier batch's poison records.
    pub release: Option<crate::checkpoint::Release>,
}

impl BatchCommit {
    /// Read from a commit's `commitInfo.sluice` metadata, if it is this
    /// pipeline's.
    fn parse(version: u64, meta: &serde_json::Value, app_id: &str) -> Option<Self> {
        if meta["pipeline_id"] != app_id {
            return None;
        }
        let text = |k: &str| meta[k].as_str().map(str::to_owned);
        Some(Self {
            version,
            batch_id: meta["batch_id"].as_u64()?,
            output_digest: text("output_digest").unwrap_or_default(),
            ranges: serde_json::from_value(meta["ranges"].clone()).ok(),
            planned_timestamp_ms: meta["planned_timestamp_ms"].as_i64(),
            component_digest: text("component_digest"),
            config_digest: text("config_digest"),
            records: meta["records"].as_u64(),
            rows: meta["rows"].as_u64(),
            release: serde_json::from_value(meta["release"].clone()).ok(),
        })
    }

    /// What differs between this commit and `output`, if anything.
    pub fn differs_from(&self, ranges: &[SourceRange], output_digest: Option<&str>) -> Option<String> {
        if let Some(recorded) = self.ranges.as_deref().filter(|r| *r != ranges) {
            return Some(format!("source ranges {} where this run has {}", ranges_text(recorded), ranges_text(ranges)));
        }
        match output_digest {
            Some(d) if !self.output_digest.is_empty() && self.output_digest != d => Some(format!(
                "output digest {} where this run has {}",
                short(&self.output_digest),
                short(d)
            )),
            _ => None,
        }
    }
}

/// `events/0 0..10, events/1 0..10`, for messages.
pub fn ranges_text(ranges: &[SourceRange]) -> String {
    let text: Vec<String> = ranges.iter().map(|r| format!("{}/{} {}..{}", r.topic, r.partition, r.start, r.end)).collect();
    if text.is_empty() { "(none)".to_owned() } else { text.join(", ") }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
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
    /// Keys the commit was asked to delete (a delete of a key the table
    /// does not hold changes nothing, so Delta may report fewer).
    pub deletes: Option<u64>,
    /// Whether this pipeline made the commit (a batch, maintenance or a
    /// schema change).
    pub by_sluice: bool,
    /// Records of the batch set aside as poison (not delivered).
    pub quarantined: Option<u64>,
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
        Ok(Self {
            app_id: app_id.into(),
            tables,
            existing: BTreeSet::new(),
            open: Mutex::default(),
            seen: Mutex::default(),
            epoch: None,
            maintained: Mutex::default(),
            runtime,
        })
    }

    /// Commit under lease `epoch`: a table fenced by a later epoch refuses
    /// this process's commits.
    pub fn with_epoch(mut self, epoch: Option<u64>) -> Self {
        self.epoch = epoch;
        self
    }

    /// Run the maintenance steps due on every table (see [`maintenance`]):
    /// with `force`, every step now (`sluice maintain`). `retained_since_ms`
    /// is when the oldest batch the checkpoint retains was planned (VACUUM
    /// keeps its files). Returns the steps that ran, and the failed ones
    /// as (table, step, error): a failed step never fails a batch.
    pub fn maintain(
        &self,
        force: bool,
        retained_since_ms: &dyn Fn() -> Option<i64>,
        guard: Guard<'_>,
    ) -> (Vec<maintenance::Maintained>, Vec<(String, &'static str, CommitError)>) {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        self.runtime.block_on(async {
            for t in &self.tables {
                // After a batch the kept table is the state this process just
                // committed, with its txn known: looked at as it is, without
                // reading the log again (a listing and a GET per table per
                // batch in object storage). A step that finds it outdated
                // fails Delta's conflict check and is tried when next due.
                let kept = if force { None } else { self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&t.name) };
                let open = match kept {
                    Some(open) => Ok(open),
                    None => self.latest(t).await,
                };
                let open = match open {
                    Ok(open) => open,
                    Err(e) => {
                        failed.push((t.name.clone(), "open", e));
                        continue;
                    }
                };
                let Some(version) = open.table.version() else {
                    self.keep(t, open);
                    continue;
                };
                let before = self.maintained.lock().unwrap_or_else(|e| e.into_inner()).get(&t.name).copied();
                let small = small_files(&open.table, t.maintenance.target_file_bytes);
                let due = match (force, before) {
                    (true, _) => maintenance::Due { compaction: small >= 2, ..maintenance::Due::ALL },
                    (false, Some(before)) => maintenance::due(&t.maintenance, before, version, small),
                    (false, None) => maintenance::due(&t.maintenance, version, version, small),
                };
                let txn = open.txn;
                let mut table = open.table;
                if due.any() {
                    table = self.run_steps(t, table, due, small, retained_since_ms, guard, &mut done, &mut failed).await;
                }
                self.maintained.lock().unwrap_or_else(|e| e.into_inner()).insert(t.name.clone(), table.version().unwrap_or(version));
                // Maintenance commits carry no txn: the app's txn is unchanged,
                // and keeping it known spares the next check a log replay
                // (which, with no log checkpoint yet, reads every commit).
                let txn = txn.map(|(_, known)| (table.version(), known));
                self.keep(t, OpenTable { table, txn });
            }
        });
        (done, failed)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        t: &TableConfig,
        mut table: DeltaTable,
        due: maintenance::Due,
        small: u64,
        retained_since_ms: &dyn Fn() -> Option<i64>,
        guard: Guard<'_>,
        done: &mut Vec<maintenance::Maintained>,
        failed: &mut Vec<(String, &'static str, CommitError)>,
    ) -> DeltaTable {
        let c = &t.maintenance;
        let props = |step: &str| {
            sluice_commit().with_metadata([(
                "sluice".to_owned(),
                serde_json::json!({ "pipeline_id": self.app_id, "maintenance": step, "lease_epoch": self.epoch }),
            )])
        };
        let mut record = |step: &'static str, started: std::time::Instant, result: Result<String, CommitError>| match result {
            Ok(detail) => done.push(maintenance::Maintained { table: t.name.clone(), step, detail, ms: started.elapsed().as_millis() as u64 }),
            Err(e) => failed.push((t.name.clone(), step, e)),
        };
        let owned = |_: ()| guard().map_err(|why| CommitError::NotOwner { table: t.name.clone(), why });
        if due.compaction {
            let started = std::time::Instant::now();
            let target = std::num::NonZeroU64::new(c.target_file_bytes.max(1)).expect("at least 1");
            let result = match owned(()) {
                Err(e) => Err(e),
                Ok(()) => match table.clone().optimize().with_target_size(target).with_commit_properties(props("compaction")).await {
                    Ok((t2, metrics)) => {
                        table = t2;
                        Ok(format!("{} small files ({small} below the target size) into {}", metrics.num_files_removed, metrics.num_files_added))
                    }
                    Err(e) => Err(delta_err(t)(e)),
                },
            };
            record("compaction", started, result);
        }
        if due.vacuum {
            let started = std::time::Instant::now();
            // Never shorter than the age of the oldest retained batch: a
            // file removed after it was planned may be part of its version
            // (the plan precedes the commit, and both clocks are ours).
            let configured = c.vacuum_retention_hours as i64 * 3_600_000;
            let needed = retained_since_ms().map_or(0, |since| (now_ms() - since).max(0));
            let retention = chrono::Duration::milliseconds(configured.max(needed));
            let result = match owned(()) {
                Err(e) => Err(e),
                Ok(()) => match table
                    .clone()
                    .vacuum()
                    .with_retention_period(retention)
                    .with_enforce_retention_duration(false)
                    .with_commit_properties(props("vacuum"))
                    .await
                {
                    Ok((t2, metrics)) => {
                        table = t2;
                        Ok(format!("{} unreferenced files deleted (retention {} s)", metrics.files_deleted.len(), retention.num_seconds()))
                    }
                    Err(e) => Err(delta_err(t)(e)),
                },
            };
            record("vacuum", started, result);
        }
        if due.checkpoint {
            let started = std::time::Instant::now();
            let version = table.version().unwrap_or(0);
            let result = match owned(()) {
                Err(e) => Err(e),
                Ok(()) => deltalake::checkpoints::create_checkpoint(&table, None)
                    .await
                    .map(|()| format!("at version {version}"))
                    .map_err(delta_err(t)),
            };
            let ok = result.is_ok();
            record("checkpoint", started, result);
            if ok && c.log_cleanup {
                let started = std::time::Instant::now();
                let result = deltalake::checkpoints::cleanup_metadata(&table, None)
                    .await
                    .map(|n| format!("{n} expired log files deleted"))
                    .map_err(delta_err(t));
                record("log cleanup", started, result);
            }
        }
        table
    }

    /// The table property recording the newest lease epoch of this
    /// pipeline that has written the table.
    fn epoch_property(&self) -> String {
        format!("sluice.{}.leaseEpoch", self.app_id)
    }

    /// The lease epoch recorded in `table` (0 when none).
    fn table_epoch(&self, t: &TableConfig, table: &DeltaTable) -> Result<u64, CommitError> {
        if table.version().is_none() {
            return Ok(0);
        }
        let snapshot = table.snapshot().map_err(delta_err(t))?;
        Ok(snapshot
            .metadata()
            .configuration()
            .get(&self.epoch_property())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// On taking over the pipeline: record this process's epoch in every
    /// table (one metadata-only commit per table, skipped where it is
    /// recorded already). A commit by an older owner that was in flight
    /// conflicts with it (Delta refuses a commit whose snapshot predates a
    /// metadata change), and any later one finds the newer epoch in the
    /// table and is refused before it is written. Returns the tables
    /// fenced now.
    /// [`fence_tables`](Self::fence_tables) for a new owner: a table fenced
    /// by a later epoch than this process's (its checkpoint was rebuilt or
    /// moved, and the new lease started again from 1) raises this process's
    /// epoch past it with `raise` (the lease) and fences again. A zombie
    /// never gets here: it is past its start.
    pub fn take_over(
        mut self,
        guard: Guard<'_>,
        raise: &dyn Fn(u64) -> Result<Option<u64>, String>,
    ) -> Result<(Self, Vec<String>), CommitError> {
        for _ in 0..=self.tables.len() {
            match self.fence_tables(guard) {
                Err(CommitError::Fenced { table, fenced_by, .. }) => {
                    let epoch = raise(fenced_by + 1).map_err(|why| CommitError::NotOwner { table, why })?;
                    self.epoch = epoch;
                }
                other => return other.map(|fenced| (self, fenced)),
            }
        }
        let fenced = self.fence_tables(guard)?;
        Ok((self, fenced))
    }

    pub fn fence_tables(&self, guard: Guard<'_>) -> Result<Vec<String>, CommitError> {
        let Some(epoch) = self.epoch else {
            return Ok(Vec::new());
        };
        self.runtime.block_on(async {
            let mut fenced = Vec::new();
            for t in &self.tables {
                let open = self.latest(t).await?;
                let recorded = self.table_epoch(t, &open.table)?;
                if recorded > epoch {
                    return Err(CommitError::Fenced {
                        table: t.name.clone(),
                        fenced_by: recorded,
                        epoch,
                    });
                }
                if recorded == epoch || open.table.version().is_none() {
                    self.keep(t, open);
                    continue;
                }
                guard().map_err(|why| CommitError::NotOwner {
                    table: t.name.clone(),
                    why,
                })?;
                let props = sluice_commit().with_metadata([(
                    "sluice".to_owned(),
                    serde_json::json!({ "pipeline_id": self.app_id, "lease_epoch": epoch }),
                )]);
                let table = open
                    .table
                    .set_tbl_properties()
                    .with_properties([(self.epoch_property(), epoch.to_string())].into())
                    .with_raise_if_not_exists(false)
                    .with_commit_properties(props)
                    .await
                    .map_err(delta_err(t))?;
                self.keep(t, OpenTable { table, txn: None });
                fenced.push(t.name.clone());
            }
            Ok(fenced)
        })
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

    /// Each table's standing: version, last batch held and its commit
    /// (searched for among the newest `depth` versions). Creates missing
    /// tables like [`ensure_tables`](Self::ensure_tables).
    pub fn holdings(&self, depth: u64) -> Result<BTreeMap<String, Holding>, CommitError> {
        self.runtime.block_on(async {
            let mut out = BTreeMap::new();
            for t in &self.tables {
                let mut open = self.latest(t).await?;
                let txn = self.app_txn(t, &mut open).await?;
                let commit = match txn {
                    Some(n) if n >= 0 => find_batch_commit(t, &open.table, &self.app_id, n as u64, depth).await?,
                    _ => None,
                };
                let version = open.table.version().unwrap_or(0);
                self.keep(t, open);
                self.see(t, version, txn)?;
                out.insert(t.name.clone(), Holding { version, txn, commit });
            }
            Ok(out)
        })
    }

    /// Every commit of this pipeline still in `table`'s log, oldest first,
    /// read without creating the table (`None`: it does not exist).
    pub fn batch_commits(&self, table: &str) -> Result<Option<Vec<BatchCommit>>, CommitError> {
        Ok(self.read_log(table)?.map(|(_, entries)| {
            entries
                .iter()
                .filter_map(|(version, bytes)| {
                    let meta = commit_meta(bytes.as_ref()?)?;
                    BatchCommit::parse(*version, &meta, &self.app_id)
                })
                .collect()
        }))
    }

    /// The raw commit entries of `table`'s log, oldest first, with its
    /// latest version, read without creating the table (`None`: it does
    /// not exist). A version whose entry is gone (cleaned up) has `None`.
    fn read_log(&self, table: &str) -> Result<Option<(u64, Vec<(u64, Option<bytes::Bytes>)>)>, CommitError> {
        let t = self.tables.iter().find(|t| t.name == table).ok_or_else(|| CommitError::UnknownTable(table.to_owned()))?;
        self.runtime.block_on(async {
            let Some(table) = load_existing(t).await? else {
                return Ok(None);
            };
            let Some(latest) = table.version() else {
                return Ok(None);
            };
            let store = table.log_store();
            let mut entries = Vec::new();
            for version in 0..=latest {
                entries.push((version, store.read_commit_entry(version).await.map_err(delta_err(t))?));
            }
            Ok(Some((latest, entries)))
        })
    }

    async fn txn_version(&self, t: &TableConfig, table: &DeltaTable) -> Result<Option<i64>, CommitError> {
        let state = table.snapshot().map_err(delta_err(t))?;
        state.transaction_version(table.log_store().as_ref(), &self.app_id).await.map_err(delta_err(t))
    }

    /// Commit `output` to every declared table not already at its batch,
    /// recording no provenance (tests and tools; the pipeline uses
    /// [`commit_with`](Self::commit_with)).
    pub fn commit(&self, output: &BatchOutput) -> Result<BTreeMap<String, u64>, CommitError> {
        self.commit_with(output, &Provenance::default(), None, &unguarded)
    }

    /// Commit `output` to every declared table (or, with `only`, to those
    /// named) not already holding its batch. Every table is checked before
    /// any is written (see the module guarantees). Returns each table's
    /// Delta version holding the batch.
    pub fn commit_with(
        &self,
        output: &BatchOutput,
        provenance: &Provenance,
        only: Option<&BTreeSet<String>>,
        guard: Guard<'_>,
    ) -> Result<BTreeMap<String, u64>, CommitError> {
        if let Some(op) = output.ops.iter().find(|op| !self.tables.iter().any(|t| t.name == op.table)) {
            return Err(CommitError::UnknownTable(op.table.clone()));
        }
        let tables: Vec<&TableConfig> = self.tables.iter().filter(|t| only.is_none_or(|o| o.contains(&t.name))).collect();
        // Decode everything first: a bad row fails the batch before any table moves.
        let mut prepared = Vec::new();
        for t in tables {
            let ops: Vec<&StagedOp> = output.ops.iter().filter(|op| op.table == t.name).collect();
            prepared.push((t, prepare(t, &ops)?));
        }
        self.runtime.block_on(async {
            let mut versions = BTreeMap::new();
            // Check every table first: a table that disagrees stops the
            // batch before any other table moves.
            let mut todo = Vec::new();
            for (t, write) in prepared {
                let open = self.latest(t).await?;
                match self.check(t, open, output).await? {
                    Checked::Holds(version) => {
                        versions.insert(t.name.clone(), version);
                    }
                    Checked::Needs(open) => todo.push((t, write, open)),
                }
            }
            let last = todo.len().saturating_sub(1);
            for (i, (t, write, open)) in todo.into_iter().enumerate() {
                versions.insert(
                    t.name.clone(),
                    self.commit_table(t, open, write, output, provenance, guard)
                        .await?,
                );
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
                out.insert(t.name.clone(), find_batch_commit(t, &table, &self.app_id, n, depth).await?);
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
        let Some(table) = load_existing(t).await? else {
            return Ok(None);
        };
        let Some(version) = table.version() else {
            return Ok(None);
        };
        Ok(Some(TableState {
            version,
            last_batch: self.txn_version(t, &table).await?,
        }))
    }

    /// Every commit of `table` still in its log, read without creating the
    /// table (`None`: it does not exist).
    pub fn log(&self, table: &str) -> Result<Option<TableLog>, CommitError> {
        Ok(self.read_log(table)?.map(|(latest, entries)| {
            let mut log = TableLog { version: latest, entries: Vec::new(), first_version: 0 };
            for (version, bytes) in entries {
                match bytes {
                    Some(bytes) => log.entries.push(log_entry(version, &bytes, &self.app_id)),
                    None => log.first_version = version + 1,
                }
            }
            log
        }))
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
        if let Some(mut open) = kept {
            // A log cut back below the version held (a restore, a lost
            // write) must be read afresh: an update only looks past that
            // version (and refuses a log older than it). One stat.
            let held = match (open.table.version(), &t.path) {
                (None, _) => true,
                (Some(v), Location::Local(dir)) => dir
                    .join("_delta_log")
                    .join(format!("{v:020}.json"))
                    .exists(),
                (Some(v), Location::Remote(_)) => open
                    .table
                    .log_store()
                    .read_commit_entry(v)
                    .await
                    .map_err(delta_err(t))?
                    .is_some(),
            };
            if held {
                open.table.update_incremental(None).await.map_err(delta_err(t))?;
                return Ok(open);
            }
        }
        Ok(OpenTable { table: self.open(t).await?, txn: None })
    }

    /// Remember that `t` holds `txn`; a table holding less than it was seen
    /// holding before lost commits.
    fn see(&self, t: &TableConfig, version: u64, txn: Option<i64>) -> Result<(), CommitError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match (seen.get(&t.name).copied(), txn) {
            (Some(expected), holds) if holds.is_none_or(|h| h < expected) => {
                Err(CommitError::Behind { table: t.name.clone(), version, holds, expected })
            }
            (_, Some(h)) => {
                seen.insert(t.name.clone(), h);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The check before committing `output` to `t`: whether the table
    /// already holds the batch (and the same output), needs it, or
    /// disagrees. The table goes back to the cache unless it needs the
    /// commit.
    async fn check(&self, t: &TableConfig, mut open: OpenTable, output: &BatchOutput) -> Result<Checked, CommitError> {
        let n = output.batch.batch_id;
        let txn = self.app_txn(t, &mut open).await;
        let version = open.table.version().unwrap_or(0);
        let verdict = match txn {
            Err(e) => Err(e),
            Ok(txn) => match self.see(t, version, txn) {
                Err(e) => Err(e),
                Ok(()) => match txn {
                    Some(h) if h > n as i64 => Err(CommitError::Ahead { table: t.name.clone(), version, holds: h, batch: n }),
                    Some(h) if h == n as i64 => {
                        match find_batch_commit(t, &open.table, &self.app_id, n, FIND_DEPTH).await {
                            Err(e) => Err(e),
                            Ok(Some(c)) => match c.differs_from(&output.batch.ranges, Some(&output.digest)) {
                                Some(what) => Err(CommitError::Disagrees { table: t.name.clone(), version: c.version, batch: n, what }),
                                None => Ok(Some(c.version)),
                            },
                            // Older than the search depth: the txn says it is there.
                            Ok(None) => Ok(Some(version)),
                        }
                    }
                    _ => Ok(None),
                },
            },
        };
        match verdict {
            Ok(None) => Ok(Checked::Needs(open)),
            other => {
                self.keep(t, open);
                other.map(|v| Checked::Holds(v.unwrap_or(version)))
            }
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

    async fn commit_table(
        &self,
        t: &TableConfig,
        open: OpenTable,
        write: Prepared,
        output: &BatchOutput,
        provenance: &Provenance,
        guard: Guard<'_>,
    ) -> Result<u64, CommitError> {
        let batch_id = output.batch.batch_id as i64;
        // The fence: ownership first (the lease), then the table's own
        // record of the newest owner. Delta's txn check stays the last line.
        if let Some(epoch) = self.epoch {
            let recorded = self.table_epoch(t, &open.table)?;
            if recorded > epoch {
                self.keep(t, open);
                return Err(CommitError::Fenced {
                    table: t.name.clone(),
                    fenced_by: recorded,
                    epoch,
                });
            }
        }
        if let Err(why) = guard() {
            self.keep(t, open);
            return Err(CommitError::NotOwner {
                table: t.name.clone(),
                why,
            });
        }
        crate::failpoint::hit("before-table-commit");
        let mut table = open.table;
        let added = evolution::columns_to_add(t, &table)?;
        if !added.is_empty() {
            // Its own commit, before the batch's: see `evolution`.
            let names: Vec<&String> = added.iter().map(|f| f.name()).collect();
            let metadata = serde_json::json!({
                "pipeline_id": output.batch.pipeline_id,
                "schema_change": { "added": names, "before_batch": output.batch.batch_id },
                "lease_epoch": self.epoch,
            });
            let props = sluice_commit().with_metadata([("sluice".to_owned(), metadata)]);
            table = match table.add_columns().with_fields(added).with_commit_properties(props).await {
                Ok(table) => table,
                Err(e) => return Err(self.fenced_or(t, delta_err(t)(e)).await),
            };
            crate::failpoint::hit("after-schema-change");
        }
        let metadata = serde_json::json!({
            "pipeline_id": output.batch.pipeline_id,
            "batch_id": output.batch.batch_id,
            "ranges": output.batch.ranges,
            "output_digest": output.digest,
            "planned_timestamp_ms": output.batch.planned_timestamp_ms,
            "component_digest": provenance.component_digest,
            "config_digest": provenance.config_digest,
            "records": output.records_in,
            // What this transaction writes (upserts: one row per key), for `sluice reconcile`.
            "rows": write.rows(),
            "deletes": write.deletes(),
            // Records of the batch set aside as poison (not delivered).
            "quarantined": output.quarantined,
            "lease_epoch": self.epoch,
            // A release batch: its ranges are old offsets read again.
            "release": provenance.release,
        });
        let props = sluice_commit()
            .with_application_transaction(Transaction::new(&self.app_id, batch_id))
            .with_metadata([("sluice".to_owned(), metadata)]);
        let written: Result<DeltaTable, CommitError> = async {
            Ok(match write {
                Prepared::Append(batches) => table
                    .write(batches)
                    .with_save_mode(SaveMode::Append)
                    .with_commit_properties(props)
                    .await
                    .map_err(delta_err(t))?,
                Prepared::Upsert { keys, deletes, batches, .. } => {
                    let ctx = deltalake::datafusion::prelude::SessionContext::new();
                    let source = ctx
                        .read_batches(batches)
                        .map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
                    let predicate = keys
                        .iter()
                        .map(|k| format!("target.`{k}` = source.`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
                    // Update, insert and delete in one MERGE: a source row
                    // marked deleted removes its key, any other upserts it.
                    let deleted = format!("source.`{}`", merge_rows::DELETED);
                    let kept = format!("NOT {deleted}");
                    let mut merge = table.merge(source, predicate).with_source_alias("source").with_target_alias("target");
                    if deletes {
                        merge = merge.when_matched_delete(|d| d.predicate(deleted.clone())).map_err(delta_err(t))?;
                    }
                    let (table, _metrics) = merge
                        .when_matched_update(|u| {
                            let u = if deletes { u.predicate(kept.clone()) } else { u };
                            columns.iter().fold(u, |u, c| {
                                u.update(format!("`{c}`"), format!("source.`{c}`"))
                            })
                        })
                        .and_then(|m| {
                            m.when_not_matched_insert(|i| {
                                let i = if deletes { i.predicate(kept.clone()) } else { i };
                                columns.iter().fold(i, |i, c| {
                                    i.set(format!("`{c}`"), format!("source.`{c}`"))
                                })
                            })
                        })
                        .map_err(delta_err(t))?
                        .with_commit_properties(props)
                        .await
                        .map_err(delta_err(t))?;
                    table
                }
            })
        }
        .await;
        let table = match written {
            Ok(table) => table,
            Err(e) => return Err(self.fenced_or(t, e).await),
        };
        let version = table.version();
        // The commit carries txn(app, N): no need to read it back.
        self.keep(t, OpenTable { table, txn: Some((version, Some(batch_id))) });
        self.see(t, version.unwrap_or(0), Some(batch_id))?;
        Ok(version.unwrap_or(0))
    }
}

impl DeltaCommitter {
    /// A commit failed: if a newer owner fenced the table meanwhile (Delta
    /// refused the commit because the fence changed the table's metadata
    /// after this commit's snapshot), say so; otherwise the error itself.
    async fn fenced_or(&self, t: &TableConfig, e: CommitError) -> CommitError {
        let Some(epoch) = self.epoch else { return e };
        let Ok(table) = load(t).await else { return e };
        match self.table_epoch(t, &table) {
            Ok(recorded) if recorded > epoch => CommitError::Fenced {
                table: t.name.clone(),
                fenced_by: recorded,
                epoch,
            },
            _ => e,
        }
    }
}

/// The properties of every commit sluice makes. Log checkpoints and log
/// cleanup are [`maintenance`]'s, on its schedule (`checkpoint_interval`,
/// `log_cleanup`), so delta-rs's own after-commit ones are switched off:
/// otherwise every table would get a second checkpoint schedule, and
/// switching maintenance off would not switch them off.
fn sluice_commit() -> CommitProperties {
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false))
}

/// Files of the table smaller than `target` bytes.
fn small_files(table: &DeltaTable, target: u64) -> u64 {
    let Ok(snapshot) = table.snapshot() else { return 0 };
    snapshot.log_data().iter().filter(|f| (f.size().max(0) as u64) < target).count() as u64
}


fn delta_err(t: &TableConfig) -> impl FnOnce(DeltaTableError) -> CommitError + '_ {
    move |source| CommitError::Delta {
        table: t.name.clone(),
        path: t.path.to_string(),
        source: Box::new(source),
    }
}

/// The table's URL; a local table's directory is created first.
fn table_url(t: &TableConfig) -> Result<Url, CommitError> {
    crate::storage::register_backends();
    if let Location::Local(dir) = &t.path {
        std::fs::create_dir_all(dir).map_err(|e| delta_err(t)(DeltaTableError::from(e)))?;
    }
    t.path.url().map_err(|e| CommitError::Schema {
        table: t.name.clone(),
        what: format!("path {}: {e}", t.path),
    })
}

/// The table at its latest version, through its own storage options (a
/// table that does not exist yet has no version).
async fn load(t: &TableConfig) -> Result<DeltaTable, CommitError> {
    DeltaTable::try_from_url_with_storage_options(table_url(t)?, t.storage_options.to_map())
        .await
        .map_err(delta_err(t))
}

/// The table, if it exists, without creating anything (a local table's
/// directory is not made either).
async fn load_existing(t: &TableConfig) -> Result<Option<DeltaTable>, CommitError> {
    if let Location::Local(dir) = &t.path
        && !dir.join("_delta_log").is_dir()
    {
        return Ok(None);
    }
    let table = load(t).await?;
    Ok(table.version().is_some().then_some(table))
}

/// How many versions back to look for a batch's commit.
const FIND_DEPTH: u64 = 64;

/// What the check before a commit found.
enum Checked {
    /// The table holds the batch, at this version: skip it.
    Holds(u64),
    /// The table needs the commit.
    Needs(OpenTable),
}

/// The `commitInfo.sluice` metadata of one commit file, if any.
fn commit_meta(bytes: &[u8]) -> Option<serde_json::Value> {
    bytes.split(|&b| b == b'\n').find_map(|line| {
        let mut action = serde_json::from_slice::<serde_json::Value>(line).ok()?;
        let meta = action.get_mut("commitInfo")?.get_mut("sluice")?.take();
        Some(meta)
    })
}

/// Batch `n`'s commit, from the commit metadata of the newest `depth`
/// versions.
async fn find_batch_commit(t: &TableConfig, table: &DeltaTable, app_id: &str, n: u64, depth: u64) -> Result<Option<BatchCommit>, CommitError> {
    let Some(latest) = table.version() else { return Ok(None) };
    let store = table.log_store();
    for version in (0..=latest).rev().take(depth as usize) {
        let Some(bytes) = store.read_commit_entry(version).await.map_err(delta_err(t))? else { continue };
        if let Some(c) = commit_meta(&bytes).and_then(|meta| BatchCommit::parse(version, &meta, app_id)).filter(|c| c.batch_id == n) {
            return Ok(Some(c));
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
        deletes: None,
        by_sluice: false,
        quarantined: None,
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
            e.deletes = meta["deletes"].as_u64();
            e.quarantined = meta["quarantined"].as_u64();
            e.by_sluice = true;
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
            "OPTIMIZE" | "VACUUM START" | "VACUUM END" | "SET TBLPROPERTIES" | "ADD COLUMN" => (Some(0), Some(0)),
            _ => (None, None),
        };
    }
    e
}

/// Open the table, creating it from the declared schema if it does not
/// exist (when `may_create`), and check that an existing table has that
/// schema.
async fn open_or_create(t: &TableConfig, may_create: bool) -> Result<DeltaTable, CommitError> {
    let table = load(t).await?;
    if table.version().is_none() {
        if !may_create {
            return Err(CommitError::Missing {
                table: t.name.clone(),
                path: t.path.to_string(),
            });
        }
        return table
            .create()
            .with_table_name(&t.name)
            .with_columns(t.delta_fields())
            .with_partition_columns(t.partition_by.clone())
            .await
            .map_err(delta_err(t));
    }
    // Columns the config adds are added by the next batch's commit; any
    // other difference is refused now.
    evolution::columns_to_add(t, &table)?;
    Ok(table)
}

/// What one table's transaction writes.
enum Prepared {
    Append(Vec<RecordBatch>),
    /// A MERGE of one source row per key; with `deletes`, the rows carry
    /// [`merge_rows::DELETED`] and those delete their key.
    Upsert { keys: Vec<String>, deletes: bool, deleted: usize, batches: Vec<RecordBatch> },
}

impl Prepared {
    /// Rows to write: appended, or upserted (one per key).
    fn rows(&self) -> usize {
        let (Prepared::Append(batches) | Prepared::Upsert { batches, .. }) = self;
        batches.iter().map(RecordBatch::num_rows).sum::<usize>() - self.deletes().unwrap_or(0)
    }

    /// Keys to delete, when the batch deletes.
    fn deletes(&self) -> Option<usize> {
        match self {
            Prepared::Upsert { deletes: true, deleted, .. } => Some(*deleted),
            _ => None,
        }
    }
}

fn prepare(t: &TableConfig, ops: &[&StagedOp]) -> Result<Prepared, CommitError> {
    let schema_err = |what: String| CommitError::Schema { table: t.name.clone(), what };
    let schema = t.arrow_schema();
    let modes: Vec<&WriteMode> = ops.iter().map(|op| &op.mode).collect();
    if modes.windows(2).any(|w| w[0].keys() != w[1].keys() || w[0].merge_keys().is_some() != w[1].merge_keys().is_some()) {
        return Err(schema_err(
            "a batch must stage either appends, or upserts and deletes on the same keys, to a table, not a mix".into(),
        ));
    }
    let mut batches = Vec::new();
    let Some(keys) = modes.first().and_then(|m| m.merge_keys()) else {
        batches = coalesce(&schema, decode_all(ops, &schema).map_err(schema_err)?).map_err(schema_err)?;
        if batches.is_empty() {
            // No rows for this table: still commit, so the transaction
            // records that the table has seen this batch.
            batches.push(RecordBatch::new_empty(schema));
        }
        return Ok(Prepared::Append(batches));
    };
    if let Some(k) = keys.iter().find(|k| !t.columns.iter().any(|c| &c.name == *k)) {
        return Err(schema_err(format!("key `{k}` is not a column")));
    }
    let deletes = modes.iter().any(|m| matches!(m, WriteMode::Delete { .. }));
    let (schema, decoded, seq) = if deletes {
        let (schema, decoded, seq) = merge_rows::decode(&schema, keys, ops).map_err(schema_err)?;
        (schema, decoded, Some(seq))
    } else {
        (schema.clone(), decode_all(ops, &schema).map_err(schema_err)?, None)
    };
    if decoded.iter().all(|b| b.num_rows() == 0) {
        // Nothing to merge (a MERGE needs a source with rows): commit an
        // empty write, so the table still records the batch.
        return Ok(Prepared::Append(vec![RecordBatch::new_empty(t.arrow_schema())]));
    }
    let last = last_per_key::last_per_key(&schema, &decoded, keys, seq.as_deref()).map_err(schema_err)?;
    let deleted = if deletes { merge_rows::deleted(&last) } else { 0 };
    batches.push(last);
    Ok(Prepared::Upsert { keys: keys.to_vec(), deletes, deleted, batches })
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
pub(super) fn decode_all(ops: &[&StagedOp], schema: &SchemaRef) -> Result<Vec<RecordBatch>, String> {
    decode_each(ops, |op, first| decode(&op.rows, schema, first))
}

/// [`decode_all`] with `decode_op(op, first row number)` for each op.
pub(super) fn decode_each(
    ops: &[&StagedOp],
    decode_op: impl Fn(&StagedOp, u64) -> Result<Vec<RecordBatch>, String> + Sync,
) -> Result<Vec<RecordBatch>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let per_thread = ops.len().div_ceil(threads).max(1);
    // Each op with its first row among all the table's staged rows, for errors.
    let ops: Vec<(u64, &StagedOp)> = ops
        .iter()
        .scan(0, |n, op| {
            let first = *n;
            *n += op.row_count;
            Some((first, *op))
        })
        .collect();
    let decode_slice = |slice: &[(u64, &StagedOp)]| -> Result<Vec<RecordBatch>, String> {
        let mut out = Vec::new();
        for (first, op) in slice {
            out.extend(decode_op(op, *first)?);
        }
        Ok(out)
    };
    let ops = &ops[..];
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

/// Rows as Arrow record batches of the table's schema; `first` is the
/// number of the first row among the table's staged rows, for errors.
fn decode(rows: &StagedRows, schema: &SchemaRef, first: u64) -> Result<Vec<RecordBatch>, String> {
    decode_with(rows, schema, first, true)
}

/// [`decode`]; with `strict` false, members and columns the schema lacks
/// are ignored (a delete's rows: only their keys are read).
pub(super) fn decode_with(rows: &StagedRows, schema: &SchemaRef, first: u64, strict: bool) -> Result<Vec<RecordBatch>, String> {
    match rows {
        StagedRows::JsonLines(b) => {
            check_decimals(b, schema, first)?;
            let reader = arrow_json::ReaderBuilder::new(schema.clone())
                .with_strict_mode(strict)
                .build(std::io::Cursor::new(b))
                .map_err(|e| format!("rows do not fit the schema: {e}"))?;
            reader.collect::<Result<Vec<_>, _>>().map_err(|e| match failing_row(b, schema, strict) {
                Some((i, row, why)) => format!("row {} ({}) does not fit: {why}", first + i as u64, excerpt(row)),
                None => format!("rows do not fit the schema: {e}"),
            })
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
                        column_type::fit_arrow(col, f.data_type()).map_err(|e| format!("Arrow column `{}` {e}", f.name()))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("Arrow rows do not fit: {e}"))?);
            }
            Ok(out)
        }
    }
}

/// Decimal values checked digit by digit (Arrow's reader would drop the
/// digits past the scale). Only tables with decimal columns pay for it.
fn check_decimals(lines: &[u8], schema: &SchemaRef, first: u64) -> Result<(), String> {
    let decimals: Vec<(&str, ColumnType)> = schema
        .fields()
        .iter()
        .filter_map(|f| {
            let t = ColumnType::from_arrow_field(f)?;
            t.has_decimal().then(|| (f.name().as_str(), t))
        })
        .collect();
    if decimals.is_empty() {
        return Ok(());
    }
    for (i, line) in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let Some(row) = crate::output::json_text::parse(line) else { continue };
        for (name, t) in &decimals {
            if let Some(v) = row.get(name) {
                t.check_decimals(v)
                    .map_err(|e| format!("row {} ({}), column `{name}`: {e}", first + i as u64, excerpt(line)))?;
            }
        }
    }
    Ok(())
}

/// The first row of `lines` Arrow's reader refuses: its index, its text and
/// the reader's reason (naming the field and the value). Only run once
/// decoding failed, so the batch of one row per read costs nothing usually.
fn failing_row<'a>(lines: &'a [u8], schema: &SchemaRef, strict: bool) -> Option<(usize, &'a [u8], String)> {
    let reader = arrow_json::ReaderBuilder::new(schema.clone())
        .with_strict_mode(strict)
        .with_batch_size(1)
        .build(std::io::Cursor::new(lines))
        .ok()?;
    let (i, e) = reader.enumerate().find_map(|(i, r)| r.err().map(|e| (i, e)))?;
    let row = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).nth(i)?;
    Some((i, row, e.to_string().trim_start_matches("Json error: ").to_owned()))
}

/// A row's text, cut short for an error message.
fn excerpt(row: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(row);
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.into_owned(),
    }
}
