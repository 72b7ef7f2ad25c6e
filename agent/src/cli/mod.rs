//! The command line (SPEC §2).

pub mod check;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Change-data-capture agent: legacy databases and change files to NATS JetStream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (systemd runs this).
    Run {
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the config, try NATS and every source, print a table; exit 1 on any failure.
    Check {
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Look into the offline spool (read-only; safe while the agent runs).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Segments, frames, events waiting, bytes on disk, compression, oldest event's age.
    Inspect,
    /// The spooled events as JSON lines on stdout.
    Export {
        /// Also events already acknowledged whose segment is not deleted yet.
        #[arg(long)]
        all: bool,
    },
}
