//! Rotation, truncation, delete and recreate, files appearing later.

use std::fs;
use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

fn lines(r: std::ops::Range<u64>) -> impl Iterator<Item = String> {
    r.map(line)
}

/// Waits for `want.len()` messages, stops the agent (nothing more can arrive), and checks
/// that the stream holds exactly `want`, without duplicate ids.
async fn expect_ids(w: &World, agent: &mut Agent, want: Vec<i64>) -> Vec<Msg> {
    let n = want.len() as u64;
    assert_eq!(
        w.wait_count(n, WAIT).await,
        n,
        "agent log:\n{}",
        agent_log(w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    let mut ids = std::collections::HashSet::new();
    for m in &msgs {
        assert!(ids.insert(m.id.clone()), "duplicate Nats-Msg-Id {}", m.id);
    }
    assert_eq!(ints(&msgs, "id"), want, "agent log:\n{}", agent_log(w));
    msgs
}

fn range(r: std::ops::Range<i64>) -> Vec<i64> {
    r.collect()
}

#[tokio::test]
async fn rename_rotation_finishes_the_old_file_first() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let live = w.logs().join("app.log");
    append(&live, lines(0..300));
    let mut agent = w.agent(&cfg);
    w.wait_count(300, WAIT).await;
    // A writer that still has the old file open adds to it after the rename.
    let mut old = fs::OpenOptions::new().append(true).open(&live).unwrap();
    fs::rename(&live, w.logs().join("app.log.1")).unwrap();
    {
        use std::io::Write;
        let mut s = String::new();
        for l in lines(300..400) {
            s.push_str(&l);
            s.push('\n');
        }
        old.write_all(s.as_bytes()).unwrap();
    }
    append(&live, lines(400..500));
    expect_ids(&w, &mut agent, range(0..500)).await;
}

#[tokio::test]
async fn rotation_while_stopped_is_finished_before_the_live_file() {
    for rotated_name in ["app-1.log", "app.log.1"] {
        // app-1.log is matched by the glob; app.log.1 is found by its inode in the directory.
        let w = World::new();
        let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
        let live = w.logs().join("app.log");
        append(&live, lines(0..200));
        let mut agent = w.agent(&cfg);
        w.wait_count(200, WAIT).await;
        assert_eq!(agent.stop(), Some(0));
        append(&live, lines(200..300));
        fs::rename(&live, w.logs().join(rotated_name)).unwrap();
        append(&live, lines(300..400));
        let mut agent = w.agent(&cfg);
        expect_ids(&w, &mut agent, range(0..400)).await;
    }
}

#[tokio::test]
async fn copytruncate_reads_the_file_again_from_the_start() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let live = w.logs().join("app.log");
    append(&live, lines(0..100));
    let mut agent = w.agent(&cfg);
    w.wait_count(100, WAIT).await;
    fs::copy(&live, w.logs().join("app.log.1")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&live, lines(100..150));
    expect_ids(&w, &mut agent, range(0..150)).await;
}

#[tokio::test]
async fn truncated_and_rewritten_with_the_same_lines_sends_them_again() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let live = w.logs().join("app.log");
    append(&live, lines(0..50));
    let mut agent = w.agent(&cfg);
    w.wait_count(50, WAIT).await;
    // Rewritten shorter than it was: the agent sees the truncation whenever it looks.
    fs::write(&live, "").unwrap();
    append(&live, lines(0..20));
    let msgs = expect_ids(&w, &mut agent, [range(0..50), range(0..20)].concat()).await;
    // Same offsets, new generation: new ids.
    assert!(msgs[50].json["source"]["position"]
        .as_str()
        .unwrap()
        .ends_with(".1@0"));
    agent.stop();
    let log = agent_log(&w);
    assert!(log.contains("file truncated"), "the truncation is logged");
}

#[tokio::test]
async fn deleted_and_recreated_file_is_read_from_the_start() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let live = w.logs().join("app.log");
    append(&live, lines(0..40));
    let mut agent = w.agent(&cfg);
    w.wait_count(40, WAIT).await;
    // The agent holds the deleted file open, so the new file cannot reuse its inode
    // before the agent has finished with it.
    fs::remove_file(&live).unwrap();
    // The same first lines again: a new file all the same.
    append(&live, lines(0..10));
    append(&live, lines(40..60));
    expect_ids(
        &w,
        &mut agent,
        [range(0..40), range(0..10), range(40..60)].concat(),
    )
    .await;
}

#[tokio::test]
async fn a_file_that_appears_after_start_is_picked_up() {
    let w = World::new();
    let cfg = w.config(
        "table_field = \"tbl\"\nkey = [\"id\"]\nop_field = \"op\"\nop_map = { cancel = \"d\" }",
    );
    let mut agent = w.agent(&cfg);
    wait_first_scan(&w).await;
    let file = w.logs().join("late.log");
    append(
        &file,
        [
            r#"{"tbl":"clinics","op":"c","id":1,"name":"A"}"#.to_owned(),
            r#"{"tbl":"appointments","op":"u","id":2,"time":"16:00"}"#.to_owned(),
            r#"{"tbl":"appointments","op":"cancel","id":2,"time":"16:00"}"#.to_owned(),
        ],
    );
    let msgs = expect_ids(&w, &mut agent, vec![1, 2, 2]).await;
    assert_eq!(msgs[0].subject, "legacy.vista.clinics");
    assert_eq!(msgs[1].subject, "legacy.vista.appointments");
    assert_eq!(msgs[1].json["op"], "u");
    assert_eq!(msgs[2].json["op"], "d");
    assert_eq!(msgs[2].json["after"], serde_json::Value::Null);
    assert_eq!(
        msgs[2].json["before"],
        serde_json::json!({"id": 2, "time": "16:00"})
    );
    agent.stop();
}

#[tokio::test]
async fn start_at_end_skips_what_was_there_once() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]\nstart_at = \"end\"");
    let live = w.logs().join("app.log");
    append(&live, lines(0..30));
    let mut agent = w.agent(&cfg);
    wait_first_scan(&w).await;
    append(&live, lines(30..40));
    expect_ids(&w, &mut agent, range(30..40)).await;
    // After a restart the checkpoint, not start_at, decides.
    agent.stop();
    append(&live, lines(40..45));
    let mut agent = w.agent(&cfg);
    expect_ids(&w, &mut agent, range(30..45)).await;
}

#[tokio::test]
async fn csv_files_with_quotes_and_embedded_newlines() {
    let w = World::new();
    let cfg = w.config("table = \"permits\"\nkey = [\"id\"]\nformat = \"csv\"");
    let file = w.logs().join("permits.log");
    fs::write(
        &file,
        "id,status,note\n1,Approved,\"Smith, J\"\n2,Pending,\"two\nlines\"\n",
    )
    .unwrap();
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(2, WAIT).await, 2);
    // Restarting mid-file must still know the header.
    agent.stop();
    append(&file, ["3,,\"\"".to_owned()]);
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(3, WAIT).await, 3);
    let msgs = w.messages().await;
    assert_eq!(
        msgs[0].json["after"],
        serde_json::json!({"id": "1", "status": "Approved", "note": "Smith, J"})
    );
    assert_eq!(msgs[1].json["after"]["note"], "two\nlines");
    assert_eq!(
        msgs[2].json["after"],
        serde_json::json!({"id": "3", "status": null, "note": ""})
    );
    agent.stop();
}
