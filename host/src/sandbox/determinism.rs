//! The only place where a sink's view of time and randomness is made.
//!
//! Everything is derived from the batch identity, never from the host:
//! the wall clock starts at the batch's planned timestamp, the monotonic
//! clock is virtual, and random bytes come from a generator seeded with
//! (pipeline id, batch id). Both clocks advance by a fixed step on every
//! read, so busy-wait loops still make progress and the same sequence of
//! calls sees the same values on every run. Waiting on the clock moves it
//! ahead at once (see `waiting`): time a sink sleeps is virtual too.

use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// How far the virtual clocks move on each read.
const CLOCK_STEP_NS: u64 = 1_000;

/// The 32-byte seed of a batch: stable across retries and replays, different
/// for every (pipeline, batch).
pub(crate) fn batch_seed(pipeline_id: &str, batch_id: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sluice-seed-v1\0");
    h.update((pipeline_id.len() as u64).to_be_bytes());
    h.update(pipeline_id.as_bytes());
    h.update(batch_id.to_be_bytes());
    h.finalize().into()
}

/// A virtual clock: the wall clock reads `planned + elapsed`, the monotonic
/// clock reads `elapsed`, and `elapsed` grows by [`CLOCK_STEP_NS`] per read.
#[derive(Clone)]
pub(crate) struct VirtualClock {
    start: Duration,
    elapsed_ns: Arc<AtomicU64>,
}

impl VirtualClock {
    pub(crate) fn new(planned_timestamp_ms: i64) -> Self {
        // The guest's wall clock cannot be before 1970; clamp nonsense.
        let start = Duration::from_millis(planned_timestamp_ms.max(0) as u64);
        Self { start, elapsed_ns: Arc::default() }
    }

    fn tick(&self) -> u64 {
        // Saturating: a clock moved to the end of time by a long wait stays there.
        let step = |e: u64| Some(e.saturating_add(CLOCK_STEP_NS));
        let before = self.elapsed_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step).unwrap_or(u64::MAX);
        before.saturating_add(CLOCK_STEP_NS)
    }

    /// The monotonic clock's value, without advancing it.
    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Relaxed)
    }

    /// Move the clock to `target` ns if it is behind; returns how far it moved.
    pub(crate) fn advance_to(&self, target: u64) -> u64 {
        let before = self.elapsed_ns.fetch_max(target, Ordering::Relaxed);
        target.saturating_sub(before)
    }

    /// The batch's planned timestamp: the wall clock before any read.
    pub(crate) fn start(&self) -> Duration {
        self.start
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(CLOCK_STEP_NS)
    }
    fn now(&self) -> Duration {
        self.start + Duration::from_nanos(self.tick())
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        CLOCK_STEP_NS
    }
    fn now(&self) -> u64 {
        self.tick()
    }
}

/// A deterministic generator: block `i` is `SHA-256(seed || domain || i)`.
///
/// Written out here rather than taken from a crate so the stream can never
/// change under a dependency upgrade: replaying an old batch must give the
/// guest the same bytes.
pub(crate) struct SeededRng {
    key: [u8; 32],
    domain: u8,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    /// `domain` separates the streams handed to different WASI interfaces.
    pub(crate) fn new(seed: [u8; 32], domain: u8) -> Self {
        Self { key: seed, domain, counter: 0, block: [0; 32], used: 32 }
    }

    fn refill(&mut self) {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update([self.domain]);
        h.update(self.counter.to_be_bytes());
        self.block = h.finalize().into();
        self.counter += 1;
        self.used = 0;
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let mut filled = 0;
        while filled < dst.len() {
            if self.used == self.block.len() {
                self.refill();
            }
            let n = (dst.len() - filled).min(self.block.len() - self.used);
            dst[filled..filled + n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            filled += n;
        }
    }
}

impl rand::TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

/// The value of `wasi:random/insecure-seed` for a batch.
pub(crate) fn insecure_seed(seed: [u8; 32]) -> u128 {
    u128::from_le_bytes(seed[..16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn seed_depends_on_pipeline_and_batch() {
        assert_eq!(batch_seed("p", 1), batch_seed("p", 1));
        assert_ne!(batch_seed("p", 1), batch_seed("p", 2));
        assert_ne!(batch_seed("p", 1), batch_seed("q", 1));
        // Length-prefixing keeps ("ab", ..) and ("a", ..) apart.
        assert_ne!(batch_seed("ab", 1), batch_seed("a", 1));
    }

    #[test]
    fn rng_stream_is_stable_and_chunking_independent() {
        let mut a = SeededRng::new(batch_seed("p", 7), 0);
        let mut whole = [0u8; 100];
        a.fill_bytes(&mut whole);
        let mut b = SeededRng::new(batch_seed("p", 7), 0);
        let mut parts = [0u8; 100];
        b.fill_bytes(&mut parts[..3]);
        b.fill_bytes(&mut parts[3..71]);
        b.fill_bytes(&mut parts[71..]);
        assert_eq!(whole, parts);
        let mut other_domain = SeededRng::new(batch_seed("p", 7), 1);
        assert_ne!(other_domain.next_u64(), u64::from_le_bytes(whole[..8].try_into().unwrap()));
    }

    #[test]
    fn clocks_start_at_planned_time_and_advance_per_read() {
        let c = VirtualClock::new(1_700_000_000_000);
        let w1 = HostWallClock::now(&c);
        let m = HostMonotonicClock::now(&c);
        let w2 = HostWallClock::now(&c);
        assert_eq!(w1, Duration::from_millis(1_700_000_000_000) + Duration::from_micros(1));
        assert_eq!(m, 2_000);
        assert_eq!(w2 - w1, Duration::from_micros(2));
    }

    #[test]
    fn advancing_moves_both_clocks_forward_only() {
        let c = VirtualClock::new(0);
        assert_eq!(c.advance_to(10_000_000_000), 10_000_000_000);
        assert_eq!(c.advance_to(5), 0, "never backwards");
        assert_eq!(HostMonotonicClock::now(&c), 10_000_001_000);
        assert_eq!(HostWallClock::now(&c), Duration::from_secs(10) + Duration::from_micros(2));
        c.advance_to(u64::MAX);
        assert_eq!(HostMonotonicClock::now(&c), u64::MAX, "the end of time saturates");
    }
}
