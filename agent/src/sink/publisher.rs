//! The publisher: sends each batch straight to JetStream or into the spool, drains the
//! spool first when the broker is back, and acknowledges sources through their
//! watermarks.
//!
//! # Routing
//!
//! - **Live**: the broker took the last attempt and every spooled event has been read
//!   back out. Batches are published at once, up to `max_in_flight` awaiting acks;
//!   acks are taken in publish order and raise the source's watermark.
//! - **Spooling**: a publish failed, or its ack did not come within `nats.ack_timeout`
//!   (default 5 s). The publisher waits for the acks still outstanding, appends every
//!   unacknowledged live message (and everything received after) to the spool, in
//!   order, and checks the stream again with backoff. A source's watermark rises once
//!   the frame holding its event is fsynced (`spool.fsync` `always` or `batch`), or,
//!   with `off`, once the event is acknowledged after the drain.
//! - **Draining**: the stream answers again. Events are read from the spool in order and
//!   published pipelined like live ones; new batches keep going into the spool behind
//!   them until the reader catches up, then the publisher is live again. A failure while
//!   draining rewinds the reader to the first unacknowledged spooled event.
//!
//! Order: in flight, spooled events always precede live ones (live ones are taken only
//! once the reader has caught up), and a failure puts unacknowledged live events behind
//! the spooled ones; so events leave in the order they arrived.
//!
//! # One message per key in flight
//!
//! Each message carries its key's hash (`Outgoing::key_hash`: xxh3 of source, table and
//! key, computed once by the encoder and kept in the spool). The publisher hands the
//! client messages strictly in order, and never one whose key has a message awaiting
//! its ack: it waits for that ack first (head of line), while messages of other keys
//! stay pipelined, up to `max_in_flight`.
//!
//! Why that keeps each key's order in the stream, whatever breaks: let A and B be two
//! messages of one key, A first. B is handed to the client only after A's ack came,
//! and an ack means A is stored. If A's ack does not come (lost in a dead socket, timed
//! out, refused), B has not been sent yet: the failure path spools A and, behind it,
//! everything not acknowledged, B included, and the drain sends them in that order
//! under the same rule. If A was in fact stored (only its ack was lost) or the client
//! sends its queued copy of A on reconnecting, the copy sent again is a duplicate that
//! JetStream drops by its `Nats-Msg-Id`; either way A is in the stream before B is
//! handed over. So no later message of a key is ever stored before an earlier one. A
//! restart keeps this too: what was not acknowledged is re-read from the source or the
//! spool in order, and nothing of the key after it was sent.
//!
//! Across keys, messages leave in source order and are stored in it, except at a broken
//! connection: a message lost with the old socket is stored again after messages of
//! other keys that were queued in the client and sent on the new connection (counted
//! in `lockstep_publish_reordered_total`). Events without a key (`key = []`) are not
//! held back for one another, so the same applies between them. A spool written before
//! messages carried a key hash (frame version 1) is drained one message at a time: its
//! keys are unknown.
//!
//! The cost: a key changed faster than one ack round trip waits for the round trip
//! each time; with K keys changing in turn, at most K messages are in flight. Locally
//! (an ack in well under a millisecond) that is invisible; over a WAN link with 50 ms
//! round trips, 20 hot keys go at about 20 / 0.05 s = 400 events/s. As the line is
//! held at its head, events of other keys queued behind a waiting one wait too (that
//! keeps source order across keys). Debouncing (`debounce`) merges such bursts before
//! they reach the publisher.
//!
//! # Refused events
//!
//! A message the broker refuses for good (see [`super::refusal`]) goes to
//! `state_dir/quarantine/<source>.refused.jsonl` with its message id and the broker's
//! reason, and then counts as done in publish order, as an ack would: its source's
//! watermark rises past it, a spooled one is acknowledged in the spool, and everything
//! after it goes on. If the quarantine cannot be written, it is treated as a transient
//! failure and tried again.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use lockstep_formats::frame::{RawBytes, SpoolEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::jetstream::{ensure_stream, SinkError};
use super::keys::KeysInFlight;
use super::refusal::{check_record_limits, classify, Failure, Refusals};
use crate::admin::metrics::{Metrics, TableCounters};
use crate::admin::telemetry::{EventRefused, PublishFailed, SpoolWriteFailed};
use crate::backoff;
use crate::config::{FsyncPolicy, NatsConfig, SpoolConfig, WhenFull};
use crate::pipeline::quarantine::RefusedEvent;
use crate::pipeline::{AckWatermark, Batch, Outgoing};
use crate::service::Beat;
use crate::spool::{Spool, SpoolError};

/// How often the spool is fsynced (with `fsync = "batch"`) and its ledger kept while
/// events pass. When nothing passes and nothing waits, the loop comes round every
/// [`crate::service::beat_within`] instead (a second, or less under a short systemd
/// watchdog), to beat.
const TICK: Duration = Duration::from_millis(50);

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;
type Probe = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Where a message in flight came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Straight from a source (index); `Outgoing::seq` is the source's sequence number.
    Live(usize),
    /// From the spool, with its spool sequence number.
    Spooled(u64),
}

struct InFlight {
    origin: Origin,
    msg: Outgoing,
    ack: AckFuture,
}

/// The publisher stopped because the spool could not be made durable.
pub type Fatal = SpoolError;

pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    cfg: NatsConfig,
    fsync: FsyncPolicy,
    when_full: WhenFull,
    metrics: Arc<Metrics>,
    watermarks: Vec<Arc<AckWatermark>>,
    spool: Spool,
    in_flight: VecDeque<InFlight>,
    /// The keys of the messages in `in_flight`.
    keys: KeysInFlight,
    /// Where refused events go.
    refusals: Refusals,
    /// Tail sources' `max_record_bytes`, checked against the server's `max_payload`.
    record_limits: Vec<(String, usize)>,
    /// The `max_payload` the record limits were last checked against.
    checked_payload: usize,
    /// To publish next, in order.
    pending: VecDeque<(Origin, Outgoing)>,
    /// Live messages the spool could not take (disk full, I/O error), and the source
    /// sequence numbers that advance with them.
    held: Vec<(usize, Outgoing)>,
    held_upto: Vec<(usize, u64)>,
    held_retry: Option<Instant>,
    /// Watermark rises waiting for the spool: (spool sequence number, source, source
    /// sequence number), released by an fsync or (with `fsync = "off"`) by the ack.
    promises: VecDeque<(u64, usize, u64)>,
    /// The stream answered and nothing failed since.
    healthy: bool,
    retry_at: Option<Instant>,
    probe: Option<Probe>,
    failures: usize,
    spool_failures: usize,
    counters: Option<Arc<TableCounters>>,
}

impl Publisher {
    /// A publisher whose refused events go to `state_dir/quarantine/`.
    pub fn new(
        js: jetstream::Context,
        cfg: NatsConfig,
        spool_cfg: &SpoolConfig,
        spool: Spool,
        metrics: Arc<Metrics>,
        watermarks: Vec<Arc<AckWatermark>>,
        state_dir: &Path,
    ) -> Self {
        Self {
            client: js.client(),
            js,
            cfg,
            fsync: spool_cfg.fsync,
            when_full: spool_cfg.when_full,
            metrics,
            watermarks,
            spool,
            in_flight: VecDeque::new(),
            keys: KeysInFlight::default(),
            refusals: Refusals::new(state_dir),
            record_limits: Vec::new(),
            checked_payload: 0,
            pending: VecDeque::new(),
            held: Vec::new(),
            held_upto: Vec::new(),
            held_retry: None,
            promises: VecDeque::new(),
            healthy: false,
            retry_at: None,
            probe: None,
            failures: 0,
            spool_failures: 0,
            counters: None,
        }
    }

    /// Tail sources' longest records (`max_record_bytes`), to be checked against the
    /// server's `max_payload` at each connection: a warning names each source whose
    /// records could make a message the broker refuses.
    pub fn check_record_limits(mut self, limits: Vec<(String, usize)>) -> Self {
        self.record_limits = limits;
        self
    }

    /// Caps each file of refused events at `max_bytes` (`[agent] quarantine_max_bytes`).
    pub fn cap_quarantine(mut self, max_bytes: u64) -> Self {
        self.refusals.cap(max_bytes, self.metrics.clone());
        self
    }

    /// Runs until `shutdown` turns true, then waits up to `drain_for` for the acks of
    /// what is in flight, spools what is still unacknowledged, and returns. Returns an
    /// error when the spool cannot be made durable (fsync failed): the agent must stop,
    /// and the sources re-send from their checkpoints on the next start.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        mut shutdown: watch::Receiver<bool>,
        drain_for: Duration,
        beat: Arc<Beat>,
    ) -> Result<(), Fatal> {
        let mut open = true;
        let mut ticked = tokio::time::Instant::now();
        loop {
            // Comes round at least every TICK; the watchdog is fed from here.
            beat.beat();
            if *shutdown.borrow() {
                break;
            }
            if self.healthy && self.client.connection_state() != State::Connected {
                // Do not hand more to a client that has lost its connection: it would
                // send them on reconnecting, ahead of what the spool holds.
                let (subject, id) = self
                    .in_flight
                    .front()
                    .map(|f| &f.msg)
                    .or(self.pending.front().map(|p| &p.1))
                    .map_or_else(Default::default, |m| (m.subject.clone(), m.msg_id.clone()));
                self.fail(false, &subject, &id, "disconnected from NATS")
                    .await?;
            } else if self.healthy {
                self.fill_from_spool();
                if let Err((subject, msg_id, error)) = self.publish_pending().await {
                    self.fail(false, &subject, &msg_id, &error).await?;
                }
            } else if self.probe.is_none() && self.retry_at.is_none_or(|t| t <= Instant::now()) {
                let (js, cfg) = (self.js.clone(), self.cfg.clone());
                self.probe = Some(Box::pin(async move { ensure_stream(&js, &cfg).await }));
            }
            let intake = open && self.can_take();
            let retry_at = self.retry_at.unwrap_or_else(Instant::now);
            let next_tick = ticked
                + if self.quiet() {
                    crate::service::beat_within()
                } else {
                    TICK
                };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                r = async { (&mut self.in_flight.front_mut().expect("checked non-empty").ack).await }, if !self.in_flight.is_empty() => {
                    if let Some(error) = self.front_done(r) {
                        let (subject, id) = self
                            .in_flight
                            .front()
                            .map_or_else(Default::default, |f| (f.msg.subject.clone(), f.msg.msg_id.clone()));
                        self.fail(true, &subject, &id, &error).await?;
                    }
                }
                r = async { self.probe.as_mut().expect("checked").await }, if self.probe.is_some() => {
                    self.probe = None;
                    match r {
                        Ok(()) => {
                            self.metrics.set_publish_failing(None);
                            self.check_payload_limit();
                            if self.failures > 0 || !self.spool.is_empty() {
                                tracing::info!(
                                    "JetStream stream {} answers; sending {} spooled event(s) first",
                                    self.cfg.stream,
                                    self.spool.stats().events
                                );
                            }
                            self.healthy = true;
                            self.retry_at = None;
                        }
                        Err(e) => {
                            self.failures += 1;
                            self.metrics.set_publish_failing(Some(&e.to_string()));
                            tracing::error!("{e}; events go to the spool meanwhile");
                            self.retry_at = Some(Instant::now() + backoff::delay(self.failures, Duration::from_secs(10)));
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if !self.healthy && self.probe.is_none() && self.retry_at.is_some() => {}
                b = rx.recv(), if intake => match b {
                    Some(b) => self.take(b)?,
                    None => open = false,
                },
                _ = tokio::time::sleep_until(next_tick) => {
                    ticked = tokio::time::Instant::now();
                    self.housekeeping()?;
                }
            }
            if !open && self.pending.is_empty() && self.in_flight.is_empty() && self.held.is_empty()
            {
                break;
            }
        }
        // Shutting down: take the acks that arrive in time; send nothing new.
        let deadline = Instant::now() + drain_for;
        while let Some(front) = self.in_flight.front_mut() {
            match tokio::time::timeout_at(deadline, &mut front.ack).await {
                Ok(Ok(ack)) => self.acked(ack.duplicate),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // Spool what is still unacknowledged, so the sources can checkpoint past it.
        let live = self.unacked_live();
        self.spool_live(live, Vec::new());
        self.metrics.in_flight.store(0, Ordering::Relaxed);
        self.sync_spool()?;
        let r = tokio::task::block_in_place(|| self.spool.maintain(true));
        if let Err(e) = r {
            tracing::error!("{e}");
        }
        Ok(())
    }

    /// Nothing passes and nothing waits: no message in flight, pending or held, no promise
    /// awaiting an fsync, and nothing for the spool's housekeeping.
    fn quiet(&self) -> bool {
        self.healthy
            && self.in_flight.is_empty()
            && self.pending.is_empty()
            && self.held.is_empty()
            && self.promises.is_empty()
            && self.spool.at_rest()
    }

    /// Live when the broker answers, nothing is held, and the spool has been read out.
    fn live(&self) -> bool {
        self.healthy && self.held.is_empty() && self.spool.all_read()
    }

    fn can_take(&self) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        if self.live() {
            self.pending.is_empty() && self.in_flight.len() < self.cfg.max_in_flight
        } else {
            !(self.when_full == WhenFull::Block && self.spool.is_full())
        }
    }

    fn take(&mut self, b: Batch) -> Result<(), Fatal> {
        crate::crash::point("capture");
        if self.live() {
            self.pending
                .extend(b.msgs.into_iter().map(|m| (Origin::Live(b.source), m)));
            return Ok(());
        }
        let entries = b.msgs.into_iter().map(|m| (b.source, m)).collect();
        self.spool_live(entries, Vec::new());
        if self.fsync == FsyncPolicy::Always {
            self.sync_spool()?;
        }
        Ok(())
    }

    /// Appends live messages to the spool and promises their sources (and `upto`, the
    /// sequence numbers that were acknowledged out of order) a watermark rise once the
    /// frame is durable. What the spool cannot take is held and retried.
    fn spool_live(&mut self, entries: Vec<(usize, Outgoing)>, mut upto: Vec<(usize, u64)>) {
        if entries.is_empty() {
            for (source, seq) in upto {
                self.watermarks[source].advance(seq);
            }
            return;
        }
        upto.extend(entries.iter().map(|(s, m)| (*s, m.seq)));
        let spool = &mut self.spool;
        let r = tokio::task::block_in_place(|| {
            spool.append(entries.iter().map(|(_, m)| SpoolEvent {
                source: &m.counters.source,
                table: &m.counters.table,
                subject: &m.subject,
                msg_id: &m.msg_id,
                captured_ms: m.captured_ms,
                payload: RawBytes(&m.payload),
                key_hash: m.key_hash,
            }))
        });
        match r {
            Ok(last) => {
                self.spool_failures = 0;
                upto.sort_unstable();
                for (i, &(source, seq)) in upto.iter().enumerate() {
                    if upto.get(i + 1).is_none_or(|n| n.0 != source) {
                        self.promises.push_back((last, source, seq));
                    }
                }
            }
            Err(e) => {
                self.spool_failures += 1;
                SpoolWriteFailed {
                    error: &e,
                    held: self.held.len() + entries.len(),
                }
                .emit(&self.metrics);
                self.held.extend(entries);
                self.held_upto.extend(upto);
                self.held_retry = Some(
                    Instant::now() + backoff::delay(self.spool_failures, Duration::from_secs(10)),
                );
            }
        }
    }

    /// Makes the spool durable and releases the promises it covers. A failed fsync is
    /// fatal: after one, the kernel may have dropped the pages, and a later fsync that
    /// succeeds would not say so.
    fn sync_spool(&mut self) -> Result<(), Fatal> {
        if self.fsync == FsyncPolicy::Off && self.spool.sync_error().is_none() {
            return Ok(());
        }
        if self.spool.unsynced() {
            let spool = &mut self.spool;
            if let Err(e) = tokio::task::block_in_place(|| spool.sync()) {
                SpoolWriteFailed { error: &e, held: 0 }.emit(&self.metrics);
                return Err(e);
            }
        }
        for (_, source, seq) in self.promises.drain(..) {
            self.watermarks[source].advance(seq);
        }
        Ok(())
    }

    fn housekeeping(&mut self) -> Result<(), Fatal> {
        // A failed fsync (also one made when a segment rolled) stops the agent.
        if self.fsync == FsyncPolicy::Batch || self.spool.sync_error().is_some() {
            self.sync_spool()?;
        }
        let spool = &mut self.spool;
        if let Err(e) = tokio::task::block_in_place(|| spool.maintain(false)) {
            tracing::error!("{e}; retrying");
        }
        if !self.held.is_empty() {
            if self.healthy && self.spool.all_read() {
                // The spool is read out: the held messages can go live, in order.
                let held = std::mem::take(&mut self.held);
                self.held_upto.clear();
                self.pending
                    .extend(held.into_iter().map(|(s, m)| (Origin::Live(s), m)));
            } else if self.held_retry.is_none_or(|t| t <= Instant::now()) {
                let held = std::mem::take(&mut self.held);
                let upto = std::mem::take(&mut self.held_upto);
                self.spool_live(held, upto);
            }
        }
        Ok(())
    }

    /// Checks the tail sources' `max_record_bytes` against the server's `max_payload`,
    /// once per value the server announces.
    fn check_payload_limit(&mut self) {
        let max = self.client.server_info().max_payload;
        if max > 0 && max != self.checked_payload {
            self.checked_payload = max;
            check_record_limits(max, &self.record_limits);
        }
    }

    /// While draining: moves spooled events into `pending`, as many as may be in flight.
    fn fill_from_spool(&mut self) {
        let room = self
            .cfg
            .max_in_flight
            .saturating_sub(self.in_flight.len() + self.pending.len());
        if room == 0 || self.spool.all_read() {
            return;
        }
        let Self {
            spool,
            pending,
            counters,
            metrics,
            ..
        } = self;
        let r = tokio::task::block_in_place(|| {
            spool.read(room, |seq, e| {
                let c = match counters {
                    Some(c) if *c.source == *e.source && *c.table == *e.table => c.clone(),
                    _ => {
                        let c = metrics.table(e.source, e.table);
                        *counters = Some(c.clone());
                        c
                    }
                };
                pending.push_back((
                    Origin::Spooled(seq),
                    Outgoing {
                        seq: 0,
                        subject: e.subject.to_owned(),
                        msg_id: e.msg_id.to_owned(),
                        payload: Bytes::copy_from_slice(e.payload.0),
                        captured_ms: e.captured_ms,
                        key_hash: e.key_hash,
                        counters: c,
                    },
                ))
            })
        });
        if let Err(e) = r {
            tracing::error!("{e}; retrying");
        }
    }

    /// Publishes pending messages, in order, while there is room in flight and the next
    /// one's key has no message in flight (see "One message per key in flight").
    async fn publish_pending(&mut self) -> Result<(), (String, String, String)> {
        while self.in_flight.len() < self.cfg.max_in_flight {
            let Some((_, next)) = self.pending.front() else {
                break;
            };
            if !self.keys.may_send(next.key_hash, self.in_flight.len()) {
                break;
            }
            let Some((origin, msg)) = self.pending.pop_front() else {
                break;
            };
            let publish = PublishMessage::build()
                .payload(msg.payload.clone())
                .message_id(&msg.msg_id);
            match self.js.send_publish(msg.subject.clone(), publish).await {
                Ok(ack) => {
                    self.keys.add(msg.key_hash);
                    self.in_flight.push_back(InFlight {
                        origin,
                        msg,
                        ack: ack.into_future(),
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    // Refused before it was sent: it is settled in publish order, when
                    // it reaches the front, like an ack.
                    self.keys.add(msg.key_hash);
                    self.in_flight.push_back(InFlight {
                        origin,
                        msg,
                        ack: Box::pin(std::future::ready(Err(e))),
                    });
                }
                Err(e) => {
                    let err = (msg.subject.clone(), msg.msg_id.clone(), e.to_string());
                    self.pending.push_front((origin, msg));
                    return Err(err);
                }
            }
        }
        self.metrics
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The front message was acknowledged: stored, or (`duplicate`) already held by the
    /// stream, which dropped this copy.
    fn acked(&mut self, duplicate: bool) {
        self.settle_front(Some(duplicate));
    }

    /// The front message's ack or error came: acknowledged, refused for good (then
    /// quarantined and done), or failed. Returns the error of a failure to retry.
    fn front_done(&mut self, r: Result<PublishAck, PublishError>) -> Option<String> {
        let e = match r {
            Ok(ack) => {
                self.acked(ack.duplicate);
                return None;
            }
            Err(e) => e,
        };
        let reason = match classify(&e) {
            Failure::Transient(error) => return Some(error),
            Failure::Refused(reason) => reason,
        };
        let front = &self.in_flight.front()?.msg;
        let put = self.refusals.put(
            &front.counters.source,
            &RefusedEvent {
                msg_id: &front.msg_id,
                subject: &front.subject,
                reason: &reason,
                payload: &front.payload,
            },
        );
        match put {
            Ok(path) => {
                EventRefused {
                    subject: &front.subject,
                    msg_id: &front.msg_id,
                    reason: &reason,
                    quarantined_to: &path,
                }
                .emit(&front.counters);
                self.settle_front(None);
                None
            }
            Err(qe) => Some(format!("{reason}; it would go to the quarantine, but {qe}")),
        }
    }

    /// Takes the front message out of flight as done: acknowledged (`Some(duplicate)`),
    /// or refused and quarantined (`None`). Its source's watermark rises, or the spool
    /// acknowledges it.
    fn settle_front(&mut self, acked: Option<bool>) {
        let Some(done) = self.in_flight.pop_front() else {
            return;
        };
        self.keys.remove(done.msg.key_hash);
        if let Some(duplicate) = acked {
            done.msg.counters.acknowledged(duplicate);
            self.metrics
                .capture_to_ack
                .observe_ms(crate::clock::now_ms() - done.msg.captured_ms);
        }
        self.failures = 0;
        match done.origin {
            Origin::Live(source) => self.watermarks[source].advance(done.msg.seq),
            Origin::Spooled(seq) => {
                crate::crash::point("spool-drain");
                self.spool.ack(seq);
                if self.fsync == FsyncPolicy::Off {
                    while let Some(&(s, source, seq)) = self.promises.front() {
                        if s > self.spool.acked() {
                            break;
                        }
                        self.watermarks[source].advance(seq);
                        self.promises.pop_front();
                    }
                }
            }
        }
    }

    /// The live messages not yet acknowledged, in order, taken out of flight and out of
    /// `pending`; spooled ones are dropped (they are still in the spool).
    fn unacked_live(&mut self) -> Vec<(usize, Outgoing)> {
        self.keys.clear();
        let flying = std::mem::take(&mut self.in_flight)
            .into_iter()
            .map(|f| (f.origin, f.msg));
        let waiting = std::mem::take(&mut self.pending);
        flying
            .chain(waiting)
            .filter_map(|(o, m)| match o {
                Origin::Live(s) => Some((s, m)),
                Origin::Spooled(_) => None,
            })
            .collect()
    }

    /// After a failed publish: take the acks that still come, spool every live message
    /// not acknowledged (behind what the spool holds), rewind the spool's reader, and
    /// check the stream again after a backoff. `front_failed` says the front's ack
    /// future already completed with an error (it must not be polled again); otherwise
    /// the failure was in sending the first pending message.
    async fn fail(
        &mut self,
        mut front_failed: bool,
        subject: &str,
        msg_id: &str,
        error: &str,
    ) -> Result<(), Fatal> {
        if !front_failed {
            while let Some(f) = self.in_flight.front_mut() {
                let r = (&mut f.ack).await;
                if self.front_done(r).is_some() {
                    front_failed = true;
                    break;
                }
            }
        }
        self.failures += 1;
        self.metrics.set_publish_failing(Some(error));
        let counters = if front_failed {
            self.in_flight.front().map(|f| f.msg.counters.clone())
        } else {
            self.pending.front().map(|p| p.1.counters.clone())
        };
        if let Some(c) = counters {
            PublishFailed {
                subject,
                msg_id,
                error,
            }
            .emit(&self.metrics, &c);
        }
        let mut again: Vec<(usize, Outgoing)> = Vec::with_capacity(self.in_flight.len());
        let mut upto = Vec::new();
        self.keys.clear();
        let mut rest = std::mem::take(&mut self.in_flight).into_iter();
        if front_failed {
            if let Some(InFlight {
                origin: Origin::Live(s),
                msg,
                ..
            }) = rest.next()
            {
                again.push((s, msg));
            }
        }
        // Poll the outstanding acks together: each one's timeout starts at its first poll.
        let (acks, msgs): (Vec<AckFuture>, Vec<(Origin, Outgoing)>) =
            rest.map(|f| (f.ack, (f.origin, f.msg))).unzip();
        let results = futures::future::join_all(acks).await;
        let mut later_acked = 0u64;
        for (r, (origin, msg)) in results.into_iter().zip(msgs) {
            match (origin, r) {
                (Origin::Live(s), Ok(ack)) => {
                    later_acked += 1;
                    msg.counters.acknowledged(ack.duplicate);
                    upto.push((s, msg.seq));
                }
                (Origin::Live(s), Err(_)) => again.push((s, msg)),
                (Origin::Spooled(_), r) => later_acked += u64::from(r.is_ok()),
            }
        }
        if later_acked > 0 {
            self.metrics
                .publish_reordered
                .fetch_add(later_acked, Ordering::Relaxed);
            tracing::warn!(
                "{later_acked} message(s) after the failed one were acknowledged before it could be sent again; \
                 if the failed one was not stored, the stream holds them ahead of it (none of them has its key: \
                 each key's order is kept)"
            );
        }
        again.extend(self.unacked_live());
        self.spool.rewind();
        self.spool_live(again, upto);
        if self.fsync == FsyncPolicy::Always {
            self.sync_spool()?;
        }
        self.metrics.in_flight.store(0, Ordering::Relaxed);
        self.healthy = false;
        self.retry_at =
            Some(Instant::now() + backoff::delay(self.failures, Duration::from_secs(10)));
        Ok(())
    }
}
