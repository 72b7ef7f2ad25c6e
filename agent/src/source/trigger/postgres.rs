//! PostgreSQL, natively (tokio-postgres): connecting, reading table definitions from the
//! catalog, and applying capture DDL in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;
use tokio::runtime::Handle;
use tokio_postgres::{AsyncMessage, Client, IsolationLevel};

use crate::db::postgres::PgConn;

use super::ddl::{own_rows, Dialect, Statement, TableDef, CAPTURE_TABLE};
use super::drain::{CaptureDb, ChangeRow, LateBatch, RowId, Schema};
use super::drift::Installed;
use crate::db::{DbError, ErrorKind};

#[derive(Debug, Error)]
pub enum PgError {
    /// Worded by [`crate::db::postgres::connect`].
    #[error("{0}")]
    Connect(String),
    #[error("PostgreSQL table `{0}` does not exist (or is not visible with the connection's search_path)")]
    NoTable(String),
    #[error(
        "PostgreSQL table `{0}` has no primary key: trigger capture needs one to name each changed row \
         (add a primary key, or capture this table with kind = \"poll\" and a configured `key`)"
    )]
    NoKey(String),
    #[error(
        "the capture table lockstep_changes does not exist (or is not visible with the connection's \
         search_path): run `lockstep triggers install --source {0}`"
    )]
    NoCaptureTable(String),
    #[error("PostgreSQL: {what}: {}", describe(.source))]
    Query {
        what: String,
        source: tokio_postgres::Error,
    },
}

impl PgError {
    /// What kind of failure it is (see [`ErrorKind`]): a connection that could not be
    /// made is unreachable (refused, timed out, TLS or authentication: retried with
    /// backoff), a missing table, key or capture table is not configured, and a query's
    /// error is classified by its SQLSTATE.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PgError::Connect(_) => ErrorKind::Unreachable,
            PgError::NoTable(_) | PgError::NoKey(_) | PgError::NoCaptureTable(_) => {
                ErrorKind::NotConfigured
            }
            PgError::Query { source, .. } => crate::db::error::postgres_kind(source),
        }
    }
}

impl From<PgError> for DbError {
    fn from(e: PgError) -> DbError {
        DbError::new(e.kind(), e.to_string())
    }
}

pub use crate::db::postgres::describe;

/// Connects; the connection runs on a task of its own until the client is dropped.
pub async fn connect(conn: &PgConn) -> Result<Client, PgError> {
    connect_woken(conn, None).await.map(|(client, _)| client)
}

/// Connects (through [`crate::db::postgres::connect`], with TLS as `sslmode` says), and
/// on each notification (after `LISTEN`) and when the connection closes sets the
/// returned flag and wakes `wake`.
async fn connect_woken(
    conn: &PgConn,
    wake: Option<crossbeam_channel::Sender<()>>,
) -> Result<(Client, Arc<AtomicBool>), PgError> {
    let (client, mut connection) = crate::db::postgres::connect(conn)
        .await
        .map_err(PgError::Connect)?;
    let news = Arc::new(AtomicBool::new(false));
    let n = news.clone();
    let tell = move || {
        n.store(true, Ordering::Release);
        if let Some(w) = &wake {
            let _ = w.try_send(());
        }
    };
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => tell(),
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!("PostgreSQL notice: {}", n.message())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!("PostgreSQL connection closed: {e}");
                    break;
                }
                None => break,
            }
        }
        tell();
    });
    Ok((client, news))
}

/// The columns and primary key of `table` (a name or `schema.name`, as in SQL).
pub async fn table_def(client: &Client, table: &str) -> Result<TableDef, PgError> {
    let q = |what: &str| {
        let what = format!("{what} of `{table}`");
        move |source| PgError::Query { what, source }
    };
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
        .map_err(q("look up"))?
        .get(0);
    let oid = oid.ok_or_else(|| PgError::NoTable(table.to_owned()))?;
    let rows = client
        .query(
            "SELECT attname::text, atttypid = 'bytea'::regtype, \
             atttypid IN ('timestamp'::regtype, 'timestamptz'::regtype) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(q("read the columns"))?;
    let columns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let binary: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    // A timestamptz is written in the session's time zone: made UTC when parsed, so a
    // key has one text whichever session wrote it.
    let timestamps: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| r.get(0))
        .collect();
    let key: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(q("read the primary key"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if key.is_empty() {
        return Err(PgError::NoKey(table.to_owned()));
    }
    Ok(TableDef {
        name: table.to_owned(),
        key,
        columns,
        binary,
        timestamps,
        utc: Vec::new(),
    })
}

/// What lockstep's capture trigger on `table` records (its arguments); `None` when the
/// table has none.
pub async fn installed(client: &Client, table: &str) -> Result<Option<Installed>, PgError> {
    let rows = client
        .query(
            "SELECT tgargs FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = 'lockstep_capture'",
            &[&table],
        )
        .await
        .map_err(|source| PgError::Query {
            what: format!("read the capture trigger of `{table}`"),
            source,
        })?;
    Ok(rows
        .first()
        .map(|r| Installed::from_pg_args(&r.get::<_, Vec<u8>>(0))))
}

/// Says loudly when the capture trigger on `table` records its changes under another
/// name than `table` as configured (the triggers were installed under another spelling,
/// or by another source): this source reads only the rows of its spelling, so those
/// changes would wait in the capture table unseen.
async fn warn_other_spelling(client: &Client, source: &str, table: &str) {
    let Ok(rows) = client
        .query(
            "SELECT tgargs FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = 'lockstep_capture'",
            &[&table],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let args: Vec<u8> = r.get(0);
        let Some(name) = args.split(|&b| b == 0).nth(1) else {
            continue;
        };
        let name = String::from_utf8_lossy(name);
        if name != table {
            tracing::error!(
                "source {source}: the capture trigger on `{table}` records its changes as `{name}`, \
                 which this source does not read: they wait in {CAPTURE_TABLE} unsent. Run \
                 `lockstep triggers install --source {source}` (and remove the table from any \
                 other source that lists it)"
            );
        }
    }
}

/// Runs `stmts` in one transaction: all of them take effect, or none.
pub async fn apply(client: &mut Client, stmts: &[Statement]) -> Result<(), PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(|source| PgError::Query {
            what: "begin".into(),
            source,
        })?;
    for s in stmts {
        tx.batch_execute(&s.sql)
            .await
            .map_err(|source| PgError::Query {
                what: format!("run `{}`", first_line(&s.sql)),
                source,
            })?;
    }
    tx.commit().await.map_err(|source| PgError::Query {
        what: "commit".into(),
        source,
    })
}

/// Set in each read transaction: the reads of the capture table walk its `seq` index
/// from the cursor and stop after their limit, whatever the planner estimates.
///
/// Every read carries `tbl IN (own tables)`. On a capture table without statistics (a
/// backlog that built up before autovacuum first analyzed it, or with autovacuum off)
/// the planner takes that condition to match 0.5 % of the rows, expects fewer own rows
/// above the cursor than the limit, and so plans to read every row above the cursor and
/// sort them: measured on a 100,000-row backlog, 190 ms instead of 1 ms for a read of
/// 2,048 rows, for each of the first five reads (before the statement's cached generic
/// plan takes over). Statistics in which this source's rows look rare in a shared
/// capture table can lead to the same plan. The index walk reads rows in `seq` order
/// up to the limit (and past other sources' rows), never the whole backlog.
const WALK_SEQ: &str =
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off";

/// The capture row's time in ms, as read and as matched when the row is deleted.
const CHANGED_MS: &str = "(extract(epoch FROM changed_at) * 1000)::int8";

/// A drain connection: reads the capture table, woken by `NOTIFY lockstep_changes`.
pub struct PgCapture {
    client: Client,
    rt: Handle,
    /// Set when a notification came (or the connection closed).
    news: Arc<AtomicBool>,
    tables: Vec<TableDef>,
    epoch: String,
    probe: tokio_postgres::Statement,
    sweep: tokio_postgres::Statement,
    fresh: tokio_postgres::Statement,
    late: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    /// Statements per table: reading current rows, snapshot chunks, counting.
    per_table: HashMap<(String, &'static str), tokio_postgres::Statement>,
}

impl PgCapture {
    /// Connects, checks the capture table, reads the tables' definitions and listens;
    /// each notification wakes `wake`.
    pub fn open(
        rt: &Handle,
        conn: &PgConn,
        source: &str,
        tables: &[String],
        wake: crossbeam_channel::Sender<()>,
    ) -> Result<Self, DbError> {
        rt.block_on(Self::open_async(rt, conn, source, tables, wake))
            .map_err(DbError::from)
    }

    async fn open_async(
        rt: &Handle,
        conn: &PgConn,
        source: &str,
        tables: &[String],
        wake: crossbeam_channel::Sender<()>,
    ) -> Result<Self, PgError> {
        let (client, news) = connect_woken(conn, Some(wake)).await?;
        let q = |what: &'static str| {
            move |source| PgError::Query {
                what: what.into(),
                source,
            }
        };
        let oid: Option<u32> = client
            .query_one("SELECT to_regclass($1)::oid", &[&CAPTURE_TABLE])
            .await
            .map_err(q("look up the capture table"))?
            .get(0);
        let Some(oid) = oid else {
            return Err(PgError::NoCaptureTable(source.to_owned()));
        };
        let mut defs = Vec::with_capacity(tables.len());
        for t in tables {
            defs.push(table_def(&client, t).await?);
            warn_other_spelling(&client, source, t).await;
        }
        client
            .batch_execute(&format!("LISTEN {CAPTURE_TABLE}"))
            .await
            .map_err(q("listen for changes"))?;
        let ct = Dialect::Postgres.ident(CAPTURE_TABLE);
        // Only this source's rows: other sources may share the capture table.
        let own = own_rows(Dialect::Postgres, tables);
        // Bounded: see `LateBatch`.
        let probe = client
            .prepare(&format!(
                "SELECT count(*) FROM (SELECT 1 FROM {ct} WHERE seq <= $1 AND {own} ORDER BY seq LIMIT $2) s"
            ))
            .await
            .map_err(q("prepare reading the capture table"))?;
        let sweep = client
            .prepare(&format!(
                "SELECT seq FROM {ct} WHERE seq <= $1 AND {own} ORDER BY seq LIMIT $2"
            ))
            .await
            .map_err(q("prepare reading the capture table"))?;
        let columns =
            format!("seq, tbl, op, pk::text, before::text, after::text, {CHANGED_MS}, origin");
        let fresh = client
            .prepare(&format!(
                "SELECT {columns} FROM {ct} WHERE seq > $1 AND {own} ORDER BY seq LIMIT $2"
            ))
            .await
            .map_err(q("prepare reading the capture table"))?;
        let late = client
            .prepare(&format!(
                "SELECT {columns} FROM {ct} WHERE seq = ANY($1) AND {own} ORDER BY seq"
            ))
            .await
            .map_err(q("prepare reading the capture table"))?;
        // Each row by its seq and time as read (see `CaptureDb::delete`); a row without
        // a time (NULL in $2) by its seq.
        let delete = client
            .prepare(&format!(
                "DELETE FROM {ct} c USING unnest($1::int8[], $2::int8[]) AS d(s, m) \
                 WHERE c.seq = ANY($1) AND c.seq = d.s \
                 AND (d.m IS NULL OR {} = d.m) AND {own}",
                CHANGED_MS.replace("changed_at", "c.changed_at")
            ))
            .await
            .map_err(q("prepare deleting from the capture table"))?;
        Ok(PgCapture {
            client,
            rt: rt.clone(),
            news,
            tables: defs,
            epoch: format!("pg{oid}"),
            probe,
            sweep,
            fresh,
            late,
            delete,
            per_table: HashMap::new(),
        })
    }

    /// Runs the statement `kind` of `table` (prepared once, from `sql`) with `params`.
    fn query_table(
        &mut self,
        table: &TableDef,
        kind: &'static str,
        sql: impl FnOnce(&str, &str) -> String,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let (client, cache) = (&self.client, &mut self.per_table);
        self.rt.block_on(async {
            // By key too: rows are looked up by the key their capture rows carry.
            let id = (format!("{}\0{}", table.name, table.key.join("\0")), kind);
            let st = match cache.get(&id) {
                Some(st) => st.clone(),
                None => {
                    let d = Dialect::Postgres;
                    let keys: Vec<String> = table.key.iter().map(|k| d.ident(k)).collect();
                    let st = client
                        .prepare(&sql(&d.table(&table.name), &keys.join(", ")))
                        .await
                        .map_err(db_err(what))?;
                    cache.insert(id, st.clone());
                    st
                }
            };
            client.query(&st, params).await.map_err(db_err(what))
        })
    }
}

fn db_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> DbError + '_ {
    move |e| DbError::postgres(&e, format!("PostgreSQL: {what}: {}", describe(&e)))
}

impl CaptureDb for PgCapture {
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
        let (client, probe, sweep) = (&mut self.client, &self.probe, &self.sweep);
        let (fresh, late) = (&self.fresh, &self.late);
        self.rt.block_on(async {
            let what = "read the capture table";
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db_err(what))?;
            tx.batch_execute(WALK_SEQ).await.map_err(db_err(what))?;
            let mut batch = LateBatch::none();
            if cursor > 0 {
                let n = LateBatch::probe_limit(in_flight) as i64;
                let probed: i64 = tx
                    .query_one(probe, &[&cursor, &n])
                    .await
                    .map_err(db_err(what))?
                    .get(0);
                if LateBatch::any(probed as usize, in_flight) {
                    let n = LateBatch::sweep_limit(in_flight, limit) as i64;
                    let listed: Vec<i64> = tx
                        .query(sweep, &[&cursor, &n])
                        .await
                        .map_err(db_err(what))?
                        .iter()
                        .map(|r| r.get::<_, i64>(0))
                        .collect();
                    batch = LateBatch::from_sweep(&listed, in_flight, limit);
                }
            }
            let mut rows = if batch.seqs.is_empty() {
                Vec::new()
            } else {
                tx.query(late, &[&batch.seqs]).await.map_err(db_err(what))?
            };
            let n = batch.fresh_limit(limit) as i64;
            if n > 0 {
                // A plain range: the index scan starts at the cursor instead of walking
                // the deleted rows below it.
                rows.extend(
                    tx.query(fresh, &[&cursor, &n])
                        .await
                        .map_err(db_err(what))?,
                );
            }
            tx.commit().await.map_err(db_err(what))?;
            out.extend(rows.iter().map(|r| ChangeRow {
                seq: r.get(0),
                table: r.get(1),
                op: r.get(2),
                pk: r.get(3),
                before: r.get(4),
                after: r.get(5),
                changed_ms: r.get(6),
                origin: r.get(7),
            }));
            Ok(batch.full(rows.len(), limit))
        })
    }

    fn current(&mut self, table: &TableDef, pks: &[&str]) -> Result<Vec<String>, DbError> {
        let mut arg = String::with_capacity(pks.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
        arg.push('[');
        arg.push_str(&pks.join(","));
        arg.push(']');
        let what = format!("read the current rows of `{}`", table.name);
        let rows = self.query_table(
            table,
            "current",
            |t, keys| {
                format!(
                    "SELECT row_to_json(t)::text FROM {t} t WHERE ({keys}) IN \
                     (SELECT {keys} FROM json_populate_recordset(NULL::{t}, $1::text::json))"
                )
            },
            &[&arg],
            &what,
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn chunk(
        &mut self,
        table: &TableDef,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, DbError> {
        let what = format!("read a snapshot chunk of `{}`", table.name);
        let limit = limit as i64;
        // The key of `after` is taken from the row itself, so it keeps its SQL type.
        let rows = match after {
            None => self.query_table(
                table,
                "first chunk",
                |t, keys| {
                    format!("SELECT row_to_json(t)::text FROM {t} t ORDER BY {keys} LIMIT $1")
                },
                &[&limit],
                &what,
            )?,
            Some(after) => self.query_table(
                table,
                "next chunk",
                |t, keys| {
                    format!(
                        "SELECT row_to_json(t)::text FROM {t} t WHERE ({keys}) > \
                         (SELECT {keys} FROM json_populate_record(NULL::{t}, $2::text::json)) \
                         ORDER BY {keys} LIMIT $1"
                    )
                },
                &[&limit, &after],
                &what,
            )?,
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn estimate_rows(&mut self, table: &TableDef) -> Result<Option<u64>, DbError> {
        let what = format!("estimate the rows of `{}`", table.name);
        let Some(sql) = super::snapshot::estimate_sql(Dialect::Postgres, &table.name) else {
            return Ok(None);
        };
        let rows = self
            .rt
            .block_on(self.client.query(&sql, &[]))
            .map_err(db_err(&what))?;
        let n: Option<f64> = rows.first().and_then(|r| r.get(0));
        Ok(super::snapshot::parse_estimate(
            n.map(|n| n.to_string()).as_deref(),
        ))
    }

    fn delete(&mut self, rows: &[RowId]) -> Result<(), DbError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let ms: Vec<Option<i64>> = rows.iter().map(|r| r.ms).collect();
        self.rt
            .block_on(self.client.execute(&self.delete, &[&seqs, &ms]))
            .map(|_| ())
            .map_err(db_err("delete drained rows from the capture table"))
    }

    fn schema(&mut self) -> Result<Option<Schema>, DbError> {
        let names: Vec<String> = self.tables.iter().map(|t| t.name.clone()).collect();
        let client = &self.client;
        let found = self.rt.block_on(async {
            let mut found = Vec::with_capacity(names.len());
            let mut broken = Vec::new();
            for name in &names {
                // A table dropped or without a primary key is reported, not a lost
                // connection: the other tables drain on.
                let def = match table_def(client, name).await {
                    Ok(def) => def,
                    Err(e @ (PgError::NoTable(_) | PgError::NoKey(_))) => {
                        broken.push((name.clone(), e.to_string()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                found.push((def, installed(client, name).await?));
            }
            Ok::<_, PgError>((found, broken))
        });
        let (found, broken) = found.map_err(DbError::from)?;
        for (def, _) in &found {
            if let Some(t) = self.tables.iter_mut().find(|t| t.name == def.name) {
                *t = def.clone();
            }
        }
        Ok(Some(Schema {
            dialect: Dialect::Postgres,
            tables: found,
            broken,
        }))
    }

    fn notified(&mut self) -> bool {
        self.news.swap(false, Ordering::AcqRel) || self.client.is_closed()
    }
}

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or(sql)
}

#[cfg(test)]
mod tests {
    use super::super::ddl::{install, uninstall, Capture, Dialect};
    use super::*;
    use std::time::Duration;

    const CONN: &str = "host=127.0.0.1 user=postgres dbname=test";

    /// A connection that cannot be made is unreachable (retried); what the operator must
    /// set up is not configured; a query's error goes by its SQLSTATE.
    #[test]
    fn open_errors_say_their_kind() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let refused = PgConn::parse("host=127.0.0.1 port=1 user=postgres dbname=test").unwrap();
        let wake = crossbeam_channel::bounded(1).0;
        let e = PgCapture::open(rt.handle(), &refused, "s", &["t".into()], wake)
            .err()
            .expect("port 1 refuses");
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        for e in [
            PgError::NoTable("t".into()),
            PgError::NoKey("t".into()),
            PgError::NoCaptureTable("s".into()),
        ] {
            assert_eq!(DbError::from(e).kind, ErrorKind::NotConfigured);
        }
        let missing = rt.block_on(async {
            let c = connect(&PgConn::parse(CONN).unwrap()).await.unwrap();
            c.simple_query("SELECT * FROM lockstep_no_such_table")
                .await
                .expect_err("no such table")
        });
        let e = PgError::Query {
            what: "read".into(),
            source: missing,
        };
        assert_eq!(e.kind(), ErrorKind::NotConfigured, "{e}");
    }

    #[tokio::test]
    async fn reads_definitions_and_installs_in_a_transaction() {
        let mut c = connect(&PgConn::parse(CONN).unwrap()).await.unwrap();
        let schema = format!("lockstep_pg_{}", std::process::id());
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
             CREATE TABLE {schema}.visits (clinic text, day date, n int, note text, PRIMARY KEY (day, clinic));
             ALTER TABLE {schema}.visits DROP COLUMN note;
             CREATE TABLE {schema}.nokey (a int);"
        ))
        .await
        .unwrap();
        let t = table_def(&c, &format!("{schema}.visits")).await.unwrap();
        assert_eq!(t.key, ["day", "clinic"], "key in index order");
        assert_eq!(
            t.columns,
            ["clinic", "day", "n"],
            "dropped columns left out"
        );

        let e = table_def(&c, &format!("{schema}.nokey")).await.unwrap_err();
        assert!(e.to_string().contains("has no primary key"), "{e}");
        let e = table_def(&c, &format!("{schema}.missing"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");

        // A statement that fails leaves nothing behind.
        let mut bad = install(Dialect::Postgres, std::slice::from_ref(&t), Capture::Keys);
        bad.push(Statement {
            sql: "SELECT no_such_function()".into(),
            compound: false,
        });
        c.batch_execute(&format!("SET search_path = {schema}"))
            .await
            .unwrap();
        let e = apply(&mut c, &bad).await.unwrap_err();
        assert!(e.to_string().contains("no_such_function"), "{e}");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'lockstep_changes'",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);

        let good = install(Dialect::Postgres, std::slice::from_ref(&t), Capture::Keys);
        apply(&mut c, &good).await.unwrap();
        apply(&mut c, &good).await.unwrap();
        c.batch_execute(&format!(
            "INSERT INTO {schema}.visits VALUES ('North', '2026-11-21', 3)"
        ))
        .await
        .unwrap();
        let pk: String = c
            .query_one("SELECT pk::text FROM lockstep_changes", &[])
            .await
            .unwrap()
            .get(0);
        let pk: serde_json::Value = serde_json::from_str(&pk).unwrap();
        assert_eq!(
            pk,
            serde_json::json!({"day": "2026-11-21", "clinic": "North"})
        );
        apply(&mut c, &uninstall(Dialect::Postgres, &[t]))
            .await
            .unwrap();
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }

    /// A read from a backlog in a capture table that was never analyzed looks at about
    /// its limit of rows. (The planner, taking `tbl IN (…)` to match 0.5 % of rows
    /// without statistics, read and sorted every row above the cursor on each of the
    /// first reads: 20,000 rows for 2,048 here.)
    #[test]
    fn a_read_walks_the_index_of_a_capture_table_without_statistics() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let schema = format!("lockstep_pg_walk_{}", std::process::id());
        let backlog = 20_000;
        rt.block_on(async {
            let mut c = connect(&PgConn::parse(CONN).unwrap()).await.unwrap();
            c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
                 SET search_path = {schema};
                 CREATE TABLE visits (id int PRIMARY KEY, n int);"
            ))
            .await
            .unwrap();
            let t = table_def(&c, "visits").await.unwrap();
            apply(&mut c, &install(Dialect::Postgres, &[t], Capture::Rows))
                .await
                .unwrap();
            // Autovacuum (off on the test machine, on by default) must not analyze it.
            c.batch_execute(&format!(
                "ALTER TABLE lockstep_changes SET (autovacuum_enabled = false);
                 INSERT INTO visits SELECT g, 0 FROM generate_series(1, {backlog}) g;"
            ))
            .await
            .unwrap();
        });
        let conn = PgConn::parse(&format!("{CONN} options='-c search_path={schema}'")).unwrap();
        let mut cap = PgCapture::open(
            rt.handle(),
            &conn,
            "walk",
            &["visits".into()],
            crossbeam_channel::bounded(1).0,
        )
        .unwrap();
        let limit = 2048;
        let mut rows = Vec::new();
        let full = cap.read(0, &HashSet::new(), limit, &mut rows).unwrap();
        assert!(full, "more rows wait");
        assert_eq!(rows.len(), limit);
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
        assert_eq!(rows[0].seq, 1, "from the start");
        drop(cap);
        // The rows the read looked at, by sequential or index scan, once its backend has
        // reported them.
        let read = rt.block_on(async {
            let c = connect(&PgConn::parse(CONN).unwrap()).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let n: i64 = c
                    .query_one(
                        "SELECT coalesce(sum(seq_tup_read + idx_tup_fetch), 0)::int8 FROM pg_stat_user_tables \
                         WHERE schemaname = $1 AND relname = 'lockstep_changes'",
                        &[&schema],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n >= limit as i64 || std::time::Instant::now() > deadline {
                    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                        .await
                        .unwrap();
                    break n;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert!(
            (limit as i64..2 * limit as i64).contains(&read),
            "a read of {limit} rows looked at {read} rows of a backlog of {backlog}"
        );
    }
}
