//! `sluice exec`, as a user runs it.

use crate::harness::*;
use serde_json::Value;
use std::process::Command;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--scratch-dir", scratch.path().to_str().unwrap()])
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn records_file(lines: &[&str]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), lines.join("\n")).unwrap();
    f
}

#[test]
fn exec_prints_the_batch_output_as_json() {
    let f = records_file(&[
        r#"{"topic":"orders","offset":10,"timestamp_ms":5,"value":{"order_id":"o-1","customer":"c","amount_cents":7,"status":"new"}}"#,
        r#"{"topic":"orders","timestamp_ms":6,"value":{"order_id":"o-1","customer":"c","amount_cents":7,"status":"paid"}}"#,
    ]);
    let component = guest("orders-upsert");
    let args = ["exec", "--component", component.to_str().unwrap(), "--records", f.path().to_str().unwrap(), "--batch-id", "7"];
    let (code, stdout, stderr) = sluice(&[&args[..], &["--json", "--rows"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["batch_id"], 7);
    assert_eq!(v["records_in"], 2);
    assert_eq!(v["tables"][0]["table"], "orders");
    assert_eq!(v["tables"][0]["upserted_rows"], 1);
    assert_eq!(v["ops"][0]["data"][0]["status"], "paid");
    assert_eq!(v["ops"][0]["data"][0]["source_offset"], 11);
    assert_eq!(v["output_digest"].as_str().unwrap().len(), 64);
    // The text form carries the same digest.
    let (code, text, _) = sluice(&args);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("output digest: {}", v["output_digest"].as_str().unwrap())), "{text}");
    assert!(text.contains("table orders: 0 appended, 1 upserted"), "{text}");
}

#[test]
fn exec_reports_a_failed_batch_with_exit_code_1() {
    let f = records_file(&[r#"{"value":"loop"}"#]);
    let component = guest("hostile");
    let (code, _, stderr) = sluice(&[
        "exec", "--component", component.to_str().unwrap(), "--records", f.path().to_str().unwrap(), "--limit", "fuel=1000000",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: batch 0: sink exceeded its fuel (instruction) limit (limits.fuel = 1000000)"), "{stderr}");
    assert!(stderr.contains("/staging kept for inspection at"), "{stderr}");
}

#[test]
fn exec_rejects_bad_input_with_exit_code_2() {
    let f = records_file(&[r#"{"value":"ok"}"#]);
    let component = guest("hostile");
    let records = f.path().to_str().unwrap();
    let (code, _, stderr) = sluice(&["exec", "--component", component.to_str().unwrap(), "--records", records, "--limit", "fuell=3"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown field `fuell`"), "{stderr}");
    let (code, _, stderr) = sluice(&["exec", "--component", records, "--records", records]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a WebAssembly component"), "{stderr}");
    let bad = records_file(&["{\"value\": 1}", "{oops"]);
    let (code, _, stderr) = sluice(&["exec", "--component", component.to_str().unwrap(), "--records", bad.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2:"), "{stderr}");
}
