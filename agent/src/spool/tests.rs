use std::sync::atomic::Ordering;

use lockstep_formats::frame::RawBytes;
use proptest::prelude::*;

use super::*;
use crate::disk::faulty::FaultyDisk;
use crate::disk::RealDisk;

struct Dirs {
    _tmp: tempfile::TempDir,
    spool: PathBuf,
    quarantine: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    Dirs {
        spool: tmp.path().join("spool"),
        quarantine: tmp.path().join("quarantine"),
        _tmp: tmp,
    }
}

fn open_with(d: &Dirs, max: u64, full: WhenFull, disk: Arc<dyn Disk>) -> (Spool, Arc<Metrics>) {
    let m = Arc::new(Metrics::default());
    let s = Spool::open(
        &d.spool,
        &d.quarantine,
        SpoolOptions::new(max, full),
        disk,
        m.clone(),
    )
    .unwrap();
    (s, m)
}

fn open(d: &Dirs) -> (Spool, Arc<Metrics>) {
    open_with(d, 1 << 30, WhenFull::Block, Arc::new(RealDisk))
}

/// The payload of event `i`: what tests check comes back.
fn payload(i: u64) -> String {
    format!(r#"{{"after":{{"id":{i},"status":"PENDING","note":"event number {i}"}},"op":"c"}}"#)
}

fn append(s: &mut Spool, ids: std::ops::Range<u64>) -> Result<u64, SpoolError> {
    let payloads: Vec<String> = ids.clone().map(payload).collect();
    let msg_ids: Vec<String> = ids.clone().map(|i| format!("a:s:{i}")).collect();
    s.append(ids.clone().enumerate().map(|(k, i)| SpoolEvent {
        source: "s",
        table: "t",
        subject: "legacy.s.t",
        msg_id: &msg_ids[k],
        captured_ms: 1_000 + i as i64,
        payload: RawBytes(payloads[k].as_bytes()),
        key_hash: 0,
    }))
}

/// Reads everything left, as (seq, event number).
fn read_all(s: &mut Spool) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    while s
        .read(1000, |seq, e| {
            let i: u64 = e.msg_id[4..].parse().unwrap();
            assert_eq!(e.payload.0, payload(i).as_bytes());
            assert_eq!(e.captured_ms, 1_000 + i as i64);
            got.push((seq, i));
        })
        .unwrap()
        > 0
    {}
    got
}

#[test]
fn appends_read_back_in_order_and_survive_reopen() {
    let d = dirs();
    let (mut s, _) = open(&d);
    assert!(s.is_empty());
    assert_eq!(append(&mut s, 0..10).unwrap(), 10);
    assert_eq!(append(&mut s, 10..25).unwrap(), 25);
    s.sync().unwrap();
    let got = read_all(&mut s);
    assert_eq!(got, (0..25).map(|i| (i + 1, i)).collect::<Vec<_>>());
    assert!(s.all_read());
    for seq in 1..=12 {
        s.ack(seq);
    }
    s.maintain(true).unwrap();
    assert_eq!(s.stats().events, 13);
    drop(s);

    let (mut s, _) = open(&d);
    assert_eq!(s.acked(), 12);
    let got = read_all(&mut s);
    assert_eq!(got, (12..25).map(|i| (i + 1, i)).collect::<Vec<_>>());
    // New appends continue the numbering.
    assert_eq!(append(&mut s, 25..26).unwrap(), 26);
    for seq in 13..=26 {
        s.ack(seq);
    }
    s.maintain(true).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.stats(), SpoolStats::default());
    assert!(
        list_segments(&d.spool).unwrap().is_empty(),
        "acknowledged segments are deleted"
    );
}

#[test]
fn rewind_reads_again_from_the_first_unacknowledged() {
    let d = dirs();
    let (mut s, _) = open(&d);
    append(&mut s, 0..5).unwrap();
    append(&mut s, 5..10).unwrap();
    assert_eq!(read_all(&mut s).len(), 10);
    s.ack(1);
    s.ack(2);
    s.ack(3);
    s.rewind();
    let again: Vec<u64> = read_all(&mut s).into_iter().map(|(_, i)| i).collect();
    assert_eq!(again, (3..10).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_and_a_damaged_frame_quarantined() {
    let d = dirs();
    let (mut s, _) = open(&d);
    for k in 0..5 {
        append(&mut s, k * 10..k * 10 + 10).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    let (_, path) = list_segments(&d.spool).unwrap().remove(0);
    let mut data = std::fs::read(&path).unwrap();
    let frames = scan_segment(&data).frames;
    assert_eq!(frames.len(), 5);
    // A flipped byte in the middle of frame 2's body, and frame 4 cut in half.
    let mid = frames[2].offset + frames[2].len / 2;
    data[mid as usize] ^= 0x40;
    data.truncate((frames[4].offset + frames[4].len / 2) as usize);
    std::fs::write(&path, &data).unwrap();

    let (mut s, m) = open(&d);
    let got: Vec<u64> = read_all(&mut s).into_iter().map(|(_, i)| i).collect();
    let want: Vec<u64> = (0..20).chain(30..40).collect();
    assert_eq!(got, want);
    assert_eq!(m.spool_corrupt_frames.load(Ordering::Relaxed), 1);
    let q = std::fs::read_dir(&d.quarantine).unwrap().count();
    assert_eq!(q, 1, "the damaged frame is in the quarantine");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        frames[4].offset,
        "the torn frame is cut off"
    );
    drop(s);
    // A second start does not count it again.
    let (_, m) = open(&d);
    assert_eq!(m.spool_corrupt_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn drop_oldest_counts_exactly_what_it_drops() {
    let d = dirs();
    let (mut s, m) = open_with(&d, 128 << 10, WhenFull::DropOldest, Arc::new(RealDisk));
    let mut next = 0;
    while next < 20_000 {
        append(&mut s, next..next + 100).unwrap();
        next += 100;
    }
    assert!(s.stats().bytes <= 128 << 10, "{:?}", s.stats());
    let dropped = m.spool_dropped.load(Ordering::Relaxed);
    let kept = read_all(&mut s);
    assert!(dropped > 0);
    assert_eq!(dropped + kept.len() as u64, 20_000);
    // What is kept is the newest, in order.
    let first = kept[0].1;
    assert_eq!(
        kept.iter().map(|k| k.1).collect::<Vec<_>>(),
        (first..20_000).collect::<Vec<_>>()
    );
}

/// A drop whose ledger cannot be written is undone: its events stay, unacknowledged,
/// and are counted when a later drop succeeds (before, the spool's acknowledged
/// position moved on anyway, and the later drop of the same segment counted none of
/// its events).
#[test]
fn a_drop_the_ledger_cannot_record_keeps_its_events() {
    let d = dirs();
    let disk = Arc::new(FaultyDisk::new(u64::MAX));
    let (mut s, m) = open_with(&d, 128 << 10, WhenFull::DropOldest, disk.clone());
    let mut next = 0;
    while m.spool_dropped.load(Ordering::Relaxed) == 0 {
        append(&mut s, next..next + 100).unwrap();
        next += 100;
    }
    // The disk is full when the next drop writes the ledger: the append before it
    // shows how long a frame is.
    let frame = loop {
        let before = s.stats().bytes;
        append(&mut s, next..next + 100).unwrap();
        next += 100;
        let after = s.stats().bytes;
        if after > before && after + (after - before) > 128 << 10 {
            break after - before;
        }
    };
    assert!(frame > 0);
    disk.space.store(0, Ordering::SeqCst);
    let e = append(&mut s, next..next + 100).unwrap_err();
    assert!(e.to_string().contains("ledger"), "{e}");
    let dropped_before = m.spool_dropped.load(Ordering::Relaxed);
    disk.space.store(u64::MAX, Ordering::SeqCst);
    for _ in 0..50 {
        append(&mut s, next..next + 100).unwrap();
        next += 100;
    }
    let dropped = m.spool_dropped.load(Ordering::Relaxed);
    assert!(dropped > dropped_before);
    let kept = read_all(&mut s);
    assert_eq!(dropped + kept.len() as u64, next);
    let first = kept[0].1;
    assert_eq!(
        kept.iter().map(|k| k.1).collect::<Vec<_>>(),
        (first..next).collect::<Vec<_>>()
    );
}

#[test]
fn block_reports_full_and_keeps_everything() {
    let d = dirs();
    let (mut s, _) = open_with(&d, 128 << 10, WhenFull::Block, Arc::new(RealDisk));
    let mut next = 0;
    while !s.is_full() {
        append(&mut s, next..next + 100).unwrap();
        next += 100;
    }
    assert_eq!(read_all(&mut s).len() as u64, next);
    for seq in 1..=next {
        s.ack(seq);
    }
    s.maintain(false).unwrap();
    assert!(!s.is_full(), "acknowledged segments free room");
}

#[test]
fn a_full_disk_fails_clearly_and_recovers() {
    let d = dirs();
    let disk = Arc::new(FaultyDisk::new(40_000));
    let (mut s, m) = open_with(&d, 1 << 30, WhenFull::Block, disk.clone());
    let mut next = 0;
    let e = loop {
        match append(&mut s, next..next + 50) {
            Ok(_) => next += 50,
            Err(e) => break e,
        }
    };
    let msg = e.to_string();
    assert!(
        msg.contains("append a frame") && msg.contains("disk is full"),
        "{msg}"
    );
    assert_eq!(e.source.raw_os_error(), Some(28));
    // The partial frame was cut: the segment still reads cleanly.
    let got = read_all(&mut s);
    assert_eq!(got.len() as u64, next);
    // A sync that fails with EIO says so.
    disk.fail_sync.store(true, Ordering::SeqCst);
    let e = s.sync().unwrap_err().to_string();
    assert!(e.contains("fsync") && e.contains("I/O error"), "{e}");
    drop(s);

    let (mut s, m2) = open(&d);
    assert_eq!(read_all(&mut s).len() as u64, next);
    assert_eq!(m.spool_corrupt_frames.load(Ordering::Relaxed), 0);
    assert_eq!(m2.spool_corrupt_frames.load(Ordering::Relaxed), 0);
}

/// Issue 16 item 9: an fsync that fails while a new segment is started used to be
/// reported like a full disk (held and retried); the retried fsync "succeeded" and the
/// sources checkpointed past frames that may never have reached the disk.
#[test]
fn a_failed_fsync_when_a_segment_rolls_stays_failed() {
    let d = dirs();
    let disk = Arc::new(FaultyDisk::new(u64::MAX));
    // 16 KiB segments: a few appends roll to a new one.
    let (mut s, _) = open_with(&d, 128 << 10, WhenFull::Block, disk.clone());
    append(&mut s, 0..50).unwrap();
    s.sync().unwrap();
    disk.fail_sync.store(true, Ordering::SeqCst);
    let mut next = 50;
    let e = loop {
        match append(&mut s, next..next + 50) {
            Ok(_) => next += 50,
            Err(e) => break e,
        }
    };
    assert!(
        e.to_string().contains("fsync a segment"),
        "the roll's fsync failed: {e}"
    );
    assert_eq!(e.source.raw_os_error(), Some(5));
    // The device answers again: a retried fsync would "succeed". It must not.
    disk.fail_sync.store(false, Ordering::SeqCst);
    let again = append(&mut s, next..next + 50).expect_err("an append after a failed fsync");
    assert!(again.to_string().contains("fsync a segment"), "{again}");
    assert!(s.unsynced(), "a failed fsync leaves the spool unsynced");
    let sync = s.sync().expect_err("a sync after a failed fsync");
    assert!(sync.to_string().contains("I/O error"), "{sync}");
    assert!(s.sync_error().is_some());
}

/// Issue 16 item 14: a segment that cannot be read (here: the file is gone, or at start
/// not readable at all) costs its own events only; the rest is read and the agent
/// starts.
#[test]
fn an_unreadable_segment_is_set_aside_and_the_rest_read() {
    let d = dirs();
    let (mut s, m) = open_with(&d, 128 << 10, WhenFull::Block, Arc::new(RealDisk));
    let mut next = 0;
    while s.stats().segments < 3 {
        append(&mut s, next..next + 50).unwrap();
        next += 50;
    }
    s.sync().unwrap();
    let segs = list_segments(&d.spool).unwrap();
    let second = &segs[1];
    let third_first = segs[2].0;
    std::fs::remove_file(&second.1).unwrap();
    let got = read_all(&mut s);
    let lost: Vec<u64> = (second.0..third_first).collect();
    assert_eq!(got.len() as u64, next - lost.len() as u64);
    assert!(got.iter().all(|(seq, _)| !lost.contains(seq)));
    assert_eq!(m.spool_unreadable.load(Ordering::Relaxed), 1);
    // Read again (a failed publish rewinds): not counted twice.
    s.rewind();
    assert_eq!(read_all(&mut s).len(), got.len());
    assert_eq!(m.spool_unreadable.load(Ordering::Relaxed), 1);
    drop(s);

    // At start: a segment that cannot be read (a directory in its place) is moved
    // aside; the spool opens and appends go on.
    let third = &segs[2].1;
    std::fs::remove_file(third).unwrap();
    std::fs::create_dir(third).unwrap();
    let (mut s, m) = open(&d);
    assert_eq!(m.spool_unreadable.load(Ordering::Relaxed), 1);
    assert!(!third.exists(), "moved to the quarantine");
    let left = read_all(&mut s);
    // Spool sequence numbers start at 1: the last segment held third_first..=next.
    assert_eq!(
        left.len() as u64,
        got.len() as u64 - (next + 1 - third_first)
    );
    append(&mut s, next..next + 10).unwrap();
    assert_eq!(read_all(&mut s).len(), 10);
}

/// A read error that passes must not cost events: here the process is out of file
/// descriptors for a moment (EMFILE, as when a tail source holds many files open), so
/// a segment cannot be opened for reading. The events were skipped and counted lost,
/// and once a later event was acknowledged the segment, readable all along, was
/// deleted. They must be read once descriptors are free again. Runs in a child process
/// of its own: using up the descriptors would fail other tests running beside it.
#[test]
fn a_passing_read_error_skips_nothing() {
    const CHILD: &str = "LOCKSTEP_TEST_EMFILE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::tests::a_passing_read_error_skips_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let d = dirs();
    let (mut s, m) = open_with(&d, 128 << 10, WhenFull::Block, Arc::new(RealDisk));
    let mut next = 0;
    while s.stats().segments < 3 {
        append(&mut s, next..next + 50).unwrap();
        next += 50;
    }
    s.sync().unwrap();
    // Use up every file descriptor.
    let mut burnt = Vec::new();
    let emfile = loop {
        match File::open("/dev/null") {
            Ok(f) => burnt.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(emfile.raw_os_error(), Some(24), "{emfile}");
    let mut early = Vec::new();
    let _ = s.read(1000, |seq, _| early.push(seq));
    drop(burnt);
    // Descriptors are free again: nothing was skipped.
    let mut got: Vec<u64> = early;
    got.extend(read_all(&mut s).into_iter().map(|(seq, _)| seq));
    assert_eq!(
        got.len() as u64,
        next,
        "every event (skipped: {})",
        next - got.len() as u64
    );
    assert!(got.iter().copied().eq(1..=next), "in order");
    assert_eq!(m.spool_unreadable.load(Ordering::Relaxed), 0);
}

/// A frame that could not be read (an I/O error; here the segment is a directory, so
/// reading it fails with EISDIR) is skipped, but the segment is not deleted with the
/// acknowledged ones: an EIO can pass (a SAN path failover, an NFS soft mount), and
/// the bytes may still be there. It is moved to the quarantine, where it can be read
/// back by hand.
#[test]
fn a_segment_with_unreadable_frames_is_kept_in_the_quarantine() {
    let d = dirs();
    let (mut s, m) = open_with(&d, 128 << 10, WhenFull::Block, Arc::new(RealDisk));
    let mut next = 0;
    while s.stats().segments < 3 {
        append(&mut s, next..next + 50).unwrap();
        next += 50;
    }
    s.sync().unwrap();
    let segs = list_segments(&d.spool).unwrap();
    let second = &segs[1];
    std::fs::remove_file(&second.1).unwrap();
    std::fs::create_dir(&second.1).unwrap();
    let got = read_all(&mut s);
    assert!(m.spool_unreadable.load(Ordering::Relaxed) > 0);
    assert!((got.len() as u64) < next);
    s.ack(got.last().unwrap().0);
    s.maintain(true).unwrap();
    let kept = d
        .quarantine
        .join(format!("spool-{:020}.unreadable.seg", second.0));
    assert!(kept.exists(), "the segment is kept in the quarantine");
    assert!(!second.1.exists(), "and no longer in the spool");
}

/// Issue 16 item 9, through the publisher: with the broker away every event goes to the
/// spool; the fsync made when the first segment is full and the next one started fails
/// once (EIO), and later ones would succeed. The publisher used to hold the events and
/// retry, the retried fsync "succeeded" and the agent went on. Now it stops with the
/// error (the runner exits 1). `fsync = "off"`, so that the roll's fsync is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_stops_when_the_fsync_of_a_segment_roll_fails() {
    use crate::config::{FsyncPolicy, NatsAuth, NatsConfig, SpoolConfig};
    use crate::pipeline::{AckWatermark, Batch, Outgoing};
    use crate::sink::publisher::Publisher;
    use tokio::sync::{mpsc, watch};

    let d = dirs();
    let disk = Arc::new(FaultyDisk::new(u64::MAX));
    disk.fail_syncs.store(1, Ordering::SeqCst);
    let (spool, m) = open_with(&d, 128 << 10, WhenFull::Block, disk.clone());
    let nats = NatsConfig {
        servers: vec!["nats://127.0.0.1:1".into()],
        stream: "S".into(),
        subject_prefix: "legacy".into(),
        create_stream: true,
        max_in_flight: 64,
        ack_timeout: std::time::Duration::from_secs(1),
        auth: NatsAuth::None,
        tls: None,
    };
    // No broker answers there: the client keeps trying, the publisher spools.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let js = crate::sink::jetstream::context(client, &nats);
    let spool_cfg = SpoolConfig {
        max_bytes: 128 << 10,
        when_full: WhenFull::Block,
        fsync: FsyncPolicy::Off,
    };
    let wm = Arc::new(AckWatermark::default());
    let p = Publisher::new(
        js,
        nats,
        &spool_cfg,
        spool,
        m.clone(),
        vec![wm],
        d._tmp.path(),
    );
    let (tx, rx) = mpsc::channel(4);
    let (_stop, shutdown) = watch::channel(false);
    let beat = crate::service::Liveness::default().register("the publisher");
    let run = tokio::spawn(p.run(rx, shutdown, std::time::Duration::from_secs(1), beat));
    let counters = m.table("s", "t");
    let mut seq = 0u64;
    let fed = tokio::spawn(async move {
        // More than a segment's worth (16 KiB compressed), in batches.
        for _ in 0..400 {
            let msgs = (0..50)
                .map(|_| {
                    seq += 1;
                    Outgoing {
                        seq,
                        subject: "legacy.s.t".into(),
                        msg_id: format!("a:s:{seq}"),
                        payload: bytes::Bytes::from(format!(
                            "{{\"after\":{{\"id\":{seq},\"n\":\"{:x}\"}}}}",
                            seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        )),
                        captured_ms: 1,
                        key_hash: seq,
                        counters: counters.clone(),
                    }
                })
                .collect();
            if tx.send(Batch { source: 0, msgs }).await.is_err() {
                return;
            }
        }
    });
    let r = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the publisher did not stop after the failed fsync")
        .unwrap();
    let e = r.expect_err("the publisher stops with the fsync error");
    eprintln!("stopped with: {e}");
    assert!(e.to_string().contains("fsync a segment"), "{e}");
    assert_eq!(
        disk.fail_syncs.load(Ordering::SeqCst),
        0,
        "the fsync failed once"
    );
    fed.abort();
}

/// The segment being written, deleted under the running agent: what it holds is still
/// read back (and sent) through the append handle, before and after the delete.
#[test]
fn the_segment_being_written_is_read_back_after_it_is_deleted() {
    let d = dirs();
    let (mut s, m) = open(&d);
    append(&mut s, 0..50).unwrap();
    let seg = list_segments(&d.spool).unwrap().pop().unwrap();
    std::fs::remove_file(&seg.1).unwrap();
    append(&mut s, 50..60).unwrap();
    let got = read_all(&mut s);
    assert_eq!(got.len(), 60);
    assert_eq!(m.spool_unreadable.load(Ordering::Relaxed), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Ack(u8),
    Sync,
    Reopen,
    /// The disk fills up during the next append, tearing it at this fraction.
    CrashInWrite(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..60).prop_map(Op::Append),
        3 => (1u8..80).prop_map(Op::Ack),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => (0u8..=100).prop_map(Op::CrashInWrite),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Against a model: every appended event that is not acknowledged comes back, in
    /// order, after any sequence of appends, acks, reopens and writes torn by a full
    /// disk; acknowledged ones may come back only if the ledger had not caught up.
    #[test]
    fn spool_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let d = dirs();
        let disk = Arc::new(FaultyDisk::new(u64::MAX));
        let (mut s, _) = open_with(&d, 1 << 30, WhenFull::Block, disk.clone());
        let mut model: Vec<u64> = Vec::new(); // event numbers appended, in order
        let mut acked = 0usize; // how many of `model` are acknowledged
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append(n) | Op::CrashInWrite(n) => {
                    let n = u64::from(n.max(1));
                    let tear = matches!(op, Op::CrashInWrite(_));
                    if tear {
                        disk.space.store(n * 20, Ordering::SeqCst);
                    }
                    match append(&mut s, next..next + n) {
                        Ok(_) => model.extend(next..next + n),
                        Err(e) => prop_assert!(tear, "{e}"),
                    }
                    next += n;
                    if tear {
                        // The process dies here.
                        disk.space.store(u64::MAX, Ordering::SeqCst);
                        drop(s);
                        let (s2, _) = open_with(&d, 1 << 30, WhenFull::Block, disk.clone());
                        s = s2;
                        acked = acked.min(model.len());
                        let back = read_all(&mut s);
                        let (ledger_acked, _) = check(&back, &model, acked)?;
                        acked = ledger_acked;
                        s.rewind();
                    }
                }
                Op::Ack(k) => {
                    s.rewind();
                    let back = read_all(&mut s);
                    let upto = (acked + usize::from(k)).min(model.len());
                    // Ack in order by sequence number, the way the publisher does.
                    for &(seq, i) in &back {
                        let pos = model.iter().position(|&m| m == i).unwrap();
                        if pos < upto {
                            s.ack(seq);
                        }
                    }
                    acked = acked.max(upto);
                    s.maintain(false).unwrap();
                }
                Op::Sync => s.sync().unwrap(),
                Op::Reopen => {
                    s.sync().unwrap();
                    s.maintain(false).unwrap();
                    drop(s);
                    let (s2, _) = open_with(&d, 1 << 30, WhenFull::Block, disk.clone());
                    s = s2;
                    let back = read_all(&mut s);
                    let (ledger_acked, _) = check(&back, &model, acked)?;
                    acked = acked.max(ledger_acked);
                    s.rewind();
                }
            }
        }
        s.rewind();
        let back = read_all(&mut s);
        check(&back, &model, acked)?;
    }
}

/// What is read back must be a suffix of `model` that holds at least everything past
/// `acked`. Returns where the suffix starts.
fn check(
    back: &[(u64, u64)],
    model: &[u64],
    acked: usize,
) -> Result<(usize, usize), TestCaseError> {
    let got: Vec<u64> = back.iter().map(|b| b.1).collect();
    let start = model.len() - got.len().min(model.len());
    prop_assert!(
        start <= acked,
        "lost events: read {got:?}, model {model:?}, acked {acked}"
    );
    prop_assert_eq!(&got[..], &model[start..], "order or content differs");
    let seqs: Vec<u64> = back.iter().map(|b| b.0).collect();
    prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    Ok((start, got.len()))
}
