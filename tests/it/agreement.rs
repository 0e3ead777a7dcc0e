//! The table is the truth, the checkpoint its index: every state the two
//! can be left in is either healed or stops `sluice run` with an error
//! saying what to do, and `sluice checkpoint rebuild` recovers a lost or
//! damaged checkpoint from the tables. Real binary, real broker (Tansu),
//! tables read back with the independent Python reader; every id must be
//! in every table exactly once.

use crate::crash::{Outcome, run_once};
use crate::harness::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("id-{i:05}")).collect()
}

/// Every id once in both tables of the `fan-out` pipeline, nothing else,
/// and both tables at batch `last`.
fn assert_each_id_once(dir: &Path, ids: &[String], last: i64) {
    assert_eq!(assert_fan_out_exactly_once(dir, ids), [Some(last); 2], "both tables at the last batch");
}

fn run(config: &Path) -> (i32, String, String) {
    sluice_output(&["run", config.to_str().unwrap()])
}

fn rebuild(config: &Path) -> (i32, String, String) {
    sluice_output(&["checkpoint", "rebuild", config.to_str().unwrap()])
}

/// The newest commit file of a Delta table's log.
fn last_delta_commit(table: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

/// Hole 1: the checkpoint moved away (the advice an error used to give "to
/// start over"), the tables kept, and a rerun with another batch size.
/// Before: batches 0–4 were re-planned over offsets 0..125, all "already
/// committed" in the tables and skipped; the run exited 0 with 75 of 150
/// records missing. Now the table is ahead of the checkpoint: the run stops
/// saying so, and a rebuilt checkpoint continues with every id once.
#[test]
fn a_table_ahead_of_a_moved_away_checkpoint_stops_the_run_and_a_rebuild_continues_exactly() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    produce(&broker.bootstrap, "events", 2, &ids(0..50));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 10, "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_each_id_once(dir.path(), &ids(0..50), 4);

    std::fs::rename(dir.path().join("checkpoint"), dir.path().join("checkpoint.moved")).unwrap();
    produce(&broker.bootstrap, "events", 2, &ids(50..150));
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 25, "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("error: table `audit` (Delta version 5) holds batch 4 of pipeline `fan-out`, but the checkpoint"),
        "{stderr}"
    );
    assert!(stderr.contains("records no batch: the table is ahead of the checkpoint"), "{stderr}");
    assert!(stderr.contains(&format!("rebuild the checkpoint from them with `sluice checkpoint rebuild {}`", config.display())), "{stderr}");
    assert_each_id_once(dir.path(), &ids(0..50), 4);

    let (code, stdout, stderr) = rebuild(&config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("committed batches 0..=4"), "{stdout}");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    // 100 more records in batches of 25: batches 5..=8.
    assert_each_id_once(dir.path(), &ids(0..150), 8);
}

/// Hole 2: a table lost its last commit (a restored backup, a truncated
/// `_delta_log`, a power loss). Before: the run went on at batch 3 and batch
/// 2 was gone from that table. Now the batch is re-run from its plan and
/// committed to that table again.
#[test]
fn a_table_that_lost_its_last_commit_is_healed_by_re_running_the_batch_from_its_plan() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    produce(&broker.bootstrap, "events", 2, &ids(0..30));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 10, "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    let events = dir.path().join("tables/events");
    std::fs::remove_file(last_delta_commit(&events)).unwrap();
    assert_eq!(read_delta(&events, "fan-out").txn, Some(1), "batch 2 is gone from `events`");

    produce(&broker.bootstrap, "events", 2, &ids(30..40));
    let (code, stdout, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("batch 2: healed: the table(s) had lost it; re-run from its plan (10 records)"), "{stdout}");
    assert_each_id_once(dir.path(), &ids(0..40), 3);
    let (code, stdout, _) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "2"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("batch 2: IDENTICAL"), "the healed output is the recorded one: {stdout}");
}

/// Order `i` as the orders sinks read it.
fn order(i: usize) -> String {
    let status = if i.is_multiple_of(5) { "cancelled" } else { "paid" };
    json!({"order_id": format!("o-{i:03}"), "customer": "c", "amount_cents": 1234 + i, "status": status}).to_string()
}

/// Hole 6: killed while the sink ran batch 0, then restarted with another
/// component. No table held the batch, so it may run with the new one, but
/// the checkpoint must then record what ran: before, `offsets/0` named the
/// old component and `replay --batch 0` said DIFFERENT.
#[test]
fn a_batch_re_run_under_a_changed_component_records_it_and_replays_identical() {
    let broker = Broker::start();
    broker.create_topic("orders", 2);
    produce(&broker.bootstrap, "orders", 2, &(0..60).map(order).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let config = orders_config(dir.path(), "orders", &broker.bootstrap, 1000, &guest("orders-upsert"), "");
    let (outcome, stderr) = run_once(&config, Some("in-sink:1"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");
    let config = orders_config(dir.path(), "orders", &broker.bootstrap, 1000, &guest("orders-upsert-v2"), "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");

    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("batch 0: IDENTICAL to the committed output"), "{stdout}");

    let (code, stdout, stderr) = sluice_output(&["batch", "show", "0", "-c", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let info: Value = serde_json::from_str(&stdout).unwrap();
    let planned = info["planned"]["component_digest"].as_str().unwrap();
    let committed = info["committed"]["component_digest"].as_str().unwrap();
    assert_ne!(committed, planned, "v2's output was committed, and commits/0 says so");
    let ran: Vec<&str> = info["attempts"].as_array().unwrap().iter().map(|a| a["component_digest"].as_str().unwrap()).collect();
    assert_eq!(ran, [planned, committed], "each attempt records the component that ran it");
    // Every order once, as v2 writes it (it drops cancelled orders).
    let read = read_delta(&dir.path().join("tables/orders"), "orders");
    let counts = read.counts("order_id");
    assert_eq!(counts.len(), 48, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1));
}

/// Hole 6: a half-committed batch (in `events`, not in `audit`) must not be
/// finished under a config the sink can observe: before, it was, and the
/// two tables could hold different outputs of one batch.
#[test]
fn a_half_committed_batch_is_not_finished_under_a_config_the_sink_can_observe() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    produce(&broker.bootstrap, "events", 3, &ids(0..120));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 40, "");
    let (outcome, stderr) = run_once(&config, Some("between-table-commits:1"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");

    let changed = fan_out_config(dir.path(), &broker.bootstrap, "events", 40, "\n[limits]\nchunk_records = 7\n");
    let (code, _, stderr) = run(&changed);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("batch 0 is committed to tables [\"events\"] but not to [\"audit\"], and the config changed since it ran"),
        "{stderr}"
    );
    assert!(stderr.contains("Run `sluice run` with the config batch 0 ran with to finish it, then switch"), "{stderr}");
    assert_eq!(read_delta(&dir.path().join("tables/audit"), "fan-out").txn, None, "nothing more was committed");

    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 40, "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_each_id_once(dir.path(), &ids(0..120), 2);
}

/// The checkpoint deleted while the pipeline runs (here: killed with batch 2
/// in both tables and `commits/2` not written): the run refuses, the
/// rebuild recovers it from the tables, and the run continues.
#[test]
fn a_checkpoint_deleted_mid_stream_is_rebuilt_from_the_tables_and_the_run_continues() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    produce(&broker.bootstrap, "events", 3, &ids(0..120));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 20, "");
    let (outcome, stderr) = run_once(&config, Some("after-table-commits:3"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");
    std::fs::remove_dir_all(dir.path().join("checkpoint")).unwrap();

    let (code, _, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("holds batch 2 of pipeline `fan-out`, but the checkpoint"), "{stderr}");
    assert!(stderr.contains("`sluice checkpoint rebuild"), "{stderr}");

    let (code, stdout, stderr) = rebuild(&config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("committed batches 0..=2"), "{stdout}");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_each_id_once(dir.path(), &ids(0..120), 5);
}

/// 60 records in three committed batches, 40 more waiting.
fn committed_three_batches() -> (Broker, tempfile::TempDir, PathBuf) {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    produce(&broker.bootstrap, "events", 2, &ids(0..60));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 20, "");
    let (code, _, stderr) = run(&config);
    assert_eq!(code, 0, "{stderr}");
    produce(&broker.bootstrap, "events", 2, &ids(60..100));
    (broker, dir, config)
}

/// Run, expect the damaged checkpoint to be refused pointing at the
/// rebuild, rebuild, run: every id once.
fn refused_then_rebuilt(dir: &Path, config: &Path, error: &str) {
    let (code, _, stderr) = run(config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(error), "{stderr}");
    assert!(stderr.contains("rebuild the checkpoint from the tables with `sluice checkpoint rebuild`"), "{stderr}");
    let (code, stdout, stderr) = rebuild(config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("committed batches 0..=2"), "{stdout}");
    assert!(stdout.contains("the old offsets/ and commits/ are kept in"), "{stdout}");
    let (code, _, stderr) = run(config);
    assert_eq!(code, 0, "{stderr}");
    assert_each_id_once(dir, &ids(0..100), 4);
}

#[test]
fn a_corrupt_checkpoint_file_is_rebuilt_from_the_tables_and_the_run_continues() {
    let (_broker, dir, config) = committed_three_batches();
    let file = dir.path().join("checkpoint/commits/2");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    refused_then_rebuilt(dir.path(), &config, &format!("checkpoint file {} is corrupt: checksum mismatch", file.display()));
}

#[test]
fn a_truncated_commit_log_is_rebuilt_from_the_tables_and_the_run_continues() {
    let (_broker, dir, config) = committed_three_batches();
    for n in 0..3 {
        std::fs::remove_file(dir.path().join(format!("checkpoint/commits/{n}"))).unwrap();
    }
    refused_then_rebuilt(dir.path(), &config, "batch 2 is planned but the last committed batch is none");
}

/// Two tables written by different runs of the same pipeline id cannot
/// make one checkpoint: the rebuild refuses, naming both, and changes
/// nothing.
#[test]
fn a_rebuild_refuses_tables_that_disagree_with_each_other() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    produce(&broker.bootstrap, "events", 2, &ids(0..40));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = fan_out_config(a.path(), &broker.bootstrap, "events", 10, "");
    let other = fan_out_config(b.path(), &broker.bootstrap, "events", 20, "");
    for c in [&config, &other] {
        let (code, _, stderr) = run(c);
        assert_eq!(code, 0, "{stderr}");
    }
    std::fs::remove_dir_all(a.path().join("tables/audit")).unwrap();
    std::fs::rename(b.path().join("tables/audit"), a.path().join("tables/audit")).unwrap();
    let before = checkpoint_files(a.path());

    let (code, stdout, stderr) = rebuild(&config);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("error: tables disagree about batch 0: `audit` (Delta version 1) records ranges events/0 0..10, events/1 0..10"), "{stderr}");
    assert!(stderr.contains("`events` (Delta version 1) records ranges events/0 0..5, events/1 0..5"), "{stderr}");
    assert_eq!(checkpoint_files(a.path()), before, "the checkpoint is unchanged");
}
