//! Probes what the sandbox lets a sink do, for the host's isolation tests.
//!
//! Each record's value is one command line; the sink runs it and stages one
//! row `{"cmd", "ok", "result"}` per command to the `probe` table, one
//! `append_json` call per chunk (so chunk boundaries show in the staged
//! output). Errors are reported in the row, as `{kind:?}: {error}`, not
//! returned, so one batch can try many escapes.
//!
//! Relative paths are joined onto `/staging/`, because the sink's working
//! directory may not be set. Commands:
//!
//! | command                      | result                                        |
//! |------------------------------|-----------------------------------------------|
//! | `write PATH CONTENT...`      | `""`; writes the rest of the line             |
//! | `write-hex PATH HEX`         | `""`; writes the hex-decoded bytes            |
//! | `read PATH`                  | the file's contents (lossy UTF-8)             |
//! | `list PATH`                  | sorted entry names, joined by `,`             |
//! | `open PATH`                  | the first 64 bytes (lossy UTF-8)              |
//! | `symlink TARGET LINK`        | `ok` (TARGET is stored as given)              |
//! | `hardlink TARGET LINK`       | `ok`                                          |
//! | `connect ADDR`               | `connected` (TCP)                             |
//! | `env`                        | `vars={count} {vars:?} args={args:?}`         |
//! | `fill PATH BYTES`            | bytes written, in 64 KiB writes               |
//! | `stdin`                      | bytes read from stdin                         |
//! | `clock`                      | `{wall_ns} {mono_ns} {mono_ns} {random hex}`  |
//! | `stage-file PATH FORMAT TABLE` | `""`; FORMAT is `json-lines` or `arrow-ipc`, PATH is passed to the host as given |
//! | `typed ID MICROS DAYS UNSCALED SCALE HEX OP` | `""`; upserts (OP `upsert`) or deletes (`delete`) a row of table `typed` built with the SDK's value texts (`sluice_sdk::values`); HEX `-` is no bytes |

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_sdk::{Batch, FileFormat, SinkError, Table};

/// The outcome of one command: `Ok(result)` or `Err(result)`.
type Outcome = Result<String, String>;

fn probe(batch: Batch) -> Result<(), SinkError> {
    let started = Instant::now();
    let table = Table::new("probe");
    for chunk in batch.chunks() {
        let rows: Vec<String> = chunk
            .iter()
            .map(|record| {
                let cmd = String::from_utf8_lossy(record.value().unwrap_or_default()).into_owned();
                let (ok, result) = match run(&cmd, started) {
                    Ok(result) => (true, result),
                    Err(result) => (false, result),
                };
                json!({ "cmd": cmd, "ok": ok, "result": result }).to_string()
            })
            .collect();
        if !rows.is_empty() {
            table.append_json(rows)?;
        }
    }
    Ok(())
}

fn run(line: &str, started: Instant) -> Outcome {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let args: Vec<&str> = rest.split_whitespace().collect();
    match (cmd, args.as_slice()) {
        ("write", [path, ..]) => {
            let content = rest
                .trim_start()
                .split_once(' ')
                .map_or("", |(_, content)| content);
            fs::write(resolve(path), content)
                .map(|()| String::new())
                .map_err(describe)
        }
        ("write-hex", [path, hex]) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| format!("bad hex: {e}"))?;
            fs::write(resolve(path), bytes)
                .map(|()| String::new())
                .map_err(describe)
        }
        ("read", [path]) => fs::read(resolve(path)).map(lossy).map_err(describe),
        ("list", [path]) => list(path).map_err(describe),
        ("open", [path]) => open(path).map_err(describe),
        ("symlink", [target, link]) => symlink(target, link),
        ("hardlink", [target, link]) => fs::hard_link(resolve(target), resolve(link))
            .map(|()| "ok".to_owned())
            .map_err(describe),
        ("connect", [addr]) => TcpStream::connect(addr)
            .map(|_| "connected".to_owned())
            .map_err(describe),
        ("env", []) => Ok(env()),
        ("fill", [path, bytes]) => {
            let bytes = bytes.parse().map_err(|e| format!("bad byte count: {e}"))?;
            fill(path, bytes)
        }
        ("stdin", []) => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .map(|n| n.to_string())
                .map_err(describe)
        }
        ("clock", []) => clock(started),
        ("stage-file", [path, format, table]) => {
            let format = match *format {
                "json-lines" => FileFormat::JsonLines,
                "arrow-ipc" => FileFormat::ArrowIpc,
                other => return Err(format!("unknown format {other:?}")),
            };
            Table::new(*table)
                .append_file(path, format)
                .map(|()| String::new())
                .map_err(|e| e.to_string())
        }
        ("typed", [id, micros, days, unscaled, scale, raw, op]) => typed(id, micros, days, unscaled, scale, raw, op),
        _ => Err("unknown command".to_owned()),
    }
}

/// The `typed` command: one row of canonical value texts, staged as an
/// upsert or a delete. The Python and JavaScript probes build the same row.
fn typed(id: &str, micros: &str, days: &str, unscaled: &str, scale: &str, raw: &str, op: &str) -> Result<String, String> {
    use sluice_sdk::values;
    let num = |s: &str| s.parse::<i128>().map_err(|e| format!("{s}: {e}"));
    let micros = num(micros)? as i64;
    let raw = if raw == "-" { "" } else { raw };
    let bytes: Vec<u8> = (0..raw.len() / 2).map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let row = serde_json::json!({
        "id": num(id)? as i64,
        "at": values::timestamp_micros(micros),
        "local": values::timestamp_ntz_micros(micros),
        "day": values::date_days(num(days)? as i64),
        "amount": values::decimal(num(unscaled)?, num(scale)? as u8),
        "raw": values::hex(&bytes),
    })
    .to_string();
    let table = Table::new("typed");
    match op {
        "upsert" => table.upsert_json(&["id"], [row]),
        "delete" => table.delete_json(&["id"], [row]),
        other => return Err(format!("unknown op {other:?}")),
    }
    .map(|()| String::new())
    .map_err(|e| e.to_string())
}

fn resolve(path: &str) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        PathBuf::from("/staging").join(path)
    }
}

fn describe(e: io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

fn list(path: &str) -> io::Result<String> {
    let mut names = fs::read_dir(resolve(path))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names.join(","))
}

fn open(path: &str) -> io::Result<String> {
    let mut head = Vec::with_capacity(64);
    File::open(resolve(path))?.take(64).read_to_end(&mut head)?;
    Ok(lossy(head))
}

/// `std::os::wasi::fs::symlink_path` is unstable on wasip2; the deprecated
/// `fs::soft_link` is stable everywhere and maps to the same WASI call.
#[allow(deprecated, reason = "the only stable way to create a symlink on WASI")]
fn symlink(target: &str, link: &str) -> Outcome {
    fs::soft_link(target, resolve(link))
        .map(|()| "ok".to_owned())
        .map_err(describe)
}

fn env() -> String {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("vars={} {vars:?} args={args:?}", vars.len())
}

fn fill(path: &str, bytes: u64) -> Outcome {
    const WRITE: usize = 64 * 1024;
    let zeros = vec![0u8; WRITE];
    let mut file = File::create(resolve(path)).map_err(describe)?;
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(WRITE as u64) as usize;
        file.write_all(&zeros[..n])
            .map_err(|e| format!("{} after {written} bytes", describe(e)))?;
        written += n as u64;
    }
    file.flush().map_err(describe)?;
    Ok(written.to_string())
}

fn clock(started: Instant) -> Outcome {
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_nanos();
    let mono_ns_1 = started.elapsed().as_nanos();
    let mono_ns_2 = started.elapsed().as_nanos();
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| format!("getrandom: {e}"))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{wall_ns} {mono_ns_1} {mono_ns_2} {hex}"))
}

sluice_sdk::export_sink!(probe);
