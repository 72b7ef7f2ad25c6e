//! `tail --debounce`: the tail scenario over 100,000 keys (each changed ten times in
//! 1,000,000 lines), run twice through the same file and broker: without debounce (one
//! event per line) and with `debounce = { window = "1s" }`.
//!
//! Each run ends when the file is read to its end, nothing is held and the stream holds
//! every event the source sent. The debounced run's time
//! includes the window the last changes wait by design; the rate without it is printed
//! too. Peak RSS is the agent's VmHWM.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_nats::jetstream;

use crate::{
    cpu_secs, free_port, source_status, start_agent, vm_hwm_kib, write_lines_over, NatsServer,
};

const KEYS: u64 = 100_000;
const WINDOW: Duration = Duration::from_secs(1);

struct Run {
    secs: f64,
    events: u64,
    cpu: f64,
    peak_kib: u64,
}

pub async fn debounce(n: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = NatsServer::start(tmp.path())?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let logs = tmp.path().join("logs");
    let bytes = write_lines_over(&logs, n, KEYS)?;
    println!(
        "scenario tail --debounce: {n} lines over {KEYS} keys ({:.1} MiB), nats-server {} (JetStream, file storage), 2 cores",
        bytes as f64 / 1048576.0,
        nats.version
    );
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    let plain = run(tmp.path(), &url, &js, "plain", "", bytes).await?;
    let deb = run(
        tmp.path(),
        &url,
        &js,
        "debounced",
        "debounce = { window = \"1s\" }",
        bytes,
    )
    .await?;
    let rate = |secs: f64| n as f64 / secs;
    let plain_rate = rate(plain.secs);
    let deb_rate = rate(deb.secs);
    let deb_work = deb.secs - WINDOW.as_secs_f64();
    let deb_work_rate = rate(deb_work);
    println!(
        "  without debounce: {plain_rate:>9.0} lines/s  ({:.2} s, {} events, {:.1} CPU s, peak RSS {:.1} MiB)",
        plain.secs,
        plain.events,
        plain.cpu,
        plain.peak_kib as f64 / 1024.0
    );
    println!(
        "  debounce 1s:      {deb_rate:>9.0} lines/s  ({:.2} s, {} events, {:.1} CPU s, peak RSS {:.1} MiB)",
        deb.secs,
        deb.events,
        deb.cpu,
        deb.peak_kib as f64 / 1024.0
    );
    println!(
        "  debounce 1s, less the 1 s the last changes wait by design: {deb_work_rate:>9.0} lines/s  ({deb_work:.2} s)"
    );
    println!(
        "  ratio debounced / undebounced: {:.2} (with the window), {:.2} (without)   (goal >= 0.80)",
        deb_rate / plain_rate,
        deb_work_rate / plain_rate
    );
    Ok(())
}

/// Runs the agent over the file until its checkpoint reaches the end.
async fn run(
    dir: &Path,
    url: &str,
    js: &jetstream::Context,
    name: &str,
    extra: &str,
    bytes: u64,
) -> Result<Run> {
    let state = dir.join(format!("state-{name}"));
    let admin = format!("127.0.0.1:{}", free_port()?);
    let cfg = dir.join(format!("{name}.toml"));
    let stream = name.to_uppercase();
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{url}\"]\nstream = \"{stream}\"\nsubject_prefix = \"{name}\"\ncreate_stream = true\n\n[admin]\nlisten = \"{admin}\"\n\n[[source]]\nname = \"vista\"\nkind = \"tail\"\npaths = [\"{}/*.log\"]\ntable = \"appointments\"\nkey = [\"id\"]\nop_field = \"op\"\n{extra}\n",
            state.display(),
            dir.join("logs").display()
        ),
    )?;
    let t = Instant::now();
    let mut agent = start_agent(&cfg)?;
    let pid = agent.id();
    let mut peak_kib = 0;
    loop {
        peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        let st = source_status(&admin, "vista").unwrap_or_default();
        let read = st["files"][0]["read"].as_u64().unwrap_or(0);
        let sent = st["events_sent"].as_u64().unwrap_or(0);
        let held = st["held_keys"].as_u64().unwrap_or(0);
        if read >= bytes && held == 0 && sent > 0 {
            let stored = match js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if stored >= sent {
                break;
            }
        }
        if let Some(status) = agent.try_wait()? {
            bail!("lockstep exited early: {status}");
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("{name}: not done after 10 minutes: {st}");
        }
        // The bench's own polling pace.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    let cpu = cpu_secs(pid).unwrap_or(0.0);
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    agent.wait()?;
    let events = js.get_stream(&stream).await?.info().await?.state.messages;
    Ok(Run {
        secs,
        events,
        cpu,
        peak_kib,
    })
}
