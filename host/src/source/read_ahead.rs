//! Reading a batch's records one chunk ahead of the sink, on a thread of
//! their own, so that packing chunk k+1 (draining librdkafka's queues into
//! columns) overlaps the sink's work on chunk k instead of adding to it.
//!
//! Chunks are cut exactly as the inner source cuts them into an empty
//! builder, one after another, so what the sink sees does not depend on
//! timing: the same records in the same chunks as without read-ahead.

use crate::source::records::{ChunkBuilder, Fill, RecordSource, SourceError};
use crate::sandbox::bindings::sluice::sink::types::RecordChunk;
use std::sync::mpsc::{Receiver, sync_channel};

type Packed = Result<(Option<RecordChunk>, Fill), SourceError>;

/// A [`RecordSource`] that reads `S` one chunk ahead on its own thread.
pub struct ReadAhead<S> {
    /// The source, until the first chunk is asked for.
    source: Option<S>,
    /// Chunks from the thread, in order.
    chunks: Option<Receiver<Packed>>,
}

impl<S: RecordSource + 'static> ReadAhead<S> {
    /// Read `source` ahead once the sink asks for its first chunk.
    pub fn new(source: S) -> Self {
        Self { source: Some(source), chunks: None }
    }

    /// Start the thread, packing chunks with the bounds of `like`. At most
    /// one packed chunk waits for the sink, so memory stays bounded by two
    /// chunks. When the sink stops early, the next send fails and the thread
    /// ends.
    fn start(mut source: S, like: &ChunkBuilder) -> Result<Receiver<Packed>, SourceError> {
        let mut builder = like.empty_like();
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name("sluice-read-ahead".into())
            .spawn(move || {
                loop {
                    let packed = source.fill(&mut builder).map(|fill| (builder.take(), fill));
                    let last = !matches!(packed, Ok((_, Fill::More)));
                    if tx.send(packed).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(|e| SourceError::Failed(format!("cannot start reading records ahead: {e}")))?;
        Ok(rx)
    }
}

impl<S: RecordSource + 'static> RecordSource for ReadAhead<S> {
    fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError> {
        if let Some(source) = self.source.take() {
            self.chunks = Some(Self::start(source, chunk)?);
        }
        let chunks = self.chunks.as_ref().expect("started above");
        // A closed channel before `Done`: the source panicked on the thread.
        let (packed, fill) = chunks.recv().map_err(|_| SourceError::Failed("reading records ahead stopped unexpectedly".into()))??;
        if let Some(packed) = packed {
            chunk.install(packed);
        }
        Ok(fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::records::{BatchSpec, OwnedRecord, VecSource, read_all};

    fn records(n: i64) -> Vec<OwnedRecord> {
        (0..n)
            .map(|i| OwnedRecord {
                topic: "t".into(),
                partition: (i % 3) as i32,
                offset: i / 3,
                timestamp_ms: i,
                key: Some(format!("k{i}").into_bytes()),
                value: (i % 7 != 0).then(|| vec![b'v'; i as usize % 50]),
                headers: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn delivers_the_same_chunks_as_the_source_itself() {
        let all = records(2_500);
        let ranges = BatchSpec::ranges_covering(&all);
        let cut = |source: Box<dyn RecordSource>| {
            let mut chunk = ChunkBuilder::new(ranges.clone(), 64, 1_000);
            let mut source = source;
            let mut chunks = Vec::new();
            loop {
                let fill = source.fill(&mut chunk).unwrap();
                chunks.push(chunk.take_records());
                if fill == Fill::Done {
                    return (chunks, chunk.delivered());
                }
            }
        };
        let direct = cut(Box::new(VecSource::new(all.clone())));
        let ahead = cut(Box::new(ReadAhead::new(VecSource::new(all.clone()))));
        assert!(direct.0.len() > 10, "many chunks: {}", direct.0.len());
        assert_eq!(ahead, direct);
        assert_eq!(read_all(ReadAhead::new(VecSource::new(all.clone())), &ranges).unwrap(), all);
    }

    #[test]
    fn a_source_error_reaches_the_sink_in_order() {
        struct FailsSecond(u32);
        impl RecordSource for FailsSecond {
            fn fill(&mut self, chunk: &mut ChunkBuilder) -> Result<Fill, SourceError> {
                self.0 += 1;
                if self.0 == 2 {
                    return Err(SourceError::Failed("broker gone".into()));
                }
                chunk.push_owned(&records(1)[0])?;
                Ok(Fill::More)
            }
        }
        let ranges = BatchSpec::ranges_covering(&records(1));
        let mut chunk = ChunkBuilder::new(ranges, 64, 1_000);
        let mut source = ReadAhead::new(FailsSecond(0));
        assert_eq!(source.fill(&mut chunk), Ok(Fill::More));
        assert_eq!(chunk.take_records().len(), 1);
        assert_eq!(source.fill(&mut chunk), Err(SourceError::Failed("broker gone".into())));
    }
}
