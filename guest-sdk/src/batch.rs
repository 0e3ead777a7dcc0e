//! The batch and its records: `batch-info` plus the `record-stream`, read
//! front to back, one chunk at a time.
//!
//! A chunk crosses into the guest as three packed buffers (record metadata,
//! header metadata, bytes) and [`RecordRef`] views point into them, so
//! reading a record copies nothing. Every span of a chunk is checked once,
//! when the chunk arrives: a span outside the chunk is a host bug and panics
//! (the batch then traps); afterwards the accessors cannot fail.

use std::cell::Cell;
use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;
use std::rc::Rc;
use std::slice;

use crate::__private::bindings::sluice::sink::types::{HeaderMeta, RecordChunk, RecordMeta, Span};
use crate::__private::{BatchInfo, RecordStream};

/// A half-open range `[start, end)` of offsets in one Kafka topic partition.
///
/// Offsets inside the range may be absent (compaction, transaction markers):
/// do not assume a record for every offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceRange {
    /// Kafka topic name.
    pub topic: String,
    /// Partition number within the topic.
    pub partition: i32,
    /// First offset of the range (inclusive).
    pub start: i64,
    /// End of the range (exclusive).
    pub end: i64,
}

/// The topic partition of a range, shared by every chunk of the batch so that
/// records can hand out their topic without copying it.
#[derive(Debug)]
struct Source {
    topic: Rc<str>,
    partition: i32,
}

/// One micro-batch: its identity, its source ranges and its records.
///
/// Everything but the records is fixed when the batch is planned and is the
/// same on every retry and replay. The records are a single stream, delivered
/// once: [`chunks`](Self::chunks) and [`records`](Self::records) both read
/// from it, and a second call continues where the first one stopped.
pub struct Batch {
    pipeline_id: String,
    batch_id: u64,
    planned_timestamp_ms: i64,
    ranges: Vec<SourceRange>,
    sources: Rc<[Source]>,
    stream: RecordStream,
    // The stream is not asked again once it said `none`.
    drained: Cell<bool>,
}

impl Batch {
    pub(crate) fn new(info: BatchInfo, stream: RecordStream) -> Self {
        let ranges: Vec<SourceRange> = info
            .ranges
            .into_iter()
            .map(|r| SourceRange {
                topic: r.topic,
                partition: r.partition,
                start: r.start,
                end: r.end,
            })
            .collect();
        let sources = ranges
            .iter()
            .map(|r| Source {
                topic: Rc::from(r.topic.as_str()),
                partition: r.partition,
            })
            .collect();
        Self {
            pipeline_id: info.pipeline_id,
            batch_id: info.batch_id,
            planned_timestamp_ms: info.planned_timestamp_ms,
            ranges,
            sources,
            stream,
            drained: Cell::new(false),
        }
    }

    /// The pipeline this batch belongs to.
    pub fn pipeline_id(&self) -> &str {
        &self.pipeline_id
    }

    /// The batch id: dense, increasing, stable across retries and replays.
    pub fn batch_id(&self) -> u64 {
        self.batch_id
    }

    /// When the batch was planned, in milliseconds since the Unix epoch. The
    /// sandbox's wall clock starts here.
    pub fn planned_timestamp_ms(&self) -> i64 {
        self.planned_timestamp_ms
    }

    /// The source ranges the batch covers, one per topic partition.
    pub fn ranges(&self) -> &[SourceRange] {
        &self.ranges
    }

    /// The records in bounded chunks, read zero-copy through [`Chunk::iter`].
    ///
    /// Only one chunk needs to be in memory at a time, so this is the way to
    /// read a batch of any size.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks { batch: self }
    }

    /// The records as owned [`Record`]s: convenient, at the cost of copying
    /// each record's bytes.
    pub fn records(&self) -> Records<'_> {
        Records {
            chunks: self.chunks(),
            current: None,
        }
    }

    fn next_chunk(&self) -> Option<Chunk> {
        if self.drained.get() {
            return None;
        }
        let chunk = self.stream.next_chunk();
        self.drained.set(chunk.is_none());
        chunk.map(|raw| Chunk::new(raw, Rc::clone(&self.sources)))
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("pipeline_id", &self.pipeline_id)
            .field("batch_id", &self.batch_id)
            .field("planned_timestamp_ms", &self.planned_timestamp_ms)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

/// Iterator over the chunks of a [`Batch`]; see [`Batch::chunks`].
#[derive(Debug)]
pub struct Chunks<'a> {
    batch: &'a Batch,
}

impl Iterator for Chunks<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        self.batch.next_chunk()
    }
}

impl FusedIterator for Chunks<'_> {}

/// Iterator over the records of a [`Batch`] as owned values; see
/// [`Batch::records`].
#[derive(Debug)]
pub struct Records<'a> {
    chunks: Chunks<'a>,
    current: Option<(Chunk, usize)>,
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some((chunk, next)) = &mut self.current
                && let Some(record) = chunk.get(*next)
            {
                *next += 1;
                return Some(record.to_record());
            }
            self.current = Some((self.chunks.next()?, 0));
        }
    }
}

impl FusedIterator for Records<'_> {}

/// A bounded run of consecutive records of the batch, in delivery order (per
/// partition, by offset).
pub struct Chunk {
    records: Vec<RecordMeta>,
    headers: Vec<HeaderMeta>,
    data: Vec<u8>,
    sources: Rc<[Source]>,
}

impl Chunk {
    fn new(raw: RecordChunk, sources: Rc<[Source]>) -> Self {
        let chunk = Self {
            records: raw.records,
            headers: raw.headers,
            data: raw.data,
            sources,
        };
        chunk.validate();
        chunk
    }

    fn validate(&self) {
        let in_data = |span: Span| within(span, self.data.len());
        for (i, r) in self.records.iter().enumerate() {
            assert!(
                (r.source as usize) < self.sources.len()
                    && r.key.is_none_or(in_data)
                    && r.value.is_none_or(in_data)
                    && within(r.headers, self.headers.len()),
                "sluice host sent a malformed chunk: record {i} points outside the chunk or the batch's ranges",
            );
        }
        for (i, h) in self.headers.iter().enumerate() {
            assert!(
                in_data(h.key) && h.value.is_none_or(in_data),
                "sluice host sent a malformed chunk: header {i} points outside the chunk",
            );
            assert!(
                std::str::from_utf8(self.bytes(h.key)).is_ok(),
                "sluice host sent a malformed chunk: header {i} has a key that is not UTF-8",
            );
        }
    }

    /// The number of records in the chunk.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the chunk holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<RecordRef<'_>> {
        self.records
            .get(index)
            .map(|meta| RecordRef { chunk: self, meta })
    }

    /// Zero-copy views of the chunk's records, in order.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter {
            chunk: self,
            metas: self.records.iter(),
        }
    }

    fn bytes(&self, span: Span) -> &[u8] {
        &self.data[range(span)]
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("records", &self.records.len())
            .field("data_bytes", &self.data.len())
            .finish()
    }
}

impl<'a> IntoIterator for &'a Chunk {
    type Item = RecordRef<'a>;
    type IntoIter = ChunkIter<'a>;

    fn into_iter(self) -> ChunkIter<'a> {
        self.iter()
    }
}

fn range(span: Span) -> Range<usize> {
    let start = span.start as usize;
    start..start + span.len as usize
}

fn within(span: Span, len: usize) -> bool {
    (span.start as usize)
        .checked_add(span.len as usize)
        .is_some_and(|end| end <= len)
}

/// Iterator over the records of a [`Chunk`]; see [`Chunk::iter`].
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    chunk: &'a Chunk,
    metas: slice::Iter<'a, RecordMeta>,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        let chunk = self.chunk;
        self.metas.next().map(|meta| RecordRef { chunk, meta })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.metas.size_hint()
    }
}

impl ExactSizeIterator for ChunkIter<'_> {}
impl FusedIterator for ChunkIter<'_> {}

/// A zero-copy view of one record in a [`Chunk`].
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    chunk: &'a Chunk,
    meta: &'a RecordMeta,
}

impl<'a> RecordRef<'a> {
    fn source(&self) -> &'a Source {
        &self.chunk.sources[self.meta.source as usize]
    }

    /// The record's topic.
    pub fn topic(&self) -> &'a str {
        &self.source().topic
    }

    /// The record's partition within its topic.
    pub fn partition(&self) -> i32 {
        self.source().partition
    }

    /// The record's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.meta.offset
    }

    /// The record's timestamp, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.meta.timestamp_ms
    }

    /// The key bytes; `None` for a null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.meta.key.map(|span| self.chunk.bytes(span))
    }

    /// The value bytes; `None` for a null value (a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.meta.value.map(|span| self.chunk.bytes(span))
    }

    /// The headers as `(key, value)` pairs, in order; a `None` value is a
    /// null header value.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            chunk: self.chunk,
            metas: self.chunk.headers[range(self.meta.headers)].iter(),
        }
    }

    /// Copies the record out of its chunk.
    pub fn to_record(&self) -> Record {
        Record {
            topic: Rc::clone(&self.source().topic),
            partition: self.partition(),
            offset: self.offset(),
            timestamp_ms: self.timestamp_ms(),
            key: self.key().map(<[u8]>::to_vec),
            value: self.value().map(<[u8]>::to_vec),
            headers: self
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("topic", &self.topic())
            .field("partition", &self.partition())
            .field("offset", &self.offset())
            .field("timestamp_ms", &self.timestamp_ms())
            .field("key", &self.key())
            .field("value", &self.value())
            .field("headers", &self.headers())
            .finish()
    }
}

/// Iterator over the headers of a record; see [`RecordRef::headers`].
#[derive(Clone)]
pub struct Headers<'a> {
    chunk: &'a Chunk,
    metas: slice::Iter<'a, HeaderMeta>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.chunk;
        self.metas.next().map(|h| {
            let key = std::str::from_utf8(chunk.bytes(h.key))
                .expect("header keys are checked when the chunk arrives");
            (key, h.value.map(|span| chunk.bytes(span)))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.metas.size_hint()
    }
}

impl ExactSizeIterator for Headers<'_> {}
impl FusedIterator for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// One record copied out of its chunk; see [`Batch::records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's topic (shared by all records of the topic).
    pub topic: Rc<str>,
    /// The record's partition within its topic.
    pub partition: i32,
    /// The record's offset within its partition.
    pub offset: i64,
    /// The record's timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key bytes; `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// The value bytes; `None` for a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// The headers as `(key, value)` pairs, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}
