//! The pipeline loop: the batch life of DESIGN.md, in one place.
//!
//! ```text
//!  plan N ─► offsets/N ─► (re-run after a crash only) every table at ≥ N? ── yes ──► commits/N
//!                              │ no
//!                              ▼
//!            fetch ranges ─► fresh instance runs the sink ─► failed? retry (backoff,
//!                              │ ok                          fresh instance) or stop
//!                              ▼
//!            one Delta txn(app, N) per table ─► commits/N ─► advisory group commit
//!            └──────────── meanwhile: plan N+1 ─► offsets/N+1 ─► fetch, sink N+1
//! ```
//!
//! Every step is idempotent given the step before it, so a crash anywhere
//! resumes by re-running the pending batches from their recorded plans. What
//! makes a half-committed batch safe to finish is determinism: the re-run
//! produces the same output (same component, same config digest: a change
//! of either refuses to finish it), and a table already holding N is
//! skipped once its commit of N is checked to record the same ranges and
//! output digest.
//!
//! The table is the truth, the checkpoint its index ([`agreement`]): at
//! start every table is compared with the checkpoint. A table ahead of it,
//! or one recording other ranges for a batch, stops the pipeline before
//! anything runs; a table behind it (it lost its last commits) is healed
//! first, by re-running the lost batches from their recorded plans.

pub mod agreement;
pub mod metrics;
pub mod quarantine;

use crate::now_ms;
use crate::checkpoint::attempt_log::{self, AttemptRecord, Outcome};
use crate::checkpoint::lease::Standby;
use crate::checkpoint::{Checkpoint, CheckpointError, CommittedBatch, Log, PlannedBatch};
use crate::checkpoint::retention::RetentionConfig;
use crate::commit::maintenance::Maintained;
use crate::commit::{CommitError, DeltaCommitter, Provenance};
use crate::pipeline::agreement::{AgreementError, Heal};
use crate::config::{OnPoison, PipelineConfig, Trigger};
use crate::error::{BatchError, BatchFailure, LoadError};
use crate::pipeline::metrics::Metrics;
use crate::source::read_ahead::ReadAhead;
use crate::source::records::{BatchSpec, ChunkBuilder, Fill, RecordSource, SourceError, VecSource};
use crate::sandbox::{Runtime, RuntimeBuilder, Sink};
use crate::source::{KafkaSource, KafkaSourceError};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many versions back to look for a batch's commit after a restart.
const FIND_COMMIT_DEPTH: u64 = 64;
/// The longest wait between two attempts of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The checkpoint is unusable (owned by another process, corrupt, I/O),
    /// or this process lost its lease on it.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The config breaks a rule checked before running (the durability
    /// rule: tables in object storage, checkpoint on local disk).
    #[error("config {path}: `{key}`: {message}")]
    Config {
        /// The config file.
        path: String,
        /// The key.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The tables and the checkpoint disagree in a way sluice does not heal.
    #[error(transparent)]
    Agreement(#[from] AgreementError),
    /// The sink component cannot be loaded.
    #[error("sink component {path}: {source}")]
    Load {
        /// The component.
        path: PathBuf,
        /// Why.
        source: LoadError,
    },
    /// Kafka failed outside a batch (connecting, planning).
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    /// A table cannot be opened, created or written.
    #[error("batch {batch_id}: {source}")]
    Commit {
        /// The batch (or the next one, when checking tables at start).
        batch_id: u64,
        /// Why.
        source: CommitError,
    },
    /// The batch failed on every attempt, or in a way no retry can fix.
    #[error(
        "batch {batch_id} failed after {attempts} attempt(s): {failure}\n\
         nothing of batch {batch_id} was committed. Fix the sink (or its limits), then run `sluice run {config}` \
         again: batch {batch_id} is re-run with the same records, as planned in the checkpoint's offsets/{batch_id}"
    )]
    BatchFailed {
        /// The batch.
        batch_id: u64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        failure: Box<BatchFailure>,
        /// The config file, for the replay command.
        config: String,
    },
    /// Poison records could not be set aside within the bounds, or records
    /// fail only together: nothing of the batch is committed.
    #[error(
        "batch {batch_id}: {why}\n{found}nothing of batch {batch_id} was committed. Fix the sink (or raise \
         [quarantine] max_records_per_batch / max_extra_runs), then run `sluice run {config}` again: batch \
         {batch_id} is re-run with the same records"
    )]
    Poison {
        /// The batch.
        batch_id: u64,
        /// What stopped the search.
        why: String,
        /// The records found so far, one line each.
        found: String,
        /// The config file.
        config: String,
    },
    /// `sluice quarantine release` cannot run.
    #[error("{0}")]
    Release(String),
    /// A half-committed batch would be finished by a different component,
    /// whose output may differ from what the committed tables hold.
    #[error(
        "batch {batch_id} is committed to tables {committed:?} but not to {pending:?}, and the sink \
         component changed since it ran ({planned} → {current}); finishing it with another \
         component could commit output that disagrees. Run the component that committed it to finish \
         batch {batch_id}, then switch"
    )]
    ComponentChanged {
        /// The batch.
        batch_id: u64,
        /// Tables already holding it.
        committed: Vec<String>,
        /// Tables not yet holding it.
        pending: Vec<String>,
        /// Digest of the component whose output the tables hold.
        planned: String,
        /// Digest of the component configured now.
        current: String,
    },
    /// A half-committed batch would be finished under a changed config.
    #[error(transparent)]
    ConfigChanged(Box<ConfigChanged>),
}

impl PipelineError {
    /// Whether this process stopped because it lost its lease on the
    /// checkpoint (another owns the pipeline now).
    pub fn lost_lease(&self) -> bool {
        matches!(
            self,
            PipelineError::Checkpoint(CheckpointError::LeaseLost { .. })
        ) || matches!(
            self,
            PipelineError::Commit {
                source: CommitError::NotOwner { .. } | CommitError::Fenced { .. },
                ..
            }
        )
    }
}

/// A half-committed batch would be finished under a changed config the
/// sink can observe (limits, chunk sizes, tables, read-affecting source
/// properties): its output may differ from what the committed tables hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "batch {batch_id} is committed to tables {committed:?} but not to {pending:?}, and the config changed since it \
     ran (config digest {ran} → {current}: limits, chunk sizes, tables or read-affecting source properties); \
     finishing it under another config could commit output that disagrees. Run `sluice run` with the config batch \
     {batch_id} ran with to finish it, then switch"
)]
pub struct ConfigChanged {
    /// The batch.
    pub batch_id: u64,
    /// Tables already holding it.
    pub committed: Vec<String>,
    /// Tables not yet holding it.
    pub pending: Vec<String>,
    /// The config digest its committed output ran under.
    pub ran: String,
    /// The config digest now.
    pub current: String,
}

/// What happened to one batch, for the progress line.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// The batch.
    pub batch_id: u64,
    /// Records delivered to the sink (0 when the sink was not run).
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Attempts it took (0 when the sink was not run).
    pub attempts: u32,
    /// Found already committed after a restart: the sink was not run.
    pub already_committed: bool,
    /// Time checking the tables for the batch before running the sink
    /// (zero for a batch this run planned: only re-runs are checked).
    pub check: Duration,
    /// Time in the sink, all attempts.
    pub sink: Duration,
    /// Time committing to Delta.
    pub commit: Duration,
    /// Plan (or resume) to commit log.
    pub total: Duration,
    /// Table → Delta version holding the batch.
    pub table_versions: BTreeMap<String, u64>,
    /// The batch output digest.
    pub output_digest: String,
    /// Table → rows the sink staged (empty when the sink was not run).
    pub staged_rows: BTreeMap<String, u64>,
    /// Records set aside as poison (in the quarantine table).
    pub quarantined: u64,
}

/// What the pipeline tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A batch is committed (or was found committed after a restart).
    Committed(BatchReport),
    /// A committed batch that tables had lost was re-run from its recorded
    /// plan and committed to them again, with the output recorded for it.
    Healed {
        /// The batch.
        batch_id: u64,
        /// Table → Delta version now holding it again.
        tables: BTreeMap<String, u64>,
        /// Records re-run.
        records: u64,
    },
    /// Table maintenance ran after a batch's commit.
    Maintained {
        /// The batch it followed.
        batch_id: u64,
        /// What ran.
        steps: Vec<Maintained>,
    },
    /// A batch failed deterministically and its poison records were set
    /// aside (`pipeline.on_poison = "quarantine"`): the rest commits.
    Quarantined {
        /// The batch.
        batch_id: u64,
        /// The records set aside, with the error each gave alone.
        excluded: Vec<quarantine::Excluded>,
        /// Extra sink runs the search took (0: a recorded decision applied).
        runs: u64,
    },
    /// A step failed in a way that may pass; it is tried again after
    /// `backoff` (planning: `batch_id` is `None`).
    Retrying {
        /// The batch, if the failure was running one.
        batch_id: Option<u64>,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Attempts allowed.
        max_attempts: u32,
        /// Why it failed.
        error: String,
        /// The wait before the next attempt.
        backoff: Duration,
    },
}

/// What [`Pipeline::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The records went through this batch, committed.
    Done {
        /// The release batch.
        in_batch: u64,
        /// Records released.
        records: u64,
    },
    /// They were released before, by this batch: nothing was done.
    Already {
        /// The batch that released them.
        in_batch: u64,
        /// Records.
        records: u64,
    },
}

/// Why [`Pipeline::run`] returned normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `trigger = "available_now"` and everything available was committed.
    CaughtUp,
    /// A stop was requested (SIGINT/SIGTERM); the last batch was finished.
    Requested,
}

/// Totals of one [`Pipeline::run`].
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Why it stopped.
    pub stopped: Stopped,
    /// Batches committed (including ones found already committed).
    pub batches: u64,
    /// Records delivered to the sink.
    pub records: u64,
    /// The last committed batch, if any.
    pub last_committed: Option<u64>,
    /// Table → Delta version after the last batch.
    pub table_versions: BTreeMap<String, u64>,
}

/// A pipeline that owns its checkpoint.
pub struct Pipeline {
    config: PipelineConfig,
    config_path: String,
    config_digest: String,
    checkpoint: Checkpoint,
    source: KafkaSource,
    committer: DeltaCommitter,
    runtime: Runtime,
    sink: Sink,
    /// Batches tables lost, to re-run before anything else.
    heals: Vec<Heal>,
    metrics: Metrics,
    /// The HTTP endpoint's copy of the metrics, when one is served.
    published: Option<metrics::endpoint::Published>,
    stop: Arc<AtomicBool>,
    /// The last committed batch and the ends of its ranges (for lag).
    last_committed: Option<CommittedBatch>,
    ends: BTreeMap<(String, i32), i64>,
    /// The id of the next batch to plan, and where the last planned one ends.
    next_id: u64,
    planned_ends: BTreeMap<(String, i32), i64>,
    /// Batches an earlier run planned and did not commit, oldest first.
    pending: VecDeque<PlannedBatch>,
    /// Run only the batches already planned, then stop (a release).
    only_pending: bool,
    /// Average bytes per record of the last batch, for `max_bytes_per_batch`.
    record_size: Option<u64>,
}

/// A batch whose sink has run: its output waits for the commit.
struct Ran {
    planned: PlannedBatch,
    provenance: Provenance,
    output: crate::BatchOutput,
    attempts: u32,
    started: Instant,
    check: Duration,
    sink: Duration,
}

/// A batch whose commit is logged in `commits/N`.
struct Done {
    report: BatchReport,
    committed: CommittedBatch,
    ends: BTreeMap<(String, i32), i64>,
    /// Table maintenance that ran after the batch's commit.
    maintained: Vec<Maintained>,
}

/// What the step that looks for the next batch found.
enum Next {
    /// The sink ran: commit the output.
    Ran(Box<Ran>),
    /// Found committed before a crash and logged now; the sink was not run.
    Found(Box<Done>),
    /// Nothing to run now: nothing new to read yet (continuous trigger),
    /// the next batch is not due, or batches of an earlier run wait to be
    /// re-run one at a time. Look again on the next turn.
    Idle,
    /// Everything available when the run started is planned (`available_now`).
    CaughtUp,
    /// A stop was requested.
    Stopped,
}

impl Pipeline {
    /// Take ownership of the checkpoint, load the sink, check the tables and
    /// connect to Kafka, in that order: a second `sluice run` on the same
    /// checkpoint is refused before it touches anything.
    pub fn open(
        config: PipelineConfig,
        config_path: impl Into<String>,
    ) -> Result<Self, PipelineError> {
        Self::open_as_standby(config, config_path, &mut |_| {})
    }

    /// [`open`](Self::open), telling `on_standby` who holds the lease while
    /// this process waits for a remote checkpoint's owner to stop or die.
    pub fn open_as_standby(
        config: PipelineConfig,
        config_path: impl Into<String>,
        on_standby: &mut dyn FnMut(Standby<'_>),
    ) -> Result<Self, PipelineError> {
        let config_path = config_path.into();
        config
            .check_durability()
            .map_err(|(key, message)| PipelineError::Config {
                path: config_path.clone(),
                key,
                message,
            })?;
        let checkpoint = Checkpoint::open_at(&config.checkpoint_place(), true, on_standby)?;
        let resume = checkpoint.resume()?;
        let ends = match &resume.last_committed {
            Some(c) => {
                let planned =
                    checkpoint
                        .planned(c.batch_id)?
                        .ok_or_else(|| CheckpointError::Corrupt {
                            path: checkpoint.file(Log::Offsets, c.batch_id),
                            reason: format!(
                                "batch {} is committed but its plan is missing",
                                c.batch_id
                            ),
                        })?;
                planned.ends()
            }
            None => BTreeMap::new(),
        };
        let mut planned_ends = ends.clone();
        for p in &resume.pending {
            planned_ends.extend(p.ends());
        }
        let next = resume.last_committed.as_ref().map_or(0, |c| c.batch_id + 1);
        let next_id = resume.pending.last().map_or(next, |p| p.batch_id + 1);

        let runtime = RuntimeBuilder::new(config.scratch_dir())
            .with_limits(config.limits.clone())
            .with_cache_dir(config.cache_dir())
            .with_keyed_tables(config.tables.iter().map(|t| (t.name.clone(), t.keys.clone())))
            .with_max_concurrent_batches(1)
            .build()
            .map_err(|source| PipelineError::Load { path: config.pipeline.component.clone(), source })?;
        let sink = runtime
            .load(&config.pipeline.component)
            .map_err(|source| PipelineError::Load { path: config.pipeline.component.clone(), source })?;
        checkpoint.keep_component(sink.digest(), &config.pipeline.component)?;
        if let Err(e) = config.retention.sweep(&checkpoint, sink.digest()) {
            eprintln!("sluice: warning: checkpoint retention: {e}");
        }

        let commit_err = |source| PipelineError::Commit {
            batch_id: next,
            source,
        };
        let existing = resume
            .last_committed
            .iter()
            .flat_map(|c| c.table_versions.keys().cloned());
        let committer = DeltaCommitter::new(&config.pipeline.id, config.resolved_tables())
            .map_err(|e| commit_err(CommitError::Io(e)))?
            .expect_existing(existing.collect::<Vec<_>>())
            .with_epoch(checkpoint.epoch());
        committer.ensure_tables().map_err(commit_err)?;
        // The table is the truth: compare each with the checkpoint before
        // anything runs.
        let holdings = committer.holdings(FIND_COMMIT_DEPTH).map_err(commit_err)?;
        let heals = agreement::check(
            &checkpoint,
            &resume,
            &holdings,
            &config.pipeline.id,
            &config_path,
        )?;
        // A new owner of a remote checkpoint fences every table, so nothing
        // the previous owner still has in flight can land after. After the
        // agreement check: a start refused there adds no fence commit.
        let raise = |at_least| checkpoint.raise_epoch(at_least).map_err(|e| e.to_string());
        let (committer, _) =
            committer.take_over(&|| checkpoint.check_owned().map_err(|e| e.to_string()), &raise).map_err(commit_err)?;

        let source = KafkaSource::connect(config.source_for(None))?;

        Ok(Self {
            config_digest: config.digest(),
            metrics: Metrics { pipeline: config.pipeline.id.clone(), lease_epoch: checkpoint.epoch(), ..Default::default() },
            published: None,
            config,
            config_path,
            checkpoint,
            source,
            committer,
            runtime,
            sink,
            heals,
            stop: Arc::new(AtomicBool::new(false)),
            last_committed: resume.last_committed,
            ends,
            next_id,
            planned_ends,
            pending: resume.pending.into(),
            only_pending: false,
            record_size: None,
        })
    }

    /// `sluice quarantine release`: re-process the records batch `of` set
    /// aside as poison, through a new batch whose plan names their offsets
    /// (the stream's position stays where it is), with this pipeline's
    /// sink, and mark them released in the quarantine table, in that
    /// batch's transactions. Exactly once: records already marked are not
    /// released again (`Released::Already`); a release cut off by a crash
    /// is finished by the next release (or run).
    pub fn release(&mut self, of: u64, on_event: impl FnMut(&Event)) -> Result<Released, PipelineError> {
        let q = self.quarantine().cloned().ok_or_else(|| {
            PipelineError::Release("the pipeline does not set poison records aside: pipeline.on_poison is not \"quarantine\"".into())
        })?;
        let decision = self.checkpoint.quarantine(of)?.ok_or_else(|| {
            PipelineError::Release(format!("batch {of} set no records aside (the checkpoint has no quarantine/{of})"))
        })?;
        // The quarantine table is the truth about what was released.
        let sql = format!("SELECT COUNT(released_in_batch) AS n, MAX(released_in_batch) AS m FROM t WHERE batch_id = {of}");
        let marked = self.committer.query(&q.table, &sql).map_err(|source| PipelineError::Commit { batch_id: of, source })?;
        let row = marked.first().cloned().unwrap_or_default();
        if row["n"].as_u64().unwrap_or(0) >= decision.excluded.len() as u64 {
            return Ok(Released::Already { in_batch: row["m"].as_u64().unwrap_or_default(), records: decision.excluded.len() as u64 });
        }
        let batch_id = match self.pending.iter().find(|p| p.release.as_ref().is_some_and(|r| r.of_batch == of)) {
            // Planned before a crash: finish it.
            Some(p) => p.batch_id,
            None => {
                if let Some(p) = self.pending.front() {
                    return Err(PipelineError::Release(format!(
                        "batch {} is planned and not committed; run `sluice run {}` to finish it first",
                        p.batch_id, self.config_path
                    )));
                }
                let plan = decision.release_plan(self.next_id, &self.planned_ends, self.sink.digest(), &self.config_digest);
                self.checkpoint.record_planned(&plan)?;
                self.next_id += 1;
                let id = plan.batch_id;
                self.pending.push_back(plan);
                id
            }
        };
        self.only_pending = true;
        let summary = self.run(on_event)?;
        if summary.last_committed.is_none_or(|c| c < batch_id) {
            return Err(PipelineError::Release(format!(
                "stopped before release batch {batch_id} committed; run the release again to finish it"
            )));
        }
        Ok(Released::Done { in_batch: batch_id, records: decision.excluded.len() as u64 })
    }

    /// Set this flag to stop after the current batch.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Publish metrics and the loop's heartbeat to an HTTP endpoint.
    pub fn publish_to(&mut self, published: metrics::endpoint::Published) {
        published.set_metrics(self.metrics.render());
        self.published = Some(published);
    }

    /// The lease epoch this process holds, when the checkpoint is remote.
    pub fn epoch(&self) -> Option<u64> {
        self.checkpoint.epoch()
    }

    /// The SHA-256 of the sink component batches are planned with.
    pub fn component_digest(&self) -> &str {
        self.sink.digest()
    }

    /// Run batches until caught up (`available_now`), stopped, or failed.
    /// `on_event` sees every committed batch and every retry.
    ///
    /// While batch N commits (on a second thread), batch N+1 is planned and
    /// its sink runs, so Delta's work and the sink's overlap. Commits stay
    /// in order: N+1 commits only after `commits/N` is written, and nothing
    /// runs further ahead (see the checkpoint's guarantees).
    pub fn run(&mut self, mut on_event: impl FnMut(&Event)) -> Result<RunSummary, PipelineError> {
        for heal in std::mem::take(&mut self.heals) {
            if !self.heal(heal, &mut on_event)? {
                return Ok(self.summary(Stopped::Requested));
            }
        }
        let until = match self.config.pipeline.trigger {
            Trigger::AvailableNow => match self.with_retries(&mut on_event, |s| s.source.high_watermarks())? {
                Some(highs) => Some(highs),
                None => return Ok(self.summary(Stopped::Requested)),
            },
            Trigger::Continuous => None,
        };
        let mut summary = self.summary(Stopped::Requested);
        let mut last_start: Option<Instant> = None;
        let mut ran: Option<Box<Ran>> = None;
        loop {
            // A lost lease stops the pipeline at once, even when idle.
            if let Err(e) = self.checkpoint.check_owned() {
                if let Some(r) = ran.take() {
                    eprintln!(
                        "sluice: batch {} ran but is not committed: this process no longer owns the pipeline",
                        r.planned.batch_id
                    );
                }
                return Err(e.into());
            }
            if let Some(p) = &self.published {
                p.heartbeat();
            }
            let committing = ran.take();
            // Run ahead only a new plan that is due now: batches left by an
            // earlier run are re-run one at a time, after the check of step 2,
            // and a wait for the trigger happens with nothing in flight.
            let run_next = committing.is_none()
                || (self.pending.is_empty() && !self.stopping() && (until.is_some() || self.due(last_start)));
            let recovered = if committing.is_none() { self.pending.pop_front() } else { None };
            let (done, next) = std::thread::scope(|s| {
                let commit = committing.map(|r| {
                    let (committer, checkpoint, source) = (&self.committer, &self.checkpoint, &self.source);
                    let retention = &self.config.retention;
                    s.spawn(move || commit_batch(committer, checkpoint, source, retention, *r))
                });
                let next = match run_next {
                    true => self.next_batch(recovered, until.as_ref(), &mut last_start, &mut on_event),
                    false => Ok(Next::Idle),
                };
                let done = commit.map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
                (done, next)
            });
            // The earlier batch first: its commit error is the one to report.
            if let Some(done) = done {
                self.finish(done?, &mut summary, &mut on_event);
            }
            match next {
                Ok(Next::Ran(r)) => {
                    self.ran(&r);
                    ran = Some(r);
                }
                Ok(Next::Found(done)) => self.finish(*done, &mut summary, &mut on_event),
                Ok(Next::Idle) => {}
                Ok(Next::CaughtUp) => {
                    summary.stopped = Stopped::CaughtUp;
                    return Ok(summary);
                }
                Ok(Next::Stopped) => return Ok(summary),
                Err(e) => {
                    if let PipelineError::BatchFailed { attempts, .. } = &e {
                        self.metrics.sink_failures += u64::from(*attempts);
                        self.write_metrics();
                    }
                    return Err(e);
                }
            }
        }
    }

    fn summary(&self, stopped: Stopped) -> RunSummary {
        RunSummary {
            stopped,
            batches: 0,
            records: 0,
            last_committed: self.last_committed.as_ref().map(|c| c.batch_id),
            table_versions: self.last_committed.as_ref().map(|c| c.table_versions.clone()).unwrap_or_default(),
        }
    }

    /// Whether the continuous trigger's interval since `last_start` is over.
    fn due(&self, last_start: Option<Instant>) -> bool {
        let interval = Duration::from_millis(self.config.pipeline.trigger_interval_ms);
        last_start.is_none_or(|start| start.elapsed() >= interval)
    }

    /// Run a Kafka request, retrying transient failures (a broker restart,
    /// say) with backoff. `None` when stopped while waiting.
    fn with_retries<T>(
        &self,
        on_event: &mut impl FnMut(&Event),
        mut request: impl FnMut(&Self) -> Result<T, KafkaSourceError>,
    ) -> Result<Option<T>, PipelineError> {
        let max_attempts = self.config.pipeline.max_attempts;
        let mut backoff = Duration::from_millis(self.config.pipeline.retry_backoff_ms);
        for attempt in 1.. {
            match request(self) {
                Ok(value) => return Ok(Some(value)),
                Err(e) if e.transient() && attempt < max_attempts => {
                    on_event(&Event::Retrying { batch_id: None, attempt, max_attempts, error: e.to_string(), backoff });
                    if !self.wait(Instant::now() + backoff) {
                        return Ok(None);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Steps 1–3 of the batch life for the next batch: one an earlier run
    /// planned (`recovered`), or a new plan. Takes `&self` only: the batch
    /// before may be committing meanwhile.
    fn next_batch(
        &self,
        recovered: Option<PlannedBatch>,
        until: Option<&BTreeMap<(String, i32), i64>>,
        last_start: &mut Option<Instant>,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<Next, PipelineError> {
        let started = Instant::now();
        let (planned, check) = match recovered {
            Some(planned) => {
                if let Some(done) = self.find_committed(&planned, started)? {
                    return Ok(Next::Found(Box::new(done)));
                }
                (planned, started.elapsed())
            }
            None if self.only_pending => return Ok(Next::CaughtUp),
            None => match self.plan(until, last_start, on_event)? {
                Ok(planned) => (planned, Duration::ZERO),
                Err(next) => return Ok(next),
            },
        };
        let Some((output, attempts, sink)) = self.run_sink(&planned, &self.sink, on_event)? else { return Ok(Next::Stopped) };
        let provenance = Provenance {
            component_digest: self.sink.digest().to_owned(),
            config_digest: self.config_digest.clone(),
            release: planned.release.clone(),
        };
        Ok(Next::Ran(Box::new(Ran { planned, provenance, output, attempts, started, check, sink })))
    }

    /// Step 1: plan the next batch and write its `offsets/N`, or say why
    /// there is none to run now.
    fn plan(
        &self,
        until: Option<&BTreeMap<(String, i32), i64>>,
        last_start: &mut Option<Instant>,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<Result<PlannedBatch, Next>, PipelineError> {
        if self.stopping() {
            return Ok(Err(Next::Stopped));
        }
        if until.is_none()
            && let Some(start) = *last_start
            && !self.wait(start + Duration::from_millis(self.config.pipeline.trigger_interval_ms))
        {
            return Ok(Err(Next::Stopped));
        }
        *last_start = Some(Instant::now());
        let budget = self.record_budget();
        let plan = |s: &Self| s.source.plan_up_to(&s.planned_ends, budget, until);
        let Some(ranges) = self.with_retries(on_event, plan)? else { return Ok(Err(Next::Stopped)) };
        // An empty plan is not recorded, unless it fixes where partitions
        // start (`starting_offsets = "latest"`): later plans start there.
        if ranges.iter().all(|r| r.end == r.start) && !self.source.plan_fixes_start(&self.planned_ends) {
            return Ok(Err(if until.is_some() { Next::CaughtUp } else { Next::Idle }));
        }
        let planned = PlannedBatch {
            batch_id: self.next_id,
            planned_timestamp_ms: now_ms(),
            ranges,
            component_digest: self.sink.digest().to_owned(),
            config_digest: self.config_digest.clone(),
            release: None,
        };
        self.checkpoint.record_planned(&planned)?;
        crate::failpoint::hit("after-offsets-log");
        Ok(Ok(planned))
    }

    /// Step 2, for a batch an earlier run planned and did not log as
    /// committed: when every table already holds it (a crash between the
    /// Delta commit and `commits/N`), log it and skip the sink. A batch this
    /// run planned needs no such look: nothing else commits for this
    /// checkpoint while it is owned, and the commit skips any table already
    /// at ≥ N anyway.
    fn find_committed(&self, planned: &PlannedBatch, started: Instant) -> Result<Option<Done>, PipelineError> {
        let n = planned.batch_id;
        let commit_err = |source| PipelineError::Commit { batch_id: n, source };
        let txns = self.committer.committed_batches().map_err(commit_err)?;
        let check = started.elapsed();
        let holding = |v: &Option<i64>| v.is_some_and(|v| v >= n as i64);
        let (done, todo): (Vec<_>, Vec<_>) = txns.iter().partition(|(_, v)| holding(v));
        if !todo.is_empty() {
            if done.is_empty() {
                return Ok(None);
            }
            // Half-committed: only what produced the committed output may
            // finish it. That is recorded in the tables' commits (older
            // commits lack it: then the plan says).
            let found = self.committer.find_batch(n, FIND_COMMIT_DEPTH).map_err(commit_err)?;
            let ran = found.values().flatten().next();
            let recorded = |d: Option<&String>, planned: &String| d.filter(|d| !d.is_empty()).unwrap_or(planned).clone();
            let ran_component = recorded(ran.and_then(|c| c.component_digest.as_ref()), &planned.component_digest);
            let ran_config = recorded(ran.and_then(|c| c.config_digest.as_ref()), &planned.config_digest);
            let committed = || done.iter().map(|(t, _)| (*t).clone()).collect();
            let pending = || todo.iter().map(|(t, _)| (*t).clone()).collect();
            if ran_component != self.sink.digest() {
                return Err(PipelineError::ComponentChanged {
                    batch_id: n,
                    committed: committed(),
                    pending: pending(),
                    planned: ran_component,
                    current: self.sink.digest().to_owned(),
                });
            }
            if ran_config != self.config_digest {
                return Err(PipelineError::ConfigChanged(Box::new(ConfigChanged {
                    batch_id: n,
                    committed: committed(),
                    pending: pending(),
                    ran: ran_config,
                    current: self.config_digest.clone(),
                })));
            }
            return Ok(None);
        }
        let found = self.committer.find_batch(n, FIND_COMMIT_DEPTH).map_err(commit_err)?;
        // Every table holds it: they must hold the same output, the one planned.
        let mut first: Option<(&String, &crate::commit::BatchCommit)> = None;
        for (table, c) in found.iter().filter_map(|(t, c)| c.as_ref().map(|c| (t, c))) {
            let what = match first {
                None => c.differs_from(&planned.ranges, None),
                Some((other, f)) => c.differs_from(&planned.ranges, Some(&f.output_digest)).map(|w| format!("{w} (table `{other}`)")),
            };
            if let Some(what) = what {
                let source = CommitError::Disagrees { table: table.clone(), version: c.version, batch: n, what };
                return Err(commit_err(source));
            }
            first = first.or(Some((table, c)));
        }
        let recorded = |d: Option<&String>, planned: &String| d.filter(|d| !d.is_empty()).unwrap_or(planned).clone();
        let provenance = Provenance {
            component_digest: recorded(first.and_then(|(_, c)| c.component_digest.as_ref()), &planned.component_digest),
            config_digest: recorded(first.and_then(|(_, c)| c.config_digest.as_ref()), &planned.config_digest),
            release: planned.release.clone(),
        };
        // A commit older than the search depth: record the current version.
        let current = if found.values().any(Option::is_none) {
            self.committer.ensure_tables().map_err(commit_err)?
        } else {
            BTreeMap::new()
        };
        let table_versions =
            found.iter().map(|(t, c)| (t.clone(), c.as_ref().map_or_else(|| current[t], |c| c.version))).collect();
        let output_digest = found.values().flatten().map(|c| c.output_digest.clone()).next().unwrap_or_default();
        let report = BatchReport {
            batch_id: n,
            records: 0,
            bytes: 0,
            attempts: 0,
            already_committed: true,
            check,
            sink: Duration::ZERO,
            commit: Duration::ZERO,
            total: started.elapsed(),
            table_versions,
            output_digest,
            staged_rows: BTreeMap::new(),
            quarantined: 0,
        };
        log_commit(&self.checkpoint, &self.source, planned, &provenance, report).map(Some)
    }

    /// Re-run a committed batch that tables lost (see [`agreement`]) and
    /// commit it to them, if the re-run reproduces the recorded output.
    /// False when stopped meanwhile (the next start heals it).
    fn heal(&mut self, heal: Heal, on_event: &mut impl FnMut(&Event)) -> Result<bool, PipelineError> {
        let Heal { batch_id: n, tables } = heal;
        let list = agreement::table_list(&tables);
        let cannot = |why: String, hint: String| AgreementError::CannotHeal { tables: list.clone(), batch: n, why, hint };
        let (Some(planned), Some(mut committed)) = (self.checkpoint.planned(n)?, self.checkpoint.committed(n)?) else {
            return Err(cannot(format!("offsets/{n} or commits/{n} is no longer in the checkpoint"), String::new()).into());
        };
        // The component that produced the committed output, kept in the
        // checkpoint when it is not the configured one.
        let digest = committed.component_digest.clone().unwrap_or_else(|| planned.component_digest.clone());
        let sink = if digest == self.sink.digest() {
            self.sink.clone()
        } else {
            let not_kept = || {
                cannot(
                    format!(
                        "the component that committed it ({}) is not kept in the checkpoint",
                        short(&digest)
                    ),
                    "; or configure that component for this run".into(),
                )
            };
            let kept = self.checkpoint.component(&digest)?.ok_or_else(not_kept)?;
            self.runtime.load(&kept).map_err(|e| {
                cannot(
                    format!("the component that committed it ({}) cannot be loaded from {}: {e}", short(&digest), kept.display()),
                    "; or configure that component for this run".into(),
                )
            })?
        };
        let result = self.run_sink(&planned, &sink, on_event);
        let output = match result {
            Ok(Some((output, _, _))) => output,
            Ok(None) => return Ok(false),
            Err(PipelineError::BatchFailed { failure, .. }) => {
                let why = match &failure.error {
                    BatchError::Source(e) => format!(
                        "its records ({}) cannot be read from Kafka any more: {e}",
                        crate::commit::ranges_text(&planned.ranges)
                    ),
                    e => format!("the re-run failed: {e}"),
                };
                let hint = format!(
                    "; if its records are gone from Kafka, a bundle made earlier with `sluice batch export {n}` holds \
                     them: `sluice replay --bundle FILE` shows the output the table lost"
                );
                return Err(cannot(why, hint).into());
            }
            Err(e) => return Err(e),
        };
        if output.digest != committed.output_digest {
            let why = format!(
                "the re-run's output (digest {}) is not the committed one ({}): the component or the config changed \
                 since it ran (config digest then {}, now {})",
                short(&output.digest),
                short(&committed.output_digest),
                short(committed.config_digest.as_deref().unwrap_or(&planned.config_digest)),
                short(&self.config_digest),
            );
            return Err(cannot(why, format!("; or run with the component and config batch {n} ran with")).into());
        }
        let provenance = Provenance {
            component_digest: digest,
            config_digest: committed.config_digest.clone().unwrap_or_else(|| planned.config_digest.clone()),
            release: planned.release.clone(),
        };
        let versions = self
            .committer
            .commit_with(&output, &provenance, Some(&tables), &|| {
                self.checkpoint.check_owned().map_err(|e| e.to_string())
            })
            .map_err(|source| PipelineError::Commit {
                batch_id: n,
                source,
            })?;
        committed.table_versions.extend(versions.clone());
        self.checkpoint.record_healed(&committed)?;
        if self
            .last_committed
            .as_ref()
            .is_some_and(|c| c.batch_id == n)
        {
            self.last_committed = Some(committed);
        }
        on_event(&Event::Healed { batch_id: n, tables: versions, records: output.records_in });
        Ok(true)
    }

    /// A batch's sink ran: its record size sizes the next plan.
    fn ran(&mut self, ran: &Ran) {
        let (planned, output) = (&ran.planned, &ran.output);
        // A batch this run planned (recovered ones are accounted for at open).
        if planned.batch_id >= self.next_id {
            self.next_id = planned.batch_id + 1;
            self.planned_ends.extend(planned.ends());
        }
        if output.records_in > 0 {
            self.record_size = Some(output.record_bytes_in.div_ceil(output.records_in).max(1));
        }
        self.metrics.sink_failures += u64::from(ran.attempts - 1);
    }

    /// A batch's commit is logged: account for it and tell the caller.
    fn finish(&mut self, done: Done, summary: &mut RunSummary, on_event: &mut impl FnMut(&Event)) {
        let Done { report, committed, ends, maintained } = done;
        if report.already_committed {
            self.metrics.batches_skipped += 1;
        }
        self.ends.extend(ends);
        if let Err(e) = self.config.retention.after_commit(&self.checkpoint, committed.batch_id) {
            eprintln!("sluice: warning: checkpoint retention: {e}");
        }
        self.last_committed = Some(committed);
        self.update_metrics(&report);
        summary.batches += 1;
        summary.records += report.records;
        summary.last_committed = Some(report.batch_id);
        summary.table_versions = report.table_versions.clone();
        let batch_id = report.batch_id;
        on_event(&Event::Committed(report));
        if !maintained.is_empty() {
            for m in &maintained {
                *self.metrics.maintenance.entry(m.step).or_default() += 1;
            }
            self.write_metrics();
            on_event(&Event::Maintained { batch_id, steps: maintained });
        }
    }

    /// Step 3: run the sink with retries. `None` when stopped while waiting
    /// to retry.
    fn run_sink(
        &self,
        planned: &PlannedBatch,
        sink: &Sink,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<Option<(crate::BatchOutput, u32, Duration)>, PipelineError> {
        let spec = BatchSpec {
            pipeline_id: self.config.pipeline.id.clone(),
            batch_id: planned.batch_id,
            planned_timestamp_ms: planned.planned_timestamp_ms,
            ranges: planned.ranges.clone(),
        };
        let max_attempts = self.config.pipeline.max_attempts;
        let mut backoff = Duration::from_millis(self.config.pipeline.retry_backoff_ms);
        let mut sink_time = Duration::ZERO;
        // A batch whose poison records were set aside before (a restart
        // after the decision, before the commit) runs without them.
        let decided = match self.quarantine() {
            Some(_) => self.checkpoint.quarantine(spec.batch_id)?.filter(|d| d.component_digest == sink.digest()),
            None => None,
        };
        let mut kept: Option<Vec<crate::OwnedRecord>> = None;
        for attempt in 1..=max_attempts {
            let started = Instant::now();
            let record = AttemptRecord::started(spec.batch_id, attempt, now_ms()).running(sink.digest(), &self.config_digest);
            self.note_attempt(&record);
            let source_failure = |e: String| BatchFailure {
                batch_id: spec.batch_id,
                attempt,
                error: BatchError::Source(SourceError::Failed(e)),
                log: Vec::new(),
                kept_scratch: None,
            };
            let result = match (&decided, &kept) {
                // A release batch's few records are read once and kept, to
                // write them to the quarantine table too.
                (None, _) if planned.release.is_some() => match self.batch_records(planned) {
                    Ok(records) => {
                        let run = sink.run(&spec, attempt, Box::new(VecSource::new(records.clone())));
                        kept = Some(records);
                        run
                    }
                    Err(e) => Err(source_failure(e)),
                },
                (None, _) => match self.source.fetch(&planned.ranges) {
                    Ok(fetch) => sink.run(&spec, attempt, Box::new(ReadAhead::new(InSink(fetch)))),
                    Err(e) => Err(source_failure(e.to_string())),
                },
                (Some(d), _) => match self.batch_records(planned) {
                    Ok(records) => {
                        let run = sink.run(&spec, attempt, Box::new(VecSource::new(d.kept(&records))));
                        kept = Some(records);
                        run
                    }
                    Err(e) => Err(source_failure(e)),
                },
            };
            sink_time += started.elapsed();
            let duration_ms = Some(started.elapsed().as_millis() as u64);
            let failure = match result {
                Ok(mut output) => {
                    let outcome = Outcome::Succeeded;
                    let records = Some(output.records_in);
                    self.note_attempt(&AttemptRecord { outcome, duration_ms, records, ..record }.with_log(&output.log));
                    if let (Some(d), Some(records), Some(q)) = (&decided, &kept, self.quarantine()) {
                        d.apply(&q.table, records, &mut output);
                        on_event(&Event::Quarantined { batch_id: spec.batch_id, excluded: d.excluded.clone(), runs: 0 });
                    }
                    if let (Some(release), Some(records)) = (&planned.release, &kept) {
                        self.mark_released(planned, release, records, &mut output)?;
                    }
                    return Ok(Some((output, attempt, sink_time)));
                }
                Err(failure) => failure,
            };
            let (outcome, error, kept_scratch) = (Outcome::Failed, Some(failure.error.to_string()), failure.kept_scratch.clone());
            self.note_attempt(&AttemptRecord { outcome, duration_ms, error, kept_scratch, ..record }.with_log(&failure.log));
            if decided.is_none() && planned.release.is_none() && self.quarantine().is_some() && quarantine::deterministic(&failure.error) {
                let found = self.search_poison(planned, &spec, sink, &failure, on_event)?;
                return Ok(found.map(|output| (output, attempt, sink_time + started.elapsed())));
            }
            let retry = failure.error.retryable() && attempt < max_attempts;
            if !retry {
                return Err(PipelineError::BatchFailed {
                    batch_id: spec.batch_id,
                    attempts: attempt,
                    failure: Box::new(failure),
                    config: self.config_path.clone(),
                });
            }
            on_event(&Event::Retrying {
                batch_id: Some(spec.batch_id),
                attempt,
                max_attempts,
                error: failure.error.to_string(),
                backoff,
            });
            if !self.wait(Instant::now() + backoff) {
                return Ok(None);
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("the last attempt returns")
    }

    /// A release batch's output also marks its records released in the
    /// quarantine table (an upsert on their coordinates).
    fn mark_released(
        &self,
        planned: &PlannedBatch,
        release: &crate::checkpoint::Release,
        records: &[crate::OwnedRecord],
        output: &mut crate::BatchOutput,
    ) -> Result<(), PipelineError> {
        let (Some(q), Some(decision)) = (self.quarantine(), self.checkpoint.quarantine(release.of_batch)?) else {
            return Err(PipelineError::Release(format!(
                "batch {} releases batch {}'s poison records, but the checkpoint has no quarantine/{} (or quarantine is off)",
                planned.batch_id, release.of_batch, release.of_batch
            )));
        };
        output.ops.push(decision.staged(&q.table, records, Some(planned.batch_id)));
        Ok(())
    }

    /// The quarantine settings, when poison records are set aside.
    fn quarantine(&self) -> Option<&quarantine::QuarantineConfig> {
        self.config.quarantine.as_ref().filter(|_| self.config.pipeline.on_poison == OnPoison::Quarantine)
    }

    /// Every record of a planned batch, in delivery order.
    fn batch_records(&self, planned: &PlannedBatch) -> Result<Vec<crate::OwnedRecord>, String> {
        self.source.read_ranges(&planned.ranges)
    }

    /// The batch failed deterministically: find its poison records, record
    /// the decision, and give the output of the batch without them, the
    /// quarantine table's rows added (see `quarantine`). `None`: stopping.
    fn search_poison(
        &self,
        planned: &PlannedBatch,
        spec: &BatchSpec,
        sink: &Sink,
        failure: &BatchFailure,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<Option<crate::BatchOutput>, PipelineError> {
        let q = self.quarantine().expect("called with quarantine on");
        let records = self.batch_records(planned).map_err(|e| PipelineError::BatchFailed {
            batch_id: spec.batch_id,
            attempts: 1,
            failure: Box::new(BatchFailure {
                batch_id: spec.batch_id,
                attempt: failure.attempt,
                error: BatchError::Source(SourceError::Failed(e)),
                log: Vec::new(),
                kept_scratch: None,
            }),
            config: self.config_path.clone(),
        })?;
        let mut attempt = 1000;
        let mut run = |set: &[usize]| {
            if self.stopping() {
                return Err(BatchFailure {
                    batch_id: spec.batch_id,
                    attempt,
                    error: BatchError::Internal(quarantine::STOPPED.into()),
                    log: Vec::new(),
                    kept_scratch: None,
                });
            }
            attempt += 1;
            let subset: Vec<crate::OwnedRecord> = set.iter().map(|&i| records[i].clone()).collect();
            sink.run(spec, attempt, Box::new(VecSource::new(subset)))
        };
        let found = quarantine::search(records.len(), failure.error.to_string(), q.max_records_per_batch, q.max_extra_runs, &mut run);
        let describe = |found: &[(usize, String)]| -> String {
            found
                .iter()
                .map(|(i, e)| format!("  poison: {}/{}@{}: {e}\n", records[*i].topic, records[*i].partition, records[*i].offset))
                .collect()
        };
        let stop = |why: String, found: &[(usize, String)]| PipelineError::Poison {
            batch_id: spec.batch_id,
            why,
            found: describe(found),
            config: self.config_path.clone(),
        };
        let found = match found {
            Ok(found) => found,
            Err(quarantine::Stop::Stopped) => return Ok(None),
            Err(quarantine::Stop::TooMany { found, max }) => {
                return Err(stop(format!("more than {max} poison records (quarantine.max_records_per_batch)"), &found));
            }
            Err(quarantine::Stop::TooManyRuns { found, max }) => {
                return Err(stop(format!("the search for poison records needed more than {max} sink runs (quarantine.max_extra_runs)"), &found));
            }
            Err(quarantine::Stop::Together { records: n, error, found }) => {
                let why = match n {
                    0 => format!("the sink fails ({error}) even with none of the batch's records: no record is to blame"),
                    n => format!("{n} records fail together ({error}), but no record fails alone: they are not poison records, and the batch is not split"),
                };
                return Err(stop(why, &found));
            }
            Err(quarantine::Stop::NotDeterministic(f)) => {
                return Err(PipelineError::BatchFailed { batch_id: spec.batch_id, attempts: 1, failure: f, config: self.config_path.clone() });
            }
        };
        let decision = quarantine::Decision {
            batch_id: spec.batch_id,
            component_digest: sink.digest().to_owned(),
            excluded: found
                .poison
                .iter()
                .map(|(i, error)| {
                    let r = &records[*i];
                    quarantine::Excluded { topic: r.topic.clone(), partition: r.partition, offset: r.offset, error: error.clone() }
                })
                .collect(),
            runs: found.runs,
        };
        self.checkpoint.record_quarantine(&decision)?;
        crate::failpoint::hit("after-quarantine-decision");
        let mut output = found.output;
        decision.apply(&q.table, &records, &mut output);
        on_event(&Event::Quarantined { batch_id: spec.batch_id, excluded: decision.excluded, runs: decision.runs });
        Ok(Some(output))
    }

    /// Record an attempt for `sluice batch show`. Diagnostics only: a
    /// failure to write it is reported, not fatal.
    fn note_attempt(&self, record: &AttemptRecord) {
        if let Err(e) = attempt_log::write(self.checkpoint.attempts_dir(), record) {
            eprintln!(
                "sluice: warning: cannot record attempt {} of batch {}: {e}",
                record.attempt, record.batch_id
            );
        }
    }

    /// Records to plan: the configured count, lowered so the batch stays near
    /// `max_bytes_per_batch` at the last batch's average record size.
    fn record_budget(&self) -> u64 {
        let max = self.config.source.max_records_per_batch;
        match (self.config.source.max_bytes_per_batch, self.record_size) {
            (Some(bytes), Some(size)) => max.min((bytes / size).max(1)),
            _ => max,
        }
    }

    fn update_metrics(&mut self, report: &BatchReport) {
        if !report.already_committed {
            let m = &mut self.metrics;
            m.batch_committed(report.batch_id, report.records, report.bytes, report.sink, report.commit, report.total);
            m.quarantined_records += report.quarantined;
        }
        self.metrics.last_batch_id = Some(report.batch_id);
        self.metrics.table_versions = report.table_versions.clone();
        self.metrics.lag = self
            .source
            .last_high_watermarks()
            .into_iter()
            .map(|(k, high)| {
                let end = self.ends.get(&k).copied().unwrap_or(0);
                (k, (high - end).max(0))
            })
            .collect();
        self.write_metrics();
    }

    fn write_metrics(&self) {
        if let Some(p) = &self.published {
            p.set_metrics(self.metrics.render());
        }
        if let Some(path) = &self.config.pipeline.metrics_file
            && let Err(e) = self.metrics.write(path)
        {
            eprintln!("sluice: warning: cannot write metrics to {}: {e}", path.display());
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Wait until `deadline` unless a stop is requested; false if it was.
    fn wait(&self, deadline: Instant) -> bool {
        // Signals only set a flag, so look at it every 50 ms.
        while !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }
}

/// Steps 4–5 of the batch life, on the commit thread: one Delta
/// transaction per table, then `commits/N`.
fn commit_batch(
    committer: &DeltaCommitter,
    checkpoint: &Checkpoint,
    source: &KafkaSource,
    retention: &RetentionConfig,
    ran: Ran,
) -> Result<Done, PipelineError> {
    let Ran { planned, provenance, output, attempts, started, check, sink } = ran;
    let commit_started = Instant::now();
    let versions = committer
        .commit_with(&output, &provenance, None, &|| {
            checkpoint.check_owned().map_err(|e| e.to_string())
        })
        .map_err(|source| PipelineError::Commit {
            batch_id: planned.batch_id,
            source,
        })?;
    let commit = commit_started.elapsed();
    crate::failpoint::hit("after-table-commits");
    let report = BatchReport {
        batch_id: planned.batch_id,
        records: output.records_in,
        bytes: output.record_bytes_in,
        attempts,
        already_committed: false,
        check,
        sink,
        commit,
        total: started.elapsed(),
        table_versions: versions,
        staged_rows: output.tables().into_iter().map(|t| (t.table, t.appended_rows + t.upserted_rows + t.deleted_rows)).collect(),
        quarantined: output.quarantined,
        output_digest: output.digest,
    };
    let mut done = log_commit(checkpoint, source, &planned, &provenance, report)?;
    // Step 6: maintenance due on the tables, before the next batch commits
    // (its sink runs meanwhile). VACUUM keeps what the oldest retained
    // batch needs.
    let n = planned.batch_id;
    let retained_since = || checkpoint.planned(retention.first_kept(n)).ok().flatten().map(|p| p.planned_timestamp_ms);
    let (maintained, failed) = committer.maintain(false, &retained_since, &|| checkpoint.check_owned().map_err(|e| e.to_string()));
    for (table, step, e) in failed {
        eprintln!("sluice: warning: table `{table}`: {step} failed (tried again when next due): {e}");
    }
    done.maintained = maintained;
    Ok(done)
}

/// Step 5: write `commits/N` (with what ran), then tell the consumer group
/// (advisory).
fn log_commit(
    checkpoint: &Checkpoint,
    source: &KafkaSource,
    planned: &PlannedBatch,
    provenance: &Provenance,
    report: BatchReport,
) -> Result<Done, PipelineError> {
    let committed = CommittedBatch {
        batch_id: report.batch_id,
        output_digest: report.output_digest.clone(),
        table_versions: report.table_versions.clone(),
        records: report.records,
        staged_rows: report.staged_rows.clone(),
        component_digest: Some(provenance.component_digest.clone()),
        config_digest: Some(provenance.config_digest.clone()),
    };
    checkpoint.record_committed(&committed)?;
    if let Err(e) = source.commit_advisory(&planned.ranges) {
        eprintln!("sluice: warning: {e} (lag tools may show stale offsets; sluice's own offsets are safe)");
    }
    Ok(Done { report, committed, ends: planned.ends(), maintained: Vec::new() })
}

/// The batch's records, marking the point where the sink is running (for
/// the crash tests).
struct InSink<S>(S);

impl<S: RecordSource> RecordSource for InSink<S> {
    fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError> {
        crate::failpoint::hit("in-sink");
        self.0.fill(chunk)
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}
