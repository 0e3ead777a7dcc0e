//! The Kafka source against librdkafka's mock cluster (an in-process
//! Kafka-protocol broker): plans cover every record exactly once, fetches
//! deliver exactly the planned ranges into a real sink, and bad conditions
//! give errors that say what happened.

use crate::harness::*;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::source::{KafkaSource, KafkaSourceError, OnDataLoss, SourceConfig};
use sluice::{BatchSpec, Limits};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn produce(bootstrap: &str, topic: &str, partitions: i32, n: usize) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!("v{i}");
        producer.send(BaseRecord::to(topic).partition(i as i32 % partitions).key(&key).payload(&value)).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn config(bootstrap: String, topic: &str, max_records: u64) -> SourceConfig {
    SourceConfig {
        bootstrap_servers: bootstrap,
        topics: vec![topic.into()],
        max_records_per_batch: max_records,
        max_bytes_per_batch: None,
        starting_offsets: Default::default(),
        on_data_loss: Default::default(),
        fetch_timeout_ms: 10_000,
        properties: Default::default(),
        secrets: BTreeMap::new(),
    }
}

#[test]
fn every_record_is_delivered_to_the_sink_exactly_once_in_planned_batches() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 3, 1).unwrap();
    deliver_all_exactly_once(&cluster.bootstrap_servers());
}

#[test]
fn the_same_against_a_real_broker_process() {
    let broker = Broker::start();
    broker.create_topic("orders", 3);
    deliver_all_exactly_once(&broker.bootstrap);
}

/// Produce 100 records over 3 partitions, then plan batches of at most 40
/// and run each through the `append-events` sink.
fn deliver_all_exactly_once(bootstrap: &str) {
    produce(bootstrap, "orders", 3, 100);
    let source = KafkaSource::connect(config(bootstrap.to_owned(), "orders", 40)).unwrap();
    assert_eq!(source.partitions().len(), 3);

    let h = harness(Limits { chunk_records: 7, ..Limits::default() });
    let sink = h.load("append-events");
    let mut ends = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut batch_sizes = Vec::new();
    for batch_id in 0.. {
        let ranges = source.plan(&ends).unwrap();
        let planned: i64 = ranges.iter().map(|r| r.end - r.start).sum();
        if planned == 0 {
            break;
        }
        let spec = BatchSpec { pipeline_id: "p".into(), batch_id, planned_timestamp_ms: 0, ranges: ranges.clone() };
        let out = sink.run(&spec, 1, Box::new(source.fetch(&ranges).unwrap())).unwrap();
        let rows = rows(&out, "events");
        assert_eq!(rows.len() as i64, planned, "batch {batch_id} delivers exactly its plan");
        for row in rows {
            let (p, o) = (row["partition"].as_i64().unwrap() as i32, row["offset"].as_i64().unwrap());
            let range = ranges.iter().find(|r| r.partition == p).unwrap();
            assert!((range.start..range.end).contains(&o), "offset {o} outside {range:?}");
            assert!(seen.insert((p, o)), "{p}/{o} delivered twice");
        }
        batch_sizes.push(planned);
        for r in &ranges {
            ends.insert((r.topic.clone(), r.partition), r.end);
        }
    }
    assert_eq!(batch_sizes, [40, 40, 20]);
    assert_eq!(seen.len(), 100);
}

#[test]
fn retention_gap_is_an_error_naming_the_lost_range_unless_skipping() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    produce(&cluster.bootstrap_servers(), "events", 1, 10);
    // A checkpointed position below the oldest retained offset is what
    // retention leaves behind. The mock cluster cannot delete records (its
    // DeleteRecords answers UnsupportedFeature), so its low watermark stays
    // 0 and a position of -3 stands in for "deleted by retention".
    let source = KafkaSource::connect(config(cluster.bootstrap_servers(), "events", 100)).unwrap();
    let stale: BTreeMap<_, _> = [(("events".to_owned(), 0), -3)].into();
    let err = source.plan(&stale).unwrap_err();
    assert_eq!(
        err,
        KafkaSourceError::RetentionGap { topic: "events".into(), partition: 0, start: -3, low_watermark: 0 }
    );
    assert!(err.to_string().starts_with("kafka: events/0: offsets -3..0 were deleted by retention before sluice read them"), "{err}");
    let skipping = KafkaSource::connect(SourceConfig {
        on_data_loss: OnDataLoss::Skip,
        ..config(cluster.bootstrap_servers(), "events", 100)
    })
    .unwrap();
    let ranges = skipping.plan(&stale).unwrap();
    assert_eq!((ranges[0].start, ranges[0].end), (0, 10));
}

#[test]
fn missing_topic_and_unreachable_broker_are_named() {
    let cluster = MockCluster::new(1).unwrap();
    let err = KafkaSource::connect(config(cluster.bootstrap_servers(), "nope", 10)).err().unwrap();
    assert_eq!(err.to_string(), "kafka: topic `nope` does not exist (check source.topics)");
    let err = KafkaSource::connect(SourceConfig { fetch_timeout_ms: 1500, ..config("127.0.0.1:1".into(), "t", 10) })
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("kafka (127.0.0.1:1): cannot fetch metadata of topic `t`"), "{err}");
}

/// The values a fetch delivers, in order: the first `max_chunks` chunks of
/// 7 records, or all of them.
fn fetch_values(source: &KafkaSource, ranges: &[sluice::SourceRange], max_chunks: usize) -> Vec<String> {
    use sluice::{ChunkBuilder, Fill, RecordSource};
    let mut fetch = source.fetch(ranges).unwrap();
    let mut chunk = ChunkBuilder::new(ranges.to_vec(), 7, 1 << 20);
    let mut values = Vec::new();
    for _ in 0..max_chunks {
        let fill = fetch.fill(&mut chunk).unwrap();
        values.extend(chunk.values().map(|v| String::from_utf8(v.unwrap().to_vec()).unwrap()));
        chunk.clear();
        if fill == Fill::Done {
            break;
        }
    }
    values
}

/// Partitions stay positioned across batches (the next batch reads on
/// from what was prefetched), yet a retry of a batch, a batch abandoned
/// half way and a fresh source all deliver exactly the planned records, in
/// plan order.
#[test]
fn fetches_read_on_across_batches_and_retries_deliver_the_same_records() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "orders", 3, 100);
    let source = KafkaSource::connect(config(bootstrap.clone(), "orders", 40)).unwrap();
    // Record i is "v{i}" in partition i % 3, at offset i / 3.
    let expected = |ranges: &[sluice::SourceRange]| -> Vec<String> {
        ranges.iter().flat_map(|r| (r.start..r.end).map(move |o| format!("v{}", o * 3 + r.partition as i64))).collect()
    };
    let first = source.plan(&BTreeMap::new()).unwrap();
    assert_eq!(fetch_values(&source, &first, usize::MAX), expected(&first));
    assert_eq!(fetch_values(&source, &first, usize::MAX), expected(&first), "a retry seeks back");
    let ends = first.iter().map(|r| ((r.topic.clone(), r.partition), r.end)).collect();
    let second = source.plan(&ends).unwrap();
    assert_eq!(fetch_values(&source, &second, 2).len(), 14, "abandoned after two chunks");
    assert_eq!(fetch_values(&source, &second, usize::MAX), expected(&second), "the retry starts over");
    let fresh = KafkaSource::connect(config(bootstrap, "orders", 40)).unwrap();
    assert_eq!(fetch_values(&fresh, &second, usize::MAX), expected(&second), "as a replay would");
    let ends = second.iter().map(|r| ((r.topic.clone(), r.partition), r.end)).collect();
    let third = source.plan(&ends).unwrap();
    assert_eq!(fetch_values(&source, &third, usize::MAX), expected(&third));
    let total: i64 = [&first, &second, &third].iter().flat_map(|b| b.iter()).map(|r| r.end - r.start).sum();
    assert_eq!(total, 100);
}
