//! Conformance: a sink behaves the same whatever language it is written in.
//!
//! Every case runs once per guest language (Rust, Python, JavaScript, and C
//! for the probe cases) and asserts the same outcome: the orders-upsert
//! sinks give the same rows and the same output digest over the same
//! batches, reject the same malformed records with the same typed error,
//! and under `sluice run` on a real broker leave the same Delta table; the
//! probe sinks meet the same sandbox (no way out of `/staging`, clock and
//! random fixed per batch) and the same limits end them with the same
//! `BatchError`.
//!
//! The Python, JavaScript and C components are built by `make test`
//! (mk/polyglot.mk), which passes their directory as `SLUICE_POLYGLOT_DIR`;
//! without it these tests fail rather than skip.

use crate::harness::*;
use serde_json::json;
use sluice::{BatchError, BatchFailure, BatchOutput, Limit, Limits, OwnedRecord, Sink, VecSource};
use std::path::PathBuf;

/// One guest language: its orders-upsert sink and its probe sinks.
struct Lang {
    name: &'static str,
    /// C has the probe only: an orders sink in C would need a JSON parser
    /// with serde's exact rules, which is out of scope for now.
    orders: Option<PathBuf>,
    /// Whether the language has its own PRNG for the probe's `prng`.
    has_prng: bool,
    /// Speaks the `sandbox-probe` protocol (one command per record).
    probe: PathBuf,
    /// Misbehaves on request (`loop`, `alloc`, ...). The Python and JS
    /// probes do both jobs; in Rust they are two guests.
    hostile: PathBuf,
}

fn languages() -> Vec<Lang> {
    let dir = std::env::var_os("SLUICE_POLYGLOT_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("SLUICE_POLYGLOT_DIR is not set: run the tests with `make test`, which builds the Python and JavaScript sinks")
    });
    let built = |file: &str| {
        let path = dir.join(file);
        assert!(path.is_file(), "{} is missing: run `make test` (it builds the Python and JavaScript sinks)", path.display());
        path
    };
    let langs = vec![
        Lang {
            name: "rust",
            orders: Some(guest("orders-upsert")),
            has_prng: false,
            probe: guest("sandbox-probe"),
            hostile: guest("hostile"),
        },
        Lang {
            name: "python",
            orders: Some(built("python_orders_upsert.wasm")),
            has_prng: true,
            probe: built("python_probe.wasm"),
            hostile: built("python_probe.wasm"),
        },
        Lang {
            name: "js",
            orders: Some(built("js_orders_upsert.wasm")),
            has_prng: true,
            probe: built("js_probe.wasm"),
            hostile: built("js_probe.wasm"),
        },
        Lang { name: "c", orders: None, has_prng: false, probe: built("c_probe.wasm"), hostile: built("c_probe.wasm") },
    ];
    warm_cache(&langs);
    langs
}

/// Compile every component into the shared cache once, one after another,
/// before the tests load them in parallel: otherwise each test thread would
/// compile the large Python and JS components itself on a cold cache.
fn warm_cache(langs: &[Lang]) {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let h = harness(Limits::default());
        for lang in langs {
            for path in lang.orders.iter().chain([&lang.probe, &lang.hostile]) {
                load(&h, path);
            }
        }
    });
}

fn load(h: &Harness, path: &PathBuf) -> Sink {
    h.runtime.load(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A record of topic `orders` with explicit coordinates.
fn order(partition: i32, offset: i64, timestamp_ms: i64, value: Option<&str>) -> OwnedRecord {
    OwnedRecord {
        topic: "orders".into(),
        partition,
        offset,
        timestamp_ms,
        key: value.map(|_| format!("k{offset}").into_bytes()),
        value: value.map(|v| v.as_bytes().to_vec()),
        headers: vec![("source".into(), Some(b"web".to_vec()))],
    }
}

fn run_records(sink: &Sink, batch_id: u64, recs: Vec<OwnedRecord>) -> Result<BatchOutput, BatchFailure> {
    sink.run(&spec("orders", batch_id, &recs), 1, Box::new(VecSource::new(recs)))
}

/// Three batches: duplicates across partitions (last one wins, first-seen
/// order), strings that need escaping, amounts at the ends of i64 (past
/// what a double holds exactly), extra fields, an empty batch.
fn order_batches() -> Vec<Vec<OwnedRecord>> {
    vec![
        vec![
            order(0, 100, 1_763_900_000_000, Some(r#"{"order_id":"o-1","customer":"c-17","amount_cents":4200,"status":"new"}"#)),
            order(0, 101, 1_763_900_000_450, Some(r#"{"order_id":"o-2","customer":"c-03","amount_cents":1999,"status":"new"}"#)),
            order(1, 57, 1_763_900_001_200, Some(r#"{"order_id":"o-3","customer":"c-17","amount_cents":650,"status":"new"}"#)),
            order(0, 102, 1_763_900_002_000, Some(r#"{"order_id":"o-1","customer":"c-17","amount_cents":4200,"status":"paid"}"#)),
            order(1, 58, 1_763_900_003_100, Some(r#"{"status":"new","amount_cents":12500,"customer":"c-21","order_id":"o-4"}"#)),
            order(0, 104, 1_763_900_004_000, Some(r#"{"order_id":"o-2","customer":"c-03","amount_cents":1999,"status":"cancelled"}"#)),
        ],
        vec![
            order(2, 9_007_199_254_740_993, 1_763_900_010_000, Some(
                r#"{"order_id":"o-\"q\"\\\u00e9\u2603","customer":"caf\u00e9 🦀","amount_cents":9223372036854775807,"status":"paid","note":{"x":[1,2.5,null]}}"#,
            )),
            order(2, 9_007_199_254_740_994, 1_763_900_010_001, Some(
                r#"  {"order_id":"o-5","customer":"","amount_cents":-9223372036854775808,"status":"refunded","extra":true}  "#,
            )),
            order(2, 9_007_199_254_740_995, -1, Some(r#"{"order_id":"o-5","customer":"c-1","amount_cents":0,"status":"x"}"#)),
            order(3, 0, 0, Some(r#"{"order_id":"o-6","customer":"tab\there","amount_cents":-1,"status":"new"}"#)),
        ],
        vec![],
    ]
}

#[test]
fn orders_upsert_gives_the_same_rows_and_digest_in_every_language() {
    let h = harness(Limits::default());
    let langs: Vec<Lang> = languages().into_iter().filter(|l| l.orders.is_some()).collect();
    let sinks: Vec<Sink> = langs.iter().map(|l| load(&h, l.orders.as_ref().unwrap())).collect();
    for (i, batch) in order_batches().into_iter().enumerate() {
        let batch_id = 40 + i as u64;
        let outputs: Vec<BatchOutput> = sinks
            .iter()
            .zip(&langs)
            .map(|(s, l)| run_records(s, batch_id, batch.clone()).unwrap_or_else(|e| panic!("{}: {e}", l.name)))
            .collect();
        for (out, lang) in outputs.iter().zip(&langs) {
            assert_eq!(out.records_in, batch.len() as u64, "{}", lang.name);
            assert_eq!(rows(out, "orders"), rows(&outputs[0], "orders"), "{} rows differ from rust's in batch {i}", lang.name);
            assert_eq!(out.digest, outputs[0].digest, "{} digest differs from rust's in batch {i}", lang.name);
        }
        // The rows themselves, so all three agreeing on something wrong fails too.
        let got = rows(&outputs[0], "orders");
        match i {
            0 => assert_eq!(
                got,
                vec![
                    json!({"order_id":"o-1","customer":"c-17","amount_cents":4200,"status":"paid","updated_at_ms":1_763_900_002_000i64,"source_offset":102}),
                    json!({"order_id":"o-2","customer":"c-03","amount_cents":1999,"status":"cancelled","updated_at_ms":1_763_900_004_000i64,"source_offset":104}),
                    json!({"order_id":"o-3","customer":"c-17","amount_cents":650,"status":"new","updated_at_ms":1_763_900_001_200i64,"source_offset":57}),
                    json!({"order_id":"o-4","customer":"c-21","amount_cents":12500,"status":"new","updated_at_ms":1_763_900_003_100i64,"source_offset":58}),
                ]
            ),
            1 => assert_eq!(
                got,
                vec![
                    json!({"order_id":"o-\"q\"\\é☃","customer":"café 🦀","amount_cents":i64::MAX,"status":"paid","updated_at_ms":1_763_900_010_000i64,"source_offset":9_007_199_254_740_993i64}),
                    json!({"order_id":"o-5","customer":"c-1","amount_cents":0,"status":"x","updated_at_ms":-1,"source_offset":9_007_199_254_740_995i64}),
                    json!({"order_id":"o-6","customer":"tab\there","amount_cents":-1,"status":"new","updated_at_ms":0,"source_offset":0}),
                ]
            ),
            _ => assert!(got.is_empty() && outputs[0].ops.is_empty(), "an empty batch stages nothing"),
        }
    }
}

/// The record at partition 3, offset 41 of each batch is malformed.
const MALFORMED: &[(&str, Option<&[u8]>)] = &[
    ("not JSON", Some(b"{not json")),
    ("trailing garbage", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":1,"status":"s"} x"#)),
    ("a JSON string", Some(br#""o-1""#)),
    ("missing field", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":1}"#)),
    ("null field", Some(br#"{"order_id":"o-1","customer":null,"amount_cents":1,"status":"s"}"#)),
    ("amount as string", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":"1","status":"s"}"#)),
    ("amount with a fraction", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":12.5,"status":"s"}"#)),
    ("integral float amount", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":12.0,"status":"s"}"#)),
    ("amount in exponent form", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":1e3,"status":"s"}"#)),
    ("amount past i64", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":9223372036854775808,"status":"s"}"#)),
    ("boolean amount", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":true,"status":"s"}"#)),
    ("NaN amount", Some(br#"{"order_id":"o-1","customer":"c","amount_cents":NaN,"status":"s"}"#)),
    ("number as order id", Some(br#"{"order_id":7,"customer":"c","amount_cents":1,"status":"s"}"#)),
    ("lone surrogate", Some(br#"{"order_id":"o-\ud800","customer":"c","amount_cents":1,"status":"s"}"#)),
    ("invalid UTF-8", Some(b"{\"order_id\":\"o-\xff\",\"customer\":\"c\",\"amount_cents\":1,\"status\":\"s\"}")),
    ("tombstone", None),
];

#[test]
fn malformed_records_are_invalid_input_naming_the_record_in_every_language() {
    let h = harness(Limits::default());
    let langs: Vec<Lang> = languages().into_iter().filter(|l| l.orders.is_some()).collect();
    let sinks: Vec<Sink> = langs.iter().map(|l| load(&h, l.orders.as_ref().unwrap())).collect();
    let good = r#"{"order_id":"o-0","customer":"c","amount_cents":1,"status":"s"}"#;
    for (case, value) in MALFORMED {
        for (sink, lang) in sinks.iter().zip(&langs) {
            let mut bad = order(3, 41, 5, None);
            bad.value = value.map(<[u8]>::to_vec);
            let batch = vec![order(3, 40, 4, Some(good)), bad, order(3, 42, 6, Some(good))];
            let failure = run_records(sink, 9, batch).expect_err(&format!("{}: {case} must be rejected", lang.name));
            let BatchError::InvalidInput(message) = &failure.error else {
                panic!("{}: {case}: expected invalid-input, got {failure}", lang.name)
            };
            let expected = match value {
                None => "topic orders partition 3 offset 41: null value (a tombstone) is not an order",
                Some(_) => "topic orders partition 3 offset 41: not an order: ",
            };
            assert!(message.starts_with(expected), "{}: {case}: {message:?} should start with {expected:?}", lang.name);
            assert!(!failure.error.retryable(), "{}: invalid input is not retried", lang.name);
        }
    }
}

/// Probe commands that must fail without leaking anything, in every language.
fn escapes(outside: &str) -> Vec<String> {
    vec![
        "open /etc/passwd".into(),
        "open ../outside-secret.txt".into(),
        "open ../../outside-secret.txt".into(),
        "open /staging/../../etc/passwd".into(),
        "open /staging/../outside-secret.txt".into(),
        format!("open {outside}"),
        format!("write {outside} overwritten"),
        "write ../planted.txt x".into(),
        "write /tmp/planted.txt x".into(),
        "list /".into(),
        "list ..".into(),
        "list /staging/..".into(),
        "read /proc/self/environ".into(),
    ]
}

/// The content of a file just outside `/staging` (error messages may name
/// the file; they must never show what is in it).
const SECRET: &str = "do-not-leak-7f3a";

#[test]
fn no_language_gets_out_of_staging() {
    let h = harness(Limits::default());
    let outside = h.scratch.path().join("outside-secret.txt");
    std::fs::write(&outside, SECRET).unwrap();
    let outside = outside.to_str().unwrap().to_owned();
    for lang in languages() {
        let sink = load(&h, &lang.probe);
        let mut cmds = vec!["write own.txt mine".to_owned(), "read own.txt".into(), "read /staging/own.txt".into()];
        cmds.extend(escapes(&outside));
        cmds.push("list .".into());
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        let output = run(&sink, 1, &cmds).unwrap_or_else(|e| panic!("{}: {e}", lang.name));
        let p = probes(&output);
        // The probe works: inside /staging it can write and read back.
        assert_eq!(probe(&p, "read own.txt").result, "mine", "{}", lang.name);
        assert_eq!(probe(&p, "read /staging/own.txt").result, "mine", "{}", lang.name);
        for cmd in escapes(&outside) {
            let r = probe(&p, &cmd);
            assert!(!r.ok, "{}: {cmd} must fail, got {r:?}", lang.name);
            assert!(!r.result.contains(SECRET) && !r.result.contains("root:"), "{}: {cmd} leaked {r:?}", lang.name);
        }
        assert_eq!(probe(&p, "list .").result, "own.txt", "{}: nothing else is visible or was planted", lang.name);
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), SECRET, "{}", lang.name);
        assert!(!h.scratch.path().join("live").join("planted.txt").exists() && !h.scratch.path().join("planted.txt").exists());
    }
}

/// `clock` → (wall_ns, [mono_ns; 2], random hex).
fn clock(output: &BatchOutput) -> (u128, [u128; 2], String) {
    let result = probe(&probes(output), "clock").result.clone();
    let f: Vec<&str> = result.split(' ').collect();
    assert_eq!(f.len(), 4, "clock result {result:?}");
    (f[0].parse().unwrap(), [f[1].parse().unwrap(), f[2].parse().unwrap()], f[3].to_owned())
}

#[test]
fn clock_and_random_are_fixed_per_batch_and_differ_between_batches_in_every_language() {
    let h = harness(Limits::default());
    for lang in languages() {
        let sink = load(&h, &lang.probe);
        // `prng` is the language's own generator (Python `random`, JS
        // `Math.random`); Rust's std and C's probe have none ("unknown").
        let cmds = ["clock", "prng"];
        let a = run(&sink, 10, &cmds).unwrap();
        let again = run(&sink, 10, &cmds).unwrap();
        let b = run(&sink, 11, &cmds).unwrap();
        assert_eq!(rows(&a, "probe"), rows(&again, "probe"), "{}: a rerun of batch 10 sees the same clock and random", lang.name);
        assert_eq!(a.digest, again.digest, "{}", lang.name);
        let (wall, mono, random) = clock(&a);
        let (wall_b, _, random_b) = clock(&b);
        assert_ne!(random, random_b, "{}: WASI random differs for another batch id", lang.name);
        assert_eq!(random.len(), 32, "{}", lang.name);
        // The wall clock is the planned timestamp (batch 10 → 1_700_000_010_000 ms).
        let planned_ns = 1_700_000_010_000u128 * 1_000_000;
        assert!((planned_ns..planned_ns + 1_000_000).contains(&wall), "{}: wall clock {wall} vs planned {planned_ns}", lang.name);
        assert_eq!(wall_b / 1_000_000, 1_700_000_011_000, "{}", lang.name);
        assert!(mono[0] < mono[1], "{}: the virtual monotonic clock moves forward: {mono:?}", lang.name);
        let prng = |o: &BatchOutput| probe(&probes(o), "prng").clone();
        if !lang.has_prng {
            assert!(!prng(&a).ok, "{}", lang.name);
        } else {
            assert!(prng(&a).ok, "{}", lang.name);
            assert_ne!(prng(&a).result, prng(&b).result, "{}: the language's PRNG is seeded per batch", lang.name);
        }
    }
}

/// Limits small enough to hit quickly. Python's and JavaScript's runtimes
/// start in well under 64 MiB and a few million instructions (see the
/// languages benchmark), so the same limits serve every language.
fn small_limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        fuel: 2_000_000_000,
        deadline_ms: 20_000,
        staging_bytes: 1 << 20,
        output_rows: 1000,
        log_lines: 500,
        log_bytes: 64 << 10,
        ..Limits::default()
    }
}

fn expect_limit(limits: Limits, behaviour: &str, limit: Limit) {
    let h = harness(limits);
    for lang in languages() {
        // `fill` is a sandbox-probe command; the rest are misbehaviours.
        let guest = if behaviour.starts_with("fill ") { &lang.probe } else { &lang.hostile };
        let sink = load(&h, guest);
        let failure = run(&sink, 1, &[behaviour]).unwrap_err();
        match &failure.error {
            BatchError::Limit(e) => assert_eq!(e.limit, limit, "{}: {behaviour}: {failure}", lang.name),
            other => panic!("{}: {behaviour}: expected {limit:?}, got {other:?}", lang.name),
        }
        let key = format!("({} = {})", limit.key(), limit.value(h.runtime.limits()));
        assert!(failure.to_string().contains(&key), "{}: {failure}", lang.name);
        // The same runtime runs the next batch normally.
        let ok = run(&load(&h, &lang.probe), 2, &["write x.txt ok", "read x.txt"]).unwrap();
        assert_eq!(probe(&probes(&ok), "read x.txt").result, "ok", "{}", lang.name);
    }
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_in_every_language() {
    expect_limit(small_limits(), "loop", Limit::Fuel);
}

#[test]
fn an_infinite_loop_hits_the_deadline_in_every_language_when_fuel_is_plentiful() {
    expect_limit(Limits { fuel: u64::MAX / 2, deadline_ms: 300, ..small_limits() }, "loop", Limit::DeadlineMs);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit_in_every_language() {
    expect_limit(small_limits(), "alloc", Limit::MemoryBytes);
}

#[test]
fn filling_staging_hits_the_quota_in_every_language() {
    expect_limit(small_limits(), "fill big 2097152", Limit::StagingBytes);
}

#[test]
fn a_log_flood_hits_the_line_limit_in_every_language() {
    expect_limit(small_limits(), "flood-log", Limit::LogLines);
}

#[test]
fn an_output_flood_hits_the_row_limit_in_every_language() {
    expect_limit(small_limits(), "flood-output", Limit::OutputRows);
}

#[test]
fn an_uncaught_error_is_a_trap_with_its_message_in_every_language() {
    let h = harness(small_limits());
    for lang in languages() {
        let failure = run(&load(&h, &lang.hostile), 1, &["panic"]).unwrap_err();
        assert!(matches!(failure.error, BatchError::Trap { .. }), "{}: {failure}", lang.name);
        assert!(failure.to_string().contains("sink panicked on purpose"), "{}: the message reaches the error: {failure}", lang.name);
        assert!(!failure.error.retryable(), "{}", lang.name);
    }
}

/// The canonical value texts (timestamps, dates, decimals, bytes) of each
/// SDK, built from the same integers in every language, and staged as
/// upserts and deletes (`sluice:sink@0.2.0`): the same bytes, the same
/// digest. Times before 1970 and year 1, a leap day, negative decimals
/// below one and past what a double holds.
#[test]
fn value_texts_upserts_and_deletes_give_the_same_digest_in_every_language() {
    let h = harness(Limits::default());
    let langs: Vec<Lang> = languages().into_iter().filter(|l| l.name != "c").collect();
    let commands = [
        "typed 1 -1 -1 -5 2 00ff upsert",
        "typed 2 951782400000000 11016 123456789012345678901234567890123456 10 abcdef upsert",
        "typed 3 -62135596800000000 -719162 7 0 - upsert",
        "typed 1 0 0 0 2 00 delete",
        "typed 4 1719791999999999 19904 -100 3 10 upsert",
        "typed 3 0 0 0 0 - delete",
        "typed 3 86399999999 0 1 1 01 upsert",
    ];
    // `-` is the empty byte string in every probe.
    let refs: Vec<&str> = commands.to_vec();
    let outputs: Vec<BatchOutput> = langs
        .iter()
        .map(|l| run(&load(&h, &l.probe), 7, &refs).unwrap_or_else(|e| panic!("{}: {e}", l.name)))
        .collect();
    for (out, lang) in outputs.iter().zip(&langs) {
        for p in probes(out) {
            assert!(p.ok, "{}: {} failed: {}", lang.name, p.cmd, p.result);
        }
        assert_eq!(rows(out, "typed"), rows(&outputs[0], "typed"), "{} rows differ from rust's", lang.name);
        assert_eq!(out.digest, outputs[0].digest, "{} digest differs from rust's", lang.name);
    }
    let typed: Vec<(String, serde_json::Value)> = outputs[0]
        .ops
        .iter()
        .filter(|op| op.table == "typed")
        .flat_map(|op| {
            let mode = format!("{:?}", op.mode).split_whitespace().next().unwrap().to_owned();
            std::str::from_utf8(op.rows.bytes()).unwrap().lines().map(move |l| (mode.clone(), serde_json::from_str(l).unwrap())).collect::<Vec<_>>()
        })
        .collect();
    let row = |id: i64, at: &str, local: &str, day: &str, amount: &str, raw: &str| {
        json!({"id": id, "at": at, "local": local, "day": day, "amount": amount, "raw": raw})
    };
    assert_eq!(
        typed,
        vec![
            ("Upsert".into(), row(1, "1969-12-31T23:59:59.999999Z", "1969-12-31T23:59:59.999999", "1969-12-31", "-0.05", "00ff")),
            ("Upsert".into(), row(2, "2000-02-29T00:00:00.000000Z", "2000-02-29T00:00:00.000000", "2000-02-29",
                "12345678901234567890123456.7890123456", "abcdef")),
            ("Upsert".into(), row(3, "0001-01-01T00:00:00.000000Z", "0001-01-01T00:00:00.000000", "0001-01-01", "7", "")),
            ("Delete".into(), row(1, "1970-01-01T00:00:00.000000Z", "1970-01-01T00:00:00.000000", "1970-01-01", "0.00", "00")),
            ("Upsert".into(), row(4, "2024-06-30T23:59:59.999999Z", "2024-06-30T23:59:59.999999", "2024-06-30", "-0.100", "10")),
            ("Delete".into(), row(3, "1970-01-01T00:00:00.000000Z", "1970-01-01T00:00:00.000000", "1970-01-01", "0", "")),
            ("Upsert".into(), row(3, "1970-01-01T23:59:59.999999Z", "1970-01-01T23:59:59.999999", "1970-01-01", "0.1", "01")),
        ]
    );
}

#[test]
fn sluice_run_gives_the_same_table_in_every_language() {
    let broker = Broker::start();
    broker.create_topic("orders", 2);
    // 150 orders over 30 ids: every id is upserted several times, across
    // batches of at most 40 records.
    let statuses = ["new", "paid", "shipped"];
    let values: Vec<String> = (0..150)
        .map(|i| {
            format!(r#"{{"order_id":"o-{}","customer":"c-{}","amount_cents":{},"status":"{}"}}"#, i % 30, i % 7, i * 100, statuses[i % 3])
        })
        .collect();
    produce(&broker.bootstrap, "orders", 2, &values);
    let mut tables = Vec::new();
    for lang in languages().into_iter().filter(|l| l.orders.is_some()) {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = format!("orders-{}", lang.name);
        let config = orders_config(dir.path(), &pipeline, &broker.bootstrap, 40, lang.orders.as_ref().unwrap(), "\n[limits]\nfuel = 500_000_000_000\n");
        let (code, _stdout, stderr) = sluice_output(&["run", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", lang.name);
        let table = read_delta(&dir.path().join("tables/orders"), &pipeline);
        assert_eq!(table.rows.len(), 30, "{}: one row per order id", lang.name);
        let mut rows = table.rows.clone();
        rows.sort_by_key(|r| r["order_id"].as_str().unwrap().to_owned());
        tables.push((lang.name, rows, dir));
    }
    for (name, rows, _) in &tables[1..] {
        assert_eq!(rows, &tables[0].1, "{name}'s table differs from rust's");
    }
    // The last record of each id won: o-0 was last written by record 120.
    let o0 = &tables[0].1[0];
    assert_eq!((o0["order_id"].as_str(), o0["amount_cents"].as_i64()), (Some("o-0"), Some(12_000)), "{o0}");
}
