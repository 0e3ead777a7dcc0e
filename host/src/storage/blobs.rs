//! A blocking client for one object-store prefix, for the checkpoint and
//! its lease: small objects, read whole, written whole.
//!
//! Guarantees: [`Blobs::create`] is create-only (S3 `If-None-Match: *`,
//! Azure `If-None-Match: *`, GCS `ifGenerationMatch=0`), so of two writers
//! of one key exactly one wins and the other is told; [`Blobs::replace`] is
//! compare-and-swap on the object's ETag (`If-Match`). The store is built
//! by delta-rs's own factories, so the checkpoint takes the same
//! credentials chain and `storage_options` as the tables. Errors name the
//! object's URL and never carry option values (keys and secrets).
//!
//! Every call runs on the client's own small Tokio runtime, so it can be
//! called from any thread, including the lease keeper's.

use crate::storage::StorageOptions;
use deltalake::logstore::object_store::path::Path as ObjectPath;
use deltalake::logstore::object_store::{
    self as os, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use std::io;
use std::sync::Arc;
use url::Url;

/// A version of an object: what [`Blobs::replace`] compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(UpdateVersion);

/// A blocking client for the objects under one URL prefix.
pub struct Blobs {
    url: Url,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Blobs {
    /// A client for the objects under `url`, configured by `options` (the
    /// keys delta-rs takes) and the environment's credential chain.
    pub fn open(url: &Url, options: &StorageOptions) -> io::Result<Self> {
        crate::storage::register_backends();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let store = runtime
            .block_on(async { deltalake::logstore::store_for(url, options.iter()) })
            .map_err(|e| io::Error::other(format!("{}: cannot open the object store: {e}", url)))?;
        Ok(Self {
            url: url.clone(),
            store: Arc::from(store),
            runtime,
        })
    }

    /// The URL of `key`, for messages.
    pub fn url_of(&self, key: &str) -> String {
        let base = self.url.as_str().trim_end_matches('/');
        if key.is_empty() { base.to_owned() } else { format!("{base}/{key}") }
    }

    /// The object at `key` and its version; `None` if there is none.
    pub fn get(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            let got = match self.store.get(&path).await {
                Ok(got) => got,
                Err(os::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err(key, e)),
            };
            let version = Version(UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            });
            let bytes = got.bytes().await.map_err(|e| self.err(key, e))?;
            Ok(Some((bytes.to_vec(), version)))
        })
    }

    /// Write `key` only if no object is there. `Ok(None)`: one is (another
    /// writer won); otherwise the new object's version.
    pub fn create(&self, key: &str, bytes: &[u8]) -> io::Result<Option<Version>> {
        self.put_with(key, bytes, PutMode::Create)
    }

    /// Write `key` only if its current version is `expected`. `Ok(None)`:
    /// the object changed (or went) since it was read.
    pub fn replace(
        &self,
        key: &str,
        bytes: &[u8],
        expected: &Version,
    ) -> io::Result<Option<Version>> {
        self.put_with(key, bytes, PutMode::Update(expected.0.clone()))
    }

    /// Write `key`, replacing what is there.
    pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.put_with(key, bytes, PutMode::Overwrite).map(drop)
    }

    fn put_with(&self, key: &str, bytes: &[u8], mode: PutMode) -> io::Result<Option<Version>> {
        let path = ObjectPath::from(key);
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime.block_on(async {
            match self.store.put_opts(&path, payload, PutOptions { mode, ..Default::default() }).await {
                Ok(put) => Ok(Some(Version(UpdateVersion { e_tag: put.e_tag, version: put.version }))),
                Err(os::Error::AlreadyExists { .. } | os::Error::Precondition { .. }) => Ok(None),
                // A store that cannot write conditionally must not pretend to.
                Err(e @ os::Error::NotImplemented { .. }) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{}: the object store cannot write conditionally ({e}); sluice needs put-if-absent", self.url_of(key)),
                )),
                Err(e) => Err(self.err(key, e)),
            }
        })
    }

    /// The names of the objects directly under `dir/` (not deeper).
    pub fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = ObjectPath::from(dir);
        self.runtime.block_on(async {
            let listed = self
                .store
                .list_with_delimiter(Some(&prefix))
                .await
                .map_err(|e| self.err(dir, e))?;
            Ok(listed
                .objects
                .into_iter()
                .filter_map(|o| o.location.filename().map(str::to_owned))
                .collect())
        })
    }

    /// Remove `key`; nothing there is not an error.
    pub fn delete(&self, key: &str) -> io::Result<bool> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.delete(&path).await {
                Ok(()) => Ok(true),
                Err(os::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.err(key, e)),
            }
        })
    }

    fn err(&self, key: &str, e: os::Error) -> io::Error {
        let kind = match &e {
            os::Error::NotFound { .. } => io::ErrorKind::NotFound,
            os::Error::PermissionDenied { .. } | os::Error::Unauthenticated { .. } => {
                io::ErrorKind::PermissionDenied
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{}: {e}", self.url_of(key)))
    }
}
