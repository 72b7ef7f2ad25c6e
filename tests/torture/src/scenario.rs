//! A scenario: a source setup × a workload × a fault schedule, all drawn from one seed.
//!
//! The workload is written in steps; between steps the faults of the schedule begin and
//! end (the agent killed with -9 or stopped with SIGTERM and started again, the broker
//! killed with -9 and restarted, the proxy dropping or stalling the agent's connection).
//! After the last step every fault is healed, the driver waits (with a deadline) until
//! the stream replays to the source's truth, stops the agent with SIGTERM, reads the
//! whole stream once more and runs every check on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::check::{self, State};
use crate::cluster::{Brokers, Proxies};
use crate::infra::{self, Infra, Live};
use crate::procs::{free_port, Agent, BrokerKind, Exit, ProxyMode, Res};
use crate::rng::Rng;
use crate::sql::{self, Db};
use crate::stream::{Msg, Reader};
use crate::{pg, tail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Tail,
    Trigger(Db),
    Poll(Db),
    /// Several sources on one database, each on a table of its own (sql.rs).
    Multi(Db),
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Tail => "tail",
            Family::Trigger(Db::Pg) => "trigger-pg",
            Family::Trigger(Db::Maria) => "trigger-mariadb",
            Family::Trigger(Db::Lite) => "trigger-sqlite",
            Family::Poll(Db::Pg) => "poll-pg",
            Family::Poll(Db::Maria) => "poll-mariadb",
            Family::Poll(Db::Lite) => "poll-sqlite",
            Family::Multi(Db::Pg) => "multi-pg",
            Family::Multi(Db::Maria) => "multi-mariadb",
            Family::Multi(Db::Lite) => "multi-sqlite",
        }
    }

    /// `--only`: comma-separated names (`trigger-mariadb`) or parts of names (`trigger`:
    /// every trigger database; `sqlite`: every SQLite family).
    pub fn matches(self, filter: &str) -> bool {
        let name = self.name();
        filter
            .split(',')
            .any(|w| w == name || name.split('-').any(|part| part == w))
    }

    /// Whether `filter` names at least one family.
    pub fn valid_filter(filter: &str) -> bool {
        let all = [Db::Pg, Db::Maria, Db::Lite]
            .into_iter()
            .flat_map(|d| [Family::Trigger(d), Family::Poll(d), Family::Multi(d)])
            .chain([Family::Tail]);
        filter.split(',').all(|w| all.clone().any(|f| f.matches(w)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of lockstep, started again `len` steps later.
    Kill9,
    /// SIGTERM (must exit 0 within 15 s), started again `len` steps later.
    Term,
    /// kill -9 of nats-server, restarted `len` steps later.
    BrokerKill,
    /// The proxy cuts the agent's connections and refuses new ones for `len` steps.
    ProxyDrop,
    /// The proxy holds every byte for `len` steps.
    ProxyStall,
    /// A small spool filled: the broker down long while a burst is written (infra.rs).
    SpoolFull,
    /// The private PostgreSQL crashed and started again (infra.rs).
    DbRestart,
    /// kill -9 of the R3 stream's leader in a cluster, restarted later (infra.rs).
    LeaderKill,
    /// The broker down and `state_dir`'s tmpfs filled, emptied later (infra.rs).
    DiskFull,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill9",
            FaultKind::Term => "sigterm",
            FaultKind::BrokerKill => "broker-kill9",
            FaultKind::ProxyDrop => "proxy-drop",
            FaultKind::ProxyStall => "proxy-stall",
            FaultKind::SpoolFull => "spool-full",
            FaultKind::DbRestart => "db-restart",
            FaultKind::LeaderKill => "leader-kill9",
            FaultKind::DiskFull => "disk-full",
        }
    }

    /// The process or link the fault acts on: faults on one never overlap.
    pub fn resource(self) -> u8 {
        match self {
            FaultKind::Kill9 | FaultKind::Term => 0,
            FaultKind::BrokerKill
            | FaultKind::SpoolFull
            | FaultKind::LeaderKill
            | FaultKind::DiskFull => 1,
            FaultKind::ProxyDrop | FaultKind::ProxyStall => 2,
            FaultKind::DbRestart => 3,
        }
    }

    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill9,
        FaultKind::Term,
        FaultKind::BrokerKill,
        FaultKind::ProxyDrop,
        FaultKind::ProxyStall,
    ];
}

#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub kind: FaultKind,
    /// The step after whose writes it begins.
    pub at: usize,
    /// How many steps it lasts (0: healed at once, e.g. killed and started again).
    pub len: usize,
    /// How long after the step's writes it begins (a random moment of the capture).
    pub delay_ms: u64,
    /// It lasts at least this long (ms), however fast the steps go: an outage long
    /// enough for acks to time out and the spool to fill.
    pub hold_ms: u64,
    /// A kill -9 aimed at a phase: the agent started before it kills itself at this
    /// crash point (see `lockstep::crash`).
    pub aim: Option<Aim>,
}

impl Fault {
    /// The fault's name in the summaries: its kind, and the point an aimed kill aims at.
    pub fn label(&self) -> String {
        match self.aim {
            Some(a) => format!("{}@{}", self.kind.name(), a.point),
            None => self.kind.name().to_owned(),
        }
    }
}

/// `LOCKSTEP_CRASH_AT=<point>:<n>`: the agent kills itself the `n`-th time it passes
/// `point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aim {
    pub point: &'static str,
    pub n: u64,
}

impl Aim {
    pub fn env(&self) -> String {
        format!("{}:{}", self.point, self.n)
    }
}

/// The first seed whose kills -9 may be aimed at a phase (capture, spool append and
/// drain, checkpoint, trigger delete, poll snapshot and scan swap): the seeds below keep
/// the plans they always had.
pub const AIMED_KILLS: u64 = 20_000;

/// From seed [`AIMED_KILLS`] on: each kill -9 is aimed at a phase with a chance of 3 in
/// 4, and a scenario without one gets one where the agent has no other fault, drawn from
/// a generator of its own (the other draws stay as they were).
fn aim_kills(seed: u64, family: Family, faults: &mut Vec<Fault>, steps: usize) {
    if seed < AIMED_KILLS {
        return;
    }
    let mut r = Rng::new(seed ^ 0x5bd1_e995_c0ff_ee11);
    // Where each point is passed, and how many passages to let by (a capture is a batch,
    // a snapshot entry a row, a spool frame a batch written while the broker is away).
    let points: &[(&str, u64)] = match family {
        Family::Tail => &[
            ("capture", 10),
            ("checkpoint", 8),
            ("spool-append", 8),
            ("spool-drain", 20),
        ],
        Family::Trigger(_) | Family::Multi(_) => &[
            ("capture", 10),
            ("trigger-delete", 6),
            ("checkpoint", 4),
            ("spool-append", 8),
            ("spool-drain", 20),
        ],
        Family::Poll(_) => &[
            ("capture", 6),
            ("snapshot", 300),
            ("scan-swap", 3),
            ("checkpoint", 4),
            ("spool-append", 4),
            ("spool-drain", 20),
        ],
    };
    let draw = |r: &mut Rng| {
        let (point, most) = *r.pick(points);
        Aim {
            point,
            n: r.range(1, most),
        }
    };
    let mut any = false;
    for f in faults.iter_mut().filter(|f| f.kind == FaultKind::Kill9) {
        if r.chance(75) {
            f.aim = Some(draw(&mut r));
            any = true;
        }
    }
    if !any {
        let at = r.below(steps as u64 - 1) as usize;
        let free = !faults
            .iter()
            .any(|f| f.kind.resource() == 0 && at <= f.at + f.len && f.at <= at + 1);
        if free {
            faults.push(Fault {
                kind: FaultKind::Kill9,
                at,
                len: r.range(0, 1) as usize,
                delay_ms: r.range(0, 300),
                hold_ms: 0,
                aim: Some(draw(&mut r)),
            });
            faults.sort_by_key(|f| (f.at, f.delay_ms));
        }
    }
    // The spool drains only after an outage: a kill aimed at the drain moves to the
    // step after the first broker or link outage ends, where its step is free.
    let outage_end = (faults.iter())
        .filter(|f| matches!(f.kind.resource(), 1 | 2))
        .map(|f| f.at + f.len + 1)
        .min();
    if let Some(end) = outage_end.filter(|&e| e < steps) {
        for i in 0..faults.len() {
            let f = faults[i];
            if f.aim.is_none_or(|a| a.point != "spool-drain") || f.at >= end {
                continue;
            }
            let free = !faults.iter().enumerate().any(|(j, g)| {
                j != i && g.kind.resource() == 0 && end <= g.at + g.len && g.at <= end + f.len
            });
            if free {
                faults[i].at = end;
            }
        }
        faults.sort_by_key(|f| (f.at, f.delay_ms));
    }
}

/// What a source family does in a scenario.
pub trait Source {
    /// A one-line description of the setup and the workload.
    fn describe(&self) -> String;
    /// The `[[source]]` TOML.
    fn config(&self) -> String;
    /// Before the agent's first start (tables, triggers).
    fn setup(&mut self, config: &Path) -> Res<()>;
    /// True once the agent, first started, has taken its first look at the source (a
    /// file written, rotated and compressed before the agent ever saw it cannot be
    /// followed: the workload starts after this).
    fn ready(&self, _state_dir: &Path) -> bool {
        true
    }
    /// Writes step `i` of the workload. `quiet`: no fault is active and the agent is up
    /// (tail truncation waits for it, and for the stream to have every record). A step
    /// that waits calls `tend` now and then: it starts again an agent that reached its
    /// crash point meanwhile.
    fn step(
        &mut self,
        i: usize,
        quiet: bool,
        reader: &mut Reader,
        tend: &mut dyn FnMut(),
    ) -> Res<()>;
    /// The final state the stream must replay to.
    fn truth(&self) -> Res<State>;
    /// True once the stream holds everything (beyond the model equalling the truth).
    fn complete(&self, msgs: &[Msg]) -> bool;
    /// The checks of this family on the final stream; `restarted`: the agent was
    /// killed or stopped during the scenario.
    fn checks(&self, msgs: &[Msg], restarted: bool) -> Vec<String>;
    /// Records written that must be quarantined, not sent.
    fn bad_records(&self) -> u64;
    /// Records (changes) the workload wrote.
    fn changes(&self) -> u64;
    /// Drops what it made outside the scenario directory (a schema).
    fn cleanup(&mut self);
    /// How long the stream may take to catch up after the last step.
    fn catch_up_secs(&self) -> u64 {
        120
    }
    /// True when each change is one event and the workload never waits for every
    /// record to arrive: events dropped by a full spool can be counted as missing.
    fn losses_countable(&self) -> bool {
        false
    }
    /// MiB the agent's state directory needs for this workload besides the spool (a
    /// poll scan of a big transaction keeps the table's last scan, the next one and
    /// the changes between): a small tmpfs drawn for it is made at least this big, or
    /// the disk could never hold the scan and the stream never catch up.
    fn state_mib(&self) -> u64 {
        0
    }
}

/// Everything drawn from a seed.
pub struct Plan {
    pub seed: u64,
    pub family: Family,
    pub broker: BrokerKind,
    pub steps: usize,
    pub faults: Vec<Fault>,
    /// Pause after each step's writes, in ms.
    pub pace_ms: Vec<u64>,
    pub source: Box<dyn Source>,
    /// Spool size, private PostgreSQL, nats cluster, tmpfs (infra.rs).
    pub infra: Infra,
}

/// The family a seed's scenario belongs to, so `--only` can skip seeds without building
/// their scenario.
pub fn family_of(seed: u64) -> Family {
    first_draws(seed).1
}

/// The first draws of a seed: the infrastructure's generator, the family, the workload's and the
/// faults' generators, whether it drew the current broker. The database is the last
/// of these draws, so the seeds of the first slice kept their workloads and faults.
fn first_draws(seed: u64) -> (Rng, Family, Rng, Rng, bool) {
    let mut r = Rng::new(seed);
    let kind = r.below(3);
    let wr = r.fork();
    let fr = r.fork();
    let current = r.chance(50);
    // The infrastructure's generator (infra.rs) is what a fork here would give, taken
    // without moving `r`: the database draw below stays as it was, and so does the
    // infrastructure of the seeds drawn before the databases existed.
    let xr = r.clone().fork();
    let roll = r.below(100);
    let db = match roll % 20 {
        0..=7 => Db::Pg,
        8..=13 => Db::Maria,
        _ => Db::Lite,
    };
    let family = match (kind, roll) {
        (0, _) => Family::Tail,
        (_, 80..) => Family::Multi(db),
        (1, _) => Family::Trigger(db),
        _ => Family::Poll(db),
    };
    (xr, family, wr, fr, current)
}

impl Plan {
    pub fn draw(seed: u64, dir: &Path) -> Plan {
        let (mut xr, family, mut wr, mut fr, current) = first_draws(seed);
        let broker = if current && BrokerKind::Current.binary().is_some() {
            BrokerKind::Current
        } else {
            BrokerKind::Debian
        };
        let mut infra = Infra::draw(&mut xr, family);
        let steps = fr.range(6, 16) as usize;
        let pg_port = infra.pg_port.unwrap_or(5432);
        let source: Box<dyn Source> = match family {
            Family::Tail => Box::new(tail::Tail::draw(&mut wr, seed, dir, steps)),
            Family::Trigger(Db::Pg) => {
                Box::new(pg::Pg::draw(&mut wr, seed, pg::Mode::Trigger, steps).on_port(pg_port))
            }
            Family::Poll(Db::Pg) => {
                Box::new(pg::Pg::draw(&mut wr, seed, pg::Mode::Poll, steps).on_port(pg_port))
            }
            Family::Trigger(db) | Family::Poll(db) | Family::Multi(db) => {
                let (kind, multi) = match family {
                    Family::Poll(_) => (sql::Kind::Poll, false),
                    Family::Multi(_) => (sql::Kind::Trigger, true),
                    _ => (sql::Kind::Trigger, false),
                };
                Box::new(sql::Sql::draw(&mut wr, seed, dir, db, kind, multi, steps))
            }
        };
        infra.settle(&*source);
        let mut faults = draw_faults(&mut fr, steps);
        let pace_ms = (0..steps).map(|_| fr.range(20, 400)).collect();
        infra.draw_faults(&mut xr, steps, &mut faults);
        aim_kills(seed, family, &mut faults, steps);
        Plan {
            seed,
            family,
            broker,
            steps,
            faults,
            pace_ms,
            source,
            infra,
        }
    }

    pub fn fault_summary(&self) -> String {
        if self.faults.is_empty() {
            return "none".into();
        }
        // In the kinds' order, aimed kills after the plain ones.
        let mut kinds: Vec<(FaultKind, String)> =
            self.faults.iter().map(|f| (f.kind, f.label())).collect();
        kinds.sort();
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        while i < kinds.len() {
            let n = kinds[i..].iter().take_while(|k| **k == kinds[i]).count();
            let name = &kinds[i].1;
            out.push(if n > 1 {
                format!("{name}x{n}")
            } else {
                name.clone()
            });
            i += n;
        }
        out.join(",")
    }
}

fn draw_faults(r: &mut Rng, steps: usize) -> Vec<Fault> {
    let n = r.range(0, 6);
    let mut out: Vec<Fault> = Vec::new();
    for _ in 0..n {
        let kind = *r.pick(&FaultKind::ALL);
        let at = r.below(steps as u64 - 1) as usize;
        let len = r.range(0, 3) as usize;
        let len = if kind.resource() == 0 {
            len
        } else {
            len.max(1)
        };
        let delay_ms = r.range(0, 300);
        let hold_ms = if r.chance(40) { r.range(1000, 6000) } else { 0 };
        let end = (at + len).min(steps);
        let overlaps = out
            .iter()
            .any(|f| f.kind.resource() == kind.resource() && at <= f.at + f.len && f.at <= end);
        if !overlaps {
            out.push(Fault {
                kind,
                at,
                len: end - at,
                delay_ms,
                hold_ms,
                aim: None,
            });
        }
    }
    out.sort_by_key(|f| (f.at, f.delay_ms));
    out
}

/// The outcome of one scenario.
pub struct Outcome {
    pub events: usize,
    pub changes: u64,
    pub failures: Vec<String>,
    /// What the faults saw (the spool's size when healed, the leader killed…).
    pub notes: Vec<String>,
}

/// The agent's admin endpoint: `/metrics` as text ("" when it cannot be read).
pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    resp.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}

pub const STREAM: &str = "TORTURE";

fn agent_config(dir: &Path, servers: &str, admin_port: u16, source: &str) -> String {
    format!(
        r#"[agent]
id = "torture"
state_dir = "{state}"

[nats]
servers = {servers}
stream = "{STREAM}"
subject_prefix = "torture"
create_stream = true
ack_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin_port}"

{source}
"#,
        state = dir.join("state").display(),
    )
}

/// Runs the scenario in `dir`.
pub fn run(plan: &mut Plan, dir: &Path) -> Res<Outcome> {
    // Declared before the agent: dropped (stopped, unmounted) after it.
    let mut live = Live::start(&plan.infra, dir)?;
    let mut broker = Brokers::start(plan.broker, dir, plan.infra.cluster)?;
    let proxy = Proxies::start(&broker)?;
    let admin_port = free_port()?;
    live.admin_port = admin_port;
    let cfg_path: PathBuf = dir.join("lockstep.toml");
    let source_cfg = format!("{}\n{}", plan.infra.config(), plan.source.config());
    let text = agent_config(dir, &proxy.servers_toml(), admin_port, &source_cfg);
    std::fs::write(&cfg_path, text).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    std::fs::write(
        dir.join("plan.txt"),
        format!(
            "seed {}\nfamily {}\nbroker {}\nsteps {}\nsource {}\ninfra {}\nfaults {:#?}\npace_ms {:?}\n",
            plan.seed,
            plan.family.name(),
            plan.broker.label(),
            plan.steps,
            plan.source.describe(),
            plan.infra.describe(),
            plan.faults,
            plan.pace_ms
        ),
    )
    .map_err(|e| format!("plan.txt: {e}"))?;
    plan.source.setup(&cfg_path)?;
    let mut agent = Agent::new(&cfg_path, &dir.join("agent.log"));
    agent.aims = (plan.faults.iter().enumerate())
        .filter_map(|(fi, f)| Some((fi, f.aim?.env())))
        .collect();
    agent.start()?;
    let mut failures = Vec::new();
    let mut restarted = false;
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !plan.source.ready(&dir.join("state")) {
        if Instant::now() > ready_by {
            return Err("the agent did not take its first look at the source within 60 s".into());
        }
        // An aimed kill may come before the first look (its first checkpoint).
        match agent.exited() {
            Some(Exit::Crashed(fi)) => {
                let aim = plan.faults[fi].aim.map(|a| a.env()).unwrap_or_default();
                live.notes
                    .push(format!("crash point {aim} reached before step 0"));
                restarted = true;
                agent.start()?;
            }
            Some(Exit::Unexpected(s)) => {
                failures.push(format!("lockstep exited on its own before step 0: {s}"));
                agent.start()?;
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut reader = Reader::new(&broker.url(), STREAM)?;
    // Faults begun and not healed yet: index → when it began.
    let mut active: Vec<(usize, Instant)> = Vec::new();

    for i in 0..plan.steps {
        // Faults that end now: their steps are over and they lasted their hold time.
        let mut k = 0;
        while k < active.len() {
            let (fi, began) = active[k];
            let f = plan.faults[fi];
            if f.at + f.len <= i && began.elapsed() >= Duration::from_millis(f.hold_ms) {
                heal(
                    f.kind,
                    &mut agent,
                    &mut broker,
                    &proxy,
                    &mut live,
                    admin_port,
                )?;
                active.swap_remove(k);
            } else {
                k += 1;
            }
        }
        let quiet =
            agent.is_up() && broker.is_up() && proxy.mode() == ProxyMode::Pass && active.is_empty();
        live.log(&format!("step {i}"));
        let mut crashed_within: Option<String> = None;
        {
            let (agent, faults, failures) = (&mut agent, &plan.faults, &mut failures);
            let mut tend = || match agent.exited() {
                Some(Exit::Crashed(fi)) => {
                    crashed_within = Some(faults[fi].aim.map(|a| a.env()).unwrap_or_default());
                    let _ = agent.start();
                }
                Some(Exit::Unexpected(s)) => {
                    failures.push(format!("lockstep exited on its own during step {i}: {s}"));
                    let _ = agent.start();
                }
                None => {}
            };
            plan.source.step(i, quiet, &mut reader, &mut tend)?;
        }
        if let Some(aim) = crashed_within {
            live.log(&format!("step {i}: crashed at {aim} (during the step)"));
            live.notes
                .push(format!("crash point {aim} reached during step {i}"));
            restarted = true;
        }
        match agent.exited() {
            Some(Exit::Crashed(fi)) => {
                // An aimed kill came before its step: started again at once.
                let aim = plan.faults[fi].aim.map(|a| a.env()).unwrap_or_default();
                live.log(&format!("step {i}: crashed at {aim}"));
                live.notes
                    .push(format!("crash point {aim} reached at step {i}"));
                restarted = true;
                keep_checkpoints(dir, &format!("crash-step{i}"));
                agent.start()?;
            }
            Some(Exit::Unexpected(s)) => {
                failures.push(format!("lockstep exited on its own at step {i}: {s}"));
                agent.start()?;
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(plan.pace_ms[i]));
        let begin: Vec<usize> = (0..plan.faults.len())
            .filter(|&fi| plan.faults[fi].at == i)
            .collect();
        for fi in begin {
            let f = plan.faults[fi];
            std::thread::sleep(Duration::from_millis(f.delay_ms));
            // A fault of infra.rs on a resource whose fault is still in its hold time
            // ends that one first (a leader cannot be killed in a cluster that is down).
            // The others keep acting on what is already down (a SIGTERM right after a
            // start would come before the agent's handler).
            while let Some(k) = active.iter().position(|(a, _)| {
                infra::KINDS.contains(&f.kind)
                    && plan.faults[*a].kind.resource() == f.kind.resource()
            }) {
                let (a, began) = active.swap_remove(k);
                let hold = Duration::from_millis(plan.faults[a].hold_ms);
                if let Some(left) = hold.checked_sub(began.elapsed()) {
                    std::thread::sleep(left);
                }
                heal(
                    plan.faults[a].kind,
                    &mut agent,
                    &mut broker,
                    &proxy,
                    &mut live,
                    admin_port,
                )?;
            }
            live.log(&format!("step {i}: begin {}", f.kind.name()));
            match f.kind {
                FaultKind::Kill9 if f.aim.is_some() => {
                    let aim = f.aim.map(|a| a.env()).unwrap_or_default();
                    match agent.aimed_kill(fi, Duration::from_secs(3)) {
                        Ok(Some(reached)) => {
                            let how = if reached {
                                "reached"
                            } else {
                                "not reached within 3 s: killed -9"
                            };
                            live.notes
                                .push(format!("crash point {aim} {how} at step {i}"));
                            restarted = true;
                            keep_checkpoints(dir, &format!("kill9-step{i}"));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failures.push(format!("lockstep exited on its own at step {i}: {e:?}"));
                            restarted = true;
                        }
                    }
                }
                FaultKind::Kill9 => {
                    agent.kill9();
                    restarted = true;
                    keep_checkpoints(dir, &format!("kill9-step{i}"));
                }
                FaultKind::Term => {
                    // Not in the first moments after a start (before the agent's
                    // handler is installed, SIGTERM ends it with the signal).
                    if agent.is_up() {
                        infra::wait_admin(admin_port);
                    }
                    if let Err(e) = agent.terminate() {
                        failures.push(format!("step {i}: {e}"));
                    }
                    restarted = true;
                }
                FaultKind::BrokerKill => broker.kill9(),
                FaultKind::ProxyDrop => proxy.set(ProxyMode::Drop),
                FaultKind::ProxyStall => proxy.set(ProxyMode::Stall),
                FaultKind::SpoolFull
                | FaultKind::DbRestart
                | FaultKind::LeaderKill
                | FaultKind::DiskFull => live.begin(
                    &f,
                    i,
                    &plan.infra,
                    &mut broker,
                    &mut *plan.source,
                    &mut reader,
                )?,
            }
            // A database restart is over before the next step writes.
            if (f.len == 0 && f.hold_ms == 0) || f.kind == FaultKind::DbRestart {
                heal(
                    f.kind,
                    &mut agent,
                    &mut broker,
                    &proxy,
                    &mut live,
                    admin_port,
                )?;
            } else {
                active.push((fi, Instant::now()));
            }
        }
    }
    // Everything healed, each after its hold time.
    for (fi, began) in active {
        let hold = Duration::from_millis(plan.faults[fi].hold_ms);
        if let Some(left) = hold.checked_sub(began.elapsed()) {
            std::thread::sleep(left);
        }
        heal(
            plan.faults[fi].kind,
            &mut agent,
            &mut broker,
            &proxy,
            &mut live,
            admin_port,
        )?;
    }
    live.heal_all()?;
    broker.restart_if_down()?;
    proxy.set(ProxyMode::Pass);
    // An aimed kill whose step was never reached (none is left: each is done at its
    // step) must not arm the final run.
    agent.aims.clear();
    agent.start()?;

    // Wait until the stream replays to the truth.
    let truth = plan.source.truth()?;
    let catch_up = plan.source.catch_up_secs();
    let deadline = Instant::now() + Duration::from_secs(catch_up);
    // With drop_oldest the stream never replays to the truth: until every change is
    // in it or logged as dropped, the spool is empty and nothing more arrives.
    let drops = plan.infra.drop_oldest();
    let mut settled = 0;
    loop {
        let new = reader.poll()?;
        if drops {
            let n = reader.msgs.len() as u64 + infra::dropped_in_log(dir);
            let spooled = check::metric_sum(&metrics(admin_port), "lockstep_spool_events");
            settled = if n >= plan.source.changes() && spooled == 0 && new == 0 {
                settled + 1
            } else {
                0
            };
            if settled >= 4 {
                break;
            }
        } else {
            let model = check::replay(&reader.msgs);
            if check::compare(&model, &truth).is_empty() && plan.source.complete(&reader.msgs) {
                break;
            }
        }
        if Instant::now() > deadline {
            failures.push(format!(
                "the stream did not reach the source's state within {catch_up} s"
            ));
            break;
        }
        if let Some(e) = agent.exited() {
            failures.push(format!(
                "lockstep exited on its own while catching up: {e:?}"
            ));
            agent.start()?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // Metrics agree with what arrived, where one process saw everything (with drops,
    // events stored whose ack the broker's death lost are counted as dropped, not
    // published: infra::drop_checks accounts for them).
    let mut published = None;
    if !restarted {
        failures.extend(check_metrics(
            admin_port,
            plan.source.bad_records(),
            (!drops).then_some(reader.msgs.len() as u64),
        ));
        published = Some(check::metric_sum(
            &metrics(admin_port),
            "lockstep_events_published_total",
        ));
    }
    if let Err(e) = agent.terminate() {
        failures.push(format!("final stop: {e}"));
    }
    reader.poll()?;
    let msgs = &reader.msgs;
    let model = check::replay(msgs);
    failures.extend(check::duplicate_ids(msgs));
    if drops {
        failures.extend(infra::drop_checks(
            dir,
            msgs.len() as u64,
            plan.source.changes(),
            published,
        ));
        let (explained, other): (Vec<String>, Vec<String>) = plan
            .source
            .checks(msgs, restarted)
            .into_iter()
            .partition(|f| infra::explained_by_drops(f));
        failures.extend(other);
        // Kept for a failure's inspection: which records are missing, to set against
        // the spool's drops in the agent's log.
        let _ = std::fs::write(dir.join("explained-by-drops.txt"), explained.join("\n"));
    } else {
        failures.extend(check::compare(&model, &truth));
        failures.extend(plan.source.checks(msgs, restarted));
    }
    // A panic anywhere in the agent (a thread that died and was restarted) is a bug
    // even when nothing was lost.
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    if !panics.is_empty() {
        failures.push(format!(
            "{} panic(s) in agent.log, first: {}",
            panics.len(),
            &panics[0][..panics[0].len().min(300)]
        ));
    }
    if restarted {
        // Counters restart with the process: the quarantine files hold the bad records.
        let bad = plan.source.bad_records();
        let q = quarantined_lines(dir);
        if q < bad {
            failures.push(format!(
                "{bad} bad record(s) written, {q} in the quarantine files"
            ));
        }
    }
    Ok(Outcome {
        events: msgs.len(),
        changes: plan.source.changes(),
        failures,
        notes: std::mem::take(&mut live.notes),
    })
}

/// Copies `state/checkpoints` as the kill left it to `checkpoints-<tag>` (for the
/// report of a failure).
fn keep_checkpoints(dir: &Path, tag: &str) {
    let from = dir.join("state/checkpoints");
    let to = dir.join(format!("checkpoints-{tag}"));
    let Ok(entries) = std::fs::read_dir(&from) else {
        return;
    };
    if std::fs::create_dir_all(&to).is_err() {
        return;
    }
    for e in entries.flatten() {
        if e.path().is_file() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

fn heal(
    kind: FaultKind,
    agent: &mut Agent,
    broker: &mut Brokers,
    proxy: &Proxies,
    live: &mut Live,
    admin_port: u16,
) -> Res<()> {
    live.log(&format!("heal {}", kind.name()));
    match kind {
        FaultKind::Kill9 | FaultKind::Term => agent.start(),
        FaultKind::BrokerKill => broker.restart(),
        FaultKind::ProxyDrop | FaultKind::ProxyStall => {
            proxy.set(ProxyMode::Pass);
            Ok(())
        }
        FaultKind::SpoolFull
        | FaultKind::DbRestart
        | FaultKind::LeaderKill
        | FaultKind::DiskFull => live.heal(kind, broker, &metrics(admin_port)),
    }
}

/// captured = published + repeated + refused + dropped (the events of one process),
/// quarantined = the bad records written, and (`stored`: no spool drops) published ≤
/// the messages stored ≤ published + repeated (a copy whose acknowledgement was lost is
/// stored, and its re-send is counted as repeated); polled with a deadline (acks may
/// still be on their way).
fn check_metrics(port: u16, bad: u64, stored: Option<u64>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(port);
        let captured = check::metric_sum(&m, "lockstep_events_captured_total");
        let published = check::metric_sum(&m, "lockstep_events_published_total");
        let repeated = check::metric_sum(&m, "lockstep_events_repeated_total");
        let refused = check::metric_sum(&m, "lockstep_events_refused_total");
        let dropped = check::metric_sum(&m, "lockstep_spool_dropped_events_total");
        let quarantined = check::metric_sum(&m, "lockstep_quarantined_records_total");
        let mut bad_now = Vec::new();
        if captured != published + repeated + refused + dropped {
            bad_now.push(format!(
                "metrics: captured {captured} != published {published} + repeated {repeated} + refused {refused} + dropped {dropped}"
            ));
        }
        if quarantined != bad {
            bad_now.push(format!(
                "metrics: quarantined {quarantined}, bad records written {bad}"
            ));
        }
        if let Some(stored) = stored.filter(|&s| published > s || s > published + repeated) {
            bad_now.push(format!(
                "metrics: published {published} and repeated {repeated}, messages in the stream {stored}"
            ));
        }
        if bad_now.is_empty() || Instant::now() > deadline {
            return bad_now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lines in `state/quarantine/*` (records set aside, one per line).
fn quarantined_lines(dir: &Path) -> u64 {
    let Ok(d) = std::fs::read_dir(dir.join("state/quarantine")) else {
        return 0;
    };
    d.filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.contains("refused") && !n.starts_with('.')
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.lines().count() as u64)
        .sum()
}
