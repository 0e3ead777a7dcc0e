//! Exactly once under `kill -9`: the `sluice run` process is killed at every
//! step of the batch life, several times over, and at random moments; it is
//! restarted until it finishes; then an independent reader (Python
//! `deltalake`) checks that every produced id is in each table exactly once.
//!
//! The named points are failpoints (see `host/src/failpoint.rs`): the
//! process announces it reached one and waits, and the test kills it there
//! with SIGKILL, so each kill lands at exactly the step it names.

use crate::harness::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The steps of a batch's life, in order; `:n` is the n-th time a run
/// reaches it (`in-checkpoint-write:1` is the offsets file of the first
/// batch; from then on batch N+1 is planned while N commits, so `:2` is the
/// commit-log file of batch 0 or the offsets file of batch 1, whichever
/// thread gets there first).
pub(crate) const KILL_POINTS: [&str; 12] = [
    "after-offsets-log:1",
    "in-sink:1",
    "between-table-commits:1",
    "after-table-commits:1",
    "in-checkpoint-write:1",
    "in-checkpoint-write:2",
    "after-offsets-log:2",
    "in-sink:3",
    "between-table-commits:2",
    "after-table-commits:2",
    "in-checkpoint-write:3",
    "in-checkpoint-write:4",
];

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Killed at the failpoint.
    KilledAt,
    /// Killed at a random moment while still running.
    KilledRunning,
    /// Exited by itself before the kill (with this code).
    Exited(i32),
}

/// Run `sluice run` once. With failpoints, kill it when it gets to all of
/// them; with `kill_after`, kill it then (if it is still running).
pub(crate) fn run_once(config: &Path, failpoint: Option<&str>, kill_after: Option<Duration>) -> (Outcome, String) {
    let mut cmd = sluice(&["run", config.to_str().unwrap()]);
    if let Some(fp) = failpoint {
        cmd.env("SLUICE_FAILPOINT", fp);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("failpoint") {
                let _ = tx.send(());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    let wait = kill_after.unwrap_or(Duration::from_secs(120));
    // Several comma-separated points: kill once every one is reached.
    let points = failpoint.map_or(1, |fp| fp.split(',').count());
    let outcome = match (0..points).map(|_| rx.recv_timeout(wait)).find(Result::is_err).unwrap_or(Ok(())) {
        Ok(()) => {
            child.kill().unwrap();
            Outcome::KilledAt
        }
        Err(mpsc::RecvTimeoutError::Timeout) if kill_after.is_some() => match child.try_wait().unwrap() {
            Some(status) => Outcome::Exited(status.code().unwrap_or(-1)),
            None => {
                child.kill().unwrap();
                Outcome::KilledRunning
            }
        },
        // The stderr pipe closed: the process exited on its own.
        Err(_) => Outcome::Exited(-1),
    };
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    let outcome = match outcome {
        Outcome::Exited(_) => Outcome::Exited(status.code().unwrap_or(-1)),
        o => o,
    };
    (outcome, stderr)
}

#[test]
fn kill_minus_9_at_every_step_and_at_random_then_every_id_is_in_every_table_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let ids: Vec<String> = (0..1200).map(|i| format!("id-{i:05}")).collect();
    produce(&broker.bootstrap, "events", 3, &ids);
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 40, "");

    let mut runs = 0;
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    for point in KILL_POINTS {
        let (outcome, stderr) = run_once(&config, Some(point), None);
        runs += 1;
        assert_eq!(outcome, Outcome::KilledAt, "run at {point} should reach it: {stderr}");
        *kills.entry(point.split(':').next().unwrap().to_owned()).or_default() += 1;
    }

    // Random moments: a small xorshift generator, seeded from the clock and
    // printed, so a failure can be rerun with the same kills.
    let mut random = Seeded::from_clock("crash test: kill moments");
    let mut random_kills = 0;
    let started = Instant::now();
    while random_kills < 8 && started.elapsed() < Duration::from_secs(120) {
        let after = Duration::from_millis(30 + random.next() % 300);
        let (outcome, stderr) = run_once(&config, None, Some(after));
        runs += 1;
        match outcome {
            Outcome::KilledRunning => random_kills += 1,
            Outcome::Exited(0) => break, // finished before the kill
            other => panic!("unexpected {other:?}: {stderr}"),
        }
    }

    // Restart until done.
    let (outcome, stderr) = run_once(&config, None, None);
    runs += 1;
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");
    eprintln!(
        "crash test: {runs} runs; kills at named points {kills:?} ({} in all), {random_kills} at random moments",
        KILL_POINTS.len()
    );

    // Batches of at most 40 over 1200 records: the last batch id is the
    // table's txn version, with no batch skipped.
    let last = assert_fan_out_exactly_once(dir.path(), &ids);
    assert_eq!(last, [Some(29); 2], "both tables: 30 batches, ids 0..=29");
    let audit = read_delta(&dir.path().join("tables/audit"), "fan-out");
    let mut batches: Vec<i64> = audit.rows.iter().map(|r| r["batch_id"].as_i64().unwrap()).collect();
    batches.sort_unstable();
    batches.dedup();
    assert_eq!(batches, (0..30).collect::<Vec<_>>(), "every batch id 0..=29 holds rows");
}

/// Batch 1 is planned, and its sink runs, while batch 0 commits. Killed with
/// batch 0 in one of its two tables and `offsets/1` written, a restart
/// finishes batch 0 in the other table only, then batch 1 as planned.
#[test]
fn a_kill_while_the_next_batch_runs_ahead_of_a_commit_loses_and_repeats_nothing() {
    let (_broker, dir, config, ids) = three_batches();

    // The commit thread stops between the tables of batch 0, the main
    // thread right after writing the plan of batch 1.
    let (outcome, stderr) = run_once(&config, Some("between-table-commits:1,after-offsets-log:2"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");
    let files: Vec<String> = checkpoint_files(dir.path()).into_keys().collect();
    assert_eq!(files, ["offsets/0", "offsets/1"], "two batches planned, none logged as committed");
    assert_eq!(read_delta(&dir.path().join("tables/events"), "fan-out").txn, Some(0), "batch 0 is in the first table");
    assert_eq!(read_delta(&dir.path().join("tables/audit"), "fan-out").txn, None, "and not in the second");
    let status = sluice(&["status", config.to_str().unwrap(), "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pending: Vec<u64> = status["pending"].as_array().unwrap().iter().map(|p| p["batch_id"].as_u64().unwrap()).collect();
    assert_eq!(pending, [0, 1]);

    let (outcome, stderr) = run_once(&config, None, None);
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");
    assert_three_batches_exactly_once(dir.path(), &ids);
}

/// Killed after batch 0 is in every table but before `commits/0`: the
/// restart finds it there (step 2), logs it without running the sink again,
/// and counts it as skipped.
#[test]
fn a_batch_in_every_table_before_a_kill_is_logged_not_run_again() {
    let (_broker, dir, config, ids) = three_batches();

    let (outcome, stderr) = run_once(&config, Some("after-table-commits:1"), None);
    assert_eq!(outcome, Outcome::KilledAt, "{stderr}");
    assert!(!dir.path().join("checkpoint/commits/0").exists());
    let (outcome, stderr) = run_once(&config, None, None);
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");

    let metrics = std::fs::read_to_string(dir.path().join("metrics.prom")).unwrap();
    assert!(metrics.contains("sluice_batches_skipped_total{pipeline=\"fan-out\"} 1\n"), "{metrics}");
    // Only batches 1 and 2 went through the sink in the second run.
    assert!(metrics.contains("sluice_records_total{pipeline=\"fan-out\"} 80\n"), "{metrics}");
    assert_three_batches_exactly_once(dir.path(), &ids);
}

/// 120 records with unique ids on a real broker, and a `fan-out` pipeline
/// reading them in three batches of 40.
fn three_batches() -> (Broker, tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let ids: Vec<String> = (0..120).map(|i| format!("id-{i:05}")).collect();
    produce(&broker.bootstrap, "events", 3, &ids);
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 40, "");
    (broker, dir, config, ids)
}

/// Every id once in both tables, and both at batch 2.
fn assert_three_batches_exactly_once(dir: &Path, ids: &[String]) {
    for table in ["events", "audit"] {
        let read = read_delta(&dir.join("tables").join(table), "fan-out");
        let counts = read.counts("id");
        assert!(counts.values().all(|&n| n == 1), "table {table}: ids not exactly once: {counts:?}");
        assert_eq!(counts.into_keys().collect::<Vec<_>>(), ids, "table {table}: every id");
        assert_eq!(read.txn, Some(2), "table {table}: batches 0..=2");
    }
}

/// The kill -9 matrix under worse weather: between restarts a table is
/// rolled back one version about every other time (a power loss: Delta
/// commits are written without fsync), and the config is changed about
/// every third time (smaller batches, or a chunk size the sink observes). A refused start (a half-committed
/// batch under another config, or a lost batch that only its own config
/// re-runs identically) is answered the way its error says: run with
/// another config. Every id must end in both tables exactly once.
///
/// `SLUICE_CRASH_RUNS=N` runs N killed restarts (default 16: a CI-sized
/// run; e.g. 200 for a soak).
#[test]
fn kill_minus_9_with_tables_rolled_back_and_configs_changed_between_restarts_loses_and_repeats_nothing() {
    let runs_wanted: usize = std::env::var("SLUICE_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let ids: Vec<String> = (0..(150 * runs_wanted).max(2400)).map(|i| format!("id-{i:05}")).collect();
    produce(&broker.bootstrap, "events", 3, &ids);
    let dir = tempfile::tempdir().unwrap();
    // Base; smaller batches (not observable: ranges are planned); a chunk
    // size the sink observes (its output differs).
    let configs: [(u64, &str); 3] = [(40, ""), (25, ""), (40, "\n[limits]\nchunk_records = 7\n")];
    let write = |i: usize| fan_out_config(dir.path(), &broker.bootstrap, "events", configs[i].0, configs[i].1);
    let mut current = 0;
    let config = write(current);

    let mut random = Seeded::from_clock(&format!("crash test (weather), {runs_wanted} runs"));
    let mut next = || random.next();
    let (mut runs, mut kills, mut rollbacks, mut changes, mut refusals) = (0, 0, 0, 0, 0);
    let refused = |stderr: &str| stderr.contains("the config changed since it ran") || stderr.contains("cannot be re-run");
    let mut finished = false;
    for _ in 0..runs_wanted {
        let r = next();
        if r % 3 == 0 {
            current = (current + 1) % configs.len();
            write(current);
            changes += 1;
        }
        if (r >> 8) % 2 == 0 && roll_back_one_version(&dir.path().join("tables").join(["events", "audit"][(r >> 16) as usize % 2])) {
            rollbacks += 1;
        }
        let (outcome, stderr) = run_once(&config, None, Some(Duration::from_millis(30 + (r >> 24) % 400)));
        runs += 1;
        match outcome {
            Outcome::KilledRunning => kills += 1,
            Outcome::Exited(0) => {
                finished = true;
                break;
            }
            Outcome::Exited(1) if refused(&stderr) => {
                refusals += 1;
                current = (current + 1) % configs.len();
                write(current);
            }
            other => panic!("unexpected {other:?}: {stderr}"),
        }
    }
    // Restart until done, following the refusals' advice.
    for _ in 0..2 * configs.len() {
        if finished {
            break;
        }
        let (outcome, stderr) = run_once(&config, None, None);
        runs += 1;
        match outcome {
            Outcome::Exited(0) => finished = true,
            Outcome::Exited(1) if refused(&stderr) => {
                refusals += 1;
                current = (current + 1) % configs.len();
                write(current);
            }
            other => panic!("unexpected {other:?}: {stderr}"),
        }
    }
    assert!(finished, "the pipeline finished under one of the configs");
    eprintln!(
        "crash test (weather): {runs} runs; {kills} killed at random moments, {rollbacks} table roll-backs, \
         {changes} config changes, {refusals} refused starts"
    );

    let [last, audit_last] = assert_fan_out_exactly_once(dir.path(), &ids);
    assert_eq!(last, audit_last, "both tables at the same last batch");
    let audit = read_delta(&dir.path().join("tables/audit"), "fan-out");
    let mut batches: Vec<i64> = audit.rows.iter().map(|r| r["batch_id"].as_i64().unwrap()).collect();
    batches.sort_unstable();
    batches.dedup();
    assert_eq!(batches, (0..=last.unwrap()).collect::<Vec<_>>(), "every batch id holds rows, none skipped");
}

/// Remove the newest commit of a Delta table's log, as a power loss before
/// the write reached the disk would; never the table's creation (version 0).
fn roll_back_one_version(table: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(table.join("_delta_log")) else { return false };
    let mut commits: Vec<std::path::PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    commits.sort();
    if commits.len() < 2 {
        return false;
    }
    std::fs::remove_file(commits.pop().unwrap()).unwrap();
    true
}
