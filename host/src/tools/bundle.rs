//! Batch bundles: one batch, portable, so it replays without Kafka or the
//! checkpoint (on another machine, in a fresh clone, after retention).
//!
//! A bundle is one file:
//!
//! ```text
//! sluice-bundle/1 sha256=<SHA-256 of everything after this line>\n
//! <manifest: one line of JSON>\n
//! <records section><component section, if included>
//! ```
//!
//! The manifest holds the batch's identity (ranges, seed, clock), the
//! digests of the component and config it was planned with, its commit
//! record, the tables and limits, and the length and SHA-256 of each
//! section. The whole-file checksum catches any damage; the per-section
//! ones name the part that is wrong. Records are length-prefixed binary, in
//! the order the sink received them.

use crate::checkpoint::CommittedBatch;
use crate::commit::TableConfig;
use crate::limits::Limits;
use crate::source::records::{BatchSpec, OwnedRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The first line of a bundle names its format.
const MAGIC: &str = "sluice-bundle/";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A bundle cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file cannot be read or written.
    #[error("bundle {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a bundle, or one of another format version.
    #[error("{path} is not a sluice bundle this version can read: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The file is damaged.
    #[error("bundle {path} is corrupt: {reason}; export the batch again with `sluice batch export`")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The bundle does not belong with what it is used with.
    #[error("bundle {path} does not match: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

/// Length and checksum of one section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Bytes.
    pub len: u64,
    /// SHA-256 of the bytes (hex).
    pub sha256: String,
}

impl Section {
    fn of(bytes: &[u8]) -> Self {
        Self { len: bytes.len() as u64, sha256: hex::encode(Sha256::digest(bytes)) }
    }
}

/// What a bundle says about its batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The sluice that wrote it.
    pub sluice_version: String,
    /// The batch: pipeline id, batch id, planned timestamp, ranges.
    pub batch: BatchSpec,
    /// SHA-256 of the component the batch was planned with.
    pub component_digest: String,
    /// Digest of the config it was planned with (see `PipelineConfig::digest`).
    pub config_digest: String,
    /// The commit record, if the batch was committed when exported.
    pub committed: Option<CommittedBatch>,
    /// The pipeline's tables (paths are informational).
    pub tables: Vec<TableConfig>,
    /// The limits the batch ran under.
    pub limits: Limits,
    /// Number of records.
    pub record_count: u64,
    /// The records section.
    pub records: Section,
    /// The component section, if the component is included.
    pub component: Option<Section>,
}

/// A bundle in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    /// The batch's records, in delivery order.
    pub records: Vec<OwnedRecord>,
    /// The planned component's bytes, if included.
    pub component: Option<Vec<u8>>,
}

impl Bundle {
    /// Assemble a bundle, computing the sections of the manifest.
    #[allow(clippy::too_many_arguments, reason = "one argument per manifest field")]
    pub fn new(
        batch: BatchSpec,
        component_digest: String,
        config_digest: String,
        committed: Option<CommittedBatch>,
        tables: Vec<TableConfig>,
        limits: Limits,
        records: Vec<OwnedRecord>,
        component: Option<Vec<u8>>,
    ) -> Self {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            sluice_version: env!("CARGO_PKG_VERSION").to_owned(),
            batch,
            component_digest,
            config_digest,
            committed,
            tables,
            limits,
            record_count: records.len() as u64,
            records: Section::of(&encode_records(&records)),
            component: component.as_deref().map(Section::of),
        };
        Self { manifest, records, component }
    }

    /// Write the bundle to `path` (through a temporary file, so a failed
    /// export never leaves a half bundle under the name).
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let io = |source| BundleError::Io { path: path.to_owned(), source };
        let mut body = serde_json::to_vec(&self.manifest).expect("manifests serialise");
        body.push(b'\n');
        body.extend_from_slice(&encode_records(&self.records));
        body.extend_from_slice(self.component.as_deref().unwrap_or_default());
        let mut file = format!("{MAGIC}{FORMAT_VERSION} sha256={}\n", hex::encode(Sha256::digest(&body))).into_bytes();
        file.append(&mut body);
        let tmp = tempfile::NamedTempFile::new_in(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            .map_err(io)?;
        std::fs::write(tmp.path(), &file).map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Read and check the bundle at `path`.
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| BundleError::Io { path: path.to_owned(), source })?;
        let format = |reason: String| BundleError::Format { path: path.to_owned(), reason };
        let corrupt = |reason: String| BundleError::Corrupt { path: path.to_owned(), reason };
        let newline = bytes.iter().position(|&b| b == b'\n').filter(|&n| n < 200);
        let header = newline.and_then(|n| std::str::from_utf8(&bytes[..n]).ok()).filter(|h| h.starts_with(MAGIC));
        let Some(header) = header else { return Err(format("it does not start with `sluice-bundle/`".into())) };
        let (version, checksum) = header[MAGIC.len()..].split_once(" sha256=").ok_or_else(|| corrupt("damaged header line".into()))?;
        if version != FORMAT_VERSION.to_string() {
            return Err(format(format!("format version {version}, this sluice reads version {FORMAT_VERSION}")));
        }
        let body = &bytes[header.len() + 1..];
        let actual = hex::encode(Sha256::digest(body));
        if actual != checksum {
            return Err(corrupt(format!("checksum mismatch (recorded {checksum}, content hashes to {actual})")));
        }
        let end = body.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("no manifest line".into()))?;
        let manifest: Manifest = serde_json::from_slice(&body[..end]).map_err(|e| corrupt(format!("unreadable manifest: {e}")))?;
        let rest = &body[end + 1..];
        let records_len = manifest.records.len as usize;
        let component_len = manifest.component.as_ref().map_or(0, |c| c.len as usize);
        if rest.len() != records_len + component_len {
            return Err(corrupt(format!("{} bytes of sections, the manifest says {}", rest.len(), records_len + component_len)));
        }
        let (records, component) = rest.split_at(records_len);
        if Section::of(records) != manifest.records {
            return Err(corrupt("the records section does not match its checksum".into()));
        }
        if let Some(section) = &manifest.component
            && Section::of(component) != *section
        {
            return Err(corrupt("the component section does not match its checksum".into()));
        }
        let records = decode_records(records).map_err(|e| corrupt(format!("records section: {e}")))?;
        if records.len() as u64 != manifest.record_count {
            return Err(corrupt(format!("{} records, the manifest says {}", records.len(), manifest.record_count)));
        }
        let component = manifest.component.is_some().then(|| component.to_vec());
        Ok(Self { manifest, records, component })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// Records as length-prefixed little-endian binary, in order.
fn encode_records(records: &[OwnedRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        put_bytes(&mut out, Some(r.topic.as_bytes()));
        out.extend_from_slice(&r.partition.to_le_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        put_bytes(&mut out, r.key.as_deref());
        put_bytes(&mut out, r.value.as_deref());
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (name, value) in &r.headers {
            put_bytes(&mut out, Some(name.as_bytes()));
            put_bytes(&mut out, value.as_deref());
        }
    }
    out
}

/// A cursor over the records section.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or("truncated")?;
        self.0 = rest;
        Ok(*head)
    }

    fn bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        let len = i32::from_le_bytes(self.take()?);
        if len < 0 {
            return Ok(None);
        }
        let (b, rest) = self.0.split_at_checked(len as usize).ok_or("truncated")?;
        self.0 = rest;
        Ok(Some(b.to_vec()))
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.ok_or("a null name")?).map_err(|_| "a name is not UTF-8".to_owned())
    }
}

fn decode_records(section: &[u8]) -> Result<Vec<OwnedRecord>, String> {
    let mut r = Reader(section);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let topic = r.string()?;
        let partition = i32::from_le_bytes(r.take()?);
        let offset = i64::from_le_bytes(r.take()?);
        let timestamp_ms = i64::from_le_bytes(r.take()?);
        let key = r.bytes()?;
        let value = r.bytes()?;
        let count = u32::from_le_bytes(r.take()?);
        let headers = (0..count).map(|_| Ok((r.string()?, r.bytes()?))).collect::<Result<_, String>>()?;
        out.push(OwnedRecord { topic, partition, offset, timestamp_ms, key, value, headers });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::records::SourceRange;

    fn bundle(component: Option<Vec<u8>>) -> Bundle {
        let records = vec![
            OwnedRecord {
                topic: "orders".into(),
                partition: 1,
                offset: 7,
                timestamp_ms: 1_700_000_000_123,
                key: Some(b"o-1".to_vec()),
                value: Some(br#"{"order_id":"o-1"}"#.to_vec()),
                headers: vec![("trace".into(), Some(b"x".to_vec())), ("empty".into(), None)],
            },
            OwnedRecord { topic: "orders".into(), partition: 1, offset: 9, value: None, ..Default::default() },
        ];
        let batch = BatchSpec {
            pipeline_id: "p".into(),
            batch_id: 4,
            planned_timestamp_ms: 1_700_000_000_000,
            ranges: vec![SourceRange { topic: "orders".into(), partition: 1, start: 7, end: 10 }],
        };
        Bundle::new(batch, "c".repeat(64), "f".repeat(64), None, Vec::new(), Limits::default(), records, component)
    }

    #[test]
    fn a_bundle_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        for component in [None, Some(b"\0asm component bytes".to_vec())] {
            let path = dir.path().join("b.bundle");
            let b = bundle(component);
            b.write(&path).unwrap();
            assert_eq!(Bundle::read(&path).unwrap(), b);
        }
    }

    #[test]
    fn damage_anywhere_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bundle");
        bundle(Some(b"component".to_vec())).write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        for at in [good.len() - 3, good.len() / 2, 120] {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            let err = Bundle::read(&path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("bundle {} is corrupt: checksum mismatch", path.display())), "{err}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Bundle::read(&path).unwrap_err().to_string().contains("checksum mismatch"));
        std::fs::write(&path, b"PAR1 not a bundle").unwrap();
        let err = Bundle::read(&path).unwrap_err().to_string();
        assert_eq!(err, format!("{} is not a sluice bundle this version can read: it does not start with `sluice-bundle/`", path.display()));
        let mut future = good.clone();
        future[MAGIC.len()] = b'9';
        std::fs::write(&path, &future).unwrap();
        assert!(Bundle::read(&path).unwrap_err().to_string().ends_with("format version 9, this sluice reads version 1"));
    }
}
