//! A schema change under a running agent, on each live dialect: a column added, then one
//! dropped, while the application writes. What happens to its writes and to capture,
//! that drift is reported (the `lockstep_trigger_drift` metric, `/healthz`, `/status`,
//! `lockstep status`, `check`, `triggers show`, the log), and that capture is complete
//! again once `lockstep triggers install` has run.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use crate::harness::{assert_no_duplicate_ids, drained, Db, Kind};

const DRIFT: &str = "lockstep_trigger_drift{source=\"vista\",table=\"appointments\"}";

/// Runs SQL that may fail: the output, or the client's error.
fn try_sql(db: &Db, sql: &str) -> Result<String, String> {
    let mut child = db
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
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A metric line's value; `None` while it is not rendered.
fn metric_line(w: &World, name: &str) -> Option<u64> {
    w.admin("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_drift(w: &World, want: u64) {
    wait_for(&format!("{DRIFT} {want}"), Duration::from_secs(30), || {
        metric_line(w, DRIFT) == Some(want)
    })
    .await;
}

/// The reason `/status` gives for `appointments`' drift ("" when none).
fn status_drift(w: &World) -> String {
    w.status()["sources"]["vista"]["trigger_drift"]["appointments"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut a = args.to_vec();
    a.extend(["--config", cfg.to_str().unwrap()]);
    lockstep(&a)
}

fn install(cfg: &Path) {
    let (code, out, err) = cli(cfg, &["triggers", "install", "--source", "vista"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// What a dialect does with a dropped column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// The `ALTER TABLE` works and so do the application's writes.
    Works,
    /// The `ALTER TABLE` works; every write to the table then fails.
    WritesFail,
    /// The `ALTER TABLE` is refused; writes go on.
    Refused,
}

/// The last event of key `id` in the stream.
fn last_of(msgs: &[Msg], id: i64) -> &serde_json::Value {
    &msgs
        .iter()
        .rev()
        .find(|m| m.json["key"]["id"] == id)
        .unwrap_or_else(|| panic!("no event of id {id}"))
        .json["after"]
}

/// `capture_sees_new_column`: a column added before `triggers install` is captured.
async fn schema_change_under_a_running_agent(
    kind: Kind,
    capture: &str,
    capture_sees_new_column: bool,
    on_drop: OnDrop,
) {
    let drifts = !capture_sees_new_column;
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, &format!("drift_{capture}"));
    db.create_tables();
    // Keys mode checks only at start: a new column must be read at once without it.
    let every = if capture == "rows" { "1s" } else { "1h" };
    let cfg = w.config_with(&db.source(
        &["appointments"],
        capture,
        &format!("schema_check = \"{every}\""),
    ));
    install(&cfg);
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);

    // Before: the triggers match the table.
    db.sql("INSERT INTO appointments (id, clinic, note) VALUES (1, 'a', 'n1');");
    assert_eq!(
        w.wait_count(1, Duration::from_secs(30)).await,
        1,
        "{}",
        log()
    );
    wait_drift(&w, 0).await;
    let mut written = 1;

    // Columns added under the agent: a number, and a binary one (sent as base64, so
    // its type must be known as soon as its values are).
    let (int, bin, bytes): (&str, &str, fn(&str) -> String) = match kind {
        Kind::Pg => ("int", "bytea", |h| format!("'\\x{h}'::bytea")),
        Kind::Maria => ("int", "varbinary(8)", |h| format!("X'{h}'")),
        Kind::Lite => ("INTEGER", "BLOB", |h| format!("X'{h}'")),
    };
    db.sql(&format!(
        "ALTER TABLE appointments ADD COLUMN priority {int};
         ALTER TABLE appointments ADD COLUMN badge {bin};"
    ));
    db.sql(&format!(
        "INSERT INTO appointments (id, clinic, note, priority, badge) VALUES (2, 'b', 'n2', 7, {});",
        bytes("0102")
    ));
    written += 1;
    assert_eq!(
        w.wait_count(written, Duration::from_secs(30)).await,
        written
    );
    if drifts {
        wait_drift(&w, 1).await;
        let (code, body) = w.admin("/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("degraded: source vista, table appointments has changed since its capture triggers were installed: column(s) `priority`, `badge` are not captured; run `lockstep triggers install --source vista`"),
            "{body}"
        );
        assert!(
            status_drift(&w).contains("column(s) `priority`, `badge` are not captured"),
            "{}",
            w.status()
        );
        let (code, out, err) = cli(&cfg, &["status"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("DRIFT        table appointments has changed since its capture triggers were installed: column(s) `priority`, `badge` are not captured"),
            "{out}"
        );
        let (code, out, _) = cli(&cfg, &["check"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("source vista")
                && l.contains("appointments")
                && l.contains("FAIL")
                && l.contains(
                    "the table has changed since: column(s) `priority`, `badge` are not captured"
                )),
            "{out}"
        );
        let (code, out, err) = cli(&cfg, &["triggers", "show", "--source", "vista"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("-- DRIFT: table `appointments` has changed since its capture triggers were installed: column(s) `priority`, `badge` are not captured.\n-- The fix: run `lockstep triggers install --source vista`"),
            "{out}"
        );
        assert!(
            log().contains("table `appointments` has changed since its capture triggers were installed: column(s) `priority`, `badge` are not captured"),
            "{}",
            log()
        );
    }

    // A column dropped under the agent.
    let dropped = try_sql(&db, "ALTER TABLE appointments DROP COLUMN note;");
    let write = "INSERT INTO appointments (id, clinic, priority) VALUES (3, 'c', 8);";
    match on_drop {
        OnDrop::Refused => {
            let e = dropped.expect_err("the drop is refused");
            assert!(
                e.contains("error in trigger lockstep_appointments_")
                    && e.contains("no such column"),
                "{e}"
            );
        }
        OnDrop::Works | OnDrop::WritesFail => {
            dropped.unwrap_or_else(|e| panic!("DROP COLUMN: {e}"));
        }
    }
    if on_drop == OnDrop::WritesFail {
        // Every write of the application to the table fails.
        for sql in [
            write,
            "UPDATE appointments SET clinic = 'x' WHERE id = 1;",
            "DELETE FROM appointments WHERE id = 2;",
        ] {
            let e = try_sql(&db, sql).expect_err("the write fails");
            assert!(e.contains("Unknown column 'note'"), "{sql}: {e}");
        }
        wait_for(
            "the drift of the dropped column on /status",
            Duration::from_secs(30),
            || status_drift(&w).contains("the triggers name column(s) `note` that the table no longer has: every insert, update and delete of the table FAILS"),
        )
        .await;
        assert!(w.admin("/healthz").1.contains("`note`"));
    } else {
        db.sql(write);
        written += 1;
        assert_eq!(
            w.wait_count(written, Duration::from_secs(30)).await,
            written
        );
    }

    // Installed again: every write works and every column is captured.
    install(&cfg);
    if on_drop == OnDrop::WritesFail {
        db.sql(write);
        written += 1;
    }
    db.sql(&format!(
        "INSERT INTO appointments (id, clinic, priority, badge) VALUES (4, 'd', 9, {});
         UPDATE appointments SET priority = 10 WHERE id = 2;",
        bytes("DEAD")
    ));
    written += 2;
    assert_eq!(
        w.wait_count(written, Duration::from_secs(30)).await,
        written
    );
    wait_drift(&w, 0).await;
    assert_eq!(status_drift(&w), "", "{}", w.status());
    assert_eq!(w.admin("/healthz"), (200, "ok\n".to_owned()));
    let (code, out, _) = cli(&cfg, &["check"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = cli(&cfg, &["triggers", "show", "--source", "vista"]);
    assert!(!out.contains("DRIFT"), "{out}");
    drained(&db, &w).await;
    // The agent's own reads never failed on the changed table.
    assert_eq!(
        w.metric_sum("lockstep_source_db_errors_total"),
        0,
        "{}",
        log()
    );
    assert_eq!(agent.stop(), Some(0), "{}", log());

    // Keys mode over ODBC reads the table again exactly when it changed: after the
    // added column and after the dropped one, not on every read.
    let reread = if capture == "keys" && kind != Kind::Pg && on_drop == OnDrop::Works {
        2
    } else {
        0
    };
    assert_eq!(
        log()
            .matches("table `appointments` has changed: its rows are read with its columns now")
            .count(),
        reread,
        "{}",
        log()
    );
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert_eq!(msgs.len() as u64, written, "one event per write: {msgs:?}");
    assert_eq!(last_of(&msgs, 1)["note"], "n1");
    // The row added after the column: captured with it only where nothing names columns.
    let two = &msgs
        .iter()
        .find(|m| m.json["key"]["id"] == 2)
        .expect("id 2")
        .json["after"];
    if capture_sees_new_column {
        assert_eq!(
            (&two["priority"], &two["badge"]),
            (&7.into(), &"AQI=".into()),
            "{two}"
        );
    } else {
        assert!(two.get("priority").is_none(), "{two}");
    }
    // Id 3 is written before the reinstall, unless its write failed before it.
    let three = last_of(&msgs, 3);
    if capture_sees_new_column || on_drop == OnDrop::WritesFail {
        assert_eq!(three["priority"], 8, "{three}");
    } else {
        assert!(three.get("priority").is_none(), "{three}");
    }
    // After the reinstall: the new column, and the dropped one gone.
    let (four, two) = (last_of(&msgs, 4), last_of(&msgs, 2));
    assert_eq!(
        (
            &four["priority"],
            &four["badge"],
            &two["priority"],
            &two["badge"]
        ),
        (&9.into(), &"3q0=".into(), &10.into(), &"AQI=".into()),
        "{msgs:?}"
    );
    for row in [three, four, two] {
        assert_eq!(
            row.get("note").is_some(),
            on_drop == OnDrop::Refused,
            "{row}"
        );
    }
}

#[tokio::test]
async fn postgres_rows_schema_change_breaks_nothing() {
    schema_change_under_a_running_agent(Kind::Pg, "rows", true, OnDrop::Works).await;
}

#[tokio::test]
async fn postgres_keys_schema_change_breaks_nothing() {
    schema_change_under_a_running_agent(Kind::Pg, "keys", true, OnDrop::Works).await;
}

#[tokio::test]
async fn mariadb_odbc_rows_schema_change_is_reported_and_fixed_by_install() {
    schema_change_under_a_running_agent(Kind::Maria, "rows", false, OnDrop::WritesFail).await;
}

#[tokio::test]
async fn mariadb_odbc_keys_schema_change_breaks_nothing() {
    schema_change_under_a_running_agent(Kind::Maria, "keys", true, OnDrop::Works).await;
}

#[tokio::test]
async fn sqlite_odbc_rows_schema_change_is_reported_and_fixed_by_install() {
    schema_change_under_a_running_agent(Kind::Lite, "rows", false, OnDrop::Refused).await;
}

#[tokio::test]
async fn sqlite_odbc_keys_schema_change_breaks_nothing() {
    schema_change_under_a_running_agent(Kind::Lite, "keys", true, OnDrop::Works).await;
}

/// The classic SQLite migration (make a new table, copy, drop the old, rename the new):
/// dropping the old table drops its triggers, and the new one has none, so its changes
/// are no longer captured, silently. The agent says so until `install` runs again.
#[tokio::test]
async fn sqlite_odbc_a_rebuilt_table_without_triggers_is_reported() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Lite, &w, "drift_rebuilt");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", "schema_check = \"1s\""));
    install(&cfg);
    let mut agent = w.agent(&cfg);
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'a');");
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    wait_drift(&w, 0).await;
    db.sql(
        "BEGIN;
         CREATE TABLE appointments_new (id INTEGER PRIMARY KEY, clinic TEXT, fee REAL, at TEXT, note TEXT, priority INTEGER);
         INSERT INTO appointments_new (id, clinic, fee, at, note) SELECT id, clinic, fee, at, note FROM appointments;
         DROP TABLE appointments;
         ALTER TABLE appointments_new RENAME TO appointments;
         COMMIT;",
    );
    wait_drift(&w, 1).await;
    let why = status_drift(&w);
    assert!(
        why.contains("it has no capture trigger: its changes are not captured"),
        "{why}"
    );
    let (code, body) = w.admin("/healthz");
    assert!(code == 503 && body.contains("no capture trigger"), "{body}");
    install(&cfg);
    db.sql("INSERT INTO appointments (id, clinic, priority) VALUES (2, 'b', 7);");
    assert_eq!(w.wait_count(2, Duration::from_secs(30)).await, 2);
    wait_drift(&w, 0).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_eq!(last_of(&msgs, 2)["priority"], 7);
}
