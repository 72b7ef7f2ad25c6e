//! Configuration: the TOML file (SPEC §3), read once at start.
//!
//! The file is deserialized into raw structs that mirror it (unknown keys are errors),
//! then validated into the domain types below. Nothing downstream re-checks config.
//! Every error names the file, line and column of the value at fault.

mod nats_server;
pub mod owners;
pub(crate) mod percent;
mod raw;
mod redact;
mod secret;
pub mod units;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_formats::{Format, Op};

pub use crate::db::Dialect;

pub use self::nats_server::{NatsServer, UrlCredentials};
pub use self::redact::{redact, MASK};
pub use self::secret::{credential_path, Secret, CREDENTIALS_DIR, CREDENTIAL_ID};
pub use self::units::{parse_duration, parse_size};
pub use crate::pipeline::debounce::DebounceConfig;
pub use crate::pipeline::map::{Mapping, Unknown};

/// The default config path; `LOCKSTEP_CONFIG` overrides it.
pub const DEFAULT_PATH: &str = "/etc/lockstep/lockstep.toml";

/// The config path to use when none is given on the command line.
pub fn default_path() -> PathBuf {
    std::env::var_os("LOCKSTEP_CONFIG").map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub agent: AgentConfig,
    pub nats: NatsConfig,
    pub spool: SpoolConfig,
    pub admin: AdminConfig,
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: String,
    pub state_dir: PathBuf,
    /// The log filter (`RUST_LOG` syntax); `LOCKSTEP_LOG` overrides it.
    pub log: String,
    /// The most bytes one quarantine file holds; past it its oldest entries are dropped.
    pub quarantine_max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub servers: Vec<NatsServer>,
    pub stream: String,
    pub subject_prefix: String,
    pub create_stream: bool,
    pub max_in_flight: usize,
    /// How long a publish waits for its ack before it counts as failed and is retried.
    pub ack_timeout: Duration,
    pub auth: NatsAuth,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    None,
    UserPassword { user: String, password: Secret },
    Token(Secret),
    Creds(PathBuf),
    Nkey(Secret),
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    Block,
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Batch,
    Off,
}

/// The offline spool's settings (see `crate::spool`).
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `listen = ""`: no admin endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// `[source.map]`: applied to every event of the source first.
    pub map: Mapping,
    /// `debounce = { … }`: `None` sends every change as it comes.
    pub debounce: Option<DebounceConfig>,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    Tail(TailConfig),
    Trigger(TriggerConfig),
    Poll(PollConfig),
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Tail(_) => "tail",
            SourceKind::Trigger(_) => "trigger",
            SourceKind::Poll(_) => "poll",
        }
    }
}

/// A trigger-table source (SPEC §6 "trigger").
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    pub db: TriggerDb,
    pub tables: Vec<String>,
    pub capture: Capture,
    /// Idle poll of the capture table.
    pub interval: Duration,
    /// The SQL dialect, when it is not to be asked of the database.
    pub dialect: Option<Dialect>,
    /// `snapshot = "initial"`: read every row of the tables (op `r`) when the source
    /// first starts.
    pub snapshot_initial: bool,
    /// How often the tables are compared with their capture triggers (schema drift).
    pub schema_check: Duration,
}

/// A polled table (SPEC §6 "poll"): scanned and compared with the previous scan.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// The ODBC connection string (`DSN=…`).
    pub odbc: Secret,
    /// The table scanned, and the table named in subjects and events.
    pub table: String,
    /// A `SELECT` scanned instead of the table.
    pub query: Option<String>,
    /// The columns that identify a row; empty: the table's primary key.
    pub key: Vec<String>,
    /// The columns read; empty: all.
    pub columns: Vec<String>,
    pub interval: Duration,
    /// Incremental mode: only rows whose cursor column is past the last value seen
    /// (minus `lookback`) are read between full scans.
    pub cursor: Option<String>,
    pub lookback: Lookback,
    pub full_scan_every: Duration,
    /// `initial = "skip"`: the first scan only records the table, sending nothing.
    pub initial_skip: bool,
    pub dialect: Option<Dialect>,
    /// Values longer than this are not read whole: their row is quarantined.
    pub max_value_bytes: usize,
}

/// How far behind the last cursor value an incremental scan starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// For date-time cursors.
    Time(Duration),
    /// For numeric cursors.
    Count(u64),
}

#[derive(Debug, Clone)]
pub enum TriggerDb {
    /// A PostgreSQL connection string, parsed (libpq's `sslmode` and `sslrootcert`
    /// included).
    Postgres(Box<crate::db::postgres::PgConn>),
    /// An ODBC connection string (`DSN=…`).
    Odbc(Secret),
}

/// `[agent] quarantine_max_bytes` by default: 1 GiB per quarantine file.
pub const DEFAULT_QUARANTINE_MAX_BYTES: u64 = 1 << 30;

/// `max_tables` of a tail source by default.
pub const DEFAULT_MAX_TABLES: usize = 1000;

/// A tail source's longest record when `max_record_bytes` is not set: 1 KiB under the
/// NATS server's default `max_payload` (1 MiB), the room an event's envelope takes, so
/// that the longest record's event still fits in a message the broker takes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = (1 << 20) - 1024;

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub paths: Vec<String>,
    pub format: Format,
    pub table: TableFrom,
    pub key: Vec<String>,
    pub op_field: Option<String>,
    /// Maps values of `op_field` to ops, on top of the codes `c`, `u`, `d`, `r`.
    pub op_map: HashMap<String, Op>,
    pub start_at: StartAt,
    pub max_record_bytes: usize,
    /// How often files are stat'ed when no filesystem event arrives (NFS, missed events).
    pub stat_interval: Duration,
    /// How long a file that left the glob (rotated away, deleted) is still read.
    pub rotate_wait: Duration,
    /// How long a file still matched by the globs, read to its end and unchanged, stays
    /// open; it is reopened by path when it changes.
    pub close_idle: Duration,
    /// The most tables `table_field` may name; records of further tables are quarantined.
    pub max_tables: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableFrom {
    Fixed(String),
    Field(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// A config that could not be read or is not valid.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when the problem is at a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the config file at `path`, secrets included.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        raw::parse(path, &Self::read(path)?, true)
    }

    /// Reads and validates the config file at `path` for a command that needs no secret
    /// (`status`, `spool`, `snapshot`): every secret is left unread and empty, so that
    /// the command works for a user who cannot read them. Checks that need a secret's
    /// value (which sources share a database) are left to `check` and `run`.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        raw::parse(path, &Self::read(path)?, false)
    }

    fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            at: None,
            message: format!(
                "cannot read the config file: {e} (give another with --config or LOCKSTEP_CONFIG)"
            ),
        })
    }

    /// Validates config text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        raw::parse(path, text, true)
    }
}

/// What a trigger source's triggers record (`capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Only the key; the agent reads the current row when it drains.
    Keys,
    /// Before and after images as JSON.
    Rows,
}
