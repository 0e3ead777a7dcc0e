//! The checkpoint: a write-ahead log of planned batches and a log of
//! committed ones, in a directory owned by one `sluice` process at a time.
//!
//! Guarantees:
//! - `offsets/N` (the plan of batch N: ranges, digests, seed, timestamp) is
//!   durable before the sink runs N. A crash after it re-runs N with exactly
//!   these ranges; a batch is never re-planned.
//! - `commits/N` is written only after the batch output is in the tables,
//!   and after `commits/N-1`.
//! - At most two batches are planned and not committed: the pipeline plans
//!   and runs batch N+1 while batch N commits (never further ahead, so a
//!   restart has at most two batches to finish, in order).
//! - Every file is written to a temporary name, fsynced, renamed into place
//!   and its directory fsynced, so a crash leaves the old file or the new
//!   one, never a torn one. Each file carries a SHA-256 of its body; a file
//!   that fails the check stops the pipeline with the file named. Offsets
//!   are never reset, skipped or guessed.
//!
//! ```text
//!   offsets/N written ──► sink runs ──► tables committed ──► commits/N written
//!                                      offsets/N+1 written ──► sink runs ──► …
//!   restart: last offsets == last commit          → plan the next batch
//!            last offsets == last commit + 1 or 2 → re-run those batches as planned
//!            anything else                         → error, naming the files
//! ```
//!
//! The layout is one small file per key, so an object store with
//! put-if-absent can replace the directory later.

pub mod attempt_log;
#[cfg(test)]
mod file_fuzz;
pub mod rebuild;
pub mod retention;

use crate::source::records::SourceRange;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How many batches may be planned and not yet committed: the one
/// committing and the next one, running meanwhile.
pub const MAX_UNCOMMITTED: u64 = 2;

/// The first line of every checkpoint file names its format.
const MAGIC: &str = "sluice-checkpoint/1";

/// Why the checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is damaged or inconsistent with the others.
    #[error(
        "checkpoint file {path} is corrupt: {reason}. sluice will not guess offsets: rebuild the checkpoint \
         from the tables with `sluice checkpoint rebuild` and the pipeline's config (the tables record every \
         batch they hold), or restore the file from a backup. Do not move the checkpoint away to start over \
         while the tables hold batches: a new checkpoint would be behind them"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process owns the checkpoint.
    #[error(
        "checkpoint {dir} is in use by another sluice process{holder}; \
         only one `sluice run` may own a checkpoint"
    )]
    Locked {
        /// The checkpoint directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
}

/// Result type of checkpoint operations.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// The plan of one batch: `offsets/N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBatch {
    /// Batch id.
    pub batch_id: u64,
    /// Planned timestamp, ms since the Unix epoch (the sink's clock).
    pub planned_timestamp_ms: i64,
    /// The source ranges.
    pub ranges: Vec<SourceRange>,
    /// SHA-256 of the sink component the batch was planned with.
    pub component_digest: String,
    /// SHA-256 of the pipeline config the batch was planned with.
    pub config_digest: String,
}

/// A committed batch: `commits/N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBatch {
    /// Batch id.
    pub batch_id: u64,
    /// Digest of the batch output that was committed.
    pub output_digest: String,
    /// Table → Delta version that holds this batch's output.
    pub table_versions: BTreeMap<String, u64>,
    /// Records delivered to the sink (0 when found already committed).
    #[serde(default)]
    pub records: u64,
    /// Table → rows the sink staged for it (empty when found already committed).
    #[serde(default)]
    pub staged_rows: BTreeMap<String, u64>,
    /// SHA-256 of the component whose output was committed (it may differ
    /// from the one the batch was planned with, if it changed before any
    /// table held the batch). `None` in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_digest: Option<String>,
    /// The config digest the committed output ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
}

/// Where a restarted pipeline stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last committed batch, if any.
    pub last_committed: Option<CommittedBatch>,
    /// Planned batches not committed yet, oldest first (at most
    /// [`MAX_UNCOMMITTED`]): re-run them as planned, in order.
    pub pending: Vec<PlannedBatch>,
}

/// An open checkpoint directory, exclusively owned while this value lives.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    // Holding the file holds the lock; the OS drops it if the process dies.
    // `None` for a read-only view.
    lock: Option<File>,
}

#[derive(Clone, Copy)]
enum Log {
    Offsets,
    Commits,
}

impl Log {
    fn name(self) -> &'static str {
        match self {
            Log::Offsets => "offsets",
            Log::Commits => "commits",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

impl Checkpoint {
    /// Open (creating if needed) the checkpoint in `dir` and take ownership
    /// of it. Fails if another process owns it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for log in [Log::Offsets, Log::Commits] {
            let d = dir.join(log.name());
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let lock_path = dir.join("lock");
        let mut lock = File::options().create(true).truncate(false).read(true).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path).ok().filter(|p| !p.trim().is_empty());
                return Err(CheckpointError::Locked {
                    dir,
                    holder: holder.map(|p| format!(" (pid {})", p.trim())).unwrap_or_default(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        lock.set_len(0).and_then(|()| write!(lock, "{}", std::process::id())).map_err(io_err(&lock_path))?;
        // Temporary files of a writer that died mid-write: never renamed,
        // so never part of the checkpoint.
        for log in [Log::Offsets, Log::Commits] {
            let d = dir.join(log.name());
            for entry in std::fs::read_dir(&d).map_err(io_err(&d))?.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    std::fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                }
            }
        }
        Ok(Self { dir, lock: Some(lock) })
    }

    /// Open an existing checkpoint to read it (`sluice status`), without
    /// taking ownership: a running pipeline may be writing it meanwhile.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for log in [Log::Offsets, Log::Commits] {
            let d = dir.join(log.name());
            std::fs::metadata(&d).map_err(io_err(&d))?;
        }
        Ok(Self { dir, lock: None })
    }

    /// Keep a copy of the component batches are planned with, named by its
    /// digest, so a batch can be replayed or exported with the code that
    /// ran it after the config points elsewhere.
    pub fn keep_component(&self, digest: &str, component: &Path) -> Result<()> {
        let path = self.component(digest);
        if path.exists() {
            return Ok(());
        }
        let dir = self.dir.join("components");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(".{digest}.tmp{}", std::process::id()));
        std::fs::copy(component, &tmp).map_err(io_err(component))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Where the component with `digest` is kept (it may not be).
    pub fn component(&self, digest: &str) -> PathBuf {
        self.dir.join("components").join(format!("{digest}.wasm"))
    }

    /// The pid of the process owning the checkpoint in `dir`, if one does.
    pub fn owner(dir: &Path) -> Option<u32> {
        let path = dir.join("lock");
        let file = File::open(&path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
        }
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durably record the plan of a batch. Call before running its sink.
    pub fn record_planned(&self, batch: &PlannedBatch) -> Result<()> {
        self.write(Log::Offsets, batch.batch_id, batch)
    }

    /// Durably record that a batch is committed. Call after the tables.
    pub fn record_committed(&self, batch: &CommittedBatch) -> Result<()> {
        self.write(Log::Commits, batch.batch_id, batch)
    }

    /// The plan of batch `n`, if recorded.
    pub fn planned(&self, n: u64) -> Result<Option<PlannedBatch>> {
        self.read(Log::Offsets, n)
    }

    /// The commit record of batch `n`, if recorded.
    pub fn committed(&self, n: u64) -> Result<Option<CommittedBatch>> {
        self.read(Log::Commits, n)
    }

    /// Where to resume after a restart. Checks that the two logs agree.
    pub fn resume(&self) -> Result<Resume> {
        let last_planned = self.last(Log::Offsets)?;
        let last_committed = self.last(Log::Commits)?;
        let corrupt = |log: Log, n: u64, reason: String| CheckpointError::Corrupt { path: self.path(log, n), reason };
        let Some(p) = last_planned else {
            return match last_committed {
                None => Ok(Resume { last_committed: None, pending: Vec::new() }),
                Some(c) => Err(corrupt(Log::Commits, c, format!("batch {c} is committed but offsets/{c} is missing"))),
            };
        };
        if let Some(c) = last_committed.filter(|&c| c > p) {
            return Err(corrupt(Log::Commits, c, format!("batch {c} is committed but the last planned batch is {p}")));
        }
        // Batch ids are dense from 0: the uncommitted plans are the next ones.
        let first_pending = last_committed.map_or(0, |c| c + 1);
        if p + 1 - first_pending > MAX_UNCOMMITTED {
            return Err(corrupt(
                Log::Offsets,
                p,
                format!(
                    "batch {p} is planned but the last committed batch is {}; a pipeline plans at most one batch \
                     ahead of the one committing",
                    last_committed.map_or("none".to_owned(), |c| c.to_string())
                ),
            ));
        }
        let last_committed_record = last_committed.map(|c| self.committed(c)).transpose()?.flatten();
        let mut pending = Vec::new();
        for n in first_pending..=p {
            let planned = self.planned(n)?.ok_or_else(|| {
                corrupt(Log::Offsets, n, format!("batch {p} is planned but offsets/{n}, the batch before it, is missing"))
            })?;
            pending.push(planned);
        }
        Ok(Resume { last_committed: last_committed_record, pending })
    }

    /// Move the offset and commit logs into `<dir>/<name>/` (kept, never
    /// deleted) and start them empty, for `sluice checkpoint rebuild`.
    pub fn set_logs_aside(&self, name: &str) -> Result<PathBuf> {
        let aside = self.dir.join(name);
        std::fs::create_dir_all(&aside).map_err(io_err(&aside))?;
        for log in [Log::Offsets, Log::Commits] {
            let (from, to) = (self.dir.join(log.name()), aside.join(log.name()));
            std::fs::rename(&from, &to).map_err(io_err(&from))?;
            std::fs::create_dir_all(&from).map_err(io_err(&from))?;
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        Ok(aside)
    }

    /// The highest planned batch id, if any.
    pub fn last_planned(&self) -> Result<Option<u64>> {
        self.last(Log::Offsets)
    }

    /// The highest committed batch id, if any.
    pub fn last_committed(&self) -> Result<Option<u64>> {
        self.last(Log::Commits)
    }

    fn path(&self, log: Log, n: u64) -> PathBuf {
        self.dir.join(log.name()).join(n.to_string())
    }

    /// The highest batch id in a log.
    fn last(&self, log: Log) -> Result<Option<u64>> {
        let dir = self.dir.join(log.name());
        let mut last = None;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // a temporary file left by a crash mid-write
            }
            let Ok(n) = name.parse::<u64>() else {
                return Err(CheckpointError::Corrupt { path: entry.path(), reason: "unexpected file in the checkpoint".into() });
            };
            last = last.max(Some(n));
        }
        Ok(last)
    }

    fn write(&self, log: Log, n: u64, value: &impl Serialize) -> Result<()> {
        let path = self.path(log, n);
        if self.lock.is_none() {
            let denied = io::Error::new(io::ErrorKind::PermissionDenied, "the checkpoint is open read-only");
            return Err(io_err(&path)(denied));
        }
        let body = serde_json::to_string(value).expect("checkpoint records serialise");
        let text = format!("{MAGIC} sha256={}\n{body}\n", hex::encode(Sha256::digest(body.as_bytes())));
        write_durably(&path, text.as_bytes()).map_err(io_err(&path))
    }

    fn read<T: DeserializeOwned>(&self, log: Log, n: u64) -> Result<Option<T>> {
        let path = self.path(log, n);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.clone(), reason };
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
        let (header, body) = text.split_once('\n').ok_or_else(|| corrupt("no header line".into()))?;
        let body = body.strip_suffix('\n').unwrap_or(body);
        let expected = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.trim().strip_prefix("sha256="))
            .ok_or_else(|| corrupt(format!("the first line is not `{MAGIC} sha256=…`")))?;
        let actual = hex::encode(Sha256::digest(body.as_bytes()));
        if actual != expected {
            return Err(corrupt(format!("checksum mismatch (recorded {expected}, content hashes to {actual})")));
        }
        let value: T = serde_json::from_str(body).map_err(|e| corrupt(format!("unreadable record: {e}")))?;
        Ok(Some(value))
    }
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    crate::failpoint::hit("in-checkpoint-write");
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(n: u64) -> PlannedBatch {
        PlannedBatch {
            batch_id: n,
            planned_timestamp_ms: 1_700_000_000_000 + n as i64,
            ranges: vec![SourceRange { topic: "orders".into(), partition: 0, start: n as i64 * 10, end: n as i64 * 10 + 10 }],
            component_digest: "c".repeat(64),
            config_digest: "f".repeat(64),
        }
    }

    fn committed(n: u64) -> CommittedBatch {
        CommittedBatch {
            batch_id: n,
            output_digest: "d".repeat(64),
            table_versions: [("orders".to_owned(), n)].into(),
            records: 10,
            staged_rows: [("orders".to_owned(), 10)].into(),
            component_digest: Some("c".repeat(64)),
            config_digest: None,
        }
    }

    #[test]
    fn resume_follows_the_batch_life() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        assert_eq!(cp.resume().unwrap(), Resume { last_committed: None, pending: vec![] });
        cp.record_planned(&planned(0)).unwrap();
        assert_eq!(cp.resume().unwrap().pending, vec![planned(0)], "planned, not committed: re-run as planned");
        cp.record_committed(&committed(0)).unwrap();
        assert_eq!(cp.resume().unwrap(), Resume { last_committed: Some(committed(0)), pending: vec![] });
        cp.record_planned(&planned(1)).unwrap();
        drop(cp);
        // A restart sees the same thing.
        let cp = Checkpoint::open(tmp.path()).unwrap();
        assert_eq!(cp.resume().unwrap(), Resume { last_committed: Some(committed(0)), pending: vec![planned(1)] });
        // Batch 2 planned while batch 1 commits: both are re-run, in order.
        cp.record_planned(&planned(2)).unwrap();
        assert_eq!(cp.resume().unwrap().pending, vec![planned(1), planned(2)]);
        cp.record_committed(&committed(1)).unwrap();
        assert_eq!(cp.resume().unwrap().pending, vec![planned(2)]);
    }

    #[test]
    fn a_second_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Checkpoint::open(tmp.path()).unwrap();
        let err = Checkpoint::open(tmp.path()).unwrap_err();
        assert!(matches!(err, CheckpointError::Locked { .. }));
        assert!(
            err.to_string().ends_with(&format!(
                "is in use by another sluice process (pid {}); only one `sluice run` may own a checkpoint",
                std::process::id()
            )),
            "{err}"
        );
    }

    #[test]
    fn corruption_names_the_file_and_never_resets() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        cp.record_planned(&planned(0)).unwrap();
        cp.record_committed(&committed(0)).unwrap();
        let file = tmp.path().join("commits/0");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("\"orders\":0", "\"orders\":7")).unwrap();
        let err = cp.resume().unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("checkpoint file {} is corrupt: checksum mismatch", file.display())), "{msg}");
        assert!(msg.contains("rebuild the checkpoint from the tables with `sluice checkpoint rebuild`"), "{msg}");
        assert!(!msg.contains("to start over, move"), "never advises starting over with the tables kept: {msg}");
        std::fs::write(&file, "").unwrap();
        assert!(cp.committed(0).unwrap_err().to_string().contains("no header line"));
    }

    #[test]
    fn inconsistent_logs_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        cp.record_planned(&planned(3)).unwrap();
        let err = cp.resume().unwrap_err().to_string();
        assert!(err.contains("batch 3 is planned but the last committed batch is none; a pipeline plans at most one batch ahead"), "{err}");
        cp.record_committed(&committed(1)).unwrap();
        let err = cp.resume().unwrap_err().to_string();
        assert!(err.contains("batch 3 is planned but offsets/2, the batch before it, is missing"), "{err}");
        std::fs::remove_file(tmp.path().join("commits/1")).unwrap();
        cp.record_committed(&committed(4)).unwrap();
        let err = cp.resume().unwrap_err().to_string();
        assert!(err.contains("batch 4 is committed but the last planned batch is 3"), "{err}");
    }

    #[test]
    fn leftover_temporary_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(tmp.path()).unwrap();
        cp.record_planned(&planned(0)).unwrap();
        std::fs::write(tmp.path().join("offsets/.1.tmp999"), "half a write").unwrap();
        assert_eq!(cp.resume().unwrap().pending, vec![planned(0)]);
        drop(cp);
        let cp = Checkpoint::open(tmp.path()).unwrap();
        assert!(!tmp.path().join("offsets/.1.tmp999").exists(), "the next owner removes them");
        assert_eq!(cp.resume().unwrap().pending, vec![planned(0)]);
    }
}
