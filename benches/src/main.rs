//! lockstep benchmarks. Each figure is printed beside the raw limit measured in the same
//! run, on the same machine and the same nats-server, as a ratio.
//!
//! ```text
//! cargo build --release -p lockstep -p lockstep-benches
//! target/release/lockstep-bench tail [--lines 1000000] [--keys K] [--latency 50ms]
//! target/release/lockstep-bench spool [--lines 1000000]
//! target/release/lockstep-bench trigger [--db postgres|mariadb] [--updates 100000]
//! target/release/lockstep-bench poll [--db postgres|mariadb] [--rows 1000000]
//! target/release/lockstep-bench idle [--seconds 60]
//! ```
//!
//! `tail`: N JSON lines of about 250 bytes are written to a file; lockstep (the release
//! binary next to this one) tails it into a JetStream stream (file storage) on a
//! throwaway nats-server. The raw limit is a plain async-nats loop publishing the same
//! lines with `Nats-Msg-Id`, pipelined (4096 in flight, acks awaited in order), to
//! another stream on the same server. Peak RSS is lockstep's VmHWM. `--keys K`: line
//! `i` changes appointment `i % K` (a hot set of K keys; by default every line is its
//! own key). `--latency 50ms`: lockstep and the raw publisher reach the server through
//! a TCP proxy that adds that much to every round trip, as over a WAN; with hot keys
//! this measures the cost of keeping each key's order (one ack round trip per event of
//! a key), e.g. `tail --lines 20000 --keys 20 --latency 50ms`.
//!
//! `spool`: the broker is down; lockstep tails N lines into its spool (ingest: events/s
//! until all N are appended, MB/s written, compression ratio). Then the broker starts
//! and the spool drains into JetStream (events/s until the stream holds N), beside the
//! raw pipelined publish rate of the same envelopes measured right after on the same
//! server.

mod cpu;
mod debounce;
mod idle;
mod poll;
mod proxy;
mod trigger;

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;

const IN_FLIGHT: usize = 4096;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("tail");
    let lines = args
        .iter()
        .position(|a| a == "--lines")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1_000_000), |s| s.parse::<u64>())
        .context("--lines takes a number")?;
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match scenario {
        "tail" if args.iter().any(|a| a == "--debounce") => debounce::debounce(lines).await,
        "tail" => {
            let keys = flag("--keys")
                .map(|s| s.parse::<u64>())
                .transpose()
                .context("--keys takes a number")?;
            let latency = flag("--latency")
                .map(|s| parse_ms(&s))
                .transpose()
                .context("--latency takes milliseconds, e.g. 50ms")?;
            tail(lines, keys, latency).await
        }
        "spool" => spool(lines).await,
        "trigger" => {
            let db = flag("--db").unwrap_or_else(|| "postgres".into());
            let updates = flag("--updates")
                .map_or(Ok(100_000), |s| s.parse::<u64>())
                .context("--updates takes a number")?;
            trigger::trigger(&db, updates).await
        }
        "poll" => {
            let db = flag("--db").unwrap_or_else(|| "postgres".into());
            let rows = flag("--rows")
                .map_or(Ok(1_000_000), |s| s.parse::<u64>())
                .context("--rows takes a number")?;
            poll::poll(&db, rows).await
        }
        "idle" => {
            let secs = flag("--seconds")
                .map_or(Ok(60), |s| s.parse::<u64>())
                .context("--seconds takes a number")?;
            idle::idle(secs).await
        }
        other => bail!("unknown scenario `{other}` (scenarios: tail, spool, trigger, poll, idle)"),
    }
}

/// `50ms` or `50`: a duration in milliseconds.
fn parse_ms(s: &str) -> Result<Duration> {
    Ok(Duration::from_millis(
        s.trim_end_matches("ms").parse::<u64>()?,
    ))
}

fn record(i: u64) -> String {
    record_of(i, i)
}

/// Change `i`, to appointment `id`.
fn record_of(i: u64, id: u64) -> String {
    // About 250 bytes, like an appointment change written by a batch job.
    format!(
        r#"{{"id":{id},"op":"u","patient":"P{:08}","clinic":"CARDIOLOGY-{}","provider":"DR-{:05}","date":"2026-11-{:02}","time":"{:02}:{:02}","status":"SCHEDULED","fee":"{}.{:02}","note":"follow-up visit, bring prior imaging, referral letter and medication list"}}"#,
        i * 7 % 100_000_000,
        i % 12,
        i % 977,
        1 + i % 28,
        8 + i % 9,
        i % 60,
        50 + i % 400,
        i % 100
    )
}

/// Writes `n` records to `logs/changes.log`; returns the bytes written.
fn write_lines(logs: &Path, n: u64) -> Result<u64> {
    write_lines_over(logs, n, n)
}

/// Writes `n` change lines over `keys` appointments (line `i` changes `i % keys`).
fn write_lines_over(logs: &Path, n: u64, keys: u64) -> Result<u64> {
    std::fs::create_dir_all(logs)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(logs.join("changes.log"))?);
    let mut bytes = 0u64;
    for i in 0..n {
        let l = record_of(i, i % keys);
        bytes += l.len() as u64 + 1;
        writeln!(w, "{l}")?;
    }
    w.flush()?;
    Ok(bytes)
}

fn agent_config(dir: &Path, url: &str, admin: &str) -> Result<PathBuf> {
    let cfg = dir.join("lockstep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"LS\"\nsubject_prefix = \"ls\"\ncreate_stream = true\n\n[spool]\nmax_bytes = \"4GiB\"\n\n[admin]\nlisten = \"{admin}\"\n\n[[source]]\nname = \"vista\"\nkind = \"tail\"\npaths = [\"{}/*.log\"]\ntable = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n",
            dir.join("state").display(),
            dir.join("logs").display()
        ),
    )?;
    Ok(cfg)
}

fn start_agent(cfg: &Path) -> Result<std::process::Child> {
    let bin = lockstep_bin()?;
    Command::new(&bin)
        .args(["run", "--config"])
        .arg(cfg)
        .env("LOCKSTEP_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// Waits until stream `LS` holds `n` messages, tracking the agent's peak RSS.
async fn wait_stream(
    js: &jetstream::Context,
    n: u64,
    agent: &mut std::process::Child,
    peak_kib: &mut u64,
) -> Result<()> {
    let t = Instant::now();
    loop {
        *peak_kib = (*peak_kib).max(vm_hwm_kib(agent.id()).unwrap_or(0));
        let got = match js.get_stream("LS").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if got >= n {
            return Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            bail!("lockstep exited early: {status}");
        }
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("lockstep did not deliver {n} messages in 30 minutes (got {got})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric from the agent's `/metrics`.
fn metric(admin: &str, name: &str) -> Option<u64> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(admin).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A source's part of the agent's `/status`.
fn source_status(admin: &str, source: &str) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(admin).ok()?;
    c.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["sources"][source]
        .as_object()
        .map(|o| serde_json::Value::Object(o.clone()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn spool(n: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{}", free_port()?);
    let bytes = write_lines(&tmp.path().join("logs"), n)?;
    println!(
        "scenario spool: {n} lines ({:.1} MiB, {} B per line), broker down while they are captured, 2 cores",
        bytes as f64 / 1048576.0,
        bytes / n
    );
    let cfg = agent_config(tmp.path(), &url, &admin)?;

    // Ingest: the broker is down; everything goes to the spool.
    let t = Instant::now();
    let mut agent = start_agent(&cfg)?;
    let pid = agent.id();
    let mut peak_kib = 0u64;
    loop {
        peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        if metric(&admin, "lockstep_spool_appended_events_total").unwrap_or(0) >= n {
            break;
        }
        if let Some(status) = agent.try_wait()? {
            bail!("lockstep exited early: {status}");
        }
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("lockstep did not spool {n} events in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ingest_secs = t.elapsed().as_secs_f64();
    let spool_bytes = metric(&admin, "lockstep_spool_bytes").unwrap_or(0);
    let inspect = Command::new(lockstep_bin()?)
        .args(["spool", "inspect", "--config"])
        .arg(&cfg)
        .output()?;
    let inspect = String::from_utf8_lossy(&inspect.stdout).into_owned();

    // Drain: the broker comes up.
    let nats = NatsServer::start_on(tmp.path(), port)?;
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let t = Instant::now();
    wait_stream(&js, n, &mut agent, &mut peak_kib).await?;
    let drain_secs = t.elapsed().as_secs_f64();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    agent.wait()?;

    // The raw limit, right after, on the same server.
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let envelopes: Vec<Bytes> = (0..n).map(|i| envelope(&record(i), i)).collect();
    let env_bytes = envelopes.iter().map(|b| b.len() as u64).sum::<u64>();
    let (raw_secs, raw_rate) = raw_publish(&js, "raw.envelopes", &envelopes).await?;
    drop(envelopes);

    let ingest_rate = n as f64 / ingest_secs;
    let drain_rate = n as f64 / drain_secs;
    println!("  nats-server {}", nats.version);
    for l in inspect.lines() {
        println!("  | {l}");
    }
    println!("  ingest (tail -> spool, from process start): {ingest_rate:>9.0} events/s  ({ingest_secs:.2} s; {:.1} MB/s of events in, {:.1} MB/s written)   (goal >= 300000)",
        env_bytes as f64 / 1e6 / ingest_secs, spool_bytes as f64 / 1e6 / ingest_secs);
    println!(
        "  compression: {:.1} MB of envelopes in {:.1} MB of spool: {:.1}x   (goal >= 5)",
        env_bytes as f64 / 1e6,
        spool_bytes as f64 / 1e6,
        env_bytes as f64 / spool_bytes.max(1) as f64
    );
    println!("  drain (spool -> JetStream, from broker start): {drain_rate:>9.0} events/s  ({drain_secs:.2} s)");
    println!("  raw async-nats, same envelopes, ids, {IN_FLIGHT} in flight: {raw_rate:>9.0} msg/s  ({raw_secs:.2} s)");
    println!(
        "  ratio drain / raw publish: {:.2}   (goal >= 0.80)",
        drain_rate / raw_rate
    );
    println!("  lockstep peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    Ok(())
}

async fn tail(n: u64, keys: Option<u64>, latency: Option<Duration>) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = NatsServer::start(tmp.path())?;
    // The bench's own reads go straight to the server; lockstep and the raw publisher
    // go through the proxy when there is one.
    let direct = format!("nats://127.0.0.1:{}", nats.port);
    let url = match latency {
        Some(l) => format!("nats://127.0.0.1:{}", proxy::start(nats.port, l).await?),
        None => direct.clone(),
    };
    let keys_n = keys.unwrap_or(n).max(1);
    println!(
        "scenario tail: {n} lines over {keys_n} keys, nats-server {} (JetStream, file storage), {}, 2 cores",
        nats.version,
        latency.map_or("no added latency".to_owned(), |l| format!("{} ms added to each round trip (TCP proxy)", l.as_millis()))
    );

    let logs = tmp.path().join("logs");
    let bytes = write_lines_over(&logs, n, keys_n)?;
    println!(
        "  input: {:.1} MiB, {} bytes per line on average",
        bytes as f64 / 1048576.0,
        bytes / n
    );

    // The raw limit: the same lines, published with ids, pipelined.
    let client = async_nats::connect(&url).await?;
    let raw_js = jetstream::new(client.clone());
    let js = jetstream::new(async_nats::connect(&direct).await?);
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let lines: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(record_of(i, i % keys_n)))
        .collect();
    let (raw_lines_secs, raw_lines_rate) = raw_publish(&raw_js, "raw.lines", &lines).await?;
    drop(lines);
    // The same bytes lockstep sends: each line wrapped in its change-event envelope.
    let envelopes: Vec<Bytes> = (0..n)
        .map(|i| envelope(&record_of(i, i % keys_n), i % keys_n))
        .collect();
    let env_bytes = envelopes.iter().map(|b| b.len()).sum::<usize>() as f64 / n as f64;
    let (raw_secs, raw_rate) = raw_publish(&raw_js, "raw.envelopes", &envelopes).await?;
    drop(envelopes);

    // lockstep, tailing the file into its own stream on the same server.
    let state = tmp.path().join("state");
    let cfg = tmp.path().join("lockstep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"LS\"\nsubject_prefix = \"ls\"\ncreate_stream = true\n\n[admin]\nlisten = \"\"\n\n[[source]]\nname = \"vista\"\nkind = \"tail\"\npaths = [\"{}/*.log\"]\ntable = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n",
            state.display(),
            logs.display()
        ),
    )?;
    let bin = lockstep_bin()?;
    let t = Instant::now();
    let mut agent = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = agent.id();
    let mut peak_kib = 0u64;
    wait_stream(&js, n, &mut agent, &mut peak_kib).await?;
    let ls_secs = t.elapsed().as_secs_f64();
    peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    let cpu = cpu_secs(pid).unwrap_or(0.0);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    agent.wait()?;
    let ls_rate = n as f64 / ls_secs;

    println!("  raw async-nats, bare lines ({} B), ids, {IN_FLIGHT} in flight:   {raw_lines_rate:>9.0} msg/s  ({raw_lines_secs:.2} s)", bytes / n);
    println!("  raw async-nats, same envelopes ({env_bytes:.0} B), ids, {IN_FLIGHT} in flight: {raw_rate:>9.0} msg/s  ({raw_secs:.2} s)");
    println!("  lockstep tail -> JetStream:                                {ls_rate:>9.0} msg/s  ({ls_secs:.2} s from process start, {cpu:.1} CPU s)");
    println!(
        "  ratio lockstep / raw (same payloads): {:.2}   (goal >= 0.80)",
        ls_rate / raw_rate
    );
    println!(
        "  ratio lockstep / raw (bare lines):    {:.2}",
        ls_rate / raw_lines_rate
    );
    println!(
        "  lockstep peak RSS: {:.1} MiB   (goal <= 64 MiB)",
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

/// Publishes `payloads` with ids, pipelined, and waits for every ack: (seconds, msg/s).
async fn raw_publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: &[Bytes],
) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut q: VecDeque<PublishAckFuture> = VecDeque::with_capacity(IN_FLIGHT);
    for (i, p) in payloads.iter().enumerate() {
        if q.len() >= IN_FLIGHT {
            q.pop_front().unwrap().into_future().await?;
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(p.clone())
            .message_id(format!("{subject}:{i}"));
        q.push_back(js.send_publish(subject.to_owned(), publish).await?);
    }
    for f in q {
        f.into_future().await?;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((secs, payloads.len() as f64 / secs))
}

/// The envelope lockstep builds for a line (same shape and size as what it sends).
fn envelope(line: &str, i: u64) -> Bytes {
    use lockstep_formats::{json, ChangeEvent, Op, Record, SourceInfo, Value};
    let mut after = json::parse_object(line.as_bytes()).expect("bench lines are JSON");
    after.remove("op");
    let mut key = Record::new();
    key.push("id", Value::Int(i as i64));
    let ev = ChangeEvent {
        op: Op::Update,
        key: Some(key),
        before: None,
        after: Some(after),
        source: SourceInfo {
            agent: "bench".into(),
            name: "vista".into(),
            kind: "tail".into(),
            table: "appointments".into(),
            position: format!("fe00.98c162.07e04db971f141eb.0@{}", i * 250),
            ts_ms: 1_795_000_000_000,
            snapshot: false,
        },
        ts_ms: 1_795_000_000_000,
    };
    let mut out = Vec::with_capacity(600);
    json::encode_event(&ev, &mut out);
    Bytes::from(out)
}

/// CPU seconds so far of process `pid` (all its threads).
fn cpu_secs(pid: u32) -> Option<f64> {
    cpu::process_secs(pid)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// The lockstep binary next to this one (both are built by `cargo build --release`).
fn lockstep_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKSTEP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("lockstep");
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p lockstep -p lockstep-benches` first",
            p.display()
        );
    }
    Ok(p)
}

struct NatsServer {
    child: std::process::Child,
    port: u16,
    version: String,
}

impl NatsServer {
    fn start(dir: &Path) -> Result<Self> {
        Self::start_args(dir, "-1")
    }

    fn start_on(dir: &Path, port: u16) -> Result<Self> {
        Self::start_args(dir, &port.to_string())
    }

    fn start_args(dir: &Path, port: &str) -> Result<Self> {
        let version = Command::new("/usr/sbin/nats-server")
            .arg("--version")
            .output()?;
        let version = String::from_utf8_lossy(&version.stdout)
            .trim()
            .replace("nats-server: ", "");
        let mut child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start /usr/sbin/nats-server")?;
        let stderr = child.stderr.take().context("nats-server stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let Some(line) = lines.next() else {
                bail!("nats-server exited before listening")
            };
            let line = line?;
            if line.contains("Listening for client connections on") {
                break line.rsplit(':').next().context("port")?.trim().parse()?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            port,
            version,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
