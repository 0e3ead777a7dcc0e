//! Per-language figures for the orders-upsert sink (Rust, Python, JS). They
//! print figures; nothing here passes or fails.
//!
//! For each language's component:
//! 1. its size;
//! 2. first load on an empty compiled-component cache (validate, compile
//!    with Cranelift, write the cache entry, link), and a later load by
//!    another runtime that finds it in the cache (mmap, no compilation);
//! 3. per batch, from the cached component: a fresh instance (p50/p90) and
//!    the whole attempt over a 1-record batch (p50), plus the fuel and the
//!    least `limits.memory_bytes` an almost empty batch needs, against the
//!    defaults;
//! 4. throughput over `SLUICE_BENCH_RECORDS` orders (default 1M; one in ten
//!    order ids distinct, so the sink keeps 100k rows), best of 3, with fuel
//!    and deadline lifted so the figure is the sink's speed.
//!
//! `make bench-languages` builds the Python and JS components first and sets
//! `SLUICE_POLYGLOT_DIR`; `SLUICE_BENCH_LANGS=python,js` picks languages.

use sluice::{BatchError, BatchSpec, Limit, Limits, OwnedRecord, Runtime, RuntimeBuilder, Sink, VecSource};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn components() -> Vec<(&'static str, PathBuf)> {
    let polyglot = PathBuf::from(
        std::env::var_os("SLUICE_POLYGLOT_DIR").expect("SLUICE_POLYGLOT_DIR is not set: run `make bench-languages`"),
    );
    vec![
        ("rust", PathBuf::from(env!("SLUICE_GUEST_DIR")).join("orders_upsert.wasm")),
        ("python", polyglot.join("python_orders_upsert.wasm")),
        ("js", polyglot.join("js_orders_upsert.wasm")),
    ]
}

fn runtime(scratch: &Path, cache: &Path, limits: Limits) -> Runtime {
    RuntimeBuilder::new(scratch).with_limits(limits).with_cache_dir(cache).build().unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn orders(n: usize) -> Arc<[OwnedRecord]> {
    let statuses = ["new", "paid", "shipped", "cancelled"];
    (0..n)
        .map(|i| OwnedRecord {
            topic: "orders".into(),
            partition: (i % 4) as i32,
            offset: (i / 4) as i64,
            timestamp_ms: 1_763_900_000_000 + i as i64,
            key: Some(format!("o-{}", i % (n / 10).max(1)).into_bytes()),
            value: Some(
                format!(
                    r#"{{"order_id":"o-{}","customer":"c-{}","amount_cents":{},"status":"{}"}}"#,
                    i % (n / 10).max(1),
                    i % 997,
                    (i * 37) % 100_000,
                    statuses[i % 4]
                )
                .into_bytes(),
            ),
            headers: Vec::new(),
        })
        .collect::<Vec<_>>()
        .into()
}

fn run(sink: &Sink, batch_id: u64, records: &Arc<[OwnedRecord]>) -> Result<sluice::BatchOutput, sluice::BatchFailure> {
    let spec = BatchSpec {
        pipeline_id: "bench".into(),
        batch_id,
        planned_timestamp_ms: 0,
        ranges: BatchSpec::ranges_covering(records),
    };
    sink.run(&spec, 1, Box::new(VecSource::new(records.clone())))
}

/// The least memory limit (1 MiB steps) under which a one-record batch runs.
fn least_memory(path: &Path, scratch: &Path, cache: &Path, one: &Arc<[OwnedRecord]>) -> u64 {
    let (mut lo, mut hi) = (1u64, 256u64); // MiB: lo fails (or is untried), hi works
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        let rt = runtime(scratch, cache, Limits { memory_bytes: mid << 20, ..Limits::default() });
        // A component whose initial memory is past the limit fails to instantiate.
        let fits = rt.load(path).map(|s| run(&s, 1, one).is_ok()).unwrap_or(false);
        if fits { hi = mid } else { lo = mid }
    }
    hi
}

fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let scratch = tempfile::tempdir().unwrap();
    let defaults = Limits::default();
    let one = orders(1);
    let many = orders(n);
    let payload: usize = many.iter().map(|r| r.value.as_ref().unwrap().len()).sum();
    println!(
        "orders-upsert per language; {n} records ({:.1} MB of values), default limits: memory {} MiB, fuel {:.0e}, deadline {} s",
        payload as f64 / 1e6,
        defaults.memory_bytes >> 20,
        defaults.fuel as f64,
        defaults.deadline_ms / 1000
    );
    // The first language's digest over the big batch: the others must match.
    let mut reference: Option<(&str, String)> = None;
    // SLUICE_BENCH_LANGS=python,js measures only those.
    let only = std::env::var("SLUICE_BENCH_LANGS").ok();
    for (lang, path) in components() {
        if only.as_ref().is_some_and(|o| !o.split(',').any(|l| l == lang)) {
            continue;
        }
        let size = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
        let cache = scratch.path().join(format!("cache-{lang}"));

        // First load: empty cache, so this compiles.
        let rt = runtime(scratch.path(), &cache, defaults.clone());
        let start = Instant::now();
        rt.load(&path).unwrap();
        let first_load = start.elapsed();
        // A new runtime (as after a restart) loads from the cache.
        let rt = runtime(scratch.path(), &cache, Limits { fuel: u64::MAX / 4, deadline_ms: 600_000, ..defaults.clone() });
        let start = Instant::now();
        let sink = rt.load(&path).unwrap();
        let cached_load = start.elapsed();

        // Per batch: fresh instance + a one-record batch.
        let mut inst = Vec::new();
        let mut whole = Vec::new();
        let mut fuel = 0;
        for i in 0..220u64 {
            let start = Instant::now();
            let out = run(&sink, i, &one).unwrap();
            if i >= 20 {
                whole.push(start.elapsed());
                inst.push(out.timings.instantiate);
                fuel = out.fuel_used;
            }
        }
        inst.sort();
        whole.sort();
        let memory = least_memory(&path, scratch.path(), &cache, &one);

        // Throughput, with the default memory limit when it suffices.
        let mut best = Duration::MAX;
        let mut big_fuel = 0;
        let mut digest = String::new();
        let mut note = String::new();
        let mut sink_big = sink.clone();
        for attempt in 0..3 {
            let start = Instant::now();
            match run(&sink_big, 100 + attempt, &many) {
                Ok(out) => {
                    best = best.min(start.elapsed());
                    big_fuel = out.fuel_used;
                    digest = out.digest;
                    assert_eq!(out.records_in as usize, n);
                }
                // Out of memory shows as the typed limit, or (SpiderMonkey)
                // as an abort when its allocator gives up first.
                Err(f) if note.is_empty()
                    && (matches!(f.error, BatchError::Limit(ref l) if l.limit == Limit::MemoryBytes)
                        || f.to_string().contains("mozalloc_abort")) =>
                {
                    note = format!(
                        " (with the default {} MiB of memory: \"{f}\"; measured with 2 GiB)",
                        defaults.memory_bytes >> 20
                    );
                    let rt = runtime(
                        scratch.path(),
                        &cache,
                        Limits { fuel: u64::MAX / 4, deadline_ms: 600_000, memory_bytes: 2 << 30, ..defaults.clone() },
                    );
                    sink_big = rt.load(&path).unwrap();
                }
                Err(f) => panic!("{lang}: {f}"),
            }
        }
        println!("{lang}:");
        println!("  component size            {:>8.1} MB", size as f64 / 1e6);
        println!("  first load (compile)      {:>10}   cached load {}", ms(first_load), ms(cached_load));
        println!(
            "  fresh instance p50 / p90  {:>10} / {}   whole 1-record batch p50 {}",
            us(inst[inst.len() / 2]),
            us(inst[inst.len() * 9 / 10]),
            us(whole[whole.len() / 2])
        );
        println!("  1-record batch            fuel {fuel}, needs limits.memory_bytes >= {memory} MiB");
        if best == Duration::MAX {
            println!("  {n} records              did not finish{note}");
        } else {
            println!(
                "  {n} records          {:>10}   {:.0} records/s   {:.1} MB/s   fuel {:.2e} ({:.1}% of the default){note}",
                ms(best),
                n as f64 / best.as_secs_f64(),
                payload as f64 / best.as_secs_f64() / 1e6,
                big_fuel as f64,
                big_fuel as f64 * 100.0 / defaults.fuel as f64,
            );
            match &reference {
                None => reference = Some((lang, digest)),
                Some((first, d)) => {
                    let verdict = if *d == digest { "same as" } else { "DIFFERENT from" };
                    println!("  output digest             {verdict} {first}'s");
                }
            }
        }
    }
}
