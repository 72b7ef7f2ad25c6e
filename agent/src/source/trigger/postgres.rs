//! PostgreSQL, natively (tokio-postgres): connecting, reading table definitions from the
//! catalog, and applying capture DDL in one transaction.

use thiserror::Error;
use tokio_postgres::{Client, NoTls};

use super::ddl::{Statement, TableDef};

#[derive(Debug, Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL: {}", describe(.0))]
    Connect(tokio_postgres::Error),
    #[error("PostgreSQL table `{0}` does not exist (or is not visible with the connection's search_path)")]
    NoTable(String),
    #[error(
        "PostgreSQL table `{0}` has no primary key: trigger capture needs one to name each changed row \
         (add a primary key, or capture this table with kind = \"poll\" and a configured `key`)"
    )]
    NoKey(String),
    #[error("PostgreSQL: {what}: {}", describe(.source))]
    Query {
        what: String,
        source: tokio_postgres::Error,
    },
}

/// The server's own message when there is one (tokio-postgres prints only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str("; ");
                s.push_str(d);
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s
        }
        None => e.to_string(),
    }
}

/// Connects; the connection runs on a task of its own until the client is dropped.
pub async fn connect(conn: &str) -> Result<Client, PgError> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls)
        .await
        .map_err(PgError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
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
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(q("read the columns"))?
        .iter()
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
    })
}

/// Whether lockstep's capture trigger is on `table`.
pub async fn has_capture_trigger(client: &Client, table: &str) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = 'lockstep_capture'",
            &[&table],
        )
        .await
        .map_err(|source| PgError::Query {
            what: format!("look for the trigger on `{table}`"),
            source,
        })?;
    Ok(row.get::<_, i64>(0) > 0)
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

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or(sql)
}

#[cfg(test)]
mod tests {
    use super::super::ddl::{install, uninstall, Capture, Dialect};
    use super::*;

    const CONN: &str = "host=127.0.0.1 user=postgres dbname=test";

    #[tokio::test]
    async fn reads_definitions_and_installs_in_a_transaction() {
        let mut c = connect(CONN).await.unwrap();
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
}
