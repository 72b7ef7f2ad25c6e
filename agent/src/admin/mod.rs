//! The admin endpoint: `/healthz`, `/metrics` (Prometheus) and `/status` (JSON).
//!
//! A deliberately small HTTP/1.1 responder on a listener the caller binds (so tests can
//! hand it one on port 0): it answers GET requests and closes each connection.

pub mod metrics;
pub mod telemetry;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::metrics::Metrics;

/// What `/status` reports: each source publishes its own JSON snapshot here.
#[derive(Debug, Default)]
pub struct StatusBoard {
    pub agent: String,
    sources: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Loops the watchdog found stuck (see [`crate::service`]).
    stalled: Mutex<Vec<String>>,
    /// Sources whose thread ended unexpectedly and that do not run again yet, with why
    /// (see [`crate::source::supervisor`]).
    failing: Mutex<BTreeMap<String, String>>,
    /// Per source: (when, events acknowledged) samples over the last [`RATE_WINDOW`].
    rates: Mutex<BTreeMap<String, VecDeque<(Instant, u64)>>>,
    /// Per trigger source that compared its tables with their triggers: the tables
    /// that no longer match them, with what is wrong and the fix (schema drift).
    drift: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

/// The window `events_per_second` is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

impl StatusBoard {
    pub fn new(agent: &str) -> Self {
        Self {
            agent: agent.to_owned(),
            ..Default::default()
        }
    }

    pub fn set_stalled(&self, names: Vec<String>) {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }

    pub fn stalled(&self) -> Vec<String> {
        self.stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_failing(&self, source: &str, reason: &str) {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), reason.to_owned());
    }

    pub fn clear_failing(&self, source: &str) {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(source);
    }

    pub fn is_failing(&self, source: &str) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(source)
    }

    /// The failing sources, with why.
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The result of a table's drift check: what is wrong, or `None` when its capture
    /// triggers match it.
    pub fn set_drift(&self, source: &str, table: &str, problem: Option<&str>) {
        let mut d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        let tables = d.entry(source.to_owned()).or_default();
        match problem {
            Some(p) => tables.insert(table.to_owned(), p.to_owned()),
            None => tables.remove(table),
        };
    }

    /// The drifted tables of each source that has checked.
    pub fn drift(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.drift.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What `/healthz` answers: `None` when all is well, else the 503's body.
    pub fn health_problem(&self, metrics: &Metrics) -> Option<String> {
        let mut lines = Vec::new();
        let stalled = self.stalled();
        if !stalled.is_empty() {
            lines.push(format!("stuck: {}", stalled.join(", ")));
        }
        for (source, why) in self.failing() {
            lines.push(format!("failing: source {source} ({why})"));
        }
        for (source, tables) in self.drift() {
            for (table, why) in tables {
                lines.push(format!(
                    "degraded: source {source}, table {table} has changed since its capture triggers were installed: {why}"
                ));
            }
        }
        if let Some((secs, e)) = metrics.publish_failing() {
            lines.push(format!(
                "publishing fails for {secs} s ({e}); events go to the spool and are retried"
            ));
        }
        (!lines.is_empty()).then(|| lines.join("\n") + "\n")
    }

    /// Takes a sample of each source's acknowledged events, for `events_per_second`.
    /// Called about once a second.
    pub fn sample(&self, metrics: &Metrics) {
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        for (source, published) in metrics.published_by_source() {
            let q = rates.entry(source).or_default();
            q.push_back((now, published));
            while q.len() > 2 && now.duration_since(q[1].0) >= RATE_WINDOW {
                q.pop_front();
            }
        }
    }

    fn rate(&self, source: &str) -> f64 {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        match rates.get(source) {
            Some(q) if q.len() >= 2 => {
                let ((t0, n0), (t1, n1)) = (q[0], q[q.len() - 1]);
                let dt = t1.duration_since(t0).as_secs_f64();
                if dt > 0.0 {
                    n1.saturating_sub(n0) as f64 / dt
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    pub fn set(&self, source: &str, status: serde_json::Value) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), status);
    }

    pub fn render(&self, metrics: &Metrics) -> String {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failing = self.failing();
        let drift = self.drift();
        for name in failing.keys() {
            // A source that died before it reported anything still shows.
            sources
                .entry(name.clone())
                .or_insert_with(|| serde_json::json!({}));
        }
        for (name, s) in sources.iter_mut() {
            if let Some(o) = s.as_object_mut() {
                let rate = (self.rate(name) * 10.0).round() / 10.0;
                o.insert("events_per_second".into(), rate.into());
                if let Some(tables) = drift.get(name) {
                    o.insert("trigger_drift".into(), serde_json::json!(tables));
                }
                o.insert(
                    "failing".into(),
                    failing
                        .get(name)
                        .map_or(serde_json::Value::Null, |w| w.as_str().into()),
                );
            }
        }
        let oldest = metrics.spool_oldest_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "agent": self.agent,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "nats": {
                "connected": metrics.nats_connected.load(Ordering::Relaxed),
                "in_flight": metrics.in_flight.load(Ordering::Relaxed),
                "publish_failing": metrics.publish_failing().map(|(secs, e)| serde_json::json!({"seconds": secs, "error": e})),
            },
            "spool": {
                "events": metrics.spool_events.load(Ordering::Relaxed),
                "bytes": metrics.spool_bytes.load(Ordering::Relaxed),
                "oldest_age_seconds": (oldest > 0).then(|| (crate::clock::now_ms() - oldest).max(0) / 1000),
            },
            "stalled": self.stalled(),
            "failing": failing,
            "sources": sources,
        })
        .to_string()
    }
}

/// Serves the admin endpoint until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut warned = None;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let mut stream = match conn {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (EMFILE) or similar: the connection waits in
                // the backlog. Pause instead of spinning on the same error.
                if warned.is_none_or(|at: std::time::Instant| at.elapsed().as_secs() >= 60) {
                    tracing::warn!("admin endpoint: cannot accept a connection: {e}; retrying");
                    warned = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        let metrics = metrics.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            // Read until the end of the request head (or the buffer is full).
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, ctype, body) = match (method, path) {
                ("GET", "/healthz") => match status.health_problem(&metrics) {
                    None => ("200 OK", "text/plain", "ok\n".to_owned()),
                    Some(p) => ("503 Service Unavailable", "text/plain", p),
                },
                ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                ("GET", "/status") => ("200 OK", "application/json", status.render(&metrics)),
                ("GET", _) => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /healthz, /metrics or /status\n".to_owned(),
                ),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "only GET\n".to_owned(),
                ),
            };
            // Errors in the status may quote a driver's message, and so a password.
            let body = crate::config::redact(&body);
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
