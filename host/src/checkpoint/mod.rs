//! The checkpoint: a write-ahead log of planned batches and a log of
//! committed ones, in a local directory or an object-store prefix, owned by
//! one `sluice` process at a time.
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
//! - `offsets/N` and `commits/N` are created, never overwritten ([`store`]:
//!   hard link locally, `If-None-Match: *` in an object store), so two
//!   processes can never both write a plan for N; the one that finds the
//!   file there is told it lost ownership. (A healed batch's commit record
//!   is the one file rewritten, by its owner.) A crash leaves the old file
//!   or the new one, never a torn one. Each file carries a SHA-256 of its
//!   body; a file that fails the check stops the pipeline with the file
//!   named. Offsets are never reset, skipped or guessed.
//! - Ownership: a local checkpoint is owned through an OS file lock (it
//!   dies with the process); one in object storage through a [`lease`]
//!   with an epoch, which every write checks first.
//!
//! ```text
//!   offsets/N written ──► sink runs ──► tables committed ──► commits/N written
//!                                      offsets/N+1 written ──► sink runs ──► …
//!   restart: last offsets == last commit          → plan the next batch
//!            last offsets == last commit + 1 or 2 → re-run those batches as planned
//!            anything else                         → error, naming the files
//! ```
//!
//! What lives where: `offsets/`, `commits/`, the `lease` and kept
//! `components/` are in the checkpoint itself, local or remote. Attempt
//! records (`attempts/`, diagnostics appended per attempt) stay on local
//! disk: in the checkpoint directory when it is local, in the pipeline's
//! cache directory when the checkpoint is remote (object stores cannot
//! append, and nothing depends on them for correctness).

pub mod attempt_log;
#[cfg(test)]
mod file_fuzz;
pub mod lease;
pub mod rebuild;
pub mod retention;
pub mod store;

use crate::source::records::SourceRange;
use crate::storage::blobs::Blobs;
use crate::storage::{Location, StorageOptions};
use lease::{Lease, LeaseRecord, OnStandby};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::Store;

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
        /// The file or directory (a URL for object storage).
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
    /// This process owned the checkpoint and does not any more: it must
    /// write nothing else.
    #[error(
        "lost the lease on checkpoint {checkpoint} (epoch {epoch}): {why}. Another sluice process owns the pipeline \
         now; this one stops without committing anything more (nothing is lost: the owner continues where the \
         tables are)"
    )]
    LeaseLost {
        /// The checkpoint's URL.
        checkpoint: String,
        /// The epoch this process held.
        epoch: u64,
        /// What happened.
        why: String,
    },
}

/// Result type of checkpoint operations.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Where a checkpoint is and how to reach it.
#[derive(Debug, Clone)]
pub struct Place {
    /// The checkpoint itself.
    pub location: Location,
    /// Object-store options (the pipeline's `storage_options`).
    pub options: StorageOptions,
    /// Local directory for attempt records and fetched components when
    /// the checkpoint is remote (the pipeline's cache directory).
    pub local: PathBuf,
    /// The lease length, for a remote checkpoint.
    pub lease_ms: u64,
}

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
    /// Set when the batch re-processes records an earlier batch set aside
    /// as poison (`sluice quarantine release`): its ranges are those
    /// records' offsets, read again, so the stream does not continue after
    /// them but where `resume_at` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

/// What a release batch re-processes, and where the stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The batch whose poison records these are.
    pub of_batch: u64,
    /// Each partition's end before the release: the next plan starts here.
    pub resume_at: Vec<(String, i32, i64)>,
}

impl PlannedBatch {
    /// Where each partition stands once this batch is done: the end of its
    /// ranges, or for a release batch, where the stream stood before it.
    pub fn ends(&self) -> BTreeMap<(String, i32), i64> {
        match &self.release {
            Some(r) => r.resume_at.iter().map(|(t, p, e)| ((t.clone(), *p), *e)).collect(),
            None => self.ranges.iter().map(|r| ((r.topic.clone(), r.partition), r.end)).collect(),
        }
    }
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

/// Who owns a checkpoint, seen from outside (`sluice status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A local process holds the file lock.
    Pid(u32),
    /// The lease in object storage (possibly expired or released).
    Lease(LeaseRecord),
}

/// How this process holds the checkpoint.
#[derive(Debug)]
enum Ownership {
    /// A read-only view.
    None,
    /// Holding the file holds the lock; the OS drops it if the process dies.
    FileLock(#[allow(dead_code)] File),
    /// A lease in the object store.
    Lease(Lease),
}

/// An open checkpoint, exclusively owned while this value lives (unless
/// opened read-only).
#[derive(Debug)]
pub struct Checkpoint {
    location: Location,
    store: Store,
    /// Where attempt records (and fetched components) go.
    local: PathBuf,
    ownership: Ownership,
}

/// The two logs.
#[derive(Clone, Copy)]
pub enum Log {
    /// `offsets/N`: plans.
    Offsets,
    /// `commits/N`: commit records.
    Commits,
    /// `quarantine/N`: the poison records set aside from batch N, decided
    /// before its commit (`pipeline::quarantine`).
    Quarantine,
}

impl Log {
    fn name(self) -> &'static str {
        match self {
            Log::Offsets => "offsets",
            Log::Commits => "commits",
            Log::Quarantine => "quarantine",
        }
    }
}

impl Checkpoint {
    /// Open (creating if needed) the local checkpoint in `dir` and take
    /// ownership of it. Fails if another process owns it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Io { path, source }
        };
        for log in [Log::Offsets, Log::Commits, Log::Quarantine] {
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
        lock.set_len(0)
            .and_then(|()| write!(lock, "{}", std::process::id()))
            .map_err(io_err(&lock_path))?;
        // Temporary files of a writer that died mid-write: never linked or
        // renamed into place, so never part of the checkpoint.
        for log in [Log::Offsets, Log::Commits, Log::Quarantine] {
            let d = dir.join(log.name());
            for entry in std::fs::read_dir(&d).map_err(io_err(&d))?.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    std::fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                }
            }
        }
        Ok(Self {
            location: Location::Local(dir.clone()),
            store: Store::Local(dir.clone()),
            local: dir,
            ownership: Ownership::FileLock(lock),
        })
    }

    /// Open the checkpoint at `place` and take ownership: the file lock of
    /// a local one, or the lease of a remote one. With `standby`, wait while
    /// a live process holds the lease (`on_standby` is told who); without,
    /// refuse as for a local lock.
    pub fn open_at(place: &Place, standby: bool, on_standby: OnStandby<'_>) -> Result<Self> {
        match &place.location {
            Location::Local(dir) => Self::open(dir.clone()),
            Location::Remote(url) => {
                let blobs = Arc::new(Self::blobs(place, url)?);
                let lease = Lease::acquire(blobs.clone(), place.lease_ms, standby, on_standby)?;
                Ok(Self {
                    location: place.location.clone(),
                    store: Store::Remote(blobs),
                    local: place.local.clone(),
                    ownership: Ownership::Lease(lease),
                })
            }
        }
    }

    fn blobs(place: &Place, url: &url::Url) -> Result<Blobs> {
        Blobs::open(url, &place.options).map_err(|source| CheckpointError::Io {
            path: url.to_string().into(),
            source,
        })
    }

    /// Open an existing local checkpoint to read it (`sluice status`),
    /// without taking ownership: a running pipeline may be writing it
    /// meanwhile.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for log in [Log::Offsets, Log::Commits] {
            let d = dir.join(log.name());
            std::fs::metadata(&d).map_err(|source| CheckpointError::Io { path: d, source })?;
        }
        Ok(Self {
            location: Location::Local(dir.clone()),
            store: Store::Local(dir.clone()),
            local: dir,
            ownership: Ownership::None,
        })
    }

    /// Open the checkpoint at `place` to read it, without taking ownership.
    pub fn open_read_only_at(place: &Place) -> Result<Self> {
        match &place.location {
            Location::Local(dir) => Self::open_read_only(dir.clone()),
            Location::Remote(url) => {
                let store = Store::Remote(Arc::new(Self::blobs(place, url)?));
                Ok(Self {
                    location: place.location.clone(),
                    store,
                    local: place.local.clone(),
                    ownership: Ownership::None,
                })
            }
        }
    }

    /// Who owns the checkpoint at `place`, if anyone does (a lease is
    /// returned even when expired or released: its record says so).
    pub fn holder(place: &Place) -> Option<Holder> {
        match &place.location {
            Location::Local(dir) => {
                let path = dir.join("lock");
                let file = File::open(&path).ok()?;
                match file.try_lock_shared() {
                    Ok(()) => None,
                    Err(_) => std::fs::read_to_string(&path)
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                        .map(Holder::Pid),
                }
            }
            Location::Remote(url) => {
                let blobs = Self::blobs(place, url).ok()?;
                lease::read(&blobs).ok().flatten().map(Holder::Lease)
            }
        }
    }

    /// Where the checkpoint is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The local directory attempt records are kept under.
    pub fn attempts_dir(&self) -> &Path {
        &self.local
    }

    /// How `log`'s file for batch `n` is named in messages.
    pub fn file(&self, log: Log, n: u64) -> PathBuf {
        self.store.name_of(&key(log, n))
    }

    /// The lease epoch this process holds, when the checkpoint is remote.
    pub fn epoch(&self) -> Option<u64> {
        match &self.ownership {
            Ownership::Lease(l) => Some(l.epoch()),
            _ => None,
        }
    }

    /// Hold the lease under an epoch of at least `at_least` (see
    /// [`Lease::raise_epoch`]); the epoch held. `None` for a local checkpoint.
    pub fn raise_epoch(&self, at_least: u64) -> Result<Option<u64>> {
        match &self.ownership {
            Ownership::Lease(l) => l.raise_epoch(at_least).map(Some),
            _ => Ok(None),
        }
    }

    /// Fails once this process no longer owns the checkpoint (a lost
    /// lease); a read-only view never owns it.
    pub fn check_owned(&self) -> Result<()> {
        match &self.ownership {
            Ownership::Lease(l) => l.check(),
            Ownership::FileLock(_) => Ok(()),
            Ownership::None => {
                let denied = io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the checkpoint is open read-only",
                );
                Err(CheckpointError::Io {
                    path: self.location.to_string().into(),
                    source: denied,
                })
            }
        }
    }

    /// Keep a copy of the component batches are planned with, named by its
    /// digest, so a batch can be replayed or exported with the code that
    /// ran it after the config points elsewhere.
    pub fn keep_component(&self, digest: &str, component: &Path) -> Result<()> {
        let key = component_key(digest);
        let io_err = |source| CheckpointError::Io {
            path: self.store.name_of(&key),
            source,
        };
        if self
            .store
            .list("components")
            .map_err(io_err)?
            .iter()
            .any(|n| *n == format!("{digest}.wasm"))
        {
            return Ok(());
        }
        let bytes = std::fs::read(component).map_err(|source| CheckpointError::Io {
            path: component.to_owned(),
            source,
        })?;
        self.store.make_dirs(&["components"]).map_err(io_err)?;
        // Another writer of the same digest wrote the same bytes.
        self.store
            .create_unmarked(&key, &bytes)
            .map_err(io_err)
            .map(drop)
    }

    /// A local file holding the kept component with `digest` (fetched into
    /// the local directory when the checkpoint is remote); `None` if it is
    /// not kept.
    pub fn component(&self, digest: &str) -> Result<Option<PathBuf>> {
        let key = component_key(digest);
        let io_err = |source| CheckpointError::Io {
            path: self.store.name_of(&key),
            source,
        };
        match &self.store {
            Store::Local(dir) => {
                let path = dir.join(&key);
                Ok(path.exists().then_some(path))
            }
            Store::Remote(_) => {
                let path = self.local.join(&key);
                if path.exists() {
                    return Ok(Some(path));
                }
                let Some(bytes) = self.store.read(&key).map_err(io_err)? else {
                    return Ok(None);
                };
                if hex::encode(Sha256::digest(&bytes)) != digest {
                    return Err(CheckpointError::Corrupt {
                        path: self.store.name_of(&key),
                        reason: "its content does not hash to its name".into(),
                    });
                }
                let local = Store::Local(self.local.clone());
                local
                    .make_dirs(&["components"])
                    .and_then(|()| local.overwrite(&key, &bytes))
                    .map_err(|source| CheckpointError::Io {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Some(path))
            }
        }
    }

    /// The digests of the kept components.
    pub fn kept_components(&self) -> io::Result<Vec<String>> {
        let names = self.store.list("components")?;
        Ok(names
            .iter()
            .filter_map(|n| n.strip_suffix(".wasm"))
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
            .collect())
    }

    /// Remove a kept component.
    pub fn remove_component(&self, digest: &str) -> io::Result<bool> {
        let key = component_key(digest);
        self.store.remove(&key).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}", self.store.name_of(&key).display()),
            )
        })
    }

    /// The batch ids in a log (any order; leftover temporary files skipped).
    pub fn batch_ids(&self, log: Log) -> io::Result<Vec<u64>> {
        Ok(self
            .store
            .list(log.name())?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    /// Remove `log`'s file for batch `n` (retention); true if it was there.
    pub fn remove(&self, log: Log, n: u64) -> io::Result<bool> {
        let key = key(log, n);
        self.store.remove(&key).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}", self.store.name_of(&key).display()),
            )
        })
    }

    /// The oldest batch whose plan the checkpoint still holds (batches
    /// before it were pruned by retention), if it holds any.
    pub fn first_retained_plan(&self) -> io::Result<Option<u64>> {
        Ok(self.batch_ids(Log::Offsets)?.into_iter().min())
    }

    /// Durably record the plan of a batch. Call before running its sink.
    /// The plan of a batch is written once: finding one there means another
    /// process planned it, and this one no longer owns the checkpoint.
    pub fn record_planned(&self, batch: &PlannedBatch) -> Result<()> {
        self.create(Log::Offsets, batch.batch_id, batch)
    }

    /// Durably record that a batch is committed. Call after the tables.
    pub fn record_committed(&self, batch: &CommittedBatch) -> Result<()> {
        self.create(Log::Commits, batch.batch_id, batch)
    }

    /// Rewrite the commit record of a batch the tables lost and got back
    /// (their versions changed).
    pub fn record_healed(&self, batch: &CommittedBatch) -> Result<()> {
        self.check_owned()?;
        let key = key(Log::Commits, batch.batch_id);
        self.store
            .overwrite(&key, &encode(batch))
            .map_err(|source| CheckpointError::Io {
                path: self.store.name_of(&key),
                source,
            })
    }

    /// Durably record which records of a batch are set aside as poison.
    /// Call before committing the batch. Written once, like a plan.
    pub fn record_quarantine(&self, decision: &crate::pipeline::quarantine::Decision) -> Result<()> {
        self.create(Log::Quarantine, decision.batch_id, decision)
    }

    /// The poison records set aside from batch `n`, if any were.
    pub fn quarantine(&self, n: u64) -> Result<Option<crate::pipeline::quarantine::Decision>> {
        self.read(Log::Quarantine, n)
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
        let corrupt = |log: Log, n: u64, reason: String| CheckpointError::Corrupt {
            path: self.file(log, n),
            reason,
        };
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

    /// Move the offset and commit logs into `<checkpoint>/<name>/` (kept,
    /// never deleted) and start them empty, for `sluice checkpoint rebuild`.
    /// Returns where they went.
    pub fn set_logs_aside(&self, name: &str) -> Result<String> {
        self.check_owned()?;
        match &self.store {
            Store::Local(dir) => {
                let io_err = |path: &Path| {
                    let path = path.to_owned();
                    move |source| CheckpointError::Io { path, source }
                };
                let aside = dir.join(name);
                std::fs::create_dir_all(&aside).map_err(io_err(&aside))?;
                for log in [Log::Offsets, Log::Commits, Log::Quarantine] {
                    let (from, to) = (dir.join(log.name()), aside.join(log.name()));
                    std::fs::rename(&from, &to).map_err(io_err(&from))?;
                    std::fs::create_dir_all(&from).map_err(io_err(&from))?;
                }
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
                Ok(aside.display().to_string())
            }
            // No rename in object stores: copy each file, then remove it.
            Store::Remote(_) => {
                for log in [Log::Offsets, Log::Commits, Log::Quarantine] {
                    for n in self.batch_ids(log).map_err(|source| CheckpointError::Io {
                        path: self.file(log, 0),
                        source,
                    })? {
                        let (from, to) = (key(log, n), format!("{name}/{}", key(log, n)));
                        let io_err = |source| CheckpointError::Io {
                            path: self.store.name_of(&from),
                            source,
                        };
                        let bytes = self.store.read(&from).map_err(io_err)?.unwrap_or_default();
                        self.store.overwrite(&to, &bytes).map_err(io_err)?;
                        self.store.remove(&from).map_err(io_err)?;
                    }
                }
                Ok(self.location.join(name).to_string())
            }
        }
    }

    /// The highest planned batch id, if any.
    pub fn last_planned(&self) -> Result<Option<u64>> {
        self.last(Log::Offsets)
    }

    /// The highest committed batch id, if any.
    pub fn last_committed(&self) -> Result<Option<u64>> {
        self.last(Log::Commits)
    }

    /// The highest batch id in a log.
    fn last(&self, log: Log) -> Result<Option<u64>> {
        let names = self
            .store
            .list(log.name())
            .map_err(|source| CheckpointError::Io {
                path: self.store.name_of(log.name()),
                source,
            })?;
        let mut last = None;
        for name in names {
            if name.starts_with('.') {
                continue; // a temporary file left by a crash mid-write
            }
            let Ok(n) = name.parse::<u64>() else {
                let path = self.store.name_of(&format!("{}/{name}", log.name()));
                return Err(CheckpointError::Corrupt {
                    path,
                    reason: "unexpected file in the checkpoint".into(),
                });
            };
            last = last.max(Some(n));
        }
        Ok(last)
    }

    fn create(&self, log: Log, n: u64, value: &impl Serialize) -> Result<()> {
        self.check_owned()?;
        let key = key(log, n);
        let bytes = encode(value);
        let created = self
            .store
            .create(&key, &bytes)
            .map_err(|source| CheckpointError::Io {
                path: self.store.name_of(&key),
                source,
            })?;
        if created {
            return Ok(());
        }
        // The same record again (a retried write whose first try landed) is
        // no conflict; anything else was written by another owner.
        if self.store.read(&key).ok().flatten().as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        let why = format!(
            "{} was written by another process",
            self.store.name_of(&key).display()
        );
        Err(match &self.ownership {
            Ownership::Lease(l) => CheckpointError::LeaseLost {
                checkpoint: self.location.to_string(),
                epoch: l.epoch(),
                why,
            },
            _ => CheckpointError::Corrupt {
                path: self.store.name_of(&key),
                reason: format!("{why}, though this one owns the checkpoint"),
            },
        })
    }

    fn read<T: DeserializeOwned>(&self, log: Log, n: u64) -> Result<Option<T>> {
        let key = key(log, n);
        let path = self.store.name_of(&key);
        let Some(bytes) = self
            .store
            .read(&key)
            .map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?
        else {
            return Ok(None);
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

fn key(log: Log, n: u64) -> String {
    format!("{}/{n}", log.name())
}

fn component_key(digest: &str) -> String {
    format!("components/{digest}.wasm")
}

/// A record as a checkpoint file: the format line with the body's SHA-256,
/// then the body.
fn encode(value: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_string(value).expect("checkpoint records serialise");
    format!(
        "{MAGIC} sha256={}\n{body}\n",
        hex::encode(Sha256::digest(body.as_bytes()))
    )
    .into_bytes()
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
            release: None,
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
