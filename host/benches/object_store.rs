//! Tables and checkpoint on an S3 server against local disk, in one run on
//! the same records. It prints figures; nothing here passes or fails.
//!
//! The same pipeline (librdkafka's mock cluster → `append-events` → one
//! Delta table) runs twice over the same topic: checkpoint and table on
//! local disk, then both in a bucket of a real S3-compatible server (moto,
//! on loopback, started here). Printed for each: end-to-end throughput,
//! the batch period (commit to commit) and the Delta commit time, p50 and
//! p90. For S3, the requests the server logged, per batch, by what they
//! were for: that is where the extra time goes.
//!
//! `make bench` runs it (`SLUICE_MOTO` names the server; `make test`'s
//! set-up installs it); `SLUICE_BENCH_RECORDS` sizes it.

mod common;

use common::{PARTITIONS, TOPIC, ms, percentile, produce};
use rdkafka::mocking::MockCluster;
use sluice::config::PipelineConfig;
use sluice::pipeline::{Event, Pipeline};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// moto's S3 server on a free loopback port, its request log in a file.
struct Moto {
    child: std::process::Child,
    endpoint: String,
    log: PathBuf,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let bin = std::env::var("SLUICE_MOTO").expect("SLUICE_MOTO names moto_server: run `make bench`, which installs it");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}"), log }
    }

    /// Create a bucket (moto takes an unsigned request).
    fn create_bucket(&self, name: &str) {
        let mut s = std::net::TcpStream::connect(self.endpoint.trim_start_matches("http://")).unwrap();
        write!(s, "PUT /{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", &self.endpoint[7..]).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// The requests logged so far: (method, path). The log colours some
    /// lines: escape sequences are dropped.
    fn requests(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.log).unwrap();
        text.lines()
            .filter_map(|line| {
                let request = line.split('"').nth(1)?;
                let request = strip_escapes(request);
                let mut parts = request.split(' ');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A request's shape: its path with numbers as `N` and data file names
/// as `*.parquet`, so the requests of all batches group together.
fn shape(method: &str, path: &str) -> String {
    let path = match path.find("part-") {
        Some(i) if path.ends_with(".parquet") => format!("{}*.parquet", &path[..i]),
        _ => path.to_owned(),
    };
    let mut out = String::new();
    let mut in_number = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    format!("{method} {out}")
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, bootstrap: &str, max_records: u64, checkpoint: &str, table: &str, options: &str) -> PathBuf {
    let place = format!("checkpoint = \"{checkpoint}\"\nstorage_options = {options}\nscratch = \"scratch\"\ncache = \"cache\"");
    common::config(dir, bootstrap, "append_events", max_records, &place, table)
}

/// One run: the whole topic, with the batch periods and commit times.
struct Run {
    total: Duration,
    batches: usize,
    periods: Vec<Duration>,
    commits: Vec<Duration>,
}

fn run(config: &Path, n: usize) -> Run {
    let cfg = PipelineConfig::load(config).unwrap();
    let start = Instant::now();
    let mut pipeline = Pipeline::open(cfg, "bench").unwrap();
    let (mut periods, mut commits) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    let summary = pipeline
        .run(|e| {
            if let Event::Committed(r) = e {
                periods.push(last.elapsed());
                last = Instant::now();
                commits.push(r.commit);
            }
        })
        .unwrap();
    drop(pipeline);
    let total = start.elapsed();
    assert_eq!(summary.records as usize, n, "every record went through");
    periods.sort();
    commits.sort();
    Run { total, batches: summary.batches as usize, periods, commits }
}

fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let per_batch = (n / 50).max(1) as u64;
    let work = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let bytes = produce(&bootstrap, n);
    println!("{n} records, {:.1} MB, batches of {per_batch}, append-events sink, one Delta table", bytes as f64 / 1e6);

    let local_dir = work.path().join("local");
    let local = run(&config(&local_dir, &bootstrap, per_batch, "checkpoint", "events", "{}"), n);

    let moto = Moto::start(work.path());
    moto.create_bucket("lake");
    let options = format!(
        "{{ aws_endpoint_url = \"{}\", aws_access_key_id = \"bench\", aws_secret_access_key = \"bench\", aws_region = \"us-east-1\", aws_allow_http = \"true\" }}",
        moto.endpoint
    );
    let before = moto.requests().len();
    let s3 = run(&config(&work.path().join("s3"), &bootstrap, per_batch, "s3://lake/checkpoint", "s3://lake/events", &options), n);
    let requests = &moto.requests()[before..];

    let rate = |r: &Run| n as f64 / r.total.as_secs_f64();
    for (name, r) in [("local disk", &local), ("S3 server (moto, loopback)", &s3)] {
        println!("{name}:");
        println!("  end to end        {:>8.0} ms  {:>9.0} records/s  ({} batches)", r.total.as_secs_f64() * 1e3, rate(r), r.batches);
        println!("  batch period      p50 {}  p90 {}", ms(percentile(&r.periods, 0.5)), ms(percentile(&r.periods, 0.9)));
        println!("  Delta commit      p50 {}  p90 {}", ms(percentile(&r.commits, 0.5)), ms(percentile(&r.commits, 0.9)));
    }
    let extra = percentile(&s3.periods, 0.5).saturating_sub(percentile(&local.periods, 0.5));
    println!(
        "S3 / local: throughput {:.2}×, batch period p50 +{} per batch",
        rate(&s3) / rate(&local),
        ms(extra)
    );
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for (method, path) in requests {
        *by.entry(shape(method, path)).or_default() += 1;
    }
    let mut by: Vec<(String, usize)> = by.into_iter().collect();
    by.sort_by(|a, b| b.1.cmp(&a.1));
    println!(
        "S3 requests: {} in all, {:.1} per batch (the start's table creation, lease and fence included), by shape:",
        requests.len(),
        requests.len() as f64 / s3.batches as f64
    );
    for (shape, count) in by.iter().take(14) {
        println!("  {:>6.2} per batch  {shape}", *count as f64 / s3.batches as f64);
    }
}
