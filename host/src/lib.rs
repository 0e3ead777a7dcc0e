//! sluice runs untrusted `foreachBatch` sink code as WebAssembly components.
//!
//! Every batch gets a fresh component instance whose only filesystem is a
//! `/staging` directory private to that batch attempt, a deterministic
//! environment (clock, random) derived from the batch identity, and hard
//! limits. The sink returns staged table operations; computing them never
//! touches a table.
//!
//! A batch's run, stage by stage:
//!
//! | stage                                   | module        |
//! |-----------------------------------------|---------------|
//! | limits and their config keys            | [`limits`]    |
//! | the batch's records, in bounded chunks  | `records`     |
//! | a private `/staging` per batch attempt  | `scratch`     |
//! | clock and random derived from the batch | `determinism` |
//! | engine, component cache, fresh instance | `runtime`     |
//! | staged table operations and their digest| `output`      |
//! | the batch log (guest log, stdout/stderr)| `batch_log`   |
//! | running one batch from a JSONL file     | `exec`        |
//! | Kafka: plan batches, fetch exact ranges | [`source`]    |
//! | write-ahead offset log and commit log   | [`checkpoint`]|
//! | batch output → Delta tables, once       | [`commit`]    |
//! | `pipeline.toml`                         | [`config`]    |
//! | the batch life: plan, run, commit, log  | [`pipeline`]  |
//! | Prometheus metrics                      | [`metrics`]   |
//! | `sluice status`                         | [`status`]    |
//! | `sluice replay`: one batch, dry run     | [`replay`]    |
//! | row-level diff of two batch outputs     | [`row_diff`]  |
//! | portable batch bundles                  | [`bundle`]    |
//! | `sluice batch export`                   | [`export`]    |
//! | `sluice batch show`, attempt records    | [`batch_show`], [`attempt_log`] |
//! | `sluice reconcile`                      | [`reconcile`] |
//! | `sluice demo`: embedded Kafka + example | [`demo`]      |

pub mod attempt_log;
mod batch_log;
pub mod batch_show;
pub mod bundle;
pub mod checkpoint;
pub mod commit;
pub mod config;
pub mod demo;
mod determinism;
mod error;
pub mod exec;
pub mod export;
mod failpoint;
mod last_per_key;
pub mod limits;
pub mod metrics;
mod output;
pub mod pipeline;
mod read_ahead;
mod records;
pub mod reconcile;
pub mod replay;
pub mod row_diff;
mod runtime;
mod scratch;
pub mod source;
pub mod status;

pub use batch_log::{Level, LogLine, LogSource};
pub use error::{BatchError, BatchFailure, ErrorClass, LoadError, Result};
pub use limits::{Limit, LimitExceeded, Limits};
pub use output::{ArrowRows, BatchOutput, FileFormat, StagedOp, StagedRows, TableSummary, Timings, WriteMode};
pub use records::{BatchSpec, ChunkBuilder, Fill, OwnedRecord, RecordSource, SourceError, SourceRange, VecSource};
pub use runtime::{Runtime, RuntimeBuilder, Sink};
pub use scratch::ScratchRoot;
