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

/// A hot set of 20 keys updated `LOCKSTEP_ORDER_UPDATES` times (10,000 in CI; 50,000
/// with `LOCKSTEP_HEAVY=1`, see `scripts/soak-order`) while the broker is killed -9 and
/// restarted three times: per key, the stream holds every update once, in source
/// order, so a consumer that keeps the last event per key ends on the last change.
#[tokio::test]
async fn per_key_order_holds_across_three_broker_kills() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const KEYS: u64 = 20;
    let heavy = std::env::var_os("LOCKSTEP_HEAVY").is_some_and(|v| v == "1");
    let total: u64 = std::env::var("LOCKSTEP_ORDER_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if heavy { 50_000 } else { 10_000 });
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    // Update `i` sets key `i % 20` to version `i`, in bursts of 1,000 (a batch job),
    // about 3,000 a second.
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (file, written) = (file.clone(), written.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while i < total {
                let to = (i + 1000).min(total);
                append(
                    &file,
                    (i..to).map(|v| format!(r#"{{"id":{},"op":"u","v":{v}}}"#, v % KEYS)),
                );
                i = to;
                written.store(i, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    for kill in 0..3u64 {
        // Killed while a burst is being published: in the middle of one.
        let at = total * (2 * kill + 1) / 8 + 500;
        w.wait_count(at, Duration::from_secs(120)).await;
        w.nats.kill();
        wait_for(
            "the agent to notice the broker is gone",
            Duration::from_secs(30),
            || agent_log(&w).matches("disconnected from NATS").count() as u64 > kill,
        )
        .await;
        wait_for("/healthz to say so", Duration::from_secs(30), || {
            w.admin("/healthz").0 == 503
        })
        .await;
        w.nats.restart();
    }
    writer.join().unwrap();
    assert_eq!(
        w.wait_count(total, Duration::from_secs(180)).await,
        total,
        "{}",
        agent_log(&w)
    );
    wait_for("/healthz to recover", Duration::from_secs(30), || {
        w.admin("/healthz").0 == 200
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(msgs.len() as u64, total);
    assert_unique(&msgs, "v");
    let mut last: std::collections::BTreeMap<i64, i64> = Default::default();
    for m in &msgs {
        let (key, v) = (
            m.field("id").as_i64().unwrap(),
            m.field("v").as_i64().unwrap(),
        );
        if let Some(prev) = last.insert(key, v) {
            assert!(
                prev < v,
                "key {key}: version {v} is stored after version {prev}"
            );
        }
    }
    assert_eq!(last.len() as u64, KEYS);
    for (key, v) in last {
        assert_eq!(
            v as u64,
            total - KEYS + key as u64,
            "key {key} ends on its last change"
        );
    }
}
