//! Write sluice sinks in Rust.
//!
//! A sink is Spark's `foreachBatch` made safe: a function over one
//! micro-batch of Kafka records, compiled to a WebAssembly component
//! (`wasm32-wasip2`). The host runs every batch, retry and replay in a fresh
//! instance and commits what the sink staged exactly once, after it returned
//! `Ok`. This crate hides the `sluice:sink` WIT bindings behind a few types:
//!
//! | WIT                          | here                                   |
//! |------------------------------|----------------------------------------|
//! | `handler.for-each-batch`     | [`export_sink!`] over `fn(Batch)`       |
//! | `batch-info`, `record-stream`| [`Batch`], [`Chunk`], [`RecordRef`]    |
//! | `output.stage`               | [`Table`], [`FileFormat`], [`StageError`] |
//! | `output.stage` of Arrow IPC  | `Table::append_arrow`, `arrow` (feature `arrow`) |
//! | `log.log`                    | [`log`]                                |
//! | `sink-error`                 | [`SinkError`]                          |
//!
//! ```no_run
//! use sluice_sdk::{Batch, SinkError, Table, log};
//!
//! fn copy_values(batch: Batch) -> Result<(), SinkError> {
//!     let table = Table::new("events");
//!     for chunk in batch.chunks() {
//!         let rows = chunk.iter().filter_map(|record| {
//!             let value = record.value()?;
//!             Some(String::from_utf8_lossy(value).into_owned())
//!         });
//!         table.append_json(rows)?;
//!     }
//!     log::info("copied batch");
//!     Ok(())
//! }
//!
//! sluice_sdk::export_sink!(copy_values);
//! ```
//!
//! Build it as a `cdylib` with `cargo build --target wasm32-wasip2`; the
//! output `.wasm` is the component the host loads.
//!
//! Inside the sandbox the standard library mostly works as usual, with less
//! authority: files only under `/staging` (private to this batch attempt, and
//! the place to write files for [`Table::append_file`]), no network,
//! environment, arguments or stdin, a wall clock that starts at the batch's
//! planned timestamp and random bytes seeded from the batch, so a replay
//! computes the same output. `stdout`, `stderr` and [`log`] go to the batch
//! log. Returning an error or panicking (a trap) discards everything staged.

#![deny(missing_docs)]

#[cfg(feature = "arrow")]
pub mod arrow;
mod batch;
mod error;
pub mod json;
pub mod log;
mod output;
pub mod values;

pub use batch::{
    Batch, Chunk, ChunkIter, Chunks, Headers, Record, RecordRef, Records, SourceRange,
};
pub use error::SinkError;
pub use output::{FileFormat, StageError, Table};

/// Exports a function as the sink of this component.
///
/// The argument is anything callable as
/// `fn(Batch) -> Result<(), SinkError>`: the name of a function, or a closure.
/// Use it exactly once per crate, at item level.
///
/// ```no_run
/// fn sink(_batch: sluice_sdk::Batch) -> Result<(), sluice_sdk::SinkError> {
///     Ok(())
/// }
/// sluice_sdk::export_sink!(sink);
/// ```
#[macro_export]
macro_rules! export_sink {
    ($handler:expr $(,)?) => {
        const _: () = {
            struct __SluiceSink;

            impl $crate::__private::Guest for __SluiceSink {
                fn for_each_batch(
                    batch: $crate::__private::BatchInfo,
                    records: $crate::__private::RecordStream,
                ) -> ::core::result::Result<(), $crate::__private::WitSinkError> {
                    $crate::__private::run(batch, records, $handler)
                }
            }

            $crate::__private::bindings::export!(__SluiceSink with_types_in $crate::__private::bindings);
        };
    };
}

/// Support for [`export_sink!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    /// The only `wit_bindgen::generate!` site: everything else wraps it.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit/v0.2.0",
            world: "sink",
            // Imports take borrowed arguments, so staging rows or logging fields
            // does not copy them into owned strings first.
            ownership: Borrowing { duplicate_if_necessary: true },
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "sluice_sdk::__private::bindings",
        });
    }

    pub use bindings::exports::sluice::sink::handler::{
        BatchInfo, Guest, RecordStream, SinkError as WitSinkError,
    };

    use crate::{Batch, SinkError};

    /// Runs the user's sink over one batch and lowers its error to the WIT
    /// variant.
    pub fn run(
        info: BatchInfo,
        records: RecordStream,
        handler: impl FnOnce(Batch) -> Result<(), SinkError>,
    ) -> Result<(), WitSinkError> {
        handler(Batch::new(info, records)).map_err(SinkError::into_wit)
    }
}
