//! Schema evolution through `sluice run`: a nullable column added to a
//! table's config is added to the Delta table by its own recorded commit
//! just before the next batch's; `kill -9` between the two loses and
//! repeats nothing; a batch from before the change still replays
//! IDENTICAL; every other change is refused, naming what to do, with
//! nothing written.

use crate::crash::{Outcome, run_once};
use crate::harness::*;
use crate::table_types::table_ops_config;
use serde_json::{Value, json};
use std::path::Path;

const BEFORE: &str = r#"[[tables]]
name = "t"
path = "tables/t"
keys = ["id"]
partition_by = ["region"]
columns = [
  { name = "id", type = "long" },
  { name = "region", type = "string", nullable = false },
  { name = "v", type = "string" },
]
"#;

fn after() -> String {
    BEFORE.replace(
        "  { name = \"v\", type = \"string\" },\n",
        "  { name = \"v\", type = \"string\" },\n  { name = \"note\", type = \"string\" },\n  { name = \"amount\", type = \"decimal(10,2)\" },\n",
    )
}

fn upserts(ids: std::ops::Range<i64>, extra: Value) -> Vec<String> {
    ids.map(|id| {
        let region = ["eu", "us"][id as usize % 2];
        let mut row = json!({"id": id, "region": region, "v": format!("v{id}")});
        for (k, v) in extra.as_object().unwrap() {
            row[k] = v.clone();
        }
        json!({"table": "t", "op": "upsert", "keys": ["id"], "row": row}).to_string()
    })
    .collect()
}

fn set_tables(config: &Path, tables: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let head = &text[..text.find("[[tables]]").unwrap()];
    std::fs::write(config, format!("{head}{tables}")).unwrap();
}

/// The `sluice.schema_change` records of the table's commits.
fn schema_changes(table: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log")).unwrap().map(|e| e.unwrap().path()).collect();
    logs.sort();
    for path in logs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let change = &v["commitInfo"]["sluice"]["schema_change"];
            if !change.is_null() {
                out.push(change.clone());
            }
        }
    }
    out
}

#[test]
fn a_nullable_column_is_added_by_its_own_commit_and_a_kill_between_it_and_the_batch_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("ops", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = table_ops_config(dir.path(), "evolve", &broker.bootstrap, BEFORE);
    let table = dir.path().join("tables/t");
    produce(&broker.bootstrap, "ops", 1, &upserts(0..20, json!({})));
    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let before = read_delta(&table, "evolve");
    assert_eq!((before.rows.len(), before.txn), (20, Some(0)));

    // Two nullable columns declared; the next batch writes them. The run
    // is killed right after the schema change, before the batch commit.
    set_tables(&config, &after());
    produce(&broker.bootstrap, "ops", 1, &upserts(10..30, json!({"note": "new", "amount": "12.30"})));
    let (outcome, stderr) = run_once(&config, Some("after-schema-change:1"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");
    let between = read_delta(&table, "evolve");
    assert_eq!(between.version, before.version + 1, "the schema change is a commit of its own");
    assert_eq!(between.txn, Some(0), "and not the batch's");
    assert_eq!(between.rows.len(), 20);
    assert!(between.rows.iter().all(|r| r["note"].is_null() && r["amount"].is_null()), "old rows read the new columns as null");
    assert_eq!(schema_changes(&table), vec![json!({"added": ["note", "amount"], "before_batch": 1})]);

    let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let done = read_delta(&table, "evolve");
    assert_eq!(done.txn, Some(1));
    assert_eq!(schema_changes(&table).len(), 1, "the restart found the columns there and added nothing");
    let mut rows: Vec<(i64, Value, Value)> =
        done.rows.iter().map(|r| (r["id"].as_i64().unwrap(), r["note"].clone(), r["amount"].clone())).collect();
    rows.sort_by_key(|r| r.0);
    let expected: Vec<(i64, Value, Value)> = (0..30)
        .map(|id| if id < 10 { (id, Value::Null, Value::Null) } else { (id, json!("new"), json!("12.30")) })
        .collect();
    assert_eq!(rows, expected, "every id once; the batch after the change has the new columns");

    // A batch from before the change replays as it was committed.
    for batch in ["0", "1"] {
        let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", batch]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with(&format!("batch {batch}: IDENTICAL")), "{stdout}");
    }
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Every other change is refused before anything is written.
    let current = after();
    let refusals = [
        (current.replace("  { name = \"v\", type = \"string\" },\n", ""), "column `v` (string), which the config no longer declares"),
        (current.replace("name = \"v\"", "name = \"value\""), "which the config no longer declares"),
        (current.replace("{ name = \"note\", type = \"string\" }", "{ name = \"note\", type = \"long\" }"), "column `note` is string in the existing table but declared long"),
        (current.replace("{ name = \"note\", type = \"string\" }", "{ name = \"note\", type = \"string\", nullable = false }"), "column `note` is nullable in the existing table but declared NOT NULL"),
        (
            current.replace("decimal(10,2)\" },\n", "decimal(10,2)\" },\n  { name = \"must\", type = \"long\", nullable = false },\n"),
            "column `must` is new and declared NOT NULL",
        ),
        (current.replace("partition_by = [\"region\"]", "partition_by = []"), "partitioned by [region] but the config says partition_by = []"),
    ];
    let version = read_delta(&table, "evolve").version;
    for (tables, says) in refusals {
        set_tables(&config, &tables);
        let (code, _, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_ne!(code, 0, "{says}");
        assert!(stderr.contains(says), "the refusal says {says:?}: {stderr}");
        assert_eq!(read_delta(&table, "evolve").version, version, "nothing was written ({says})");
    }
}
