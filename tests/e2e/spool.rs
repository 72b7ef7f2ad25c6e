//! The offline spool: outages, crashes while spooling and draining, damaged frames,
//! and the two ways of being full.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockstep_formats::frame::scan;

use crate::harness::*;

/// Per key (`clinic`), ids must arrive in increasing order.
fn assert_per_key_order(msgs: &[Msg]) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for m in msgs {
        let key = m.field("clinic").to_string();
        let id = m.field("id").as_i64().unwrap();
        if let Some(&prev) = last.get(&key) {
            assert!(prev < id, "clinic {key}: id {id} arrived after {prev}");
        }
        last.insert(key, id);
    }
}

fn assert_exactly(msgs: &[Msg], want: impl Iterator<Item = i64>) {
    assert_unique(msgs, "id");
    let mut ids = ints(msgs, "id");
    ids.sort_unstable();
    assert_eq!(ids, want.collect::<Vec<_>>());
}

/// Appends `line(i)` in small bursts from a thread until told to stop; returns how many.
fn steady_writer(
    file: &Path,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let file = file.to_owned();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let from = written.load(Ordering::SeqCst);
            append(&file, (from..from + 40).map(line));
            written.store(from + 40, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

#[tokio::test]
async fn a_30s_outage_under_steady_load_loses_and_repeats_nothing() {
    let mut w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = steady_writer(&file, stop.clone(), written.clone());
    w.wait_count(1000, Duration::from_secs(60)).await;

    w.nats.kill();
    let outage = std::time::Instant::now();
    wait_for("events to go to the spool", Duration::from_secs(30), || {
        w.spool_waiting(&cfg) > 0
    })
    .await;
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spooled = w.spool_waiting(&cfg);
    assert!(
        spooled > 500,
        "only {spooled} events spooled during the outage"
    );
    w.nats.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let total = written.load(Ordering::SeqCst);

    let msgs = delivered(&w, &mut agent, total).await;
    assert_exactly(&msgs, 0..total as i64);
    assert_per_key_order(&msgs);
    assert_eq!(w.spool_waiting(&cfg), 0, "the spool is empty afterwards");
}

/// Waits until the stream holds `n` messages, stops the agent (it must exit 0), and
/// returns what arrived, checking there is nothing beyond `n`.
async fn delivered(w: &World, agent: &mut Agent, n: u64) -> Vec<Msg> {
    assert_eq!(
        w.wait_count(n, Duration::from_secs(120)).await,
        n,
        "{}",
        agent_log(w)
    );
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(msgs.len() as u64, n);
    msgs
}

/// A small deterministic generator for the kill schedule.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn kill_9_while_spooling_and_draining_20_times_loses_and_repeats_nothing() {
    let mut w = World::new();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut rng = Lcg(0x010c_57e9);
    let mut next = 0u64;
    let mut broker_up = true;
    let mut agent = w.agent(&cfg);
    for round in 0..20 {
        let n = 200 + rng.next(800);
        append(&file, (next..next + n).map(line));
        next += n;
        // Every few rounds the broker goes away or comes back, so kills land both
        // while spooling and while draining.
        if round % 3 == 1 {
            if broker_up {
                w.nats.kill();
            } else {
                w.nats.restart();
            }
            broker_up = !broker_up;
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.next(1400))).await;
        agent.kill9();
        agent = w.agent(&cfg);
    }
    if !broker_up {
        w.nats.restart();
    }
    let msgs = delivered(&w, &mut agent, next).await;
    assert_exactly(&msgs, 0..next as i64);
    assert!(
        agent_log(&w).contains("sending"),
        "the spool was never drained: {}",
        agent_log(&w)
    );
}

#[tokio::test]
async fn a_torn_last_frame_and_a_flipped_byte_are_found_and_the_rest_delivered() {
    let mut w = World::new();
    w.nats.kill();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    // Five separate bursts make (at least) five frames.
    for k in 0..5u64 {
        append(&file, (k * 100..k * 100 + 100).map(line));
        wait_for("the burst to be spooled", Duration::from_secs(30), || {
            w.spool_waiting(&cfg) == (k + 1) * 100
        })
        .await;
    }
    assert_eq!(agent.stop(), Some(0));

    // Damage the spool: a flipped byte in the middle of the second frame, the last
    // frame cut in half.
    let spool = w.dir().join("state/spool");
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let seg = segs.last().unwrap().clone();
    let mut data = std::fs::read(&seg).unwrap();
    let mut frames = Vec::new();
    scan(
        &data,
        |at, h, events| {
            let ids: Vec<i64> = events
                .iter()
                .map(|e| {
                    let v: serde_json::Value = serde_json::from_slice(e.payload.0).unwrap();
                    v["after"]["id"].as_i64().unwrap()
                })
                .collect();
            frames.push((at, h.frame_len() as usize, ids));
        },
        |at, e| panic!("damage before the test made any, at {at}: {e}"),
    )
    .unwrap();
    assert!(frames.len() >= 3, "{} frames", frames.len());
    let (flip_at, flip_len, ref flipped) = frames[1];
    data[flip_at + flip_len / 2] ^= 0x08;
    let (cut_at, cut_len, ref cut) = frames[frames.len() - 1];
    data.truncate(cut_at + cut_len / 2);
    std::fs::write(&seg, &data).unwrap();
    let lost: Vec<i64> = flipped.iter().chain(cut).copied().collect();

    w.nats.restart();
    let mut agent = w.agent(&cfg);
    let want = 500 - lost.len() as u64;
    let msgs = delivered(&w, &mut agent, want).await;
    assert_exactly(&msgs, (0..500).filter(|i| !lost.contains(i)));
    let log = agent_log(&w);
    assert!(log.contains("damaged spool frame"), "{log}");
    assert!(log.contains("cut short"), "{log}");
    let q: Vec<_> = std::fs::read_dir(w.dir().join("state/quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("spool-"))
        .collect();
    assert_eq!(q.len(), 1, "{q:?}");
}

/// A 64 KiB spool with `when_full = mode` and `fsync`, the broker down, and `total`
/// lines written.
fn small_spool_with_broker_down(mode: &str, fsync: &str, total: u64) -> (World, Agent) {
    let mut w = World::new();
    w.with_admin();
    w.agent_extra =
        format!("[spool]\nmax_bytes = \"64KiB\"\nwhen_full = \"{mode}\"\nfsync = \"{fsync}\"");
    w.nats.kill();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let agent = w.agent(&cfg);
    append(&w.logs().join("app.log"), (0..total).map(line));
    (w, agent)
}

#[tokio::test]
async fn block_stops_the_source_and_resumes_when_the_spool_drains() {
    let total = 30_000u64;
    let (mut w, mut agent) = small_spool_with_broker_down("block", "off", total);
    wait_for("the spool to fill", Duration::from_secs(60), || {
        w.metric("lockstep_spool_bytes") >= 64 << 10
    })
    .await;
    // Full: the source stops; what is spooled stays put, well short of everything.
    let a = w.metric("lockstep_spool_appended_events_total");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = w.metric("lockstep_spool_appended_events_total");
    assert_eq!(a, b, "the spool kept taking events while full");
    assert!(
        b < total,
        "everything fit; the test needs a smaller max_bytes"
    );
    assert_eq!(w.metric("lockstep_spool_dropped_events_total"), 0);

    w.nats.restart();
    let msgs = delivered(&w, &mut agent, total).await;
    assert_exactly(&msgs, 0..total as i64);
    assert_per_key_order(&msgs);
}

#[tokio::test]
async fn drop_oldest_counts_exactly_what_is_missing_downstream() {
    let total = 30_000u64;
    let (mut w, mut agent) = small_spool_with_broker_down("drop_oldest", "batch", total);
    wait_for(
        "every event to reach the spool",
        Duration::from_secs(60),
        || w.metric("lockstep_spool_appended_events_total") == total,
    )
    .await;
    let dropped = w.metric("lockstep_spool_dropped_events_total");
    assert!(
        dropped > 0,
        "nothing was dropped; the test needs a smaller max_bytes"
    );

    w.nats.restart();
    let want = total - dropped;
    assert_eq!(
        w.wait_count(want, Duration::from_secs(120)).await,
        want,
        "{}",
        agent_log(&w)
    );
    wait_for("the spool to empty", Duration::from_secs(30), || {
        w.metric("lockstep_spool_events") == 0 && w.metric("lockstep_spool_segments") == 0
    })
    .await;
    assert_eq!(agent.stop(), Some(0));
    let msgs = w.messages().await;
    assert_eq!(msgs.len() as u64, want, "dropped {dropped} of {total}");
    // The oldest went: what arrived is exactly the newest `want`, in order.
    assert_exactly(&msgs, dropped as i64..total as i64);
    assert!(agent_log(&w).contains("dropping its oldest segment"));
}

/// An outage longer than the stream's duplicate window: what was acknowledged before it
/// is not sent again, and what waited in the spool is sent once (see docs/design.md,
/// "Duplicates after a long outage").
#[tokio::test]
async fn an_outage_longer_than_the_duplicate_window_sends_nothing_twice() {
    let mut w = World::new();
    w.with_admin();
    // Every frame fsynced before a position moves (the default is "batch").
    w.agent_extra = "[spool]\nfsync = \"always\"".into();
    w.create_stream(|c| c.duplicate_window = Duration::from_secs(1))
        .await;
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let file = w.logs().join("app.log");
    let mut agent = w.agent(&cfg);
    append(&file, (0..1000).map(line));
    w.wait_count(1000, Duration::from_secs(60)).await;
    wait_for(
        "the acks of the first 1000",
        Duration::from_secs(30),
        || w.metric("lockstep_events_published_total{source=\"vista\",table=\"t\"}") == 1000,
    )
    .await;
    w.nats.kill();
    append(&file, (1000..2000).map(line));
    wait_for(
        "the second 1000 to be spooled",
        Duration::from_secs(30),
        || w.spool_waiting(&cfg) == 1000,
    )
    .await;
    // Three windows long; the agent is restarted meanwhile, so it starts from its
    // checkpoint and its spool.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent.stop(), Some(0));
    let mut agent = w.agent(&cfg);
    w.nats.restart();
    let msgs = delivered(&w, &mut agent, 2000).await;
    assert_exactly(&msgs, 0..2000);
    assert_per_key_order(&msgs);
}

/// A spool left by the version before key hashes (frames `LSF1`) is still drained
/// after an upgrade: every event once, in order, and then live events as usual.
#[tokio::test]
async fn a_spool_written_before_key_hashes_drains_in_order() {
    use lockstep_formats::frame::{FrameWriter, RawBytes, SpoolEvent};
    let w = World::new();
    let spool = w.dir().join("state/spool");
    std::fs::create_dir_all(&spool).unwrap();
    let payloads: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"op":"u","key":{{"id":{k}}},"before":null,"after":{{"id":{k},"v":{i}}},"source":{{"agent":"e2e","name":"vista","kind":"tail","table":"t","position":"old@{i}","ts_ms":0,"snapshot":false}},"ts_ms":0}}"#,
                k = i % 20
            )
        })
        .collect();
    let ids: Vec<String> = (0..600).map(|i| format!("e2e:vista:old@{i}")).collect();
    let mut writer = FrameWriter::new().unwrap();
    let mut segment = Vec::new();
    for first in (0..600).step_by(200) {
        writer
            .encode_version(
                1,
                first as u64 + 1,
                (first..first + 200).map(|i| SpoolEvent {
                    source: "vista",
                    table: "t",
                    subject: "legacy.vista.t",
                    msg_id: &ids[i],
                    captured_ms: 1_790_000_000_000,
                    payload: RawBytes(payloads[i].as_bytes()),
                    key_hash: 0,
                }),
                &mut segment,
            )
            .unwrap();
    }
    assert_eq!(&segment[..4], b"LSF1");
    std::fs::write(spool.join(format!("{:020}.seg", 1)), segment).unwrap();

    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let mut agent = w.agent(&cfg);
    append(
        &w.logs().join("app.log"),
        (600..700).map(|i| format!(r#"{{"id":{},"op":"u","v":{i}}}"#, i % 20)),
    );
    let msgs = delivered(&w, &mut agent, 700).await;
    assert_unique(&msgs, "v");
    assert_eq!(ints(&msgs, "v"), (0..700).collect::<Vec<_>>());
    assert_eq!(w.spool_waiting(&cfg), 0);
}
