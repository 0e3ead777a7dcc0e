//! `sluice demo`: the whole product on one machine, with nothing to install.
//!
//! Starts an in-process Kafka (librdkafka's mock cluster), produces sample
//! orders (several updates per order id), writes a `pipeline.toml` for them
//! and runs the example `orders-upsert` sink into a local Delta table with
//! the real pipeline loop, then reads the table back for the summary.
//!
//! The mock cluster is not a real broker: it keeps at most 5 MiB (and
//! 100 000 message sets) per partition and drops the oldest beyond that.
//! The demo sizes its topic so every record fits, with room to spare, and
//! checks before running that the topic still holds every record produced;
//! if it does not, the demo refuses rather than report a table that lacks
//! records.

use crate::commit::DeltaCommitter;
use crate::config::PipelineConfig;
use crate::pipeline::{Event, Pipeline, PipelineError, RunSummary};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file that marks a directory as the demo's own (safe to wipe).
const MARKER: &str = ".sluice-demo";
const TOPIC: &str = "orders";
const STATUSES: [&str; 4] = ["created", "paid", "shipped", "delivered"];
/// What the demo plans to put in one partition of the mock cluster, which
/// keeps 5 MiB: the rest is slack for the uneven spread of keys.
const PARTITION_BUDGET_BYTES: usize = 3 << 20;
/// Records per partition, well below the mock's 100 000 message sets.
const PARTITION_BUDGET_RECORDS: usize = 50_000;
/// Bytes a record takes in the mock's log beyond its key and value (record
/// and batch framing, rounded up).
const RECORD_OVERHEAD_BYTES: usize = 32;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the config, checkpoint, table and metrics go.
    pub dir: PathBuf,
    /// Order records to produce.
    pub records: usize,
    /// Distinct order ids among them.
    pub orders: usize,
    /// Records per batch.
    pub batch_records: u64,
    /// The sink component.
    pub component: PathBuf,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The directory is not the demo's to use.
    #[error("{0}")]
    Dir(String),
    /// The embedded Kafka failed.
    #[error("embedded kafka: {0}")]
    Kafka(String),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Reading the result failed.
    #[error("reading the table back: {0}")]
    Read(String),
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The pipeline's totals.
    pub run: RunSummary,
    /// Records produced.
    pub produced: usize,
    /// Rows in the table afterwards.
    pub rows: u64,
    /// Distinct order ids in the table.
    pub distinct_orders: u64,
    /// Orders whose row holds their last produced status.
    pub latest_status_rows: u64,
    /// The config the demo wrote.
    pub config: PathBuf,
    /// The table directory.
    pub table: PathBuf,
    /// The metrics file.
    pub metrics: PathBuf,
}

/// The `i`-th sample record: (order id, JSON value). Order `k`'s updates
/// go through the statuses in order, so its last record holds its final one.
pub fn sample_order(i: usize, orders: usize) -> (String, String) {
    let k = i % orders;
    let id = format!("o-{k:05}");
    let status = STATUSES[(i / orders) % STATUSES.len()];
    let value = format!(
        r#"{{"order_id":"{id}","customer":"c-{:03}","amount_cents":{},"status":"{status}"}}"#,
        k % 97,
        100 + (k * 37) % 9_900
    );
    (id, value)
}

/// The status order `k` ends with after `records` sample records.
fn final_status(k: usize, records: usize, orders: usize) -> &'static str {
    let updates = (records - k).div_ceil(orders);
    STATUSES[(updates - 1) % STATUSES.len()]
}

/// The partitions the demo's topic gets for `records` sample records: at
/// least 3, and enough that each stays well within what the mock cluster
/// keeps.
pub fn partitions_for(records: usize, orders: usize) -> i32 {
    let orders = orders.clamp(1, records.max(1));
    let sample = records.min(1000);
    let sample_bytes: usize = (0..sample)
        .map(|i| {
            let (key, value) = sample_order(i, orders);
            key.len() + value.len() + RECORD_OVERHEAD_BYTES
        })
        .sum();
    let bytes = (sample_bytes / sample.max(1)).saturating_mul(records);
    let by_bytes = bytes.div_ceil(PARTITION_BUDGET_BYTES);
    let by_count = records.div_ceil(PARTITION_BUDGET_RECORDS);
    by_bytes.max(by_count).max(3).min(i32::MAX as usize) as i32
}

/// Run the demo, reporting each batch to `on_batch`.
pub fn run(options: &DemoOptions, on_event: impl FnMut(&Event)) -> Result<DemoSummary, DemoError> {
    let orders = options.orders.clamp(1, options.records.max(1));
    prepare_dir(&options.dir)?;
    let cluster = MockCluster::new(1).map_err(|e| DemoError::Kafka(e.to_string()))?;
    let partitions = partitions_for(options.records, orders);
    cluster.create_topic(TOPIC, partitions, 1).map_err(|e| DemoError::Kafka(e.to_string()))?;
    produce(&cluster.bootstrap_servers(), options.records, orders)?;
    check_all_kept(&cluster.bootstrap_servers(), partitions, options.records)?;

    let config_path = options.dir.join("pipeline.toml");
    let component = std::path::absolute(&options.component).map_err(|e| DemoError::Dir(e.to_string()))?;
    std::fs::write(&config_path, demo_config(&cluster.bootstrap_servers(), &component, options.batch_records))
        .map_err(|e| DemoError::Dir(format!("{}: {e}", config_path.display())))?;
    let config = PipelineConfig::load(&config_path).map_err(|e| DemoError::Dir(e.to_string()))?;
    let table = config.tables[0].clone();
    let metrics = config.pipeline.metrics_file.clone().unwrap_or_default();
    let mut pipeline = Pipeline::open(config.clone(), config_path.display().to_string())?;
    let run = pipeline.run(on_event)?;
    drop(pipeline);

    let committer = DeltaCommitter::new(&config.pipeline.id, config.resolved_tables())
        .map_err(|e| DemoError::Read(e.to_string()))?;
    let read = |sql: &str| {
        committer
            .query("orders", sql)
            .map_err(|e| DemoError::Read(e.to_string()))
    };
    let counts = read("SELECT count(*) AS n, count(DISTINCT order_id) AS d FROM t")?;
    let count = |key: &str| counts.first().and_then(|r| r[key].as_u64()).unwrap_or(0);
    let statuses = read("SELECT order_id, status FROM t")?;
    let latest_status_rows = statuses
        .iter()
        .filter(|r| {
            let id = r["order_id"].as_str().unwrap_or_default();
            let k: usize = id.trim_start_matches("o-").parse().unwrap_or(usize::MAX);
            k < orders && r["status"].as_str() == Some(final_status(k, options.records, orders))
        })
        .count() as u64;
    Ok(DemoSummary {
        run,
        produced: options.records,
        rows: count("n"),
        distinct_orders: count("d"),
        latest_status_rows,
        config: config_path,
        table: table.path.local().map(|p| p.to_owned()).unwrap_or_default(),
        metrics,
    })
}

/// Make `dir` empty, refusing to wipe a directory the demo did not create.
fn prepare_dir(dir: &Path) -> Result<(), DemoError> {
    let err = |e: std::io::Error| DemoError::Dir(format!("{}: {e}", dir.display()));
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(err)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(DemoError::Dir(format!(
                "{} exists and was not made by `sluice demo`; choose another --dir",
                dir.display()
            )));
        }
        // A previous demo's checkpoint would not match a new embedded Kafka.
        std::fs::remove_dir_all(dir).map_err(err)?;
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(dir.join(MARKER), "made by `sluice demo`; the next demo run replaces this directory\n").map_err(err)
}

fn produce(bootstrap: &str, records: usize, orders: usize) -> Result<(), DemoError> {
    let kafka = |e: rdkafka::error::KafkaError| DemoError::Kafka(e.to_string());
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(kafka)?;
    for i in 0..records {
        let (key, value) = sample_order(i, orders);
        let mut record = BaseRecord::to(TOPIC).key(&key).payload(&value);
        // Keyed records of one order share a partition, so its updates stay
        // in order; retry when the local queue is full.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(kafka(e)),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).map_err(kafka)
}

/// The mock cluster drops the oldest records of a partition past its
/// bounds: make sure it dropped none, so the table is checked against every
/// record produced.
fn check_all_kept(bootstrap: &str, partitions: i32, produced: usize) -> Result<(), DemoError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = |e: rdkafka::error::KafkaError| DemoError::Kafka(e.to_string());
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(kafka)?;
    let (mut kept, mut dropped) = (0, 0);
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).map_err(kafka)?;
        kept += high - low;
        dropped += low;
    }
    if dropped > 0 || kept != produced as i64 {
        return Err(DemoError::Kafka(format!(
            "the embedded Kafka kept {kept} of the {produced} records produced ({dropped} dropped: librdkafka's mock \
             cluster keeps at most 5 MiB per partition); the demo will not run on a topic that lost records. \
             Use fewer --records, or point a pipeline at a real Kafka"
        )));
    }
    Ok(())
}

fn demo_config(bootstrap: &str, component: &Path, batch_records: u64) -> String {
    format!(
        r#"# Written by `sluice demo`. The broker below is the demo's in-process Kafka,
# gone when the demo exits; point bootstrap_servers at a real cluster to reuse this.

[pipeline]
id = "demo-orders"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
metrics_file = "metrics.prom"

[source]
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
max_records_per_batch = {batch_records}

[[tables]]
name = "orders"
path = "tables/orders"
keys = ["order_id"]
columns = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer", type = "string" }},
  {{ name = "amount_cents", type = "long" }},
  {{ name = "status", type = "string" }},
  {{ name = "updated_at_ms", type = "long" }},
  {{ name = "source_offset", type = "long" }},
]
"#,
        component = component.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_grows_with_the_records() {
        assert_eq!(partitions_for(10_000, 2_500), 3);
        assert_eq!(partitions_for(0, 0), 3);
        let p = partitions_for(200_000, 2_500);
        assert!((6..=12).contains(&p), "{p}");
        // A million ~100-byte records need more than 100 MB / 3 MiB partitions.
        assert!(partitions_for(1_000_000, 1_000_000) as usize >= 100_000_000 / PARTITION_BUDGET_BYTES);
    }

    /// The mock cluster drops the oldest records past 5 MiB per partition
    /// and, as its code says, moves the low watermark with them: the check
    /// sees the loss.
    #[test]
    fn a_topic_that_dropped_records_is_refused() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        produce(&cluster.bootstrap_servers(), 80_000, 2_500).unwrap();
        let err = check_all_kept(&cluster.bootstrap_servers(), 1, 80_000).unwrap_err().to_string();
        assert!(err.starts_with("embedded kafka: the embedded Kafka kept ") && err.contains(" of the 80000 records produced ("), "{err}");
        assert!(!err.contains("(0 dropped"), "{err}");
    }

    #[test]
    fn sample_orders_end_in_their_final_status() {
        let (records, orders) = (10, 4);
        let mut last = std::collections::HashMap::new();
        for i in 0..records {
            let (id, value) = sample_order(i, orders);
            let v: serde_json::Value = serde_json::from_str(&value).unwrap();
            assert_eq!(v["order_id"], id);
            last.insert(i % orders, v["status"].as_str().unwrap().to_owned());
        }
        for k in 0..orders {
            assert_eq!(last[&k], final_status(k, records, orders), "order {k}");
        }
    }
}
