//! Two batches, or two attempts of one batch, running at the same time never
//! see each other's `/staging`.

use crate::harness::*;
use sluice::{Limits, VecSource};
use std::sync::{Arc, Barrier};

/// Both runs write `same.txt`, meet at a barrier (so both are alive and
/// have written), then read it back and list `/staging`.
fn run_pair(pairs: [(u64, u32); 2]) {
    let h = harness(Limits { chunk_records: 2, ..Limits::default() });
    let sink = h.load("sandbox-probe");
    let barrier = Arc::new(Barrier::new(2));
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(i, &(batch, attempt))| {
                let sink = sink.clone();
                let barrier = barrier.clone();
                s.spawn(move || {
                    let content = format!("written-by-run-{i}");
                    let cmds = [format!("write same.txt {content}"), "list /staging".into(), "read same.txt".into(), "list .".into()];
                    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
                    let recs = records(&cmds);
                    let src = RendezvousSource { inner: VecSource::new(recs.clone()), barrier, first: true };
                    (content, sink.run(&spec("p", batch, &recs), attempt, Box::new(src)).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (content, output) in &outputs {
        let p = probes(output);
        assert!(probe(&p, &format!("write same.txt {content}")).ok);
        assert_eq!(probe(&p, "read same.txt").result, *content, "each run reads back only its own data");
        assert_eq!(probe(&p, "list /staging").result, "same.txt");
        assert_eq!(probe(&p, "list .").result, "same.txt", "nothing else is visible");
    }
    // Both directories are gone after success.
    assert_eq!(std::fs::read_dir(h.scratch.path().join("live")).unwrap().count(), 0);
}

#[test]
fn concurrent_batches_have_private_staging() {
    run_pair([(1, 1), (2, 1)]);
}

#[test]
fn concurrent_attempts_of_one_batch_have_private_staging() {
    run_pair([(7, 1), (7, 2)]);
}

#[test]
fn the_same_attempt_run_twice_at_once_has_private_staging() {
    // A replay of batch 7 running while the pipeline runs batch 7.
    run_pair([(7, 1), (7, 1)]);
}

#[test]
fn a_retry_starts_with_empty_staging() {
    let h = harness(Limits::default());
    let sink = h.load("sandbox-probe");
    let first = run(&sink, 3, &["write leftover.txt x", "list ."]).unwrap();
    assert_eq!(probe(&probes(&first), "list .").result, "leftover.txt");
    let retry = run(&sink, 3, &["list .", "read leftover.txt"]).unwrap();
    let p = probes(&retry);
    assert_eq!(probe(&p, "list .").result, "");
    assert!(!probe(&p, "read leftover.txt").ok);
}
