//! The table is the truth; the checkpoint is its index. This module checks
//! the two agree when a pipeline starts, and says what to heal.
//!
//! Every table records, per batch, `txn(app, N)` and in its commit metadata
//! the ranges and output digest of N. At start, each table's last batch `h`
//! is compared with the checkpoint (last committed batch `C`, planned and
//! uncommitted batches `C+1`, `C+2`):
//!
//! ```text
//!   h > last planned            → TableAhead: stop (a lost, moved or older checkpoint,
//!                                 or another deployment with the same pipeline.id)
//!   h = C, or h pending         → its commit must record offsets/h's ranges (and, for C,
//!                                 commits/C's digest), else TableDisagrees: stop
//!   h < C (the table held C)    → behind: batches h+1..=C are healed, re-run from their
//!                                 recorded plans with the component that committed them,
//!                                 and committed to that table only if the re-run's output
//!                                 digest equals the recorded one; else stop and say why
//!   no batch, not in commits/C  → a table added since: it starts at the next batch
//! ```
//!
//! Before every commit the committer makes the same check for the batch at
//! hand (see `commit`), at the cost of the txn version it reads anyway.
//! Nothing here skips, resets or guesses offsets.

use crate::checkpoint::{Checkpoint, CheckpointError, Resume};
use crate::commit::Holding;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The checkpoint and the tables disagree in a way sluice does not heal.
#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    /// A table holds a batch the checkpoint never planned.
    #[error(
        "table `{table}` (Delta version {version}) holds batch {holds} of pipeline `{pipeline}`, but the checkpoint \
         {checkpoint} {knows}: the table is ahead of the checkpoint (the checkpoint was lost, moved away or restored \
         from an older backup, or another deployment with the same pipeline.id writes this table). Nothing was run: \
         going on would skip or repeat records. If the tables are this pipeline's, rebuild the checkpoint from them \
         with `sluice checkpoint rebuild {config}`, then run again; if another deployment writes them, give this one \
         its own pipeline.id and tables"
    )]
    TableAhead {
        /// The table.
        table: String,
        /// Its Delta version.
        version: u64,
        /// The batch it holds.
        holds: i64,
        /// The pipeline id (the txn app id).
        pipeline: String,
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// What the checkpoint knows ("records no batch", "was planned up to batch 4").
        knows: String,
        /// The config file.
        config: String,
    },
    /// A table's commit of a batch records something else than the checkpoint.
    #[error(
        "table `{table}` (Delta version {version}) holds batch {batch} with {what}: the table and the checkpoint are of different runs (a checkpoint restored from another deployment, or a \
         table written by another pipeline with the same pipeline.id). Nothing was run. If the tables are right, \
         rebuild the checkpoint from them with `sluice checkpoint rebuild {config}`; otherwise restore the table from \
         a backup"
    )]
    TableDisagrees {
        /// The table.
        table: String,
        /// The Delta version of its commit of the batch.
        version: u64,
        /// The batch.
        batch: u64,
        /// What differs.
        what: String,
        /// The checkpoint file compared (`offsets/4`).
        file: String,
        /// The config file.
        config: String,
    },
    /// A table lost batches, and they cannot be re-run identically.
    #[error(
        "table(s) {tables} lost batch {batch} (the checkpoint records it committed) and it cannot be re-run to \
         restore it: {why}. Nothing of batch {batch} was written again. Restore the table(s) from a backup that \
         holds batch {batch}{hint}"
    )]
    CannotHeal {
        /// The tables behind.
        tables: String,
        /// The first batch that cannot be healed.
        batch: u64,
        /// Why.
        why: String,
        /// What else would restore it.
        hint: String,
    },
}

/// A committed batch some tables lost: re-run it for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heal {
    /// The batch.
    pub batch_id: u64,
    /// The tables to commit it to.
    pub tables: BTreeSet<String>,
}

/// Compare each table with the checkpoint (see the module rules). Returns
/// the batches to heal, oldest first.
pub fn check(
    checkpoint: &Checkpoint,
    resume: &Resume,
    tables: &BTreeMap<String, Holding>,
    pipeline: &str,
    config: &str,
) -> Result<Vec<Heal>, AgreementError> {
    let committed = resume.last_committed.as_ref();
    let last_committed = committed.map(|c| c.batch_id as i64);
    let last_planned = resume.pending.last().map(|p| p.batch_id as i64).or(last_committed);
    let mut heals: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (name, h) in tables {
        let Some(holds) = h.txn else {
            // Never written by this pipeline: a table added since the last
            // batch starts at the next one; one the last batch went to lost
            // everything.
            if let Some(c) = committed.filter(|c| c.table_versions.contains_key(name)) {
                for n in 0..=c.batch_id {
                    heals.entry(n).or_default().insert(name.clone());
                }
            }
            continue;
        };
        if last_planned.is_none_or(|p| holds > p) {
            let knows = match (last_planned, last_committed) {
                (None, _) => "records no batch".to_owned(),
                (Some(p), Some(c)) if p == c => format!("records batches up to {c}"),
                (Some(p), c) => format!(
                    "has batches planned up to {p} (committed: {})",
                    c.map_or("none".to_owned(), |c| format!("up to {c}"))
                ),
            };
            return Err(AgreementError::TableAhead {
                table: name.clone(),
                version: h.version,
                holds,
                pipeline: pipeline.to_owned(),
                checkpoint: checkpoint.location().to_string().into(),
                knows,
                config: config.to_owned(),
            });
        }
        // Its last batch must be the one the checkpoint planned (and, for
        // the last committed one, committed).
        if let Some(commit) = &h.commit {
            let n = holds as u64;
            let digest = committed.filter(|c| c.batch_id == n).map(|c| c.output_digest.as_str());
            let planned = checkpoint.planned(n).map_err(|e| cannot_read(name, n, e))?;
            if let Some(planned) = planned
                && let Some(what) = commit.differs_from(&planned.ranges, digest)
            {
                let file = if digest.is_some() && commit.ranges.as_deref() == Some(&planned.ranges[..]) {
                    format!("commits/{n}")
                } else {
                    format!("offsets/{n}")
                };
                let what = what.replace(" where this run has ", &format!(" where the checkpoint's {file} has "));
                return Err(AgreementError::TableDisagrees {
                    table: name.clone(),
                    version: commit.version,
                    batch: n,
                    what,
                    file,
                    config: config.to_owned(),
                });
            }
        }
        if let Some(c) = last_committed.filter(|&c| holds < c) {
            for n in holds + 1..=c {
                heals.entry(n as u64).or_default().insert(name.clone());
            }
        }
    }
    Ok(heals.into_iter().map(|(batch_id, tables)| Heal { batch_id, tables }).collect())
}

fn cannot_read(table: &str, n: u64, e: CheckpointError) -> AgreementError {
    AgreementError::CannotHeal {
        tables: format!("`{table}`"),
        batch: n,
        why: format!("its plan cannot be read: {e}"),
        hint: String::new(),
    }
}

/// `` `events`, `audit` `` for messages.
pub fn table_list(tables: &BTreeSet<String>) -> String {
    tables.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{CommittedBatch, PlannedBatch};
    use crate::commit::BatchCommit;
    use crate::source::records::SourceRange;

    fn ranges(n: u64) -> Vec<SourceRange> {
        vec![SourceRange { topic: "t".into(), partition: 0, start: n as i64 * 10, end: n as i64 * 10 + 10 }]
    }

    fn planned(n: u64) -> PlannedBatch {
        PlannedBatch {
            batch_id: n,
            planned_timestamp_ms: 1_700_000_000_000,
            ranges: ranges(n),
            component_digest: "c".repeat(64),
            config_digest: "f".repeat(64),
            release: None,
        }
    }

    fn committed(n: u64, tables: &[&str]) -> CommittedBatch {
        CommittedBatch {
            batch_id: n,
            output_digest: format!("{n}").repeat(64),
            table_versions: tables.iter().map(|t| ((*t).to_owned(), n + 1)).collect(),
            records: 10,
            staged_rows: BTreeMap::new(),
            component_digest: None,
            config_digest: None,
        }
    }

    /// A table holding batch `n` (its commit recording `ranges` and `digest`).
    fn holding(n: Option<i64>, ranges: Vec<SourceRange>, digest: String) -> Holding {
        let commit = n.map(|n| BatchCommit {
            version: n as u64 + 1,
            batch_id: n as u64,
            output_digest: digest,
            ranges: Some(ranges),
            planned_timestamp_ms: None,
            component_digest: None,
            config_digest: None,
            records: None,
            rows: None,
            release: None,
        });
        Holding { version: n.map_or(0, |n| n as u64 + 1), txn: n, commit }
    }

    fn right(n: i64) -> Holding {
        holding(Some(n), ranges(n as u64), format!("{n}").repeat(64))
    }

    /// A checkpoint with batches 0..=2 committed to `events` and `audit`,
    /// and batch 3 planned.
    fn checkpoint() -> (tempfile::TempDir, Checkpoint, Resume) {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        for n in 0..=2 {
            cp.record_planned(&planned(n)).unwrap();
            cp.record_committed(&committed(n, &["audit", "events"])).unwrap();
        }
        cp.record_planned(&planned(3)).unwrap();
        let resume = cp.resume().unwrap();
        (dir, cp, resume)
    }

    fn check_tables(cp: &Checkpoint, resume: &Resume, tables: Vec<(&str, Holding)>) -> Result<Vec<Heal>, AgreementError> {
        let tables = tables.into_iter().map(|(t, h)| (t.to_owned(), h)).collect();
        check(cp, resume, &tables, "p", "pipeline.toml")
    }

    #[test]
    fn tables_at_the_last_batch_or_a_planned_one_agree() {
        let (_dir, cp, resume) = checkpoint();
        let tables = vec![("audit", right(2)), ("events", right(3)), ("new", holding(None, vec![], String::new()))];
        assert_eq!(check_tables(&cp, &resume, tables).unwrap(), vec![], "a table added since starts at the next batch");
    }

    #[test]
    fn a_table_behind_is_healed_batch_by_batch() {
        let (_dir, cp, resume) = checkpoint();
        let heals = check_tables(&cp, &resume, vec![("audit", right(0)), ("events", holding(None, vec![], String::new()))]).unwrap();
        let heal = |n, tables: &[&str]| Heal { batch_id: n, tables: tables.iter().map(|t| (*t).to_owned()).collect() };
        assert_eq!(heals, vec![heal(0, &["events"]), heal(1, &["audit", "events"]), heal(2, &["audit", "events"])]);
    }

    #[test]
    fn a_table_ahead_of_the_checkpoint_stops_naming_table_version_and_batch() {
        let (_dir, cp, resume) = checkpoint();
        let err = check_tables(&cp, &resume, vec![("audit", right(2)), ("events", right(4))]).unwrap_err().to_string();
        assert!(err.starts_with("table `events` (Delta version 5) holds batch 4 of pipeline `p`, but the checkpoint"), "{err}");
        assert!(err.contains("has batches planned up to 3 (committed: up to 2): the table is ahead"), "{err}");
        assert!(err.contains("`sluice checkpoint rebuild pipeline.toml`"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(empty.path()).unwrap();
        let err = check_tables(&cp, &cp.resume().unwrap(), vec![("events", right(0))]).unwrap_err().to_string();
        assert!(err.contains("records no batch: the table is ahead of the checkpoint"), "{err}");
    }

    #[test]
    fn a_table_recording_other_ranges_or_another_digest_stops() {
        let (_dir, cp, resume) = checkpoint();
        let err = check_tables(&cp, &resume, vec![("events", holding(Some(2), ranges(7), "2".repeat(64)))]).unwrap_err().to_string();
        assert!(
            err.starts_with("table `events` (Delta version 3) holds batch 2 with source ranges t/0 70..80 where the checkpoint's offsets/2 has t/0 20..30"),
            "{err}"
        );
        let err = check_tables(&cp, &resume, vec![("events", holding(Some(2), ranges(2), "e".repeat(64)))]).unwrap_err().to_string();
        assert!(err.contains("holds batch 2 with output digest eeeeeeeeeeeeeeee where the checkpoint's commits/2 has 2222222222222222"), "{err}");
        let err = check_tables(&cp, &resume, vec![("events", holding(Some(3), ranges(9), String::new()))]).unwrap_err().to_string();
        assert!(err.contains("holds batch 3 with source ranges t/0 90..100 where the checkpoint's offsets/3 has t/0 30..40"), "{err}");
    }
}
