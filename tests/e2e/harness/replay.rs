//! Whole runs: a workload on a database, captured by the real agent (restarted or not),
//! replayed from the stream and compared with the tables.

use std::time::Duration;

use super::*;

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
