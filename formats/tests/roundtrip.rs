//! Property tests: what the encoder writes, the record parser and serde_json read back.

use lockstep_formats::json::{encode_record, parse_object};
use lockstep_formats::record::{read_all, CsvOptions, Format};
use lockstep_formats::{Record, Value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        "-?[1-9][0-9]{0,30}\\.[0-9]{1,12}".prop_map(Value::Decimal),
        any::<String>().prop_map(Value::Text),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,12}", value()), 0..12)
        .prop_map(|fields| fields.into_iter().collect())
}

proptest! {
    #[test]
    fn encoded_records_parse_back_identically(r in record()) {
        let mut out = Vec::new();
        encode_record(&r, &mut out);
        let back = parse_object(&out).unwrap();
        // A decimal that fits an f64 goes out as a number and comes back as the same digits;
        // one that does not goes out as a string and comes back as text with the same digits.
        prop_assert_eq!(back.len(), r.len());
        for ((n1, v1), (n2, v2)) in r.iter().zip(back.iter()) {
            prop_assert_eq!(n1, n2);
            match (v1, v2) {
                (Value::Decimal(a), Value::Decimal(b)) => prop_assert_eq!(a, b),
                (Value::Decimal(a), Value::Text(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(json.as_object().unwrap().len(), r.len());
    }

    #[test]
    fn parser_never_panics_and_agrees_with_serde_json(s in "\\PC{0,64}") {
        let ours = parse_object(s.as_bytes());
        let theirs = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s);
        if theirs.is_err() {
            // serde_json accepts duplicate keys and we do too, so only its refusals must match.
            prop_assert!(ours.is_err(), "accepted {:?}", s);
        }
    }

    #[test]
    fn csv_fields_survive_quoting(cells in proptest::collection::vec("[a-z ,\"\n]{0,8}", 1..6)) {
        let header: Vec<String> = (0..cells.len()).map(|i| format!("c{i}")).collect();
        let mut data = header.join(",");
        data.push('\n');
        let quoted: Vec<String> = cells.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect();
        data.push_str(&quoted.join(","));
        data.push('\n');
        let out = read_all(&Format::Csv(CsvOptions::default()), data.as_bytes());
        prop_assert_eq!(out.len(), 1);
        let (_, rec) = out[0].as_ref().unwrap();
        for (i, c) in cells.iter().enumerate() {
            prop_assert_eq!(rec.get(&format!("c{i}")), Some(&Value::Text(c.clone())));
        }
    }
}
