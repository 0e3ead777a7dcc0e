//! Table maintenance by the table's only streaming writer, between its own
//! commits: Delta log checkpoints, cleanup of expired log files, compaction
//! of small files (OPTIMIZE, bin-packing) and VACUUM.
//!
//! Guarantees:
//! - **No conflict with the stream.** Maintenance runs on the commit thread
//!   after a batch's `commits/N` and before the next batch commits, so no
//!   Delta commit of sluice's ever races one of its own maintenance
//!   commits: the conflicts compaction is known for (a MERGE reading files
//!   an OPTIMIZE removed) cannot happen. The next batch's sink runs
//!   meanwhile, so a compaction shorter than a batch costs no latency; a
//!   longer one delays only the next commit, by its duration, which the
//!   progress line reports.
//! - **Compaction changes no rows**: its commit is Delta's OPTIMIZE (files
//!   removed and added with `dataChange: false`), recorded with the
//!   pipeline id in `commitInfo.sluice`, so `reconcile` and the txn checks
//!   count it as zero rows and the table's `txn(app, N)` is unchanged.
//! - **VACUUM never removes what a retained batch needs**: the retention is
//!   the larger of `vacuum_retention_hours` and the age of the oldest batch
//!   the checkpoint retains, so `replay` and time travel of every retained
//!   batch keep their files.
//! - Each step checks ownership first (the lease), like a batch commit.
//! - A failed step is reported and tried again when next due; it never
//!   fails a batch.

use serde::{Deserialize, Serialize};

/// `[tables.maintenance]`: each step can be switched off (0 or `false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Write a Delta log checkpoint every this many versions (0: never).
    /// Without them, loading a table reads every commit file since the last
    /// one: slower and slower as the log grows.
    pub checkpoint_interval: u64,
    /// After each checkpoint, delete log files older than the table's
    /// `delta.logRetentionDuration` (Delta's default: 30 days).
    pub log_cleanup: bool,
    /// Compact when the table has at least this many files smaller than
    /// `target_file_bytes` (0: never).
    pub compact_min_files: u64,
    /// The size compaction bin-packs files to.
    pub target_file_bytes: u64,
    /// VACUUM every this many versions (0: never).
    pub vacuum_interval: u64,
    /// Files removed longer ago than this are deleted by VACUUM (never less
    /// than the age of the oldest batch the checkpoint retains).
    pub vacuum_retention_hours: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: 100,
            log_cleanup: true,
            compact_min_files: 64,
            target_file_bytes: 128 << 20,
            vacuum_interval: 1000,
            vacuum_retention_hours: 168,
        }
    }
}

/// One maintenance step that ran on one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maintained {
    /// The table.
    pub table: String,
    /// What ran: `checkpoint`, `log cleanup`, `compaction`, `vacuum`.
    pub step: &'static str,
    /// What it did, in words (`12 files into 1`, `3 log files deleted`).
    pub detail: String,
    /// How long it took, in ms.
    pub ms: u64,
}

/// Which steps are due on a table that went from version `before` to
/// `after` since the last look, with `small_files` files below the target.
pub fn due(config: &MaintenanceConfig, before: u64, after: u64, small_files: u64) -> Due {
    let crossed = |every: u64| every > 0 && after / every > before / every;
    Due {
        compaction: config.compact_min_files > 0 && small_files >= config.compact_min_files,
        vacuum: crossed(config.vacuum_interval),
        checkpoint: crossed(config.checkpoint_interval),
    }
}

/// The steps [`due`] found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// OPTIMIZE.
    pub compaction: bool,
    /// VACUUM.
    pub vacuum: bool,
    /// A log checkpoint (and then log cleanup, if on).
    pub checkpoint: bool,
}

impl Due {
    /// Every step, now (`sluice maintain`).
    pub const ALL: Due = Due { compaction: true, vacuum: true, checkpoint: true };

    /// Whether anything is due.
    pub fn any(self) -> bool {
        self.compaction || self.vacuum || self.checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_fall_due_at_their_intervals_and_thresholds() {
        let c = MaintenanceConfig { checkpoint_interval: 100, compact_min_files: 10, vacuum_interval: 1000, ..Default::default() };
        assert_eq!(due(&c, 98, 99, 9), Due::default());
        assert_eq!(due(&c, 99, 100, 9), Due { checkpoint: true, ..Due::default() });
        // A maintenance commit in between may skip the multiple itself.
        assert_eq!(due(&c, 199, 201, 10), Due { checkpoint: true, compaction: true, ..Due::default() });
        assert_eq!(due(&c, 999, 1000, 0), Due { checkpoint: true, vacuum: true, ..Due::default() });
        let off = MaintenanceConfig { checkpoint_interval: 0, compact_min_files: 0, vacuum_interval: 0, ..Default::default() };
        assert!(!due(&off, 0, 100_000, 100_000).any());
    }
}
