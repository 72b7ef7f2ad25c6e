//! Debounce (SPEC §7): one event per burst of changes to a key.
//!
//! Every source hands its mapped events to a [`Debouncer`] before encoding them. With
//! `debounce = { window, max_delay }` a key's events are held until `window` passes
//! without a change to that key, but never longer than `max_delay` after its first, and
//! then leave as one event:
//!
//! | held changes            | event sent                                      |
//! |-------------------------|-------------------------------------------------|
//! | insert, updates…        | insert of the final row                         |
//! | updates…                | update: the first `before`, the last `after`    |
//! | insert, …, delete       | nothing                                         |
//! | update…, delete         | delete (with the first `before`)                |
//! | delete, insert          | update (the deleted row as `before`)            |
//! | snapshot read, updates… | snapshot read of the final row                  |
//!
//! In general the first change says whether the row existed before the burst (an insert
//! says it did not) and the last whether it exists after; a single change leaves as it
//! came. Keys are independent; a key's events leave in the order they came. Events with
//! no key are not held. At most `max_keys` keys are held: a new key past that flushes
//! the oldest held key at once (counted as an early flush); nothing is dropped.
//!
//! **Ids.** A merged event's position is the position of its last change followed by
//! `+<n>`, the number of changes it stands for. The changes of one key that a merge
//! takes are consecutive, so the same merge always gets the same id, and another merge
//! of the same changes another id.
//!
//! **Checkpoints: the low watermark.** A source must not record a position as done while
//! a change at or before it is held: after a crash that change would be gone. Each
//! pushed change gets an ordinal (1, 2, 3, … in source order) and [`Debouncer::low`] is
//! the ordinal of the oldest change still held (the first change of the oldest held
//! key). The source advances its checkpoint only over positions whose changes are all
//! below `low` — all released — and whose events are acknowledged. A crash while changes
//! are held therefore re-reads them, together with whatever followed them.
//!
//! **After a restart: sent one by one.** What is re-read after a crash may already have
//! left, merged differently: say an insert left on its own, and its delete was held when
//! the agent died. Merged again on re-reading, insert and delete would cancel out and the
//! consumer would keep a row that is gone. So a source starts with merging off
//! ([`Debouncer::set_merging`]) and turns it on once it has caught up with what was
//! waiting when it started (the tail source: every file read to its end; the trigger
//! source: a read of the capture table that is not full). Until then each change leaves
//! as its own event. Everything that could have left before the crash was already
//! written when the agent restarted, so it falls in that stretch; what is merged
//! afterwards was never sent. The cost is that the backlog found at a start is not
//! merged, and that a change sent before a crash is sent again: the consumer sees it
//! twice, never loses it, and ends in the same state.
//!
//! In that stretch after a restart of a tail source ([`Debouncer::set_resending`]) each
//! change leaves with `+1` after its position, an id no merge and no change sent on its
//! own has (a merge stands for two changes or more). With its plain position, a change
//! sent on its own before the crash would be dropped by JetStream as a duplicate, while
//! the earlier changes of its key that had left merged (under the merge's id) are
//! stored again after it: the key would end on an older value (seeds 10214, 10242). With
//! `+1`, every change read again is stored again, in order. A second crash within the
//! stretch sends the same `+1` ids again, dropped as duplicates: they were all sent
//! before anything merged after the stretch.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_formats::{ChangeEvent, Op, Record};

use super::key_hash;
use crate::admin::metrics::SourceCounters;

/// `debounce = { window, max_delay, max_keys }` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebounceConfig {
    pub window: Duration,
    pub max_delay: Duration,
    pub max_keys: usize,
}

/// What a source carries along with a change (for example the capture rows it stands
/// for); merged by [`Absorb::absorb`] when the change merges with a later one.
pub trait Absorb {
    fn absorb(&mut self, later: Self);
}

impl Absorb for () {
    fn absorb(&mut self, _: ()) {}
}

/// Keeps the later: for what is the same for every change of a key (its table).
impl<X> Absorb for Arc<X> {
    fn absorb(&mut self, later: Arc<X>) {
        *self = later;
    }
}

impl<X> Absorb for Vec<X> {
    fn absorb(&mut self, later: Vec<X>) {
        self.extend(later);
    }
}

/// A held key (or a single change) that leaves.
#[derive(Debug)]
pub struct Released<T> {
    /// The event to send; `None` when the changes cancel out (insert, …, delete).
    pub event: Option<ChangeEvent>,
    pub extra: T,
    /// When the first of its changes was captured (ms since epoch).
    pub captured_ms: i64,
}

/// Whether the row existed before a held key's first change.
#[derive(Debug)]
enum Start {
    /// The first change was an insert.
    Absent,
    /// An update or a delete; its `before`, when known (postcard).
    Present(Option<Vec<u8>>),
    /// A snapshot read: the row exists, whatever the consumer knew of it.
    Snapshot,
}

/// A held key. Its last change is kept serialized (postcard): a third to a quarter of
/// the memory of the decoded event, which `max_keys` multiplies.
#[derive(Debug)]
struct Group<T> {
    key: u128,
    start: Start,
    last: Vec<u8>,
    n: u32,
    first_at: Instant,
    deadline: Instant,
    captured_ms: i64,
    extra: T,
}

fn pack<S: serde::Serialize>(value: &S, mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    postcard::to_extend(value, buf).expect("events serialize to memory")
}

fn unpack<D: serde::de::DeserializeOwned>(bytes: &[u8]) -> D {
    postcard::from_bytes(bytes).expect("held changes deserialize as they were serialized")
}

impl<T> Group<T> {
    fn release(self) -> Released<T> {
        let captured_ms = self.captured_ms;
        let mut ev: ChangeEvent = unpack(&self.last);
        if self.n == 1 {
            return Released {
                event: Some(ev),
                extra: self.extra,
                captured_ms,
            };
        }
        let exists = ev.op != Op::Delete;
        let first_before = |b: Option<Vec<u8>>| b.map(|b| unpack::<Record>(&b));
        let (op, before, after) = match (self.start, exists) {
            (Start::Absent, false) => {
                return Released {
                    event: None,
                    extra: self.extra,
                    captured_ms,
                }
            }
            (Start::Absent, true) => (Op::Create, None, ev.after.take()),
            (Start::Present(b), true) => (Op::Update, first_before(b), ev.after.take()),
            (Start::Present(b), false) => (Op::Delete, first_before(b).or(ev.before.take()), None),
            (Start::Snapshot, true) => (Op::Read, None, ev.after.take()),
            (Start::Snapshot, false) => (Op::Delete, ev.before.take(), None),
        };
        ev.op = op;
        ev.before = before;
        ev.after = after;
        ev.source.snapshot = op == Op::Read;
        ev.source.position.push('+');
        ev.source.position.push_str(&self.n.to_string());
        Released {
            event: Some(ev),
            extra: self.extra,
            captured_ms,
        }
    }
}

/// One source's held keys. Without a [`DebounceConfig`] every change passes at once.
#[derive(Debug)]
pub struct Debouncer<T> {
    cfg: Option<DebounceConfig>,
    merging: bool,
    /// The changes pushed while merging is off are read again after a crash: each leaves
    /// with `+1` (see the module doc, "After a restart").
    resending: bool,
    /// Key hash → ordinal of the held key's first change.
    keys: HashMap<u128, u64>,
    /// Held keys by the ordinal of their first change: the first is the oldest.
    held: BTreeMap<u64, Group<T>>,
    /// When to look at a held key again: at or before its deadline.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    ord: u64,
    buf: Vec<u8>,
    counters: Arc<SourceCounters>,
}

impl<T: Absorb> Debouncer<T> {
    /// A debouncer that starts with merging off (see the module doc).
    pub fn new(cfg: Option<DebounceConfig>, counters: Arc<SourceCounters>) -> Self {
        counters.debounced.store(cfg.is_some(), Ordering::Relaxed);
        Self {
            cfg,
            merging: false,
            resending: false,
            keys: HashMap::new(),
            held: BTreeMap::new(),
            timers: BinaryHeap::new(),
            ord: 0,
            buf: Vec::with_capacity(64),
            counters,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.cfg.is_some()
    }

    /// Turns merging on (once the source has caught up after its start) or off.
    pub fn set_merging(&mut self, on: bool) {
        self.merging = on && self.cfg.is_some();
        if self.merging {
            self.resending = false;
        }
    }

    /// Until merging is turned on, the changes pushed are a backlog read again after a
    /// restart, part of which may have left before: each leaves on its own with `+1`
    /// after its position (see the module doc, "After a restart").
    pub fn set_resending(&mut self) {
        self.resending = self.cfg.is_some() && !self.merging;
    }

    pub fn is_merging(&self) -> bool {
        self.merging
    }

    /// The ordinal of the last change pushed (0 before the first).
    pub fn pushed(&self) -> u64 {
        self.ord
    }

    /// The ordinal of the oldest change still held; `u64::MAX` when none is.
    pub fn low(&self) -> u64 {
        self.held.first_key_value().map_or(u64::MAX, |(o, _)| *o)
    }

    /// How many keys are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the next held key may be due (never later than it is).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes a change; what leaves now goes to `out`, in order.
    pub fn push(
        &mut self,
        ev: ChangeEvent,
        extra: T,
        captured_ms: i64,
        now: Instant,
        out: &mut Vec<Released<T>>,
    ) {
        self.ord += 1;
        let single = |ev, extra| Released {
            event: Some(ev),
            extra,
            captured_ms,
        };
        let (Some(cfg), Some(key)) = (self.cfg, ev.key.as_ref()) else {
            out.push(single(ev, extra));
            return;
        };
        let key = key_hash(&mut self.buf, &ev.source.table, key);
        if !self.merging {
            // A key held before merging was turned off leaves first: order within a key.
            if let Some(o) = self.keys.remove(&key) {
                self.release(o, out);
            }
            let mut ev = ev;
            if self.resending {
                ev.source.position.push_str("+1");
            }
            out.push(single(ev, extra));
            return;
        }
        if let Some(&o) = self.keys.get(&key) {
            let g = self.held.get_mut(&o).expect("a key's group is held");
            g.deadline = (now + cfg.window).min(g.first_at + cfg.max_delay);
            g.n += 1;
            g.last = pack(&ev, std::mem::take(&mut g.last));
            g.extra.absorb(extra);
            return;
        }
        if self.held.len() >= cfg.max_keys.max(1) {
            if let Some((&o, _)) = self.held.first_key_value() {
                self.release(o, out);
                self.counters.early_flushes.fetch_add(1, Ordering::Relaxed);
            }
        }
        let start = match ev.op {
            Op::Create => Start::Absent,
            Op::Update | Op::Delete => {
                Start::Present(ev.before.as_ref().map(|b| pack(b, Vec::new())))
            }
            Op::Read => Start::Snapshot,
        };
        let deadline = now + cfg.window.min(cfg.max_delay);
        self.held.insert(
            self.ord,
            Group {
                key,
                start,
                last: pack(&ev, Vec::new()),
                n: 1,
                first_at: now,
                deadline,
                captured_ms,
                extra,
            },
        );
        self.keys.insert(key, self.ord);
        self.timers.push(Reverse((deadline, self.ord)));
        self.counters
            .held_keys
            .store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Lets a change pass at once, after the key's held changes (a snapshot row, whose
    /// progress is tracked by what was sent).
    pub fn pass(
        &mut self,
        ev: ChangeEvent,
        extra: T,
        captured_ms: i64,
        out: &mut Vec<Released<T>>,
    ) {
        let (merging, resending) = (self.merging, self.resending);
        (self.merging, self.resending) = (false, false);
        self.push(ev, extra, captured_ms, Instant::now(), out);
        (self.merging, self.resending) = (merging, resending);
    }

    /// Releases the held keys whose time has come.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Released<T>>) {
        while let Some(&Reverse((t, o))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            match self.held.get(&o) {
                None => {} // released earlier
                Some(g) if g.deadline > now => self.timers.push(Reverse((g.deadline, o))),
                Some(_) => self.release(o, out),
            }
        }
        // Timers of keys released early stay until they come up; rebuild when they
        // outnumber the held keys, so memory follows `max_keys`.
        if self.timers.len() > 2 * self.held.len() + 1024 {
            self.timers = self
                .held
                .iter()
                .map(|(o, g)| Reverse((g.deadline, *o)))
                .collect();
        }
    }

    /// Releases every held key, oldest first (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Released<T>>) {
        while let Some((&o, _)) = self.held.first_key_value() {
            self.release(o, out);
        }
        self.timers.clear();
    }

    fn release(&mut self, o: u64, out: &mut Vec<Released<T>>) {
        let Some(g) = self.held.remove(&o) else {
            return;
        };
        self.keys.remove(&g.key);
        let n = u64::from(g.n);
        let r = g.release();
        let saved = if r.event.is_some() { n - 1 } else { n };
        self.counters.merged.fetch_add(saved, Ordering::Relaxed);
        self.counters
            .held_keys
            .store(self.held.len() as u64, Ordering::Relaxed);
        out.push(r);
    }
}

#[cfg(test)]
mod tests;
