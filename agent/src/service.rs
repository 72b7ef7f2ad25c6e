//! Running as a service: systemd's notify protocol (`READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`) and the liveness beats the watchdog is fed from.
//!
//! Each long-running loop of the pipeline (every source and the publisher) owns a
//! [`Beat`] and beats it on every turn, including the turns where it waits by design
//! (an idle poll, a full spool). A loop that does not come round within the limit is
//! stuck: inside a database call that never returns, a deadlock, a hung file read. The
//! watchdog thread then stops sending `WATCHDOG=1`, names the stuck loop in the log, in
//! `/status` and on `/healthz`, and systemd restarts the agent after `WatchdogSec`.
//!
//! `READY=1` goes out once every source and the publisher has come round its loop once:
//! checkpoints read, files opened, the publisher taking batches. A source whose database
//! is down is "up" in this sense: it retries, and its backlog waits safely where it is.
//!
//! Without `NOTIFY_SOCKET` nothing is sent; stuck loops are still detected and reported,
//! with the limit [`DEFAULT_STALL_LIMIT`].

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin::StatusBoard;

/// How long a loop may go without a beat when systemd sets no watchdog.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(120);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on the monotonic clock since the first call in this process, plus one
/// (so that 0 can mean "never").
fn mono_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The liveness of one loop.
#[derive(Debug)]
pub struct Beat {
    name: String,
    registered: u64,
    /// [`mono_ms`] of the last beat; 0 before the first.
    last: AtomicU64,
}

impl Beat {
    /// The loop came round.
    pub fn beat(&self) {
        self.last.store(mono_ms(), Ordering::Relaxed);
    }
}

/// Every loop's [`Beat`].
#[derive(Debug, Default)]
pub struct Liveness {
    beats: Mutex<Vec<Arc<Beat>>>,
}

impl Liveness {
    pub fn register(&self, name: &str) -> Arc<Beat> {
        let b = Arc::new(Beat {
            name: name.to_owned(),
            registered: mono_ms(),
            last: AtomicU64::new(0),
        });
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(b.clone());
        b
    }

    /// Every loop has come round at least once.
    pub fn started(&self) -> bool {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.iter().all(|b| b.last.load(Ordering::Relaxed) != 0)
    }

    /// The loops that have not come round for longer than `limit`, with how long.
    pub fn stalled(&self, limit: Duration) -> Vec<(String, Duration)> {
        self.stalled_at(mono_ms(), limit)
    }

    fn stalled_at(&self, now: u64, limit: Duration) -> Vec<(String, Duration)> {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats
            .iter()
            .filter_map(|b| {
                let last = match b.last.load(Ordering::Relaxed) {
                    0 => b.registered,
                    t => t,
                };
                let quiet = Duration::from_millis(now.saturating_sub(last));
                (quiet > limit).then(|| (b.name.clone(), quiet))
            })
            .collect()
    }
}

struct NotifySocket {
    sock: UnixDatagram,
    addr: SocketAddr,
}

fn notify_socket() -> Option<&'static NotifySocket> {
    static SOCKET: OnceLock<Option<NotifySocket>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name)
                }
                None => SocketAddr::from_pathname(&path),
            };
            let made = addr.and_then(|addr| Ok(NotifySocket { sock: UnixDatagram::unbound()?, addr }));
            match made {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "NOTIFY_SOCKET={}: cannot use it ({e}); systemd will not hear from lockstep",
                        path.to_string_lossy()
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Sends `state` (lines like `READY=1`) to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(s) = notify_socket() else { return };
    if let Err(e) = s.sock.send_to_addr(state.as_bytes(), &s.addr) {
        tracing::warn!("cannot tell systemd `{}`: {e}", state.replace('\n', " "));
    }
}

/// The longest a loop may wait between two beats: a quarter of the stall limit (systemd's
/// watchdog interval, else [`DEFAULT_STALL_LIMIT`]), and at most a second. Loops that
/// wait for a wake-up (acks, the stop) wait no longer than this, so that an idle agent
/// is never taken for a stuck one, whatever `WatchdogSec` is.
pub fn beat_within() -> Duration {
    static WITHIN: OnceLock<Duration> = OnceLock::new();
    *WITHIN.get_or_init(|| {
        (watchdog_interval().unwrap_or(DEFAULT_STALL_LIMIT) / 4).min(Duration::from_secs(1))
    })
}

/// systemd's watchdog interval (`WATCHDOG_USEC`), when it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends READY once every loop has started, then WATCHDOG while none is stuck, until
/// `shutdown` turns true. Stuck loops are logged and shown in `status`.
pub fn spawn_watchdog(
    liveness: Arc<Liveness>,
    status: Arc<StatusBoard>,
    shutdown: watch::Receiver<bool>,
    sources: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let interval = watchdog_interval();
    let limit = interval.unwrap_or(DEFAULT_STALL_LIMIT);
    // systemd's advice: ping at half the interval.
    let ping_every = interval.map(|i| i / 2);
    // Once ready, it looks once a second (often enough for the shortest watchdog).
    let calm = ping_every.map_or(Duration::from_secs(1), |p| {
        (p / 2).min(Duration::from_secs(1))
    });
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("lockstep-watchdog".into())
        .spawn(move || {
            let mut ready = false;
            let mut last_ping: Option<Instant> = None;
            let mut was_stalled: Vec<String> = Vec::new();
            while !*shutdown.borrow() {
                if !ready && liveness.started() {
                    ready = true;
                    notify(&format!(
                        "READY=1\nSTATUS=running: {sources} source(s) and the publisher"
                    ));
                    tracing::info!(
                        "ready: {sources} source(s) and the publisher are running{}",
                        match interval {
                            Some(i) => format!("; systemd watchdog every {:.1} s", i.as_secs_f64()),
                            None => String::new(),
                        }
                    );
                }
                let stalled = liveness.stalled(limit);
                let names: Vec<String> = stalled.iter().map(|(n, _)| n.clone()).collect();
                if names != was_stalled {
                    for (name, quiet) in &stalled {
                        if !was_stalled.contains(name) {
                            tracing::error!(
                                "{name} has not moved for {:.0} s (limit {:.0} s): it is stuck{}",
                                quiet.as_secs_f64(),
                                limit.as_secs_f64(),
                                if interval.is_some() {
                                    "; the systemd watchdog is no longer fed and systemd will restart lockstep"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                    for name in &was_stalled {
                        if !names.contains(name) {
                            tracing::info!("{name} is moving again");
                        }
                    }
                    notify(&if names.is_empty() {
                        format!("STATUS=running: {sources} source(s) and the publisher")
                    } else {
                        format!("STATUS=stuck: {}", names.join(", "))
                    });
                    status.set_stalled(names.clone());
                    was_stalled = names;
                }
                if let Some(every) = ping_every {
                    let due = last_ping.is_none_or(|t| t.elapsed() >= every);
                    if ready && was_stalled.is_empty() && due {
                        notify("WATCHDOG=1");
                        last_ping = Some(Instant::now());
                    }
                }
                // Until ready, short naps keep READY prompt; the stop ends a nap at once.
                let nap = if ready { calm } else { Duration::from_millis(100) };
                let mut stop = shutdown.clone();
                let _ = rt.block_on(async {
                    tokio::time::timeout(nap, stop.wait_for(|s| *s)).await
                });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_only_past_the_limit_and_started_after_its_first_beat() {
        let l = Liveness::default();
        let a = l.register("source a");
        let b = l.register("publisher");
        assert!(!l.started());
        a.beat();
        assert!(!l.started());
        b.beat();
        assert!(l.started());
        assert!(l.stalled(Duration::from_secs(60)).is_empty());
        // A minute on, after the publisher beat again: only the source is stuck.
        let later = mono_ms() + 60_000;
        b.last.store(later, Ordering::Relaxed);
        let s = l.stalled_at(later, Duration::from_secs(30));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "source a");
        assert!(s[0].1 >= Duration::from_secs(59));
        // A loop that never came round is stuck once the limit has passed since it
        // was registered.
        let c = l.register("source c");
        assert!(l
            .stalled_at(c.registered + 1_000, Duration::from_secs(30))
            .iter()
            .all(|(n, _)| n != "source c"));
        assert!(l
            .stalled_at(c.registered + 31_000, Duration::from_secs(30))
            .iter()
            .any(|(n, _)| n == "source c"));
    }
}
