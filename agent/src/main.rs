use std::process::ExitCode;

use clap::Parser;
use lockstep::cli::{
    check, quarantine, snapshot, status, triggers, Cli, Command, QuarantineCommand, SpoolCommand,
};
use lockstep::config::{self, Config};
use lockstep::{logging, service, stop_signal};
use tokio::sync::watch;

fn main() -> ExitCode {
    // First of all: a SIGTERM or SIGINT from here on stops `run` cleanly (exit 0), even
    // one that arrives before the agent has started (see `stop_signal`).
    let held = stop_signal::hold();
    let cli = Cli::parse();
    let held = match cli.command {
        Command::Run { .. } => Some(held),
        _ => {
            held.release();
            None
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockstep: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let caught = held.map(|h| {
        let _in_runtime = rt.enter();
        h.catch()
    });
    let path = match &cli.command {
        Command::Run { config }
        | Command::Check { config, .. }
        | Command::Spool { config, .. }
        | Command::Quarantine { config, .. }
        | Command::Snapshot { config, .. }
        | Command::Status { config, .. }
        | Command::Triggers { config, .. } => config.clone().unwrap_or_else(config::default_path),
    };
    if let Command::Check {
        user: Some(user), ..
    } = &cli.command
    {
        return match rt.block_on(lockstep::cli::as_user::check_as(user, &path)) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("lockstep: {e}");
                ExitCode::from(2)
            }
        };
    }
    // Only the commands that use a secret read them: anyone may run the others.
    let needs_secrets = matches!(
        cli.command,
        Command::Run { .. } | Command::Check { .. } | Command::Triggers { .. }
    );
    let loaded = if needs_secrets {
        Config::load(&path)
    } else {
        Config::load_without_secrets(&path)
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockstep: {}", config::redact(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let filter = match std::env::var("LOCKSTEP_LOG") {
        Ok(spec) => match logging::parse_filter(&spec) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("lockstep: LOCKSTEP_LOG: {}", config::redact(&e));
                return ExitCode::from(2);
            }
        },
        // The agent logs as configured (checked when the config was read); the other
        // commands print their own answers, and only warnings and errors besides.
        Err(_) => match cli.command {
            Command::Run { .. } => logging::parse_filter(&cfg.agent.log).unwrap_or_default(),
            _ => logging::parse_filter("warn").unwrap_or_default(),
        },
    };
    logging::init(filter, logging::detect());
    match cli.command {
        Command::Status { json, .. } => {
            let r = status::run(&cfg, json, &mut std::io::stdout().lock());
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep: {}", config::redact(&e.to_string()));
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { .. } => {
            let ok = rt.block_on(check::check(&cfg, &mut std::io::stdout()));
            ExitCode::from(if ok { 0 } else { 1 })
        }
        Command::Triggers {
            command, source, ..
        } => {
            let r = rt.block_on(triggers::run(
                &cfg,
                source.as_deref(),
                &command,
                &mut std::io::stdout().lock(),
            ));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep: {}", config::redact(&e.to_string()));
                    ExitCode::from(1)
                }
            }
        }
        Command::Snapshot { source, table, .. } => {
            let r = snapshot::run(
                &cfg,
                source.as_deref(),
                table.as_deref(),
                &mut std::io::stdout().lock(),
            );
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep: {}", config::redact(&e.message));
                    ExitCode::from(e.code)
                }
            }
        }
        Command::Quarantine { command, .. } => {
            let mut out = std::io::stdout().lock();
            let r = match command {
                QuarantineCommand::List { source } => {
                    quarantine::list(&cfg, source.as_deref(), &mut out)
                }
                QuarantineCommand::Resend { source, since } => {
                    quarantine::resend(&cfg, &source, since.as_deref(), &mut out)
                }
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep: {}", e.message);
                    ExitCode::from(e.code)
                }
            }
        }
        Command::Spool { command, .. } => {
            let dir = cfg.agent.state_dir.join("spool");
            let mut out = std::io::stdout().lock();
            let r = match command {
                SpoolCommand::Inspect => lockstep::spool::inspect::summarize(&dir).and_then(|s| {
                    lockstep::spool::inspect::print_summary(
                        &dir,
                        &s,
                        lockstep::clock::now_ms(),
                        &mut out,
                    )
                }),
                SpoolCommand::Export { all } => {
                    lockstep::spool::inspect::export(&dir, all, &mut out).map(|_| ())
                }
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep: spool {}: {e}", dir.display());
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { .. } => {
            if let Err(e) = lockstep::crash::arm_from_env() {
                eprintln!("lockstep: {e}");
                return ExitCode::from(2);
            }
            let mut caught = match caught {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    tracing::warn!(
                        "cannot catch SIGTERM and SIGINT ({e}): they end the agent without a clean stop"
                    );
                    None
                }
                None => None,
            };
            let r = rt.block_on(async {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    match caught.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending::<()>().await,
                    }
                    service::notify("STOPPING=1\nSTATUS=stopping: flushing in-flight events and writing checkpoints");
                    tracing::info!("stopping: finishing in-flight work and writing checkpoints");
                    let _ = tx.send(true);
                });
                lockstep::runner::run(cfg, rx).await
            });
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("lockstep: {}", config::redact(&e.to_string()));
                    ExitCode::from(1)
                }
            }
        }
    }
}
