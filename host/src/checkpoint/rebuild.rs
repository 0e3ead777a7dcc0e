//! `sluice checkpoint rebuild`: a lost or damaged checkpoint, rebuilt from
//! the tables' Delta logs.
//!
//! Every commit sluice makes records, in its metadata, the batch id, the
//! source ranges, the output digest, the planned timestamp and the
//! component and config digests. That is all `offsets/N` and `commits/N`
//! hold, so the checkpoint can be written again from the tables:
//!
//! ```text
//!   every table's log ─► batch → (table → its commit of the batch)
//!       two tables' commits of one batch differ ─► refuse, naming both
//!       a batch no table holds between two held ones ─► refuse
//!   last batch L held by every table that holds any ─► offsets/..=L, commits/..=L
//!   L held by some only (a crash between tables)   ─► commits/..L-1, offsets/L pending:
//!                                                     the next run finishes L as planned
//! ```
//!
//! The old `offsets/` and `commits/` are moved aside (to
//! `<checkpoint>/replaced-<ms>/`), never deleted. The next `sluice run`
//! continues where the tables are: the next batch starts at the ends of the
//! last one's ranges, so no record is skipped or repeated; a table behind
//! the others is healed by the run (see `pipeline::agreement`). A run
//! owning the checkpoint makes the rebuild refuse (the lock).

use crate::now_ms;
use crate::checkpoint::{Checkpoint, CheckpointError, CommittedBatch, PlannedBatch};
use crate::commit::{BatchCommit, CommitError, DeltaCommitter};
use crate::config::PipelineConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Why the checkpoint cannot be rebuilt. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The checkpoint directory cannot be taken or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A table cannot be read.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Two tables record different things for one batch.
    #[error(
        "tables disagree about batch {batch}: `{first}` (Delta version {first_version}) records {first_what}, \
         `{second}` (Delta version {second_version}) records {second_what}. They were written by different runs; \
         the checkpoint was not rebuilt. Restore the wrong table from a backup, then rebuild"
    )]
    TablesDisagree {
        /// The batch.
        batch: u64,
        /// One table.
        first: String,
        /// Its version.
        first_version: u64,
        /// What it records.
        first_what: String,
        /// The other table.
        second: String,
        /// Its version.
        second_version: u64,
        /// What that one records.
        second_what: String,
    },
    /// The tables' logs lack what the checkpoint needs.
    #[error("{0}; the checkpoint was not rebuilt")]
    Incomplete(String),
}

/// What a rebuild wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The checkpoint (a directory or a URL).
    pub checkpoint: String,
    /// Where the old logs were moved, if there were any.
    pub set_aside: Option<String>,
    /// Table → last batch it holds (`None`: none, or the table does not exist).
    pub tables: BTreeMap<String, Option<u64>>,
    /// Batches written to `commits/` (first, last).
    pub committed: Option<(u64, u64)>,
    /// A batch some tables hold and others not: planned, to be finished.
    pub pending: Option<u64>,
    /// What the rebuilt checkpoint lacks.
    pub notes: Vec<String>,
}

/// Rebuild the checkpoint of `config` from its tables.
pub fn rebuild(config: &PipelineConfig) -> Result<RebuildReport, RebuildError> {
    let committer = DeltaCommitter::new(&config.pipeline.id, config.resolved_tables())
        .map_err(CommitError::Io)?;
    let mut by_batch: BTreeMap<u64, BTreeMap<String, BatchCommit>> = BTreeMap::new();
    let mut tables = BTreeMap::new();
    for t in &config.tables {
        let commits = committer.batch_commits(&t.name)?.unwrap_or_default();
        tables.insert(t.name.clone(), commits.iter().map(|c| c.batch_id).max());
        for c in commits {
            by_batch.entry(c.batch_id).or_default().insert(t.name.clone(), c);
        }
    }
    let mut notes = Vec::new();
    // Tables that agree, batch by batch, and no hole between held batches.
    let mut previous = None;
    for (&n, holders) in &by_batch {
        if let Some(p) = previous.filter(|&p| p + 1 != n) {
            return Err(RebuildError::Incomplete(format!("no table holds batches {}..={} (between {p} and {n})", p + 1, n - 1)));
        }
        previous = Some(n);
        let mut iter = holders.iter();
        let (first, a) = iter.next().expect("a batch is held by some table");
        for (second, b) in iter {
            let what = |c: &BatchCommit| {
                format!(
                    "ranges {}, output digest {}",
                    c.ranges.as_deref().map_or("(not recorded)".to_owned(), crate::commit::ranges_text),
                    &c.output_digest[..c.output_digest.len().min(16)]
                )
            };
            if a.ranges != b.ranges || a.output_digest != b.output_digest || a.planned_timestamp_ms != b.planned_timestamp_ms {
                return Err(RebuildError::TablesDisagree {
                    batch: n,
                    first: first.clone(),
                    first_version: a.version,
                    first_what: what(a),
                    second: second.clone(),
                    second_version: b.version,
                    second_what: what(b),
                });
            }
        }
    }

    let checkpoint = Checkpoint::open_at(&config.checkpoint_place(), false, &mut |_| {})?;
    let had_logs = checkpoint.last_planned().unwrap_or(Some(0)).is_some()
        || checkpoint.last_committed().unwrap_or(Some(0)).is_some();
    let set_aside = if had_logs {
        Some(checkpoint.set_logs_aside(&format!("replaced-{}", now_ms()))?)
    } else {
        None
    };

    let Some((&last, holders)) = by_batch.last_key_value() else {
        notes.push(format!(
            "no table holds a batch of pipeline `{}`: the checkpoint is empty, and the next run starts at source.starting_offsets",
            config.pipeline.id
        ));
        return Ok(RebuildReport {
            checkpoint: checkpoint.location().to_string(),
            set_aside,
            tables,
            committed: None,
            pending: None,
            notes,
        });
    };
    // Half-committed: some tables that hold batches do not hold the last.
    let writers = tables.values().filter(|t| t.is_some()).count();
    let pending = (holders.len() < writers).then_some(last);
    let last_committed = if pending.is_some() { last.checked_sub(1) } else { Some(last) };
    let first = *by_batch.keys().next().expect("not empty");
    if first > 0 {
        notes.push(format!("batches before {first} are no longer in the tables' logs (log cleanup): they are not in the rebuilt checkpoint"));
    }
    for (&n, holders) in &by_batch {
        let (_, c) = holders.iter().next().expect("held");
        let Some(ranges) = c.ranges.clone() else {
            return Err(RebuildError::Incomplete(format!(
                "the commit of batch {n} (Delta version {}) does not record its source ranges (made by an older sluice)",
                c.version
            )));
        };
        let planned_timestamp_ms = c.planned_timestamp_ms.unwrap_or_else(|| {
            notes.push(format!("batch {n} has no recorded planned timestamp: it cannot be replayed identically"));
            0
        });
        let planned = PlannedBatch {
            batch_id: n,
            planned_timestamp_ms,
            ranges,
            component_digest: c.component_digest.clone().unwrap_or_default(),
            config_digest: c.config_digest.clone().unwrap_or_default(),
            // A release batch says so in its commit (its ranges are old offsets).
            release: c.release.clone(),
        };
        checkpoint.record_planned(&planned)?;
        if last_committed.is_some_and(|l| n <= l) {
            checkpoint.record_committed(&CommittedBatch {
                batch_id: n,
                output_digest: c.output_digest.clone(),
                table_versions: holders.iter().map(|(t, c)| (t.clone(), c.version)).collect(),
                records: c.records.unwrap_or_default(),
                staged_rows: holders.iter().filter_map(|(t, c)| c.rows.map(|r| (t.clone(), r))).collect(),
                component_digest: c.component_digest.clone(),
                config_digest: c.config_digest.clone(),
            })?;
        }
    }
    rebuild_quarantine(config, &committer, &checkpoint, &by_batch, &mut notes)?;
    Ok(RebuildReport {
        checkpoint: checkpoint.location().to_string(),
        set_aside,
        tables,
        committed: last_committed.filter(|&l| l >= first).map(|l| (first, l)),
        pending,
        notes,
    })
}

/// The poison records batches set aside (`quarantine/N`), taken from the
/// quarantine table, which holds every one with its batch, error and
/// component: without them, a replay of such a batch would get every
/// record and differ. The search's run count is not in the table (0).
fn rebuild_quarantine(
    config: &PipelineConfig,
    committer: &DeltaCommitter,
    checkpoint: &Checkpoint,
    batches: &BTreeMap<u64, BTreeMap<String, BatchCommit>>,
    notes: &mut Vec<String>,
) -> Result<(), RebuildError> {
    use crate::pipeline::quarantine::{Decision, Excluded};
    let Some(q) = config.quarantine.as_ref().filter(|_| config.pipeline.on_poison == crate::config::OnPoison::Quarantine) else {
        return Ok(());
    };
    let sql = r#"SELECT batch_id, topic, "partition", "offset", error, component_digest FROM t ORDER BY batch_id, topic, "partition", "offset""#;
    let rows = match committer.query(&q.table, sql) {
        Ok(rows) => rows,
        Err(e) => {
            notes.push(format!(
                "the quarantine table `{}` could not be read ({e}): replays of batches that set records aside get every record",
                q.table
            ));
            return Ok(());
        }
    };
    let mut decisions: BTreeMap<u64, Decision> = BTreeMap::new();
    for r in rows {
        let (Some(n), Some(topic), Some(partition), Some(offset)) =
            (r["batch_id"].as_u64(), r["topic"].as_str(), r["partition"].as_i64(), r["offset"].as_i64())
        else {
            continue;
        };
        if !batches.contains_key(&n) {
            continue; // no longer in the tables' logs: not in the rebuilt checkpoint
        }
        let d = decisions.entry(n).or_insert_with(|| Decision {
            batch_id: n,
            component_digest: r["component_digest"].as_str().unwrap_or_default().to_owned(),
            excluded: Vec::new(),
            runs: 0,
        });
        d.excluded.push(Excluded {
            topic: topic.to_owned(),
            partition: partition as i32,
            offset,
            error: r["error"].as_str().unwrap_or_default().to_owned(),
        });
    }
    for d in decisions.values() {
        checkpoint.record_quarantine(d)?;
    }
    if !decisions.is_empty() {
        notes.push(format!(
            "the poison records set aside by {} batch(es) were taken from the quarantine table `{}`",
            decisions.len(),
            q.table
        ));
    }
    Ok(())
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rebuilt checkpoint {} from the tables' Delta logs",
            self.checkpoint
        )?;
        if let Some(aside) = &self.set_aside {
            writeln!(f, "  the old offsets/ and commits/ are kept in {aside}")?;
        }
        for (t, last) in &self.tables {
            writeln!(f, "  table {t}: {}", last.map_or("no batch".to_owned(), |b| format!("batches up to {b}")))?;
        }
        match self.committed {
            Some((a, b)) => writeln!(f, "  committed batches {a}..={b}")?,
            None => writeln!(f, "  no committed batch")?,
        }
        if let Some(p) = self.pending {
            writeln!(f, "  batch {p} is in some tables only: the next run finishes it as planned")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        writeln!(f, "  `sluice run` continues where the tables are")
    }
}
