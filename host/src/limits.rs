//! Limits on what one batch of a sink may consume.
//!
//! Every limit has a config key (`limits.<name>`), a default, and a typed
//! error that names both, so an operator who sees the error knows which knob
//! to turn. Fuel, memory, staging, output and log limits are deterministic:
//! a batch that exceeds one will exceed it on every retry and replay. The
//! deadline is a wall-clock backstop and the only limit that depends on the
//! machine.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The limits applied to every batch. Deserialises from the `[limits]` table
/// of a pipeline config; every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory of the sink, in bytes.
    pub memory_bytes: u64,
    /// Instruction budget per batch (wasmtime fuel; about one unit per Wasm
    /// instruction).
    pub fuel: u64,
    /// Wall-clock deadline for one batch, in milliseconds.
    pub deadline_ms: u64,
    /// Bytes the sink may write into `/staging` in one batch.
    pub staging_bytes: u64,
    /// Rows the sink may stage in one batch, over all tables.
    pub output_rows: u64,
    /// Bytes of staged rows in one batch, over all tables.
    pub output_bytes: u64,
    /// Bytes of log per batch (log calls, stdout and stderr together).
    pub log_bytes: u64,
    /// Log lines per batch.
    pub log_lines: u64,
    /// Maximum records per chunk delivered to the sink.
    pub chunk_records: u32,
    /// Target bytes per chunk delivered to the sink (a single larger record
    /// still gets a chunk of its own).
    pub chunk_bytes: u32,
    /// Maximum Wasm stack, in bytes: deep recursion traps past it.
    pub stack_bytes: u64,
    /// Virtual time the sink may spend waiting (sleeps, clock pollables) in
    /// one batch, in milliseconds. Waiting costs no real time: the virtual
    /// clock jumps ahead; a sink that waits longer than this in total is
    /// treated as hung.
    pub sleep_ms: u64,
    /// Entries the sink may create in `/staging` in one batch (files,
    /// directories, symlinks, hard links), which is also the most entries
    /// its open directory listings may hold at once.
    pub staging_files: u64,
    /// Files the sink may hold open at once: descriptors, file streams and
    /// directory listings (each holds at most one host descriptor). Also the
    /// most pollables one `poll` call may list.
    pub open_files: u64,
    /// Components (`a/b/c` is 3) in one path the sink passes to the
    /// filesystem.
    pub path_depth: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            fuel: 50_000_000_000,
            deadline_ms: 60_000,
            staging_bytes: 1 << 30,
            output_rows: 10_000_000,
            output_bytes: 1 << 30,
            log_bytes: 1 << 20,
            log_lines: 10_000,
            chunk_records: 4096,
            chunk_bytes: 4 << 20,
            stack_bytes: 1 << 20,
            sleep_ms: 24 * 3600 * 1000,
            staging_files: 10_000,
            open_files: 256,
            path_depth: 64,
        }
    }
}

/// One of the [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `limits.memory_bytes`
    MemoryBytes,
    /// `limits.fuel`
    Fuel,
    /// `limits.deadline_ms`
    DeadlineMs,
    /// `limits.staging_bytes`
    StagingBytes,
    /// `limits.output_rows`
    OutputRows,
    /// `limits.output_bytes`
    OutputBytes,
    /// `limits.log_bytes`
    LogBytes,
    /// `limits.log_lines`
    LogLines,
    /// `limits.stack_bytes`
    StackBytes,
    /// `limits.sleep_ms`
    SleepMs,
    /// `limits.staging_files`
    StagingFiles,
    /// `limits.open_files`
    OpenFiles,
    /// `limits.path_depth`
    PathDepth,
}

impl Limit {
    /// The config key that sets this limit.
    pub fn key(self) -> &'static str {
        match self {
            Limit::MemoryBytes => "limits.memory_bytes",
            Limit::Fuel => "limits.fuel",
            Limit::DeadlineMs => "limits.deadline_ms",
            Limit::StagingBytes => "limits.staging_bytes",
            Limit::OutputRows => "limits.output_rows",
            Limit::OutputBytes => "limits.output_bytes",
            Limit::LogBytes => "limits.log_bytes",
            Limit::LogLines => "limits.log_lines",
            Limit::StackBytes => "limits.stack_bytes",
            Limit::SleepMs => "limits.sleep_ms",
            Limit::StagingFiles => "limits.staging_files",
            Limit::OpenFiles => "limits.open_files",
            Limit::PathDepth => "limits.path_depth",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::MemoryBytes => "its memory limit",
            Limit::Fuel => "its fuel (instruction) limit",
            Limit::DeadlineMs => "its wall-clock deadline",
            Limit::StagingBytes => "its /staging quota",
            Limit::OutputRows => "its staged-rows limit",
            Limit::OutputBytes => "its staged-bytes limit",
            Limit::LogBytes => "its log-bytes limit",
            Limit::LogLines => "its log-lines limit",
            Limit::StackBytes => "its stack limit (deep recursion)",
            Limit::SleepMs => "its virtual waiting time (it sleeps or waits on the clock for too long)",
            Limit::StagingFiles => "its /staging entries limit (files, directories and links created)",
            Limit::OpenFiles => "its open-files limit (descriptors, streams and listings held at once)",
            Limit::PathDepth => "its path depth limit",
        }
    }

    /// The configured value of this limit.
    pub fn value(self, limits: &Limits) -> u64 {
        match self {
            Limit::MemoryBytes => limits.memory_bytes,
            Limit::Fuel => limits.fuel,
            Limit::DeadlineMs => limits.deadline_ms,
            Limit::StagingBytes => limits.staging_bytes,
            Limit::OutputRows => limits.output_rows,
            Limit::OutputBytes => limits.output_bytes,
            Limit::LogBytes => limits.log_bytes,
            Limit::LogLines => limits.log_lines,
            Limit::StackBytes => limits.stack_bytes,
            Limit::SleepMs => limits.sleep_ms,
            Limit::StagingFiles => limits.staging_files,
            Limit::OpenFiles => limits.open_files,
            Limit::PathDepth => limits.path_depth,
        }
    }
}

/// A sink went past one of its limits. Raised inside the sandbox as a trap,
/// so the sink cannot catch it: the batch ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink exceeded {} ({} = {value})", limit.what(), limit.key())]
pub struct LimitExceeded {
    /// Which limit.
    pub limit: Limit,
    /// Its configured value.
    pub value: u64,
}

impl LimitExceeded {
    pub(crate) fn new(limit: Limit, limits: &Limits) -> Self {
        Self { limit, value: limit.value(limits) }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Charges usage against one limit. Shared between host functions of one batch.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Limit,
    max: u64,
    used: std::sync::atomic::AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: Limit, limits: &Limits) -> Self {
        Self { limit, max: limit.value(limits), used: Default::default() }
    }

    /// Charge `amount`; fails once the total would pass the limit.
    pub(crate) fn charge(&self, amount: u64) -> Result<(), LimitExceeded> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.used.fetch_add(amount, Relaxed);
        if before.saturating_add(amount) > self.max {
            return Err(LimitExceeded { limit: self.limit, value: self.max });
        }
        Ok(())
    }
}

/// Counts what a batch holds at once against one limit: what is given back
/// (a closed file, a dropped listing) can be taken again.
#[derive(Debug)]
pub(crate) struct Gauge {
    limit: Limit,
    max: u64,
    held: std::sync::atomic::AtomicU64,
}

impl Gauge {
    pub(crate) fn new(limit: Limit, limits: &Limits) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { limit, max: limit.value(limits), held: Default::default() })
    }

    /// Take `amount` until the returned [`Held`] is dropped; fails, taking
    /// nothing, if the total held would pass the limit.
    pub(crate) fn take(self: &std::sync::Arc<Self>, amount: u64) -> Result<Held, LimitExceeded> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.held.fetch_add(amount, Relaxed);
        if before.saturating_add(amount) > self.max {
            self.held.fetch_sub(amount, Relaxed);
            return Err(LimitExceeded { limit: self.limit, value: self.max });
        }
        Ok(Held { gauge: self.clone(), amount })
    }
}

/// A share of a [`Gauge`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    gauge: std::sync::Arc<Gauge>,
    amount: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.held.fetch_sub(self.amount, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_limit_and_key() {
        let e = LimitExceeded::new(Limit::Fuel, &Limits { fuel: 1000, ..Limits::default() });
        assert_eq!(e.to_string(), "sink exceeded its fuel (instruction) limit (limits.fuel = 1000)");
    }

    #[test]
    fn budget_allows_exactly_the_limit() {
        let b = Budget::new(Limit::OutputRows, &Limits { output_rows: 3, ..Limits::default() });
        assert!(b.charge(2).is_ok());
        assert!(b.charge(1).is_ok());
        assert_eq!(b.charge(1).unwrap_err().limit, Limit::OutputRows);
    }

    #[test]
    fn gauge_gives_back_what_is_dropped() {
        let g = Gauge::new(Limit::OpenFiles, &Limits { open_files: 2, ..Limits::default() });
        let a = g.take(1).unwrap();
        let _b = g.take(1).unwrap();
        assert_eq!(g.take(1).unwrap_err().to_string(), "sink exceeded its open-files limit (descriptors, streams and listings held at once) (limits.open_files = 2)");
        drop(a);
        let _c = g.take(1).expect("a dropped share can be taken again");
        assert!(g.take(1).is_err(), "a failed take takes nothing, and nothing more is free");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = serde_json::from_str::<Limits>(r#"{"fuell": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `fuell`"), "{err}");
    }
}
