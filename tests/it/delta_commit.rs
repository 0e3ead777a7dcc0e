//! Batch outputs land in Delta tables exactly once: appends and upserts,
//! `txn(app_id, batch)` makes a repeated commit a no-op, schema problems fail
//! before anything is written, and racing writers commit a batch once.

use crate::harness::*;
use serde_json::{Value, json};
use sluice::commit::{ColumnConfig, ColumnType, CommitError, DeltaCommitter, TableConfig};
use sluice::{BatchOutput, FileFormat, Limits, OwnedRecord, StagedOp, StagedRows, VecSource};
use std::path::Path;

pub fn col(name: &str, data_type: ColumnType) -> ColumnConfig {
    ColumnConfig { name: name.into(), data_type, nullable: true }
}

pub fn orders_table(dir: &Path) -> TableConfig {
    TableConfig {
        name: "orders".into(),
        path: dir.join("orders").into(),
        storage_options: Default::default(),
        maintenance: Default::default(),
        partition_by: vec![],
        columns: vec![
            col("order_id", ColumnType::String),
            col("customer", ColumnType::String),
            col("amount_cents", ColumnType::Long),
            col("status", ColumnType::String),
            col("updated_at_ms", ColumnType::Long),
            col("source_offset", ColumnType::Long),
        ],
        keys: vec!["order_id".into()],
    }
}

fn events_table(dir: &Path) -> TableConfig {
    TableConfig {
        name: "events".into(),
        path: dir.join("events").into(),
        storage_options: Default::default(),
        maintenance: Default::default(),
        partition_by: vec![],
        columns: vec![
            col("topic", ColumnType::String),
            col("partition", ColumnType::Integer),
            col("offset", ColumnType::Long),
            col("timestamp_ms", ColumnType::Long),
            col("key", ColumnType::String),
            col("value", ColumnType::String),
        ],
        keys: vec![],
    }
}

/// Rows of a Delta table, read back through DataFusion SQL, ordered.
fn read_table(path: &Path, order_by: &str) -> Vec<Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(std::path::absolute(path).unwrap()).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap()).unwrap();
        let batches = ctx.sql(&format!("SELECT * FROM t ORDER BY {order_by}")).await.unwrap().collect().await.unwrap();
        let mut writer = arrow_json::ArrayWriter::new(Vec::new());
        for b in &batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
        let bytes = writer.into_inner();
        if bytes.is_empty() { Vec::new() } else { serde_json::from_slice(&bytes).unwrap() }
    })
}

fn order(id: &str, status: &str) -> String {
    format!(r#"{{"order_id":"{id}","customer":"c","amount_cents":100,"status":"{status}"}}"#)
}

fn orders_batch(h: &Harness, batch_id: u64, orders: &[String]) -> BatchOutput {
    let values: Vec<&str> = orders.iter().map(String::as_str).collect();
    run(&h.load("orders-upsert"), batch_id, &values).unwrap()
}

#[test]
fn upserts_merge_on_the_key_and_a_repeated_commit_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let committer = DeltaCommitter::new("pipeline-1", vec![orders_table(dir.path())]).unwrap();
    committer.ensure_tables().unwrap();

    let b0 = orders_batch(&h, 0, &[order("o-1", "new"), order("o-2", "new")]);
    let v0 = committer.commit(&b0).unwrap()["orders"];
    let b1 = orders_batch(&h, 1, &[order("o-1", "paid"), order("o-3", "new"), order("o-3", "shipped")]);
    let v1 = committer.commit(&b1).unwrap()["orders"];
    assert!(v1 > v0);
    let rows = read_table(&dir.path().join("orders"), "order_id");
    let statuses: Vec<(&str, &str)> = rows.iter().map(|r| (r["order_id"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(statuses, [("o-1", "paid"), ("o-2", "new"), ("o-3", "shipped")]);

    // A crash after the Delta commit and before the commit log: the batch
    // is committed again. txn(app, 1) makes it a no-op.
    assert_eq!(committer.commit(&b1).unwrap()["orders"], v1);
    assert_eq!(read_table(&dir.path().join("orders"), "order_id"), rows);
    assert_eq!(committer.committed_batches().unwrap()["orders"], Some(1));
}

/// The last staged row for a key wins across stage calls too, not only
/// within one: MERGE sees one source row per key.
#[test]
fn an_upsert_staged_in_two_calls_keeps_the_last_row_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let committer = DeltaCommitter::new("pipeline-1", vec![orders_table(dir.path())]).unwrap();
    committer.ensure_tables().unwrap();
    committer.commit(&orders_batch(&h, 0, &[order("o-1", "new")])).unwrap();

    let mut b1 = orders_batch(&h, 1, &[order("o-1", "paid"), order("o-2", "new")]);
    let first = b1.ops[0].clone();
    let StagedRows::JsonLines(lines) = &first.rows else { panic!("orders-upsert stages JSON lines") };
    // A second call restaging o-1 (an existing key) and o-2 (a new one).
    let later = String::from_utf8(lines.to_vec()).unwrap().replace("\"paid\"", "\"refunded\"").replace("\"new\"", "\"shipped\"");
    b1.ops.push(StagedOp { rows: StagedRows::JsonLines(later.into_bytes().into()), ..first });
    committer.commit(&b1).unwrap();

    let rows = read_table(&dir.path().join("orders"), "order_id");
    let statuses: Vec<(&str, &str)> = rows.iter().map(|r| (r["order_id"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(statuses, [("o-1", "refunded"), ("o-2", "shipped")]);
}

#[test]
fn appends_land_once_and_every_declared_table_records_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let committer = DeltaCommitter::new("p", vec![events_table(dir.path()), orders_table(dir.path())]).unwrap();
    let out = run(&h.load("append-events"), 0, &["a", "b", "c"]).unwrap();
    committer.commit(&out).unwrap();
    committer.commit(&out).unwrap();
    let rows = read_table(&dir.path().join("events"), "\"offset\"");
    assert_eq!(rows.iter().map(|r| r["value"].as_str().unwrap()).collect::<Vec<_>>(), ["a", "b", "c"]);
    // `orders` got no rows, yet it is at batch 0 too.
    let at = committer.committed_batches().unwrap();
    assert_eq!((at["events"], at["orders"]), (Some(0), Some(0)));
}

#[test]
fn rows_that_do_not_fit_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let mut table = orders_table(dir.path());
    table.columns.retain(|c| c.name != "status");
    let committer = DeltaCommitter::new("p", vec![table]).unwrap();
    let before = committer.ensure_tables().unwrap()["orders"];
    let err = committer.commit(&orders_batch(&h, 0, &[order("o-1", "new")])).unwrap_err();
    assert!(matches!(err, CommitError::Schema { .. }), "{err}");
    assert!(err.to_string().starts_with("table `orders`: row 0 ({\"amount_cents\":100,"), "names the row: {err}");
    assert!(err.to_string().contains("status"), "names the column: {err}");
    assert_eq!(committer.ensure_tables().unwrap()["orders"], before, "nothing was committed");
    assert_eq!(committer.committed_batches().unwrap()["orders"], None);
}

#[test]
fn an_existing_table_with_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    DeltaCommitter::new("p", vec![orders_table(dir.path())]).unwrap().ensure_tables().unwrap();
    let mut changed = orders_table(dir.path());
    changed.columns[2].data_type = ColumnType::String;
    let err = DeltaCommitter::new("p", vec![changed]).unwrap().ensure_tables().unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `orders`: column `amount_cents` is long in the existing table but declared string. A type cannot be \
         changed in place: declare the table's type again, or write to a new column (or a new table) of the new type; \
         nothing was committed"
    );
}

#[test]
fn two_writers_racing_on_a_batch_commit_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let out = run(&h.load("append-events"), 0, &["x", "y"]).unwrap();
    DeltaCommitter::new("p", vec![events_table(dir.path())]).unwrap().ensure_tables().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let out = out.clone();
                let table = events_table(dir.path());
                s.spawn(move || DeltaCommitter::new("p", vec![table]).unwrap().commit(&out).map(|_| ()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().any(Result::is_ok), "{results:?}");
    let rows = read_table(&dir.path().join("events"), "\"offset\"");
    assert_eq!(rows.len(), 2, "batch 0 landed exactly once: {rows:?} ({results:?})");
}

/// A committer keeps its tables open between batches; a batch another host
/// committed meanwhile is still seen, by the check before the sink and by
/// the commit, and never lands twice.
#[test]
fn a_committer_keeping_tables_open_sees_another_hosts_commit() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let sink = h.load("append-events");
    let ours = DeltaCommitter::new("p", vec![events_table(dir.path())]).unwrap();
    ours.commit(&run(&sink, 0, &["a"]).unwrap()).unwrap();
    assert_eq!(ours.committed_batches().unwrap()["events"], Some(0));

    let b1 = run(&sink, 1, &["b"]).unwrap();
    let theirs = DeltaCommitter::new("p", vec![events_table(dir.path())]).unwrap();
    let v1 = theirs.commit(&b1).unwrap()["events"];
    assert_eq!(ours.committed_batches().unwrap()["events"], Some(1), "the check sees the other host's batch");
    assert_eq!(ours.commit(&b1).unwrap()["events"], v1, "and the commit skips it");
    let rows = read_table(&dir.path().join("events"), "value");
    assert_eq!(rows.iter().map(|r| r["value"].as_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
}

/// Records with what a row encoder can get wrong: a null key, a value that
/// is not UTF-8, a null value, and text that JSON must escape.
fn awkward_records() -> Vec<OwnedRecord> {
    let record = |offset: i64, key: Option<&[u8]>, value: Option<&[u8]>| OwnedRecord {
        topic: "events".into(),
        partition: 3,
        offset,
        timestamp_ms: 1_700_000_000_000 + offset,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        ..Default::default()
    };
    vec![
        record(10, Some(b"k-1"), Some(br#"{"id":1}"#)),
        record(11, None, Some(b"no key")),
        record(12, Some(b"k-3"), Some(b"caf\xe9 \xff\xfe")),
        record(13, Some(b"k-4"), None),
        record(14, Some("\u{e9}\"\n\t\u{1}".as_bytes()), Some("\u{1f600} \\ \u{7f}".as_bytes())),
    ]
}

#[test]
fn the_arrow_sink_lands_the_same_rows_as_the_json_sink() {
    let dir = tempfile::tempdir().unwrap();
    // Two records per chunk: the Arrow sink stages three files in one batch.
    let h = harness(Limits { chunk_records: 2, ..Limits::default() });
    let records = awkward_records();
    let spec = spec("p", 0, &records);
    let run = |sink: &str| h.load(sink).run(&spec, 1, Box::new(VecSource::new(records.clone()))).unwrap();

    let arrow = run("append-events-arrow");
    assert_eq!(arrow.ops.iter().map(|op| op.rows.format()).collect::<Vec<_>>(), [FileFormat::ArrowIpc; 3]);
    assert_eq!(arrow.tables()[0].appended_rows, 5);
    let again = run("append-events-arrow");
    assert_eq!(again.digest, arrow.digest, "the same batch gives the same output digest");
    assert_eq!(again.ops, arrow.ops);

    let mut tables = Vec::new();
    for (sink, output) in [("append-events", run("append-events")), ("append-events-arrow", arrow)] {
        let table = events_table(&dir.path().join(sink));
        let path = table.path.local().unwrap().to_owned();
        DeltaCommitter::new("p", vec![table])
            .unwrap()
            .commit(&output)
            .unwrap();
        let mut back = read_delta(&path, "p");
        assert_eq!(back.txn, Some(0), "{sink}");
        back.rows.sort_by_key(|r| r["offset"].as_i64());
        tables.push(back.rows);
    }
    assert_eq!(tables[1], tables[0], "the Arrow sink's table equals the JSON sink's");
    let rows = &tables[1];
    let column = |name: &str| rows.iter().map(|r| r[name].clone()).collect::<Vec<_>>();
    assert_eq!(column("offset"), [10, 11, 12, 13, 14]);
    assert_eq!(column("partition"), [3, 3, 3, 3, 3]);
    assert_eq!(column("topic"), ["events"; 5]);
    assert_eq!(column("key"), [json!("k-1"), Value::Null, json!("k-3"), json!("k-4"), json!("\u{e9}\"\n\t\u{1}")]);
    assert_eq!(
        column("value"),
        [json!(r#"{"id":1}"#), json!("no key"), json!("caf\u{fffd} \u{fffd}\u{fffd}"), Value::Null, json!("\u{1f600} \\ \u{7f}")]
    );
    assert_eq!(rows[4]["timestamp_ms"], 1_700_000_000_014i64);
}

/// The check before every commit: a table past the batch, one holding it
/// with other ranges, and one that lost a batch it held earlier in the run
/// (its log cut back while the committer kept it open) each stop the
/// commit, naming table, version and batch, with nothing written.
#[test]
fn a_table_ahead_disagreeing_or_behind_stops_the_commit_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(Limits::default());
    let sink = h.load("append-events");
    let committer = DeltaCommitter::new("p", vec![events_table(dir.path())]).unwrap();
    committer.commit(&run(&sink, 0, &["a"]).unwrap()).unwrap();
    committer.commit(&run(&sink, 1, &["b"]).unwrap()).unwrap();

    let err = committer.commit(&run(&sink, 0, &["a"]).unwrap()).unwrap_err();
    assert!(matches!(err, CommitError::Ahead { .. }), "{err}");
    assert!(err.to_string().starts_with("table `events` (Delta version 2) already holds batch 1 of this pipeline, past batch 0"), "{err}");
    let err = committer.commit(&run(&sink, 1, &["b", "c"]).unwrap()).unwrap_err();
    assert!(
        err.to_string().starts_with("table `events` (Delta version 2) holds batch 1 with source ranges t/0 0..1 where this run has t/0 0..2"),
        "{err}"
    );

    // Batch 1's commit is lost under the open committer.
    std::fs::remove_file(dir.path().join("events/_delta_log/00000000000000000002.json")).unwrap();
    let err = committer.commit(&run(&sink, 2, &["c"]).unwrap()).unwrap_err();
    assert!(matches!(err, CommitError::Behind { .. }), "{err}");
    assert!(err.to_string().starts_with("table `events` (Delta version 1) now holds batch 0 but held batch 1 earlier in this run"), "{err}");
    let rows = read_table(&dir.path().join("events"), "value");
    assert_eq!(rows.iter().map(|r| r["value"].as_str().unwrap()).collect::<Vec<_>>(), ["a"], "nothing was written");
}
