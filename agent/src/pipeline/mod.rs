//! The pipeline between sources and the sink: messages, ordering and acknowledgements.
//!
//! Data flows one way: a source reads, maps each change to a [`ChangeEvent`], and
//! [`Encoder`] turns it into an [`Outgoing`] message (subject, message id, JSON payload).
//! Sources hand messages to the sink in [`Batch`]es over a bounded channel, so a slow or
//! absent broker stops the sources (they keep their own backlog) instead of growing
//! memory. The sink acknowledges in publish order by raising the source's
//! [`AckWatermark`]; the source advances its checkpoint only up to that watermark.

pub mod checkpoint;
pub mod debounce;
pub mod map;
pub mod quarantine;
pub mod resend;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use lockstep_formats::frame::{KEY_NONE, KEY_UNKNOWN};
use lockstep_formats::json::encode_event;
use lockstep_formats::{ChangeEvent, Record, Value};
use xxhash_rust::xxh3::Xxh3;

use crate::admin::metrics::TableCounters;

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The source's sequence number of this message: 1, 2, 3, … in source order.
    pub seq: u64,
    pub subject: String,
    /// `Nats-Msg-Id`: the same every time the same change is sent again.
    pub msg_id: String,
    pub payload: Bytes,
    /// When the change was captured (ms since epoch).
    pub captured_ms: i64,
    /// The key's identity for ordering: xxh3 of the source, the table and the key
    /// ([`order_key`]); the sink never has two messages of one key awaiting an ack.
    /// [`KEY_NONE`] for an event without a key; [`KEY_UNKNOWN`] for one read back from
    /// a spool written before keys were recorded (ordered against every other).
    pub key_hash: u64,
    pub counters: Arc<TableCounters>,
}

/// Messages of one source, in source order.
#[derive(Debug)]
pub struct Batch {
    pub source: usize,
    pub msgs: Vec<Outgoing>,
}

/// The highest sequence number of a source whose message, and every message before it,
/// the broker has acknowledged. Written by the sink, read by the source.
///
/// It also carries the source's [`Wake`]: a source that waits for acks says up to where
/// ([`AckWatermark::wake_at`]) and waits on the wake-up, which the sink gives when the
/// watermark gets there — no polling loop. The agent's stop and a tail source's file
/// watcher wake the same source through it.
#[derive(Debug)]
pub struct AckWatermark {
    seq: AtomicU64,
    /// The sequence number a waiting source wants woken at; `u64::MAX`: none.
    want: AtomicU64,
    wake: Wake,
}

impl Default for AckWatermark {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            want: AtomicU64::new(u64::MAX),
            wake: Wake::new(),
        }
    }
}

impl AckWatermark {
    pub fn get(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Raises the watermark to `seq` (never lowers it); wakes the source when it waits
    /// for `seq` or less.
    pub fn advance(&self, seq: u64) {
        // SeqCst here and in `wake_at` (a store, then a load on each side): either the
        // source sees the new value, or this sees what the source wants.
        let before = self.seq.fetch_max(seq, Ordering::SeqCst);
        if seq > before && seq >= self.want.load(Ordering::SeqCst) {
            self.want.store(u64::MAX, Ordering::SeqCst);
            self.wake.notify();
        }
    }

    /// Asks for a wake-up once the watermark reaches `seq` (one wish at a time: the last
    /// replaces the one before). `true` when it is there already: do not wait.
    pub fn wake_at(&self, seq: u64) -> bool {
        self.want.store(seq, Ordering::SeqCst);
        if self.seq.load(Ordering::SeqCst) >= seq {
            self.want.store(u64::MAX, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// The source's wake-up.
    pub fn wake(&self) -> &Wake {
        &self.wake
    }
}

/// A source thread's one wake-up: it waits on it (with a timeout for its periodic
/// work) and is woken by whatever it waits for — acks ([`AckWatermark`]), the agent's
/// stop, a file event. Wake-ups given while it is busy are kept as one, so none is
/// missed and several cost one turn.
#[derive(Debug, Clone)]
pub struct Wake {
    tx: crossbeam_channel::Sender<()>,
    rx: crossbeam_channel::Receiver<()>,
}

impl Wake {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Self { tx, rx }
    }

    /// Wakes the source (or its next wait, when it is not waiting).
    pub fn notify(&self) {
        let _ = self.tx.try_send(());
    }

    /// Something that wakes the source, for another thread (a file watcher).
    pub fn notifier(&self) -> crossbeam_channel::Sender<()> {
        self.tx.clone()
    }

    /// Waits until woken, or for `timeout`. `true`: woken.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        self.rx.recv_timeout(timeout).is_ok()
    }
}

/// Builds subjects, message ids and payloads for one source, reusing one buffer.
#[derive(Debug)]
pub struct Encoder {
    prefix: String,
    agent: String,
    source: String,
    buf: Vec<u8>,
    key_buf: Vec<u8>,
}

impl Encoder {
    pub fn new(subject_prefix: &str, agent: &str, source: &str) -> Self {
        Self {
            prefix: subject_prefix.to_owned(),
            agent: agent.to_owned(),
            source: source.to_owned(),
            buf: Vec::with_capacity(4096),
            key_buf: Vec::with_capacity(64),
        }
    }

    /// `<prefix>.<source>.<table>`, each token sanitized to `[A-Za-z0-9_-]`.
    pub fn subject(&self, table: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + self.source.len() + table.len() + 2);
        s.push_str(&self.prefix);
        s.push('.');
        push_token(&mut s, &self.source);
        s.push('.');
        push_token(&mut s, table);
        s
    }

    /// The deterministic message id of a position: `<agent>:<source>:<position>`.
    pub fn msg_id(&self, position: &str) -> String {
        let mut s =
            String::with_capacity(self.agent.len() + self.source.len() + position.len() + 2);
        s.push_str(&self.agent);
        s.push(':');
        s.push_str(&self.source);
        s.push(':');
        s.push_str(position);
        s
    }

    /// The message of event `ev`, the source's `seq`-th, counted as captured on
    /// `counters`.
    pub fn outgoing(
        &mut self,
        ev: &ChangeEvent,
        seq: u64,
        subject: &str,
        counters: &Arc<TableCounters>,
        captured_ms: i64,
    ) -> Outgoing {
        counters
            .captured
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Outgoing {
            seq,
            subject: subject.to_owned(),
            msg_id: self.msg_id(&ev.source.position),
            payload: self.payload(ev),
            captured_ms,
            key_hash: ev.key.as_ref().map_or(KEY_NONE, |k| {
                order_key(&mut self.key_buf, &self.source, &ev.source.table, k)
            }),
            counters: counters.clone(),
        }
    }

    /// Encodes an event into its wire payload.
    pub fn payload(&mut self, ev: &ChangeEvent) -> Bytes {
        self.buf.clear();
        encode_event(ev, &mut self.buf);
        Bytes::copy_from_slice(&self.buf)
    }
}

/// Appends a subject token with every byte outside `[A-Za-z0-9_-]` replaced by `_`.
fn push_token(s: &mut String, token: &str) {
    if token.is_empty() {
        s.push('_');
    }
    for c in token.chars() {
        s.push(if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        });
    }
}

/// A key's identity: its table and its fields' names and values (xxh3-128).
pub fn key_hash(buf: &mut Vec<u8>, table: &str, key: &Record) -> u128 {
    buf.clear();
    buf.extend_from_slice(&(table.len() as u32).to_le_bytes());
    buf.extend_from_slice(table.as_bytes());
    for (name, v) in key.iter() {
        buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        let (tag, bytes): (u8, &[u8]) = match v {
            Value::Null => (0, &[]),
            Value::Bool(b) => (1, if *b { &[1] } else { &[0] }),
            Value::Int(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
                continue;
            }
            Value::Float(f) => {
                buf.push(3);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
                continue;
            }
            Value::Decimal(s) => (4, s.as_bytes()),
            Value::Text(s) => (5, s.as_bytes()),
            Value::Bytes(b) => (6, b),
            Value::Timestamp(s) => (7, s.as_bytes()),
            Value::Json(s) => (8, s.as_bytes()),
        };
        buf.push(tag);
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(bytes);
    }
    let mut h = Xxh3::new();
    h.update(buf);
    h.digest128()
}

/// A key's identity across sources, for ordering (64 bits of the source, table and key):
/// never [`KEY_NONE`] nor [`KEY_UNKNOWN`]. Two keys that collide only wait for each
/// other's acks.
pub fn order_key(buf: &mut Vec<u8>, source: &str, table: &str, key: &Record) -> u64 {
    let h = key_hash(buf, table, key) as u64 ^ xxhash_rust::xxh3::xxh3_64(source.as_bytes());
    h.clamp(KEY_NONE + 1, KEY_UNKNOWN - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_sanitized_and_ids_deterministic() {
        let e = Encoder::new("legacy", "va-01", "vista");
        assert_eq!(e.subject("appointments"), "legacy.vista.appointments");
        assert_eq!(e.subject("dbo.Perm its*>"), "legacy.vista.dbo_Perm_its__");
        assert_eq!(e.subject(""), "legacy.vista._");
        assert_eq!(e.msg_id("f1.0@10"), e.msg_id("f1.0@10"));
        assert_eq!(e.msg_id("f1.0@10"), "va-01:vista:f1.0@10");
    }

    #[test]
    fn watermark_never_goes_back() {
        let w = AckWatermark::default();
        w.advance(5);
        w.advance(3);
        assert_eq!(w.get(), 5);
    }

    #[test]
    fn a_source_is_woken_when_the_acks_it_waits_for_arrive() {
        use std::time::Duration;
        let w = Arc::new(AckWatermark::default());
        assert!(!w.wake_at(10));
        // Acks short of it do not wake it.
        w.advance(9);
        assert!(!w.wake().wait(Duration::ZERO));
        let sink = {
            let w = w.clone();
            std::thread::spawn(move || w.advance(10))
        };
        // An hour's timeout: only the ack can end the wait.
        assert!(w.wake().wait(Duration::from_secs(3600)));
        sink.join().unwrap();
        // Reached already: no wait, and no wake-up left behind.
        assert!(w.wake_at(10));
        w.advance(11);
        assert!(!w.wake().wait(Duration::ZERO));
    }

    #[test]
    fn wake_ups_given_while_busy_are_kept_as_one() {
        use std::time::Duration;
        let w = AckWatermark::default();
        w.wake().notify();
        w.wake().notify();
        assert!(w.wake().wait(Duration::ZERO));
        assert!(!w.wake().wait(Duration::ZERO));
    }
}
