//! Schema drift cases a review found: a primary key that changes under the old triggers
//! (no false deletes, nothing quarantined), one broken table among several (the others
//! keep draining), and trigger bodies the agent cannot read (no false alarm).

use std::time::Duration;

use crate::harness::*;
use crate::harness::{assert_no_duplicate_ids, capture_rows, drained, Db, Kind};

fn install(cfg: &std::path::Path) {
    let (code, out, err) = lockstep(&[
        "triggers",
        "install",
        "--source",
        "vista",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A world with the admin API; database `tag` of `kind` with its tables; and a config
/// of source `vista` on `tables` (`capture`, `extra`), its triggers installed.
fn drift_setup(
    kind: Kind,
    tag: &str,
    tables: &[&str],
    capture: &str,
    extra: &str,
) -> (World, Db, std::path::PathBuf) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, tag);
    db.create_tables();
    let cfg = w.config_with(&db.source(tables, capture, extra));
    install(&cfg);
    (w, db, cfg)
}

/// Waits for `n` events in the stream; the agent's log if they do not come.
async fn arrived(w: &World, n: u64) {
    assert_eq!(
        w.wait_count(n, Duration::from_secs(30)).await,
        n,
        "{}",
        agent_log(w)
    );
}

/// The one capture row the drift holds is kept, nothing quarantined; `install` run
/// again, it (`what`) is set aside: quarantined, its capture row gone.
async fn kept_then_set_aside(w: &World, db: &Db, cfg: &std::path::Path, what: &str) {
    assert_eq!(capture_rows(db), 1, "kept while the drift lasts");
    assert_eq!(w.metric_sum("lockstep_quarantined_records_total"), 0);
    install(cfg);
    wait_for(
        &format!("{what} set aside"),
        Duration::from_secs(60),
        || capture_rows(db) == 0,
    )
    .await;
    assert_eq!(
        w.metric_sum("lockstep_quarantined_records_total"),
        1,
        "{}",
        agent_log(w)
    );
}

fn metric_line(w: &World, name: &str) -> Option<u64> {
    w.admin("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn drift_metric(table: &str) -> String {
    format!("lockstep_trigger_drift{{source=\"vista\",table=\"{table}\"}}")
}

fn status_drift(w: &World, table: &str) -> String {
    w.status()["sources"]["vista"]["trigger_drift"][table]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `capture = "keys"`: the table's primary key changes under the old triggers (SQLite:
/// the key column renamed; MariaDB and PostgreSQL: a column added to the key). The
/// triggers still record the old key; each changed row must arrive as an update, never
/// as a delete, and nothing may be quarantined. Then `install` makes the new key
/// captured.
async fn a_changed_primary_key_sends_no_false_deletes(kind: Kind) {
    let (w, db, cfg) = drift_setup(
        kind,
        "drift_rekey",
        &["appointments"],
        "keys",
        "schema_check = \"1s\"",
    );
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);
    db.sql(
        "INSERT INTO appointments (id, clinic, note) VALUES (1, 'a', 'n1');
         INSERT INTO appointments (id, clinic, note) VALUES (2, 'b', 'n2');
         INSERT INTO appointments (id, clinic, note) VALUES (3, 'c', 'n3');",
    );
    arrived(&w, 3).await;
    let (key, rekey) = match kind {
        Kind::Lite => (
            "appt_id",
            "ALTER TABLE appointments RENAME COLUMN id TO appt_id;",
        ),
        Kind::Maria => (
            "id",
            "ALTER TABLE appointments ADD COLUMN x int NOT NULL DEFAULT 0, DROP PRIMARY KEY, ADD PRIMARY KEY (id, x);",
        ),
        Kind::Pg => (
            "id",
            "ALTER TABLE appointments ADD COLUMN x int NOT NULL DEFAULT 0;
             ALTER TABLE appointments DROP CONSTRAINT appointments_pkey;
             ALTER TABLE appointments ADD PRIMARY KEY (id, x);",
        ),
    };
    db.sql(rekey);
    // Written under the old triggers, read after the new key is seen (at the next read
    // or at the next check, whichever comes first).
    db.sql("UPDATE appointments SET note = 'after' WHERE clinic IN ('a', 'b');");
    wait_for("both updates", Duration::from_secs(30), || {
        capture_rows(&db) == 0
    })
    .await;
    arrived(&w, 5).await;
    // The drift is reported: the triggers record another key than the table's.
    wait_for("the key drift", Duration::from_secs(30), || {
        status_drift(&w, "appointments").contains("which is not the table's primary key")
    })
    .await;
    // Installed again: the new key is captured.
    install(&cfg);
    db.sql("UPDATE appointments SET note = 'reinstalled' WHERE clinic = 'c';");
    arrived(&w, 6).await;
    drained(&db, &w).await;
    wait_for("no drift", Duration::from_secs(30), || {
        metric_line(&w, &drift_metric("appointments")) == Some(0)
    })
    .await;
    assert_eq!(
        w.metric_sum("lockstep_quarantined_records_total"),
        0,
        "{}",
        log()
    );
    assert!(w.quarantined_files("").is_empty(), "{}", log());
    assert_eq!(agent.stop(), Some(0), "{}", log());
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert_eq!(msgs.len(), 6, "{msgs:?}");
    assert!(
        msgs.iter().all(|m| m.json["op"] != "d"),
        "a false delete: {msgs:?}"
    );
    let after: Vec<&serde_json::Value> = msgs[3..5].iter().map(|m| &m.json).collect();
    let mut ids: Vec<i64> = after
        .iter()
        .map(|j| {
            assert_eq!(j["op"], "u", "{j}");
            assert_eq!(j["after"]["note"], "after", "{j}");
            j["after"][key].as_i64().unwrap_or_else(|| panic!("{j}"))
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2], "{msgs:?}");
    let last = &msgs[5].json;
    assert_eq!(
        (&last["op"], &last["after"]["note"], &last["key"][key]),
        (&"u".into(), &"reinstalled".into(), &3.into()),
        "{last}"
    );
}

#[tokio::test]
async fn sqlite_odbc_keys_a_renamed_key_column_sends_no_false_deletes() {
    a_changed_primary_key_sends_no_false_deletes(Kind::Lite).await;
}

#[tokio::test]
async fn mariadb_odbc_keys_a_widened_primary_key_sends_no_false_deletes() {
    a_changed_primary_key_sends_no_false_deletes(Kind::Maria).await;
}

#[tokio::test]
async fn postgres_keys_a_widened_primary_key_sends_no_false_deletes() {
    a_changed_primary_key_sends_no_false_deletes(Kind::Pg).await;
}

/// Two tables; one loses its primary key, then is dropped. It is reported (drift), and
/// the other table's changes keep flowing all along.
async fn a_broken_table_does_not_stall_the_others(kind: Kind) {
    let (w, db, cfg) = drift_setup(
        kind,
        "drift_broken",
        &["appointments", "clinics"],
        "rows",
        "schema_check = \"1s\"",
    );
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);
    db.sql(
        "INSERT INTO appointments (id, clinic) VALUES (1, 'a');
         INSERT INTO clinics (region, code, name) VALUES ('N', 1, 'North');",
    );
    arrived(&w, 2).await;
    db.sql(match kind {
        Kind::Pg => "ALTER TABLE clinics DROP CONSTRAINT clinics_pkey;",
        _ => "ALTER TABLE clinics DROP PRIMARY KEY;",
    });
    wait_for(
        "the key-less table reported",
        Duration::from_secs(30),
        || status_drift(&w, "clinics").contains("has no primary key"),
    )
    .await;
    assert_eq!(metric_line(&w, &drift_metric("clinics")), Some(1));
    db.sql("INSERT INTO appointments (id, clinic) VALUES (2, 'b');");
    arrived(&w, 3).await;
    db.sql("DROP TABLE clinics;");
    wait_for(
        "the dropped table reported",
        Duration::from_secs(30),
        || status_drift(&w, "clinics").contains("does not exist"),
    )
    .await;
    db.sql("INSERT INTO appointments (id, clinic) VALUES (3, 'c');");
    arrived(&w, 4).await;
    drained(&db, &w).await;
    // The drift check's table errors are no lost connections.
    assert_eq!(
        w.metric_sum("lockstep_source_db_errors_total"),
        0,
        "{}",
        log()
    );
    assert_eq!(agent.stop(), Some(0), "{}", log());
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let ids: Vec<i64> = msgs
        .iter()
        .filter_map(|m| m.json["key"]["id"].as_i64())
        .collect();
    assert_eq!(ids, [1, 2, 3], "{msgs:?}");
}

#[tokio::test]
async fn mariadb_odbc_a_broken_table_does_not_stall_the_others() {
    a_broken_table_does_not_stall_the_others(Kind::Maria).await;
}

#[tokio::test]
async fn postgres_a_broken_table_does_not_stall_the_others() {
    a_broken_table_does_not_stall_the_others(Kind::Pg).await;
}

/// PostgreSQL through psqlODBC: the drift check has no trigger bodies to read there; it
/// must not report every table as having no trigger.
#[tokio::test]
async fn postgres_odbc_tables_are_not_reported_without_triggers() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Pg, &w, "drift_pgodbc");
    db.create_tables();
    let native = db.source(&["appointments"], "rows", "schema_check = \"1s\"");
    let line = native
        .lines()
        .find(|l| l.starts_with("postgres = "))
        .unwrap()
        .to_owned();
    let cfg = w.config_with(&native.replace(&line, &format!("odbc = \"{}\"", db.odbc())));
    install(&cfg);
    let mut agent = w.agent(&cfg);
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'a');");
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    // A check ran at connect and another since (every second).
    db.sql("INSERT INTO appointments (id, clinic) VALUES (2, 'b');");
    assert_eq!(w.wait_count(2, Duration::from_secs(30)).await, 2);
    let (code, body) = w.admin("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{}", agent_log(&w));
    assert_ne!(metric_line(&w, &drift_metric("appointments")), Some(1));
    assert!(
        !agent_log(&w).contains("no capture trigger"),
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0));
}

/// MariaDB: a user without the TRIGGER privilege sees no trigger bodies. That is a
/// warning to grant it, not a table "without capture trigger".
#[tokio::test]
async fn mariadb_odbc_unreadable_trigger_bodies_are_a_warning_not_drift() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Maria, &w, "drift_notrig");
    db.create_tables();
    let source = db.source(&["appointments"], "rows", "schema_check = \"1s\"");
    let cfg = w.config_with(&source);
    install(&cfg);
    let user = format!("ls_notrig_{}", std::process::id());
    db.sql(&format!(
        "DROP USER IF EXISTS '{user}'@'%';
         CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
         GRANT SELECT, INSERT, UPDATE, DELETE ON {}.* TO '{user}'@'%';",
        db.name
    ));
    let cfg = w.config_with(&source.replace("USER=root", &format!("USER={user};PASSWORD=pw")));
    let mut agent = w.agent(&cfg);
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'a');");
    arrived(&w, 1).await;
    db.sql("INSERT INTO appointments (id, clinic) VALUES (2, 'b');");
    assert_eq!(w.wait_count(2, Duration::from_secs(30)).await, 2);
    wait_for("the warning", Duration::from_secs(30), || {
        agent_log(&w).contains("cannot read the bodies of the capture triggers of `appointments`")
    })
    .await;
    let (code, body) = w.admin("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{}", agent_log(&w));
    assert_ne!(metric_line(&w, &drift_metric("appointments")), Some(1));
    assert!(
        !agent_log(&w).contains("no capture trigger"),
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    db.sql(&format!("DROP USER '{user}'@'%';"));
}

/// PostgreSQL, `capture = "rows"`, no periodic check: a binary column added is typed
/// from its first event; renamed, it must stay typed (same number of columns, other
/// names), and so must a binary column added after one was added and dropped.
#[tokio::test]
async fn postgres_rows_a_renamed_or_replaced_column_is_typed_again() {
    let (w, db, cfg) = drift_setup(
        Kind::Pg,
        "drift_rename",
        &["appointments"],
        "rows",
        "schema_check = \"1h\"",
    );
    let mut agent = w.agent(&cfg);
    // Each change to the table, then a row written after it: row n is the nth event.
    let steps = [
        (
            "ALTER TABLE appointments ADD COLUMN badge bytea;",
            "INSERT INTO appointments (id, badge) VALUES (1, '\\x0102'::bytea);",
        ),
        (
            "ALTER TABLE appointments RENAME COLUMN badge TO tag;",
            "INSERT INTO appointments (id, tag) VALUES (2, '\\x0304'::bytea);",
        ),
        // Added, dropped, and another binary one added: as many columns as before.
        (
            "ALTER TABLE appointments ADD COLUMN c1 int;",
            "INSERT INTO appointments (id, c1) VALUES (3, 1);",
        ),
        (
            "ALTER TABLE appointments DROP COLUMN c1;",
            "INSERT INTO appointments (id) VALUES (4);",
        ),
        (
            "ALTER TABLE appointments ADD COLUMN c2 bytea;",
            "INSERT INTO appointments (id, c2) VALUES (5, '\\x0506'::bytea);",
        ),
    ];
    for (n, (change, insert)) in (1..).zip(steps) {
        db.sql(change);
        db.sql(insert);
        assert_eq!(w.wait_count(n, Duration::from_secs(30)).await, n);
    }
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let after = |i: usize| &msgs[i].json["after"];
    assert_eq!(after(0)["badge"], "AQI=", "{}", after(0));
    assert_eq!(after(1)["tag"], "AwQ=", "{}", after(1));
    assert_eq!(after(4)["c2"], "BQY=", "{}", after(4));
}

/// MariaDB, `capture = "keys"`: an INVISIBLE column is in the catalog but not in
/// `SELECT *`. The table has not changed: it must not be read again at every read.
#[tokio::test]
async fn mariadb_odbc_keys_an_invisible_column_is_not_a_change() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Maria, &w, "drift_invisible");
    db.create_tables();
    db.sql("ALTER TABLE appointments ADD COLUMN secret int INVISIBLE DEFAULT 7;");
    let cfg = w.config_with(&db.source(&["appointments"], "keys", "schema_check = \"1h\""));
    install(&cfg);
    let mut agent = w.agent(&cfg);
    for i in 1..=5 {
        db.sql(&format!(
            "INSERT INTO appointments (id, clinic) VALUES ({i}, 'c{i}');"
        ));
        assert_eq!(w.wait_count(i, Duration::from_secs(30)).await, i);
    }
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let log = agent_log(&w);
    assert_eq!(
        log.matches("has changed: its rows are read with its columns now")
            .count(),
        0,
        "{log}"
    );
    let msgs = w.messages().await;
    assert_eq!(msgs.len(), 5);
    assert!(msgs.iter().all(|m| m.json["op"] == "c"), "{msgs:?}");
}

/// MariaDB, `capture = "keys"`: after the key widened to (id, x), a second row with the
/// same id is inserted under the old triggers, which record only `id`: which row changed
/// is not known. Its capture row is kept while the drift lasts, and set aside (never
/// sent as a delete, never dropped) once the triggers are installed again.
#[tokio::test]
async fn mariadb_odbc_keys_an_ambiguous_old_key_is_kept_then_set_aside() {
    let (w, db, cfg) = drift_setup(
        Kind::Maria,
        "drift_ambiguous",
        &["appointments"],
        "keys",
        "schema_check = \"1s\"",
    );
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'a');");
    arrived(&w, 1).await;
    db.sql(
        "ALTER TABLE appointments ADD COLUMN x int NOT NULL DEFAULT 0, DROP PRIMARY KEY, ADD PRIMARY KEY (id, x);
         INSERT INTO appointments (id, x, clinic) VALUES (1, 1, 'dup');",
    );
    wait_for("the ambiguous key held", Duration::from_secs(30), || {
        w.status()["sources"]["vista"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("several rows of `appointments` have the key (id)"))
    })
    .await;
    kept_then_set_aside(&w, &db, &cfg, "the old row").await;
    db.sql("UPDATE appointments SET clinic = 'b' WHERE id = 1 AND x = 1;");
    arrived(&w, 2).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", log());
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert!(msgs.iter().all(|m| m.json["op"] != "d"), "{msgs:?}");
    let last = &msgs[1].json;
    assert_eq!(
        (
            &last["key"]["id"],
            &last["key"]["x"],
            &last["after"]["clinic"]
        ),
        (&1.into(), &1.into(), &"b".into()),
        "{last}"
    );
    assert!(!w.quarantined_files("").is_empty());
}

/// PostgreSQL, `capture = "keys"`: a key column renamed makes the trigger record the
/// key as null (writes go on). Such a change cannot be looked up: its capture row is
/// kept while the drift lasts (never a delete of a null key, never a quarantine), then
/// set aside once `install` has run; changes after it are captured with the new key.
#[tokio::test]
async fn postgres_keys_a_renamed_key_column_keeps_null_keys_until_install() {
    let (w, db, cfg) = drift_setup(
        Kind::Pg,
        "drift_pgrename",
        &["appointments"],
        "keys",
        "schema_check = \"1s\"",
    );
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'a');");
    arrived(&w, 1).await;
    db.sql(
        "ALTER TABLE appointments RENAME COLUMN id TO appt_id;
         UPDATE appointments SET clinic = 'b' WHERE appt_id = 1;",
    );
    wait_for("the null key held", Duration::from_secs(30), || {
        w.status()["sources"]["vista"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the key has no value for `appt_id`"))
    })
    .await;
    assert!(
        status_drift(&w, "appointments").contains("captured with a null key"),
        "{}",
        w.status()
    );
    kept_then_set_aside(&w, &db, &cfg, "the null key").await;
    db.sql("UPDATE appointments SET clinic = 'c' WHERE appt_id = 1;");
    arrived(&w, 2).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", log());
    let msgs = w.messages().await;
    assert!(msgs.iter().all(|m| m.json["op"] != "d"), "{msgs:?}");
    let last = &msgs[1].json;
    assert_eq!(
        (
            &last["op"],
            &last["key"]["appt_id"],
            &last["after"]["clinic"]
        ),
        (&"u".into(), &1.into(), &"c".into()),
        "{last}"
    );
}

/// A key column's type changes (`int` to `text`) between a key's capture rows being
/// written and read: the row is found, but its key reads as another text (`"1"`, not
/// `1`). Never a delete on that ground: the rows are read again and go out as updates.
#[tokio::test]
async fn postgres_keys_a_key_column_of_another_type_sends_no_false_deletes() {
    let (w, db, cfg) = drift_setup(
        Kind::Pg,
        "drift_retype",
        &["appointments"],
        "keys",
        "schema_check = \"1h\"",
    );
    let mut agent = w.agent(&cfg);
    let log = || agent_log(&w);
    db.sql(
        "INSERT INTO appointments (id, clinic, note) VALUES (1, 'a', 'n1');
         INSERT INTO appointments (id, clinic, note) VALUES (2, 'b', 'n2');",
    );
    arrived(&w, 2).await;
    // In one transaction: the update is captured with the integer key, and the table
    // has a text key by the time it is read.
    db.sql(
        "BEGIN;
         UPDATE appointments SET note = 'after' WHERE id IN (1, 2);
         ALTER TABLE appointments ALTER COLUMN id TYPE text;
         COMMIT;",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while capture_rows(&db) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the updates were not read: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    arrived(&w, 4).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", log());
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    for m in &msgs[2..] {
        assert_eq!(m.json["op"], "u", "a false delete: {}", m.json);
        assert_eq!(m.json["after"]["note"], "after", "{}", m.json);
    }
}
