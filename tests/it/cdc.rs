//! A Debezium change stream applied to a keyed table by the
//! `cdc-debezium` example through `sluice run`: inserts, snapshot reads,
//! updates, deletes and tombstones across many batches and three
//! partitions; the final table, read by the independent reader, equals the
//! state the test computes from the stream. Then the same under `kill -9`
//! at every step of a batch and at random moments, and the replay of a
//! batch that deletes.

use crate::crash::{Outcome, run_once};
use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn config(dir: &Path, bootstrap: &str, max_records: u64) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "cdc"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
retry_backoff_ms = 20

[source]
bootstrap_servers = "{bootstrap}"
topics = ["customers"]
max_records_per_batch = {max_records}

[[tables]]
name = "customers"
path = "tables/customers"
keys = ["id"]
columns = [
  {{ name = "id", type = "long" }},
  {{ name = "name", type = "string" }},
  {{ name = "balance", type = "decimal(12,2)" }},
  {{ name = "updated_at", type = "timestamp" }},
  {{ name = "tags", type = "array<string>" }},
]
"#,
        component = guest("cdc-debezium").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One Kafka record: partition, key, value (`None`: a tombstone).
type Change = (i32, String, Option<String>);

/// A change stream over 120 keys and the table it must leave: a snapshot
/// of 40 rows, then `events` random changes. Some events and keys use
/// Debezium's `{"schema", "payload"}` wrapper; deletes are sometimes
/// followed by a tombstone, and some tombstones are for absent keys.
fn change_stream(random: &mut Seeded, events: usize) -> (Vec<Change>, BTreeMap<i64, Value>) {
    let mut state: BTreeMap<i64, Value> = BTreeMap::new();
    let mut out = Vec::new();
    let wrap = |v: Value, wrapped: bool| if wrapped { json!({"schema": {"type": "struct"}, "payload": v}) } else { v };
    let mut version = 0i64;
    let mut image = |id: i64, random: &mut Seeded| {
        version += 1;
        // Balances past what a double holds exactly; times before 1970 too.
        let cents = (random.next() % 2_000_000_000_000) as i64 - 1_000_000_000_000;
        let text = format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
        // As a string, or as a JSON number with these digits.
        let balance = if random.next() % 2 == 0 { Value::String(text) } else { Value::Number(text.parse().unwrap()) };
        let micros = (random.next() % 4_000_000_000_000_000) as i64 - 1_000_000_000_000_000;
        json!({"id": id, "name": format!("customer {id} v{version} \"é\""), "balance": balance, "updated_at": micros,
               "tags": if version % 3 == 0 { json!(null) } else { json!(["a", format!("v{version}")]) }})
    };
    let expected_of = |row: &Value| {
        // As the reader gives it back: decimals with both digits, times in ISO.
        // Both digits after the point, however the change wrote them.
        let balance = match &row["balance"] {
            Value::String(s) => s.clone(),
            n => format!("{:.2}", n.as_f64().unwrap()),
        };
        let micros = row["updated_at"].as_i64().unwrap();
        let mut e = row.clone();
        e["balance"] = json!(balance);
        e["updated_at"] = json!(iso_micros(micros));
        e
    };
    let send = |out: &mut Vec<Change>, id: i64, value: Option<Value>, random: &mut Seeded| {
        let key = wrap(json!({"id": id}), random.next() % 4 == 0).to_string();
        out.push(((id % 3) as i32, key, value.map(|v| wrap(v, random.next() % 4 == 0).to_string())));
    };
    for id in 0..40 {
        let after = image(id, random);
        state.insert(id, expected_of(&after));
        send(&mut out, id, Some(json!({"op": "r", "before": null, "after": after})), random);
    }
    for _ in 0..events {
        let id = (random.next() % 120) as i64;
        let roll = random.next() % 10;
        match (state.contains_key(&id), roll) {
            (true, 0..=5) => {
                let after = image(id, random);
                state.insert(id, expected_of(&after));
                send(&mut out, id, Some(json!({"op": "u", "before": {"id": id}, "after": after})), random);
            }
            (true, _) => {
                state.remove(&id);
                // Debezium's delete: a before image (or none: the key is used).
                let before = if roll == 9 { json!(null) } else { json!({"id": id, "name": "old"}) };
                send(&mut out, id, Some(json!({"op": "d", "before": before, "after": null})), random);
                if roll % 2 == 0 {
                    send(&mut out, id, None, random);
                }
            }
            (false, 0..=7) => {
                let after = image(id, random);
                state.insert(id, expected_of(&after));
                send(&mut out, id, Some(json!({"op": "c", "before": null, "after": after})), random);
            }
            (false, _) => send(&mut out, id, None, random),
        }
    }
    (out, state)
}

/// ISO 8601 in UTC with microseconds, as Python's `isoformat` writes it.
fn iso_micros(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let of_day = micros.rem_euclid(86_400_000_000);
    let (secs, frac) = (of_day / 1_000_000, of_day % 1_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (d, m) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if frac == 0 { String::new() } else { format!(".{frac:06}") };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}+00:00", secs / 3600, secs / 60 % 60, secs % 60)
}

fn produce_changes(bootstrap: &str, topic: &str, changes: &[Change]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for (partition, key, value) in changes {
        let mut record = BaseRecord::<String, String>::to(topic).partition(*partition).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        while let Err((e, r)) = producer.send(record) {
            assert!(matches!(e, rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
            record = r;
            producer.poll(Duration::from_millis(10));
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn table_state(dir: &Path) -> (BTreeMap<i64, Value>, Option<i64>) {
    let read = read_delta(&dir.join("tables/customers"), "cdc");
    let mut rows = BTreeMap::new();
    for r in read.rows {
        let id = r["id"].as_i64().unwrap();
        assert!(rows.insert(id, r).is_none(), "key {id} twice in the table");
    }
    (rows, read.txn)
}

#[test]
fn a_change_stream_with_deletes_and_tombstones_leaves_exactly_the_computed_state_and_replays_identical() {
    let broker = Broker::start();
    broker.create_topic("customers", 3);
    let mut random = Seeded::from_clock("cdc stream");
    let (changes, expected) = change_stream(&mut random, 1500);
    produce_changes(&broker.bootstrap, "customers", &changes);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap, 97);
    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (got, txn) = table_state(dir.path());
    assert_eq!(got, expected, "the table is the source's state after its last change");
    assert!(txn.unwrap() >= (changes.len() as i64 / 97), "{txn:?}");

    // A batch that deletes replays IDENTICAL, and the books balance.
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "3"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 3: IDENTICAL"), "{stdout}");
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn kill_minus_9_anywhere_in_a_change_stream_leaves_exactly_the_computed_state() {
    let broker = Broker::start();
    broker.create_topic("customers", 3);
    let mut random = Seeded::from_clock("cdc crash: stream and kill moments");
    let (changes, expected) = change_stream(&mut random, 900);
    produce_changes(&broker.bootstrap, "customers", &changes);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap, 41);
    // One table: every step but the one between two tables' commits.
    let points = [
        "after-offsets-log:1",
        "in-sink:1",
        "before-table-commit:1",
        "after-table-commits:1",
        "in-checkpoint-write:1",
        "in-checkpoint-write:2",
        "after-offsets-log:2",
        "in-sink:3",
        "before-table-commit:2",
        "after-table-commits:2",
        "in-checkpoint-write:3",
        "in-checkpoint-write:4",
    ];
    for point in points {
        let (outcome, stderr) = run_once(&config, Some(point), None);
        assert_eq!(outcome, Outcome::KilledAt, "run at {point} should reach it: {stderr}");
    }
    let (mut random_kills, started) = (0, Instant::now());
    while random_kills < 6 && started.elapsed() < Duration::from_secs(90) {
        let (outcome, stderr) = run_once(&config, None, Some(Duration::from_millis(40 + random.next() % 400)));
        match outcome {
            Outcome::KilledRunning => random_kills += 1,
            Outcome::Exited(0) => break,
            other => panic!("unexpected {other:?}: {stderr}"),
        }
    }
    let (outcome, stderr) = run_once(&config, None, None);
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");
    eprintln!("cdc crash test: {} kills at named points, {random_kills} at random moments", points.len());
    let (got, _) = table_state(dir.path());
    assert_eq!(got, expected, "after every kill, the table is the source's state after its last change");
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
