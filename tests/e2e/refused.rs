//! Events the broker refuses for good (larger than its `max_payload`, over the stream's
//! `max_msg_size`): each goes to the quarantine with its message id and the broker's
//! reason, and everything after it is delivered — live, from the spool, and from every
//! kind of source.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use crate::poll::poll_source;

/// A JSON change line for id `i`, padded with a `note` to exactly `len` bytes.
fn big_line(i: u64, len: usize) -> String {
    let head = format!(r#"{{"id":{i},"op":"c","clinic":"CARDIOLOGY-1","note":""#);
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// The ids in the stream, checking that no message id repeats.
fn ids_in(msgs: &[Msg]) -> BTreeSet<i64> {
    assert_no_duplicate_ids(msgs);
    ints(msgs, "id").into_iter().collect()
}

/// `0..n` without `skip`.
fn all_but(n: i64, skip: &[i64]) -> BTreeSet<i64> {
    (0..n).filter(|i| !skip.contains(i)).collect()
}

/// Checks a quarantined refusal: its message id ends in `id_suffix`, the reason
/// contains `reason`, and the event itself is kept.
fn assert_refused(entry: &serde_json::Value, id_suffix: &str, reason: &str, log: &str) {
    let msg_id = entry["msg_id"].as_str().unwrap_or_default();
    assert!(
        msg_id.ends_with(id_suffix),
        "quarantined msg_id {msg_id}, wanted …{id_suffix}\n{log}"
    );
    let why = entry["reason"].as_str().unwrap_or_default();
    assert!(why.contains(reason), "reason `{why}`, wanted `{reason}`");
    assert!(
        entry["event"]["source"]["position"].is_string(),
        "the refused event is kept in the quarantine: {}",
        &entry.to_string()[..entry.to_string().len().min(300)]
    );
}

/// Lines `range` appended to `file`, line `big` of them made `len` bytes long.
fn append_with_big(file: &Path, range: std::ops::Range<u64>, big: u64, len: usize) {
    append(file, (range.start..big).map(line));
    append(file, [big_line(big, len)]);
    append(file, (big + 1..range.end).map(line));
}

/// Waits for `n` events in the stream; the agent's log if they do not come.
async fn arrived(w: &World, n: u64) {
    assert_eq!(
        w.wait_count(n, Duration::from_secs(60)).await,
        n,
        "{}",
        agent_log(w)
    );
}

/// Waits for the first refusal in the quarantine of source `vista`.
async fn refusal_quarantined(w: &World) {
    wait_for(
        "the refusal in the quarantine",
        Duration::from_secs(30),
        || !w.refused("vista").is_empty(),
    )
    .await;
}

/// Rows 0..100 of `appointments`, row 50 with a 1.1 MB note (over `max_payload`).
const HUNDRED_ROWS_50_HUGE: &str =
    "INSERT INTO appointments (id, clinic) SELECT g, 'c' || g FROM generate_series(0, 49) g;
     INSERT INTO appointments (id, note) VALUES (50, repeat('x', 1100000));
     INSERT INTO appointments (id, clinic) SELECT g, 'c' || g FROM generate_series(51, 99) g;";

/// Checks that row 50, and it alone, was refused for `max_payload` and quarantined
/// under the message id of its own position.
fn assert_row_50_refused(w: &World) {
    let refused = w.refused("vista");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["event"]["after"]["id"], 50);
    let position = refused[0]["event"]["source"]["position"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_refused(&refused[0], &position, "max_payload", &agent_log(w));
}

/// The byte offset of the line after the first `n` lines of `file`.
fn offset_of_line(file: &Path, n: usize) -> u64 {
    let text = std::fs::read(file).unwrap();
    let mut seen = 0;
    for (at, b) in text.iter().enumerate() {
        if seen == n {
            return at as u64;
        }
        if *b == b'\n' {
            seen += 1;
        }
    }
    text.len() as u64
}

/// A 1,048,400-byte line (under `max_record_bytes`, set to 1 MiB) becomes a message over
/// the broker's `max_payload` (1 MiB): it is quarantined, and the 298 lines around it
/// arrive — live, then again through the spool while the broker is away.
#[tokio::test]
async fn a_line_over_max_payload_is_quarantined_and_the_rest_arrives() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]\nmax_record_bytes = \"1MiB\"");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    append_with_big(&file, 0..300, 100, 1_048_400);
    arrived(&w, 299).await;
    refusal_quarantined(&w).await;

    // The broker goes away: the next big line is spooled with the others, and refused
    // when the spool drains.
    w.nats.kill();
    wait_for(
        "the agent to notice the broker is gone",
        Duration::from_secs(30),
        || agent_log(&w).contains("disconnected from NATS"),
    )
    .await;
    append_with_big(&file, 300..400, 350, 1_048_400);
    wait_for("100 events in the spool", Duration::from_secs(30), || {
        w.spool_waiting(&cfg) == 100
    })
    .await;
    w.nats.restart();
    arrived(&w, 398).await;
    wait_for("the spool to drain", Duration::from_secs(30), || {
        w.spool_waiting(&cfg) == 0
    })
    .await;
    assert_eq!(w.metric_sum("lockstep_events_refused_total"), 2);
    assert!(
        agent_log(&w).contains("max_record_bytes = 1048576 bytes, but the NATS server takes messages of at most max_payload = 1048576"),
        "a warning at connect: max_record_bytes is too close to max_payload"
    );
    assert_eq!(w.admin("/healthz").0, 200, "healthy again");
    assert_eq!(agent.stop(), Some(0));

    let msgs = w.messages().await;
    assert_eq!(ids_in(&msgs), all_but(400, &[100, 350]));
    let refused = w.refused("vista");
    assert_eq!(refused.len(), 2, "{refused:?}");
    let log = agent_log(&w);
    for (entry, line_no) in refused.iter().zip([100, 350]) {
        let suffix = format!("@{}", offset_of_line(&file, line_no));
        assert_refused(entry, &suffix, "max_payload", &log);
        assert_eq!(entry["event"]["after"]["id"], line_no as i64);
        assert!(msgs
            .iter()
            .all(|m| m.id != entry["msg_id"].as_str().unwrap()));
    }
}

/// A stream whose `max_msg_size` (64 KiB) is below the server's `max_payload`: the
/// broker takes the publish and refuses it in the ack (JetStream error 10054).
#[tokio::test]
async fn a_message_over_the_streams_max_msg_size_is_quarantined() {
    let mut w = World::new();
    w.with_admin();
    w.create_stream(|c| c.max_message_size = 64 << 10).await;
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    append_with_big(&file, 0..100, 50, 100_000);
    arrived(&w, 99).await;
    refusal_quarantined(&w).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(ids_in(&msgs), all_but(100, &[50]));
    let refused = w.refused("vista");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let suffix = format!("@{}", offset_of_line(&file, 50));
    assert_refused(&refused[0], &suffix, "maximum allowed", &agent_log(&w));
}

/// A PostgreSQL trigger source in rows mode: a row with a 1.1 MB text column makes an
/// event over `max_payload`; the rows after it arrive and its capture row goes.
#[tokio::test]
async fn postgres_rows_mode_a_huge_row_is_quarantined_and_the_rest_arrives() {
    let w = World::new();
    let db = Db::new(Kind::Pg, &w, "huge_rows");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "rows", ""));
    install(&w, &cfg);
    let mut agent = w.agent(&cfg);
    db.sql(HUNDRED_ROWS_50_HUGE);
    drained(&db, &w).await;
    arrived(&w, 99).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(ids_in(&msgs), all_but(100, &[50]));
    assert_row_50_refused(&w);
}

/// A poll source: one row of 1.1 MB among 100; the other 99 arrive, the scan's
/// snapshot is kept, and the next scan's change arrives too.
#[tokio::test]
async fn poll_a_huge_row_is_quarantined_and_the_rest_arrives() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Pg, &w, "huge_poll");
    db.create_tables();
    db.sql(HUNDRED_ROWS_50_HUGE);
    let cfg = w.config_with(&poll_source(
        &db,
        "vista",
        "appointments",
        "max_value_bytes = \"2MiB\"\n",
    ));
    let mut agent = w.agent(&cfg);
    arrived(&w, 99).await;
    db.sql("UPDATE appointments SET clinic = 'moved' WHERE id = 99;");
    arrived(&w, 100).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_no_duplicate_ids(&msgs);
    let last = msgs.last().unwrap();
    assert_eq!(
        (last.json["op"].as_str(), last.field("id")),
        (Some("u"), &99.into())
    );
    let firsts: BTreeSet<i64> = ints(&msgs[..99], "id").into_iter().collect();
    assert_eq!(firsts, all_but(100, &[50]));
    assert_row_50_refused(&w);
}

/// A stream deleted under the running agent (as while an operator re-creates it): the
/// publishes meet no responders, which is transient — retried until the stream is back
/// (the agent re-creates it), never quarantined.
#[tokio::test]
async fn a_stream_re_created_under_the_agent_is_retried_not_refused() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    append(&file, (0..300).map(line));
    assert_eq!(w.wait_count(300, Duration::from_secs(60)).await, 300);
    w.js().await.delete_stream(&w.stream).await.unwrap();
    append(&file, (300..600).map(line));
    wait_for(
        "the stream to be re-created",
        Duration::from_secs(30),
        || agent_log(&w).contains("spooled event(s) first"),
    )
    .await;
    arrived(&w, 300).await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(ids_in(&msgs), (300..600).collect());
    assert!(w.refused("vista").is_empty());
    assert!(agent_log(&w).contains("retrying with backoff"));
}
