//! Attacks on the sandbox's clocks and `/staging`, through the real CLI.
//!
//! Each case runs the `attack-sandbox` guest in a `sluice` subprocess
//! (`sluice exec`, and for the sleep and descriptor attacks also `sluice
//! run` on a real broker) and checks what a user sees: the exit code, the
//! exact typed error naming the limit and its key, the wall time, the
//! child's own peak RSS (printed), what is left of `/staging`, and that the
//! next batch runs normally. Three classes of issue 11:
//!
//! - no host call blocks: sleeping, clock pollables and `poll` cost no real
//!   time, and a wait without end is `limits.sleep_ms`, at once;
//! - descriptors, entries and path depth are bounded (`limits.open_files`,
//!   `limits.staging_files`, `limits.path_depth`), and clean-up copes with
//!   whatever a sink can build;
//! - what `/staging` shows (listing order, `stat`, metadata hashes) is the
//!   same on every run, on tmpfs and on disk, and in `sluice replay`.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Peak RSS a `sluice exec` or `sluice run` of these attacks may reach. A
/// `sluice exec` of a small sink peaks at a few tens of MiB, `sluice run`
/// (Kafka, Delta) at about a hundred; a host that kept what these attacks
/// try to make it keep (25 000 descriptors, a million entries, ten million
/// pollables) would be well above.
const RSS_BOUND: u64 = 300 << 20;

/// `run_measured` of `cmd` under coreutils' `timeout`: a child still
/// running after `limit` is killed (exit 137), so a regression that hangs
/// fails its test instead of stalling the suite.
fn run_bounded(cmd: std::process::Command, limit: Duration) -> Measured {
    let mut bounded = std::process::Command::new("timeout");
    bounded.args(["-s", "KILL", &limit.as_secs().to_string()]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    run_measured(bounded)
}

/// A scratch root, records files and a shared compile cache for `sluice exec`.
struct Exec {
    dir: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

/// One `sluice exec --json` of the attack guest.
struct Outcome {
    m: Measured,
    json: Value,
}

impl Outcome {
    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }
    fn result(&self) -> String {
        let rows = self.json["ops"][0]["data"].as_array().cloned().unwrap_or_default();
        rows.iter().map(|r| r["result"].as_str().unwrap().to_owned()).collect::<Vec<_>>().join("\n")
    }
    fn digest(&self) -> &str {
        self.json["output_digest"].as_str().unwrap()
    }
}

impl Drop for Exec {
    /// Whatever a failing test left of a sink's deep chains goes level by
    /// level before `TempDir` removes the rest.
    fn drop(&mut self) {
        for dir in ["live", "failed"] {
            drop(ChainsIn(self.scratch().join(dir)));
        }
    }
}

impl Exec {
    /// Scratch on disk (ext4 here).
    fn new() -> Self {
        Exec { dir: tempfile::tempdir().unwrap(), scratch: tempfile::tempdir().unwrap() }
    }

    /// Scratch on tmpfs: for the trees of 10 000 and more directories, which
    /// a disk with online discard takes seconds to free (the depth is what
    /// matters to clean-up, not the filesystem).
    fn on_tmpfs() -> Self {
        let scratch = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs)");
        Exec { dir: tempfile::tempdir().unwrap(), scratch }
    }

    fn scratch(&self) -> PathBuf {
        self.scratch.path().join("scratch")
    }

    /// Run `commands` (one record each) as one batch, with `limits`
    /// (`key=value`) on top of the defaults, scratch under `scratch`.
    fn run_in(&self, scratch: &Path, commands: &[&str], limits: &[&str]) -> Outcome {
        let records = self.dir.path().join("records.jsonl");
        let lines: Vec<String> = commands.iter().map(|c| serde_json::json!({ "value": c }).to_string()).collect();
        std::fs::write(&records, lines.join("\n")).unwrap();
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
        let component = guest("attack-sandbox");
        let mut args = vec!["exec", "--component", component.to_str().unwrap(), "--records", records.to_str().unwrap()];
        args.extend(["--json", "--rows", "--timestamp-ms", "1700000000000"]);
        args.extend(["--scratch-dir", scratch.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()]);
        for l in limits {
            args.extend(["--limit", l]);
        }
        let m = run_bounded(sluice(&args), Duration::from_secs(60));
        println!(
            "sluice exec {commands:?} {limits:?}: exit {}, {:.0?}, peak RSS {:.1} MiB",
            m.code,
            m.wall,
            m.peak_rss as f64 / (1 << 20) as f64
        );
        assert!(m.peak_rss < RSS_BOUND, "peak RSS {} over {RSS_BOUND}: {}", m.peak_rss, m.stderr);
        let json = serde_json::from_str(&m.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", m.stdout, m.stderr));
        Outcome { m, json }
    }

    fn run(&self, commands: &[&str], limits: &[&str]) -> Outcome {
        self.run_in(&self.scratch(), commands, limits)
    }

    /// The batch failed with exactly `error`, within `within`, its
    /// `/staging` kept under `failed/`; and the next batch on the same
    /// scratch root runs normally.
    fn expect_limit(&self, commands: &[&str], limits: &[&str], key: &str, error: &str, within: Duration) -> PathBuf {
        let out = self.run(commands, limits);
        assert_eq!(out.m.code, 1, "{}{}", out.m.stdout, out.m.stderr);
        assert_eq!(out.error(), error, "{}", out.m.stdout);
        assert_eq!(out.json["limit"], key);
        assert_eq!(out.json["class"], "user");
        assert!(out.m.wall < within, "{:?} is over {within:?}", out.m.wall);
        let kept = PathBuf::from(out.json["kept_scratch"].as_str().expect("a failed batch keeps /staging"));
        assert!(kept.starts_with(self.scratch().join("failed")) && kept.is_dir(), "{kept:?}");
        assert_eq!(std::fs::read_dir(self.scratch().join("live")).unwrap().count(), 0, "nothing left in live/");
        self.expect_ok();
        kept
    }

    fn expect_ok(&self) {
        let next = self.run(&["ok"], &[]);
        assert_eq!((next.m.code, next.result()), (0, "ok".to_owned()), "the next batch runs: {}", next.m.stderr);
    }
}

/// The filesystem `path` is on (from `stat -f`).
fn fs_type(path: &Path) -> String {
    let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

// ---- class 1: nothing blocks in real time ----------------------------------

#[test]
fn an_hour_of_sleep_takes_no_time_and_is_the_same_on_every_run() {
    let e = Exec::new();
    let first = e.run(&["sleep 3600000"], &["deadline_ms=2000"]);
    assert_eq!(first.m.code, 0, "{}", first.m.stderr);
    assert!(first.m.wall < Duration::from_secs(2), "{:?}", first.m.wall);
    // The virtual clock jumped the hour (plus its 1 µs per read) and the
    // wall clock with it.
    assert_eq!(first.result(), "slept 3600000002000 ns, wall moved 3600000002000 ns");
    let second = e.run(&["sleep 3600000"], &["deadline_ms=2000"]);
    assert_eq!(first.digest(), second.digest(), "identical on every run");
}

#[test]
fn sleeping_forever_ends_at_once_with_the_sleep_limit() {
    let e = Exec::new();
    let error = "batch 0: sink exceeded its virtual waiting time (it sleeps or waits on the clock for too long) (limits.sleep_ms = 86400000)";
    // `deadline_ms` is far above the wall time allowed: the sleep limit,
    // not the deadline, ends it, and identically every time.
    for _ in 0..2 {
        e.expect_limit(&["sleep-forever"], &["deadline_ms=60000"], "limits.sleep_ms", error, Duration::from_secs(2));
    }
    let e = Exec::new();
    let error = "batch 0: sink exceeded its virtual waiting time (it sleeps or waits on the clock for too long) (limits.sleep_ms = 1000)";
    e.expect_limit(&["sleep 999", "sleep 2"], &["sleep_ms=1000"], "limits.sleep_ms", error, Duration::from_secs(2));
}

#[test]
fn a_pollable_due_at_the_end_of_time_ends_at_once_with_the_sleep_limit() {
    let e = Exec::new();
    let error = "batch 0: sink exceeded its virtual waiting time (it sleeps or waits on the clock for too long) (limits.sleep_ms = 86400000)";
    e.expect_limit(&["instant-far"], &["deadline_ms=60000"], "limits.sleep_ms", error, Duration::from_secs(2));
}

#[test]
fn poll_moves_the_clock_to_the_earliest_due_pollable_only_when_nothing_is_ready() {
    let e = Exec::new();
    let out = e.run(&["poll-order"], &["deadline_ms=2000"]);
    assert_eq!(out.m.code, 0, "{}", out.m.stderr);
    assert_eq!(out.result(), "[2] at 1000001000; [1] at 5000001000; [1] at 5000002000");
}

#[test]
fn poll_on_one_pollable_listed_many_times_is_bounded_by_open_files() {
    let e = Exec::new();
    let out = e.run(&["poll-many 256"], &[]);
    assert_eq!((out.m.code, out.result()), (0, "256 ready after 1000000000 ns".to_owned()), "{}", out.m.stderr);
    let error = "batch 0: sink exceeded its open-files limit (descriptors, streams and listings held at once) (limits.open_files = 256)";
    e.expect_limit(&["poll-many 10000000"], &[], "limits.open_files", error, Duration::from_secs(3));
}

// ---- class 3: descriptors, entries, depth ----------------------------------

#[test]
fn holding_25000_files_open_stops_at_open_files_and_closing_them_does_not() {
    let e = Exec::new();
    let error = "batch 0: sink exceeded its open-files limit (descriptors, streams and listings held at once) (limits.open_files = 256)";
    let kept = e.expect_limit(&["hold-files 25000"], &[], "limits.open_files", error, Duration::from_secs(3));
    assert_eq!(entries(&kept), 256, "it got exactly the files it may hold");
    // The limit is on what is held at once, not on opens: 25 000 opens, one
    // at a time, are fine.
    let out = e.run(&["reopen 25000"], &[]);
    assert_eq!((out.m.code, out.result()), (0, "reopened 25000".to_owned()), "{}", out.m.stderr);
}

#[test]
fn a_million_empty_files_or_directories_stop_at_staging_files() {
    // On tmpfs: 10 000 creations on a busy ext4 took 11 s in one run.
    let e = Exec::on_tmpfs();
    let error = "batch 0: sink exceeded its /staging entries limit (files, directories and links created) (limits.staging_files = 10000)";
    let kept = e.expect_limit(&["many-files 1000000"], &[], "limits.staging_files", error, Duration::from_secs(5));
    assert_eq!(entries(&kept), 10_000);
    let kept = e.expect_limit(&["many-dirs 1000000"], &[], "limits.staging_files", error, Duration::from_secs(5));
    assert_eq!(entries(&kept), 10_000);
    // Entries cost staging bytes too (4 KiB and the name each): a small
    // quota stops them first.
    let error = "batch 0: sink exceeded its /staging quota (limits.staging_bytes = 1048576)";
    let kept = e.expect_limit(&["many-files 1000000"], &["staging_bytes=1048576"], "limits.staging_bytes", error, Duration::from_secs(3));
    assert!(entries(&kept) < 256, "{}", entries(&kept));
}

#[test]
fn a_tree_20000_deep_is_cleaned_up_after_a_successful_batch() {
    let e = Exec::on_tmpfs();
    let out = e.run(&["deep-tree 20000"], &["staging_files=30000"]);
    assert_eq!((out.m.code, out.result()), (0, "depth 20000".to_owned()), "a successful batch stays successful: {}", out.m.stderr);
    assert!(!out.m.stderr.contains("warning"), "clean-up had no trouble: {}", out.m.stderr);
    assert_eq!(entries(&e.scratch().join("live")), 0, "the tree is gone");
    assert_eq!(entries(&e.scratch().join("failed")), 0, "and not parked");
    assert!(out.m.wall < Duration::from_secs(10), "{:?}", out.m.wall);
}

#[test]
fn a_deep_tree_stops_at_staging_files_and_a_deep_path_at_path_depth() {
    let e = Exec::on_tmpfs();
    let error = "batch 0: sink exceeded its /staging entries limit (files, directories and links created) (limits.staging_files = 10000)";
    let kept = Chain(e.expect_limit(&["deep-tree 20000"], &[], "limits.staging_files", error, Duration::from_secs(5)));
    assert!(kept.0.join("top/top/top").is_dir(), "the tree it built is kept");
    let error = "batch 0: sink exceeded its path depth limit (limits.path_depth = 64)";
    e.expect_limit(&["deep-path 100"], &[], "limits.path_depth", error, Duration::from_secs(2));
}

/// Removes the chain of `top` directories under its path when dropped,
/// one level at a time: std's recursive `remove_dir_all` (and so
/// `TempDir`'s drop) overflows a test thread's stack on 20 000 levels, and
/// the abort would take every other test down with it.
struct Chain(PathBuf);

impl Drop for Chain {
    fn drop(&mut self) {
        let (top, next) = (self.0.join("top"), self.0.join(".next"));
        while top.is_dir() {
            let _ = std::fs::rename(top.join("top"), &next);
            let _ = std::fs::remove_dir_all(&top);
            if std::fs::rename(&next, &top).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A [`Chain`] for every directory under its path (a test that fails may
/// leave a sink's chain in `live/`).
struct ChainsIn(PathBuf);

impl Drop for ChainsIn {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            drop(Chain(entry.path()));
        }
    }
}

/// A chain of `depth` directories at `dir`, made natively the way a sink can.
fn deep_chain(dir: &Path, depth: usize) {
    std::fs::create_dir(dir).unwrap();
    let top = dir.join("top");
    std::fs::create_dir(&top).unwrap();
    for _ in 1..depth {
        std::fs::create_dir(dir.join("n")).unwrap();
        std::fs::rename(&top, dir.join("n/top")).unwrap();
        std::fs::rename(dir.join("n"), &top).unwrap();
    }
}

#[test]
fn a_kept_tree_too_deep_for_remove_dir_all_is_pruned_and_never_replaces_a_batch_error() {
    let e = Exec::on_tmpfs();
    e.expect_ok(); // creates the scratch root
    let failed = e.scratch().join("failed");
    // The oldest kept directory: 20 000 deep (std's remove_dir_all needs a
    // descriptor per level and fails on it), then ten more.
    deep_chain(&failed.join("deep"), 20_000);
    let _cleanup = Chain(failed.join("deep"));
    for i in 0..10 {
        std::fs::create_dir(failed.join(format!("old-{i}"))).unwrap();
    }
    let error = "batch 0: sink exceeded its path depth limit (limits.path_depth = 64)";
    e.expect_limit(&["deep-path 100"], &[], "limits.path_depth", error, Duration::from_secs(5));
    assert!(!failed.join("deep").exists(), "the deep tree was pruned");
    assert_eq!(entries(&failed), 10, "the newest ten are kept");
}

// ---- class 4: deterministic metadata ---------------------------------------

#[test]
fn listing_and_stat_of_staging_are_the_same_on_every_run_on_tmpfs_and_on_disk() {
    let e = Exec::new();
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) for the second scratch root");
    assert_ne!(fs_type(e.scratch.path()), fs_type(shm.path()), "two different filesystems");
    let disk = e.run(&["list-stat"], &[]);
    assert_eq!(disk.m.code, 0, "{}", disk.m.stderr);
    let result = disk.result();
    let names: Vec<&str> = result.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["a0", "a1", "b", "c", "dir-a", "dir-b", "e", "k", "m", "m-link", "q", "t", "x9", "y", "zz", "dir-b/1", "dir-b/2", "dir-b/3", "std"],
        "listings are sorted: {result}"
    );
    let m = result.lines().find(|l| l.starts_with("m ")).unwrap();
    let stamp = "Some(\"1700000000.000000000\")";
    assert!(m.starts_with(&format!("m DescriptorType::RegularFile size=1 links=1 atime={stamp} mtime={stamp} ctime={stamp} hash=")), "{m}");
    let dir = result.lines().find(|l| l.starts_with("dir-a ")).unwrap();
    assert!(dir.starts_with("dir-a DescriptorType::Directory size=0 links=1"), "{dir}");
    assert!(result.ends_with("std mtime 1700000000s"), "{result}");
    for other in [e.run(&["list-stat"], &[]), e.run_in(&shm.path().join("scratch"), &["list-stat"], &[])] {
        assert_eq!(other.m.code, 0, "{}", other.m.stderr);
        assert_eq!(other.result(), result);
        assert_eq!(other.digest(), disk.digest());
    }
}

// ---- through `sluice run` on a real broker ---------------------------------

/// A pipeline running the attack guest, one record per batch, into the
/// table `attack`.
fn attack_pipeline(dir: &Path, bootstrap: &str, limits: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "attack"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
retry_backoff_ms = 20

[source]
bootstrap_servers = "{bootstrap}"
topics = ["attacks"]
max_records_per_batch = 1
fetch_timeout_ms = 20000

[[tables]]
name = "attack"
path = "tables/attack"
columns = [{{ name = "id", type = "string", nullable = false }}, {{ name = "result", type = "string" }}]

[limits]
{limits}
"#,
        component = guest("attack-sandbox").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sluice run` over `commands` (one batch each): batches before the last
/// commit, the last fails with `error`. Returns the table's results.
fn run_until_attack(commands: &[&str], limits: &str, error: &str) -> Vec<String> {
    let broker = Broker::start();
    broker.create_topic("attacks", 1);
    produce(&broker.bootstrap, "attacks", 1, &commands.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let config = attack_pipeline(dir.path(), &broker.bootstrap, limits);
    let m = run_bounded(sluice(&["run", config.to_str().unwrap()]), Duration::from_secs(120));
    println!("sluice run {commands:?}: exit {}, {:.1?}, peak RSS {:.1} MiB", m.code, m.wall, m.peak_rss as f64 / (1 << 20) as f64);
    let last = commands.len() - 1;
    assert_eq!(m.code, 1, "{}{}", m.stdout, m.stderr);
    let expected = format!("error: batch {last} failed after 1 attempt(s): batch {last}: {error}");
    assert!(m.stderr.contains(&expected), "{}", m.stderr);
    assert!(m.wall < Duration::from_secs(20), "{:?}", m.wall);
    assert!(m.peak_rss < RSS_BOUND, "peak RSS {}", m.peak_rss);
    for b in 0..last {
        assert!(m.stdout.contains(&format!("batch {b}: 1 records,")), "batch {b} committed: {}", m.stdout);
    }
    let table = read_delta(&dir.path().join("tables/attack"), "attack");
    assert_eq!(table.txn, Some(last as i64 - 1), "every batch before the attack committed, the attack's did not");
    let failed = dir.path().join("checkpoint/scratch/failed");
    assert_eq!(entries(&failed), 1, "the attack's /staging is kept");
    assert_eq!(entries(&dir.path().join("checkpoint/scratch/live")), 0);
    let mut rows: Vec<(i64, String)> = table
        .rows
        .iter()
        .map(|r| (r["id"].as_str().unwrap().parse().unwrap(), r["result"].as_str().unwrap().to_owned()))
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn run_an_hour_of_sleep_commits_at_once_and_sleeping_forever_stops_at_the_sleep_limit() {
    let results = run_until_attack(
        &["ok", "sleep 3600000", "ok", "sleep-forever"],
        "deadline_ms = 3000",
        "sink exceeded its virtual waiting time (it sleeps or waits on the clock for too long) (limits.sleep_ms = 86400000)",
    );
    assert_eq!(results, ["ok", "slept 3600000002000 ns, wall moved 3600000002000 ns", "ok"]);
}

#[test]
fn run_a_batch_holding_25000_files_stops_at_open_files_and_the_previous_commit_survives() {
    // Batch 2 commits while batch 3 runs (the commit overlaps the next
    // batch's sink): the descriptors batch 3 tries to take must not starve it.
    let results = run_until_attack(
        &["hold-files 200", "reopen 25000", "ok", "hold-files 25000"],
        "",
        "sink exceeded its open-files limit (descriptors, streams and listings held at once) (limits.open_files = 256)",
    );
    assert_eq!(results, ["held 200", "reopened 25000", "ok"]);
}

#[test]
fn run_then_replay_of_a_listing_sink_is_identical_on_tmpfs() {
    let broker = Broker::start();
    broker.create_topic("attacks", 1);
    produce(&broker.bootstrap, "attacks", 1, &["list-stat".to_owned(), "list-stat".to_owned()]);
    let dir = tempfile::tempdir().unwrap();
    let config = attack_pipeline(dir.path(), &broker.bootstrap, "");
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The run's scratch is on disk (under the checkpoint); the replays' on tmpfs.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    for batch in ["0", "1"] {
        let out = sluice(&["replay", config.to_str().unwrap(), "--batch", batch]).env("TMPDIR", shm.path()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with(&format!("batch {batch}: IDENTICAL to the committed output")), "{stdout}");
    }
}
