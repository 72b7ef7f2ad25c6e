//! Reading the polled table through ODBC: the connection (with the options that make
//! drivers stream a result set instead of holding it whole), the plan of columns and
//! their types, the bulk (columnar) fetch into the spill, and turning a stored row back
//! into typed values (SPEC §4).

use std::time::Duration;

use lockstep_formats::{Record, Value};
use odbc_api::buffers::{BufferDesc, ColumnarDynBuffer};
use odbc_api::parameter::{InputParameter, VarCharBox};
use odbc_api::{Connection, Cursor, DataType, ResultSetMetadata};
use serde::{Deserialize, Serialize};

use super::store::{put_value, values, Spill};
use crate::config::{Dialect, Lookback, PollConfig};
use crate::db::DbError;
use crate::source::trigger::conn_string::ConnString;
use crate::source::trigger::odbc::{self, odbc_err, KeyType};

/// Bytes of fetch buffer, about: the rows per fetch are chosen to fit.
const FETCH_BYTES: usize = 8 << 20;
/// Rows per fetch, at most.
const MAX_FETCH_ROWS: usize = 2048;
/// Rows per statement where a scan is read in chunks.
const CHUNK_ROWS: usize = 50_000;

/// Starts the message of an error that only a change of config (or schema) mends.
pub const NOT_CONFIGURED: &str = "cannot poll: ";

/// How a column's text becomes a typed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Int,
    Decimal,
    Float,
    Bool,
    Text,
    Bytes,
    Timestamp,
    /// A PostgreSQL `timestamptz`, read as UTC: sent with a `Z`.
    TimestampUtc,
}

impl Kind {
    fn of(t: DataType) -> Kind {
        match t {
            DataType::Integer | DataType::SmallInt | DataType::BigInt | DataType::TinyInt => {
                Kind::Int
            }
            DataType::Numeric { .. } | DataType::Decimal { .. } => Kind::Decimal,
            DataType::Float { .. } | DataType::Real | DataType::Double => Kind::Float,
            DataType::Bit => Kind::Bool,
            DataType::Binary { .. }
            | DataType::Varbinary { .. }
            | DataType::LongVarbinary { .. } => Kind::Bytes,
            DataType::Timestamp { .. } => Kind::Timestamp,
            _ => Kind::Text,
        }
    }
}

/// The columns of a stored row: enough to turn it back into typed values. Kept with
/// the changes of a scan, so they can be sent again without the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub columns: Vec<String>,
    pub kinds: Vec<Kind>,
    /// Indexes into `columns`, in key order.
    pub key: Vec<usize>,
    /// Fetch buffer length of each column: one byte more than a value may have.
    pub lengths: Vec<usize>,
}

/// What a scan reads: the columns in order, their kinds, which are the key, and the
/// cursor.
#[derive(Clone, Debug)]
pub struct Plan {
    pub table: String,
    pub dialect: Dialect,
    pub layout: Layout,
    pub cursor: Option<usize>,
    /// `SELECT <columns> FROM <table>` (or the configured query).
    select: String,
    rows_per_fetch: usize,
    /// Read in key order, this many rows a statement (drivers that hold a whole result
    /// set in memory).
    chunk_rows: Option<usize>,
}

impl Plan {
    /// Identifies what is scanned: a snapshot of another shape is not compared with.
    pub fn shape(&self, cfg: &PollConfig) -> String {
        let l = &self.layout;
        let key: Vec<&str> = l.key.iter().map(|&i| l.columns[i].as_str()).collect();
        match &cfg.query {
            Some(q) => format!("query {} key {}", q.trim(), key.join(",")),
            None => format!("table {} key {}", self.table, key.join(",")),
        }
    }
}

/// A connection to the polled database.
pub struct PollDb {
    conn: Connection<'static>,
    pub plan: Plan,
    sql: String,
}

/// Adds the options that make a driver stream a result set, unless the operator set
/// them: psqlODBC reads a whole result set into memory unless `UseDeclareFetch=1`.
/// (MariaDB Connector/ODBC streams only from 3.1.17 on, with `NO_CACHE=1`: MariaDB
/// tables are read in key-ordered chunks instead, which bounds memory with any driver.)
fn streaming_options(conn: &mut ConnString, dialect: Dialect, rows: usize, max_value: usize) {
    if dialect != Dialect::Postgres {
        return;
    }
    if conn.get("UseDeclareFetch").is_none() {
        conn.set_default("UseDeclareFetch", "1");
        conn.set_default("Fetch", &rows.to_string());
    }
    conn.set_default("BoolsAsChar", "0");
    conn.set_default("MaxVarcharSize", &max_value.to_string());
    conn.set_default("MaxLongVarcharSize", &max_value.to_string());
}

fn find(names: &[String], want: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| n == want)
        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
}

impl PollDb {
    /// Connects, works out the plan and checks it against the table.
    /// A [`DbError`] of kind `NotConfigured` is a config problem (a table without a
    /// primary key and no `key`; a `query` naming a table or column the database does
    /// not have): connecting again does not help.
    pub fn open(cfg: &PollConfig, source: &str) -> Result<PollDb, DbError> {
        let mut with = ConnString::parse(cfg.odbc.expose())
            .map_err(|e| DbError::query(format!("source `{source}`: {e}")))?;
        let conn = odbc::connect_to(&with)?;
        let dialect = odbc::dialect(&conn, cfg.dialect)?;
        let before = with.clone();
        streaming_options(&mut with, dialect, MAX_FETCH_ROWS, cfg.max_value_bytes);
        let conn = if with != before {
            drop(conn);
            odbc::connect_to(&with)?
        } else {
            conn
        };
        let t = dialect.table(&cfg.table);
        let mut columns: Vec<String>;
        let key_names: Vec<String>;
        // Binary columns by the catalog: some drivers (SQLite's) describe a result
        // column by its values rather than its declared type.
        let mut binary: Vec<String> = Vec::new();
        if let Some(q) = &cfg.query {
            columns = result_columns(&conn, &format!("SELECT * FROM ({q}) q WHERE 1 = 0"))?;
            key_names = cfg.key.clone();
        } else {
            let def = odbc::table_columns(&conn, &cfg.table)?;
            key_names = if cfg.key.is_empty() {
                let pk = odbc::primary_key(&conn, &cfg.table)?;
                if pk.is_empty() {
                    return Err(DbError::not_configured(format!(
                        "{NOT_CONFIGURED}table `{}` has no primary key, so lockstep cannot tell its rows apart: \
                         set `key = [\"COL\", …]` on source `{source}` to the columns that identify a row",
                        cfg.table
                    )));
                }
                pk
            } else {
                cfg.key.clone()
            };
            columns = def.columns;
            binary = def.binary;
        }
        let mut chosen: Vec<String> = Vec::new();
        if cfg.columns.is_empty() {
            chosen = columns.clone();
        } else {
            for c in &cfg.columns {
                let i = find(&columns, c).ok_or_else(|| {
                    DbError::query(format!(
                        "source `{source}`: column `{c}` of `columns` is not a column of `{}` (it has {})",
                        cfg.table,
                        columns.join(", ")
                    ))
                })?;
                chosen.push(columns[i].clone());
            }
        }
        let mut key = Vec::with_capacity(key_names.len());
        for k in &key_names {
            let i = match find(&chosen, k) {
                Some(i) => i,
                None => {
                    let i = find(&columns, k).ok_or_else(|| {
                        DbError::query(format!(
                            "source `{source}`: key column `{k}` is not a column of `{}` (it has {})",
                            cfg.table,
                            columns.join(", ")
                        ))
                    })?;
                    // The key is always read, even when `columns` leaves it out.
                    chosen.push(columns[i].clone());
                    chosen.len() - 1
                }
            };
            key.push(i);
        }
        let cursor = match &cfg.cursor {
            None => None,
            Some(c) => Some(match find(&chosen, c) {
                Some(i) => i,
                None => {
                    let i = find(&columns, c).ok_or_else(|| {
                        DbError::query(format!(
                            "source `{source}`: cursor column `{c}` is not a column of `{}`",
                            cfg.table
                        ))
                    })?;
                    chosen.push(columns[i].clone());
                    chosen.len() - 1
                }
            }),
        };
        columns = chosen;
        // psqlODBC gives a timestamptz in the session's time zone without its offset:
        // read those columns as UTC, and say so.
        let utc = match (&cfg.query, dialect) {
            (None, Dialect::Postgres) => {
                let lit = odbc::literal(dialect, &Value::Text(t.clone()));
                odbc::query(
                    &conn,
                    &format!(
                        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass({lit}) \
                         AND atttypid = 'timestamptz'::regtype AND NOT attisdropped"
                    ),
                    "read which columns are timestamptz",
                )?
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect()
            }
            _ => Vec::new(),
        };
        let list: Vec<String> = columns
            .iter()
            .map(|c| {
                let id = dialect.ident(c);
                if utc.contains(c) {
                    format!("({id} AT TIME ZONE 'UTC') AS {id}")
                } else {
                    id
                }
            })
            .collect();
        let select = match &cfg.query {
            Some(q) => format!("SELECT {} FROM ({q}) t", list.join(", ")),
            None => format!("SELECT {} FROM {t} t", list.join(", ")),
        };
        // The kinds and lengths come from the result set itself.
        let (mut kinds, lengths) = describe(&conn, &format!("{select} WHERE 1 = 0"), dialect, cfg)?;
        for (c, k) in columns.iter().zip(kinds.iter_mut()) {
            if utc.contains(c) && *k == Kind::Timestamp {
                *k = Kind::TimestampUtc;
            }
            if binary.contains(c) {
                *k = Kind::Bytes;
            }
        }
        if let (Some(c), Lookback::Time(_)) = (cursor, cfg.lookback) {
            if !matches!(kinds[c], Kind::Timestamp | Kind::TimestampUtc | Kind::Text) {
                return Err(DbError::query(format!(
                    "source `{source}`: cursor column `{}` is a number: give `lookback` as a whole number of values, not a duration",
                    columns[c]
                )));
            }
        }
        if let (Some(c), Lookback::Count(_)) = (cursor, cfg.lookback) {
            if !matches!(kinds[c], Kind::Int | Kind::Decimal) {
                return Err(DbError::query(format!(
                    "source `{source}`: cursor column `{}` is not a number: give `lookback` as a duration like \"1m\"",
                    columns[c]
                )));
            }
        }
        let row_bytes: usize = lengths.iter().map(|l| l + 9).sum::<usize>().max(1);
        let rows_per_fetch = (FETCH_BYTES / row_bytes).clamp(16, MAX_FETCH_ROWS);
        Ok(PollDb {
            conn,
            plan: Plan {
                table: cfg.table.clone(),
                dialect,
                layout: Layout {
                    columns,
                    kinds,
                    key,
                    lengths,
                },
                cursor,
                select,
                rows_per_fetch,
                chunk_rows: (dialect == Dialect::MariaDb).then_some(CHUNK_ROWS),
            },
            sql: String::new(),
        })
    }

    /// Reads the rows (all, or those past `since` on the cursor) into `spill`; returns
    /// the highest cursor value read. `stop` is asked between fetches.
    pub fn scan(
        &mut self,
        since: Option<&str>,
        lookback: Lookback,
        spill: &mut Spill,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<String>, ScanError> {
        let plan = self.plan.clone();
        let p = &plan;
        let l = &p.layout;
        let mut cond = Vec::new();
        // The cursor's bound, when it is a parameter: bound again for each statement.
        let mut since_param: Option<String> = None;
        if let (Some(c), Some(since)) = (p.cursor, since) {
            let col = p.dialect.ident(&l.columns[c]);
            let (bound, param) = lower_bound(p.dialect, l.kinds[c], since, lookback);
            cond.push(format!("{col} >= {bound}"));
            if param {
                since_param = Some(since.to_owned());
            }
        }
        let since_params = || -> Vec<Box<dyn InputParameter>> {
            since_param
                .iter()
                .map(|s| Box::new(VarCharBox::from_string(s.clone())) as Box<dyn InputParameter>)
                .collect()
        };
        let mut max_cursor: Option<Vec<u8>> = None;
        let mut last = Vec::new();
        let Some(chunk) = p.chunk_rows else {
            self.sql.clear();
            self.sql.push_str(&p.select);
            if !cond.is_empty() {
                self.sql.push_str(" WHERE ");
                self.sql.push_str(&cond[0]);
            }
            self.read(&since_params(), spill, stop, &mut max_cursor, &mut last)?;
            return Ok(max_cursor.map(|m| String::from_utf8_lossy(&m).into_owned()));
        };
        // In key order, a chunk at a time, in one transaction (one snapshot of the
        // table where the database gives repeatable reads).
        let what = format!("scan `{}`", p.table);
        let order: Vec<String> = l
            .key
            .iter()
            .map(|&k| format!("t.{}", p.dialect.ident(&l.columns[k])))
            .collect();
        let key_names: Vec<String> = l.key.iter().map(|&k| l.columns[k].clone()).collect();
        // The chunk bounds are bound typed: bytes as bytes, decimals as exact decimals
        // (MariaDB, the one dialect read in chunks, takes up to DECIMAL(65, 30)).
        let key_types: Vec<KeyType> = l
            .key
            .iter()
            .map(|&k| match l.kinds[k] {
                Kind::Bytes => KeyType::Binary,
                Kind::Decimal => KeyType::Decimal {
                    precision: 65,
                    scale: 30,
                },
                _ => KeyType::Plain,
            })
            .collect();
        self.conn
            .set_autocommit(false)
            .map_err(|e| ScanError::Db(odbc_err(&what)(e)))?;
        let r = (|| loop {
            let mut all = cond.clone();
            let mut params = since_params();
            if !last.is_empty() {
                let key = decode_key(l, &last, true).map_err(|e| {
                    ScanError::Db(DbError::query(format!("{what}: the last key read: {e}")))
                })?;
                all.push(format!(
                    "({})",
                    odbc::after_key_params(p.dialect, &key_names, &key_types, &key, &mut params)
                ));
            }
            let body = if all.is_empty() {
                p.select.trim_start_matches("SELECT ").to_owned()
            } else {
                format!(
                    "{} WHERE {}",
                    p.select.trim_start_matches("SELECT "),
                    all.join(" AND ")
                )
            };
            let mut sql = String::new();
            odbc::limited(p.dialect, &body, &order.join(", "), chunk, &mut sql);
            self.sql = sql;
            let n = self.read(&params, spill, stop, &mut max_cursor, &mut last)?;
            if n < chunk as u64 {
                return Ok(());
            }
        })();
        let _ = self.conn.rollback();
        let _ = self.conn.set_autocommit(true);
        r?;
        Ok(max_cursor.map(|m| String::from_utf8_lossy(&m).into_owned()))
    }

    /// Runs `self.sql` and spills its rows; returns how many. `last` gets the last row.
    fn read(
        &mut self,
        params: &[Box<dyn InputParameter>],
        spill: &mut Spill,
        stop: &dyn Fn() -> bool,
        max_cursor: &mut Option<Vec<u8>>,
        last: &mut Vec<u8>,
    ) -> Result<u64, ScanError> {
        let p = &self.plan;
        let l = &p.layout;
        let what = format!("scan `{}`", p.table);
        let cursor = self
            .conn
            .execute(&self.sql, params, None)
            .map_err(|e| ScanError::Db(odbc_err(&what)(e)))?;
        let Some(cursor) = cursor else {
            return Err(ScanError::Db(DbError::query(format!(
                "{what}: the statement returned no result set"
            ))));
        };
        let descs = l.kinds.iter().zip(&l.lengths).map(|(k, &len)| match k {
            Kind::Bytes => BufferDesc::Binary { max_bytes: len },
            _ => BufferDesc::Text { max_str_len: len },
        });
        let buffer = ColumnarDynBuffer::try_from_descs(p.rows_per_fetch, descs)
            .map_err(|e| ScanError::Db(odbc_err(&what)(e)))?;
        let mut block = cursor
            .bind_buffer(buffer)
            .map_err(|e| ScanError::Db(odbc_err(&what)(e)))?;
        let ncols = l.columns.len();
        let row = last;
        let mut key = Vec::with_capacity(32);
        let mut n = 0u64;
        loop {
            if stop() {
                return Err(ScanError::Stopped);
            }
            let Some(batch) = block
                .fetch()
                .map_err(|e| ScanError::Db(odbc_err(&what)(e)))?
            else {
                break;
            };
            let mut cols: Vec<Col<'_>> = Vec::with_capacity(ncols);
            let mut views: Vec<Option<&[u8]>> = vec![None; ncols];
            for i in 0..ncols {
                let c = batch.column(i);
                // Each column was bound above by its kind (binary or text), so the
                // buffer's own type is known here: no data from the database decides it.
                cols.push(match l.kinds[i] {
                    Kind::Bytes => Col::Bin(c.as_binary().expect("bound as binary")),
                    _ => Col::Text(c.as_text().expect("bound as text")),
                });
            }
            for r in 0..batch.num_rows() {
                let mut truncated: Option<u16> = None;
                for (i, c) in cols.iter().enumerate() {
                    let v = match c {
                        Col::Text(t) => t.get(r),
                        Col::Bin(b) => b.get(r),
                    };
                    // A value that fills its buffer (one byte more than allowed) is too
                    // long, whether the driver had to cut it or it fitted exactly: the
                    // driver's truncation flag alone misses a value of exactly
                    // `max_value_bytes + 1` bytes.
                    if truncated.is_none() && v.is_some_and(|v| v.len() >= l.lengths[i]) {
                        truncated = Some(i as u16);
                    }
                    views[i] = v;
                }
                row.clear();
                match truncated {
                    None => row.push(0),
                    Some(i) => {
                        row.push(1);
                        row.extend_from_slice(&i.to_le_bytes());
                    }
                }
                for v in &views {
                    put_value(row, *v);
                }
                key.clear();
                for &k in &l.key {
                    put_value(&mut key, views[k]);
                }
                if let Some(c) = p.cursor {
                    if let Some(v) = views[c] {
                        if max_cursor
                            .as_deref()
                            .is_none_or(|m| cursor_less(l.kinds[c], m, v))
                        {
                            *max_cursor = Some(v.to_vec());
                        }
                    }
                }
                spill.push(&key, row).map_err(ScanError::Spill)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

enum Col<'a> {
    Text(odbc_api::buffers::TextColumnSlice<'a, u8>),
    Bin(odbc_api::buffers::BinColumnSlice<'a>),
}

/// Why a scan did not finish.
#[derive(Debug)]
pub enum ScanError {
    Db(DbError),
    /// The spill could not be written (disk full, …).
    Spill(std::io::Error),
    Stopped,
}

/// Whether cursor value `a` comes before `b`.
pub fn cursor_less(kind: Kind, a: &[u8], b: &[u8]) -> bool {
    if matches!(kind, Kind::Int | Kind::Decimal) {
        let num = |v: &[u8]| std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok();
        if let (Some(x), Some(y)) = (num(a), num(b)) {
            return x < y;
        }
    }
    // Date-times as the database writes them sort as text.
    a < b
}

/// The SQL of the lowest cursor value an incremental scan reads; its `?` (if any) is
/// bound to `last`, as text.
fn lower_bound(d: Dialect, kind: Kind, last: &str, lookback: Lookback) -> (String, bool) {
    match lookback {
        Lookback::Count(n) => {
            // A number as the database wrote it: written as a number, so that it is
            // compared as one (MariaDB compares text with a number as a double).
            let t = last.trim();
            let numeric = matches!(kind, Kind::Int | Kind::Decimal)
                && !t.is_empty()
                && t.trim_start_matches('-')
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c == b'.');
            if numeric {
                (format!("({t} - {n})"), false)
            } else {
                (format!("(? - {n})"), true)
            }
        }
        Lookback::Time(t) => {
            let s = t.as_secs();
            let sql = match d {
                Dialect::Postgres if kind == Kind::TimestampUtc => {
                    format!("(CAST(? AS timestamp) AT TIME ZONE 'UTC' - INTERVAL '{s} seconds')")
                }
                Dialect::Postgres => format!("(CAST(? AS timestamp) - INTERVAL '{s} seconds')"),
                Dialect::MariaDb => format!("DATE_SUB(?, INTERVAL {s} SECOND)"),
                Dialect::Sqlite => format!("datetime(?, '-{s} seconds')"),
                Dialect::SqlServer => format!("DATEADD(second, -{s}, ?)"),
                Dialect::Oracle => format!("(CAST(? AS TIMESTAMP) - INTERVAL '{s}' SECOND)"),
                Dialect::Db2 => format!("(TIMESTAMP(?) - {s} SECONDS)"),
            };
            (sql, true)
        }
    }
}

/// The names of the columns `sql` returns.
fn result_columns(conn: &Connection<'_>, sql: &str) -> Result<Vec<String>, DbError> {
    let what = "read the columns of the configured query";
    let mut cursor = conn
        .execute(sql, (), None)
        .map_err(odbc_err(what))?
        .ok_or_else(|| DbError::query(format!("{what}: it returned no result set")))?;
    let names = cursor
        .column_names()
        .map_err(odbc_err(what))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(odbc_err(what))?;
    Ok(names)
}

/// The kind and buffer length of each column `sql` returns.
fn describe(
    conn: &Connection<'_>,
    sql: &str,
    d: Dialect,
    cfg: &PollConfig,
) -> Result<(Vec<Kind>, Vec<usize>), DbError> {
    let what = format!("read the column types of `{}`", cfg.table);
    let mut cursor = conn
        .execute(sql, (), None)
        .map_err(odbc_err(&what))?
        .ok_or_else(|| DbError::query(format!("{what}: no result set")))?;
    let n = cursor.num_result_cols().map_err(odbc_err(&what))? as u16;
    let mut kinds = Vec::with_capacity(n as usize);
    let mut lengths = Vec::with_capacity(n as usize);
    for c in 1..=n {
        let t = cursor.col_data_type(c).map_err(odbc_err(&what))?;
        let kind = Kind::of(t);
        let reported = match kind {
            Kind::Bytes => t.column_size().map(|s| s.get()),
            _ => match t.utf8_len() {
                Some(l) => Some(l.get()),
                None => cursor
                    .col_display_size(c)
                    .map_err(odbc_err(&what))?
                    .map(|s| s.get()),
            },
        };
        // SQLite's declared types are advice: any value may be any length.
        let len = match (d, kind, reported) {
            (Dialect::Sqlite, Kind::Text | Kind::Bytes, _) | (_, _, None) => cfg.max_value_bytes,
            (_, _, Some(l)) => l.clamp(1, cfg.max_value_bytes),
        };
        // One byte more than allowed: a value that fills it is too long.
        kinds.push(kind);
        lengths.push(len.max(40) + 1);
    }
    Ok((kinds, lengths))
}

/// Splits a stored row into the column that was cut short, if one was, and its values.
pub fn split_row(row: &[u8]) -> (Option<u16>, &[u8]) {
    match row.first() {
        Some(1) if row.len() >= 3 => (Some(u16::from_le_bytes([row[1], row[2]])), &row[3..]),
        Some(_) => (None, &row[1..]),
        None => (None, row),
    }
}

/// A stored value as the typed value of its column.
fn typed(kind: Kind, v: Option<&[u8]>, col: &str) -> Result<Value, String> {
    let Some(v) = v else {
        return Ok(Value::Null);
    };
    if kind == Kind::Bytes {
        return Ok(Value::Bytes(v.to_vec()));
    }
    let s = std::str::from_utf8(v).map_err(|_| {
        format!("column `{col}` is not valid UTF-8 (check the driver's character set)")
    })?;
    Ok(match kind {
        Kind::Int => match s.trim().parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Decimal(s.trim().to_owned()),
        },
        Kind::Decimal => Value::Decimal(s.trim().to_owned()),
        Kind::Float => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Float(f),
            _ => Value::Text(s.to_owned()),
        },
        Kind::Bool => match s.trim() {
            "1" | "t" | "true" | "TRUE" => Value::Bool(true),
            "0" | "f" | "false" | "FALSE" => Value::Bool(false),
            _ => Value::Text(s.to_owned()),
        },
        Kind::Timestamp => Value::Timestamp(s.trim().replacen(' ', "T", 1)),
        Kind::TimestampUtc => Value::Timestamp(format!("{}Z", s.trim().replacen(' ', "T", 1))),
        Kind::Text | Kind::Bytes => Value::Text(s.to_owned()),
    })
}

/// The typed values of a stored row (`after`).
pub fn decode_row(plan: &Layout, row: &[u8]) -> Result<Record, String> {
    let (cut, vals) = split_row(row);
    if let Some(i) = cut {
        let col = plan.columns.get(i as usize).map_or("?", String::as_str);
        return Err(format!(
            "column `{col}` holds a value longer than `max_value_bytes` ({} bytes): raise `max_value_bytes` to read it",
            plan.lengths.get(i as usize).map_or(0, |l| l - 1)
        ));
    }
    let mut rec = Record::with_capacity(plan.columns.len());
    let mut n = 0;
    for (i, v) in values(vals).enumerate() {
        let v = v?;
        let (Some(col), Some(kind)) = (plan.columns.get(i), plan.kinds.get(i)) else {
            return Err("the row has more values than columns".into());
        };
        rec.push(col.clone(), typed(*kind, v, col)?);
        n += 1;
    }
    if n != plan.columns.len() {
        return Err("the row has fewer values than columns".into());
    }
    Ok(rec)
}

/// The key of a stored row, or of a stored key (a delete).
pub fn decode_key(plan: &Layout, enc: &[u8], is_row: bool) -> Result<Record, String> {
    let mut rec = Record::with_capacity(plan.key.len());
    if is_row {
        let (_, vals) = split_row(enc);
        let all: Vec<Option<&[u8]>> = values(vals).collect::<Result<_, _>>()?;
        for &k in &plan.key {
            let v = all.get(k).copied().flatten();
            let col = &plan.columns[k];
            rec.push(col.clone(), typed(plan.kinds[k], v, col)?);
        }
    } else {
        for (v, &k) in values(enc).zip(&plan.key) {
            let col = &plan.columns[k];
            rec.push(col.clone(), typed(plan.kinds[k], v?, col)?);
        }
    }
    Ok(rec)
}

/// How long to wait before scanning again after a failed scan.
pub fn retry_after(attempt: usize) -> Duration {
    crate::backoff::delay(attempt, Duration::from_secs(60))
}
