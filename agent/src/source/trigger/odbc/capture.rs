//! The drain's ODBC connection ([`OdbcCapture`]): opened with the trigger version check,
//! it reads the capture table, current rows, snapshot chunks and the schema, and deletes
//! the rows acknowledged, with the SQL each dialect needs for that.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use lockstep_formats::Value;
use odbc_api::parameter::{InputParameter, VarCharBox};
use odbc_api::{Connection, ResultSetMetadata};

use crate::source::trigger::ddl::{json_object, own_rows, Dialect, TableDef, CAPTURE_TABLE};
use crate::source::trigger::drain::{parse_image, CaptureDb, ChangeRow, LateBatch, RowId, Schema};
use crate::source::trigger::{drift, setup, snapshot};

use super::{
    after_key_params, connect, dialect, key_param, key_types, limited, odbc_err, query, query_with,
    table_def, table_def_or_problem, KeyType, IN_LIST, MAX_PARAMS,
};
use crate::db::DbError;

/// Refuses MariaDB triggers installed by a lockstep before keys kept one text: they
/// record a `TIMESTAMP` key in the writer's time zone, which the agent's UTC session
/// would not find again (every change of such a key would look like a delete). Without
/// a `TIMESTAMP` column, only a warning: a key changed only in case is an update there.
fn check_trigger_version(
    conn: &Connection<'_>,
    def: &TableDef,
    source: &str,
) -> Result<(), DbError> {
    let name = crate::db::trigger_name(&def.name, "upd");
    let params: [Box<dyn InputParameter>; 1] = [Box::new(VarCharBox::from_string(name))];
    let rows = query_with(
        conn,
        "SELECT action_statement FROM information_schema.triggers \
         WHERE trigger_schema = DATABASE() AND trigger_name = ?",
        &params,
        "read the capture triggers",
    )?;
    let Some(body) = rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
    else {
        return Ok(());
    };
    if let Some(name) = setup::first_value(&body).filter(|n| *n != def.name) {
        tracing::error!(
            "source {source}: the capture triggers on `{}` record its changes as `{name}`, \
             which this source does not read: they wait in {CAPTURE_TABLE} unsent. Run \
             `lockstep triggers install --source {source}` (and remove the table from any \
             other source that lists it)",
            def.name
        );
    }
    if body.to_ascii_uppercase().contains("AS BINARY") {
        return Ok(());
    }
    let what = format!(
        "the capture triggers of `{}` were installed by an older lockstep: run `lockstep triggers \
         install --source {source}` to upgrade them",
        def.name
    );
    if def.utc.is_empty() {
        tracing::warn!(
            "source {source}: {what} (until then, a key changed only in case under a \
             case-insensitive collation is captured as an update of the new key)"
        );
        Ok(())
    } else {
        Err(DbError::query(format!(
            "{what}: they record the TIMESTAMP column(s) {} in the writer's time zone, and \
             the agent reads them in UTC",
            def.utc.join(", ")
        )))
    }
}

/// `table` as far as binding its values goes: binary columns decoded to bytes, but
/// date-times kept as the database wrote them. The ISO form (`T` for the space) is for
/// events; bound as text it would not equal a date-time SQLite keeps as text, which it
/// compares byte for byte (a key not found: sent as a delete; a chunk bound that skips
/// the rest of a day's keys).
fn bound_def(table: &TableDef) -> TableDef {
    TableDef {
        timestamps: Vec::new(),
        ..table.clone()
    }
}

/// A drain connection, polled.
pub struct OdbcCapture {
    conn: Connection<'static>,
    dialect: Dialect,
    tables: Vec<TableDef>,
    /// The types of each table's key columns, in key order.
    key_types: Vec<Vec<KeyType>>,
    epoch: String,
    /// `tbl IN (…)`: only this source's rows of the capture table.
    own: String,
    sql: String,
    /// Each table's column names as the last probe of [`Self::fresh_def`] saw them
    /// (`SELECT *` leaves out MariaDB's INVISIBLE columns and SQLite's generated ones,
    /// which the catalog lists: probes are compared with probes).
    probed: HashMap<String, Vec<String>>,
}

impl OdbcCapture {
    pub fn open(
        conn: &str,
        configured: Option<Dialect>,
        source: &str,
        tables: &[String],
    ) -> Result<Self, DbError> {
        let c = connect(conn)?;
        let dialect = dialect(&c, configured)?;
        let ct = dialect.ident(CAPTURE_TABLE);
        if c.execute(&format!("SELECT seq FROM {ct} WHERE 1 = 0"), (), None)
            .is_err()
        {
            return Err(DbError::query(format!(
                "the capture table {CAPTURE_TABLE} does not exist: run `lockstep triggers install --source {source}`"
            )));
        }
        let mut defs = Vec::with_capacity(tables.len());
        let mut types = Vec::with_capacity(tables.len());
        for t in tables {
            let def = table_def(&c, t)?;
            types.push(key_types(&c, dialect, &def)?);
            defs.push(def);
        }
        if dialect == Dialect::MariaDb {
            for def in &defs {
                check_trigger_version(&c, def, source)?;
            }
            // The triggers record TIMESTAMP columns in UTC: read them in UTC too, so
            // that a key is found whatever the time zone of the session that wrote it.
            c.execute("SET time_zone = '+00:00'", (), None)
                .map_err(odbc_err("set the session time zone to UTC"))?;
        }
        // After the session is in UTC: `create_time` is a DATETIME in the session's time
        // zone, so read before it would change with the server's zone (and its DST).
        let epoch = match dialect {
            Dialect::MariaDb => query(
                &c,
                "SELECT UNIX_TIMESTAMP(create_time) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = 'lockstep_changes'",
                "read when the capture table was made",
            )?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .map(|t| format!("my{}", t.split('.').next().unwrap_or_default()))
            .unwrap_or_else(|| "my".into()),
            d => d.name().to_owned(),
        };
        if dialect == Dialect::MariaDb {
            // One snapshot per read whatever the server's default (see `LateBatch`).
            c.execute(
                "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                (),
                None,
            )
            .map_err(odbc_err("set the isolation level of reads"))?;
        }
        c.set_autocommit(false)
            .map_err(odbc_err("turn autocommit off"))?;
        Ok(OdbcCapture {
            conn: c,
            dialect,
            tables: defs,
            key_types: types,
            epoch,
            own: own_rows(dialect, tables),
            sql: String::new(),
            probed: HashMap::new(),
        })
    }

    /// The key column types of `table` (one of the source's): those read with its
    /// definition, or from the catalog when `table` is keyed otherwise (by the key its
    /// capture rows carry, see [`CaptureDb::current`]).
    fn types_of(&self, table: &TableDef) -> Result<Vec<KeyType>, DbError> {
        let known = self
            .tables
            .iter()
            .position(|t| t.name == table.name && t.key == table.key)
            .and_then(|i| self.key_types.get(i).cloned());
        match known {
            Some(types) => Ok(types),
            None => key_types(&self.conn, self.dialect, table),
        }
    }

    /// Table `name` as the database has it now. Its columns are probed (`SELECT * …
    /// WHERE 1 = 0`) in the read's transaction, which holds the table's definition until
    /// it ends (MariaDB's metadata lock, SQLite's snapshot); when they changed since the
    /// last probe, the definition is read again and kept. So a row read by key carries
    /// every column the table has when it is read, and a dropped column does not fail
    /// the read.
    fn fresh_def(&mut self, name: &str) -> Result<TableDef, DbError> {
        let what = format!("read the columns of `{name}`");
        let sql = format!("SELECT * FROM {} WHERE 1 = 0", self.dialect.table(name));
        let names = match self.conn.execute(&sql, (), None).map_err(odbc_err(&what))? {
            Some(mut cursor) => cursor
                .column_names()
                .map_err(odbc_err(&what))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(odbc_err(&what))?,
            None => Vec::new(),
        };
        let i = self.tables.iter().position(|t| t.name == name);
        let known = i.map(|i| self.tables[i].clone());
        let unchanged = match (self.probed.get(name), &known) {
            (Some(last), Some(_)) => *last == names,
            // The first probe since the definition was read: compared with it.
            (None, Some(def)) => names == def.columns,
            (_, None) => false,
        };
        if let (true, Some(def)) = (unchanged, &known) {
            self.probed.insert(name.to_owned(), names);
            return Ok(def.clone());
        }
        let def = table_def(&self.conn, name)?;
        let types = key_types(&self.conn, self.dialect, &def)?;
        self.probed.insert(name.to_owned(), names);
        if known.as_ref() == Some(&def) {
            // Columns `SELECT *` does not show: nothing changed.
            return Ok(def);
        }
        tracing::info!(
            "table `{}` has changed: its rows are read with its columns now ({})",
            def.name,
            def.columns.join(", ")
        );
        match i {
            Some(i) => {
                self.tables[i] = def.clone();
                self.key_types[i] = types;
            }
            None => {
                self.tables.push(def.clone());
                self.key_types.push(types);
            }
        }
        Ok(def)
    }

    /// Runs a `SELECT` of capture rows and appends them to `out`.
    fn change_rows(&self, sql: &str, out: &mut Vec<ChangeRow>) -> Result<(), DbError> {
        for r in query(&self.conn, sql, "read the capture table")? {
            let mut c = r.into_iter();
            let mut next = || c.next().flatten();
            let seq = next()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| DbError::query("the capture table returned a row without a seq"))?;
            out.push(ChangeRow {
                seq,
                table: next().unwrap_or_default(),
                op: next().unwrap_or_default().trim().to_owned(),
                pk: next().unwrap_or_default(),
                before: next(),
                after: next(),
                changed_ms: next().and_then(|s| s.trim().parse().ok()),
                origin: next(),
            });
        }
        Ok(())
    }

    fn finish(&self, r: Result<(), DbError>) -> Result<(), DbError> {
        match r {
            Ok(()) => self
                .conn
                .commit()
                .map_err(odbc_err("commit reading the capture table")),
            Err(e) => {
                let _ = self.conn.rollback();
                Err(e)
            }
        }
    }
}

/// A row of `table` as one JSON object.
fn row_image(d: Dialect, table: &TableDef) -> String {
    match d {
        Dialect::Postgres => "row_to_json(t)::text".to_owned(),
        _ => json_object(d, "t", &table.columns, &table.binary),
    }
}

/// The capture-row time as ms since the epoch, where the dialect can say. The same
/// expression names a row to delete (see [`OdbcCapture::delete`]): it must give the
/// same number for the same row every time.
pub(super) fn changed_ms(d: Dialect) -> &'static str {
    match d {
        Dialect::Postgres => "(extract(epoch FROM changed_at) * 1000)::int8",
        Dialect::MariaDb => "CAST(UNIX_TIMESTAMP(changed_at) * 1000 AS SIGNED)",
        // Rounded: julianday's float puts `.123` a hair under 123 ms as often as over.
        Dialect::Sqlite => "CAST(ROUND((julianday(changed_at) - 2440587.5) * 86400000) AS INTEGER)",
        Dialect::SqlServer => "DATEDIFF_BIG(millisecond, '1970-01-01', changed_at)",
        Dialect::Oracle | Dialect::Db2 => "NULL",
    }
}

/// `DELETE` of `rows` (at most [`IN_LIST`]): `seq IN (…)` for the index, and each row
/// by its `seq` and time, as read, so that a row written since under a reused `seq` is
/// not taken (`(seq = 7 AND <ms> = 1764…) OR …`); a row read without a time goes by
/// its `seq`. The numbers are the drain's own integers, written as literals.
pub(super) fn delete_sql(d: Dialect, ct: &str, own: &str, rows: &[RowId], sql: &mut String) {
    sql.clear();
    let _ = write!(sql, "DELETE FROM {ct} WHERE seq IN (");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{}", r.seq);
    }
    sql.push_str(") AND (");
    let ms = changed_ms(d);
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        match r.ms {
            Some(t) => {
                let _ = write!(sql, "(seq = {} AND {ms} = {t})", r.seq);
            }
            None => {
                let _ = write!(sql, "seq = {}", r.seq);
            }
        }
    }
    let _ = write!(sql, ") AND {own}");
}

impl CaptureDb for OdbcCapture {
    fn tables(&self) -> &[TableDef] {
        &self.tables
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn read(
        &mut self,
        cursor: i64,
        in_flight: &HashSet<i64>,
        limit: usize,
        out: &mut Vec<ChangeRow>,
    ) -> Result<bool, DbError> {
        let d = self.dialect;
        let ct = d.ident(CAPTURE_TABLE);
        let own = self.own.clone();
        let what = "read the capture table";
        let mut full = false;
        let r = (|| {
            // Bounded, in one transaction: see `LateBatch`.
            let mut batch = LateBatch::none();
            if cursor > 0 {
                let n = LateBatch::probe_limit(in_flight);
                limited(
                    d,
                    &format!("seq FROM {ct} WHERE seq <= {cursor} AND {own}"),
                    "seq",
                    n,
                    &mut self.sql,
                );
                let probed: usize = query(
                    &self.conn,
                    &format!("SELECT count(*) FROM ({}) s", self.sql),
                    what,
                )?
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
                if LateBatch::any(probed, in_flight) {
                    let n = LateBatch::sweep_limit(in_flight, limit);
                    limited(
                        d,
                        &format!("seq FROM {ct} WHERE seq <= {cursor} AND {own}"),
                        "seq",
                        n,
                        &mut self.sql,
                    );
                    let listed: Vec<i64> = query(&self.conn, &self.sql, what)?
                        .into_iter()
                        .filter_map(|r| r.into_iter().next().flatten()?.trim().parse().ok())
                        .collect();
                    batch = LateBatch::from_sweep(&listed, in_flight, limit);
                }
            }
            let columns = format!(
                "seq, tbl, op, pk, {}, {}, {}, origin FROM {ct}",
                d.ident("before"),
                d.ident("after"),
                changed_ms(d)
            );
            let before = out.len();
            for chunk in batch.seqs.chunks(IN_LIST) {
                let list: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
                let sql = format!(
                    "SELECT {columns} WHERE seq IN ({}) AND {own} ORDER BY seq",
                    list.join(", ")
                );
                self.change_rows(&sql, out)?;
            }
            let n = batch.fresh_limit(limit);
            if n > 0 {
                limited(
                    d,
                    &format!("{columns} WHERE seq > {cursor} AND {own}"),
                    "seq",
                    n,
                    &mut self.sql,
                );
                let sql = std::mem::take(&mut self.sql);
                let r = self.change_rows(&sql, out);
                self.sql = sql;
                r?;
            }
            full = batch.full(out.len() - before, limit);
            Ok(())
        })();
        self.finish(r)?;
        Ok(full)
    }

    fn current(&mut self, table: &TableDef, pks: &[&str]) -> Result<Vec<String>, DbError> {
        let d = self.dialect;
        let what = format!("read the current rows of `{}`", table.name);
        let mut rows = Vec::with_capacity(pks.len());
        let r = (|| {
            let fresh = self.fresh_def(&table.name)?;
            // Looked up by the key the capture rows carry (`table.key`), which the table
            // must still have: a key looked up by another column, or by none, finds no
            // row, and that would be sent as a delete.
            if let Some(k) = table.key.iter().find(|k| !fresh.columns.contains(k)) {
                return Err(DbError::query(format!(
                    "{what}: its capture rows name the key column `{k}`, which the table no \
                     longer has (its key changed while they were read); they are kept and read \
                     again"
                )));
            }
            let table = &TableDef {
                name: fresh.name.clone(),
                key: table.key.clone(),
                columns: fresh.columns,
                binary: fresh.binary,
                timestamps: fresh.timestamps,
                utc: fresh.utc,
            };
            let image = row_image(d, table);
            let types = self.types_of(table)?;
            let per = (MAX_PARAMS / table.key.len().max(1)).clamp(1, IN_LIST);
            for chunk in pks.chunks(per) {
                let mut cond = Vec::with_capacity(chunk.len());
                let mut params = Vec::with_capacity(chunk.len() * table.key.len());
                for pk in chunk {
                    // Binary key values become bytes, bound as bytes.
                    let key = parse_image(&bound_def(table), "a key", pk)
                        .map_err(|e| DbError::query(format!("{what}: {e}")))?;
                    let mut parts = Vec::with_capacity(table.key.len());
                    for (k, ty) in table.key.iter().zip(&types) {
                        // Never `= NULL`: it finds nothing, and nothing is a delete.
                        let v = key.get(k).filter(|v| **v != Value::Null).ok_or_else(|| {
                            DbError::query(format!(
                                "{what}: the key {pk} of a capture row has no value for `{k}`; \
                                 its rows are kept and read again"
                            ))
                        })?;
                        let (sql, p) = key_param(*ty, v);
                        params.extend(p);
                        parts.push(format!("t.{} = {sql}", d.ident(k)));
                    }
                    cond.push(format!("({})", parts.join(" AND ")));
                }
                let sql = format!(
                    "SELECT {image} FROM {} t WHERE {}",
                    d.table(&table.name),
                    cond.join(" OR ")
                );
                // A case-insensitive collation also finds `ABC` for the key `abc`: the
                // drain matches each row to its key byte for byte.
                for r in query_with(&self.conn, &sql, &params, &what)? {
                    if let Some(j) = r.into_iter().next().flatten() {
                        rows.push(j);
                    }
                }
            }
            Ok(())
        })();
        self.finish(r)?;
        Ok(rows)
    }

    fn chunk(
        &mut self,
        table: &TableDef,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, DbError> {
        let d = self.dialect;
        let what = format!("read a snapshot chunk of `{}`", table.name);
        let mut body = format!("{} FROM {} t", row_image(d, table), d.table(&table.name));
        let mut params = Vec::new();
        if let Some(after) = after {
            // The last row read, with its key typed as its columns (bytes as bytes).
            let row = parse_image(&bound_def(table), "the last row read", after)
                .map_err(|e| DbError::query(format!("{what}: {e}")))?;
            body.push_str(" WHERE ");
            let types = self.types_of(table)?;
            body.push_str(&after_key_params(d, &table.key, &types, &row, &mut params));
        }
        let order: Vec<String> = table
            .key
            .iter()
            .map(|k| format!("t.{}", d.ident(k)))
            .collect();
        limited(d, &body, &order.join(", "), limit, &mut self.sql);
        let mut rows = Vec::with_capacity(limit);
        let r = query_with(&self.conn, &self.sql, &params, &what).map(|found| {
            rows.extend(
                found
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten()),
            );
        });
        self.finish(r)?;
        Ok(rows)
    }

    fn estimate_rows(&mut self, table: &TableDef) -> Result<Option<u64>, DbError> {
        let what = format!("estimate the rows of `{}`", table.name);
        let Some(sql) = snapshot::estimate_sql(self.dialect, &table.name) else {
            return Ok(None);
        };
        let mut n = None;
        let r = query(&self.conn, &sql, &what).map(|rows| {
            n = snapshot::parse_estimate(rows.first().and_then(|r| r.first()?.as_deref()));
        });
        self.finish(r)?;
        Ok(n)
    }

    fn delete(&mut self, rows: &[RowId]) -> Result<(), DbError> {
        let ct = self.dialect.ident(CAPTURE_TABLE);
        let mut sql = String::new();
        let r = (|| {
            for chunk in rows.chunks(IN_LIST) {
                delete_sql(self.dialect, &ct, &self.own, chunk, &mut sql);
                self.conn
                    .execute(&sql, (), None)
                    .map_err(odbc_err("delete drained rows from the capture table"))?;
            }
            Ok(())
        })();
        self.finish(r)
    }

    fn notified(&mut self) -> bool {
        // ODBC has no notifications: the source reads every `interval`.
        false
    }

    fn schema(&mut self) -> Result<Option<Schema>, DbError> {
        let d = self.dialect;
        if !drift::checked(d) {
            return Ok(None);
        }
        let names: Vec<String> = self.tables.iter().map(|t| t.name.clone()).collect();
        let mut found = Vec::with_capacity(names.len());
        let mut broken = Vec::new();
        let r = (|| {
            for name in &names {
                // A table dropped or without a primary key is reported, not a lost
                // connection: the other tables drain on.
                let def = match table_def_or_problem(&self.conn, name)? {
                    Ok(def) => def,
                    Err(why) => {
                        broken.push((name.clone(), why));
                        continue;
                    }
                };
                let types = key_types(&self.conn, d, &def)?;
                let installed = match drift::triggers_sql(d, name) {
                    Some(sql) => {
                        let rows = query(&self.conn, &sql, "read the capture triggers")?;
                        drift::from_trigger_rows(d, &rows)
                    }
                    None => None,
                };
                found.push((def, installed, types));
            }
            Ok(())
        })();
        self.finish(r)?;
        for (def, _, types) in &found {
            if let Some(i) = self.tables.iter().position(|t| t.name == def.name) {
                if self.tables[i] != *def {
                    // Probed again against the new definition.
                    self.probed.remove(&def.name);
                }
                self.tables[i] = def.clone();
                self.key_types[i] = types.clone();
            }
        }
        Ok(Some(Schema {
            dialect: d,
            tables: found.into_iter().map(|(d, i, _)| (d, i)).collect(),
            broken,
        }))
    }
}
