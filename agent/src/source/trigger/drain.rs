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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_formats::json::{encode_record, encode_value, parse_object};
use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo, Value};
use xxhash_rust::xxh3::xxh3_64;

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

/// A changed key of one read (`capture = "keys"`).
struct Group {
    table: usize,
    /// The key as the JSON object it is looked up by.
    pk: String,
    /// The columns it is looked up by (see [`lookup_key`]).
    lookup: Vec<String>,
    key: Record,
    canon: String,
    first_op: String,
    last_seq: i64,
    /// When the last capture row was written (ms), where the database says.
    last_ms: Option<i64>,
    changed_ms: Option<i64>,
    rows: Vec<RowId>,
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
                        .wait(left.min(Duration::from_secs(1)));
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
        let timeout = self.deb.next_due().map_or(timeout, |t| {
            timeout.min(t.saturating_duration_since(Instant::now()))
        });
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name).into());
        };
        self.woken |= db.notified();
        if self.woken {
            return Ok(());
        }
        // Acks wake it: the first one awaited when the reads wait for room, else the last.
        let w = &self.cx.watermark;
        let room = self.in_flight.len() < MAX_IN_FLIGHT;
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

    /// Compares each table with what its capture triggers record (see [`drift`]), takes
    /// its definition as it is now, and reports each change of drift. A table that
    /// cannot be read (dropped, no primary key) is reported the same way and keeps its
    /// last definition; only a failure of the connection is an error.
    fn check_schema(&mut self) -> Result<(), DbError> {
        self.schema_at = Some(Instant::now());
        self.cx.beat.beat();
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name));
        };
        let Some(mut schema) = db.schema()? else {
            return Ok(());
        };
        self.cx.beat.beat();
        let problems = |schema: &Schema| -> Vec<(String, Option<String>, bool)> {
            let mut out: Vec<(String, Option<String>, bool)> = schema
                .tables
                .iter()
                .map(|(def, installed)| {
                    let d = drift::compare(def, self.cfg.capture, installed.as_ref());
                    let alarm = d.as_ref().is_some_and(|d| d.missing || !d.gone.is_empty());
                    (
                        def.name.clone(),
                        d.map(|d| d.describe(schema.dialect)),
                        alarm,
                    )
                })
                .collect();
            out.extend(
                schema
                    .broken
                    .iter()
                    .map(|(name, why)| (name.clone(), Some(why.clone()), true)),
            );
            out
        };
        let mut found = problems(&schema);
        // A check made while `lockstep triggers install` replaces the triggers can see
        // a moment without them, or old and new bodies mixed: a table newly seen
        // without its triggers, or naming columns gone, is read a second time first.
        let new_alarm = found
            .iter()
            .any(|(t, p, alarm)| *alarm && self.drift.get(t) != p.as_ref());
        if new_alarm {
            if let Some(again) = db.schema()? {
                schema = again;
                found = problems(&schema);
            }
            self.cx.beat.beat();
        }
        let defs: Vec<TableDef> = schema.tables.iter().map(|(d, _)| d.clone()).collect();
        self.set_tables(&defs);
        for (def, installed) in &schema.tables {
            let warning = installed
                .as_ref()
                .and_then(|i| drift::unreadable_warning(schema.dialect, &def.name, i));
            match warning {
                Some(w) if self.unreadable.insert(def.name.clone()) => {
                    tracing::warn!("source {}: {w}", self.name);
                }
                Some(_) => {}
                None => {
                    self.unreadable.remove(&def.name);
                }
            }
        }
        for (table, problem, _) in found {
            TriggerDrift {
                source: &self.name,
                table: &table,
                problem: problem.as_deref(),
                was: self.drift.get(&table).map(String::as_str),
                fix: &drift::fix(&self.name),
            }
            .emit(&self.cx.metrics, &self.cx.status);
            match problem {
                Some(p) => self.drift.insert(table, p),
                None => self.drift.remove(&table),
            };
        }
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

    /// `capture = "rows"`: one event per row, with the images the trigger recorded.
    fn row_event(&mut self, r: &ChangeRow) {
        if r.origin.is_some() {
            self.to_delete.push(r.id());
            return;
        }
        let mut built = self.build_row(r);
        // The columns are copied out only when they are not the known ones (each row's
        // image is looked at).
        let shape = built.as_ref().ok().and_then(|(t, _, _, before, after)| {
            let image = after.as_ref().or(before.as_ref())?;
            let out = &self.tables[*t];
            if out.knows(|| image.iter().map(|(c, _)| c), image.len()) {
                return None;
            }
            Some((
                *t,
                image.iter().map(|(c, _)| c.to_owned()).collect::<Vec<_>>(),
            ))
        });
        if let Some((t, columns)) = shape {
            if self.table_changed(t, &columns) {
                built = self.build_row(r);
            }
        }
        match built {
            Ok((t, op, key, before, after)) => {
                let position = self.position(r.seq, r.changed_ms);
                self.push(
                    t,
                    op,
                    key,
                    before,
                    after,
                    position,
                    r.changed_ms,
                    vec![r.id()],
                )
            }
            Err(reason) => self.set_aside(r, &reason),
        }
    }

    /// The table, op, key and images of a capture row (`capture = "rows"`).
    #[allow(clippy::type_complexity)]
    fn build_row(
        &self,
        r: &ChangeRow,
    ) -> Result<(usize, Op, Record, Option<Record>, Option<Record>), String> {
        let t = self.table_index(&r.table)?;
        let op = row_op(&r.op)?;
        let def = &self.tables[t].def;
        let key = parse_image(def, "pk", &r.pk)?;
        let image = |name: &str, v: &Option<String>| -> Result<Option<Record>, String> {
            v.as_deref().map(|j| parse_image(def, name, j)).transpose()
        };
        let before = image("before", &r.before)?;
        let after = image("after", &r.after)?;
        Ok((t, op, key, before, after))
    }

    /// An image with `columns` of table `t`, which are not the columns of its
    /// definition (added, dropped or renamed): the table changed (PostgreSQL's
    /// `row_to_json` follows it; elsewhere the triggers were installed again after an
    /// `ALTER TABLE`). Looks at the table again at once, so that a new column is typed
    /// (binary, date-time) from this event on; true when it did. Once per set of
    /// columns, so that triggers that still record the old columns (drift) do not make
    /// it look at every row.
    fn table_changed(&mut self, t: usize, columns: &[String]) -> bool {
        let out = &mut self.tables[t];
        if out.knows(|| columns.iter().map(String::as_str), columns.len()) {
            return false;
        }
        out.checked_columns = columns.to_vec();
        match self.check_schema() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "source {}: cannot read the definition of `{}` again: {}",
                    self.name,
                    self.tables[t].def.name,
                    e.message
                );
                // Tried again (and the connection with it) at the next step.
                self.schema_at = None;
                false
            }
        }
    }

    /// `capture = "keys"`: one event per changed key, with the row as it is now.
    ///
    /// Each key is looked up by the columns its capture rows carry ([`lookup_key`]):
    /// after the table's primary key changed, the installed triggers still record the
    /// old one. A row is only ever matched to its key with the definition the key was
    /// grouped with: when the definition changed meanwhile, or the key cannot be looked
    /// up, the read fails and its rows are kept and read again — never sent as deletes.
    fn key_events(&mut self, rows: &[ChangeRow]) -> Result<(), DbError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(usize, Vec<String>, String), usize> = HashMap::new();
        // Whether the tables were compared with their triggers during this read.
        let mut refreshed = false;
        let aside = 'group: loop {
            groups.clear();
            index.clear();
            let mut aside: Vec<(&ChangeRow, String)> = Vec::new();
            for r in rows {
                if r.origin.is_some() {
                    continue;
                }
                let found = self.table_index(&r.table).and_then(|t| {
                    row_op(&r.op)?;
                    let pk = parse_image(&self.tables[t].def, "pk", &r.pk)?;
                    Ok((t, pk))
                });
                let (t, pk) = match found {
                    Ok(v) => v,
                    Err(reason) => {
                        aside.push((r, reason));
                        continue;
                    }
                };
                let def = &self.tables[t].def;
                let keyed = lookup_key(def, &r.pk, pk).and_then(|(by, key, json)| {
                    let canon = key_text(&by, &key)?;
                    Ok((by.key, key, canon, json))
                });
                let (lookup, key, canon, json) = match keyed {
                    Ok(v) => v,
                    Err(reason) if self.drift.contains_key(&def.name) => {
                        // The triggers record another key than the table has: not the
                        // row's fault. Kept (not quarantined, not deleted) until it can
                        // be read.
                        return Err(DbError::query(format!(
                            "source {}: capture row seq {} of `{}`: {reason}; the table's key \
                             differs from what its capture triggers record (see its drift): \
                             its rows are kept in the capture table and read again",
                            self.name, r.seq, def.name
                        )));
                    }
                    Err(_) if !refreshed => {
                        // Maybe a drift not yet seen: compared first, then grouped again.
                        refreshed = true;
                        self.check_schema()?;
                        continue 'group;
                    }
                    Err(reason) => {
                        aside.push((r, reason));
                        continue;
                    }
                };
                match index.get(&(t, lookup.clone(), canon.clone())) {
                    Some(&g) => {
                        let g = &mut groups[g];
                        g.last_seq = r.seq;
                        g.last_ms = r.changed_ms;
                        g.changed_ms = r.changed_ms.or(g.changed_ms);
                        g.rows.push(r.id());
                    }
                    None => {
                        index.insert((t, lookup.clone(), canon.clone()), groups.len());
                        groups.push(Group {
                            table: t,
                            pk: json.unwrap_or_else(|| r.pk.clone()),
                            lookup,
                            key,
                            canon,
                            first_op: r.op.clone(),
                            last_seq: r.seq,
                            last_ms: r.changed_ms,
                            changed_ms: r.changed_ms,
                            rows: vec![r.id()],
                        });
                    }
                }
            }
            break aside;
        };
        // The definitions the keys were grouped with (a check during the look-ups
        // below may take newer ones).
        let grouped_defs: Vec<TableDef> = self.tables.iter().map(|o| o.def.clone()).collect();
        for r in rows.iter().filter(|r| r.origin.is_some()) {
            self.to_delete.push(r.id());
        }
        for (r, reason) in aside {
            self.set_aside(r, &reason);
        }
        // One read of each table (per key it is looked up by) for the keys of this batch.
        let mut lookups: Vec<(usize, Vec<String>)> = Vec::new();
        for g in &groups {
            if !lookups.iter().any(|(t, l)| *t == g.table && *l == g.lookup) {
                lookups.push((g.table, g.lookup.clone()));
            }
        }
        type Found = Result<Record, (String, String)>;
        let mut current: HashMap<(usize, Vec<String>, String), Found> = HashMap::new();
        for (t, lookup) in lookups {
            let pks: Vec<&str> = groups
                .iter()
                .filter(|g| g.table == t && g.lookup == lookup)
                .map(|g| g.pk.as_str())
                .collect();
            let Some(db) = self.db.as_mut() else {
                return Err(not_connected(&self.name));
            };
            let grouped = TableDef {
                key: lookup.clone(),
                ..grouped_defs[t].clone()
            };
            let found = db.current(&grouped, &pks)?;
            // The connection found the table changed and read it with its new columns.
            let def = &self.tables[t].def;
            if let Some(now) = db.tables().iter().find(|d| d.name == def.name && *d != def) {
                self.tables[t].def = now.clone();
                self.tables[t].checked_columns.clear();
            }
            // PostgreSQL's `row_to_json` follows the table by itself.
            let columns = found
                .first()
                .and_then(|j| parse_object(j.as_bytes()).ok())
                .map(|r| r.iter().map(|(c, _)| c.to_owned()).collect::<Vec<_>>());
            if let Some(columns) = columns {
                self.table_changed(t, &columns);
            }
            // Matched with the definition the keys were grouped with: another type of a
            // key column would give the same key another text, and every row of the
            // batch would look gone.
            let now = &self.tables[t].def;
            if key_shape(&grouped, &lookup) != key_shape(now, &lookup) {
                return Err(DbError::query(format!(
                    "source {}: the key columns of `{}` changed while its changes were read; \
                     they are read again",
                    self.name, now.name
                )));
            }
            let def = TableDef {
                key: lookup.clone(),
                ..now.clone()
            };
            let now_key = now.key.clone();
            for json in found {
                let (k, row) = match parse_image(&def, "row", &json).and_then(|row| {
                    let k = key_text(&def, &row)?;
                    Ok((k, row))
                }) {
                    Ok((k, row)) => (k, Ok(row)),
                    Err(reason) => {
                        // A row that cannot become an event: found by its key as the
                        // database gave it, and set aside with its capture rows.
                        let raw = parse_object(json.as_bytes()).ok();
                        let Some(k) = raw.and_then(|r| key_text(&def, &r).ok()) else {
                            return Err(DbError::query(format!(
                                "reading the current rows of `{}`: {reason}",
                                def.name
                            )));
                        };
                        (k, Err((reason, json.clone())))
                    }
                };
                let mut taken = match current.entry((t, lookup.clone(), k)) {
                    Entry::Vacant(v) => {
                        v.insert(row);
                        continue;
                    }
                    Entry::Occupied(o) => o,
                };
                // Looked up by a key that is no longer the table's: several rows have
                // it, and which one changed is not known.
                let why = format!(
                    "several rows of `{}` have the key ({}) its capture rows carry, which \
                     is not its primary key ({}): which one changed is not known",
                    def.name,
                    lookup.join(", "),
                    now_key.join(", ")
                );
                if !refreshed && !self.drift.contains_key(&def.name) {
                    // Maybe a drift not yet seen.
                    refreshed = true;
                    self.check_schema()?;
                }
                if self.drift.contains_key(&def.name) {
                    // Kept until the triggers are installed again.
                    return Err(DbError::query(format!(
                        "source {}: {why}; its rows are kept in the capture table: run \
                         `lockstep triggers install --source {}`",
                        self.name, self.name
                    )));
                }
                // The triggers match the table again: these rows were written before,
                // and can only be set aside (quarantined, never a delete).
                *taken.get_mut() = Err((why, json));
            }
        }
        // Every row found was looked up by the key of one of these groups. One that
        // matches none (a key column's type changed, so the same key reads as another
        // text) would leave its group looking gone: never a delete on that ground. The
        // rows are read again, and grouped then with the definition now known.
        let looked_up: HashSet<(usize, &[String], &str)> = groups
            .iter()
            .map(|g| (g.table, g.lookup.as_slice(), g.canon.as_str()))
            .collect();
        if let Some((t, _, k)) = current
            .keys()
            .find(|(t, l, k)| !looked_up.contains(&(*t, l.as_slice(), k.as_str())))
        {
            let e = DbError::query(format!(
                "source {}: a row of `{}` found by key ({k}) matches none of the keys looked \
                 up (did a key column change its type?); its changes are read again",
                self.name, self.tables[*t].def.name
            ));
            // The definitions read again, so that the next read groups by the new types.
            self.check_schema()?;
            return Err(e);
        }
        groups.sort_by_key(|g| g.last_seq);
        for g in groups {
            let (op, after) = match current.remove(&(g.table, g.lookup, g.canon)) {
                Some(Err((reason, json))) => {
                    let seqs: Vec<i64> = g.rows.iter().map(|r| r.seq).collect();
                    let reason = format!(
                        "capture rows seq {seqs:?} of `{}`, key {}: the current row: {reason}",
                        self.tables[g.table].def.name, g.pk
                    );
                    let file = Path::new(super::ddl::CAPTURE_TABLE);
                    if self.set_aside_row(file, g.last_seq.max(0) as u64, &reason, &json) {
                        self.to_delete.extend(g.rows);
                    }
                    continue;
                }
                Some(Ok(row)) if g.first_op == "c" => (Op::Create, Some(row)),
                Some(Ok(row)) => (Op::Update, Some(row)),
                None => (Op::Delete, None),
            };
            let position = self.key_position(g.last_seq, g.last_ms, op, after.as_ref());
            self.push(
                g.table,
                op,
                g.key,
                None,
                after,
                position,
                g.changed_ms,
                g.rows,
            );
        }
        Ok(())
    }

    fn table_index(&self, table: &str) -> Result<usize, String> {
        self.by_name.get(table).copied().ok_or_else(|| {
            format!("table `{table}` is not one of this source's tables (`tables` in the config)")
        })
    }

    /// The position of the change event whose (last) capture row is `seq`, written at
    /// `changed_ms`: `pg16390.12131@1764412345678`.
    ///
    /// `seq` alone does not name a change for good: it starts again at 1 when the
    /// capture table is made anew or its sequence is reset (`TRUNCATE … RESTART
    /// IDENTITY`, an `AUTO_INCREMENT` a server restart recomputed from an empty table, a
    /// database rebuilt from scratch), and the capture table's identity (`epoch`) does
    /// not always change with it (SQLite has none). A change sent then would get the id
    /// of an older one still in the stream's duplicate window, and JetStream would drop
    /// it as a repeat. The time the capture row was written is stored in the row, so a
    /// row read again gets the same id, and a new row with a reused `seq` another one.
    fn position(&mut self, seq: i64, changed_ms: Option<i64>) -> String {
        // Without `format!`: once per event.
        let mut p = String::with_capacity(self.epoch.len() + 42);
        p.push_str(&self.epoch);
        p.push('.');
        push_int(&mut p, seq);
        match changed_ms {
            Some(ms) => {
                p.push('@');
                push_int(&mut p, ms);
            }
            None if !self.no_time_logged => {
                self.no_time_logged = true;
                tracing::warn!(
                    source = &*self.name,
                    "source {}: capture row seq {seq} has no time the drain can read (changed_at \
                     is NULL, not a date-time, or the dialect gives none): its message id is \
                     `{p}`, without `@<ms>`, and so are those of other such rows (logged once). \
                     If the capture table's seq starts again under the same identity while the \
                     stream remembers an old change of the same seq, the new change is dropped \
                     as a repeat, and an ack of the old row can delete the new one \
                     (docs/operations.md: \"The capture table was emptied or made anew\")",
                    self.name
                );
            }
            None => {}
        }
        p
    }

    /// The position of a changed key's event (`capture = "keys"`): its last capture
    /// row's (see [`Drain::position`]), and a digest of what it carries
    /// (`pg16390.12131@1764412345678~5be0c1a2d3e4f607`).
    ///
    /// The row is read when the event is made, so the same capture rows read again
    /// (after a crash or a stop before their delete) can carry a newer row than the
    /// event already stored. With the bare `seq` its id would be the same and JetStream
    /// would drop it as a repeat: the stream would keep the older row. With the digest
    /// only a true repeat (the same op and row) has the same id.
    fn key_position(
        &mut self,
        seq: i64,
        changed_ms: Option<i64>,
        op: Op,
        after: Option<&Record>,
    ) -> String {
        let buf = &mut self.digest_buf;
        buf.clear();
        buf.extend_from_slice(op.code().as_bytes());
        if let Some(row) = after {
            encode_record(row, buf);
        }
        let digest = xxh3_64(buf);
        let mut p = self.position(seq, changed_ms);
        let _ = write!(p, "~{digest:016x}");
        p
    }

    /// Makes an event, maps it and hands it to the debouncer; `rows` are the capture rows
    /// it stands for.
    #[allow(clippy::too_many_arguments)]
    fn push(
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
            let file = Path::new(super::ddl::CAPTURE_TABLE);
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
    fn tick(&mut self) -> Result<(), Stopping> {
        if self.deb.held() == 0 {
            return Ok(());
        }
        self.deb.due(Instant::now(), &mut self.released);
        self.emit();
        self.flush()
    }

    /// A capture row that cannot become an event: quarantined, then deleted.
    fn set_aside(&mut self, r: &ChangeRow, reason: &str) {
        let reason = format!("capture row seq {}: {reason}", r.seq);
        let data = serde_json::json!({
            "seq": r.seq, "tbl": r.table, "op": r.op, "pk": r.pk,
            "before": r.before, "after": r.after,
        })
        .to_string();
        let file = Path::new(super::ddl::CAPTURE_TABLE);
        if self.set_aside_row(file, r.seq.max(0) as u64, &reason, &data) {
            self.to_delete.push(r.id());
        }
    }

    /// Writes a row that cannot become an event to the quarantine; false (and the row
    /// is kept) when the quarantine cannot be written.
    fn set_aside_row(&mut self, file: &Path, offset: u64, reason: &str, data: &str) -> bool {
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
    fn flush(&mut self) -> Result<(), Stopping> {
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
    fn apply_acks(&mut self) {
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
    fn finish(mut self) {
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

    fn publish_status(&mut self, force: bool) {
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

fn row_op(op: &str) -> Result<Op, String> {
    match op {
        "c" => Ok(Op::Create),
        "u" => Ok(Op::Update),
        "d" => Ok(Op::Delete),
        other => Err(format!("op `{other}` is not c, u or d")),
    }
}

/// Parses a JSON image of a row of `def`, giving binary and date-time columns their types.
pub(crate) fn parse_image(def: &TableDef, what: &str, json: &str) -> Result<Record, String> {
    let r =
        parse_object(json.as_bytes()).map_err(|e| format!("{what} is not a JSON object: {e}"))?;
    type_image(def, what, r)
}

/// Gives the binary and date-time columns of `def` in `r` their types.
fn type_image(def: &TableDef, what: &str, mut r: Record) -> Result<Record, String> {
    for col in &def.binary {
        if let Some(Value::Text(t)) = r.get(col) {
            let hex = t.strip_prefix("\\x").unwrap_or(t);
            let bytes = decode_hex(hex)
                .ok_or_else(|| format!("{what}: binary column `{col}` is not hex text"))?;
            r.push(col.clone(), Value::Bytes(bytes));
        }
    }
    for col in &def.timestamps {
        // In place: once per date-time column of every image.
        if let Some(v) = r.get_mut(col) {
            if let Value::Text(t) = v {
                *v = Value::Timestamp(super::timestamps::iso_owned(std::mem::take(t)));
            }
        }
    }
    Ok(r)
}

/// Appends `n` in decimal, as `{n}` writes it.
fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// The key columns of `row` as one comparable text.
///
/// A number, a decimal, a text and a timestamp are taken by their text, whatever their
/// JSON type: one key column has one type, but when its type changes (`int` to `text`)
/// the capture rows written before carry `1` and the row found has `"1"`, which must
/// be the same key (else its change would look like a delete).
fn key_text(def: &TableDef, row: &Record) -> Result<String, String> {
    let mut buf = Vec::with_capacity(32);
    for k in &def.key {
        let v = row
            .get(k)
            .ok_or_else(|| format!("key column `{k}` is missing"))?;
        let start = buf.len();
        match v {
            Value::Int(i) => buf.extend_from_slice(i.to_string().as_bytes()),
            Value::Decimal(t) | Value::Text(t) | Value::Timestamp(t) => {
                buf.extend_from_slice(t.as_bytes())
            }
            other => encode_value(other, &mut buf),
        }
        // The length after each value: no two keys of several columns run together.
        let len = buf.len() - start;
        buf.push(0);
        buf.extend_from_slice(len.to_string().as_bytes());
        buf.push(0);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The columns a capture row's key `pk` is looked up by in table `def`, and the key:
///
/// - the table's primary key, when `pk` has its columns;
/// - else the columns `pk` has, when the table has them all (its primary key changed
///   and the installed triggers still record the old one);
/// - else, when `pk` has as many columns as the primary key and each one it has not
///   is no longer a column of the table, the primary key, taken in order (a key column
///   renamed: SQLite's triggers then record its value under the old name).
///
/// A key without a value (PostgreSQL's trigger records a renamed key column as null)
/// cannot be looked up: an error, never a lookup of NULL (which finds nothing).
///
/// Returns the columns (as `def` keyed by them), the key, and, when the columns were
/// renamed, the key as JSON under the new names (the values as the trigger wrote them).
#[allow(clippy::type_complexity)]
fn lookup_key(
    def: &TableDef,
    json: &str,
    pk: Record,
) -> Result<(TableDef, Record, Option<String>), String> {
    let cols: Vec<String> = pk.iter().map(|(c, _)| c.to_owned()).collect();
    let lookup = if def.key.iter().all(|k| cols.contains(k)) {
        def.key.clone()
    } else if !cols.is_empty() && cols.iter().all(|c| def.columns.contains(c)) {
        cols.clone()
    } else if cols.len() == def.key.len()
        && cols
            .iter()
            .zip(&def.key)
            .all(|(c, k)| c == k || !def.columns.contains(c))
    {
        // The values as written (not typed under the old names), under the new names.
        let raw =
            parse_object(json.as_bytes()).map_err(|e| format!("pk is not a JSON object: {e}"))?;
        let mut renamed = Record::with_capacity(cols.len());
        for ((_, v), k) in raw.into_fields().zip(&def.key) {
            renamed.push(k.clone(), v);
        }
        let json = encode_key(&renamed);
        let typed = type_image(def, "pk", renamed)?;
        let (by, key) = with_values(def, def.key.clone(), typed)?;
        return Ok((by, key, Some(json)));
    } else {
        return Err(format!(
            "the key ({}) names no key the table has (its primary key is ({}))",
            cols.join(", "),
            def.key.join(", ")
        ));
    };
    let (by, key) = with_values(def, lookup, pk)?;
    Ok((by, key, None))
}

fn with_values(
    def: &TableDef,
    lookup: Vec<String>,
    key: Record,
) -> Result<(TableDef, Record), String> {
    if let Some(k) = lookup
        .iter()
        .find(|k| key.get(k).is_none_or(|v| *v == Value::Null))
    {
        return Err(format!("the key has no value for `{k}`"));
    }
    let mut only = Record::with_capacity(lookup.len());
    for k in &lookup {
        if let Some(v) = key.get(k) {
            only.push(k.clone(), v.clone());
        }
    }
    Ok((
        TableDef {
            key: lookup,
            ..def.clone()
        },
        only,
    ))
}

/// What decides the text of a key's values in `def`: whether each column of `key` is
/// binary, a date-time, in UTC.
fn key_shape(def: &TableDef, key: &[String]) -> Vec<(bool, bool, bool)> {
    key.iter()
        .map(|k| {
            (
                def.binary.contains(k),
                def.timestamps.contains(k),
                def.utc.contains(k),
            )
        })
        .collect()
}

/// A key as the JSON object the connection looks it up by.
fn encode_key(key: &Record) -> String {
    let mut buf = Vec::with_capacity(32);
    encode_record(key, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The key columns of `row`, and their values as text for a position (`445`,
/// `"R1",7`).
fn key_of(def: &TableDef, row: &Record) -> Result<(Record, String), String> {
    let mut key = Record::with_capacity(def.key.len());
    let mut text = Vec::with_capacity(16);
    for (i, k) in def.key.iter().enumerate() {
        let v = row
            .get(k)
            .ok_or_else(|| format!("key column `{k}` is missing"))?;
        if i > 0 {
            text.push(b',');
        }
        encode_value(v, &mut text);
        key.push(k.clone(), v.clone());
    }
    Ok((key, String::from_utf8_lossy(&text).into_owned()))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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
mod tests {
    use super::*;

    fn def() -> TableDef {
        TableDef {
            name: "t".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "b".into(), "at".into()],
            binary: vec!["b".into()],
            timestamps: vec!["at".into()],
            utc: Vec::new(),
        }
    }

    #[test]
    fn integers_are_written_as_format_writes_them() {
        for n in [0, 1, -1, 9, 10, -10, 1_764_412_345_678, i64::MAX, i64::MIN] {
            let mut s = String::from("x");
            push_int(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_integer_is_written_as_format_writes_it(n in proptest::num::i64::ANY) {
            let mut s = String::new();
            push_int(&mut s, n);
            proptest::prop_assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn images_get_binary_and_timestamp_types() {
        let r = parse_image(
            &def(),
            "after",
            r#"{"id": 1.50, "b": "\\x00ff", "at": "2026-11-21 10:00:00.5"}"#,
        )
        .unwrap();
        assert_eq!(r.get("id"), Some(&Value::Decimal("1.50".into())));
        assert_eq!(r.get("b"), Some(&Value::Bytes(vec![0, 255])));
        assert_eq!(
            r.get("at"),
            Some(&Value::Timestamp("2026-11-21T10:00:00.5".into()))
        );
        let r = parse_image(&def(), "after", r#"{"id": 1, "b": "0A"}"#).unwrap();
        assert_eq!(r.get("b"), Some(&Value::Bytes(vec![10])));
        let e = parse_image(&def(), "after", r#"{"id": 1, "b": "xyz"}"#).unwrap_err();
        assert!(e.contains("binary column `b`"), "{e}");
        let e = parse_image(&def(), "pk", "[1]").unwrap_err();
        assert!(e.starts_with("pk is not a JSON object"), "{e}");
    }

    #[test]
    fn late_batches_are_bounded_and_hold_back_newer_rows() {
        let flying: HashSet<i64> = [2, 4, 6].into_iter().collect();
        assert_eq!(LateBatch::probe_limit(&flying), 4);
        assert!(!LateBatch::any(3, &flying));
        assert!(LateBatch::any(4, &flying));
        assert_eq!(LateBatch::sweep_limit(&flying, 3), 6);
        // Every late row listed: newer rows may follow, up to the limit.
        let b = LateBatch::from_sweep(&[1, 2, 4, 5, 6], &flying, 3);
        assert_eq!(b.seqs, [1, 5]);
        assert!(b.all);
        assert_eq!(b.fresh_limit(3), 1);
        assert!(!b.full(2, 3));
        assert!(b.full(3, 3));
        // More late rows than a read takes: the first `limit`, and nothing newer.
        let b = LateBatch::from_sweep(&[1, 2, 3, 4, 5, 6], &flying, 3);
        assert_eq!(b.seqs, [1, 3, 5]);
        assert!(!b.all);
        assert_eq!(b.fresh_limit(3), 0);
        assert!(b.full(3, 3));
        // Exactly `limit` late rows, but the sweep stopped at its limit: there may be more.
        let b = LateBatch::from_sweep(&[1, 2, 3, 4, 5, 6], &flying, 3);
        assert!(!b.all);
        let b = LateBatch::from_sweep(&[1, 2, 3, 5], &HashSet::from([2]), 3);
        assert_eq!(b.seqs, [1, 3, 5]);
        assert!(!b.all, "the sweep was full: rows may lie beyond it");
        let b = LateBatch::from_sweep(&[1, 2, 3], &HashSet::from([2]), 3);
        assert!(b.all);
        assert_eq!(b.fresh_limit(3), 1);
        assert_eq!(LateBatch::none().fresh_limit(3), 3);
    }

    #[test]
    fn key_text_takes_a_key_by_its_text_whatever_its_json_type() {
        // Before and after `ALTER COLUMN id TYPE text`.
        let a = parse_object(br#"{"id": 7}"#).unwrap();
        let b = parse_object(br#"{"id": "7"}"#).unwrap();
        assert_eq!(key_text(&def(), &a).unwrap(), key_text(&def(), &b).unwrap());
        // Two columns never run together.
        let mut two = def();
        two.key = vec!["id".into(), "b".into()];
        let c = parse_object(br#"{"id": "a\u0000", "b": "b"}"#).unwrap();
        let d = parse_object(br#"{"id": "a", "b": "\u0000b"}"#).unwrap();
        assert_ne!(key_text(&two, &c).unwrap(), key_text(&two, &d).unwrap());
    }

    #[test]
    fn key_text_is_the_same_for_the_same_key() {
        let a = parse_image(&def(), "pk", r#"{"id": 7}"#).unwrap();
        let b = parse_image(&def(), "row", r#"{"b": null, "id": 7, "at": null}"#).unwrap();
        assert_eq!(key_text(&def(), &a).unwrap(), key_text(&def(), &b).unwrap());
        let c = parse_image(&def(), "pk", r#"{"id": 8}"#).unwrap();
        assert_ne!(key_text(&def(), &a).unwrap(), key_text(&def(), &c).unwrap());
        assert!(key_text(&def(), &Record::new()).is_err());
    }

    #[test]
    fn keys_are_looked_up_by_the_columns_their_capture_rows_carry() {
        let pk = |j: &str| parse_object(j.as_bytes()).unwrap();
        // The primary key, as usual.
        let (by, key, json) = lookup_key(&def(), r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
        assert_eq!((by.key, key.len(), json), (vec!["id".to_owned()], 1, None));
        // The key widened to (id, b): the triggers still record (id).
        let wide = TableDef {
            key: vec!["id".into(), "at".into()],
            ..def()
        };
        let (by, _, json) = lookup_key(&wide, r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
        assert_eq!((by.key, json), (vec!["id".to_owned()], None));
        // The key column renamed (SQLite records the value under the old name).
        let renamed = TableDef {
            key: vec!["appt_id".into()],
            columns: vec!["appt_id".into(), "b".into(), "at".into()],
            ..def()
        };
        let (by, key, json) = lookup_key(&renamed, r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
        assert_eq!(by.key, ["appt_id"]);
        assert_eq!(key.get("appt_id"), Some(&Value::Int(7)));
        assert_eq!(json.as_deref(), Some(r#"{"appt_id":7}"#));
        // A key recorded as null (PostgreSQL, key column renamed) is never looked up.
        let e = lookup_key(&renamed, r#"{"id": null}"#, pk(r#"{"id": null}"#)).unwrap_err();
        assert!(e.contains("no value for `appt_id`"), "{e}");
        let e = lookup_key(&def(), r#"{"id": null}"#, pk(r#"{"id": null}"#)).unwrap_err();
        assert!(e.contains("no value for `id`"), "{e}");
        // A key that names nothing the table has.
        let e = lookup_key(&def(), "{}", pk("{}")).unwrap_err();
        assert!(e.contains("names no key the table has"), "{e}");
        let e = lookup_key(&renamed, r#"{"x": 1, "y": 2}"#, pk(r#"{"x": 1, "y": 2}"#)).unwrap_err();
        assert!(e.contains("its primary key is (appt_id)"), "{e}");
    }
}
