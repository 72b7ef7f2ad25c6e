//! `idle`: what the agent costs a legacy host when nothing changes. One tail source on a
//! directory with no new lines, connected to a throwaway nats-server; after a warm-up,
//! CPU time, wake-ups (context switches of all threads) and RSS are measured over a
//! window. The same figures for the nats-server, an idle daemon measured over the same
//! window on the same machine, stand beside them for scale.

use std::time::Duration;

use anyhow::Result;

use super::{agent_config, cpu_secs, free_port, start_agent, NatsServer};

/// Voluntary + involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Sample {
    cpu: f64,
    switches: u64,
}

fn sample(pid: u32) -> Sample {
    Sample {
        cpu: cpu_secs(pid).unwrap_or(0.0),
        switches: switches(pid),
    }
}

pub async fn idle(window_secs: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let nats = NatsServer::start(tmp.path())?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let admin = format!("127.0.0.1:{}", free_port()?);
    std::fs::create_dir_all(tmp.path().join("logs"))?;
    let cfg = agent_config(tmp.path(), &url, &admin)?;
    let mut agent = start_agent(&cfg)?;
    let (pid, npid) = (agent.id(), nats.child.id());
    println!(
        "scenario idle: one tail source, no changes, nats-server {}; {window_secs} s window after a 10 s warm-up, 2 cores",
        nats.version
    );
    // Warm-up: connect, create the stream, settle. The waits are the measurement itself.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (a0, n0) = (sample(pid), sample(npid));
    // The measured window: the agent is left alone for it.
    tokio::time::sleep(Duration::from_secs(window_secs)).await;
    let (a1, n1) = (sample(pid), sample(npid));
    if let Some(status) = agent.try_wait()? {
        anyhow::bail!("lockstep exited during the window: {status}");
    }
    let w = window_secs as f64;
    let row = |name: &str, pid: u32, s0: &Sample, s1: &Sample| {
        println!(
            "  {name:<12} CPU {:>6.3} % of a core   wake-ups {:>6.1}/s   RSS {:>6.1} MiB",
            (s1.cpu - s0.cpu) / w * 100.0,
            (s1.switches - s0.switches) as f64 / w,
            rss_kib(pid) as f64 / 1024.0
        );
    };
    row("lockstep", pid, &a0, &a1);
    row("nats-server", npid, &n0, &n1);
    println!(
        "  binary: {} ({:.1} MiB)",
        super::lockstep_bin()?.display(),
        std::fs::metadata(super::lockstep_bin()?)?.len() as f64 / 1048576.0
    );
    let _ = agent.kill();
    let _ = agent.wait();
    Ok(())
}
