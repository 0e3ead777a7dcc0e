//! The tools for trusting a pipeline, as a user runs them: `sluice replay`
//! (from Kafka and from a bundle), `sluice batch export`, `sluice batch
//! show` and `sluice reconcile`. Real binary, real broker (or the mock
//! cluster), tables changed behind sluice's back by an independent writer.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Order `i`: every fifth is cancelled; every third has a round amount.
fn order(i: usize) -> Value {
    let amount = if i.is_multiple_of(3) { 1000 + i * 100 } else { 1234 + i };
    let status = if i.is_multiple_of(5) { "cancelled" } else { "paid" };
    json!({"order_id": format!("o-{i:03}"), "customer": format!("c-{}", i % 7), "amount_cents": amount, "status": status})
}

fn orders(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| order(i).to_string()).collect()
}


fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn replay_with_a_changed_sink_shows_the_rows_it_would_change() {
    let broker = Broker::start();
    broker.create_topic("orders", 2);
    produce(&broker.bootstrap, "orders", 2, &orders(0..60));
    let dir = tempfile::tempdir().unwrap();
    let config = orders_config(dir.path(), "orders", &broker.bootstrap, 1000, &guest("orders-upsert"), "");
    let config = config.to_str().unwrap();
    let (code, _, stderr) = sluice_output(&["run", config]);
    assert_eq!(code, 0, "{stderr}");
    let checkpoint = checkpoint_files(dir.path());
    let version = read_delta(&dir.path().join("tables/orders"), "orders").version;

    let (code, stdout, stderr) = sluice_output(&["replay", config, "--batch", "0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("batch 0: IDENTICAL to the committed output"), "{stdout}");
    assert!(!stdout.contains("diff"), "nothing to diff: {stdout}");

    // v2 drops cancelled orders and rounds amounts to whole units.
    let v2 = guest("orders-upsert-v2");
    let v2 = v2.to_str().unwrap();
    let (code, stdout, _) = sluice_output(&["replay", config, "--batch", "0", "--component", v2, "--json", "--max-rows", "100"]);
    assert_eq!(code, 1, "a different output exits 1");
    let report = json_of(&stdout);
    assert_eq!(report["identical"], false);
    let diff = &report["diff"][0];
    assert_eq!(diff["table"], "orders");
    assert_eq!(diff["keys"], json!(["order_id"]));
    let cancelled: Vec<usize> = (0..60).filter(|i| i % 5 == 0).collect();
    let rounded: Vec<usize> = (0..60).filter(|i| i % 5 != 0 && i % 3 != 0).collect();
    assert_eq!((diff["committed_rows"].as_u64(), diff["replayed_rows"].as_u64()), (Some(60), Some(48)));
    assert_eq!(diff["differing_rows"].as_u64(), Some((cancelled.len() + rounded.len()) as u64));
    let rows: BTreeMap<String, &Value> = diff["rows"].as_array().unwrap().iter().map(|r| (r["key"]["order_id"].as_str().unwrap().to_owned(), r)).collect();
    for i in &cancelled {
        let row = rows[&format!("o-{i:03}")];
        assert_eq!(row["committed"]["status"], "cancelled");
        assert_eq!(row["replayed"], Value::Null, "v2 drops cancelled orders");
    }
    for i in &rounded {
        let row = rows[&format!("o-{i:03}")];
        let (committed, replayed) = (&row["committed"], &row["replayed"]);
        let amount = 1234 + *i as i64;
        assert_eq!(committed["amount_cents"], amount);
        assert_eq!(replayed["amount_cents"], (amount + 50) / 100 * 100);
        let mut same = replayed.clone();
        same["amount_cents"] = amount.into();
        assert_eq!(&same, committed, "only the amount differs");
    }
    assert_eq!(rows.len(), cancelled.len() + rounded.len(), "no other row differs");

    // The text report says the same, for a person, bounded by --max-rows.
    let (code, stdout, _) = sluice_output(&["replay", config, "--batch", "0", "--component", v2, "--max-rows", "3"]);
    assert_eq!(code, 1);
    assert!(stdout.starts_with("batch 0: DIFFERENT from the committed output"), "{stdout}");
    assert!(stdout.contains("diff orders: 60 committed rows, 48 replayed, 44 differ (first 3 shown)"), "{stdout}");
    assert!(stdout.contains("    - order_id=\"o-000\": only committed {"), "{stdout}");
    assert!(stdout.contains("    ~ order_id=\"o-001\": amount_cents: 1235 → 1200"), "{stdout}");

    assert_eq!(checkpoint_files(dir.path()), checkpoint, "replay leaves the checkpoint alone");
    assert_eq!(read_delta(&dir.path().join("tables/orders"), "orders").version, version, "and the table");
}

#[test]
fn a_bundle_replays_without_kafka_in_a_fresh_directory_and_bad_bundles_are_refused() {
    let broker = Broker::start();
    broker.create_topic("orders", 2);
    produce(&broker.bootstrap, "orders", 2, &orders(0..90));
    let dir = tempfile::tempdir().unwrap();
    let config = orders_config(dir.path(), "orders", &broker.bootstrap, 40, &guest("orders-upsert"), "");
    let config = config.to_str().unwrap();
    let (code, _, stderr) = sluice_output(&["run", config]);
    assert_eq!(code, 0, "{stderr}");

    // `batch show`: the plan, the commit, and the attempt with its log.
    let (code, stdout, stderr) = sluice_output(&["batch", "show", "1", "--config", config, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let shown = json_of(&stdout);
    let committed_digest = shown["committed"]["output_digest"].as_str().unwrap().to_owned();
    let offsets: i64 = shown["planned"]["ranges"].as_array().unwrap().iter().map(|r| r["end"].as_i64().unwrap() - r["start"].as_i64().unwrap()).sum();
    assert_eq!((offsets, shown["committed"]["records"].as_i64()), (40, Some(40)));
    assert_eq!(shown["component_kept"], true);
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0]["outcome"].as_str(), attempts[0]["records"].as_u64()), (Some("succeeded"), Some(40)));
    assert_eq!(attempts[0]["log"][0]["message"], "staged orders upsert");
    let (code, stdout, _) = sluice_output(&["batch", "show", "1", "--config", config]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("batch 1: committed\n"), "{stdout}");
    assert!(stdout.contains("attempt 1 (pid ") && stdout.contains("succeeded in "), "{stdout}");
    assert!(stdout.contains("[ info sink] staged orders upsert batch_id=1 records=40 orders=40"), "{stdout}");

    let with = dir.path().join("batch-1.bundle");
    let without = dir.path().join("batch-0.bundle");
    let (code, stdout, stderr) = sluice_output(&["batch", "export", "1", "-o", with.to_str().unwrap(), "--config", config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with(&format!("batch 1 → {}: 40 records, committed output {}", with.display(), &committed_digest[..16])), "{stdout}");
    let args = ["batch", "export", "0", "-o", without.to_str().unwrap(), "--config", config, "--without-component"];
    assert_eq!(sluice_output(&args).0, 0);
    if let Some(keep) = std::env::var_os("SLUICE_SAVE_BUNDLE") {
        std::fs::copy(&with, keep).unwrap();
    }

    // The source data goes away: replaying from Kafka fails, and says why.
    broker.delete_topic("orders");
    let (code, _, stderr) = sluice_output(&["replay", config, "--batch", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("The batch's records must still be in Kafka to replay it from the checkpoint"), "{stderr}");
    assert!(stderr.contains("replay it from a bundle: `sluice replay --bundle FILE`"), "{stderr}");
    drop(broker);

    // Elsewhere, with nothing but the bundle: the committed digest, bit for bit.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("b.bundle");
    std::fs::copy(&with, &copy).unwrap();
    let out = sluice(&["replay", "--bundle", "b.bundle", "--json"]).current_dir(elsewhere.path()).env("SLUICE_CACHE_DIR", elsewhere.path().join("cache")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["replayed_digest"], committed_digest.as_str());
    assert_eq!((report["identical"].as_bool(), report["records"].as_u64()), (Some(true), Some(40)));
    assert_eq!(report["records_from"], "b.bundle");

    // A bundle without its component needs one, and checks nothing else changed.
    let (code, _, stderr) = sluice_output(&["replay", "--bundle", without.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("the bundle does not include the component batch 0 was planned with"), "{stderr}");
    assert!(stderr.ends_with("pass --component FILE\n"), "{stderr}");
    let component = guest("orders-upsert");
    let (code, stdout, stderr) = sluice_output(&["replay", "--bundle", without.to_str().unwrap(), "--component", component.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("batch 0: IDENTICAL"), "{stdout}");

    // The wrong batch, the wrong pipeline, a damaged file: each refused by name.
    let (code, _, stderr) = sluice_output(&["replay", config, "--batch", "0", "--bundle", with.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("bundle {} does not match: it holds batch 1, not batch 0", with.display())), "{stderr}");
    let other = tempfile::tempdir().unwrap();
    let other_config = orders_config(other.path(), "payments", "127.0.0.1:1", 40, &guest("orders-upsert"), "");
    let (code, _, stderr) = sluice_output(&["replay", other_config.to_str().unwrap(), "--bundle", with.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does not match: it is of pipeline `orders`, the config is of pipeline `payments`"), "{stderr}");
    let mut bytes = std::fs::read(&copy).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let (code, _, stderr) = sluice_output(&["replay", "--bundle", copy.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("bundle {} is corrupt: checksum mismatch", copy.display())), "{stderr}");
}

/// A bundle kept in the repository (`tests/fixtures/`), made by an earlier
/// build: replaying it in a fresh clone gives the digest it recorded.
#[test]
fn a_bundle_from_another_checkout_replays_identically() {
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/orders-batch-1.bundle");
    let cache = tempfile::tempdir().unwrap();
    let out = sluice(&["replay", "--bundle", bundle, "--json"]).env("SLUICE_CACHE_DIR", cache.path()).output().unwrap();
    let report = json_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["identical"], true);
    assert_eq!(report["replayed_digest"], report["committed_digest"]);
    assert_eq!(report["records"], 40);
}

#[test]
fn reconcile_passes_a_clean_run_and_finds_injected_gaps_and_duplicates() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 2, 1).unwrap();
    produce(&cluster.bootstrap_servers(), "orders", 2, &orders(0..90));
    let dir = tempfile::tempdir().unwrap();
    let config = orders_config(dir.path(), "orders", &cluster.bootstrap_servers(), 30, &guest("orders-upsert"), "");
    let config = config.to_str().unwrap();
    assert_eq!(sluice_output(&["run", config]).0, 0);
    let table = dir.path().join("tables/orders");
    let reconcile = || {
        let (code, stdout, stderr) = sluice_output(&["reconcile", config, "--json"]);
        (code, json_of(&stdout), stderr)
    };

    let (code, report, stderr) = reconcile();
    assert_eq!(code, 0, "{report:#}{stderr}");
    assert_eq!(report["findings"], json!([]));
    assert_eq!(report["tables"][0]["rows"], 90);
    let batches = report["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b["source_records"] == 30 && b["delivered_records"] == 30 && b["rows"]["orders"] == json!({"staged": 30, "delta": 30})), "{batches:?}");
    let (code, stdout, _) = sluice_output(&["reconcile", config]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("pipeline orders: OK (last committed batch 2)"), "{stdout}");

    // Kafka out of reach: nothing wrong found, but not everything checked.
    let text = std::fs::read_to_string(config).unwrap();
    let unreachable = dir.path().join("unreachable.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let away = text.replace(&cluster.bootstrap_servers(), &format!("127.0.0.1:{port}")).replace("fetch_timeout_ms = 20000", "fetch_timeout_ms = 1000");
    std::fs::write(&unreachable, away).unwrap();
    let (code, stdout, _) = sluice_output(&["reconcile", unreachable.to_str().unwrap()]);
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.starts_with("pipeline orders: INCOMPLETE: no discrepancy found, but not everything could be checked"), "{stdout}");
    assert!(stdout.contains("  not checked: source records not counted: kafka (127.0.0.1:"), "{stdout}");

    // Another writer deletes a row: a gap.
    tamper_delta(&table, &["delete", "order_id = 'o-010'"]);
    let (code, report, _) = reconcile();
    assert_eq!(code, 1);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["kind"], "gap");
    assert_eq!(findings[0]["message"], "`orders` has 89 rows but this pipeline's commits account for 90: 1 row(s) missing; versions [4] were written by something other than this pipeline");

    // ...and appends two copies of another: duplicates, by key and by count.
    tamper_delta(&table, &["duplicate", "order_id=o-007", "2"]);
    let (code, report, _) = reconcile();
    assert_eq!(code, 1);
    let messages: Vec<&str> = report["findings"].as_array().unwrap().iter().map(|f| f["message"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        [
            "`orders` has 91 rows but this pipeline's commits account for 90: 1 row(s) extra; versions [4, 5, 6] were written by something other than this pipeline",
            "`orders` has 1 key(s) held by more than one row, e.g. {\"n\":3,\"order_id\":\"o-007\"}",
        ]
    );
    let (_, stdout, _) = sluice_output(&["reconcile", config]);
    assert!(stdout.starts_with("pipeline orders: 2 DISCREPANCIES"), "{stdout}");

    // Offsets no batch read: a plan that skips three records of partition 0.
    let checkpoint = sluice::checkpoint::Checkpoint::open(dir.path().join("checkpoint")).unwrap();
    let mut plan = checkpoint.planned(2).unwrap().unwrap();
    let range = plan.ranges.iter_mut().find(|r| r.partition == 0).unwrap();
    let (start, end) = (range.start, range.start + 3);
    range.start = end;
    // Plans are written once: replace the file, as a hand edit would.
    std::fs::remove_file(dir.path().join("checkpoint/offsets/2")).unwrap();
    checkpoint.record_planned(&plan).unwrap();
    drop(checkpoint);
    let (code, report, _) = reconcile();
    assert_eq!(code, 1);
    let findings = report["findings"].as_array().unwrap();
    let gap = findings.iter().find(|f| f["batch_id"] == 2 && f["kind"] == "gap").expect("the offset gap is found");
    assert_eq!(gap["message"], format!("offsets [{start}, {end}) of orders/0 are in no batch: batch 1 ended at {start}, batch 2 starts at {end}"));
    assert!(
        findings.iter().any(|f| f["message"] == "batch 2: Kafka holds 27 records in its ranges, the sink was given 30"),
        "the counts disagree too: {findings:?}"
    );
}
