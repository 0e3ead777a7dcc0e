//! Hostile sinks against the output and log paths (issue 11, classes 2, 5,
//! 6, 7, 8): the `attack-output` guest, run through `sluice exec` and
//! `sluice run` as subprocesses. Each case checks the typed error naming
//! the limit or rule and its config key, the host's own peak RSS against
//! `Limits::host_memory_bound` (printed), that nothing was committed, and
//! (in process, on one runtime) that the next batch runs normally.
//!
//! The peak RSS is the child's `ru_maxrss`, which Linux starts from the
//! parent's RSS at `fork` (the test process, ~120 MiB once its guests are
//! loaded): an over-estimate, so the bound checks stay safe.

use crate::harness::*;
use base64::Engine as _;
use serde_json::{Value, json};
use sluice::{BatchError, Limit, Limits};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// The limits of the `exec` cases: small enough that the bound is tight,
/// and the attacks' old costs (terabytes, gigabytes) far past it.
fn limits() -> Limits {
    Limits { memory_bytes: 128 * MIB, output_bytes: 64 * MIB, ..Limits::default() }
}

fn limit_args(l: &Limits) -> Vec<String> {
    vec![
        format!("--limit=memory_bytes={}", l.memory_bytes),
        format!("--limit=output_bytes={}", l.output_bytes),
        format!("--limit=output_rows={}", l.output_rows),
        format!("--limit=log_bytes={}", l.log_bytes),
        format!("--limit=call_bytes={}", l.call_bytes),
    ]
}

/// A record whose value is `text`.
fn text(text: &str) -> Value {
    json!({ "topic": "t", "value": text })
}

/// A record whose value is `bytes`.
fn binary(bytes: &[u8]) -> Value {
    json!({ "topic": "t", "value_b64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

struct Exec {
    run: Measured,
    /// `sluice exec --json`'s report.
    report: Value,
    bound: u64,
    /// Holds the scratch directory (and the kept `/staging`) until checked.
    _dir: tempfile::TempDir,
}

/// Run the attack sink over `records` with `limits` through `sluice exec
/// --json`, measuring the process.
fn exec(records: &[Value], limits: &Limits, extra: &[&str]) -> Exec {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.jsonl");
    std::fs::write(&file, records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")).unwrap();
    let component = guest("attack-output");
    let mut cmd = sluice(&["exec", "--json", "--component", component.to_str().unwrap(), "--records", file.to_str().unwrap()]);
    cmd.args(limit_args(limits))
        .args(["--scratch-dir", dir.path().join("scratch").to_str().unwrap()])
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
        .args(extra);
    let run = run_measured(cmd);
    let bound = limits.host_memory_bound();
    let what = records.first().map(|r| r["value"].as_str().unwrap_or("(binary)").chars().take(40).collect::<String>());
    eprintln!(
        "{what:?}: exit {}, peak RSS {:.1} MiB (bound {:.1} MiB), {:.2?}",
        run.code,
        run.peak_rss as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        run.wall
    );
    let report = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("exec printed no report ({e}): {run:?}"));
    assert!(run.peak_rss <= bound, "peak RSS {} over the bound {bound}: {run:?}", run.peak_rss);
    assert!(run.wall < std::time::Duration::from_secs(30), "no attack makes the host work for long: {:?}", run.wall);
    Exec { run, report, bound, _dir: dir }
}

/// The batch failed with this error, as the sink's fault, not retryable.
fn assert_user_error(e: &Exec, starts: &str) {
    assert_eq!(e.run.code, 1, "{:?}", e.run);
    let error = e.report["error"].as_str().unwrap();
    assert!(error.starts_with(starts), "the error says what first: {error}");
    assert_eq!(e.report["class"], "user", "{error}");
    assert_eq!(e.report["retryable"], false, "{error}");
    assert!(!error.contains("internal"), "{error}");
    // The failed attempt's /staging is kept, holding no more than was
    // written into it (a sparse file's length is not its size).
    let kept = Path::new(e.report["kept_scratch"].as_str().expect("the failed /staging is kept"));
    assert!(kept.is_dir(), "{}", kept.display());
    assert!(disk_usage(kept) <= Limits::default().staging_bytes, "{}", kept.display());
}

/// Bytes a directory's files take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().blocks() * 512).sum()
}

fn assert_limit(e: &Exec, limit: Limit, limits: &Limits) {
    let key = format!("({} = {})", limit.key(), limit.value(limits));
    assert_user_error(e, "batch 0: sink exceeded");
    assert!(e.report["error"].as_str().unwrap().contains(&key), "{}", e.report);
    assert_eq!(e.report["limit"], limit.key());
}

/// Class 2: one large first row and many small ones reserved
/// (first row + 1) × rows up front (2 TB here: the process aborted).
#[test]
fn a_large_first_row_does_not_size_the_rows_after_it() {
    let e = exec(&[text("big-first-row 2000000")], &limits(), &[]);
    assert_eq!(e.run.code, 0, "{:?}", e.run);
    assert_eq!(e.report["tables"][0]["appended_rows"], 2_000_001);
    assert!(e.run.peak_rss < e.bound);
}

/// Class 2: a 3-byte write at offset 1 TiB makes a sparse file whose length
/// was read into memory (SIGABRT). Its length is checked first.
#[test]
fn a_sparse_staged_file_is_refused_by_its_length() {
    let l = limits();
    let e = exec(&[text("sparse-file 1099511627776")], &l, &[]);
    assert_limit(&e, Limit::OutputBytes, &l);
}

/// A ZSTD-compressed Arrow IPC stream of one Int64 column whose buffer
/// declares it inflates to `declared` bytes.
fn zstd_stream_declaring(declared: i64) -> Vec<u8> {
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![std::sync::Arc::new(Int64Array::from(vec![0i64; 1000]))]).unwrap();
    let options = arrow_ipc::writer::IpcWriteOptions::default().try_with_compression(Some(arrow_ipc::CompressionType::ZSTD)).unwrap();
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new_with_options(&mut out, &schema, options).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    // A compressed buffer starts with its uncompressed length (8000 here).
    let at = out.windows(8).rposition(|w| w == 8000i64.to_le_bytes()).expect("the length prefix");
    out[at..at + 8].copy_from_slice(&declared.to_le_bytes());
    out
}

/// Class 2: compressed Arrow buffers declare what they inflate to, and the
/// reader allocated it (a few hundred bytes aborted the host). Refused.
#[test]
fn compressed_arrow_ipc_is_refused_before_it_is_inflated() {
    let stream = zstd_stream_declaring(1 << 40);
    assert!(stream.len() < 1024, "{} bytes", stream.len());
    let e = exec(&[text("stage-arrow"), binary(&stream)], &limits(), &[]);
    assert_eq!(e.run.code, 1, "{:?}", e.run);
    let error = e.report["error"].as_str().unwrap();
    assert!(error.contains("its buffers are compressed (LZ4 or ZSTD); stage uncompressed Arrow IPC"), "{error}");
    assert_eq!(e.report["class"], "user");
}

/// Class 2: a million rows pointing at the same 100 KB were lifted as a
/// million host strings (stopped only by wasmtime's copy limit, reported as
/// `internal`). Each row is charged before it is copied.
#[test]
fn aliased_rows_are_charged_before_they_are_copied() {
    let l = limits();
    let e = exec(&[text("aliased-rows 1000000 100000")], &l, &[]);
    assert_limit(&e, Limit::OutputBytes, &l);
}

/// Class 2: log fields cost their bookkeeping even when empty (a million
/// empty fields were kept for free), and keys are charged like rows.
#[test]
fn empty_log_fields_and_aliased_keys_are_charged() {
    let l = limits();
    let e = exec(&[text("aliased-fields 1000000")], &l, &[]);
    assert_limit(&e, Limit::LogBytes, &l);
    let e = exec(&[text("aliased-keys 1000000 100000")], &l, &[]);
    assert_limit(&e, Limit::OutputBytes, &l);
}

/// Class 2: zero-row `stage` calls were kept but never charged.
#[test]
fn empty_stage_calls_are_charged() {
    let l = limits();
    let e = exec(&[text("empty-ops")], &l, &[]);
    assert_limit(&e, Limit::OutputBytes, &l);
}

/// Class 6: wasmtime's per-call copy limit is the sink's limit, with its
/// key, not an internal error after a backtrace.
#[test]
fn one_call_past_the_copy_limit_is_the_sinks_limit() {
    let l = Limits { call_bytes: 16 * MIB, ..limits() };
    let e = exec(&[text("big-log 20000000")], &l, &[]);
    assert_limit(&e, Limit::CallBytes, &l);
    // A list header alone can pass it: 3M fields × their lifted size.
    let e = exec(&[text("aliased-fields 3000000")], &l, &[]);
    assert_limit(&e, Limit::CallBytes, &l);
}

/// Class 6: a string that is not UTF-8, in our interfaces or in WASI's, is
/// the sink's fault and says so first.
#[test]
fn strings_that_are_not_utf8_are_the_sinks_fault() {
    for (attack, what) in [
        ("non-utf8-log", "log: the message is not valid UTF-8"),
        ("non-utf8-row", "output.stage: a JSON row is not valid UTF-8"),
        ("non-utf8-path", "a string argument is not valid UTF-8"),
    ] {
        let e = exec(&[text(attack)], &limits(), &[]);
        assert_user_error(&e, "batch 0: sink made an invalid host call: ");
        assert!(e.report["error"].as_str().unwrap().contains(what), "{attack}: {}", e.report["error"]);
    }
}

/// Class 5: the sink does not choose the merge key.
#[test]
fn an_upsert_on_other_keys_than_the_declared_ones_is_refused() {
    let order = r#"{"order_id":"o-1","customer":"c-1","amount_cents":1,"status":"new","updated_at_ms":1,"source_offset":0}"#;
    let e = exec(&[text("upsert-on customer"), text(order)], &limits(), &["--keys", "orders=order_id"]);
    assert_user_error(&e, "batch 0: sink upserted into table `orders` on [customer], but the table is keyed on [order_id] (`tables.keys`");
    let ok = exec(&[text("upsert-on order_id"), text(order)], &limits(), &["--keys", "orders=order_id"]);
    assert_eq!(ok.run.code, 0, "{:?}", ok.run);
    assert_eq!(ok.report["tables"][0]["upserted_rows"], 1);
}

/// Class 7: 200 000 one-row upserts are merged into a few operations after
/// digesting; the digest is what the calls staged, the same on every run.
#[test]
fn many_one_row_upserts_merge_into_few_operations() {
    let l = limits();
    let a = exec(&[text("many-ops 200000")], &l, &["--keys", "orders=order_id"]);
    assert_eq!(a.run.code, 0, "{:?}", a.run);
    let table = &a.report["tables"][0];
    assert_eq!(table["upserted_rows"], 200_000);
    assert!(table["operations"].as_u64().unwrap() <= 4, "{table}");
    let b = exec(&[text("many-ops 200000")], &l, &["--keys", "orders=order_id"]);
    assert_eq!(a.report["output_digest"], b.report["output_digest"]);
    // Past the budget, the per-operation charge ends it with the limit.
    let tight = Limits { output_bytes: 8 * MIB, ..l };
    let e = exec(&[text("many-ops 200000")], &tight, &["--keys", "orders=order_id"]);
    assert_limit(&e, Limit::OutputBytes, &tight);
}

/// In one process: every attack ends its batch with its typed error and the
/// next batch on the same runtime runs normally.
#[test]
fn after_every_attack_the_next_batch_runs_normally() {
    let l = Limits { call_bytes: 64 * MIB, ..limits() };
    let h = harness_with(l.clone(), |b| b.with_keyed_tables([("orders".to_owned(), vec!["order_id".to_owned()])]).with_tables(["t"]));
    let sink = h.load("attack-output");
    let cases: [(&str, fn(&BatchError) -> bool); 9] = [
        ("sparse-file 1099511627776", |e| e.limit() == Some(Limit::OutputBytes)),
        ("aliased-rows 1000000 100000", |e| e.limit() == Some(Limit::OutputBytes)),
        ("aliased-fields 500000", |e| e.limit() == Some(Limit::LogBytes)),
        ("aliased-fields 3000000", |e| e.limit() == Some(Limit::CallBytes)),
        ("empty-ops", |e| e.limit() == Some(Limit::OutputBytes)),
        ("non-utf8-log", |e| matches!(e, BatchError::InvalidCall(_))),
        ("non-utf8-path", |e| matches!(e, BatchError::InvalidCall(_))),
        ("upsert-on customer", |e| matches!(e, BatchError::Refused(_))),
        ("big-log 70000000", |e| e.limit() == Some(Limit::CallBytes)),
    ];
    for (attack, expected) in cases {
        let failure = run(&sink, 1, &[attack]).unwrap_err();
        assert!(expected(&failure.error), "{attack}: {failure}");
        assert!(!failure.error.retryable(), "{attack}");
        let ok = run(&sink, 2, &["many-ops 10"]).unwrap_or_else(|e| panic!("after {attack}: {e}"));
        assert_eq!(ok.tables()[0].upserted_rows, 10);
    }
}

/// The `orders` pipeline, run by `sluice run` with the attack sink.
fn orders_pipeline(dir: &Path, broker: &Broker, values: &[String], max_records: u64, limits: &str) -> std::path::PathBuf {
    broker.create_topic("orders", 1);
    produce(&broker.bootstrap, "orders", 1, values);
    orders_config(dir, "attack", &broker.bootstrap, max_records, &guest("attack-output"), limits)
}

fn run_measured_pipeline(config: &Path, bound: u64) -> Measured {
    let run = run_measured(sluice(&["run", config.to_str().unwrap()]));
    eprintln!("sluice run: exit {}, peak RSS {:.1} MiB (bound {:.1} MiB), {:.2?}", run.code, run.peak_rss as f64 / MIB as f64, bound as f64 / MIB as f64, run.wall);
    assert!(run.peak_rss <= bound, "peak RSS {} over the bound {bound}: {run:?}", run.peak_rss);
    run
}

fn order(i: usize) -> String {
    format!(r#"{{"order_id":"o-{i}","customer":"c-{}","amount_cents":{i},"status":"new","updated_at_ms":{i},"source_offset":{i}}}"#, i % 3)
}

/// The memory attacks through the real pipeline: each stops it with the
/// typed error, under the pipeline bound, with nothing committed.
#[test]
fn memory_attacks_stop_sluice_run_under_the_bound_with_nothing_committed() {
    let l = limits();
    let section = format!("[limits]\nmemory_bytes = {}\noutput_bytes = {}\n", l.memory_bytes, l.output_bytes);
    for (attack, error) in [
        ("sparse-file 1099511627776", "sink exceeded its staged-bytes limit (limits.output_bytes = 67108864)"),
        ("aliased-rows 1000000 100000", "sink exceeded its staged-bytes limit (limits.output_bytes = 67108864)"),
        ("aliased-fields 1000000", "sink exceeded its log-bytes limit (limits.log_bytes = 1048576)"),
        ("upsert-on customer", "sink upserted into table `orders` on [customer], but the table is keyed on [order_id]"),
    ] {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let config = orders_pipeline(dir.path(), &broker, &[attack.to_owned(), order(1)], 100, &section);
        let run = run_measured_pipeline(&config, l.pipeline_memory_bound(6));
        assert_eq!(run.code, 1, "{attack}: {run:?}");
        assert!(run.stderr.contains(&format!("batch 0 failed after 1 attempt(s): batch 0: {error}")), "{attack}: {}", run.stderr);
        assert!(run.stderr.contains("nothing of batch 0 was committed"), "{}", run.stderr);
        let table = read_delta(&dir.path().join("tables/orders"), "attack");
        assert_eq!((table.txn, table.rows.len()), (None, 0), "{attack}: nothing committed");
    }
}

/// Class 8 and class 7 through the pipeline: a zero-row upsert commits (it
/// failed every commit of its batch: an empty MERGE source), and 300 000
/// one-row upserts commit to one row per key, quickly, under the bound.
#[test]
fn zero_row_and_many_one_row_upserts_commit_through_sluice_run() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<String> =
        ["zero-row-upsert", "-", "-", "upsert-on order_id"].iter().map(|s| s.to_string()).chain([order(1), order(2)]).chain(["many-ops 300000".to_owned(), "-".into(), "-".into()]).collect();
    let l = Limits { output_bytes: 256 * MIB, ..Limits::default() };
    let config = orders_pipeline(dir.path(), &broker, &values, 3, &format!("[limits]\noutput_bytes = {}\n", l.output_bytes));
    let run = run_measured_pipeline(&config, l.pipeline_memory_bound(6));
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let commit_ms: u64 = lines[2].split("commit ").nth(1).and_then(|r| r.split(" ms").next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{}", lines[2]));
    eprintln!("300 000 one-row upserts: {}", lines[2]);
    assert!(commit_ms < 20_000, "the commit of 300 000 one-row upserts took {commit_ms} ms");
    let table = read_delta(&dir.path().join("tables/orders"), "attack");
    assert_eq!(table.txn, Some(2), "all three batches committed");
    assert_eq!(table.rows.len(), 2500, "one row per key");
    let last = table.rows.iter().find(|r| r["order_id"] == "o-1").unwrap();
    assert_eq!(last["amount_cents"], 297_501, "the last staged row of a key wins");
}
