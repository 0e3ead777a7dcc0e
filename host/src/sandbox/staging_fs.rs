//! `/staging` as the sink sees it: bounded, and the same on every machine.
//!
//! Bounded. Every descriptor a sink opens holds a real host descriptor, and
//! the host needs its own (Kafka sockets, the Delta commit of the previous
//! batch running beside this one). So the filesystem functions of
//! `wasi:filesystem/types` are shadowed in the linker:
//!
//! - `open-at`, `read-directory` and `read-via-stream` take a share of
//!   `limits.open_files`, given back when the descriptor, listing or stream
//!   is dropped (the write streams of `staging_quota` take one too). The
//!   count is exact for what the sink holds, and an upper bound on the host
//!   descriptors behind it (a stream shares its file's descriptor);
//! - every entry the sink creates (a file by `open-at` with `create` that
//!   did not exist, a directory, a symlink, a hard link) counts against
//!   `limits.staging_files`, and its cost on disk, [`ENTRY_BYTES`] plus its
//!   name, against `limits.staging_bytes`; a rename pays for the new name.
//!   So the tree clean-up has to walk is bounded, whatever its shape;
//! - every path argument has at most `limits.path_depth` components.
//!
//! Deterministic. What the host filesystem would leak is replaced by
//! functions of the batch and of what the sink did:
//!
//! - directory listings come sorted by name, not in the order of the
//!   filesystem's hash tree;
//! - `stat` reports every timestamp as the batch's planned timestamp, a link
//!   count of 1, and size 0 for directories (their size is the
//!   filesystem's bookkeeping: 4096 on ext4, a function of the entries on
//!   tmpfs);
//! - `metadata-hash` is a hash of the path the descriptor was opened by, the
//!   type and the size, never of inode and device numbers.
//!
//! Going past a limit traps with [`LimitExceeded`]: the batch ends with the
//! limit's typed error, the host's descriptors untouched.

use super::state::BatchState;
use crate::limits::{Gauge, Held, Limit, LimitExceeded, Limits};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::ReaddirIterator;
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{self as fs, HostDescriptor, HostDirectoryEntryStream};
use wasmtime_wasi::p2::{DynInputStream, FsResult};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{InputStream, StreamResult};

/// The WASI filesystem interface as wasmtime-wasi 48 registers it.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// What one directory entry is charged against `limits.staging_bytes`
/// besides its name: about an inode and a directory block.
pub(crate) const ENTRY_BYTES: u64 = 4096;

type FsReturn<T> = wasmtime::Result<(Result<T, fs::ErrorCode>,)>;

/// A batch's bookkeeping of its `/staging`.
pub(crate) struct StagingFs {
    open: Arc<Gauge>,
    listed: Arc<Gauge>,
    created: u64,
    max_created: u64,
    max_depth: u64,
    /// Descriptors opened by the sink: their share of `open_files` and the
    /// path they were opened by (the preopen, absent here, is the root "").
    descriptors: HashMap<u32, (Held, String)>,
    /// Open listings: what is left of each, sorted, and its shares.
    listings: HashMap<u32, Listing>,
    /// Every timestamp `stat` reports: the batch's planned timestamp.
    stamp: fs::Datetime,
    limits: Limits,
}

struct Listing {
    left: VecDeque<fs::DirectoryEntry>,
    /// An error the filesystem gave part-way, reported after the entries.
    error: Option<fs::ErrorCode>,
    _open: Held,
    _listed: Held,
}

impl StagingFs {
    pub(crate) fn new(limits: &Limits, planned: std::time::Duration) -> Self {
        Self {
            open: Gauge::new(Limit::OpenFiles, limits),
            listed: Gauge::new(Limit::StagingFiles, limits),
            created: 0,
            max_created: limits.staging_files,
            max_depth: limits.path_depth,
            descriptors: HashMap::new(),
            listings: HashMap::new(),
            stamp: fs::Datetime { seconds: planned.as_secs(), nanoseconds: planned.subsec_nanos() },
            limits: limits.clone(),
        }
    }

    /// A share of `limits.open_files`, for a stream in `staging_quota`.
    pub(crate) fn open_one(&self) -> wasmtime::Result<Held> {
        self.open.take(1).map_err(wasmtime::Error::new)
    }

    fn limit(&self, limit: Limit) -> wasmtime::Error {
        wasmtime::Error::new(LimitExceeded::new(limit, &self.limits))
    }

    fn check_depth(&self, path: &str) -> wasmtime::Result<()> {
        let depth = path.split('/').filter(|c| !c.is_empty() && *c != ".").count() as u64;
        if depth > self.max_depth {
            return Err(self.limit(Limit::PathDepth));
        }
        Ok(())
    }

    /// The path of descriptor `fd` (relative to `/staging`).
    fn path_of(&self, fd: u32) -> &str {
        self.descriptors.get(&fd).map_or("", |(_, p)| p.as_str())
    }
}

/// `path` resolved lexically against `base`.
fn join(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = if path.starts_with('/') { Vec::new() } else { base.split('/').filter(|c| !c.is_empty()).collect() };
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn name_len(path: &str) -> u64 {
    path.rsplit('/').find(|c| !c.is_empty()).map_or(0, str::len) as u64
}

/// Count one new entry named by `path` against `staging_files` and its cost
/// against `staging_bytes`.
fn charge_entry(state: &mut BatchState, path: &str) -> wasmtime::Result<()> {
    if state.fs.created >= state.fs.max_created {
        return Err(state.fs.limit(Limit::StagingFiles));
    }
    state.fs.created += 1;
    state.staging_quota.charge(ENTRY_BYTES + name_len(path)).map_err(wasmtime::Error::new)
}

fn finish<T>(state: &mut BatchState, r: FsResult<T>) -> FsReturn<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(fs::Host::convert_error_code(&mut state.filesystem(), e)?),)),
    }
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

/// What `stat` may show: no clock, inode or filesystem of the host.
fn normalise(mut stat: fs::DescriptorStat, stamp: fs::Datetime) -> fs::DescriptorStat {
    stat.link_count = 1;
    if stat.type_ == fs::DescriptorType::Directory {
        stat.size = 0;
    }
    stat.data_access_timestamp = Some(stamp);
    stat.data_modification_timestamp = Some(stamp);
    stat.status_change_timestamp = Some(stamp);
    stat
}

/// The hash of what a normalised `stat` shows and the path: never of the
/// host's inode, device or directory sizes.
fn metadata_hash(path: &str, stat: &fs::DescriptorStat) -> fs::MetadataHashValue {
    let mut h = Sha256::new();
    h.update(b"sluice-metadata-v1\0");
    h.update([stat.type_ as u8]);
    h.update(stat.size.to_be_bytes());
    h.update(path.as_bytes());
    let d = h.finalize();
    fs::MetadataHashValue {
        lower: u64::from_be_bytes(d[..8].try_into().expect("8 bytes")),
        upper: u64::from_be_bytes(d[8..16].try_into().expect("8 bytes")),
    }
}

/// Shadow the descriptor-holding, entry-creating, path-taking and
/// metadata-reporting functions of `wasi:filesystem/types` in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<BatchState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut i = linker.instance(FILESYSTEM_TYPES)?;

    i.resource("descriptor", ResourceType::host::<Descriptor>(), |mut store, rep| {
        let state = store.data_mut();
        state.fs.descriptors.remove(&rep);
        HostDescriptor::drop(&mut state.filesystem(), Resource::new_own(rep))
    })?;
    i.resource("directory-entry-stream", ResourceType::host::<ReaddirIterator>(), |mut store, rep| {
        let state = store.data_mut();
        state.fs.listings.remove(&rep);
        HostDirectoryEntryStream::drop(&mut state.filesystem(), Resource::new_own(rep))
    })?;

    i.func_wrap(
        "[method]descriptor.open-at",
        |mut store,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            fs::PathFlags,
            String,
            fs::OpenFlags,
            fs::DescriptorFlags,
        )| {
            let state = store.data_mut();
            state.fs.check_depth(&path)?;
            // Taken before the open: the host never holds more than the limit.
            let held = state.fs.open.take(1).map_err(wasmtime::Error::new)?;
            if oflags.contains(fs::OpenFlags::CREATE) {
                let exists = HostDescriptor::stat_at(&mut state.filesystem(), borrow(&fd), path_flags, path.clone()).is_ok();
                if !exists {
                    charge_entry(state, &path)?;
                }
            }
            let opened_by = join(state.fs.path_of(fd.rep()), &path);
            let r = HostDescriptor::open_at(&mut state.filesystem(), fd, path_flags, path, oflags, flags);
            if let Ok(new) = &r {
                state.fs.descriptors.insert(new.rep(), (held, opened_by));
            }
            finish(state, r)
        },
    )?;
    i.func_wrap("[method]descriptor.create-directory-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&path)?;
        charge_entry(state, &path)?;
        let r = HostDescriptor::create_directory_at(&mut state.filesystem(), fd, path);
        finish(state, r)
    })?;
    i.func_wrap("[method]descriptor.symlink-at", |mut store, (fd, target, path): (Resource<Descriptor>, String, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&target)?;
        state.fs.check_depth(&path)?;
        charge_entry(state, &path)?;
        let r = HostDescriptor::symlink_at(&mut state.filesystem(), fd, target, path);
        finish(state, r)
    })?;
    i.func_wrap(
        "[method]descriptor.link-at",
        |mut store, (fd, flags, old, new_fd, new): (Resource<Descriptor>, fs::PathFlags, String, Resource<Descriptor>, String)| {
            let state = store.data_mut();
            state.fs.check_depth(&old)?;
            state.fs.check_depth(&new)?;
            charge_entry(state, &new)?;
            let r = HostDescriptor::link_at(&mut state.filesystem(), fd, flags, old, new_fd, new);
            finish(state, r)
        },
    )?;
    i.func_wrap(
        "[method]descriptor.rename-at",
        |mut store, (fd, old, new_fd, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            let state = store.data_mut();
            state.fs.check_depth(&old)?;
            state.fs.check_depth(&new)?;
            state.staging_quota.charge(name_len(&new)).map_err(wasmtime::Error::new)?;
            let r = HostDescriptor::rename_at(&mut state.filesystem(), fd, old, new_fd, new);
            finish(state, r)
        },
    )?;
    i.func_wrap("[method]descriptor.remove-directory-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&path)?;
        let r = HostDescriptor::remove_directory_at(&mut state.filesystem(), fd, path);
        finish(state, r)
    })?;
    i.func_wrap("[method]descriptor.unlink-file-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&path)?;
        let r = HostDescriptor::unlink_file_at(&mut state.filesystem(), fd, path);
        finish(state, r)
    })?;
    i.func_wrap("[method]descriptor.readlink-at", |mut store, (fd, path): (Resource<Descriptor>, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&path)?;
        let r = HostDescriptor::readlink_at(&mut state.filesystem(), fd, path);
        finish(state, r)
    })?;
    i.func_wrap(
        "[method]descriptor.set-times-at",
        |mut store,
         (fd, flags, path, atim, mtim): (Resource<Descriptor>, fs::PathFlags, String, fs::NewTimestamp, fs::NewTimestamp)| {
            let state = store.data_mut();
            state.fs.check_depth(&path)?;
            let r = HostDescriptor::set_times_at(&mut state.filesystem(), fd, flags, path, atim, mtim);
            finish(state, r)
        },
    )?;

    i.func_wrap("[method]descriptor.stat", |mut store, (fd,): (Resource<Descriptor>,)| {
        let state = store.data_mut();
        let stamp = state.fs.stamp;
        let r = HostDescriptor::stat(&mut state.filesystem(), fd).map(|s| normalise(s, stamp));
        finish(state, r)
    })?;
    i.func_wrap("[method]descriptor.stat-at", |mut store, (fd, flags, path): (Resource<Descriptor>, fs::PathFlags, String)| {
        let state = store.data_mut();
        state.fs.check_depth(&path)?;
        let stamp = state.fs.stamp;
        let r = HostDescriptor::stat_at(&mut state.filesystem(), fd, flags, path).map(|s| normalise(s, stamp));
        finish(state, r)
    })?;
    i.func_wrap("[method]descriptor.metadata-hash", |mut store, (fd,): (Resource<Descriptor>,)| {
        let state = store.data_mut();
        let (path, stamp) = (state.fs.path_of(fd.rep()).to_owned(), state.fs.stamp);
        let r = HostDescriptor::stat(&mut state.filesystem(), fd).map(|s| metadata_hash(&path, &normalise(s, stamp)));
        finish(state, r)
    })?;
    i.func_wrap(
        "[method]descriptor.metadata-hash-at",
        |mut store, (fd, flags, path): (Resource<Descriptor>, fs::PathFlags, String)| {
            let state = store.data_mut();
            state.fs.check_depth(&path)?;
            let (full, stamp) = (join(state.fs.path_of(fd.rep()), &path), state.fs.stamp);
            let r = HostDescriptor::stat_at(&mut state.filesystem(), fd, flags, path)
                .map(|s| metadata_hash(&full, &normalise(s, stamp)));
            finish(state, r)
        },
    )?;

    i.func_wrap("[method]descriptor.read-directory", |mut store, (fd,): (Resource<Descriptor>,)| {
        let state = store.data_mut();
        let open = state.fs.open.take(1).map_err(wasmtime::Error::new)?;
        let stream = match HostDescriptor::read_directory(&mut state.filesystem(), fd) {
            Ok(stream) => stream,
            Err(e) => return finish(state, Err(e)),
        };
        // wasmtime-wasi reads the whole directory at once; take it all,
        // in the filesystem's order, and hand it out sorted.
        let mut entries = Vec::new();
        let mut error = None;
        loop {
            match HostDirectoryEntryStream::read_directory_entry(&mut state.filesystem(), borrow(&stream)) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => break,
                Err(e) => {
                    error = Some(fs::Host::convert_error_code(&mut state.filesystem(), e)?);
                    break;
                }
            }
        }
        let listed = state.fs.listed.take(entries.len() as u64).map_err(wasmtime::Error::new)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let listing = Listing { left: entries.into(), error, _open: open, _listed: listed };
        state.fs.listings.insert(stream.rep(), listing);
        Ok((Ok(stream),))
    })?;
    i.func_wrap(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store, (stream,): (Resource<ReaddirIterator>,)| {
            let state = store.data_mut();
            let Some(listing) = state.fs.listings.get_mut(&stream.rep()) else {
                let r = HostDirectoryEntryStream::read_directory_entry(&mut state.filesystem(), stream);
                return finish(state, r);
            };
            Ok((match listing.left.pop_front() {
                Some(entry) => Ok(Some(entry)),
                None => listing.error.take().map_or(Ok(None), Err),
            },))
        },
    )?;
    i.func_wrap(
        "[method]descriptor.read-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, fs::Filesize)| {
            let state = store.data_mut();
            let held = state.fs.open.take(1).map_err(wasmtime::Error::new)?;
            let r = HostDescriptor::read_via_stream(&mut state.filesystem(), fd, offset);
            let r = match r {
                Ok(stream) => {
                    let table = state.ctx().table;
                    let inner = table.delete(stream)?;
                    Ok(table.push(Box::new(CountedInput { inner, _held: held }) as DynInputStream)?)
                }
                Err(e) => Err(e),
            };
            finish(state, r)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A file's input stream holding its share of `limits.open_files`.
struct CountedInput {
    inner: DynInputStream,
    _held: Held,
}

#[async_trait::async_trait]
impl Pollable for CountedInput {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl InputStream for CountedInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.read(size)
    }
    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.blocking_read(size).await
    }
    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.skip(nelem)
    }
    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(nelem).await
    }
    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_lexically_and_depth_counts_components() {
        assert_eq!(join("", "a/b"), "a/b");
        assert_eq!(join("a/b", "../c/./d"), "a/c/d");
        assert_eq!(join("a", "/x"), "x");
        assert_eq!(name_len("dir/name.txt"), 8);
        assert_eq!(name_len("dir/"), 3);
        let fs = StagingFs::new(&Limits { path_depth: 3, ..Limits::default() }, std::time::Duration::ZERO);
        assert!(fs.check_depth("a/./b//c").is_ok());
        let err = fs.check_depth("a/b/c/d").unwrap_err();
        assert_eq!(err.downcast_ref::<LimitExceeded>().map(|e| e.limit), Some(Limit::PathDepth));
    }

    #[test]
    fn stat_shows_nothing_of_the_host_filesystem() {
        let stamp = fs::Datetime { seconds: 1_700_000_000, nanoseconds: 0 };
        let real = fs::DescriptorStat {
            type_: fs::DescriptorType::Directory,
            link_count: 7,
            size: 4096,
            data_access_timestamp: None,
            data_modification_timestamp: Some(fs::Datetime { seconds: 5, nanoseconds: 6 }),
            status_change_timestamp: None,
        };
        let shown = normalise(real, stamp);
        assert_eq!((shown.link_count, shown.size), (1, 0));
        for t in [shown.data_access_timestamp, shown.data_modification_timestamp, shown.status_change_timestamp] {
            assert_eq!(t.map(|t| (t.seconds, t.nanoseconds)), Some((1_700_000_000, 0)));
        }
    }
}
