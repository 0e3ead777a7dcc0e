//! Tables and checkpoints where users keep them: object storage, on real
//! servers (moto's S3 server, Azurite), read back by the independent reader
//! pointed at the same endpoint. And ownership across machines: two `sluice
//! run` processes on one pipeline, with separate local scratch and cache
//! directories, as two hosts would be; the owner is killed or paused, the
//! standby takes over.
//!
//! Every test runs the `sluice` binary and asserts what a user sees: rows
//! in the bucket, exit codes, the exact messages.

use crate::crash::{KILL_POINTS, Outcome, run_once};
use crate::harness::*;
use crate::host::Host;
use crate::object_servers::{AzuriteServer, S3Server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const APP: &str = "fan-out";

/// Where a test pipeline keeps its checkpoint and tables, and how to reach them.
struct Place {
    checkpoint: String,
    tables: String,
    options: Vec<(String, String)>,
    options_toml: String,
}

impl Place {
    fn s3(server: &S3Server, bucket: &str) -> Place {
        server.create_bucket(bucket);
        Place {
            checkpoint: format!("s3://{bucket}/checkpoints/fan-out"),
            tables: format!("s3://{bucket}/tables"),
            options: server.storage_options(),
            options_toml: server.toml_options(),
        }
    }

    fn azure(server: &AzuriteServer, container: &str) -> Place {
        server.create_container(container);
        Place {
            checkpoint: format!("az://{container}/checkpoints/fan-out"),
            tables: format!("az://{container}/tables"),
            options: server.storage_options(),
            options_toml: server.toml_options(),
        }
    }

    /// Every id once in both tables, read by the independent reader; each
    /// table's last batch.
    fn assert_exactly_once(&self, ids: &[String]) -> [Option<i64>; 2] {
        ["events", "audit"].map(|table| {
            let read = read_delta_at(&format!("{}/{table}", self.tables), APP, &self.options);
            assert_ids_exactly_once(table, &read, ids);
            read.txn
        })
    }

    fn rows(&self, table: &str) -> usize {
        read_delta_at(&format!("{}/{table}", self.tables), APP, &self.options).rows.len()
    }
}

/// A `pipeline.toml` (named `<name>.toml`) for the `fan-out` sink with
/// checkpoint and tables at `place`, and local scratch and cache
/// directories of its own (`<name>-local/`), as one host of several would
/// have. `extra` goes in `[pipeline]`.
fn remote_config(dir: &Path, name: &str, bootstrap: &str, max_records: u64, place: &Place, extra: &str) -> PathBuf {
    let local = dir.join(format!("{name}-local"));
    let text = format!(
        r#"[pipeline]
id = "fan-out"
component = "{component}"
checkpoint = "{checkpoint}"
storage_options = {options}
scratch = "{scratch}"
cache = "{cache}"
retry_backoff_ms = 20
{extra}

[source]
bootstrap_servers = "{bootstrap}"
topics = ["events"]
max_records_per_batch = {max_records}
fetch_timeout_ms = 20000
{tables}"#,
        component = guest("fan-out").display(),
        checkpoint = place.checkpoint,
        options = place.options_toml,
        scratch = local.join("scratch").display(),
        cache = local.join("cache").display(),
        tables = fan_out_tables(&place.tables),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("id-{i:05}")).collect()
}

/// The test secret must never show: not in output, status or errors.
fn assert_no_secret(text: &str) {
    assert!(!text.contains("sluice-test-secret"), "a storage secret reached the output:\n{text}");
}

#[test]
fn a_url_sluice_cannot_serve_is_a_config_error_naming_the_key_never_a_local_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), "127.0.0.1:1", "events", 10, "");
    let text = std::fs::read_to_string(&config).unwrap();
    for (from, to, key, says) in [
        ("checkpoint = \"checkpoint\"", "checkpoint = \"hdfs://nn/cp\"", "`pipeline.checkpoint`", "the URL scheme `hdfs://` is not one sluice can serve"),
        ("path = \"tables/events\"", "path = \"s3:/lake/tables/events\"", "`tables[0].path`", "looks like a mistyped URL"),
        ("path = \"tables/audit\"", "path = \"s3:///tables/audit\"", "`tables[1].path`", "names no bucket"),
        ("path = \"tables/audit\"", "path = \"s3://key:secret@lake/audit\"", "`tables[1].path`", "carries credentials"),
    ] {
        std::fs::write(&config, text.replace(from, to)).unwrap();
        for command in ["run", "status"] {
            let (code, stdout, stderr) = sluice_output(&[command, config.to_str().unwrap()]);
            assert_eq!(code, 2, "{command} with {to}: {stdout}{stderr}");
            assert!(stderr.contains(key) && stderr.contains(says), "{command} with {to}: {stderr}");
            assert!(!stderr.contains("secret@"), "{stderr}");
        }
    }
    let made: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(made, ["pipeline.toml"], "nothing was written to local disk");
}

#[test]
fn tables_in_a_bucket_with_the_checkpoint_on_local_disk_are_refused_unless_the_config_accepts_it() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    let all = ids(0..200);
    produce(&broker.bootstrap, "events", 2, &all);
    let s3 = S3Server::start();
    let mut place = Place::s3(&s3, "lake");
    let dir = tempfile::tempdir().unwrap();
    place.checkpoint = dir.path().join("checkpoint").display().to_string();
    let config = remote_config(dir.path(), "host", &broker.bootstrap, 50, &place, "trigger = \"available_now\"");

    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 2, "a config error: {stdout}{stderr}");
    let expected = format!(
        "error: config {}: `pipeline.checkpoint_durability`: table `events` is in object storage (tables[0].path = \
         s3://lake/tables/events) but the checkpoint is on local disk ({}); when this node fails, the checkpoint is \
         lost while the tables live on. Put the checkpoint beside the tables (pipeline.checkpoint = \
         \"s3://lake/checkpoints/fan-out\"), or, if this disk outlives the node, accept it with checkpoint_durability = \
         \"local-ok\" in [pipeline]\n",
        config.display(),
        place.checkpoint
    );
    assert_eq!(stderr, expected);
    assert!(s3.list("lake", "").is_empty(), "nothing reached the bucket");
    assert!(!dir.path().join("checkpoint").exists(), "refused before the checkpoint was made");

    let config = remote_config(dir.path(), "host", &broker.bootstrap, 50, &place, "trigger = \"available_now\"\ncheckpoint_durability = \"local-ok\"");
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    place.assert_exactly_once(&all);
    assert_no_secret(&(stdout + &stderr));
}

/// The whole pipeline with checkpoint and tables in one bucket (or
/// container): every id once, read back by the independent reader through
/// the same endpoint; the checkpoint's files are objects there; `status`
/// says where each part lives; no secret shows.
fn whole_pipeline(place: &Place, list: impl Fn(&str) -> Vec<String>, kind: &str) {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let all = ids(0..600);
    produce(&broker.bootstrap, "events", 3, &all);
    let dir = tempfile::tempdir().unwrap();
    let config = remote_config(dir.path(), "host", &broker.bootstrap, 100, place, "trigger = \"available_now\"");

    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains(&format!("took the lease on checkpoint {} (epoch 1)", place.checkpoint)), "{stderr}");
    let last = place.assert_exactly_once(&all);
    assert_eq!(last, [Some(5); 2], "600 records in batches of 100: batches 0..=5");
    let offsets = list("checkpoints/fan-out/offsets/");
    assert_eq!(offsets.len(), 6, "one plan object per batch: {offsets:?}");
    assert_eq!(list("checkpoints/fan-out/commits/").len(), 6);
    assert_eq!(list("checkpoints/fan-out/lease").len(), 1);
    assert_eq!(list("checkpoints/fan-out/components/").len(), 1, "the component is kept beside the logs");

    let (code, status, status_err) = sluice_output(&["status", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{status}{status_err}");
    assert!(status.contains(&format!("(checkpoint {}, on {kind})", place.checkpoint)), "{status}");
    assert!(status.contains(&format!("({}/events, on {kind})", place.tables)), "{status}");
    assert!(status.contains("running: no (lease epoch 1 released by "), "a clean stop releases the lease: {status}");
    assert_no_secret(&(stdout + &stderr + &status + &status_err));

    // A second run finds everything committed, takes the lease at once
    // (released), and commits nothing.
    produce(&broker.bootstrap, "events", 3, &ids(600..650));
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("(epoch 2)"), "{stderr}");
    place.assert_exactly_once(&ids(0..650));
    let made: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!made.iter().any(|m| m.ends_with(':')), "no local directory named after a URL scheme: {made:?}");
}

#[test]
fn the_whole_pipeline_on_the_s3_server_lands_every_id_exactly_once_in_the_bucket() {
    let s3 = S3Server::start();
    let place = Place::s3(&s3, "lake");
    whole_pipeline(&place, |prefix| s3.list("lake", prefix), "S3");
}

#[test]
fn the_whole_pipeline_on_azurite_lands_every_id_exactly_once_in_the_container() {
    let azurite = AzuriteServer::start();
    let place = Place::azure(&azurite, "lake");
    whole_pipeline(&place, |prefix| azurite.list("lake", prefix), "Azure");
}

#[test]
fn kill_minus_9_at_every_step_with_checkpoint_and_tables_in_the_bucket_loses_and_repeats_nothing() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let all = ids(0..900);
    produce(&broker.bootstrap, "events", 3, &all);
    let s3 = S3Server::start();
    let place = Place::s3(&s3, "lake");
    let dir = tempfile::tempdir().unwrap();
    // A short lease: after a kill -9 the next run waits it out (nothing
    // can tell a dead owner from a paused one but time).
    let config = remote_config(dir.path(), "host", &broker.bootstrap, 30, &place, "trigger = \"available_now\"\nlease_ms = 600");

    let mut runs = 0;
    for point in KILL_POINTS {
        let (outcome, stderr) = run_once(&config, Some(point), None);
        runs += 1;
        assert_eq!(outcome, Outcome::KilledAt, "run at {point} should reach it: {stderr}");
    }
    let mut random = Seeded::from_clock("object-store crash test: kill moments");
    let mut random_kills = 0;
    while random_kills < 6 {
        // Past the lease wait of the start, into the batches.
        let after = Duration::from_millis(700 + random.next() % 700);
        let (outcome, stderr) = run_once(&config, None, Some(after));
        runs += 1;
        match outcome {
            Outcome::KilledRunning => random_kills += 1,
            Outcome::Exited(0) => break,
            other => panic!("unexpected {other:?}: {stderr}"),
        }
    }
    let (outcome, stderr) = run_once(&config, None, None);
    assert_eq!(outcome, Outcome::Exited(0), "{stderr}");
    eprintln!("object-store crash test: {runs} killed runs ({} at named points, {random_kills} at random)", KILL_POINTS.len());
    let last = place.assert_exactly_once(&all);
    assert_eq!(last, [Some(29); 2], "900 records in batches of 30: batches 0..=29, none skipped");
}

const TOOK: &str = "took the lease on checkpoint";

#[test]
fn two_hosts_a_killed_owner_is_replaced_by_the_standby_twenty_times_and_every_id_lands_once() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    let s3 = S3Server::start();
    let place = Place::s3(&s3, "lake");
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 1000;
    let extra = format!("trigger = \"continuous\"\ntrigger_interval_ms = 20\nlease_ms = {lease_ms}");
    let configs = [
        remote_config(dir.path(), "host-a", &broker.bootstrap, 15, &place, &extra),
        remote_config(dir.path(), "host-b", &broker.bootstrap, 15, &place, &extra),
    ];
    let names = ["host-a", "host-b"];
    let mut produced = 0;
    let mut wave = |n: usize| {
        produce(&broker.bootstrap, "events", 2, &ids(produced..produced + n));
        produced += n;
    };
    wave(60);
    let mut owner = Host::start(names[0], &configs[0], &[]);
    assert!(owner.wait_for(TOOK, Duration::from_secs(60)).is_some(), "{}", owner.output());
    let mut standby = Host::start(names[1], &configs[1], &[]);
    assert!(standby.wait_for("sluice: standby:", Duration::from_secs(60)).is_some(), "{}", standby.output());

    let mut random = Seeded::from_clock("two-hosts test: kill moments");
    let mut takeovers = Vec::new();
    for round in 0..20 {
        // Let the owner commit at least one batch of new records, then kill
        // it at a random moment after that.
        wave(45);
        assert!(owner.wait_for("records, ", Duration::from_secs(60)).is_some(), "round {round}: {}", owner.output());
        owner.watch(Duration::from_millis(random.next() % 400));
        owner.signal("-KILL");
        let killed = Instant::now();
        let took = standby.wait_for(TOOK, Duration::from_millis(lease_ms * 10));
        let took = took.unwrap_or_else(|| panic!("round {round}: the standby did not take over: {}", standby.output()));
        takeovers.push(took.saturating_duration_since(killed));
        // The next standby: the machine whose process died comes back.
        let name = if owner.name == names[0] { 0 } else { 1 };
        drop(std::mem::replace(&mut owner, standby));
        standby = Host::start(names[name], &configs[name], &[]);
        assert!(standby.wait_for("sluice: standby:", Duration::from_secs(60)).is_some(), "{}", standby.output());
    }
    // Everything produced lands: wait for the last batch's rows, then stop
    // both with SIGTERM (a clean stop).
    let deadline = Instant::now() + Duration::from_secs(120);
    while place.rows("audit") < produced {
        assert!(Instant::now() < deadline, "the owner did not catch up: {}", owner.output());
        let _ = owner.wait_for("records, ", Duration::from_secs(2));
    }
    standby.signal("-TERM");
    owner.signal("-TERM");
    assert_eq!(owner.exit_code(Duration::from_secs(60)), Some(0), "{}", owner.output());
    place.assert_exactly_once(&ids(0..produced));

    takeovers.sort();
    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "two-hosts test: {} takeovers after kill -9, lease_ms {lease_ms}: p50 {} ms, max {} ms (min {} ms)",
        takeovers.len(),
        ms(takeovers[takeovers.len() / 2]),
        ms(*takeovers.last().unwrap()),
        ms(takeovers[0])
    );
    // The standby waits out one whole unrenewed lease, and looks ten times
    // per lease: at most lease_ms plus a look and the process's own start.
    assert!(*takeovers.last().unwrap() < Duration::from_millis(lease_ms * 2), "takeovers {takeovers:?}");
}

/// The objects of the Delta log of `table` in the bucket, parsed: one list
/// of actions per commit, oldest first.
fn delta_log(s3: &S3Server, table: &str) -> Vec<Vec<serde_json::Value>> {
    let mut keys = s3.list("lake", &format!("tables/{table}/_delta_log/"));
    keys.retain(|k| k.ends_with(".json"));
    keys.sort();
    keys.iter()
        .map(|k| {
            let bytes = s3.get_raw("lake", k).unwrap();
            bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
        })
        .collect()
}

#[test]
fn a_paused_owner_that_wakes_after_losing_its_lease_commits_nothing_says_so_and_exits_non_zero() {
    let broker = Broker::start();
    broker.create_topic("events", 1);
    let s3 = S3Server::start();
    let place = Place::s3(&s3, "lake");
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 1000;
    let extra = format!("trigger = \"continuous\"\ntrigger_interval_ms = 20\nlease_ms = {lease_ms}");
    let config_a = remote_config(dir.path(), "host-a", &broker.bootstrap, 20, &place, &extra);
    let config_b = remote_config(dir.path(), "host-b", &broker.bootstrap, 20, &place, &extra);
    produce(&broker.bootstrap, "events", 1, &ids(0..40));

    // The owner stops itself (SIGSTOP) at its second batch's commit, after
    // every ownership check passed: its Delta commit is in flight.
    let mut zombie = Host::start("host-a", &config_a, &[("SLUICE_FAILPOINT", "before-table-commit:3"), ("SLUICE_FAILPOINT_STOP", "1")]);
    assert!(zombie.wait_for("failpoint before-table-commit reached", Duration::from_secs(60)).is_some(), "{}", zombie.output());
    let mut owner = Host::start("host-b", &config_b, &[]);
    let took = owner.wait_for(TOOK, Duration::from_secs(30));
    assert!(took.is_some(), "the standby takes over the paused owner's lease: {}", owner.output());
    assert!(owner.output().contains("(epoch 2)"));
    // The new owner commits everything, then more.
    produce(&broker.bootstrap, "events", 1, &ids(40..80));
    let deadline = Instant::now() + Duration::from_secs(60);
    while place.rows("audit") < 80 {
        assert!(Instant::now() < deadline, "{}", owner.output());
        let _ = owner.wait_for("records, ", Duration::from_secs(2));
    }

    // Wake the zombie: its commit must fail, and it must say why.
    zombie.signal("-CONT");
    let code = zombie.exit_code(Duration::from_secs(60));
    let said = zombie.output();
    assert_eq!(code, Some(4), "exit code 4: lost the lease\n{said}");
    assert!(
        said.contains("was taken over by lease epoch 2 of this pipeline; this process holds epoch 1 and lost its lease. Nothing was committed"),
        "{said}"
    );
    owner.signal("-TERM");
    assert_eq!(owner.exit_code(Duration::from_secs(60)), Some(0), "{}", owner.output());
    place.assert_exactly_once(&ids(0..80));

    // In each table's log, nothing of epoch 1 after epoch 2's fence.
    for table in ["events", "audit"] {
        let log = delta_log(&s3, table);
        let epoch_of = |commit: &Vec<serde_json::Value>| {
            commit.iter().find_map(|a| a["commitInfo"]["sluice"]["lease_epoch"].as_u64())
        };
        let fence = log.iter().position(|c| epoch_of(c) == Some(2)).expect("the new owner fenced the table");
        let late: Vec<usize> = (fence..log.len()).filter(|&v| epoch_of(&log[v]) == Some(1)).collect();
        assert!(late.is_empty(), "table {table}: epoch-1 commits after the fence at version {fence}: {late:?}");
    }
    assert_no_secret(&said);
}

#[test]
fn two_writers_creating_one_object_on_the_s3_server_exactly_one_wins() {
    use sluice::storage::StorageOptions;
    use sluice::storage::blobs::Blobs;
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let options = StorageOptions(s3.storage_options().into_iter().collect());
    let url = url::Url::parse("s3://lake/checkpoints/race").unwrap();
    let writers: Vec<Blobs> = (0..2).map(|_| Blobs::open(&url, &options).unwrap()).collect();
    let keys = 60;
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, blobs)| {
                s.spawn(move || (0..keys).map(|n| blobs.create(&format!("offsets/{n}"), format!("writer {w}").as_bytes()).unwrap().is_some()).collect())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for n in 0..keys {
        assert_eq!(wins[0][n] as u8 + wins[1][n] as u8, 1, "offsets/{n}: exactly one writer wins");
        let winner = if wins[0][n] { 0 } else { 1 };
        let (stored, _) = writers[0].get(&format!("offsets/{n}")).unwrap().unwrap();
        assert_eq!(stored, format!("writer {winner}").into_bytes(), "offsets/{n} holds the winner's bytes");
    }
    eprintln!("create race: writer 0 won {} of {keys}, writer 1 {}", wins[0].iter().filter(|w| **w).count(), wins[1].iter().filter(|w| **w).count());
    // Compare-and-swap: a write against a stale version is refused.
    let (_, v1) = writers[0].get("offsets/0").unwrap().unwrap();
    assert!(writers[0].replace("offsets/0", b"next", &v1).unwrap().is_some());
    assert!(writers[1].replace("offsets/0", b"stale", &v1).unwrap().is_none(), "a stale If-Match is refused");
    assert_eq!(writers[1].get("offsets/0").unwrap().unwrap().0, b"next");
}

#[test]
fn a_moved_remote_checkpoint_is_refused_rebuilt_from_the_bucket_and_continued_and_rebuild_refuses_a_live_owner() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    produce(&broker.bootstrap, "events", 2, &ids(0..300));
    let s3 = S3Server::start();
    let mut place = Place::s3(&s3, "lake");
    let dir = tempfile::tempdir().unwrap();
    let config = remote_config(dir.path(), "host", &broker.bootstrap, 50, &place, "trigger = \"available_now\"");
    // Four runs: the tables are fenced by lease epoch 4 of this checkpoint.
    for epoch in 1..=4 {
        let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stderr.contains(&format!("(epoch {epoch})")), "{stderr}");
    }

    // The config now points at an empty checkpoint prefix: the tables are
    // ahead of it, and nothing runs until it is rebuilt from them.
    place.checkpoint = "s3://lake/checkpoints/moved".into();
    let config = remote_config(dir.path(), "host", &broker.bootstrap, 50, &place, "trigger = \"available_now\"");
    produce(&broker.bootstrap, "events", 2, &ids(300..400));
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("the table is ahead of the checkpoint") && stderr.contains("sluice checkpoint rebuild"), "{stderr}");
    let (code, stdout, stderr) = sluice_output(&["checkpoint", "rebuild", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("rebuilt checkpoint s3://lake/checkpoints/moved from the tables' Delta logs"), "{stdout}");
    assert!(stdout.contains("committed batches 0..=5"), "{stdout}");
    // Its lease started again (the refused run: 1, the rebuild: 2, this
    // run: 3), below the tables' fence: the new owner raises its epoch past
    // it and runs on.
    let (code, stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    place.assert_exactly_once(&ids(0..400));
    let lease = String::from_utf8(s3.get_raw("lake", "checkpoints/moved/lease").unwrap()).unwrap();
    assert!(lease.contains("\"epoch\":5"), "raised past the tables' epoch 4: {lease}");

    // While an owner runs (and renews its lease), a rebuild is refused.
    let live = remote_config(dir.path(), "live", &broker.bootstrap, 50, &place, "trigger = \"continuous\"\nlease_ms = 1000");
    let mut owner = Host::start("live", &live, &[]);
    // Running (its signal handlers are in place once it says so).
    assert!(owner.wait_for("running component", Duration::from_secs(60)).is_some(), "{}", owner.output());
    let (code, stdout, stderr) = sluice_output(&["checkpoint", "rebuild", live.to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("checkpoint s3://lake/checkpoints/moved is in use by another sluice process (lease epoch")
            && stderr.contains("only one `sluice run` may own a checkpoint"),
        "{stderr}"
    );
    owner.signal("-TERM");
    assert_eq!(owner.exit_code(Duration::from_secs(60)), Some(0), "{}", owner.output());
    place.assert_exactly_once(&ids(0..400));
}
