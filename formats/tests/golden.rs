//! Golden files for the wire encoding: the exact bytes consumers see.
//! Run with `LOCKSTEP_UPDATE_GOLDEN=1` to rewrite them after a deliberate change, then
//! review the diff.

use std::sync::Arc;

use lockstep_formats::json::encode_event;
use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo, Value};

fn source(table: &str, position: &str) -> SourceInfo {
    SourceInfo {
        agent: Arc::from("va-vista-01"),
        name: Arc::from("vista"),
        kind: Arc::from("tail"),
        table: Arc::from(table),
        position: position.to_owned(),
        ts_ms: 1_732_200_000_000,
        snapshot: false,
    }
}

fn rec(fields: &[(&str, Value)]) -> Record {
    fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect()
}

fn check(name: &str, ev: &ChangeEvent) {
    let mut out = Vec::new();
    encode_event(ev, &mut out);
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    // Every golden event must also be valid JSON.
    serde_json::from_slice::<serde_json::Value>(&out).expect("encoder wrote invalid JSON");
    out.push(b'\n');
    if std::env::var_os("LOCKSTEP_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want),
        "{name} differs from {path}"
    );
}

#[test]
fn update_with_all_value_types() {
    let after = rec(&[
        ("id", Value::Int(445)),
        ("time", Value::Text("16:00".into())),
        ("clinic", Value::Text("CARDIOLOGY-3 \"east\"\n".into())),
        ("fee", Value::Decimal("125.50".into())),
        (
            "balance",
            Value::Decimal("12345678901234567890.123456789".into()),
        ),
        ("ratio", Value::Float(0.25)),
        ("nan", Value::Float(f64::NAN)),
        ("active", Value::Bool(true)),
        ("note", Value::Null),
        (
            "seen_at",
            Value::Timestamp("2024-11-21T16:00:00.123456Z".into()),
        ),
        ("photo", Value::Bytes(vec![0, 1, 2, 253, 254, 255])),
        ("tags", Value::Json(r#"["a",{"b":1.50}]"#.into())),
        ("name", Value::Text("Zoë 東京 😀".into())),
    ]);
    check(
        "update_all_types",
        &ChangeEvent {
            op: Op::Update,
            key: Some(rec(&[("id", Value::Int(445))])),
            before: None,
            after: Some(after),
            source: source("appointments", "801.3f2.9a1b2c3d4e5f6071.0@1024"),
            ts_ms: 1_732_200_000_123,
        },
    );
}

#[test]
fn delete_carries_the_old_row_in_before() {
    check(
        "delete",
        &ChangeEvent {
            op: Op::Delete,
            key: Some(rec(&[
                ("id", Value::Int(7)),
                ("site", Value::Text("A".into())),
            ])),
            before: Some(rec(&[
                ("id", Value::Int(7)),
                ("site", Value::Text("A".into())),
            ])),
            after: None,
            source: source("clinics", "1"),
            ts_ms: 1_732_200_000_999,
        },
    );
}

#[test]
fn keyless_snapshot_read() {
    let mut s = source("log", "2");
    s.snapshot = true;
    check(
        "keyless_snapshot",
        &ChangeEvent {
            op: Op::Read,
            key: None,
            before: None,
            after: Some(rec(&[("line", Value::Text("hello".into()))])),
            source: s,
            ts_ms: 0,
        },
    );
}
