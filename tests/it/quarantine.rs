//! Poison records through `sluice run` with `pipeline.on_poison =
//! "quarantine"`: the `poison` sink traps, rejects or runs out of memory on
//! some records; the pipeline sets exactly those aside into the quarantine
//! table, commits the rest exactly once, records the decision, and keeps
//! going. Then the bounds, the failures that are never searched, and
//! `kill -9` in the middle of a search.

use crate::crash::{Outcome, run_once};
use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn config(dir: &Path, bootstrap: &str, topic: &str, component: &str, quarantine: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "poisoned"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
max_attempts = 2
retry_backoff_ms = 20
on_poison = "quarantine"
metrics_file = "metrics.prom"

[source]
bootstrap_servers = "{bootstrap}"
topics = ["{topic}"]
max_records_per_batch = 50

[[tables]]
name = "events"
path = "tables/events"
columns = [{{ name = "id", type = "string" }}]

[quarantine]
path = "tables/quarantine"
{quarantine}

[limits]
memory_bytes = 33554432
deadline_ms = 3000
"#,
        component = guest(component).display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// 300 records in one partition, in batches of 50: poison at offsets 0,
/// 25 and 49 (a trap, invalid input, out of memory: batch 0), 110 and 111
/// (batch 2) and every record of batch 4 (200..250).
fn stream() -> (Vec<String>, Vec<String>, BTreeMap<i64, &'static str>) {
    let mut poison = BTreeMap::new();
    for (o, kind) in [(0, "trap"), (25, "invalid"), (49, "oom"), (110, "trap"), (111, "invalid")] {
        poison.insert(o, kind);
    }
    for o in 200..250 {
        poison.insert(o, if o % 2 == 0 { "trap" } else { "invalid" });
    }
    let values: Vec<String> = (0..300i64)
        .map(|o| match poison.get(&o) {
            Some(kind) => format!("{kind}:{o}"),
            None => format!("id-{o:04}"),
        })
        .collect();
    let good = values.iter().filter(|v| v.starts_with("id-")).cloned().collect();
    (values, good, poison)
}

fn quarantined_rows(dir: &Path) -> Vec<Value> {
    read_delta(&dir.join("tables/quarantine"), "poisoned").rows
}

fn decision(config: &Path, batch: u64) -> Value {
    let (code, stdout, stderr) = sluice_output(&["batch", "show", &batch.to_string(), "-c", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str::<Value>(&stdout).unwrap()["quarantine"].clone()
}

#[test]
fn poison_records_are_set_aside_exactly_and_the_rest_lands_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("mixed", 1);
    let (values, good, poison) = stream();
    produce(&broker.bootstrap, "mixed", 1, &values);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap, "mixed", "poison", "max_records_per_batch = 60");
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Nothing skipped silently: a marker line for every record set aside.
    let marked: Vec<&str> = stdout.lines().filter(|l| l.contains("QUARANTINED")).collect();
    assert_eq!(marked.len(), poison.len(), "{stdout}");
    assert!(marked.iter().any(|l| l.contains("batch 0: QUARANTINED mixed/0@25") && l.contains("cannot parse invalid:25")), "{stdout}");

    let events = read_delta(&dir.path().join("tables/events"), "poisoned");
    assert_ids_exactly_once("events", &events, &good);
    assert_eq!(events.txn, Some(5));

    // Every poison record exactly once, with its error, batch and component.
    let rows = quarantined_rows(dir.path());
    let mut by_offset: BTreeMap<i64, &Value> = BTreeMap::new();
    for r in &rows {
        assert!(by_offset.insert(r["offset"].as_i64().unwrap(), r).is_none(), "twice: {r}");
    }
    assert_eq!(by_offset.keys().copied().collect::<Vec<_>>(), poison.keys().copied().collect::<Vec<_>>());
    for (o, r) in &by_offset {
        let kind = poison[o];
        let value = format!("{kind}:{o}");
        assert_eq!(r["topic"], "mixed");
        assert_eq!(r["value"], Value::String(hex::encode(&value)), "the record's value, as bytes");
        assert_eq!(r["batch_id"], o / 50);
        let error = r["error"].as_str().unwrap();
        let says = match kind {
            "trap" => format!("poison record {value}"),
            "invalid" => format!("cannot parse {value}"),
            _ => "memory".into(),
        };
        assert!(error.contains(&says), "offset {o}: {error}");
        assert_eq!(r["component_digest"].as_str().unwrap().len(), 64);
    }

    // The decision is in the checkpoint, each search within its bound.
    for (batch, n, k) in [(0u64, 50u64, 3u64), (2, 50, 2), (4, 50, 50)] {
        let d = decision(&config, batch);
        assert_eq!(d["excluded"].as_array().unwrap().len() as u64, k, "{d}");
        let bound = 2 * k * (n as f64).log2().ceil() as u64 + 1;
        let runs = d["runs"].as_u64().unwrap();
        assert!(runs <= bound, "batch {batch}: {runs} runs, bound {bound}");
        eprintln!("quarantine test: batch {batch}: {k} poison of {n} records found in {runs} runs (bound {bound})");
    }
    assert!(decision(&config, 1).is_null(), "a clean batch has no decision");

    // Replay reproduces the committed output; the fixed sink shows the
    // records set aside as its diff.
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 2: IDENTICAL"), "{stdout}");
    assert!(stdout.contains("2 poison record(s) were set aside"), "{stdout}");
    let fixed = guest("poison-fixed");
    let (code, stdout, _) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "2", "--component", fixed.to_str().unwrap()]);
    assert_ne!(code, 0, "{stdout}");
    assert!(stdout.contains("trap:110") && stdout.contains("invalid:111"), "the diff shows the records set aside: {stdout}");

    // The books balance: source = delivered + quarantined; status and
    // metrics say so.
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = sluice_output(&["status", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("quarantine: {} poison record(s) set aside into table `quarantine`, from batch(es) 0, 2, 4", poison.len())), "{stdout}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.prom")).unwrap();
    assert!(metrics.contains(&format!("sluice_quarantined_records_total{{pipeline=\"poisoned\"}} {}", poison.len())), "{metrics}");
}

#[test]
fn past_the_bounds_the_pipeline_stops_with_the_report_and_commits_nothing_of_the_batch() {
    let broker = Broker::start();
    for (topic, quarantine, says) in [
        ("too-many", "max_records_per_batch = 2", "more than 2 poison records (quarantine.max_records_per_batch)"),
        ("too-long", "max_extra_runs = 4", "needed more than 4 sink runs (quarantine.max_extra_runs)"),
    ] {
        broker.create_topic(topic, 1);
        let values: Vec<String> = (0..50).map(|o| if [3, 20, 40].contains(&o) { format!("trap:{o}") } else { format!("id-{o}") }).collect();
        produce(&broker.bootstrap, topic, 1, &values);
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &broker.bootstrap, topic, "poison", quarantine);
        let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(says) && stderr.contains("nothing of batch 0 was committed"), "{stderr}");
        assert!(stderr.contains("poison: too-many/0@3") || topic != "too-many", "the report lists what was found: {stderr}");
        let events = read_delta(&dir.path().join("tables/events"), "poisoned");
        assert!(events.rows.is_empty() && events.txn.is_none(), "{:?}", events.rows);
        assert!(quarantined_rows(dir.path()).is_empty());
        assert!(decision(&config, 0).is_null(), "no decision recorded");
    }
}

#[test]
fn failures_that_do_not_repeat_are_retried_never_searched() {
    let broker = Broker::start();
    for (topic, value, says) in [("external", "failed:7", "downstream unavailable for failed:7"), ("slow", "slow:7", "deadline")] {
        broker.create_topic(topic, 1);
        let values: Vec<String> = (0..10).map(|o| if o == 7 { value.to_owned() } else { format!("id-{o}") }).collect();
        produce(&broker.bootstrap, topic, 1, &values);
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &broker.bootstrap, topic, "poison", "");
        let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("attempt 1/2 failed") && stderr.contains(says), "retried as before: {stderr}");
        assert!(stderr.contains("failed after 2 attempt(s)"), "{stderr}");
        assert!(!stdout.contains("QUARANTINED"), "{stdout}");
        assert!(decision(&config, 0).is_null(), "never searched");
    }
}

#[test]
fn kill_minus_9_in_the_middle_of_a_search_or_after_the_decision_loses_and_repeats_nothing() {
    let broker = Broker::start();
    broker.create_topic("killed", 1);
    let (values, good, poison) = stream();
    produce(&broker.bootstrap, "killed", 1, &values);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap, "killed", "poison", "max_records_per_batch = 60");
    // Batch 0's search twice, after its decision, in a later search (batch
    // 0's decision then applies instead), after that one's decision, and
    // between two commits.
    for point in ["in-bisection:3", "in-bisection:7", "after-quarantine-decision:1", "in-bisection:30", "after-quarantine-decision:1", "after-table-commits:2"] {
        let (outcome, stderr) = run_once(&config, Some(point), None);
        assert_eq!(outcome, Outcome::KilledAt, "run at {point} should reach it: {stderr}");
    }
    let (outcome, stderr) = run_once(&config, None, None);
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");
    let events = read_delta(&dir.path().join("tables/events"), "poisoned");
    assert_ids_exactly_once("events", &events, &good);
    let mut offsets: Vec<i64> = quarantined_rows(dir.path()).iter().map(|r| r["offset"].as_i64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, poison.keys().copied().collect::<Vec<_>>(), "every poison record quarantined once");
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // A lost checkpoint rebuilt from the tables keeps the decisions (from
    // the quarantine table): batch 0 still replays IDENTICAL.
    std::fs::rename(dir.path().join("checkpoint"), dir.path().join("checkpoint.lost")).unwrap();
    let (code, stdout, stderr) = sluice_output(&["checkpoint", "rebuild", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("set aside by 3 batch(es) were taken from the quarantine table"), "{stdout}");
    assert_eq!(decision(&config, 0)["excluded"].as_array().unwrap().len(), 3);
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "0"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 0: IDENTICAL"), "{stdout}");
}

#[test]
fn release_with_a_fixed_sink_lands_the_records_once_and_a_second_release_does_nothing() {
    let broker = Broker::start();
    broker.create_topic("released", 1);
    let (values, good, poison) = stream();
    produce(&broker.bootstrap, "released", 1, &values);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap, "released", "poison", "max_records_per_batch = 60");
    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let table = dir.path().join("tables/events");
    let fixed = guest("poison-fixed");
    let release = |batch: &str| sluice_output(&["quarantine", "release", config.to_str().unwrap(), "--batch", batch, "--component", fixed.to_str().unwrap()]);

    // Batch 2's two records through the fixed sink: batch 6, once.
    let (code, stdout, stderr) = release("2");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("released 2 record(s) of batch 2 in batch 6"), "{stdout}");
    let after = read_delta(&table, "poisoned");
    let mut expected = good.clone();
    expected.extend(["trap:110".to_owned(), "invalid:111".to_owned()]);
    assert_ids_exactly_once("events", &after, &expected);
    assert_eq!(after.txn, Some(6));
    let marked: BTreeMap<i64, Value> = quarantined_rows(dir.path()).iter().map(|r| (r["offset"].as_i64().unwrap(), r["released_in_batch"].clone())).collect();
    assert_eq!(marked.len(), poison.len(), "no quarantine row added or lost");
    for (o, released) in &marked {
        let want = if [110, 111].contains(o) { Value::from(6) } else { Value::Null };
        assert_eq!(*released, want, "offset {o}");
    }

    // A second release: nothing moves.
    let versions = (after.version, read_delta(&dir.path().join("tables/quarantine"), "poisoned").version);
    let (code, stdout, stderr) = release("2");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("were released in batch 6 before: nothing to do"), "{stdout}");
    assert_eq!((read_delta(&table, "poisoned").version, read_delta(&dir.path().join("tables/quarantine"), "poisoned").version), versions);
    let (code, _, stderr) = release("1");
    assert_ne!(code, 0);
    assert!(stderr.contains("batch 1 set no records aside"), "{stderr}");

    // The stream goes on where it stood, not after the released offsets.
    let more: Vec<String> = (300..320).map(|o| format!("id-{o:04}")).collect();
    produce(&broker.bootstrap, "released", 1, &more);
    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    expected.extend(more);
    assert_ids_exactly_once("events", &read_delta(&table, "poisoned"), &expected);

    // The release batch replays IDENTICAL, and the books balance.
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "6"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 6: IDENTICAL"), "{stdout}");
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
