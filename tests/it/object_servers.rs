//! Real object-store servers for the tests of remote tables and checkpoints:
//! moto's S3-compatible server and Azurite's Blob emulator, each its own
//! process on a free loopback port, stopped when dropped (like [`Broker`]).
//!
//! `make test` installs both and sets `SLUICE_MOTO`, `SLUICE_AZURITE` and
//! `SLUICE_SERVERS_PYTHON` (a venv with boto3 and azure-storage-blob); the
//! tests make buckets and containers and look at objects through the small
//! scripts in `tests/servers/`, so the tests need no client crate of their
//! own and inspect the stores by a path independent of sluice's.
//!
//! Both servers answer the conditional writes sluice relies on: a create
//! with `If-None-Match: *` on an existing object fails (moto: 412, Azurite:
//! 409, which object_store reads as "already exists"), and a write with a
//! stale `If-Match` fails with 412.
//!
//! [`Broker`]: crate::harness::Broker

// Not every test uses every helper (a test of S3 never starts Azurite).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Fixed test credentials: moto accepts any, and the same pair goes to
/// sluice (`storage_options`) and to the helper scripts (environment).
const S3_ACCESS_KEY_ID: &str = "sluice-test";
const S3_SECRET_ACCESS_KEY: &str = "sluice-test-secret";
const S3_REGION: &str = "us-east-1";

/// Azurite's one built-in account and its published key (the same in every
/// Azurite; not a secret).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long a server may take to listen. Both take about a second on an
/// idle machine (moto ~0.5 s, Azurite ~1 s); the tests share two cores with
/// each other and with builds, so the bound is generous.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The exit code of the helper scripts for "no such object".
const MISSING: i32 = 3;

/// An installed tool's path from `make test`'s environment.
fn tool(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `make test`, which installs {what}")
    })
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/servers")
        .join(name)
}

/// The Python with boto3 and azure-storage-blob.
fn servers_python() -> Command {
    Command::new(tool(
        "SLUICE_SERVERS_PYTHON",
        "the object-store servers' Python (boto3, azure-storage-blob)",
    ))
}

/// A server process on a loopback port, its output in a log file in its
/// own scratch directory, killed and reaped on drop.
struct Server {
    child: Child,
    port: u16,
    name: &'static str,
    dir: TempDir,
}

impl Server {
    /// Start `bin` with the arguments `args(port, data_dir)` and wait until
    /// it accepts connections. The port is free when picked but may be
    /// taken before the server binds it (tests start servers in parallel):
    /// a server that exits before listening is started again on a new port.
    fn start(name: &'static str, bin: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> Server {
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let log_path = dir.path().join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(bin)
                .current_dir(dir.path())
                .args(args(port, &data))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name} `{bin}` ({e}); run the tests with `make test`, which installs it"));
            let mut server = Server {
                child,
                port,
                name,
                dir,
            };
            match server.wait_listening() {
                Ok(()) => return server,
                Err(exited) => {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    eprintln!(
                        "{name} on port {port} exited before listening ({exited}); starting it again"
                    );
                    // Dropping `server` reaps the exited process.
                }
            }
        }
        panic!("{name} did not start (3 tries); its last log:\n{last_log}");
    }

    /// Wait (bounded) until the server accepts TCP connections: `Err` with
    /// the exit status if it exited first; a panic if it does neither in
    /// time.
    fn wait_listening(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {} within {} s; its log:\n{}",
                self.name,
                self.port,
                START_TIMEOUT.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's output so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name)))
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a helper script to completion, `stdin` written to it on a thread (so
/// a script that writes before it has read everything cannot block us). A
/// failed write is not reported: it means the script exited early, and its
/// exit status and stderr say why.
fn run(mut cmd: Command, stdin: &[u8], what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{what}: cannot run the servers' Python ({e}); run the tests with `make test`")
        });
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// A helper script's stdout, panicking with its stderr if it failed.
fn expect_ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `None` for the scripts' "no such object", the bytes otherwise.
fn expect_object(out: Output, what: &str) -> Option<Vec<u8>> {
    if out.status.code() == Some(MISSING) {
        return None;
    }
    Some(expect_ok(out, what))
}

fn keys(stdout: Vec<u8>, what: &str) -> Vec<String> {
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not a JSON list of keys ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

/// `options` as an inline TOML table, `{ key = "value", … }`, for a
/// `storage_options = …` line of a `pipeline.toml`.
pub fn toml_table(options: &[(String, String)]) -> String {
    let entries: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_string(v)))
        .collect();
    format!("{{ {} }}", entries.join(", "))
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// moto's S3-compatible server (`moto_server`). Its state is in memory:
/// each server starts empty.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    server: Server,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = tool("SLUICE_MOTO", "moto's S3 server");
        let server = Server::start("moto", &bin, |port, _| {
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        });
        S3Server {
            endpoint: format!("http://127.0.0.1:{}", server.port),
            server,
        }
    }

    /// The object_store / delta-rs options for this server: path-style
    /// requests (object_store's default) to the endpoint over plain HTTP,
    /// signed with the test credentials. Nothing else is needed: with an
    /// endpoint given, delta-rs does not look for AWS credentials or a lock
    /// provider, and commits by object_store's conditional put (`If-None-Match:
    /// *`), which moto honours.
    pub fn storage_options(&self) -> Vec<(String, String)> {
        owned(&[
            ("aws_endpoint_url", self.endpoint.as_str()),
            ("aws_access_key_id", S3_ACCESS_KEY_ID),
            ("aws_secret_access_key", S3_SECRET_ACCESS_KEY),
            ("aws_region", S3_REGION),
            ("aws_allow_http", "true"),
        ])
    }

    /// [`Self::storage_options`] as an inline TOML table.
    pub fn toml_options(&self) -> String {
        toml_table(&self.storage_options())
    }

    /// `tests/servers/s3.py ENDPOINT <args>`, credentials in the environment.
    fn s3(&self, args: &[&str]) -> Command {
        let mut cmd = servers_python();
        cmd.arg(script("s3.py"))
            .arg(&self.endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
            .env("AWS_DEFAULT_REGION", S3_REGION)
            // Whatever profile or config the machine has is not this server's.
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        cmd
    }

    pub fn create_bucket(&self, name: &str) {
        expect_ok(
            run(self.s3(&["create-bucket", name]), b"", "creating bucket"),
            &format!("creating bucket {name}"),
        );
    }

    /// The keys under `prefix` in `bucket`, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let what = format!("listing s3://{bucket}/{prefix}");
        keys(
            expect_ok(run(self.s3(&["list", bucket, prefix]), b"", &what), &what),
            &what,
        )
    }

    /// The object's bytes, `None` if there is no such key.
    pub fn get_raw(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let what = format!("reading s3://{bucket}/{key}");
        expect_object(run(self.s3(&["get", bucket, key]), b"", &what), &what)
    }

    /// Write the object (unconditionally), as another writer would.
    pub fn put_raw(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let what = format!("writing s3://{bucket}/{key}");
        expect_ok(run(self.s3(&["put", bucket, key]), bytes, &what), &what);
    }

    /// The server's output so far (requests are logged), for failure messages.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// Azurite's Blob service (`azurite-blob`), its data in the server's own
/// scratch directory.
pub struct AzuriteServer {
    /// `http://127.0.0.1:PORT/devstoreaccount1`: the account's blob
    /// endpoint (Azurite takes the account from the first path segment).
    pub endpoint: String,
    server: Server,
}

impl AzuriteServer {
    pub fn start() -> AzuriteServer {
        let bin = tool("SLUICE_AZURITE", "Azurite");
        let server = Server::start("azurite", &bin, |port, data| {
            vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                "--location".into(),
                data.display().to_string(),
                // No access log: the tests' output is what matters.
                "--silent".into(),
                // Accept whatever service version object_store and the
                // Azure SDK speak, rather than fail when they move ahead
                // of this Azurite.
                "--skipApiVersionCheck".into(),
                // Azurite 3.35+ reports usage to Microsoft by default; the
                // tests reach no outside network, and should not try.
                "--disableTelemetry".into(),
            ]
        });
        AzuriteServer {
            endpoint: format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", server.port),
            server,
        }
    }

    /// The object_store / delta-rs options for this server. Not
    /// `azure_storage_use_emulator`: object_store's emulator mode takes
    /// its URL only from `AZURITE_BLOB_STORAGE_URL` in the environment
    /// (default 127.0.0.1:10000) and ignores `azure_storage_endpoint`, and
    /// each test has its own port. An explicit account endpoint with the
    /// account's shared key makes the same requests (path-style,
    /// `/devstoreaccount1/<container>/<blob>`), signed the same way.
    pub fn storage_options(&self) -> Vec<(String, String)> {
        owned(&[
            ("azure_storage_account_name", AZURITE_ACCOUNT),
            ("azure_storage_account_key", AZURITE_KEY),
            ("azure_storage_endpoint", self.endpoint.as_str()),
            ("azure_allow_http", "true"),
        ])
    }

    /// [`Self::storage_options`] as an inline TOML table.
    pub fn toml_options(&self) -> String {
        toml_table(&self.storage_options())
    }

    /// `tests/servers/azure_blob.py <args>` against this server.
    fn blob(&self, args: &[&str]) -> Command {
        let mut cmd = servers_python();
        cmd.arg(script("azure_blob.py")).args(args).env(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!("DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};", self.endpoint),
        );
        cmd
    }

    pub fn create_container(&self, name: &str) {
        let what = format!("creating container {name}");
        expect_ok(
            run(self.blob(&["create-container", name]), b"", &what),
            &what,
        );
    }

    /// The blob names under `prefix` in `container`, sorted.
    pub fn list(&self, container: &str, prefix: &str) -> Vec<String> {
        let what = format!("listing az://{container}/{prefix}");
        keys(
            expect_ok(
                run(self.blob(&["list", container, prefix]), b"", &what),
                &what,
            ),
            &what,
        )
    }

    /// The blob's bytes, `None` if there is no such blob.
    pub fn get_raw(&self, container: &str, name: &str) -> Option<Vec<u8>> {
        let what = format!("reading az://{container}/{name}");
        expect_object(run(self.blob(&["get", container, name]), b"", &what), &what)
    }

    /// Write the blob (unconditionally), as another writer would.
    pub fn put_raw(&self, container: &str, name: &str, bytes: &[u8]) {
        let what = format!("writing az://{container}/{name}");
        expect_ok(
            run(self.blob(&["put", container, name]), bytes, &what),
            &what,
        );
    }

    /// The server's output so far, for failure messages.
    pub fn log(&self) -> String {
        self.server.log()
    }
}
