//! The store data of one batch attempt, and the host side of record
//! delivery and the memory limit (`output.stage` and `log.log` are in
//! `guest_args`).

use super::bindings::sluice::sink::{records, types};
use crate::sandbox::batch_log::BatchLog;
use crate::limits::{Budget, Limit, LimitExceeded};
use crate::output::OutputCollector;
use crate::source::records::{ChunkBuilder, Fill, RecordSource};
use super::staging_fs::StagingFs;
use super::waiting::Waits;
use cap_std::fs::Dir;
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Marker for the one `record-stream` handed to the sink.
pub struct RecordStream;

pub(crate) struct BatchState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryLimiter,
    pub(crate) records: RecordCursor,
    /// Taken out while a `stage` call runs.
    pub(crate) output: Option<OutputCollector>,
    pub(crate) log: BatchLog,
    pub(crate) staging_quota: Arc<Budget>,
    /// Host-side handle on `/staging`, for reading staged files.
    pub(crate) staging: Dir,
    /// The virtual clock's waits (`waiting`).
    pub(crate) waits: Arc<Waits>,
    /// Open files, created entries, listings (`staging_fs`).
    pub(crate) fs: StagingFs,
}

impl WasiView for BatchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Pulls chunks from the record source on the sink's demand.
pub(crate) struct RecordCursor {
    pub(crate) source: Box<dyn RecordSource>,
    pub(crate) builder: ChunkBuilder,
    pub(crate) done: bool,
}

impl records::HostRecordStream for BatchState {
    fn next_chunk(&mut self, _: Resource<RecordStream>) -> wasmtime::Result<Option<types::RecordChunk>> {
        let cursor = &mut self.records;
        if cursor.done {
            return Ok(None);
        }
        // A source error is the outside world's fault: trap with it so the
        // batch fails as `external`, never with a partial view of the batch.
        let fill = cursor.source.fill(&mut cursor.builder).map_err(wasmtime::Error::new)?;
        cursor.done = fill == Fill::Done;
        Ok(cursor.builder.take())
    }

    fn drop(&mut self, stream: Resource<RecordStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl records::Host for BatchState {}
impl types::Host for BatchState {}

/// 0.2.0's record stream is 0.1.0's: the same resource, the same chunk
/// (its fields moved, not copied).
mod v0_2 {
    use super::{BatchState, RecordStream, records, types};
    use crate::sandbox::bindings::v0_2::sluice::sink::{records as records2, types as types2};
    use wasmtime::component::Resource;

    impl records2::HostRecordStream for BatchState {
        fn next_chunk(&mut self, stream: Resource<RecordStream>) -> wasmtime::Result<Option<types2::RecordChunk>> {
            let chunk = records::HostRecordStream::next_chunk(self, stream)?;
            Ok(chunk.map(|c: types::RecordChunk| types2::RecordChunk {
                sources: c.sources,
                offsets: c.offsets,
                timestamps_ms: c.timestamps_ms,
                key_lens: c.key_lens,
                value_lens: c.value_lens,
                header_counts: c.header_counts,
                header_key_lens: c.header_key_lens,
                header_value_lens: c.header_value_lens,
                data: c.data,
            }))
        }

        fn drop(&mut self, stream: Resource<RecordStream>) -> wasmtime::Result<()> {
            records::HostRecordStream::drop(self, stream)
        }
    }

    impl records2::Host for BatchState {}
    impl types2::Host for BatchState {}
}

/// Caps linear memory at `limits.memory_bytes` with a typed error (the
/// pooling allocator's slot size is the hard backstop).
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: usize,
}

/// Tables hold function references; this many is far beyond any real sink.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            return Err(wasmtime::Error::new(LimitExceeded { limit: Limit::MemoryBytes, value: self.max_bytes as u64 }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
