//! The way out: events made and mapped, held by the debouncer, handed to the sink in
//! batches; acknowledged capture rows queued for their delete; the stop and `/status`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo};

use super::{
    now_ms, BadRecord, Batch, Capture, ChangeRow, Drain, Outgoing, Pending, RowId, Rows, Stopping,
    BATCH_SIZE,
};
use crate::source::trigger::ddl;

impl Drain {
    /// Makes an event, maps it and hands it to the debouncer; `rows` are the capture rows
    /// it stands for.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        t: usize,
        op: Op,
        key: Record,
        before: Option<Record>,
        after: Option<Record>,
        position: String,
        changed_ms: Option<i64>,
        rows: Vec<RowId>,
    ) {
        let now = now_ms();
        let table = &self.tables[t];
        let mut ev = ChangeEvent {
            op,
            key: Some(key),
            before,
            after,
            source: SourceInfo {
                agent: self.agent.clone(),
                name: self.name.clone(),
                kind: self.kind.clone(),
                table: table.name.clone(),
                position,
                ts_ms: changed_ms.unwrap_or(now),
                snapshot: op == Op::Read,
            },
            ts_ms: now,
        };
        if let Err(reason) = self.cx.map.apply(&mut ev) {
            let data = self.cx.encoder.payload(&ev);
            let data = String::from_utf8_lossy(&data).into_owned();
            let first = rows.first().map_or(0, |r| r.seq);
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let reason = format!(
                "capture rows seq {seqs:?} of `{}`: {reason}",
                table.def.name
            );
            let file = Path::new(ddl::CAPTURE_TABLE);
            if self.set_aside_row(file, first.max(0) as u64, &reason, &data) {
                self.to_delete.extend(rows);
            }
            return;
        }
        let extra = Rows {
            table: t,
            rows,
            gen: self.table_gen,
        };
        let captured = changed_ms.unwrap_or(now);
        if op == Op::Read {
            // Snapshot rows are never held: the snapshot's progress follows what was sent.
            self.deb.pass(ev, extra, captured, &mut self.released);
        } else {
            self.deb
                .push(ev, extra, captured, Instant::now(), &mut self.released);
        }
        self.emit();
    }

    /// Encodes what the debouncer released; capture rows of changes that cancelled out
    /// are deleted once everything sent before them is acknowledged.
    fn emit(&mut self) {
        for mut r in self.released.drain(..) {
            if r.extra.gen != self.table_gen {
                // Rows of a capture table made anew since: never deleted from the new
                // one, where their `seq`s name other changes.
                r.extra.rows.clear();
            }
            let Some(ev) = r.event else {
                self.pending.push_back(Pending {
                    seq: self.seq,
                    rows: r.extra.rows,
                    captured_ms: r.captured_ms,
                });
                continue;
            };
            self.seq += 1;
            let table = &self.tables[r.extra.table];
            let msg = self.cx.encoder.outgoing(
                &ev,
                self.seq,
                &table.subject,
                &table.counters,
                r.captured_ms,
            );
            self.batch.push(msg);
            self.pending.push_back(Pending {
                seq: self.seq,
                rows: r.extra.rows,
                captured_ms: r.captured_ms,
            });
        }
    }

    /// Sends the held keys whose time has come.
    pub(super) fn tick(&mut self) -> Result<(), Stopping> {
        if self.deb.held() == 0 {
            return Ok(());
        }
        self.deb.due(Instant::now(), &mut self.released);
        self.emit();
        self.flush()
    }

    /// A capture row that cannot become an event: quarantined, then deleted.
    pub(super) fn set_aside(&mut self, r: &ChangeRow, reason: &str) {
        let reason = format!("capture row seq {}: {reason}", r.seq);
        let data = serde_json::json!({
            "seq": r.seq, "tbl": r.table, "op": r.op, "pk": r.pk,
            "before": r.before, "after": r.after,
        })
        .to_string();
        let file = Path::new(ddl::CAPTURE_TABLE);
        if self.set_aside_row(file, r.seq.max(0) as u64, &reason, &data) {
            self.to_delete.push(r.id());
        }
    }

    /// Writes a row that cannot become an event to the quarantine; false (and the row
    /// is kept) when the quarantine cannot be written.
    pub(super) fn set_aside_row(
        &mut self,
        file: &Path,
        offset: u64,
        reason: &str,
        data: &str,
    ) -> bool {
        let bad = BadRecord {
            file,
            offset,
            reason,
            data: data.as_bytes(),
            full_len: data.len() as u64,
        };
        if let Err(e) = self.quarantine.put(&bad) {
            // Kept: it is read again after a restart.
            tracing::error!(
                "source {}: cannot write to the quarantine {}: {e}; the row is kept",
                self.name,
                self.quarantine.path().display()
            );
            return false;
        }
        self.cx.counters.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            source = &*self.name,
            "record quarantined: source {}, {}",
            self.name,
            reason
        );
        true
    }

    /// Hands the read's events to the sink in batches of at most `BATCH_SIZE`, waiting
    /// while its channel is full.
    pub(super) fn flush(&mut self) -> Result<(), Stopping> {
        while !self.batch.is_empty() {
            let rest = if self.batch.len() > BATCH_SIZE {
                self.batch.split_off(BATCH_SIZE)
            } else {
                Vec::with_capacity(BATCH_SIZE)
            };
            let msgs = std::mem::replace(&mut self.batch, rest);
            self.send(msgs)?;
        }
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Outgoing>) -> Result<(), Stopping> {
        let batch = Batch {
            source: self.cx.index,
            msgs,
        };
        let mut batch = Some(batch);
        loop {
            if self.cx.offer(&mut batch)? {
                return Ok(());
            }
            // The sink is behind (or the broker is away): delete what is acknowledged.
            self.apply_acks();
            self.publish_status(false);
            if self.db.is_some() {
                if let Err(e) = self.delete_acked() {
                    self.lost(e);
                }
            }
        }
    }

    /// Moves the rows of acknowledged events to the delete list.
    pub(super) fn apply_acks(&mut self) {
        let w = self.cx.watermark.get();
        while self.pending.front().is_some_and(|p| p.seq <= w) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.to_delete.extend(p.rows);
        }
        self.snapshots.acked(w);
    }

    /// Shutdown: wait for the sink's last acks and delete what they cover.
    pub(super) fn finish(mut self) {
        self.apply_acks();
        if let Some(last) = self.pending.back() {
            self.cx.await_acks(last.seq);
        }
        self.apply_acks();
        if self.db.is_some() {
            if let Err(e) = self.delete_acked() {
                tracing::warn!(
                    "source {}: could not delete the acknowledged capture rows ({}); they are read again at the next start and their repeats dropped by the stream",
                    self.name,
                    e.message
                );
            }
        }
        self.publish_status(true);
        tracing::info!(
            "source {}: stopped; {} event(s) not acknowledged and {} held key(s) will be read and sent again at the next start",
            self.name,
            self.pending.len(),
            self.deb.held()
        );
    }

    pub(super) fn publish_status(&mut self, force: bool) {
        if !force && self.status_at.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.status_at = Instant::now();
        let w = self.cx.watermark.get();
        let oldest = self.pending.front().map(|p| p.captured_ms);
        let lag_seconds = oldest.map_or(0, |ms| (now_ms() - ms).max(0) / 1000);
        let c = &self.cx.counters;
        c.lag_seconds.store(lag_seconds, Ordering::Relaxed);
        self.cx.status.set(
            &self.cx.name,
            serde_json::json!({
                "kind": "trigger", "connected": self.db.is_some(),
                "capture": match self.cfg.capture { Capture::Keys => "keys", Capture::Rows => "rows" },
                "tables": self.tables.iter().map(|t| t.def.name.clone()).collect::<Vec<_>>(),
                "last_seq_read": self.cursor, "rows_in_flight": self.in_flight.len(),
                "lag_seconds": lag_seconds,
                "events_sent": self.seq, "events_acknowledged": w,
                "held_keys": self.deb.held(),
                "quarantined": c.quarantined.load(Ordering::Relaxed),
                "last_error": self.last_error,
                "snapshot": self.snapshots.status(),
            }),
        );
    }
}
