//! Table maintenance's cost to the stream, in one run on the same records:
//! the same pipeline of many small batches (mock Kafka → `append-events`
//! → one Delta table) with maintenance off, then on (log checkpoints every
//! 100 versions, compaction from 40 small files, VACUUM every 500). It
//! prints the batch period p50/p99 of each, the maintenance steps that ran,
//! and what a fresh reader pays to load each table at the end. Nothing here
//! passes or fails: a failed batch or a commit conflict would stop the run
//! (`unwrap`), so finishing is the zero-conflict check.
//!
//! `cargo bench --bench maintenance` (`SLUICE_BENCH_RECORDS`: the batches;
//! one record each).

mod common;

use common::{PARTITIONS, TOPIC, ms, percentile, produce};
use rdkafka::mocking::MockCluster;
use sluice::config::PipelineConfig;
use sluice::pipeline::{Event, Pipeline};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const OFF: &str = "maintenance = { checkpoint_interval = 0, log_cleanup = false, compact_min_files = 0, vacuum_interval = 0 }";
const ON: &str = "maintenance = { checkpoint_interval = 100, compact_min_files = 40, target_file_bytes = 8388608, vacuum_interval = 500, vacuum_retention_hours = 0 }";

struct Run {
    periods: Vec<Duration>,
    steps: BTreeMap<&'static str, (u64, Duration)>,
    load: Duration,
    version: u64,
    files: usize,
}

fn run(dir: &Path, bootstrap: &str, maintenance: &str) -> Run {
    let path = common::config_with(dir, bootstrap, "append_events", 1, "checkpoint = \"checkpoint\"", "events", maintenance);
    let cfg = PipelineConfig::load(&path).unwrap();
    let mut pipeline = Pipeline::open(cfg, "bench").unwrap();
    let (mut periods, mut steps) = (Vec::new(), BTreeMap::<&'static str, (u64, Duration)>::new());
    let mut last = Instant::now();
    pipeline
        .run(|e| match e {
            Event::Committed(_) => {
                periods.push(last.elapsed());
                last = Instant::now();
            }
            Event::Maintained { steps: done, .. } => {
                for m in done {
                    let s = steps.entry(m.step).or_default();
                    s.0 += 1;
                    s.1 += Duration::from_millis(m.ms);
                }
            }
            _ => {}
        })
        .unwrap();
    drop(pipeline);
    periods.sort();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = url::Url::from_directory_path(std::path::absolute(dir.join("events")).unwrap()).unwrap();
    let started = Instant::now();
    let table = rt.block_on(deltalake::DeltaTable::try_from_url(url)).unwrap();
    let load = started.elapsed();
    let files = table.snapshot().unwrap().log_data().num_files();
    Run { periods, steps, load, version: table.version().unwrap() as u64, files }
}

fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000).min(20_000);
    let work = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, n);
    println!("{n} one-record batches, append-events sink, one local Delta table");
    let off = run(&work.path().join("off"), &bootstrap, OFF);
    let on = run(&work.path().join("on"), &bootstrap, ON);
    for (name, r) in [("maintenance off", &off), ("maintenance on", &on)] {
        println!(
            "{name:<16} batch period p50 {}  p99 {}  max {}; table at version {} with {} data files; a fresh load takes {}",
            ms(percentile(&r.periods, 0.5)),
            ms(percentile(&r.periods, 0.99)),
            ms(*r.periods.last().unwrap()),
            r.version,
            r.files,
            ms(r.load)
        );
        for (step, (count, time)) in &r.steps {
            println!("  {step:<12} {count:>4} times, {} in all", ms(*time));
        }
    }
    println!(
        "on / off: batch period p50 {:.2}×, p99 {:.2}×; load {:.2}×",
        percentile(&on.periods, 0.5).as_secs_f64() / percentile(&off.periods, 0.5).as_secs_f64(),
        percentile(&on.periods, 0.99).as_secs_f64() / percentile(&off.periods, 0.99).as_secs_f64(),
        on.load.as_secs_f64() / off.load.as_secs_f64()
    );
}
