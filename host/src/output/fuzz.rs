//! Property tests (fuzzing) of the two parsers a sink reaches through
//! `stage`: JSON rows (canonical encoding) and Arrow IPC streams.
//!
//! Each property runs over arbitrary bytes and over mutations of valid
//! input. A short run is the default (`cargo test --release -p sluice --lib
//! output::fuzz`, 256 cases a property); a long one sets `PROPTEST_CASES`,
//! e.g. `PROPTEST_CASES=200000`. A failing case is shrunk and printed.
//!
//! What must hold: nothing panics (a panic in a host function would take
//! the host down with the sink); a JSON row is either refused with an error
//! or staged in a form that stages to itself again (canonical form is
//! idempotent) and digests the same every time; decoding a stream never
//! allocates more than a small multiple of its length, however large the
//! lengths it declares. Allocation is measured by a counting allocator,
//! per thread.

use super::tests::{arrow_stream, arrow_stream_with};
use super::*;
use proptest::prelude::*;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes live on the current thread and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: a thread being torn down has no counters left.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

#[allow(unsafe_code, reason = "a global allocator that counts, delegating to the system one")]
// SAFETY: every call is forwarded to `System` unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A moving realloc briefly holds both blocks.
        count(new_size as i64);
        count(-(layout.size() as i64));
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The most bytes `f` had allocated at once on this thread beyond what was
/// live when it started.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, (PEAK.with(Cell::get) - start).max(0) as u64)
}

fn big_budget(limit: Limit) -> Budget {
    Budget::new(limit, &Limits { output_bytes: 1 << 40, output_rows: 1 << 40, ..Limits::default() })
}

/// Stage one row; `Some(bytes)`: its canonical form (with the newline).
fn stage_row(row: &[u8], keys: &[String]) -> Option<Vec<u8>> {
    let budget = big_budget(Limit::OutputBytes);
    let mut rows = JsonRows::new(keys);
    match rows.push(row, &budget).expect("the budget is large") {
        Ok(()) => Some(rows.into_parts().0),
        Err(_) => None,
    }
}

fn json_digest(rows: &[u8]) -> String {
    let mut d = OutputDigest::new();
    d.add("t", &WriteMode::Append, FileFormat::JsonLines, digest::Rows::Copied(rows));
    d.finish()
}

/// What must hold for any row: staged rows stage to themselves.
fn check_row(row: &[u8], keys: &[String]) -> Result<(), TestCaseError> {
    if let Some(once) = stage_row(row, keys) {
        prop_assert!(once.ends_with(b"\n") && once.iter().filter(|&&b| b == b'\n').count() == 1, "one line");
        let line = &once[..once.len() - 1];
        let value: Value = serde_json::from_slice(line).map_err(|e| TestCaseError::fail(format!("staged row is not JSON: {e}")))?;
        prop_assert!(value.is_object());
        let twice = stage_row(line, keys);
        // Finding: serde_json (without its `float_roundtrip` feature) may
        // parse a float's shortest form to a neighbouring double, so a row
        // with such a float can re-encode one digit differently. Staging is
        // still deterministic; only floats are exempt from idempotence.
        if twice.as_deref() != Some(&once[..]) {
            let has_float = line.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
            prop_assert!(has_float, "canonical form is idempotent: {:?} became {:?}", String::from_utf8_lossy(&once), twice.map(|t| String::from_utf8_lossy(&t).into_owned()));
            let again = stage_row(&twice.clone().unwrap()[..twice.as_ref().unwrap().len() - 1], keys);
            prop_assert!(again.is_some(), "the second form stages too");
        }
        // (Not asserted: that the fast path accepts it. Floats are left to
        // the general path by design.)
        prop_assert_eq!(json_digest(&once), json_digest(&once));
    }
    Ok(())
}

/// A JSON value as text, with spacing and key order the strategy chooses.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        prop_oneof![Just("1e15"), Just("-0"), Just("1E2"), Just("0.1e1"), Just("1e400")].prop_map(str::to_owned),
        "[a-z\\\\\"\u{e9}\u{1F600}\n\t/]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop_oneof![Just(r#""\u0041\/\ud83d\ude00""#), Just(r#""\u00e9""#), Just(r#""\ud800""#)].prop_map(str::to_owned),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
            (prop::collection::vec(("[a-d]{0,2}", inner), 0..6), any::<bool>()).prop_map(|(members, spaced)| {
                let sep = if spaced { ", " } else { "," };
                let body: Vec<String> = members.iter().map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap())).collect();
                format!("{{{}}}", body.join(sep))
            }),
        ]
    })
}

/// A top-level object, often with an `id` key column.
fn json_row() -> impl Strategy<Value = String> {
    (json_text(), any::<bool>(), any::<u32>()).prop_map(|(v, with_id, id)| {
        let id = if with_id { format!("\"id\":{id},") } else { String::new() };
        format!("{{{id}\"v\":{v}}}")
    })
}

/// Byte-level mutations: (position, what to do, byte).
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, b) in edits {
        if bytes.is_empty() {
            bytes.push(b);
            continue;
        }
        let at = at % bytes.len();
        match op % 4 {
            0 => bytes[at] = b,
            1 => bytes.insert(at, b),
            2 => {
                bytes.remove(at);
            }
            _ => bytes[at] ^= 1 << (b % 8),
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8)
}

proptest! {
    #[test]
    fn json_rows_from_arbitrary_bytes(row in prop::collection::vec(any::<u8>(), 0..256), keyed in any::<bool>()) {
        let keys = if keyed { vec!["id".to_owned()] } else { vec![] };
        check_row(&row, &keys)?;
    }

    #[test]
    fn json_rows_from_mutated_valid_rows(row in json_row(), edits in edits(), keyed in any::<bool>()) {
        let keys = if keyed { vec!["id".to_owned()] } else { vec![] };
        check_row(row.as_bytes(), &keys)?;
        check_row(&mutate(row.into_bytes(), &edits), &keys)?;
    }

    /// A valid row stages to exactly what re-encoding its parsed value gives.
    #[test]
    fn valid_rows_stage_to_their_canonical_encoding(row in json_row()) {
        if let Ok(value) = serde_json::from_str::<Value>(&row) {
            let mut expected = Vec::new();
            json_text::write_canonical(&json_text::parse(row.as_bytes()).unwrap(), &mut expected);
            expected.push(b'\n');
            let staged = stage_row(row.as_bytes(), &[]);
            prop_assert_eq!(staged.as_ref(), Some(&expected));
            // serde_json reads the same shape (numbers aside: its float
            // parser is not correctly rounded, so digits may read apart).
            let shape = |v: &Value| v.to_string().chars().filter(|c| !c.is_ascii_digit() && !matches!(c, '.' | 'e' | 'E' | '-' | '+')).collect::<String>();
            prop_assert_eq!(shape(&serde_json::from_slice::<Value>(&expected).unwrap()), shape(&value));
        }
    }

    #[test]
    fn arrow_streams_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_stream(bytes)?;
    }

    #[test]
    fn arrow_streams_from_mutated_valid_streams(edits in edits(), compressed in any::<bool>(), rows in 0usize..50) {
        let ids: Vec<Option<i64>> = (0..rows as i64).map(|i| (i % 5 != 0).then_some(i)).collect();
        let stream = if compressed {
            let options = arrow_ipc::writer::IpcWriteOptions::default()
                .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
                .unwrap();
            arrow_stream_with(&ids, options)
        } else {
            arrow_stream(&ids)
        };
        check_stream(mutate(stream, &edits))?;
    }

    #[test]
    fn nested_arrow_streams_from_mutated_valid_streams(edits in edits()) {
        check_stream(mutate(nested_stream(), &edits))?;
    }

    #[test]
    fn nested_arrow_streams_declaring_huge_lengths(word in 0usize..256, value in prop_oneof![Just(i64::MAX), Just(1i64 << 40), Just(-1), Just(0), any::<i64>()]) {
        let mut stream = nested_stream();
        let at = (word * 8) % (stream.len() - 8);
        stream[at..at + 8].copy_from_slice(&value.to_le_bytes());
        check_stream(stream)?;
    }

    /// Every 8-byte word of a valid stream set to a huge length: whatever
    /// it declares, decoding allocates in proportion to the stream.
    #[test]
    fn arrow_streams_declaring_huge_lengths(word in 0usize..64, value in prop_oneof![Just(i64::MAX), Just(1i64 << 40), Just(-1), any::<i64>()]) {
        let mut stream = utf8_stream();
        let at = (word * 8) % (stream.len() - 8);
        stream[at..at + 8].copy_from_slice(&value.to_le_bytes());
        check_stream(stream)?;
    }
}

/// A stream of every nested and typed column a table can take: struct,
/// list and map (offsets and child nodes to corrupt), decimal, timestamp
/// and date.
fn nested_stream() -> Vec<u8> {
    use arrow_array::builder::{Int32Builder, ListBuilder, MapBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Date32Array, Decimal128Array, Int64Array, StringArray, StructArray, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Fields};
    let mut list = ListBuilder::new(StringBuilder::new());
    for row in [vec![Some("a"), None], vec![], vec![Some("bbb")], vec![None, Some("c"), Some("d")]] {
        for v in row {
            list.values().append_option(v);
        }
        list.append(true);
    }
    let mut map = MapBuilder::new(None, StringBuilder::new(), Int32Builder::new());
    for row in [vec![("x", Some(1))], vec![], vec![("y", None), ("z", Some(3))], vec![("w", Some(4))]] {
        for (k, v) in row {
            map.keys().append_value(k);
            map.values().append_option(v);
        }
        map.append(true).unwrap();
    }
    let fields = Fields::from(vec![Field::new("city", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]);
    let address = StructArray::new(
        fields,
        vec![
            Arc::new(StringArray::from(vec![Some("z"), None, Some("b"), Some("q")])) as ArrayRef,
            Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(4)])),
        ],
        None,
    );
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("tags", Arc::new(list.finish())),
        ("attrs", Arc::new(map.finish())),
        ("address", Arc::new(address)),
        ("amount", Arc::new(Decimal128Array::from(vec![Some(1), None, Some(-99_999), Some(5)]).with_precision_and_scale(7, 2).unwrap())),
        ("at", Arc::new(TimestampMicrosecondArray::from(vec![Some(-1), Some(0), None, Some(1 << 50)]).with_timezone("UTC"))),
        ("day", Arc::new(Date32Array::from(vec![Some(-1), None, Some(0), Some(20_000)]))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

/// A stream with strings, so offsets and data buffers are there to corrupt.
fn utf8_stream() -> Vec<u8> {
    use arrow_array::{ArrayRef, BooleanArray, Float64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("s", DataType::Utf8, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("f", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc"), Some("dddd")])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true)])),
        Arc::new(Float64Array::from(vec![1.0, 2.5, -3.0, 0.0])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

/// Decoding `bytes` neither panics nor allocates more than a small multiple
/// of their length; whatever decodes is counted consistently.
fn check_stream(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let len = bytes.len() as u64;
    let buffer = Buffer::from_vec(bytes);
    let (rows, cost) = (big_budget(Limit::OutputRows), big_budget(Limit::OutputBytes));
    let (result, peak) = peak_allocation(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arrow_rows(buffer, &[], "f.arrow", &rows, &cost)))
    });
    let result = result.map_err(|_| TestCaseError::fail("arrow_rows panicked"))?;
    let result = match result {
        Ok(r) => r,
        // A declared row count past the budget ends it before decoding.
        Err(e) if e.downcast_ref::<LimitExceeded>().is_some() => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("not a stage error nor a limit: {e}"))),
    };
    // A panic in the decoder is caught by `arrow_rows`' backstop; the
    // framing check should leave it nothing to catch.
    if let Err(wit::StageError::InvalidRows(m)) = &result {
        prop_assert!(!m.contains("gave up"), "the decoder panicked and the backstop caught it: {m}");
    }
    // Schema and batch bookkeeping is a few KiB; columns share the bytes.
    prop_assert!(peak <= 64 * 1024 + 8 * len, "decoding {len} bytes allocated {peak}");
    if let Ok((StagedRows::ArrowIpc(a), n)) = &result {
        prop_assert_eq!(*n, a.batches().iter().map(|b| b.num_rows() as u64).sum::<u64>());
    }
    Ok(())
}

#[test]
fn a_valid_nested_stream_decodes_with_every_column() {
    let (rows, cost) = (big_budget(Limit::OutputRows), big_budget(Limit::OutputBytes));
    let (staged, n) = arrow_rows(Buffer::from_vec(nested_stream()), &[], "f.arrow", &rows, &cost).unwrap().unwrap();
    assert_eq!(n, 4);
    let StagedRows::ArrowIpc(a) = staged else { panic!("arrow rows") };
    assert_eq!(a.batches()[0].num_columns(), 6);
}

