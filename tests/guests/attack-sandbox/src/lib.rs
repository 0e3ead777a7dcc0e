//! Attacks on the sandbox's clocks and filesystem, for the hostile-sink
//! suite (`tests/it/hostile_sandbox.rs`): each must end its batch at once
//! with a typed limit, or finish quickly and identically on every run and
//! machine, and never hang or starve the host.
//!
//! Every record's value is one command; the sink runs it and stages one
//! row `{"id", "result"}` to the table `attack` (`id` is the record's
//! offset). Commands:
//!
//! | command            | what it does                                                  |
//! |--------------------|---------------------------------------------------------------|
//! | `ok`               | nothing                                                       |
//! | `sleep MS`         | `std::thread::sleep`; result: virtual ns slept, mono and wall |
//! | `sleep-forever`    | `std::thread::sleep(Duration::MAX)`                           |
//! | `instant-far`      | `subscribe-instant(u64::MAX).block()`                         |
//! | `poll-many N`      | `poll` on one 1 s pollable listed N times                     |
//! | `poll-order`       | `poll` on 10 s, 5 s, 1 s and stdout: which are ready, when    |
//! | `hold-files N`     | create N files and keep them all open                         |
//! | `reopen N`         | open and close one file N times                               |
//! | `many-files N`     | create N empty files                                          |
//! | `many-dirs N`      | create N empty directories                                    |
//! | `deep-tree N`      | a chain of N directories, built with two-component paths      |
//! | `deep-path N`      | `create_dir_all` of a path N directories deep                 |
//! | `list-stat`        | create entries in a scrambled order, then stage what listing  |
//! |                    | and `stat` show, in listing order                             |

use std::fs::{self, File};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_sdk::{Batch, SinkError, Table};
use wasip2::clocks::monotonic_clock;
use wasip2::filesystem::types::{Descriptor, PathFlags};
use wasip2::io::poll;

fn attack(batch: Batch) -> Result<(), SinkError> {
    let table = Table::new("attack");
    for chunk in batch.chunks() {
        for record in chunk.iter() {
            let cmd = String::from_utf8_lossy(record.value().unwrap_or_default()).into_owned();
            let result = run(cmd.trim()).map_err(SinkError::failed)?;
            table.append_json([json!({ "id": record.offset().to_string(), "result": result }).to_string()])?;
        }
    }
    Ok(())
}

fn run(line: &str) -> Result<String, String> {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let n = || arg.trim().parse::<u64>().map_err(|e| format!("{cmd}: bad number {arg:?}: {e}"));
    match cmd {
        "ok" => Ok("ok".into()),
        "sleep" => {
            let (mono, wall) = (Instant::now(), wall_ns());
            std::thread::sleep(Duration::from_millis(n()?));
            Ok(format!("slept {} ns, wall moved {} ns", mono.elapsed().as_nanos(), wall_ns() - wall))
        }
        "sleep-forever" => {
            std::thread::sleep(Duration::MAX);
            Ok("woke up".into())
        }
        "instant-far" => {
            monotonic_clock::subscribe_instant(u64::MAX).block();
            Ok("reached the end of time".into())
        }
        "poll-many" => {
            let p = monotonic_clock::subscribe_duration(1_000_000_000);
            let list = vec![&p; n()? as usize];
            let start = monotonic_clock::now();
            let ready = poll::poll(&list);
            Ok(format!("{} ready after {} ns", ready.len(), monotonic_clock::now() - start))
        }
        "poll-order" => Ok(poll_order()),
        "hold-files" => {
            let mut held = Vec::new();
            for i in 0..n()? {
                held.push(File::create(format!("/staging/held-{i}")).map_err(|e| format!("file {i}: {e}"))?);
            }
            Ok(format!("held {}", black_box(held).len()))
        }
        "reopen" => {
            fs::write("/staging/again", b"x").map_err(|e| e.to_string())?;
            for i in 0..n()? {
                drop(black_box(File::open("/staging/again").map_err(|e| format!("open {i}: {e}"))?));
            }
            Ok(format!("reopened {arg}"))
        }
        "many-files" => {
            for i in 0..n()? {
                File::create(format!("/staging/f{i}")).map_err(|e| format!("file {i}: {e}"))?;
            }
            Ok(format!("created {arg} files"))
        }
        "many-dirs" => {
            for i in 0..n()? {
                fs::create_dir(format!("/staging/d{i}")).map_err(|e| format!("dir {i}: {e}"))?;
            }
            Ok(format!("created {arg} directories"))
        }
        "deep-tree" => {
            // Deeper by one per round, yet no path has more than two parts:
            // a limit on path depth alone cannot stop this, only the count
            // of entries created can.
            fs::create_dir("/staging/top").map_err(|e| e.to_string())?;
            for i in 1..n()? {
                let step = fs::create_dir("/staging/n")
                    .and_then(|()| fs::rename("/staging/top", "/staging/n/top"))
                    .and_then(|()| fs::rename("/staging/n", "/staging/top"));
                step.map_err(|e| format!("level {i}: {e}"))?;
            }
            Ok(format!("depth {arg}"))
        }
        "deep-path" => {
            let path: String = (0..n()?).map(|_| "/d").collect();
            fs::create_dir_all(format!("/staging{path}")).map_err(|e| e.to_string())?;
            Ok(format!("depth {arg}"))
        }
        "list-stat" => list_stat(),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn wall_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// Which of 10 s, 5 s and 1 s pollables `poll` finds ready, and when; then
/// with stdout (always ready) added, and the clock must not move.
fn poll_order() -> String {
    let start = monotonic_clock::now();
    let [p10, p5, p1] = [10, 5, 1].map(|s| monotonic_clock::subscribe_duration(s * 1_000_000_000));
    let mut out = Vec::new();
    let first = poll::poll(&[&p10, &p5, &p1]);
    out.push(format!("{first:?} at {}", monotonic_clock::now() - start));
    let second = poll::poll(&[&p10, &p5]);
    out.push(format!("{second:?} at {}", monotonic_clock::now() - start));
    let stdout = wasip2::cli::stdout::get_stdout();
    let ready_stream = stdout.subscribe();
    let third = poll::poll(&[&p10, &ready_stream]);
    out.push(format!("{third:?} at {}", monotonic_clock::now() - start));
    out.join("; ")
}

/// Entries created in an order no filesystem sorts by, then listed and
/// stat'ed as the filesystem shows them.
fn list_stat() -> Result<String, String> {
    let e = |e: std::io::Error| e.to_string();
    for (i, name) in ["m", "b", "zz", "a1", "q", "c", "x9", "k", "e", "t", "a0", "y"].iter().enumerate() {
        fs::write(format!("/staging/{name}"), name.repeat(i + 1)).map_err(e)?;
    }
    for name in ["dir-b", "dir-a"] {
        fs::create_dir(format!("/staging/{name}")).map_err(e)?;
        for f in ["2", "1", "3"] {
            fs::write(format!("/staging/{name}/{f}"), f).map_err(e)?;
        }
    }
    fs::hard_link("/staging/m", "/staging/m-link").map_err(e)?;
    let (staging, _) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, name)| name == "/staging")
        .ok_or("no /staging preopen")?;
    let mut rows = Vec::new();
    // std's read_dir is the listing order the filesystem (or the host) gives.
    for entry in fs::read_dir("/staging").map_err(e)? {
        let name = entry.map_err(e)?.file_name().to_string_lossy().into_owned();
        rows.push(describe(&staging, &name)?);
    }
    for entry in fs::read_dir("/staging/dir-b").map_err(e)? {
        let name = entry.map_err(e)?.file_name().to_string_lossy().into_owned();
        rows.push(describe(&staging, &format!("dir-b/{name}"))?);
    }
    let mtime = fs::metadata("/staging/m").and_then(|m| m.modified()).map_err(e)?;
    rows.push(format!("std mtime {:?}", mtime.duration_since(UNIX_EPOCH).unwrap_or_default()));
    Ok(rows.join("\n"))
}

fn describe(staging: &Descriptor, path: &str) -> Result<String, String> {
    let stat = staging.stat_at(PathFlags::empty(), path).map_err(|e| format!("stat {path}: {e:?}"))?;
    let hash = staging.metadata_hash_at(PathFlags::empty(), path).map_err(|e| format!("hash {path}: {e:?}"))?;
    let time = |t: Option<wasip2::clocks::wall_clock::Datetime>| t.map(|t| format!("{}.{:09}", t.seconds, t.nanoseconds));
    Ok(format!(
        "{path} {:?} size={} links={} atime={:?} mtime={:?} ctime={:?} hash={:016x}{:016x}",
        stat.type_,
        stat.size,
        stat.link_count,
        time(stat.data_access_timestamp),
        time(stat.data_modification_timestamp),
        time(stat.status_change_timestamp),
        hash.upper,
        hash.lower
    ))
}

sluice_sdk::export_sink!(attack);
