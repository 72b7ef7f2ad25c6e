//! The databases of the end-to-end tests: the shared PostgreSQL, MariaDB and SQLite (over
//! their ODBC drivers) with a table per test, a private PostgreSQL cluster that can be
//! stopped under the agent, random workloads, and the replay of a stream into rows.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Pg,
    Maria,
    Lite,
}

/// A throwaway schema (PostgreSQL), database (MariaDB) or file (SQLite), dropped at the end.
pub struct Db {
    pub kind: Kind,
    pub name: String,
    path: PathBuf,
}

const NULL: &str = "∅";

impl Db {
    pub fn new(kind: Kind, w: &World, tag: &str) -> Db {
        let name = format!("lockstep_{tag}_{}", std::process::id());
        let db = Db {
            kind,
            name: name.clone(),
            path: w.dir().join(format!("{name}.sqlite")),
        };
        match kind {
            Kind::Pg => db.admin(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"
            )),
            Kind::Maria => db.admin(&format!(
                "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} CHARACTER SET utf8mb4;"
            )),
            Kind::Lite => {}
        }
        db
    }

    fn admin(&self, sql: &str) {
        let mut c = match self.kind {
            Kind::Pg => self.cli(),
            _ => {
                let mut c = Command::new("mariadb");
                c.args(["-h", "127.0.0.1", "-u", "root", "-N", "-B", "-r"]);
                c
            }
        };
        let flag = if self.kind == Kind::Pg { "-c" } else { "-e" };
        let o = c.arg(flag).arg(sql).output().unwrap();
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn cli(&self) -> Command {
        match self.kind {
            Kind::Pg => {
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
                .args(["-F", "|", "-v", "ON_ERROR_STOP=1"])
                .env("PGOPTIONS", format!("-c search_path={}", self.name));
                c
            }
            Kind::Maria => {
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
                    "-D",
                    &self.name,
                ]);
                c
            }
            Kind::Lite => {
                let mut c = Command::new("sqlite3");
                c.args(["-bail", "-cmd", ".timeout 10000"]).arg(&self.path);
                c
            }
        }
    }

    /// Runs SQL (any number of statements); returns the output, one row a line, columns
    /// separated by `|`.
    pub fn sql(&self, sql: &str) -> String {
        let mut child = self
            .cli()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{:?}: {}: {}",
            self.kind,
            &sql[..sql.len().min(300)],
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout).unwrap();
        if self.kind == Kind::Maria {
            out.replace('\t', "|")
        } else {
            out
        }
    }

    /// A session kept open, fed statements on its stdin.
    pub fn session(&self) -> Session {
        let child = self
            .cli()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Session(child)
    }

    /// The `[[source]]` of a trigger source named `vista` on this database.
    pub fn source(&self, tables: &[&str], capture: &str, extra: &str) -> String {
        self.source_named("vista", tables, capture, extra)
    }

    /// The `[[source]]` of a trigger source named `name` on this database.
    pub fn source_named(&self, name: &str, tables: &[&str], capture: &str, extra: &str) -> String {
        let conn = match self.kind {
            Kind::Pg => format!(
                "postgres = \"host=127.0.0.1 user=postgres dbname=test options='-c search_path={}'\"",
                self.name
            ),
            _ => format!("odbc = \"{}\"", self.odbc()),
        };
        let tables: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            "[[source]]\nname = \"{name}\"\nkind = \"trigger\"\n{conn}\ntables = [{}]\ncapture = \"{capture}\"\ninterval = \"200ms\"\n{extra}\n",
            tables.join(", ")
        )
    }

    /// An ODBC connection string to this database (PostgreSQL through psqlODBC).
    pub fn odbc(&self) -> String {
        match self.kind {
            Kind::Pg => format!(
                "DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;ConnSettings=SET search_path TO {}",
                self.name
            ),
            Kind::Maria => format!(
                "DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;PORT=3306;DATABASE={};USER=root;CHARSET=utf8mb4",
                self.name
            ),
            Kind::Lite => format!("DRIVER={{SQLite3}};Database={}", self.path.display()),
        }
    }

    /// The two test tables.
    pub fn create_tables(&self) {
        self.sql(match self.kind {
            Kind::Pg => {
                "CREATE TABLE appointments (id int PRIMARY KEY, clinic text, fee numeric(30,5), at timestamptz, note text);
                 CREATE TABLE clinics (region text, code int, name text, PRIMARY KEY (region, code));"
            }
            Kind::Maria => {
                "CREATE TABLE appointments (id int PRIMARY KEY, clinic text, fee decimal(30,5), at datetime(6), note text) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
                 CREATE TABLE clinics (region varchar(20), code int, name text, PRIMARY KEY (region, code)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;"
            }
            Kind::Lite => {
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE appointments (id INTEGER PRIMARY KEY, clinic TEXT, fee REAL, at TEXT, note TEXT);
                 CREATE TABLE clinics (region TEXT, code INTEGER, name TEXT, PRIMARY KEY (region, code));"
            }
        });
    }

    /// Each row of `appointments` and `clinics` as `table/key` → its columns, `|`-joined.
    pub fn dump(&self) -> BTreeMap<String, String> {
        let (a, c) = match self.kind {
            Kind::Pg => (
                "SELECT id, coalesce(clinic, '∅'), coalesce(fee::text, '∅'), coalesce(to_json(at) #>> '{}', '∅'), coalesce(note, '∅') FROM appointments",
                "SELECT region, code, coalesce(name, '∅') FROM clinics",
            ),
            Kind::Maria => (
                "SELECT id, ifnull(clinic, '∅'), ifnull(CAST(fee AS char), '∅'), ifnull(DATE_FORMAT(at, '%Y-%m-%dT%H:%i:%s.%f'), '∅'), ifnull(note, '∅') FROM appointments",
                "SELECT region, code, ifnull(name, '∅') FROM clinics",
            ),
            Kind::Lite => (
                "SELECT id, ifnull(clinic, '∅'), ifnull(fee, '∅'), ifnull(at, '∅'), ifnull(note, '∅') FROM appointments",
                "SELECT region, code, ifnull(name, '∅') FROM clinics",
            ),
        };
        let mut out = BTreeMap::new();
        for (table, sql, nkey) in [("appointments", a, 1), ("clinics", c, 2)] {
            for line in self.sql(&format!("{sql};")).lines() {
                let cols: Vec<String> = line.split('|').map(norm).collect();
                let key = cols[..nkey].join("|");
                out.insert(format!("{table}/{key}"), cols.join("|"));
            }
        }
        out
    }

    /// A literal timestamp in this dialect.
    pub fn ts(&self, minute: u64, second: u64) -> String {
        match self.kind {
            Kind::Pg => format!("'2026-11-21 10:{minute:02}:{second:02}+00'"),
            _ => format!("'2026-11-21 10:{minute:02}:{second:02}'"),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        match self.kind {
            Kind::Pg => self.admin(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)),
            Kind::Maria => self.admin(&format!("DROP DATABASE IF EXISTS {}", self.name)),
            Kind::Lite => {}
        }
    }
}

/// An open database session (a client reading statements from its stdin).
pub struct Session(Child);

impl Session {
    pub fn send(&mut self, sql: &str) {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin (the client runs what is left and exits) and waits; true when
    /// the client exited without an error (it stops at the first failed statement).
    pub fn finish(mut self) -> bool {
        drop(self.0.stdin.take());
        self.0.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Numbers with a fractional part lose trailing zeros, so `12.50000` (a database's text)
/// and `12.5` (a JSON number) compare equal; everything else is kept.
pub fn norm(s: &str) -> String {
    let t = s.trim_end_matches('\r');
    // UTC is UTC however it is written.
    if let Some(utc) = t.strip_suffix("+00:00") {
        return format!("{utc}Z");
    }
    let numeric = t.contains('.')
        && t.trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    if numeric {
        t.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        t.to_owned()
    }
}

pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => NULL.to_owned(),
        serde_json::Value::String(s) => norm(s),
        other => norm(&other.to_string()),
    }
}

/// Replays the stream: `table/key` → the columns of the row as the last event left it.
pub fn replay(msgs: &[Msg]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for m in msgs {
        let j = &m.json;
        let table = j["source"]["table"].as_str().unwrap().to_owned();
        let (key_cols, cols): (&[&str], &[&str]) = if table == "appointments" {
            (&["id"], &["id", "clinic", "fee", "at", "note"])
        } else {
            (&["region", "code"], &["region", "code", "name"])
        };
        let key: Vec<String> = key_cols.iter().map(|k| value_text(&j["key"][k])).collect();
        let id = format!("{table}/{}", key.join("|"));
        match j["op"].as_str().unwrap() {
            "d" => {
                state.remove(&id);
            }
            _ => {
                let after = &j["after"];
                assert!(after.is_object(), "no after image in {j}");
                let row: Vec<String> = cols.iter().map(|c| value_text(&after[c])).collect();
                state.insert(id, row.join("|"));
            }
        }
    }
    state
}

/// A seeded random mix of inserts, updates and deletes on both tables, in transactions
/// of 1 to 8 statements. With NULLs, big decimals, unicode and timestamps.
pub fn workload(db: &Db, seed: u64, ops: usize) -> String {
    let mut r = seed;
    let mut next = move |n: u64| {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (r >> 33) % n
    };
    let notes = [
        "Zürich — 東京 ✓",
        "O''Brien",
        "plain",
        "emoji 🚑",
        "back\\slash",
    ];
    let fees = match db.kind {
        Kind::Lite => vec!["12.5", "0.25", "-3.75"],
        _ => vec!["12.5", "12345678901234567890.12345", "-0.5", "99999.99999"],
    };
    let mut ids: Vec<u64> = Vec::new();
    let mut clinics: Vec<(u64, u64)> = Vec::new();
    let mut next_id = seed * 100_000 + 1;
    let mut sql = String::new();
    let begin = if db.kind == Kind::Maria {
        "START TRANSACTION;"
    } else {
        "BEGIN;"
    };
    let mut i = 0;
    while i < ops {
        sql.push_str(begin);
        for _ in 0..=next(8) {
            i += 1;
            let fee = if next(5) == 0 {
                "NULL".to_owned()
            } else {
                fees[next(fees.len() as u64) as usize].to_owned()
            };
            let at = if next(5) == 0 {
                "NULL".to_owned()
            } else {
                db.ts(next(60), next(60))
            };
            let note = if next(4) == 0 {
                "NULL".to_owned()
            } else {
                format!("'{}'", notes[next(notes.len() as u64) as usize])
            };
            match next(10) {
                0..=3 => {
                    let id = next_id;
                    next_id += 1;
                    ids.push(id);
                    sql.push_str(&format!(
                        "INSERT INTO appointments VALUES ({id}, 'CLINIC-{}', {fee}, {at}, {note});",
                        next(5)
                    ));
                }
                4..=5 if !ids.is_empty() => {
                    let id = ids[next(ids.len() as u64) as usize];
                    sql.push_str(&format!(
                        "UPDATE appointments SET fee = {fee}, at = {at}, note = {note} WHERE id = {id};"
                    ));
                }
                6 if !ids.is_empty() => {
                    let id = ids.swap_remove(next(ids.len() as u64) as usize);
                    sql.push_str(&format!("DELETE FROM appointments WHERE id = {id};"));
                }
                7 => {
                    let k = (next(3), next(1000));
                    if !clinics.contains(&k) {
                        clinics.push(k);
                        sql.push_str(&format!(
                            "INSERT INTO clinics VALUES ('R{seed}x{}', {}, {note});",
                            k.0, k.1
                        ));
                    }
                }
                8 if !clinics.is_empty() => {
                    let k = clinics[next(clinics.len() as u64) as usize];
                    sql.push_str(&format!(
                        "UPDATE clinics SET name = {note} WHERE region = 'R{seed}x{}' AND code = {};",
                        k.0, k.1
                    ));
                }
                _ if !clinics.is_empty() => {
                    let k = clinics.swap_remove(next(clinics.len() as u64) as usize);
                    sql.push_str(&format!(
                        "DELETE FROM clinics WHERE region = 'R{seed}x{}' AND code = {};",
                        k.0, k.1
                    ));
                }
                _ => {}
            }
        }
        sql.push_str("COMMIT;\n");
    }
    sql
}

/// A seeded random mix on `keys` hot keys of `appointments` (ids from
/// `seed * 100,000 + 1`): each change inserts a key that is absent, or updates (7 in
/// 10) or deletes one that is present, so each key sees many changes, deletes and
/// re-inserts; in transactions of 1 to 8 statements.
pub fn hot_workload(db: &Db, seed: u64, ops: usize, keys: u64) -> String {
    let mut r = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (r >> 33) % n
    };
    let begin = if db.kind == Kind::Maria {
        "START TRANSACTION;"
    } else {
        "BEGIN;"
    };
    let mut present = vec![false; keys as usize];
    let mut sql = String::new();
    let mut i = 0;
    while i < ops {
        sql.push_str(begin);
        for _ in 0..=next(8) {
            i += 1;
            let k = next(keys);
            let id = seed * 100_000 + 1 + k;
            let v = next(1_000_000);
            if !present[k as usize] {
                present[k as usize] = true;
                sql.push_str(&format!(
                    "INSERT INTO appointments (id, clinic, note) VALUES ({id}, 'HOT', 'v{v}');"
                ));
            } else if next(10) < 7 {
                sql.push_str(&format!(
                    "UPDATE appointments SET note = 'v{v}' WHERE id = {id};"
                ));
            } else {
                present[k as usize] = false;
                sql.push_str(&format!("DELETE FROM appointments WHERE id = {id};"));
            }
        }
        sql.push_str("COMMIT;\n");
    }
    sql
}

pub fn install(w: &World, cfg: &std::path::Path) {
    let (code, out, err) = lockstep(&["triggers", "install", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let _ = w;
}

/// Rows left in the capture table.
pub fn capture_rows(db: &Db) -> u64 {
    db.sql("SELECT count(*) FROM lockstep_changes;")
        .trim()
        .parse()
        .unwrap()
}

/// Whether the capture table exists (in the schema, database or file of `db`).
pub fn capture_table_exists(db: &Db) -> bool {
    let sql = match db.kind {
        Kind::Pg => "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'lockstep_changes';",
        Kind::Maria => "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'lockstep_changes';",
        Kind::Lite => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'lockstep_changes';",
    };
    db.sql(sql).trim() == "1"
}

/// Waits until the capture table is empty and the spool sent (everything drained,
/// deleted and in the stream: a capture row is deleted once its event is in the stream
/// *or durably spooled*).
pub async fn drained(db: &Db, w: &World) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cfg = w.dir().join("lockstep.toml");
    while capture_rows(db) > 0 || w.spool_waiting(&cfg) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not drained: {} capture rows and {} spooled events left\n{}",
            capture_rows(db),
            w.spool_waiting(&cfg),
            agent_log(w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn assert_no_duplicate_ids(msgs: &[Msg]) {
    let mut ids = HashSet::new();
    for m in msgs {
        assert!(ids.insert(m.id.clone()), "duplicate Nats-Msg-Id {}", m.id);
    }
}

/// Waits until another session holds an uncommitted row in the capture table.
pub async fn wait_for_open_insert(db: &Db) {
    wait_for_open_tx(db, "VALUES (1, ''A'')", 1, Duration::from_secs(30)).await;
}

/// Waits until another session's transaction has written `rows` uncommitted capture
/// rows and waits (on PostgreSQL: is idle in transaction after its statement containing
/// `marker`, quoted for SQL).
pub async fn wait_for_open_tx(db: &Db, marker: &str, rows: u64, within: Duration) {
    let sql = match db.kind {
        Kind::Pg => format!(
            "SELECT CASE WHEN count(*) > 0 THEN {rows} ELSE 0 END FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE '%{marker}%';"
        ),
        // A dirty read sees the uncommitted capture rows.
        _ => "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; SELECT count(*) FROM lockstep_changes;".to_owned(),
    };
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = db.sql(&sql);
        if n.trim().parse::<u64>().is_ok_and(|n| n >= rows) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the open transaction did not write its rows: {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `ids` lacks or holds twice against `want`, in a few words ("" when they match).
pub fn id_diff(ids: &[i64], want: std::ops::RangeInclusive<i64>) -> String {
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for &id in ids {
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<i64> = want.clone().filter(|i| !seen.contains_key(i)).collect();
    let doubled: Vec<i64> = seen
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&i, _)| i)
        .collect();
    let stray: Vec<i64> = seen.keys().filter(|i| !want.contains(i)).copied().collect();
    let few = |v: &[i64]| {
        let head: Vec<String> = v.iter().take(12).map(i64::to_string).collect();
        format!(
            "{} [{}{}]",
            v.len(),
            head.join(", "),
            if v.len() > 12 { ", …" } else { "" }
        )
    };
    let mut out = Vec::new();
    if !missing.is_empty() {
        out.push(format!("missing {}", few(&missing)));
    }
    if !doubled.is_empty() {
        out.push(format!("doubled {}", few(&doubled)));
    }
    if !stray.is_empty() {
        out.push(format!("unexpected {}", few(&stray)));
    }
    out.join("; ")
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, on a free
/// port), so that it can be stopped and started under the agent without disturbing the
/// shared one. Run as the `postgres` user when the tests run as root.
pub(crate) struct PrivatePg {
    bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    pub(crate) fn start() -> PrivatePg {
        let pg = Self::init();
        pg.up();
        pg
    }

    /// A new cluster in a directory of its own (owned by `postgres` when the tests run
    /// as root), not started yet: configure `dir/data`, then [`Self::up`].
    pub(crate) fn init() -> PrivatePg {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("pg_ctl");
        let dir = std::env::temp_dir().join(format!(
            "lockstep-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg { bin, dir, port };
        if pg.as_root() {
            let uid = |flag: &str| -> u32 {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(&pg.dir, Some(uid("-u")), Some(uid("-g"))).unwrap();
        }
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg
    }

    pub(crate) fn as_root(&self) -> bool {
        let o = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "0"
    }

    /// A server tool, run as `postgres` when the tests run as root.
    pub(crate) fn tool(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub(crate) fn run(&self, tool: &str, args: &[&str]) {
        let o = self
            .tool(tool)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub(crate) fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                // pg_ctl's own default (60 s) is short for crash recovery on a busy
                // machine.
                "-t",
                "300",
                "start",
            ],
        );
    }

    /// Stops the server the way a crash would (no checkpoint, connections cut).
    pub(crate) fn crash(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    pub(crate) fn sql(&self, sql: &str) -> String {
        let o = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .tool("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs SQL with psql on database `db` of the local PostgreSQL; returns its unaligned
/// output.
pub fn psql_on(db: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
            "-q",
            "-A",
            "-t",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}
