//! What the end-to-end benchmarks share: the records, the producer, the
//! guests and the figures' formatting.

// Each benchmark uses a part of it.
#![allow(dead_code)]

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const TOPIC: &str = "events";
/// librdkafka's mock cluster keeps at most 5 MB per partition (older
/// records are dropped): 64 partitions hold 1M records of 200 bytes.
pub const PARTITIONS: i32 = 64;

pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("SLUICE_GUEST_DIR")).join(format!("{name}.wasm"))
}

/// The `i`-th record: a 16-byte key and a ~180-byte JSON value.
pub fn record(i: usize) -> (String, String) {
    let key = format!("key-{i:012}");
    let value = format!(
        r#"{{"id":{i},"customer":"c-{:06}","amount_cents":{},"status":"paid","note":"{}"}}"#,
        i % 100_000,
        i % 9_973,
        "x".repeat(100)
    );
    (key, value)
}

pub fn produce(bootstrap: &str, n: usize) -> u64 {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().unwrap();
    let mut bytes = 0;
    for i in 0..n {
        let (key, value) = record(i);
        bytes += (key.len() + value.len()) as u64;
        let mut rec = BaseRecord::to(TOPIC).partition(i as i32 % PARTITIONS).key(&key).payload(&value);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    bytes
}

/// The `p`-quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A `pipeline.toml` in `dir` running `component` over the topic into one
/// `events` table at `table`, available-now; `place` holds the
/// `[pipeline]` lines saying where the checkpoint (and scratch, cache,
/// storage options) are.
pub fn config(dir: &Path, bootstrap: &str, component: &str, max_records: u64, place: &str, table: &str) -> PathBuf {
    config_with(dir, bootstrap, component, max_records, place, table, "")
}

/// [`config`] with more lines in the table's entry (`maintenance = …`).
pub fn config_with(dir: &Path, bootstrap: &str, component: &str, max_records: u64, place: &str, table: &str, table_extra: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "bench"
component = "{component}"
{place}
trigger = "available_now"

[source]
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
max_records_per_batch = {max_records}

[[tables]]
name = "events"
path = "{table}"
{table_extra}
columns = [
  {{ name = "topic", type = "string" }},
  {{ name = "partition", type = "integer" }},
  {{ name = "offset", type = "long" }},
  {{ name = "timestamp_ms", type = "long" }},
  {{ name = "key", type = "string" }},
  {{ name = "value", type = "string" }},
]

[limits]
fuel = 1000000000000
"#,
        component = guest(component).display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}
