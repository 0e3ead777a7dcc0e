//! Where the pipeline's data lives: local disk or object storage (S3 and
//! S3-compatible servers, Azure Blob / ADLS Gen2, Google Cloud Storage),
//! for the tables and the checkpoint alike.
//!
//! - [`location`]: the one parser of a location's text. A URL of a scheme
//!   sluice cannot serve is a config error naming the key, never a local
//!   path.
//! - [`blobs`]: create-only and compare-and-swap writes of small objects,
//!   for the checkpoint and its lease.
//!
//! Both go through delta-rs's own object-store backends, so a table and a
//! checkpoint in one bucket take the same credentials: the cloud's standard
//! chain (environment, profile, instance or managed identity), or the keys
//! delta-rs takes in `storage_options`. [`StorageOptions`] never shows its
//! values: they are often secrets.

pub mod blobs;
pub mod location;

pub use location::Location;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Once;

/// Object-store options as delta-rs takes them (`aws_endpoint_url`,
/// `azure_storage_account_name`, …). Debug output shows the keys only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl StorageOptions {
    /// `self` with `more` on top (a table's own options over the pipeline's).
    pub fn merged(&self, more: &StorageOptions) -> StorageOptions {
        let mut out = self.0.clone();
        out.extend(more.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        StorageOptions(out)
    }

    /// The options as pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The options as the map delta-rs's table builder takes.
    pub fn to_map(&self) -> std::collections::HashMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Register delta-rs's S3, Azure and GCS backends (once per process):
/// without it their URL schemes are unknown to delta-rs.
pub fn register_backends() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::azure::register_handlers(None);
        deltalake::gcp::register_handlers(None);
    });
}
