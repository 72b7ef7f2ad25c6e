use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use lockstep::cli::{check, snapshot, triggers, Cli, Command, SpoolCommand};
use lockstep::config::{self, Config};
use tokio::sync::watch;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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
    let path = match &cli.command {
        Command::Run { config }
        | Command::Check { config }
        | Command::Spool { config, .. }
        | Command::Snapshot { config, .. }
        | Command::Triggers { config, .. } => config.clone().unwrap_or_else(config::default_path),
    };
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockstep: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
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
                    eprintln!("lockstep: {e}");
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
                        lockstep::pipeline::now_ms(),
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
            let r = rt.block_on(async {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("stopping: finishing in-flight work and writing checkpoints");
                    let _ = tx.send(true);
                });
                lockstep::runner::run(cfg, rx).await
            });
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("lockstep: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Human lines on a terminal, JSON lines otherwise; the level from `LOCKSTEP_LOG`.
fn init_logging() {
    let level = std::env::var("LOCKSTEP_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        b.with_target(false).init();
    } else {
        b.json().flatten_event(true).with_current_span(false).init();
    }
}
