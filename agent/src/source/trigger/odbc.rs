//! Databases reached through ODBC (odbc-api over unixODBC): connecting, the dialect from
//! the driver's DBMS name, table definitions from the ODBC catalog, applying DDL, and the
//! drain's reads of the capture table, polled at the source's `interval`.
//!
//! **Files.** This file: connecting, queries, the catalog, key parameters, DDL, and the
//! SQL helpers the poll source shares. Beside it, in `odbc/`:
//! - `capture.rs`: the drain's connection ([`OdbcCapture`]) and its SQL;
//! - `tests.rs`: the unit tests.

use lockstep_formats::Value;
use odbc_api::parameter::{InputParameter, VarBinaryBox, VarCharBox};
use odbc_api::{Connection, ConnectionOptions, Cursor, ResultSetMetadata};

use super::conn_string::ConnString;
use super::ddl::{Dialect, Statement, TableDef};
use crate::db::DbError;

mod capture;

pub use capture::OdbcCapture;

/// Keys per statement when reading current rows, seqs per `DELETE`.
const IN_LIST: usize = 200;
/// Bound parameters per statement, at most: under SQLite's oldest limit (999) and SQL
/// Server's (2,100), so a composite key of many columns reads fewer keys a statement.
const MAX_PARAMS: usize = 900;

pub fn odbc_err(what: &str) -> impl FnOnce(odbc_api::Error) -> DbError + '_ {
    move |e| DbError::odbc(what, &e)
}

/// Opens a connection (autocommit on). The string is parsed and written back in the
/// form every driver reads (see [`ConnString`]): no empty attributes, braces where a
/// value needs them.
pub fn connect(conn: &str) -> Result<Connection<'static>, DbError> {
    let parsed = ConnString::parse(conn).map_err(DbError::query)?;
    connect_to(&parsed)
}

/// Opens a connection with a parsed connection string (autocommit on).
pub fn connect_to(conn: &ConnString) -> Result<Connection<'static>, DbError> {
    let env = odbc_api::environment().map_err(odbc_err("set up the ODBC environment"))?;
    // Some drivers (MariaDB Connector/ODBC 3.1) read the string up to a NUL whatever
    // length they are given: end it with one.
    let terminated = format!("{conn}\0");
    env.connect_with_connection_string(&terminated, ConnectionOptions::default())
        .map_err(|e| {
            let empty = conn.empty_keys();
            let hint = if empty.is_empty() {
                String::new()
            } else {
                format!(
                    "; the connection string gives `{}` an empty value, which some drivers refuse \
                     (MariaDB Connector/ODBC says `Memory allocation error`): leave the key out",
                    empty.join("`, `")
                )
            };
            DbError::query(format!(
                "cannot connect through ODBC: {e} (check the DSN or connection string, \
                 and that its driver is in odbcinst.ini{hint})"
            ))
        })
}

/// The configured dialect, or the one the driver names.
pub fn dialect(conn: &Connection<'_>, configured: Option<Dialect>) -> Result<Dialect, DbError> {
    if let Some(d) = configured {
        return Ok(d);
    }
    let name = conn
        .database_management_system_name()
        .map_err(odbc_err("ask the driver for the DBMS name"))?;
    Dialect::from_dbms_name(&name).ok_or_else(|| {
        DbError::query(format!(
            "the ODBC driver names the database `{name}`, which is not a dialect lockstep knows: \
             set `dialect` on the source (postgres, mariadb, sqlite, sqlserver, oracle or db2)"
        ))
    })
}

/// Runs one statement and returns every row as text columns (NULL as `None`).
pub fn query(
    conn: &Connection<'_>,
    sql: &str,
    what: &str,
) -> Result<Vec<Vec<Option<String>>>, DbError> {
    query_with(conn, sql, &[], what)
}

/// [`query`] with bound parameters (the `?`s of `sql`, in order).
pub fn query_with(
    conn: &Connection<'_>,
    sql: &str,
    params: &[Box<dyn InputParameter>],
    what: &str,
) -> Result<Vec<Vec<Option<String>>>, DbError> {
    let mut out = Vec::new();
    let Some(mut cursor) = conn.execute(sql, params, None).map_err(odbc_err(what))? else {
        return Ok(out);
    };
    let cols = cursor.num_result_cols().map_err(odbc_err(what))? as u16;
    let mut buf = Vec::new();
    while let Some(mut row) = cursor.next_row().map_err(odbc_err(what))? {
        let mut r = Vec::with_capacity(cols as usize);
        for c in 1..=cols {
            buf.clear();
            let some = row.get_text(c, &mut buf).map_err(odbc_err(what))?;
            r.push(some.then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        out.push(r);
    }
    Ok(out)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim_end().to_owned()
}

/// The columns, primary key and column types of `table` (`name` or `schema.name`).
pub fn table_def(conn: &Connection<'_>, table: &str) -> Result<TableDef, DbError> {
    table_def_or_problem(conn, table)?.map_err(DbError::query)
}

/// [`table_def`], but what is wrong with the table itself (it does not exist, it has no
/// primary key) apart (`Ok(Err(…))`) from a failure of the connection (`Err`).
pub fn table_def_or_problem(
    conn: &Connection<'_>,
    table: &str,
) -> Result<Result<TableDef, String>, DbError> {
    let Some(mut def) = columns_of(conn, table)? else {
        return Ok(Err(no_table(table)));
    };
    def.key = primary_key(conn, table)?;
    if def.key.is_empty() {
        return Ok(Err(format!(
            "table `{table}` has no primary key: trigger capture needs one to name each changed row \
             (add a primary key, or capture this table with kind = \"poll\" and a configured `key`)"
        )));
    }
    Ok(Ok(def))
}

fn no_table(table: &str) -> String {
    format!("table `{table}` does not exist (the ODBC catalog lists no columns for it)")
}

fn split_table(table: &str) -> (&str, &str) {
    match table.rsplit_once('.') {
        Some((s, n)) => (s, n),
        None => ("", table),
    }
}

/// The columns and column types of `table`, from the ODBC catalog; no key.
pub fn table_columns(conn: &Connection<'_>, table: &str) -> Result<TableDef, DbError> {
    columns_of(conn, table)?.ok_or_else(|| DbError::query(no_table(table)))
}

/// [`table_columns`]; `None` when the catalog lists no columns (no such table).
fn columns_of(conn: &Connection<'_>, table: &str) -> Result<Option<TableDef>, DbError> {
    let (schema, name) = split_table(table);
    let what = format!("read the columns of `{table}`");
    let mut def = TableDef {
        name: table.to_owned(),
        ..TableDef::default()
    };
    for row in conn
        .columns("", schema, name, "")
        .map_err(odbc_err(&what))?
    {
        let row = row.map_err(odbc_err(&what))?;
        let col = text(row.column_name.as_bytes().unwrap_or_default());
        // SQL_BINARY, SQL_VARBINARY, SQL_LONGVARBINARY; SQL_TYPE_TIMESTAMP, SQL_TIMESTAMP.
        match row.data_type {
            -4..=-2 => def.binary.push(col.clone()),
            93 | 11 => {
                // MariaDB's TIMESTAMP (not DATETIME) is shown in the session's time zone.
                let type_name = text(row.type_name.as_bytes().unwrap_or_default());
                if type_name.eq_ignore_ascii_case("timestamp") {
                    def.utc.push(col.clone());
                }
                def.timestamps.push(col.clone());
            }
            _ => {}
        }
        def.columns.push(col);
    }
    Ok((!def.columns.is_empty()).then_some(def))
}

/// The SQL type of a key column, as far as binding its value needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// BINARY, VARBINARY, BLOB, bytea: bound as bytes, never as text.
    Binary,
    /// DECIMAL or NUMERIC: bound as text and cast to the column's type, so that no
    /// database compares it as a floating-point number (MariaDB does, for text).
    Decimal { precision: i32, scale: i16 },
    /// PostgreSQL's `numeric`: cast to `numeric` with no precision. psqlODBC reports an
    /// unconstrained `numeric` as (28, 6), and a cast to that rounds a key with more
    /// decimals (not found: sent as a delete) or fails on one of 23 digits or more.
    Numeric,
    /// Bound as what the value is: an integer, a float or text (date-times as text,
    /// which every database converts to the column's type in a comparison).
    Plain,
}

/// The types of the key columns of `def`, from the ODBC catalog.
pub fn key_types(
    conn: &Connection<'_>,
    dialect: Dialect,
    def: &TableDef,
) -> Result<Vec<KeyType>, DbError> {
    let (schema, name) = split_table(&def.name);
    let what = format!("read the key column types of `{}`", def.name);
    let mut types = vec![KeyType::Plain; def.key.len()];
    for row in conn
        .columns("", schema, name, "")
        .map_err(odbc_err(&what))?
    {
        let row = row.map_err(odbc_err(&what))?;
        let col = text(row.column_name.as_bytes().unwrap_or_default());
        let Some(i) = def.key.iter().position(|k| *k == col) else {
            continue;
        };
        // SQL_BINARY, SQL_VARBINARY, SQL_LONGVARBINARY; SQL_NUMERIC, SQL_DECIMAL.
        types[i] = match row.data_type {
            -4..=-2 => KeyType::Binary,
            2 | 3 if dialect == Dialect::Postgres => KeyType::Numeric,
            2 | 3 => match (row.column_size.into_opt(), row.decimal_digits.into_opt()) {
                (Some(p), Some(s)) if p > 0 => KeyType::Decimal {
                    precision: p,
                    scale: s.max(0),
                },
                _ => KeyType::Plain,
            },
            _ => KeyType::Plain,
        };
    }
    Ok(types)
}

/// A key value as SQL and its bound parameter: `?` with the value typed by its column,
/// so that keys keep their SQL type (text is never compared with binary).
pub fn key_param(ty: KeyType, v: &Value) -> (String, Option<Box<dyn InputParameter>>) {
    let text = |s: &str| -> Option<Box<dyn InputParameter>> {
        Some(Box::new(VarCharBox::from_string(s.to_owned())))
    };
    match (ty, v) {
        (_, Value::Null) => ("NULL".into(), None),
        (KeyType::Binary, Value::Bytes(b)) => (
            "?".into(),
            Some(Box::new(VarBinaryBox::from_vec(b.clone()))),
        ),
        (KeyType::Binary, Value::Text(t)) => (
            "?".into(),
            Some(Box::new(VarBinaryBox::from_vec(t.as_bytes().to_vec()))),
        ),
        (
            KeyType::Decimal { .. } | KeyType::Numeric,
            Value::Int(_) | Value::Decimal(_) | Value::Float(_),
        ) => {
            let s = match v {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => format!("{f:?}"),
                Value::Decimal(d) => d.clone(),
                _ => String::new(),
            };
            let cast = match ty {
                KeyType::Decimal { precision, scale } => {
                    format!("CAST(? AS DECIMAL({precision}, {scale}))")
                }
                _ => "CAST(? AS NUMERIC)".to_owned(),
            };
            (cast, text(&s))
        }
        (_, Value::Int(i)) => ("?".into(), Some(Box::new(*i))),
        (_, Value::Float(f)) => ("?".into(), Some(Box::new(*f))),
        (_, Value::Decimal(d)) => ("?".into(), text(d)),
        (_, Value::Text(s) | Value::Timestamp(s) | Value::Json(s)) => ("?".into(), text(s)),
        (_, Value::Bytes(b)) => (
            "?".into(),
            Some(Box::new(VarBinaryBox::from_vec(b.clone()))),
        ),
        // No driver binds a boolean the same way: a literal (no outside text in it).
        (_, Value::Bool(b)) => (format!("{}", u8::from(*b)), None),
    }
}

/// The key rows of `t` that come after `row`, with bound parameters:
/// `k1 > ? OR (k1 = ? AND k2 > ?) OR …`.
pub fn after_key_params(
    d: Dialect,
    key: &[String],
    types: &[KeyType],
    row: &lockstep_formats::Record,
    params: &mut Vec<Box<dyn InputParameter>>,
) -> String {
    let mut any = Vec::with_capacity(key.len());
    let cmp = |k: &String, i: usize, op: &str, params: &mut Vec<Box<dyn InputParameter>>| {
        let ty = types.get(i).copied().unwrap_or(KeyType::Plain);
        let (sql, p) = key_param(ty, row.get(k).unwrap_or(&Value::Null));
        params.extend(p);
        format!("t.{} {op} {sql}", d.ident(k))
    };
    for i in 0..key.len() {
        let mut all: Vec<String> = Vec::with_capacity(i + 1);
        for (j, k) in key[..i].iter().enumerate() {
            all.push(cmp(k, j, "=", params));
        }
        all.push(cmp(&key[i], i, ">", params));
        any.push(format!("({})", all.join(" AND ")));
    }
    any.join(" OR ")
}

/// The primary key columns of `table`, in key order; empty when it has none.
pub fn primary_key(conn: &Connection<'_>, table: &str) -> Result<Vec<String>, DbError> {
    let (schema, name) = split_table(table);
    let what = format!("read the primary key of `{table}`");
    let mut key: Vec<(i16, String)> = Vec::new();
    for row in conn
        .primary_keys(None, (!schema.is_empty()).then_some(schema), name)
        .map_err(odbc_err(&what))?
    {
        let row = row.map_err(odbc_err(&what))?;
        key.push((row.key_seq, text(row.column.as_bytes().unwrap_or_default())));
    }
    key.sort();
    Ok(key.into_iter().map(|(_, k)| k).collect())
}

/// Runs `stmts` in one transaction (where the database's DDL is transactional; MariaDB
/// and Oracle commit each DDL statement on their own).
pub fn apply(conn: &Connection<'_>, stmts: &[Statement]) -> Result<(), DbError> {
    conn.set_autocommit(false)
        .map_err(odbc_err("turn autocommit off"))?;
    let r = stmts.iter().try_for_each(|s| {
        let first = s.sql.lines().next().unwrap_or_default();
        conn.execute(&s.sql, (), None)
            .map(|_| ())
            .map_err(odbc_err(&format!("run `{first}`")))
    });
    let r = match r {
        Ok(()) => conn.commit().map_err(odbc_err("commit")),
        Err(e) => {
            let _ = conn.rollback();
            Err(e)
        }
    };
    let _ = conn.set_autocommit(true);
    r
}

/// `SELECT <body> ORDER BY <order>`, at most `n` rows, in the dialect's words.
pub fn limited(d: Dialect, body: &str, order: &str, n: usize, sql: &mut String) {
    sql.clear();
    match d {
        Dialect::SqlServer => sql.push_str(&format!("SELECT TOP {n} {body} ORDER BY {order}")),
        Dialect::Oracle | Dialect::Db2 => sql.push_str(&format!(
            "SELECT {body} ORDER BY {order} FETCH FIRST {n} ROWS ONLY"
        )),
        _ => sql.push_str(&format!("SELECT {body} ORDER BY {order} LIMIT {n}")),
    }
}

/// A key value as an SQL literal.
pub fn literal(d: Dialect, v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => match (d, b) {
            (Dialect::Postgres, true) => "TRUE".into(),
            (Dialect::Postgres, false) => "FALSE".into(),
            (_, b) => (*b as u8).to_string(),
        },
        Value::Int(i) => i.to_string(),
        Value::Decimal(s) => s.clone(),
        Value::Float(f) => format!("{f:?}"),
        Value::Text(s) | Value::Timestamp(s) | Value::Json(s) => {
            let mut q = s.replace('\'', "''");
            if d == Dialect::MariaDb {
                q = q.replace('\\', "\\\\");
            }
            format!("'{q}'")
        }
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
            format!("X'{hex}'")
        }
    }
}

#[cfg(test)]
mod tests;
