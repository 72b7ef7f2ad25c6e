//! The real `lockstep` binary: a test's world (directories, config, its broker), the
//! agent process, and the files it tails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::*;

/// The `lockstep` binary built by `cargo build -p lockstep` (the test command does it).
pub fn lockstep_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKSTEP_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let p = target.join("debug/lockstep");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p lockstep` first (or set LOCKSTEP_BIN)",
        p.display()
    );
    p
}

/// Runs the `lockstep` binary with `args`: (exit code, stdout, stderr).
pub fn lockstep(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(lockstep_bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One test's world: a temp dir, a broker, the change files and the agent's state.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub nats: Nats,
    pub stream: String,
    pub prefix: String,
    /// Extra `[nats]` keys for the agent's config (authentication).
    pub nats_extra: String,
    /// How the test's own client authenticates.
    pub client_auth: Option<async_nats::ConnectOptions>,
    /// Extra top-level sections for the agent's config (`[spool]`).
    pub agent_extra: String,
    /// The admin endpoint's port, when the test reads metrics.
    pub admin_port: Option<u16>,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        Self::with(tmp, Nats::start)
    }

    /// A world whose broker is started with `args`.
    pub fn with_nats_args(args: &[&str]) -> World {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        Self::with(tmp, |dir| Nats::start_with(dir, args))
    }

    fn with(tmp: tempfile::TempDir, start: impl FnOnce(&Path) -> Nats) -> World {
        let nats = start(tmp.path());
        World {
            tmp,
            nats,
            stream: "E2E".into(),
            prefix: "legacy".into(),
            nats_extra: String::new(),
            client_auth: None,
            agent_extra: String::new(),
            admin_port: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn logs(&self) -> PathBuf {
        self.tmp.path().join("logs")
    }

    /// Writes a config with one tail source (`source_extra` is added to it) and returns its path.
    pub fn config(&self, source_extra: &str) -> PathBuf {
        self.config_with(&self.tail_source("vista", "*.log", source_extra))
    }

    /// The `[[source]]` of a tail source `name` following `<logs>/<glob>`, with `extra`.
    pub fn tail_source(&self, name: &str, glob: &str, extra: &str) -> String {
        format!(
            "[[source]]\nname = \"{name}\"\nkind = \"tail\"\npaths = [\"{}/{glob}\"]\n\
             stat_interval = \"200ms\"\nrotate_wait = \"1s\"\n{extra}\n",
            self.logs().display()
        )
    }

    /// A config with one tail source `vista` following `glob`, with the defaults an
    /// operator gets (`source_extra` is added to it); returns its path.
    pub fn config_paths(&self, glob: &str, source_extra: &str) -> PathBuf {
        self.config_with(&format!(
            "[[source]]\nname = \"vista\"\nkind = \"tail\"\npaths = [\"{glob}\"]\n{source_extra}\n"
        ))
    }

    /// Writes a config with `sources` (TOML `[[source]]` tables) and returns its path.
    pub fn config_with(&self, sources: &str) -> PathBuf {
        let text = format!(
            r#"[agent]
id = "e2e"
state_dir = "{state}"

[nats]
servers = ["{url}"]
stream = "{stream}"
subject_prefix = "{prefix}"
create_stream = true
ack_timeout = "2s"
{nats_extra}

{agent_extra}

[admin]
listen = "{admin}"

{sources}
"#,
            state = self.dir().join("state").display(),
            url = self.nats.url(),
            stream = self.stream,
            prefix = self.prefix,
            nats_extra = self.nats_extra,
            agent_extra = self.agent_extra,
            admin = self
                .admin_port
                .map_or(String::new(), |p| format!("127.0.0.1:{p}")),
        );
        let p = self.dir().join("lockstep.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Turns on the admin endpoint on a free port.
    pub fn with_admin(&mut self) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        self.admin_port = Some(l.local_addr().unwrap().port());
    }

    /// `GET <path>` on the running agent's admin endpoint: the status code and the body
    /// ((0, "") when it cannot be read).
    pub fn admin(&self, path: &str) -> (u16, String) {
        use std::io::Read;
        let port = self.admin_port.expect("with_admin() first");
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return (0, String::new());
        };
        let _ = c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_owned())
    }

    fn admin_get(&self, path: &str) -> String {
        self.admin(path).1
    }

    /// A metric's value from the running agent's `/metrics` (0 when it cannot be read).
    pub fn metric(&self, name: &str) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A metric's value summed over its labels (0 when it cannot be read).
    pub fn metric_sum(&self, name: &str) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = match rest.strip_prefix('{') {
                    Some(r) => r.split_once('}')?.1,
                    None => rest,
                };
                rest.strip_prefix(' ')?.trim().parse::<u64>().ok()
            })
            .sum()
    }

    /// The running agent's `/status` (null when it cannot be read).
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/status")).unwrap_or(serde_json::Value::Null)
    }

    /// `lockstep spool <args>` against this world's config: its stdout.
    pub fn spool_cli(&self, config: &Path, args: &[&str]) -> String {
        let out = Command::new(lockstep_bin())
            .arg("spool")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lockstep spool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Events waiting in the spool, as `lockstep spool inspect` reports them.
    pub fn spool_waiting(&self, config: &Path) -> u64 {
        let out = self.spool_cli(config, &["inspect"]);
        out.lines()
            .find_map(|l| {
                l.strip_prefix("events")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no events line in {out}"))
    }

    /// The spool's segment files, oldest first.
    pub fn spool_segments(&self) -> Vec<PathBuf> {
        let dir = self.dir().join("state/spool");
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        segs.retain(|p| p.extension().is_some_and(|e| e == "seg"));
        segs.sort();
        segs
    }

    /// The files in the agent's quarantine directory whose names start with `prefix`.
    pub fn quarantined_files(&self, prefix: &str) -> Vec<String> {
        std::fs::read_dir(self.dir().join("state/quarantine"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn agent(&self, config: &Path) -> Agent {
        Agent::start(config, &self.dir().join("agent.log"), &[])
    }

    pub async fn js(&self) -> jetstream::Context {
        let opts = self.client_auth.clone().unwrap_or_default();
        let c = opts.connect(self.nats.url()).await.unwrap();
        jetstream::new(c)
    }

    /// How many messages the stream holds (0 while it does not exist yet).
    pub async fn count(&self) -> u64 {
        let js = self.js().await;
        match js.get_stream(&self.stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until the stream holds at least `n` messages.
    pub async fn wait_count(&self, n: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let js = self.js().await;
        loop {
            let c = match js.get_stream(&self.stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if c >= n || Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the stream before the agent does, from the config lockstep would use
    /// (subjects `<prefix>.>`, file storage, a 2-minute duplicate window) as changed by
    /// `edit`; the agent then finds it and leaves it as it is.
    pub async fn create_stream(&self, edit: impl FnOnce(&mut jetstream::stream::Config)) {
        let mut c = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        edit(&mut c);
        self.js().await.create_stream(c).await.unwrap();
    }

    /// The events the broker refused for good, as the agent quarantined them
    /// (`state_dir/quarantine/<source>.refused.jsonl`), in order.
    pub fn refused(&self, source: &str) -> Vec<serde_json::Value> {
        let p = self
            .dir()
            .join(format!("state/quarantine/{source}.refused.jsonl"));
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a quarantine line is JSON"))
            .collect()
    }

    /// Reads every message of the stream, in stream order.
    pub async fn messages(&self) -> Vec<Msg> {
        let mut out = Vec::new();
        self.each_message(|m| out.push(m)).await;
        out
    }

    /// Hands every message of the stream to `f`, in stream order, without keeping them
    /// (for streams too big to hold).
    pub async fn each_message(&self, mut f: impl FnMut(Msg)) {
        let js = self.js().await;
        let stream = js
            .get_stream(&self.stream)
            .await
            .expect("the stream exists");
        let total = stream.cached_info().state.messages as usize;
        let c = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = c.messages().await.unwrap();
        for _ in 0..total {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .expect("stream read")
                .unwrap()
                .unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            let json: serde_json::Value =
                serde_json::from_slice(&m.payload).expect("payload is JSON");
            f(Msg {
                subject: m.subject.to_string(),
                id,
                json,
            });
        }
    }
}

/// A failed test keeps its world (config, logs, state) for inspection: the path is
/// printed. Set `LOCKSTEP_E2E_KEEP=1` to keep every world.
impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LOCKSTEP_E2E_KEEP").is_some() {
            let Ok(spare) = tempfile::tempdir() else {
                return;
            };
            let kept = std::mem::replace(&mut self.tmp, spare).keep();
            eprintln!("the test's files are kept in {}", kept.display());
        }
    }
}

/// The `lockstep run` process.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    pub fn start(config: &Path, log: &Path, env: &[(&str, &Path)]) -> Agent {
        let mut cmd = Self::command(config, log);
        cmd.envs(env.iter().copied());
        Agent {
            child: Some(cmd.spawn().expect("start lockstep")),
        }
    }

    /// `lockstep run --config <config>`, logging at debug level to `log` (appended).
    fn command(config: &Path, log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(lockstep_bin());
        cmd.args(["run", "--config"])
            .arg(config)
            .env("LOCKSTEP_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// Starts the agent with SIGTERM and SIGINT blocked, as they are in the agent's first
    /// instants (before its handler is in place): one sent now is held by the kernel
    /// until the agent takes it.
    pub fn start_signals_held(config: &Path, log: &Path) -> Agent {
        let mut cmd = Self::command(config, log);
        #[allow(unsafe_code)]
        // SAFETY: runs in the forked child before exec and only calls sigemptyset,
        // sigaddset and pthread_sigmask (async-signal-safe) on a set on its stack.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                let mut set = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                    0 => Ok(()),
                    e => Err(std::io::Error::from_raw_os_error(e)),
                }
            });
        }
        Agent {
            child: Some(cmd.spawn().expect("start lockstep")),
        }
    }

    /// Starts the agent with at most `nofile` open files (soft and hard limit, as
    /// `ulimit -n` sets them).
    pub fn start_nofile(config: &Path, log: &Path, nofile: u64) -> Agent {
        let mut cmd = Self::command(config, log);
        #[allow(unsafe_code)]
        // SAFETY: runs in the forked child before exec and only calls setrlimit
        // (async-signal-safe) with a value on its stack.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: nofile as libc::rlim_t,
                    rlim_max: nofile as libc::rlim_t,
                };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &r) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        Agent {
            child: Some(cmd.spawn().expect("start lockstep")),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.terminate().and_then(|(s, _)| s.code())
    }

    /// SIGTERM, then wait (15 s at most) for the process to end: its exit status and
    /// how long it took. `None` when the agent was already stopped or killed.
    pub fn terminate(&mut self) -> Option<(std::process::ExitStatus, Duration)> {
        let mut c = self.child.take()?;
        let sent = Instant::now();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = sent + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return Some((s, sent.elapsed()));
            }
            if Instant::now() >= deadline {
                // Not left running after the test.
                let _ = c.kill();
                let _ = c.wait();
                panic!("lockstep did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's peak resident memory so far (VmHWM, KiB; 0 when it cannot be read).
    pub fn peak_rss_kib(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmHWM:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Waits (up to `within`) for the process to end on its own: its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Appends lines to a file (opening it for each call, like a batch job would).
pub fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// A JSON change line for id `i`.
pub fn line(i: u64) -> String {
    format!(
        r#"{{"id":{i},"op":"c","clinic":"CARDIOLOGY-{}","time":"16:{:02}","fee":"{}.50"}}"#,
        i % 7,
        i % 60,
        i
    )
}

/// Polls `cond` until it holds; panics with `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent has made its first scan (it writes its checkpoint right after).
pub async fn wait_first_scan(w: &World) {
    let cp = w.dir().join("state/checkpoints/vista.json");
    wait_for("the first checkpoint", Duration::from_secs(30), || {
        cp.exists()
    })
    .await;
}

/// The agent's log, for failure messages.
pub fn agent_log(w: &World) -> String {
    std::fs::read_to_string(w.dir().join("agent.log")).unwrap_or_default()
}

/// The `after.id` of every event in spool segment `seg` (which must be undamaged).
pub fn spooled_ids(seg: &Path) -> Vec<i64> {
    let data = std::fs::read(seg).unwrap();
    let mut ids = Vec::new();
    lockstep_formats::frame::scan(
        &data,
        |_, _, events| {
            for e in events {
                let v: serde_json::Value = serde_json::from_slice(e.payload.0).unwrap();
                ids.push(v["after"]["id"].as_i64().unwrap());
            }
        },
        |at, e| panic!("{} is damaged at byte {at}: {e}", seg.display()),
    )
    .unwrap();
    ids
}
