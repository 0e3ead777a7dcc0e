//! `sluice run` against a secured cluster: a real TLS handshake with a
//! real certificate (stunnel in front of Tansu, see `secure_broker`), and
//! SASL SCRAM authentication by the broker itself, the password from an
//! environment variable. Each misconfiguration fails with a message naming
//! the setting, and no secret reaches any output.
//!
//! What each proves:
//! - TLS: librdkafka built with OpenSSL verifies the broker's certificate
//!   against `ssl.ca.location` and reads every record over TLS.
//! - SASL_SSL: SCRAM-SHA-512 authentication inside TLS; the password comes
//!   from `source.secrets` and is found nowhere sluice writes (stdout,
//!   stderr, `status`, the metrics file, the checkpoint, the tables' logs).
//! - a wrong CA, an expired broker certificate, a wrong password: each
//!   fails at once with what is wrong and the property to fix.

use crate::harness::*;
use crate::secure_broker::{Cert, SecureBroker};
use std::path::{Path, PathBuf};

const PASSWORD: &str = "sc4am-pa55word";

/// The fan-out config, reading from `broker` with these source properties
/// and secrets (TOML lines of `[source.properties]` and `[source.secrets]`).
fn config(dir: &Path, broker: &SecureBroker, properties: &[(String, String)], secrets: &str) -> PathBuf {
    let path = fan_out_config(dir, &broker.bootstrap, "events", 50, "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += "\n[source.properties]\n";
    for (k, v) in properties {
        text += &format!("\"{k}\" = \"{v}\"\n");
    }
    if !secrets.is_empty() {
        text += &format!("\n[source.secrets]\n{secrets}\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn without(props: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    props.into_iter().filter(|(k, _)| k != key).collect()
}

fn with(mut props: Vec<(String, String)>, key: &str, value: String) -> Vec<(String, String)> {
    props.retain(|(k, _)| k != key);
    props.push((key.to_owned(), value));
    props
}

fn run(config: &Path, password_env: Option<&str>) -> (i32, String, String) {
    let mut cmd = sluice(&["run", config.to_str().unwrap()]);
    match password_env {
        Some(p) => cmd.env("SLUICE_TEST_KAFKA_PASSWORD", p),
        None => cmd.env_remove("SLUICE_TEST_KAFKA_PASSWORD"),
    };
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every file under `dir`, as text where it is text.
fn all_files(dir: &Path) -> String {
    let mut out = String::new();
    for entry in walk(dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            out += &String::from_utf8_lossy(&bytes);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn over_tls_every_id_lands_once_and_a_wrong_ca_or_an_expired_certificate_is_named() {
    let broker = SecureBroker::start(Cert::Valid, &[], "events", 2);
    let ids: Vec<String> = (0..300).map(|i| format!("id-{i:05}")).collect();
    broker.produce("events", 2, &ids);
    let dir = tempfile::tempdir().unwrap();
    let props = broker.client_properties("ca.pem");
    let (code, stdout, stderr) = run(&config(dir.path(), &broker, &props, ""), None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_fan_out_exactly_once(dir.path(), &ids);

    // A CA that did not sign the broker's certificate.
    let wrong = tempfile::tempdir().unwrap();
    let other = broker.tls.join("other-ca.pem").display().to_string();
    let (code, stdout, stderr) = run(&config(wrong.path(), &broker, &with(props.clone(), "ssl.ca.location", other.clone()), ""), None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "TLS handshake with the broker failed: the broker's certificate is not signed by a CA in `ssl.ca.location` = \"{other}\""
        )) && stderr.contains("set `ssl.ca.location` to the CA that signed the broker's certificate"),
        "{stderr}"
    );
    // Plain text to a TLS port.
    let (code, _, stderr) = run(&config(wrong.path(), &broker, &without(props, "security.protocol"), ""), None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("kafka (127.0.0.1:"), "{stderr}");

    // The broker presents an expired certificate.
    let expired = SecureBroker::start(Cert::Expired, &[], "events", 1);
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(&config(dir.path(), &expired, &expired.client_properties("ca.pem"), ""), None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("TLS handshake with the broker failed: the broker's certificate has expired: renew the broker's certificate"),
        "{stderr}"
    );
}

#[test]
fn over_sasl_ssl_with_the_password_from_the_environment_every_id_lands_once_and_the_password_shows_nowhere() {
    let broker = SecureBroker::start(Cert::Valid, &[("sluice", PASSWORD, "SCRAM-SHA-512")], "events", 2);
    let ids: Vec<String> = (0..300).map(|i| format!("id-{i:05}")).collect();
    broker.produce("events", 2, &ids);
    let dir = tempfile::tempdir().unwrap();
    let props = without(broker.client_properties("ca.pem"), "sasl.password");
    let secrets = "\"sasl.password\" = { env = \"SLUICE_TEST_KAFKA_PASSWORD\" }";
    let config = config(dir.path(), &broker, &props, secrets);

    let (code, stdout, stderr) = run(&config, Some(PASSWORD));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_fan_out_exactly_once(dir.path(), &ids);
    let mut status = sluice(&["status", config.to_str().unwrap()]);
    let status = status.env("SLUICE_TEST_KAFKA_PASSWORD", PASSWORD).output().unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned() + &String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "{status_text}");
    assert!(status_text.contains("lag 0"), "status reads the watermarks over SASL_SSL: {status_text}");
    let written = all_files(dir.path());
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr), ("status", &status_text), ("files under the pipeline's directory", &written)] {
        assert!(!text.contains(PASSWORD), "the password reached {what}");
    }

    // A wrong password: named, and not shown.
    let wrong = tempfile::tempdir().unwrap();
    let wrong_config = self::config(wrong.path(), &broker, &props, secrets);
    let (code, stdout, stderr) = run(&wrong_config, Some("not-the-password"));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "SASL authentication as `sasl.username` = \"sluice\" with `sasl.mechanism` = \"SCRAM-SHA-512\" failed: wrong password for \"sluice\", or an unknown user: check `sasl.password`"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password") && !stdout.contains("not-the-password"), "{stderr}");

    // The secret's variable is not set.
    let (code, _, stderr) = run(&wrong_config, None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("kafka: source.secrets.\"sasl.password\": the environment variable SLUICE_TEST_KAFKA_PASSWORD is not set"),
        "{stderr}"
    );
}
