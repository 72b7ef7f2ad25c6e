//! Trigger capture end to end: the real binary drains `lockstep_changes` on a live
//! PostgreSQL (natively), MariaDB and SQLite (over their ODBC drivers) into a real
//! nats-server; a real consumer replays the stream and compares it with the tables.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;

async fn random_workload_replays_to_the_tables(kind: Kind, capture: &str) {
    workload_replays(kind, capture, "").await;
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
