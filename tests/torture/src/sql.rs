//! The database families over any of the three live databases: MariaDB and SQLite
//! through their ODBC drivers (trigger and poll sources), and several sources on one
//! database (PostgreSQL, MariaDB or SQLite), each owning a table of its own.
//!
//! The workload has pg.rs's shape — transactions of inserts, updates, deletes and key
//! changes by 1 to 3 concurrent writers (one on SQLite), hot keys, NULLs, unicode,
//! 30-digit decimals, timestamps — written in each database's dialect ([`Db`]), plus:
//! binary values (`bytea`, `VARBINARY`, `BLOB`, arriving as base64), a big transaction
//! (up to 100,000 inserted rows, capped by `--big-tx`) sometimes updated whole by a
//! later one, and two rows at a size limit: one just under and one just over it (a
//! trigger source's event over the broker's `max_payload`, which must be refused into
//! `quarantine/<source>.refused.jsonl`; a poll source's value over `max_value_bytes`,
//! which must be quarantined and counted). The rest must arrive.
//!
//! Truth: each table's rows as JSON, read with the database's own client (`psql`,
//! `mariadb`, `sqlite3`); binary values read as hex and compared as base64. Every write
//! sets `v` to a number that grows over the scenario, so the per-key checks of pg.rs
//! apply, per source.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::check::{self, Order, State};
use crate::procs::{lockstep, Res};
use crate::rng::Rng;
use crate::scenario::Source;
use crate::stream::{Msg, Reader};

/// The most rows of a big transaction (`--big-tx N`; 100,000 by default, CI uses less).
pub static BIG_TX_CAP: AtomicU64 = AtomicU64::new(100_000);

/// The broker's `max_payload` (nats-server's default, which the torture brokers keep).
const MAX_PAYLOAD: u64 = 1 << 20;
/// Poll sources' `max_value_bytes` (lockstep's default).
const MAX_VALUE_BYTES: u64 = 64 << 10;
/// Key ranges of the big transaction's rows and of the two size-limit rows, apart from
/// the workload's keys.
const BIG_BASE: i64 = 10_000_000;
const LIMIT_BASE: i64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Pg,
    Maria,
    Lite,
}

impl Db {
    pub fn name(self) -> &'static str {
        match self {
            Db::Pg => "pg",
            Db::Maria => "mariadb",
            Db::Lite => "sqlite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Trigger,
    Poll,
}

/// One source of the scenario and the table it owns.
struct Part {
    name: String,
    table: String,
    kind: Kind,
    /// Trigger: rows mode (before/after images) instead of keys.
    rows: bool,
    debounce: bool,
    /// Poll: `cursor = "v"` with full scans every few seconds.
    cursor: bool,
    hot: Option<u64>,
    /// Per writer, the last new key's ordinal.
    next_id: Vec<i64>,
    /// Per writer, its keys that exist.
    live: Vec<BTreeSet<i64>>,
    /// Per key (`<table>/<id>`), the (op, v) the triggers record.
    history: BTreeMap<String, Vec<(String, i64)>>,
}

impl Part {
    fn order(&self) -> Order {
        if self.kind == Kind::Trigger && !self.rows {
            Order::NonDecreasing
        } else {
            Order::Strict
        }
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::Trigger => format!(
                "{}: trigger {} capture={} debounce={} hot={:?}",
                self.name,
                self.table,
                if self.rows { "rows" } else { "keys" },
                self.debounce,
                self.hot
            ),
            Kind::Poll => format!(
                "{}: poll {} {} hot={:?}",
                self.name,
                self.table,
                if self.cursor { "cursor" } else { "full" },
                self.hot
            ),
        }
    }
}

/// The big transaction: at step `at`, `rows` inserts; at step `update_at`, if any, one
/// update of all of them.
#[derive(Debug, Clone, Copy)]
struct Big {
    part: usize,
    at: usize,
    rows: u64,
    update_at: Option<usize>,
    /// The `v` of its first row.
    first_v: i64,
}

pub struct Sql {
    db: Db,
    /// PostgreSQL schema or MariaDB database.
    ns: String,
    /// The SQLite file.
    path: PathBuf,
    state_dir: PathBuf,
    parts: Vec<Part>,
    per_step: (u64, u64),
    writers: u64,
    rng: Rng,
    v: i64,
    big: Option<Big>,
    /// The step and part of the two size-limit rows.
    limits: Option<(usize, usize)>,
    /// Keys whose only event is over a limit (not in the stream, not in the truth).
    over: BTreeSet<String>,
    changes: u64,
    created: bool,
}

const NAMES: [&str; 8] = [
    "Zürich — 東京 ✓",
    "O'Brien",
    "plain",
    "emoji 🚑",
    "back\\slash",
    "comma, \"quoted\"",
    "two\nlines",
    "tab\there",
];
const AMOUNTS: [&str; 6] = [
    "12345678901234567890.1234567890",
    "0.0000000001",
    "-99999999999999999999.9999999999",
    "12.5",
    "0",
    "31415926535897932384.6264338327",
];

impl Sql {
    /// `multi`: two sources on one database (a trigger source and a trigger or poll
    /// source); else one source of `kind`.
    pub fn draw(
        r: &mut Rng,
        seed: u64,
        dir: &Path,
        db: Db,
        kind: Kind,
        multi: bool,
        steps: usize,
    ) -> Sql {
        let part = |r: &mut Rng, name: &str, table: &str, kind: Kind| Part {
            name: name.to_owned(),
            table: table.to_owned(),
            kind,
            rows: r.chance(50),
            debounce: r.chance(35),
            cursor: r.chance(50),
            hot: r.chance(40).then(|| r.range(1, 6)),
            next_id: Vec::new(),
            live: Vec::new(),
            history: BTreeMap::new(),
        };
        let parts = if multi {
            let second = if r.chance(50) {
                Kind::Trigger
            } else {
                Kind::Poll
            };
            let b = if second == Kind::Trigger {
                "trig2"
            } else {
                "poll"
            };
            vec![
                part(r, "trig", "ta", Kind::Trigger),
                part(r, b, "tb", second),
            ]
        } else {
            let name = if kind == Kind::Trigger {
                "trig"
            } else {
                "poll"
            };
            vec![part(r, name, "t", kind)]
        };
        let per_step = if r.chance(20) { (100, 400) } else { (3, 40) };
        let writers = if db == Db::Lite {
            1
        } else {
            *r.pick(&[1, 1, 2, 3])
        };
        let n_parts = parts.len() as u64;
        let big = r.chance(25).then(|| {
            let at = r.below(steps as u64) as usize;
            let rows = if r.chance(50) {
                100_000
            } else {
                r.range(1_000, 20_000)
            };
            let update_at = (r.chance(50) && at + 1 < steps)
                .then(|| r.range(at as u64 + 1, steps as u64 - 1) as usize);
            Big {
                part: r.below(n_parts) as usize,
                at,
                rows: rows.min(BIG_TX_CAP.load(Ordering::Relaxed)).max(1),
                update_at,
                first_v: 0,
            }
        });
        let limits = r
            .chance(35)
            .then(|| (r.below(steps as u64) as usize, r.below(n_parts) as usize));
        let mut s = Sql {
            db,
            ns: format!("torture_{seed}_{}", std::process::id()),
            path: dir.join("db.sqlite"),
            state_dir: dir.join("state"),
            parts,
            per_step,
            writers,
            rng: r.fork(),
            v: 0,
            big,
            limits,
            over: BTreeSet::new(),
            changes: 0,
            created: false,
        };
        for p in &mut s.parts {
            p.next_id = vec![0; writers as usize];
            p.live = vec![BTreeSet::new(); writers as usize];
        }
        s
    }

    /// The database's command-line client, on the scenario's schema/database/file
    /// (`on_ns`) or the server itself.
    fn cli(&self, on_ns: bool) -> Command {
        match self.db {
            Db::Pg => {
                let mut c = Command::new("psql");
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "test",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                ])
                .args(["-v", "ON_ERROR_STOP=1"])
                .env("PGTZ", "UTC");
                if on_ns {
                    c.env("PGOPTIONS", format!("-c search_path={}", self.ns));
                }
                c
            }
            Db::Maria => {
                let mut c = Command::new("mariadb");
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-u",
                    "root",
                    "-N",
                    "-B",
                    "-r",
                    "--default-character-set=utf8mb4",
                ]);
                if on_ns {
                    c.args(["-D", &self.ns]);
                }
                c
            }
            Db::Lite => {
                let mut c = Command::new("sqlite3");
                c.args(["-bail", "-cmd", ".timeout 30000"]).arg(&self.path);
                c
            }
        }
    }

    /// Runs `sql` with the client; its output, trimmed.
    fn run(&self, on_ns: bool, sql: &str) -> Res<String> {
        run_cli(self.cli(on_ns), self.db, sql)
    }

    fn lit(&self, s: &str) -> String {
        match self.db {
            Db::Maria => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
            _ => format!("'{}'", s.replace('\'', "''")),
        }
    }

    fn begin(&self) -> &'static str {
        match self.db {
            Db::Pg => "BEGIN;\n",
            Db::Maria => "START TRANSACTION;\n",
            Db::Lite => "BEGIN IMMEDIATE;\n",
        }
    }

    /// The ODBC connection string of the database.
    fn odbc(&self) -> String {
        match self.db {
            Db::Pg => format!(
                "DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;ConnSettings=SET search_path TO {}",
                self.ns
            ),
            Db::Maria => format!(
                "DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;PORT=3306;DATABASE={};USER=root;CHARSET=utf8mb4",
                self.ns
            ),
            Db::Lite => format!("DRIVER={{SQLite3}};Database={}", self.path.display()),
        }
    }

    fn create_table(&self, t: &str) -> String {
        match self.db {
            Db::Pg => format!(
                "CREATE TABLE {ns}.{t} (id bigint PRIMARY KEY, v bigint NOT NULL, name text, amount numeric(40,10), note text, at timestamptz, b bytea);\n",
                ns = self.ns
            ),
            Db::Maria => format!(
                "CREATE TABLE {ns}.{t} (id bigint PRIMARY KEY, v bigint NOT NULL, name text, amount decimal(40,10), note longtext, at datetime(6), b varbinary(64)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n",
                ns = self.ns
            ),
            Db::Lite => format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, name TEXT, amount TEXT, note TEXT, at TEXT, b BLOB);\n"
            ),
        }
    }

    /// A key of writer `w` in part `p` that does not exist: a free hot one, or a new one.
    fn new_id(&mut self, p: usize, w: usize) -> Option<i64> {
        let n = self.writers as i64;
        let part = &mut self.parts[p];
        match part.hot {
            Some(h) => {
                let free: Vec<i64> = (0..h as i64)
                    .map(|j| 1 + w as i64 + j * n)
                    .filter(|k| !part.live[w].contains(k))
                    .collect();
                (!free.is_empty()).then(|| *self.rng.pick(&free))
            }
            None => {
                part.next_id[w] += 1;
                Some(part.next_id[w] * n + w as i64)
            }
        }
    }

    /// A new `v` and the other columns' values, as `(column, literal)`.
    fn values(&mut self) -> (i64, Vec<(&'static str, String)>) {
        self.v += 1;
        let r = &mut self.rng;
        let name = (!r.chance(15)).then(|| r.pick(&NAMES).to_string());
        let amount = (!r.chance(15)).then(|| r.pick(&AMOUNTS).to_string());
        let note = (!r.chance(30)).then(|| format!("note {} ✓", self.v));
        let at = (!r.chance(20)).then(|| (r.below(60), r.below(60), r.below(3) * 250_000));
        let bytes = (!r.chance(15)).then(|| {
            let n = r.below(13);
            (0..n)
                .map(|_| {
                    format!(
                        "{:02x}",
                        *r.pick(&[0u64, 0xff, 0x10, 0x41, 0x7f, 0x80]) ^ r.below(2)
                    )
                })
                .collect::<String>()
        });
        let null = || "NULL".to_owned();
        let name = name.map_or_else(null, |s| self.lit(&s));
        let amount = amount.map_or_else(null, |a| {
            if self.db == Db::Lite {
                format!("'{a}'")
            } else {
                a
            }
        });
        let note = note.map_or_else(null, |s| self.lit(&s));
        let at = at.map_or_else(null, |(m, s, f)| match self.db {
            Db::Pg => format!("'2026-11-21 10:{m:02}:{s:02}.{f:06}+00'"),
            Db::Maria => format!("'2026-11-21 10:{m:02}:{s:02}.{f:06}'"),
            Db::Lite => format!("'2026-11-21T10:{m:02}:{s:02}.{f:06}Z'"),
        });
        let b = bytes.map_or_else(null, |h| match self.db {
            Db::Pg => format!("decode('{h}', 'hex')"),
            _ => format!("X'{h}'"),
        });
        (
            self.v,
            vec![
                ("name", name),
                ("amount", amount),
                ("note", note),
                ("at", at),
                ("b", b),
            ],
        )
    }

    fn record(&mut self, p: usize, key: i64, op: &str, v: i64) {
        let t = self.parts[p].table.clone();
        self.parts[p]
            .history
            .entry(format!("{t}/{key}"))
            .or_default()
            .push((op.to_owned(), v));
        self.changes += 1;
    }

    fn last_v(&self, p: usize, id: i64) -> i64 {
        let part = &self.parts[p];
        part.history[&format!("{}/{id}", part.table)]
            .last()
            .map_or(0, |h| h.1)
    }

    /// One statement of writer `w` changing exactly one row of a part's table.
    fn statement(&mut self, w: usize) -> String {
        let p = self.rng.below(self.parts.len() as u64) as usize;
        let t = self.parts[p].table.clone();
        let roll = self.rng.below(100);
        if self.parts[p].live[w].is_empty() || roll < 35 {
            if let Some(id) = self.new_id(p, w) {
                let (v, vals) = self.values();
                self.parts[p].live[w].insert(id);
                self.record(p, id, "c", v);
                let cols: Vec<&str> = vals.iter().map(|c| c.0).collect();
                let lits: Vec<String> = vals.into_iter().map(|c| c.1).collect();
                return format!(
                    "INSERT INTO {t} (id, v, {}) VALUES ({id}, {v}, {});",
                    cols.join(", "),
                    lits.join(", ")
                );
            }
        }
        let any = self.parts[p].live[w].iter().copied().collect::<Vec<_>>();
        let id = *self.rng.pick(&any);
        let last_v = self.last_v(p, id);
        if roll < 75 {
            let (v, vals) = self.values();
            self.record(p, id, "u", v);
            let set: Vec<String> = vals.iter().map(|(c, l)| format!("{c} = {l}")).collect();
            return format!(
                "UPDATE {t} SET v = {v}, {} WHERE id = {id};",
                set.join(", ")
            );
        }
        if roll < 88 {
            self.parts[p].live[w].remove(&id);
            self.record(p, id, "d", last_v);
            return format!("DELETE FROM {t} WHERE id = {id};");
        }
        // A key change: the triggers record a delete of the old key and an insert of the new.
        match self.new_id(p, w) {
            Some(new) => {
                self.v += 1;
                let v = self.v;
                self.parts[p].live[w].remove(&id);
                self.parts[p].live[w].insert(new);
                self.record(p, id, "d", last_v);
                self.record(p, new, "c", v);
                format!("UPDATE {t} SET id = {new}, v = {v} WHERE id = {id};")
            }
            None => {
                self.parts[p].live[w].remove(&id);
                self.record(p, id, "d", last_v);
                format!("DELETE FROM {t} WHERE id = {id};")
            }
        }
    }

    /// The big transaction's inserts, 1,000 rows a statement.
    fn big_insert(&mut self) -> String {
        let Some(mut big) = self.big else {
            return String::new();
        };
        big.first_v = self.v + 1;
        self.big = Some(big);
        let t = self.parts[big.part].table.clone();
        let mut sql = self.begin().to_owned();
        for chunk in (1..=big.rows as i64).collect::<Vec<_>>().chunks(1000) {
            let vals: Vec<String> = chunk
                .iter()
                .map(|k| {
                    self.v += 1;
                    format!("({}, {}, 'big')", BIG_BASE + k, self.v)
                })
                .collect();
            sql.push_str(&format!(
                "INSERT INTO {t} (id, v, name) VALUES {};\n",
                vals.join(",")
            ));
        }
        for k in 1..=big.rows as i64 {
            self.record(big.part, BIG_BASE + k, "c", big.first_v + k - 1);
        }
        sql.push_str("COMMIT;\n");
        sql
    }

    /// One update of every row of the big transaction: each `v` moves past every `v` so far.
    fn big_update(&mut self) -> String {
        let Some(big) = self.big else {
            return String::new();
        };
        let delta = self.v + 1 - big.first_v;
        let t = self.parts[big.part].table.clone();
        for k in 1..=big.rows as i64 {
            let old = self.last_v(big.part, BIG_BASE + k);
            self.record(big.part, BIG_BASE + k, "u", old + delta);
        }
        self.v += big.rows as i64;
        format!(
            "{}UPDATE {t} SET v = v + {delta}, name = 'big, updated' WHERE id > {BIG_BASE} AND id <= {};\nCOMMIT;\n",
            self.begin(),
            BIG_BASE + big.rows as i64
        )
    }

    /// The size limit of a part: the broker's `max_payload` for a trigger source's event,
    /// `max_value_bytes` for a poll source's value; and the lengths of the value (in `note`)
    /// just under and just over it.
    fn limit_lengths(&self, p: usize) -> (u64, u64) {
        match self.parts[p].kind {
            // The event around the value (envelope and headers) is a few hundred bytes.
            Kind::Trigger => (MAX_PAYLOAD - 1024, MAX_PAYLOAD + 16),
            Kind::Poll => (MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1),
        }
    }

    fn repeat_x(&self, n: u64) -> String {
        match self.db {
            Db::Pg | Db::Maria => format!("repeat('x', {n})"),
            Db::Lite => format!("replace(hex(zeroblob({n})), '00', 'x')"),
        }
    }

    /// The rows just under and just over the part's limit, in one transaction.
    fn limit_rows(&mut self, p: usize) -> String {
        let (under, over) = self.limit_lengths(p);
        let t = self.parts[p].table.clone();
        self.v += 1;
        let v1 = self.v;
        self.v += 1;
        let v2 = self.v;
        self.record(p, LIMIT_BASE + 1, "c", v1);
        self.changes += 1;
        self.over.insert(format!("{t}/{}", LIMIT_BASE + 2));
        format!(
            "{}INSERT INTO {t} (id, v, note) VALUES ({}, {v1}, {});\nINSERT INTO {t} (id, v, note) VALUES ({}, {v2}, {});\nCOMMIT;\n",
            self.begin(),
            LIMIT_BASE + 1,
            self.repeat_x(under),
            LIMIT_BASE + 2,
            self.repeat_x(over),
        )
    }

    fn truth_sql(&self, t: &str) -> String {
        match self.db {
            Db::Pg => format!(
                "SELECT coalesce(json_agg(json_build_object('id', id, 'v', v, 'name', name, 'amount', amount::text, 'note', note, 'at', at, 'b', encode(b, 'hex'))), '[]') FROM {t};"
            ),
            Db::Maria => format!(
                "SET SESSION group_concat_max_len = 1073741824;\nSELECT COALESCE(JSON_ARRAYAGG(JSON_OBJECT('id', id, 'v', v, 'name', name, 'amount', CAST(amount AS CHAR), 'note', note, 'at', DATE_FORMAT(at, '%Y-%m-%dT%H:%i:%s.%f'), 'b', HEX(b))), '[]') FROM {t};"
            ),
            Db::Lite => format!(
                "SELECT coalesce(json_group_array(json_object('id', id, 'v', v, 'name', name, 'amount', amount, 'note', note, 'at', at, 'b', CASE WHEN b IS NULL THEN NULL ELSE hex(b) END)), '[]') FROM {t};"
            ),
        }
    }

    /// Lines of `state/quarantine/<file>`.
    fn quarantine_lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join("quarantine").join(file))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The quarantine file the row over the limit of part `p` must land in.
    fn over_file(&self, p: usize) -> String {
        match self.parts[p].kind {
            Kind::Trigger => format!("{}.refused.jsonl", self.parts[p].name),
            Kind::Poll => format!("{}.jsonl", self.parts[p].name),
        }
    }
}

fn run_cli(mut c: Command, db: Db, sql: &str) -> Res<String> {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("{}: {e}", db.name()))?;
    let mut stdin = child.stdin.take().ok_or("client stdin")?;
    let text = sql.to_owned();
    // A big script is fed while the output is read (a client may answer before it has
    // read everything).
    let feeder = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let o = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", db.name()))?;
    let fed = feeder
        .join()
        .map_err(|_| "stdin feeder panicked".to_owned())?;
    if !o.status.success() || fed.is_err() {
        return Err(format!(
            "{} client: {}: {}",
            db.name(),
            &sql[..sql.len().min(200)],
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Source for Sql {
    fn describe(&self) -> String {
        let parts: Vec<String> = self.parts.iter().map(Part::describe).collect();
        format!(
            "{} [{}] writers={} per_step={:?} big={} limits={}",
            self.db.name(),
            parts.join("; "),
            self.writers,
            self.per_step,
            self.big.map_or("no".to_owned(), |b| format!(
                "{} rows at step {} in {}{}",
                b.rows,
                b.at,
                self.parts[b.part].table,
                b.update_at
                    .map_or(String::new(), |u| format!(", all updated at step {u}"))
            )),
            self.limits.map_or("no".to_owned(), |(at, p)| {
                let (u, o) = self.limit_lengths(p);
                format!("{u}/{o} bytes at step {at} in {}", self.parts[p].table)
            })
        )
    }

    fn config(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p.kind {
                Kind::Trigger => {
                    let conn = match self.db {
                        Db::Pg => format!(
                            "postgres = \"host=127.0.0.1 user=postgres dbname=test options='-c search_path={}'\"",
                            self.ns
                        ),
                        _ => format!("odbc = \"{}\"", self.odbc()),
                    };
                    out.push_str(&format!(
                        "[[source]]\nname = \"{}\"\nkind = \"trigger\"\n{conn}\ntables = [\"{}\"]\ncapture = \"{}\"\ninterval = \"200ms\"\n{}\n",
                        p.name,
                        p.table,
                        if p.rows { "rows" } else { "keys" },
                        if p.debounce {
                            "debounce = { window = \"300ms\", max_delay = \"2s\" }\n"
                        } else {
                            ""
                        }
                    ));
                }
                Kind::Poll => out.push_str(&format!(
                    "[[source]]\nname = \"{}\"\nkind = \"poll\"\nodbc = \"{}\"\ntable = \"{}\"\nkey = [\"id\"]\ninterval = \"300ms\"\n{}\n",
                    p.name,
                    self.odbc(),
                    p.table,
                    if p.cursor {
                        "cursor = \"v\"\nlookback = 50\nfull_scan_every = \"3s\"\n"
                    } else {
                        ""
                    }
                )),
            }
        }
        out
    }

    fn setup(&mut self, config: &Path) -> Res<()> {
        let mut ddl = match self.db {
            Db::Pg => format!(
                "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};\n",
                s = self.ns
            ),
            Db::Maria => format!(
                "DROP DATABASE IF EXISTS {s}; CREATE DATABASE {s} CHARACTER SET utf8mb4;\n",
                s = self.ns
            ),
            Db::Lite => "PRAGMA journal_mode=WAL;\n".to_owned(),
        };
        for p in &self.parts {
            ddl.push_str(&self.create_table(&p.table));
        }
        self.created = true;
        self.run(false, &ddl)?;
        let cfg = config.to_str().ok_or("config path is not UTF-8")?;
        for p in &self.parts {
            if p.kind == Kind::Trigger {
                let (code, out) =
                    lockstep(&["triggers", "install", "--source", &p.name, "--config", cfg])?;
                if code != 0 {
                    return Err(format!(
                        "lockstep triggers install --source {}: {out}",
                        p.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        i: usize,
        _quiet: bool,
        _reader: &mut Reader,
        _tend: &mut dyn FnMut(),
    ) -> Res<()> {
        // The big transaction and the size-limit rows, each alone, before the step's
        // other writes.
        let mut alone = String::new();
        if self.big.is_some_and(|b| b.at == i) {
            alone.push_str(&self.big_insert());
        }
        if self.big.is_some_and(|b| b.update_at == Some(i)) {
            alone.push_str(&self.big_update());
        }
        if let Some((at, p)) = self.limits {
            if at == i {
                alone.push_str(&self.limit_rows(p));
            }
        }
        if !alone.is_empty() {
            self.run(true, &alone)?;
        }
        let count = self.rng.range(self.per_step.0, self.per_step.1);
        let w_n = self.writers as usize;
        let mut scripts = vec![String::new(); w_n];
        let mut left = count;
        while left > 0 {
            let w = self.rng.below(w_n as u64) as usize;
            let tx = self.rng.range(1, 8).min(left);
            scripts[w].push_str(self.begin());
            for _ in 0..tx {
                let s = self.statement(w);
                scripts[w].push_str(&s);
                scripts[w].push('\n');
            }
            // Now and then a transaction that commits late, after others' later rows.
            if w_n > 1 && self.rng.chance(15) {
                let d = self.rng.range(1, 9);
                scripts[w].push_str(&match self.db {
                    Db::Pg => format!("SELECT pg_sleep(0.0{d});\n"),
                    _ => format!("DO SLEEP(0.0{d});\n"),
                });
            }
            scripts[w].push_str("COMMIT;\n");
            left -= tx;
        }
        let runs: Vec<std::thread::JoinHandle<Res<String>>> = scripts
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|sql| {
                let c = self.cli(true);
                let db = self.db;
                std::thread::spawn(move || run_cli(c, db, &sql))
            })
            .collect();
        for r in runs {
            r.join()
                .map_err(|_| "a writer thread panicked".to_owned())??;
        }
        Ok(())
    }

    fn truth(&self) -> Res<State> {
        let mut s = State::new();
        for p in &self.parts {
            let out = self.run(true, &self.truth_sql(&p.table))?;
            let rows: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
                format!(
                    "truth of {} is not JSON: {e}: {}",
                    p.table,
                    &out[..out.len().min(200)]
                )
            })?;
            for r in rows.as_array().ok_or("truth is not an array")? {
                let key = format!("{}/{}", p.table, check::canon(&r["id"]));
                if self.over.contains(&key) {
                    continue;
                }
                let mut row = check::row_of(r);
                if let Some(h) = r["b"].as_str() {
                    let bytes = unhex(h).ok_or_else(|| format!("{key}: b is not hex: {h}"))?;
                    row.insert("b".into(), base64(&bytes));
                }
                s.insert(key, row);
            }
        }
        Ok(s)
    }

    fn complete(&self, _msgs: &[Msg]) -> bool {
        // The row over the limit has reached its quarantine file.
        self.limits
            .is_none_or(|(_, p)| !self.quarantine_lines(&self.over_file(p)).is_empty())
    }

    fn checks(&self, msgs: &[Msg], restarted: bool) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.parts {
            let mine: Vec<Msg> = msgs
                .iter()
                .filter(|m| m.json["source"]["name"] == p.name.as_str())
                .cloned()
                .collect();
            let strays: Vec<u64> = mine
                .iter()
                .filter(|m| m.json["source"]["table"] != p.table.as_str())
                .map(|m| m.seq)
                .collect();
            if !strays.is_empty() {
                out.push(format!(
                    "source {}: {} event(s) of another table than its own {}, first seqs {:?}",
                    p.name,
                    strays.len(),
                    p.table,
                    &strays[..strays.len().min(5)]
                ));
            }
            let tag = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|f| format!("source {}: {f}", p.name))
                    .collect()
            };
            // With debounce, a change that left merged before a crash is sent again
            // unmerged after the restart (docs/design.md, "Debounce"): only the final state.
            if !(p.kind == Kind::Trigger && p.debounce && restarted) {
                out.extend(tag(check::key_order(&mine, "v", p.order())));
            }
            if p.kind == Kind::Trigger && p.rows && !p.debounce {
                out.extend(tag(check::history(&mine, "v", &p.history)));
            }
        }
        if let Some((_, p)) = self.limits {
            let part = &self.parts[p];
            let over_id = (LIMIT_BASE + 2).to_string();
            let in_stream = msgs
                .iter()
                .filter(|m| {
                    m.json["source"]["name"] == part.name.as_str()
                        && check::key_of(m) == format!("{}/{over_id}", part.table)
                })
                .count();
            if in_stream > 0 {
                out.push(format!(
                    "source {}: the row over the limit is in the stream ({in_stream} event(s))",
                    part.name
                ));
            }
            let file = self.over_file(p);
            let lines = self.quarantine_lines(&file);
            let about: Vec<&String> = lines.iter().filter(|l| l.contains(&over_id)).collect();
            let want_exact = !restarted;
            if about.is_empty() || (want_exact && (about.len() != 1 || lines.len() != 1)) {
                out.push(format!(
                    "source {}: quarantine/{file} has {} line(s), {} about the row over the limit (want {}1)",
                    part.name,
                    lines.len(),
                    about.len(),
                    if want_exact { "exactly " } else { "at least " }
                ));
            }
        }
        out
    }

    fn bad_records(&self) -> u64 {
        // A poll row over `max_value_bytes` is quarantined (and counted); a trigger event
        // over `max_payload` is refused (counted as refused, in its own file).
        match self.limits {
            Some((_, p)) if self.parts[p].kind == Kind::Poll => 1,
            _ => 0,
        }
    }

    fn changes(&self) -> u64 {
        self.changes
    }

    fn state_mib(&self) -> u64 {
        // About 200 bytes a row in each of the three scan files, and room to spare.
        self.big.map_or(0, |b| 16 + ((b.rows * 600) >> 20))
    }

    fn catch_up_secs(&self) -> u64 {
        // 100,000 rows (and as many again when updated) take a while on 2 cores.
        120 + self.big.map_or(0, |b| {
            b.rows * if b.update_at.is_some() { 2 } else { 1 } / 500
        })
    }

    fn cleanup(&mut self) {
        if self.created {
            let _ = match self.db {
                Db::Pg => self.run(
                    false,
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.ns),
                ),
                Db::Maria => self.run(false, &format!("DROP DATABASE IF EXISTS {};", self.ns)),
                Db::Lite => Ok(String::new()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex() {
        assert_eq!(base64(&[]), "");
        assert_eq!(base64(&[0x01, 0x02]), "AQI=");
        assert_eq!(base64(&[0xde, 0xad, 0xbe, 0xef]), "3q2+7w==");
        assert_eq!(base64(&[0x00, 0xff, 0x10, 0x41]), "AP8QQQ==");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(unhex("00FF1041"), Some(vec![0, 255, 16, 65]));
        assert_eq!(unhex(""), Some(vec![]));
    }
}
