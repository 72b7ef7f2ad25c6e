use std::collections::BTreeMap;

use lockstep_formats::{SourceInfo, Value};
use proptest::prelude::*;

use super::*;

const WINDOW: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(450);

fn cfg(max_keys: usize) -> Option<DebounceConfig> {
    Some(DebounceConfig {
        window: WINDOW,
        max_delay: MAX_DELAY,
        max_keys,
    })
}

fn rec(id: i64, v: Option<i64>) -> Record {
    let mut r = Record::new();
    r.push("id", Value::Int(id));
    if let Some(v) = v {
        r.push("v", Value::Int(v));
    }
    r
}

/// Change number `ord` (its position is `<ord>`) of key `id`.
fn change(ord: u64, id: i64, op: Op, before: Option<i64>, after: Option<i64>) -> ChangeEvent {
    let s: Arc<str> = Arc::from("t");
    ChangeEvent {
        op,
        key: Some(rec(id, None)),
        before: before.map(|v| rec(id, Some(v))),
        after: after.map(|v| rec(id, Some(v))),
        source: SourceInfo {
            agent: s.clone(),
            name: s.clone(),
            kind: s.clone(),
            table: s,
            position: ord.to_string(),
            ts_ms: 0,
            snapshot: op == Op::Read,
        },
        ts_ms: 0,
    }
}

fn v_of(r: &Option<Record>) -> Option<i64> {
    match r.as_ref()?.get("v")? {
        Value::Int(v) => Some(*v),
        _ => None,
    }
}

/// Pushes the changes of one key at once and flushes: the one event they merge to.
fn merge(changes: &[(Op, Option<i64>, Option<i64>)]) -> Option<ChangeEvent> {
    let mut d = Debouncer::new(cfg(10), Arc::default());
    d.set_merging(true);
    let mut out = Vec::new();
    let now = Instant::now();
    for (i, (op, b, a)) in changes.iter().enumerate() {
        d.push(change(i as u64 + 1, 7, *op, *b, *a), (), 0, now, &mut out);
    }
    assert!(out.is_empty(), "held until due");
    d.due(now + MAX_DELAY, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(d.held(), 0);
    out.pop().unwrap().event
}

#[test]
fn the_merge_rules_of_the_spec() {
    use Op::*;
    // insert + updates = insert of the final row
    let e = merge(&[
        (Create, None, Some(1)),
        (Update, Some(1), Some(2)),
        (Update, Some(2), Some(3)),
    ])
    .unwrap();
    assert_eq!(
        (e.op, v_of(&e.before), v_of(&e.after)),
        (Create, None, Some(3))
    );
    assert_eq!(e.source.position, "3+3");
    // updates = first before, last after
    let e = merge(&[(Update, Some(1), Some(2)), (Update, Some(2), Some(3))]).unwrap();
    assert_eq!(
        (e.op, v_of(&e.before), v_of(&e.after)),
        (Update, Some(1), Some(3))
    );
    // insert + delete = nothing
    assert!(merge(&[
        (Create, None, Some(1)),
        (Update, Some(1), Some(2)),
        (Delete, Some(2), None)
    ])
    .is_none());
    // update + delete = delete
    let e = merge(&[(Update, Some(1), Some(2)), (Delete, Some(2), None)]).unwrap();
    assert_eq!(
        (e.op, v_of(&e.before), e.after.is_none()),
        (Delete, Some(1), true)
    );
    // delete + insert = update
    let e = merge(&[(Delete, Some(1), None), (Create, None, Some(5))]).unwrap();
    assert_eq!(
        (e.op, v_of(&e.before), v_of(&e.after)),
        (Update, Some(1), Some(5))
    );
    // a single change leaves as it came, with its own position
    let e = merge(&[(Update, Some(1), Some(2))]).unwrap();
    assert_eq!(
        (e.op, v_of(&e.before), v_of(&e.after)),
        (Update, Some(1), Some(2))
    );
    assert_eq!(e.source.position, "1");
}

#[test]
fn a_key_leaves_after_a_quiet_window_or_max_delay() {
    let mut d = Debouncer::new(cfg(10), Arc::default());
    d.set_merging(true);
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut out = Vec::new();
    // Key 1 changes every 60 ms: only max_delay lets it out.
    let mut t = 0;
    while t < 450 {
        d.push(
            change(t + 1, 1, Op::Update, None, Some(t as i64)),
            (),
            0,
            ms(t),
            &mut out,
        );
        d.due(ms(t), &mut out);
        assert!(out.is_empty(), "held at {t} ms");
        t += 60;
    }
    d.due(ms(450), &mut out);
    assert_eq!(out.len(), 1, "max_delay reached");
    assert_eq!(v_of(&out[0].event.as_ref().unwrap().after), Some(420));
    // Key 2: one change, out once the window passes with nothing new.
    out.clear();
    d.push(
        change(1000, 2, Op::Update, None, Some(9)),
        (),
        0,
        ms(500),
        &mut out,
    );
    d.due(ms(599), &mut out);
    assert!(out.is_empty());
    d.due(ms(600), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(d.low(), u64::MAX);
}

#[test]
fn past_max_keys_the_oldest_leaves_early_and_is_counted() {
    let counters = Arc::new(SourceCounters::default());
    let mut d = Debouncer::new(cfg(2), counters.clone());
    d.set_merging(true);
    let now = Instant::now();
    let mut out = Vec::new();
    for (i, id) in [1, 2, 1, 3].into_iter().enumerate() {
        d.push(
            change(i as u64 + 1, id, Op::Update, None, Some(i as i64)),
            (),
            0,
            now,
            &mut out,
        );
    }
    // Key 3 pushed key 1 (the oldest, with two changes) out.
    assert_eq!(out.len(), 1);
    let e = out[0].event.as_ref().unwrap();
    assert_eq!(
        (e.key.clone(), v_of(&e.after)),
        (Some(rec(1, None)), Some(2))
    );
    assert_eq!(counters.early_flushes.load(Ordering::Relaxed), 1);
    assert_eq!(counters.merged.load(Ordering::Relaxed), 1);
    assert_eq!(d.held(), 2);
    assert_eq!(d.low(), 2, "key 2's change (ordinal 2) is the oldest held");
}

#[test]
fn without_merging_a_held_key_leaves_before_the_next_change() {
    let mut d = Debouncer::new(cfg(10), Arc::default());
    d.set_merging(true);
    let now = Instant::now();
    let mut out = Vec::new();
    d.push(
        change(1, 1, Op::Create, None, Some(1)),
        (),
        0,
        now,
        &mut out,
    );
    d.push(
        change(2, 2, Op::Create, None, Some(1)),
        (),
        0,
        now,
        &mut out,
    );
    d.set_merging(false);
    d.push(
        change(3, 1, Op::Delete, Some(1), None),
        (),
        0,
        now,
        &mut out,
    );
    let positions: Vec<&str> = out
        .iter()
        .map(|r| r.event.as_ref().unwrap().source.position.as_str())
        .collect();
    assert_eq!(positions, ["1", "3"]);
    assert_eq!(d.low(), 2);
}

#[test]
fn no_config_no_key_pass_at_once() {
    let mut d = Debouncer::new(None, Arc::default());
    d.set_merging(true);
    assert!(!d.is_merging());
    let mut out = Vec::new();
    d.push(
        change(1, 1, Op::Update, None, Some(1)),
        (),
        0,
        Instant::now(),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    let mut d = Debouncer::new(cfg(10), Arc::default());
    d.set_merging(true);
    let mut e = change(1, 1, Op::Update, None, Some(1));
    e.key = None;
    d.push(e, (), 0, Instant::now(), &mut out);
    assert_eq!(out.len(), 2);
}

/// A step of a generated run: a change to key `id` (its op chosen to be valid for the
/// row's state), `gap` ms after the previous step.
#[derive(Debug, Clone)]
struct Step {
    id: i64,
    choice: u8,
    gap: u64,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0i64..5,
            any::<u8>(),
            prop_oneof![Just(0u64), 1u64..40, 90u64..200],
        )
            .prop_map(|(id, choice, gap)| Step { id, choice, gap }),
        0..120,
    )
}

fn apply(table: &mut BTreeMap<i64, i64>, e: &ChangeEvent) {
    let Value::Int(id) = e.key.as_ref().unwrap().get("id").unwrap() else {
        panic!("int key")
    };
    match e.op {
        Op::Delete => {
            table.remove(id);
        }
        _ => {
            table.insert(*id, v_of(&e.after).expect("an after"));
        }
    }
}

proptest! {
    /// For any run of changes over a few keys, with any timing, any `max_keys`, and
    /// merging off for a first stretch: the table built from the events sent equals the
    /// table built from every change, and each key's events keep the order of its
    /// changes.
    #[test]
    fn merged_events_build_the_same_table(
        run in steps(),
        max_keys in 1usize..6,
        unmerged in 0usize..20,
    ) {
        let mut d = Debouncer::new(cfg(max_keys), Arc::default());
        let t0 = Instant::now();
        let mut t = 0u64;
        let mut raw = BTreeMap::new();
        let mut out = Vec::new();
        let (mut seen, mut released) = (0, std::collections::HashSet::new());
        for (i, s) in run.iter().enumerate() {
            d.set_merging(i >= unmerged);
            t += s.gap;
            let ord = i as u64 + 1;
            let cur = raw.get(&s.id).copied();
            let v = ord as i64 * 10;
            let ev = match (cur, s.choice % 4) {
                (None, 0) => change(ord, s.id, Op::Read, None, Some(v)),
                (None, _) => change(ord, s.id, Op::Create, None, Some(v)),
                (Some(b), 0 | 1) => change(ord, s.id, Op::Delete, Some(b), None),
                (Some(_), 2) => change(ord, s.id, Op::Read, None, Some(v)),
                (Some(b), _) => change(ord, s.id, Op::Update, Some(b), Some(v)),
            };
            apply(&mut raw, &ev);
            d.push(ev, vec![ord], 0, t0 + Duration::from_millis(t), &mut out);
            d.due(t0 + Duration::from_millis(t), &mut out);
            // The low watermark: every change below it has left (merged or not).
            for r in &out[seen..] {
                released.extend(r.extra.iter().copied());
            }
            seen = out.len();
            let low = d.low();
            prop_assert!(low == u64::MAX || low <= ord);
            prop_assert!((1..low.min(ord + 1)).all(|o| released.contains(&o)), "low {}", low);
        }
        d.due(t0 + Duration::from_millis(t) + MAX_DELAY, &mut out);
        prop_assert_eq!(d.held(), 0);
        let mut sent = BTreeMap::new();
        let mut last_of_key: BTreeMap<i64, u64> = BTreeMap::new();
        for r in &out {
            let Some(e) = &r.event else { continue };
            apply(&mut sent, e);
            let Value::Int(id) = e.key.as_ref().unwrap().get("id").unwrap() else { unreachable!() };
            let last: u64 = e.source.position.split('+').next().unwrap().parse().unwrap();
            let prev = last_of_key.insert(*id, last).unwrap_or(0);
            prop_assert!(last > prev, "key {} out of order: {} after {}", id, last, prev);
        }
        prop_assert_eq!(sent, raw);
    }
}
