//! The spool frame codec: round trips, and what a reader sees of damaged bytes.

use lockstep_formats::frame::{
    parse_header, scan, FrameError, FrameReader, FrameWriter, RawBytes, SpoolEvent, HEADER_LEN,
    KEY_UNKNOWN,
};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
struct Ev {
    table: String,
    key: u32,
    ms: i64,
    payload: Vec<u8>,
}

impl Ev {
    fn id(&self, seq: u64) -> String {
        format!("a:s:{seq}")
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        "[a-z\u{e9}\u{4e2d}]{0,8}",
        any::<u32>(),
        any::<i64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(table, key, ms, payload)| Ev {
            table,
            key,
            ms,
            payload,
        })
}

/// Encodes `frames` (each a batch) numbering events from 1, every second frame in the
/// old version 1 (no key hashes: an old spool being read); returns the bytes and each
/// frame's (offset, length).
fn encode(frames: &[Vec<Ev>]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut w = FrameWriter::new().unwrap();
    let mut out = Vec::new();
    let mut spans = Vec::new();
    let mut seq = 1;
    for (n, batch) in frames.iter().enumerate() {
        let ids: Vec<String> = (0..batch.len())
            .map(|i| batch[i].id(seq + i as u64))
            .collect();
        let subjects: Vec<String> = batch.iter().map(|e| format!("p.s.{}", e.key)).collect();
        let start = out.len();
        let h = w
            .encode_version(
                if n % 2 == 1 { 1 } else { 2 },
                seq,
                batch.iter().enumerate().map(|(i, e)| SpoolEvent {
                    source: "s",
                    table: &e.table,
                    subject: &subjects[i],
                    msg_id: &ids[i],
                    captured_ms: e.ms,
                    payload: RawBytes(&e.payload),
                    key_hash: u64::from(e.key) + 1,
                }),
                &mut out,
            )
            .unwrap();
        assert_eq!(h.version, if n % 2 == 1 { 1 } else { 2 });
        assert_eq!(h.first_seq, seq);
        assert_eq!(h.count as usize, batch.len());
        assert_eq!(h.first_ms, batch[0].ms);
        spans.push((start, out.len() - start));
        seq += batch.len() as u64;
    }
    (out, spans)
}

/// What `scan` returns: good frames as (offset, first_seq, events), bad stretches.
type Scanned = (Vec<(usize, u64, Vec<Ev>)>, Vec<(usize, FrameError)>);

fn scanned(b: &[u8]) -> Scanned {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    scan(
        b,
        |at, h, events| {
            let evs = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    assert_eq!(e.source, "s");
                    assert_eq!(e.msg_id, format!("a:s:{}", h.first_seq + i as u64));
                    let key: u32 = e.subject[4..].parse().unwrap();
                    let want = if h.version == 1 {
                        KEY_UNKNOWN
                    } else {
                        u64::from(key) + 1
                    };
                    assert_eq!(e.key_hash, want, "version {}", h.version);
                    Ev {
                        table: e.table.to_owned(),
                        key: e.subject[4..].parse().unwrap(),
                        ms: e.captured_ms,
                        payload: e.payload.0.to_vec(),
                    }
                })
                .collect();
            good.push((at, h.first_seq, evs));
        },
        |at, e| bad.push((at, e.clone())),
    )
    .unwrap();
    (good, bad)
}

fn batches() -> impl Strategy<Value = Vec<Vec<Ev>>> {
    proptest::collection::vec(proptest::collection::vec(ev(), 1..20), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn frames_round_trip(frames in batches()) {
        let (bytes, spans) = encode(&frames);
        let (good, bad) = scanned(&bytes);
        prop_assert!(bad.is_empty(), "{bad:?}");
        prop_assert_eq!(good.len(), frames.len());
        for (i, (at, _, evs)) in good.iter().enumerate() {
            prop_assert_eq!(*at, spans[i].0);
            prop_assert_eq!(evs, &frames[i]);
        }
    }

    /// One flipped byte loses at most the frame it lands in; every frame reported good is
    /// exactly a frame that was written.
    #[test]
    fn a_flipped_byte_costs_one_frame(frames in batches(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, spans) = encode(&frames);
        let p = pos.index(bytes.len());
        bytes[p] ^= 1 << bit;
        let hit = spans.iter().position(|&(s, l)| p >= s && p < s + l).unwrap();
        let (good, bad) = scanned(&bytes);
        prop_assert!(!bad.is_empty(), "a flipped bit at {p} went unnoticed");
        prop_assert_eq!(bad[0].0, spans[hit].0);
        let expected: Vec<usize> = (0..frames.len()).filter(|&i| i != hit).collect();
        let got: Vec<usize> = good.iter().map(|(at, _, _)| spans.iter().position(|s| s.0 == *at).unwrap()).collect();
        prop_assert_eq!(&got, &expected);
        for (at, _, evs) in &good {
            let i = spans.iter().position(|s| s.0 == *at).unwrap();
            prop_assert_eq!(evs, &frames[i]);
        }
    }

    /// Cut anywhere: every whole frame before the cut is read, the rest is reported short.
    #[test]
    fn a_cut_keeps_every_whole_frame(frames in batches(), cut in any::<prop::sample::Index>()) {
        let (bytes, spans) = encode(&frames);
        let c = cut.index(bytes.len());
        let (good, bad) = scanned(&bytes[..c]);
        let whole = spans.iter().filter(|&&(s, l)| s + l <= c).count();
        prop_assert_eq!(good.len(), whole);
        if spans.iter().any(|&(s, _)| s == c) {
            prop_assert!(bad.is_empty());
        } else {
            prop_assert_eq!(bad.len(), 1);
            prop_assert!(matches!(bad[0].1, FrameError::ShortHeader(_) | FrameError::ShortBody { .. }), "{:?}", bad[0]);
        }
    }

    /// Arbitrary bytes never panic the reader, and never pass as a frame.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (good, _) = scanned(&bytes);
        prop_assert!(good.is_empty());
    }
}

#[test]
fn compresses_json_events_well() {
    let payloads: Vec<Vec<u8>> = (0..512)
        .map(|i| {
            format!(
                r#"{{"before":null,"after":{{"id":{i},"status":"PENDING","clinic":"North {}","time":"2026-11-21T14:{:02}:00Z"}},"source":{{"agent":"va-01","source":"vista","table":"appointments","position":"1a.2b.0@{}"}},"op":"c","ts_ms":{}}}"#,
                i % 7,
                i % 60,
                i * 250,
                1_790_000_000_000i64 + i as i64
            )
            .into_bytes()
        })
        .collect();
    let ids: Vec<String> = (0..512)
        .map(|i| format!("va-01:vista:1a.2b.0@{}", i * 250))
        .collect();
    let mut w = FrameWriter::new().unwrap();
    let mut out = Vec::new();
    let h = w
        .encode(
            7,
            (0..512).map(|i| SpoolEvent {
                source: "vista",
                table: "appointments",
                subject: "legacy.vista.appointments",
                msg_id: &ids[i],
                captured_ms: 1_790_000_000_000 + i as i64,
                payload: RawBytes(&payloads[i]),
                key_hash: i as u64 + 1,
            }),
            &mut out,
        )
        .unwrap();
    let ratio = h.raw_len as f64 / h.body_len as f64;
    assert!(ratio > 5.0, "compression ratio {ratio:.1}");
    assert_eq!(h.last_seq(), 7 + 511);
    let mut r = FrameReader::new().unwrap();
    let parsed = parse_header(&out).unwrap();
    assert_eq!(parsed, h);
    let evs = r.decode(&parsed, &out[HEADER_LEN..]).unwrap();
    assert_eq!(evs.len(), 512);
    assert_eq!(evs[100].payload.0, &payloads[100][..]);
    assert_eq!(evs[100].msg_id, ids[100]);
}
