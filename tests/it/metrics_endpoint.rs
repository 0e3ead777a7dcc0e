//! The metrics and health endpoint (`pipeline.metrics_addr`), scraped
//! from a running `sluice run`: counters move, `/readyz` follows
//! ownership and the batch loop, and the endpoint survives a thousand
//! concurrent scrapes and garbage while the pipeline keeps committing.

use crate::harness::*;
use crate::host::Host;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` on `addr`: (status, body). `None` if the connection fails.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    Some((status, reply.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned())))
}

/// The value of a metric line `name{pipeline="…"} value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(&format!("{name}{{"))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The endpoint address the process announces.
fn announced(run: &mut Host) -> String {
    let (_, line) = run.wait_line("metrics on http://", Duration::from_secs(60)).expect("the endpoint is announced");
    line.split("metrics on http://").nth(1).unwrap().split('/').next().unwrap().to_owned()
}

/// Ask `path` until `want` holds for the answer (bounded): the state the
/// test waits for, not a fixed time.
fn until(addr: &str, path: &str, within: Duration, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((status, body)) = get(addr, path)
            && (want(status, &body) || Instant::now() >= deadline)
        {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "{path} on {addr} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scraped_during_a_run_counters_move_readyz_follows_the_loop_and_a_thousand_scrapes_and_garbage_change_nothing() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    let dir = tempfile::tempdir().unwrap();
    let extra = "trigger_interval_ms = 20\nmetrics_addr = \"127.0.0.1:0\"\nready_within_ms = 1500\nmax_attempts = 1000";
    let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 50, extra);
    let text = std::fs::read_to_string(&config).unwrap().replace("trigger = \"available_now\"", "trigger = \"continuous\"");
    std::fs::write(&config, text).unwrap();
    let ids = |r: std::ops::Range<usize>| r.map(|i| format!("id-{i:05}")).collect::<Vec<_>>();
    produce(&broker.bootstrap, "events", 2, &ids(0..200));
    let mut run = Host::start("host", &config, &[]);
    let addr = announced(&mut run);

    assert_eq!(get(&addr, "/healthz").unwrap(), (200, "ok\n".into()));
    let (_, first) = until(&addr, "/metrics", Duration::from_secs(60), |_, b| metric(b, "sluice_records_total") == Some(200.0));
    assert!(first.contains("# TYPE sluice_batch_duration_seconds histogram"), "{first}");
    assert_eq!(metric(&first, "sluice_batch_duration_seconds_count"), metric(&first, "sluice_batches_committed_total"));
    let (status, ready) = get(&addr, "/readyz").unwrap();
    assert_eq!(status, 200, "{ready}");
    assert!(ready.starts_with("ready: owner, running, last turn "), "{ready}");

    // A thousand connections at once, each scraping, and garbage between.
    let scrapes: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            s
        })
        .collect();
    let mut garbage = Vec::new();
    for bytes in [&b"\x00\x01\x02garbage\r\n\r\n"[..], b"GET", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(bytes).unwrap();
        garbage.push(s);
    }
    let mut long = TcpStream::connect(&addr).unwrap();
    long.write_all(format!("GET /{} HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100_000), "b".repeat(1 << 20)).as_bytes()).ok();
    produce(&broker.bootstrap, "events", 2, &ids(200..400));
    let mut ok = 0;
    for mut s in scrapes {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        ok += usize::from(reply.starts_with("HTTP/1.1 200") && reply.contains("sluice_batches_committed_total"));
    }
    assert_eq!(ok, 1000, "every concurrent scrape answered");
    drop(garbage);
    let (_, after) = until(&addr, "/metrics", Duration::from_secs(60), |_, b| metric(b, "sluice_records_total") == Some(400.0));
    assert!(metric(&after, "sluice_batches_committed_total") > metric(&first, "sluice_batches_committed_total"), "counters move");
    assert_eq!(get(&addr, "/nope").unwrap().0, 404);

    // The broker goes away: the loop stops turning, and /readyz says so.
    drop(broker);
    let (status, body) = until(&addr, "/readyz", Duration::from_secs(60), |s, _| s == 503);
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: owner, running, but the batch loop last turned "), "{body}");
    assert_eq!(get(&addr, "/healthz").unwrap().0, 200, "alive all the same");
    drop(run);
    assert_fan_out_exactly_once(dir.path(), &ids(0..400));
}

#[test]
fn a_standby_is_not_ready_until_it_takes_the_lease_over() {
    use crate::object_servers::S3Server;
    let broker = Broker::start();
    broker.create_topic("events", 1);
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let config = fan_out_config(dir.path(), &broker.bootstrap, "events", 50, "");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "checkpoint = \"checkpoint\"\ntrigger = \"available_now\"",
            &format!(
                "checkpoint = \"s3://lake/cp\"\nstorage_options = {}\ntrigger = \"continuous\"\nlease_ms = 1000\nmetrics_addr = \"127.0.0.1:0\"\nscratch = \"{name}/scratch\"\ncache = \"{name}/cache\"",
                s3.toml_options()
            ),
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (a, b) = (write("a"), write("b"));
    let mut owner = Host::start("a", &a, &[]);
    let owner_addr = announced(&mut owner);
    until(&owner_addr, "/readyz", Duration::from_secs(60), |s, _| s == 200);
    let mut standby = Host::start("b", &b, &[]);
    let standby_addr = announced(&mut standby);
    let (status, body) = until(&standby_addr, "/readyz", Duration::from_secs(60), |_, b| b.contains("standby"));
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: standby: ") && body.contains("holds the lease (epoch 1)"), "{body}");
    assert_eq!(get(&standby_addr, "/healthz").unwrap().0, 200);

    // The owner stops: the standby takes over and becomes ready.
    owner.signal("-TERM");
    assert_eq!(owner.exit_code(Duration::from_secs(60)), Some(0), "{}", owner.output());
    let (status, body) = until(&standby_addr, "/readyz", Duration::from_secs(30), |s, _| s == 200);
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = until(&standby_addr, "/metrics", Duration::from_secs(10), |_, b| b.contains("sluice_lease_epoch"));
    assert_eq!(metric(&metrics, "sluice_lease_epoch"), Some(2.0), "{metrics}");
}
