//! A sink that attacks the host's output and log paths, for the
//! hostile-output tests (`tests/it/hostile_output.rs`). It is written
//! against raw `wit_bindgen` bindings of `../../wit/v0.2.0`, not the SDK: the
//! attacks need what the SDK never does — list entries that alias the same
//! guest bytes, strings that are not UTF-8, upserts on keys of its choosing.
//!
//! The first record's value selects the attack, as words: `ok`,
//! `big-first-row N`, `sparse-file OFFSET`, `stage-arrow` (the second
//! record's value is the stream), `aliased-rows N LEN`, `aliased-fields N`,
//! `aliased-keys N LEN`, `non-utf8-log`, `non-utf8-row`, `non-utf8-path`,
//! `big-log BYTES`, `big-write BYTES`, `empty-ops`, `many-ops N`, `upsert-on KEY` and
//! `zero-row-upsert` (the other records' values are its rows), `log-fields
//! N` (N distinct small fields). Everything is staged to table `orders`.

#![allow(unsafe_code, reason = "the attacks hand the host strings that are not UTF-8")]

wit_bindgen::generate!({
    path: "../../../wit/v0.2.0",
    world: "sink",
    ownership: Borrowing { duplicate_if_necessary: true },
});

use exports::sluice::sink::handler::{BatchInfo, Guest, RecordStream, SinkError};
use sluice::sink::log::{self, Level};
use sluice::sink::output::{self, FileFormat, Rows, WriteMode};
use std::io::{Seek, SeekFrom, Write};

struct Attack;

/// Bytes handed on as a `string` argument without UTF-8 validation: the
/// bindings only pass its pointer and length to the host, which must refuse
/// them. (A `str` that is not UTF-8 is undefined behaviour in Rust; this
/// one is never looked at as text on the guest side.)
fn not_utf8(bytes: &[u8]) -> &str {
    // SAFETY: see above; only the pointer and length are used.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Every record value of the batch, in order (`None`: a null value).
fn values(records: &RecordStream) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(c) = records.next_chunk() {
        let mut pos = 0usize;
        let mut header = 0usize;
        for i in 0..c.offsets.len() {
            let take = |pos: &mut usize, len: i32| {
                let len = usize::try_from(len).ok()?;
                let v = c.data[*pos..*pos + len].to_vec();
                *pos += len;
                Some(v)
            };
            let _ = take(&mut pos, c.key_lens[i]);
            out.push(take(&mut pos, c.value_lens[i]));
            for _ in 0..c.header_counts[i] {
                pos += c.header_key_lens[header] as usize;
                pos += usize::try_from(c.header_value_lens[header]).unwrap_or(0);
                header += 1;
            }
        }
    }
    out
}

fn failed(e: impl std::fmt::Debug) -> SinkError {
    SinkError::Failed(format!("{e:?}"))
}

fn stage(table: &str, mode: WriteMode<'_>, rows: Rows<'_>) -> Result<(), SinkError> {
    output::stage(table, mode, rows).map_err(failed)
}

fn number(words: &[&str], i: usize) -> u64 {
    words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0)
}

/// An order row in canonical form (sorted keys, no whitespace).
fn order(i: u64, orders: u64) -> String {
    format!(
        r#"{{"amount_cents":{i},"customer":"c-{}","order_id":"o-{}","source_offset":{i},"status":"new","updated_at_ms":{i}}}"#,
        i % 7,
        i % orders.max(1)
    )
}

impl Guest for Attack {
    fn for_each_batch(_batch: BatchInfo, records: RecordStream) -> Result<(), SinkError> {
        let values = values(&records);
        let Some(Some(first)) = values.first() else { return Ok(()) };
        let command = String::from_utf8_lossy(first).into_owned();
        let words: Vec<&str> = command.split_whitespace().collect();
        let rest: Vec<&str> = values[1..].iter().flatten().filter_map(|v| std::str::from_utf8(v).ok()).collect();
        match words.first().copied().unwrap_or("") {
            "ok" => Ok(()),
            "big-first-row" => {
                let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(1 << 20));
                let mut rows = vec![big.as_str()];
                rows.extend(std::iter::repeat_n("{}", number(&words, 1) as usize));
                stage("orders", WriteMode::Append, Rows::Json(&rows))
            }
            "sparse-file" => {
                let mut f = std::fs::File::create("/staging/sparse.jsonl").map_err(failed)?;
                f.seek(SeekFrom::Start(number(&words, 1))).map_err(failed)?;
                f.write_all(b"{}\n").map_err(failed)?;
                drop(f);
                stage("orders", WriteMode::Append, Rows::File(("sparse.jsonl", FileFormat::JsonLines)))
            }
            "stage-arrow" => {
                let Some(Some(stream)) = values.get(1) else { return Err(failed("no stream")) };
                std::fs::write("/staging/rows.arrow", stream).map_err(failed)?;
                stage("orders", WriteMode::Append, Rows::File(("rows.arrow", FileFormat::ArrowIpc)))
            }
            "aliased-rows" => {
                let row = format!(r#"{{"a":"{}"}}"#, "x".repeat(number(&words, 2) as usize));
                let rows = vec![row.as_str(); number(&words, 1) as usize];
                stage("orders", WriteMode::Append, Rows::Json(&rows))
            }
            "aliased-fields" => {
                let fields = vec![("", ""); number(&words, 1) as usize];
                log::log(Level::Info, "fields", &fields);
                Ok(())
            }
            "log-fields" => {
                let names: Vec<String> = (0..number(&words, 1)).map(|i| format!("f{i}")).collect();
                let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
                log::log(Level::Info, "fields", &fields);
                Ok(())
            }
            "aliased-keys" => {
                let key = "k".repeat(number(&words, 2) as usize);
                let keys = vec![key.as_str(); number(&words, 1) as usize];
                stage("orders", WriteMode::Upsert(&keys), Rows::Json(&[]))
            }
            "non-utf8-log" => {
                let bytes = std::hint::black_box(b"caf\xe9".to_vec());
                log::log(Level::Info, not_utf8(&bytes), &[]);
                Ok(())
            }
            "non-utf8-row" => {
                let bytes = std::hint::black_box(b"{\"a\":\"\xff\"}".to_vec());
                stage("orders", WriteMode::Append, Rows::Json(&[not_utf8(&bytes)]))
            }
            "non-utf8-path" => {
                // wasi-libc refuses such a path itself (EILSEQ), so call
                // `open-at` through the canonical ABI directly.
                let fd = raw_wasi::staging();
                let result = raw_wasi::open_at(fd, b"\xff.jsonl");
                Err(failed(format!("open-at returned {result:?}")))
            }
            "big-log" => {
                let message = "x".repeat(number(&words, 1) as usize);
                log::log(Level::Info, &message, &[]);
                Err(failed("the host took the message"))
            }
            "big-write" => {
                let buf = vec![b' '; number(&words, 1) as usize];
                let mut f = std::fs::File::create("/staging/big.txt").map_err(failed)?;
                // One `write` call: std passes the whole buffer to the host.
                let n = f.write(&buf).map_err(failed)?;
                Err(failed(format!("the host took a {n}-byte write")))
            }
            "empty-ops" => loop {
                stage("orders", WriteMode::Append, Rows::Json(&[]))?;
            },
            "many-ops" => {
                let keys = ["order_id"];
                for i in 0..number(&words, 1) {
                    stage("orders", WriteMode::Upsert(&keys), Rows::Json(&[order(i, 2500).as_str()]))?;
                }
                Ok(())
            }
            "upsert-on" => {
                let keys: Vec<&str> = words[1..].to_vec();
                stage("orders", WriteMode::Upsert(&keys), Rows::Json(&rest))
            }
            "zero-row-upsert" => stage("orders", WriteMode::Upsert(&["order_id"]), Rows::Json(&[])),
            other => Err(SinkError::InvalidInput(format!("unknown attack {other:?}"))),
        }
    }
}

/// Two WASI 0.2 imports called by hand, to hand `open-at` a path that is
/// not UTF-8 (the sink's world imports WASI through wasi-libc already).
mod raw_wasi {
    #[link(wasm_import_module = "wasi:filesystem/preopens@0.2.0")]
    unsafe extern "C" {
        #[link_name = "get-directories"]
        fn get_directories(ret: *mut [u32; 2]);
    }

    #[link(wasm_import_module = "wasi:filesystem/types@0.2.0")]
    unsafe extern "C" {
        #[link_name = "[method]descriptor.open-at"]
        fn open_at_raw(this: i32, path_flags: i32, path: *const u8, path_len: usize, open_flags: i32, flags: i32, ret: *mut [u32; 2]);
    }

    /// The handle of the first preopened directory, `/staging`.
    pub(crate) fn staging() -> i32 {
        let mut ret = [0u32; 2];
        // SAFETY: `ret` is the (pointer, length) the canonical ABI writes;
        // the list it points to was allocated through cabi_realloc.
        unsafe {
            get_directories(&mut ret);
            assert!(ret[1] >= 1, "a preopen");
            *(ret[0] as *const i32)
        }
    }

    /// `open-at(fd, path)` for reading; the raw result words.
    pub(crate) fn open_at(fd: i32, path: &[u8]) -> [u32; 2] {
        let mut ret = [0u32; 2];
        // SAFETY: pointer and length of a live byte slice; `ret` receives
        // the result<descriptor, error-code> the ABI writes.
        unsafe { open_at_raw(fd, 0, path.as_ptr(), path.len(), 0, 1, &mut ret) };
        ret
    }
}

export!(Attack);
