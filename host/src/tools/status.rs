//! `sluice status`: where a pipeline stands, read without disturbing it.
//!
//! Reads the checkpoint without taking ownership (a running pipeline keeps
//! writing it), the tables without creating them, and the topics' high
//! watermarks for lag. A part that cannot be read is reported as such; the
//! rest is still shown.

use crate::now_ms;
use crate::checkpoint::lease::LeaseRecord;
use crate::checkpoint::{Checkpoint, CommittedBatch, Holder, PlannedBatch};
use crate::commit::{DeltaCommitter, TableState};
use crate::config::PipelineConfig;
use crate::source::KafkaSource;
use serde::Serialize;
use std::fmt;

/// The status report (also the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Pipeline id.
    pub pipeline: String,
    /// The checkpoint: a directory or a URL.
    pub checkpoint: String,
    /// Where it lives: "local disk", "S3", "Azure", …
    pub checkpoint_kind: String,
    /// The pid of the `sluice run` owning a local checkpoint, if one is running.
    pub running_pid: Option<u32>,
    /// The lease on a remote checkpoint, if one was ever taken.
    pub lease: Option<LeaseRecord>,
    /// The last committed batch.
    pub last_committed: Option<CommittedBatch>,
    /// Planned batches not yet committed (in progress, or to be re-run), oldest first.
    pub pending: Vec<PlannedBatch>,
    /// Per partition: committed offset, high watermark, lag.
    pub partitions: Vec<PartitionStatus>,
    /// Per table: version and last batch, or why it could not be read.
    pub tables: Vec<TableStatus>,
    /// Poison records set aside, per batch still in the checkpoint
    /// (`pipeline.on_poison = "quarantine"`): batch id → records.
    pub quarantined: Vec<(u64, u64)>,
    /// The quarantine table, when poison records are set aside.
    pub quarantine_table: Option<String>,
    /// Problems reading any of the above.
    pub errors: Vec<String>,
}

/// One topic partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The end of the last committed batch's range: the next offset to read.
    pub committed_offset: Option<i64>,
    /// The partition's high watermark, if Kafka answered.
    pub high_watermark: Option<i64>,
    /// Records not yet committed, if known.
    pub lag: Option<i64>,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// Name.
    pub name: String,
    /// Directory or URL.
    pub path: String,
    /// Where it lives: "local disk", "S3", "Azure", …
    pub kind: String,
    /// Version and last batch; `None` if the table does not exist (yet).
    pub state: Option<TableState>,
}

impl Status {
    /// Gather the status of the pipeline `config` describes.
    pub fn gather(config: &PipelineConfig) -> Self {
        let mut errors = Vec::new();
        let place = config.checkpoint_place();
        let (mut last_committed, mut pending, mut ends) = (None, Vec::new(), Default::default());
        let mut quarantined = Vec::new();
        match Checkpoint::open_read_only_at(&place).and_then(|cp| {
            let resume = cp.resume()?;
            // An older checkpoint has no quarantine log: nothing set aside.
            let mut ids = cp.batch_ids(crate::checkpoint::Log::Quarantine).unwrap_or_default();
            ids.sort_unstable();
            for n in ids {
                if let Some(d) = cp.quarantine(n)? {
                    quarantined.push((n, d.excluded.len() as u64));
                }
            }
            let ends = match &resume.last_committed {
                Some(c) => cp.planned(c.batch_id)?.map(|p| p.ends()).unwrap_or_default(),
                None => Default::default(),
            };
            Ok((resume, ends))
        }) {
            Ok((resume, e)) => {
                last_committed = resume.last_committed;
                pending = resume.pending;
                ends = e;
            }
            Err(e) => errors.push(e.to_string()),
        }

        let mut partitions = Vec::new();
        let mut source_config = config.source.clone();
        source_config.fetch_timeout_ms = source_config.fetch_timeout_ms.min(5_000);
        match KafkaSource::connect(source_config).and_then(|s| s.high_watermarks()) {
            Ok(highs) => {
                for ((topic, partition), high) in highs {
                    let committed = ends.get(&(topic.clone(), partition)).copied();
                    let lag = Some(high - committed.unwrap_or(0));
                    partitions.push(PartitionStatus { topic, partition, committed_offset: committed, high_watermark: Some(high), lag });
                }
            }
            Err(e) => {
                errors.push(format!("{e} (lag unknown)"));
                for ((topic, partition), end) in &ends {
                    partitions.push(PartitionStatus {
                        topic: topic.clone(),
                        partition: *partition,
                        committed_offset: Some(*end),
                        high_watermark: None,
                        lag: None,
                    });
                }
            }
        }

        let (running_pid, lease) = match Checkpoint::holder(&place) {
            Some(Holder::Pid(pid)) => (Some(pid), None),
            Some(Holder::Lease(l)) => (None, Some(l)),
            None => (None, None),
        };
        let mut tables = Vec::new();
        match DeltaCommitter::new(&config.pipeline.id, config.resolved_tables()) {
            Ok(committer) => {
                let mut states = committer.describe();
                // The quarantine table too, when there is one.
                for t in &config.resolved_tables() {
                    let state = states.remove(&t.name).and_then(|s| {
                        s.unwrap_or_else(|e| {
                            errors.push(e.to_string());
                            None
                        })
                    });
                    tables.push(TableStatus {
                        name: t.name.clone(),
                        path: t.path.to_string(),
                        kind: t.path.kind().into(),
                        state,
                    });
                }
            }
            Err(e) => errors.push(format!("cannot start the Delta client: {e}")),
        }

        Status {
            pipeline: config.pipeline.id.clone(),
            checkpoint: place.location.to_string(),
            checkpoint_kind: place.location.kind().into(),
            running_pid,
            lease,
            last_committed,
            pending,
            partitions,
            tables,
            quarantined,
            quarantine_table: config.quarantine.as_ref().filter(|_| config.pipeline.on_poison == crate::config::OnPoison::Quarantine).map(|q| q.table.clone()),
            errors,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline {}  (checkpoint {}, on {})",
            self.pipeline, self.checkpoint, self.checkpoint_kind
        )?;
        match (&self.running_pid, &self.lease) {
            (Some(pid), _) => writeln!(f, "  running: yes, pid {pid}")?,
            (None, Some(l)) if l.released => writeln!(
                f,
                "  running: no (lease epoch {} released by {})",
                l.epoch, l.owner
            )?,
            (None, Some(l)) => {
                let ago = (now_ms() - l.renewed_at_ms).max(0);
                let state = if ago as u64 > l.lease_ms {
                    "expired: a standby or the next run takes over"
                } else {
                    "held"
                };
                writeln!(
                    f,
                    "  lease: epoch {}, owner {}, renewed {ago} ms ago, lasts {} ms ({state})",
                    l.epoch, l.owner, l.lease_ms
                )?
            }
            (None, None) => writeln!(f, "  running: no")?,
        }
        match &self.last_committed {
            Some(c) => writeln!(f, "  last committed batch: {} (output {})", c.batch_id, &c.output_digest[..c.output_digest.len().min(16)])?,
            None => writeln!(f, "  last committed batch: none")?,
        }
        if !self.pending.is_empty() {
            let ids: Vec<String> = self.pending.iter().map(|p| p.batch_id.to_string()).collect();
            writeln!(f, "  pending batches: {} (planned, not committed; the next run re-runs them as planned)", ids.join(", "))?;
        }
        if let Some(table) = &self.quarantine_table {
            let records: u64 = self.quarantined.iter().map(|q| q.1).sum();
            let batches: Vec<String> = self.quarantined.iter().map(|q| q.0.to_string()).collect();
            match records {
                0 => writeln!(f, "  quarantine: no poison records set aside (table `{table}`)")?,
                n => writeln!(
                    f,
                    "  quarantine: {n} poison record(s) set aside into table `{table}`, from batch(es) {} (`sluice batch show` lists them)",
                    batches.join(", ")
                )?,
            }
        }
        writeln!(f, "  partitions:")?;
        let show = |v: Option<i64>| v.map_or("?".to_owned(), |v| v.to_string());
        for p in &self.partitions {
            writeln!(
                f,
                "    {}/{}: committed offset {}, high watermark {}, lag {}",
                p.topic,
                p.partition,
                show(p.committed_offset),
                show(p.high_watermark),
                show(p.lag)
            )?;
        }
        writeln!(f, "  tables:")?;
        for t in &self.tables {
            match &t.state {
                Some(s) => writeln!(
                    f,
                    "    {}: version {}, last batch {}  ({}, on {})",
                    t.name,
                    s.version,
                    s.last_batch.map_or("none".to_owned(), |b| b.to_string()),
                    t.path,
                    t.kind
                )?,
                None => writeln!(
                    f,
                    "    {}: not created yet  ({}, on {})",
                    t.name, t.path, t.kind
                )?,
            }
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}
