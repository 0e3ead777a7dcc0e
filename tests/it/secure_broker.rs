//! A secured Kafka cluster for the tests: the Tansu broker with SASL SCRAM
//! authentication (its own `--authentication`, users made with `tansu
//! user create`), behind a real TLS listener.
//!
//! Tansu 0.6's own TLS listener did not complete a handshake with
//! librdkafka here, so TLS is terminated by stunnel (Debian's `stunnel4`,
//! installed by `make test`) in front of Tansu's plain port: clients do a
//! real TLS handshake with a real certificate, and Tansu advertises the TLS
//! port, so every connection librdkafka makes goes through it. SASL is
//! Tansu's own, inside the Kafka protocol, so SASL_SSL is end to end.
//!
//! The certificates are made fresh for each broker by
//! `tests/servers/tls.py` (a test CA, a broker certificate for 127.0.0.1,
//! an expired one, and an unrelated CA).

use crate::harness::produce_with;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which certificate the TLS listener presents.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Valid, signed by `ca.pem`.
    Valid,
    /// Signed by `ca.pem`, expired yesterday.
    Expired,
}

/// A running secured broker.
pub struct SecureBroker {
    /// The TLS listener, `127.0.0.1:PORT`.
    pub bootstrap: String,
    /// The directory of the TLS material (`ca.pem`, `other-ca.pem`, …).
    pub tls: PathBuf,
    /// The SASL users: (name, password, mechanism as librdkafka names it).
    pub users: Vec<(String, String, String)>,
    tansu: Child,
    stunnel: Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tansu_bin() -> String {
    std::env::var("SLUICE_TANSU").unwrap_or_else(|_| "tansu".into())
}

/// Start Tansu on `port`, advertising `advertised`, with its data in `dir`.
fn start_tansu(dir: &Path, port: u16, advertised: u16, authentication: bool) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
    let mut cmd = Command::new(tansu_bin());
    cmd.current_dir(dir).args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{advertised}"),
        "--storage-engine",
        "sqlite://broker.db",
    ]);
    if authentication {
        cmd.arg("--authentication");
    }
    let child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the Kafka broker ({e}); run the tests with `make test`, which installs it"));
    wait_listening(port, "the broker");
    child
}

fn tansu(args: &[&str]) {
    let out = Command::new(tansu_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "tansu {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl SecureBroker {
    /// A broker with `topic` (`partitions` of them), the given SASL users
    /// (none: TLS only, no authentication), behind TLS presenting `cert`.
    pub fn start(cert: Cert, users: &[(&str, &str, &str)], topic: &str, partitions: u32) -> SecureBroker {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let python = std::env::var("SLUICE_SERVERS_PYTHON").expect("SLUICE_SERVERS_PYTHON is not set: run the tests with `make test`");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/servers/tls.py");
        let out = Command::new(python).arg(script).arg(&tls).output().unwrap();
        assert!(out.status.success(), "tls.py: {}", String::from_utf8_lossy(&out.stderr));

        let (plain, secure) = (free_port(), free_port());
        // Users and topics are made before authentication is switched on:
        // Tansu's admin tools do not authenticate.
        let mut setup = start_tansu(dir.path(), plain, secure, false);
        let broker = format!("tcp://127.0.0.1:{plain}");
        for (name, password, mechanism) in users {
            let mechanism = match *mechanism {
                "SCRAM-SHA-256" => "scram256",
                "SCRAM-SHA-512" => "scram512",
                other => panic!("Tansu has no SASL mechanism {other}"),
            };
            tansu(&["user", "create", "--broker", &broker, "--mechanism", mechanism, name, password]);
        }
        tansu(&["topic", "create", "--broker", &broker, "--partitions", &partitions.to_string(), topic]);
        let tansu = if users.is_empty() {
            setup
        } else {
            let _ = setup.kill();
            let _ = setup.wait();
            start_tansu(dir.path(), plain, secure, true)
        };

        let stem = match cert {
            Cert::Valid => "server",
            Cert::Expired => "expired",
        };
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{secure}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                tls.join(format!("{stem}.pem")).display(),
                tls.join(format!("{stem}.key")).display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stunnel.log")).unwrap();
        let stunnel = Command::new("stunnel")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start stunnel ({e}); run the tests with `make test`, which installs it"));
        wait_listening(secure, "stunnel");
        SecureBroker {
            bootstrap: format!("127.0.0.1:{secure}"),
            tls,
            users: users.iter().map(|(n, p, m)| (n.to_string(), p.to_string(), m.to_string())).collect(),
            tansu,
            stunnel,
            _dir: dir,
        }
    }

    /// The client properties that connect as the first user (or over TLS
    /// only, without users), trusting `ca` (a file of `self.tls`).
    pub fn client_properties(&self, ca: &str) -> Vec<(String, String)> {
        let ca = self.tls.join(ca).display().to_string();
        let mut props = vec![("ssl.ca.location".to_owned(), ca)];
        match self.users.first() {
            None => props.push(("security.protocol".into(), "SSL".into())),
            Some((name, password, mechanism)) => {
                props.push(("security.protocol".into(), "SASL_SSL".into()));
                props.push(("sasl.mechanism".into(), mechanism.clone()));
                props.push(("sasl.username".into(), name.clone()));
                props.push(("sasl.password".into(), password.clone()));
            }
        }
        props
    }

    /// Produce `values` as the first user, over TLS.
    pub fn produce(&self, topic: &str, partitions: i32, values: &[String]) {
        let props = self.client_properties("ca.pem");
        let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        produce_with(&self.bootstrap, &props, topic, partitions, values);
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
