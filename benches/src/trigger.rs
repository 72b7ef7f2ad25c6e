//! Scenario `trigger`: trigger capture on a live database.
//!
//! 1. **Drain throughput.** N single-row UPDATEs (each its own transaction) from 4
//!    concurrent clients fill `lockstep_changes` (`capture = "rows"`: one event per
//!    update) while the agent is stopped; then lockstep starts and drains the backlog
//!    into JetStream. Events/s until the stream holds N, beside the raw pipelined publish
//!    rate of envelopes of the same size measured on the same server right after.
//! 2. **Latency.** With the agent running, one client issues UPDATEs at a steady
//!    1,000/s for 10 s; a core NATS subscriber on the subject notes when each change
//!    reaches the broker. Latency = arrival − the moment the statement was handed to the
//!    client (so it includes the statement and its commit): p50/p99/max after a 1 s
//!    warm-up.
//! 3. **Snapshot.** 200,000 more rows, written by a session with lockstep's origin
//!    marker (so the drain does not publish them); then `lockstep snapshot` of the
//!    table while the agent runs, timed from request to done, beside the raw rate of
//!    fetching the same rows as JSON through the database's own client and the raw
//!    publish rate.
//!
//! PostgreSQL is read natively (woken by NOTIFY); MariaDB over ODBC, polled every 200 ms.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;

use super::{cpu, cpu_secs, lockstep_bin, raw_publish, vm_hwm_kib, wait_stream, NatsServer};

const ROWS: u64 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Postgres,
    MariaDb,
}

pub fn client(db: Db, name: &str) -> Command {
    match db {
        Db::Postgres => {
            let mut c = Command::new("psql");
            c.env("PGSSLMODE", "disable");
            c.args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-X",
                "-q",
                "-A",
                "-t",
            ])
            .args(["-v", "ON_ERROR_STOP=1"])
            .env("PGOPTIONS", format!("-c search_path={name}"));
            c
        }
        Db::MariaDb => {
            let mut c = Command::new("mariadb");
            c.args(["-h", "127.0.0.1", "-u", "root", "-N", "-B", "-D", name]);
            c
        }
    }
}

pub fn run_sql(db: Db, name: &str, sql: &str) -> Result<String> {
    let mut child = client(db, name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the database client")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(sql.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

pub fn admin(db: Db, sql: &str) -> Result<()> {
    let o = match db {
        Db::Postgres => Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-X",
                "-q",
                "-c",
                sql,
            ])
            .output()?,
        Db::MariaDb => Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "-e", sql])
            .output()?,
    };
    if !o.status.success() {
        bail!("{sql}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn update(i: u64) -> String {
    format!(
        "UPDATE appointments SET n = {i}, status = 'S{}' WHERE id = {};\n",
        i % 7,
        i % ROWS + 1
    )
}

pub async fn trigger(db_name: &str, n: u64) -> Result<()> {
    let db = match db_name {
        "postgres" => Db::Postgres,
        "mariadb" => Db::MariaDb,
        other => bail!("--db takes postgres or mariadb, not `{other}`"),
    };
    let tmp = tempfile::tempdir()?;
    let nats = NatsServer::start(tmp.path())?;
    let name = format!("lockstep_bench_{}", std::process::id());
    println!(
        "scenario trigger on {db_name}: {n} single-row updates, nats-server {} (JetStream, file storage), 2 cores",
        nats.version
    );
    let (create, conn, interval) = match db {
        Db::Postgres => {
            admin(
                db,
                &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
            )?;
            (
                format!(
                    "CREATE TABLE appointments (id int PRIMARY KEY, clinic text, status text, fee numeric(12,2), at timestamptz, n bigint);
                     INSERT INTO appointments SELECT g, 'CARDIOLOGY-' || g % 12, 'NEW', 50 + g % 400, '2026-11-21 10:00+00', 0 FROM generate_series(1, {ROWS}) g;"
                ),
                // Plaintext, as the figures before TLS support were taken and as the database's
                // own client (psql, PGSSLMODE below) reads: the bench measures capture, not TLS.
                format!("postgres = \"host=127.0.0.1 user=postgres dbname=test sslmode=disable options='-c search_path={name}'\""),
                "500ms",
            )
        }
        Db::MariaDb => {
            admin(
                db,
                &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"),
            )?;
            let mut rows = String::new();
            for g in 1..=ROWS {
                if g > 1 {
                    rows.push(',');
                }
                rows.push_str(&format!(
                    "({g}, 'CARDIOLOGY-{}', 'NEW', {}, '2026-11-21 10:00:00', 0)",
                    g % 12,
                    50 + g % 400
                ));
            }
            (
                format!(
                    "CREATE TABLE appointments (id int PRIMARY KEY, clinic text, status text, fee decimal(12,2), at datetime(6), n bigint) ENGINE=InnoDB;
                     INSERT INTO appointments VALUES {rows};"
                ),
                format!("odbc = \"DRIVER={{MariaDB Unicode}};SERVER=127.0.0.1;PORT=3306;DATABASE={name};USER=root\""),
                "200ms",
            )
        }
    };
    let result = run(db, &name, &create, &conn, interval, n, tmp.path(), &nats).await;
    let _ = match db {
        Db::Postgres => admin(db, &format!("DROP SCHEMA IF EXISTS {name} CASCADE")),
        Db::MariaDb => admin(db, &format!("DROP DATABASE IF EXISTS {name}")),
    };
    drop(nats);
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    db: Db,
    name: &str,
    create: &str,
    conn: &str,
    interval: &str,
    n: u64,
    dir: &Path,
    nats: &NatsServer,
) -> Result<()> {
    let url = &format!("nats://127.0.0.1:{}", nats.port);
    run_sql(db, name, create)?;
    let cfg = dir.join("lockstep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"LS\"\nsubject_prefix = \"ls\"\ncreate_stream = true\n\n[admin]\nlisten = \"\"\n\n[[source]]\nname = \"vista\"\nkind = \"trigger\"\n{conn}\ntables = [\"appointments\"]\ncapture = \"rows\"\ninterval = \"{interval}\"\n",
            dir.join("state").display()
        ),
    )?;
    let bin = lockstep_bin()?;
    let o = Command::new(&bin)
        .args(["triggers", "install", "--config"])
        .arg(&cfg)
        .output()?;
    if !o.status.success() {
        bail!("triggers install: {}", String::from_utf8_lossy(&o.stderr));
    }

    // 1. The backlog: N updates from 4 clients, each statement its own transaction.
    let t = Instant::now();
    let writers: Vec<std::thread::JoinHandle<Result<String>>> = (0..4u64)
        .map(|w| {
            let name = name.to_owned();
            std::thread::spawn(move || {
                // The backlog's commits need not wait for the WAL flush: the write rate
                // is not the figure, and on a busy disk it took most of the run.
                let mut sql = match db {
                    Db::Postgres => "SET synchronous_commit = off;\n".to_owned(),
                    Db::MariaDb => String::new(),
                };
                for i in (0..n).filter(|i| i % 4 == w) {
                    sql.push_str(&update(i));
                }
                run_sql(db, &name, &sql)
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread")?;
    }
    let write_secs = t.elapsed().as_secs_f64();
    println!(
        "  database: {n} single-row update transactions from 4 clients in {write_secs:.1} s ({:.0}/s{})",
        n as f64 / write_secs,
        if db == Db::Postgres {
            ", synchronous_commit off"
        } else {
            ""
        }
    );

    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    // Where the machine's CPU goes: the agent, the broker and the database share it.
    // Each is a process tree measured before and after (see `cpu`): the database's
    // backends that end meanwhile keep their time in the server's figure.
    let nats_pid = nats.child.id();
    let server = server_process(db, name);
    let tree = |pid: Option<u32>| pid.and_then(cpu::tree_secs);
    let (nats0, db0) = (tree(Some(nats_pid)), tree(server.as_ref().ok().copied()));
    let t = Instant::now();
    let mut agent = start(&bin, &cfg)?;
    let pid = agent.id();
    let mut peak = 0u64;
    wait_stream(&js, n, &mut agent, &mut peak).await?;
    let drain_secs = t.elapsed().as_secs_f64();
    let drain_cpu = cpu_secs(pid).unwrap_or(0.0);
    let sessions = agent_sessions_secs(db, name, pid);
    let drain_nats = delta(nats0, tree(Some(nats_pid)));
    let drain_db = delta(db0, tree(server.as_ref().ok().copied()));
    let drain_rate = n as f64 / drain_secs;
    let left = run_sql(db, name, "SELECT count(*) FROM lockstep_changes;")?;

    // The raw limit: envelopes of the same size, pipelined, to another stream.
    let sizes = sample_sizes(&js).await?;
    let avg = sizes.iter().sum::<usize>() / sizes.len().max(1);
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payloads: Vec<Bytes> = (0..n).map(|i| filler(avg, i)).collect();
    let (nats0, me0) = (
        tree(Some(nats_pid)),
        cpu_secs(std::process::id()).unwrap_or(0.0),
    );
    let (raw_secs, raw_rate) = raw_publish(&js, "raw.trigger", &payloads).await?;
    let raw_nats = delta(nats0, tree(Some(nats_pid))).unwrap_or(0.0);
    let raw_me = cpu_secs(std::process::id()).unwrap_or(0.0) - me0;
    drop(payloads);

    println!("  raw async-nats, {avg} B payloads, ids, 4096 in flight:  {raw_rate:>9.0} msg/s  ({raw_secs:.2} s)");
    println!("  lockstep drain of the backlog -> JetStream:      {drain_rate:>9.0} events/s  ({drain_secs:.2} s from process start, {drain_cpu:.2} lockstep CPU s; {left} capture rows left)");
    println!(
        "  ratio drain / raw publish: {:.2}   (goal >= 0.80)",
        drain_rate / raw_rate
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let server_name = match db {
        Db::Postgres => "postgres",
        Db::MariaDb => "mariadbd",
    };
    let fmt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.2}"));
    println!(
        "  CPU during the drain: lockstep {drain_cpu:.2} s + nats-server {} s + {server_name} {} s = {:.2} of {:.2} core-seconds",
        fmt(drain_nats),
        fmt(drain_db),
        drain_cpu + drain_nats.unwrap_or(0.0) + drain_db.unwrap_or(0.0),
        cores * drain_secs
    );
    match (&server, sessions) {
        (Err(e), _) => println!("    ({server_name} not measured: {e})"),
        (Ok(_), Some(s)) => println!(
            "    ({server_name}: every server process, ended ones included, and other clients' work too; of it lockstep's own sessions {s:.2} s)"
        ),
        (Ok(_), None) => println!(
            "    ({server_name}: every server process, ended ones included, and other clients' work too)"
        ),
    }
    println!(
        "  CPU during the raw publish: client {raw_me:.2} s + nats-server {raw_nats:.2} s = {:.2} of {:.2} core-seconds",
        raw_me + raw_nats,
        cores * raw_secs
    );

    // 2. Latency at a steady 1,000 changes/s.
    let sub_subject = "ls.vista.appointments";
    let mut sub = client.subscribe(sub_subject).await?;
    client.flush().await?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let total = 10_000u64;
    let base = n + 1_000_000;
    let writer = {
        let sent = sent.clone();
        let mut c = client_proc(db, name)?;
        std::thread::spawn(move || -> Result<()> {
            let mut stdin = c.stdin.take().context("stdin")?;
            let start = Instant::now();
            for k in 0..total {
                let due = start + Duration::from_micros(k * 1000);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let i = base + k;
                let line = update(i);
                sent.lock().unwrap().insert(i, Instant::now());
                stdin.write_all(line.as_bytes())?;
                stdin.flush()?;
            }
            drop(stdin);
            c.wait()?;
            Ok(())
        })
    };
    let mut lat: Vec<(u64, f64)> = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (lat.len() as u64) < total && Instant::now() < deadline {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else {
            break;
        };
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let Some(i) = v["after"]["n"].as_u64() else {
            continue;
        };
        if i < base {
            continue;
        }
        if let Some(t) = sent.lock().unwrap().get(&i) {
            lat.push((i - base, now.duration_since(*t).as_secs_f64() * 1000.0));
        }
    }
    writer.join().expect("writer thread")?;
    peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));

    // 3. Snapshot: rows written by a session with the origin marker (so the drain does
    // not publish them), then `lockstep snapshot` of the table while the agent runs.
    let extra = 200_000u64;
    let from = ROWS + 1;
    let to = ROWS + extra;
    run_sql(
        db,
        name,
        &match db {
            Db::Postgres => format!(
                "SET lockstep.origin = 'bench';
                 INSERT INTO appointments SELECT g, 'CARDIOLOGY-' || g % 12, 'NEW', 50 + g % 400, '2026-11-21 10:00+00', 0 FROM generate_series({from}, {to}) g;"
            ),
            Db::MariaDb => format!(
                "SET @lockstep_origin = 'bench';
                 INSERT INTO appointments SELECT seq, CONCAT('CARDIOLOGY-', seq % 12), 'NEW', 50 + seq % 400, '2026-11-21 10:00:00', 0 FROM seq_{from}_to_{to};"
            ),
        },
    )?;
    let rows: u64 = run_sql(db, name, "SELECT count(*) FROM appointments;")?.parse()?;
    wait_drained(db, name).await?;
    let before = js.get_stream("LS").await?.info().await?.state.messages;
    let t = Instant::now();
    let o = Command::new(&bin)
        .args(["snapshot", "--config"])
        .arg(&cfg)
        .output()?;
    if !o.status.success() {
        bail!("lockstep snapshot: {}", String::from_utf8_lossy(&o.stderr));
    }
    let asked_secs = t.elapsed().as_secs_f64();
    // The snapshot's own time, from its checkpoint (the agent looks for requests once a
    // second, which the request-to-done time includes).
    let progress: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/snapshot/vista.json"))?)?;
    let ms = |k: &str| progress[k].as_i64().unwrap_or(0);
    let snap_secs = (ms("finished_ms") - ms("started_ms")) as f64 / 1000.0;
    peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
    let sent = js.get_stream("LS").await?.info().await?.state.messages - before;
    // The raw limit of reading: the same rows as JSON through the database's own client.
    let image = match db {
        Db::Postgres => "row_to_json(t)::text",
        Db::MariaDb => "JSON_OBJECT('id', id, 'clinic', clinic, 'status', status, 'fee', fee, 'at', at, 'n', n)",
    };
    let t = Instant::now();
    let fetched = run_sql(
        db,
        name,
        &format!("SELECT {image} FROM appointments t ORDER BY id;"),
    )?
    .lines()
    .count();
    let fetch_secs = t.elapsed().as_secs_f64();
    let snap_rate = rows as f64 / snap_secs;
    let fetch_rate = fetched as f64 / fetch_secs;
    println!(
        "  snapshot of {rows} rows, started to finished: {snap_rate:>9.0} rows/s ({snap_secs:.2} s; `lockstep snapshot` request to done {asked_secs:.2} s; {sent} events stored)"
    );
    println!(
        "  raw: fetch of the same rows as JSON by the database's client {fetch_rate:>9.0} rows/s; publish {raw_rate:>9.0} msg/s; ratio to the lower: {:.2}",
        snap_rate / fetch_rate.min(raw_rate)
    );
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    agent.wait()?;
    let mut ms: Vec<f64> = lat
        .iter()
        .filter(|(k, _)| *k >= 1000)
        .map(|(_, l)| *l)
        .collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        bail!("no latency samples arrived");
    }
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    let goal = if db == Db::Postgres { 100 } else { 300 };
    println!(
        "  latency, statement handed to the client -> change at the broker, 1,000 updates/s ({} samples after 1 s warm-up, {} of {total} arrived):",
        ms.len(),
        lat.len()
    );
    println!(
        "    p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (goal p99 <= {goal} ms; idle poll interval {interval})",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("  lockstep peak RSS: {:.1} MiB", peak as f64 / 1024.0);
    Ok(())
}

fn client_proc(db: Db, name: &str) -> Result<Child> {
    client(db, name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the database client")
}

fn start(bin: &Path, cfg: &Path) -> Result<Child> {
    Command::new(bin)
        .args(["run", "--config"])
        .arg(cfg)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// Waits until the capture table is empty (origin-marked rows are deleted unpublished).
async fn wait_drained(db: Db, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_sql(db, name, "SELECT count(*) FROM lockstep_changes;")? != "0" {
        if Instant::now() > deadline {
            bail!("the capture table was not drained within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Sizes of the first 1,000 messages lockstep stored.
async fn sample_sizes(js: &jetstream::Context) -> Result<Vec<usize>> {
    let s = js.get_stream("LS").await?;
    let mut out = Vec::with_capacity(1000);
    for seq in 1..=1000u64 {
        match s.get_raw_message(seq).await {
            Ok(m) => out.push(m.payload.len()),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// A payload of `len` bytes, distinct per `i`.
fn filler(len: usize, i: u64) -> Bytes {
    let mut s = format!("{{\"i\":{i},\"pad\":\"");
    while s.len() + 2 < len {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

/// `after - before`, when both were measured.
fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// The pid of the database server's root process (PostgreSQL's postmaster, MariaDB's
/// mariadbd), asked of the server itself, and checked to run on this machine.
fn server_process(db: Db, name: &str) -> Result<u32> {
    let (sql, expect): (&str, &[&str]) = match db {
        Db::Postgres => (
            "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1);",
            &["postgres", "postmaster"],
        ),
        Db::MariaDb => ("SELECT @@pid_file, @@datadir;", &["mariadbd", "mysqld"]),
    };
    let out = run_sql(db, name, sql).context("ask the database server for its pid")?;
    let pid_text = match db {
        Db::Postgres => out,
        Db::MariaDb => {
            let (file, datadir) = out
                .split_once('\t')
                .with_context(|| format!("unexpected answer to `{sql}`: {out}"))?;
            let path = Path::new(datadir).join(file);
            std::fs::read_to_string(&path)
                .with_context(|| format!("read the server's pid file {}", path.display()))?
        }
    };
    let pid: u32 = pid_text
        .trim()
        .parse()
        .with_context(|| format!("the server's pid `{}` is not a number", pid_text.trim()))?;
    match cpu::comm(pid) {
        Some(c) if expect.contains(&c.as_str()) => Ok(pid),
        Some(c) => bail!("process {pid} is `{c}`, not the database server (is the server on another machine or in a container?)"),
        None => bail!("no process {pid} on this machine (is the server on another machine or in a container?)"),
    }
}

/// CPU seconds of the PostgreSQL backends serving the agent `pid` (found by the local
/// ports of its connections, in `pg_stat_activity`); they started with the agent, so
/// this is their whole time. `None` where that cannot be told (MariaDB runs a session
/// as a thread, which only performance_schema maps to the OS).
fn agent_sessions_secs(db: Db, name: &str, pid: u32) -> Option<f64> {
    if db != Db::Postgres {
        return None;
    }
    let ports = cpu::connected_ports(pid, 5432);
    if ports.is_empty() {
        return None;
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let pids = run_sql(
        db,
        name,
        &format!(
            "SELECT pid FROM pg_stat_activity WHERE client_port IN ({});",
            list.join(", ")
        ),
    )
    .ok()?;
    let pids: Vec<u32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu::process_secs(p)).sum()
}
