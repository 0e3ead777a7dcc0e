//! The same batch gives byte-identical output, run after run, alone or
//! concurrently; clock and random are derived from the batch identity.

use crate::harness::*;
use serde_json::Value;
use sluice::Limits;

const ORDERS: &[&str] = &[
    r#"{"order_id":"o-1","customer":"c-1","amount_cents":100,"status":"new"}"#,
    r#"{"order_id":"o-2","customer":"c-2","amount_cents":250,"status":"new"}"#,
    r#"{"order_id":"o-1","customer":"c-1","amount_cents":100,"status":"paid"}"#,
];

#[test]
fn same_batch_same_digest_sequentially_and_concurrently() {
    let h = harness(Limits::default());
    for guest in ["orders-upsert", "append-events-arrow", "clock-and-random"] {
        let sink = h.load(guest);
        let sequential: Vec<String> = (0..3).map(|_| run(&sink, 5, ORDERS).unwrap().digest).collect();
        let concurrent: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(|| run(&sink, 5, ORDERS).unwrap().digest)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(sequential.iter().chain(&concurrent).all(|d| *d == sequential[0]), "{guest}: {sequential:?} {concurrent:?}");
        let other_batch = run(&sink, 6, ORDERS).unwrap().digest;
        if guest == "clock-and-random" {
            assert_ne!(other_batch, sequential[0], "clock and random differ per batch id");
        } else {
            assert_eq!(other_batch, sequential[0], "{guest}: the output depends only on the records");
        }
    }
}

fn env_row(h: &Harness, batch: u64) -> Value {
    let out = run(&h.load("clock-and-random"), batch, &["x"]).unwrap();
    rows(&out, "env").remove(0)
}

#[test]
fn clock_and_random_are_fixed_per_batch_and_differ_between_batches() {
    let h = harness(Limits::default());
    let a = env_row(&h, 10);
    assert_eq!(a, env_row(&h, 10), "identical on every run");
    let b = env_row(&h, 11);
    for field in ["wall_ns", "random", "rand_u64"] {
        assert_ne!(a[field], b[field], "{field} must differ for another batch id");
    }
    // The wall clock is the planned timestamp (batch 10 → 1_700_000_010_000 ms),
    // advanced only by the virtual clock's microsecond steps.
    let wall = a["wall_ns"].as_u64().unwrap();
    let planned_ns = 1_700_000_010_000u64 * 1_000_000;
    assert!((planned_ns..planned_ns + 1_000_000).contains(&wall), "wall clock {wall} vs planned {planned_ns}");
    // The monotonic clock moves forward and is virtual: identical readings.
    let mono: Vec<u64> = a["mono_ns"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(mono.windows(2).all(|w| w[0] < w[1]), "{mono:?}");
}
