//! Scenario `poll`: polling with row hashing on a live database through its ODBC driver.
//!
//! A table of N rows (id, three text columns, a timestamp, a decimal). lockstep polls
//! it with `initial = "skip"`: the first scan only records the table. Then 1% of the
//! rows are updated, and the next scan finds them and sends them.
//!
//! - **Scan-and-diff rate**: rows / the duration of the scan that found the changes
//!   (reading, hashing, spilling, and comparing with the previous scan), from the
//!   agent's `/status`.
//! - **Raw limit**: a plain odbc-api bulk (columnar, text buffers) fetch loop over the
//!   same columns, through the same driver with the same streaming options, in the same
//!   run, right before the agent starts.
//! - **Peak RSS**: lockstep's VmHWM over the whole run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use odbc_api::buffers::TextRowSet;
use odbc_api::{ConnectionOptions, Cursor};

use super::trigger::{admin, run_sql, Db};
use super::{free_port, lockstep_bin, vm_hwm_kib, NatsServer};

/// Rows per fetch, as lockstep's own fetch.
const FETCH_ROWS: usize = 2048;

pub async fn poll(db_name: &str, n: u64) -> Result<()> {
    let db = match db_name {
        "postgres" => Db::Postgres,
        "mariadb" => Db::MariaDb,
        other => bail!("--db takes postgres or mariadb, not `{other}`"),
    };
    let tmp = tempfile::tempdir()?;
    let nats = NatsServer::start(tmp.path())?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let name = format!("lockstep_bench_{}", std::process::id());
    println!(
        "scenario poll on {db_name}: {n} rows, 1% changed between two scans, nats-server {}, 2 cores",
        nats.version
    );
    let (create, odbc) = match db {
        Db::Postgres => {
            admin(
                db,
                &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
            )?;
            (
                format!(
                    "CREATE TABLE permits (id bigint PRIMARY KEY, holder varchar(40), stat varchar(12), note varchar(80), changed timestamp, fee numeric(12,2));
                     INSERT INTO permits SELECT g, 'HOLDER-' || (g::bigint * 7919 % 1000003), 'OPEN', 'permit for lot ' || g || ', street frontage', timestamp '2026-01-01' + g * interval '1 second', (g % 100000) / 100.0 FROM generate_series(1, {n}) g;
                     VACUUM ANALYZE permits;"
                ),
                format!("DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;ConnSettings=SET search_path TO {name}"),
            )
        }
        Db::MariaDb => {
            admin(
                db,
                &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"),
            )?;
            (
                format!(
                    "CREATE TABLE permits (id bigint PRIMARY KEY, holder varchar(40), stat varchar(12), note varchar(80), changed datetime, fee decimal(12,2)) ENGINE=InnoDB;
                     INSERT INTO permits SELECT seq, concat('HOLDER-', seq * 7919 % 1000003), 'OPEN', concat('permit for lot ', seq, ', street frontage'), '2026-01-01' + INTERVAL seq SECOND, (seq % 100000) / 100.0 FROM seq_1_to_{n};"
                ),
                format!("DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;PORT=3306;DATABASE={name};USER=root"),
            )
        }
    };
    let result = run(db, &name, &create, &odbc, n, tmp.path(), &url).await;
    let _ = match db {
        Db::Postgres => admin(db, &format!("DROP SCHEMA IF EXISTS {name} CASCADE")),
        Db::MariaDb => admin(db, &format!("DROP DATABASE IF EXISTS {name}")),
    };
    drop(nats);
    result
}

/// The options lockstep adds to stream a result set (see `source::poll::scan`).
fn streaming(db: Db, odbc: &str) -> String {
    match db {
        Db::Postgres => format!(
            "{odbc};UseDeclareFetch=1;Fetch={FETCH_ROWS};BoolsAsChar=0;MaxVarcharSize=65536;MaxLongVarcharSize=65536"
        ),
        Db::MariaDb => format!("{odbc};NO_CACHE=1"),
    }
}

/// A plain odbc-api bulk fetch of every row: rows, seconds.
fn raw_fetch(conn: &str, sql: &str) -> Result<(u64, f64)> {
    let env = odbc_api::environment()?;
    let c =
        env.connect_with_connection_string(&format!("{conn}\0"), ConnectionOptions::default())?;
    let t = Instant::now();
    let mut cursor = c.execute(sql, (), None)?.context("a result set")?;
    let buf = TextRowSet::for_cursor(FETCH_ROWS, &mut cursor, Some(65536))?;
    let mut block = cursor.bind_buffer(buf)?;
    let mut rows = 0u64;
    let mut bytes = 0usize;
    while let Some(batch) = block.fetch()? {
        rows += batch.num_rows() as u64;
        // Touch every value, as any consumer of the rows would.
        for col in 0..batch.num_cols() {
            for r in 0..batch.num_rows() {
                bytes += batch.at(col, r).map_or(0, <[u8]>::len);
            }
        }
    }
    std::hint::black_box(bytes);
    Ok((rows, t.elapsed().as_secs_f64()))
}

async fn run(
    db: Db,
    name: &str,
    create: &str,
    odbc: &str,
    n: u64,
    dir: &std::path::Path,
    url: &str,
) -> Result<()> {
    let t = Instant::now();
    run_sql(db, name, create)?;
    println!("  table filled in {:.1} s", t.elapsed().as_secs_f64());
    let changed = n / 100;

    // The raw limit, twice (the first warms the database's cache); the better counts.
    let sql = "SELECT id, holder, stat, note, changed, fee FROM permits";
    let conn = streaming(db, odbc);
    let mut raw_rate = 0f64;
    for _ in 0..2 {
        let (rows, secs) = raw_fetch(&conn, sql)?;
        if rows != n {
            bail!("the raw fetch read {rows} rows of {n}");
        }
        raw_rate = raw_rate.max(rows as f64 / secs);
    }

    let admin_addr = format!("127.0.0.1:{}", free_port()?);
    let cfg = dir.join("lockstep.toml");
    // Scans start `interval` apart, or back to back when a scan takes longer.
    let interval = (n / 200_000).max(2);
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"LS\"\nsubject_prefix = \"ls\"\ncreate_stream = true\n\n[admin]\nlisten = \"{admin_addr}\"\n\n[[source]]\nname = \"permits\"\nkind = \"poll\"\nodbc = \"{odbc}\"\ntable = \"permits\"\ninitial = \"skip\"\ninterval = \"{interval}s\"\n",
            dir.join("state").display()
        ),
    )?;
    let bin = lockstep_bin()?;
    let mut agent = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = agent.id();
    let mut peak = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let watch = |agent: &mut std::process::Child, peak: &mut u64| -> Result<()> {
        *peak = (*peak).max(vm_hwm_kib(pid).unwrap_or(0));
        if let Some(s) = agent.try_wait()? {
            bail!("lockstep exited early: {s}");
        }
        if Instant::now() > deadline {
            bail!("the benchmark took over an hour");
        }
        Ok(())
    };

    // The first scan: the baseline.
    let first = loop {
        watch(&mut agent, &mut peak)?;
        if let Some(s) = crate::source_status(&admin_addr, "permits") {
            if s["last_scan"]["rows"].as_u64() == Some(n) && s["sending"].is_null() {
                break s["last_scan"].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // 1% of the rows change.
    let t = Instant::now();
    run_sql(
        db,
        name,
        "UPDATE permits SET stat = 'CHANGED', changed = changed + INTERVAL '1' DAY WHERE id % 100 = 0;",
    )?;
    let committed = Instant::now();
    println!(
        "  {changed} rows updated in {:.1} s",
        (committed - t).as_secs_f64()
    );
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let found = loop {
        watch(&mut agent, &mut peak)?;
        if let Some(s) = crate::source_status(&admin_addr, "permits") {
            if s["last_scan"]["updated"].as_u64() == Some(changed) {
                break s["last_scan"].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        watch(&mut agent, &mut peak)?;
        let got = match js.get_stream("LS").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if got >= changed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = committed.elapsed().as_secs_f64();
    // A few more scans with nothing changed, for the steady-state RSS.
    for _ in 0..2 {
        let before = crate::source_status(&admin_addr, "permits")
            .map(|s| s["last_scan"]["finished_ms"].clone());
        loop {
            watch(&mut agent, &mut peak)?;
            let now = crate::source_status(&admin_addr, "permits")
                .map(|s| s["last_scan"]["finished_ms"].clone());
            if now != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    watch(&mut agent, &mut peak)?;
    let _ = agent.kill();
    let _ = agent.wait();

    let first_secs = first["seconds"].as_f64().unwrap_or(0.0);
    let secs = found["seconds"].as_f64().unwrap_or(0.0);
    let rate = n as f64 / secs;
    println!("  raw odbc-api bulk fetch (text buffers, {FETCH_ROWS} rows/fetch): {raw_rate:>10.0} rows/s");
    println!(
        "  lockstep first scan (baseline, nothing sent):   {:>10.0} rows/s  ({first_secs:.2} s)",
        n as f64 / first_secs
    );
    println!(
        "  lockstep scan-and-diff, {changed} updates found: {rate:>10.0} rows/s  ({secs:.2} s)"
    );
    println!(
        "  ratio scan-and-diff / raw fetch: {:.2}   (goal >= 0.80)",
        rate / raw_rate
    );
    println!("  update commit -> {changed} events in the stream: {delivered:.2} s (includes the wait for the next scan)");
    println!(
        "  lockstep peak RSS: {:.1} MiB   (goal <= 64 MiB)",
        peak as f64 / 1024.0
    );
    Ok(())
}
