//! Tailing a growing change file: exactly once, in order, across restarts.

use std::time::Duration;

use crate::harness::*;

const N: u64 = 10_000;

/// Appends `N` lines in bursts while the agent runs; calls `during` once a third is in.
async fn run_10k(w: &World, mut during: impl FnMut(&World)) {
    let file = w.logs().join("changes.log");
    let mut i = 0;
    let mut interrupted = false;
    while i < N {
        let burst = (i..(i + 500).min(N)).map(line);
        append(&file, burst);
        i = (i + 500).min(N);
        if !interrupted && i >= N / 3 {
            w.wait_count(N / 4, Duration::from_secs(60)).await;
            during(w);
            interrupted = true;
        }
    }
}

fn check_10k(w: &World, msgs: &[Msg]) {
    assert_eq!(msgs.len() as u64, N, "agent log:\n{}", agent_log(w));
    assert_unique(msgs, "id");
    let ids = ints(msgs, "id");
    assert_eq!(ids, (0..N as i64).collect::<Vec<_>>(), "order kept");
}

#[tokio::test]
async fn ten_thousand_lines_arrive_exactly_once_with_envelope_and_ids() {
    let w = World::new();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"");
    let mut agent = w.agent(&cfg);
    run_10k(&w, |_| {}).await;
    assert_eq!(w.wait_count(N, Duration::from_secs(120)).await, N);
    // Once the agent has exited nothing more can arrive: count then.
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    check_10k(&w, &msgs);
    let m = &msgs[42];
    assert_eq!(m.subject, "legacy.vista.appointments");
    let j = &m.json;
    assert_eq!(j["op"], "c");
    assert_eq!(j["key"], serde_json::json!({"id": 42}));
    assert_eq!(j["before"], serde_json::Value::Null);
    assert_eq!(
        j["after"],
        serde_json::json!({"id": 42, "clinic": "CARDIOLOGY-0", "time": "16:42", "fee": "42.50"})
    );
    assert!(
        j["after"].get("op").is_none(),
        "the op field is not part of the row"
    );
    assert_eq!(j["source"]["agent"], "e2e");
    assert_eq!(j["source"]["name"], "vista");
    assert_eq!(j["source"]["kind"], "tail");
    assert_eq!(j["source"]["table"], "appointments");
    assert_eq!(j["source"]["snapshot"], false);
    assert!(j["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let pos = j["source"]["position"].as_str().unwrap();
    // Line 42 starts where the 42 lines before it end.
    let offset: usize = (0..42).map(|i| line(i).len() + 1).sum();
    assert!(pos.ends_with(&format!(".0@{offset}")), "position {pos}");
    assert_eq!(m.id, format!("e2e:vista:{pos}"));
}

/// Stops the agent with `stop` once a third of the lines are in, starts it again, and
/// checks that all 10,000 arrive once, in order.
async fn restart_in_the_middle(stop: fn(&mut Agent)) {
    let w = World::new();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]");
    let agent = std::sync::Mutex::new(w.agent(&cfg));
    let mut restarts = 0;
    run_10k(&w, |w| {
        let mut a = agent.lock().unwrap();
        stop(&mut a);
        restarts += 1;
        *a = w.agent(&cfg);
    })
    .await;
    assert_eq!(restarts, 1);
    let got = w.wait_count(N, Duration::from_secs(120)).await;
    assert_eq!(got, N, "{}", agent_log(&w));
    agent.lock().unwrap().stop();
    check_10k(&w, &w.messages().await);
}

#[tokio::test]
async fn sigterm_in_the_middle_then_restart_loses_and_repeats_nothing() {
    restart_in_the_middle(|a| assert_eq!(a.stop(), Some(0), "clean exit on SIGTERM")).await;
}

#[tokio::test]
async fn kill_9_in_the_middle_then_restart_loses_and_repeats_nothing() {
    restart_in_the_middle(Agent::kill9).await;
}

#[tokio::test]
async fn partial_last_line_waits_for_its_newline() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("a.log");
    append(&file, [line(0)]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .map(|mut f| {
            use std::io::Write;
            f.write_all(br#"{"id":1,"clin"#).unwrap();
        })
        .unwrap();
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    // The agent read the half line with the first one (same read) but did not send it,
    // and its checkpoint stops right before it.
    assert_eq!(agent.stop(), Some(0));
    assert_eq!(w.count().await, 1);
    let cp = std::fs::read_to_string(w.dir().join("state/checkpoints/vista.json")).unwrap();
    let cp: serde_json::Value = serde_json::from_str(&cp).unwrap();
    assert_eq!(cp["files"][0]["offset"], (line(0).len() + 1) as u64);
    append(&file, [r#"ic":"X"}"#.to_owned(), line(2)]);
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(3, Duration::from_secs(30)).await, 3);
    agent.stop();
    let msgs = w.messages().await;
    assert_eq!(ints(&msgs, "id"), vec![0, 1, 2]);
    assert_eq!(
        msgs[1].json["after"],
        serde_json::json!({"id": 1, "clinic": "X"})
    );
}

#[tokio::test]
async fn malformed_and_over_long_lines_are_quarantined_with_offsets_and_the_rest_delivered() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]\nmax_record_bytes = \"1KiB\"");
    let file = w.logs().join("a.log");
    let long = format!(r#"{{"id":99,"pad":"{}"}}"#, "x".repeat(5000));
    let lines = vec![
        line(0),
        "this is not json".to_owned(),
        line(1),
        long.clone(),
        line(2),
        r#"{"no_id":true}"#.to_owned(),
        line(3),
    ];
    let mut offsets = vec![0usize];
    for l in &lines {
        offsets.push(offsets.last().unwrap() + l.len() + 1);
    }
    append(&file, lines);
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(4, Duration::from_secs(30)).await, 4);
    agent.stop();
    let msgs = w.messages().await;
    assert_eq!(ints(&msgs, "id"), vec![0, 1, 2, 3]);
    let q = std::fs::read_to_string(w.dir().join("state/quarantine/vista.jsonl")).unwrap();
    let q: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(q.len(), 3, "{q:?}");
    assert_eq!(q[0]["offset"], offsets[1] as u64);
    assert_eq!(q[0]["record"], "this is not json\n");
    assert_eq!(q[1]["offset"], offsets[3] as u64);
    assert_eq!(q[1]["length"], (long.len() + 1) as u64);
    assert!(q[1]["reason"]
        .as_str()
        .unwrap()
        .contains("max_record_bytes"));
    assert_eq!(
        q[1]["record"].as_str().unwrap().len(),
        1024,
        "the quarantine keeps the first max_record_bytes"
    );
    assert_eq!(q[2]["offset"], offsets[5] as u64);
    assert!(
        q[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no key field `id`"),
        "{}",
        q[2]
    );
    for e in &q {
        assert_eq!(e["file"], file.display().to_string());
    }
    // A restart does not quarantine (or send) them again: the checkpoint is past them.
    let mut agent = w.agent(&cfg);
    append(&file, [line(4)]);
    assert_eq!(w.wait_count(5, Duration::from_secs(30)).await, 5);
    agent.stop();
    let q2 = std::fs::read_to_string(w.dir().join("state/quarantine/vista.jsonl")).unwrap();
    assert_eq!(q2.lines().count(), 3);
}

/// The source's checkpointed offset of its only file (0 before the first checkpoint).
fn checkpointed_offset(w: &World) -> u64 {
    std::fs::read_to_string(w.dir().join("state/checkpoints/vista.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|cp| cp["files"][0]["offset"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_bad_line_waits_while_the_quarantine_cannot_be_written_and_goes_there_once_it_can() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    // A file where the quarantine directory should be: every quarantine write fails, as
    // on a full disk.
    let qdir = w.dir().join("state/quarantine");
    std::fs::create_dir_all(w.dir().join("state")).unwrap();
    std::fs::write(&qdir, "in the way").unwrap();
    let file = w.logs().join("a.log");
    let bad = "this is not json";
    append(&file, [line(0), bad.to_owned(), line(1), line(2)]);
    let end0 = (line(0).len() + 1) as u64;
    let mut agent = w.agent(&cfg);
    assert!(w.wait_count(1, Duration::from_secs(30)).await >= 1);
    let stuck = || {
        w.status()["sources"]["vista"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quarantine"))
            && checkpointed_offset(&w) == end0
    };
    wait_for(
        "the quarantine error in /status at the bad line, or the position past it",
        Duration::from_secs(30),
        || stuck() || checkpointed_offset(&w) > end0,
    )
    .await;
    assert_eq!(
        checkpointed_offset(&w),
        end0,
        "the position passed a record that is nowhere\n{}",
        agent_log(&w)
    );
    assert_eq!(w.count().await, 1, "nothing after the bad line is sent");
    // The operator fixes it: the record goes to the quarantine, the rest follows.
    std::fs::remove_file(&qdir).unwrap();
    assert_eq!(
        w.wait_count(3, Duration::from_secs(30)).await,
        3,
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    assert_eq!(ints(&w.messages().await, "id"), vec![0, 1, 2]);
    let q = std::fs::read_to_string(qdir.join("vista.jsonl")).unwrap();
    let q: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["offset"], end0);
    assert_eq!(q[0]["record"], format!("{bad}\n"));
    assert_eq!(
        checkpointed_offset(&w),
        std::fs::metadata(&file).unwrap().len()
    );
}

/// An event sent again that the stream already holds (here: the checkpoint lost, so
/// the whole file is read again) is counted as repeated, not as published: published
/// counts what the stream stored, and captured = published + repeated.
#[tokio::test]
async fn events_sent_again_are_counted_as_repeated_not_published() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]");
    let file = w.logs().join("changes.log");
    append(&file, (0..300).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(300, Duration::from_secs(60)).await, 300);
    wait_for("300 published", Duration::from_secs(30), || {
        w.metric_sum("lockstep_events_published_total") == 300
    })
    .await;
    assert_eq!(w.metric_sum("lockstep_events_repeated_total"), 0);
    assert_eq!(agent.stop(), Some(0));
    std::fs::remove_file(w.dir().join("state/checkpoints/vista.json")).unwrap();
    append(&file, (300..400).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(400, Duration::from_secs(60)).await, 400);
    wait_for("400 events settled", Duration::from_secs(30), || {
        w.metric_sum("lockstep_events_published_total")
            + w.metric_sum("lockstep_events_repeated_total")
            == 400
    })
    .await;
    assert_eq!(w.metric_sum("lockstep_events_published_total"), 100);
    assert_eq!(w.metric_sum("lockstep_events_repeated_total"), 300);
    assert_eq!(w.metric_sum("lockstep_events_captured_total"), 400);
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(msgs.len(), 400);
    assert_unique(&msgs, "id");
    assert_eq!(ints(&msgs, "id"), (0..400).collect::<Vec<i64>>());
}
