//! A pipeline that runs for thousands of batches keeps its table healthy:
//! `sluice run` with one-record batches, 2 000 of them, maintaining the
//! table between its own commits. Then what a user would check: the Delta
//! log checkpoints are there, the file count stays bounded, the table loads
//! as fast at batch 2 000 as at batch 100, the independent reader sees
//! every record once after compaction and VACUUM, no batch failed or
//! conflicted, a retained batch still replays IDENTICAL, and `sluice
//! maintain` runs every step on demand.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAINTENANCE: &str = "maintenance = { checkpoint_interval = 100, compact_min_files = 40, target_file_bytes = 1048576, vacuum_interval = 500, vacuum_retention_hours = 0 }";

fn config(dir: &Path, bootstrap: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "long-run"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
retry_backoff_ms = 20

[source]
bootstrap_servers = "{bootstrap}"
topics = ["events"]
max_records_per_batch = 1

[[tables]]
name = "events"
path = "tables/events"
{MAINTENANCE}
columns = [
  {{ name = "topic", type = "string" }},
  {{ name = "partition", type = "integer" }},
  {{ name = "offset", type = "long" }},
  {{ name = "timestamp_ms", type = "long" }},
  {{ name = "key", type = "string" }},
  {{ name = "value", type = "string" }},
]

[retention]
batches = 100
"#,
        component = guest("append-events").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Open the table afresh (as a new reader would) and time it.
fn load_time(table: &Path) -> (Duration, u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = url::Url::from_directory_path(std::path::absolute(table).unwrap()).unwrap();
    let started = Instant::now();
    let t = rt.block_on(deltalake::DeltaTable::try_from_url(url)).unwrap();
    (started.elapsed(), t.version().unwrap() as u64)
}

fn checkpoint_versions(table: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".checkpoint.parquet").and_then(|n| n.parse().ok())
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn two_thousand_one_record_batches_keep_checkpoints_a_bounded_file_count_and_every_record_once() {
    let broker = Broker::start();
    broker.create_topic("events", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &broker.bootstrap);
    let table = dir.path().join("tables/events");
    let values = |r: std::ops::Range<usize>| r.map(|i| format!("id-{i:05}")).collect::<Vec<_>>();

    // Batch 100 first, to compare the load time with.
    produce(&broker.bootstrap, "events", 1, &values(0..100));
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (at_100, v100) = load_time(&table);
    assert!(stdout.contains("maintenance after batch "), "{stdout}");

    produce(&broker.bootstrap, "events", 1, &values(100..2000));
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("retrying") && !stderr.contains("warning"), "no batch failed or conflicted, no step failed: {stderr}");
    let (at_2000, v2000) = load_time(&table);
    let since = |v: u64| v - checkpoint_versions(&table).into_iter().filter(|c| *c <= v).max().unwrap_or(0);
    eprintln!(
        "long run: a fresh load of the table took {at_100:?} at version {v100} (batch 100), {at_2000:?} at version {v2000} \
         (batch 2000); commit files read after the last log checkpoint: {} and {}",
        since(v100),
        since(v2000)
    );

    // Log checkpoints every 100 versions (a maintenance commit may land on
    // the multiple itself: then the checkpoint is a version or two later).
    let checkpoints = checkpoint_versions(&table);
    assert_eq!(checkpoints.len() as u64, v2000 / 100, "one checkpoint per 100 versions: {checkpoints:?}");
    for (i, v) in checkpoints.iter().enumerate() {
        let multiple = (i as u64 + 1) * 100;
        assert!((multiple..multiple + 3).contains(v), "checkpoint {i} at version {v}: {checkpoints:?}");
    }
    let compactions = stdout.matches(": compaction: ").count();
    let vacuums: usize = stdout
        .lines()
        .filter(|l| l.contains(": vacuum: "))
        .filter_map(|l| l.split(": vacuum: ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    eprintln!("long run: {compactions} compactions, {vacuums} files deleted by vacuum, {} checkpoints", checkpoints.len());
    assert!(compactions >= 1900 / 40 - 2, "compaction ran every ~40 batches: {compactions}");
    assert!(vacuums > 0, "vacuum deleted the compacted files: {stdout}");

    let read = read_delta(&table, "long-run");
    assert!(read.files <= 40, "at most compact_min_files data files: {}", read.files);
    assert_eq!(read.txn, Some(1999), "2000 one-record batches, none skipped");
    let mut seen: Vec<String> = read.rows.iter().map(|r| r["value"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    assert_eq!(seen, values(0..2000), "every record once, after compaction and vacuum");
    let parquet = walk_parquet(&table);
    // 2000 batches wrote 2000 small files: vacuum removed those compacted
    // before the oldest retained batch (the last 100) was planned.
    assert!(parquet < 400, "vacuum removed what compaction replaced: {parquet} Parquet files for {} live ones", read.files);

    // A retained batch replays IDENTICAL after vacuum.
    let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "1950"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("IDENTICAL"), "{stdout}");
    // And reconcile counts the maintenance commits as no rows.
    let (code, stdout, stderr) = sluice_output(&["reconcile", config.to_str().unwrap(), "--last", "100"]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // On demand: every step, now.
    let (code, stdout, stderr) = sluice_output(&["maintain", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for step in ["checkpoint: at version", "log cleanup: ", "vacuum: "] {
        assert!(stdout.contains(&format!("table events: {step}")), "{stdout}");
    }
    let read = read_delta(&table, "long-run");
    assert_eq!(read.rows.len(), 2000);
}

/// Parquet files under the table directory, referenced or not.
fn walk_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet") && e.path().is_file())
        .count()
}
