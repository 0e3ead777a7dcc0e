//! `sluice replay`: run one recorded batch again, as a dry run, and compare.
//!
//! The batch gets the records of its recorded ranges (re-read from Kafka,
//! or taken from a bundle made by `sluice batch export`), the same seed and
//! clock (pipeline id, batch id, planned timestamp) and a fresh `/staging`
//! in a temporary directory. Nothing is written to a table or to the
//! checkpoint, which is opened read-only.
//!
//! The replayed output's digest is compared with the one recorded at
//! commit. When they differ, the rows are compared too: the committed
//! output is rebuilt by running the component whose output was committed
//! (recorded in `commits/N`; the one the batch was planned with for older
//! records; kept in the checkpoint's `components/`, or in the bundle) and
//! trusted only if it reproduces the committed digest bit for bit.

use crate::tools::bundle::{Bundle, BundleError};
use crate::checkpoint::{Checkpoint, CheckpointError, CommittedBatch};
use crate::commit::TableConfig;
use crate::config::PipelineConfig;
use crate::error::LoadError;
use crate::limits::Limits;
use crate::output::{BatchOutput, TableSummary};
use crate::pipeline::quarantine::Decision;
use crate::source::records::{BatchSpec, OwnedRecord, VecSource};
use crate::tools::row_diff::{self, TableDiff};
use crate::sandbox::{Runtime, RuntimeBuilder, Sink};
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
    /// The batch's plan was pruned by retention.
    #[error(
        "batch {batch_id} is no longer in the checkpoint: plans before batch {first_kept} were pruned \
         (retention.batches); replay it from a bundle exported earlier, or keep more batches"
    )]
    Pruned {
        /// The batch.
        batch_id: u64,
        /// The oldest batch whose plan is kept.
        first_kept: u64,
    },
    /// Neither a config nor a bundle says what to replay.
    #[error("{0}")]
    Usage(String),
    /// The component cannot be loaded.
    #[error("sink component {what}: {source}")]
    Load {
        /// The component.
        what: String,
        /// Why.
        source: LoadError,
    },
    /// Kafka cannot deliver the recorded ranges.
    #[error(
        "batch {batch_id}: {detail}. The batch's records must still be in Kafka to replay it from the checkpoint; \
         if they are gone (retention), replay it from a bundle: `sluice replay --bundle FILE`, made earlier with \
         `sluice batch export {batch_id} -o FILE`"
    )]
    Source {
        /// The batch.
        batch_id: u64,
        /// What Kafka said.
        detail: String,
    },
    /// The bundle cannot be used.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A temporary `/staging` root could not be made.
    #[error("temporary scratch directory: {0}")]
    Scratch(std::io::Error),
}

impl ReplayError {
    /// Batch `n` has no plan: never planned, or pruned by retention.
    pub fn missing(checkpoint: &Checkpoint, n: u64) -> Self {
        match checkpoint.first_retained_plan() {
            Ok(Some(first_kept)) if n < first_kept => ReplayError::Pruned {
                batch_id: n,
                first_kept,
            },
            _ => ReplayError::NotPlanned(n),
        }
    }
}

/// What to replay, and how.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The batch (required without a bundle; checked against it with one).
    pub batch: Option<u64>,
    /// Run this component instead of the one the batch was planned with.
    pub component: Option<PathBuf>,
    /// Take the batch from this bundle instead of the checkpoint and Kafka.
    pub bundle: Option<PathBuf>,
    /// Differing rows to list per table.
    pub max_diff_rows: usize,
    /// Where compiled components are cached when no config says.
    pub cache_dir: Option<PathBuf>,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The batch.
    pub batch_id: u64,
    /// Where the records came from: `kafka` or the bundle's path.
    pub records_from: String,
    /// The component that ran: a path, or where it was kept.
    pub component: String,
    /// Its SHA-256.
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
    /// Per table: how the rows differ from the committed ones (only when
    /// the digests differ and the committed output could be rebuilt).
    pub diff: Vec<TableDiff>,
    /// The sink's error, if it failed.
    pub error: Option<String>,
    /// What limited the comparison, or changed since the batch was planned.
    pub notes: Vec<String>,
    /// Replayed output equals the committed one, bit for bit.
    pub identical: bool,
}

/// A component to run, and what to call it.
struct Component {
    what: String,
    bytes: Vec<u8>,
}

impl Component {
    fn read(path: &Path) -> Result<Self, ReplayError> {
        let what = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ReplayError::Load { what: what.clone(), source: LoadError::Read { path: path.into(), source: e } })?;
        Ok(Self { what, bytes })
    }

    fn load(&self, runtime: &Runtime) -> Result<Sink, ReplayError> {
        runtime.load_bytes(&self.what, &self.bytes).map_err(|source| ReplayError::Load { what: self.what.clone(), source })
    }
}

/// Everything a replay needs about the batch, from either origin.
struct Recorded {
    spec: BatchSpec,
    planned_component_digest: String,
    committed: Option<CommittedBatch>,
    tables: Vec<TableConfig>,
    limits: Limits,
    records: Vec<OwnedRecord>,
    records_from: String,
    /// The component the batch was planned with, if it can be found.
    planned: Option<Component>,
    /// The configured component, the fallback when none is given.
    configured: Option<Component>,
    notes: Vec<String>,
    /// The poison records set aside when the batch ran (`quarantine/N`).
    decision: Option<Decision>,
}

/// Replay one batch. `config` is needed unless `options.bundle` is given.
pub fn replay(config: Option<&PipelineConfig>, options: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let recorded = match &options.bundle {
        Some(path) => from_bundle(path, config, options.batch)?,
        None => {
            let config = config.ok_or_else(|| ReplayError::Usage("replay needs a pipeline config or a --bundle".into()))?;
            let n = options.batch.ok_or_else(|| ReplayError::Usage("replay from the checkpoint needs --batch N".into()))?;
            from_checkpoint(config, n)?
        }
    };
    let scratch = tempfile::tempdir().map_err(ReplayError::Scratch)?;
    let cache = config.map(PipelineConfig::cache_dir).or_else(|| options.cache_dir.clone()).unwrap_or_else(|| scratch.path().join("cache"));
    let runtime = RuntimeBuilder::new(scratch.path().join("scratch"))
        .with_limits(recorded.limits.clone())
        .with_cache_dir(cache)
        .with_keyed_tables(recorded.tables.iter().map(|t| (t.name.clone(), t.keys.clone())))
        .with_max_concurrent_batches(1)
        .with_keep_failed(0)
        .build()
        .map_err(|source| ReplayError::Load { what: "the runtime".into(), source })?;
    run_and_compare(&runtime, recorded, options)
}

fn run_and_compare(runtime: &Runtime, recorded: Recorded, options: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let Recorded { spec, planned_component_digest, committed, tables, records, mut notes, decision, .. } = recorded;
    let given;
    let candidate = match (&options.component, &recorded.planned, &recorded.configured) {
        (Some(path), _, _) => {
            given = Component::read(path)?;
            &given
        }
        (None, Some(planned), _) => planned,
        (None, None, Some(configured)) => configured,
        (None, None, None) => {
            return Err(ReplayError::Usage(format!(
                "the bundle does not include the component batch {} was planned with ({}): pass --component FILE",
                spec.batch_id,
                short(&planned_component_digest)
            )));
        }
    };
    let sink = candidate.load(runtime)?;
    // Poison records set aside when the batch ran stay aside for the
    // component that set them aside (so its replay reproduces the commit);
    // any other component gets every record, so the diff shows what it
    // makes of them.
    let kept: Option<std::sync::Arc<[OwnedRecord]>> = decision.as_ref().map(|d| d.kept(&records).into());
    if let Some(d) = &decision {
        notes.push(if d.component_digest == sink.digest() {
            format!("{} poison record(s) were set aside when the batch ran (quarantine/{}); replayed without them, as then", d.excluded.len(), spec.batch_id)
        } else {
            format!(
                "{} poison record(s) were set aside when the batch ran, by component {}; this component gets them all",
                d.excluded.len(),
                short(&d.component_digest)
            )
        });
    }
    // Shared, not copied, by every run of the batch.
    let records: std::sync::Arc<[OwnedRecord]> = records.into();
    let run = |sink: &Sink| {
        let given = match (&decision, &kept) {
            (Some(d), Some(kept)) if d.component_digest == sink.digest() => kept.clone(),
            _ => records.clone(),
        };
        sink.run(&spec, 1, Box::new(VecSource::new(given)))
    };
    let committed_digest = committed.as_ref().map(|c| c.output_digest.clone());
    let mut report = ReplayReport {
        batch_id: spec.batch_id,
        records_from: recorded.records_from,
        component: candidate.what.clone(),
        component_digest: sink.digest().to_owned(),
        planned_component_digest: planned_component_digest.clone(),
        committed_digest: committed_digest.clone(),
        replayed_digest: None,
        records: records.len() as u64,
        tables: Vec::new(),
        diff: Vec::new(),
        error: None,
        notes: Vec::new(),
        identical: false,
    };
    let output = match run(&sink) {
        Ok(output) => output,
        Err(failure) => {
            report.error = Some(failure.error.to_string());
            report.notes = notes;
            return Ok(report);
        }
    };
    report.identical = committed_digest.as_deref() == Some(output.digest.as_str());
    report.replayed_digest = Some(output.digest.clone());
    report.tables = output.tables();
    if let Some(committed_digest) = committed_digest.filter(|_| !report.identical) {
        match rebuild_committed(runtime, &recorded.planned, &planned_component_digest, &committed_digest, &sink, &output, &run) {
            Ok(baseline) => match row_diff::diff(&baseline.ops, &output.ops, &tables, options.max_diff_rows) {
                Ok(diff) => report.diff = diff,
                Err(e) => notes.push(format!("rows cannot be compared: {e}")),
            },
            Err(why) => notes.push(format!("row-level diff unavailable: {why}; only digests were compared")),
        }
    }
    report.notes = notes;
    Ok(report)
}

/// The committed output, rebuilt by running the planned component: trusted
/// only when it reproduces the committed digest.
fn rebuild_committed(
    runtime: &Runtime,
    planned: &Option<Component>,
    planned_digest: &str,
    committed_digest: &str,
    candidate: &Sink,
    candidate_output: &BatchOutput,
    run: &dyn Fn(&Sink) -> Result<BatchOutput, crate::BatchFailure>,
) -> Result<BatchOutput, String> {
    let baseline = if candidate.digest() == planned_digest {
        candidate_output.clone()
    } else {
        let planned = planned
            .as_ref()
            .ok_or_else(|| format!("the component batch was planned with ({}) is not kept here", short(planned_digest)))?;
        let sink = planned.load(runtime).map_err(|e| e.to_string())?;
        run(&sink).map_err(|f| format!("the planned component failed on replay: {}", f.error))?
    };
    if baseline.digest != committed_digest {
        return Err(format!(
            "the planned component does not reproduce the committed output (digest {} instead of {})",
            short(&baseline.digest),
            short(committed_digest)
        ));
    }
    Ok(baseline)
}

/// The batch as the checkpoint recorded it, with its records from Kafka.
fn from_checkpoint(config: &PipelineConfig, n: u64) -> Result<Recorded, ReplayError> {
    let checkpoint = Checkpoint::open_read_only_at(&config.checkpoint_place())?;
    let planned = checkpoint
        .planned(n)?
        .ok_or_else(|| ReplayError::missing(&checkpoint, n))?;
    let committed = checkpoint.committed(n)?;
    let mut notes = Vec::new();
    let ran_config = committed.as_ref().and_then(|c| c.config_digest.as_deref()).unwrap_or(&planned.config_digest);
    if ran_config != config.digest() {
        notes.push("the config's tables or limits changed since the batch was planned; the replay uses the current ones".into());
    }
    // The component whose output was committed: the planned one, unless it
    // changed before any table held the batch (then commits/N names it).
    let ran = committed
        .as_ref()
        .and_then(|c| c.component_digest.clone())
        .unwrap_or_else(|| planned.component_digest.clone());
    let planned_component = match checkpoint.component(&ran)? {
        Some(kept) => Some(Component::read(&kept)?),
        None => None,
    };
    let spec = BatchSpec {
        pipeline_id: config.pipeline.id.clone(),
        batch_id: n,
        planned_timestamp_ms: planned.planned_timestamp_ms,
        ranges: planned.ranges.clone(),
    };
    let decision = checkpoint.quarantine(n)?;
    let set_aside = decision.as_ref().map_or(0, |d| d.excluded.len() as u64);
    let records = fetch_records(config, &spec, committed.as_ref(), set_aside)?;
    Ok(Recorded {
        decision,
        spec,
        planned_component_digest: ran,
        committed,
        tables: config.tables.clone(),
        limits: config.limits.clone(),
        records,
        records_from: "kafka".into(),
        // The configured component is the fallback for checkpoints that kept none.
        configured: if planned_component.is_none() { Some(Component::read(&config.pipeline.component)?) } else { None },
        planned: planned_component,
        notes,
    })
}

/// The batch's records, re-read from Kafka. A count that disagrees with the
/// commit record means the source changed (compaction, deletion) and the
/// replay would not be of the same batch.
pub fn fetch_records(config: &PipelineConfig, spec: &BatchSpec, committed: Option<&CommittedBatch>, set_aside: u64) -> Result<Vec<OwnedRecord>, ReplayError> {
    let source_err = |detail: String| ReplayError::Source { batch_id: spec.batch_id, detail };
    let source = KafkaSource::connect(config.source_for(Some("replay"))).map_err(|e: KafkaSourceError| source_err(e.to_string()))?;
    let records = source.read_ranges(&spec.ranges).map_err(source_err)?;
    if let Some(c) = committed.filter(|c| c.records > 0 && c.records + set_aside != records.len() as u64) {
        return Err(source_err(format!(
            "Kafka now has {} records in the batch's ranges, but {} were delivered when it ran{} (compacted or deleted since)",
            records.len(),
            c.records,
            if set_aside > 0 { format!(" and {set_aside} set aside as poison") } else { String::new() }
        )));
    }
    Ok(records)
}

/// The batch as a bundle recorded it. A config, if given, must be of the
/// same pipeline with the same tables and limits.
fn from_bundle(path: &Path, config: Option<&PipelineConfig>, batch: Option<u64>) -> Result<Recorded, ReplayError> {
    let bundle = Bundle::read(path)?;
    let m = &bundle.manifest;
    let mismatch = |reason: String| ReplayError::Bundle(BundleError::Mismatch { path: path.to_owned(), reason });
    if let Some(n) = batch.filter(|&n| n != m.batch.batch_id) {
        return Err(mismatch(format!("it holds batch {}, not batch {n}", m.batch.batch_id)));
    }
    let mut configured = None;
    if let Some(config) = config {
        if config.pipeline.id != m.batch.pipeline_id {
            return Err(mismatch(format!("it is of pipeline `{}`, the config is of pipeline `{}`", m.batch.pipeline_id, config.pipeline.id)));
        }
        if config.digest() != m.config_digest {
            return Err(mismatch(
                "the config's tables or limits differ from those the batch was planned with; replay the bundle without the config".into(),
            ));
        }
        if bundle.component.is_none() {
            configured = Some(Component::read(&config.pipeline.component)?);
        }
    }
    let planned = bundle.component.map(|bytes| Component { what: format!("{} (component in bundle)", path.display()), bytes });
    let m = bundle.manifest;
    Ok(Recorded {
        spec: m.batch,
        planned_component_digest: m.component_digest,
        committed: m.committed,
        tables: m.tables,
        limits: m.limits,
        records: bundle.records,
        records_from: path.display().to_string(),
        decision: None,
        planned,
        configured,
        notes: Vec::new(),
    })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (&self.error, &self.committed_digest, self.identical) {
            (Some(_), _, _) => "the sink FAILED on replay",
            (None, None, _) => "batch was never committed: nothing to compare with",
            (None, Some(_), true) => "IDENTICAL to the committed output",
            (None, Some(_), false) => "DIFFERENT from the committed output",
        };
        writeln!(f, "batch {}: {verdict}", self.batch_id)?;
        let same = if self.component_digest == self.planned_component_digest {
            "the one it was planned with".to_owned()
        } else {
            format!("planned with {}", short(&self.planned_component_digest))
        };
        writeln!(f, "  component  {} ({same}): {}", short(&self.component_digest), self.component)?;
        writeln!(f, "  records    {} from {}", self.records, self.records_from)?;
        writeln!(f, "  committed  {}", self.committed_digest.as_deref().map_or("-", short))?;
        writeln!(f, "  replayed   {}", self.replayed_digest.as_deref().map_or("-", short))?;
        for t in &self.tables {
            writeln!(f, "  table {}: {} appended, {} upserted, {} deleted rows in {} op(s)", t.table, t.appended_rows, t.upserted_rows, t.deleted_rows, t.operations)?;
        }
        for d in &self.diff {
            writeln!(
                f,
                "  diff {}: {} committed rows, {} replayed, {} differ{}",
                d.table,
                d.committed_rows,
                d.replayed_rows,
                d.differing_rows,
                if (d.rows.len() as u64) < d.differing_rows { format!(" (first {} shown)", d.rows.len()) } else { String::new() }
            )?;
            for row in &d.rows {
                let key = key_text(&row.key);
                match (&row.committed, &row.replayed) {
                    (Some(c), Some(r)) => writeln!(f, "    ~ {key}: {}", row_diff::changed_columns(c, r).join(", "))?,
                    (Some(c), None) => writeln!(f, "    - {key}: only committed {c}")?,
                    (None, Some(r)) => writeln!(f, "    + {key}: only replayed {r}")?,
                    (None, None) => {}
                }
            }
        }
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// `order_id="o-1"`, or the whole row for tables without keys.
fn key_text(key: &serde_json::Value) -> String {
    match key.as_object() {
        Some(o) if o.len() <= 3 => o.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        _ => key.to_string(),
    }
}
