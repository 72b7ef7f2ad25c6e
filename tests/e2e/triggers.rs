//! `lockstep triggers show|install|uninstall` against a live PostgreSQL, through the
//! real binary, checked with psql.

use std::time::Duration;

use crate::harness::*;
use crate::harness::{assert_no_duplicate_ids, capture_table_exists, drained, replay, Db, Kind};

fn psql(sql: &str) -> String {
    psql_on("test", sql)
}

#[test]
fn show_install_and_uninstall_on_postgres() {
    let w = World::new();
    let schema = format!("lockstep_cli_{}", std::process::id());
    psql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.appointments (id int PRIMARY KEY, clinic text);
         CREATE TABLE {schema}.clinics (region text, code int, name text, PRIMARY KEY (region, code));
         CREATE TABLE {schema}.notes (body text);"
    ));
    let cfg_for = |tables: &str| {
        let text = format!(
            "[agent]\nid = \"e2e\"\nstate_dir = \"{state}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"E2E\"\nsubject_prefix = \"legacy\"\ncreate_stream = true\n\n[admin]\nlisten = \"\"\n\n[[source]]\nname = \"vista\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 user=postgres dbname=test options='-c search_path={schema}'\"\ntables = [{tables}]\n",
            state = w.dir().join("state").display(),
            url = w.nats.url(),
        );
        let p = w.dir().join(format!("trigger-{}.toml", tables.len()));
        std::fs::write(&p, text).unwrap();
        p
    };
    let cfg = cfg_for("\"appointments\", \"clinics\"");
    let cfg = cfg.to_str().unwrap();
    let capture_exists = || {
        psql(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND tablename = 'lockstep_changes'")) == "1"
    };

    let (code, out, err) = lockstep(&["triggers", "show", "--source", "vista", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lockstep_capture('keys', 'appointments', 'id')"),
        "{out}"
    );
    assert!(
        out.contains("lockstep_capture('keys', 'clinics', 'region', 'code')"),
        "{out}"
    );
    assert!(!capture_exists(), "show changed the database");

    let (code, out, _) = lockstep(&["check", "--config", cfg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("triggers not installed"), "{out}");

    for _ in 0..2 {
        let (code, out, err) =
            lockstep(&["triggers", "install", "--source", "vista", "--config", cfg]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("appointments (key id), clinics (key region, code)"),
            "{out}"
        );
    }
    psql(&format!(
        "INSERT INTO {schema}.appointments VALUES (445, 'North'); UPDATE {schema}.appointments SET clinic = 'South'"
    ));
    assert_eq!(
        psql(&format!("SELECT string_agg(op || ' ' || pk::jsonb::text, ';' ORDER BY seq) FROM {schema}.lockstep_changes")),
        "c {\"id\": 445};u {\"id\": 445}"
    );
    let (code, out, _) = lockstep(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("triggers installed"), "{out}");

    let (code, out, err) = lockstep(&[
        "triggers",
        "uninstall",
        "--source",
        "vista",
        "--config",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The two changes were never sent: the capture table stays, and says why.
    assert!(
        out.contains("lockstep_changes is kept: it still holds 2 change(s) not yet sent"),
        "{out}"
    );
    assert!(capture_exists());
    psql(&format!("DELETE FROM {schema}.lockstep_changes"));
    let out = triggers_cmd("uninstall", "vista", std::path::Path::new(cfg));
    assert!(out.contains("of 2 table(s) and lockstep_changes"), "{out}");
    assert!(!capture_exists());
    psql(&format!(
        "INSERT INTO {schema}.appointments VALUES (446, 'East')"
    ));

    // A table without a primary key is refused, and nothing is installed.
    let bad = cfg_for("\"appointments\", \"notes\"");
    let (code, _, err) = lockstep(&["triggers", "install", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("`notes` has no primary key"), "{err}");
    assert!(!capture_exists());
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}

/// `lockstep triggers <command> --source <source>`; panics unless it succeeds.
fn triggers_cmd(command: &str, source: &str, cfg: &std::path::Path) -> String {
    let (code, out, err) = lockstep(&[
        "triggers",
        command,
        "--source",
        source,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "triggers {command} --source {source}: {out}{err}");
    out
}

/// Inserts rows 1..=n into both tables, in transactions that mix them, then updates and
/// deletes some of each.
fn two_table_writes(db: &Db, n: u64) -> String {
    let begin = if db.kind == Kind::Maria {
        "START TRANSACTION;"
    } else {
        "BEGIN;"
    };
    let mut sql = String::new();
    for from in (1..=n).step_by(10) {
        sql.push_str(begin);
        for i in from..(from + 10).min(n + 1) {
            sql.push_str(&format!(
                "INSERT INTO appointments (id, clinic) VALUES ({i}, 'c{i}'); INSERT INTO clinics (region, code, name) VALUES ('R', {i}, 'n{i}');"
            ));
        }
        sql.push_str("COMMIT;\n");
    }
    for i in (1..=n).step_by(5) {
        sql.push_str(&format!(
            "UPDATE appointments SET clinic = 'u{i}' WHERE id = {i}; UPDATE clinics SET name = 'u{i}' WHERE region = 'R' AND code = {i};\n"
        ));
    }
    for i in (1..=n).step_by(10) {
        sql.push_str(&format!(
            "DELETE FROM appointments WHERE id = {i}; DELETE FROM clinics WHERE region = 'R' AND code = {i};\n"
        ));
    }
    sql
}

/// Two trigger sources on one database, each with its own table: every change arrives
/// exactly once, from its own source, and nothing is quarantined. Uninstalling one
/// leaves the other capturing; uninstalling the last drops the capture table.
async fn two_sources_on_one_database(kind: Kind) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, "two");
    db.create_tables();
    let cfg = w.config_with(&format!(
        "{}\n{}",
        db.source_named("vista", &["appointments"], "rows", ""),
        db.source_named("clinic", &["clinics"], "keys", "")
    ));
    triggers_cmd("install", "vista", &cfg);
    triggers_cmd("install", "clinic", &cfg);
    let mut agent = w.agent(&cfg);
    let n = 500;
    db.sql(&two_table_writes(&db, n));
    drained(&db, &w).await;
    let quarantined = w.metric_sum("lockstep_quarantined_records_total");
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let of = |source: &str| -> Vec<&Msg> {
        msgs.iter()
            .filter(|m| m.json["source"]["name"] == source)
            .collect()
    };
    // Rows mode: one event per change, 500 + 100 + 50.
    let vista = of("vista");
    assert_eq!(
        (quarantined, vista.len()),
        (0, 650),
        "nothing quarantined, every change of appointments once"
    );
    assert!(vista
        .iter()
        .all(|m| m.subject == "legacy.vista.appointments"));
    assert!(of("clinic")
        .iter()
        .all(|m| m.subject == "legacy.clinic.clinics"));
    // Keys mode: at least one event for every key written, none of another table.
    let keys: std::collections::HashSet<String> = of("clinic")
        .iter()
        .map(|m| m.json["key"].to_string())
        .collect();
    assert_eq!(keys.len(), 500, "every clinics key");
    assert_eq!(
        replay(&msgs),
        db.dump(),
        "replaying the stream gives both tables"
    );

    // Uninstalling one source leaves the other's triggers and the capture table.
    let mut agent = w.agent(&cfg);
    let out = triggers_cmd("uninstall", "vista", &cfg);
    assert!(
        out.contains("lockstep_changes is kept: ")
            && out.contains("capture trigger(s) of other sources still write to it"),
        "{out}"
    );
    assert!(capture_table_exists(&db), "the capture table was dropped");
    db.sql("INSERT INTO appointments (id, clinic) VALUES (9001, 'after'); INSERT INTO clinics (region, code, name) VALUES ('R', 9001, 'after');");
    let before = msgs.len() as u64;
    w.wait_count(before + 1, Duration::from_secs(30)).await;
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    let last: Vec<&Msg> = msgs[before as usize..].iter().collect();
    assert_eq!(last.len(), 1, "only clinic's change: {last:?}");
    assert_eq!(last[0].json["key"]["code"], 9001);

    // The last source's uninstall drops it; the tables stay writable.
    let out = triggers_cmd("uninstall", "clinic", &cfg);
    assert!(out.contains("of 1 table(s) and lockstep_changes"), "{out}");
    assert!(!capture_table_exists(&db), "the capture table is left");
    let out = triggers_cmd("uninstall", "clinic", &cfg);
    assert!(out.contains("lockstep_changes was gone already"), "{out}");
    db.sql("INSERT INTO clinics (region, code, name) VALUES ('R', 9002, 'gone');");
}

#[tokio::test]
async fn postgres_two_sources_on_one_database_keep_to_their_tables() {
    two_sources_on_one_database(Kind::Pg).await;
}

#[tokio::test]
async fn mariadb_odbc_two_sources_on_one_database_keep_to_their_tables() {
    two_sources_on_one_database(Kind::Maria).await;
}

#[tokio::test]
async fn sqlite_odbc_two_sources_on_one_database_keep_to_their_tables() {
    two_sources_on_one_database(Kind::Lite).await;
}

/// `check` shows which source owns which table, and the changes waiting of a table no
/// source owns; two sources listing one table on one database are a config error.
#[test]
fn check_shows_owners_and_one_table_cannot_have_two() {
    let w = World::new();
    let db = Db::new(Kind::Pg, &w, "owners");
    db.create_tables();
    // Another config (another agent's, say) that names the same table another way.
    let qualified = format!("{}.appointments", db.name);
    let other = w.dir().join("other.toml");
    std::fs::copy(
        w.config_with(&db.source_named("other", &[&qualified], "rows", "")),
        &other,
    )
    .unwrap();
    let cfg = w.config_with(&format!(
        "{}\n{}",
        db.source_named("vista", &["appointments"], "rows", ""),
        db.source_named("clinic", &["clinics"], "keys", "")
    ));
    triggers_cmd("install", "vista", &cfg);
    triggers_cmd("install", "clinic", &cfg);
    db.sql(
        "INSERT INTO appointments (id, clinic) VALUES (1, 'a');
         INSERT INTO lockstep_changes (tbl, op, pk) VALUES ('old_table', 'c', '{\"id\": 1}');",
    );
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("database of vista, clinic"))
        .unwrap_or_else(|| panic!("no capture table line in\n{out}"));
    assert!(line.contains("lockstep_changes"), "{line}");
    assert!(line.contains("warn"), "{line}");
    assert!(
        line.contains("vista owns appointments (1 waiting); clinic owns clinics; 1 change(s) of `old_table`, which no source here owns"),
        "{line}"
    );

    // The other config's install takes the table over: its triggers record the other
    // spelling, which vista does not read. check says so; vista's install takes it back.
    triggers_cmd("install", "other", &other);
    let (code, out, _) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("source vista")
            && l.contains("FAIL")
            && l.contains(&format!("record its changes as `{qualified}`"))),
        "{out}"
    );
    triggers_cmd("install", "vista", &cfg);
    let (code, out, _) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // The same table in both: exit 2, with the file, line and both sources.
    let bad = w.config_with(&format!(
        "{}\n{}",
        db.source_named("vista", &["appointments"], "rows", ""),
        db.source_named("clinic", &["clinics", "appointments"], "keys", "")
    ));
    let (code, _, err) = lockstep(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:", bad.display()))
            && err.contains(
                "source `clinic`: table `appointments` is already captured by source `vista`"
            ),
        "{err}"
    );
}

/// `triggers install` run again and again (the upgrade path) while a writer inserts and
/// updates without a pause: every committed change arrives, exactly once. Each statement
/// is its own transaction, so a moment without triggers would lose the ones in it.
async fn reinstall_under_writes_loses_nothing(kind: Kind) {
    let w = World::new();
    let db = Db::new(kind, &w, "reinstall");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments", "clinics"], "rows", ""));
    triggers_cmd("install", "vista", &cfg);
    let mut agent = w.agent(&cfg);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut session = db.session();
        let done = done.clone();
        std::thread::spawn(move || {
            // The client's stdin pipe paces the writer to the database.
            let mut changes = 0u64;
            let mut i = 0u64;
            // At least 200 rounds; at most 200,000 should the installs never end.
            while (!done.load(std::sync::atomic::Ordering::Relaxed) || i < 200) && i < 200_000 {
                i += 1;
                session.send(&format!(
                    "INSERT INTO appointments (id, clinic) VALUES ({i}, 'c{i}'); \
                     UPDATE appointments SET clinic = 'u{i}' WHERE id = {i}; \
                     INSERT INTO clinics (region, code, name) VALUES ('R', {i}, 'n{i}');"
                ));
                changes += 3;
            }
            (session.finish(), changes)
        })
    };
    // LOCKSTEP_HEAVY=1: many more reinstalls (and so more writes across them).
    let installs = if std::env::var_os("LOCKSTEP_HEAVY").is_some() {
        100
    } else {
        8
    };
    for _ in 0..installs {
        triggers_cmd("install", "vista", &cfg);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, changes) = writer.join().unwrap();
    assert!(ok, "a write failed during the reinstalls");
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert_eq!(
        msgs.len() as u64,
        changes,
        "every committed change once ({} written)",
        changes / 3
    );
    assert_eq!(replay(&msgs), db.dump());
}

#[tokio::test]
async fn mariadb_odbc_reinstall_under_writes_loses_nothing() {
    reinstall_under_writes_loses_nothing(Kind::Maria).await;
}

#[tokio::test]
async fn postgres_reinstall_under_writes_loses_nothing() {
    reinstall_under_writes_loses_nothing(Kind::Pg).await;
}

#[tokio::test]
async fn sqlite_odbc_reinstall_under_writes_loses_nothing() {
    reinstall_under_writes_loses_nothing(Kind::Lite).await;
}

/// A transaction that holds a table for long: `install` gives up after its lock wait
/// (rather than queue every other write to the table behind it) and says to run it
/// again; once the transaction ends it goes through, and the change arrives.
async fn install_gives_up_on_a_long_lock(kind: Kind) {
    let w = World::new();
    let db = Db::new(kind, &w, "locked");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", ""));
    triggers_cmd("install", "vista", &cfg);
    let mut long = db.session();
    let begin = if kind == Kind::Maria {
        "START TRANSACTION;"
    } else {
        "BEGIN;"
    };
    long.send(&format!(
        "{begin} INSERT INTO appointments (id, clinic) VALUES (1, 'A');"
    ));
    crate::harness::wait_for_open_insert(&db).await;
    let (code, out, err) = lockstep(&[
        "triggers",
        "install",
        "--source",
        "vista",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("run install again once it has ended"), "{err}");
    long.send("COMMIT;");
    assert!(long.finish());
    triggers_cmd("install", "vista", &cfg);
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    drained(&db, &w).await;
    assert_eq!(agent.stop(), Some(0));
}

#[tokio::test]
async fn postgres_install_gives_up_on_a_long_lock() {
    install_gives_up_on_a_long_lock(Kind::Pg).await;
}

#[tokio::test]
async fn mariadb_odbc_install_gives_up_on_a_long_lock() {
    install_gives_up_on_a_long_lock(Kind::Maria).await;
}

/// A table's name respelled in `tables` (`orders` → `<schema>.orders`, as the config
/// error about two sources suggests) while its triggers, installed under the old
/// spelling, still record `orders`: the source now reads only `<schema>.orders`. Its
/// changes must arrive, or the agent must say loudly that they cannot; before the
/// own-tables filter they were at least quarantined, now they wait unseen forever.
#[tokio::test]
async fn postgres_a_respelled_table_is_not_silently_left_behind() {
    let w = World::new();
    let db = Db::new(Kind::Pg, &w, "respelled");
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, v text);");
    let cfg = w.config_with(&db.source(&["orders"], "rows", ""));
    crate::harness::install(&w, &cfg);
    let qualified = format!("{}.orders", db.name);
    let cfg = w.config_with(&db.source(&[qualified.as_str()], "rows", ""));
    let mut agent = w.agent(&cfg);
    db.sql("INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c');");
    let n = w.wait_count(3, Duration::from_secs(20)).await;
    assert_eq!(agent.stop(), Some(0));
    let log = agent_log(&w);
    let told = log
        .lines()
        .any(|l| (l.contains("\"WARN\"") || l.contains("\"ERROR\"")) && l.contains("orders"));
    assert!(
        n == 3 || told,
        "{n} of 3 changes arrived and the agent said nothing about `orders`"
    );
}
