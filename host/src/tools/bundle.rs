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
//!
//! A bundle is untrusted input (it comes from another machine, a ticket, a
//! download): its checksums prove integrity, not origin, since anyone can
//! compute them. So reading one never panics and allocates nothing a
//! length field asks for: the file is at most [`MAX_BUNDLE_BYTES`], every
//! length is checked against the bytes actually there, with checked
//! arithmetic. What it asks the replay to do is validated too: its pipeline
//! id must be a plain file name (it names scratch directories), its digests
//! hex, its component the one its manifest names, and each of its limits at
//! most [`LIMIT_CEILING_FACTOR`] times the default (memory at most 4 GiB,
//! all a 32-bit Wasm memory can hold), so a crafted bundle cannot make a
//! replay run for hours or take the machine's memory.

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
/// The largest bundle file read.
pub const MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// A bundle's limits may be at most this many times the defaults.
pub const LIMIT_CEILING_FACTOR: u64 = 64;
/// The most linear memory a bundle may ask for: all of a 32-bit Wasm memory.
const MAX_MEMORY_BYTES: u64 = 4 << 30;

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
        use std::io::Read;
        let io = |source| BundleError::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        // Read at most one byte past the bound, whatever the file claims.
        file.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(BundleError::Format {
                path: path.to_owned(),
                reason: format!("it is larger than the {} GiB a bundle may be", MAX_BUNDLE_BYTES >> 30),
            });
        }
        Self::parse(&bytes, path)
    }

    /// Check and decode the bytes of a bundle; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, BundleError> {
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
        let records_len = manifest.records.len;
        let component_len = manifest.component.as_ref().map_or(0, |c| c.len);
        let declared = records_len.checked_add(component_len);
        if declared != Some(rest.len() as u64) {
            let says = declared.map_or_else(|| format!("{records_len} + {component_len} (more than any file)"), |d| d.to_string());
            return Err(corrupt(format!("{} bytes of sections, the manifest says {says}", rest.len())));
        }
        // Both fit in `rest`, so in usize.
        let (records, component) = rest.split_at(records_len as usize);
        if Section::of(records) != manifest.records {
            return Err(corrupt("the records section does not match its checksum".into()));
        }
        if let Some(section) = &manifest.component
            && Section::of(component) != *section
        {
            return Err(corrupt("the component section does not match its checksum".into()));
        }
        check_manifest(&manifest, component).map_err(|e| corrupt(format!("manifest: {e}")))?;
        let records = decode_records(records).map_err(|e| corrupt(format!("records section: {e}")))?;
        if records.len() as u64 != manifest.record_count {
            return Err(corrupt(format!("{} records, the manifest says {}", records.len(), manifest.record_count)));
        }
        let component = manifest.component.is_some().then(|| component.to_vec());
        Ok(Self { manifest, records, component })
    }
}

/// What the manifest asks the replay to do must be safe to do: see the
/// module docs.
fn check_manifest(m: &Manifest, component: &[u8]) -> Result<(), String> {
    crate::config::check_pipeline_id(&m.batch.pipeline_id).map_err(|e| format!("batch.pipeline_id: {e}"))?;
    let hex = |what: &str, d: &str| {
        if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("{what} is not a SHA-256 in hex"))
        }
    };
    hex("component_digest", &m.component_digest)?;
    hex("config_digest", &m.config_digest)?;
    if let Some(c) = &m.committed {
        hex("committed.output_digest", &c.output_digest)?;
    }
    if m.component.is_some() && hex::encode(Sha256::digest(component)) != m.component_digest.to_ascii_lowercase() {
        return Err("the included component is not the one component_digest names".into());
    }
    check_limits(&m.limits)
}

/// Each limit at most [`LIMIT_CEILING_FACTOR`] × its default (linear memory
/// at most 4 GiB). Field by field through serde, so a limit added later is
/// covered without a change here.
fn check_limits(limits: &Limits) -> Result<(), String> {
    let given = serde_json::to_value(limits).expect("limits serialise");
    let defaults = serde_json::to_value(Limits::default()).expect("limits serialise");
    for (key, value) in given.as_object().into_iter().flatten() {
        let (Some(v), Some(d)) = (value.as_u64(), defaults.get(key).and_then(|d| d.as_u64())) else { continue };
        let ceiling = if key == "memory_bytes" { MAX_MEMORY_BYTES } else { d.saturating_mul(LIMIT_CEILING_FACTOR).max(LIMIT_CEILING_FACTOR) };
        if v > ceiling {
            return Err(format!(
                "limits.{key} = {v} is more than a bundle may ask for ({ceiling}, {LIMIT_CEILING_FACTOR} × the default{})",
                if key == "memory_bytes" { ", and at most 4 GiB" } else { "" }
            ));
        }
    }
    Ok(())
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
        match len {
            -1 => return Ok(None),
            i32::MIN..=-2 => return Err(format!("a length of {len}")),
            _ => {}
        }
        // Checked against the bytes there before anything is allocated.
        let (b, rest) = self.0.split_at_checked(len as usize).ok_or_else(|| format!("truncated: a length of {len}, {} bytes left", self.0.len()))?;
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
        // A header takes at least 8 bytes: a count beyond that is a lie.
        if u64::from(count) * 8 > r.0.len() as u64 {
            return Err(format!("{count} headers in {} bytes", r.0.len()));
        }
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            headers.push((r.string()?, r.bytes()?));
        }
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
        let digest = component.as_deref().map_or("c".repeat(64), |c| hex::encode(Sha256::digest(c)));
        Bundle::new(batch, digest, "f".repeat(64), None, Vec::new(), Limits::default(), records, component)
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

    /// A bundle file from a body: the header line with the body's checksum,
    /// as anyone can compute it.
    fn sealed(body: &[u8]) -> Vec<u8> {
        let mut file = format!("{MAGIC}{FORMAT_VERSION} sha256={}\n", hex::encode(Sha256::digest(body))).into_bytes();
        file.extend_from_slice(body);
        file
    }

    /// A valid bundle's manifest (as JSON) and sections.
    fn parts() -> (serde_json::Value, Vec<u8>, Vec<u8>) {
        let b = bundle(Some(b"\0asm component".to_vec()));
        (serde_json::to_value(&b.manifest).unwrap(), encode_records(&b.records), b.component.unwrap())
    }

    /// A body with `manifest`, `records` and `component`, the manifest's
    /// section lengths and checksums made to match (unless `keep` says
    /// to leave them as they are).
    fn body(mut manifest: serde_json::Value, records: &[u8], component: &[u8], keep: bool) -> Vec<u8> {
        if !keep {
            manifest["records"] = serde_json::to_value(Section::of(records)).unwrap();
            manifest["component"] = serde_json::to_value(Section::of(component)).unwrap();
        }
        let mut body = serde_json::to_vec(&manifest).unwrap();
        body.push(b'\n');
        body.extend_from_slice(records);
        body.extend_from_slice(component);
        body
    }

    fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        Bundle::parse(bytes, Path::new("x.bundle")).map_err(|e| {
            let text = e.to_string();
            assert!(text.contains("x.bundle") && text.len() > 20, "errors name the file and what failed: {text}");
            text
        })
    }

    /// Found by the property tests below (or by reading), each a panic or
    /// an unbounded allocation before the fix.
    #[test]
    fn crafted_bundles_are_refused_by_name() {
        let (manifest, records, component) = parts();
        // Section lengths whose sum overflows to the bytes present.
        let mut m = manifest.clone();
        m["records"]["len"] = u64::MAX.into();
        m["component"]["len"] = (records.len() + component.len() + 1).into();
        let e = parse(&sealed(&body(m, &records, &component, true))).unwrap_err();
        assert!(e.contains("bytes of sections, the manifest says 18446744073709551615 + "), "{e}");
        // A pipeline id that climbs out of the scratch root.
        let mut m = manifest.clone();
        m["batch"]["pipeline_id"] = "../../etc".into();
        let e = parse(&sealed(&body(m, &records, &component, false))).unwrap_err();
        assert!(e.contains("manifest: batch.pipeline_id: `../../etc` must be ASCII letters"), "{e}");
        // Limits as given would run a replay for days with all the memory there is.
        for (key, value, ceiling) in [
            ("deadline_ms", u64::MAX, 64 * 60_000u64),
            ("memory_bytes", 1 << 40, 4 << 30),
            ("chunk_records", u64::from(u32::MAX), 64 * 4096),
        ] {
            let mut m = manifest.clone();
            m["limits"][key] = value.into();
            let e = parse(&sealed(&body(m, &records, &component, false))).unwrap_err();
            assert!(e.contains(&format!("manifest: limits.{key} = {value} is more than a bundle may ask for ({ceiling}")), "{e}");
        }
        // A component other than the one the manifest names.
        let e = parse(&sealed(&body(manifest.clone(), &records, b"\0asm other", false))).unwrap_err();
        assert!(e.contains("the included component is not the one component_digest names"), "{e}");
        // A digest that is not hex (sliced for display by replay).
        let mut m = manifest.clone();
        m["component_digest"] = "é".repeat(32).into();
        assert!(parse(&sealed(&body(m, &records, &component, false))).unwrap_err().contains("not a SHA-256 in hex"));
        // A header count no records section can hold, and a negative length.
        let mut r = Vec::new();
        put_bytes(&mut r, Some(b"t"));
        r.extend_from_slice(&[0; 20]);
        put_bytes(&mut r, None);
        put_bytes(&mut r, None);
        r.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = parse(&sealed(&body(manifest.clone(), &r, &component, false))).unwrap_err();
        assert!(e.contains("records section: 4294967295 headers in 0 bytes"), "{e}");
        let mut r = Vec::new();
        r.extend_from_slice(&(-7i32).to_le_bytes());
        let e = parse(&sealed(&body(manifest, &r, &component, false))).unwrap_err();
        assert!(e.contains("records section: a length of -7"), "{e}");
    }

    #[test]
    fn a_bundle_larger_than_the_bound_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bundle");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_BUNDLE_BYTES + 10).unwrap(); // sparse: costs no disk
        let err = Bundle::read(&path).unwrap_err().to_string();
        assert!(err.ends_with("it is larger than the 4 GiB a bundle may be"), "{err}");
    }

    mod fuzz {
        //! Property tests: a bundle from anywhere never panics the reader,
        //! and a refused one says what failed. `PROPTEST_CASES` sets the
        //! cases per property (default 256).
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                prop_assert!(parse(&bytes).is_err());
                prop_assert!(parse(&sealed(&bytes)).is_err(), "a sealed random body");
            }

            /// The manifest intact, the records section replaced by
            /// arbitrary bytes or a damaged valid one, with matching
            /// section checksums: the record decoder sees it all.
            #[test]
            fn arbitrary_records_sections(
                junk in proptest::collection::vec(any::<u8>(), 0..512),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let (manifest, records, component) = parts();
                let _ = parse(&sealed(&body(manifest.clone(), &junk, &component, false)));
                let mut damaged = records.clone();
                for (at, byte) in &flips {
                    let i = at.index(damaged.len());
                    damaged[i] = *byte;
                }
                damaged.truncate(cut.index(damaged.len() + 1));
                if let Ok(b) = parse(&sealed(&body(manifest, &damaged, &component, false))) {
                    prop_assert_eq!(encode_records(&b.records), damaged, "what decodes re-encodes to the same bytes");
                }
            }

            /// Manifest fields set to arbitrary JSON values.
            #[test]
            fn arbitrary_manifest_fields(
                field in prop::sample::select(vec![
                    "/format_version", "/batch/pipeline_id", "/batch/batch_id", "/batch/ranges", "/component_digest",
                    "/config_digest", "/committed", "/tables", "/limits/fuel", "/limits/memory_bytes",
                    "/limits/chunk_bytes", "/record_count", "/records/len", "/component/len", "/component",
                ]),
                value in prop_oneof![
                    any::<u64>().prop_map(serde_json::Value::from),
                    any::<i64>().prop_map(serde_json::Value::from),
                    ".{0,80}".prop_map(serde_json::Value::from),
                    Just(serde_json::Value::Null),
                    Just(serde_json::json!([{"topic": "orders", "partition": -1, "start": i64::MAX, "end": i64::MIN}])),
                ],
                keep in any::<bool>(),
            ) {
                let (mut manifest, records, component) = parts();
                *manifest.pointer_mut(field).unwrap() = value;
                let _ = parse(&sealed(&body(manifest, &records, &component, keep)));
            }

            /// Byte flips anywhere in a valid file, resealed or not.
            #[test]
            fn damaged_files(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                reseal in any::<bool>(),
            ) {
                let (manifest, records, component) = parts();
                let mut b = body(manifest, &records, &component, false);
                for (at, byte) in &flips {
                    let i = at.index(b.len());
                    b[i] = *byte;
                }
                let file = if reseal { sealed(&b) } else {
                    let mut f = sealed(&body(parts().0, &records, &component, false));
                    let header = f.iter().position(|&c| c == b'\n').unwrap() + 1;
                    f.truncate(header);
                    f.extend_from_slice(&b);
                    f
                };
                let _ = parse(&file);
            }
        }
    }
}
