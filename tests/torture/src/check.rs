//! Replays the stream into a model and compares it with the truth; the other checks of
//! a scenario's stream.
//!
//! The model is per key (`<table>/<key>`): the last event's `after`; a delete removes
//! the key. Values are compared in a canonical text form (`12.50` = `12.5`, `+00:00` =
//! `Z`, NULL = `∅`), the form the database's text and the event's JSON share.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::stream::Msg;

/// A row: column → canonical value.
pub type Row = BTreeMap<String, String>;
/// `<table>/<key>` → row.
pub type State = BTreeMap<String, Row>;

const NULL: &str = "∅";

/// Canonical text of a value as it comes from a database's text or from the JSON.
pub fn canon_text(s: &str) -> String {
    let t = s.trim_end_matches('\r');
    let numeric = t.contains('.')
        && !t.is_empty()
        && t.trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    if numeric {
        return t.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    // A timestamp: UTC however it is written, and no all-zero fraction.
    let looks_ts = t.len() >= 19 && t.as_bytes().get(10) == Some(&b'T') && t.contains(':');
    if looks_ts {
        let mut u = t.to_owned();
        for utc in ["+00:00", "+0000", "+00"] {
            if let Some(x) = u.strip_suffix(utc) {
                u = format!("{x}Z");
                break;
            }
        }
        if let Some((head, frac)) = u.split_once('.') {
            let (digits, rest) = frac.split_at(
                frac.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(frac.len()),
            );
            let digits = digits.trim_end_matches('0');
            u = if digits.is_empty() {
                format!("{head}{rest}")
            } else {
                format!("{head}.{digits}{rest}")
            };
        }
        return u;
    }
    t.to_owned()
}

pub fn canon(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => NULL.to_owned(),
        serde_json::Value::String(s) => canon_text(s),
        // An f64 as Rust writes it (never with an exponent: serde_json would write
        // 0.0000000001 as 1e-10).
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => canon_text(&format!("{f}")),
            _ => canon_text(&n.to_string()),
        },
        other => other.to_string(),
    }
}

/// `<table>/<key values, |-joined in key-field order>` of an event.
pub fn key_of(m: &Msg) -> String {
    let j = &m.json;
    let table = j["source"]["table"].as_str().unwrap_or("?");
    let key = match &j["key"] {
        serde_json::Value::Object(o) => o.values().map(canon).collect::<Vec<_>>().join("|"),
        other => canon(other),
    };
    format!("{table}/{key}")
}

pub fn row_of(img: &serde_json::Value) -> Row {
    match img {
        serde_json::Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), canon(v))).collect(),
        _ => Row::new(),
    }
}

fn op(m: &Msg) -> &str {
    m.json["op"].as_str().unwrap_or("?")
}

/// The image that carries an event's values: `after`, or `before` for a delete.
fn image(m: &Msg) -> &serde_json::Value {
    if op(m) == "d" {
        &m.json["before"]
    } else {
        &m.json["after"]
    }
}

/// The state the stream replays to.
pub fn replay(msgs: &[Msg]) -> State {
    let mut s = State::new();
    for m in msgs {
        let k = key_of(m);
        if op(m) == "d" {
            s.remove(&k);
        } else {
            s.insert(k, row_of(&m.json["after"]));
        }
    }
    s
}

/// Differences between the replayed model and the truth, at most a few of each kind.
pub fn compare(model: &State, truth: &State) -> Vec<String> {
    let mut out = Vec::new();
    let missing: Vec<_> = truth.keys().filter(|k| !model.contains_key(*k)).collect();
    let extra: Vec<_> = model.keys().filter(|k| !truth.contains_key(*k)).collect();
    let differ: Vec<_> = truth
        .iter()
        .filter_map(|(k, want)| {
            let got = model.get(k)?;
            (got != want).then(|| format!("{k}: stream {got:?}, source {want:?}"))
        })
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "{} key(s) in the source missing from the stream (lost), first {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !extra.is_empty() {
        out.push(format!(
            "{} key(s) in the stream that the source no longer has (a lost delete, or a late event), first {:?}",
            extra.len(),
            &extra[..extra.len().min(5)]
        ));
    }
    if !differ.is_empty() {
        out.push(format!(
            "{} key(s) whose last value in the stream is not the source's, first {:?}",
            differ.len(),
            &differ[..differ.len().min(3)]
        ));
    }
    out
}

/// No two messages with one `Nats-Msg-Id` (JetStream should have dropped the copy).
pub fn duplicate_ids(msgs: &[Msg]) -> Vec<String> {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut dups = Vec::new();
    for m in msgs {
        if let Some(first) = seen.insert(&m.id, m.seq) {
            dups.push(format!("{} at seq {first} and {}", m.id, m.seq));
        }
    }
    if dups.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{} duplicate message id(s), first {:?}",
            dups.len(),
            &dups[..dups.len().min(3)]
        )]
    }
}

/// How strictly a key's order field must grow along the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Every event carries a later change than the key's previous one.
    Strict,
    /// An event may repeat the key's previous value (keys mode reads the current row
    /// for each captured change, so two changes read after both committed look alike).
    NonDecreasing,
}

/// Per key, the order field (`field`, an integer the workload makes grow with every
/// change) of the events' `after` images, in stream order: a smaller one after a bigger one is
/// an event stored out of order, an equal one (with `Strict`) a change sent twice.
pub fn key_order(msgs: &[Msg], field: &str, order: Order) -> Vec<String> {
    let mut last: HashMap<String, (i64, u64)> = HashMap::new();
    let mut bad = Vec::new();
    for m in msgs {
        // A delete's `before` repeats the key's last value; only new values count.
        if op(m) == "d" {
            continue;
        }
        let Some(v) = as_int(&m.json["after"][field]) else {
            continue;
        };
        let k = key_of(m);
        if let Some((p, pseq)) = last.insert(k.clone(), (v, m.seq)) {
            let wrong = match order {
                Order::Strict => v <= p,
                Order::NonDecreasing => v < p,
            };
            if wrong {
                bad.push(format!(
                    "{k}: {field} {v} (seq {}, op {}) after {p} (seq {pseq})",
                    m.seq,
                    op(m)
                ));
            }
        }
    }
    if bad.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{} event(s) out of per-key order or repeated, first {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        )]
    }
}

pub fn as_int(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Each of `written` (the order field of every record the workload wrote, one event
/// each) arrives exactly once.
pub fn exactly_once(msgs: &[Msg], field: &str, written: &HashSet<i64>) -> Vec<String> {
    counted(msgs, field, written, true)
}

/// As [`exactly_once`], without asking that every record arrive (a debounced source
/// merges a key's changes): none twice, none never written.
pub fn at_most_once(msgs: &[Msg], field: &str, written: &HashSet<i64>) -> Vec<String> {
    counted(msgs, field, written, false)
}

/// Sorted numbers as runs (`3..=9, 12`), the first `max` of them.
fn runs(sorted: &[i64], max: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() && out.len() < max {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}..={} ({})", sorted[i], sorted[j], j - i + 1)
        });
        i = j + 1;
    }
    if i < sorted.len() {
        out.push("…".to_owned());
    }
    out.join(", ")
}

fn counted(msgs: &[Msg], field: &str, written: &HashSet<i64>, all: bool) -> Vec<String> {
    let mut count: HashMap<i64, u32> = HashMap::new();
    for m in msgs {
        if let Some(v) = as_int(&image(m)[field]) {
            *count.entry(v).or_default() += 1;
        }
    }
    let mut lost: Vec<i64> = written
        .iter()
        .copied()
        .filter(|n| !count.contains_key(n))
        .collect();
    lost.sort_unstable();
    let mut doubled: Vec<i64> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    doubled.sort_unstable();
    let mut unknown: Vec<i64> = count
        .keys()
        .copied()
        .filter(|n| !written.contains(n))
        .collect();
    unknown.sort_unstable();
    let mut out = Vec::new();
    if all && !lost.is_empty() {
        out.push(format!(
            "{} record(s) lost, {field} first {:?}; as runs: {}",
            lost.len(),
            &lost[..lost.len().min(10)],
            runs(&lost, 40)
        ));
    }
    if !doubled.is_empty() {
        out.push(format!(
            "{} record(s) doubled (under different message ids), {field} first {:?}",
            doubled.len(),
            &doubled[..doubled.len().min(10)]
        ));
    }
    if !unknown.is_empty() {
        out.push(format!(
            "{} event(s) for records never written, {field} first {:?}",
            unknown.len(),
            &unknown[..unknown.len().min(10)]
        ));
    }
    out
}

/// Per key, the exact (op, order field) history the source made, against the stream's.
pub fn history(
    msgs: &[Msg],
    field: &str,
    want: &BTreeMap<String, Vec<(String, i64)>>,
) -> Vec<String> {
    let mut got: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for m in msgs {
        let v = as_int(&image(m)[field]).unwrap_or(-1);
        got.entry(key_of(m))
            .or_default()
            .push((op(m).to_owned(), v));
    }
    let mut bad = Vec::new();
    for (k, w) in want {
        let g = got.get(k).map(Vec::as_slice).unwrap_or(&[]);
        if g != w.as_slice() {
            bad.push(format!("{k}: stream {g:?}, source {w:?}"));
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            bad.push(format!("{k}: in the stream, never written"));
        }
    }
    if bad.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{} key(s) whose history differs, first {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        )]
    }
}

/// A metric's value summed over its labels, from a `/metrics` text.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?.1,
                None => rest,
            };
            rest.strip_prefix(' ')?.trim().parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canon_text("12.50000"), "12.5");
        assert_eq!(canon_text("12.0"), "12");
        assert_eq!(
            canon_text("2026-11-21T10:05:03+00:00"),
            "2026-11-21T10:05:03Z"
        );
        assert_eq!(
            canon_text("2026-11-21T10:05:03.000000Z"),
            "2026-11-21T10:05:03Z"
        );
        assert_eq!(
            canon_text("2026-11-21T10:05:03.250+00:00"),
            "2026-11-21T10:05:03.25Z"
        );
        assert_eq!(canon(&serde_json::json!(null)), "∅");
        assert_eq!(canon(&serde_json::json!(12.5)), "12.5");
        assert_eq!(canon(&serde_json::json!(0.0000000001)), "0.0000000001");
        assert_eq!(canon(&serde_json::json!("Zürich")), "Zürich");
    }
}
