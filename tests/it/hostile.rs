//! Hostile sinks are contained: each misbehaviour ends its batch with the
//! right typed error, within its limit, and the next batch runs normally on
//! the same runtime.

use crate::harness::*;
use sluice::{BatchError, Limit, Limits};

fn small_limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        fuel: 2_000_000_000,
        deadline_ms: 20_000,
        output_rows: 1000,
        log_lines: 500,
        log_bytes: 64 << 10,
        stack_bytes: 256 << 10,
        ..Limits::default()
    }
}

fn expect_limit(h: &Harness, behaviour: &str, limit: Limit) {
    let sink = h.load("hostile");
    let failure = run(&sink, 1, &[behaviour]).unwrap_err();
    match &failure.error {
        BatchError::Limit(e) => assert_eq!(e.limit, limit, "{behaviour}: {failure}"),
        other => panic!("{behaviour}: expected {limit:?}, got {other:?}"),
    }
    let expected_key = format!("({} = {})", limit.key(), limit.value(h.runtime.limits()));
    assert!(failure.to_string().contains(&expected_key), "{failure}");
    assert!(!failure.error.retryable() || limit == Limit::DeadlineMs);
    still_healthy(h);
}

/// The same runtime runs a well-behaved batch right after.
fn still_healthy(h: &Harness) {
    let out = run(&h.load("hostile"), 2, &["ok"]).expect("the next batch runs normally");
    assert_eq!(out.records_in, 1);
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    expect_limit(&harness(small_limits()), "loop", Limit::Fuel);
}

#[test]
fn infinite_loop_hits_the_deadline_when_fuel_is_plentiful() {
    let h = harness(Limits { fuel: u64::MAX / 2, deadline_ms: 300, ..small_limits() });
    expect_limit(&h, "loop", Limit::DeadlineMs);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    expect_limit(&harness(small_limits()), "alloc", Limit::MemoryBytes);
}

#[test]
fn deep_recursion_hits_the_stack_limit() {
    expect_limit(&harness(small_limits()), "recurse", Limit::StackBytes);
}

#[test]
fn output_flood_hits_the_row_limit() {
    expect_limit(&harness(small_limits()), "flood-output", Limit::OutputRows);
}

#[test]
fn output_flood_hits_the_byte_limit() {
    let h = harness(Limits { output_rows: u64::MAX, output_bytes: 64 << 10, ..small_limits() });
    expect_limit(&h, "flood-output", Limit::OutputBytes);
}

#[test]
fn log_flood_hits_the_line_limit() {
    expect_limit(&harness(small_limits()), "flood-log", Limit::LogLines);
}

#[test]
fn stdout_flood_hits_a_log_limit_and_is_captured() {
    let h = harness(Limits { log_lines: 1_000_000, ..small_limits() });
    expect_limit(&h, "flood-stdout", Limit::LogBytes);
    let failure = run(&h.load("hostile"), 1, &["flood-stdout"]).unwrap_err();
    let captured: u64 = failure.log.iter().map(|l| l.message.len() as u64 + 1).sum();
    assert!(failure.log.iter().all(|l| l.source == sluice::LogSource::Stdout && l.message == "flooding stdout"));
    assert!(captured <= 64 << 10 && captured > 60 << 10, "the log keeps output up to the cap: {captured} bytes");
}

#[test]
fn trap_and_panic_are_reported_as_traps_with_stderr() {
    let h = harness(small_limits());
    let sink = h.load("hostile");
    let trap = run(&sink, 1, &["trap"]).unwrap_err();
    assert!(matches!(trap.error, BatchError::Trap { .. }), "{trap}");
    assert!(trap.to_string().contains("unreachable"), "{trap}");
    let panic = run(&sink, 1, &["panic"]).unwrap_err();
    assert!(matches!(panic.error, BatchError::Trap { .. }), "{panic}");
    assert!(panic.to_string().contains("sink panicked on purpose"), "the panic message reaches the error: {panic}");
    assert!(panic.kept_scratch.as_ref().is_some_and(|p| p.is_dir()), "failed attempts keep /staging");
    still_healthy(&h);
}

#[test]
fn hostile_batches_in_parallel_do_not_disturb_a_good_one() {
    let h = harness(small_limits());
    let sink = h.load("hostile");
    std::thread::scope(|s| {
        let bad: Vec<_> = ["loop", "alloc", "flood-log", "panic"]
            .into_iter()
            .map(|b| {
                let sink = sink.clone();
                s.spawn(move || run(&sink, 1, &[b]).unwrap_err())
            })
            .collect();
        let good = run(&sink, 2, &["ok"]).unwrap();
        assert_eq!(good.records_in, 1);
        for b in bad {
            b.join().unwrap();
        }
    });
}

/// Holds its batch inside the sink until told to let go.
struct HeldSource {
    inner: sluice::VecSource,
    started: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl sluice::RecordSource for HeldSource {
    fn fill(&mut self, chunk: &mut sluice::ChunkBuilder) -> Result<sluice::Fill, sluice::SourceError> {
        let _ = self.started.send(());
        let _ = self.release.recv();
        self.inner.fill(chunk)
    }
}

#[test]
fn a_full_instance_pool_is_a_retryable_capacity_error() {
    let h = harness_with(small_limits(), |b| b.with_max_concurrent_batches(1));
    let sink = h.load("hostile");
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            let recs = records(&["ok"]);
            let source = HeldSource { inner: sluice::VecSource::new(recs.clone()), started: started_tx, release: release_rx };
            sink.run(&spec("p", 1, &recs), 1, Box::new(source))
        });
        started.recv().unwrap(); // batch 1 is inside its instance
        let err = run(&sink, 2, &["ok"]).unwrap_err();
        assert!(matches!(err.error, BatchError::Capacity(_)), "{err}");
        assert!(err.error.retryable() && err.error.class() == sluice::ErrorClass::External);
        assert!(err.to_string().contains("raise max_concurrent_batches"), "{err}");
        release.send(()).unwrap();
        held.join().unwrap().expect("the held batch finishes normally");
    });
    run(&sink, 3, &["ok"]).expect("the slot is free again");
}
