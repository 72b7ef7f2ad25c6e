//! The tail source's side of `lockstep quarantine resend` (see `pipeline::resend`):
//! quarantined records decoded and built into events again, with the source's current
//! format, table, key and mapping, and handed to the sink between the reads of its files.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lockstep_formats::record::Decoder;

use super::Out;
use crate::admin::telemetry::QuarantineResent;
use crate::clock::now_ms;
use crate::pipeline::resend::{self, Entry, Marks, Outcome, Request};
use crate::source::{Stopping, BATCH_SIZE};

/// How often the source looks for a request.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Reasons kept in the outcome, at most.
const REASONS: usize = 10;

/// A request being served.
pub(super) struct Job {
    req: Request,
    /// The entries to send (selected by time, not marked yet), in quarantine order.
    entries: Vec<Entry>,
    next: usize,
    /// (sequence number, entry hash) of events handed to the sink, awaiting their ack.
    pending: VecDeque<(u64, u64)>,
    marks: Marks,
    /// Entries marked by this request, over all its runs.
    resent: u64,
    still_bad: u64,
    reasons: Vec<String>,
    /// Tests only: stop sending and marking past this many marks.
    freeze_at: Option<u64>,
}

/// Where resending stands.
#[derive(Default)]
pub(super) struct Resend {
    job: Option<Job>,
    looked: Option<Instant>,
    /// The last error reported, so it is logged once.
    error: Option<String>,
}

impl Resend {
    /// True while a request is being served.
    pub(super) fn active(&self) -> bool {
        self.job.is_some()
    }
}

impl Out {
    /// One turn of resending: takes a new request when due, hands the next records to
    /// the sink, marks those acknowledged, and finishes the request when all are.
    pub(super) fn resend_turn(&mut self) -> Result<(), Stopping> {
        if self.resend.job.is_none() {
            if self.resend.looked.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
                return Ok(());
            }
            self.resend.looked = Some(Instant::now());
            match self.start_resend() {
                Ok(Some(job)) => self.resend.job = Some(job),
                Ok(None) => return Ok(()),
                Err(e) => {
                    if self.resend.error.as_ref() != Some(&e) {
                        tracing::error!("source {}: quarantine resend: {e}", self.cx.name);
                        self.last_error = Some(format!("quarantine resend: {e}"));
                        self.resend.error = Some(e);
                    }
                    return Ok(());
                }
            }
        }
        self.resend_send()?;
        self.resend_acks();
        self.resend_finish();
        Ok(())
    }

    /// The job of the queued request, if there is one.
    fn start_resend(&mut self) -> Result<Option<Job>, String> {
        let state_dir = &self.cx.state_dir;
        let name = &self.cx.name;
        let Some(req) = resend::load_request(state_dir, name)? else {
            return Ok(None);
        };
        let marks = resend::load_marks(state_dir, name)?;
        let path = resend::records_path(state_dir, name);
        let entries: Vec<Entry> = resend::read_entries(&path)?
            .into_iter()
            .filter(|e| req.since_ms.is_none_or(|s| e.ts_ms >= s))
            .filter(|e| !marks.contains_key(&e.hash))
            .collect();
        let resent = marks.values().filter(|&&r| r == req.id).count() as u64;
        tracing::info!(
            "source {name}: quarantine resend {}: {} record(s) of {} to send again",
            req.id,
            entries.len(),
            path.display()
        );
        Ok(Some(Job {
            req,
            entries,
            next: 0,
            pending: VecDeque::new(),
            marks: Marks::new(state_dir, name),
            resent,
            still_bad: 0,
            reasons: Vec::new(),
            freeze_at: freeze_at(),
        }))
    }

    /// Hands the sink the next records (a batch at most).
    fn resend_send(&mut self) -> Result<(), Stopping> {
        let Some(mut job) = self.resend.job.take() else {
            return Ok(());
        };
        let mut sent = 0;
        while sent < BATCH_SIZE
            && job.next < job.entries.len()
            && job.freeze_at.is_none_or(|n| (job.next as u64) < n)
        {
            let e = &job.entries[job.next];
            job.next += 1;
            match self.resend_one(e) {
                Ok(()) => {
                    job.pending.push_back((self.seq, e.hash));
                    sent += 1;
                }
                Err(reason) => {
                    job.still_bad += 1;
                    tracing::warn!(
                        "source {}: quarantine resend: the record of {} at byte {} is still bad: {reason}",
                        self.cx.name,
                        e.file.display(),
                        e.offset
                    );
                    if job.reasons.len() < REASONS {
                        job.reasons.push(format!(
                            "{} at byte {}: {reason}",
                            e.file.display(),
                            e.offset
                        ));
                    }
                }
            }
        }
        self.resend.job = Some(job);
        if sent > 0 {
            self.flush()?;
        }
        Ok(())
    }

    /// Decodes, builds and encodes one quarantined record into the batch.
    fn resend_one(&mut self, e: &Entry) -> Result<(), String> {
        let format = &self.cfg.format;
        let bytes = e.record(format)?;
        let mut dec = Decoder::new(format.clone());
        if dec.needs_header() {
            let h = e.header(format)?;
            dec.read_header(&h, 0).map_err(|err| err.reason)?;
        }
        let rec = dec.decode(&bytes, e.offset).map_err(|err| err.reason)?;
        let (ev, info) = self.build(rec, format!("resend.{:016x}", e.hash))?;
        self.seq += 1;
        let msg = self
            .cx
            .encoder
            .outgoing(&ev, self.seq, &info.subject, &info.counters, now_ms());
        self.batch.push(msg);
        Ok(())
    }

    /// Marks the entries whose events are acknowledged (fsynced before they count).
    pub(super) fn resend_acks(&mut self) {
        let Some(job) = self.resend.job.as_mut() else {
            return;
        };
        // Tests: half of what was sent is marked, the other half stays sent but unmarked.
        let may_mark = job
            .freeze_at
            .map_or(u64::MAX, |n| (n / 2).saturating_sub(job.resent));
        let w = self.cx.watermark.get();
        let mut done = Vec::new();
        while let Some(&(seq, hash)) = job.pending.front() {
            if seq > w || done.len() as u64 >= may_mark {
                break;
            }
            job.pending.pop_front();
            done.push(hash);
        }
        if done.is_empty() {
            return;
        }
        match job.marks.append(&done, job.req.id) {
            Ok(()) => {
                job.resent += done.len() as u64;
                self.cx
                    .counters
                    .quarantine_resent
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Marked at the next turn; sent again meanwhile only after a crash, with
                // the same message ids.
                tracing::error!(
                    "source {}: cannot mark resent records in {}: {e}; tried again",
                    self.cx.name,
                    job.marks.path().display()
                );
                for h in done.into_iter().rev() {
                    job.pending.push_front((0, h));
                }
            }
        }
    }

    /// Writes the outcome once every record is sent and acknowledged.
    fn resend_finish(&mut self) {
        let Some(job) = self.resend.job.as_ref() else {
            return;
        };
        if job.next < job.entries.len() || !job.pending.is_empty() {
            return;
        }
        let o = Outcome {
            id: job.req.id,
            resent: job.resent,
            still_bad: job.still_bad,
            reasons: job.reasons.clone(),
            finished_ms: now_ms(),
        };
        if let Err(e) = resend::finish(&self.cx.state_dir, &self.cx.name, &o) {
            tracing::error!(
                "source {}: cannot write the outcome of quarantine resend {}: {e}; tried again",
                self.cx.name,
                o.id
            );
            return;
        }
        QuarantineResent {
            source: &self.cx.name,
            request: o.id,
            resent: o.resent,
            still_bad: o.still_bad,
        }
        .emit();
        self.resend.job = None;
        self.resend.error = None;
    }
}

/// Tests only (debug builds): `LOCKSTEP_TEST_RESEND_FREEZE=<n>` stops a resend after it
/// sent `n` records and marked the first `n / 2` of them — a point to kill the agent at,
/// with records sent and marked, sent and not marked, and not sent
/// (`tests/e2e/quarantine.rs`).
fn freeze_at() -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var("LOCKSTEP_TEST_RESEND_FREEZE")
            .ok()
            .and_then(|v| v.parse().ok())
    } else {
        None
    }
}
