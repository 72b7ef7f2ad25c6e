use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn enc(vals: &[Option<&str>]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in vals {
        put_value(&mut out, v.map(str::as_bytes));
    }
    out
}

/// Scans `table` (key → value) into a spill in `dir`.
fn scan(dir: &Path, table: &BTreeMap<u32, Option<String>>, repeat: Option<u32>) -> Scanned {
    let mut s = Spill::create(dir).unwrap();
    for (k, v) in table.iter().rev() {
        let key = enc(&[Some(&k.to_string())]);
        let row = enc(&[Some(&k.to_string()), v.as_deref()]);
        s.push(&key, &row).unwrap();
        if repeat == Some(*k) {
            let row = enc(&[Some(&k.to_string()), Some("again")]);
            s.push(&key, &row).unwrap();
        }
    }
    s.finish().unwrap()
}

/// Changes as (op, the values of the row or key).
type Changes = Vec<(ChangeOp, Vec<Option<Vec<u8>>>)>;

/// Runs one merge and returns the changes as (op, first value of the row or key).
fn run(
    dir: &Path,
    gen: u64,
    table: &BTreeMap<u32, Option<String>>,
    mode: MergeMode,
) -> (MergeCounts, Changes) {
    let scanned = scan(dir, table, None);
    let snap = dir.join("snapshot");
    let next_path = dir.join("snapshot.next");
    let mut old = LastScanReader::open(&snap).unwrap();
    if let Some(o) = old.as_mut() {
        o.verify().unwrap();
    }
    let meta = LastScanMeta {
        gen,
        ..Default::default()
    };
    let next = LastScanWriter::create(&next_path, &meta).unwrap();
    let changes_path = dir.join("changes");
    let mut changes = ChangesWriter::create(&changes_path).unwrap();
    let counts = merge(&scanned, old.as_mut(), mode, next, &mut changes, &|| false).unwrap();
    changes.finish().unwrap();
    scanned.remove();
    fs::rename(&next_path, &snap).unwrap();
    let mut r = ChangesReader::open(&changes_path).unwrap();
    let mut out = Vec::new();
    while let Some(op) = r.next_change().unwrap() {
        let vals = values(&r.data)
            .map(|v| v.unwrap().map(<[u8]>::to_vec))
            .collect();
        out.push((op, vals));
    }
    (counts, out)
}

#[test]
fn values_round_trip_and_null_differs_from_empty() {
    let long = "x".repeat(300);
    let e = enc(&[None, Some(""), Some("a"), Some(&long)]);
    let back: Vec<Option<&[u8]>> = values(&e).map(Result::unwrap).collect();
    assert_eq!(
        back,
        vec![None, Some(&b""[..]), Some(&b"a"[..]), Some(long.as_bytes())]
    );
    assert_ne!(row_hash(&enc(&[None])), row_hash(&enc(&[Some("")])));
    assert!(values(&e[..e.len() - 1]).any(|v| v.is_err()));
}

#[test]
fn first_scan_then_changes_then_a_b_a() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: BTreeMap<u32, Option<String>> =
        (1..=5).map(|k| (k, Some(format!("v{k}")))).collect();
    let (c, ch) = run(dir.path(), 1, &t, MergeMode::First { emit: true });
    assert_eq!((c.read, c.rows, ch.len()), (5, 5, 5));
    assert!(ch.iter().all(|(op, _)| *op == ChangeOp::Read));

    t.insert(6, None);
    t.remove(&2);
    t.insert(3, Some("B".into()));
    let (c, ch) = run(dir.path(), 2, &t, MergeMode::Full);
    assert_eq!((c.created, c.updated, c.deleted, c.unchanged), (1, 1, 1, 3));
    let mut ops: Vec<(ChangeOp, Option<Vec<u8>>)> =
        ch.into_iter().map(|(op, v)| (op, v[0].clone())).collect();
    ops.sort_by_key(|(op, _)| op.byte());
    assert_eq!(
        ops,
        vec![
            (ChangeOp::Create, Some(b"6".to_vec())),
            (ChangeOp::Delete, Some(b"2".to_vec())),
            (ChangeOp::Update, Some(b"3".to_vec())),
        ]
    );
    // A→B→A: the way back is a change too.
    t.insert(3, Some("v3".into()));
    let (c, _) = run(dir.path(), 3, &t, MergeMode::Full);
    assert_eq!((c.updated, c.rows), (1, 5));
    let (c, ch) = run(dir.path(), 4, &t, MergeMode::Full);
    assert_eq!((c.changes(), c.unchanged, ch.len()), (0, 5, 0));
}

#[test]
fn partial_scans_keep_the_rows_they_did_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let t: BTreeMap<u32, Option<String>> = (1..=4).map(|k| (k, Some("a".into()))).collect();
    run(dir.path(), 1, &t, MergeMode::First { emit: false });
    let part: BTreeMap<u32, Option<String>> =
        [(2, Some("b".into())), (9, None)].into_iter().collect();
    let (c, _) = run(dir.path(), 2, &part, MergeMode::Partial);
    assert_eq!((c.created, c.updated, c.deleted, c.rows), (1, 1, 0, 5));
    let mut full = t.clone();
    full.insert(2, Some("b".into()));
    full.insert(9, None);
    let (c, _) = run(dir.path(), 3, &full, MergeMode::Full);
    assert_eq!((c.changes(), c.unchanged), (0, 5));
}

#[test]
fn a_repeated_key_keeps_its_first_row_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t: BTreeMap<u32, Option<String>> = (1..=3).map(|k| (k, Some("a".into()))).collect();
    let scanned = scan(dir.path(), &t, Some(2));
    let next = LastScanWriter::create(&dir.path().join("s"), &LastScanMeta::default()).unwrap();
    let mut changes = ChangesWriter::create(&dir.path().join("c")).unwrap();
    let c = merge(
        &scanned,
        None,
        MergeMode::First { emit: true },
        next,
        &mut changes,
        &|| false,
    )
    .unwrap();
    assert_eq!((c.read, c.repeated_keys, c.rows), (3, 1, 3));
}

#[test]
fn damaged_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t: BTreeMap<u32, Option<String>> = (1..=50).map(|k| (k, Some("a".into()))).collect();
    run(dir.path(), 1, &t, MergeMode::First { emit: false });
    let p = dir.path().join("snapshot");
    let good = fs::read(&p).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    fs::write(&p, &flipped).unwrap();
    let mut r = LastScanReader::open(&p).unwrap().unwrap();
    assert!(r.verify().is_err());
    fs::write(&p, &good[..good.len() - 3]).unwrap();
    assert!(LastScanReader::open(&p).is_err());
    fs::write(&p, b"nonsense").unwrap();
    assert!(LastScanReader::open(&p).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Over any sequence of tables, the changes of each full scan turn the previous
    /// table into the next one, and a table scanned twice has no changes.
    #[test]
    fn changes_replay_to_the_table(
        tables in proptest::collection::vec(
            proptest::collection::btree_map(0u32..300, proptest::option::of("[a-c]{0,3}"), 0..200),
            1..5,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        for (i, t) in tables.iter().enumerate() {
            let mode = if i == 0 { MergeMode::First { emit: true } } else { MergeMode::Full };
            let (c, ch) = run(dir.path(), i as u64 + 1, t, mode);
            for (op, vals) in ch {
                let key = vals[0].clone().unwrap();
                match op {
                    ChangeOp::Delete => { prop_assert!(model.remove(&key).is_some()); }
                    ChangeOp::Create | ChangeOp::Read => {
                        prop_assert!(model.insert(key, vals).is_none());
                    }
                    ChangeOp::Update => { prop_assert!(model.insert(key, vals).is_some()); }
                }
            }
            let want: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = t.iter()
                .map(|(k, v)| (k.to_string().into_bytes(),
                    vec![Some(k.to_string().into_bytes()), v.clone().map(String::into_bytes)]))
                .collect();
            prop_assert_eq!(&model, &want);
            prop_assert_eq!(c.rows, t.len() as u64);
        }
    }
}
