//! The HTTP endpoint of `pipeline.metrics_addr`: `/metrics` (Prometheus
//! text), `/healthz` (the process is alive) and `/readyz` (it owns the
//! pipeline and its loop turned recently).
//!
//! Guarantees: the endpoint never touches the pipeline: it serves the last
//! text the pipeline published and a health record, both behind a mutex
//! held only to copy them, so a slow or hostile client cannot delay a
//! batch. It runs hyper's HTTP/1 server on a thread and a runtime of its
//! own; every connection is a task with a header-read timeout, so a flood
//! of connections or garbage costs that thread only. A port that cannot be
//! bound is an error naming `pipeline.metrics_addr`, before anything runs.
//!
//! `/readyz` answers 200 only while this process owns the checkpoint (not
//! while it waits as a standby, nor after it lost the lease or stopped)
//! and its batch loop turned within `pipeline.ready_within_ms`: a loop
//! stuck (Kafka down for good, a commit that hangs) turns it to 503.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the pipeline publishes and the endpoint serves.
#[derive(Debug)]
struct Shared {
    metrics: Mutex<String>,
    health: Mutex<Health>,
    ready_within: Duration,
}

#[derive(Debug)]
struct Health {
    /// Owns the checkpoint now.
    owner: bool,
    /// What it is doing, in words (`standby`, `running`, `stopped`, …).
    state: String,
    /// The batch loop's last turn.
    heartbeat: Option<Instant>,
}

/// The pipeline's handle on the endpoint.
#[derive(Debug, Clone)]
pub struct Published {
    shared: Arc<Shared>,
    /// The address actually bound (port 0 picks one).
    pub addr: SocketAddr,
}

impl Published {
    /// Serve this metrics text from now on.
    pub fn set_metrics(&self, text: String) {
        *self.shared.metrics.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    /// Whether this process owns the pipeline, and what it is doing.
    pub fn set_state(&self, owner: bool, state: &str) {
        let mut h = self.shared.health.lock().unwrap_or_else(|e| e.into_inner());
        h.owner = owner;
        h.state = state.to_owned();
        if owner {
            h.heartbeat = Some(Instant::now());
        }
    }

    /// The batch loop turned.
    pub fn heartbeat(&self) {
        self.shared.health.lock().unwrap_or_else(|e| e.into_inner()).heartbeat = Some(Instant::now());
    }
}

/// Bind `addr` and serve on a thread of its own. `ready_within`: how
/// recent the loop's last turn must be for `/readyz`.
pub fn start(addr: &str, ready_within: Duration) -> Result<Published, String> {
    let bad = |e: std::io::Error| format!("`pipeline.metrics_addr` = \"{addr}\": cannot listen there: {e}");
    let listener = std::net::TcpListener::bind(addr).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    let bound = listener.local_addr().map_err(bad)?;
    let shared = Arc::new(Shared {
        metrics: Mutex::new(String::new()),
        health: Mutex::new(Health { owner: false, state: "starting".into(), heartbeat: None }),
        ready_within,
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(bad)?;
    let serving = shared.clone();
    std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || runtime.block_on(serve(listener, serving)))
        .map_err(bad)?;
    Ok(Published { shared, addr: bound })
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &req)) }
            });
            // A client that sends no complete header in time is dropped.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let text = shared.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone();
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let h = shared.health.lock().unwrap_or_else(|e| e.into_inner());
            let age = h.heartbeat.map(|t| t.elapsed());
            match (h.owner, age) {
                (true, Some(age)) if age <= shared.ready_within => {
                    reply(StatusCode::OK, "text/plain", format!("ready: {}, last turn {} ms ago\n", h.state, age.as_millis()))
                }
                (true, age) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: {}, but the batch loop last turned {} (pipeline.ready_within_ms = {})\n",
                        h.state,
                        age.map_or("never".to_owned(), |a| format!("{} ms ago", a.as_millis())),
                        shared.ready_within.as_millis()
                    ),
                ),
                (false, _) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {}\n", h.state)),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics, /healthz, /readyz\n".into()),
    }
}
