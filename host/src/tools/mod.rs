//! The operator's and the sink author's tools around the pipeline: running
//! one batch from a file, replaying a committed batch, diffing outputs,
//! bundles, reconciling the books, status, maintenance on demand and the
//! embedded demo. None of them changes a table or the checkpoint except
//! `maintain` (which owns the checkpoint while it runs, and changes no row)
//! and `demo`, which runs a pipeline of its own.

pub mod batch_show;
pub mod bundle;
pub mod demo;
pub mod exec;
pub mod export;
pub mod maintain;
pub mod reconcile;
pub mod replay;
pub mod row_diff;
pub mod status;
