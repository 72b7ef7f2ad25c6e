//! Trigger capture end to end: the real binary drains `lockstep_changes` on a live
//! PostgreSQL (natively), MariaDB and SQLite (over their ODBC drivers) into a real
//! nats-server; a real consumer replays the stream and compares it with the tables.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

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

async fn random_workload_replays_to_the_tables(kind: Kind, capture: &str) {
    workload_replays(kind, capture, "").await;
}

/// The random workload through a source configured with `extra` (debounce): the
/// stream, and how many changes the debouncer merged away.
pub async fn workload_replays(kind: Kind, capture: &str, extra: &str) -> (Vec<Msg>, u64) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, &format!("mix_{capture}"));
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments", "clinics"], capture, extra));
    install(&w, &cfg);
    // Rows there before the agent starts, and rows written while it runs.
    db.sql(&workload(&db, 7, 150));
    let mut agent = w.agent(&cfg);
    if extra.is_empty() {
        db.sql(&workload(&db, 11, 450));
    } else {
        // Debounced: what waited at the start is sent unmerged; merging starts once the
        // agent has caught up with it. Then the workload comes in pieces, each read
        // before the next is written, so that a key's changes span several reads.
        drained(&db, &w).await;
        let all = workload(&db, 11, 450);
        let txs: Vec<&str> = all.split_inclusive("COMMIT;").collect();
        for piece in txs.chunks(txs.len().div_ceil(6)) {
            db.sql(&piece.concat());
            let last: i64 = db
                .sql("SELECT coalesce(max(seq), 0) FROM lockstep_changes;")
                .trim()
                .parse()
                .unwrap();
            wait_for("the piece read", Duration::from_secs(30), || {
                w.status()["sources"]["vista"]["last_seq_read"]
                    .as_i64()
                    .is_some_and(|s| s >= last)
            })
            .await;
        }
    }
    drained(&db, &w).await;
    let merged = w.metric_sum("lockstep_debounce_merged_total");
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert!(msgs.len() > 50, "only {} events", msgs.len());
    assert_no_duplicate_ids(&msgs);
    let expected = db.dump();
    assert!(
        expected.len() > 50,
        "the workload left {} rows",
        expected.len()
    );
    assert_eq!(
        replay(&msgs),
        expected,
        "replaying the stream gives the tables"
    );
    for m in &msgs {
        assert_eq!(m.json["source"]["kind"], "trigger");
        assert_eq!(
            m.subject,
            format!(
                "legacy.vista.{}",
                m.json["source"]["table"].as_str().unwrap()
            )
        );
    }
    if capture == "rows" {
        assert!(msgs
            .iter()
            .any(|m| m.json["op"] == "u" && m.json["before"].is_object()));
    }
    if kind != Kind::Lite {
        // A decimal no f64 holds arrives with every digit, as a string.
        assert!(
            msgs.iter()
                .any(|m| m.json["after"]["fee"] == "12345678901234567890.12345"),
            "no exact big decimal"
        );
    }
    (msgs, merged)
}

#[tokio::test]
async fn postgres_random_workload_replays_to_the_tables_keys() {
    random_workload_replays_to_the_tables(Kind::Pg, "keys").await;
}

#[tokio::test]
async fn postgres_random_workload_replays_to_the_tables_rows() {
    random_workload_replays_to_the_tables(Kind::Pg, "rows").await;
}

#[tokio::test]
async fn mariadb_odbc_random_workload_replays_to_the_tables_keys() {
    random_workload_replays_to_the_tables(Kind::Maria, "keys").await;
}

#[tokio::test]
async fn mariadb_odbc_random_workload_replays_to_the_tables_rows() {
    random_workload_replays_to_the_tables(Kind::Maria, "rows").await;
}

#[tokio::test]
async fn sqlite_odbc_random_workload_replays_to_the_tables_rows() {
    random_workload_replays_to_the_tables(Kind::Lite, "rows").await;
}

#[tokio::test]
async fn sqlite_odbc_random_workload_replays_to_the_tables_keys() {
    random_workload_replays_to_the_tables(Kind::Lite, "keys").await;
}

/// Transaction A writes first (lower seq) and stays open; B writes and commits; the
/// agent drains B; then A commits and must still arrive.
async fn a_late_commit_is_delivered(kind: Kind) {
    let w = World::new();
    let db = Db::new(kind, &w, "late");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", ""));
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    let mut a = db.session();
    let begin = if kind == Kind::Maria {
        "START TRANSACTION;"
    } else {
        "BEGIN;"
    };
    a.send(&format!(
        "{begin} INSERT INTO appointments (id, clinic) VALUES (1, 'A');"
    ));
    // A's capture row exists (uncommitted) once its seq is taken: B's is higher.
    wait_for_open_insert(&db).await;
    db.sql("INSERT INTO appointments (id, clinic) VALUES (2, 'B');");
    assert_eq!(
        w.wait_count(1, Duration::from_secs(30)).await,
        1,
        "{}",
        agent_log(&w)
    );
    drained(&db, &w).await;
    a.send("COMMIT;");
    a.finish();
    assert_eq!(
        w.wait_count(2, Duration::from_secs(30)).await,
        2,
        "{}",
        agent_log(&w)
    );
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let clinics: Vec<&str> = msgs
        .iter()
        .map(|m| m.json["after"]["clinic"].as_str().unwrap())
        .collect();
    assert_eq!(clinics, ["B", "A"]);
    let seqs: Vec<i64> = msgs
        .iter()
        .map(|m| {
            // `<capture table>.<seq>@<ms the capture row was written>`
            let p = m.json["source"]["position"].as_str().unwrap();
            let seq = p.rsplit('.').next().unwrap();
            seq.split('@').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(seqs[1] < seqs[0], "A has the lower seq: {seqs:?}");
}

/// Waits until another session holds an uncommitted row in the capture table.
pub async fn wait_for_open_insert(db: &Db) {
    wait_for_open_tx(db, "VALUES (1, ''A'')", 1, Duration::from_secs(30)).await;
}

/// Waits until another session's transaction has written `rows` uncommitted capture
/// rows and waits (on PostgreSQL: is idle in transaction after its statement containing
/// `marker`, quoted for SQL).
async fn wait_for_open_tx(db: &Db, marker: &str, rows: u64, within: Duration) {
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

/// How many capture rows the long-transaction tests commit late
/// (`LOCKSTEP_LATE_ROWS`; 20,000 by default, `scripts/soak-late-rows` sets 1,000,000).
fn late_rows() -> u64 {
    std::env::var("LOCKSTEP_LATE_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// A batch job's long transaction writes `late_rows()` capture rows while short commits
/// move the drain's cursor past them, then commits; newer changes to some of its keys
/// follow at once. Every change arrives once, in per-key order, and the drain takes the
/// late rows in bounded reads: never more rows in flight than its limit plus one read.
async fn a_long_transaction_of_late_rows_is_read_in_bounded_batches(kind: Kind) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, "longtx");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", ""));
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    let n = late_rows();
    let (begin, series) = match kind {
        Kind::Pg => ("BEGIN;", format!("generate_series(1, {n}) g")),
        _ => ("START TRANSACTION;", format!("seq_1_to_{n} g")),
    };
    let col = if kind == Kind::Pg { "g" } else { "g.seq" };
    let mut long = db.session();
    long.send(&format!(
        "{begin} INSERT INTO appointments (id, clinic) SELECT {col}, 'long' FROM {series};
         UPDATE appointments SET clinic = 'long2' WHERE id <= 100;"
    ));
    wait_for_open_tx(&db, "long2", n + 100, Duration::from_secs(600)).await;
    // Short commits move the cursor past the long transaction's seqs.
    for i in 1..=5 {
        db.sql(&format!(
            "INSERT INTO appointments (id, clinic) VALUES ({}, 'short');",
            10_000_000 + i
        ));
    }
    assert_eq!(w.wait_count(5, Duration::from_secs(30)).await, 5);
    long.send("COMMIT;");
    long.finish();
    // Newer changes to keys of the long transaction: they must follow its rows.
    db.sql("UPDATE appointments SET clinic = 'after' WHERE id <= 50;");
    let total = n + 100 + 5 + 50;
    let mut peak = 0;
    wait_for(
        "the late rows to be drained",
        Duration::from_secs(60 + n / 1000),
        || {
            let flying = w.status()["sources"]["vista"]["rows_in_flight"].as_u64();
            peak = peak.max(flying.unwrap_or(0));
            capture_rows(&db) == 0
        },
    )
    .await;
    drained(&db, &w).await;
    let hwm = agent.peak_rss_kib();
    eprintln!("{kind:?}: {n} late rows: peak rows in flight {peak}, agent peak RSS {hwm} KiB");
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    // The drain reads while fewer than 16,384 rows are in flight, at most 2,048 a read.
    assert!(
        peak <= 16_384 + 2_048,
        "{peak} capture rows in flight at once: late rows were read without a bound"
    );
    let largest = agent_log(&w)
        .lines()
        .filter_map(|l| {
            let (n, _) = l.split_once(" row(s) committed late")?;
            n.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .max();
    assert!(
        largest.is_some_and(|l| l <= 2_048),
        "late rows in one read: {largest:?} (at most 2,048)"
    );
    // Each key's changes, once each and in commit order (kept small: the heavy run
    // has a million keys).
    let mut first100: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut longs = vec![0u8; n as usize + 1];
    let mut others = Vec::new();
    let mut seen = 0u64;
    w.each_message(|m| {
        seen += 1;
        let id = m.json["key"]["id"].as_i64().unwrap_or(0);
        let clinic = m.json["after"]["clinic"].as_str().unwrap_or("?").to_owned();
        match id {
            1..=100 => first100.entry(id).or_default().push(clinic),
            _ if id > 0 && (id as u64) <= n && clinic == "long" => longs[id as usize] += 1,
            _ => others.push((id, clinic)),
        }
    })
    .await;
    assert_eq!(seen, total);
    for (id, got) in first100 {
        let want: &[&str] = if id <= 50 {
            &["long", "long2", "after"]
        } else {
            &["long", "long2"]
        };
        assert_eq!(got, want, "key {id}: its changes in commit order");
    }
    let wrong = (101..=n as usize).filter(|&i| longs[i] != 1).count();
    assert_eq!(wrong, 0, "keys above 100 without exactly one event");
    others.sort();
    let short: Vec<(i64, String)> = (1..=5)
        .map(|i| (10_000_000 + i, "short".to_owned()))
        .collect();
    assert_eq!(others, short);
}

#[tokio::test]
async fn postgres_a_long_transaction_of_late_rows_is_read_in_bounded_batches() {
    a_long_transaction_of_late_rows_is_read_in_bounded_batches(Kind::Pg).await;
}

#[tokio::test]
async fn mariadb_odbc_a_long_transaction_of_late_rows_is_read_in_bounded_batches() {
    a_long_transaction_of_late_rows_is_read_in_bounded_batches(Kind::Maria).await;
}

#[tokio::test]
async fn postgres_a_late_commit_with_a_lower_seq_is_delivered() {
    a_late_commit_is_delivered(Kind::Pg).await;
}

#[tokio::test]
async fn mariadb_odbc_a_late_commit_with_a_lower_seq_is_delivered() {
    a_late_commit_is_delivered(Kind::Maria).await;
}

/// 1,000 updates of one key in a burst: keys mode sends the final state (at least once,
/// far fewer than 1,000 times); rows mode sends all 1,000, in order.
#[tokio::test]
async fn postgres_a_burst_on_one_key_keys_vs_rows() {
    for capture in ["keys", "rows"] {
        let w = World::new();
        let db = Db::new(Kind::Pg, &w, &format!("burst_{capture}"));
        db.create_tables();
        db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'v0');");
        let cfg = w.config_with(&db.source(&["appointments"], capture, ""));
        install(&w, &cfg);
        let mut burst = String::new();
        for i in 1..=1000 {
            burst.push_str(&format!(
                "UPDATE appointments SET clinic = 'v{i}' WHERE id = 1;\n"
            ));
        }
        db.sql(&burst);
        let mut agent = w.agent(&cfg);
        drained(&db, &w).await;
        assert_eq!(agent.stop(), Some(0));
        let msgs = w.messages().await;
        assert_no_duplicate_ids(&msgs);
        let values: Vec<String> = msgs
            .iter()
            .map(|m| m.json["after"]["clinic"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            values.last().map(String::as_str),
            Some("v1000"),
            "{capture}"
        );
        if capture == "rows" {
            let want: Vec<String> = (1..=1000).map(|i| format!("v{i}")).collect();
            assert_eq!(values, want, "every update, in order");
            assert!(msgs.iter().all(|m| m.json["op"] == "u"));
        } else {
            assert!(
                values.len() <= 4,
                "keys mode sent {} events for one key",
                values.len()
            );
            assert!(msgs.iter().all(|m| m.json["op"] == "u"));
        }
    }
}

/// kill -9 of the agent while it drains: nothing lost, nothing twice in the stream.
#[tokio::test]
async fn postgres_kill_9_while_draining_loses_and_repeats_nothing() {
    let w = World::new();
    let db = Db::new(Kind::Pg, &w, "kill");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", ""));
    install(&w, &cfg);
    let n = 20_000u64;
    let mut sql = String::new();
    for from in (1..=n).step_by(1000) {
        sql.push_str(&format!(
            "INSERT INTO appointments (id, clinic) SELECT g, 'c' || g FROM generate_series({from}, {}) g;\n",
            from + 999
        ));
    }
    db.sql(&sql);
    for round in 0..3 {
        let mut agent = w.agent(&cfg);
        let target = (round + 1) * n / 5;
        w.wait_count(target, Duration::from_secs(60)).await;
        agent.kill9();
    }
    let mut agent = w.agent(&cfg);
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let mut ids = ints(&msgs, "id");
    assert_eq!(
        ids.len() as u64,
        n,
        "every insert exactly once\n{}",
        agent_log(&w)
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, n);
}

/// Waits until the agent reports its database lost and a reconnect refused.
async fn wait_db_down(w: &World) {
    wait_for(
        "the agent to report the database down",
        Duration::from_secs(60),
        || w.metric("lockstep_source_db_errors_total{source=\"vista\"}") >= 2,
    )
    .await;
    assert_eq!(
        w.metric("lockstep_source_db_connected{source=\"vista\"}"),
        0
    );
}

/// After a database outage: the agent says it is back, and the stream holds ids 1..=n,
/// each exactly once. A failure says what is missing or doubled in a few lines (the
/// agent's log stays in the test's kept directory).
async fn back_with_every_id(w: &World, agent: &mut Agent, n: i64) {
    // Generous: on a loaded 2-core machine the server's recovery and the agent's
    // backoff can take minutes; the deadline only bounds a stuck test.
    let arrived = w.wait_count(n as u64, Duration::from_secs(300)).await;
    wait_for(
        "the agent to report the database up",
        Duration::from_secs(60),
        || w.metric("lockstep_source_db_connected{source=\"vista\"}") == 1,
    )
    .await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let diff = id_diff(&ints(&msgs, "id"), 1..=n);
    assert!(
        diff.is_empty(),
        "{diff} ({arrived} message(s) in the stream when the wait ended, {} after the stop)",
        msgs.len()
    );
    assert!(agent_log(w).contains("connected to the database again"));
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

/// The database connection is cut and refused for a while under the agent: it says so,
/// reconnects, and loses nothing written before, during and after.
#[tokio::test]
async fn postgres_connection_lost_and_refused_loses_nothing() {
    let mut w = World::new();
    w.with_admin();
    let dbname = format!("lockstep_outage_{}", std::process::id());
    let admin = |sql: &str| {
        psql_on("test", sql);
    };
    admin(&format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"));
    admin(&format!("CREATE DATABASE {dbname}"));
    let run = |sql: &str| psql_on(&dbname, sql);
    run("CREATE TABLE appointments (id int PRIMARY KEY, clinic text)");
    let source = format!(
        "[[source]]\nname = \"vista\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 user=postgres dbname={dbname}\"\ntables = [\"appointments\"]\ncapture = \"keys\"\n"
    );
    let cfg = w.config_with(&source);
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    let insert = |from: u64, to: u64| {
        run(&format!(
            "INSERT INTO appointments SELECT g, 'c' || g FROM generate_series({from}, {to}) g"
        ))
    };
    insert(1, 500);
    w.wait_count(500, Duration::from_secs(30)).await;
    // Writes the agent has not seen, then the connection is cut and refused.
    insert(501, 1000);
    admin(&format!("ALTER DATABASE {dbname} ALLOW_CONNECTIONS false"));
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    ));
    wait_db_down(&w).await;
    admin(&format!("ALTER DATABASE {dbname} ALLOW_CONNECTIONS true"));
    insert(1001, 1500);
    back_with_every_id(&w, &mut agent, 1500).await;
    assert_eq!(run("SELECT count(*) FROM lockstep_changes"), "0");
    admin(&format!("DROP DATABASE {dbname} WITH (FORCE)"));
}

/// Changes made by a session that set lockstep's origin marker are not published.
async fn origin_marked_changes_are_not_published(kind: Kind) {
    let w = World::new();
    let db = Db::new(kind, &w, "origin");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "keys", ""));
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    let mark = match kind {
        Kind::Pg => "SET lockstep.origin = 'apply';",
        _ => "SET @lockstep_origin = 'apply';",
    };
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'plain');");
    w.wait_count(1, Duration::from_secs(30)).await;
    drained(&db, &w).await;
    db.sql(&format!(
        "{mark} INSERT INTO appointments (id, clinic) VALUES (2, 'marked'); UPDATE appointments SET clinic = 'marked' WHERE id = 1;"
    ));
    db.sql("INSERT INTO appointments (id, clinic) VALUES (3, 'plain');");
    drained(&db, &w).await;
    w.wait_count(2, Duration::from_secs(30)).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let ids = ints(&msgs, "id");
    assert_eq!(ids, [1, 3], "only the unmarked changes");
    assert_eq!(msgs[0].json["after"]["clinic"], "plain");
}

#[tokio::test]
async fn postgres_origin_marked_changes_are_not_published() {
    origin_marked_changes_are_not_published(Kind::Pg).await;
}

#[tokio::test]
async fn mariadb_odbc_origin_marked_changes_are_not_published() {
    origin_marked_changes_are_not_published(Kind::Maria).await;
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
    fn crash(&self) {
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

/// The database server crashes and comes back while the agent drains: it reconnects and
/// every change arrives exactly once.
#[tokio::test]
async fn postgres_server_restarted_under_the_agent_loses_nothing() {
    let mut w = World::new();
    w.with_admin();
    let pg = PrivatePg::start();
    pg.sql("CREATE TABLE appointments (id int PRIMARY KEY, clinic text)");
    let source = format!(
        "[[source]]\nname = \"vista\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 port={} user=postgres dbname=postgres\"\ntables = [\"appointments\"]\ncapture = \"rows\"\n",
        pg.port
    );
    let cfg = w.config_with(&source);
    install(&w, &cfg);
    let insert = |from: u64, to: u64| {
        pg.sql(&format!(
            "INSERT INTO appointments SELECT g, 'c' || g FROM generate_series({from}, {to}) g"
        ))
    };
    insert(1, 50_000);
    let mut agent = w.agent(&cfg);
    w.wait_count(1_000, Duration::from_secs(60)).await;
    // Crashed part-way through the drain.
    pg.crash();
    wait_db_down(&w).await;
    pg.up();
    insert(50_001, 51_000);
    back_with_every_id(&w, &mut agent, 51_000).await;
    assert_eq!(
        pg.sql("SELECT count(*) FROM lockstep_changes"),
        "0",
        "capture rows left after a clean stop"
    );
}

/// Binary columns (bytea, VARBINARY, BLOB) arrive as base64, through the triggers'
/// images, the current-row reads of `keys` mode and a snapshot; NULL stays null and an
/// empty value stays empty.
async fn binary_values_arrive_as_base64(kind: Kind, capture: &str) {
    let w = World::new();
    let db = Db::new(kind, &w, &format!("bin_{capture}"));
    let (ty, bytes): (&str, fn(&str) -> String) = match kind {
        Kind::Pg => ("bytea", |h| format!("'\\x{h}'::bytea")),
        Kind::Maria => ("varbinary(64)", |h| format!("X'{h}'")),
        Kind::Lite => ("BLOB", |h| format!("X'{h}'")),
    };
    db.sql(&format!(
        "CREATE TABLE scans (id int PRIMARY KEY, image {ty});
         INSERT INTO scans VALUES (1, {});",
        bytes("00FF1041")
    ));
    let cfg = w.config_with(&db.source(&["scans"], capture, "snapshot = \"initial\""));
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    db.sql(&format!(
        "INSERT INTO scans VALUES (2, {}); INSERT INTO scans VALUES (3, NULL); INSERT INTO scans VALUES (4, {});
         UPDATE scans SET image = {} WHERE id = 1;",
        bytes("DEADBEEF"),
        bytes(""),
        bytes("0102")
    ));
    crate::snapshot::wait_finished(&w, 1).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let mut state: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for m in &msgs {
        let id = m.json["key"]["id"].as_i64().unwrap();
        let image = m.json["after"]["image"].clone();
        assert!(image.is_string() || image.is_null(), "{}", m.json);
        state.insert(id, image);
    }
    let want: BTreeMap<i64, serde_json::Value> = [
        (1, serde_json::json!("AQI=")),
        (2, serde_json::json!("3q2+7w==")),
        (3, serde_json::Value::Null),
        (4, serde_json::json!("")),
    ]
    .into_iter()
    .collect();
    assert_eq!(state, want, "{}", agent_log(&w));
    // The row that was there before the triggers came by the snapshot.
    assert!(msgs
        .iter()
        .any(|m| m.json["op"] == "r" && m.json["key"]["id"] == 1));
    if capture == "rows" {
        let update = msgs.iter().find(|m| m.json["op"] == "u").unwrap();
        assert_eq!(update.json["before"]["image"], "AP8QQQ==");
    }
}

#[tokio::test]
async fn postgres_binary_values_arrive_as_base64_rows() {
    binary_values_arrive_as_base64(Kind::Pg, "rows").await;
}

#[tokio::test]
async fn mariadb_odbc_binary_values_arrive_as_base64_keys() {
    binary_values_arrive_as_base64(Kind::Maria, "keys").await;
}

#[tokio::test]
async fn mariadb_odbc_binary_values_arrive_as_base64_rows() {
    binary_values_arrive_as_base64(Kind::Maria, "rows").await;
}

#[tokio::test]
async fn sqlite_odbc_binary_values_arrive_as_base64_keys() {
    binary_values_arrive_as_base64(Kind::Lite, "keys").await;
}

/// How the agent is stopped between the parts of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Kill9,
    Term,
}

/// The random workload of 3,000 changes, written in five parts by two sessions at once
/// (their transactions commit out of `seq` order), with the agent stopped (`how`) and
/// started again at each part: right after an even part was written, and while an odd
/// one is still being written, once the agent has published some of it; once with the
/// broker away at the start. Whatever the moment, replaying the stream gives the
/// tables and no message id repeats.
pub async fn workload_survives_restarts(kind: Kind, capture: &str, how: Restart, seed: u64) {
    let mut w = World::new();
    let tag = format!("restart_{capture}_{how:?}").to_lowercase();
    let db = Db::new(kind, &w, &tag);
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments", "clinics"], capture, ""));
    install(&w, &cfg);
    // Two writers, on keys of their own, each in five parts: the mixed workload, and
    // one on 200 hot keys.
    let parts: Vec<Vec<String>> = (0..2)
        .map(|k| {
            let all = if k == 0 {
                workload(&db, seed * 10 + k, 1500)
            } else {
                hot_workload(&db, seed * 10 + k, 1500, 200)
            };
            let txs: Vec<&str> = all.split_inclusive("COMMIT;").collect();
            txs.chunks(txs.len().div_ceil(5))
                .map(|c| c.concat())
                .collect()
        })
        .collect();
    let mut agent = w.agent(&cfg);
    for i in 0..5 {
        let before = w.count().await;
        let mut writers = Vec::new();
        for p in &parts {
            let mut s = db.session();
            s.send(p.get(i).map_or("", String::as_str));
            writers.push(s);
        }
        if i % 2 == 0 {
            // Right after the part: the agent is reading it.
            writers.drain(..).for_each(|s| {
                // The truth is read back from the tables: a writer stopped by a
                // conflict with the other one only means fewer changes.
                s.finish();
            });
        } else {
            w.wait_count(before + 1, Duration::from_secs(30)).await;
        }
        match how {
            Restart::Kill9 => agent.kill9(),
            Restart::Term => assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w)),
        }
        if i == 2 {
            // Once with the broker away at the start: the drain's first events go to the
            // spool, and the capture rows are deleted before anything reaches the stream.
            w.nats.kill();
            agent = w.agent(&cfg);
            db.sql("INSERT INTO clinics VALUES ('SPOOLED', 1, NULL);");
            wait_for("the spool to take events", Duration::from_secs(30), || {
                w.spool_waiting(&cfg) > 0
            })
            .await;
            w.nats.restart();
        } else {
            agent = w.agent(&cfg);
        }
        writers.into_iter().for_each(|s| {
            s.finish();
        });
    }
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    if capture == "keys" {
        // `<capture table>.<last seq>@<ms>~<digest of the op and row>`: a row read
        // again that changed since is not taken for a repeat.
        for m in &msgs {
            let p = m.json["source"]["position"].as_str().unwrap_or_default();
            let digest = p.rsplit_once('~').map_or("", |(_, d)| d);
            assert_eq!(digest.len(), 16, "position {p}");
        }
    }
    let expected = db.dump();
    assert!(
        expected.len() > 100,
        "the workload left {} rows",
        expected.len()
    );
    let got = replay(&msgs);
    let mut diff = Vec::new();
    for (k, v) in &expected {
        match got.get(k) {
            None => diff.push(format!("{k}: no event (the table has {v})")),
            Some(g) if g != v => {
                diff.push(format!("{k}: the stream ends on {g}, the table has {v}"))
            }
            _ => {}
        }
    }
    for (k, g) in got.iter().filter(|(k, _)| !expected.contains_key(*k)) {
        diff.push(format!("{k}: the stream ends on {g}, the row is deleted"));
    }
    assert!(
        diff.is_empty(),
        "{capture} ({how:?}, seed {seed}): replaying the stream differs from the tables at {} key(s):\n{}",
        diff.len(),
        diff.join("\n")
    );
}

/// How many rounds the restart tests run (`LOCKSTEP_RESTART_ROUNDS`, default 3;
/// `scripts/soak-keys-restarts N` sets N).
fn restart_rounds() -> u64 {
    std::env::var("LOCKSTEP_RESTART_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

async fn restarts_lose_nothing(kind: Kind, capture: &str, how: Restart) {
    let first: u64 = std::env::var("LOCKSTEP_RESTART_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(21);
    for round in 0..restart_rounds() {
        workload_survives_restarts(kind, capture, how, first + round).await;
    }
}

#[tokio::test]
async fn postgres_keys_kill_9_restarts_lose_nothing() {
    restarts_lose_nothing(Kind::Pg, "keys", Restart::Kill9).await;
}

#[tokio::test]
async fn postgres_keys_sigterm_restarts_lose_nothing() {
    restarts_lose_nothing(Kind::Pg, "keys", Restart::Term).await;
}

#[tokio::test]
async fn mariadb_odbc_keys_kill_9_restarts_lose_nothing() {
    restarts_lose_nothing(Kind::Maria, "keys", Restart::Kill9).await;
}

#[tokio::test]
async fn sqlite_odbc_keys_kill_9_restarts_lose_nothing() {
    restarts_lose_nothing(Kind::Lite, "keys", Restart::Kill9).await;
}

/// How the capture table's `seq` is made to start again between two runs.
#[derive(Clone, Copy, Debug)]
enum SeqReset {
    /// `TRUNCATE lockstep_changes RESTART IDENTITY` (PostgreSQL: same table, same oid;
    /// MariaDB: `TRUNCATE TABLE`, same creation time).
    Truncate,
    /// `lockstep triggers uninstall`, then `install` (SQLite: the table made anew).
    Reinstall,
}

/// Two runs of the same random workload into one stream, one state directory and one
/// agent config, with the source tables made anew and the capture table's `seq` started
/// again in between, well inside the stream's duplicate window: every change of the
/// second run is in the stream after it started, and replaying that part gives the
/// tables. A change's id must not be the id of another change the stream still
/// remembers, even when both were written as the same `seq` of a capture table with
/// the same identity, and carry the same row.
async fn a_seq_started_again_under_a_reused_stream_loses_nothing(
    kind: Kind,
    capture: &str,
    reset: SeqReset,
) {
    let w = World::new();
    let db = Db::new(kind, &w, &format!("reseq_{capture}"));
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments", "clinics"], capture, ""));
    install(&w, &cfg);
    let changes = workload(&db, 61, 600);
    let mut agent = w.agent(&cfg);
    db.sql(&changes);
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let first = w.count().await;
    assert!(first > 100, "{first} messages");

    db.sql("DROP TABLE appointments; DROP TABLE clinics;");
    match reset {
        SeqReset::Truncate => {
            // MariaDB's TRUNCATE starts AUTO_INCREMENT again and keeps the table's
            // creation time (its identity in positions).
            db.sql(match kind {
                Kind::Pg => "TRUNCATE lockstep_changes RESTART IDENTITY;",
                _ => "TRUNCATE TABLE lockstep_changes;",
            });
            db.create_tables();
        }
        SeqReset::Reinstall => {
            db.create_tables();
            let (code, out, err) =
                lockstep(&["triggers", "uninstall", "--config", cfg.to_str().unwrap()]);
            assert_eq!(code, 0, "{out}{err}");
            assert!(!capture_table_exists(&db), "{out}{err}");
        }
    }
    install(&w, &cfg);
    // The same job again: the same changes, the same rows.
    let mut agent = w.agent(&cfg);
    db.sql(&changes);
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    let second = &msgs[first as usize..];
    let expected = db.dump();
    let got = replay(second);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| got.get(*k) != expected.get(*k))
        .collect();
    assert!(
        missing.is_empty() && got.len() == expected.len(),
        "{capture} ({reset:?}): the second run's {} message(s) replay to {} row(s), the tables hold {}; \
         {} key(s) missing or different, e.g. {:?}",
        second.len(),
        got.len(),
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test]
async fn postgres_keys_capture_seq_restarted_under_a_reused_stream_loses_nothing() {
    a_seq_started_again_under_a_reused_stream_loses_nothing(Kind::Pg, "keys", SeqReset::Truncate)
        .await;
}

#[tokio::test]
async fn postgres_rows_capture_seq_restarted_under_a_reused_stream_loses_nothing() {
    a_seq_started_again_under_a_reused_stream_loses_nothing(Kind::Pg, "rows", SeqReset::Truncate)
        .await;
}

#[tokio::test]
async fn sqlite_odbc_keys_reinstall_under_a_reused_stream_loses_nothing() {
    a_seq_started_again_under_a_reused_stream_loses_nothing(
        Kind::Lite,
        "keys",
        SeqReset::Reinstall,
    )
    .await;
}

#[tokio::test]
async fn mariadb_odbc_keys_capture_seq_restarted_under_a_reused_stream_loses_nothing() {
    a_seq_started_again_under_a_reused_stream_loses_nothing(
        Kind::Maria,
        "keys",
        SeqReset::Truncate,
    )
    .await;
}
