//! `sluice run` and `sluice status` as a user runs them: a real broker, the
//! real binary, tables read back by an independent reader. And the bad
//! conditions: each gives a clear error, and nothing is lost or reset.

use crate::harness::*;
use rdkafka::mocking::MockCluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("id-{i:05}")).collect()
}

/// Every id in `expected` exactly once in both tables, nothing else.
fn assert_exactly_once(dir: &Path, expected: &[String]) {
    let want: BTreeMap<String, usize> = expected.iter().map(|id| (id.clone(), 1)).collect();
    for table in ["events", "audit"] {
        let got = read_delta(&dir.join("tables").join(table), "fan-out").counts("id");
        let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
        let missing: Vec<_> = want.keys().filter(|id| !got.contains_key(*id)).collect();
        assert!(dupes.is_empty() && missing.is_empty(), "table {table}: duplicated {dupes:?}, missing {missing:?}");
        assert_eq!(got, want, "table {table} holds exactly the produced ids");
    }
}

fn run_pipeline(config: &Path) -> (i32, String, String) {
    sluice_output(&["run", config.to_str().unwrap()])
}


#[test]
fn run_commits_every_record_exactly_once_on_a_real_broker_and_status_shows_it() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    produce(&broker.bootstrap, "events", 3, &ids(0..500));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 120, "");

    let (code, stdout, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "{stderr}");
    let progress: Vec<&str> = stdout.lines().collect();
    assert_eq!(progress.len(), 5, "one line per batch of at most 120 of 500 records: {stdout}");
    assert!(progress[0].starts_with("batch 0: 120 records,"), "{stdout}");
    assert!(progress[4].starts_with("batch 4: 20 records,") && progress[4].contains("audit@v5 events@v5"), "{stdout}");
    assert!(stderr.contains("caught up: 5 batch(es) this run, last committed batch 4"), "{stderr}");
    assert_exactly_once(dir.path(), &ids(0..500));
    assert_eq!(read_delta(&dir.path().join("tables/events"), "fan-out").txn, Some(4), "txn(app, N) is in the table");

    let (code, stdout, stderr) = sluice_output(&["status", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["last_committed"]["batch_id"], 4);
    assert_eq!(status["pending"], serde_json::json!([]));
    assert_eq!(status["running_pid"], Value::Null);
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    assert!(partitions.iter().all(|p| p["lag"] == 0), "{partitions:?}");
    let committed: i64 = partitions.iter().map(|p| p["committed_offset"].as_i64().unwrap()).sum();
    assert_eq!(committed, 500);
    assert_eq!(status["tables"][0]["state"]["last_batch"], 4);

    // Every committed batch replays bit for bit, and replaying writes nothing.
    let checkpoint = checkpoint_files(dir.path());
    let versions = |d: &Path| ["events", "audit"].map(|t| read_delta(&d.join("tables").join(t), "fan-out").version);
    let before = versions(dir.path());
    for batch in 0..5 {
        let (code, stdout, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", &batch.to_string()]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.starts_with(&format!("batch {batch}: IDENTICAL to the committed output")), "{stdout}");
    }
    let other = guest("append-events");
    let (code, stdout, _) =
        sluice_output(&["replay", config.to_str().unwrap(), "--batch", "4", "--component", other.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "another sink's output differs");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["identical"].as_bool(), report["records"].as_u64()), (Some(false), Some(20)));
    assert_ne!(report["replayed_digest"], report["committed_digest"]);
    let (code, _, stderr) = sluice_output(&["replay", config.to_str().unwrap(), "--batch", "99"]);
    assert_eq!(code, 2, "a batch never planned cannot be replayed");
    assert!(stderr.contains("batch 99 is not in the checkpoint's offset log: it was never planned"), "{stderr}");
    assert_eq!(checkpoint_files(dir.path()), checkpoint, "replay leaves the checkpoint alone");
    assert_eq!(versions(dir.path()), before, "and the tables");

    // More records: the next run continues at batch 5, from where 4 ended.
    produce(&broker.bootstrap, "events", 3, &ids(500..600));
    let (code, _, stderr) = sluice_output(&["status", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 5: 100 records,"), "{stdout}");
    assert_exactly_once(dir.path(), &ids(0..600));
    let metrics = std::fs::read_to_string(dir.path().join("metrics.prom")).unwrap();
    assert!(metrics.contains("sluice_records_total{pipeline=\"fan-out\"} 100\n"), "{metrics}");
    assert!(metrics.contains("sluice_last_batch_id{pipeline=\"fan-out\"} 5\n"), "{metrics}");
    assert!(metrics.contains("sluice_lag_records{pipeline=\"fan-out\",topic=\"events\",partition=\"0\"} 0\n"), "{metrics}");
}

/// Start `sluice run` stopped at a failpoint; returns the child once it is there.
fn run_until_failpoint(config: &Path, failpoint: &str) -> std::process::Child {
    let mut child = sluice(&["run", config.to_str().unwrap()])
        .env("SLUICE_FAILPOINT", failpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains("failpoint") {
            return child;
        }
    }
    panic!("sluice exited before failpoint {failpoint}: {:?}", child.wait());
}

fn mock_with(values: &[String]) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    produce(&cluster.bootstrap_servers(), "events", 2, values);
    cluster
}

#[test]
fn a_second_run_on_the_same_checkpoint_is_refused() {
    let cluster = mock_with(&ids(0..10));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 100, "");
    let mut first = run_until_failpoint(&config, "in-sink");

    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("is in use by another sluice process (pid {}); only one `sluice run` may own a checkpoint", first.id())),
        "{stderr}"
    );
    let (_, stdout, _) = sluice_output(&["status", config.to_str().unwrap(), "--json"]);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["running_pid"], first.id());
    assert_eq!(status["pending"][0]["batch_id"], 0, "the first run planned batch 0");

    first.kill().unwrap();
    first.wait().unwrap();
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "once the owner is gone the checkpoint is free: {stderr}");
    assert_exactly_once(dir.path(), &ids(0..10));
}

#[test]
fn a_failing_sink_stops_with_a_report_commits_nothing_and_the_fixed_sink_finishes_the_batch() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    produce(&cluster.bootstrap_servers(), "events", 1, &["trap".to_owned(), "x".to_owned()]);
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 100, "max_attempts = 2");
    let fan_out = std::fs::read_to_string(&config).unwrap();
    let with_component = |name: &str| {
        let text = fan_out.replace(&guest("fan-out").display().to_string(), &guest(name).display().to_string());
        std::fs::write(&config, text).unwrap();
    };

    // A trap is deterministic: no retry.
    with_component("hostile");
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("error: batch 0 failed after 1 attempt(s): batch 0: sink trapped"), "{stderr}");
    let rerun = format!("run `sluice run {}` again: batch 0 is re-run with the same records", config.display());
    assert!(stderr.contains(&rerun), "{stderr}");
    assert!(stderr.contains("/staging of the last attempt kept at"), "{stderr}");
    assert!(read_delta(&dir.path().join("tables/events"), "fan-out").rows.is_empty(), "nothing committed");
    assert_eq!(checkpoint_files(dir.path()).keys().collect::<Vec<_>>(), ["offsets/0"], "planned, not committed");

    // The fixed sink runs the same planned batch, then the pipeline goes on.
    with_component("fan-out");
    let (code, stdout, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("batch 0: 2 records,"), "{stdout}");
    assert_exactly_once(dir.path(), &["trap".to_owned(), "x".to_owned()]);

    // `batch show` keeps both runs' attempts: the trap, then the fix.
    let (code, stdout, stderr) = sluice_output(&["batch", "show", "0", "--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let attempts = serde_json::from_str::<Value>(&stdout).unwrap()["attempts"].as_array().unwrap().clone();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a["outcome"].as_str().unwrap(), a["error"].as_str().map(|e| e.split(':').next().unwrap().to_owned()))).collect();
    assert_eq!(outcomes, [("failed", Some("sink trapped".to_owned())), ("succeeded", None)]);
    assert!(attempts[0]["kept_scratch"].as_str().is_some_and(|d| Path::new(d).is_dir()), "{attempts:?}");
}

#[test]
fn a_retryable_failure_is_retried_with_a_fresh_instance_up_to_the_limit() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    produce(&cluster.bootstrap_servers(), "events", 1, &["loop".to_owned()]);
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 100, "max_attempts = 3");
    let text = std::fs::read_to_string(&config).unwrap().replace(&guest("fan-out").display().to_string(), &guest("hostile").display().to_string());
    std::fs::write(&config, text + "\n[limits]\ndeadline_ms = 200\n").unwrap();

    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 1, "{stderr}");
    for attempt in 1..=2 {
        let line = format!("batch 0: attempt {attempt}/3 failed: sink exceeded");
        assert!(stderr.lines().any(|l| l.contains(&line) && l.contains("(limits.deadline_ms = 200)")), "{stderr}");
    }
    assert!(stderr.contains("error: batch 0 failed after 3 attempt(s)"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path().join("checkpoint/scratch/failed")).unwrap().count(), 3, "each attempt had its own /staging");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.prom")).unwrap();
    assert!(metrics.contains("sluice_sink_failures_total{pipeline=\"fan-out\"} 3\n"), "{metrics}");

    let (code, stdout, _) = sluice_output(&["batch", "show", "0", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("batch 0: NOT committed: failed (re-run by the next `sluice run`)\n"), "{stdout}");
    for attempt in 1..=3 {
        let line = format!("  attempt {attempt} (pid ");
        assert!(stdout.lines().any(|l| l.starts_with(&line) && l.contains(": FAILED in ") && l.contains("(limits.deadline_ms = 200)")), "{stdout}");
    }
    assert_eq!(stdout.matches("    /staging kept at ").count(), 3, "{stdout}");
}

#[test]
fn a_config_error_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), "127.0.0.1:1", "events", 100, "");
    let text = std::fs::read_to_string(&config).unwrap().replace("max_records_per_batch = 100", "max_records_per_batch = -5");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("config {} line 13: `source.max_records_per_batch`: invalid value", config.display())), "{stderr}");
    assert!(!dir.path().join("checkpoint").exists(), "nothing was created");
}

#[test]
fn an_unreachable_broker_is_a_clear_error_and_plans_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &format!("127.0.0.1:{port}"), "events", 100, "max_attempts = 1");
    let text = std::fs::read_to_string(&config).unwrap().replace("fetch_timeout_ms = 20000", "fetch_timeout_ms = 1000");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("error: kafka (127.0.0.1:{port}): cannot fetch metadata of topic `events`")), "{stderr}");
    assert!(checkpoint_files(dir.path()).is_empty(), "no batch planned");
}

/// Run a pipeline over 30 records to completion, then break something.
fn committed_pipeline() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, tempfile::TempDir, std::path::PathBuf) {
    let cluster = mock_with(&ids(0..30));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 10, "");
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "{stderr}");
    produce(&cluster.bootstrap_servers(), "events", 2, &ids(30..40));
    (cluster, dir, config)
}

/// The error of a run that must change nothing: same checkpoint, same tables.
fn run_expecting_no_change(dir: &Path, config: &Path) -> String {
    let checkpoint = checkpoint_files(dir);
    let versions: Vec<u64> = ["events", "audit"]
        .iter()
        .filter(|t| dir.join("tables").join(t).exists())
        .map(|t| read_delta(&dir.join("tables").join(t), "fan-out").version)
        .collect();
    let (code, _, stderr) = run_pipeline(config);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(checkpoint_files(dir), checkpoint, "the checkpoint is unchanged");
    let after: Vec<u64> = ["events", "audit"]
        .iter()
        .filter(|t| dir.join("tables").join(t).join("_delta_log").exists())
        .map(|t| read_delta(&dir.join("tables").join(t), "fan-out").version)
        .collect();
    assert_eq!(after, versions, "no table moved");
    stderr
}

#[test]
fn a_corrupt_checkpoint_stops_the_pipeline_naming_the_file() {
    let (_cluster, dir, config) = committed_pipeline();
    let file = dir.path().join("checkpoint/offsets/2");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let stderr = run_expecting_no_change(dir.path(), &config);
    assert!(
        stderr.contains(&format!("error: checkpoint file {} is corrupt: checksum mismatch", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("sluice will not guess offsets: rebuild the checkpoint from the tables with `sluice checkpoint rebuild`"), "{stderr}");
    assert_exactly_once(dir.path(), &ids(0..30));
}

#[test]
fn a_missing_table_is_not_silently_recreated() {
    let (_cluster, dir, config) = committed_pipeline();
    std::fs::remove_dir_all(dir.path().join("tables/audit")).unwrap();
    let stderr = run_expecting_no_change(dir.path(), &config);
    assert!(
        stderr.contains(&format!(
            "table `audit` at {} does not exist, but the checkpoint records batches committed to it",
            dir.path().join("tables/audit").display()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("tables/audit/_delta_log").exists());
}

#[test]
fn a_schema_mismatch_commits_nothing_and_names_the_column() {
    let (_cluster, dir, config) = committed_pipeline();
    let text = std::fs::read_to_string(&config).unwrap().replace(r#"{ name = "batch_id", type = "long" }"#, r#"{ name = "batch_id", type = "string" }"#);
    std::fs::write(&config, text).unwrap();
    let stderr = run_expecting_no_change(dir.path(), &config);
    assert!(
        stderr.contains("table `audit`: column `batch_id` is long in the existing table but declared string. A type cannot be changed in place"),
        "{stderr}"
    );
    assert_exactly_once(dir.path(), &ids(0..30));
}


#[test]
fn sigterm_stops_a_continuous_pipeline_after_its_batch_with_exit_0() {
    let cluster = mock_with(&ids(0..20));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 100, "trigger_interval_ms = 50");
    let text = std::fs::read_to_string(&config).unwrap().replace("trigger = \"available_now\"", "trigger = \"continuous\"");
    std::fs::write(&config, text).unwrap();
    let mut child =
        sluice(&["run", config.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Batch 0 holds all 20 records; after it the pipeline waits for more.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    assert!(first.starts_with("batch 0: 20 records,"), "{first}");
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("sluice: stopped on request; last committed batch 0"), "{stderr}");
    assert!(stdout.next().is_none(), "no batch after the stop");
    assert_exactly_once(dir.path(), &ids(0..20));
}

#[test]
fn a_second_sigterm_exits_at_once_and_the_batch_reruns_as_planned() {
    let cluster = mock_with(&ids(0..10));
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 100, "");
    // Held inside the sink: the first signal asks it to finish the batch.
    let mut child = run_until_failpoint(&config, "in-sink");
    let pid = child.id().to_string();
    let term = || std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term().success());
    // Signals of one kind do not queue: repeat the second until it lands.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        term();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "a second SIGTERM did not stop the process");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "exits at once, without finishing the batch");
    assert_eq!(checkpoint_files(dir.path()).keys().collect::<Vec<_>>(), ["offsets/0"], "planned, not committed");
    let (code, _, stderr) = run_pipeline(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_exactly_once(dir.path(), &ids(0..10));
}
