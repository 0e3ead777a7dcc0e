//! The batch and its records: `batch-info` plus the `record-stream`, read
//! front to back, one chunk at a time.
//!
//! A chunk crosses into the guest column by column (one list per record
//! field, one per header field, and all key, value and header bytes back to
//! back in `data`), and [`RecordRef`] views point into those columns, so
//! reading a record copies nothing. The columns are checked once, when the
//! chunk arrives, in the same pass that notes where each record's value
//! starts in `data`; a malformed chunk is a host bug and panics (the batch
//! then traps). Afterwards the accessors cannot fail, except that a header
//! key is checked to be UTF-8 when it is read.

use std::cell::Cell;
use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;
use std::rc::Rc;
use std::str;

use crate::__private::bindings::sluice::sink::types::RecordChunk;
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
    // One entry per record.
    sources: Vec<u32>,
    offsets: Vec<i64>,
    timestamps_ms: Vec<i64>,
    key_lens: Vec<i32>,
    value_lens: Vec<i32>,
    /// Where each record's value starts in `data` (its key ends there).
    value_starts: Vec<u32>,
    /// Record `i`'s headers are `header_starts[i]..header_starts[i + 1]` of
    /// the `header_*` columns; empty when the chunk has no headers at all.
    header_starts: Vec<u32>,
    // One entry per header.
    header_key_lens: Vec<u32>,
    header_value_lens: Vec<i32>,
    data: Vec<u8>,
    batch_sources: Rc<[Source]>,
}

impl Chunk {
    /// Checks the columns against each other, once, and notes where each
    /// record's value and headers start. Panics on a malformed chunk.
    fn new(raw: RecordChunk, sources: Rc<[Source]>) -> Self {
        let RecordChunk {
            sources: record_sources,
            offsets,
            timestamps_ms,
            key_lens,
            value_lens,
            header_counts,
            header_key_lens,
            header_value_lens,
            data,
        } = raw;

        let records = record_sources.len();
        for (column, len) in [
            ("offsets", offsets.len()),
            ("timestamps-ms", timestamps_ms.len()),
            ("key-lens", key_lens.len()),
            ("value-lens", value_lens.len()),
            ("header-counts", header_counts.len()),
        ] {
            if len != records {
                malformed(format_args!(
                    "{column} has {len} entries for {records} records"
                ));
            }
        }
        if header_key_lens.len() != header_value_lens.len() {
            malformed(format_args!(
                "header-key-lens has {} entries but header-value-lens has {}",
                header_key_lens.len(),
                header_value_lens.len()
            ));
        }
        if let Some(i) = record_sources
            .iter()
            .position(|&s| s as usize >= sources.len())
        {
            malformed(format_args!(
                "record {i} has source {} but the batch has {} ranges",
                record_sources[i],
                sources.len()
            ));
        }

        // Walk the records with a running position in `data`. Positions are
        // u64 and checked against the data length after every step, so a
        // hostile length cannot overflow them.
        let data_len = data.len() as u64;
        let has_headers = !header_key_lens.is_empty();
        let mut value_starts = Vec::with_capacity(records);
        let mut header_starts = Vec::with_capacity(if has_headers { records + 1 } else { 0 });
        if has_headers {
            header_starts.push(0);
        }
        let mut pos = 0u64;
        let mut header = 0usize;
        for (i, ((&key_len, &value_len), &header_count)) in key_lens
            .iter()
            .zip(&value_lens)
            .zip(&header_counts)
            .enumerate()
        {
            if key_len < -1 || value_len < -1 {
                malformed(format_args!(
                    "record {i} has key length {key_len} and value length {value_len}"
                ));
            }
            pos += nullable_len(key_len);
            // `pos <= data_len <= u32::MAX` once the check below passed; if it
            // fails, this entry is never read.
            value_starts.push(pos as u32);
            pos += nullable_len(value_len);
            if header_count != 0 {
                let end = header
                    .checked_add(header_count as usize)
                    .filter(|&end| end <= header_key_lens.len())
                    .unwrap_or_else(|| {
                        malformed(format_args!(
                            "record {i} has {header_count} headers from header {header}, \
                             but the chunk has {} headers",
                            header_key_lens.len()
                        ))
                    });
                for (h, (&k, &v)) in header_key_lens[header..end]
                    .iter()
                    .zip(&header_value_lens[header..end])
                    .enumerate()
                {
                    if v < -1 {
                        malformed(format_args!(
                            "header {} has value length {v}",
                            header + h
                        ));
                    }
                    pos += u64::from(k) + nullable_len(v);
                    if pos > data_len {
                        break;
                    }
                }
                header = end;
            }
            if pos > data_len {
                malformed(format_args!(
                    "record {i} ends past the {data_len} data bytes"
                ));
            }
            if has_headers {
                header_starts.push(header as u32);
            }
        }
        if header != header_key_lens.len() {
            malformed(format_args!(
                "header-counts sum to {header} but the chunk has {} headers",
                header_key_lens.len()
            ));
        }
        if pos != data_len {
            malformed(format_args!(
                "the records take {pos} bytes but data has {data_len}"
            ));
        }

        Self {
            sources: record_sources,
            offsets,
            timestamps_ms,
            key_lens,
            value_lens,
            value_starts,
            header_starts,
            header_key_lens,
            header_value_lens,
            data,
            batch_sources: sources,
        }
    }

    /// The number of records in the chunk.
    pub fn len(&self) -> usize {
        self.value_starts.len()
    }

    /// Whether the chunk holds no records.
    pub fn is_empty(&self) -> bool {
        self.value_starts.is_empty()
    }

    /// The record at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<RecordRef<'_>> {
        (index < self.len()).then_some(RecordRef { chunk: self, index })
    }

    /// Zero-copy views of the chunk's records, in order.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter {
            chunk: self,
            indices: 0..self.len(),
        }
    }
}

/// The bytes a key or value of length `len` takes in `data` (-1 is null).
fn nullable_len(len: i32) -> u64 {
    u64::try_from(len).unwrap_or(0)
}

/// Reports a malformed chunk: a host bug, so the batch traps.
#[cold]
#[inline(never)]
#[track_caller]
fn malformed(what: fmt::Arguments<'_>) -> ! {
    panic!("sluice host sent a malformed chunk: {what}")
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("records", &self.len())
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

/// Iterator over the records of a [`Chunk`]; see [`Chunk::iter`].
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    chunk: &'a Chunk,
    indices: Range<usize>,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = RecordRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordRef<'a>> {
        let chunk = self.chunk;
        self.indices.next().map(|index| RecordRef { chunk, index })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl ExactSizeIterator for ChunkIter<'_> {}
impl FusedIterator for ChunkIter<'_> {}

/// A zero-copy view of one record in a [`Chunk`].
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    chunk: &'a Chunk,
    index: usize,
}

impl<'a> RecordRef<'a> {
    fn source(&self) -> &'a Source {
        &self.chunk.batch_sources[self.chunk.sources[self.index] as usize]
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
    #[inline]
    pub fn offset(&self) -> i64 {
        self.chunk.offsets[self.index]
    }

    /// The record's timestamp, in milliseconds since the Unix epoch.
    #[inline]
    pub fn timestamp_ms(&self) -> i64 {
        self.chunk.timestamps_ms[self.index]
    }

    /// The key bytes; `None` for a null key.
    #[inline]
    pub fn key(&self) -> Option<&'a [u8]> {
        let chunk = self.chunk;
        let len = usize::try_from(chunk.key_lens[self.index]).ok()?;
        let end = chunk.value_starts[self.index] as usize;
        Some(&chunk.data[end - len..end])
    }

    /// The value bytes; `None` for a null value (a tombstone).
    #[inline]
    pub fn value(&self) -> Option<&'a [u8]> {
        let chunk = self.chunk;
        let len = usize::try_from(chunk.value_lens[self.index]).ok()?;
        let start = chunk.value_starts[self.index] as usize;
        Some(&chunk.data[start..start + len])
    }

    /// The headers as `(key, value)` pairs, in order; a `None` value is a
    /// null header value.
    pub fn headers(&self) -> Headers<'a> {
        let chunk = self.chunk;
        let (next, end) = if chunk.header_starts.is_empty() {
            (0, 0)
        } else {
            (
                chunk.header_starts[self.index] as usize,
                chunk.header_starts[self.index + 1] as usize,
            )
        };
        let value_len = usize::try_from(chunk.value_lens[self.index]).unwrap_or(0);
        Headers {
            chunk,
            next,
            end,
            pos: chunk.value_starts[self.index] as usize + value_len,
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
    /// The next header, as an index into the chunk's `header_*` columns.
    next: usize,
    end: usize,
    /// Where the next header's key starts in `data`.
    pos: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let chunk = self.chunk;
        let header = self.next;
        self.next += 1;

        let key_len = chunk.header_key_lens[header] as usize;
        let key = &chunk.data[self.pos..self.pos + key_len];
        self.pos += key_len;
        let value = usize::try_from(chunk.header_value_lens[header])
            .ok()
            .map(|len| {
                let value = &chunk.data[self.pos..self.pos + len];
                self.pos += len;
                value
            });
        let key = str::from_utf8(key).unwrap_or_else(|e| {
            malformed(format_args!("header {header} has a key that is not UTF-8: {e}"))
        });
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.end.saturating_sub(self.next);
        (len, Some(len))
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
