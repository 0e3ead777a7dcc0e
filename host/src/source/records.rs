//! A batch's identity and its records, delivered to the sink in bounded chunks.
//!
//! A [`RecordSource`] fills a [`ChunkBuilder`] up to the chunk bounds
//! (`limits.chunk_records`, `limits.chunk_bytes`); the sink pulls one chunk at
//! a time, so neither host nor guest has to hold a whole batch. The builder
//! checks every record against the batch's planned ranges: a source that
//! strays outside them fails the batch instead of feeding the sink records
//! that belong to another batch.

use crate::sandbox::bindings::sluice::sink::types::RecordChunk;
use serde::{Deserialize, Serialize};

/// A half-open range `[start, end)` of offsets of one topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRange {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset (inclusive).
    pub start: i64,
    /// End offset (exclusive).
    pub end: i64,
}

/// The identity of a batch: fixed when it is planned, identical on every
/// retry and replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSpec {
    /// The pipeline.
    pub pipeline_id: String,
    /// The batch id.
    pub batch_id: u64,
    /// Planned timestamp, ms since the Unix epoch: the guest's wall clock.
    pub planned_timestamp_ms: i64,
    /// The source ranges of the batch.
    pub ranges: Vec<SourceRange>,
}

/// A record owned by the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Records could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A record outside every planned range of the batch.
    #[error("record {topic}/{partition}@{offset} is outside the batch's planned ranges")]
    OutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// The source failed (Kafka, a file).
    #[error("{0}")]
    Failed(String),
}

/// Whether a source has more records after filling a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The chunk is full; more records follow.
    More,
    /// Every record was delivered.
    Done,
}

/// Where a batch's records come from: memory, a file, Kafka.
pub trait RecordSource: Send {
    /// Push records into `chunk` until [`ChunkBuilder::is_full`] or the end.
    fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError>;
}

/// Packs records into one columnar chunk (see `record-chunk` in the WIT).
#[derive(Debug)]
pub struct ChunkBuilder {
    ranges: Vec<SourceRange>,
    max_records: usize,
    max_bytes: usize,
    chunk: RecordChunk,
    /// Index into `ranges` of the previous record: consecutive records
    /// usually share a partition.
    last_source: usize,
    delivered_records: u64,
    delivered_bytes: u64,
}

/// The WIT length of optional bytes: -1 for null.
fn len_or_null(bytes: Option<&[u8]>) -> i32 {
    bytes.map_or(-1, |b| b.len() as i32)
}

/// An empty chunk with room for `records` records of `bytes` bytes (headers
/// are rare: their columns grow on demand).
fn chunk_with_capacity(records: usize, bytes: usize) -> RecordChunk {
    RecordChunk {
        sources: Vec::with_capacity(records),
        offsets: Vec::with_capacity(records),
        timestamps_ms: Vec::with_capacity(records),
        key_lens: Vec::with_capacity(records),
        value_lens: Vec::with_capacity(records),
        header_counts: Vec::with_capacity(records),
        header_key_lens: Vec::new(),
        header_value_lens: Vec::new(),
        data: Vec::with_capacity(bytes),
    }
}

impl ChunkBuilder {
    /// A builder for chunks of records within `ranges`, bounded by
    /// `max_records` and (softly) `max_bytes`.
    pub fn new(ranges: Vec<SourceRange>, max_records: u32, max_bytes: u32) -> Self {
        Self {
            ranges,
            max_records: max_records.max(1) as usize,
            max_bytes: max_bytes as usize,
            chunk: chunk_with_capacity(0, 0),
            last_source: 0,
            delivered_records: 0,
            delivered_bytes: 0,
        }
    }

    /// True once the chunk has reached one of its bounds.
    pub fn is_full(&self) -> bool {
        self.chunk.offsets.len() >= self.max_records || self.chunk.data.len() >= self.max_bytes
    }

    /// Append one record. Fails if it lies outside the planned ranges.
    #[allow(clippy::too_many_arguments, reason = "mirrors the fields of a Kafka record")]
    pub fn push<'h>(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Result<(), SourceError> {
        let source = self.source_index(topic, partition, offset)?;
        let c = &mut self.chunk;
        c.sources.push(source as u32);
        c.offsets.push(offset);
        c.timestamps_ms.push(timestamp_ms);
        c.key_lens.push(len_or_null(key));
        c.value_lens.push(len_or_null(value));
        c.data.extend_from_slice(key.unwrap_or_default());
        c.data.extend_from_slice(value.unwrap_or_default());
        let mut count = 0;
        for (k, v) in headers {
            c.header_key_lens.push(k.len() as u32);
            c.header_value_lens.push(len_or_null(v));
            c.data.extend_from_slice(k.as_bytes());
            c.data.extend_from_slice(v.unwrap_or_default());
            count += 1;
        }
        c.header_counts.push(count);
        Ok(())
    }

    /// Append an [`OwnedRecord`].
    pub fn push_owned(&mut self, r: &OwnedRecord) -> Result<(), SourceError> {
        self.push(
            &r.topic,
            r.partition,
            r.offset,
            r.timestamp_ms,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        )
    }

    fn source_index(&mut self, topic: &str, partition: i32, offset: i64) -> Result<usize, SourceError> {
        let hit = |r: &SourceRange| r.topic == topic && r.partition == partition && (r.start..r.end).contains(&offset);
        if self.ranges.get(self.last_source).is_some_and(hit) {
            return Ok(self.last_source);
        }
        match self.ranges.iter().position(hit) {
            Some(i) => {
                self.last_source = i;
                Ok(i)
            }
            None => Err(SourceError::OutOfRange { topic: topic.to_owned(), partition, offset }),
        }
    }

    /// The values of the records in the chunk so far, in order. Lets native
    /// code consume chunks exactly as a sink does (the benchmarks' baseline).
    pub fn values(&self) -> impl Iterator<Item = Option<&[u8]>> {
        let c = &self.chunk;
        let mut pos = 0usize;
        let mut header = 0usize;
        (0..c.offsets.len()).map(move |i| {
            pos += c.key_lens[i].max(0) as usize;
            let len = c.value_lens[i];
            let value = (len >= 0).then(|| &c.data[pos..pos + len as usize]);
            pos += len.max(0) as usize;
            for _ in 0..c.header_counts[i] {
                pos += c.header_key_lens[header] as usize + c.header_value_lens[header].max(0) as usize;
                header += 1;
            }
            value
        })
    }

    /// Take the chunk's records as owned values, leaving the builder empty
    /// (bundles and `reconcile` read a batch's records without a sink).
    pub fn take_records(&mut self) -> Vec<OwnedRecord> {
        let Some(c) = self.take() else { return Vec::new() };
        let mut out = Vec::with_capacity(c.offsets.len());
        let mut pos = 0usize;
        let mut header = 0usize;
        let mut bytes = |len: i32| {
            let b = (len >= 0).then(|| c.data[pos..pos + len as usize].to_vec());
            pos += len.max(0) as usize;
            b
        };
        for i in 0..c.offsets.len() {
            let range = &self.ranges[c.sources[i] as usize];
            let key = bytes(c.key_lens[i]);
            let value = bytes(c.value_lens[i]);
            let mut headers = Vec::with_capacity(c.header_counts[i] as usize);
            for _ in 0..c.header_counts[i] {
                let name = bytes(c.header_key_lens[header] as i32).unwrap_or_default();
                let value = bytes(c.header_value_lens[header]);
                headers.push((String::from_utf8_lossy(&name).into_owned(), value));
                header += 1;
            }
            out.push(OwnedRecord {
                topic: range.topic.clone(),
                partition: range.partition,
                offset: c.offsets[i],
                timestamp_ms: c.timestamps_ms[i],
                key,
                value,
                headers,
            });
        }
        out
    }

    /// Drop the chunk's records, as delivering it would.
    pub fn clear(&mut self) {
        drop(self.take());
    }

    /// Take the packed chunk, leaving the builder empty. `None` if empty.
    pub(crate) fn take(&mut self) -> Option<RecordChunk> {
        if self.chunk.offsets.is_empty() {
            return None;
        }
        // The next chunk will be about as big: allocate once, not by doubling.
        let n = self.chunk.offsets.len();
        let next = chunk_with_capacity(n, self.chunk.data.len());
        let chunk = std::mem::replace(&mut self.chunk, next);
        self.delivered_records += n as u64;
        self.delivered_bytes += chunk.data.len() as u64;
        Some(chunk)
    }

    /// An empty builder with the same ranges and bounds, for packing the
    /// same batch elsewhere (see [`crate::source::read_ahead`]).
    pub(crate) fn empty_like(&self) -> Self {
        Self::new(self.ranges.clone(), self.max_records as u32, self.max_bytes as u32)
    }

    /// Put a chunk packed by a builder like this one in place of this
    /// builder's empty chunk.
    pub(crate) fn install(&mut self, chunk: RecordChunk) {
        debug_assert!(self.chunk.offsets.is_empty(), "a chunk is installed only into an empty builder");
        self.chunk = chunk;
    }

    /// Records and payload bytes handed to the sink so far.
    pub(crate) fn delivered(&self) -> (u64, u64) {
        (self.delivered_records, self.delivered_bytes)
    }
}

/// Every record `source` delivers for `ranges`, in delivery order.
pub fn read_all(source: impl RecordSource, ranges: &[SourceRange]) -> Result<Vec<OwnedRecord>, SourceError> {
    let mut out = Vec::new();
    drain(source, ranges, |chunk| out.append(&mut chunk.take_records()))?;
    Ok(out)
}

/// How many records `source` delivers for `ranges`, keeping none.
pub fn count_all(source: impl RecordSource, ranges: &[SourceRange]) -> Result<u64, SourceError> {
    drain(source, ranges, ChunkBuilder::clear).map(|chunk| chunk.delivered().0)
}

/// Fill chunks from `source` until it is done, handing each to `take`.
fn drain(mut source: impl RecordSource, ranges: &[SourceRange], mut take: impl FnMut(&mut ChunkBuilder)) -> Result<ChunkBuilder, SourceError> {
    let mut chunk = ChunkBuilder::new(ranges.to_vec(), 10_000, 16 << 20);
    loop {
        let fill = source.fill(&mut chunk)?;
        take(&mut chunk);
        if fill == Fill::Done {
            return Ok(chunk);
        }
    }
}

/// Records held in memory (tests, `sluice exec`, bundles).
#[derive(Debug, Clone)]
pub struct VecSource {
    records: std::sync::Arc<[OwnedRecord]>,
    next: usize,
}

impl VecSource {
    /// Deliver `records` in order.
    pub fn new(records: impl Into<std::sync::Arc<[OwnedRecord]>>) -> Self {
        Self { records: records.into(), next: 0 }
    }
}

impl RecordSource for VecSource {
    fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError> {
        while !chunk.is_full() {
            let Some(r) = self.records.get(self.next) else { return Ok(Fill::Done) };
            chunk.push_owned(r)?;
            self.next += 1;
        }
        Ok(if self.next == self.records.len() { Fill::Done } else { Fill::More })
    }
}

impl BatchSpec {
    /// The tightest ranges covering `records`, one per topic partition, in
    /// first-seen order. Used when records come without a plan (`sluice exec`).
    pub fn ranges_covering(records: &[OwnedRecord]) -> Vec<SourceRange> {
        let mut ranges: Vec<SourceRange> = Vec::new();
        for r in records {
            match ranges.iter_mut().find(|s| s.topic == r.topic && s.partition == r.partition) {
                Some(s) => {
                    s.start = s.start.min(r.offset);
                    s.end = s.end.max(r.offset + 1);
                }
                None => ranges.push(SourceRange {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    start: r.offset,
                    end: r.offset + 1,
                }),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, value: &str) -> OwnedRecord {
        OwnedRecord {
            topic: "t".into(),
            partition,
            offset,
            value: Some(value.as_bytes().to_vec()),
            headers: vec![("h".into(), None)],
            ..Default::default()
        }
    }

    #[test]
    fn read_all_gives_back_every_record_as_pushed() {
        let mut records: Vec<_> = (0..25i64).map(|o| rec((o % 2) as i32, o, &format!("v{o}"))).collect();
        records[3].key = Some(b"k".to_vec());
        records[4].value = None;
        records[5].headers = vec![("a".into(), Some(b"1".to_vec())), ("b".into(), None)];
        records.sort_by_key(|r| (r.partition, r.offset));
        let ranges = BatchSpec::ranges_covering(&records);
        assert_eq!(read_all(VecSource::new(records.clone()), &ranges).unwrap(), records);
    }

    #[test]
    fn chunks_respect_record_bound_and_keep_every_record() {
        let records: Vec<_> = (0..10).map(|o| rec(0, o, "v")).collect();
        let mut b = ChunkBuilder::new(BatchSpec::ranges_covering(&records), 4, 1 << 20);
        let mut src = VecSource::new(records);
        let mut sizes = Vec::new();
        loop {
            let fill = src.fill(&mut b).unwrap();
            if let Some(c) = b.take() {
                assert_eq!(c.header_counts, vec![1; c.offsets.len()]);
                assert_eq!(c.header_key_lens.len(), c.offsets.len());
                sizes.push(c.offsets.len());
            }
            if fill == Fill::Done {
                break;
            }
        }
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(b.delivered().0, 10);
    }

    #[test]
    fn byte_bound_splits_chunks_but_a_big_record_still_fits_alone() {
        let records = vec![rec(0, 0, &"x".repeat(100)), rec(0, 1, "y"), rec(0, 2, "z")];
        let mut b = ChunkBuilder::new(BatchSpec::ranges_covering(&records), 100, 50);
        let mut src = VecSource::new(records);
        assert_eq!(src.fill(&mut b).unwrap(), Fill::More);
        assert_eq!(b.values().collect::<Vec<_>>(), [Some("x".repeat(100).as_bytes())]);
        let c = b.take().unwrap();
        assert_eq!((c.key_lens.as_slice(), c.value_lens.as_slice()), (&[-1][..], &[100][..]));
        // key (null), value, header key "h", header value (null).
        assert_eq!(c.data.len(), 101);
    }

    #[test]
    fn record_outside_the_plan_is_refused() {
        let mut b = ChunkBuilder::new(
            vec![SourceRange { topic: "t".into(), partition: 0, start: 5, end: 10 }],
            10,
            1 << 20,
        );
        let err = b.push_owned(&rec(0, 10, "late")).unwrap_err();
        assert_eq!(err.to_string(), "record t/0@10 is outside the batch's planned ranges");
        assert!(b.push_owned(&rec(1, 5, "other partition")).is_err());
        assert!(b.push_owned(&rec(0, 9, "ok")).is_ok());
    }
}
