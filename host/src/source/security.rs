//! Secured clusters: secrets for librdkafka's TLS and SASL properties, and
//! errors that say which setting is wrong.
//!
//! Guarantees:
//! - A secret (`source.secrets`: `sasl.password = { env = "KAFKA_PASSWORD" }`
//!   or `{ file = "/run/secrets/kafka" }`) is read when a client is made
//!   and handed to librdkafka only. It is not part of the config's Debug
//!   output, the config digest, bundles, `status` or the metrics; a
//!   sensitive property written inline in `source.properties` is hidden the
//!   same way. Every error message about the source passes through
//!   [`Secrets::redact`], which replaces any secret value with `***`.
//! - A client that cannot connect because of TLS or SASL fails as soon as
//!   librdkafka reports it (not after `fetch_timeout_ms`), with what went
//!   wrong and the property to fix: a broker certificate no CA in
//!   `ssl.ca.location` signed, an expired one (sluice then checks the
//!   broker's certificate itself, since librdkafka reports only "verify
//!   failed"), a broker not speaking TLS (`security.protocol`), a wrong
//!   password or unknown user (`sasl.username`, `sasl.password`), a
//!   mechanism the broker does not offer (`sasl.mechanism`).

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// librdkafka properties whose values are secrets (or hold them).
const SENSITIVE: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
    "ssl.truststore.password",
];

/// Whether a librdkafka property holds a secret.
pub fn is_sensitive(key: &str) -> bool {
    SENSITIVE.contains(&key)
}

/// Where a secret property's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// An environment variable of the `sluice` process.
    Env(String),
    /// A file (its content, without a trailing newline).
    File(std::path::PathBuf),
}

/// `source.properties`: librdkafka properties, passed through. Debug output
/// hides the values of sensitive ones.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, if is_sensitive(k) { "***" } else { v.as_str() }))).finish()
    }
}

impl std::ops::Deref for Properties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The secret values a client was made with, to keep them out of messages.
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// Read every `source.secrets` entry, and note the inline sensitive
    /// properties. `Err` names the entry and what is missing.
    pub fn resolve(secrets: &BTreeMap<String, Secret>, properties: &Properties) -> Result<(Vec<(String, String)>, Secrets), String> {
        let mut values = Vec::new();
        let mut pairs = Vec::new();
        for (key, secret) in secrets {
            let value = match secret {
                Secret::Env(var) => std::env::var(var).map_err(|_| {
                    format!("source.secrets.\"{key}\": the environment variable {var} is not set (or not UTF-8)")
                })?,
                Secret::File(path) => std::fs::read_to_string(path)
                    .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(|e| format!("source.secrets.\"{key}\": cannot read {}: {e}", path.display()))?,
            };
            if value.is_empty() {
                return Err(format!("source.secrets.\"{key}\": the secret is empty"));
            }
            values.push(value.clone());
            pairs.push((key.clone(), value));
        }
        values.extend(properties.iter().filter(|(k, v)| is_sensitive(k) && !v.is_empty()).map(|(_, v)| v.clone()));
        Ok((pairs, Secrets(values)))
    }

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self.0.iter().filter(|s| s.len() >= 3) {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

/// The client context: remembers the first TLS or SASL failure librdkafka
/// reports, so a connection attempt can stop at once and say why.
#[derive(Clone, Default)]
pub struct SecurityContext {
    failure: Arc<Mutex<Option<String>>>,
}

impl SecurityContext {
    /// The TLS or SASL failure reported so far, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SecurityContext {
    fn note(&self, text: &str) {
        if is_security_failure(text) {
            // librdkafka's lines start `ssl://host:port/bootstrap: …`.
            let reason = text.split_once(": ").filter(|(at, _)| at.contains("://")).map_or(text, |(_, r)| r);
            self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason.to_owned());
        }
    }
}

impl ClientContext for SecurityContext {
    // librdkafka reports a failed handshake or authentication as a log
    // line and as an error event, both delivered when the client is
    // polled: both are looked at.
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, log_message: &str) {
        self.note(log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for SecurityContext {}

/// Whether a librdkafka error is about TLS or SASL (and so will not pass by
/// waiting: the config must change).
fn is_security_failure(text: &str) -> bool {
    ["SSL handshake failed", "SASL authentication", "SASL SCRAM", "SASL PLAIN", "mechanism handshake failed", "Authentication failed"]
        .iter()
        .any(|m| text.contains(m))
}

/// Explain a TLS or SASL failure: what is wrong and the property to fix.
pub fn explain(failure: &str, properties: &BTreeMap<String, String>, bootstrap: &str) -> String {
    let get = |k: &str| properties.get(k).map_or("(not set)".to_owned(), |v| format!("\"{v}\""));
    if failure.contains("SSL handshake failed") {
        let probe = probe_tls(bootstrap, properties.get("ssl.ca.location").map(String::as_str));
        // OpenSSL's verdict is the last parenthesised part of its message.
        let verdict = probe.as_deref().map(|p| p.rsplit_once('(').map_or(p, |(_, v)| v.trim_end_matches(')')).to_owned());
        let ca = get("ssl.ca.location");
        let why = match probe.as_deref() {
            Some(p) if p.contains("certificate has expired") => format!(
                "the broker's certificate has expired: renew the broker's certificate (the client's `ssl.ca.location` = {ca} is not the problem)"
            ),
            Some(p) if p.contains("not yet valid") => "the broker's certificate is not valid yet (check the broker's clock and certificate)".to_owned(),
            Some(p) if p.contains("wrong version number") || p.contains("packet length too long") || p.contains("record layer failure") => {
                "the broker does not speak TLS on this port: check `security.protocol` and `bootstrap_servers`".to_owned()
            }
            Some(p) if p.contains("hostname mismatch") || p.contains("IP address mismatch") => format!(
                "the broker's certificate is not for this address ({p}): connect by a name the certificate holds, or see `ssl.endpoint.identification.algorithm`"
            ),
            Some(p) if p.contains("self-signed") || p.contains("local issuer") || p.contains("verify failed") => format!(
                "the broker's certificate is not signed by a CA in `ssl.ca.location` = {ca} (OpenSSL: {}): set `ssl.ca.location` to the CA \
                 that signed the broker's certificate",
                verdict.as_deref().unwrap_or(p)
            ),
            Some(p) => format!("{p} (`security.protocol` = {}, `ssl.ca.location` = {ca})", get("security.protocol")),
            None => format!("the broker's certificate could not be verified: check `ssl.ca.location` = {ca}"),
        };
        return match probe {
            Some(_) => format!("TLS handshake with the broker failed: {why}"),
            None => format!("TLS handshake with the broker failed: {why} [librdkafka: {failure}]"),
        };
    }
    let user = get("sasl.username");
    let mechanism = get("sasl.mechanism");
    if failure.contains("mechanism handshake failed") {
        return format!("the broker does not offer SASL mechanism `sasl.mechanism` = {mechanism}: set one it offers [librdkafka: {failure}]");
    }
    let said = if failure.contains("unknown-user") {
        format!("the broker knows no user {user}: check `sasl.username`")
    } else {
        format!("wrong password for {user}, or an unknown user: check `sasl.password` (and `sasl.username`)")
    };
    format!("SASL authentication as `sasl.username` = {user} with `sasl.mechanism` = {mechanism} failed: {said} [librdkafka: {failure}]")
}

/// Connect to the first bootstrap server with TLS as librdkafka would
/// (trusting `ca` if given, else the system roots) and say how the
/// certificate check ends, in OpenSSL's words; `None` if it passes or the
/// broker cannot be reached.
fn probe_tls(bootstrap: &str, ca: Option<&str>) -> Option<String> {
    let server = bootstrap.split(',').next()?.trim();
    let server = server.split_once("://").map_or(server, |(_, s)| s);
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).ok()?;
        for cert in pem_certificates(&pem) {
            builder.add_root_certificate(cert);
        }
        builder.disable_built_in_roots(true);
    }
    let connector = builder.build().ok()?;
    let stream = std::net::TcpStream::connect(server).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    match connector.connect(host, stream) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Every certificate of a PEM bundle.
fn pem_certificates(pem: &[u8]) -> Vec<native_tls::Certificate> {
    let text = String::from_utf8_lossy(pem);
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .filter_map(|block| native_tls::Certificate::from_pem(block.trim_start().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_environment_or_a_file_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key-pass"), "k3y-pass\n").unwrap();
        // An environment variable every test process has.
        let home = std::env::var("HOME").unwrap();
        let secrets: BTreeMap<String, Secret> = [
            ("sasl.password".to_owned(), Secret::Env("HOME".into())),
            ("ssl.key.password".to_owned(), Secret::File(dir.path().join("key-pass"))),
        ]
        .into();
        let inline = Properties([("sasl.oauthbearer.client.secret".to_owned(), "inl1ne".to_owned())].into());
        let (pairs, redact) = Secrets::resolve(&secrets, &inline).unwrap();
        assert_eq!(pairs, [("sasl.password".to_owned(), home.clone()), ("ssl.key.password".to_owned(), "k3y-pass".to_owned())]);
        assert_eq!(redact.redact(&format!("auth {home} k3y-pass inl1ne failed")), "auth *** *** *** failed");
        assert_eq!(format!("{inline:?}"), r#"{"sasl.oauthbearer.client.secret": "***"}"#);

        let missing: BTreeMap<String, Secret> = [("sasl.password".to_owned(), Secret::Env("SLUICE_TEST_NO_SUCH_VAR".into()))].into();
        let e = Secrets::resolve(&missing, &Properties::default()).err().unwrap();
        assert_eq!(e, "source.secrets.\"sasl.password\": the environment variable SLUICE_TEST_NO_SUCH_VAR is not set (or not UTF-8)");
    }

    #[test]
    fn sasl_failures_name_the_settings() {
        let props: BTreeMap<String, String> =
            [("sasl.username".to_owned(), "alice".to_owned()), ("sasl.mechanism".to_owned(), "SCRAM-SHA-256".to_owned())].into();
        let e = explain("SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof", &props, "x:1");
        assert!(e.starts_with("SASL authentication as `sasl.username` = \"alice\" with `sasl.mechanism` = \"SCRAM-SHA-256\" failed: wrong password"), "{e}");
        assert!(e.contains("check `sasl.password`"), "{e}");
        let e = explain("SASL PLAIN mechanism handshake failed: broker's supported mechanisms: SCRAM-SHA-512", &props, "x:1");
        assert!(e.contains("does not offer SASL mechanism `sasl.mechanism` = \"SCRAM-SHA-256\""), "{e}");
    }
}
