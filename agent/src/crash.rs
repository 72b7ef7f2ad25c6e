//! Crash points: kill -9 aimed at a phase, for the torture suite.
//!
//! A kill -9 sent from outside lands wherever the agent happens to be, mostly waiting. To
//! prove that a crash in each phase loses nothing, the agent can kill itself there:
//! `LOCKSTEP_CRASH_AT=<point>:<n>` in its environment makes it send itself SIGKILL the
//! `n`-th time it passes `<point>` (no destructor, flush or fsync runs, exactly as with
//! `kill -9`). Before that it writes one line to standard error,
//! `lockstep: crash point <point>:<n> reached, killing itself`, so a test can tell the
//! aimed crash from a real one.
//!
//! The points (see [`POINTS`]):
//! - `capture`: a batch of events from a source reaches the publisher, before it is
//!   published or spooled;
//! - `spool-append`: half of a spool frame is written (a torn frame);
//! - `spool-drain`: a spooled event is acknowledged by the broker, before the spool
//!   records it;
//! - `checkpoint`: an atomic state file (a source's checkpoint, the spool's ledger, a
//!   scan's pending list, a snapshot's progress) is written and fsynced under its
//!   temporary name, before the rename;
//! - `trigger-delete`: captured rows are acknowledged, before they are deleted from the
//!   capture table;
//! - `snapshot`: a poll scan writes an entry of its next snapshot (`snapshot.next`);
//! - `scan-swap`: a poll scan's snapshot is renamed over the previous one, before the
//!   scan's pending files are removed.
//!
//! Without the variable every point is one relaxed atomic load. An unknown point or a
//! malformed value stops the start with an error (a typo would otherwise test nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every crash point's name.
pub const POINTS: [&str; 7] = [
    "capture",
    "spool-append",
    "spool-drain",
    "checkpoint",
    "trigger-delete",
    "snapshot",
    "scan-swap",
];

/// The environment variable that arms a point.
pub const VAR: &str = "LOCKSTEP_CRASH_AT";

static ARMED: AtomicBool = AtomicBool::new(false);
static TARGET: OnceLock<(&'static str, u64)> = OnceLock::new();
static PASSED: AtomicU64 = AtomicU64::new(0);

/// Reads [`VAR`] once, at start. An error names what is wrong with it.
pub fn arm_from_env() -> Result<(), String> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(());
    };
    let v = v.to_string_lossy();
    let (point, n) = parse(&v)?;
    let _ = TARGET.set((point, n));
    ARMED.store(true, Ordering::Relaxed);
    Ok(())
}

fn parse(v: &str) -> Result<(&'static str, u64), String> {
    let bad = || {
        format!(
            "{VAR}={v:?}: expected <point>:<n> with n ≥ 1, a point one of {}",
            POINTS.join(", ")
        )
    };
    let (name, n) = v.split_once(':').ok_or_else(bad)?;
    let point = POINTS.iter().find(|p| **p == name).ok_or_else(bad)?;
    let n: u64 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
    Ok((point, n))
}

/// Whether this passage of `point` is the one to crash at. The caller may do part of
/// its work first (a torn write), then call [`die`].
pub fn due(point: &str) -> bool {
    if !ARMED.load(Ordering::Relaxed) {
        return false;
    }
    let Some(&(target, n)) = TARGET.get() else {
        return false;
    };
    target == point && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == n
}

/// Kills the process with SIGKILL, as `kill -9` would.
pub fn die() -> ! {
    if let Some((point, n)) = TARGET.get() {
        eprintln!("lockstep: crash point {point}:{n} reached, killing itself");
    }
    // SAFETY: kill(2) with our own pid has no memory effects.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort()
}

/// Crashes here if this passage of `point` is the armed one.
pub fn point(point: &str) {
    if due(point) {
        die();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_counts_and_names_what_is_wrong() {
        assert_eq!(parse("checkpoint:3"), Ok(("checkpoint", 3)));
        assert_eq!(parse("scan-swap:1"), Ok(("scan-swap", 1)));
        for bad in [
            "checkpoint",
            "checkpoint:0",
            "checkpoint:x",
            "chekpoint:2",
            "",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(VAR) && e.contains("spool-append"), "{e}");
        }
    }
}
