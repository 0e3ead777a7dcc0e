//! Shared helpers: guest paths, runtimes with small limits, batches, probes.

use serde_json::Value;
use sluice::{BatchFailure, BatchOutput, BatchSpec, Limits, OwnedRecord, RecordSource, Runtime, RuntimeBuilder, Sink, VecSource};
use std::path::PathBuf;
use tempfile::TempDir;

/// A guest component built by `host/build.rs`.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("SLUICE_GUEST_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A runtime with its own scratch root, sharing one compile cache.
pub struct Harness {
    pub scratch: TempDir,
    pub runtime: Runtime,
}

pub fn harness(limits: Limits) -> Harness {
    harness_with(limits, |b| b)
}

pub fn harness_with(limits: Limits, f: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> Harness {
    let scratch = tempfile::tempdir().unwrap();
    let builder = RuntimeBuilder::new(scratch.path())
        .with_limits(limits)
        .with_max_concurrent_batches(8)
        .with_cache_dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache"));
    let runtime = f(builder).build().unwrap();
    Harness { scratch, runtime }
}

impl Harness {
    pub fn load(&self, name: &str) -> Sink {
        self.runtime.load(guest(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
    }
}

/// Records with these values on topic `t`, partition 0, offsets from 0.
pub fn records(values: &[&str]) -> Vec<OwnedRecord> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| OwnedRecord {
            topic: "t".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: 1_700_000_000_000 + i as i64,
            value: Some(v.as_bytes().to_vec()),
            ..Default::default()
        })
        .collect()
}

pub fn spec(pipeline: &str, batch_id: u64, records: &[OwnedRecord]) -> BatchSpec {
    BatchSpec {
        pipeline_id: pipeline.into(),
        batch_id,
        planned_timestamp_ms: 1_700_000_000_000 + batch_id as i64 * 1000,
        ranges: BatchSpec::ranges_covering(records),
    }
}

/// Run `values` as batch `batch_id` of pipeline `p`.
pub fn run(sink: &Sink, batch_id: u64, values: &[&str]) -> Result<BatchOutput, BatchFailure> {
    let recs = records(values);
    sink.run(&spec("p", batch_id, &recs), 1, Box::new(VecSource::new(recs)))
}

/// The JSON rows staged to `table`, in order.
pub fn rows(output: &BatchOutput, table: &str) -> Vec<Value> {
    output
        .ops
        .iter()
        .filter(|op| op.table == table)
        .flat_map(|op| op.rows.bytes().split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()))
        .collect()
}

/// One result row of the `sandbox-probe` guest.
#[derive(Debug, Clone)]
pub struct Probe {
    pub cmd: String,
    pub ok: bool,
    pub result: String,
}

pub fn probes(output: &BatchOutput) -> Vec<Probe> {
    rows(output, "probe")
        .into_iter()
        .map(|r| Probe {
            cmd: r["cmd"].as_str().unwrap().to_owned(),
            ok: r["ok"].as_bool().unwrap(),
            result: r["result"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The probe result of `cmd` (exactly one).
pub fn probe<'a>(all: &'a [Probe], cmd: &str) -> &'a Probe {
    let hits: Vec<_> = all.iter().filter(|p| p.cmd == cmd).collect();
    assert_eq!(hits.len(), 1, "exactly one result for {cmd:?} in {all:#?}");
    hits[0]
}

/// Wraps a source and waits at a barrier before every chunk after the
/// first: two batches run through it are provably inside the sink at the
/// same time.
pub struct RendezvousSource {
    pub inner: VecSource,
    pub barrier: std::sync::Arc<std::sync::Barrier>,
    pub first: bool,
}

impl RecordSource for RendezvousSource {
    fn fill(&mut self, chunk: &mut sluice::ChunkBuilder) -> Result<sluice::Fill, sluice::SourceError> {
        if !std::mem::take(&mut self.first) {
            self.barrier.wait();
        }
        self.inner.fill(chunk)
    }
}

/// A real Kafka-protocol broker process (Tansu, sqlite storage) on a free
/// loopback port, stopped when dropped. `make test` installs Tansu and sets
/// `SLUICE_TANSU`; without it the tests that need a broker fail saying so.
pub struct Broker {
    child: std::process::Child,
    bin: String,
    pub bootstrap: String,
    _dir: TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let bin = std::env::var("SLUICE_TANSU").unwrap_or_else(|_| "tansu".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let child = std::process::Command::new(&bin)
            .current_dir(dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://broker.db"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Kafka broker `{bin}` ({e}); run the tests with `make test`, which installs it"));
        // Wait (bounded) until the broker accepts connections.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "broker did not listen on port {port} within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Broker { child, bin, bootstrap: format!("127.0.0.1:{port}"), _dir: dir }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = std::process::Command::new(&self.bin)
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.bootstrap), "--partitions", &partitions.to_string(), name])
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {name}");
    }

    /// Delete a topic and its records, as retention eventually would.
    pub fn delete_topic(&self, name: &str) {
        let status = std::process::Command::new(&self.bin)
            .args(["topic", "delete", "--broker", &format!("tcp://{}", self.bootstrap), name])
            .status()
            .unwrap();
        assert!(status.success(), "deleting topic {name}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce `values` to `topic`, round-robin over `partitions`, and wait
/// until the broker has them all.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, values: &[String]) {
    produce_with(bootstrap, &[], topic, partitions, values);
}

/// [`produce`] with client properties (TLS, SASL) set first.
pub fn produce_with(bootstrap: &str, properties: &[(&str, &str)], topic: &str, partitions: i32, values: &[String]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        client.set(*k, *v);
    }
    let producer: BaseProducer = client.create().unwrap();
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        let mut record = BaseRecord::to(topic).partition(i as i32 % partitions).key(&key).payload(v);
        // A full local queue empties as deliveries complete.
        while let Err((e, r)) = producer.send(record) {
            assert!(matches!(e, rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
            record = r;
            producer.poll(std::time::Duration::from_millis(10));
        }
        producer.poll(std::time::Duration::ZERO);
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
}

/// A `pipeline.toml` running the `fan-out` guest from `topic` into the
/// tables `events` and `audit` under `dir`. `extra` is appended to
/// `[pipeline]` (e.g. `max_attempts = 2`).
pub fn fan_out_config(dir: &std::path::Path, bootstrap: &str, topic: &str, max_records: u64, extra: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "fan-out"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
metrics_file = "metrics.prom"
retry_backoff_ms = 20
{extra}

[source]
bootstrap_servers = "{bootstrap}"
topics = ["{topic}"]
max_records_per_batch = {max_records}
fetch_timeout_ms = 20000
{tables}"#,
        component = guest("fan-out").display(),
        tables = fan_out_tables("tables"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[[tables]]` of the `fan-out` sink, `events` and `audit`, under
/// `base` (a directory relative to the config, or an object-store URL).
pub fn fan_out_tables(base: &str) -> String {
    format!(
        r#"
[[tables]]
name = "events"
path = "{base}/events"
columns = [
  {{ name = "id", type = "string", nullable = false }},
  {{ name = "topic", type = "string" }},
  {{ name = "partition", type = "integer" }},
  {{ name = "offset", type = "long" }},
]

[[tables]]
name = "audit"
path = "{base}/audit"
columns = [{{ name = "id", type = "string" }}, {{ name = "batch_id", type = "long" }}]
"#
    )
}

/// A small xorshift generator for random kill moments, seeded from the
/// clock, or from `SLUICE_TEST_SEED` to repeat a failed run's draws. The
/// seed is printed.
pub struct Seeded(u64);

impl Seeded {
    pub fn from_clock(what: &str) -> Seeded {
        let seed = std::env::var("SLUICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        }) | 1;
        eprintln!("{what}: random seed {seed} (SLUICE_TEST_SEED={seed} repeats it)");
        Seeded(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `sluice <args>` as a command. `SLUICE_BIN` runs another build instead:
/// the previous commit's, to show a test fails without a fix, or one copied
/// out of a target directory that several checkouts share (each build
/// overwrites `target/release/sluice`).
pub fn sluice(args: &[&str]) -> std::process::Command {
    let bin = std::env::var_os("SLUICE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sluice").into());
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args).env_remove("SLUICE_FAILPOINT");
    cmd
}

/// Run `sluice <args>` to completion: (exit code, stdout, stderr).
pub fn sluice_output(args: &[&str]) -> (i32, String, String) {
    let out = sluice(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Delta table as read by the independent reader (Python `deltalake`).
#[derive(Debug)]
pub struct ReadBack {
    pub version: u64,
    /// The table's `txn` version for the app id asked about.
    pub txn: Option<i64>,
    pub rows: Vec<Value>,
    /// The data files of the version read.
    pub files: usize,
}

impl ReadBack {
    /// How often each value of `column` occurs.
    pub fn counts(&self, column: &str) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for r in &self.rows {
            *counts.entry(r[column].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        counts
    }
}

/// Read the table at `path` with Python `deltalake` (`make test` installs
/// it and sets `SLUICE_PYTHON`).
pub fn read_delta(path: &std::path::Path, app_id: &str) -> ReadBack {
    read_delta_table(path.as_os_str(), app_id, None, None)
}

/// [`read_delta`] with partition filters `(column, op, value)`, which the
/// reader prunes files by: only matching rows, and only matching files in
/// `files`.
pub fn read_delta_partitions(path: &std::path::Path, app_id: &str, filters: &[(&str, &str, &str)]) -> ReadBack {
    let filters = serde_json::to_string(&filters.iter().map(|(c, o, v)| [c, o, v]).collect::<Vec<_>>()).unwrap();
    read_delta_table(path.as_os_str(), app_id, None, Some(&filters))
}

/// Read the table at the object-store URL `uri` (`s3://bucket/path`,
/// `az://container/path`) with Python `deltalake`, connecting with
/// `options` (the object_store keys delta-rs takes, e.g. an
/// `object_servers` server's `storage_options()`).
pub fn read_delta_at(uri: &str, app_id: &str, options: &[(String, String)]) -> ReadBack {
    let options: serde_json::Map<String, Value> = options
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    read_delta_table(
        std::ffi::OsStr::new(uri),
        app_id,
        Some(&Value::Object(options).to_string()),
        None,
    )
}

/// Run `tests/reader/read_delta.py` on `table` (a directory or a URL). The
/// storage options go in the environment, as JSON, not on the command line
/// (they hold keys); `None` removes any inherited value, so a local read
/// never picks up another store's options.
fn read_delta_table(table: &std::ffi::OsStr, app_id: &str, options: Option<&str>, partitions: Option<&str>) -> ReadBack {
    let python = std::env::var("SLUICE_PYTHON")
        .unwrap_or_else(|_| panic!("SLUICE_PYTHON is not set: run the tests with `make test`, which installs the Delta reader"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reader/read_delta.py");
    let read = || {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(script).arg(table).arg(app_id);
        match options {
            Some(json) => cmd.env("SLUICE_READER_STORAGE_OPTIONS", json),
            None => cmd.env_remove("SLUICE_READER_STORAGE_OPTIONS"),
        };
        match partitions {
            Some(json) => cmd.env("SLUICE_READER_PARTITIONS", json),
            None => cmd.env_remove("SLUICE_READER_PARTITIONS"),
        };
        cmd.output().unwrap()
    };
    let mut out = read();
    // The reader's native code has aborted (SIGABRT) once under load; a
    // reader that died of a signal is asked again, an error is not.
    for _ in 0..2 {
        if out.status.code().is_some() {
            break;
        }
        eprintln!("the Delta reader died ({}); reading again", out.status);
        out = read();
    }
    assert!(
        out.status.success(),
        "the Delta reader failed on {}: {}",
        table.to_string_lossy(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    ReadBack {
        version: v["version"].as_u64().unwrap(),
        txn: v["txn"].as_i64(),
        rows: v["rows"].as_array().unwrap().clone(),
        files: v["files"].as_u64().unwrap() as usize,
    }
}

/// Every id in `ids` exactly once in both tables of the `fan-out` sink
/// under `dir` (read back with the independent reader), none missing and
/// none foreign. Returns each table's last batch (`txn`): events, audit.
pub fn assert_fan_out_exactly_once(dir: &std::path::Path, ids: &[String]) -> [Option<i64>; 2] {
    ["events", "audit"].map(|table| {
        let read = read_delta(&dir.join("tables").join(table), "fan-out");
        assert_ids_exactly_once(table, &read, ids);
        read.txn
    })
}

/// Every id in `ids` exactly once in the `id` column of `read` (table
/// `table`), none missing and none foreign.
pub fn assert_ids_exactly_once(table: &str, read: &ReadBack, ids: &[String]) {
    let counts = read.counts("id");
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    let foreign: Vec<_> = counts.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(dupes.is_empty(), "table {table}: ids not exactly once: {dupes:?}");
    assert!(missing.is_empty(), "table {table}: {} ids missing: {missing:?}", missing.len());
    assert!(foreign.is_empty(), "table {table}: foreign ids: {foreign:?}");
}

/// Change the table at `path` as another writer would (see
/// `tests/reader/tamper_delta.py`).
pub fn tamper_delta(path: &std::path::Path, args: &[&str]) {
    let python = std::env::var("SLUICE_PYTHON").expect("SLUICE_PYTHON is not set: run the tests with `make test`");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reader/tamper_delta.py");
    let out = std::process::Command::new(python).arg(script).arg(path).args(args).output().unwrap();
    assert!(out.status.success(), "tamper_delta {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A `pipeline.toml` running `component` (an orders sink, e.g. the example
/// `orders-upsert`, as the guides describe) from the topic `orders` into the
/// keyed table `orders` under `dir`. `extra` is appended (e.g. `[limits]`).
pub fn orders_config(dir: &std::path::Path, id: &str, bootstrap: &str, max_records: u64, component: &std::path::Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
id = "{id}"
component = "{component}"
checkpoint = "checkpoint"
trigger = "available_now"
retry_backoff_ms = 20

[source]
bootstrap_servers = "{bootstrap}"
topics = ["orders"]
max_records_per_batch = {max_records}
fetch_timeout_ms = 20000

[[tables]]
name = "orders"
path = "tables/orders"
keys = ["order_id"]
columns = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer", type = "string" }},
  {{ name = "amount_cents", type = "long" }},
  {{ name = "status", type = "string" }},
  {{ name = "updated_at_ms", type = "long" }},
  {{ name = "source_offset", type = "long" }},
]
{extra}"#,
        component = component.display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The checkpoint's offset and commit logs under `dir`: file → bytes.
pub fn checkpoint_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for log in ["offsets", "commits"] {
        for e in std::fs::read_dir(dir.join("checkpoint").join(log)).unwrap().flatten() {
            files.insert(format!("{log}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap());
        }
    }
    files
}

/// What a finished `sluice` process showed: exit code, output, and its own
/// peak resident memory.
#[derive(Debug)]
pub struct Measured {
    /// The exit code, or `-signal` when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Peak RSS of the command alone, in bytes.
    pub peak_rss: u64,
    /// Wall time from spawn to exit.
    pub wall: std::time::Duration,
}

/// Run `cmd` to completion and measure it. Output is drained on threads so
/// a chatty child cannot block on a full pipe.
///
/// The peak RSS comes from GNU `time` (Debian's `time`, installed by `make
/// test`), which runs the command as its own child: Linux starts a child's
/// `ru_maxrss` from the memory of the process it was forked from, and this
/// test process is large (about 120 MiB), so `wait4` on a direct child would
/// report the test's memory, not the command's.
pub fn run_measured(cmd: std::process::Command) -> Measured {
    use std::io::Read;
    use std::process::Stdio;
    let rss = tempfile::NamedTempFile::new().unwrap();
    let mut timed = std::process::Command::new(GNU_TIME);
    timed.args(["-f", "%M", "-o"]).arg(rss.path()).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = std::time::Instant::now();
    let mut child = timed
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{GNU_TIME}: {e} (`make test` installs Debian's `time`)"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = child.wait().unwrap();
    let wall = started.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let text = std::fs::read_to_string(rss.path()).unwrap();
    // GNU time reports a signal-ended child as its own exit 128 + signal and
    // says so on the first line; the figure is on the last.
    let kib: u64 = text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("GNU time said {text:?}"));
    let signalled = text.lines().find_map(|l| l.strip_prefix("Command terminated by signal ")).and_then(|n| n.trim().parse::<i32>().ok());
    let code = match (signalled, status.code()) {
        (Some(sig), _) => -sig,
        (None, Some(code)) => code,
        (None, None) => -status.signal().unwrap_or(0),
    };
    let mut stderr = err.join().unwrap();
    if signalled.is_some() {
        stderr.push_str(&text);
    }
    Measured { code, stdout: out.join().unwrap(), stderr, peak_rss: kib * 1024, wall }
}

const GNU_TIME: &str = "/usr/bin/time";
