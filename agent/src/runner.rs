//! `lockstep run`: wires sources, the publisher and the admin endpoint, and stops them
//! in order on shutdown.
//!
//! Shutdown (SIGTERM/SIGINT, or the `shutdown` channel in tests): sources stop reading;
//! the publisher sends nothing new and waits up to [`DRAIN_FOR`] for the acks of what is
//! in flight; then each source applies the last acks and writes its checkpoint. The whole
//! sequence fits in systemd's 10 s.

use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::metrics::Metrics;
use crate::admin::{self, StatusBoard};
use crate::config::{Config, SourceKind};
use crate::disk::RealDisk;
use crate::pipeline::{AckWatermark, Encoder};
use crate::service::{self, Liveness};
use crate::sink::jetstream::{self, SinkError};
use crate::sink::publisher::Publisher;
use crate::source::{poll, supervisor, tail, trigger, SourceContext};
use crate::spool::{Spool, SpoolError, SpoolOptions};

/// How long the publisher waits for in-flight acks at shutdown.
pub const DRAIN_FOR: Duration = Duration::from_secs(8);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot use the state directory {path}: {source} (it must exist or be creatable, and be writable by the agent)")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "another lockstep agent is running with the state directory {path} (it holds {path}/lock)"
    )]
    Locked { path: String },
    #[error("cannot listen for the admin endpoint on {addr}: {source} (set [admin] listen to a free address, or \"\" to turn it off)")]
    Admin {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the watchdog thread: {0}")]
    Watchdog(std::io::Error),
    #[error("cannot start source {name}: {source}")]
    Source {
        name: String,
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` turns true (or the spool fails for good).
pub async fn run(cfg: Config, mut external: watch::Receiver<bool>) -> Result<(), RunError> {
    let state_dir = &cfg.agent.state_dir;
    let state_err = |source| RunError::StateDir {
        path: state_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(state_err)?;
    let lock = File::create(state_dir.join("lock")).map_err(state_err)?;
    if lock.try_lock().is_err() {
        return Err(RunError::Locked {
            path: state_dir.display().to_string(),
        });
    }

    // Tail sources may follow many files; how many they may hold open comes from this.
    match crate::source::tail::raise_limit() {
        Ok((soft, hard)) => {
            tracing::debug!("open files: limit {soft} (hard limit {hard})")
        }
        Err(e) => tracing::warn!("cannot read the limit on open files: {e}"),
    }
    let metrics = Arc::new(Metrics::default());
    let spool = Spool::open(
        &state_dir.join("spool"),
        &state_dir.join("quarantine"),
        SpoolOptions::new(cfg.spool.max_bytes, cfg.spool.when_full),
        Arc::new(RealDisk),
        metrics.clone(),
    )?;
    // One stop signal for everything: the caller's, or the publisher's when it fails.
    let (stop, shutdown) = watch::channel(false);
    let forward = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = external.wait_for(|s| *s).await;
            let _ = stop.send(true);
        })
    };
    let status = Arc::new(StatusBoard::new(&cfg.agent.id));

    let admin_task = match cfg.admin.listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Admin {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!("admin endpoint on http://{addr}/ (healthz, metrics, status)");
            Some(tokio::spawn(admin::serve(
                l,
                metrics.clone(),
                status.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };

    let client = jetstream::connect(&cfg.nats, true, Some(metrics.clone())).await?;
    let js = jetstream::context(client.clone(), &cfg.nats);
    let (tx, rx) = mpsc::channel(16);
    let watermarks: Vec<Arc<AckWatermark>> = cfg.sources.iter().map(|_| Arc::default()).collect();
    let liveness = Arc::new(Liveness::default());
    let publisher_beat = liveness.register("the publisher");
    let (sink_done_tx, sink_done) = watch::channel(false);
    // A source waiting (for acks, for its next poll) is woken when the agent stops, and
    // again when the sink has taken its last acks.
    for w in &watermarks {
        let (w, mut shutdown, mut sink_done) = (w.clone(), shutdown.clone(), sink_done.clone());
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            w.wake().notify();
            let _ = sink_done.wait_for(|d| *d).await;
            w.wake().notify();
        });
    }

    let mut supervisors = Vec::new();
    for (index, s) in cfg.sources.iter().enumerate() {
        let beat = liveness.register(&format!("source {}", s.name));
        let handed = Arc::new(AtomicU64::new(0));
        let (kind, name) = (s.kind.clone(), s.name.clone());
        let context = {
            let (agent_id, state_dir) = (cfg.agent.id.clone(), state_dir.clone());
            let (tx, watermark, metrics) = (tx.clone(), watermarks[index].clone(), metrics.clone());
            let (status, shutdown, sink_done) =
                (status.clone(), shutdown.clone(), sink_done.clone());
            let (prefix, map, debounce) = (
                cfg.nats.subject_prefix.clone(),
                Arc::new(s.map.clone()),
                s.debounce,
            );
            let (beat, handed, name) = (beat.clone(), handed.clone(), name.clone());
            let quarantine_max_bytes = cfg.agent.quarantine_max_bytes;
            move || SourceContext {
                index,
                name: name.clone(),
                agent_id: agent_id.clone(),
                state_dir: state_dir.clone(),
                encoder: Encoder::new(&prefix, &agent_id, &name),
                tx: tx.clone(),
                watermark: watermark.clone(),
                metrics: metrics.clone(),
                counters: metrics.source(&name),
                status: status.clone(),
                shutdown: shutdown.clone(),
                sink_done: sink_done.clone(),
                drain_for: DRAIN_FOR,
                runtime: tokio::runtime::Handle::current(),
                map: map.clone(),
                debounce,
                beat: beat.clone(),
                handed: handed.clone(),
                quarantine_max_bytes,
            }
        };
        let rt = tokio::runtime::Handle::current();
        let mut start: supervisor::Start = Box::new(move || {
            // The context takes the runtime's handle, wherever this is called from.
            let _guard = rt.enter();
            let cx = context();
            match &kind {
                SourceKind::Tail(t) => tail::spawn(t.clone(), cx),
                SourceKind::Trigger(t) => trigger::spawn(t.clone(), cx),
                SourceKind::Poll(p) => poll::spawn(p.clone(), cx),
            }
        });
        let first = start().map_err(|source| RunError::Source {
            name: s.name.clone(),
            source,
        })?;
        supervisors.push(tokio::spawn(supervisor::supervise(
            supervisor::Supervised {
                name,
                start,
                status: status.clone(),
                counters: metrics.source(&s.name),
                beat,
                shutdown: shutdown.clone(),
            },
            first,
        )));
    }
    drop(tx);
    tracing::info!(
        "lockstep {} running as agent {} with {} source(s), publishing to stream {} on {}",
        env!("CARGO_PKG_VERSION"),
        cfg.agent.id,
        cfg.sources.len(),
        cfg.nats.stream,
        crate::sink::jetstream::shown(&cfg.nats.servers)
    );

    let publisher = Publisher::new(
        js,
        cfg.nats.clone(),
        &cfg.spool,
        spool,
        metrics.clone(),
        watermarks,
        state_dir,
    )
    .check_record_limits(
        cfg.sources
            .iter()
            .filter_map(|s| match &s.kind {
                SourceKind::Tail(t) => Some((s.name.clone(), t.max_record_bytes)),
                _ => None,
            })
            .collect(),
    )
    .cap_quarantine(cfg.agent.quarantine_max_bytes);
    let watchdog = service::spawn_watchdog(
        liveness,
        status.clone(),
        shutdown.clone(),
        cfg.sources.len(),
    )
    .map_err(RunError::Watchdog)?;
    let sampler = {
        let (status, metrics, mut shutdown) = (status.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => status.sample(&metrics),
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        })
    };
    let result = publisher
        .run(rx, shutdown.clone(), DRAIN_FOR, publisher_beat)
        .await;
    let _ = stop.send(true);
    forward.abort();
    let _ = sink_done_tx.send(true);
    tracing::info!("publisher stopped; waiting for sources to write their checkpoints");
    for s in supervisors {
        let _ = s.await;
    }
    if let Some(a) = admin_task {
        a.abort();
    }
    sampler.abort();
    let _ = tokio::task::spawn_blocking(move || watchdog.join()).await;
    drop(client);
    drop(lock);
    Ok(result?)
}
