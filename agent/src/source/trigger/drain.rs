//! The drain: reads `lockstep_changes` in `seq` order, publishes one event per change
//! (or, with `capture = "keys"`, one per changed key of a batch), and deletes exactly the
//! rows it read once the sink has acknowledged (or durably spooled) their events.
//!
//! **Late commits.** `seq` is taken when a trigger fires, but transactions commit in
//! their own order: a row with a lower `seq` can appear after higher ones were read. So
//! the drain never deletes or skips by range. It remembers the highest `seq` it has read
//! (the cursor) and every row it has read but not yet deleted (in flight); each read is
//! one snapshot of the table that returns the rows above the cursor *and* any row at or
//! below it that is not in flight — a late commit. Late rows are published as soon as
//! they are seen, before the newer rows of the same read; they are read in bounded
//! batches, and newer rows only once every late row of the snapshot is read
//! ([`LateBatch`]).
//!
//! **Exactly once.** An event's position is the capture table's identity and the `seq`
//! of its (last) row, so its `Nats-Msg-Id` is the same every time it is sent. Rows are
//! deleted only after the watermark passes their event; a crash between the ack and the
//! delete re-reads them at the next start and JetStream drops the repeats.
//!
//! **Keys mode.** Rows of the same key in one read become one event carrying the row as
//! it is now (one read of the table per batch); a key whose row is gone becomes a delete.
//! The position adds a digest of the op and row to the last `seq`
//! (`Drain::key_position`), so rows read again with a changed row are not dropped as
//! repeats.
//!
//! **Origin.** Rows written by a session that set lockstep's origin marker are deleted
//! without being published.
//!
//! **Snapshots.** Between reads of the capture table the drain reads the chunks of a
//! running snapshot (see [`super::snapshot`] for how the two are interleaved).
//!
//! **Schema drift.** At connect and every `schema_check` the drain compares each table
//! with what its installed triggers record ([`super::drift`]), reports a difference
//! (log, `lockstep_trigger_drift`, `/healthz`, `/status`) and takes the table's current
//! definition; an image with other columns than the definition makes it look again at
//! once, so new or renamed columns are typed from their first event. A table that is
//! dropped or loses its primary key is reported the same way and keeps its definition;
//! the other tables drain on. In keys mode a key is looked up by the columns its
//! capture rows carry, never by a primary key the triggers do not record yet: a key
//! that cannot be looked up keeps its rows (the read fails) while the drift lasts, and
//! nothing is sent as a delete or quarantined because of it (`Drain::key_events`).
//!
//! **Connection loss.** Any database error drops the connection; the drain reconnects
//! with backoff, reports it in `/status` and in `lockstep_source_db_connected`, and goes
//! on from where it was: rows not yet deleted are still in the table.
//!
//! **Files.** This file: the capture database's interface, the drain's state, its run
//! loop, reads and snapshot chunks. Beside it, in `drain/`:
//! - `events.rs`: rows-mode events, event positions, images parsed into typed records;
//! - `keys.rs`: keys-mode events (changed keys grouped, looked up, their positions);
//! - `schema.rs`: the drift check of the tables against their capture triggers;
//! - `send.rs`: events mapped, debounced and sent; acks, the stop and `/status`;
//! - `tests.rs`: unit tests of the helpers; `test_rig.rs` and the `*_tests.rs`: the
//!   drain driven against fake and real databases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_formats::Op;

use super::ddl::{Capture, Dialect, TableDef};
use super::drift::{self, Installed};
use super::snapshot::{key_only, Snapshots, CHUNK_ROWS};
use crate::admin::metrics::TableCounters;
use crate::admin::telemetry::{DbConnected, SourceRetrying, TriggerDrift};
use crate::backoff;
use crate::clock::now_ms;
use crate::config::TriggerConfig;
use crate::pipeline::debounce::{Absorb, Debouncer, Released};
use crate::pipeline::quarantine::{BadRecord, Quarantine};
use crate::pipeline::{Batch, Outgoing};
use crate::source::{SourceContext, Stopping, BATCH_SIZE};

mod events;
mod keys;
mod schema;
mod send;

pub(crate) use events::parse_image;
use keys::key_of;

/// Rows read in one snapshot, at most.
const READ_ROWS: usize = 4 * BATCH_SIZE;
/// Rows read but not yet deleted, at most: past this the drain waits for acks.
const MAX_IN_FLIGHT: usize = 32 * BATCH_SIZE;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One row of `lockstep_changes`.
#[derive(Debug, Clone, Default)]
pub struct ChangeRow {
    pub seq: i64,
    pub table: String,
    pub op: String,
    pub pk: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// When the trigger fired (ms since epoch), where the database can say.
    pub changed_ms: Option<i64>,
    pub origin: Option<String>,
}

/// A capture row as the drain holds it until it is deleted: its `seq` and when it was
/// written (`ChangeRow::changed_ms`). `seq` alone does not name a row for good: it starts
/// again when the capture table is reset (`TRUNCATE … RESTART IDENTITY`, made anew under
/// the same identity), and an ack of an old row must not delete a new one with its `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowId {
    pub seq: i64,
    /// `None` where the database gives no time: then deleted by `seq` alone.
    pub ms: Option<i64>,
}

impl ChangeRow {
    pub fn id(&self) -> RowId {
        RowId {
            seq: self.seq,
            ms: self.changed_ms,
        }
    }
}

use crate::db::DbError;

/// One connection to the captured database, in its dialect.
pub trait CaptureDb: Send {
    /// The definitions of the captured tables, read when the connection was made.
    fn tables(&self) -> &[TableDef];
    /// Identifies this capture table (it changes when the table is dropped and made
    /// again, so that its restarted `seq`s do not repeat message ids).
    fn epoch(&self) -> &str;
    /// In one snapshot, at most `limit` rows in `seq` order: first the rows with
    /// `seq <= cursor` that are not in `in_flight` (late commits; see [`LateBatch`]),
    /// then, once every late row of the snapshot is in `out`, rows with `seq > cursor`.
    /// Returns true when rows were left for the next read (read again at once).
    fn read(
        &mut self,
        cursor: i64,
        in_flight: &HashSet<i64>,
        limit: usize,
        out: &mut Vec<ChangeRow>,
    ) -> Result<bool, DbError>;
    /// The current rows (as JSON objects) of the keys `pks` (JSON objects) of `table`;
    /// keys without a row are left out.
    fn current(&mut self, table: &TableDef, pks: &[&str]) -> Result<Vec<String>, DbError>;
    /// Up to `limit` rows of `table` as JSON objects, in key order: from the first, or
    /// those whose key is greater than that of `after` (a row this method returned).
    fn chunk(
        &mut self,
        table: &TableDef,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, DbError>;
    /// The catalog's estimate of the rows of `table` (`None` where there is no cheap
    /// one); never a `count(*)`, which on a big table outlasts the watchdog.
    fn estimate_rows(&mut self, table: &TableDef) -> Result<Option<u64>, DbError>;
    /// Deletes these rows: each by its `seq` and, where it has one, its time (the
    /// expression it was read with), so that a row written since under a reused `seq`
    /// stays.
    fn delete(&mut self, rows: &[RowId]) -> Result<(), DbError>;
    /// Whether news of a change came since the last call (PostgreSQL's `NOTIFY`, or the
    /// connection closing: the next read says why). The source's wake-up is given with
    /// the news; a database without notifications always says false (the source reads
    /// every `interval`).
    fn notified(&mut self) -> bool;
    /// The tables as the catalog has them now, and what their capture triggers record
    /// (see [`super::drift`]); the connection's own definitions are brought up to date.
    /// `None` where the dialect is not checked.
    fn schema(&mut self) -> Result<Option<Schema>, DbError> {
        Ok(None)
    }
}

/// The captured tables as the catalog has them now.
pub struct Schema {
    pub dialect: Dialect,
    /// Each table's definition, and what its capture triggers record (`None`: it has
    /// none).
    pub tables: Vec<(TableDef, Option<Installed>)>,
    /// The tables whose definition cannot be read (dropped, no primary key), with why:
    /// reported, and their last definition kept.
    pub broken: Vec<(String, String)>,
}

/// The late rows one read takes, found in a snapshot in bounded steps whatever their
/// number (a batch job's transaction can commit a million capture rows below the
/// cursor):
///
/// 1. `probe`: count the rows at or below the cursor, but at most `in_flight + 1` of
///    them. Only when there are more than are in flight did a transaction commit late.
/// 2. `sweep`: list the first `in_flight + limit` `seq`s at or below the cursor. Those
///    not in flight are late; the first `limit` of them are read (by `seq`).
/// 3. Rows above the cursor are read only when the sweep saw every late row of the
///    snapshot (`all`). A newer change to a key is committed after the late one, so
///    it is never read (and published) before it.
///
/// Memory per read is bounded by `limit` rows and `in_flight + limit` `seq`s.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LateBatch {
    /// The late `seq`s to read, ascending, at most `limit`.
    pub seqs: Vec<i64>,
    /// Every late row of the snapshot is in `seqs`: rows above the cursor may follow.
    pub all: bool,
}

impl LateBatch {
    /// How many rows the probe counts at most.
    pub fn probe_limit(in_flight: &HashSet<i64>) -> usize {
        in_flight.len() + 1
    }

    /// Whether the probe's count says that rows committed late.
    pub fn any(probed: usize, in_flight: &HashSet<i64>) -> bool {
        probed > in_flight.len()
    }

    /// How many `seq`s the sweep lists at most.
    pub fn sweep_limit(in_flight: &HashSet<i64>, limit: usize) -> usize {
        in_flight.len() + limit
    }

    /// The batch from the sweep's `listed` `seq`s (ascending).
    pub fn from_sweep(listed: &[i64], in_flight: &HashSet<i64>, limit: usize) -> LateBatch {
        let mut late = listed.iter().filter(|s| !in_flight.contains(s));
        let seqs: Vec<i64> = late.by_ref().take(limit).copied().collect();
        let all = late.next().is_none() && listed.len() < Self::sweep_limit(in_flight, limit);
        LateBatch { seqs, all }
    }

    /// None late: rows above the cursor may be read.
    pub fn none() -> LateBatch {
        LateBatch {
            seqs: Vec::new(),
            all: true,
        }
    }

    /// How many rows above the cursor the read may take after the late ones.
    pub fn fresh_limit(&self, limit: usize) -> usize {
        if self.all {
            limit.saturating_sub(self.seqs.len())
        } else {
            0
        }
    }

    /// Whether rows were left for the next read, after `read` rows.
    pub fn full(&self, read: usize, limit: usize) -> bool {
        !self.all || read >= limit
    }
}

/// Opens a connection (and reads the table definitions).
pub type Connect = Box<dyn FnMut() -> Result<Box<dyn CaptureDb>, DbError> + Send>;

struct TableOut {
    def: TableDef,
    name: Arc<str>,
    subject: String,
    counters: Arc<TableCounters>,
    /// The columns of the last image that differed from `def` and made the drain look
    /// at the table again; not again for the same columns (until `def` changes).
    checked_columns: Vec<String>,
}

impl TableOut {
    /// Whether an image with these `n` columns has those of the definition, or those
    /// last checked (in any order).
    fn knows<'a, I: Iterator<Item = &'a str>>(&self, columns: impl Fn() -> I, n: usize) -> bool {
        let same =
            |known: &[String]| n == known.len() && columns().all(|c| known.iter().any(|k| k == c));
        same(&self.def.columns) || same(&self.checked_columns)
    }
}

/// Capture rows whose event is `seq`: deleted once the watermark reaches it.
struct Pending {
    seq: u64,
    rows: Vec<RowId>,
    captured_ms: i64,
}

/// What a change carries through the debouncer: its table and capture rows, and which
/// capture table they are rows of (`Drain::table_gen`).
struct Rows {
    table: usize,
    rows: Vec<RowId>,
    gen: u64,
}

impl Absorb for Rows {
    fn absorb(&mut self, later: Rows) {
        if later.gen != self.gen {
            // The earlier rows were in a capture table that is gone.
            self.rows = later.rows;
            self.gen = later.gen;
        } else {
            self.rows.extend(later.rows);
        }
    }
}

/// The connection is gone: it was lost while the source waited for the sink (`send`
/// deletes acknowledged rows meanwhile). The step ends with this error and the run loop
/// connects again.
fn not_connected(source: &str) -> DbError {
    DbError::query(format!(
        "source {source}: the database connection was lost while waiting for the sink; connecting again"
    ))
}

pub struct Drain {
    cfg: TriggerConfig,
    cx: SourceContext,
    connect: Connect,
    db: Option<Box<dyn CaptureDb>>,
    tables: Vec<TableOut>,
    by_name: HashMap<String, usize>,
    epoch: String,
    cursor: i64,
    in_flight: HashSet<i64>,
    pending: VecDeque<Pending>,
    to_delete: Vec<RowId>,
    seq: u64,
    batch: Vec<Outgoing>,
    deb: Debouncer<Rows>,
    released: Vec<Released<Rows>>,
    rows: Vec<ChangeRow>,
    quarantine: Quarantine,
    snapshots: Snapshots,
    agent: Arc<str>,
    name: Arc<str>,
    kind: Arc<str>,
    attempt: usize,
    retry_at: Instant,
    last_read: Option<Instant>,
    /// The last read was a full batch: read again at once.
    backlog: bool,
    woken: bool,
    last_error: Option<String>,
    status_at: Instant,
    /// What a keys-mode position's digest is taken over (reused).
    digest_buf: Vec<u8>,
    /// When the tables were last compared with their triggers (`None`: at once).
    schema_at: Option<Instant>,
    /// The tables whose triggers do not match them, with what is wrong.
    drift: HashMap<String, String>,
    /// Counts the capture tables seen made anew: rows of an older one are not deleted.
    table_gen: u64,
    /// The tables whose trigger bodies cannot be read, already warned of.
    unreadable: HashSet<String>,
    /// A capture row without a readable time was logged (once).
    no_time_logged: bool,
}

enum Fail {
    Stopping,
    Db(DbError),
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Db(e)
    }
}

impl Drain {
    pub fn new(cfg: TriggerConfig, cx: SourceContext, connect: Connect) -> Self {
        let first_seq = cx.first_seq();
        Drain {
            deb: cx.debouncer(),
            quarantine: cx.quarantine(),
            snapshots: Snapshots::open(&cx.state_dir, &cx.name, &cfg.tables, cfg.snapshot_initial),
            agent: Arc::from(cx.agent_id.as_str()),
            name: Arc::from(cx.name.as_str()),
            kind: Arc::from("trigger"),
            cfg,
            cx,
            connect,
            db: None,
            tables: Vec::new(),
            by_name: HashMap::new(),
            epoch: String::new(),
            cursor: 0,
            in_flight: HashSet::new(),
            pending: VecDeque::new(),
            to_delete: Vec::new(),
            seq: first_seq,
            batch: Vec::with_capacity(BATCH_SIZE),
            released: Vec::new(),
            rows: Vec::with_capacity(BATCH_SIZE),
            attempt: 0,
            retry_at: Instant::now(),
            last_read: None,
            backlog: false,
            woken: false,
            last_error: None,
            status_at: Instant::now(),
            digest_buf: Vec::with_capacity(1024),
            schema_at: None,
            drift: HashMap::new(),
            table_gen: 0,
            unreadable: HashSet::new(),
            no_time_logged: false,
        }
    }

    pub fn run(mut self) {
        self.cx.counters.db_up.store(0, Ordering::Relaxed);
        loop {
            self.cx.beat.beat();
            if *self.cx.shutdown.borrow() {
                break;
            }
            self.apply_acks();
            if self.tick().is_err() {
                break;
            }
            if self.db.is_none() {
                if let Some(left) = self.retry_at.checked_duration_since(Instant::now()) {
                    // Backing off; woken by the agent's stop (and by acks, which the
                    // next turn takes).
                    self.cx
                        .watermark
                        .wake()
                        .wait(left.min(crate::service::beat_within()));
                    self.publish_status(false);
                    continue;
                }
                self.open();
                continue;
            }
            match self.step() {
                Ok(()) => {}
                Err(Fail::Stopping) => break,
                Err(Fail::Db(e)) => self.lost(e),
            }
            self.publish_status(false);
        }
        self.finish();
    }

    fn open(&mut self) {
        match (self.connect)() {
            Ok(db) => {
                if !self.epoch.is_empty() && self.epoch != db.epoch() {
                    tracing::warn!(
                        "source {}: the capture table was made anew (it was {}, now {}); reading it from the start",
                        self.name,
                        self.epoch,
                        db.epoch()
                    );
                    self.cursor = 0;
                    self.in_flight.clear();
                    self.to_delete.clear();
                    // Events of the old table still awaiting their ack keep their place
                    // (the watermark counts them), but not their rows: deleted by `seq`
                    // from the new table, they would take changes never sent.
                    for p in &mut self.pending {
                        p.rows.clear();
                    }
                    self.table_gen += 1;
                }
                self.epoch = db.epoch().to_owned();
                self.set_tables(db.tables());
                DbConnected {
                    source: &self.name,
                    again: self.attempt > 0,
                }
                .emit(&self.cx.counters);
                if self.attempt == 0 {
                    tracing::info!(
                        "source {}: draining the capture table of {} table(s)",
                        self.name,
                        self.tables.len()
                    );
                }
                self.attempt = 0;
                self.last_error = None;
                self.db = Some(db);
                self.woken = true;
                self.schema_at = None;
            }
            Err(e) => self.lost(e),
        }
    }

    /// Drops the connection and schedules the next attempt.
    fn lost(&mut self, e: DbError) {
        self.db = None;
        self.attempt += 1;
        let wait = backoff::delay(self.attempt, MAX_BACKOFF);
        self.retry_at = Instant::now() + wait;
        SourceRetrying {
            source: &self.name,
            error: &e.message,
            attempt: self.attempt,
            wait,
            connection_lost: true,
        }
        .emit(&self.cx.counters);
        self.last_error = Some(e.message);
        self.publish_status(true);
    }

    fn set_tables(&mut self, defs: &[TableDef]) {
        for def in defs {
            match self.by_name.get(&def.name) {
                Some(&i) => {
                    let out = &mut self.tables[i];
                    if out.def != *def {
                        out.def = def.clone();
                        out.checked_columns.clear();
                    }
                }
                None => {
                    self.by_name.insert(def.name.clone(), self.tables.len());
                    let name = self.cx.map.table(&def.name);
                    self.tables.push(TableOut {
                        def: def.clone(),
                        name: Arc::from(name),
                        subject: self.cx.encoder.subject(name),
                        counters: self.cx.metrics.table(&self.cx.name, name),
                        checked_columns: Vec::new(),
                    });
                }
            }
        }
    }

    /// Deletes what is acknowledged, reads what is new, and waits when there is nothing.
    fn step(&mut self) -> Result<(), Fail> {
        self.delete_acked()?;
        if self
            .schema_at
            .is_none_or(|t| t.elapsed() >= self.cfg.schema_check)
        {
            self.check_schema()?;
        }
        let due = self.backlog
            || self.woken
            || self
                .last_read
                .is_none_or(|t| t.elapsed() >= self.cfg.interval);
        if due && self.in_flight.len() < MAX_IN_FLIGHT {
            self.read()?;
            if self.flush().is_err() {
                return Err(Fail::Stopping);
            }
            if self.backlog {
                return Ok(());
            }
        }
        if self.snapshot_chunk()? {
            // More to read at once; only look whether a change was notified meanwhile.
            let Some(db) = self.db.as_mut() else {
                return Err(not_connected(&self.name).into());
            };
            self.woken |= db.notified();
            return Ok(());
        }
        let since = self.last_read.map_or(Duration::ZERO, |t| t.elapsed());
        let mut timeout = self.cfg.interval.saturating_sub(since);
        if !self.to_delete.is_empty() {
            timeout = timeout.min(Duration::from_millis(5));
        }
        let timeout = self
            .deb
            .next_due()
            .map_or(timeout, |t| {
                timeout.min(t.saturating_duration_since(Instant::now()))
            })
            .min(crate::service::beat_within());
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name).into());
        };
        self.woken |= db.notified();
        let room = self.in_flight.len() < MAX_IN_FLIGHT;
        if self.woken && room {
            return Ok(());
        }
        // Acks wake it: the first one awaited when the reads wait for room (news of a
        // change waits with them: there is no room to read it), else the last.
        let w = &self.cx.watermark;
        let awaited = if room {
            self.pending.back()
        } else {
            self.pending.front()
        };
        if awaited.is_some_and(|p| w.wake_at(p.seq)) {
            return Ok(());
        }
        w.wake().wait(timeout);
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name).into());
        };
        self.woken |= db.notified();
        Ok(())
    }

    fn delete_acked(&mut self) -> Result<(), DbError> {
        if self.to_delete.is_empty() {
            return Ok(());
        }
        // Quarantined rows must be on disk before their capture rows go.
        if let Err(e) = self.quarantine.sync() {
            return Err(DbError::query(format!(
                "cannot sync the quarantine {}: {e}",
                self.quarantine.path().display()
            )));
        }
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name));
        };
        crate::crash::point("trigger-delete");
        db.delete(&self.to_delete)?;
        for r in self.to_delete.drain(..) {
            self.in_flight.remove(&r.seq);
        }
        Ok(())
    }

    fn read(&mut self) -> Result<(), DbError> {
        self.woken = false;
        self.last_read = Some(Instant::now());
        let mut rows = std::mem::take(&mut self.rows);
        rows.clear();
        let r = match self.db.as_mut() {
            Some(db) => db.read(self.cursor, &self.in_flight, READ_ROWS, &mut rows),
            None => Err(not_connected(&self.name)),
        };
        let full = match r {
            Ok(full) => full,
            Err(e) => {
                self.rows = rows;
                return Err(e);
            }
        };
        let fresh = rows.iter().filter(|r| r.seq > self.cursor).count();
        self.backlog = full;
        // Caught up with what waited at the start: merge from the next read on (see
        // `pipeline::debounce`, "After a restart").
        let caught_up = !self.backlog;
        let late = rows.len() - fresh;
        if late > 0 {
            tracing::debug!(
                "source {}: {late} row(s) committed late (seq at or below {})",
                self.name,
                self.cursor
            );
        }
        let cursor = self.cursor;
        for r in &rows {
            self.in_flight.insert(r.seq);
            self.cursor = self.cursor.max(r.seq);
        }
        let out = match self.cfg.capture {
            Capture::Rows => {
                for r in &rows {
                    self.row_event(r);
                }
                Ok(())
            }
            Capture::Keys => self.key_events(&rows),
        };
        if out.is_err() {
            // Nothing of this read was published: read it again after reconnecting.
            self.cursor = cursor;
            for r in &rows {
                self.in_flight.remove(&r.seq);
            }
        } else if caught_up && !self.deb.is_merging() {
            self.deb.set_merging(true);
        }
        self.rows = rows;
        out
    }

    /// Reads the next chunk of a running snapshot, if one is due; true when the next can
    /// be read at once.
    fn snapshot_chunk(&mut self) -> Result<bool, Fail> {
        self.snapshots.poll_request();
        if let Some(tables) = self.snapshots.to_count() {
            let mut total = Some(0);
            for name in tables {
                if let Some(&t) = self.by_name.get(name) {
                    let Some(db) = self.db.as_mut() else {
                        return Err(not_connected(&self.name).into());
                    };
                    // A catalog lookup, but a beat on each all the same.
                    self.cx.beat.beat();
                    let n = db.estimate_rows(&self.tables[t].def)?;
                    total = total.zip(n).map(|(a, b)| a + b);
                }
            }
            self.snapshots.set_total(total);
        }
        let Some((name, after)) = self.snapshots.want() else {
            return Ok(false);
        };
        let Some(&t) = self.by_name.get(name) else {
            tracing::warn!(
                "source {}: snapshot {}: `{name}` is no longer one of the source's tables; skipping it",
                self.name,
                self.snapshots.id()
            );
            self.snapshots.read(0, None, false, self.seq);
            return Ok(true);
        };
        let mut after = after.map(str::to_owned);
        let table = name.to_owned();
        if let Some(a) = after.take() {
            // The whole row, from a checkpoint of lockstep 0.1: keep its key only.
            after = Some(match key_only(&a, &self.tables[t].def.key) {
                Ok(k) if k != a => {
                    self.snapshots.rekey(&a, k.clone());
                    k
                }
                _ => a,
            });
        }
        let id = self.snapshots.id();
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name).into());
        };
        let def = &self.tables[t].def;
        let mut rows = db.chunk(def, after.as_deref(), CHUNK_ROWS)?;
        let mut events = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for json in &rows {
            let event = parse_image(def, "row", json).and_then(|row| {
                let (key, text) = key_of(def, &row)?;
                Ok((format!("snapshot{id}.{table}.{text}"), key, row))
            });
            match event {
                Ok(e) => events.push(e),
                Err(reason) => bad.push((json, reason)),
            }
        }
        if !bad.is_empty() {
            for (json, reason) in bad {
                let reason = format!("snapshot {id} of `{table}`: {reason}");
                if !self.set_aside_row(Path::new(&table), 0, &reason, json) {
                    return Err(Fail::Db(DbError::query(format!(
                        "snapshot {id} of `{table}`: a row that cannot be read could not be quarantined"
                    ))));
                }
            }
            // On disk before the snapshot's checkpoint can pass the row.
            self.quarantine.sync().map_err(|e| {
                DbError::query(format!(
                    "cannot sync the quarantine {}: {e}",
                    self.quarantine.path().display()
                ))
            })?;
        }
        for (position, key, row) in events {
            self.push(
                t,
                Op::Read,
                key,
                None,
                Some(row),
                position,
                None,
                Vec::new(),
            );
        }
        let full = rows.len() >= CHUNK_ROWS;
        let n = rows.len();
        // Only the key of the last row is kept (fields of the rest may be dropped by the
        // mapping: they must not be copied on the host); a row that is not a JSON object
        // was quarantined above and is kept as it is, having no fields to drop.
        let last = rows
            .pop()
            .map(|r| key_only(&r, &self.tables[t].def.key).unwrap_or(r));
        self.snapshots.read(n, last, full, self.seq);
        if self.flush().is_err() {
            return Err(Fail::Stopping);
        }
        Ok(self.snapshots.want().is_some())
    }
}

#[cfg(test)]
mod lost_connection_tests;

#[cfg(test)]
mod new_table_tests;

#[cfg(test)]
mod reset_tests;

#[cfg(test)]
mod test_rig;

#[cfg(test)]
mod wake_tests;

#[cfg(test)]
mod tests;
