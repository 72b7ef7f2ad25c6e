//! The broker goes away and comes back: nothing is lost or doubled.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn broker_killed_and_restarted_mid_stream_loses_nothing() {
    let mut w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    append(&file, (0..2000).map(line));
    w.wait_count(1000, Duration::from_secs(60)).await;
    w.nats.kill();
    // Changes keep coming while the broker is away; the tail source waits with them.
    append(&file, (2000..3000).map(line));
    wait_for(
        "the agent to notice the broker is gone",
        Duration::from_secs(30),
        || agent_log(&w).contains("disconnected from NATS"),
    )
    .await;
    append(&file, (3000..3500).map(line));
    w.nats.restart();
    append(&file, (3500..4000).map(line));
    assert_eq!(
        w.wait_count(4000, Duration::from_secs(120)).await,
        4000,
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(msgs.len(), 4000);
    assert_unique(&msgs, "id");
    let mut ids = ints(&msgs, "id");
    ids.sort_unstable();
    assert_eq!(ids, (0..4000).collect::<Vec<_>>());
}
