//! Debounce and mapping on a change file: bursts merged per key, a key changing without
//! pause still sent every `max_delay`, nothing lost when the agent dies while holding
//! changes, and the fields a map drops found nowhere: not in the stream, the spool, the
//! quarantine or the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lockstep_formats::frame::scan;

use crate::harness::*;
use crate::harness::{capture_rows, drained, install, workload_replays, Db, Kind};

/// A change line of appointment `id`.
fn move_line(id: u64, op: &str, time: &str) -> String {
    format!(r#"{{"id":{id},"op":"{op}","time":"{time}","clinic":"CARDIOLOGY-3"}}"#)
}

/// The messages of appointment `id`, in stream order.
fn of(msgs: &[Msg], id: u64) -> Vec<&Msg> {
    msgs.iter()
        .filter(|m| m.json["key"]["id"].as_u64() == Some(id))
        .collect()
}

/// Replays the stream into a table: `c`, `u`, `r` write the row, `d` removes it.
fn replay(msgs: &[Msg]) -> BTreeMap<u64, String> {
    let mut t = BTreeMap::new();
    for m in msgs {
        let id = m.json["key"]["id"].as_u64().expect("an integer key");
        match m.json["op"].as_str() {
            Some("d") => {
                t.remove(&id);
            }
            _ => {
                t.insert(id, m.json["after"]["time"].as_str().unwrap().to_owned());
            }
        }
    }
    t
}

/// Waits until the debouncer holds nothing and every event it let out (at least
/// `at_least`) is acknowledged; then reads the stream.
async fn settled(w: &World, at_least: u64) -> Vec<Msg> {
    wait_for(
        "nothing held, everything sent",
        Duration::from_secs(30),
        || {
            let published = w.metric_sum("lockstep_events_published_total");
            published >= at_least
                && w.metric_sum("lockstep_debounce_held_keys") == 0
                && w.metric_sum("lockstep_events_captured_total") == published
        },
    )
    .await;
    let n = w.metric_sum("lockstep_events_published_total");
    assert_eq!(w.wait_count(n, Duration::from_secs(30)).await, n);
    w.messages().await
}

/// Waits until the agent has read the change file to its end.
async fn read_to_end(w: &World, file: &Path) {
    let size = std::fs::metadata(file).unwrap().len();
    wait_for("the file read to its end", Duration::from_secs(30), || {
        w.status()["sources"]["vista"]["files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["read"].as_u64() == Some(size)))
    })
    .await;
}

#[tokio::test]
async fn bursts_merge_wide_changes_do_not_and_max_delay_bounds_the_wait() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config(
        "table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n\
         debounce = { window = \"2s\", max_delay = \"4s\" }",
    );
    let file = w.logs().join("moves.log");
    let _agent = w.agent(&cfg);
    wait_first_scan(&w).await;
    // A first change; once it is in the stream the agent has caught up with its start
    // and merges from then on.
    append(&file, [move_line(1, "c", "09:00")]);
    assert_eq!(settled(&w, 1).await.len(), 1);

    // Two moves of appointment 445 within 3 s: 14:00 → 15:00 → 16:00. The pauses are
    // the scenario (changes spaced in time), not a wait for the agent.
    append(&file, [move_line(445, "u", "14:00")]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    append(&file, [move_line(445, "u", "15:00")]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    append(&file, [move_line(445, "u", "16:00")]);
    read_to_end(&w, &file).await;
    let msgs = settled(&w, 2).await;
    assert_eq!(msgs.len(), 2);
    let ev = of(&msgs, 445);
    assert_eq!(ev.len(), 1, "{msgs:#?}");
    assert_eq!(ev[0].json["op"], "u");
    assert_eq!(ev[0].json["after"]["time"], "16:00");
    assert!(ev[0].json["source"]["position"]
        .as_str()
        .unwrap()
        .ends_with("+3"));
    assert_eq!(w.metric_sum("lockstep_debounce_merged_total"), 2);

    // Changes of 446 spaced wider than the window: one event each, in order.
    append(&file, [move_line(446, "c", "10:00")]);
    read_to_end(&w, &file).await;
    let msgs = settled(&w, 3).await;
    assert_eq!(of(&msgs, 446).len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await; // spacing: window passed + 0.5 s
    append(&file, [move_line(446, "u", "11:00")]);
    read_to_end(&w, &file).await;
    let msgs = settled(&w, 4).await;
    let times: Vec<&str> = of(&msgs, 446)
        .iter()
        .map(|m| m.json["after"]["time"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["10:00", "11:00"]);
    assert_eq!(of(&msgs, 446)[0].json["op"], "c");

    // 447 changes every 250 ms without pause: max_delay lets events out meanwhile.
    let mut written = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        append(&file, [move_line(447, "u", &format!("T{written:04}"))]);
        written += 1;
        let n = w.count().await;
        if n >= 6 {
            break; // two events of 447 while it kept changing
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event while 447 changed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // the scenario's pace
    }
    let last = format!("T{:04}", written - 1);
    read_to_end(&w, &file).await;
    let msgs = settled(&w, 6).await;
    let ev = of(&msgs, 447);
    assert!(ev.len() >= 3, "{} events of 447", ev.len());
    assert!(
        (ev.len() as u64) < written,
        "{} events for {written} changes",
        ev.len()
    );
    let times: Vec<&str> = ev
        .iter()
        .map(|m| m.json["after"]["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|p| p[0] < p[1]), "order: {times:?}");
    assert_eq!(*times.last().unwrap(), last);
    assert_no_duplicate_ids(&msgs);
}

fn assert_no_duplicate_ids(msgs: &[Msg]) {
    let mut ids = std::collections::HashSet::new();
    for m in msgs {
        assert!(ids.insert(&m.id), "duplicate Nats-Msg-Id {}", m.id);
    }
}

#[tokio::test]
async fn kill9_while_changes_are_held_loses_none() {
    let mut w = World::new();
    w.with_admin();
    // A long window: everything is held until the crash, except the keys max_keys
    // pushes out early.
    let cfg = w.config(
        "table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n\
         debounce = { window = \"60s\", max_delay = \"120s\", max_keys = 15 }",
    );
    let file = w.logs().join("moves.log");
    let mut agent = w.agent(&cfg);
    wait_first_scan(&w).await;
    append(&file, [move_line(1000, "c", "08:00")]);
    wait_for("the first change held", Duration::from_secs(30), || {
        w.metric_sum("lockstep_debounce_held_keys") == 1
    })
    .await;
    // 20 keys, each created and moved twice; some then deleted, some deleted and
    // created again. Key 1000 and keys 0-4 are pushed out early by keys 14-19.
    let mut lines = Vec::new();
    let mut model = BTreeMap::new();
    let mut raw_of: BTreeMap<u64, usize> = BTreeMap::new();
    model.insert(1000, "08:00".to_owned());
    for id in 0..20u64 {
        let t = |h: u64| format!("{h:02}:{id:02}");
        let mut changes = vec![("c", t(8)), ("u", t(9)), ("u", t(10))];
        match id % 4 {
            0 => changes.push(("d", t(10))),
            1 => changes.extend([("d", t(10)), ("c", t(11))]),
            _ => {}
        }
        for (op, time) in &changes {
            lines.push(move_line(id, op, time));
        }
        raw_of.insert(id, changes.len());
        match changes.last().unwrap() {
            ("d", _) => model.remove(&id),
            (_, time) => model.insert(id, time.clone()),
        };
    }
    // Where the oldest held change (key 5's first) starts: the checkpoint must stop there.
    let before_5: usize = lines
        .iter()
        .take_while(|l| !l.starts_with(r#"{"id":5,"#))
        .map(|l| l.len() + 1)
        .sum();
    let held_from = std::fs::metadata(&file).unwrap().len() + before_5 as u64;
    append(&file, lines);
    read_to_end(&w, &file).await;
    assert_eq!(w.metric_sum("lockstep_debounce_held_keys"), 15);
    assert_eq!(w.metric_sum("lockstep_debounce_early_flushes_total"), 6);
    wait_for("the early ones sent", Duration::from_secs(30), || {
        w.metric_sum("lockstep_events_captured_total")
            == w.metric_sum("lockstep_events_published_total")
    })
    .await;
    // 1000 alone, 0 and 4 cancelled out (created, deleted), 1, 2 and 3 merged.
    let early = w.messages().await;
    assert_eq!(early.len(), 4, "{early:#?}");
    // The checkpoint moves up to the oldest held change and no further.
    let cp = w.dir().join("state/checkpoints/vista.json");
    let offset = || -> u64 {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cp).unwrap_or_default()).unwrap_or_default();
        j["files"]
            .as_array()
            .and_then(|f| f.iter().find_map(|f| f["offset"].as_u64()))
            .unwrap_or(0)
    };
    wait_for(
        "the checkpoint past the early ones",
        Duration::from_secs(30),
        || offset() >= held_from,
    )
    .await;
    assert_eq!(offset(), held_from, "the checkpoint passed a held change");
    agent.kill9();

    // Restarted: what was held is read again (the checkpoint stayed before it) and sent
    // change by change, since part of it may have left merged before the crash.
    let _agent = w.agent(&cfg);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let msgs = loop {
        let msgs = w.messages().await;
        if replay(&msgs) == model {
            break msgs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream does not replay to the file's state: {:?}\n{}",
            replay(&msgs),
            agent_log(&w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_no_duplicate_ids(&msgs);
    // Each held key's changes, one event each after the restart (`+1`: read again).
    for id in 5..20u64 {
        let unmerged = of(&msgs, id)
            .iter()
            .filter(|m| {
                m.json["source"]["position"]
                    .as_str()
                    .unwrap()
                    .ends_with("+1")
            })
            .count();
        assert_eq!(unmerged, raw_of[&id], "key {id}");
    }
}

/// Everything in the spool's segments, decompressed, as text.
fn spool_text(state: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(state.join("spool")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        scan(
            &data,
            |_, _, events| {
                for ev in events {
                    text.push_str(&String::from_utf8_lossy(ev.payload.0));
                    text.push('\n');
                }
            },
            |at, e| panic!("damaged spool frame at {at}: {e}"),
        )
        .unwrap();
    }
    text
}

#[tokio::test]
async fn maps_rename_translate_drop_and_move_the_subject() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config(
        "table = \"APPT_T\"\nkey = [\"id\"]\nop_field = \"op\"\n\n[source.map]\n\
         tables = { APPT_T = \"appointments\" }\n\
         rename = { time = \"slot\", CODE_STS = \"status\" }\n\
         values = { CODE_STS = { A = \"ACTIVE\", C = \"CANCELLED\" }, LVL = { 1 = \"LOW\" } }\n\
         unknown = { CODE_STS = \"quarantine\", LVL = \"null\" }\n\
         drop = [\"ssn\", \"dob\"]\n\
         add = { region = \"VA-NE\" }",
    );
    // The broker is away at first: events go to the spool.
    w.nats.kill();
    let file = w.logs().join("appts.log");
    let mut agent = w.agent(&cfg);
    let ssn = |i: u64| format!("123-45-{i:04}");
    let mut lines = Vec::new();
    for i in 0..10u64 {
        let code = if i % 2 == 0 { "A" } else { "C" };
        lines.push(format!(
            r#"{{"id":{i},"op":"c","time":"16:{i:02}","CODE_STS":"{code}","LVL":{},"ssn":"{}","dob":"1950-01-{:02}"}}"#,
            i % 3,
            ssn(i),
            i + 1
        ));
    }
    // A code `values` does not list, under the quarantine rule.
    lines.push(format!(
        r#"{{"id":77,"op":"c","time":"17:00","CODE_STS":"Z","LVL":1,"ssn":"{}"}}"#,
        ssn(77)
    ));
    // A record that cannot be read at all.
    lines.push(format!(r#"{{"id":78,"op":"c","ssn":"{}""#, ssn(78)));
    append(&file, lines);
    wait_for("10 events spooled", Duration::from_secs(30), || {
        w.metric("lockstep_spool_events") == 10
    })
    .await;
    wait_for("2 records quarantined", Duration::from_secs(30), || {
        w.metric_sum("lockstep_quarantined_records_total") == 2
    })
    .await;
    assert_eq!(agent.stop(), Some(0));

    let state = w.dir().join("state");
    let spooled = spool_text(&state);
    assert_eq!(spooled.lines().count(), 10, "{spooled}");
    let quarantined = std::fs::read_to_string(state.join("quarantine/vista.jsonl")).unwrap();
    assert_eq!(quarantined.lines().count(), 2, "{quarantined}");
    assert!(
        quarantined.contains("`CODE_STS` has the code `Z`"),
        "{quarantined}"
    );
    assert_eq!(quarantined.matches("record_withheld").count(), 2);
    let log = agent_log(&w);
    for i in (0..10).chain([77, 78]) {
        for (what, text) in [
            ("spool", &spooled),
            ("quarantine", &quarantined),
            ("log", &log),
        ] {
            assert!(!text.contains(&ssn(i)), "ssn {i} in the {what}");
            assert!(!text.contains("1950-01-"), "a dob in the {what}");
        }
    }

    w.nats.restart();
    let _agent = w.agent(&cfg);
    assert_eq!(w.wait_count(10, Duration::from_secs(60)).await, 10);
    let msgs = w.messages().await;
    assert_eq!(msgs.len(), 10);
    for (i, m) in msgs.iter().enumerate() {
        let text = m.json.to_string();
        assert!(!text.contains("ssn") && !text.contains("dob"), "{text}");
        assert!(!text.contains(&ssn(i as u64)), "{text}");
        assert_eq!(m.subject, "legacy.vista.appointments");
        assert_eq!(m.json["source"]["table"], "appointments");
        let a = &m.json["after"];
        assert_eq!(a["id"], i as u64);
        assert_eq!(a["slot"], format!("16:{i:02}"));
        assert!(
            a.get("time").is_none() && a.get("CODE_STS").is_none(),
            "{a}"
        );
        let status = if i % 2 == 0 { "ACTIVE" } else { "CANCELLED" };
        assert_eq!(a["status"], status);
        let lvl = if i % 3 == 1 {
            serde_json::json!("LOW")
        } else {
            serde_json::Value::Null
        };
        assert_eq!(a["LVL"], lvl, "unknown levels are made null");
        assert_eq!(a["region"], "VA-NE");
        assert_eq!(m.json["key"], serde_json::json!({ "id": i }));
    }
}

/// The random workload of the trigger tests, debounced: replaying the stream still gives
/// the tables, with fewer events than changes.
async fn debounced_workload_replays(kind: Kind, capture: &str) {
    let (msgs, merged) = workload_replays(
        kind,
        capture,
        "debounce = { window = \"2s\", max_delay = \"5s\" }",
    )
    .await;
    assert!(merged > 0, "nothing merged in {} events", msgs.len());
}

#[tokio::test]
async fn postgres_debounced_workload_replays_to_the_tables_rows() {
    debounced_workload_replays(Kind::Pg, "rows").await;
}

#[tokio::test]
async fn mariadb_odbc_debounced_workload_replays_to_the_tables_keys() {
    debounced_workload_replays(Kind::Maria, "keys").await;
}

#[tokio::test]
async fn postgres_trigger_source_merges_and_maps() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Pg, &w, "debounce_map");
    db.create_tables();
    let cfg = w.config_with(&db.source(
        &["appointments"],
        "rows",
        "debounce = { window = \"1s\" }\n\n[source.map]\ntables = { appointments = \"appts\" }\n\
         rename = { clinic = \"clinicName\" }\ndrop = [\"note\"]",
    ));
    install(&w, &cfg);
    let _agent = w.agent(&cfg);
    db.sql("INSERT INTO appointments (id, clinic, note) VALUES (1, 'North', 'private');");
    drained(&db, &w).await;
    // Caught up: from here changes merge. Three statements, three transactions.
    db.sql(
        "INSERT INTO appointments (id, clinic, note) VALUES (445, 'A', 'x');
         UPDATE appointments SET clinic = 'B' WHERE id = 445;
         UPDATE appointments SET clinic = 'C' WHERE id = 445;
         UPDATE appointments SET clinic = 'South' WHERE id = 1;
         UPDATE appointments SET clinic = 'East', note = 'secret' WHERE id = 1;",
    );
    drained(&db, &w).await;
    let msgs = settled(&w, 3).await;
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    for m in &msgs {
        assert_eq!(m.subject, "legacy.vista.appts");
        assert_eq!(m.json["source"]["table"], "appts");
        let text = m.json.to_string();
        assert!(!text.contains("note") && !text.contains("secret") && !text.contains("private"));
    }
    let e445 = of(&msgs, 445);
    assert_eq!(e445.len(), 1);
    assert_eq!(e445[0].json["op"], "c");
    assert_eq!(e445[0].json["after"]["clinicName"], "C");
    let e1 = of(&msgs, 1);
    assert_eq!(e1.len(), 2);
    assert_eq!(e1[1].json["op"], "u");
    assert_eq!(
        e1[1].json["before"]["clinicName"], "North",
        "the first before"
    );
    assert_eq!(e1[1].json["after"]["clinicName"], "East", "the last after");
    assert_eq!(capture_rows(&db), 0);
}

/// Seeds 10214 and 10242 (debounce, kill -9): after a restart the backlog read again is
/// sent change by change. A change that had left on its own before the crash came back
/// with the same id and was dropped as a duplicate, while the earlier changes of its
/// key, which had left merged (under the merge's id), were stored again after it: the
/// key ended on an older value. Read again, each change now leaves with `+1`.
#[tokio::test]
async fn after_a_kill_9_a_key_sent_merged_then_alone_ends_on_its_last_value() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config(
        "table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n\
         debounce = { window = \"1s\", max_delay = \"120s\" }",
    );
    let file = w.logs().join("moves.log");
    let mut agent = w.agent(&cfg);
    wait_first_scan(&w).await;
    // Key 9 changes more often than the window: held (and the checkpoint before it)
    // until the crash.
    let mut n9 = 0u64;
    let mut model = BTreeMap::new();
    let mut keep_9_held = async |w: &World, model: &mut BTreeMap<u64, String>, want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let op = if n9 == 0 { "c" } else { "u" };
            let time = format!("07:{:02}", n9 % 60);
            append(&file, [move_line(9, op, &time)]);
            model.insert(9, time);
            n9 += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if w.count().await >= want {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", agent_log(w));
        }
    };
    keep_9_held(&w, &mut model, 0).await;
    // Key 1 created and moved: leaves merged, once its window is over.
    append(
        &file,
        [move_line(1, "c", "08:00"), move_line(1, "u", "09:00")],
    );
    keep_9_held(&w, &mut model, 1).await;
    // Moved again: leaves on its own.
    append(&file, [move_line(1, "u", "10:00")]);
    keep_9_held(&w, &mut model, 2).await;
    model.insert(1, "10:00".to_owned());
    let early = w.messages().await;
    assert_eq!(
        early
            .iter()
            .map(|m| m.json["source"]["position"].as_str().unwrap().contains('+'))
            .collect::<Vec<_>>(),
        [true, false],
        "key 1 merged, then alone: {early:#?}"
    );
    agent.kill9();
    let _agent = w.agent(&cfg);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msgs = w.messages().await;
        if replay(&msgs) == model {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream does not replay to the file's state: {:?}\n{}",
            replay(&msgs),
            agent_log(&w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
