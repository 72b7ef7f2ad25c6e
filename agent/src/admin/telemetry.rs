//! Telemetry: named internal events (a record quarantined, a file rotated, a connection
//! lost and back, …), each logging and bumping its metric in one place. Not to be
//! confused with the change events the sources capture.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::admin::metrics::{Metrics, SourceCounters};
use crate::admin::StatusBoard;

/// A record set aside in the quarantine.
pub struct RecordQuarantined<'a> {
    pub source: &'a str,
    pub file: &'a Path,
    pub offset: u64,
    pub reason: &'a str,
}

impl RecordQuarantined<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            source = self.source,
            file = %self.file.display(),
            offset = self.offset,
            reason = self.reason,
            "record quarantined: source {}, {} at byte {}: {}",
            self.source,
            self.file.display(),
            self.offset,
            self.reason
        );
    }
}

/// A quarantine file past `quarantine_max_bytes`: its oldest entries were dropped.
pub struct QuarantineTrimmed<'a> {
    pub source: &'a str,
    pub path: &'a Path,
    pub dropped: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl QuarantineTrimmed<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.quarantine_dropped
            .fetch_add(self.dropped, Ordering::Relaxed);
        tracing::warn!(
            source = self.source,
            file = %self.path.display(),
            dropped = self.dropped,
            "quarantine {} went past quarantine_max_bytes ({} bytes): its {} oldest entries \
             ({} bytes) were dropped; raise [agent] quarantine_max_bytes, or look at them \
             sooner (lockstep quarantine list)",
            self.path.display(),
            self.max_bytes,
            self.dropped,
            self.bytes
        );
    }
}

/// Quarantined records of a source sent again (`lockstep quarantine resend`).
pub struct QuarantineResent<'a> {
    pub source: &'a str,
    pub request: u64,
    pub resent: u64,
    pub still_bad: u64,
}

impl QuarantineResent<'_> {
    /// Logs the outcome (each record is counted as its ack comes, by the source).
    pub fn emit(&self) {
        tracing::info!(
            source = self.source,
            request = self.request,
            resent = self.resent,
            still_bad = self.still_bad,
            "source {}: quarantine resend {} done: {} record(s) sent again, {} still bad (kept in \
             the quarantine)",
            self.source,
            self.request,
            self.resent,
            self.still_bad
        );
    }
}

/// A tailed file that got shorter than what was read: read again from 0.
pub struct FileTruncated<'a> {
    pub source: &'a str,
    pub file: &'a Path,
    pub was: u64,
    pub now: u64,
}

impl FileTruncated<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.truncations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            source = self.source,
            file = %self.file.display(),
            "file truncated: source {}, {} shrank from {} to {} bytes; reading it again from the start",
            self.source,
            self.file.display(),
            self.was,
            self.now
        );
    }
}

/// A tailed file that left its glob (renamed away or deleted).
pub struct FileRotated<'a> {
    pub source: &'a str,
    pub file: &'a Path,
}

impl FileRotated<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.rotations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(source = self.source, file = %self.file.display(), "file rotated away or deleted; reading it to its end");
    }
}

/// A publish that failed; it is sent again with the same message id.
pub struct PublishFailed<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub error: &'a str,
}

impl PublishFailed<'_> {
    pub fn emit(&self, m: &Metrics, c: &crate::admin::metrics::TableCounters) {
        c.failed.fetch_add(1, Ordering::Relaxed);
        m.publish_retries.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            subject = self.subject,
            msg_id = self.msg_id,
            "publish to {} failed ({}): retrying with backoff; it and everything after it go to the spool \
             and will be sent again, in order, with the same ids",
            self.subject,
            self.error
        );
    }
}

/// An event the broker refused for good: set aside in the quarantine, and counted as done.
pub struct EventRefused<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub reason: &'a str,
    pub quarantined_to: &'a Path,
}

impl EventRefused<'_> {
    pub fn emit(&self, c: &crate::admin::metrics::TableCounters) {
        c.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            subject = self.subject,
            msg_id = self.msg_id,
            "the broker refuses the event {} on {} for good ({}): it is in the quarantine {}, and \
             everything after it goes on; to have such events sent, raise the server's max_payload \
             or the stream's max_msg_size, or make the records smaller",
            self.msg_id,
            self.subject,
            self.reason,
            self.quarantined_to.display()
        );
    }
}

/// A checkpoint that could not be written; retried at the next chance.
pub struct CheckpointFailed<'a> {
    pub source: &'a str,
    pub path: &'a Path,
    pub error: &'a std::io::Error,
}

impl CheckpointFailed<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            source = self.source,
            path = %self.path.display(),
            "cannot write the checkpoint of source {} to {}: {}; nothing is lost, but a restart now would re-send events",
            self.source,
            self.path.display(),
            self.error
        );
    }
}

/// A source's thread ended while the agent was not stopping: it is started again after
/// `wait`.
pub struct SourceRestarted<'a> {
    pub source: &'a str,
    pub reason: &'a str,
    pub wait: std::time::Duration,
}

impl SourceRestarted<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            source = self.source,
            "source {} stopped unexpectedly: {}; starting it again in {:.1} s from its last checkpoint \
             (the other sources go on; /healthz reports it failing meanwhile)",
            self.source,
            self.reason,
            self.wait.as_secs_f64()
        );
    }
}

/// A frame cut short at the end of a spool segment (a crash during its write).
pub struct SpoolTornTail<'a> {
    pub path: &'a Path,
    pub offset: u64,
    pub bytes: u64,
}

impl SpoolTornTail<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            path = %self.path.display(),
            offset = self.offset,
            "spool segment {} ends in a frame cut short at byte {} ({} bytes; the agent stopped while writing it): \
             cut off; its events were never confirmed durable, so their sources send them again",
            self.path.display(),
            self.offset,
            self.bytes
        );
    }
}

/// A spool frame whose checksum failed: set aside in the quarantine.
pub struct SpoolFrameCorrupt<'a> {
    pub path: &'a Path,
    pub offset: u64,
    pub len: u64,
    pub error: &'a str,
    pub quarantined_to: &'a Path,
    /// False when the same frame was quarantined by an earlier start (not counted again).
    pub first_time: bool,
}

impl SpoolFrameCorrupt<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.first_time {
            m.spool_corrupt_frames.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(
            path = %self.path.display(),
            offset = self.offset,
            "damaged spool frame in {} at byte {} ({} bytes): {}; copied to {} and skipped, the rest is sent",
            self.path.display(),
            self.offset,
            self.len,
            self.error,
            self.quarantined_to.display()
        );
    }
}

/// Spooled events that could not be read back (an I/O error, the segment file gone):
/// skipped, recorded in the quarantine.
pub struct SpoolUnreadable<'a> {
    pub path: &'a Path,
    pub offset: u64,
    /// Which events: "events 10 to 20 (spool sequence numbers)".
    pub events: &'a str,
    pub error: &'a std::io::Error,
    pub recorded_in: &'a Path,
    /// False when the same place was recorded before (not counted again).
    pub first_time: bool,
}

impl SpoolUnreadable<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.first_time {
            m.spool_unreadable.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(
            path = %self.path.display(),
            offset = self.offset,
            "cannot read spool segment {} from byte {}: {}; {} are lost and skipped, the rest is sent \
             (recorded in {}; check the disk and the kernel log)",
            self.path.display(),
            self.offset,
            self.error,
            self.events,
            self.recorded_in.display()
        );
    }
}

/// A spool segment dropped unsent to make room (`when_full = "drop_oldest"`): announced
/// before the drop is recorded, then counted, or said undone when it could not be.
pub struct SpoolDropped<'a> {
    pub path: &'a Path,
    pub events: u64,
}

impl SpoolDropped<'_> {
    pub fn announce(&self) {
        tracing::error!(
            path = %self.path.display(),
            dropped = self.events,
            "spool full: dropping its oldest segment {} with {} unsent event(s) (spool.when_full = \"drop_oldest\"); \
             raise spool.max_bytes or use \"block\" to keep them",
            self.path.display(),
            self.events
        );
    }

    pub fn count(&self, m: &Metrics) {
        m.spool_dropped.fetch_add(self.events, Ordering::Relaxed);
    }

    pub fn undone(&self, e: &dyn std::fmt::Display) {
        tracing::error!(
            path = %self.path.display(),
            kept = self.events,
            "spool: the oldest segment {} was not dropped after all ({e}): its {} unsent event(s) are kept",
            self.path.display(),
            self.events
        );
    }
}

/// A spool write that failed: with events `held`, the publisher keeps them and tries
/// again; with none held, it was the fsync, and the agent stops.
pub struct SpoolWriteFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub held: usize,
}

impl SpoolWriteFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.spool_write_errors.fetch_add(1, Ordering::Relaxed);
        if self.held == 0 {
            tracing::error!(
                "{}; stopping: what was spooled since the last fsync may not be on disk, so no source \
                 position moves past it, and the sources send it again on the next start",
                self.error
            );
        } else {
            tracing::error!(
                "{}; holding {} event(s) in memory and taking no more from the sources until the spool can be written",
                self.error,
                self.held
            );
        }
    }
}

/// The result of comparing a captured table with its capture triggers (schema drift, see
/// the trigger source's `drift`): logged when it changes, and shown on
/// `lockstep_trigger_drift`, `/healthz` and `/status` while the table has drifted.
pub struct TriggerDrift<'a> {
    pub source: &'a str,
    pub table: &'a str,
    /// What is wrong now, or `None` when the triggers match the table.
    pub problem: Option<&'a str>,
    /// What was wrong at the previous check.
    pub was: Option<&'a str>,
    /// What the operator does about it (a command).
    pub fix: &'a str,
}

impl TriggerDrift<'_> {
    pub fn emit(&self, m: &Metrics, status: &StatusBoard) {
        let fix = self.fix;
        m.set_trigger_drift(self.source, self.table, self.problem.is_some());
        status.set_drift(
            self.source,
            self.table,
            self.problem.map(|p| format!("{p}; {fix}")).as_deref(),
        );
        match (self.problem, self.was) {
            (Some(p), was) if was != Some(p) => tracing::error!(
                source = self.source,
                table = self.table,
                "source {}: table `{}` has changed since its capture triggers were installed: {}; {}",
                self.source,
                self.table,
                p,
                fix
            ),
            (None, Some(_)) => tracing::info!(
                source = self.source,
                table = self.table,
                "source {}: the capture triggers of `{}` match the table again",
                self.source,
                self.table
            ),
            _ => {}
        }
    }
}

/// State written by an older lockstep, found at start and read in its old form (what
/// is done with it is in `detail`). Logged once per file or directory; nothing to count.
pub struct StateMigrated<'a> {
    /// What it is: "tail checkpoint", "spool".
    pub what: &'a str,
    pub path: &'a Path,
    pub detail: &'a str,
}

impl StateMigrated<'_> {
    pub fn emit(&self) {
        tracing::info!(
            path = %self.path.display(),
            "migrated: the {} {} was written by an older lockstep; {}",
            self.what,
            self.path.display(),
            self.detail
        );
    }
}

/// A database source's attempt failed: its connection lost or refused
/// (`connection_lost`), or a scan or read that failed otherwise. It is tried again after
/// `wait`. Logged at the first failure of an outage and then every tenth, not each retry.
pub struct SourceRetrying<'a> {
    pub source: &'a str,
    pub error: &'a str,
    pub attempt: usize,
    pub wait: Duration,
    pub connection_lost: bool,
}

impl SourceRetrying<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        if self.connection_lost {
            c.db_up.store(0, Ordering::Relaxed);
            c.db_errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.attempt == 1 || self.attempt.is_multiple_of(10) {
            tracing::warn!(
                source = self.source,
                "source {}: {}; retrying in {:.1} s (attempt {})",
                self.source,
                self.error,
                self.wait.as_secs_f64(),
                self.attempt
            );
        }
    }
}

/// A database source has its connection: again after failures (`again`, logged), or
/// for the first time (the source says what it does with it).
pub struct DbConnected<'a> {
    pub source: &'a str,
    pub again: bool,
}

impl DbConnected<'_> {
    pub fn emit(&self, c: &SourceCounters) {
        c.db_up.store(1, Ordering::Relaxed);
        if self.again {
            tracing::info!(
                source = self.source,
                "source {}: connected to the database again",
                self.source
            );
        }
    }
}
