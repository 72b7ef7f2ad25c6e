//! The admin endpoint: `/healthz`, `/metrics` (Prometheus) and `/status` (JSON).
//!
//! A deliberately small HTTP/1.1 responder on a listener the caller binds (so tests can
//! hand it one on port 0): it answers GET requests and closes each connection.

pub mod events;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::metrics::Metrics;

/// What `/status` reports: each source publishes its own JSON snapshot here.
#[derive(Debug, Default)]
pub struct StatusBoard {
    pub agent: String,
    sources: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl StatusBoard {
    pub fn new(agent: &str) -> Self {
        Self {
            agent: agent.to_owned(),
            sources: Mutex::default(),
        }
    }

    pub fn set(&self, source: &str, status: serde_json::Value) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), status);
    }

    pub fn render(&self, metrics: &Metrics) -> String {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "agent": self.agent,
            "version": env!("CARGO_PKG_VERSION"),
            "nats": {
                "connected": metrics.nats_connected.load(Ordering::Relaxed),
                "in_flight": metrics.in_flight.load(Ordering::Relaxed),
            },
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
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((mut stream, _)) = conn else { continue };
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
                ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
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
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
