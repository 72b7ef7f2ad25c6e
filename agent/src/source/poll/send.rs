//! A scan's changes sent: read back from `changes`, made into events (or quarantined, or
//! held while the quarantine cannot be written), handed to the sink, and the snapshot
//! swapped once every event is acknowledged.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lockstep_formats::json::encode_value;
use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo};

use super::scan::{self, decode_key, decode_row, Layout};
use super::store::{self, ChangeOp, LastScanReader};
use super::{io_msg, Held, NotQuarantined, Poller};
use crate::clock::now_ms;
use crate::pipeline::quarantine::BadRecord;
use crate::pipeline::{Batch, Outgoing};
use crate::source::{Stopping, BATCH_SIZE};

/// How long before the `attempt`-th retry of changes the quarantine refused: about 1 s,
/// doubling to 30 s.
fn held_backoff(attempt: usize) -> Duration {
    crate::backoff::delay(attempt + 3, Duration::from_secs(30))
}

impl Poller {
    /// Hands the next changes to the sink; once all are acknowledged, swaps.
    pub(super) fn send_step(&mut self) -> Result<(), Stopping> {
        let Some(s) = self.sending.as_mut() else {
            return Ok(());
        };
        if s.read_all && !s.held.is_empty() {
            return self.retry_held();
        }
        if s.read_all {
            let w = &self.cx.watermark;
            if w.get() >= s.last_seq || w.wake_at(s.last_seq) {
                self.swap();
            } else {
                // Woken by the last ack (or the agent's stop).
                w.wake().wait(crate::service::beat_within());
            }
            return Ok(());
        }
        let mut msgs = Vec::with_capacity(BATCH_SIZE);
        while msgs.len() < BATCH_SIZE {
            let Some(s) = self.sending.as_mut() else {
                return Ok(());
            };
            let index = s.reader.index;
            match s.reader.next_change() {
                Ok(Some(op)) => {
                    let data = std::mem::take(&mut s.reader.data);
                    match self.event(op, &data, index) {
                        Ok(m) => msgs.extend(m),
                        Err(NotQuarantined) => {
                            if let Some(s) = self.sending.as_mut() {
                                if s.held.is_empty() {
                                    s.held_retry_at = Instant::now() + held_backoff(1);
                                }
                                s.held.push(Held {
                                    op,
                                    data: data.clone(),
                                    index,
                                });
                            }
                        }
                    }
                    if let Some(s) = self.sending.as_mut() {
                        s.reader.data = data;
                    }
                }
                Ok(None) => {
                    if let Some(s) = self.sending.as_mut() {
                        s.read_all = true;
                    }
                    break;
                }
                Err(e) => {
                    // The changes file was fsynced: reading it fails only if the disk does.
                    tracing::error!(
                        "source {}: cannot read the changes of scan {}: {e}; the scan is dropped and the next one compares with the scan before it",
                        self.name,
                        s.pending.gen
                    );
                    self.sending = None;
                    self.clean_pending();
                    return Ok(());
                }
            }
        }
        if let (Some(last), Some(s)) = (msgs.last(), self.sending.as_mut()) {
            s.last_seq = last.seq;
        }
        self.send(msgs)
    }

    /// Hands `msgs` to the sink as one batch, waiting (and keeping the status current)
    /// while the sink is full.
    fn send(&mut self, msgs: Vec<Outgoing>) -> Result<(), Stopping> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut batch = Some(Batch {
            source: self.cx.index,
            msgs,
        });
        while !self.cx.offer(&mut batch)? {
            self.publish_status(false);
        }
        Ok(())
    }

    /// Tries the held changes again, in order, once their retry is due; stops at the
    /// first the quarantine still refuses (the disk is still full).
    fn retry_held(&mut self) -> Result<(), Stopping> {
        let Some(s) = self.sending.as_mut() else {
            return Ok(());
        };
        if let Some(left) = s.held_retry_at.checked_duration_since(Instant::now()) {
            // The run loop beats and sees a shutdown between waits.
            self.cx
                .watermark
                .wake()
                .wait(left.min(crate::service::beat_within()));
            return Ok(());
        }
        let held = std::mem::take(&mut s.held);
        let mut msgs = Vec::new();
        let mut rest = held.into_iter();
        let mut refused = None;
        for h in rest.by_ref() {
            match self.event(h.op, &h.data, h.index) {
                Ok(m) => msgs.extend(m),
                Err(NotQuarantined) => {
                    refused = Some(h);
                    break;
                }
            }
        }
        if let Some(s) = self.sending.as_mut() {
            if let Some(h) = refused {
                s.held.push(h);
                s.held.extend(rest);
                s.held_attempts += 1;
                s.held_retry_at = Instant::now() + held_backoff(s.held_attempts + 1);
            }
            if let Some(last) = msgs.last() {
                s.last_seq = last.seq;
            }
        }
        self.send(msgs)
    }

    /// The event of one change: `Ok(None)` when it is quarantined, `Err` when it could
    /// not become an event and the quarantine could not be written (it is kept).
    fn event(
        &mut self,
        op: ChangeOp,
        data: &[u8],
        index: u64,
    ) -> Result<Option<Outgoing>, NotQuarantined> {
        let Some(s) = self.sending.as_ref() else {
            return Ok(None);
        };
        let layout = &s.pending.layout;
        let is_row = op != ChangeOp::Delete;
        let built = (|| -> Result<(Record, Option<Record>), String> {
            let key = decode_key(layout, data, is_row)?;
            let after = if is_row {
                Some(decode_row(layout, data)?)
            } else {
                None
            };
            Ok((key, after))
        })();
        let gen = s.pending.gen;
        let scan_ms = s.pending.scan_ms;
        let (key, after) = match built {
            Ok(x) => x,
            Err(reason) => {
                return self
                    .set_aside(gen, index, &reason, layout.clone(), data, is_row)
                    .map(|()| None);
            }
        };
        let mut position = Vec::with_capacity(32);
        position.extend_from_slice(gen.to_string().as_bytes());
        position.push(b'.');
        for (i, (_, v)) in key.iter().enumerate() {
            if i > 0 {
                position.push(b',');
            }
            encode_value(v, &mut position);
        }
        let op = match op {
            ChangeOp::Create => Op::Create,
            ChangeOp::Update => Op::Update,
            ChangeOp::Delete => Op::Delete,
            ChangeOp::Read => Op::Read,
        };
        let now = now_ms();
        let mut ev = ChangeEvent {
            op,
            key: Some(key),
            before: None,
            after,
            source: SourceInfo {
                agent: self.agent.clone(),
                name: self.name.clone(),
                kind: self.kind.clone(),
                table: self.table.clone(),
                position: String::from_utf8_lossy(&position).into_owned(),
                ts_ms: scan_ms,
                snapshot: op == Op::Read,
            },
            ts_ms: now,
        };
        if let Err(reason) = self.cx.map.apply(&mut ev) {
            return self
                .set_aside(gen, index, &reason, layout.clone(), data, is_row)
                .map(|()| None);
        }
        self.seq += 1;
        Ok(Some(self.cx.encoder.outgoing(
            &ev,
            self.seq,
            &self.subject,
            &self.counters,
            scan_ms,
        )))
    }

    /// A change that cannot become an event: written to the quarantine (and fsynced).
    /// `Err` when that fails: the caller keeps the change and tries again.
    fn set_aside(
        &mut self,
        gen: u64,
        index: u64,
        reason: &str,
        layout: Layout,
        data: &[u8],
        is_row: bool,
    ) -> Result<(), NotQuarantined> {
        let vals = if is_row {
            scan::split_row(data).1
        } else {
            data
        };
        let shown: Vec<serde_json::Value> = store::values(vals)
            .map(|v| match v {
                Ok(Some(b)) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
                _ => serde_json::Value::Null,
            })
            .collect();
        let names: Vec<&String> = if is_row {
            layout.columns.iter().collect()
        } else {
            layout.key.iter().map(|&i| &layout.columns[i]).collect()
        };
        let record: serde_json::Map<String, serde_json::Value> =
            names.into_iter().cloned().zip(shown).collect();
        let text = serde_json::Value::Object(record).to_string();
        let reason = format!(
            "scan {gen} of `{}`, change {index}: {reason}",
            self.cfg.table
        );
        let file = Path::new(&*self.table);
        let bad = BadRecord {
            file,
            offset: index,
            reason: &reason,
            data: text.as_bytes(),
            full_len: text.len() as u64,
        };
        match self
            .quarantine
            .put(&bad)
            .and_then(|()| self.quarantine.sync())
        {
            Ok(()) => {
                self.cx.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    source = &*self.name,
                    "record quarantined: source {}, {}",
                    self.name,
                    reason
                );
            }
            Err(e) => {
                tracing::error!(
                    "source {}: cannot write to the quarantine {}: {e}; the change is kept and tried again, \
                     and the scan's snapshot is not swapped until it is written (free space there): {reason}",
                    self.name,
                    self.quarantine.path().display()
                );
                self.last_error = Some(format!(
                    "cannot write to the quarantine {}: {e}",
                    self.quarantine.path().display()
                ));
                return Err(NotQuarantined);
            }
        }
        Ok(())
    }

    /// Every event of the scan is acknowledged: its snapshot becomes the current one.
    pub(super) fn swap(&mut self) {
        let Some(s) = self.sending.take() else {
            return;
        };
        let next = self.path("snapshot.next");
        let snap = self.path("snapshot");
        let r = fs::rename(&next, &snap).and_then(|()| fs::File::open(&self.dir)?.sync_all());
        match r {
            Ok(()) => {
                crate::crash::point("scan-swap");
                self.meta = LastScanReader::open(&snap).ok().flatten().map(|r| r.meta);
                self.clean_pending();
            }
            Err(e) => {
                // Kept pending: the next start sends the changes again and swaps.
                tracing::error!(
                    "source {}: {}; scan {} is sent again at the next start",
                    self.name,
                    io_msg("replace the snapshot", &snap, &e),
                    s.pending.gen
                );
                self.sending = Some(s);
                self.next_scan = Instant::now() + self.cfg.interval;
                // The rename is retried by the next `send_step`: do not spin on a
                // failing disk.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
