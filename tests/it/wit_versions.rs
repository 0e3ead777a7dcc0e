//! Components built against `sluice:sink@0.1.0` keep running unchanged
//! beside those built against 0.2.0.
//!
//! `tests/fixtures/sink-0.1.0/orders_upsert.wasm` is the orders-upsert
//! example as built, with the SDK of its day, before 0.2.0 existed, and is
//! committed, never rebuilt. The same source built now targets 0.2.0. Both
//! run through `sluice run` into their own pipeline and must give the same
//! table, the same output digest per batch and a replay IDENTICAL; and a
//! pipeline switched from the 0.1.0 build to the 0.2.0 one mid-stream goes
//! on as if nothing changed (the config digest does not cover the
//! component, and the outputs are the same).

use crate::harness::*;
use serde_json::{Value, json};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sink-0.1.0/orders_upsert.wasm"))
}

fn orders(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| json!({"order_id": format!("o-{:03}", i % 40), "customer": format!("c-{}", i % 7), "amount_cents": 1000 + i, "status": "paid"}).to_string())
        .collect()
}

/// The output digest each table commit records, by batch.
fn digests(dir: &std::path::Path) -> Vec<(u64, String)> {
    let log = std::fs::read_dir(dir.join("tables/orders/_delta_log")).unwrap();
    let mut out = Vec::new();
    for entry in log {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let meta = &v["commitInfo"]["sluice"];
                if let (Some(b), Some(d)) = (meta["batch_id"].as_u64(), meta["output_digest"].as_str()) {
                    out.push((b, d.to_owned()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_component_built_against_0_1_0_runs_commits_and_replays_as_its_0_2_0_rebuild_does() {
    let old = fixture();
    assert!(old.is_file(), "the committed 0.1.0 component is missing: {}", old.display());
    // It really is a 0.1.0 component: it imports 0.1.0's output interface.
    let bytes = std::fs::read(&old).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("sluice:sink/output@0.1.0") && !has("sluice:sink/output@0.2.0"));
    assert!(std::fs::read(guest("orders-upsert")).unwrap().windows(24).any(|w| w == b"sluice:sink/output@0.2.0"));

    let broker = Broker::start();
    broker.create_topic("orders", 2);
    produce(&broker.bootstrap, "orders", 2, &orders(0..300));
    let mut tables = Vec::new();
    let mut logs = Vec::new();
    for component in [old.clone(), guest("orders-upsert")] {
        let dir = tempfile::tempdir().unwrap();
        let config = orders_config(dir.path(), "orders", &broker.bootstrap, 70, &component, "");
        let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", component.display());
        let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "2"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("batch 2: IDENTICAL"), "{}: {stdout}", component.display());
        let mut rows = read_delta(&dir.path().join("tables/orders"), "orders").rows;
        rows.sort_by(|a, b| a["order_id"].as_str().cmp(&b["order_id"].as_str()));
        tables.push(rows);
        logs.push(digests(dir.path()));
    }
    assert_eq!(tables[0].len(), 40);
    assert_eq!(tables[0], tables[1], "the same table from the 0.1.0 component and its 0.2.0 rebuild");
    assert_eq!(logs[0], logs[1], "the same output digest for every batch");
    assert!(logs[0].len() >= 5, "{:?}", logs[0]);

    // One pipeline, the component swapped from the 0.1.0 build to the
    // 0.2.0 one between runs: it goes on, and an old batch still replays.
    let dir = tempfile::tempdir().unwrap();
    let config = orders_config(dir.path(), "orders", &broker.bootstrap, 70, &old, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("trigger = \"available_now\"", "trigger = \"available_now\"\nmax_attempts = 1")).unwrap();
    let (outcome, stderr) = crate::crash::run_once(&config, Some("after-table-commits:2"), None);
    assert_eq!(outcome, crate::crash::Outcome::KilledAt, "{stderr}");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(old.to_str().unwrap(), guest("orders-upsert").to_str().unwrap())).unwrap();
    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut rows = read_delta(&dir.path().join("tables/orders"), "orders").rows;
    rows.sort_by(|a, b| a["order_id"].as_str().cmp(&b["order_id"].as_str()));
    assert_eq!(rows, tables[0]);
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "0", "--component", old.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 0: IDENTICAL"), "{stdout}");
}
