//! The PostgreSQL families: a trigger source read natively (keys or rows mode, with or
//! without debounce) and a poll source read over ODBC (psqlODBC; full scans or a cursor),
//! on a table in a schema of their own in the database `test`, written through psql in
//! transactions of inserts, updates, deletes and key changes by 1 to 3 concurrent
//! writers (some committing late), with hot keys, NULLs,
//! unicode, 30-digit decimals and timestamps.
//!
//! Truth: the table's final rows, read with psql. Every write sets `v` to a number that
//! grows over the whole scenario, so a key's events must carry growing `v`s; in rows mode
//! without debounce each change is one event, and each key's history of (op, v) must
//! be the stream's exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::check::{self, Order, State};
use crate::procs::{lockstep, Res};
use crate::rng::Rng;
use crate::scenario::Source;
use crate::stream::{Msg, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Trigger,
    Poll,
}

pub struct Pg {
    mode: Mode,
    schema: String,
    /// Trigger: rows mode (before/after images) instead of keys.
    rows: bool,
    debounce: bool,
    /// Poll: `cursor = "v"` with full scans every few seconds.
    cursor: bool,
    hot: Option<u64>,
    per_step: (u64, u64),
    rng: Rng,
    v: i64,
    /// Concurrent writers (psql sessions), each with keys of its own (`id % writers`),
    /// so a key's changes commit in the order they were written while transactions of
    /// different writers commit out of their capture rows' `seq` order.
    writers: u64,
    /// Per writer, the last new key's ordinal.
    next_id: Vec<i64>,
    /// Per writer, its keys that exist.
    live: Vec<BTreeSet<i64>>,
    /// Per key (`t/<id>`), the (op, v) the triggers record.
    history: BTreeMap<String, Vec<(String, i64)>>,
    changes: u64,
    created: bool,
    /// The server's port: the shared one (5432) or a private cluster's.
    port: u16,
}

const NAMES: [&str; 7] = [
    "Zürich — 東京 ✓",
    "O'Brien",
    "plain",
    "emoji 🚑",
    "back\\slash",
    "comma, \"quoted\"",
    "two\nlines",
];
const AMOUNTS: [&str; 6] = [
    "12345678901234567890.1234567890",
    "0.0000000001",
    "-99999999999999999999.9999999999",
    "12.5",
    "0",
    "31415926535897932384.6264338327",
];

/// psql on the database `test` on `port`, search path `schema`, in UTC; stdin `sql`.
fn psql(port: u16, schema: Option<&str>, sql: &str) -> Res<String> {
    let mut c = Command::new("psql");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
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
    .env("PGTZ", "UTC")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(s) = schema {
        c.env("PGOPTIONS", format!("-c search_path={s}"));
    }
    let mut child = c.spawn().map_err(|e| format!("psql: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("psql stdin")?
        .write_all(sql.as_bytes())
        .map_err(|e| format!("psql stdin: {e}"))?;
    let o = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "psql: {}: {}",
            &sql[..sql.len().min(200)],
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Pg {
    pub fn draw(r: &mut Rng, seed: u64, mode: Mode, _steps: usize) -> Pg {
        let mut pg = Pg::draw_one(r, seed, mode);
        pg.writers = *r.pick(&[1, 1, 2, 3]);
        pg.next_id = vec![0; pg.writers as usize];
        pg.live = vec![BTreeSet::new(); pg.writers as usize];
        pg
    }

    fn draw_one(r: &mut Rng, seed: u64, mode: Mode) -> Pg {
        Pg {
            mode,
            schema: format!("torture_{seed}_{}", std::process::id()),
            rows: r.chance(50),
            debounce: r.chance(35),
            cursor: r.chance(50),
            hot: r.chance(40).then(|| r.range(1, 6)),
            per_step: if r.chance(20) { (100, 400) } else { (3, 40) },
            writers: 0,
            rng: r.fork(),
            v: 0,
            next_id: Vec::new(),
            live: Vec::new(),
            history: BTreeMap::new(),
            changes: 0,
            created: false,
            port: 5432,
        }
    }

    /// On the server at `port` (a private cluster) instead of the shared one.
    pub fn on_port(mut self, port: u16) -> Pg {
        self.port = port;
        self
    }

    fn odbc(&self) -> String {
        format!(
            "DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={};DATABASE=test;UID=postgres;ConnSettings=SET search_path TO {}",
            self.port, self.schema
        )
    }

    /// A key of writer `w` that does not exist: a free hot one, or a new one.
    fn new_id(&mut self, w: usize) -> Option<i64> {
        let n = self.writers as i64;
        match self.hot {
            Some(h) => {
                let free: Vec<i64> = (0..h as i64)
                    .map(|j| 1 + w as i64 + j * n)
                    .filter(|k| !self.live[w].contains(k))
                    .collect();
                (!free.is_empty()).then(|| *self.rng.pick(&free))
            }
            None => {
                self.next_id[w] += 1;
                Some(self.next_id[w] * n + w as i64)
            }
        }
    }

    fn values(&mut self) -> (i64, String) {
        self.v += 1;
        let r = &mut self.rng;
        let name = r.pick(&NAMES).to_string();
        let name = if r.chance(15) {
            "NULL".to_owned()
        } else {
            lit(&name)
        };
        let amount = if r.chance(15) {
            "NULL".to_owned()
        } else {
            r.pick(&AMOUNTS).to_string()
        };
        let note = if r.chance(30) {
            "NULL".to_owned()
        } else {
            lit(&format!("note {} ✓", self.v))
        };
        let at = if r.chance(20) {
            "NULL".to_owned()
        } else {
            format!(
                "'2026-11-21 10:{:02}:{:02}.{:06}+00'",
                r.below(60),
                r.below(60),
                r.below(3) * 250_000
            )
        };
        (self.v, format!("{name}, {amount}, {note}, {at}"))
    }

    fn record(&mut self, key: i64, op: &str, v: i64) {
        self.history
            .entry(format!("t/{key}"))
            .or_default()
            .push((op.to_owned(), v));
        self.changes += 1;
    }

    /// One statement of writer `w` changing exactly one row.
    fn statement(&mut self, w: usize) -> String {
        let roll = self.rng.below(100);
        if self.live[w].is_empty() || roll < 35 {
            if let Some(id) = self.new_id(w) {
                let (v, vals) = self.values();
                self.live[w].insert(id);
                self.record(id, "c", v);
                return format!(
                    "INSERT INTO t (id, v, name, amount, note, at) VALUES ({id}, {v}, {vals});"
                );
            }
        }
        let any = self.live[w].iter().copied().collect::<Vec<_>>();
        let id = *self.rng.pick(&any);
        let last_v = self.history[&format!("t/{id}")].last().map_or(0, |h| h.1);
        if roll < 75 {
            let (v, vals) = self.values();
            self.record(id, "u", v);
            return format!(
                "UPDATE t SET (v, name, amount, note, at) = ({v}, {vals}) WHERE id = {id};"
            );
        }
        if roll < 88 {
            self.live[w].remove(&id);
            self.record(id, "d", last_v);
            return format!("DELETE FROM t WHERE id = {id};");
        }
        // A key change: the triggers record a delete of the old key and an insert of the new.
        match self.new_id(w) {
            Some(new) => {
                self.v += 1;
                let v = self.v;
                self.live[w].remove(&id);
                self.live[w].insert(new);
                self.record(id, "d", last_v);
                self.record(new, "c", v);
                format!("UPDATE t SET id = {new}, v = {v} WHERE id = {id};")
            }
            None => {
                self.live[w].remove(&id);
                self.record(id, "d", last_v);
                format!("DELETE FROM t WHERE id = {id};")
            }
        }
    }
}

impl Source for Pg {
    fn describe(&self) -> String {
        match self.mode {
            Mode::Trigger => format!(
                "trigger postgres capture={} debounce={} writers={} hot={:?} per_step={:?}",
                if self.rows { "rows" } else { "keys" },
                self.debounce,
                self.writers,
                self.hot,
                self.per_step
            ),
            Mode::Poll => format!(
                "poll postgres/odbc {} writers={} hot={:?} per_step={:?}",
                if self.cursor { "cursor" } else { "full" },
                self.writers,
                self.hot,
                self.per_step
            ),
        }
    }

    fn config(&self) -> String {
        match self.mode {
            Mode::Trigger => format!(
                "[[source]]\nname = \"trig\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 port={} user=postgres dbname=test options='-c search_path={}'\"\ntables = [\"t\"]\ncapture = \"{}\"\ninterval = \"200ms\"\n{}",
                self.port,
                self.schema,
                if self.rows { "rows" } else { "keys" },
                if self.debounce {
                    "debounce = { window = \"300ms\", max_delay = \"2s\" }\n"
                } else {
                    ""
                }
            ),
            Mode::Poll => format!(
                "[[source]]\nname = \"poll\"\nkind = \"poll\"\nodbc = \"{}\"\ntable = \"t\"\nkey = [\"id\"]\ninterval = \"300ms\"\n{}",
                self.odbc(),
                if self.cursor {
                    "cursor = \"v\"\nlookback = 50\nfull_scan_every = \"3s\"\n"
                } else {
                    ""
                }
            ),
        }
    }

    fn setup(&mut self, config: &Path) -> Res<()> {
        psql(
            self.port,
            None,
            &format!(
                "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};\n\
                 CREATE TABLE {s}.t (id bigint PRIMARY KEY, v bigint NOT NULL, name text, amount numeric(40,10), note text, at timestamptz);",
                s = self.schema
            ),
        )?;
        self.created = true;
        if self.mode == Mode::Trigger {
            let cfg = config.to_str().ok_or("config path is not UTF-8")?;
            let (code, out) =
                lockstep(&["triggers", "install", "--source", "trig", "--config", cfg])?;
            if code != 0 {
                return Err(format!("lockstep triggers install: {out}"));
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        _i: usize,
        _quiet: bool,
        _reader: &mut Reader,
        _tend: &mut dyn FnMut(),
    ) -> Res<()> {
        let count = self.rng.range(self.per_step.0, self.per_step.1);
        let w_n = self.writers as usize;
        let mut scripts = vec![String::new(); w_n];
        let mut left = count;
        while left > 0 {
            let w = self.rng.below(w_n as u64) as usize;
            let tx = self.rng.range(1, 8).min(left);
            scripts[w].push_str("BEGIN;\n");
            for _ in 0..tx {
                scripts[w].push_str(&self.statement(w));
                scripts[w].push('\n');
            }
            // Now and then a transaction that commits late, after others' later rows.
            if w_n > 1 && self.rng.chance(15) {
                scripts[w].push_str(&format!("SELECT pg_sleep(0.0{});\n", self.rng.range(1, 9)));
            }
            scripts[w].push_str("COMMIT;\n");
            left -= tx;
        }
        let schema = self.schema.clone();
        let port = self.port;
        let runs: Vec<std::thread::JoinHandle<Res<String>>> = scripts
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|sql| {
                let schema = schema.clone();
                std::thread::spawn(move || psql(port, Some(&schema), &sql))
            })
            .collect();
        for r in runs {
            r.join()
                .map_err(|_| "a writer thread panicked".to_owned())??;
        }
        Ok(())
    }

    fn truth(&self) -> Res<State> {
        let out = psql(
            self.port,
            Some(&self.schema),
            "SELECT coalesce(json_agg(json_build_object('id', id, 'v', v, 'name', name, 'amount', amount::text, 'note', note, 'at', at)), '[]') FROM t;",
        )?;
        let rows: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("truth is not JSON: {e}"))?;
        let mut s = State::new();
        for r in rows.as_array().ok_or("truth is not an array")? {
            s.insert(format!("t/{}", check::canon(&r["id"])), check::row_of(r));
        }
        Ok(s)
    }

    fn complete(&self, _msgs: &[Msg]) -> bool {
        true
    }

    fn checks(&self, msgs: &[Msg], restarted: bool) -> Vec<String> {
        let order = match self.mode {
            Mode::Trigger if !self.rows => Order::NonDecreasing,
            _ => Order::Strict,
        };
        // With debounce, a change that left merged before a crash is sent again unmerged
        // under another id after the restart (docs/design.md, "Debounce", "Restarts"):
        // an older value of the key lands after the merged newer one. Only the final
        // state is checked then.
        let mut out = if self.debounce && restarted {
            Vec::new()
        } else {
            check::key_order(msgs, "v", order)
        };
        if self.mode == Mode::Trigger && self.rows && !self.debounce {
            out.extend(check::history(msgs, "v", &self.history));
        }
        out
    }

    fn bad_records(&self) -> u64 {
        0
    }

    fn changes(&self) -> u64 {
        self.changes
    }

    fn losses_countable(&self) -> bool {
        // The triggers' rows mode without debounce: one event per row change.
        self.mode == Mode::Trigger && self.rows && !self.debounce
    }

    fn cleanup(&mut self) {
        if self.created && self.port == 5432 {
            let _ = psql(
                self.port,
                None,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE;", self.schema),
            );
        }
    }
}
