//! sluice runs untrusted `foreachBatch` sink code as WebAssembly components.
//!
//! Every batch gets a fresh component instance whose only filesystem is a
//! `/staging` directory private to that batch attempt, a deterministic
//! environment (clock, random) derived from the batch identity, and hard
//! limits. The sink returns staged table operations; computing them never
//! touches a table.
//!
//! The source tree is laid out by stage; a batch's run, room by room:
//!
//! | room            | what it holds                                                      |
//! |-----------------|--------------------------------------------------------------------|
//! | [`limits`]      | limits and their config keys                                       |
//! | [`config`]      | `pipeline.toml`                                                    |
//! | [`source`]      | Kafka: plan batches, fetch exact ranges; record chunks, read-ahead |
//! | [`storage`]     | where data lives: local paths and object-store URLs               |
//! | [`checkpoint`]  | write-ahead offset log, commit log, lease, attempt records; rebuild |
//! | `sandbox`       | engine, component cache, fresh instance, `/staging`, clock, log    |
//! | `output`        | staged table operations and their digest                           |
//! | [`commit`]      | batch output → Delta tables, once                                  |
//! | [`pipeline`]    | the batch life: plan, run, commit, log; table agreement; metrics   |
//! | [`tools`]       | exec, replay, row diff, bundles, batch show, reconcile, status, demo |
//! | `cli` (binary)  | the `sluice` command line                                          |

pub mod checkpoint;
pub mod commit;
pub mod config;
mod error;
mod failpoint;
pub mod limits;
mod output;
pub mod pipeline;
mod sandbox;
pub mod source;
pub mod storage;
pub mod tools;

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before it):
/// planned timestamps, lease renewals, VACUUM retention, set-aside names.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub use sandbox::batch_log::{Level, LogLine, LogSource};
pub use error::{BatchError, BatchFailure, ErrorClass, LoadError, Result};
pub use limits::{Limit, LimitExceeded, Limits};
pub use output::{ArrowRows, BatchOutput, FileFormat, StageViolation, StagedOp, StagedRows, TableSummary, Timings, WriteMode};
pub use source::records::{BatchSpec, ChunkBuilder, Fill, OwnedRecord, RecordSource, SourceError, SourceRange, VecSource};
pub use sandbox::{Runtime, RuntimeBuilder, Sink};
pub use sandbox::scratch::ScratchRoot;
