//! Golden files for every dialect, and the three dialects that run here applied to live
//! databases through their own command-line clients.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn tables() -> Vec<TableDef> {
    vec![
        TableDef {
            name: "appointments".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "clinic".into(), "fee".into()],
            ..TableDef::default()
        },
        TableDef {
            name: "clinics".into(),
            key: vec!["region".into(), "code".into()],
            columns: vec!["region".into(), "code".into(), "name".into()],
            ..TableDef::default()
        },
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/source/trigger/golden")
}

/// The live tables and one with a binary column, whose images every dialect writes as hex.
fn golden_tables() -> Vec<TableDef> {
    let mut t = tables();
    t.push(TableDef {
        name: "scans".into(),
        key: vec!["id".into()],
        columns: vec!["id".into(), "image".into()],
        binary: vec!["image".into()],
        ..TableDef::default()
    });
    t
}

#[test]
fn every_dialect_matches_its_golden_file() {
    let mut stale = Vec::new();
    for d in Dialect::ALL {
        for (mode, capture) in [("keys", Capture::Keys), ("rows", Capture::Rows)] {
            let text = format!(
                "-- lockstep triggers install ({}, capture = \"{mode}\")\n\n{}-- lockstep triggers uninstall\n\n{}\
                 -- then, only when this counts no trigger left (of any source):\n-- {}\n\n{}",
                d.name(),
                install_script(d, &install(d, &golden_tables(), capture)),
                script(d, &uninstall(d, &golden_tables())),
                capture_triggers_left(d),
                script(d, &drop_capture_table(d))
            );
            let path = golden_dir().join(format!("{}-{mode}.sql", d.name()));
            if std::env::var_os("LOCKSTEP_UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(golden_dir()).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != text {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "DDL differs from {stale:?} (LOCKSTEP_UPDATE_GOLDEN=1 rewrites them; review the diff)"
    );
}

#[test]
fn names_and_quoting() {
    assert_eq!(
        trigger_name("appointments", "ins"),
        "lockstep_appointments_ins"
    );
    assert_eq!(trigger_name("dbo.My Table", ""), "lockstep_dbo_My_Table");
    let long = trigger_name(&"x".repeat(100), "upd");
    assert_eq!(long.len(), 60);
    assert_ne!(long, trigger_name(&"x".repeat(101), "upd"));
    assert_eq!(Dialect::MariaDb.ident("a`b"), "`a``b`");
    assert_eq!(Dialect::SqlServer.ident("a]b"), "[a]]b]");
    assert_eq!(Dialect::Postgres.ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(lit("it's"), "'it''s'");
    let own = ["a".to_owned(), "s.B".to_owned()];
    assert_eq!(own_rows(Dialect::Postgres, &own), "\"tbl\" IN ('a', 's.B')");
    assert_eq!(
        own_rows(Dialect::MariaDb, &own),
        "CAST(`tbl` AS BINARY) IN ('a', 's.B')"
    );
    assert_eq!(Dialect::Postgres.table("dbo.visits"), "\"dbo\".\"visits\"");
    assert_eq!(
        Dialect::from_dbms_name("Microsoft SQL Server"),
        Some(Dialect::SqlServer)
    );
    assert_eq!(Dialect::from_dbms_name("MariaDB"), Some(Dialect::MariaDb));
    assert_eq!(
        Dialect::from_dbms_name("PostgreSQL"),
        Some(Dialect::Postgres)
    );
    assert_eq!(Dialect::from_dbms_name("SQLite"), Some(Dialect::Sqlite));
    assert_eq!(
        Dialect::from_dbms_name("DB2/LINUXX8664"),
        Some(Dialect::Db2)
    );
    assert_eq!(Dialect::from_dbms_name("Oracle"), Some(Dialect::Oracle));
    assert_eq!(Dialect::from_dbms_name("Informix"), None);
}

/// One live database reached through its command-line client.
struct Live {
    dialect: Dialect,
    /// Runs a script; returns stdout (tab- or |-separated rows).
    run: Box<dyn Fn(&str) -> String>,
}

fn run(mut cmd: Command, script: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn postgres(schema: &str) -> Live {
    run(
        psql(None),
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"),
    );
    let schema = schema.to_owned();
    Live {
        dialect: Dialect::Postgres,
        run: Box::new(move |s| run(psql(Some(&schema)), s)),
    }
}

fn psql(schema: Option<&str>) -> Command {
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
    .args(["-v", "ON_ERROR_STOP=1", "-F", "|"]);
    if let Some(s) = schema {
        c.env("PGOPTIONS", format!("-c search_path={s}"));
    }
    c
}

fn mariadb(db: &str) -> Live {
    run(
        mariadb_cmd(None),
        &format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};"),
    );
    let db = db.to_owned();
    Live {
        dialect: Dialect::MariaDb,
        run: Box::new(move |s| run(mariadb_cmd(Some(&db)), s).replace('\t', "|")),
    }
}

fn mariadb_cmd(db: Option<&str>) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "-h",
        "127.0.0.1",
        "-u",
        "root",
        "--batch",
        "--skip-column-names",
    ]);
    if let Some(db) = db {
        c.arg(db);
    }
    c
}

fn sqlite(path: &Path) -> Live {
    let path = path.to_owned();
    Live {
        dialect: Dialect::Sqlite,
        run: Box::new(move |s| {
            let mut c = Command::new("sqlite3");
            c.args(["-bail", "-batch"]).arg(&path);
            run(c, s)
        }),
    }
}

/// The capture table as (op, pk, origin, after) with the JSON parsed.
fn captured(db: &Live) -> Vec<(String, serde_json::Value, String, serde_json::Value)> {
    let q = format!(
        "SELECT {op}, {pk}, COALESCE({origin}, ''), COALESCE({after}, 'null') FROM {t} ORDER BY {seq};\n",
        op = db.dialect.ident("op"),
        pk = db.dialect.ident("pk"),
        origin = db.dialect.ident("origin"),
        after = db.dialect.ident("after"),
        t = db.dialect.ident(CAPTURE_TABLE),
        seq = db.dialect.ident("seq"),
    );
    (db.run)(&q)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            (
                f[0].to_owned(),
                serde_json::from_str(f[1]).unwrap_or_else(|e| panic!("pk {}: {e}", f[1])),
                f[2].to_owned(),
                serde_json::from_str(f[3]).unwrap_or_else(|e| panic!("after {}: {e}", f[3])),
            )
        })
        .collect()
}

/// Installs (twice: it must be idempotent), changes rows, checks the capture table,
/// uninstalls.
fn exercise(db: &Live, capture: Capture, origin_sql: Option<&str>) {
    let d = db.dialect;
    let fee_type = if d == Dialect::Sqlite {
        "NUMERIC"
    } else {
        "DECIMAL(12,2)"
    };
    (db.run)(&format!(
        "CREATE TABLE appointments (id INTEGER PRIMARY KEY, clinic VARCHAR(40), fee {fee_type});\n\
         CREATE TABLE clinics (region VARCHAR(8) NOT NULL, code INTEGER NOT NULL, name VARCHAR(40), PRIMARY KEY (region, code));\n"
    ));
    (db.run)(&install_script(d, &install(d, &tables(), capture)));
    (db.run)(&install_script(d, &install(d, &tables(), capture)));
    (db.run)(
        "INSERT INTO appointments (id, clinic, fee) VALUES (1, 'North', 12.50);\n\
         UPDATE appointments SET clinic = 'South' WHERE id = 1;\n\
         UPDATE appointments SET id = 2 WHERE id = 1;\n\
         DELETE FROM appointments WHERE id = 2;\n\
         INSERT INTO clinics (region, code, name) VALUES ('W', 7, 'West');\n",
    );
    if let Some(set) = origin_sql {
        (db.run)(&format!(
            "{set}\nINSERT INTO appointments (id, clinic, fee) VALUES (9, 'Applied', NULL);\n"
        ));
    }
    let got = captured(db);
    let ops: Vec<(&str, serde_json::Value)> =
        got.iter().map(|g| (g.0.as_str(), g.1.clone())).collect();
    let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    let mut want = vec![
        ("c", j(r#"{"id":1}"#)),
        ("u", j(r#"{"id":1}"#)),
        ("d", j(r#"{"id":1}"#)),
        ("c", j(r#"{"id":2}"#)),
        ("d", j(r#"{"id":2}"#)),
        ("c", j(r#"{"region":"W","code":7}"#)),
    ];
    if origin_sql.is_some() {
        want.push(("c", j(r#"{"id":9}"#)));
    }
    assert_eq!(ops, want, "{d:?}");
    let origins: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
    let mut want_origins = vec![""; 6];
    if origin_sql.is_some() {
        want_origins.push("apply-1");
    }
    assert_eq!(origins, want_origins, "{d:?}");
    match capture {
        Capture::Keys => assert!(got.iter().all(|g| g.3.is_null()), "{got:?}"),
        Capture::Rows => {
            assert_eq!(got[1].3["clinic"], "South", "{d:?}: {:?}", got[1]);
            let fee = &got[1].3["fee"];
            assert!(
                fee.as_f64() == Some(12.5) || fee == "12.50",
                "{d:?}: fee {fee}"
            );
            assert_eq!(got[5].3["name"], "West");
        }
    }
    // One table's triggers go (as one source's would); the other's still count, and
    // still write.
    let left = || -> u64 {
        (db.run)(&format!("{};\n", capture_triggers_left(d)))
            .trim()
            .parse()
            .unwrap()
    };
    let all = left();
    assert!(all > 0, "{d:?}: no capture trigger counted");
    (db.run)(&script(d, &uninstall(d, &tables()[..1])));
    assert!(left() > 0 && left() < all, "{d:?}: {} of {all}", left());
    (db.run)("INSERT INTO clinics (region, code, name) VALUES ('E', 8, 'East');\n");
    assert_eq!(captured(db).len(), 7 + usize::from(origin_sql.is_some()));
    (db.run)(&script(d, &uninstall(d, &tables()[1..])));
    assert_eq!(left(), 0, "{d:?}");
    let exists = || (db.run)(&format!("{};\n", capture_table_exists(d))).trim() == "1";
    assert!(exists(), "{d:?}");
    (db.run)(&script(d, &drop_capture_table(d)));
    assert!(!exists(), "{d:?}");
    (db.run)("INSERT INTO appointments (id, clinic, fee) VALUES (3, 'After', 1);\n");
}

#[test]
fn postgres_triggers_capture_live() {
    for (capture, origin) in [
        (Capture::Keys, Some("SET lockstep.origin = 'apply-1';")),
        (Capture::Rows, None),
    ] {
        let schema = format!("lockstep_ddl_{capture:?}_{}", std::process::id()).to_lowercase();
        exercise(&postgres(&schema), capture, origin);
        run(psql(None), &format!("DROP SCHEMA {schema} CASCADE;"));
    }
}

#[test]
fn mariadb_triggers_capture_live() {
    for (capture, origin) in [
        (Capture::Keys, Some("SET @lockstep_origin = 'apply-1';")),
        (Capture::Rows, None),
    ] {
        let db = format!("lockstep_ddl_{capture:?}_{}", std::process::id()).to_lowercase();
        exercise(&mariadb(&db), capture, origin);
        run(mariadb_cmd(None), &format!("DROP DATABASE {db};"));
    }
}

#[test]
fn sqlite_triggers_capture_live() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&sqlite(&dir.path().join("keys.db")), Capture::Keys, None);
    exercise(&sqlite(&dir.path().join("rows.db")), Capture::Rows, None);
}

#[test]
fn sqlite_blobs_do_not_break_the_write_that_fires_the_trigger() {
    // json_object() refuses BLOBs: without the hex() wrap the application's INSERT fails.
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(&dir.path().join("blob.db"));
    (db.run)(
        "CREATE TABLE appointments (id INTEGER PRIMARY KEY, clinic BLOB, fee NUMERIC);\n\
         CREATE TABLE clinics (region TEXT, code INTEGER, name TEXT, PRIMARY KEY (region, code));\n",
    );
    (db.run)(&script(
        Dialect::Sqlite,
        &install(Dialect::Sqlite, &tables(), Capture::Rows),
    ));
    (db.run)("INSERT INTO appointments (id, clinic, fee) VALUES (1, X'00FF', 2);\n");
    let got = captured(&db);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3["clinic"], "00FF", "{got:?}");
}
