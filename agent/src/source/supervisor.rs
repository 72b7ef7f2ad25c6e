//! Keeps each source running: one broken source never takes the others down.
//!
//! Every source runs on its own thread. Its thread ends by design only when the agent
//! stops. When it ends otherwise — a panic, or an error it cannot get past (a damaged
//! checkpoint, a state directory it cannot use) — the supervisor:
//!
//! - logs it with the reason (the panic's message, or "it returned"), and counts it in
//!   `lockstep_source_restarts_total{source}`;
//! - marks the source failing: `/healthz` answers 503 `failing: <source> (…)` and
//!   `/status` (and `lockstep status`) show it, until the new thread has run for
//!   [`RUNS_AGAIN_AFTER`];
//! - starts it again after a backoff (about 1 s, doubling to [`MAX_BACKOFF`]; back to
//!   the start once a thread ran for [`RUNS_AGAIN_AFTER`]), beating the source's
//!   watchdog beat meanwhile: a failing source is reported and retried, it does not get
//!   the whole agent restarted by systemd.
//!
//! The other sources and the publisher go on meanwhile. A restarted source resumes from
//! its last checkpoint, like after a crash of the agent: what it re-sends has the same
//! `Nats-Msg-Id`s. Its events are numbered above every number the dead thread handed to
//! the sink ([`SourceContext::first_seq`]), so acknowledgements of the dead thread's
//! events in flight can never be mistaken for the new thread's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin::metrics::SourceCounters;
use crate::admin::telemetry::SourceRestarted;
use crate::admin::StatusBoard;
use crate::backoff;
use crate::service::Beat;
use crate::source::SourceThread;

/// The longest wait before a source is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A restarted source counts as running again (no longer failing) after this long.
pub const RUNS_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Starts the source's thread (again).
pub type Start = Box<dyn FnMut() -> std::io::Result<SourceThread> + Send>;

/// What the supervisor of one source needs.
pub struct Supervised {
    pub name: String,
    pub start: Start,
    pub status: Arc<StatusBoard>,
    pub counters: Arc<SourceCounters>,
    pub beat: Arc<Beat>,
    pub shutdown: watch::Receiver<bool>,
}

/// Watches `first` (the source's running thread) and starts the source again each time
/// its thread ends while the agent is not stopping. Returns once the agent stops and
/// the thread has ended.
pub async fn supervise(mut s: Supervised, first: SourceThread) {
    let mut thread = Some(first);
    let mut start_error = String::new();
    let mut failures = 0usize;
    loop {
        let started = Instant::now();
        let ended = match thread.take() {
            Some(t) => {
                let mut join = tokio::task::spawn_blocking(move || t.join());
                let mut failing = s.status.is_failing(&s.name);
                loop {
                    tokio::select! {
                        r = &mut join => break r,
                        _ = tokio::time::sleep(RUNS_AGAIN_AFTER), if failing => {
                            s.status.clear_failing(&s.name);
                            tracing::info!("source {} runs again", s.name);
                            failing = false;
                        }
                    }
                }
            }
            None => Ok(Ok(Err(std::mem::take(&mut start_error)))),
        };
        if *s.shutdown.borrow() {
            s.status.clear_failing(&s.name);
            return;
        }
        let reason = match ended {
            Ok(Ok(Ok(()))) => "its thread ended".to_owned(),
            Ok(Ok(Err(e))) => e,
            Ok(Err(panic)) => format!("its thread panicked: {}", panic_message(&*panic)),
            Err(e) => format!("its thread could not be joined: {e}"),
        };
        if started.elapsed() >= RUNS_AGAIN_AFTER {
            failures = 0;
        }
        failures += 1;
        // About 0.8 s at the first failure (100 ms doubling from the fourth step).
        let wait = backoff::delay(failures + 3, MAX_BACKOFF);
        SourceRestarted {
            source: &s.name,
            reason: &reason,
            wait,
        }
        .emit(&s.counters);
        s.status.set_failing(&s.name, &reason);
        if !pause(&mut s, wait).await {
            s.status.clear_failing(&s.name);
            return;
        }
        match (s.start)() {
            Ok(t) => thread = Some(t),
            Err(e) => start_error = format!("cannot start a thread for it: {e}"),
        }
    }
}

/// Waits `wait`, beating the source's beat; false when the agent stops meanwhile.
async fn pause(s: &mut Supervised, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        s.beat.beat();
        let nap = until
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_millis(100));
        if nap.is_zero() {
            return !*s.shutdown.borrow();
        }
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = s.shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}

/// The message a panic carried.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
