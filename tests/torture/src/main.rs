//! `lockstep-torture`: runs scenarios — a source setup × a workload × a fault schedule,
//! all drawn from one seed — against the real `lockstep` binary and a real nats-server,
//! then replays the stream into a model and compares it with the source.
//!
//! ```text
//! lockstep-torture --seed S                       replay one scenario exactly
//! lockstep-torture --minutes N [--seed S] [--only F[,F…]]
//!                                                 scenarios S, S+1, … until the time is up
//!                                                 (F: tail, trigger, poll, multi, pg, mariadb,
//!                                                 sqlite, or a family: trigger-mariadb, …)
//! lockstep-torture --seeds A,B,C                  these scenarios (CI)
//! lockstep-torture --seeds A,B,C --describe       print their plans, run nothing
//! lockstep-torture --dump nats://127.0.0.1:PORT   print a kept scenario's stream
//! ```
//! `--dir D` puts the scenario directories under D (default: the temp directory); a
//! failed scenario's directory is kept (`--keep`: every one). `--big-tx ROWS` caps the
//! big transaction of the database families (100,000 rows by default; CI uses less).
//! `--no-infra`: no small spool, private PostgreSQL, nats cluster or tmpfs, nor their
//! faults (the plans seeds had before those existed). Exit 1 when a scenario failed.

mod check;
mod cluster;
mod disk;
mod infra;
mod pg;
mod privpg;
mod procs;
mod rng;
mod scenario;
mod sql;
mod stream;
mod tail;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use scenario::{Family, Plan};

struct Args {
    seed: Option<u64>,
    seeds: Vec<u64>,
    minutes: Option<f64>,
    /// `--only`: family names or parts of them (`trigger`, `trigger-mariadb,poll-sqlite`).
    only: Option<String>,
    dir: PathBuf,
    /// Print the plans of the seeds and run nothing.
    describe: bool,
    /// Keep every scenario's directory, not only the failed ones'.
    keep: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: lockstep-torture (--seed S | --seeds A,B,… | --minutes N [--seed S]) [--only F[,F…]] [--big-tx ROWS] [--dir D] [--describe] [--keep] [--no-infra]\n\
         F: tail, trigger, poll, multi, pg, mariadb, sqlite, or a family (trigger-mariadb, poll-sqlite, multi-pg, …)"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        seed: None,
        seeds: Vec::new(),
        minutes: None,
        only: None,
        dir: std::env::temp_dir(),
        describe: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--seed" => a.seed = Some(val().parse().unwrap_or_else(|_| usage())),
            "--seeds" => {
                a.seeds = val()
                    .split(',')
                    .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--minutes" => a.minutes = Some(val().parse().unwrap_or_else(|_| usage())),
            "--only" => {
                let f = val();
                if !Family::valid_filter(&f) {
                    usage();
                }
                a.only = Some(f);
            }
            "--big-tx" => sql::BIG_TX_CAP.store(
                val().parse().unwrap_or_else(|_| usage()),
                std::sync::atomic::Ordering::Relaxed,
            ),
            "--dir" => a.dir = PathBuf::from(val()),
            "--describe" => a.describe = true,
            "--keep" => a.keep = true,
            "--no-infra" => infra::DISABLED.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => usage(),
        }
    }
    if a.seed.is_none() && a.seeds.is_empty() && a.minutes.is_none() {
        usage();
    }
    a
}

fn main() {
    // `--dump URL`: prints every message of the stream TORTURE at URL (a kept
    // scenario's broker started again on its `nats-store`), one JSON line each.
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 3 && argv[1] == "--dump" {
        let r = stream::Reader::new(&argv[2], scenario::STREAM).and_then(|mut r| {
            r.poll()?;
            Ok(r)
        });
        match r {
            Ok(r) => {
                for m in &r.msgs {
                    println!("{} {} {}", m.seq, m.id, m.json);
                }
                return;
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let args = parse();
    let deadline = args
        .minutes
        .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    if args.describe {
        let seeds: Vec<u64> = if args.seeds.is_empty() {
            args.seed.into_iter().collect()
        } else {
            args.seeds.clone()
        };
        for seed in seeds {
            let p = Plan::draw(seed, &args.dir);
            println!(
                "{seed:>8} {:<15} {:<10} steps {:>2} faults {:<40} {} {}",
                p.family.name(),
                p.broker.label(),
                p.steps,
                p.fault_summary(),
                p.source.describe(),
                p.infra.describe()
            );
        }
        return;
    }
    let mut queue: Box<dyn Iterator<Item = u64>> = if !args.seeds.is_empty() {
        Box::new(args.seeds.clone().into_iter())
    } else if deadline.is_some() {
        let start = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() % 1_000_000)
        });
        Box::new(start..)
    } else {
        Box::new(args.seed.into_iter())
    };
    println!(
        "{:<4} {:<15} {:>8} {:<10} {:>7} {:>7} {:<40} result",
        "#", "scenario", "seed", "broker", "changes", "events", "faults"
    );
    let mut failed: Vec<(u64, String)> = Vec::new();
    let mut runs = 0;
    let started = Instant::now();
    let mut total_events = 0;
    let mut fault_counts: std::collections::BTreeMap<String, u64> = Default::default();
    for seed in queue.by_ref() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(f) = &args.only {
            if !scenario::family_of(seed).matches(f) && args.seeds.is_empty() {
                continue;
            }
        }
        runs += 1;
        let dir = match tempfile::Builder::new()
            .prefix(&format!("torture-{seed}-"))
            .tempdir_in(&args.dir)
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!(
                    "cannot make a scenario directory in {}: {e}",
                    args.dir.display()
                );
                std::process::exit(1);
            }
        };
        let mut plan = Plan::draw(seed, dir.path());
        for f in &plan.faults {
            *fault_counts.entry(f.label()).or_default() += 1;
        }
        let t0 = Instant::now();
        let outcome = scenario::run(&mut plan, dir.path());
        let secs = t0.elapsed().as_secs_f64();
        let (changes, events, failures, notes) = match outcome {
            Ok(o) => (o.changes, o.events, o.failures, o.notes),
            Err(e) => (
                plan.source.changes(),
                0,
                vec![format!("scenario error: {e}")],
                Vec::new(),
            ),
        };
        total_events += events;
        let result = if failures.is_empty() {
            format!("ok ({secs:.0}s)")
        } else {
            format!("FAIL ({secs:.0}s)")
        };
        println!(
            "{:<4} {:<15} {:>8} {:<10} {:>7} {:>7} {:<40} {result}",
            runs,
            plan.family.name(),
            seed,
            plan.broker.label(),
            changes,
            events,
            plan.fault_summary()
        );
        if !plan.infra.describe().is_empty() {
            println!("     infra: {}", plan.infra.describe());
        }
        for n in &notes {
            println!("     note: {n}");
        }
        if failures.is_empty() {
            plan.source.cleanup();
            if args.keep {
                println!("     kept: {}", dir.keep().display());
            }
        } else {
            let kept = dir.keep();
            println!("     source: {}", plan.source.describe());
            for f in &failures {
                println!("     - {f}");
            }
            println!("     kept: {}", kept.display());
            println!("     replay: scripts/torture --seed {seed}");
            failed.push((seed, failures.join("; ")));
        }
    }
    println!(
        "{runs} scenario(s), {} failed, {total_events} events checked, faults {:?}, {:.1} min",
        failed.len(),
        fault_counts,
        started.elapsed().as_secs_f64() / 60.0
    );
    for (seed, why) in &failed {
        println!("FAILED seed {seed}: replay with `scripts/torture --seed {seed}`: {why}");
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
