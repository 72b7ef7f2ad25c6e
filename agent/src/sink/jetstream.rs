//! The JetStream sink: pipelined publishes with deterministic message ids.
//!
//! Up to `max_in_flight` publishes await their acks at once. Acks are taken in publish
//! order, so the first unacknowledged message is always the front of the queue. When a
//! publish fails (an error ack, or no ack within `ack_timeout`), the publisher waits for
//! every ack still outstanding, then sends the failed message and everything after it
//! again, in order, with the same `Nats-Msg-Id`s; JetStream drops the ones it already
//! stored. See docs/design.md for what this means for order when a connection breaks.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use super::backoff;
use crate::admin::events::PublishFailed;
use crate::admin::metrics::Metrics;
use crate::config::{NatsAuth, NatsConfig};
use crate::pipeline::{AckWatermark, Batch, Outgoing};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "JetStream stream `{stream}` does not exist on the server and nats.create_stream is false: create it \
         (subjects \"{prefix}.>\") or set create_stream = true"
    )]
    NoStream { stream: String, prefix: String },
    #[error("JetStream stream `{stream}`: {error}")]
    Stream { stream: String, error: String },
}

/// Connects to NATS. With `keep_trying`, the first connection is retried in the
/// background (the agent starts with the broker down); otherwise it fails at once.
pub async fn connect(
    cfg: &NatsConfig,
    keep_trying: bool,
    metrics: Option<Arc<Metrics>>,
) -> Result<Client, SinkError> {
    let mut opts = ConnectOptions::new()
        .name(format!("lockstep {}", env!("CARGO_PKG_VERSION")))
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| backoff::delay(attempt, Duration::from_secs(10)))
        .client_capacity(65_536)
        .max_reconnects(None);
    opts = match &cfg.auth {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::Token(t) => opts.token(t.expose().to_owned()),
        NatsAuth::Nkey(seed) => opts.nkey(seed.expose().to_owned()),
        NatsAuth::Creds(path) => {
            opts.credentials_file(path)
                .await
                .map_err(|source| SinkError::Creds {
                    path: path.display().to_string(),
                    source,
                })?
        }
    };
    if let Some(tls) = &cfg.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if keep_trying {
        opts = opts.retry_on_initial_connect();
    }
    if let Some(m) = metrics {
        opts = opts.event_callback(move |event| {
            let m = m.clone();
            async move {
                match event {
                    Event::Connected => {
                        m.nats_connected.store(true, Ordering::Relaxed);
                        tracing::info!("connected to NATS");
                    }
                    Event::Disconnected => {
                        m.nats_connected.store(false, Ordering::Relaxed);
                        tracing::warn!("disconnected from NATS; reconnecting with backoff");
                    }
                    Event::Closed => tracing::info!("NATS connection closed"),
                    other => tracing::warn!("NATS: {other}"),
                }
            }
        });
    }
    let addrs: Vec<async_nats::ServerAddr> =
        cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    opts.connect(addrs.as_slice())
        .await
        .map_err(|source| SinkError::Connect {
            servers: cfg.servers.join(", "),
            source,
        })
}

/// The JetStream context publishes go through.
pub fn context(client: Client, cfg: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(cfg.ack_timeout)
        .max_ack_inflight(cfg.max_in_flight + 1)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Checks that the stream exists, creating it when `create_stream` is set.
pub async fn ensure_stream(js: &jetstream::Context, cfg: &NatsConfig) -> Result<(), SinkError> {
    let stream_err = |e: &dyn std::fmt::Display| SinkError::Stream {
        stream: cfg.stream.clone(),
        error: e.to_string(),
    };
    if cfg.create_stream {
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| stream_err(&e))?;
        return Ok(());
    }
    match js.get_stream_no_info(&cfg.stream).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Err(SinkError::NoStream {
            stream: cfg.stream.clone(),
            prefix: cfg.subject_prefix.clone(),
        }),
        Err(e) => Err(stream_err(&e)),
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

struct InFlight {
    source: usize,
    msg: Outgoing,
    ack: AckFuture,
}

/// Publishes batches from the sources and acknowledges them through their watermarks.
pub struct Publisher {
    js: jetstream::Context,
    cfg: NatsConfig,
    metrics: Arc<Metrics>,
    watermarks: Vec<Arc<AckWatermark>>,
    in_flight: VecDeque<InFlight>,
    /// Received (or to be re-sent) but not yet published, in order.
    pending: VecDeque<(usize, Outgoing)>,
    failures: usize,
    stream_ready: bool,
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        cfg: NatsConfig,
        metrics: Arc<Metrics>,
        watermarks: Vec<Arc<AckWatermark>>,
    ) -> Self {
        Self {
            js,
            cfg,
            metrics,
            watermarks,
            in_flight: VecDeque::new(),
            pending: VecDeque::new(),
            failures: 0,
            stream_ready: false,
        }
    }

    /// Runs until `shutdown` turns true, then waits up to `drain_for` for the acks of
    /// what is in flight (so that sources can checkpoint them) and returns.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        mut shutdown: watch::Receiver<bool>,
        drain_for: Duration,
    ) {
        let mut open = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if !self.stream_ready {
                match ensure_stream(&self.js, &self.cfg).await {
                    Ok(()) => self.stream_ready = true,
                    Err(e) => {
                        self.failures += 1;
                        tracing::error!("{e}");
                        if self.sleep_or_stop(&mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if let Err((subject, msg_id, error)) = self.publish_pending().await {
                self.recover(false, &subject, &msg_id, &error).await;
                if self.sleep_or_stop(&mut shutdown).await {
                    break;
                }
                continue;
            }
            let room = self.in_flight.len() < self.cfg.max_in_flight;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                r = async { (&mut self.in_flight.front_mut().expect("checked non-empty").ack).await }, if !self.in_flight.is_empty() => {
                    match r {
                        Ok(_) => self.acked(),
                        Err(e) => {
                            let front = self.in_flight.front().expect("checked non-empty");
                            let (subject, id) = (front.msg.subject.clone(), front.msg.msg_id.clone());
                            self.recover(true, &subject, &id, &e.to_string()).await;
                            if self.sleep_or_stop(&mut shutdown).await {
                                break;
                            }
                        }
                    }
                }
                b = rx.recv(), if open && room && self.pending.is_empty() => match b {
                    Some(b) => self.pending.extend(b.msgs.into_iter().map(|m| (b.source, m))),
                    None => open = false,
                },
            }
            if !open && self.pending.is_empty() && self.in_flight.is_empty() {
                break;
            }
        }
        // Shutting down: take the acks that arrive in time; send nothing new.
        let deadline = tokio::time::Instant::now() + drain_for;
        while let Some(front) = self.in_flight.front_mut() {
            match tokio::time::timeout_at(deadline, &mut front.ack).await {
                Ok(Ok(_)) => self.acked(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.metrics.in_flight.store(0, Ordering::Relaxed);
    }

    /// Publishes pending messages while there is room in flight.
    async fn publish_pending(&mut self) -> Result<(), (String, String, String)> {
        while self.in_flight.len() < self.cfg.max_in_flight {
            let Some((source, msg)) = self.pending.pop_front() else {
                break;
            };
            let publish = PublishMessage::build()
                .payload(msg.payload.clone())
                .message_id(&msg.msg_id);
            match self.js.send_publish(msg.subject.clone(), publish).await {
                Ok(ack) => {
                    self.in_flight.push_back(InFlight {
                        source,
                        msg,
                        ack: ack.into_future(),
                    });
                }
                Err(e) => {
                    let err = (msg.subject.clone(), msg.msg_id.clone(), e.to_string());
                    self.pending.push_front((source, msg));
                    return Err(err);
                }
            }
        }
        self.metrics
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn acked(&mut self) {
        let done = self
            .in_flight
            .pop_front()
            .expect("an ack is for the front message");
        done.msg.counters.published.fetch_add(1, Ordering::Relaxed);
        self.watermarks[done.source].advance(done.msg.seq);
        self.failures = 0;
    }

    /// After a failure: take the acks that still arrive in order, then wait for the
    /// others outstanding, and queue everything unacknowledged to be sent again in its
    /// original order. `front_failed` says the front's ack future already completed with
    /// an error (it must not be polled again); otherwise the failure was in sending the
    /// first pending message.
    async fn recover(&mut self, mut front_failed: bool, subject: &str, msg_id: &str, error: &str) {
        if !front_failed {
            while let Some(f) = self.in_flight.front_mut() {
                match (&mut f.ack).await {
                    Ok(_) => self.acked(),
                    Err(_) => {
                        front_failed = true;
                        break;
                    }
                }
            }
        }
        self.failures += 1;
        let first = if front_failed {
            self.in_flight.front().map(|f| &f.msg)
        } else {
            self.pending.front().map(|p| &p.1)
        };
        if let Some(m) = first {
            PublishFailed {
                subject,
                msg_id,
                error,
            }
            .emit(&self.metrics, &m.counters);
        }
        let mut again: Vec<(usize, Outgoing)> = Vec::with_capacity(self.in_flight.len());
        let mut later_acked = 0u64;
        let mut rest = std::mem::take(&mut self.in_flight).into_iter();
        if front_failed {
            if let Some(f) = rest.next() {
                again.push((f.source, f.msg));
            }
        }
        // Poll the outstanding acks together: each one's timeout starts at its first poll.
        let (acks, msgs): (Vec<AckFuture>, Vec<(usize, Outgoing)>) =
            rest.map(|f| (f.ack, (f.source, f.msg))).unzip();
        later_acked += futures::future::join_all(acks)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count() as u64;
        again.extend(msgs);
        if later_acked > 0 {
            self.metrics
                .publish_reordered
                .fetch_add(later_acked, Ordering::Relaxed);
            tracing::warn!(
                "{later_acked} message(s) after the failed one were acknowledged before it could be sent again; \
                 if the failed one was not stored, the stream holds them ahead of it"
            );
        }
        for m in again.into_iter().rev() {
            self.pending.push_front(m);
        }
        self.metrics.in_flight.store(0, Ordering::Relaxed);
        // Check the stream again before re-sending: it may be what went missing.
        self.stream_ready = false;
    }

    /// Sleeps for the current backoff; returns true if told to stop meanwhile.
    async fn sleep_or_stop(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let d = backoff::delay(self.failures, Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = shutdown.wait_for(|s| *s) => true,
        }
    }
}
