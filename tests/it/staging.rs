//! Output staging: what a sink stages is validated, snapshotted and
//! canonical; the example sinks stage what they promise.

use crate::harness::*;
use serde_json::{Value, json};
use sluice::{BatchError, Limits, WriteMode};

#[test]
fn orders_upsert_materialises_and_upserts_the_last_version_of_each_order() {
    let h = harness(Limits::default());
    let out = run(
        &h.load("orders-upsert"),
        4,
        &[
            r#"{"order_id":"o-1","customer":"c-1","amount_cents":100,"status":"new"}"#,
            r#"{"order_id":"o-2","customer":"c-2","amount_cents":250,"status":"new"}"#,
            r#"{"order_id":"o-1","customer":"c-1","amount_cents":100,"status":"paid"}"#,
        ],
    )
    .unwrap();
    assert_eq!(out.ops.len(), 1);
    assert_eq!(out.ops[0].mode, WriteMode::Upsert { keys: vec!["order_id".into()] });
    assert_eq!(
        rows(&out, "orders"),
        [
            json!({"order_id":"o-1","customer":"c-1","amount_cents":100,"status":"paid","updated_at_ms":1_700_000_000_002i64,"source_offset":2}),
            json!({"order_id":"o-2","customer":"c-2","amount_cents":250,"status":"new","updated_at_ms":1_700_000_000_001i64,"source_offset":1}),
        ]
    );
    let summary = out.tables();
    assert_eq!((summary[0].table.as_str(), summary[0].upserted_rows), ("orders", 2));
}

#[test]
fn orders_upsert_rejects_a_malformed_record_naming_it() {
    let h = harness(Limits::default());
    let err = run(&h.load("orders-upsert"), 4, &[r#"{"order_id":"o-1","customer":"c","amount_cents":1,"status":"new"}"#, "not json"])
        .unwrap_err();
    assert!(matches!(err.error, BatchError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("topic t partition 0 offset 1: not an order"), "names the record: {err}");
    assert!(!err.error.retryable());
}

#[test]
fn staging_to_an_undeclared_table_is_refused() {
    let h = harness_with(Limits::default(), |b| b.with_tables(["events"]));
    let err = run(&h.load("orders-upsert"), 1, &[r#"{"order_id":"o-1","customer":"c","amount_cents":1,"status":"new"}"#])
        .unwrap_err();
    assert!(err.to_string().contains("table `orders` is not declared by the pipeline (declared: events)"), "{err}");
}

#[test]
fn append_events_appends_one_row_per_record() {
    let h = harness(Limits { chunk_records: 2, ..Limits::default() });
    let out = run(&h.load("append-events"), 1, &["a", "b", "c"]).unwrap();
    let rows = rows(&out, "events");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2], json!({"topic":"t","partition":0,"offset":2,"timestamp_ms":1_700_000_000_002i64,"key":null,"value":"c"}));
    assert_eq!(out.tables()[0].appended_rows, 3);
}

#[test]
fn append_events_writes_values_with_quotes_escapes_and_unicode_as_json_strings() {
    let h = harness(Limits::default());
    let values = [
        "say \"hi\" \\ now\n",
        "tab\there\u{1}, then more than eight bytes\u{1f}",
        "héllo wörld ✓ ünïcode",
        "",
        "plain ascii, long enough to span several eight-byte words",
    ];
    let out = run(&h.load("append-events"), 1, &values).unwrap();
    let got: Vec<Value> = rows(&out, "events").into_iter().map(|r| r["value"].clone()).collect();
    assert_eq!(got, values.map(|v| json!(v)));
}

#[test]
fn staged_files_are_snapshotted_when_staged_and_validated() {
    let h = harness(Limits::default());
    let out = run(
        &h.load("sandbox-probe"),
        1,
        &[
            r#"write rows.jsonl {"id": 1, "b": "x"}"#,
            "stage-file rows.jsonl json-lines t1",
            r#"write rows.jsonl {"id": 2}"#,
            "write bad.jsonl not-json",
            "stage-file bad.jsonl json-lines t1",
            "stage-file missing.jsonl json-lines t1",
        ],
    )
    .unwrap();
    assert_eq!(rows(&out, "t1"), [json!({"b":"x","id":1})], "the rewrite after staging has no effect");
    let p = probes(&out);
    let bad = probe(&p, "stage-file bad.jsonl json-lines t1");
    assert!(!bad.ok && bad.result.contains("bad.jsonl: row 0: not valid JSON"), "{bad:?}");
    let missing = probe(&p, "stage-file missing.jsonl json-lines t1");
    assert!(!missing.ok && missing.result.contains("cannot read /staging/missing.jsonl"), "{missing:?}");
}

fn arrow_orders_hex(ids: &[&str]) -> String {
    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![Field::new("order_id", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap();
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn arrow_ipc_files_are_the_bulk_form() {
    let h = harness(Limits::default());
    let cmds = [
        format!("write-hex orders.arrow {}", arrow_orders_hex(&["o-1", "o-2", "o-3"])),
        "stage-file orders.arrow arrow-ipc bulk".to_owned(),
        "write-hex junk.arrow 00ff00ff".to_owned(),
        "stage-file junk.arrow arrow-ipc bulk".to_owned(),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let out = run(&h.load("sandbox-probe"), 1, &cmds).unwrap();
    let bulk: Vec<_> = out.ops.iter().filter(|op| op.table == "bulk").collect();
    assert_eq!(bulk.len(), 1);
    assert_eq!(bulk[0].row_count, 3);
    assert_eq!(bulk[0].rows.format(), sluice::FileFormat::ArrowIpc);
    // The host kept the sink's bytes exactly.
    let hex: String = bulk[0].rows.bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, arrow_orders_hex(&["o-1", "o-2", "o-3"]));
    let p = probes(&out);
    let junk = probe(&p, "stage-file junk.arrow arrow-ipc bulk");
    assert!(!junk.ok && junk.result.contains("junk.arrow: not an Arrow IPC stream"), "{junk:?}");
}

#[test]
fn sink_logs_are_structured() {
    let h = harness(Limits::default());
    let out = run(&h.load("orders-upsert"), 1, &[r#"{"order_id":"o-1","customer":"c","amount_cents":1,"status":"new"}"#]).unwrap();
    let line = out.log.iter().find(|l| l.source == sluice::LogSource::Sink).expect("a sink log line");
    assert_eq!(line.level, sluice::Level::Info);
    assert!(line.fields.iter().any(|(k, v)| k == "orders" && v == "1"), "{line:?}");
}
