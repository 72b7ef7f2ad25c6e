//! Snapshots of a trigger source's tables: every existing row as an event with op `r`
//! and `source.snapshot = true`.
//!
//! **Chunks.** A table is read in key order, [`CHUNK_ROWS`] rows at a time: the first
//! chunk from the start, each next one from the rows whose key is greater than the last
//! key of the chunk before. A chunk is one statement, so one consistent view of its rows.
//!
//! **Interleaving with the change stream.** The drain thread reads chunks between its
//! reads of the capture table, and a chunk's events go to the sink in the same sequence
//! as change events. A chunk read at moment T shows every change committed before T. A
//! change committed after T has its capture row committed after T too, so the drain
//! reads it after the chunk and its event follows the chunk's in the stream. So for each
//! key the last event in the stream is either its snapshot row (nothing changed it after
//! T) or its latest change: replaying the stream ends at the table as it is. A row may be
//! shown by both (a change event before its snapshot row, or a snapshot row of a key
//! whose insert is also in the stream); the stream converges, and nothing is lost. While
//! the capture table has a backlog the drain reads changes first; chunks fill the gaps.
//!
//! **Resuming.** Progress is a checkpoint, `state_dir/snapshot/<source>.json`: the table
//! being read and the key of the last row of the last chunk whose events are all
//! acknowledged (or spooled), written at most every 250 ms and at the end of each table.
//! Only the key ([`key_only`]): the rest of the row may hold fields the source's `map.drop`
//! says must never be copied on the host. A checkpoint written by lockstep 0.1 holds the
//! whole row; it is cut down to the key ([`Snapshots::rekey`]) and written again before
//! the next chunk is read. After a crash
//! the snapshot goes on from there. A snapshot row's position is the snapshot's number,
//! the table and the row's key, so a row read again after a crash has the same
//! `Nats-Msg-Id` as before and JetStream drops the repeat. (If the row changed in
//! between, the repeat being dropped is harmless: the change's own event follows.)
//!
//! **Totals.** The rows to read are the catalog's estimate ([`estimate_sql`]), looked up
//! once per snapshot and kept in the checkpoint; never a `count(*)`, which on a big
//! table outlasts the watchdog and, after the restart, runs again.
//!
//! **Requests.** `snapshot = "initial"` starts snapshot 1 when the source has no
//! snapshot checkpoint. `lockstep snapshot` writes `state_dir/snapshot/<source>.request`;
//! the drain takes it when no snapshot is running, gives it the next number, writes its
//! checkpoint and only then deletes the request, so a crash in between repeats nothing
//! worse than the request.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ddl::Dialect;
use crate::clock::now_ms;
use crate::disk::{Disk, RealDisk};
use crate::pipeline::checkpoint;

/// Rows per chunk.
pub const CHUNK_ROWS: usize = 1024;
/// Chunks read but not yet acknowledged, at most.
const MAX_CHUNKS: usize = 8;
/// Checkpoints are written at most this often (and at the end of every table).
const WRITE_EVERY: Duration = Duration::from_millis(250);
/// How often the drain looks for a request from `lockstep snapshot`.
const REQUEST_EVERY: Duration = Duration::from_secs(1);

/// A snapshot's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 1 for the first snapshot of the source, then one more for each.
    pub id: u64,
    pub tables: Vec<String>,
    /// The index in `tables` of the table being read; `tables.len()` once finished.
    pub table: usize,
    /// The key columns of the last row (a JSON object, each member as the database gave
    /// it) of the last finished chunk of `table`; `None` at the start of a table.
    pub after: Option<String>,
    pub rows_done: u64,
    /// The rows of all its tables when it started, for progress bars.
    pub rows_total: Option<u64>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.table >= self.tables.len()
    }
}

/// What `lockstep snapshot` asks of the running agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The tables to read; empty: every table of the source.
    pub tables: Vec<String>,
    pub requested_ms: i64,
}

pub fn progress_path(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join("snapshot").join(format!("{source}.json"))
}

pub fn request_path(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join("snapshot").join(format!("{source}.request"))
}

/// The source's last snapshot checkpoint, if any.
pub fn load(state_dir: &Path, source: &str) -> Result<Option<Progress>, String> {
    let path = progress_path(state_dir, source);
    let Some(data) = checkpoint::read(&path).map_err(|e| format!("{}: {e}", path.display()))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| format!("{} is not a snapshot checkpoint: {e}", path.display()))
}

/// Queues a snapshot of `tables` (all, when empty), merged with one already queued.
pub fn request(state_dir: &Path, source: &str, tables: &[String]) -> io::Result<PathBuf> {
    let path = request_path(state_dir, source);
    let mut req = match checkpoint::read(&path)? {
        Some(d) => serde_json::from_slice::<Request>(&d).unwrap_or_default(),
        None => Request::default(),
    };
    let all = tables.is_empty() || (req.requested_ms > 0 && req.tables.is_empty());
    if all {
        req.tables.clear();
    } else {
        for t in tables {
            if !req.tables.contains(t) {
                req.tables.push(t.clone());
            }
        }
    }
    req.requested_ms = now_ms();
    let data = serde_json::to_vec(&req).expect("a request serializes");
    RealDisk.replace(&path, &data)?;
    Ok(path)
}

/// The statement that reads the catalog's estimate of the rows of `table` (one row, one
/// number; negative or NULL when the database has none), or `None` where there is no
/// cheap estimate (SQLite). Never a `count(*)`: on a big table that scans it all, for
/// longer than the watchdog allows. The estimate is as fresh as the database's
/// statistics (`ANALYZE`); it only sizes progress bars.
pub fn estimate_sql(d: Dialect, table: &str) -> Option<String> {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let (schema, name) = match table.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, table),
    };
    Some(match d {
        Dialect::Postgres => format!(
            "SELECT reltuples::float8 FROM pg_catalog.pg_class WHERE oid = to_regclass({})",
            lit(&d.table(table))
        ),
        Dialect::MariaDb => format!(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            schema.map_or("DATABASE()".to_owned(), lit),
            lit(name)
        ),
        Dialect::SqlServer => format!(
            "SELECT SUM(rows) FROM sys.partitions WHERE object_id = OBJECT_ID({}) AND index_id IN (0, 1)",
            lit(&d.table(table))
        ),
        Dialect::Oracle => match schema {
            Some(owner) => format!(
                "SELECT NUM_ROWS FROM ALL_TABLES WHERE OWNER = {} AND TABLE_NAME = {}",
                lit(owner),
                lit(name)
            ),
            None => format!("SELECT NUM_ROWS FROM USER_TABLES WHERE TABLE_NAME = {}", lit(name)),
        },
        Dialect::Db2 => format!(
            "SELECT CARD FROM SYSCAT.TABLES WHERE TABSCHEMA = {} AND TABNAME = {}",
            schema.map_or("CURRENT SCHEMA".to_owned(), lit),
            lit(name)
        ),
        Dialect::Sqlite => return None,
    })
}

/// The estimate as the catalog gave it: `None` when it has none (NULL, or negative, as
/// PostgreSQL's -1 for a table never analyzed and DB2's -1).
pub fn parse_estimate(v: Option<&str>) -> Option<u64> {
    let n: f64 = v?.trim().parse().ok()?;
    (n >= 0.0).then_some(n.round() as u64)
}

/// The members of the JSON object `row` named in `key`, copied verbatim, as an object:
/// what resuming a snapshot needs of its last row, and nothing else of it.
pub fn key_only(row: &str, key: &[String]) -> Result<String, String> {
    let b = row.as_bytes();
    let bad = |why: &str| format!("the last row read is not a JSON object ({why})");
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(bad("no `{`"));
    }
    i += 1;
    let mut out = String::from("{");
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => break,
            Some(b'"') => {}
            _ => return Err(bad("a member without a name")),
        }
        let name_start = i;
        let name_end = skip_value(b, i).ok_or_else(|| bad("an unterminated name"))?;
        let name: String =
            serde_json::from_str(&row[name_start..name_end]).map_err(|_| bad("a bad name"))?;
        i = skip_ws(b, name_end);
        if b.get(i) != Some(&b':') {
            return Err(bad("no `:` after a name"));
        }
        let v_start = skip_ws(b, i + 1);
        let v_end = skip_value(b, v_start).ok_or_else(|| bad("a bad value"))?;
        if key.contains(&name) {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&row[name_start..name_end]);
            out.push(':');
            out.push_str(&row[v_start..v_end]);
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Err(bad("no `,` or `}` after a value")),
        }
    }
    out.push('}');
    Ok(out)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The end of the JSON value (string, number, literal, object or array) at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            loop {
                match b.get(j)? {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_value(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// A chunk whose events are out: once `last_event` is acknowledged, the checkpoint can
/// move past it.
struct Chunk {
    last_event: u64,
    table: usize,
    after: Option<String>,
    rows: u64,
    /// The chunk was the table's last.
    table_done: bool,
}

/// The snapshot side of one trigger source's drain.
pub struct Snapshots {
    state_dir: PathBuf,
    source: String,
    /// The source's tables, for requests of all of them.
    all: Vec<String>,
    /// The running snapshot, or the last one.
    progress: Option<Progress>,
    /// Where the next chunk is read: a table index and the row it follows. Ahead of the
    /// checkpoint by the chunks in flight.
    next: Option<(usize, Option<String>)>,
    chunks: VecDeque<Chunk>,
    written: Instant,
    /// Progress moved since the checkpoint was last written.
    dirty: bool,
    /// The rows of the running snapshot were estimated (or found to have no estimate).
    estimated: bool,
    request_checked: Option<Instant>,
}

impl Snapshots {
    /// Loads the checkpoint; with `initial`, starts snapshot 1 if the source never had one.
    pub fn open(state_dir: &Path, source: &str, all: &[String], initial: bool) -> Self {
        let mut s = Snapshots {
            state_dir: state_dir.to_owned(),
            source: source.to_owned(),
            all: all.to_vec(),
            progress: None,
            next: None,
            chunks: VecDeque::new(),
            written: Instant::now(),
            dirty: false,
            estimated: false,
            request_checked: None,
        };
        match load(state_dir, source) {
            Ok(Some(p)) => {
                if !p.done() {
                    tracing::info!(
                        "source {source}: resuming snapshot {} at table `{}` ({} of {}), {} row(s) done",
                        p.id,
                        p.tables[p.table],
                        p.table + 1,
                        p.tables.len(),
                        p.rows_done
                    );
                    s.next = Some((p.table, p.after.clone()));
                }
                s.progress = Some(p);
            }
            Ok(None) if initial => s.start(1, all.to_vec()),
            Ok(None) => {}
            Err(e) => {
                // Repeating a snapshot is harmless; skipping one is not.
                tracing::error!("source {source}: {e}; taking the snapshot again from the start");
                let id = 1 + now_ms().max(0) as u64 / 1000;
                s.start(id, all.to_vec());
            }
        }
        s
    }

    fn start(&mut self, id: u64, tables: Vec<String>) {
        tracing::info!(
            "source {}: starting snapshot {id} of {} table(s): {}",
            self.source,
            tables.len(),
            tables.join(", ")
        );
        let p = Progress {
            id,
            tables,
            table: 0,
            after: None,
            rows_done: 0,
            rows_total: None,
            started_ms: now_ms(),
            finished_ms: None,
        };
        self.next = (!p.done()).then_some((0, None));
        self.progress = Some(p);
        self.chunks.clear();
        self.estimated = false;
        self.save();
    }

    /// Takes a queued request when no snapshot is running (looked for once a second).
    pub fn poll_request(&mut self) {
        if self.running()
            || self
                .request_checked
                .is_some_and(|t| t.elapsed() < REQUEST_EVERY)
        {
            return;
        }
        self.request_checked = Some(Instant::now());
        let path = request_path(&self.state_dir, &self.source);
        let req = match checkpoint::read(&path) {
            Ok(None) => return,
            Ok(Some(d)) => serde_json::from_slice::<Request>(&d).unwrap_or_else(|e| {
                tracing::warn!(
                    "source {}: {} is not a snapshot request ({e}); snapshotting every table",
                    self.source,
                    path.display()
                );
                Request::default()
            }),
            Err(e) => {
                tracing::warn!(
                    "source {}: cannot read {}: {e}",
                    self.source,
                    path.display()
                );
                return;
            }
        };
        let mut tables = Vec::new();
        for t in &req.tables {
            if self.all.contains(t) {
                tables.push(t.clone());
            } else {
                tracing::warn!(
                    "source {}: a snapshot of `{t}` was asked for, but it is not one of the source's tables",
                    self.source
                );
            }
        }
        if req.tables.is_empty() {
            tables = self.all.clone();
        }
        let id = self.progress.as_ref().map_or(0, |p| p.id) + 1;
        self.start(id, tables);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(
                "source {}: cannot remove {}: {e}",
                self.source,
                path.display()
            );
        }
    }

    pub fn running(&self) -> bool {
        self.progress.as_ref().is_some_and(|p| !p.done())
    }

    pub fn id(&self) -> u64 {
        self.progress.as_ref().map_or(0, |p| p.id)
    }

    /// The snapshot's tables, when their rows have not been estimated yet (once per
    /// snapshot and run: an estimate is a catalog lookup, and a checkpointed one is kept).
    pub fn to_count(&self) -> Option<&[String]> {
        let p = self.progress.as_ref()?;
        (!p.done() && p.rows_total.is_none() && !self.estimated).then_some(&p.tables)
    }

    /// The catalog's estimate of the snapshot's rows; `None` when a table has none.
    pub fn set_total(&mut self, rows: Option<u64>) {
        self.estimated = true;
        if let Some(p) = &mut self.progress {
            p.rows_total = rows;
            match rows {
                Some(rows) => tracing::info!(
                    "source {}: snapshot {} has about {rows} row(s) to read (the database's estimate)",
                    self.source,
                    p.id
                ),
                None => tracing::info!(
                    "source {}: snapshot {}: the database has no estimate of its rows; no total is shown",
                    self.source,
                    p.id
                ),
            }
            self.save();
        }
    }

    /// The next chunk to read: its table and the row it follows, unless enough chunks are
    /// in flight already.
    pub fn want(&self) -> Option<(&str, Option<&str>)> {
        if self.chunks.len() >= MAX_CHUNKS {
            return None;
        }
        let (t, after) = self.next.as_ref()?;
        let p = self.progress.as_ref()?;
        Some((p.tables[*t].as_str(), after.as_deref()))
    }

    /// A chunk of `rows` rows was read (the last one `last`) and its events handed on, up
    /// to `last_event`; `full` when the table may have more.
    pub fn read(&mut self, rows: usize, last: Option<String>, full: bool, last_event: u64) {
        let Some((t, after)) = self.next.take() else {
            return;
        };
        let tables = self.progress.as_ref().map_or(0, |p| p.tables.len());
        let chunk_after = last.or(after);
        self.chunks.push_back(Chunk {
            last_event,
            table: t,
            after: chunk_after.clone(),
            rows: rows as u64,
            table_done: !full,
        });
        self.next = if full {
            Some((t, chunk_after))
        } else if t + 1 < tables {
            Some((t + 1, None))
        } else {
            None
        };
    }

    /// Replaces the row `old` the next chunk follows by its key `key`: a checkpoint of
    /// lockstep 0.1 held the whole row. The checkpoint is written again at once, without it.
    pub fn rekey(&mut self, old: &str, key: String) {
        if let Some((_, a)) = &mut self.next {
            if a.as_deref() == Some(old) {
                *a = Some(key.clone());
            }
        }
        if let Some(p) = &mut self.progress {
            if p.after.as_deref() == Some(old) {
                p.after = Some(key);
                tracing::info!(
                    "source {}: snapshot {}: the checkpoint of an older lockstep held the whole last \
                     row read; it now holds its key only",
                    self.source,
                    p.id
                );
                self.save();
            }
        }
    }

    /// Moves the checkpoint past the chunks whose events are all acknowledged.
    pub fn acked(&mut self, watermark: u64) {
        let mut moved = false;
        let mut table_done = false;
        while self
            .chunks
            .front()
            .is_some_and(|c| c.last_event <= watermark)
        {
            let Some(c) = self.chunks.pop_front() else {
                break;
            };
            let Some(p) = &mut self.progress else {
                continue;
            };
            p.rows_done += c.rows;
            moved = true;
            if c.table_done {
                table_done = true;
                tracing::info!(
                    "source {}: snapshot {}: table `{}` read ({} row(s) so far)",
                    self.source,
                    p.id,
                    p.tables[c.table],
                    p.rows_done
                );
                p.table = c.table + 1;
                p.after = None;
            } else {
                p.table = c.table;
                p.after = c.after;
            }
        }
        let Some(p) = &mut self.progress else {
            return;
        };
        if moved && p.done() && p.finished_ms.is_none() {
            let now = now_ms();
            p.finished_ms = Some(now);
            tracing::info!(
                "source {}: snapshot {} finished: {} row(s) of {} table(s) in {:.1} s",
                self.source,
                p.id,
                p.rows_done,
                p.tables.len(),
                (now - p.started_ms) as f64 / 1000.0
            );
        }
        // Written at the end of each table, and otherwise at most every WRITE_EVERY —
        // also when the acks stop coming (a broker outage), so that a restart does not
        // read again chunks that were acknowledged.
        self.dirty |= moved;
        if self.dirty && (table_done || self.written.elapsed() >= WRITE_EVERY) {
            self.save();
        }
    }

    fn save(&mut self) {
        let Some(p) = &self.progress else {
            return;
        };
        self.written = Instant::now();
        self.dirty = false;
        let path = progress_path(&self.state_dir, &self.source);
        let data = serde_json::to_vec(p).expect("progress serializes");
        if let Err(e) = RealDisk.replace(&path, &data) {
            // The snapshot goes on; after a crash it resumes from an older checkpoint.
            tracing::error!(
                "source {}: cannot write the snapshot checkpoint {}: {e}",
                self.source,
                path.display()
            );
        }
    }

    /// For `/status`.
    pub fn status(&self) -> serde_json::Value {
        match &self.progress {
            None => serde_json::Value::Null,
            Some(p) => serde_json::json!({
                "id": p.id, "running": !p.done(),
                "table": p.tables.get(p.table), "rows_done": p.rows_done,
                "rows_total": p.rows_total, "finished_ms": p.finished_ms,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn totals_are_catalog_estimates_never_counts() {
        for d in Dialect::ALL {
            let sql = estimate_sql(d, "O'Hara.permits");
            assert!(
                sql.as_deref().is_none_or(|s| !s.contains("count(")),
                "{d:?}: {sql:?}"
            );
        }
        assert_eq!(estimate_sql(Dialect::Sqlite, "permits"), None);
        let m = estimate_sql(Dialect::MariaDb, "O'Hara.permits").unwrap();
        assert!(
            m.contains("TABLE_SCHEMA = 'O''Hara' AND TABLE_NAME = 'permits'"),
            "{m}"
        );
        let m = estimate_sql(Dialect::MariaDb, "permits").unwrap();
        assert!(m.contains("TABLE_SCHEMA = DATABASE()"), "{m}");
        assert_eq!(parse_estimate(Some("-1")), None);
        assert_eq!(parse_estimate(None), None);
        assert_eq!(parse_estimate(Some(" 20040 ")), Some(20_040));
        assert_eq!(parse_estimate(Some("1.5e6")), Some(1_500_000));
    }

    #[test]
    fn the_checkpoint_follows_acknowledged_chunks_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Snapshots::open(dir.path(), "src", &tables(), true);
        assert!(s.running());
        assert_eq!(s.want(), Some(("a", None)));
        s.read(2, Some("{\"id\":2}".into()), true, 2);
        assert_eq!(s.want(), Some(("a", Some("{\"id\":2}"))));
        s.read(1, Some("{\"id\":3}".into()), false, 3);
        assert_eq!(s.want(), Some(("b", None)));
        s.read(0, None, false, 3);
        assert_eq!(s.want(), None, "nothing after the last table");
        s.acked(2);
        s.save();
        let p = load(dir.path(), "src").unwrap().unwrap();
        assert_eq!(
            (p.table, p.after.as_deref(), p.rows_done),
            (0, Some("{\"id\":2}"), 2)
        );
        // A crash here resumes after the first chunk.
        let again = Snapshots::open(dir.path(), "src", &tables(), true);
        assert_eq!(again.want(), Some(("a", Some("{\"id\":2}"))));
        s.acked(3);
        let p = load(dir.path(), "src").unwrap().unwrap();
        assert!(p.done(), "{p:?}");
        assert_eq!(p.rows_done, 3);
        assert!(p.finished_ms.is_some());
        // A finished snapshot is not taken again at the next start.
        let again = Snapshots::open(dir.path(), "src", &tables(), true);
        assert!(!again.running());
        assert_eq!(again.want(), None);
    }

    #[test]
    fn requests_are_numbered_merged_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Snapshots::open(dir.path(), "src", &tables(), false);
        assert!(!s.running(), "no snapshot without `initial` or a request");
        request(dir.path(), "src", &["b".into()]).unwrap();
        request(dir.path(), "src", &["b".into(), "zz".into()]).unwrap();
        s.poll_request();
        assert_eq!(s.id(), 1);
        assert_eq!(s.want(), Some(("b", None)));
        assert!(!request_path(dir.path(), "src").exists());
        s.read(0, None, false, 0);
        s.acked(0);
        assert!(!s.running());
        request(dir.path(), "src", &[]).unwrap();
        s.request_checked = None;
        s.poll_request();
        assert_eq!(s.id(), 2);
        assert_eq!(s.to_count(), Some(&tables()[..]));
    }

    #[test]
    fn only_the_key_of_the_last_row_is_kept() {
        let key = vec!["id".to_owned(), "re\"gion".to_owned()];
        let row = r#"{ "ssn" : "123-45-6789", "id": 12345678901234567890.10, "re\"gion":"N,E}",
            "doc": {"a": [1, "x\"}"]}, "n": null, "ok": true}"#;
        assert_eq!(
            key_only(row, &key).unwrap(),
            r#"{"id":12345678901234567890.10,"re\"gion":"N,E}"}"#
        );
        assert_eq!(key_only("{}", &key).unwrap(), "{}");
        assert!(key_only("[1]", &key).is_err());
        assert!(key_only(r#"{"id": "#, &key).is_err());
    }

    #[test]
    fn an_old_checkpoint_with_the_whole_row_is_cut_to_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Snapshots::open(dir.path(), "src", &tables(), true);
        let row = r#"{"id":2,"ssn":"123-45-6789"}"#;
        s.read(2, Some(row.into()), true, 2);
        s.acked(2);
        s.save();
        let mut again = Snapshots::open(dir.path(), "src", &tables(), true);
        assert_eq!(again.want(), Some(("a", Some(row))));
        again.rekey(row, key_only(row, &["id".into()]).unwrap());
        assert_eq!(again.want(), Some(("a", Some(r#"{"id":2}"#))));
        let text = std::fs::read_to_string(progress_path(dir.path(), "src")).unwrap();
        assert!(!text.contains("123-45-6789"), "{text}");
    }

    #[test]
    fn a_damaged_checkpoint_means_a_new_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("snapshot")).unwrap();
        std::fs::write(progress_path(dir.path(), "src"), b"{not json").unwrap();
        let s = Snapshots::open(dir.path(), "src", &tables(), false);
        assert!(s.running());
        assert_eq!(s.want(), Some(("a", None)));
    }
}
