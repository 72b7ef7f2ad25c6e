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
}
