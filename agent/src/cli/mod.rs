//! The command line (SPEC §2).

pub mod as_user;
pub mod check;
pub mod quarantine;
pub mod snapshot;
pub mod status;
pub mod triggers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, SourceConfig, SourceKind, TriggerConfig};

/// The trigger source named `source`, or the only one; `what` names the command's
/// subject for the error.
pub fn trigger_source<'a>(
    cfg: &'a Config,
    source: Option<&str>,
    what: &str,
) -> Result<(&'a SourceConfig, &'a TriggerConfig), String> {
    let triggers: Vec<_> = cfg
        .sources
        .iter()
        .filter(|s| matches!(s.kind, SourceKind::Trigger(_)))
        .collect();
    let s = match source {
        Some(name) => cfg
            .sources
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no source named `{name}` in {}", cfg.path.display()))?,
        None if triggers.len() == 1 => triggers[0],
        None => {
            return Err(format!(
                "say which source with --source (trigger sources in {}: {})",
                cfg.path.display(),
                triggers
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    match &s.kind {
        SourceKind::Trigger(t) => Ok((s, t)),
        other => Err(format!(
            "source `{}` is of kind `{}`; {what} are for kind = \"trigger\"",
            s.name,
            other.name()
        )),
    }
}

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
        /// Run as root: read the secret files of /etc/lockstep/credentials as systemd's
        /// LoadCredential= does, then check as this user (the service's: `lockstep`).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Show, install or remove the capture triggers of a trigger source.
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
        /// The source (its `name` in the config).
        #[arg(long, global = true)]
        source: Option<String>,
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Queue a snapshot of a trigger source's tables (every row as op "r") and follow its
    /// progress while the agent takes it.
    Snapshot {
        /// The source (its `name` in the config).
        #[arg(long)]
        source: Option<String>,
        /// Only this table of the source [default: all of them]
        #[arg(long)]
        table: Option<String>,
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Positions, lag, events/s and last error of each source of the running agent, its
    /// spool and its NATS connection (read from the agent's admin endpoint).
    Status {
        /// Print the agent's `/status` JSON as it is.
        #[arg(long)]
        json: bool,
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Look at the records set aside in the quarantine, or send them again once their
    /// cause is fixed.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
        /// Config file [default: $LOCKSTEP_CONFIG or /etc/lockstep/lockstep.toml]
        #[arg(long, short, global = true)]
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
pub enum TriggersCommand {
    /// Print the capture table and trigger DDL for the source's tables; change nothing.
    Show,
    /// Create the capture table and the triggers (again: upgrades them, replacing each
    /// trigger with no moment without one), in one transaction.
    Install,
    /// Drop the source's triggers; then the shared capture table, once no trigger of any
    /// source writes to it and it holds no change still to be sent.
    Uninstall,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Each quarantined record: when, where it came from, why, and whether it was resent
    /// (read-only; safe while the agent runs).
    List {
        /// Only this source [default: every source]
        #[arg(long)]
        source: Option<String>,
    },
    /// Send a tail source's quarantined records again, through its current format, table,
    /// key and mapping, with new message ids; each record is sent once. The running agent
    /// does it (or the next one to start); the command waits and prints the count.
    Resend {
        /// The source (its `name` in the config).
        #[arg(long)]
        source: String,
        /// Only records quarantined at or after this UTC time (2026-11-29T16:00:00Z,
        /// 2026-11-29) or this long ago (30m, 2h, 7d)
        #[arg(long)]
        since: Option<String>,
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
