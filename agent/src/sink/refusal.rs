//! What a failed publish means, and where refused events go.
//!
//! [`classify`] is the one place that maps a publish error to what happens next:
//!
//! - **Refused** for this message, for good: the message with its headers is larger
//!   than the server's `max_payload` (async-nats checks this before sending,
//!   `PublishErrorKind::MaxPayloadExceeded`; the server would otherwise close the
//!   connection), or the stream refuses it in the ack as larger than its
//!   `max_msg_size` (JetStream error 10054, "message size exceeds maximum allowed").
//!   Sending it again can never work, so it goes to the quarantine ([`Refusals`]) and
//!   counts as done; everything after it goes on.
//! - **Transient**, everything else: the connection (broken pipe, no ack in
//!   `ack_timeout`), no responders (the stream is being re-created or its leader
//!   elected), a full stream, an error lockstep does not know. Retried with backoff, in
//!   order, from the spool, and shown on `/healthz` while it lasts. An error that is not
//!   known to be permanent is never treated as such: quarantining wrongly would set
//!   aside events a retry would have delivered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::ErrorCode;

use crate::admin::metrics::Metrics;
use crate::pipeline::quarantine::{Quarantine, RefusedEvent};

/// What a failed publish means for its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Never accepted, however often sent: the reason, in the broker's words.
    Refused(String),
    /// Retry with backoff.
    Transient(String),
}

/// Maps a publish error (from sending or from the ack) to what happens next.
pub fn classify(e: &PublishError) -> Failure {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Failure::Refused(format!(
            "larger than the server's max_payload: {}",
            source_text(e)
        )),
        PublishErrorKind::Other => {
            let js = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match js {
                Some(js) if js.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
                    Failure::Refused(format!("refused by the stream's max_msg_size: {js}"))
                }
                _ => Failure::Transient(e.to_string()),
            }
        }
        _ => Failure::Transient(e.to_string()),
    }
}

/// The error's own words, without the kind's prefix.
fn source_text(e: &PublishError) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

/// The quarantine files of refused events, one per source, opened when first needed.
#[derive(Debug)]
pub struct Refusals {
    state_dir: PathBuf,
    files: HashMap<String, Quarantine>,
    /// `quarantine_max_bytes`, and where drops are counted.
    cap: Option<(u64, Arc<Metrics>)>,
}

impl Refusals {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            files: HashMap::new(),
            cap: None,
        }
    }

    /// Caps each source's file at `max_bytes`, counting drops on its source's metrics.
    pub fn cap(&mut self, max_bytes: u64, metrics: Arc<Metrics>) {
        self.cap = Some((max_bytes, metrics));
    }

    /// Writes `e` to its source's file and makes it durable; returns the file's path.
    pub fn put(&mut self, source: &str, e: &RefusedEvent) -> Result<PathBuf, String> {
        let q = self.files.entry(source.to_owned()).or_insert_with(|| {
            let mut q = Quarantine::refused(&self.state_dir, source);
            if let Some((max, metrics)) = &self.cap {
                q.cap(*max, source, metrics.source(source));
            }
            q
        });
        let r = tokio::task::block_in_place(|| q.put_refused(e).and_then(|()| q.sync()));
        r.map(|()| q.path().to_owned()).map_err(|err| {
            format!(
                "cannot write to the quarantine {}: {err} (free space on the state directory's disk)",
                q.path().display()
            )
        })
    }
}

/// Bytes an event adds around the record it carries (envelope, key, source, ids,
/// `Nats-Msg-Id` header), at most, for a record of ordinary field names.
pub const ENVELOPE_BYTES: usize = 1024;

/// Warns about each tail source whose longest record (`max_record_bytes`) would make a
/// message the server refuses (`max_payload`): such records are quarantined when they
/// come. Returns the warnings (also logged).
pub fn check_record_limits(max_payload: usize, limits: &[(String, usize)]) -> Vec<String> {
    let mut out = Vec::new();
    for (source, max_record) in limits {
        if max_record.saturating_add(ENVELOPE_BYTES) > max_payload {
            let w = format!(
                "source {source}: a record may be up to max_record_bytes = {max_record} bytes, but the NATS \
                 server takes messages of at most max_payload = {max_payload} bytes, and an event is up to \
                 ~{ENVELOPE_BYTES} bytes larger than its record; records that end up over max_payload are \
                 refused by the broker and go to state_dir/quarantine/{source}.refused.jsonl instead of the \
                 stream. Set max_record_bytes to at most {} for this source, or raise max_payload on the \
                 server (nats-server.conf: max_payload: 8MB)",
                max_payload.saturating_sub(ENVELOPE_BYTES)
            );
            tracing::warn!("{w}");
            out.push(w);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_size_refusals_are_permanent() {
        let big = PublishError::with_source(
            PublishErrorKind::MaxPayloadExceeded,
            "Payload size limit of 1048576 exceeded by message size of 1048721",
        );
        assert!(
            matches!(classify(&big), Failure::Refused(r) if r.contains("max_payload") && r.contains("1048721"))
        );
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(
                matches!(classify(&PublishError::new(kind)), Failure::Transient(_)),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn record_limits_near_max_payload_warn() {
        let limits = vec![("a".to_owned(), 1 << 20), ("b".to_owned(), 64 << 10)];
        let w = check_record_limits(1 << 20, &limits);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("source a") && w[0].contains("1047552"),
            "{}",
            w[0]
        );
        assert!(check_record_limits(8 << 20, &limits).is_empty());
    }

    #[test]
    fn the_default_record_limit_fits_the_default_max_payload() {
        let limits = vec![("a".to_owned(), crate::config::DEFAULT_MAX_RECORD_BYTES)];
        assert!(check_record_limits(1 << 20, &limits).is_empty());
        assert_eq!(check_record_limits((1 << 20) - 1, &limits).len(), 1);
    }
}
