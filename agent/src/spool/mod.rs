//! The offline spool: where events wait, compressed and crash-safe, while the broker
//! cannot take them.
//!
//! # Layout
//!
//! `state_dir/spool/` holds append-only **segment** files named by the sequence number
//! of their first event (`00000000000000000001.seg`), and a **ledger**. A segment is a
//! run of frames (`lockstep_formats::frame`): each a batch of events, postcard-encoded
//! and zstd-compressed behind a 48-byte header with the body's length, checksums of the
//! header and of the body, the first event's spool sequence number, and the count.
//! Sequence numbers are the spool's own: 1, 2, 3, … across all sources, in the order
//! events were appended. The ledger (24 bytes: magic, `acked`, checksum) says every
//! event up to `acked` has been acknowledged by JetStream (or dropped by `drop_oldest`).
//!
//! # Invariants
//!
//! 1. Events are appended in sequence order and read back in that order; a segment is
//!    only ever appended to by the run that created it (a restart starts a new one).
//! 2. `acked` in the ledger never passes an event that JetStream has not acknowledged or
//!    that was not dropped (acks are taken in publish order).
//! 3. A segment is deleted only after a ledger covering all its events is fsynced.
//! 4. A source's position advances past an event only after the frame holding it is
//!    fsynced (`fsync = "always"` or `"batch"`), or, with `"off"`, after its ack.
//!
//! # Crash points
//!
//! - *During a frame write*: the frame is torn (short header or body, or zeros). On
//!   start it is cut off. Its events were never reported durable, so their sources
//!   still hold them and read them again.
//! - *After the write, before the fsync*: the same, or the frame survived; either way
//!   nothing was reported durable yet, and a surviving frame is sent as any other (the
//!   re-read from the source gets the same `Nats-Msg-Id`s, so JetStream keeps one).
//! - *During a ledger write*: it is replaced atomically (write, fsync, rename, fsync
//!   the directory): the old or the new ledger survives. The old one makes the agent
//!   send again events JetStream already has; their ids make JetStream drop them.
//! - *Between the ledger write and deleting segments*: the segments are still there
//!   and are deleted on start, as everything in them is at or below `acked`.
//! - *A damaged frame* (checksums fail): on start it is copied to
//!   `state_dir/quarantine/spool-<segment>-<offset>.frame`, counted, logged and skipped;
//!   everything else is sent.
//! - *Disk full or EIO*: the write fails, a partial frame is cut off again (or, when
//!   even that fails, left to be cut on the next start), the error is logged with what
//!   to do, and the events stay with the publisher, which stops taking more and retries.
//!   Nothing was reported durable, so nothing can be lost.
//! - *A read error* that passes (out of file descriptors or memory, interrupted, the
//!   file's permissions): returned, and the same frame is read again later; nothing is
//!   skipped.
//! - *A read error* (EIO, the segment file deleted or not readable): retried once on a
//!   fresh handle; then the frame (the rest of the segment when the file is gone, the
//!   whole segment at start, where it is moved to the quarantine) is skipped, counted
//!   (`lockstep_spool_unreadable_total`), logged with its sequence numbers and recorded
//!   in `state_dir/quarantine/spool-<segment>-<offset>.unreadable`. Its events are lost;
//!   everything else drains. Once acknowledged past, such a segment is moved to
//!   `state_dir/quarantine/spool-<segment>.unreadable.seg` instead of deleted: the error
//!   may have passed, and its bytes be readable by hand.
//! - *A failed fsync* (of a segment, also when one is closed to start the next, or of
//!   the directory): remembered; every later append and sync fails with it, and the
//!   publisher stops the agent. A retried fsync that "succeeds" proves nothing.
//!
//! # Files
//!
//! This file: opening and recovery, appends, drops, syncs, acks and the ledger.
//! `read.rs`: reading events back and the frames that cannot be read.

pub mod inspect;
mod read;
pub mod segment;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_formats::frame::{FrameReader, FrameWriter, SpoolEvent, MAGIC_V1};
use thiserror::Error;

use crate::admin::metrics::Metrics;
use crate::admin::telemetry::{SpoolDropped, SpoolFrameCorrupt, SpoolTornTail, StateMigrated};
use crate::config::WhenFull;
use crate::disk::Disk;
use segment::{
    encode_ledger, ledger_path, list_segments, read_ledger, scan_segment, segment_path, FrameMeta,
};

/// The ledger is written when this many events were acknowledged since the last write…
const LEDGER_EVERY: u64 = 8192;
/// …or this long after the first unrecorded ack, or when a segment can be deleted.
const LEDGER_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
#[error("spool {}: cannot {op}: {source}{}", path.display(), hint(source))]
pub struct SpoolError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (the disk is full: free space there or lower spool.max_bytes; the events wait in their sources meanwhile and nothing is lost)",
        Some(5) => " (an I/O error from the disk: check the device and the kernel log)",
        Some(30) => " (the file system is read-only)",
        _ => "",
    }
}

fn err<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'p {
    move |source| SpoolError {
        path: path.to_owned(),
        op,
        source,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    pub fn new(max_bytes: u64, when_full: WhenFull) -> Self {
        Self {
            max_bytes,
            when_full,
            segment_bytes: (max_bytes / 8).clamp(16 << 10, 16 << 20),
        }
    }
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    len: u64,
    frames: Vec<FrameMeta>,
    events: u64,
    /// Frames of it were skipped as unreadable: once acknowledged, it is moved to the
    /// quarantine instead of deleted (the error may have passed, the bytes be there).
    unreadable: bool,
}

impl Segment {
    /// The last event's sequence number; `first_seq - 1` for a segment with none.
    fn last_seq(&self) -> u64 {
        self.frames
            .last()
            .map_or(self.first_seq.saturating_sub(1), FrameMeta::last_seq)
    }
}

/// What [`Spool::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub segments: usize,
    pub bytes: u64,
    /// Events not yet acknowledged.
    pub events: u64,
    /// Capture time of the oldest event not yet acknowledged (frame granularity).
    pub oldest_ms: Option<i64>,
}

/// The spool of one agent. Not thread-safe: the publisher owns it.
pub struct Spool {
    dir: PathBuf,
    quarantine_dir: PathBuf,
    opts: SpoolOptions,
    disk: Arc<dyn Disk>,
    metrics: Arc<Metrics>,
    segments: VecDeque<Segment>,
    /// Append handle on the last segment; `None` until the next append starts one.
    writer: Option<File>,
    dir_dirty: bool,
    unsynced: bool,
    /// The first fsync that failed (the file, the OS error). Once set, every later
    /// append and sync fails with it: after a failed fsync the kernel may have dropped
    /// the dirty pages, and a retried fsync that "succeeds" would not say so.
    sync_failed: Option<(PathBuf, &'static str, i32)>,
    next_seq: u64,
    acked: u64,
    ledger_acked: u64,
    ack_since: Option<Instant>,
    bytes: u64,
    /// The next sequence number to read.
    read_seq: u64,
    read_file: Option<(u64, File)>,
    frame_writer: FrameWriter,
    frame_reader: FrameReader,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens the spool in `dir`, recovering from whatever a crash left: torn tails are
    /// cut, damaged frames quarantined, fully acknowledged segments deleted.
    pub fn open(
        dir: &Path,
        quarantine_dir: &Path,
        opts: SpoolOptions,
        disk: Arc<dyn Disk>,
        metrics: Arc<Metrics>,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(err(dir, "create the directory"))?;
        let lp = ledger_path(dir);
        let acked = match read_ledger(dir).map_err(err(&lp, "read the ledger"))? {
            None => 0,
            Some(Ok(a)) => a,
            Some(Err(why)) => {
                tracing::error!(
                    "spool ledger {} is damaged ({why}): every event still in the spool is sent again; \
                     JetStream drops those it already has within its duplicate window",
                    lp.display()
                );
                0
            }
        };
        let mut s = Spool {
            dir: dir.to_owned(),
            quarantine_dir: quarantine_dir.to_owned(),
            opts,
            disk,
            metrics,
            segments: VecDeque::new(),
            writer: None,
            dir_dirty: false,
            unsynced: false,
            sync_failed: None,
            next_seq: acked + 1,
            acked,
            ledger_acked: acked,
            ack_since: None,
            bytes: 0,
            read_seq: acked + 1,
            read_file: None,
            frame_writer: FrameWriter::new().map_err(err(dir, "start zstd"))?,
            frame_reader: FrameReader::new().map_err(err(dir, "start zstd"))?,
            buf: Vec::with_capacity(256 << 10),
        };
        let mut v1_events = 0;
        for (first_seq, path) in list_segments(dir).map_err(err(dir, "list segments"))? {
            v1_events += s.recover_segment(first_seq, path)?;
        }
        if v1_events > 0 {
            StateMigrated {
                what: "spool",
                path: dir,
                detail: &format!(
                    "{v1_events} event(s) wait in its frames (LSF1, without key hashes): they \
                     are sent first, one at a time, with their own message ids; new frames are LSF2"
                ),
            }
            .emit();
        }
        s.publish_stats();
        Ok(s)
    }

    /// Takes in a segment found at start; returns how many of its events still to send
    /// are in version 1 frames (written by lockstep 0.1.0).
    fn recover_segment(&mut self, first_seq: u64, path: PathBuf) -> Result<u64, SpoolError> {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                // Unreadable (an I/O error): its events are lost. Moved aside, so that
                // its name and sequence numbers are free for new segments.
                self.set_aside_unreadable(&path, first_seq, 0, None, &e);
                let to = self
                    .quarantine_dir
                    .join(format!("spool-{first_seq:020}.unreadable.seg"));
                if let Err(e) = std::fs::rename(&path, &to) {
                    tracing::error!(
                        "cannot move the unreadable spool segment {} to {}: {e}; move or delete it by hand",
                        path.display(),
                        to.display()
                    );
                    self.next_seq = self.next_seq.max(first_seq + 1);
                }
                return Ok(0);
            }
        };
        let scan = scan_segment(&data);
        let file_len = data.len() as u64;
        let clean = scan.clean_len(file_len);
        for b in &scan.bad {
            let acked = match b.seqs {
                Some((_, last)) => last <= self.acked,
                None => scan
                    .frames
                    .iter()
                    .find(|f| f.offset > b.offset)
                    .is_some_and(|f| f.first_seq <= self.acked + 1),
            };
            if acked {
                continue;
            }
            let bytes = &data[b.offset as usize..(b.offset + b.len) as usize];
            self.quarantine_frame(&path, first_seq, b.offset, bytes, &b.error.to_string());
        }
        if let Some(t) = scan.torn {
            SpoolTornTail {
                path: &path,
                offset: t,
                bytes: file_len - t,
            }
            .emit();
        }
        let frames: Vec<FrameMeta> = scan.frames;
        let last = frames.last().map_or(0, FrameMeta::last_seq);
        self.next_seq = self.next_seq.max(last + 1).max(first_seq);
        if last <= self.acked {
            // Everything in it was acknowledged (the ledger on disk says so), or it
            // holds nothing good: it can go.
            self.disk
                .remove(&path)
                .map_err(err(&path, "delete an acknowledged segment"))?;
            return Ok(0);
        }
        if clean < file_len {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(err(&path, "open a segment"))?;
            self.disk
                .truncate(&f, clean)
                .and_then(|()| self.disk.sync(&f))
                .map_err(err(&path, "cut off the end of a segment"))?;
        }
        let events = frames.iter().map(|f| u64::from(f.count)).sum();
        let v1_events = frames
            .iter()
            .filter(|f| f.last_seq() > self.acked)
            .filter(|f| data[f.offset as usize..].starts_with(&MAGIC_V1))
            .map(|f| u64::from(f.count))
            .sum();
        self.bytes += clean;
        self.segments.push_back(Segment {
            first_seq,
            path,
            len: clean,
            frames,
            events,
            unreadable: false,
        });
        Ok(v1_events)
    }

    /// Copies a damaged frame to the quarantine (once: the file is named by where it
    /// was), counts it and logs it.
    fn quarantine_frame(&self, path: &Path, seg: u64, offset: u64, bytes: &[u8], error: &str) {
        let to = self
            .quarantine_dir
            .join(format!("spool-{seg:020}-{offset}.frame"));
        let fresh = !to.exists();
        if fresh {
            let _ = std::fs::create_dir_all(&self.quarantine_dir);
            if let Err(e) = self.disk.create(&to, bytes) {
                tracing::error!("cannot copy a damaged spool frame to {}: {e}", to.display());
            }
        }
        SpoolFrameCorrupt {
            path,
            offset,
            len: bytes.len() as u64,
            error,
            quarantined_to: &to,
            first_time: fresh,
        }
        .emit(&self.metrics);
    }

    /// Appends one frame holding `events`. Returns the sequence number of its last
    /// event. The frame is not durable until [`Spool::sync`].
    pub fn append<'a>(
        &mut self,
        events: impl IntoIterator<Item = SpoolEvent<'a>>,
    ) -> Result<u64, SpoolError> {
        if let Some(e) = self.sync_error() {
            return Err(e);
        }
        self.buf.clear();
        let first_seq = self.next_seq;
        let h = self
            .frame_writer
            .encode(first_seq, events, &mut self.buf)
            .map_err(err(&self.dir, "encode a frame"))?;
        let len = self.buf.len() as u64;
        let roll = self
            .segments
            .back()
            .is_some_and(|s| s.len > 0 && s.len + len > self.opts.segment_bytes);
        if roll || self.writer.is_none() {
            self.start_segment(first_seq)?;
        }
        if self.opts.when_full == WhenFull::DropOldest {
            while self.bytes + len > self.opts.max_bytes && self.segments.len() > 1 {
                self.drop_oldest()?;
            }
        }
        let seg = self.segments.back_mut().expect("a segment was started");
        let w = self.writer.as_mut().expect("a segment was started");
        if crate::crash::due("spool-append") {
            let _ = self.disk.append(w, &self.buf[..self.buf.len() / 2]);
            crate::crash::die();
        }
        if let Err(e) = self.disk.append(w, &self.buf) {
            // Cut the partial frame so the segment stays appendable; if even that
            // fails, close it: the next start cuts it.
            if self.disk.truncate(w, seg.len).is_err() {
                self.writer = None;
            }
            return Err(SpoolError {
                path: seg.path.clone(),
                op: "append a frame",
                source: e,
            });
        }
        seg.frames.push(FrameMeta {
            offset: seg.len,
            len,
            first_seq,
            count: h.count,
            first_ms: h.first_ms,
            raw_len: h.raw_len,
        });
        self.metrics
            .spool_appended
            .fetch_add(u64::from(h.count), Ordering::Relaxed);
        seg.len += len;
        seg.events += u64::from(h.count);
        self.bytes += len;
        self.next_seq = h.last_seq() + 1;
        self.unsynced = true;
        Ok(h.last_seq())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        if self.writer.is_some() {
            self.sync()?;
        }
        let path = segment_path(&self.dir, first_seq);
        // Readable too: if the file is deleted while it is being written, what it holds
        // can still be read back through this handle (see `read_frame`).
        let f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(err(&path, "create a segment"))?;
        self.writer = Some(f);
        self.dir_dirty = true;
        self.segments.push_back(Segment {
            first_seq,
            path,
            len: 0,
            frames: Vec::new(),
            events: 0,
            unreadable: false,
        });
        Ok(())
    }

    /// Drops the oldest segment to make room: its unacknowledged events are lost,
    /// counted and logged. The log comes first, before the ledger records the drop: a
    /// kill between the two never hides a drop (at worst the restart keeps and sends a
    /// segment the log said was being dropped). A ledger that cannot be written undoes
    /// the drop: before, the acknowledged position had moved on anyway, and the next
    /// drop of the same segment counted none of its events (lost unlogged).
    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let seg = self.segments.front().expect("more than one segment");
        let last = seg.last_seq();
        let lost: u64 = seg
            .frames
            .iter()
            .map(|f| {
                let from = f.first_seq.max(self.acked + 1);
                (f.last_seq() + 1).saturating_sub(from)
            })
            .sum();
        let path = seg.path.clone();
        let dropped = SpoolDropped {
            path: &path,
            events: lost,
        };
        dropped.announce();
        let (acked, read_seq) = (self.acked, self.read_seq);
        self.acked = self.acked.max(last);
        self.read_seq = self.read_seq.max(self.acked + 1);
        if let Err(e) = self.write_ledger() {
            // Not dropped: its events stay, unacknowledged.
            (self.acked, self.read_seq) = (acked, read_seq);
            dropped.undone(&e);
            return Err(e);
        }
        self.remove_front();
        dropped.count(&self.metrics);
        Ok(())
    }

    fn remove_front(&mut self) {
        if let Some(seg) = self.segments.pop_front() {
            self.bytes -= seg.len;
            if self
                .read_file
                .as_ref()
                .is_some_and(|(s, _)| *s == seg.first_seq)
            {
                self.read_file = None;
            }
            if self.segments.is_empty() {
                self.writer = None;
                self.unsynced = false;
            }
            if seg.unreadable {
                let to = self
                    .quarantine_dir
                    .join(format!("spool-{:020}.unreadable.seg", seg.first_seq));
                let _ = std::fs::create_dir_all(&self.quarantine_dir);
                match std::fs::rename(&seg.path, &to) {
                    Ok(()) => return,
                    Err(e) => tracing::error!(
                        "cannot move spool segment {} (frames of it could not be read) to {}: {e}; \
                         it is deleted",
                        seg.path.display(),
                        to.display()
                    ),
                }
            }
            if let Err(e) = self.disk.remove(&seg.path) {
                tracing::warn!(
                    "cannot delete acknowledged spool segment {}: {e}; it is deleted on the next start",
                    seg.path.display()
                );
            }
        }
    }

    /// True when something was appended since the last [`Spool::sync`] (or an fsync
    /// failed: [`Spool::sync`] then reports it again).
    pub fn unsynced(&self) -> bool {
        self.unsynced || self.dir_dirty || self.sync_failed.is_some()
    }

    /// The fsync failure this spool has seen, if any: it is fatal (the agent must stop
    /// and the sources re-send from their checkpoints on the next start).
    pub fn sync_error(&self) -> Option<SpoolError> {
        self.sync_failed
            .as_ref()
            .map(|(path, op, errno)| SpoolError {
                path: path.clone(),
                op,
                source: io::Error::from_raw_os_error(*errno),
            })
    }

    /// Makes every appended frame durable. A failure is remembered: every later call
    /// (and every append) fails with it, whether the segment was being rolled or not.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(e) = self.sync_error() {
            return Err(e);
        }
        if self.unsynced {
            if let (Some(w), Some(seg)) = (&self.writer, self.segments.back()) {
                if let Err(e) = self.disk.sync(w) {
                    let path = seg.path.clone();
                    return Err(self.remember_sync_failure(path, "fsync a segment", e));
                }
            }
            self.unsynced = false;
        }
        if self.dir_dirty {
            if let Err(e) = self.disk.sync_dir(&self.dir) {
                let path = self.dir.clone();
                return Err(self.remember_sync_failure(path, "fsync the directory", e));
            }
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn remember_sync_failure(
        &mut self,
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    ) -> SpoolError {
        // An error without an OS code (none is expected from fsync) is kept as EIO.
        let errno = source.raw_os_error().unwrap_or(5);
        self.sync_failed = Some((path.clone(), op, errno));
        SpoolError { path, op, source }
    }

    /// Reading starts again at the first unacknowledged event (after a failed publish).
    pub fn rewind(&mut self) {
        self.read_seq = self.acked + 1;
    }

    /// Everything up to `seq` is acknowledged.
    pub fn ack(&mut self, seq: u64) {
        if seq > self.acked {
            self.acked = seq;
            self.ack_since.get_or_insert_with(Instant::now);
            self.metrics.spool_drained.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Writes the ledger when it is due (or `force`), then deletes the segments it
    /// covers. Call it often; it does nothing most of the time.
    pub fn maintain(&mut self, force: bool) -> Result<(), SpoolError> {
        let deletable = self
            .segments
            .front()
            .is_some_and(|s| s.last_seq() <= self.acked);
        let due = self.acked > self.ledger_acked
            && (force
                || deletable
                || self.acked - self.ledger_acked >= LEDGER_EVERY
                || self.ack_since.is_some_and(|t| t.elapsed() >= LEDGER_AFTER));
        if due {
            self.write_ledger()?;
        }
        while self
            .segments
            .front()
            .is_some_and(|s| s.last_seq() <= self.ledger_acked)
        {
            self.remove_front();
        }
        self.publish_stats();
        Ok(())
    }

    fn write_ledger(&mut self) -> Result<(), SpoolError> {
        let path = ledger_path(&self.dir);
        self.disk
            .replace(&path, &encode_ledger(self.acked))
            .map_err(err(&path, "write the ledger"))?;
        self.ledger_acked = self.acked;
        self.ack_since = None;
        Ok(())
    }

    /// Nothing for [`Spool::maintain`] or [`Spool::sync`] to do: no event waits to be
    /// acknowledged, nothing waits for an fsync, and the ledger is up to date.
    pub fn at_rest(&self) -> bool {
        self.is_empty() && !self.unsynced() && self.acked == self.ledger_acked
    }

    /// No event waits to be acknowledged.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.last_seq() <= self.acked)
    }

    /// Every event was handed out by [`Spool::read`].
    pub fn all_read(&self) -> bool {
        self.frame_at(self.read_seq).is_none()
    }

    /// At or past `max_bytes` (with `when_full = "block"`, the publisher stops taking
    /// events until the drain makes room).
    pub fn is_full(&self) -> bool {
        self.bytes >= self.opts.max_bytes
    }

    pub fn stats(&self) -> SpoolStats {
        let mut st = SpoolStats {
            segments: self.segments.len(),
            bytes: self.bytes,
            ..Default::default()
        };
        for seg in &self.segments {
            if seg.last_seq() <= self.acked {
                continue;
            }
            if seg.first_seq > self.acked {
                st.events += seg.events;
            } else {
                st.events += seg
                    .frames
                    .iter()
                    .map(|f| (f.last_seq() + 1).saturating_sub(f.first_seq.max(self.acked + 1)))
                    .sum::<u64>();
            }
            if st.oldest_ms.is_none() {
                st.oldest_ms = seg
                    .frames
                    .iter()
                    .find(|f| f.last_seq() > self.acked)
                    .map(|f| f.first_ms);
            }
        }
        st
    }

    fn publish_stats(&self) {
        let st = self.stats();
        let m = &self.metrics;
        m.spool_bytes.store(st.bytes, Ordering::Relaxed);
        m.spool_events.store(st.events, Ordering::Relaxed);
        m.spool_segments
            .store(st.segments as u64, Ordering::Relaxed);
        m.spool_oldest_ms
            .store(st.oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
