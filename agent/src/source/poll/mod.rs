//! Polling with row hashing (SPEC §6 "poll"): every `interval` the table is scanned
//! through ODBC and compared with the previous scan, to find inserts (`c`), updates
//! (`u`) and deletes (`d`) in tables that have neither triggers nor timestamps.
//!
//! # Design
//!
//! **A scan** reads `key` + `columns` with a bulk (columnar) fetch ([`scan`]). Each row
//! is encoded canonically (per column: NULL, or length and bytes as the driver gave
//! them) and hashed: xxh3-128 of the key, xxh3-64 of the row. The row goes to a spill
//! file and its hashes to an in-memory run that is sorted by key hash and written out
//! every [`store::RUN_ENTRIES`] rows. Memory is the run and the fetch buffer, whatever
//! the table's size.
//!
//! **The compare** merges the sorted runs with the previous scan's snapshot, which is a
//! file sorted by key hash, read front to back through a moving memory map
//! ([`store::merge`]). A key only in the scan is `c`, a key in both with another row
//! hash is `u`, a key only in the snapshot is `d` (the snapshot keeps each key, so the
//! delete names it). The merge writes the next snapshot (`snapshot.next`) and the
//! scan's changes (`changes`: the row for `c`/`u`, the key for `d`).
//!
//! **Positions.** An event's position is `<generation>.<key>`. The generation is the
//! scan's start time in ms, above every earlier generation, so a row that goes A→B→A
//! over three scans is sent three times with three ids, and a scan's events keep their
//! ids however often they are sent.
//!
//! **The swap.** Only when every event of the scan is acknowledged by JetStream or
//! written to the spool is `snapshot.next` renamed over `snapshot`.
//!
//! # Crash cases
//!
//! The order of writes is: spill and runs (not synced) → `snapshot.next` and `changes`,
//! fsynced → `pending.json` (atomic, the commit point) → events → swap (rename, fsync of
//! the directory) → `changes` and `pending.json` removed.
//!
//! - **Crash during the scan or the merge** (before `pending.json`): no event was sent.
//!   The leftovers are removed at start and the next scan compares with `snapshot` as if
//!   the lost scan never happened.
//! - **Crash while sending, or after the last ack but before the swap** (`pending.json`
//!   names a generation that `snapshot` does not have): the agent sends the whole of
//!   `changes` again, with the same ids (JetStream drops those it already has), then
//!   swaps. It does not scan again: a row that went back to its old value since the lost
//!   scan (A→B→A) would then look unchanged while the stream says B. Sending the scan's
//!   changes as they were and letting the next scan compare with that scan's snapshot
//!   sends the way back as a change of its own.
//! - **Crash between the swap and removing `pending.json`**: `snapshot` has the pending
//!   generation; the leftovers are removed.
//! - **A damaged snapshot** (its checksum is checked at start) is set aside as
//!   `snapshot.damaged` and the next scan is a first scan: every row is sent again as
//!   `r` (repeats are harmless, skips are not); deletes since the damaged snapshot are not
//!   seen.
//!
//! **Incremental mode.** With `cursor`, scans between full scans read only the rows whose
//! cursor is at or past the highest value seen minus `lookback`; the rows they do not read
//! keep their snapshot entries. Rows re-read inside the lookback have the same hash and
//! send nothing. A full scan every `full_scan_every` finds the deletes.
//!
//! # Files
//!
//! This file: the poller's state, its run loop, the recovery at start, the scan and the
//! merge, the stop and `/status`. Beside it: `scan.rs` (the database side), `store.rs`
//! (spill, runs, snapshots, changes files; its tests in `store/`), and `send.rs` (the
//! changes made into events, sent, and the swap).

pub mod scan;
mod send;
pub mod store;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::scan::{cursor_less, Layout, PollDb, ScanError};
use self::store::{
    ChangeOp, ChangesReader, ChangesWriter, LastScanMeta, LastScanReader, LastScanWriter,
    MergeCounts, MergeMode, Spill,
};
use crate::admin::metrics::TableCounters;
use crate::admin::telemetry::{DbConnected, SourceRetrying};
use crate::clock::now_ms;
use crate::config::PollConfig;
use crate::db::ErrorKind;
use crate::disk::{Disk, RealDisk};
use crate::pipeline::checkpoint;
use crate::pipeline::quarantine::Quarantine;
use crate::source::{SourceContext, SourceThread};

/// Starts a poll source on its own thread.
pub fn spawn(cfg: PollConfig, cx: SourceContext) -> std::io::Result<SourceThread> {
    std::thread::Builder::new()
        .name(format!("poll:{}", cx.name))
        .spawn(move || {
            Poller::new(cfg, cx).run();
            Ok(())
        })
}

/// The commit point of a scan: its changes are on disk and are being sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    gen: u64,
    changes: u64,
    layout: Layout,
    /// When the scan started (ms since epoch): the events' `source.ts_ms`.
    scan_ms: i64,
}

/// A scan's changes being sent.
struct Sending {
    pending: Pending,
    reader: ChangesReader,
    /// All changes are handed to the sink.
    read_all: bool,
    /// The sequence number of the scan's last event so far.
    last_seq: u64,
    /// Changes that could not become events and could not be written to the quarantine
    /// either (a full disk): the rest of the scan goes on, these are tried again with
    /// backoff, and the snapshot is not swapped until every one is quarantined.
    held: Vec<Held>,
    /// Retries of `held` so far, and when the next is due.
    held_attempts: usize,
    held_retry_at: Instant,
}

/// A change waiting for the quarantine.
struct Held {
    op: ChangeOp,
    data: Vec<u8>,
    index: u64,
}

/// The quarantine could not be written: the change is kept.
struct NotQuarantined;

/// What the last scan did, for `/status`.
#[derive(Debug, Default, Clone, Serialize)]
struct LastScan {
    generation: u64,
    full: bool,
    rows: u64,
    created: u64,
    updated: u64,
    deleted: u64,
    read: u64,
    repeated_keys: u64,
    seconds: f64,
    finished_ms: i64,
}

struct Poller {
    cfg: PollConfig,
    cx: SourceContext,
    dir: PathBuf,
    db: Option<PollDb>,
    quarantine: Quarantine,
    agent: Arc<str>,
    name: Arc<str>,
    kind: Arc<str>,
    table: Arc<str>,
    subject: String,
    counters: Arc<TableCounters>,
    seq: u64,
    sending: Option<Sending>,
    /// Meta of the current snapshot (`None`: no snapshot yet).
    meta: Option<LastScanMeta>,
    next_scan: Instant,
    attempt: usize,
    last_error: Option<String>,
    last_scan: Option<LastScan>,
    status_at: Instant,
    /// A config problem stopped the source.
    stopped: bool,
}

fn io_msg(what: &str, path: &Path, e: &io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}

impl Poller {
    fn new(cfg: PollConfig, cx: SourceContext) -> Poller {
        let dir = cx.state_dir.join("poll").join(&cx.name);
        cx.counters.is_poll.store(true, Ordering::Relaxed);
        let first_seq = cx.first_seq();
        Poller {
            quarantine: cx.quarantine(),
            agent: Arc::from(cx.agent_id.as_str()),
            name: Arc::from(cx.name.as_str()),
            kind: Arc::from("poll"),
            table: Arc::from(cx.map.table(&cfg.table)),
            subject: cx.encoder.subject(cx.map.table(&cfg.table)),
            counters: cx.metrics.table(&cx.name, cx.map.table(&cfg.table)),
            dir,
            cfg,
            cx,
            db: None,
            seq: first_seq,
            sending: None,
            meta: None,
            next_scan: Instant::now(),
            attempt: 0,
            last_error: None,
            last_scan: None,
            status_at: Instant::now(),
            stopped: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(mut self) {
        self.cx.counters.db_up.store(0, Ordering::Relaxed);
        if let Err(e) = self.recover() {
            tracing::error!("source {}: {e}", self.name);
            self.last_error = Some(e);
        }
        loop {
            self.cx.beat.beat();
            if *self.cx.shutdown.borrow() {
                break;
            }
            let r = if self.sending.is_some() {
                self.send_step()
            } else if Instant::now() >= self.next_scan && !self.stopped {
                self.scan_once();
                Ok(())
            } else {
                // Until the next scan (a stopped source has none); woken by the agent's
                // stop.
                let left = match self.stopped {
                    true => crate::service::beat_within(),
                    false => self.next_scan.saturating_duration_since(Instant::now()),
                };
                self.cx
                    .watermark
                    .wake()
                    .wait(left.min(crate::service::beat_within()));
                Ok(())
            };
            if r.is_err() {
                break;
            }
            self.publish_status(false);
        }
        self.finish();
    }

    /// At start: reads the snapshot, and finishes a scan whose changes were committed.
    fn recover(&mut self) -> Result<(), String> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| io_msg("create the poll directory", &self.dir, &e))?;
        let snap = self.path("snapshot");
        match LastScanReader::open(&snap).and_then(|r| match r {
            Some(mut r) => r.verify().map(|()| Some(r.meta)),
            None => Ok(None),
        }) {
            Ok(m) => self.meta = m,
            Err(e) => {
                let aside = self.path("snapshot.damaged");
                let _ = fs::rename(&snap, &aside);
                tracing::error!(
                    "source {}: the snapshot of the previous scan is damaged ({e}); it is set aside as {} and the next scan starts over, sending every row as op r",
                    self.name,
                    aside.display()
                );
            }
        }
        for leftover in ["scan.rows", "scan.runs"] {
            let _ = fs::remove_file(self.path(leftover));
        }
        let pending_path = self.path("pending.json");
        let pending: Option<Pending> = match checkpoint::read(&pending_path) {
            Ok(Some(b)) => serde_json::from_slice(&b).ok(),
            Ok(None) => None,
            Err(e) => return Err(io_msg("read", &pending_path, &e)),
        };
        let Some(p) = pending else {
            self.clean_pending();
            return Ok(());
        };
        if self.meta.as_ref().is_some_and(|m| m.gen == p.gen) {
            // The swap was done; only the leftovers remain.
            self.clean_pending();
            return Ok(());
        }
        let next_ok = LastScanReader::open(&self.path("snapshot.next"))
            .ok()
            .flatten()
            .is_some_and(|r| r.meta.gen == p.gen);
        match ChangesReader::open(&self.path("changes")) {
            Ok(reader) if next_ok => {
                tracing::info!(
                    "source {}: sending again the {} change(s) of scan {} that the last run did not see acknowledged",
                    self.name,
                    p.changes,
                    p.gen
                );
                self.sending = Some(Sending {
                    pending: p,
                    reader,
                    read_all: false,
                    last_seq: 0,
                    held: Vec::new(),
                    held_attempts: 0,
                    held_retry_at: Instant::now(),
                });
                Ok(())
            }
            _ => {
                self.clean_pending();
                Err(format!(
                    "the changes of scan {} were committed but their files are missing; the next scan compares with the scan before it",
                    p.gen
                ))
            }
        }
    }

    fn clean_pending(&self) {
        for f in ["snapshot.next", "changes", "pending.json"] {
            let _ = fs::remove_file(self.path(f));
        }
    }

    /// Connects if needed, scans, compares and commits the changes.
    fn scan_once(&mut self) {
        let started = Instant::now();
        let started_ms = now_ms();
        self.next_scan = started + self.cfg.interval;
        if self.db.is_none() {
            match PollDb::open(&self.cfg, &self.name) {
                Ok(db) => {
                    DbConnected {
                        source: &self.name,
                        again: self.attempt > 0,
                    }
                    .emit(&self.cx.counters);
                    if self.attempt == 0 {
                        tracing::info!(
                            "source {}: polling `{}` every {:.1} s ({} column(s), key {})",
                            self.name,
                            self.cfg.table,
                            self.cfg.interval.as_secs_f64(),
                            db.plan.layout.columns.len(),
                            db.plan
                                .layout
                                .key
                                .iter()
                                .map(|&i| db.plan.layout.columns[i].as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    self.db = Some(db);
                }
                Err(e) if e.kind == ErrorKind::NotConfigured => {
                    tracing::error!(
                        source = &*self.name,
                        "source {}: {}; the source stops until the agent is restarted",
                        self.name,
                        e.message
                    );
                    self.last_error = Some(e.message);
                    self.stopped = true;
                    return;
                }
                Err(e) => return self.failed(e.message, true),
            }
        }
        match self.scan_and_merge(started_ms) {
            Ok(Some((counts, full))) => {
                self.attempt = 0;
                self.last_error = None;
                let secs = started.elapsed().as_secs_f64();
                let c = &self.cx.counters;
                c.scan_ms.store((secs * 1000.0) as u64, Ordering::Relaxed);
                c.last_scan_ms.store(now_ms(), Ordering::Relaxed);
                c.scans.fetch_add(1, Ordering::Relaxed);
                for (i, n) in [counts.created, counts.updated, counts.deleted, counts.read]
                    .into_iter()
                    .enumerate()
                {
                    c.changes[i].fetch_add(n, Ordering::Relaxed);
                }
                if counts.repeated_keys > 0 {
                    tracing::warn!(
                        "source {}: {} row(s) of the scan repeat the key of another row; only the first of each is compared: `key` must name columns that identify one row",
                        self.name,
                        counts.repeated_keys
                    );
                }
                tracing::debug!(
                    "source {}: scan of {} row(s) in {secs:.2} s: {} created, {} updated, {} deleted, {} read",
                    self.name,
                    counts.rows,
                    counts.created,
                    counts.updated,
                    counts.deleted,
                    counts.read
                );
                self.last_scan = Some(LastScan {
                    generation: self.sending.as_ref().map_or(0, |s| s.pending.gen),
                    full,
                    rows: counts.rows,
                    created: counts.created,
                    updated: counts.updated,
                    deleted: counts.deleted,
                    read: counts.read,
                    repeated_keys: counts.repeated_keys,
                    seconds: secs,
                    finished_ms: now_ms(),
                });
            }
            Ok(None) => {}
            Err((e, db)) => self.failed(e, db),
        }
        self.publish_status(true);
    }

    /// A scan or connection failed: log it, and try again after a backoff.
    fn failed(&mut self, e: String, db: bool) {
        self.attempt += 1;
        if db {
            self.db = None;
        }
        let wait =
            scan::retry_after(self.attempt).min(self.cfg.interval.max(Duration::from_secs(1)));
        self.next_scan = Instant::now() + wait;
        SourceRetrying {
            source: &self.name,
            error: &e,
            attempt: self.attempt,
            wait,
            connection_lost: db,
        }
        .emit(&self.cx.counters);
        self.last_error = Some(e);
    }

    /// One scan and merge; `Ok(None)` when stopped. An error says whether the
    /// connection is to be dropped.
    fn scan_and_merge(
        &mut self,
        started_ms: i64,
    ) -> Result<Option<(MergeCounts, bool)>, (String, bool)> {
        let Some(db) = self.db.as_mut() else {
            return Err(("not connected to the database".to_owned(), true));
        };
        let shape = db.plan.shape(&self.cfg);
        let layout = db.plan.layout.clone();
        let old_meta = match &self.meta {
            Some(m) if m.shape != shape => {
                tracing::warn!(
                    "source {}: the previous scan was of {}, this source now scans {}: starting over with a first scan",
                    self.name,
                    m.shape,
                    shape
                );
                None
            }
            Some(m) => Some(m.clone()),
            None => None,
        };
        if let Some(m) = &old_meta {
            if m.columns != layout.columns {
                tracing::warn!(
                    "source {}: the columns read changed ({} → {}); every row whose values read differently is sent as an update",
                    self.name,
                    m.columns.join(", "),
                    layout.columns.join(", ")
                );
            }
        }
        let full = match (&self.cfg.cursor, &old_meta) {
            (Some(_), Some(m)) => {
                m.cursor.is_none()
                    || started_ms - m.full_ms >= self.cfg.full_scan_every.as_millis() as i64
            }
            _ => true,
        };
        let since = if full {
            None
        } else {
            old_meta.as_ref().and_then(|m| m.cursor.clone())
        };
        let gen = (started_ms.max(0) as u64).max(old_meta.as_ref().map_or(0, |m| m.gen + 1));
        let io_err = |what: &str, path: &Path, e: io::Error| (io_msg(what, path, &e), false);
        let mut spill = Spill::create(&self.dir)
            .map_err(|e| io_err("create the scan files in", &self.dir, e))?;
        let (shutdown, beat) = (self.cx.shutdown.clone(), self.cx.beat.clone());
        // Asked between fetches: a long scan that still fetches is not stuck.
        let stop = move || {
            beat.beat();
            *shutdown.borrow()
        };
        let max_cursor = match db.scan(since.as_deref(), self.cfg.lookback, &mut spill, &stop) {
            Ok(c) => c,
            Err(ScanError::Stopped) => {
                drop(spill);
                self.clean_scan();
                return Ok(None);
            }
            Err(ScanError::Db(e)) => {
                drop(spill);
                self.clean_scan();
                return Err((e.message, true));
            }
            Err(ScanError::Spill(e)) => {
                drop(spill);
                self.clean_scan();
                return Err(io_err("write the scan to", &self.dir, e));
            }
        };
        let scanned = spill
            .finish()
            .map_err(|e| io_err("write the scan to", &self.dir, e))?;
        self.cx
            .counters
            .rows_scanned
            .fetch_add(scanned.rows, Ordering::Relaxed);
        let kind = db.plan.cursor.map(|c| layout.kinds[c]);
        let cursor = match (max_cursor, old_meta.as_ref().and_then(|m| m.cursor.clone())) {
            (Some(new), Some(old)) if !full => {
                if cursor_less(
                    kind.expect("a cursor has a kind"),
                    old.as_bytes(),
                    new.as_bytes(),
                ) {
                    Some(new)
                } else {
                    Some(old)
                }
            }
            (new, old) => new.or(if full { None } else { old }),
        };
        let mode = match &old_meta {
            None => MergeMode::First {
                emit: !self.cfg.initial_skip,
            },
            Some(_) if full => MergeMode::Full,
            Some(_) => MergeMode::Partial,
        };
        let meta = LastScanMeta {
            gen,
            full_ms: if full {
                started_ms
            } else {
                old_meta.as_ref().map_or(started_ms, |m| m.full_ms)
            },
            rows: 0,
            cursor,
            shape,
            columns: layout.columns.clone(),
        };
        let next_path = self.path("snapshot.next");
        let changes_path = self.path("changes");
        let r = (|| -> io::Result<(MergeCounts, u64)> {
            let next = LastScanWriter::create(&next_path, &meta)?;
            let mut changes = ChangesWriter::create(&changes_path)?;
            let mut old = match old_meta {
                Some(_) => LastScanReader::open(&self.path("snapshot"))?,
                None => None,
            };
            let counts = store::merge(&scanned, old.as_mut(), mode, next, &mut changes, &stop)?;
            let n = changes.finish()?;
            Ok((counts, n))
        })();
        scanned.remove();
        let (counts, n) = match r {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.clean_pending();
                return Ok(None);
            }
            Err(e) => {
                self.clean_pending();
                return Err((
                    format!("cannot compare the scan with the previous one: {e}"),
                    false,
                ));
            }
        };
        let pending = Pending {
            gen,
            changes: n,
            layout,
            scan_ms: started_ms,
        };
        let pending_path = self.path("pending.json");
        let json = serde_json::to_vec(&pending).expect("serializable");
        if let Err(e) = RealDisk.replace(&pending_path, &json) {
            self.clean_pending();
            return Err(io_err("write", &pending_path, e));
        }
        let reader =
            ChangesReader::open(&changes_path).map_err(|e| io_err("read", &changes_path, e))?;
        self.sending = Some(Sending {
            pending,
            reader,
            read_all: false,
            last_seq: self.seq,
            held: Vec::new(),
            held_attempts: 0,
            held_retry_at: Instant::now(),
        });
        Ok(Some((counts, full)))
    }

    fn clean_scan(&self) {
        for f in ["scan.rows", "scan.runs"] {
            let _ = fs::remove_file(self.path(f));
        }
    }

    /// Shutdown: waits for the sink's last acks and swaps if the scan is all acknowledged.
    fn finish(mut self) {
        let mut waited = false;
        while let Some(s) = &self.sending {
            // Changes held for the quarantine are in no event and no quarantine yet:
            // swapping past them would lose them (the next start sends the scan again).
            let acked = s.read_all && s.held.is_empty() && self.cx.watermark.get() >= s.last_seq;
            if acked {
                self.swap();
                break;
            }
            // Nothing more is sent now: a scan not read to its end, or with changes
            // held, is sent again at the next start.
            if waited || !s.read_all || !s.held.is_empty() {
                break;
            }
            self.cx.await_acks(s.last_seq);
            waited = true;
        }
        self.clean_scan();
        self.publish_status(true);
        match &self.sending {
            Some(s) => tracing::info!(
                "source {}: stopped; the changes of scan {} are sent again at the next start",
                self.name,
                s.pending.gen
            ),
            None => tracing::info!("source {}: stopped", self.name),
        }
    }

    fn publish_status(&mut self, force: bool) {
        if !force && self.status_at.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.status_at = Instant::now();
        let w = self.cx.watermark.get();
        let lag_seconds = match &self.sending {
            Some(s) if w < self.seq || !s.read_all => (now_ms() - s.pending.scan_ms).max(0) / 1000,
            _ => 0,
        };
        let c = &self.cx.counters;
        c.lag_seconds.store(lag_seconds, Ordering::Relaxed);
        self.cx.status.set(
            &self.cx.name,
            serde_json::json!({
                "kind": "poll", "connected": self.db.is_some(),
                "table": self.cfg.table,
                "snapshot_generation": self.meta.as_ref().map(|m| m.gen),
                "cursor": self.meta.as_ref().and_then(|m| m.cursor.clone()),
                "sending": self.sending.as_ref().map(|s| serde_json::json!({
                    "generation": s.pending.gen, "changes": s.pending.changes,
                    "read": s.reader.index,
                })),
                "last_scan": self.last_scan,
                "lag_seconds": lag_seconds,
                "events_sent": self.seq, "events_acknowledged": w,
                "rows_scanned": c.rows_scanned.load(Ordering::Relaxed),
                "quarantined": c.quarantined.load(Ordering::Relaxed),
                "last_error": self.last_error,
            }),
        );
    }
}
