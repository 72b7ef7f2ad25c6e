//! The capture table's `seq` started again under the same identity (SQLite's tables
//! made anew by `triggers uninstall` + `install`, PostgreSQL's `TRUNCATE … RESTART
//! IDENTITY`) while events of the old rows await their acks. The acks arrive after the
//! new rows were written: they must delete nothing of the new table, whose rows reuse
//! the old `seq`s, and the new rows must be read and sent.
//!
//! Real databases (SQLite and MariaDB over their ODBC drivers, PostgreSQL); the sink is the source's
//! channel, read here, and the acks are the watermark, advanced here when the test
//! says: the one moment that matters (the reset between the send and the ack) happens
//! every time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::test_rig::{self, table_t, Rig, Setup};
use super::*;
use crate::source::trigger::ddl::{drop_capture_table, install, uninstall};
use crate::source::trigger::{odbc, postgres};

/// The database side of a test: runs SQL, counts the capture rows, resets `seq`.
trait Side {
    fn sql(&mut self, sql: &str);
    fn capture_rows(&mut self) -> i64;
    fn reset(&mut self);
}

/// The events handed to the sink so far: (message id, payload).
fn received(rx: &mut mpsc::Receiver<Batch>, into: &mut Vec<(String, String)>) {
    while let Ok(b) = rx.try_recv() {
        for m in b.msgs {
            into.push((m.msg_id, String::from_utf8_lossy(&m.payload).into_owned()));
        }
    }
}

fn ids_of(events: &[(String, String)], note: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(_, p)| p.contains(note))
        .map(|(id, _)| id.clone())
        .collect()
}

/// A drain of table `t` (`capture = "rows"`) connected by `connect`.
fn rig(connect: Connect) -> Rig {
    test_rig::rig(
        Setup {
            channel: 64,
            capture: Capture::Rows,
            interval: Duration::from_millis(20),
            schema_check: Duration::from_secs(600),
        },
        connect,
    )
}

/// Five changes read and sent; `seq` reset and five other changes written (the same
/// `seq`s 1..5) while the connection is down; then the acks of the first five.
fn stale_acks_delete_nothing_of_the_new_rows(connect: Connect, side: &mut dyn Side) {
    let Rig {
        mut drain,
        mut rx,
        watermark,
        _keep,
    } = rig(connect);
    let mut events = Vec::new();

    side.sql("INSERT INTO t VALUES (1, 'old'), (2, 'old'), (3, 'old'), (4, 'old'), (5, 'old')");
    drain.open();
    let epoch = drain.epoch.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.len() < 5 && Instant::now() < deadline {
        assert!(drain.step().is_ok(), "{:?}", drain.last_error);
        received(&mut rx, &mut events);
    }
    assert_eq!(ids_of(&events, "old").len(), 5, "{events:?}");

    // The connection fails; meanwhile `seq` starts again and five other changes are
    // written as seqs 1..5.
    drain.db = None;
    side.reset();
    side.sql(
        "INSERT INTO t VALUES (11, 'new'), (12, 'new'), (13, 'new'), (14, 'new'), (15, 'new')",
    );
    assert_eq!(side.capture_rows(), 5);
    drain.open();
    assert!(drain.db.is_some(), "{:?}", drain.last_error);
    assert_eq!(drain.epoch, epoch, "the capture table keeps its identity");

    // Now the first five events are acknowledged.
    watermark.advance(5);
    drain.apply_acks();
    drain.delete_acked().unwrap();
    assert_eq!(
        side.capture_rows(),
        5,
        "the acks of the old rows deleted new rows that reuse their seqs, never read"
    );

    // The new rows are read (late, below the cursor) and sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids_of(&events, "new").len() < 5 && Instant::now() < deadline {
        assert!(drain.step().is_ok(), "{:?}", drain.last_error);
        received(&mut rx, &mut events);
    }
    let new = ids_of(&events, "new");
    assert_eq!(
        new.len(),
        5,
        "the new changes were not all sent: {events:?}"
    );
    for id in 11..=15 {
        assert_eq!(
            events
                .iter()
                .filter(|(_, p)| p.contains(&format!("\"id\":{id}")))
                .count(),
            1,
            "key {id} in {events:?}"
        );
    }
    let ids: HashSet<&String> = events.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 10, "message ids repeat: {events:?}");

    // Their acks delete them.
    watermark.advance(10);
    drain.apply_acks();
    drain.delete_acked().unwrap();
    assert_eq!(side.capture_rows(), 0);
}

/// A database over its ODBC driver: SQLite or MariaDB.
struct Odbc {
    conn: odbc_api::Connection<'static>,
    dialect: Dialect,
}

impl Side for Odbc {
    fn sql(&mut self, sql: &str) {
        self.conn.execute(sql, (), None).unwrap();
    }
    fn capture_rows(&mut self) -> i64 {
        odbc::query(&self.conn, "SELECT count(*) FROM lockstep_changes", "count").unwrap()[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    }
    fn reset(&mut self) {
        if self.dialect == Dialect::Sqlite {
            // `lockstep triggers uninstall`, then `install`: the capture table made anew.
            // No triggers left: the capture table is dropped with its unsent rows.
            odbc::apply(&self.conn, &uninstall(Dialect::Sqlite, &[table_t()])).unwrap();
            odbc::apply(&self.conn, &drop_capture_table(Dialect::Sqlite)).unwrap();
            odbc::apply(
                &self.conn,
                &install(Dialect::Sqlite, &[table_t()], Capture::Rows),
            )
            .unwrap();
        } else {
            // AUTO_INCREMENT starts again; the table keeps its creation time (its identity).
            self.sql("TRUNCATE TABLE lockstep_changes");
        }
    }
}

/// The database of `conn` with table `t` made by `create` and its capture installed;
/// and the drain's way to connect to it.
fn odbc_side(conn: String, dialect: Dialect, create: &str) -> (Odbc, Connect) {
    let mut side = Odbc {
        conn: odbc::connect(&conn).unwrap(),
        dialect,
    };
    side.sql(create);
    odbc::apply(&side.conn, &install(dialect, &[table_t()], Capture::Rows)).unwrap();
    let connect: Connect = Box::new(move || {
        odbc::OdbcCapture::open(&conn, None, "vista", &["t".into()])
            .map(|c| Box::new(c) as Box<dyn CaptureDb>)
    });
    (side, connect)
}

/// A SQLite database in `dir`, as [`odbc_side`] makes it.
fn sqlite_side(dir: &tempfile::TempDir) -> (Odbc, Connect) {
    let conn = format!(
        "DRIVER={{SQLite3}};Database={}",
        dir.path().join("db").display()
    );
    odbc_side(
        conn,
        Dialect::Sqlite,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)",
    )
}

#[test]
fn sqlite_odbc_reinstall_before_the_acks_deletes_no_new_row() {
    let dir = tempfile::tempdir().unwrap();
    let (mut side, connect) = sqlite_side(&dir);
    stale_acks_delete_nothing_of_the_new_rows(connect, &mut side);
}

struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Side for Pg {
    fn sql(&mut self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap();
    }
    fn capture_rows(&mut self) -> i64 {
        self.rt
            .block_on(
                self.client
                    .query_one("SELECT count(*) FROM lockstep_changes", &[]),
            )
            .unwrap()
            .get(0)
    }
    fn reset(&mut self) {
        self.sql("TRUNCATE lockstep_changes RESTART IDENTITY");
    }
}

#[test]
fn postgres_truncate_restart_identity_before_the_acks_deletes_no_new_row() {
    let schema = format!("lockstep_reset_{}", std::process::id());
    let conn =
        format!("host=127.0.0.1 user=postgres dbname=test options='-c search_path={schema}'");
    let pg = crate::db::postgres::PgConn::parse(&conn).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt.block_on(postgres::connect(&pg)).unwrap();
    rt.block_on(client.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE t (id int PRIMARY KEY, note text);"
    )))
    .unwrap();
    rt.block_on(postgres::apply(
        &mut client,
        &install(Dialect::Postgres, &[table_t()], Capture::Rows),
    ))
    .unwrap();
    let mut side = Pg { rt, client };
    let handle = side.rt.handle().clone();
    let connect: Connect = Box::new(move || {
        postgres::PgCapture::open(
            &handle,
            &pg,
            "vista",
            &["t".into()],
            crossbeam_channel::bounded(1).0,
        )
        .map(|c| Box::new(c) as Box<dyn CaptureDb>)
    });
    stale_acks_delete_nothing_of_the_new_rows(connect, &mut side);
    side.sql(&format!("DROP SCHEMA {schema} CASCADE"));
}

/// A `Write` into a shared buffer: what the drain logs.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A capture row's time is read to the millisecond (SQLite's `julianday` puts half of
/// them a hair under: truncated, `.000` was read as 999 ms of the second before).
/// Capture rows whose `changed_at` is not a date-time: sent with ids without `@<ms>`,
/// said once in the log, and deleted (by `seq`) once acknowledged.
#[test]
fn sqlite_odbc_times_are_read_to_the_ms_and_a_row_without_one_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut side, connect) = sqlite_side(&dir);
    for (id, note, at) in [
        (1, "timed", "2026-11-29T10:00:00.000Z"),
        (2, "untimed", "yesterday"),
        (3, "untimed", "yesterday"),
    ] {
        side.sql(&format!(
            "INSERT INTO lockstep_changes (tbl, op, pk, after, changed_at) VALUES \
             ('t', 'c', '{{\"id\": {id}}}', '{{\"id\": {id}, \"note\": \"{note}\"}}', '{at}')"
        ));
    }
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let Rig {
        mut drain,
        mut rx,
        watermark,
        _keep,
    } = rig(connect);
    let mut events = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        drain.open();
        let deadline = Instant::now() + Duration::from_secs(20);
        while events.len() < 3 && Instant::now() < deadline {
            assert!(drain.step().is_ok(), "{:?}", drain.last_error);
            received(&mut rx, &mut events);
        }
    });
    let mut ids = ids_of(&events, "untimed");
    ids.sort();
    assert_eq!(ids, ["a:vista:sqlite.2", "a:vista:sqlite.3"], "{events:?}");
    let timed = ids_of(&events, "\"timed\"");
    assert_eq!(timed, ["a:vista:sqlite.1@1795946400000"], "{events:?}");
    let log = String::from_utf8_lossy(&logged.0.lock().unwrap()).into_owned();
    assert_eq!(
        log.matches("has no time the drain can read").count(),
        1,
        "{log}"
    );
    assert!(log.contains("WARN") && log.contains("seq 2"), "{log}");
    watermark.advance(3);
    drain.apply_acks();
    drain.delete_acked().unwrap();
    assert_eq!(side.capture_rows(), 0);
}

#[test]
fn mariadb_odbc_truncate_before_the_acks_deletes_no_new_row() {
    let name = format!("lockstep_reset_{}", std::process::id());
    let server = "DRIVER={MariaDB Unicode};SERVER=127.0.0.1;PORT=3306;USER=root;CHARSET=utf8mb4";
    let admin = odbc::connect(server).unwrap();
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {name}"), (), None)
        .unwrap();
    admin
        .execute(&format!("CREATE DATABASE {name}"), (), None)
        .unwrap();
    let (mut side, connect) = odbc_side(
        format!("{server};DATABASE={name}"),
        Dialect::MariaDb,
        "CREATE TABLE t (id INT PRIMARY KEY, note TEXT)",
    );
    stale_acks_delete_nothing_of_the_new_rows(connect, &mut side);
    admin
        .execute(&format!("DROP DATABASE {name}"), (), None)
        .unwrap();
}
