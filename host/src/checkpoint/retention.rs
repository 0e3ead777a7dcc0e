//! Retention: the checkpoint keeps a bounded history, never less than the
//! pipeline and its tools still need.
//!
//! What is kept, with `C` the last committed batch:
//! - `offsets/N` and `commits/N` for the last `retention.batches` committed
//!   batches (`N > C - retention.batches`), and every planned batch not yet
//!   committed (`N > C`, at most two). The plan of `C` is always kept: a
//!   restart continues from its ranges. `sluice replay --batch N`, `batch
//!   show`, `batch export` and `reconcile --last K` work for every kept batch,
//!   so `K ≤ retention.batches` is always checked in full.
//! - `attempts/` files holding any of the last `retention.attempt_batches`
//!   batches (a file holds 100 batches, so up to 99 more are kept).
//! - `components/<digest>.wasm` for every component a kept plan names, and
//!   the configured one: a kept batch replays with the code that ran it.
//!
//! Files fall out oldest first (commit record before plan), so what remains
//! is always a contiguous run of batches ending at the newest: a crash in
//! the middle of pruning leaves a few extra old files, removed by the next
//! sweep. Pruning is housekeeping: a file that cannot be removed is
//! reported, never fatal, and a plan that cannot be read keeps every
//! component (nothing is removed on a guess).

use crate::checkpoint::{Checkpoint, Log};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io;
use std::path::Path;

/// Batches per attempt log file (see `attempt_log`).
const BATCHES_PER_ATTEMPT_FILE: u64 = 100;

/// The `[retention]` table of a pipeline config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Committed batches whose plan and commit record are kept (at least 1).
    pub batches: u64,
    /// Batches whose attempt records (and sink log lines) are kept.
    pub attempt_batches: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { batches: 1000, attempt_batches: 1000 }
    }
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// `offsets/N` files.
    pub plans: u64,
    /// `commits/N` files.
    pub commits: u64,
    /// `attempts/*.jsonl` files.
    pub attempt_files: u64,
    /// `components/*.wasm` files.
    pub components: u64,
}

impl RetentionConfig {
    /// The oldest batch whose plan and commit record are kept.
    pub fn first_kept(&self, last_committed: u64) -> u64 {
        (last_committed + 1).saturating_sub(self.batches.max(1))
    }

    /// The oldest batch whose attempts are kept.
    fn first_attempts_kept(&self, last_committed: u64) -> u64 {
        (last_committed + 1).saturating_sub(self.attempt_batches)
    }

    /// Everything out of retention, checked file by file (at start, when the
    /// settings may have changed). `current_component` is never removed.
    pub fn sweep(&self, checkpoint: &Checkpoint, current_component: &str) -> io::Result<Pruned> {
        let mut pruned = Pruned::default();
        let Some(last) = checkpoint.last_committed().map_err(io::Error::other)? else { return Ok(pruned) };
        let first = self.first_kept(last);
        let mut old: BTreeSet<u64> = BTreeSet::new();
        for log in [Log::Commits, Log::Offsets] {
            old.extend(
                checkpoint
                    .batch_ids(log)?
                    .into_iter()
                    .filter(|&n| n < first),
            );
        }
        for n in old {
            pruned.commits += u64::from(checkpoint.remove(Log::Commits, n)?);
            pruned.plans += u64::from(checkpoint.remove(Log::Offsets, n)?);
            checkpoint.remove(Log::Quarantine, n)?;
        }
        let first_attempts = self.first_attempts_kept(last);
        let attempts = checkpoint.attempts_dir().join("attempts");
        for file in batch_files_with(&attempts, ".jsonl")? {
            if (file + 1) * BATCHES_PER_ATTEMPT_FILE <= first_attempts {
                pruned.attempt_files += remove(&attempts.join(format!("{file}.jsonl")))?;
            }
        }
        pruned.components = self.sweep_components(checkpoint, first, current_component)?;
        Ok(pruned)
    }

    /// After `commits/N`: remove what batch `N` pushed out of retention.
    /// Two removals at most per batch, off the sink's path.
    pub fn after_commit(&self, checkpoint: &Checkpoint, committed: u64) -> io::Result<Pruned> {
        let mut pruned = Pruned::default();
        if let Some(out) = self.first_kept(committed).checked_sub(1) {
            pruned.commits += u64::from(checkpoint.remove(Log::Commits, out)?);
            pruned.plans += u64::from(checkpoint.remove(Log::Offsets, out)?);
            checkpoint.remove(Log::Quarantine, out)?;
        }
        // The newest attempt file wholly before the first kept batch.
        if let Some(file) =
            (self.first_attempts_kept(committed) / BATCHES_PER_ATTEMPT_FILE).checked_sub(1)
        {
            pruned.attempt_files += remove(
                &checkpoint
                    .attempts_dir()
                    .join("attempts")
                    .join(format!("{file}.jsonl")),
            )?;
        }
        Ok(pruned)
    }

    /// Remove kept components that no kept plan names.
    fn sweep_components(
        &self,
        checkpoint: &Checkpoint,
        first: u64,
        current: &str,
    ) -> io::Result<u64> {
        let mut named = BTreeSet::from([current.to_owned()]);
        let last = checkpoint.last_planned().map_err(io::Error::other)?.unwrap_or(0);
        for n in first..=last {
            match checkpoint.planned(n) {
                Ok(Some(plan)) => {
                    named.insert(plan.component_digest);
                }
                Ok(None) => {}
                // Cannot tell what this plan needs: keep every component.
                Err(_) => return Ok(0),
            }
        }
        let mut removed = 0;
        for digest in checkpoint.kept_components()? {
            if !named.contains(&digest) {
                removed += u64::from(checkpoint.remove_component(&digest)?);
            }
        }
        Ok(removed)
    }
}

/// The numbers `N` of files named `N<suffix>` in `dir` (none if it is missing).
fn batch_files_with(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(suffix)).and_then(|n| n.parse().ok()) {
            ids.push(n);
        }
    }
    Ok(ids)
}

/// Remove a file; 1 if it was there.
fn remove(path: &Path) -> io::Result<u64> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::attempt_log::{self, AttemptRecord};
    use crate::checkpoint::{CommittedBatch, PlannedBatch};
    use crate::source::records::SourceRange;

    fn plan(n: u64, component: &str) -> PlannedBatch {
        PlannedBatch {
            batch_id: n,
            planned_timestamp_ms: n as i64,
            ranges: vec![SourceRange { topic: "t".into(), partition: 0, start: n as i64, end: n as i64 + 1 }],
            component_digest: component.repeat(64),
            config_digest: "f".repeat(64),
            release: None,
        }
    }

    fn commit(n: u64) -> CommittedBatch {
        CommittedBatch { batch_id: n, output_digest: "d".repeat(64), table_versions: Default::default(), records: 1, staged_rows: Default::default(), component_digest: None, config_digest: None }
    }

    fn ids(dir: &Path, log: &str) -> Vec<u64> {
        let mut v = batch_files_with(&dir.join(log), "").unwrap();
        v.sort_unstable();
        v
    }

    /// 30 batches committed with component `a` then `b`, one planned with
    /// `c` and not committed; keep 5.
    #[test]
    fn a_sweep_keeps_the_last_batches_the_pending_ones_and_their_components() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        let wasm = tmp.path().join("x.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        for (n, c) in (0..30).map(|n| (n, if n < 27 { "a" } else { "b" })) {
            cp.record_planned(&plan(n, c)).unwrap();
            cp.record_committed(&commit(n)).unwrap();
        }
        cp.record_planned(&plan(30, "c")).unwrap();
        for c in ["a", "b", "c", "e"] {
            cp.keep_component(&c.repeat(64), &wasm).unwrap();
        }
        attempt_log::write(tmp.path(), &AttemptRecord::started(3, 1, 0)).unwrap();
        let policy = RetentionConfig { batches: 5, attempt_batches: 1000 };
        let pruned = policy.sweep(&cp, &"e".repeat(64)).unwrap();
        assert_eq!(pruned, Pruned { plans: 25, commits: 25, attempt_files: 0, components: 0 });
        assert_eq!(ids(tmp.path(), "offsets"), (25..=30).collect::<Vec<_>>(), "the last 5 committed and the pending one");
        assert_eq!(ids(tmp.path(), "commits"), (25..30).collect::<Vec<_>>());
        let resume = cp.resume().unwrap();
        assert_eq!(
            (
                resume.last_committed.unwrap().batch_id,
                resume.pending.len()
            ),
            (29, 1),
            "a restart is unaffected"
        );
        assert_eq!(cp.first_retained_plan().unwrap(), Some(25));

        // Kept plans name `a` (25, 26), `b` and `c`; `e` is configured.
        let policy = RetentionConfig { batches: 2, attempt_batches: 1 };
        let pruned = policy.sweep(&cp, &"e".repeat(64)).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                plans: 3,
                commits: 3,
                attempt_files: 0,
                components: 1
            }
        );
        assert!(
            cp.component(&"a".repeat(64)).unwrap().is_none(),
            "no kept plan names `a`"
        );
        for c in ["b", "c", "e"] {
            assert!(
                cp.component(&c.repeat(64)).unwrap().is_some(),
                "component {c} is needed"
            );
        }
        assert_eq!(attempt_log::read(tmp.path(), 3).len(), 1, "its file also holds batch 29's attempts");
    }

    #[test]
    fn each_commit_pushes_out_exactly_the_oldest_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        let policy = RetentionConfig { batches: 3, attempt_batches: 100 };
        for n in 0..250 {
            cp.record_planned(&plan(n, "a")).unwrap();
            attempt_log::write(tmp.path(), &AttemptRecord::started(n, 1, 0)).unwrap();
            cp.record_committed(&commit(n)).unwrap();
            policy.after_commit(&cp, n).unwrap();
            let first = n.saturating_sub(2);
            assert_eq!(ids(tmp.path(), "offsets"), (first..=n).collect::<Vec<_>>(), "after batch {n}");
            assert_eq!(ids(tmp.path(), "commits"), (first..=n).collect::<Vec<_>>(), "after batch {n}");
        }
        // Batch 249 keeps attempts from 150 on: file 1 (100..199) stays.
        assert_eq!(batch_files_with(&tmp.path().join("attempts"), ".jsonl").unwrap().len(), 2);
        assert_eq!(policy.sweep(&cp, &"a".repeat(64)).unwrap(), Pruned::default(), "nothing left to sweep");
    }

    #[test]
    fn a_checkpoint_without_commits_keeps_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        cp.record_planned(&plan(0, "a")).unwrap();
        let policy = RetentionConfig { batches: 1, attempt_batches: 0 };
        assert_eq!(policy.sweep(&cp, "").unwrap(), Pruned::default());
        assert_eq!(ids(tmp.path(), "offsets"), [0]);
        assert_eq!(policy.first_kept(0), 0, "the last committed plan is always kept");
        assert_eq!(RetentionConfig { batches: 0, ..Default::default() }.first_kept(9), 9);
    }
}
