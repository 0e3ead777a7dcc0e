//! `sluice replay`: run one recorded batch again, as a dry run, and compare.
//!
//! The batch gets the records of its recorded ranges (re-read from Kafka),
//! the same seed and clock (pipeline id, batch id, planned timestamp) and a
//! fresh `/staging` in a temporary directory. Nothing is written to a table
//! or to the checkpoint, which is opened read-only; the output digest is
//! compared with the one recorded when the batch was committed.

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::PipelineConfig;
use crate::error::LoadError;
use crate::output::TableSummary;
use crate::records::BatchSpec;
use crate::runtime::RuntimeBuilder;
use crate::source::{KafkaSource, KafkaSourceError};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The checkpoint cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The batch was never planned.
    #[error("batch {0} is not in the checkpoint's offset log: it was never planned")]
    NotPlanned(u64),
    /// The component cannot be loaded.
    #[error("sink component {path}: {source}")]
    Load {
        /// The component.
        path: PathBuf,
        /// Why.
        source: LoadError,
    },
    /// Kafka cannot deliver the recorded ranges.
    #[error("{0} (the batch's records must still be in Kafka to replay it)")]
    Source(#[from] KafkaSourceError),
    /// A temporary `/staging` root could not be made.
    #[error("temporary scratch directory: {0}")]
    Scratch(std::io::Error),
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The batch.
    pub batch_id: u64,
    /// The component that ran (SHA-256).
    pub component_digest: String,
    /// The component the batch was planned with.
    pub planned_component_digest: String,
    /// The digest recorded at commit, if the batch was committed.
    pub committed_digest: Option<String>,
    /// The replayed output's digest, or `None` if the sink failed.
    pub replayed_digest: Option<String>,
    /// Records delivered.
    pub records: u64,
    /// Per table: operations and rows staged by the replay.
    pub tables: Vec<TableSummary>,
    /// The sink's error, if it failed.
    pub error: Option<String>,
    /// Replayed output equals the committed one, bit for bit.
    pub identical: bool,
}

/// Replay batch `n` of the pipeline, with `component` instead of the
/// configured one if given.
pub fn replay(config: &PipelineConfig, n: u64, component: Option<&Path>) -> Result<ReplayReport, ReplayError> {
    let checkpoint = Checkpoint::open_read_only(&config.pipeline.checkpoint)?;
    let planned = checkpoint.planned(n)?.ok_or(ReplayError::NotPlanned(n))?;
    let committed = checkpoint.committed(n)?;

    let scratch = tempfile::tempdir().map_err(ReplayError::Scratch)?;
    let path = component.unwrap_or(&config.pipeline.component).to_owned();
    let load_err = |source| ReplayError::Load { path: path.clone(), source };
    let runtime = RuntimeBuilder::new(scratch.path())
        .with_limits(config.limits.clone())
        .with_cache_dir(config.cache_dir())
        .with_tables(config.tables.iter().map(|t| t.name.clone()))
        .with_max_concurrent_batches(1)
        .with_keep_failed(0)
        .build()
        .map_err(load_err)?;
    let sink = runtime.load(&path).map_err(load_err)?;

    let mut source_config = config.source.clone();
    source_config.properties.entry("group.id".into()).or_insert_with(|| format!("sluice-replay-{}", config.pipeline.id));
    let source = KafkaSource::connect(source_config)?;
    let fetch = source.fetch(&planned.ranges)?;
    let spec = BatchSpec {
        pipeline_id: config.pipeline.id.clone(),
        batch_id: n,
        planned_timestamp_ms: planned.planned_timestamp_ms,
        ranges: planned.ranges.clone(),
    };
    let committed_digest = committed.map(|c| c.output_digest);
    let mut report = ReplayReport {
        batch_id: n,
        component_digest: sink.digest().to_owned(),
        planned_component_digest: planned.component_digest,
        committed_digest: committed_digest.clone(),
        replayed_digest: None,
        records: 0,
        tables: Vec::new(),
        error: None,
        identical: false,
    };
    match sink.run(&spec, 1, Box::new(fetch)) {
        Ok(output) => {
            report.identical = committed_digest.as_deref() == Some(output.digest.as_str());
            report.replayed_digest = Some(output.digest.clone());
            report.records = output.records_in;
            report.tables = output.tables();
        }
        Err(failure) => report.error = Some(failure.error.to_string()),
    }
    Ok(report)
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |d: &str| d[..d.len().min(16)].to_owned();
        let verdict = match (&self.error, &self.committed_digest, self.identical) {
            (Some(_), _, _) => "the sink FAILED on replay",
            (None, None, _) => "batch was never committed: nothing to compare with",
            (None, Some(_), true) => "IDENTICAL to the committed output",
            (None, Some(_), false) => "DIFFERENT from the committed output",
        };
        writeln!(f, "batch {}: {verdict}", self.batch_id)?;
        let same = if self.component_digest == self.planned_component_digest { " (as planned)" } else { " (planned with another)" };
        writeln!(f, "  component  {}{same}", short(&self.component_digest))?;
        writeln!(f, "  committed  {}", self.committed_digest.as_deref().map_or("-".to_owned(), short))?;
        writeln!(f, "  replayed   {}", self.replayed_digest.as_deref().map_or("-".to_owned(), short))?;
        writeln!(f, "  records    {}", self.records)?;
        for t in &self.tables {
            writeln!(
                f,
                "  table {}: {} appended, {} upserted rows in {} op(s)",
                t.table, t.appended_rows, t.upserted_rows, t.operations
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}
