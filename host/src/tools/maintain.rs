//! `sluice maintain pipeline.toml`: every table maintenance step now, on
//! demand (log checkpoint and cleanup, compaction of small files, VACUUM),
//! with the same rules as the maintenance a running pipeline does between
//! its commits (see `commit::maintenance`).
//!
//! It takes ownership of the checkpoint first, so it never runs beside a
//! `sluice run` of the pipeline: against a local checkpoint it is refused
//! while one runs; against a remote one it is refused while the lease is
//! being renewed (and, having taken it, it fences the tables like a new
//! owner). Tables that do not exist yet are left alone.

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::commit::maintenance::Maintained;
use crate::commit::{CommitError, DeltaCommitter};
use crate::config::PipelineConfig;
use serde::Serialize;
use std::fmt;

/// What `sluice maintain` did.
#[derive(Debug, Clone, Serialize)]
pub struct MaintainReport {
    /// Steps that ran.
    pub done: Vec<Maintained>,
    /// Steps that failed: (table, step, error).
    pub failed: Vec<(String, String, String)>,
}

/// `sluice maintain` could not start.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The checkpoint is in use or unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The tables could not be opened or fenced.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Run every maintenance step on every existing table of `config`.
pub fn maintain(config: &PipelineConfig) -> Result<MaintainReport, MaintainError> {
    let checkpoint = Checkpoint::open_at(&config.checkpoint_place(), false, &mut |_| {})?;
    let existing: Vec<_> = DeltaCommitter::new(&config.pipeline.id, config.resolved_tables())
        .map_err(CommitError::Io)?
        .describe()
        .into_iter()
        .filter(|(_, state)| matches!(state, Ok(Some(_))))
        .map(|(name, _)| name)
        .collect();
    let tables = config.resolved_tables().into_iter().filter(|t| existing.contains(&t.name)).collect();
    let committer = DeltaCommitter::new(&config.pipeline.id, tables).map_err(CommitError::Io)?.with_epoch(checkpoint.epoch());
    let guard = || checkpoint.check_owned().map_err(|e| e.to_string());
    let raise = |at_least| checkpoint.raise_epoch(at_least).map_err(|e| e.to_string());
    let (committer, _) = committer.take_over(&guard, &raise)?;
    let retained_since = || {
        let last = checkpoint.last_committed().ok().flatten()?;
        checkpoint.planned(config.retention.first_kept(last)).ok().flatten().map(|p| p.planned_timestamp_ms)
    };
    let (done, failed) = committer.maintain(true, &retained_since, &guard);
    let failed = failed.into_iter().map(|(t, step, e)| (t, step.to_owned(), e.to_string())).collect();
    Ok(MaintainReport { done, failed })
}

impl fmt::Display for MaintainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.done.is_empty() && self.failed.is_empty() {
            writeln!(f, "nothing to maintain: no table exists yet")?;
        }
        for m in &self.done {
            writeln!(f, "table {}: {}: {} ({} ms)", m.table, m.step, m.detail, m.ms)?;
        }
        for (table, step, e) in &self.failed {
            writeln!(f, "table {table}: {step} FAILED: {e}")?;
        }
        Ok(())
    }
}
