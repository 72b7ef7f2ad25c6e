//! Faults around the agent's own machinery (issue 16): spool files that cannot be read
//! back, source threads that die, positions that must not move past a failed write.

use std::time::Duration;

use crate::harness::*;

/// Issue 16 item 14: a spool segment deleted while the broker is down used to stop the
/// drain for good (the publisher logged "retrying" on every turn and sent nothing more).
#[tokio::test]
async fn a_spool_segment_gone_while_the_broker_is_down_is_skipped_and_the_rest_drains() {
    let mut w = World::new();
    w.with_admin();
    // 16 KiB segments: a few bursts make several.
    w.agent_extra = "[spool]\nmax_bytes = \"128KiB\"\n".into();
    w.nats.kill();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    let mut total = 0u64;
    while w.spool_segments().len() < 4 {
        append(&file, (total..total + 500).map(line));
        total += 500;
        wait_for("the burst to be spooled", Duration::from_secs(30), || {
            w.metric("lockstep_spool_appended_events_total") == total
        })
        .await;
        assert!(total < 100_000, "the spool never rolled: {}", agent_log(&w));
    }
    // The second segment goes (an operator cleaning up, a failing disk).
    let gone = w.spool_segments()[1].clone();
    let lost = spooled_ids(&gone);
    assert!(!lost.is_empty());
    std::fs::remove_file(&gone).unwrap();

    w.nats.restart();
    let want = total - lost.len() as u64;
    let got = w.wait_count(want, Duration::from_secs(60)).await;
    assert_eq!(got, want, "the drain stalled: {}", agent_log(&w));
    // Not stalled behind it either: new lines go live.
    append(&file, (total..total + 100).map(line));
    let got = w.wait_count(want + 100, Duration::from_secs(60)).await;
    assert_eq!(got, want + 100, "{}", agent_log(&w));
    assert_eq!(w.metric("lockstep_spool_unreadable_total"), 1);
    assert_eq!(agent.stop(), Some(0));

    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    let mut ids = ints(&msgs, "id");
    ids.sort_unstable();
    let expected: Vec<i64> = (0..(total + 100) as i64)
        .filter(|i| !lost.contains(i))
        .collect();
    assert_eq!(ids, expected);
    let log = agent_log(&w);
    assert!(log.contains("cannot read spool segment"), "{log}");
    assert_eq!(w.quarantined_files("spool-").len(), 1);
}
