//! Ownership of a checkpoint in object storage, across machines: a lease.
//!
//! The lease is one object, `lease`, beside `offsets/` and `commits/`:
//! owner id, epoch, lease length. Every change to it is a conditional write
//! on its ETag, so two processes can never both believe they took it.
//!
//! - **Taking it.** No lease object: create it, epoch 1 (raised at once
//!   past any epoch the tables record, see [`Lease::raise_epoch`]: a
//!   rebuilt or moved checkpoint starts its lease anew, the tables do not). A lease its owner
//!   released (clean stop): take it at once, epoch + 1. A held lease: wait
//!   as a standby, and take it once its version has not changed for a whole
//!   `lease_ms` as timed by the standby's own monotonic clock. No wall
//!   clocks are compared, so clock skew between machines cannot end a live
//!   owner's lease early.
//! - **Keeping it.** A keeper thread renews it every `lease_ms / 4`. The
//!   owner counts its lease as valid until `lease_ms` after the start of its
//!   last successful renewal (a standby can only take over later than that).
//! - **Losing it.** A renewal finding another version (someone took over),
//!   or no successful renewal for `lease_ms` (a partition, a pause): the
//!   lease is lost for good. [`Lease::check`] then fails, and every
//!   checkpoint write and every Delta commit calls it first, so a paused
//!   owner that wakes up commits nothing. A commit already past the check
//!   when the pause began is stopped by the fence the new owner writes to
//!   every table on takeover (see `commit`): Delta's conflict check refuses
//!   it.

use crate::now_ms;
use crate::checkpoint::CheckpointError;
use crate::storage::blobs::{Blobs, Version};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lease object's key in the checkpoint.
const KEY: &str = "lease";

/// The lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it: host, pid and a random part.
    pub owner: String,
    /// Incremented on every change of owner: what fences the tables.
    pub epoch: u64,
    /// How long it lasts unrenewed.
    pub lease_ms: u64,
    /// When it was last renewed (wall clock, for `sluice status` only).
    pub renewed_at_ms: i64,
    /// Released by a clean stop: the next owner need not wait.
    #[serde(default)]
    pub released: bool,
}

/// What a process taking the lease is told.
#[derive(Debug)]
pub enum Standby<'a> {
    /// It waits: this live owner holds the lease.
    Waiting(&'a LeaseRecord),
    /// It holds the lease now, with this epoch.
    Took(u64),
}

/// Told of [`Standby`] events while the lease is taken.
pub type OnStandby<'a> = &'a mut dyn FnMut(Standby<'_>);

struct State {
    version: Version,
    /// Until when the lease is ours, by our monotonic clock.
    valid_until: Instant,
    /// Why it is lost, once it is.
    lost: Option<String>,
}

struct Shared {
    blobs: Arc<Blobs>,
    record: Mutex<LeaseRecord>,
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A held lease, renewed in the background while this value lives and
/// released when it is dropped.
pub struct Lease {
    shared: Arc<Shared>,
    keeper: Option<JoinHandle<()>>,
    epoch: std::sync::atomic::AtomicU64,
    owner: String,
    lease_ms: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("owner", &self.owner)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Take the lease on the checkpoint in `blobs`. While another process
    /// holds it: with `standby`, wait until it is released or expires
    /// (`on_standby` is told once per owner seen); without, wait only to see
    /// whether it is renewed, and refuse if it is (the owner is alive).
    pub fn acquire(
        blobs: Arc<Blobs>,
        lease_ms: u64,
        standby: bool,
        on_standby: OnStandby<'_>,
    ) -> Result<Lease, CheckpointError> {
        let owner = owner_id();
        let url = blobs.url_of(KEY);
        let io = |e: std::io::Error| CheckpointError::Io { path: url.clone().into(), source: e };
        // The version seen, since when (our clock), and its lease length.
        let mut watched: Option<(Version, Instant, u64)> = None;
        let mut told: Option<String> = None;
        loop {
            let started = Instant::now();
            let (current, next_epoch) = match blobs.get(KEY).map_err(io)? {
                None => (None, 1),
                Some((bytes, version)) => {
                    let record = parse(&blobs, &bytes)?;
                    let stale = match &watched {
                        Some((v, since, ms)) if *v == version => {
                            since.elapsed() >= Duration::from_millis(*ms)
                        }
                        Some(_) if !standby => {
                            return Err(CheckpointError::Locked {
                                dir: blobs.url_of("").into(),
                                holder: format!(" (lease epoch {} renewed just now by {})", record.epoch, record.owner),
                            });
                        }
                        _ => {
                            watched = Some((version.clone(), started, record.lease_ms));
                            false
                        }
                    };
                    if !(record.released || stale) {
                        if told.as_deref() != Some(record.owner.as_str()) {
                            on_standby(Standby::Waiting(&record));
                            told = Some(record.owner.clone());
                        }
                        // Look about ten times per lease: a takeover comes
                        // within a tenth of a lease of the owner's expiry.
                        std::thread::sleep(Duration::from_millis(
                            (record.lease_ms / 10).clamp(10, 1000),
                        ));
                        continue;
                    }
                    (Some(version), record.epoch + 1)
                }
            };
            let record = LeaseRecord {
                owner: owner.clone(),
                epoch: next_epoch,
                lease_ms,
                renewed_at_ms: now_ms(),
                released: false,
            };
            let bytes = serde_json::to_vec(&record).expect("a lease record serialises");
            let written = match &current {
                None => blobs.create(KEY, &bytes),
                Some(v) => blobs.replace(KEY, &bytes, v),
            }
            .map_err(io)?;
            // Lost the race to another standby: look again.
            let Some(version) = written else { continue };
            let shared = Arc::new(Shared {
                blobs,
                record: Mutex::new(record),
                state: Mutex::new(State {
                    version,
                    valid_until: started + Duration::from_millis(lease_ms),
                    lost: None,
                }),
                stop: Mutex::new(false),
                wake: Condvar::new(),
            });
            let keeper = {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("sluice-lease".into())
                    .spawn(move || keep(&shared, lease_ms))
                    .map_err(io)?
            };
            on_standby(Standby::Took(next_epoch));
            return Ok(Lease {
                shared,
                keeper: Some(keeper),
                epoch: next_epoch.into(),
                owner,
                lease_ms,
            });
        }
    }

    /// The epoch this process holds.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Hold the lease under epoch `at_least` from now on (a compare-and-swap
    /// of the lease object): for a new owner that finds the tables fenced by
    /// a later epoch than its lease's, which a checkpoint rebuilt or moved
    /// elsewhere restarts from 1. Fails if the lease was lost meanwhile.
    pub fn raise_epoch(&self, at_least: u64) -> Result<u64, CheckpointError> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &state.lost {
            return Err(self.lost(why.clone()));
        }
        let mut record = self.shared.record.lock().unwrap_or_else(|e| e.into_inner());
        if record.epoch >= at_least {
            return Ok(record.epoch);
        }
        let mut raised = record.clone();
        raised.epoch = at_least;
        raised.renewed_at_ms = now_ms();
        let bytes = serde_json::to_vec(&raised).expect("a lease record serialises");
        let io = |e| CheckpointError::Io { path: self.shared.blobs.url_of(KEY).into(), source: e };
        match self.shared.blobs.replace(KEY, &bytes, &state.version).map_err(io)? {
            Some(version) => {
                state.version = version;
                *record = raised;
                self.epoch.store(at_least, std::sync::atomic::Ordering::SeqCst);
                Ok(at_least)
            }
            None => {
                let why = "another process took the lease over".to_owned();
                state.lost = Some(why.clone());
                Err(self.lost(why))
            }
        }
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Fails if the lease is lost or has less than half a lease left
    /// (renewing first, in case the keeper is behind). Call before every
    /// write that only the owner may make.
    pub fn check(&self) -> Result<(), CheckpointError> {
        let margin = Duration::from_millis(self.lease_ms / 2);
        let left = {
            let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &state.lost {
                return Err(self.lost(why.clone()));
            }
            state.valid_until.saturating_duration_since(Instant::now())
        };
        if left > margin {
            return Ok(());
        }
        if left.is_zero() {
            let why = format!(
                "it was not renewed for {} ms (the process was paused or cut off)",
                self.lease_ms
            );
            self.shared
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lost = Some(why.clone());
            return Err(self.lost(why));
        }
        // On a thread of its own: the caller may be inside an async
        // runtime (the Delta commit's guard), where the store client's
        // blocking call must not run.
        std::thread::scope(|s| {
            let _ = s.spawn(|| renew(&self.shared, self.lease_ms)).join();
        });
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.lost {
            Some(why) => Err(self.lost(why.clone())),
            None if state.valid_until.saturating_duration_since(Instant::now()) > margin => Ok(()),
            None => Err(self.lost("it could not be renewed in time".into())),
        }
    }

    fn lost(&self, why: String) -> CheckpointError {
        CheckpointError::LeaseLost {
            checkpoint: self.shared.blobs.url_of(""),
            epoch: self.epoch(),
            why,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        // Still ours: hand it over at once instead of making a standby wait.
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.lost.is_none() && state.valid_until > Instant::now() {
            let mut record = self
                .shared
                .record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            record.released = true;
            record.renewed_at_ms = now_ms();
            let bytes = serde_json::to_vec(&record).expect("a lease record serialises");
            if let Err(e) = self.shared.blobs.replace(KEY, &bytes, &state.version) {
                eprintln!(
                    "sluice: warning: cannot release the lease (a standby takes over once it expires): {e}"
                );
            }
        }
    }
}

/// The keeper thread: renew every quarter lease until stopped or lost.
fn keep(shared: &Shared, lease_ms: u64) {
    let every = Duration::from_millis((lease_ms / 4).max(1));
    loop {
        let stop = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
        let (stop, _) = shared
            .wake
            .wait_timeout_while(stop, every, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
        drop(stop);
        if !renew(shared, lease_ms) {
            return;
        }
    }
}

/// One renewal. False once the lease is lost.
fn renew(shared: &Shared, lease_ms: u64) -> bool {
    let started = Instant::now();
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.lost.is_some() {
        return false;
    }
    if state.valid_until <= started {
        state.lost = Some(format!(
            "it was not renewed for {lease_ms} ms (the process was paused or cut off)"
        ));
        return false;
    }
    let mut record = shared.record.lock().unwrap_or_else(|e| e.into_inner());
    record.renewed_at_ms = now_ms();
    let bytes = serde_json::to_vec(&*record).expect("a lease record serialises");
    match shared.blobs.replace(KEY, &bytes, &state.version) {
        Ok(Some(version)) => {
            state.version = version;
            state.valid_until = started + Duration::from_millis(lease_ms);
            true
        }
        Ok(None) => {
            let now = shared
                .blobs
                .get(KEY)
                .ok()
                .flatten()
                .and_then(|(b, _)| serde_json::from_slice::<LeaseRecord>(&b).ok());
            state.lost = Some(match now {
                Some(r) => format!("{} took it over (epoch {})", r.owner, r.epoch),
                None => "the lease object was removed".into(),
            });
            false
        }
        // Transient: the next renewal may pass; the deadline decides.
        Err(e) => {
            eprintln!("sluice: warning: cannot renew the lease: {e}");
            true
        }
    }
}

/// The lease in `blobs`, if any, without taking it (`sluice status`).
pub fn read(blobs: &Blobs) -> Result<Option<LeaseRecord>, CheckpointError> {
    match blobs.get(KEY) {
        Ok(None) => Ok(None),
        Ok(Some((bytes, _))) => parse(blobs, &bytes).map(Some),
        Err(e) => Err(CheckpointError::Io {
            path: blobs.url_of(KEY).into(),
            source: e,
        }),
    }
}

fn parse(blobs: &Blobs, bytes: &[u8]) -> Result<LeaseRecord, CheckpointError> {
    serde_json::from_slice(bytes).map_err(|e| CheckpointError::Corrupt {
        path: blobs.url_of(KEY).into(),
        reason: format!("unreadable lease: {e}"),
    })
}

/// Host name, pid and 32 random bits: unique per process, readable in status.
fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let mut seed = [0u8; 4];
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(
        format!("{nanos}/{}/{:p}", std::process::id(), &seed).as_bytes(),
    );
    seed.copy_from_slice(&digest[..4]);
    format!("{host}/pid-{}/{}", std::process::id(), hex::encode(seed))
}
