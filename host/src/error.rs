//! Errors of loading a sink and of running a batch.
//!
//! Batch errors are classified so the pipeline loop can decide mechanically:
//! the sink's fault (user), the outside world's (external: Kafka, disk), or a
//! sluice bug (internal); and whether a retry with a fresh instance can help.

use crate::sandbox::batch_log::LogLine;
use crate::limits::{Limit, LimitExceeded};
use crate::output::StageViolation;
use crate::source::records::SourceError;
use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = BatchFailure> = std::result::Result<T, E>;

/// A component could not be loaded. Raised before any batch runs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read sink component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error(
        "{what} is not a WebAssembly component (it does not start with the \\0asm magic); \
         build the sink with `cargo build --target wasm32-wasip2` or another component toolchain"
    )]
    NotWasm {
        /// The file or a description of the bytes.
        what: String,
    },
    /// The bytes are a core module, not a component.
    #[error(
        "{what} is a core WebAssembly module, not a component; build for wasm32-wasip2 \
         (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The file or a description of the bytes.
        what: String,
    },
    /// The component is invalid or fails to compile.
    #[error("{what}: invalid WebAssembly component: {detail}")]
    Compile {
        /// The file or a description of the bytes.
        what: String,
        /// The validator's or compiler's message.
        detail: String,
    },
    /// The component is not a `sluice:sink/sink` component of a version
    /// the host runs (0.2.0, or 0.1.0).
    #[error(
        "{what} is not a sluice sink: {detail}. A sink must export `sluice:sink/handler@0.2.0` (or, built \
         against the earlier WIT, `@0.1.0`) and import only the sluice:sink interfaces of that version and WASI 0.2"
    )]
    WrongWorld {
        /// The file or a description of the bytes.
        what: String,
        /// What does not match.
        detail: String,
    },
    /// The engine could not be created (a bad limit, say).
    #[error("cannot create the sink engine: {0}")]
    Engine(String),
    /// The scratch root could not be created.
    #[error("cannot create the scratch directory {path}: {source}")]
    Scratch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The compiled-component cache failed.
    #[error("component cache at {dir}: {source}")]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whose fault a failed batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The sink's: a trap, a limit, or an error it returned.
    User,
    /// The outside world's: the record source, the disk.
    External,
    /// A bug in sluice.
    Internal,
}

/// Why one batch attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The sink returned `sink-error.invalid-input`.
    #[error("sink rejected its input: {0}")]
    InvalidInput(String),
    /// The sink returned `sink-error.failed`.
    #[error("sink failed: {0}")]
    SinkFailed(String),
    /// The sink went past a limit.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The sink broke a rule of the pipeline when staging (an upsert on keys
    /// other than the table's).
    #[error(transparent)]
    Refused(#[from] StageViolation),
    /// The sink passed a host call something the canonical ABI forbids: a
    /// string that is not UTF-8, a pointer outside its memory, a bad
    /// discriminant or handle.
    #[error("sink made an invalid host call: {0}")]
    InvalidCall(String),
    /// The sink trapped (a panic, `unreachable`, an out-of-bounds access).
    #[error("sink trapped: {trap}{}", stderr_tail(.stderr))]
    Trap {
        /// The trap, as wasmtime describes it.
        trap: String,
        /// The last lines the sink wrote to stderr (a panic message, say).
        stderr: Vec<String>,
    },
    /// The records could not be delivered.
    #[error("record source: {0}")]
    Source(#[from] SourceError),
    /// The batch's `/staging` directory could not be set up or cleaned.
    #[error("scratch directory {path}: {source}")]
    Scratch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Every sandbox slot is taken by other running batches.
    #[error("no free sandbox slot: {0}; retry when a batch finishes, or raise max_concurrent_batches")]
    Capacity(String),
    /// A sluice bug or a wasmtime failure not caused by the sink.
    #[error("internal error: {0}")]
    Internal(String),
}

fn stderr_tail(lines: &[String]) -> String {
    if lines.is_empty() { String::new() } else { format!("; stderr: {}", lines.join(" | ")) }
}

impl BatchError {
    /// Whose fault this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            BatchError::InvalidInput(_)
            | BatchError::SinkFailed(_)
            | BatchError::Limit(_)
            | BatchError::Refused(_)
            | BatchError::InvalidCall(_)
            | BatchError::Trap { .. } => ErrorClass::User,
            BatchError::Source(_) | BatchError::Scratch { .. } | BatchError::Capacity(_) => ErrorClass::External,
            BatchError::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Whether a new attempt (fresh instance, fresh staging) can succeed.
    ///
    /// The sink runs deterministically, so anything it caused recurs, except
    /// for the deadline, which depends on the machine's load. A sink's own
    /// `failed` error is retried: it may come from a transient host limit.
    pub fn retryable(&self) -> bool {
        match self {
            BatchError::InvalidInput(_)
            | BatchError::Trap { .. }
            | BatchError::Refused(_)
            | BatchError::InvalidCall(_)
            | BatchError::Internal(_) => false,
            BatchError::Limit(e) => e.limit == Limit::DeadlineMs,
            BatchError::SinkFailed(_) | BatchError::Source(_) | BatchError::Scratch { .. } | BatchError::Capacity(_) => {
                true
            }
        }
    }

    /// The limit this error reports, if any.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            BatchError::Limit(e) => Some(e.limit),
            _ => None,
        }
    }
}

/// A failed batch attempt: the error, plus what is kept for the post-mortem.
#[derive(Debug, thiserror::Error)]
#[error("batch {batch_id}: {error}")]
pub struct BatchFailure {
    /// The batch.
    pub batch_id: u64,
    /// The attempt (1-based).
    pub attempt: u32,
    /// Why it failed.
    #[source]
    pub error: BatchError,
    /// The batch log up to the failure.
    pub log: Vec<LogLine>,
    /// The attempt's `/staging`, kept for inspection.
    pub kept_scratch: Option<PathBuf>,
}
