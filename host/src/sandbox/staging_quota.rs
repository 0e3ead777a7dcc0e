//! The `/staging` quota (`limits.staging_bytes`).
//!
//! wasmtime-wasi has no quota hook, so the four WASI functions that put bytes
//! on disk are shadowed in the linker: `write`, `write-via-stream`,
//! `append-via-stream` (whose streams are wrapped to count every byte) and
//! `set-size`. Each delegates to wasmtime-wasi after charging the batch's
//! budget; going past it traps with [`LimitExceeded`], ending the batch
//! before the disk fills. The quota counts bytes written, not file sizes: a
//! sink that rewrites a file pays for each write. Directory entries are
//! charged to it too (see `staging_fs`). A write stream holds a share of
//! `limits.open_files` while it lives.

use super::state::BatchState;
use crate::limits::{Budget, Held};
use bytes::Bytes;
use std::sync::Arc;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{self as fs, HostDescriptor};
use wasmtime_wasi::p2::{DynOutputStream, FsError, FsResult};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError, StreamResult};

/// The WASI filesystem interface as wasmtime-wasi 48 registers it.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

type FsReturn<T> = wasmtime::Result<(Result<T, fs::ErrorCode>,)>;

fn finish<T>(state: &mut BatchState, r: FsResult<T>) -> FsReturn<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(fs::Host::convert_error_code(&mut state.filesystem(), e)?),)),
    }
}

fn charge(state: &BatchState, bytes: u64) -> wasmtime::Result<()> {
    state.staging_quota.charge(bytes).map_err(wasmtime::Error::new)
}

/// Replace the writing functions of `wasi:filesystem/types` in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<BatchState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut fs_types = linker.instance(FILESYSTEM_TYPES)?;
    fs_types.func_wrap(
        "[method]descriptor.write",
        |mut store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            let state = store.data_mut();
            charge(state, buf.len() as u64)?;
            let r = HostDescriptor::write(&mut state.filesystem(), fd, buf, offset);
            finish(state, r)
        },
    )?;
    fs_types.func_wrap("[method]descriptor.set-size", |mut store, (fd, size): (Resource<Descriptor>, u64)| {
        let state = store.data_mut();
        // Growing a file by `set-size` reserves disk too; charge the new size.
        charge(state, size)?;
        let r = HostDescriptor::set_size(&mut state.filesystem(), fd, size);
        finish(state, r)
    })?;
    fs_types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let r = HostDescriptor::write_via_stream(&mut state.filesystem(), fd, offset);
            let r = r.and_then(|s| wrap(state, s).map_err(FsError::trap));
            finish(state, r)
        },
    )?;
    fs_types.func_wrap("[method]descriptor.append-via-stream", |mut store, (fd,): (Resource<Descriptor>,)| {
        let state = store.data_mut();
        let r = HostDescriptor::append_via_stream(&mut state.filesystem(), fd);
        let r = r.and_then(|s| wrap(state, s).map_err(FsError::trap));
        finish(state, r)
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Swap the stream behind `stream` for one that charges the quota.
fn wrap(
    state: &mut BatchState,
    stream: Resource<DynOutputStream>,
) -> wasmtime::Result<Resource<DynOutputStream>> {
    let quota = state.staging_quota.clone();
    let held = state.fs.open_one()?;
    let table = state.ctx().table;
    let inner = table.delete(stream)?;
    Ok(table.push(Box::new(QuotaStream { inner, quota, _held: held }) as DynOutputStream)?)
}

struct QuotaStream {
    inner: DynOutputStream,
    quota: Arc<Budget>,
    _held: Held,
}

#[async_trait::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.quota.charge(bytes.len() as u64).map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))?;
        self.inner.write(bytes)
    }
    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}
