//! The connection to NATS and the JetStream stream: connect with auth and TLS, build
//! the JetStream context publishes go through, check or create the stream. The
//! publisher that uses them is in [`super::publisher`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use thiserror::Error;

use crate::admin::metrics::Metrics;
use crate::backoff;
use crate::config::{NatsAuth, NatsConfig};

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
    // Credential-free URLs (see `NatsServer`): async-nats logs them at debug level.
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .servers
        .iter()
        .filter_map(|s| s.url.parse().ok())
        .collect();
    opts.connect(addrs.as_slice())
        .await
        .map_err(|source| SinkError::Connect {
            servers: shown(&cfg.servers),
            source,
        })
}

/// The servers for reports: as configured, passwords and tokens masked.
pub fn shown(servers: &[crate::config::NatsServer]) -> String {
    servers
        .iter()
        .map(|s| s.shown.as_str())
        .collect::<Vec<_>>()
        .join(", ")
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
