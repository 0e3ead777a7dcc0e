//! The seed paper's incident (§3.4, §5.2), replayed against sluice: two
//! `foreachBatch` calls ran at once — a retry of batch N beside batch N+1 —
//! and shared one staging table, so each MERGE applied rows of the other
//! batch. Here the `orders-upsert` sink does the same thing (materialise to
//! `/staging/orders.jsonl`, then MERGE), replaying N while N+1 runs, both
//! provably inside the sink together; the table must end up holding exactly
//! N's upsert followed by N+1's, with no row from neither batch.

use crate::delta_commit::orders_table;
use crate::harness::*;
use sluice::commit::DeltaCommitter;
use sluice::{Limits, OwnedRecord, VecSource};
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

/// Orders `ids` on partition 0 from offset `first`, with `status`.
fn orders(first: i64, ids: &[u32], status: &str) -> Vec<OwnedRecord> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| OwnedRecord {
            topic: "orders".into(),
            partition: 0,
            offset: first + i as i64,
            timestamp_ms: 1_700_000_000_000 + first + i as i64,
            value: Some(format!(r#"{{"order_id":"o-{id}","customer":"c","amount_cents":{id},"status":"{status}"}}"#).into_bytes()),
            ..Default::default()
        })
        .collect()
}

#[test]
fn replaying_batch_n_beside_batch_n_plus_1_leaves_no_row_of_neither() {
    // N: orders 1..=60 paid. N+1: orders 41..=100 shipped (41..=60 overlap).
    let n_records = orders(0, &(1..=60).collect::<Vec<_>>(), "paid");
    let m_records = orders(60, &(41..=100).collect::<Vec<_>>(), "shipped");
    let (n, m) = (7, 8);
    // Small chunks: the sinks meet at the barrier before every chunk after
    // the first, so their staging writes interleave.
    let h = harness(Limits { chunk_records: 5, ..Limits::default() });
    let sink = h.load("orders-upsert");
    let first_run = sink.run(&spec("p", n, &n_records), 1, Box::new(VecSource::new(n_records.clone()))).unwrap();

    let barrier = Arc::new(Barrier::new(2));
    let (replay_n, run_m) = std::thread::scope(|s| {
        let go = |batch: u64, attempt: u32, recs: &Vec<OwnedRecord>| {
            let (sink, barrier, recs) = (sink.clone(), barrier.clone(), recs.clone());
            s.spawn(move || {
                let source = RendezvousSource { inner: VecSource::new(recs.clone()), barrier, first: true };
                sink.run(&spec("p", batch, &recs), attempt, Box::new(source)).unwrap()
            })
        };
        let replay = go(n, 2, &n_records);
        let next = go(m, 1, &m_records);
        (replay.join().unwrap(), next.join().unwrap())
    });
    assert_eq!(replay_n.digest, first_run.digest, "the replay of N is bit-identical to its first run");

    // Each output holds its own batch's records only.
    let offsets = |rows: &[serde_json::Value]| rows.iter().map(|r| r["source_offset"].as_i64().unwrap()).collect::<Vec<_>>();
    let staged_n = staged_file_rows(&replay_n);
    let staged_m = staged_file_rows(&run_m);
    assert!(offsets(&staged_n).iter().all(|o| (0..60).contains(o)), "N staged only N's records");
    assert!(offsets(&staged_m).iter().all(|o| (60..120).contains(o)), "N+1 staged only N+1's records");
    assert_eq!((staged_n.len(), staged_m.len()), (60, 60));

    let dir = tempfile::tempdir().unwrap();
    let committer = DeltaCommitter::new("p", vec![orders_table(dir.path())]).unwrap();
    committer.commit(&replay_n).unwrap();
    committer.commit(&run_m).unwrap();

    // What the table must hold: N's upsert, then N+1's, computed here.
    let mut expected: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for r in staged_n.iter().chain(&staged_m) {
        expected.insert(r["order_id"].as_str().unwrap().to_owned(), (r["status"].as_str().unwrap().to_owned(), r["source_offset"].as_i64().unwrap()));
    }
    let rows = read_delta(&dir.path().join("orders"), "p");
    let actual: BTreeMap<String, (String, i64)> = rows
        .rows
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_owned(), (r["status"].as_str().unwrap().to_owned(), r["source_offset"].as_i64().unwrap())))
        .collect();
    assert_eq!(rows.rows.len(), 100, "one row per order");
    assert_eq!(actual, expected);
    assert_eq!(rows.txn, Some(m as i64));
    assert_eq!(actual["o-50"], ("shipped".to_owned(), 60 + 9), "an overlapping order holds N+1's update");
    assert_eq!(actual["o-10"], ("paid".to_owned(), 9), "an order only N has keeps N's row");
}

/// The rows of the file the orders sink staged (its only op).
fn staged_file_rows(output: &sluice::BatchOutput) -> Vec<serde_json::Value> {
    assert_eq!(output.ops.len(), 1);
    output.ops[0]
        .rows
        .bytes()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}
