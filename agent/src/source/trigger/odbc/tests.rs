use super::capture::{changed_ms, delete_sql};
use super::*;
use crate::source::trigger::drain::RowId;

#[test]
fn a_delete_names_each_row_by_seq_and_time() {
    let mut sql = String::new();
    let rows = [
        RowId {
            seq: 7,
            ms: Some(1_764_000_000_123),
        },
        RowId { seq: 9, ms: None },
    ];
    delete_sql(
        Dialect::Sqlite,
        "\"lockstep_changes\"",
        "tbl IN ('t')",
        &rows,
        &mut sql,
    );
    assert_eq!(
        sql,
        format!(
            "DELETE FROM \"lockstep_changes\" WHERE seq IN (7, 9) AND \
             ((seq = 7 AND {} = 1764000000123) OR seq = 9) AND tbl IN ('t')",
            changed_ms(Dialect::Sqlite)
        )
    );
}

#[test]
fn literals_are_quoted_per_dialect() {
    let t = Value::Text("O'Brien \\ co".into());
    assert_eq!(literal(Dialect::Sqlite, &t), "'O''Brien \\ co'");
    assert_eq!(literal(Dialect::MariaDb, &t), "'O''Brien \\\\ co'");
    assert_eq!(literal(Dialect::MariaDb, &Value::Int(-4)), "-4");
    assert_eq!(
        literal(Dialect::MariaDb, &Value::Decimal("12.50".into())),
        "12.50"
    );
    assert_eq!(
        literal(Dialect::Sqlite, &Value::Bytes(vec![0, 171])),
        "X'00AB'"
    );
    assert_eq!(literal(Dialect::Postgres, &Value::Bool(true)), "TRUE");
}
