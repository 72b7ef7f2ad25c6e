//! The output side: batches to the sink, the ack watermark, checkpoints, status and the
//! logs of files unlisted or waiting.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::files::FileKey;
use super::{fds, files, Out, PendingPos, Tail, Tracked, CHECKPOINT_EVERY, HELD_MARKS};
use crate::admin::telemetry::CheckpointFailed;
use crate::clock::now_ms;
use crate::pipeline::Batch;
use crate::source::{Stopping, BATCH_SIZE};

impl Tail {
    /// Says when a scan first cannot list a directory of the globs, and when it can again.
    pub(super) fn log_unlisted(&mut self, scan: &files::Scan) {
        let name = &self.out.cx.name;
        for (dir, e) in &scan.unlisted {
            if self.unlisted {
                tracing::debug!("source {name}: still cannot list {}: {e}", dir.display());
            } else {
                tracing::warn!(
                    "source {name}: cannot list {}: {e}; the files followed in it are kept as they are and it is listed again at the next scan. If the agent is out of file descriptors, raise LimitNOFILE (or `ulimit -n`)",
                    dir.display()
                );
            }
        }
        let unlisted = !scan.unlisted.is_empty();
        if self.unlisted && !unlisted {
            tracing::info!("source {name}: the directories of the globs can be listed again");
        }
        self.unlisted = unlisted;
    }

    /// Says when files start or stop waiting for a file descriptor (see `fds`).
    pub(super) fn log_waiting(&mut self) {
        let waiting = self.waiting_open + self.waiting_reopen;
        if waiting == self.waiting_logged {
            return;
        }
        let b = fds::Budget::global();
        if waiting > 0 && self.waiting_logged == 0 {
            let (soft, _) = fds::limits().unwrap_or((0, 0));
            tracing::warn!(
                "source {}: {waiting} file(s) wait for a file descriptor: the tail sources hold {} open, their share ({}) of the limit of {soft} open files (RLIMIT_NOFILE); files read to their end are closed to make room, so the others are read in turn, more slowly. Raise LimitNOFILE (or `ulimit -n`) to follow this many files at once",
                self.out.cx.name,
                b.open_now(),
                b.limit(),
            );
        } else if waiting == 0 {
            tracing::info!(
                "source {}: no file waits for a file descriptor any more",
                self.out.cx.name
            );
        }
        self.waiting_logged = waiting;
    }

    pub(super) fn publish_status(&self) {
        let w = self.out.cx.watermark.get();
        let mut lag_bytes = 0u64;
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|t| {
                let acked = self.out.cp.files.get(&t.key).map_or(0, |c| {
                    if c.gen == t.gen {
                        c.offset
                    } else {
                        0
                    }
                });
                lag_bytes += t.size.saturating_sub(acked);
                serde_json::json!({
                    "path": t.path, "size": t.size, "read": t.read_pos(), "acknowledged": acked,
                    "generation": t.gen, "following": t.gone_since.is_none(),
                    "open": t.file.is_some(),
                })
            })
            .collect();
        let oldest = self
            .out
            .pending
            .iter()
            .find(|p| p.seq > w)
            .or(self.out.held.front())
            .map(|p| p.captured_ms);
        let lag_seconds = oldest.map_or(0, |ms| (now_ms() - ms).max(0) / 1000);
        let c = &self.out.cx.counters;
        c.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        c.lag_seconds.store(lag_seconds, Ordering::Relaxed);
        self.out.cx.status.set(
            &self.out.cx.name,
            serde_json::json!({
                "kind": "tail", "files": files, "lag_bytes": lag_bytes, "lag_seconds": lag_seconds,
                "files_open": self.files.iter().filter(|t| t.file.is_some()).count(),
                "files_waiting": self.waiting_open + self.waiting_reopen,
                "events_sent": self.out.seq, "events_acknowledged": w,
                "held_keys": self.out.deb.held(),
                "quarantined": c.quarantined.load(Ordering::Relaxed),
                "last_error": self.out.last_error,
            }),
        );
    }
}

impl Out {
    /// Encodes what the debouncer released into the batch.
    pub(super) fn emit(&mut self) {
        for r in self.released.drain(..) {
            let Some(ev) = r.event else { continue };
            self.seq += 1;
            let info = &r.extra;
            let msg = self.cx.encoder.outgoing(
                &ev,
                self.seq,
                &info.subject,
                &info.counters,
                r.captured_ms,
            );
            self.batch.push(msg);
        }
    }

    /// Releases held keys that are due and the positions the debouncer no longer holds.
    pub(super) fn tick(&mut self) {
        if self.deb.held() > 0 {
            self.deb.due(Instant::now(), &mut self.released);
            self.emit();
        }
        let low = self.deb.low();
        while self.held.front().is_some_and(|p| p.ord < low) {
            // The loop condition just saw the front: it cannot be empty.
            let mut p = self.held.pop_front().expect("front exists");
            p.seq = self.seq;
            self.pending.push_back(p);
        }
    }

    /// Queues a position to checkpoint once every change read so far has left the
    /// debouncer and its event is acknowledged: an event's own end, or a position with no
    /// event of its own (a header, a quarantined record), which is safe once everything
    /// before it is.
    pub(super) fn mark(&mut self, t: &Tracked, end: u64) {
        self.mark_at(t.key, t.gen, end);
    }

    /// [`Out::mark`] for generation `gen` of file `key`.
    pub(super) fn mark_at(&mut self, key: FileKey, gen: u32, end: u64) {
        let ord = self.deb.pushed();
        if self.held.is_empty() && ord < self.deb.low() {
            self.pending.push_back(PendingPos {
                ord,
                seq: self.seq,
                key,
                gen,
                end,
                captured_ms: now_ms(),
            });
            return;
        }
        // Held. Past HELD_MARKS entries a position replaces the last one of its file:
        // the checkpoint then moves in coarser steps, but this queue stays small however
        // many records arrive while a key is held for `max_delay`.
        if self.held.len() >= HELD_MARKS {
            if let Some(b) = self.held.back_mut() {
                if (b.key, b.gen) == (key, gen) {
                    b.ord = ord;
                    b.end = end;
                    return;
                }
            }
        }
        self.held.push_back(PendingPos {
            ord,
            seq: 0,
            key,
            gen,
            end,
            captured_ms: now_ms(),
        });
    }

    /// Hands the current batch to the sink, waiting while its channel is full.
    pub(super) fn flush(&mut self) -> Result<(), Stopping> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // The checkpoint knows the content of every event before the event can become
        // durable (see `Checkpoint::identity_dirty`).
        if self.cp.identity_dirty {
            self.checkpoint(true);
            // Not handed on while the checkpoint cannot be written (a full disk): a crash
            // would leave these events durable and their content unknown. The source
            // thread waits, backing off from 100 ms to 5 s (nothing else for it to do
            // meanwhile), beating its watchdog; the agent's stop wakes it at once.
            let mut backoff = Duration::from_millis(100);
            while self.cp.identity_dirty {
                if *self.cx.shutdown.borrow() {
                    return Err(Stopping);
                }
                self.cx.nap(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                self.apply_acks();
                self.checkpoint(true);
            }
        }
        let batch = Batch {
            source: self.cx.index,
            msgs: std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_SIZE)),
        };
        let mut batch = Some(batch);
        loop {
            if self.cx.offer(&mut batch)? {
                return Ok(());
            }
            // The sink is behind (or the broker is away): keep checkpointing meanwhile.
            self.apply_acks();
            self.checkpoint(false);
        }
    }

    /// Moves acknowledged positions into the checkpoint.
    pub(super) fn apply_acks(&mut self) {
        let w = self.cx.watermark.get();
        while let Some(p) = self.pending.front() {
            if p.seq > w {
                break;
            }
            // Checked just above: the front is there.
            let p = self.pending.pop_front().expect("front exists");
            self.cp.advance(p.key, p.gen, p.end);
        }
        if !self.retiring.is_empty() {
            let now = now_ms();
            let cp = &mut self.cp;
            self.retiring
                .retain(|key, (gen, end)| match cp.files.get_mut(key) {
                    Some(e) if (e.gen, e.offset) >= (*gen, *end) => {
                        e.retired_ms = Some(now);
                        cp.dirty = true;
                        false
                    }
                    Some(_) => true,
                    None => false,
                });
        }
    }

    /// Writes the checkpoint if it changed (at most every `CHECKPOINT_EVERY`, unless forced).
    pub(super) fn checkpoint(&mut self, force: bool) {
        if !self.cp.dirty || (!force && self.last_cp.elapsed() < CHECKPOINT_EVERY) {
            return;
        }
        self.last_cp = Instant::now();
        let r = self
            .quarantine
            .sync()
            .and_then(|()| self.cp.write(now_ms()));
        match r {
            Ok(()) => {
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("checkpoint"))
                {
                    self.last_error = None;
                }
            }
            Err(e) => {
                CheckpointFailed {
                    source: &self.cx.name,
                    path: &self.cp.path,
                    error: &e,
                }
                .emit(&self.cx.counters);
                self.last_error = Some(format!("checkpoint: {e}"));
            }
        }
    }
}
