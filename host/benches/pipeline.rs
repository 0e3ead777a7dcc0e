//! End-to-end pipeline benchmarks. They print figures; nothing here passes
//! or fails.
//!
//! 1. Throughput: N records of about 200 bytes (default 1M) through
//!    Kafka (librdkafka's in-process mock cluster) → an append sink → a
//!    Delta table, once with `append-events` (JSON rows) and once with
//!    `append-events-arrow` (the same rows as Arrow IPC), beside the two raw
//!    limits measured in the same run on the same data: rdkafka
//!    consume-only, and deltalake write-only of the same rows (target:
//!    end-to-end ≥ 70% of the lower limit).
//! 2. Per-batch host overhead with the no-op sink: the time between two
//!    batches' commits minus the Delta commit, which is reported on its own
//!    (target ≤ 2 ms p50). The pipeline plans and runs batch N+1 while N
//!    commits, so the fetch and sink time is printed too.
//!
//! `cargo bench --bench pipeline` (`SLUICE_BENCH_RECORDS` for a smoke run).

use arrow_array::{Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use deltalake::protocol::SaveMode;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use sluice::config::PipelineConfig;
use sluice::pipeline::{Event, Pipeline};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{PARTITIONS, TOPIC, ms, percentile, produce, record};

const BATCH_RECORDS: u64 = 100_000;

/// rdkafka alone: assign every partition from 0 and poll to the end.
fn consume_only(bootstrap: &str, n: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("fetch.wait.max.ms", "100")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning).unwrap();
    }
    let start = Instant::now();
    consumer.assign(&tpl).unwrap();
    let (mut seen, mut bytes) = (0, 0usize);
    while seen < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            bytes += m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    start.elapsed()
}

/// The rows the append sink produces, as Arrow batches of `BATCH_RECORDS`.
fn arrow_rows(n: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(events_schema());
    let mut batches = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + BATCH_RECORDS as usize).min(n);
        let recs: Vec<(String, String)> = (start..end).map(record).collect();
        let columns: Vec<Arc<dyn arrow_array::Array>> = vec![
            Arc::new(StringArray::from(vec![TOPIC; end - start])),
            Arc::new(Int32Array::from((start..end).map(|i| i as i32 % PARTITIONS).collect::<Vec<_>>())),
            Arc::new(Int64Array::from((start..end).map(|i| i as i64 / 3).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(vec![1_700_000_000_000i64; end - start])),
            Arc::new(StringArray::from(recs.iter().map(|r| Some(r.0.as_str())).collect::<Vec<_>>())),
            Arc::new(StringArray::from(recs.iter().map(|r| Some(r.1.as_str())).collect::<Vec<_>>())),
        ];
        batches.push(RecordBatch::try_new(schema.clone(), columns).unwrap());
        start = end;
    }
    batches
}

fn events_schema() -> Schema {
    Schema::new(vec![
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp_ms", DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ])
}

/// deltalake alone: one append commit per batch of rows, to a new table.
fn write_only(dir: &Path, batches: Vec<RecordBatch>) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(dir).unwrap();
        let url = url::Url::from_directory_path(std::path::absolute(dir).unwrap()).unwrap();
        let columns: Vec<StructField> = events_schema()
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8 => PrimitiveType::String,
                    DataType::Int32 => PrimitiveType::Integer,
                    _ => PrimitiveType::Long,
                };
                StructField::new(f.name().clone(), DeltaType::Primitive(t), true)
            })
            .collect();
        let mut table = DeltaTable::try_from_url(url).await.unwrap().create().with_columns(columns).await.unwrap();
        let start = Instant::now();
        for b in batches {
            table = table.write(vec![b]).with_save_mode(SaveMode::Append).await.unwrap();
        }
        start.elapsed()
    })
}

fn config(dir: &Path, bootstrap: &str, component: &str, max_records: u64) -> PathBuf {
    common::config(dir, bootstrap, component, max_records, "checkpoint = \"checkpoint\"", "events")
}

/// One sink's end-to-end run over the whole topic.
struct EndToEnd {
    total: Duration,
    /// Fetch, Wasm and staging, summed over batches.
    sink: Duration,
    /// Delta commits, summed over batches.
    commit: Duration,
}

/// `sluice run` (available now) of `component` over every record of the
/// topic, with its own checkpoint and table under `dir`.
fn end_to_end(dir: &Path, bootstrap: &str, component: &str, n: usize) -> EndToEnd {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = PipelineConfig::load(&config(dir, bootstrap, component, BATCH_RECORDS)).unwrap();
    let mut pipeline = Pipeline::open(cfg, "bench").unwrap();
    let (mut sink, mut commit) = (Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    let summary = pipeline
        .run(|e| {
            if let Event::Committed(r) = e {
                sink += r.sink;
                commit += r.commit;
            }
        })
        .unwrap();
    let total = start.elapsed();
    assert_eq!(summary.records as usize, n, "{component}: every record went through");
    EndToEnd { total, sink, commit }
}

fn rate(n: usize, bytes: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    format!("{:>8.0} ms  {:>10.0} records/s  {:>7.1} MB/s", s * 1e3, n as f64 / s, bytes as f64 / s / 1e6)
}

fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let work = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let bytes = produce(&bootstrap, n);
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let retained: i64 = (0..PARTITIONS)
        .map(|p| {
            let (low, high) = probe.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).unwrap();
            high - low
        })
        .sum();
    assert_eq!(retained, n as i64, "the mock cluster dropped records (5 MB per partition): raise PARTITIONS");
    println!("{n} records, {:.1} MB of keys and values ({} B per record), {PARTITIONS} partitions", bytes as f64 / 1e6, bytes / n as u64);

    // 1. Throughput and its raw limits.
    let consume = consume_only(&bootstrap, n);
    let write = write_only(&work.path().join("raw"), arrow_rows(n));
    // Both sinks read the whole topic, each with its own checkpoint and table.
    let e2e_sinks = [("JSON rows, append-events", "append_events"), ("Arrow IPC, append-events-arrow", "append_events_arrow")];
    let runs: Vec<EndToEnd> =
        e2e_sinks.iter().map(|(_, component)| end_to_end(&work.path().join(component), &bootstrap, component, n)).collect();
    println!("throughput (batches of {BATCH_RECORDS}):");
    println!("  rdkafka consume-only          {}", rate(n, bytes, consume));
    println!("  deltalake write-only (Arrow)  {}", rate(n, bytes, write));
    let limit = consume.max(write);
    println!("  sluice end to end:");
    for ((name, _), run) in e2e_sinks.iter().zip(&runs) {
        println!("    {name:<34}{}", rate(n, bytes, run.total));
        println!("      of which sink (fetch + Wasm + staging) {}, Delta commit {}", ms(run.sink), ms(run.commit));
    }
    for ((name, _), run) in e2e_sinks.iter().zip(&runs) {
        println!("  end to end / lower raw limit, {name}: {:.2}× (target ≥ 0.70)", limit.as_secs_f64() / run.total.as_secs_f64());
    }

    // 2. Per-batch overhead with the no-op sink: small batches.
    let batches = if n >= 1_000_000 { 300 } else { 30 };
    let dir = work.path().join("noop");
    std::fs::create_dir_all(&dir).unwrap();
    let per_batch = (n / batches).max(1) as u64;
    let cfg = PipelineConfig::load(&config(&dir, &bootstrap, "noop", per_batch)).unwrap();
    let mut pipeline = Pipeline::open(cfg, "bench").unwrap();
    let (mut host, mut commits, mut sinks, mut intervals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = Instant::now();
    pipeline
        .run(|e| {
            if let Event::Committed(r) = e {
                let interval = last.elapsed();
                last = Instant::now();
                host.push(interval.saturating_sub(r.commit));
                intervals.push(interval);
                commits.push(r.commit);
                sinks.push(r.sink);
            }
        })
        .unwrap();
    for v in [&mut host, &mut commits, &mut sinks, &mut intervals] {
        v.sort();
    }
    println!("per-batch cost, no-op sink, {} batches of {per_batch} records:", host.len());
    println!("  batch period (commit to commit)  p50 {}  p90 {}", ms(percentile(&intervals, 0.5)), ms(percentile(&intervals, 0.9)));
    println!("    Delta commit                   p50 {}  p90 {}", ms(percentile(&commits, 0.5)), ms(percentile(&commits, 0.9)));
    println!("    host overhead (period − Delta) p50 {}  p90 {}  (target ≤ 2 ms p50)", ms(percentile(&host, 0.5)), ms(percentile(&host, 0.9)));
    println!("  fetch + sink, overlapped with the previous batch's commit  p50 {}", ms(percentile(&sinks, 0.5)));
}
