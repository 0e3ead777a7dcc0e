//! No host call a sink can make waits in real time.
//!
//! The epoch deadline only fires while Wasm code runs, and fuel is not spent
//! while the host blocks, so a sink blocked in a host call could hold its
//! thread forever. wasmtime-wasi's clock pollables sleep in real time; they
//! are shadowed in the linker here, together with the three calls that wait
//! (`poll`, `pollable.block`, `pollable.ready`):
//!
//! - a pollable of `subscribe-duration` / `subscribe-instant` is due at an
//!   instant of the *virtual* monotonic clock. Waiting for it moves the
//!   clock (and the wall clock with it) to that instant at once, so a sink
//!   that sleeps ten seconds finishes at once, and identically on every run;
//! - every other pollable a sink can hold is local I/O: stdio (always ready)
//!   and file streams waiting on a disk read or write of at most a few KiB
//!   (sockets are denied, stdin is empty). In virtual time such I/O takes
//!   no time: a wait for it lasts until it is done, so what the sink sees
//!   never depends on how fast the disk was. The real wait is bounded by
//!   the batch deadline (`limits.deadline_ms`);
//! - so `block` and `ready` return once the pollable is ready (`ready` is
//!   always true), and `poll` waits for the I/O in its list, returns what
//!   is then ready, and when that is nothing, moves the clock to the
//!   earliest clock pollable in the list and returns the ones then due, as
//!   a discrete-event simulation would;
//! - the total virtual time waited is charged to `limits.sleep_ms`: past it
//!   (a sink sleeping forever, or until the year 2500) the batch ends with
//!   that typed error, at once.
//!
//! A `poll` list may name at most `limits.open_files` pollables, so the
//! host's work per call is bounded however often the sink repeats a handle.

use super::state::BatchState;
use super::determinism::VirtualClock;
use crate::limits::{Limit, LimitExceeded, Limits};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use wasmtime::AsContextMut as _;
use wasmtime::component::{Linker, Resource, WasmList};
use wasmtime_wasi::p2::bindings::sync::io::poll::HostPollable;
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

/// The interfaces as wasmtime-wasi 48 registers them.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";
const POLL: &str = "wasi:io/poll@0.2.12";

/// How often a wait on local I/O (a disk read under way) looks again.
const RECHECK: Duration = Duration::from_millis(1);

/// A batch's waiting state: its virtual clock, what it has waited, and the
/// real deadline that bounds waits on anything else.
pub(crate) struct Waits {
    clock: VirtualClock,
    max_wait_ns: u64,
    waited_ns: AtomicU64,
    /// Set while `poll` asks what is ready *now*: clock pollables then
    /// report instead of moving the clock.
    probing: AtomicBool,
    /// While probing: whether the pollable just asked was a clock one not
    /// yet due, and its instant.
    clock_pending: AtomicBool,
    pending_at: AtomicU64,
    /// A wait went past `limits.sleep_ms`; the calling host function traps.
    overrun: AtomicBool,
    deadline: Instant,
    limits: Limits,
}

impl Waits {
    pub(crate) fn new(clock: VirtualClock, limits: &Limits, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            clock,
            max_wait_ns: limits.sleep_ms.saturating_mul(1_000_000),
            waited_ns: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            clock_pending: AtomicBool::new(false),
            pending_at: AtomicU64::new(0),
            overrun: AtomicBool::new(false),
            deadline: started + Duration::from_millis(limits.deadline_ms),
            limits: limits.clone(),
        })
    }

    /// Wait (virtually) until `at`: the clock jumps there, charged to the
    /// sleep budget. Over budget the clock stays put and the wait is marked.
    fn wait_until(&self, at: u64) {
        let skip = at.saturating_sub(self.clock.elapsed_ns());
        let waited = self.waited_ns.load(Relaxed);
        if waited.saturating_add(skip) > self.max_wait_ns {
            self.overrun.store(true, Relaxed);
            return;
        }
        self.waited_ns.store(waited + skip, Relaxed);
        self.clock.advance_to(at);
    }

    /// Trap if a wait went past the sleep budget.
    fn check_overrun(&self) -> wasmtime::Result<()> {
        if self.overrun.swap(false, Relaxed) {
            return Err(wasmtime::Error::new(LimitExceeded::new(Limit::SleepMs, &self.limits)));
        }
        Ok(())
    }

    /// Trap once the batch's real deadline has passed.
    fn check_deadline(&self) -> wasmtime::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(wasmtime::Error::new(LimitExceeded::new(Limit::DeadlineMs, &self.limits)));
        }
        Ok(())
    }
}

/// A pollable due at an instant of the virtual monotonic clock.
struct ClockDue {
    waits: Arc<Waits>,
    at: u64,
}

#[async_trait::async_trait]
impl Pollable for ClockDue {
    async fn ready(&mut self) {
        if self.waits.clock.elapsed_ns() >= self.at {
            return;
        }
        if self.waits.probing.load(Relaxed) {
            self.waits.pending_at.store(self.at, Relaxed);
            self.waits.clock_pending.store(true, Relaxed);
            // Not due yet: `poll` decides whether to move the clock.
            return std::future::pending().await;
        }
        self.waits.wait_until(self.at);
    }
}

fn subscribe_at(state: &mut BatchState, at: u64) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let due = state.table.push(ClockDue { waits: state.waits.clone(), at })?;
    Ok((subscribe(&mut state.table, due)?,))
}

/// Whether `p` is ready now (a clock pollable: whether it is due when
/// probing, else after waiting for it).
fn ready_now(state: &mut BatchState, p: u32) -> wasmtime::Result<bool> {
    HostPollable::ready(&mut state.table, Resource::new_borrow(p))
}

/// Shadow the clock subscriptions and the waiting calls in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<BatchState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (duration,): (u64,)| {
        let state = store.data_mut();
        let at = state.waits.clock.elapsed_ns().saturating_add(duration);
        subscribe_at(state, at)
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (at,): (u64,)| subscribe_at(store.data_mut(), at))?;

    let mut poll = linker.instance(POLL)?;
    poll.func_wrap("[method]pollable.ready", |mut store, (p,): (Resource<DynPollable>,)| {
        wait_for(store.data_mut(), p.rep())?;
        Ok((true,))
    })?;
    poll.func_wrap("[method]pollable.block", |mut store, (p,): (Resource<DynPollable>,)| {
        wait_for(store.data_mut(), p.rep())
    })?;
    poll.func_wrap("poll", |mut store, (list,): (WasmList<Resource<DynPollable>>,)| {
        if list.len() as u64 > store.data().waits.limits.open_files {
            return Err(wasmtime::Error::new(LimitExceeded::new(Limit::OpenFiles, &store.data().waits.limits)));
        }
        if list.len() == 0 {
            return Err(wasmtime::Error::msg("sink called wasi:io/poll.poll with an empty list"));
        }
        // Each distinct pollable is asked once, however often it is listed.
        let mut indices: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (i, p) in list.iter(store.as_context_mut())?.enumerate() {
            indices.entry(p?.rep()).or_default().push(i as u32);
        }
        let state = store.data_mut();
        loop {
            let probe = probe(state, &indices)?;
            if probe.io_pending {
                state.waits.check_deadline()?;
                std::thread::sleep(RECHECK);
            } else if !probe.ready.is_empty() {
                return Ok((probe.ready,));
            } else {
                // Nothing is ready and no I/O is under way: only clock
                // pollables are listed, none due yet.
                state.waits.wait_until(probe.earliest);
                state.waits.check_overrun()?;
            }
        }
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What `poll` found, asking each pollable once without waiting.
struct Probe {
    /// Listed positions of the ready pollables, in list order.
    ready: Vec<u32>,
    /// Some pollable that is not a clock one is not ready yet.
    io_pending: bool,
    /// The earliest instant of the clock pollables not yet due.
    earliest: u64,
}

fn probe(state: &mut BatchState, indices: &BTreeMap<u32, Vec<u32>>) -> wasmtime::Result<Probe> {
    let mut found = Probe { ready: Vec::new(), io_pending: false, earliest: u64::MAX };
    state.waits.probing.store(true, Relaxed);
    let mut outcome = Ok(());
    for (&rep, positions) in indices {
        // A clock pollable not yet due says so, and when it will be.
        state.waits.clock_pending.store(false, Relaxed);
        match ready_now(state, rep) {
            Ok(true) => found.ready.extend_from_slice(positions),
            Ok(false) if state.waits.clock_pending.load(Relaxed) => {
                found.earliest = found.earliest.min(state.waits.pending_at.load(Relaxed));
            }
            Ok(false) => found.io_pending = true,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    state.waits.probing.store(false, Relaxed);
    outcome?;
    found.ready.sort_unstable();
    Ok(found)
}

/// Wait until pollable `p` is ready: a clock pollable moves the clock, I/O
/// is waited for up to the batch deadline.
fn wait_for(state: &mut BatchState, p: u32) -> wasmtime::Result<()> {
    loop {
        let ready = ready_now(state, p)?;
        state.waits.check_overrun()?;
        if ready {
            return Ok(());
        }
        state.waits.check_deadline()?;
        std::thread::sleep(RECHECK);
    }
}
