//! What a scenario may run on besides the defaults, drawn from the seed after the rest
//! of the plan (so adding it shifted no earlier draw), and the fault kinds that need it:
//! - a small spool (`spool.max_bytes` 64–256 KiB, `when_full` `block` or `drop_oldest`)
//!   and the fault *spool-full*: the broker killed -9 for a long outage while the
//!   workload writes a burst of extra steps, restarted later;
//! - a private PostgreSQL cluster for the trigger and poll families ([`PrivPg`]) and
//!   the fault *db-restart*: `pg_ctl -m immediate stop`, down for its hold time, started
//!   again (before the next step writes);
//! - a JetStream cluster of three nats-servers with an R3 stream ([`Brokers`]) and the
//!   fault *leader-kill9*: the stream's leader killed -9, restarted later;
//! - a small tmpfs for `state_dir` ([`Tmpfs`], root only) and the fault *disk-full*: the
//!   broker killed -9, the tmpfs filled by a filler file while the workload goes on,
//!   then the filler removed and the broker restarted.
//!
//! With `drop_oldest` the stream may lack events: only where the source makes one
//! event per change (and never waits for every record to arrive), and then the events
//! missing must be exactly the ones the agent logged as dropped (at most those after a
//! restart of the agent, which may capture a dropped event again).

use std::path::Path;
use std::time::Duration;

use crate::cluster::Brokers;
use crate::disk::Tmpfs;
use crate::privpg::PrivPg;
use crate::procs::{free_port, Res};
use crate::rng::Rng;
use crate::scenario::{Family, Fault, FaultKind, Source};
use crate::sql::Db;
use crate::stream::Reader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    Block,
    DropOldest,
}

#[derive(Debug, Clone)]
pub struct Infra {
    /// `spool.max_bytes` in KiB and `spool.when_full`; None: the defaults (1 GiB, block).
    pub spool: Option<(u64, WhenFull)>,
    /// Extra steps written at once during a spool-full or disk-full outage.
    pub burst: usize,
    /// The port of a private PostgreSQL cluster (trigger and poll families).
    pub pg_port: Option<u16>,
    /// Three nats-servers in a cluster, the stream with 3 replicas.
    pub cluster: bool,
    /// A tmpfs of this many MiB for `state_dir`.
    pub tmpfs_mib: Option<u64>,
}

/// The fault kinds of this module.
pub const KINDS: [FaultKind; 4] = [
    FaultKind::SpoolFull,
    FaultKind::DbRestart,
    FaultKind::LeaderKill,
    FaultKind::DiskFull,
];

impl Infra {
    pub fn draw(r: &mut Rng, family: Family) -> Infra {
        if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
            return Infra {
                spool: None,
                burst: 0,
                pg_port: None,
                cluster: false,
                tmpfs_mib: None,
            };
        }
        let spool = r.chance(30).then(|| {
            let kib = *r.pick(&[64, 96, 128, 256]);
            let when = if r.chance(50) {
                WhenFull::DropOldest
            } else {
                WhenFull::Block
            };
            (kib, when)
        });
        let burst = r.range(6, 14) as usize;
        let pg = matches!(family, Family::Trigger(Db::Pg) | Family::Poll(Db::Pg)) && r.chance(35);
        let cluster = r.chance(25);
        let tmpfs_mib = r.chance(25).then(|| r.range(8, 16));
        Infra {
            spool,
            burst,
            pg_port: if pg { free_port().ok() } else { None },
            cluster,
            tmpfs_mib,
        }
    }

    /// `drop_oldest` only where the losses can be counted (else `block`); a tmpfs big
    /// enough for the workload's state.
    pub fn settle(&mut self, source: &dyn Source) {
        if let Some(m) = self.tmpfs_mib.as_mut() {
            *m = (*m).max(source.state_mib());
        }
        if let Some((_, w)) = self.spool.as_mut() {
            if !source.losses_countable() {
                *w = WhenFull::Block;
            }
        }
    }

    pub fn drop_oldest(&self) -> bool {
        matches!(self.spool, Some((_, WhenFull::DropOldest)))
    }

    pub fn describe(&self) -> String {
        let mut o = Vec::new();
        if let Some((kib, w)) = self.spool {
            o.push(format!(
                "spool={kib}KiB/{}",
                if w == WhenFull::Block {
                    "block"
                } else {
                    "drop_oldest"
                }
            ));
        }
        if self.pg_port.is_some() {
            o.push("private-pg".into());
        }
        if self.cluster {
            o.push("cluster3".into());
        }
        if let Some(m) = self.tmpfs_mib {
            o.push(format!("tmpfs={m}MiB"));
        }
        o.join(" ")
    }

    /// The agent's `[spool]` section, or "".
    pub fn config(&self) -> String {
        match self.spool {
            Some((kib, w)) => format!(
                "[spool]\nmax_bytes = \"{kib}KiB\"\nwhen_full = \"{}\"\n",
                if w == WhenFull::Block {
                    "block"
                } else {
                    "drop_oldest"
                }
            ),
            None => String::new(),
        }
    }

    /// Adds a fault of each kind this setup allows (most of the time), where it does
    /// not overlap a fault on the same resource.
    pub fn draw_faults(&self, r: &mut Rng, steps: usize, faults: &mut Vec<Fault>) {
        for kind in KINDS {
            let allowed = match kind {
                FaultKind::SpoolFull => self.spool.is_some(),
                FaultKind::DbRestart => self.pg_port.is_some(),
                FaultKind::LeaderKill => self.cluster,
                FaultKind::DiskFull => self.tmpfs_mib.is_some(),
                _ => false,
            };
            if !allowed || !r.chance(80) {
                continue;
            }
            for _ in 0..4 {
                let at = r.below(steps as u64 - 1) as usize;
                let (len, hold_ms) = match kind {
                    FaultKind::SpoolFull => (r.range(1, 2), r.range(3000, 8000)),
                    FaultKind::DiskFull => (r.range(1, 2), r.range(2000, 6000)),
                    FaultKind::LeaderKill => (
                        r.range(0, 2),
                        if r.chance(50) { r.range(1000, 5000) } else { 0 },
                    ),
                    _ => (0, r.range(200, 3000)),
                };
                let delay_ms = r.range(0, 300);
                let end = (at + len as usize).min(steps);
                let overlaps = faults.iter().any(|f| {
                    f.kind.resource() == kind.resource() && at <= f.at + f.len && f.at <= end
                });
                if !overlaps {
                    faults.push(Fault {
                        kind,
                        at,
                        len: end - at,
                        delay_ms,
                        hold_ms,
                        aim: None,
                    });
                    break;
                }
            }
        }
        faults.sort_by_key(|f| (f.at, f.delay_ms));
    }
}

/// What runs for a scenario besides the broker and the agent; stopped and unmounted
/// when dropped.
pub struct Live {
    pub pg: Option<PrivPg>,
    pub tmpfs: Option<Tmpfs>,
    /// What the new faults saw (printed with the scenario's line).
    pub notes: Vec<String>,
    /// `faults.log`: when each fault began and was healed.
    log: std::path::PathBuf,
    t0: std::time::Instant,
    /// The agent's admin port (its metrics tell when the spool is full).
    pub admin_port: u16,
}

impl Live {
    /// Before the source's setup and the agent's first start.
    pub fn start(infra: &Infra, dir: &Path) -> Res<Live> {
        let mut live = Live {
            pg: None,
            tmpfs: None,
            notes: Vec::new(),
            log: dir.join("faults.log"),
            t0: std::time::Instant::now(),
            admin_port: 0,
        };
        if let Some(port) = infra.pg_port {
            live.pg = Some(PrivPg::start(dir, port)?);
        }
        if let Some(mib) = infra.tmpfs_mib {
            live.tmpfs = Tmpfs::mount(&dir.join("state"), mib)?;
            if live.tmpfs.is_none() {
                live.notes.push(
                    "not root: no tmpfs for state_dir, the disk-full faults are broker outages only"
                        .into(),
                );
            }
        }
        Ok(live)
    }

    /// A line in `faults.log`, with the seconds since the scenario began.
    pub fn log(&self, what: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "{:8.3} {what}", self.t0.elapsed().as_secs_f64());
        }
    }

    /// Begins a fault of this module's kinds.
    pub fn begin(
        &mut self,
        f: &Fault,
        step: usize,
        infra: &Infra,
        broker: &mut Brokers,
        source: &mut dyn Source,
        reader: &mut Reader,
    ) -> Res<()> {
        let burst = infra.burst;
        match f.kind {
            FaultKind::SpoolFull => {
                broker.kill9();
                write_burst(source, reader, burst)?;
                // Then more steps until the spool is (nearly) full or drops, up to 80
                // (how many depends on how fast the agent spools: not on the seed).
                let mut extra = 0;
                while extra < 80 && !self.spool_full(infra) {
                    write_burst(source, reader, 1)?;
                    extra += 1;
                }
                self.notes.push(format!(
                    "spool-full at step {step}: {} extra step(s) written",
                    burst + extra
                ));
            }
            FaultKind::DiskFull => {
                broker.kill9();
                if let Some(t) = &self.tmpfs {
                    // Some events first, so the spool has something on the disk.
                    write_burst(source, reader, burst / 2)?;
                    let n = t.fill()?;
                    self.notes
                        .push(format!("disk-full at step {step}: filler of {n} bytes"));
                    write_burst(source, reader, burst / 2)?;
                }
            }
            FaultKind::LeaderKill => {
                let l = broker.kill_leader()?;
                self.notes
                    .push(format!("leader-kill9 at step {step}: killed {l}"));
            }
            FaultKind::DbRestart => {
                if let Some(pg) = self.pg.as_mut() {
                    pg.crash()?;
                    std::thread::sleep(Duration::from_millis(f.hold_ms));
                    pg.up()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The spool is at 90% of `max_bytes` or has dropped events (or the agent's metrics
    /// cannot be read: it is down).
    fn spool_full(&self, infra: &Infra) -> bool {
        let Some((kib, _)) = infra.spool else {
            return true;
        };
        let m = crate::scenario::metrics(self.admin_port);
        let bytes = crate::check::metric_sum(&m, "lockstep_spool_bytes");
        m.is_empty()
            || bytes * 10 >= kib * 1024 * 9
            || crate::check::metric_sum(&m, "lockstep_spool_dropped_events_total") > 0
    }

    /// Heals a fault of this module's kinds; `metrics`: the agent's `/metrics` now.
    pub fn heal(&mut self, kind: FaultKind, broker: &mut Brokers, metrics: &str) -> Res<()> {
        match kind {
            FaultKind::SpoolFull => {
                self.notes.push(format!(
                    "spool-full healed: spool {} bytes, {} events, {} dropped so far",
                    crate::check::metric_sum(metrics, "lockstep_spool_bytes"),
                    crate::check::metric_sum(metrics, "lockstep_spool_events"),
                    crate::check::metric_sum(metrics, "lockstep_spool_dropped_events_total"),
                ));
                broker.restart_if_down()
            }
            FaultKind::DiskFull => {
                if let Some(t) = &self.tmpfs {
                    t.heal();
                }
                self.notes.push(format!(
                    "disk-full healed: {} spool write error(s) so far",
                    crate::check::metric_sum(metrics, "lockstep_spool_write_errors_total")
                ));
                broker.restart_if_down()
            }
            FaultKind::LeaderKill => broker.restart_if_down(),
            _ => Ok(()),
        }
    }

    /// Every fault of this module healed.
    pub fn heal_all(&mut self) -> Res<()> {
        if let Some(t) = &self.tmpfs {
            t.heal();
        }
        if let Some(pg) = self.pg.as_mut() {
            if !pg.is_up() {
                pg.up()?;
            }
        }
        Ok(())
    }
}

/// Waits (up to 10 s) until the agent's admin endpoint answers.
pub fn wait_admin(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::scenario::metrics(port).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Set by `--no-infra`: plans as drawn before this module existed (the seeds of the
/// first slice's regression tests replay their scenarios exactly).
pub static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `n` extra steps written at once (an index past the last step: no late file appears).
fn write_burst(source: &mut dyn Source, reader: &mut Reader, n: usize) -> Res<()> {
    for _ in 0..n {
        source.step(usize::MAX, false, reader, &mut || {})?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The events the agent logged as dropped from its spool (`drop_oldest`), over every
/// start: those it announced dropping, less those it then said were not dropped after
/// all (the ledger could not be written).
pub fn dropped_in_log(dir: &Path) -> u64 {
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let sum = |what: &str, before: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                let rest = l.split_once(before)?.1;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    };
    sum("dropping its oldest segment", " with ")
        .saturating_sub(sum("was not dropped after all", "): its "))
}

/// With `drop_oldest`: the events missing against the changes written are the ones
/// dropped. A dropped segment may hold events the broker stored but whose ack its
/// death lost (sent, never acknowledged): they are in the stream and not counted as
/// published. So with one agent process (`published`: its counter), exactly
/// dropped = missing + (stored − published); after a restart of the agent (which may
/// capture a dropped event again, and whose counters start again) missing ≤ dropped.
pub fn drop_checks(dir: &Path, stored: u64, changes: u64, published: Option<u64>) -> Vec<String> {
    let dropped = dropped_in_log(dir);
    let missing = changes.saturating_sub(stored);
    match published {
        Some(p) => {
            let unacked = stored.saturating_sub(p);
            if missing + unacked != dropped || p > stored {
                return vec![format!(
                    "{missing} event(s) missing from the stream ({changes} changes, {stored} stored, {p} published, so {unacked} stored unacknowledged), {dropped} logged as dropped by the spool: not missing + stored unacknowledged"
                )];
            }
        }
        None if missing > dropped => {
            return vec![format!(
                "{missing} event(s) missing from the stream ({changes} changes, {stored} stored), more than the {dropped} logged as dropped by the spool"
            )];
        }
        None => {}
    }
    Vec::new()
}

/// A source check's failure that the dropped events explain (records missing, a key's
/// history shorter); the count is checked by [`drop_checks`].
pub fn explained_by_drops(failure: &str) -> bool {
    failure.contains("record(s) lost") || failure.contains("key(s) whose history differs")
}
