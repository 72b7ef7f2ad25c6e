//! The config file as written, and its validation into [`super::Config`].
//!
//! This file holds the raw types (as serde reads them, with spans), the error context
//! and the top-level [`parse`]; each section is validated in its own file: `[nats]`
//! and `[spool]` in [`transport`], what every source has in [`source`], and each kind
//! of source in [`tail`], [`trigger`] and [`poll`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use lockstep_formats::record::CsvOptions;
use lockstep_formats::{Format, Op, Value};
use serde::Deserialize;
use toml::Spanned;

use super::secret::{credential_path, RawSecret};
use super::units::{ConfigDuration, ConfigSize};
use super::*;

mod poll;
mod source;
mod tail;
mod transport;
mod trigger;

#[cfg(test)]
mod tests;

use poll::{poll_keys, poll_source};
use source::{dialect_of, refuse, single_byte, source};
use tail::{tail_keys, tail_source};
use transport::{nats, spool};
use trigger::trigger_source;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Spanned<RawAgent>,
    #[serde(default)]
    nats: Option<RawNats>,
    #[serde(default)]
    spool: Option<RawSpool>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default, rename = "source")]
    sources: Vec<Spanned<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Spanned<String>,
    state_dir: Option<PathBuf>,
    log: Option<Spanned<String>>,
    quarantine_max_bytes: Option<Spanned<ConfigSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    servers: Option<Spanned<Vec<String>>>,
    stream: Option<Spanned<String>>,
    subject_prefix: Option<Spanned<String>>,
    create_stream: Option<bool>,
    max_in_flight: Option<Spanned<i64>>,
    ack_timeout: Option<ConfigDuration>,
    creds: Option<Spanned<String>>,
    nkey: Option<Spanned<RawSecret>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<RawSecret>>,
    token: Option<Spanned<RawSecret>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    max_bytes: Option<ConfigSize>,
    when_full: Option<Spanned<String>>,
    fsync: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    delimiter: Option<Spanned<String>>,
    quote: Option<Spanned<String>>,
    header: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<String>,
    // tail
    paths: Option<Spanned<Vec<String>>>,
    format: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    table_field: Option<Spanned<String>>,
    key: Option<Spanned<Vec<String>>>,
    op_field: Option<Spanned<String>>,
    op_map: Option<Spanned<BTreeMap<String, String>>>,
    start_at: Option<Spanned<String>>,
    max_record_bytes: Option<Spanned<ConfigSize>>,
    stat_interval: Option<ConfigDuration>,
    rotate_wait: Option<ConfigDuration>,
    close_idle: Option<Spanned<ConfigDuration>>,
    max_tables: Option<Spanned<i64>>,
    csv: Option<Spanned<RawCsv>>,
    // Keys of the trigger and poll kinds and of later features: known, so that they are
    // refused with a clear message rather than as unknown keys.
    odbc: Option<Spanned<RawSecret>>,
    postgres: Option<Spanned<RawSecret>>,
    tables: Option<Spanned<Vec<String>>>,
    capture: Option<Spanned<String>>,
    interval: Option<ConfigDuration>,
    dialect: Option<Spanned<String>>,
    snapshot: Option<Spanned<String>>,
    schema_check: Option<Spanned<ConfigDuration>>,
    // poll
    query: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    cursor: Option<Spanned<String>>,
    lookback: Option<Spanned<toml::Value>>,
    full_scan_every: Option<Spanned<ConfigDuration>>,
    initial: Option<Spanned<String>>,
    max_value_bytes: Option<Spanned<ConfigSize>>,
    debounce: Option<Spanned<RawDebounce>>,
    map: Option<Spanned<RawMap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebounce {
    window: Spanned<ConfigDuration>,
    max_delay: Option<Spanned<ConfigDuration>>,
    max_keys: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    tables: Option<Spanned<BTreeMap<String, String>>>,
    rename: Option<Spanned<BTreeMap<String, String>>>,
    values: Option<Spanned<BTreeMap<String, BTreeMap<String, toml::Value>>>>,
    unknown: Option<Spanned<toml::Value>>,
    drop: Option<Spanned<Vec<String>>>,
    add: Option<Spanned<BTreeMap<String, toml::Value>>>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Whether secrets are read (else each is [`RawSecret::unresolved`]).
    secrets: bool,
}

impl Ctx<'_> {
    /// The secret at `v`, read unless this command needs none.
    fn secret(&self, v: &Spanned<RawSecret>) -> Result<Secret, ConfigError> {
        if !self.secrets {
            return Ok(RawSecret::unresolved());
        }
        v.get_ref().resolve().map_err(|e| self.err(v.span(), e))
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            at: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
/// Names that become part of subjects and message ids.
/// serde's "unknown field `tabel`, expected one of `name`, …" with "; did you mean
/// `table`?" when one of the keys it lists is a near miss (an edit or two away).
fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let near = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| {
            *d <= if k.len().max(unknown.len()) >= 5 {
                2
            } else {
                1
            }
        })
        .min();
    match near {
        Some((_, k)) => format!("{message}; did you mean `{k}`?"),
        None => message.to_owned(),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
/// Validates the config; with `secrets` false, no secret is read (see
/// [`Config::load_without_secrets`]).
pub(super) fn parse(path: &Path, text: &str, secrets: bool) -> Result<Config, ConfigError> {
    let cx = Ctx {
        path,
        text,
        secrets,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_owned(),
        at: e.span().map(|s| line_col(text, s.start)),
        message: did_you_mean(e.message().trim()),
    })?;

    let agent_span = raw.agent.span();
    let agent = raw.agent.into_inner();
    if !valid_name(agent.id.get_ref()) {
        return Err(cx.err(
            agent.id.span(),
            "agent.id must be 1-64 letters, digits, `_` or `-`",
        ));
    }
    let _ = agent_span;
    let log = match agent.log {
        Some(l) => {
            crate::logging::parse_filter(l.get_ref())
                .map_err(|e| cx.err(l.span(), format!("agent.log: {e}")))?;
            l.into_inner()
        }
        None => crate::logging::DEFAULT_FILTER.to_owned(),
    };
    let quarantine_max_bytes = match agent.quarantine_max_bytes {
        None => DEFAULT_QUARANTINE_MAX_BYTES,
        Some(m) if m.get_ref().0 < 64 << 10 => {
            return Err(cx.err(
                m.span(),
                format!(
                    "agent.quarantine_max_bytes must be at least 64KiB (it is {} bytes)",
                    m.get_ref().0
                ),
            ))
        }
        Some(m) => m.get_ref().0,
    };
    let agent = AgentConfig {
        id: agent.id.into_inner(),
        state_dir: agent
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/lockstep")),
        log,
        quarantine_max_bytes,
    };

    let nats = nats(&cx, raw.nats)?;
    let spool = spool(&cx, raw.spool)?;
    let admin = match raw.admin.and_then(|a| a.listen) {
        None => AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))),
        },
        Some(l) if l.get_ref().is_empty() => AdminConfig { listen: None },
        Some(l) => AdminConfig {
            listen: Some(l.get_ref().parse().map_err(|_| {
                cx.err(
                    l.span(),
                    format!(
                        "admin.listen `{}` is not an address like \"127.0.0.1:9187\"",
                        l.get_ref()
                    ),
                )
            })?),
        },
    };

    let mut names = HashSet::new();
    let mut sources = Vec::new();
    for s in raw.sources {
        let s = s.into_inner();
        if !valid_name(s.name.get_ref()) {
            return Err(cx.err(
                s.name.span(),
                "source name must be 1-64 letters, digits, `_` or `-`",
            ));
        }
        if !names.insert(s.name.get_ref().clone()) {
            return Err(cx.err(
                s.name.span(),
                format!("a source named `{}` is already defined", s.name.get_ref()),
            ));
        }
        let tables_span = s.tables.as_ref().map(|t| t.span());
        let sc = source(&cx, s)?;
        // Which database a source reaches is in its connection string, a secret.
        if let (SourceKind::Trigger(t), Some(span), true) = (&sc.kind, tables_span, secrets) {
            let before: Vec<_> = sources.iter().filter_map(super::owners::owner).collect();
            let new = super::owners::Owner {
                source: &sc.name,
                target: super::owners::db_target(&t.db),
                tables: &t.tables,
            };
            if let Some(why) = super::owners::conflict(&before, &new) {
                return Err(cx.err(span, why));
            }
        }
        sources.push(sc);
    }
    Ok(Config {
        path: path.to_owned(),
        agent,
        nats,
        spool,
        admin,
        sources,
    })
}
