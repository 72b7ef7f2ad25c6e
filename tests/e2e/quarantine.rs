//! The quarantine's way back (`lockstep quarantine list|resend`), its size cap, and the
//! cap on tables named by `table_field`: real binary, real nats-server, real consumer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const MAP_OLD: &str =
    "[source.map]\nvalues = { clinic = { C1 = \"CARDIOLOGY\" } }\nunknown = { clinic = \"quarantine\" }\n";
const MAP_FIXED: &str = "[source.map]\nvalues = { clinic = { C1 = \"CARDIOLOGY\", C9 = \"CARDIOLOGY-9\" } }\nunknown = { clinic = \"quarantine\" }\n";

/// A change line for id `i` with clinic code `clinic` and `pad` bytes of notes.
fn rec(i: u64, clinic: &str, pad: usize) -> String {
    format!(
        r#"{{"id":{i},"op":"c","clinic":"{clinic}","notes":"{}"}}"#,
        "n".repeat(pad)
    )
}

/// `lockstep quarantine <args> --config <config>`: (exit code, stdout, stderr).
fn quarantine(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["quarantine"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--config", config.to_str().unwrap()]);
    lockstep(&a)
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Complete lines in a file (a last line without its newline does not count).
fn complete_lines(path: &Path) -> usize {
    std::fs::read(path)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn qfile(w: &World, name: &str) -> PathBuf {
    w.dir().join("state/quarantine").join(name)
}

async fn wait_admin(w: &World) {
    wait_for("the admin endpoint", Duration::from_secs(30), || {
        w.admin("/healthz").0 != 0
    })
    .await;
}

/// Every id of the stream, once each, sorted; panics on a duplicate.
async fn stream_ids(w: &World) -> Vec<i64> {
    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    let mut ids: Vec<i64> = msgs
        .iter()
        .map(|m| m.json["after"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn quarantine_resend_after_the_mapping_and_the_size_limit_are_fixed() {
    let mut w = World::new();
    w.with_admin();
    let cfg = |max: &str, map: &str| {
        w.config_with(&w.tail_source(
            "vista",
            "*.log",
            &format!("table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\nmax_record_bytes = \"{max}\"\n{map}"),
        ))
    };
    let config = cfg("256B", MAP_OLD);
    let log = w.logs().join("a.log");
    // 3 and 7: a code the mapping does not list; 5: longer than max_record_bytes.
    append(
        &log,
        (1..=10).map(|i| match i {
            3 | 7 => rec(i, "C9", 10),
            5 => rec(i, "C1", 400),
            _ => rec(i, "C1", 10),
        }),
    );
    let mut agent = w.agent(&config);
    assert_eq!(w.wait_count(7, Duration::from_secs(30)).await, 7);
    let records = qfile(&w, "vista.jsonl");
    wait_for("3 quarantined records", Duration::from_secs(30), || {
        complete_lines(&records) == 3
    })
    .await;
    let (code, out, err) = quarantine(&config, &["list", "--source", "vista"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 record(s)") && out.contains("3 waiting, 0 resent"),
        "{out}"
    );
    assert!(
        out.contains("`C9`") && out.contains("max_record_bytes"),
        "{out}"
    );
    let (code, out, err) = lockstep(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("quarantine") && out.contains("source vista: 3 record(s) waiting"),
        "{out}"
    );
    assert_eq!(agent.stop(), Some(0));

    // The causes fixed in the config; the agent started again.
    let config = cfg("1KiB", MAP_FIXED);
    let _agent = w.agent(&config);
    wait_admin(&w).await;
    let (code, out, err) = quarantine(&config, &["resend", "--source", "vista"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("resent 3 record(s)") && out.contains("0 still bad"),
        "{out}"
    );
    assert_eq!(stream_ids(&w).await, (1..=10).collect::<Vec<_>>());
    let msgs = w.messages().await;
    for m in &msgs {
        let id = m.json["after"]["id"].as_i64().unwrap();
        let clinic = m.json["after"]["clinic"].as_str().unwrap();
        let notes = m.json["after"]["notes"].as_str().unwrap().len();
        match id {
            3 | 7 => assert_eq!(clinic, "CARDIOLOGY-9", "mapped by the fixed mapping"),
            _ => assert_eq!(clinic, "CARDIOLOGY"),
        }
        assert_eq!(notes, if id == 5 { 400 } else { 10 }, "id {id} whole");
        assert_eq!(
            m.id.contains(":resend."),
            matches!(id, 3 | 5 | 7),
            "new message ids for resent records only: {}",
            m.id
        );
    }
    assert_eq!(w.metric_sum("lockstep_quarantine_resent_total"), 3);

    // Again: nothing is sent twice.
    let (code, out, err) = quarantine(&config, &["resend", "--source", "vista"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("0 record(s) waiting") && out.contains("resent 0 record(s)"),
        "{out}"
    );
    assert_eq!(w.count().await, 10);
    let (_, out, _) = quarantine(&config, &["list"]);
    assert!(out.contains("0 waiting, 3 resent"), "{out}");
}

#[tokio::test]
async fn quarantine_resend_killed_midway_neither_loses_nor_doubles() {
    const BAD: u64 = 1000;
    let mut w = World::new();
    w.with_admin();
    let cfg = |map: &str| {
        w.config_with(&w.tail_source(
            "vista",
            "*.log",
            &format!("table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n{map}"),
        ))
    };
    let config = cfg(MAP_OLD);
    let log = w.logs().join("a.log");
    append(
        &log,
        (1..=BAD + 10).map(|i| rec(i, if i <= BAD { "C9" } else { "C1" }, 20)),
    );
    let mut agent = w.agent(&config);
    let records = qfile(&w, "vista.jsonl");
    wait_for(
        "the bad records in the quarantine",
        Duration::from_secs(60),
        || complete_lines(&records) == BAD as usize,
    )
    .await;
    assert_eq!(w.wait_count(10, Duration::from_secs(30)).await, 10);
    assert_eq!(agent.stop(), Some(0));

    // Fixed. In a test build the resend stops after sending 300 records and marking 150
    // of them: kill -9 there, with records sent and marked, sent and not marked, and not
    // sent at all.
    let config = cfg(MAP_FIXED);
    let mut agent = Agent::start(
        &config,
        &w.dir().join("agent.log"),
        &[("LOCKSTEP_TEST_RESEND_FREEZE", Path::new("300"))],
    );
    wait_admin(&w).await;
    let marks = qfile(&w, "vista.resent");
    // The command waits for the outcome: run it beside the agent, and kill the agent.
    let cli = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(lockstep_bin())
                .args(["quarantine", "resend", "--source", "vista", "--config"])
                .arg(&config)
                .output()
                .unwrap()
        })
    };
    assert_eq!(w.wait_count(310, Duration::from_secs(60)).await, 310);
    wait_for("150 marks", Duration::from_secs(60), || {
        complete_lines(&marks) >= 150
    })
    .await;
    agent.kill9();
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the agent stopped before the resend finished"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marked = complete_lines(&marks) as u64;
    assert_eq!(marked, 150);
    std::fs::write(w.dir().join("agent.log"), "").unwrap();

    // Started again: the queued request goes on from its marks.
    let _agent = w.agent(&config);
    wait_admin(&w).await;
    let (code, out, err) = quarantine(&config, &["resend", "--source", "vista"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("resent {BAD} record(s)")), "{out}");
    let log = agent_log(&w);
    assert!(
        log.contains(&format!("{} record(s) of", BAD - marked)),
        "only the unmarked records are sent again: {log}"
    );
    assert_eq!(
        stream_ids(&w).await,
        (1..=BAD as i64 + 10).collect::<Vec<_>>()
    );
    assert_eq!(complete_lines(&qfile(&w, "vista.resent")) as u64, BAD);
}

#[tokio::test]
async fn quarantine_past_its_cap_drops_the_oldest_and_counts_them() {
    const BAD: usize = 2000;
    let mut w = World::new();
    w.with_admin();
    let config = w.config_with(&w.tail_source(
        "vista",
        "*.log",
        "table = \"appointments\"\nkey = [\"id\"]\n",
    ));
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "id = \"e2e\"\n",
        "id = \"e2e\"\nquarantine_max_bytes = \"64KiB\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    // No key field: each line is quarantined; `n` numbers them.
    append(
        &w.logs().join("a.log"),
        (1..=BAD).map(|n| format!(r#"{{"n":{n},"pad":"{}"}}"#, "p".repeat(100))),
    );
    let _agent = w.agent(&config);
    wait_admin(&w).await;
    wait_for("every record quarantined", Duration::from_secs(60), || {
        w.metric_sum("lockstep_quarantined_records_total") == BAD as u64
    })
    .await;
    let path = qfile(&w, "vista.jsonl");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len <= 64 << 10, "{len} bytes");
    let ns: Vec<usize> = lines_of(&path)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let rec: serde_json::Value =
                serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
            rec["n"].as_u64().unwrap() as usize
        })
        .collect();
    let kept = ns.len();
    assert!(kept > 100 && kept < BAD, "{kept} kept");
    assert_eq!(
        ns,
        (BAD - kept + 1..=BAD).collect::<Vec<_>>(),
        "the newest, in order"
    );
    assert_eq!(
        w.metric_sum("lockstep_quarantine_dropped_total"),
        (BAD - kept) as u64
    );
    assert!(agent_log(&w).contains("went past quarantine_max_bytes"));
}

#[tokio::test]
async fn tables_past_max_tables_go_to_the_quarantine() {
    let mut w = World::new();
    w.with_admin();
    let config = w.config_with(&w.tail_source(
        "vista",
        "*.log",
        "key = [\"id\"]\ntable_field = \"tbl\"\nmax_tables = 3\n",
    ));
    // 50 records naming 10 tables, round robin: t0, t1 and t2 come first.
    append(
        &w.logs().join("a.log"),
        (0..50).map(|i| format!(r#"{{"id":{i},"tbl":"t{}"}}"#, i % 10)),
    );
    let _agent = w.agent(&config);
    wait_admin(&w).await;
    wait_for("35 records quarantined", Duration::from_secs(30), || {
        w.metric_sum("lockstep_quarantined_records_total") == 35
    })
    .await;
    assert_eq!(w.wait_count(15, Duration::from_secs(30)).await, 15);
    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    for m in &msgs {
        let t = m.subject.rsplit('.').next().unwrap();
        assert!(["t0", "t1", "t2"].contains(&t), "{}", m.subject);
    }
    let q = lines_of(&qfile(&w, "vista.jsonl"));
    assert_eq!(q.len(), 35);
    assert!(
        q.iter().all(|l| l.contains("over max_tables = 3")),
        "{}",
        q[0]
    );
    let series = w
        .admin("/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with("lockstep_events_captured_total{"))
        .count();
    assert_eq!(series, 3, "metric series of 3 tables only");
}
