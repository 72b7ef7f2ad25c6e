//! Named internal events: each logs and bumps its metric in one place.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::admin::metrics::{Metrics, SourceCounters};

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
        tracing::warn!(
            subject = self.subject,
            msg_id = self.msg_id,
            "publish to {} failed ({}); it and everything after it will be sent again with the same ids",
            self.subject,
            self.error
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
