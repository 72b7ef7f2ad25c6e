//! Poll capture end to end: the real binary scans live PostgreSQL, MariaDB and SQLite
//! tables through their ODBC drivers, compares each scan with the last, and a real
//! consumer replays the stream and compares it with the tables.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A poll source on `table` of `db`.
pub fn poll_source(db: &Db, name: &str, table: &str, extra: &str) -> String {
    let interval = if extra.contains("interval") {
        ""
    } else {
        "interval = \"300ms\"\n"
    };
    format!(
        "[[source]]\nname = \"{name}\"\nkind = \"poll\"\nodbc = \"{}\"\ntable = \"{table}\"\n{interval}{extra}\n\n",
        db.odbc()
    )
}

fn both_tables(db: &Db, extra: &str) -> String {
    poll_source(db, "pa", "appointments", extra) + &poll_source(db, "pc", "clinics", extra)
}

/// Waits until replaying the stream gives the tables; returns the stream.
async fn wait_replayed(w: &World, db: &Db, what: &str) -> Vec<Msg> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if w.count().await == 0 {
            assert!(
                Instant::now() < deadline,
                "{what}: no events\n{}",
                agent_log(w)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let msgs = w.messages().await;
        let want = db.dump();
        let got = replay(&msgs);
        if got == want {
            return msgs;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .take(5)
                .collect();
            panic!(
                "{what}: the stream does not replay to the tables ({} events)\nwanted, not got: {missing:?}\ngot, not wanted: {extra:?}\n{}",
                msgs.len(),
                agent_log(w)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each key's events, in stream order: no two in a row carry the same row (a change
/// sent twice under two ids would).
fn assert_no_repeated_changes(msgs: &[Msg]) {
    let mut last: HashMap<String, String> = HashMap::new();
    for m in msgs {
        let j = &m.json;
        let id = format!("{}/{}", j["source"]["table"], j["key"]);
        let now = format!("{}{}", j["op"] == "d", j["after"]);
        if let Some(prev) = last.insert(id.clone(), now.clone()) {
            assert_ne!(
                prev, now,
                "{id}: the same change twice in the stream ({})",
                m.id
            );
        }
    }
}

/// Waits until source `source` has finished `n` more scans than now.
pub async fn wait_scans(w: &World, source: &str, n: u64) {
    let name = format!("lockstep_poll_scans_total{{source=\"{source}\"}}");
    let target = w.metric(&name) + n;
    wait_for(
        &format!("{n} more scans of {source}"),
        Duration::from_secs(60),
        || w.metric(&name) >= target,
    )
    .await;
}

fn ops(msgs: &[Msg]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for m in msgs {
        *n.entry(m.json["op"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    n
}

async fn random_workload_replays_over_many_scans(kind: Kind) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, "poll_mix");
    db.create_tables();
    db.sql(&workload(&db, 1, 120));
    let cfg = w.config_with(&both_tables(&db, ""));
    let _agent = w.agent(&cfg);
    let first = wait_replayed(&w, &db, "first scan").await;
    assert!(
        first.iter().all(|m| m.json["op"] == "r"),
        "a first scan sends op r"
    );
    assert!(first.iter().all(|m| m.json["source"]["snapshot"] == true));
    for round in 2..=6 {
        // Rows of earlier rounds change and go too, not only this round's.
        db.sql(&format!(
            "{}UPDATE appointments SET note = 'round {round} ✓', fee = NULL WHERE id % 5 = {m5};
             UPDATE clinics SET name = 'round {round}' WHERE code % 4 = {m4};
             DELETE FROM appointments WHERE id % 13 = {round};
             DELETE FROM clinics WHERE code % 9 = {round};",
            workload(&db, round, 80),
            m5 = round % 5,
            m4 = round % 4,
        ));
        wait_replayed(&w, &db, &format!("round {round}")).await;
    }
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    assert_no_repeated_changes(&msgs);
    let n = ops(&msgs);
    for op in ["c", "u", "d", "r"] {
        assert!(n.get(op).copied().unwrap_or(0) > 0, "no {op} events: {n:?}");
    }
    // The events carry their values typed: a big decimal keeps its digits (not on
    // SQLite, whose REAL column has none to keep).
    if kind != Kind::Lite {
        let fees: Vec<String> = msgs
            .iter()
            .filter_map(|m| Some(m.json["after"]["fee"].as_str()?.to_owned()))
            .collect();
        assert!(
            fees.iter()
                .any(|f| f.starts_with("12345678901234567890.12345")),
            "no exact big decimal in {fees:?}"
        );
    }
    assert!(w.metric("lockstep_poll_rows_scanned_total{source=\"pa\"}") > 0);
    assert_eq!(
        w.metric("lockstep_poll_changes_total{source=\"pa\",op=\"d\"}") as usize
            + w.metric("lockstep_poll_changes_total{source=\"pc\",op=\"d\"}") as usize,
        n["d"]
    );
}

#[tokio::test]
async fn poll_postgres_random_workload_replays_over_many_scans() {
    random_workload_replays_over_many_scans(Kind::Pg).await;
}

#[tokio::test]
async fn poll_mariadb_random_workload_replays_over_many_scans() {
    random_workload_replays_over_many_scans(Kind::Maria).await;
}

#[tokio::test]
async fn poll_sqlite_random_workload_replays_over_many_scans() {
    random_workload_replays_over_many_scans(Kind::Lite).await;
}

fn poll_dir(w: &World, source: &str) -> PathBuf {
    w.dir().join("state").join("poll").join(source)
}

/// kill -9 while the first scan's 100,000 events are being sent (after the scan, before
/// the swap), then during a later scan: nothing lost, nothing twice.
async fn kill9_during_and_after_a_scan(kind: Kind) {
    const ROWS: u64 = 100_000;
    let w = World::new();
    let db = Db::new(kind, &w, "poll_kill");
    db.create_tables();
    db.sql(&match kind {
        Kind::Pg => format!("INSERT INTO appointments SELECT g, 'CLINIC-' || (g % 5), g * 1.5, now(), 'n' || g FROM generate_series(1, {ROWS}) g;"),
        _ => format!("INSERT INTO appointments SELECT seq, concat('CLINIC-', seq % 5), seq * 1.5, now(), concat('n', seq) FROM seq_1_to_{ROWS};"),
    });
    let cfg = w.config_with(&both_tables(&db, "interval = \"1s\""));
    let dir = poll_dir(&w, "pa");
    let mut agent = w.agent(&cfg);
    // After the scan, before the swap: its changes are committed and being sent.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = w.count().await;
        if dir.join("pending.json").exists() && n > 1000 && n < ROWS - 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught the scan mid-send ({n} events)\n{}",
            agent_log(&w)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill9();
    let sent = w.count().await;
    agent = w.agent(&cfg);
    let msgs = wait_replayed(&w, &db, "after kill -9 mid-send").await;
    assert!(
        sent < msgs.len() as u64,
        "the kill came after the last event"
    );
    assert!(
        agent_log(&w).contains("sending again the"),
        "{}",
        agent_log(&w)
    );
    let r: Vec<i64> = msgs
        .iter()
        .filter(|m| m.json["source"]["table"] == "appointments")
        .map(|m| m.json["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(r.len() as u64, ROWS, "each row once");

    // During a scan: its spill exists and nothing of it is committed yet.
    db.sql(&workload(&db, 7, 300));
    let deadline = Instant::now() + Duration::from_secs(120);
    let scanning = || dir.join("scan.rows").exists() && !dir.join("pending.json").exists();
    while !scanning() {
        assert!(
            Instant::now() < deadline,
            "never caught a scan\n{}",
            agent_log(&w)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    agent.kill9();
    let _agent = w.agent(&cfg);
    let msgs = wait_replayed(&w, &db, "after kill -9 mid-scan").await;
    assert_no_duplicate_ids(&msgs);
    assert_no_repeated_changes(&msgs);
}

#[tokio::test]
async fn poll_postgres_kill9_during_and_after_a_scan_loses_and_repeats_nothing() {
    kill9_during_and_after_a_scan(Kind::Pg).await;
}

#[tokio::test]
async fn poll_mariadb_kill9_during_and_after_a_scan_loses_and_repeats_nothing() {
    kill9_during_and_after_a_scan(Kind::Maria).await;
}

/// A row that goes A→B→A over three scans is three events, each with an id of its own.
#[tokio::test]
async fn poll_a_b_a_is_three_events() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Maria, &w, "poll_aba");
    db.create_tables();
    db.sql("INSERT INTO appointments VALUES (1, 'A', 1.5, NULL, 'A'), (2, 'x', NULL, NULL, '');");
    let cfg = w.config_with(&poll_source(&db, "pa", "appointments", ""));
    let _agent = w.agent(&cfg);
    let notes = |msgs: &[Msg]| -> Vec<(String, String)> {
        msgs.iter()
            .filter(|m| m.json["key"]["id"] == 1)
            .map(|m| {
                (
                    m.json["op"].as_str().unwrap().to_owned(),
                    m.json["after"]["note"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    for (i, (note, want)) in [("A", 1), ("B", 2), ("A", 3)].into_iter().enumerate() {
        if i > 0 {
            db.sql(&format!(
                "UPDATE appointments SET note = '{note}' WHERE id = 1;"
            ));
        }
        w.wait_count(1, Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = notes(&w.messages().await).len();
            if n >= want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {want} events\n{}",
                n,
                agent_log(&w)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Two more scans send nothing more.
    wait_scans(&w, "pa", 2).await;
    let msgs = w.messages().await;
    assert_eq!(
        notes(&msgs),
        [("r", "A"), ("u", "B"), ("u", "A")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_no_duplicate_ids(&msgs);
    // NULL and the empty string stay apart.
    let two = msgs.iter().find(|m| m.json["key"]["id"] == 2).unwrap();
    assert_eq!(two.json["after"]["note"], "");
    assert_eq!(two.json["after"]["fee"], serde_json::Value::Null);
}

/// Cursor mode: a row that commits late, with a cursor value older than one already
/// read but inside the lookback, is delivered by an incremental scan; a delete is not
/// seen by incremental scans and is found by the next full scan.
#[tokio::test]
async fn poll_cursor_late_commit_within_lookback_and_delete_by_full_scan() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Pg, &w, "poll_cursor");
    db.sql(
        "CREATE TABLE permits (id int PRIMARY KEY, stat text, changed timestamp NOT NULL);
         INSERT INTO permits SELECT g, 'OPEN', now() - interval '2 hours' FROM generate_series(1, 100) g;",
    );
    let source = |full: &str| {
        poll_source(
            &db,
            "permits",
            "permits",
            &format!("cursor = \"changed\"\nlookback = \"1m\"\nfull_scan_every = \"{full}\""),
        )
    };
    let cfg = w.config_with(&source("1h"));
    let mut agent = w.agent(&cfg);
    w.wait_count(100, Duration::from_secs(30)).await;

    let mut late = db.session();
    late.send(
        "BEGIN; INSERT INTO permits VALUES (1001, 'LATE', localtimestamp - interval '20 seconds');",
    );
    // The late row's cursor value is 20 s behind the next row's, whenever its
    // statement runs; it stays uncommitted until the COMMIT below.
    db.sql("INSERT INTO permits VALUES (1002, 'ON TIME', localtimestamp);");
    w.wait_count(101, Duration::from_secs(30)).await;
    // A few incremental scans pass with the late row still uncommitted.
    wait_scans(&w, "permits", 2).await;
    late.send("COMMIT;");
    late.finish();
    db.sql("UPDATE permits SET stat = 'CLOSED', changed = localtimestamp WHERE id = 7; DELETE FROM permits WHERE id = 8;");
    w.wait_count(103, Duration::from_secs(30)).await;
    // Incremental scans do not see the delete.
    wait_scans(&w, "permits", 3).await;
    let msgs = w.messages().await;
    let by_op = |msgs: &[Msg], op: &str| -> Vec<i64> {
        let mut v: Vec<i64> = msgs
            .iter()
            .filter(|m| m.json["op"] == op)
            .map(|m| m.json["key"]["id"].as_i64().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(by_op(&msgs, "c"), [1001, 1002], "{}", agent_log(&w));
    assert_eq!(by_op(&msgs, "u"), [7]);
    assert!(
        by_op(&msgs, "d").is_empty(),
        "an incremental scan saw a delete"
    );
    let late_ev = msgs.iter().find(|m| m.json["key"]["id"] == 1001).unwrap();
    assert_eq!(late_ev.json["after"]["stat"], "LATE");

    // A full scan finds it.
    agent.stop();
    let cfg = w.config_with(&source("2s"));
    let _agent = w.agent(&cfg);
    w.wait_count(104, Duration::from_secs(30)).await;
    let msgs = w.messages().await;
    assert_eq!(by_op(&msgs, "d"), [8]);
    assert_eq!(msgs.len(), 104, "the full scan sent only the delete");
    assert_no_duplicate_ids(&msgs);
}

/// A table without a primary key and no `key` in the config: `lockstep check` and the
/// agent say so and what to do; with `key` it is polled.
#[tokio::test]
async fn poll_table_without_key_is_refused_clearly() {
    let w = World::new();
    let db = Db::new(Kind::Lite, &w, "poll_nokey");
    db.sql("CREATE TABLE visits (patient INTEGER, clinic TEXT, note BLOB); INSERT INTO visits VALUES (1, 'A', x'00ff10'), (2, 'B', NULL);");
    let cfg = w.config_with(&poll_source(&db, "visits", "visits", ""));
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("table `visits` has no primary key"), "{text}");
    assert!(
        text.contains("set `key = [\"COL\", …]` on source `visits`"),
        "{text}"
    );
    {
        let _agent = w.agent(&cfg);
        wait_for("the refusal in the log", Duration::from_secs(20), || {
            agent_log(&w).contains("has no primary key")
        })
        .await;
    }
    assert_eq!(w.count().await, 0);

    let cfg = w.config_with(&poll_source(&db, "visits", "visits", "key = [\"patient\"]"));
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let _agent = w.agent(&cfg);
    w.wait_count(2, Duration::from_secs(30)).await;
    let msgs = w.messages().await;
    let one = msgs.iter().find(|m| m.json["key"]["patient"] == 1).unwrap();
    assert_eq!(one.json["key"], serde_json::json!({"patient": 1}));
    assert_eq!(
        one.json["after"]["note"], "AP8Q",
        "binary arrives as base64"
    );
    assert_eq!(one.json["after"]["clinic"], "A");
}

/// A configured query is scanned instead of the table: its rows and columns only, and a
/// row that leaves the query's result is a delete.
#[tokio::test]
async fn poll_query_scans_what_the_query_returns() {
    let w = World::new();
    let db = Db::new(Kind::Lite, &w, "poll_query");
    db.sql("CREATE TABLE visits (patient INTEGER PRIMARY KEY, clinic TEXT, secret TEXT); INSERT INTO visits VALUES (1, 'A', 's1'), (2, 'B', 's2'), (3, 'A', 's3');");
    let cfg = w.config_with(&poll_source(
        &db,
        "visits",
        "clinic_a",
        "query = \"SELECT patient, clinic FROM visits WHERE clinic = 'A'\"\nkey = [\"patient\"]",
    ));
    let _agent = w.agent(&cfg);
    w.wait_count(2, Duration::from_secs(30)).await;
    db.sql("UPDATE visits SET clinic = 'B' WHERE patient = 3; INSERT INTO visits VALUES (4, 'A', 's4');");
    w.wait_count(4, Duration::from_secs(30)).await;
    let msgs = w.messages().await;
    let seen: Vec<(String, i64)> = msgs
        .iter()
        .map(|m| {
            (
                m.json["op"].as_str().unwrap().to_owned(),
                m.json["key"]["patient"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut first: Vec<_> = seen[..2].to_vec();
    first.sort();
    assert_eq!(first, [("r".to_owned(), 1), ("r".to_owned(), 3)]);
    let mut next: Vec<_> = seen[2..].to_vec();
    next.sort();
    assert_eq!(next, [("c".to_owned(), 4), ("d".to_owned(), 3)]);
    for m in &msgs {
        assert_eq!(m.json["source"]["table"], "clinic_a");
        if m.json["op"] != "d" {
            let mut cols: Vec<&String> = m.json["after"].as_object().unwrap().keys().collect();
            cols.sort();
            assert_eq!(cols, ["clinic", "patient"], "only the query's columns");
        }
    }
}

/// `max_value_bytes` is the longest value read: a value of exactly that many bytes
/// arrives, and values one byte longer or more are quarantined (with the reason) and
/// counted, while the rest of the scan arrives. (A value exactly one byte over used to
/// fill the fetch buffer without being cut, so it was sent.)
async fn values_at_max_value_bytes(kind: Kind) {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(kind, &w, "poll_maxval");
    db.create_tables();
    let x = |n: usize| format!("'{}'", "x".repeat(n));
    // Alone in its scan (with no longer value that the driver cuts), the value one
    // byte over the limit.
    db.sql(&format!(
        "INSERT INTO appointments (id, clinic, note) VALUES (1, 'a', {}), (2, 'b', {}), (4, 'd', NULL);",
        x(1024),
        x(1025),
    ));
    let cfg = w.config_with(&poll_source(
        &db,
        "pa",
        "appointments",
        "max_value_bytes = \"1KiB\"\n",
    ));
    let mut agent = w.agent(&cfg);
    wait_for("a row quarantined", Duration::from_secs(60), || {
        w.metric_sum("lockstep_quarantined_records_total") >= 1
    })
    .await;
    db.sql(&format!(
        "INSERT INTO appointments (id, clinic, note) VALUES (3, 'c', {});",
        x(1026)
    ));
    wait_for("two rows quarantined", Duration::from_secs(60), || {
        w.metric_sum("lockstep_quarantined_records_total") >= 2
    })
    .await;
    assert_eq!(w.wait_count(2, Duration::from_secs(60)).await, 2);
    // One more scan: nothing else arrives, nothing more is quarantined.
    wait_scans(&w, "pa", 2).await;
    let quarantined = w.metric_sum("lockstep_quarantined_records_total");
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    let mut got: Vec<(i64, usize)> = msgs
        .iter()
        .map(|m| {
            let note = m.json["after"]["note"].as_str().map_or(0, str::len);
            (m.json["key"]["id"].as_i64().unwrap(), note)
        })
        .collect();
    got.sort_unstable();
    assert_eq!(
        (got, quarantined),
        (vec![(1, 1024), (4, 0)], 2),
        "the rows at and under the limit arrive, the two over it are quarantined"
    );
    let q = std::fs::read_to_string(w.dir().join("state/quarantine/pa.jsonl")).unwrap();
    assert_eq!(q.lines().count(), 2, "{q}");
    assert!(q.contains("longer than `max_value_bytes`"), "{q}");
}

#[tokio::test]
async fn poll_sqlite_values_at_max_value_bytes() {
    values_at_max_value_bytes(Kind::Lite).await;
}

#[tokio::test]
async fn poll_mariadb_values_at_max_value_bytes() {
    values_at_max_value_bytes(Kind::Maria).await;
}

#[tokio::test]
async fn poll_postgres_values_at_max_value_bytes() {
    values_at_max_value_bytes(Kind::Pg).await;
}
