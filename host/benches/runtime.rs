//! Runtime benchmarks. They print figures; nothing here passes or fails.
//!
//! 1. Per-batch cost of a fresh instance plus a no-op call (target ≤ 20 µs
//!    p50), and of the whole attempt including the private `/staging`.
//! 2. A trivial sink (count records, sum value bytes) over 1M small records,
//!    as a Wasm component and as the same logic in native Rust fed by the
//!    same chunking, in the same run (target ≥ 0.8× native).
//!
//! `cargo bench --bench runtime` (set `SLUICE_BENCH_RECORDS` for a smaller
//! smoke run).

use sluice::{BatchSpec, ChunkBuilder, Fill, Limits, OwnedRecord, RecordSource, RuntimeBuilder, VecSource};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("SLUICE_GUEST_DIR")).join(format!("{name}.wasm"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let n_records: usize = std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let scratch = tempfile::tempdir().unwrap();
    let limits = Limits { fuel: u64::MAX / 4, ..Limits::default() };
    let runtime = RuntimeBuilder::new(scratch.path())
        .with_limits(limits.clone())
        .with_cache_dir(scratch.path().join("cache"))
        .build()
        .unwrap();

    // 1. Fresh instance + no-op call.
    let noop = runtime.load(guest("noop")).unwrap();
    let spec = BatchSpec { pipeline_id: "bench".into(), batch_id: 0, planned_timestamp_ms: 0, ranges: vec![] };
    let iterations = 5000;
    let (mut inst_call, mut total) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    let (mut setup, mut teardown) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for i in 0..iterations + 500 {
        let start = Instant::now();
        let out = noop.run(&BatchSpec { batch_id: i as u64, ..spec.clone() }, 1, Box::new(VecSource::new(Vec::new()))).unwrap();
        let elapsed = start.elapsed();
        if i >= 500 {
            inst_call.push(out.timings.instantiate + out.timings.call);
            setup.push(out.timings.setup);
            teardown.push(out.timings.teardown);
            total.push(elapsed);
        }
    }
    for v in [&mut inst_call, &mut total, &mut setup, &mut teardown] {
        v.sort();
    }
    println!("fresh instance + no-op call, {iterations} batches:");
    println!(
        "  instantiate + call   p50 {}  p90 {}  p99 {}",
        micros(percentile(&inst_call, 0.5)),
        micros(percentile(&inst_call, 0.9)),
        micros(percentile(&inst_call, 0.99))
    );
    println!(
        "  whole attempt        p50 {}  p90 {}  p99 {}  (+ fresh /staging, WASI context, cleanup)",
        micros(percentile(&total, 0.5)),
        micros(percentile(&total, 0.9)),
        micros(percentile(&total, 0.99))
    );
    println!(
        "    of which setup p50 {} (mkdir /staging, WASI context, store), teardown p50 {} (rm /staging)",
        micros(percentile(&setup, 0.5)),
        micros(percentile(&teardown, 0.5))
    );

    // 2. Trivial sink over many small records: Wasm vs native.
    let records: Vec<OwnedRecord> = (0..n_records)
        .map(|i| OwnedRecord {
            topic: "bench".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: i as i64,
            key: Some(format!("k{}", i % 1000).into_bytes()),
            value: Some(format!("{{\"id\":{i},\"v\":\"{}\"}}", "x".repeat(i % 17)).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    let records: std::sync::Arc<[OwnedRecord]> = records.into();
    let payload: usize = records.iter().map(|r| r.key.as_ref().unwrap().len() + r.value.as_ref().unwrap().len()).sum();
    let spec = BatchSpec { pipeline_id: "bench".into(), batch_id: 1, planned_timestamp_ms: 0, ranges: BatchSpec::ranges_covering(&records) };

    let native = || {
        let start = Instant::now();
        let mut src = VecSource::new(records.clone());
        let mut chunk = ChunkBuilder::new(spec.ranges.clone(), limits.chunk_records, limits.chunk_bytes);
        let (mut count, mut bytes) = (0u64, 0u64);
        loop {
            let fill = src.fill(&mut chunk).unwrap();
            for v in chunk.values() {
                count += 1;
                bytes += v.map_or(0, |v| v.len() as u64);
            }
            chunk.clear();
            if fill == Fill::Done {
                break;
            }
        }
        assert_eq!(count as usize, n_records);
        std::hint::black_box(bytes);
        start.elapsed()
    };
    let count_bytes = runtime.load(guest("count_bytes")).unwrap();
    let wasm = || {
        let start = Instant::now();
        let out = count_bytes.run(&spec, 1, Box::new(VecSource::new(records.clone()))).unwrap();
        assert_eq!(out.records_in as usize, n_records);
        start.elapsed()
    };
    // Interleave the two so that load on the machine hits both alike.
    let (mut best_native, mut best_wasm) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        best_native = best_native.min(native());
        best_wasm = best_wasm.min(wasm());
    }
    let (native, wasm) = (best_native, best_wasm);
    let rate = |d: Duration| (n_records as f64 / d.as_secs_f64(), payload as f64 / d.as_secs_f64() / 1e6);
    let (nr, nm) = rate(native);
    let (wr, wm) = rate(wasm);
    println!("trivial sink over {n_records} records ({:.1} MB of keys and values), best of 5, interleaved:", payload as f64 / 1e6);
    println!("  native Rust      {:>8.1} ms  {:>12.0} records/s  {:>8.1} MB/s", native.as_secs_f64() * 1e3, nr, nm);
    println!("  Wasm component   {:>8.1} ms  {:>12.0} records/s  {:>8.1} MB/s", wasm.as_secs_f64() * 1e3, wr, wm);
    println!("  Wasm / native throughput: {:.2}x", wr / nr);
}
