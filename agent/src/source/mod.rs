//! Sources: where changes come from. One folder per kind: `tail`, `trigger`, `poll`.
//!
//! The contract every source keeps:
//! - **Positions.** Each event carries the source's position of its change (for a tailed
//!   file: the file's identity, generation and byte offset). The position makes the
//!   `Nats-Msg-Id`, so the same change always gets the same id.
//! - **Order.** A source hands its events to the sink in the order it read them, each
//!   with the next sequence number (1, 2, 3, …).
//! - **Checkpoints after the ack.** A source writes its position to disk only for events
//!   at or below its [`AckWatermark`](crate::pipeline::AckWatermark). After a crash it
//!   re-reads from the last checkpoint; the re-sent events carry the same ids.
//! - **Bad input is set aside.** A record that cannot become an event is written to the
//!   quarantine with its position, counted and logged, and the source goes on.
//! - **Back-pressure.** When the sink's channel is full the source waits; it never buffers
//!   without bound. On shutdown it stops reading, waits for the sink to finish its
//!   in-flight acks, writes a last checkpoint and returns.

pub mod poll;
pub mod supervisor;
pub mod tail;
pub mod trigger;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::admin::metrics::{Metrics, SourceCounters};
use crate::admin::StatusBoard;
use crate::pipeline::debounce::{Absorb, DebounceConfig, Debouncer};
use crate::pipeline::map::Mapping;
use crate::pipeline::quarantine::Quarantine;
use crate::pipeline::{AckWatermark, Batch, Encoder};
use crate::service::Beat;

/// What the agent gives a source to run with.
pub struct SourceContext {
    pub index: usize,
    pub name: String,
    pub agent_id: String,
    pub state_dir: PathBuf,
    pub encoder: Encoder,
    pub tx: mpsc::Sender<Batch>,
    pub watermark: Arc<AckWatermark>,
    pub metrics: Arc<Metrics>,
    pub counters: Arc<SourceCounters>,
    pub status: Arc<StatusBoard>,
    /// Turns true when the agent is stopping: stop reading.
    pub shutdown: watch::Receiver<bool>,
    /// Turns true when the sink has taken its last acks: write the final checkpoint.
    pub sink_done: watch::Receiver<bool>,
    /// How long to wait for `sink_done` after `shutdown`.
    pub drain_for: Duration,
    pub runtime: tokio::runtime::Handle,
    /// The source's `[source.map]`, applied to each event as it is built.
    pub map: Arc<Mapping>,
    /// The source's `debounce`, if any.
    pub debounce: Option<DebounceConfig>,
    /// Beaten on every turn of the source's loop; the systemd watchdog is fed from it.
    pub beat: Arc<Beat>,
    /// The highest sequence number handed to the sink by this source, over all its
    /// threads (a source is started again after its thread dies: see [`supervisor`]).
    pub handed: Arc<AtomicU64>,
    /// `[agent] quarantine_max_bytes`: the cap of each quarantine file.
    pub quarantine_max_bytes: u64,
}

/// A source's thread. It returns when the agent stops (`Ok`), or with the reason it
/// cannot go on (`Err`: the supervisor logs it and starts the source again).
pub type SourceThread = std::thread::JoinHandle<Result<(), String>>;

/// Events sent to the sink in one batch, at most.
pub const BATCH_SIZE: usize = 512;

/// The sink stopped taking batches: the agent is shutting down.
#[derive(Debug)]
pub struct Stopping;

impl SourceContext {
    /// The source's quarantine; it keeps no record data when the mapping drops fields.
    pub fn quarantine(&self) -> Quarantine {
        let mut q = Quarantine::new(&self.state_dir, &self.name);
        q.withhold_data(self.map.drops_fields());
        q.cap(self.quarantine_max_bytes, &self.name, self.counters.clone());
        q
    }

    /// The source's debouncer (a pass-through without `debounce`), merging off until
    /// the source has caught up after its start.
    pub fn debouncer<T: Absorb>(&self) -> Debouncer<T> {
        Debouncer::new(self.debounce, self.counters.clone())
    }

    /// Tests only (debug builds): `LOCKSTEP_TEST_PANIC=<source>@<n>` panics this
    /// source's thread once per process, right after it handed the sink a batch whose
    /// last event is numbered `n` or above — a thread death, with events in flight, at
    /// a point the test chooses (`tests/e2e/faults.rs`).
    #[cfg(debug_assertions)]
    fn test_panic(&self, last: u64) {
        static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let Ok(v) = std::env::var("LOCKSTEP_TEST_PANIC") else {
            return;
        };
        let Some((source, n)) = v.split_once('@') else {
            return;
        };
        if source == self.name
            && n.parse::<u64>().is_ok_and(|n| last >= n)
            && !FIRED.swap(true, Ordering::AcqRel)
        {
            panic!("LOCKSTEP_TEST_PANIC: source {source} after handing event {last} to the sink");
        }
    }

    /// Waits up to `d`, beating at least every [`crate::service::beat_within`]; ends
    /// early when woken (acks, the agent's stop: the caller looks again).
    pub fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.beat.beat();
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return;
            };
            if self
                .watermark
                .wake()
                .wait(left.min(crate::service::beat_within()))
            {
                return;
            }
        }
    }

    /// At the stop: waits until the sink has acknowledged every event up to `seq`, has
    /// taken its last acks (`sink_done`), or the drain time is over (`drain_for` and a
    /// second). Woken by the acks and by the sink's end; it does not poll.
    pub fn await_acks(&self, seq: u64) {
        let deadline = Instant::now() + self.drain_for + Duration::from_secs(1);
        let w = &self.watermark;
        while !*self.sink_done.borrow() && !w.wake_at(seq) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            w.wake().wait(left);
        }
    }

    /// The sequence number the source's events start after: 0 at the agent's start,
    /// and above every number an earlier thread of the source handed to the sink after
    /// a restart (so that acks of those are not taken for the new thread's events).
    pub fn first_seq(&self) -> u64 {
        self.handed.load(Ordering::Acquire)
    }

    /// Offers `batch` to the sink for up to 100 ms; true once it is taken. The caller
    /// does its housekeeping (acks, checkpoints) between offers.
    pub fn offer(&self, batch: &mut Option<Batch>) -> Result<bool, Stopping> {
        // Waiting here for the sink (a full spool with `when_full = "block"`) is by
        // design, not a stuck loop.
        self.beat.beat();
        if *self.shutdown.borrow() {
            return Err(Stopping);
        }
        let tx = self.tx.clone();
        self.runtime.block_on(async {
            match tokio::time::timeout(Duration::from_millis(100), tx.reserve()).await {
                Ok(Ok(permit)) => {
                    if let Some(b) = batch.take() {
                        let last = b.msgs.iter().map(|m| m.seq).max();
                        if let Some(last) = last {
                            self.handed.fetch_max(last, Ordering::AcqRel);
                        }
                        permit.send(b);
                        #[cfg(debug_assertions)]
                        self.test_panic(last.unwrap_or(0));
                    }
                    Ok(true)
                }
                Ok(Err(_)) => Err(Stopping),
                Err(_) => Ok(false),
            }
        })
    }
}
