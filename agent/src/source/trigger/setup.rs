//! One connection for the commands that look at or change a trigger source's database
//! (`lockstep triggers`, `lockstep check`), PostgreSQL or ODBC alike.

use super::ddl::{Dialect, Statement, TableDef, CAPTURE_TABLE};
use super::drift::{self, Installed};
use super::{odbc, postgres};
use crate::config::{TriggerConfig, TriggerDb};

pub enum SetupDb {
    Postgres(tokio_postgres::Client),
    Odbc(odbc_api::Connection<'static>, Dialect),
}

impl SetupDb {
    /// Connects; the error is worded for the operator.
    pub async fn open(t: &TriggerConfig) -> Result<SetupDb, String> {
        match &t.db {
            TriggerDb::Postgres(conn) => postgres::connect(conn)
                .await
                .map(SetupDb::Postgres)
                .map_err(|e| e.to_string()),
            TriggerDb::Odbc(conn) => {
                let c = odbc::connect(conn.expose()).map_err(|e| e.message)?;
                let d = odbc::dialect(&c, t.dialect).map_err(|e| e.message)?;
                Ok(SetupDb::Odbc(c, d))
            }
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            SetupDb::Postgres(_) => Dialect::Postgres,
            SetupDb::Odbc(_, d) => *d,
        }
    }

    /// `postgres` or `odbc (<dialect>)`, for reports.
    pub fn describe(&self) -> String {
        match self {
            SetupDb::Postgres(_) => "postgres".into(),
            SetupDb::Odbc(_, d) => format!("odbc ({})", d.name()),
        }
    }

    /// For PostgreSQL: whether the connection is encrypted, from the server's own
    /// `pg_stat_ssl` (`TLSv1.3` or `None` for plaintext); `Ok(None)` for ODBC too.
    pub async fn tls_version(&self) -> Result<Option<String>, String> {
        match self {
            SetupDb::Postgres(c) => c
                .query_opt(
                    "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                    &[],
                )
                .await
                .map(|r| r.map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()))
                .map_err(|e| format!("PostgreSQL: read pg_stat_ssl: {}", postgres::describe(&e))),
            SetupDb::Odbc(..) => Ok(None),
        }
    }

    pub async fn table_def(&self, table: &str) -> Result<TableDef, String> {
        match self {
            SetupDb::Postgres(c) => postgres::table_def(c, table)
                .await
                .map_err(|e| e.to_string()),
            SetupDb::Odbc(c, _) => odbc::table_def(c, table).map_err(|e| e.message),
        }
    }

    /// What lockstep's triggers on `table` record (`Some(None)`: it has none); `None`
    /// where this dialect is not checked.
    pub async fn installed(&self, table: &str) -> Result<Option<Option<Installed>>, String> {
        if !drift::checked(self.dialect()) {
            return Ok(None);
        }
        match self {
            SetupDb::Postgres(c) => postgres::installed(c, table)
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
            SetupDb::Odbc(c, d) => {
                let Some(sql) = drift::triggers_sql(*d, table) else {
                    return Ok(None);
                };
                let what = format!("read the capture triggers of `{table}`");
                let rows = odbc::query(c, &sql, &what).map_err(|e| e.message)?;
                Ok(Some(drift::from_trigger_rows(*d, &rows)))
            }
        }
    }

    /// The number a `SELECT count(*) …` returns.
    pub async fn count(&self, sql: &str, what: &str) -> Result<u64, String> {
        match self {
            SetupDb::Postgres(c) => c
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0).max(0) as u64)
                .map_err(|e| format!("PostgreSQL: {what}: {}", postgres::describe(&e))),
            SetupDb::Odbc(c, _) => {
                let rows = odbc::query(c, sql, what).map_err(|e| e.message)?;
                let n = rows.first().and_then(|r| r.first().cloned().flatten());
                n.and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| format!("ODBC: {what}: `{sql}` returned no number"))
            }
        }
    }

    /// The rows waiting in the capture table, per `tbl` (as the triggers wrote it).
    pub async fn waiting_per_table(&self) -> Result<Vec<(String, u64)>, String> {
        let what = "count the rows of the capture table";
        let sql = format!(
            "SELECT {tbl}, count(*) FROM {} GROUP BY {tbl} ORDER BY {tbl}",
            self.dialect().ident(CAPTURE_TABLE),
            tbl = self.dialect().ident("tbl"),
        );
        match self {
            SetupDb::Postgres(c) => c
                .query(&sql, &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                        .collect()
                })
                .map_err(|e| format!("PostgreSQL: {what}: {}", postgres::describe(&e))),
            SetupDb::Odbc(c, _) => Ok(odbc::query(c, &sql, what)
                .map_err(|e| e.message)?
                .into_iter()
                .filter_map(|r| {
                    let mut r = r.into_iter();
                    let tbl = r.next().flatten()?;
                    let n = r.next().flatten()?.trim().parse().ok()?;
                    Some((tbl, n))
                })
                .collect()),
        }
    }

    /// Runs `stmts`: in one transaction where the database has transactional DDL.
    pub async fn apply(&mut self, stmts: &[Statement]) -> Result<(), String> {
        match self {
            SetupDb::Postgres(c) => postgres::apply(c, stmts).await.map_err(|e| e.to_string()),
            SetupDb::Odbc(c, Dialect::Sqlite) => sqlite_apply(c, stmts),
            SetupDb::Odbc(c, _) => odbc::apply(c, stmts).map_err(|e| e.message),
        }
    }
}

/// SQLite: `stmts` in one `BEGIN IMMEDIATE` transaction. It takes the write lock first
/// (waiting for writers, as the busy timeout allows): a deferred transaction that read
/// the schema first would fail at once with "database is locked" when a writer commits
/// in between, since it cannot be upgraded to a writer then.
fn sqlite_apply(c: &odbc_api::Connection<'static>, stmts: &[Statement]) -> Result<(), String> {
    let run = |sql: &str| {
        let first = sql.lines().next().unwrap_or_default();
        c.execute(sql, (), None)
            .map(|_| ())
            .map_err(|e| format!("ODBC: run `{first}`: {e}"))
    };
    run("BEGIN IMMEDIATE")?;
    match stmts.iter().try_for_each(|s| run(&s.sql)) {
        Ok(()) => run("COMMIT"),
        Err(e) => {
            let _ = run("ROLLBACK");
            Err(e)
        }
    }
}

/// The first string literal after `VALUES (` in a trigger's body: the table name its
/// INSERT into the capture table writes.
pub(crate) fn first_value(body: &str) -> Option<String> {
    let rest = &body[body.find("VALUES (")? + "VALUES (".len()..];
    let mut chars = rest.strip_prefix('\'')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
            } else {
                return Some(out);
            }
        }
        out.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_name_a_trigger_writes() {
        let body = "INSERT INTO `lockstep_changes` (`tbl`, `op`) VALUES ('O''Brien.t', 'c')";
        assert_eq!(super::first_value(body).as_deref(), Some("O'Brien.t"));
        assert_eq!(super::first_value("BEGIN END"), None);
    }
}
