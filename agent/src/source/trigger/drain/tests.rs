use super::events::push_int;
use super::keys::{key_text, lookup_key};
use super::*;
use lockstep_formats::json::parse_object;
use lockstep_formats::{Record, Value};

fn def() -> TableDef {
    TableDef {
        name: "t".into(),
        key: vec!["id".into()],
        columns: vec!["id".into(), "b".into(), "at".into()],
        binary: vec!["b".into()],
        timestamps: vec!["at".into()],
        utc: Vec::new(),
    }
}

#[test]
fn integers_are_written_as_format_writes_them() {
    for n in [0, 1, -1, 9, 10, -10, 1_764_412_345_678, i64::MAX, i64::MIN] {
        let mut s = String::from("x");
        push_int(&mut s, n);
        assert_eq!(s, format!("x{n}"));
    }
}

proptest::proptest! {
    #[test]
    fn any_integer_is_written_as_format_writes_it(n in proptest::num::i64::ANY) {
        let mut s = String::new();
        push_int(&mut s, n);
        proptest::prop_assert_eq!(s, n.to_string());
    }
}

#[test]
fn images_get_binary_and_timestamp_types() {
    let r = parse_image(
        &def(),
        "after",
        r#"{"id": 1.50, "b": "\\x00ff", "at": "2026-11-21 10:00:00.5"}"#,
    )
    .unwrap();
    assert_eq!(r.get("id"), Some(&Value::Decimal("1.50".into())));
    assert_eq!(r.get("b"), Some(&Value::Bytes(vec![0, 255])));
    assert_eq!(
        r.get("at"),
        Some(&Value::Timestamp("2026-11-21T10:00:00.5".into()))
    );
    let r = parse_image(&def(), "after", r#"{"id": 1, "b": "0A"}"#).unwrap();
    assert_eq!(r.get("b"), Some(&Value::Bytes(vec![10])));
    let e = parse_image(&def(), "after", r#"{"id": 1, "b": "xyz"}"#).unwrap_err();
    assert!(e.contains("binary column `b`"), "{e}");
    let e = parse_image(&def(), "pk", "[1]").unwrap_err();
    assert!(e.starts_with("pk is not a JSON object"), "{e}");
}

#[test]
fn late_batches_are_bounded_and_hold_back_newer_rows() {
    let flying: HashSet<i64> = [2, 4, 6].into_iter().collect();
    assert_eq!(LateBatch::probe_limit(&flying), 4);
    assert!(!LateBatch::any(3, &flying));
    assert!(LateBatch::any(4, &flying));
    assert_eq!(LateBatch::sweep_limit(&flying, 3), 6);
    // Every late row listed: newer rows may follow, up to the limit.
    let b = LateBatch::from_sweep(&[1, 2, 4, 5, 6], &flying, 3);
    assert_eq!(b.seqs, [1, 5]);
    assert!(b.all);
    assert_eq!(b.fresh_limit(3), 1);
    assert!(!b.full(2, 3));
    assert!(b.full(3, 3));
    // More late rows than a read takes: the first `limit`, and nothing newer.
    let b = LateBatch::from_sweep(&[1, 2, 3, 4, 5, 6], &flying, 3);
    assert_eq!(b.seqs, [1, 3, 5]);
    assert!(!b.all);
    assert_eq!(b.fresh_limit(3), 0);
    assert!(b.full(3, 3));
    // Exactly `limit` late rows, but the sweep stopped at its limit: there may be more.
    let b = LateBatch::from_sweep(&[1, 2, 3, 4, 5, 6], &flying, 3);
    assert!(!b.all);
    let b = LateBatch::from_sweep(&[1, 2, 3, 5], &HashSet::from([2]), 3);
    assert_eq!(b.seqs, [1, 3, 5]);
    assert!(!b.all, "the sweep was full: rows may lie beyond it");
    let b = LateBatch::from_sweep(&[1, 2, 3], &HashSet::from([2]), 3);
    assert!(b.all);
    assert_eq!(b.fresh_limit(3), 1);
    assert_eq!(LateBatch::none().fresh_limit(3), 3);
}

#[test]
fn key_text_takes_a_key_by_its_text_whatever_its_json_type() {
    // Before and after `ALTER COLUMN id TYPE text`.
    let a = parse_object(br#"{"id": 7}"#).unwrap();
    let b = parse_object(br#"{"id": "7"}"#).unwrap();
    assert_eq!(key_text(&def(), &a).unwrap(), key_text(&def(), &b).unwrap());
    // Two columns never run together.
    let mut two = def();
    two.key = vec!["id".into(), "b".into()];
    let c = parse_object(br#"{"id": "a\u0000", "b": "b"}"#).unwrap();
    let d = parse_object(br#"{"id": "a", "b": "\u0000b"}"#).unwrap();
    assert_ne!(key_text(&two, &c).unwrap(), key_text(&two, &d).unwrap());
}

#[test]
fn key_text_is_the_same_for_the_same_key() {
    let a = parse_image(&def(), "pk", r#"{"id": 7}"#).unwrap();
    let b = parse_image(&def(), "row", r#"{"b": null, "id": 7, "at": null}"#).unwrap();
    assert_eq!(key_text(&def(), &a).unwrap(), key_text(&def(), &b).unwrap());
    let c = parse_image(&def(), "pk", r#"{"id": 8}"#).unwrap();
    assert_ne!(key_text(&def(), &a).unwrap(), key_text(&def(), &c).unwrap());
    assert!(key_text(&def(), &Record::new()).is_err());
}

#[test]
fn keys_are_looked_up_by_the_columns_their_capture_rows_carry() {
    let pk = |j: &str| parse_object(j.as_bytes()).unwrap();
    // The primary key, as usual.
    let (by, key, json) = lookup_key(&def(), r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
    assert_eq!((by.key, key.len(), json), (vec!["id".to_owned()], 1, None));
    // The key widened to (id, b): the triggers still record (id).
    let wide = TableDef {
        key: vec!["id".into(), "at".into()],
        ..def()
    };
    let (by, _, json) = lookup_key(&wide, r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
    assert_eq!((by.key, json), (vec!["id".to_owned()], None));
    // The key column renamed (SQLite records the value under the old name).
    let renamed = TableDef {
        key: vec!["appt_id".into()],
        columns: vec!["appt_id".into(), "b".into(), "at".into()],
        ..def()
    };
    let (by, key, json) = lookup_key(&renamed, r#"{"id": 7}"#, pk(r#"{"id": 7}"#)).unwrap();
    assert_eq!(by.key, ["appt_id"]);
    assert_eq!(key.get("appt_id"), Some(&Value::Int(7)));
    assert_eq!(json.as_deref(), Some(r#"{"appt_id":7}"#));
    // A key recorded as null (PostgreSQL, key column renamed) is never looked up.
    let e = lookup_key(&renamed, r#"{"id": null}"#, pk(r#"{"id": null}"#)).unwrap_err();
    assert!(e.contains("no value for `appt_id`"), "{e}");
    let e = lookup_key(&def(), r#"{"id": null}"#, pk(r#"{"id": null}"#)).unwrap_err();
    assert!(e.contains("no value for `id`"), "{e}");
    // A key that names nothing the table has.
    let e = lookup_key(&def(), "{}", pk("{}")).unwrap_err();
    assert!(e.contains("names no key the table has"), "{e}");
    let e = lookup_key(&renamed, r#"{"x": 1, "y": 2}"#, pk(r#"{"x": 1, "y": 2}"#)).unwrap_err();
    assert!(e.contains("its primary key is (appt_id)"), "{e}");
}
