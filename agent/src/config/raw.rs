//! The config file as written, and its validation into [`super::Config`].

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
        message: e.message().trim().to_owned(),
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

fn nats(cx: &Ctx, raw: Option<RawNats>) -> Result<NatsConfig, ConfigError> {
    let Some(n) = raw else {
        return Ok(NatsConfig {
            servers: vec![NatsServer::from("nats://127.0.0.1:4222")],
            stream: "LOCKSTEP".into(),
            subject_prefix: "lockstep".into(),
            create_stream: false,
            max_in_flight: 4096,
            ack_timeout: Duration::from_secs(5),
            auth: NatsAuth::None,
            tls: None,
        });
    };
    let (servers, url_auth) = match n.servers {
        Some(s) if s.get_ref().is_empty() => return Err(cx.err(s.span(), "nats.servers is empty")),
        Some(s) => {
            let span = s.span();
            let mut servers = Vec::new();
            let mut creds: Vec<Option<UrlCredentials>> = Vec::new();
            for (n, url) in s.get_ref().iter().enumerate() {
                let (server, c) = NatsServer::parse(url).map_err(|e| {
                    cx.err(span.clone(), format!("nats.servers, entry {}: {e}", n + 1))
                })?;
                servers.push(server);
                creds.push(c);
            }
            // async-nats sends one set of credentials to every server.
            let given: Vec<&UrlCredentials> = creds.iter().flatten().collect();
            if !given.is_empty()
                && (given.len() < creds.len() || given.iter().any(|c| *c != given[0]))
            {
                return Err(cx.err(
                    span,
                    "nats.servers: the URLs carry different credentials (or only some carry \
                     any); lockstep sends one set to every server of the cluster: give them \
                     once, as nats.user and nats.password (or nats.token), and the URLs without",
                ));
            }
            let auth = given.first().map(|(user, password)| match password {
                Some(p) => NatsAuth::UserPassword {
                    user: user.clone(),
                    password: Secret::from_config(p.clone()),
                },
                None => NatsAuth::Token(Secret::from_config(user.clone())),
            });
            (servers, auth.map(|a| (span, a)))
        }
        None => (vec![NatsServer::from("nats://127.0.0.1:4222")], None),
    };
    let stream = match n.stream {
        Some(s) if !valid_name(s.get_ref()) => {
            return Err(cx.err(
                s.span(),
                "nats.stream must be 1-64 letters, digits, `_` or `-`",
            ))
        }
        Some(s) => s.into_inner(),
        None => "LOCKSTEP".into(),
    };
    let subject_prefix = match n.subject_prefix {
        Some(p) => {
            let ok = !p.get_ref().is_empty()
                && p.get_ref()
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']));
            if !ok {
                return Err(cx.err(
                    p.span(),
                    "nats.subject_prefix must be dot-separated tokens without `*`, `>` or spaces",
                ));
            }
            p.into_inner()
        }
        None => "lockstep".into(),
    };
    let max_in_flight = match n.max_in_flight {
        Some(m) if !(1..=1_000_000).contains(m.get_ref()) => {
            return Err(cx.err(m.span(), "nats.max_in_flight must be between 1 and 1000000"))
        }
        Some(m) => *m.get_ref() as usize,
        None => 4096,
    };
    let secret = |s: Spanned<RawSecret>| cx.secret(&s);
    let mut auths = Vec::new();
    auths.extend(url_auth);
    if let Some(c) = n.creds {
        let p = credential_path(c.get_ref());
        auths.push((c.span(), NatsAuth::Creds(p)));
    }
    if let Some(k) = n.nkey {
        let span = k.span();
        auths.push((span, NatsAuth::Nkey(secret(k)?)));
    }
    if let Some(t) = n.token {
        let span = t.span();
        auths.push((span, NatsAuth::Token(secret(t)?)));
    }
    match (n.user, n.password) {
        (Some(u), Some(p)) => auths.push((
            u.span(),
            NatsAuth::UserPassword {
                user: u.into_inner(),
                password: secret(p)?,
            },
        )),
        (Some(u), None) => {
            return Err(cx.err(u.span(), "nats.user is set but nats.password is not"))
        }
        (None, Some(p)) => {
            return Err(cx.err(p.span(), "nats.password is set but nats.user is not"))
        }
        (None, None) => {}
    }
    if auths.len() > 1 {
        return Err(cx.err(
            auths[1].0.clone(),
            "give one NATS authentication: creds, nkey, token, user and password, or the \
             credentials in the server URLs",
        ));
    }
    Ok(NatsConfig {
        servers,
        stream,
        subject_prefix,
        create_stream: n.create_stream.unwrap_or(false),
        max_in_flight,
        ack_timeout: n.ack_timeout.map_or(Duration::from_secs(5), |d| d.0),
        auth: auths.pop().map_or(NatsAuth::None, |a| a.1),
        tls: n.tls.map(|t| TlsConfig {
            ca: t.ca,
            cert: t.cert,
            key: t.key,
        }),
    })
}

fn spool(cx: &Ctx, raw: Option<RawSpool>) -> Result<SpoolConfig, ConfigError> {
    let raw = raw.unwrap_or(RawSpool {
        max_bytes: None,
        when_full: None,
        fsync: None,
    });
    let when_full = match raw.when_full {
        None => WhenFull::Block,
        Some(w) => match w.get_ref().as_str() {
            "block" => WhenFull::Block,
            "drop_oldest" => WhenFull::DropOldest,
            other => {
                return Err(cx.err(
                    w.span(),
                    format!("spool.when_full `{other}`: use \"block\" or \"drop_oldest\""),
                ))
            }
        },
    };
    let fsync = match raw.fsync {
        None => FsyncPolicy::Batch,
        Some(f) => match f.get_ref().as_str() {
            "always" => FsyncPolicy::Always,
            "batch" => FsyncPolicy::Batch,
            "off" => FsyncPolicy::Off,
            other => {
                return Err(cx.err(
                    f.span(),
                    format!("spool.fsync `{other}`: use \"always\", \"batch\" or \"off\""),
                ))
            }
        },
    };
    let max_bytes = raw.max_bytes.map_or(1 << 30, |s| s.0);
    if max_bytes < 64 << 10 {
        return Err(ConfigError {
            path: cx.path.to_owned(),
            at: None,
            message: format!("spool.max_bytes must be at least 64KiB (it is {max_bytes} bytes)"),
        });
    }
    Ok(SpoolConfig {
        max_bytes,
        when_full,
        fsync,
    })
}

/// The keys only tail sources have.
fn tail_keys(s: &RawSource) -> [(&'static str, Option<Range<usize>>); 10] {
    [
        ("paths", s.paths.as_ref().map(|v| v.span())),
        ("format", s.format.as_ref().map(|v| v.span())),
        ("table_field", s.table_field.as_ref().map(|v| v.span())),
        ("op_field", s.op_field.as_ref().map(|v| v.span())),
        ("op_map", s.op_map.as_ref().map(|v| v.span())),
        ("start_at", s.start_at.as_ref().map(|v| v.span())),
        (
            "max_record_bytes",
            s.max_record_bytes.as_ref().map(|v| v.span()),
        ),
        ("csv", s.csv.as_ref().map(|v| v.span())),
        ("max_tables", s.max_tables.as_ref().map(|v| v.span())),
        ("close_idle", s.close_idle.as_ref().map(|v| v.span())),
    ]
}

fn trigger_source(cx: &Ctx, s: RawSource, name: String) -> Result<SourceConfig, ConfigError> {
    let foreign = [
        ("table", s.table.as_ref().map(|v| v.span())),
        ("key", s.key.as_ref().map(|v| v.span())),
    ];
    refuse(cx, &name, "trigger", &foreign)?;
    refuse(cx, &name, "trigger", &tail_keys(&s))?;
    refuse(cx, &name, "trigger", &poll_keys(&s))?;
    let secret = |v: &Spanned<RawSecret>| cx.secret(v);
    // A PostgreSQL string is parsed once the rest is known good (below).
    enum Db {
        Postgres(Secret, Range<usize>),
        Odbc(Secret),
    }
    let db = match (&s.postgres, &s.odbc) {
        (Some(p), None) => Db::Postgres(secret(p)?, p.span()),
        (None, Some(o)) => Db::Odbc(secret(o)?),
        (Some(p), Some(_)) => {
            return Err(cx.err(
                p.span(),
                format!("source `{name}`: give either `postgres` or `odbc`, not both"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a trigger source needs `postgres = \"host=… dbname=…\"` or `odbc = \"DSN=…\"`"),
            ))
        }
    };
    let tables = match s.tables {
        Some(t) if !t.get_ref().is_empty() => t.into_inner(),
        Some(t) => return Err(cx.err(t.span(), format!("source `{name}`: `tables` is empty"))),
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a trigger source needs `tables = [...]`"),
            ))
        }
    };
    let capture = match s.capture.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("keys", _)) => Capture::Keys,
        Some(("rows", _)) => Capture::Rows,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: capture `{other}`: use \"keys\" or \"rows\""),
            ))
        }
    };
    let dialect = dialect_of(cx, &name, &s.dialect)?;
    let snapshot_initial = match s
        .snapshot
        .as_ref()
        .map(|c| (c.get_ref().as_str(), c.span()))
    {
        None | Some(("never", _)) => false,
        Some(("initial", _)) => true,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: snapshot `{other}`: use \"initial\" or \"never\""),
            ))
        }
    };
    let schema_check = match s.schema_check {
        None => Duration::from_secs(60),
        Some(d) if d.get_ref().0 >= Duration::from_secs(1) => d.into_inner().0,
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: `schema_check` must be at least 1s"),
            ))
        }
    };
    if matches!(db, Db::Postgres(..)) && dialect.is_some_and(|d| d != Dialect::Postgres) {
        let d = s.dialect.as_ref().expect("checked");
        return Err(cx.err(
            d.span(),
            format!("source `{name}`: a `postgres` source speaks the postgres dialect"),
        ));
    }
    let db = match db {
        Db::Odbc(conn) => TriggerDb::Odbc(conn),
        Db::Postgres(conn, span) => TriggerDb::Postgres(Box::new(
            crate::db::postgres::PgConn::parse(conn.expose())
                .map_err(|e| cx.err(span, format!("source `{name}`: postgres: {e}")))?,
        )),
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Trigger(TriggerConfig {
            db,
            tables,
            capture,
            interval: s.interval.map_or(Duration::from_millis(500), |d| d.0),
            dialect,
            snapshot_initial,
            schema_check,
        }),
    })
}

/// The `dialect` of a database source, when given.
fn dialect_of(
    cx: &Ctx,
    name: &str,
    d: &Option<Spanned<String>>,
) -> Result<Option<Dialect>, ConfigError> {
    let Some(d) = d else {
        return Ok(None);
    };
    Dialect::from_name(d.get_ref()).map(Some).ok_or_else(|| {
        cx.err(
            d.span(),
            format!(
                "source `{name}`: dialect `{}`: use postgres, mariadb, sqlite, sqlserver, oracle or db2",
                d.get_ref()
            ),
        )
    })
}

/// Refuses keys that belong to other kinds of source.
fn refuse(
    cx: &Ctx,
    name: &str,
    kind: &str,
    keys: &[(&str, Option<Range<usize>>)],
) -> Result<(), ConfigError> {
    for (key, span) in keys {
        if let Some(span) = span {
            return Err(cx.err(
                span.clone(),
                format!("source `{name}`: `{key}` is not a key of {kind} sources"),
            ));
        }
    }
    Ok(())
}

/// The keys only poll sources have.
fn poll_keys(s: &RawSource) -> [(&'static str, Option<Range<usize>>); 7] {
    [
        ("query", s.query.as_ref().map(|v| v.span())),
        ("columns", s.columns.as_ref().map(|v| v.span())),
        ("cursor", s.cursor.as_ref().map(|v| v.span())),
        ("lookback", s.lookback.as_ref().map(|v| v.span())),
        (
            "full_scan_every",
            s.full_scan_every.as_ref().map(|v| v.span()),
        ),
        ("initial", s.initial.as_ref().map(|v| v.span())),
        (
            "max_value_bytes",
            s.max_value_bytes.as_ref().map(|v| v.span()),
        ),
    ]
}

fn poll_source(cx: &Ctx, s: RawSource, name: String) -> Result<SourceConfig, ConfigError> {
    let foreign = [
        ("tables", s.tables.as_ref().map(|v| v.span())),
        ("capture", s.capture.as_ref().map(|v| v.span())),
        ("snapshot", s.snapshot.as_ref().map(|v| v.span())),
        ("schema_check", s.schema_check.as_ref().map(|v| v.span())),
    ];
    refuse(cx, &name, "poll", &tail_keys(&s))?;
    refuse(cx, &name, "poll", &foreign)?;
    let secret = |v: &Spanned<RawSecret>| cx.secret(v);
    let odbc = match (&s.odbc, &s.postgres) {
        (Some(o), _) => secret(o)?,
        (None, Some(p)) => {
            return Err(cx.err(
                p.span(),
                format!("source `{name}`: poll sources read through ODBC: give `odbc = \"Driver=PostgreSQL Unicode;Server=…;Database=…\"` instead of `postgres`"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a poll source needs `odbc = \"DSN=…\"`"),
            ))
        }
    };
    let table = match s.table {
        Some(t) if !t.get_ref().trim().is_empty() => t.into_inner(),
        Some(t) => return Err(cx.err(t.span(), format!("source `{name}`: `table` is empty"))),
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a poll source needs `table` (with `query`, the name its events carry)"),
            ))
        }
    };
    let names = |v: Option<Spanned<Vec<String>>>, what: &str| -> Result<Vec<String>, ConfigError> {
        match v {
            Some(l) if l.get_ref().is_empty() => {
                Err(cx.err(l.span(), format!("source `{name}`: `{what}` is empty")))
            }
            Some(l) => Ok(l.into_inner()),
            None => Ok(Vec::new()),
        }
    };
    let query = match s.query {
        Some(q)
            if !q
                .get_ref()
                .trim()
                .to_ascii_lowercase()
                .starts_with("select") =>
        {
            return Err(cx.err(
                q.span(),
                format!("source `{name}`: `query` must be a SELECT"),
            ))
        }
        Some(q) => Some(q.into_inner()),
        None => None,
    };
    let key_span = s.name.span();
    let key = names(s.key, "key")?;
    if query.is_some() && key.is_empty() {
        return Err(cx.err(
            key_span,
            format!("source `{name}`: a poll source with `query` needs `key`: the columns of the query that identify a row"),
        ));
    }
    let columns = names(s.columns, "columns")?;
    let dialect = dialect_of(cx, &name, &s.dialect)?;
    let lookback = match &s.lookback {
        None => Lookback::Time(Duration::from_secs(60)),
        Some(l) => match l.get_ref() {
            toml::Value::String(d) => {
                Lookback::Time(parse_duration(d).map_err(|e| cx.err(l.span(), e))?)
            }
            toml::Value::Integer(n) if *n >= 0 => Lookback::Count(*n as u64),
            _ => {
                return Err(cx.err(
                    l.span(),
                    format!("source `{name}`: `lookback` is a duration like \"1m\" (date-time cursors) or a whole number (numeric cursors)"),
                ))
            }
        },
    };
    if s.cursor.is_none() {
        let extra = [
            ("lookback", s.lookback.as_ref().map(|v| v.span())),
            (
                "full_scan_every",
                s.full_scan_every.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in extra {
            if let Some(span) = span {
                return Err(cx.err(
                    span,
                    format!("source `{name}`: `{key}` needs `cursor` (incremental scans)"),
                ));
            }
        }
    }
    let initial_skip = match s.initial.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("snapshot", _)) => false,
        Some(("skip", _)) => true,
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: initial `{other}`: use \"snapshot\" or \"skip\""),
            ))
        }
    };
    let max_value_bytes = match s.max_value_bytes {
        Some(m) if !(1..=(64 << 20)).contains(&m.get_ref().0) => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: `max_value_bytes` must be between 1 byte and 64MiB"),
            ))
        }
        Some(m) => m.get_ref().0 as usize,
        None => 64 << 10,
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Poll(PollConfig {
            odbc,
            table,
            query,
            key,
            columns,
            interval: s.interval.map_or(Duration::from_secs(30), |d| d.0),
            cursor: s.cursor.map(Spanned::into_inner),
            lookback,
            full_scan_every: s
                .full_scan_every
                .map_or(Duration::from_secs(3600), |d| d.get_ref().0),
            initial_skip,
            dialect,
            max_value_bytes,
        }),
    })
}

fn source(cx: &Ctx, mut s: RawSource) -> Result<SourceConfig, ConfigError> {
    let name = s.name.get_ref().clone();
    let keys = s
        .key
        .as_ref()
        .map(|k| k.get_ref().clone())
        .unwrap_or_default();
    let map = match s.map.take() {
        Some(m) => mapping(cx, &name, m, &keys)?,
        None => Mapping::default(),
    };
    let debounce = match s.debounce.take() {
        Some(d) if s.kind.get_ref() == "poll" => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: a poll source already sends one event per changed row per scan; to merge more changes into one, make `interval` longer instead of `debounce`"),
            ))
        }
        Some(d) => Some(debounce(cx, &name, d)?),
        None => None,
    };
    let kind = s.kind.get_ref().as_str();
    let mut sc = match kind {
        "tail" => tail_source(cx, s, name)?,
        "trigger" => trigger_source(cx, s, name)?,
        "poll" => poll_source(cx, s, name)?,
        other => {
            return Err(cx.err(
                s.kind.span(),
                format!("source `{name}`: unknown kind `{other}` (tail, trigger or poll)"),
            ))
        }
    };
    sc.map = map;
    sc.debounce = debounce;
    Ok(sc)
}

fn debounce(cx: &Ctx, name: &str, d: Spanned<RawDebounce>) -> Result<DebounceConfig, ConfigError> {
    let d = d.into_inner();
    let window = d.window.get_ref().0;
    if window.is_zero() {
        return Err(cx.err(
            d.window.span(),
            format!("source `{name}`: debounce window must be longer than 0"),
        ));
    }
    let max_delay = match d.max_delay {
        Some(m) if m.get_ref().0 < window => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: debounce max_delay must be at least the window"),
            ))
        }
        Some(m) => m.get_ref().0,
        None => window * 10,
    };
    let max_keys = match d.max_keys {
        Some(k) if !(1..=10_000_000).contains(k.get_ref()) => {
            return Err(cx.err(
                k.span(),
                format!("source `{name}`: debounce max_keys must be between 1 and 10000000"),
            ))
        }
        Some(k) => *k.get_ref() as usize,
        None => 100_000,
    };
    Ok(DebounceConfig {
        window,
        max_delay,
        max_keys,
    })
}

/// A constant of `values` or `add` as a value.
fn constant(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Timestamp(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => return None,
    })
}

/// `[source.map]`. `keys` are the source's configured key fields (tail, poll).
fn mapping(
    cx: &Ctx,
    name: &str,
    m: Spanned<RawMap>,
    keys: &[String],
) -> Result<Mapping, ConfigError> {
    let m = m.into_inner();
    let mut out = Mapping::default();
    let err =
        |span: Range<usize>, what: String| cx.err(span, format!("source `{name}`: map: {what}"));
    if let Some(d) = &m.drop {
        for f in d.get_ref() {
            if f.is_empty() {
                return Err(err(d.span(), "`drop` lists an empty name".into()));
            }
            if keys.contains(f) {
                return Err(err(
                    d.span(),
                    format!(
                        "`{f}` is a key field: consumers could not tell the rows apart without it"
                    ),
                ));
            }
            out.drop.insert(f.clone());
        }
    }
    if let Some(t) = &m.tables {
        for (from, to) in t.get_ref() {
            if to.trim().is_empty() {
                return Err(err(
                    t.span(),
                    format!("`tables`: `{from}` is renamed to an empty name"),
                ));
            }
            out.tables.insert(from.clone(), to.clone());
        }
    }
    if let Some(r) = &m.rename {
        let mut targets = HashSet::new();
        for (from, to) in r.get_ref() {
            if to.is_empty() {
                return Err(err(
                    r.span(),
                    format!("`rename`: `{from}` is renamed to an empty name"),
                ));
            }
            if out.drop.contains(from) {
                return Err(err(
                    r.span(),
                    format!("`{from}` is both dropped and renamed"),
                ));
            }
            if !targets.insert(to.clone()) {
                return Err(err(
                    r.span(),
                    format!("`rename`: two fields are renamed to `{to}`"),
                ));
            }
            out.rename.insert(from.clone(), to.clone());
        }
    }
    if let Some(v) = &m.values {
        for (field, codes) in v.get_ref() {
            if out.drop.contains(field) {
                return Err(err(
                    v.span(),
                    format!("`{field}` is both dropped and translated"),
                ));
            }
            let mut table = HashMap::new();
            for (code, to) in codes {
                let to = constant(to).ok_or_else(|| {
                    err(v.span(), format!("`values.{field}.{code}` must be a string, number, boolean or date-time"))
                })?;
                table.insert(code.clone(), to);
            }
            out.values.insert(field.clone(), table);
        }
    }
    if let Some(u) = &m.unknown {
        let rule = |s: &str| {
            Unknown::from_name(s).ok_or_else(|| {
                err(
                    u.span(),
                    format!("`unknown` `{s}`: use \"keep\", \"null\" or \"quarantine\""),
                )
            })
        };
        match u.get_ref() {
            toml::Value::String(s) => {
                let r = rule(s)?;
                for f in out.values.keys() {
                    out.unknown.insert(f.clone(), r);
                }
            }
            toml::Value::Table(t) => {
                for (f, v) in t {
                    if !out.values.contains_key(f) {
                        return Err(err(
                            u.span(),
                            format!("`unknown.{f}`: `{f}` has no `values` table"),
                        ));
                    }
                    let s = v.as_str().ok_or_else(|| {
                        err(
                            u.span(),
                            format!("`unknown.{f}` must be \"keep\", \"null\" or \"quarantine\""),
                        )
                    })?;
                    out.unknown.insert(f.clone(), rule(s)?);
                }
            }
            _ => return Err(err(
                u.span(),
                "`unknown` is \"keep\", \"null\" or \"quarantine\", or a table of those by field"
                    .into(),
            )),
        }
    }
    if let Some(a) = &m.add {
        for (field, v) in a.get_ref() {
            let v = constant(v).ok_or_else(|| {
                err(
                    a.span(),
                    format!("`add.{field}` must be a string, number, boolean or date-time"),
                )
            })?;
            if out.drop.contains(field) || out.rename.values().any(|t| t == field) {
                return Err(err(
                    a.span(),
                    format!("`add.{field}`: `{field}` is also dropped or a renamed field"),
                ));
            }
            out.add.push((field.clone(), v));
        }
    }
    Ok(out)
}

fn tail_source(cx: &Ctx, s: RawSource, name: String) -> Result<SourceConfig, ConfigError> {
    let trigger_keys = [
        ("odbc", s.odbc.as_ref().map(|v| v.span())),
        ("postgres", s.postgres.as_ref().map(|v| v.span())),
        ("tables", s.tables.as_ref().map(|v| v.span())),
        ("capture", s.capture.as_ref().map(|v| v.span())),
        ("dialect", s.dialect.as_ref().map(|v| v.span())),
        ("snapshot", s.snapshot.as_ref().map(|v| v.span())),
        ("schema_check", s.schema_check.as_ref().map(|v| v.span())),
    ];
    for (key, span) in trigger_keys {
        if let Some(span) = span {
            return Err(cx.err(
                span,
                format!("source `{name}`: `{key}` is not a key of tail sources"),
            ));
        }
    }
    if s.interval.is_some() {
        return Err(cx.err(
            s.name.span(),
            format!("source `{name}`: `interval` is not a key of tail sources"),
        ));
    }
    refuse(cx, &name, "tail", &poll_keys(&s))?;

    let paths = match s.paths {
        None => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a tail source needs `paths`"),
            ))
        }
        Some(p) if p.get_ref().is_empty() => {
            return Err(cx.err(p.span(), format!("source `{name}`: `paths` is empty")))
        }
        Some(p) => {
            for pat in p.get_ref() {
                if let Err(e) = glob::Pattern::new(pat) {
                    return Err(cx.err(
                        p.span(),
                        format!("source `{name}`: `{pat}` is not a valid glob: {e}"),
                    ));
                }
                if !pat.starts_with('/') {
                    return Err(cx.err(
                        p.span(),
                        format!("source `{name}`: `{pat}` must be an absolute path"),
                    ));
                }
            }
            p.into_inner()
        }
    };
    let csv = s.csv.map(|c| (c.span(), c.into_inner()));
    let format = match s.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("jsonl", _)) => Format::Jsonl,
        Some(("lines", _)) => Format::Lines,
        Some(("csv", _)) => {
            let mut o = CsvOptions::default();
            if let Some((_, c)) = &csv {
                if let Some(d) = &c.delimiter {
                    o.delimiter = single_byte(cx, d, "csv.delimiter")?;
                }
                if let Some(q) = &c.quote {
                    o.quote = single_byte(cx, q, "csv.quote")?;
                }
                o.header = c.header.unwrap_or(true);
            }
            Format::Csv(o)
        }
        Some(("fixed", span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: format = \"fixed\" is not supported yet by this build"),
            ))
        }
        Some((other, span)) => {
            return Err(cx.err(
                span,
                format!("source `{name}`: unknown format `{other}` (jsonl, csv or lines)"),
            ))
        }
    };
    if let (Some((span, _)), false) = (&csv, matches!(format, Format::Csv(_))) {
        return Err(cx.err(
            span.clone(),
            format!("source `{name}`: `csv` options need format = \"csv\""),
        ));
    }
    let table = match (s.table, s.table_field) {
        (Some(t), None) if valid_name(t.get_ref()) => TableFrom::Fixed(t.into_inner()),
        (Some(t), None) => {
            return Err(cx.err(
                t.span(),
                format!("source `{name}`: table must be 1-64 letters, digits, `_` or `-`"),
            ))
        }
        (None, Some(f)) => TableFrom::Field(f.into_inner()),
        (Some(_), Some(f)) => {
            return Err(cx.err(
                f.span(),
                format!("source `{name}`: give `table` or `table_field`, not both"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                s.name.span(),
                format!("source `{name}`: a tail source needs `table` or `table_field`"),
            ))
        }
    };
    let mut op_map = HashMap::new();
    if let Some(m) = &s.op_map {
        for (from, to) in m.get_ref() {
            let op = Op::from_code(to).ok_or_else(|| {
                cx.err(m.span(), format!("source `{name}`: op_map `{from}` = `{to}`: an op is \"c\", \"u\", \"d\" or \"r\""))
            })?;
            op_map.insert(from.clone(), op);
        }
        if s.op_field.is_none() {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: `op_map` needs `op_field`"),
            ));
        }
    }
    let start_at = match s.start_at {
        None => StartAt::Beginning,
        Some(v) => match v.get_ref().as_str() {
            "beginning" => StartAt::Beginning,
            "end" => StartAt::End,
            other => {
                return Err(cx.err(
                    v.span(),
                    format!("source `{name}`: start_at `{other}`: use \"beginning\" or \"end\""),
                ))
            }
        },
    };
    let max_record_bytes = match s.max_record_bytes {
        None => DEFAULT_MAX_RECORD_BYTES,
        Some(m) if m.get_ref().0 < 64 || m.get_ref().0 > (1 << 30) => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: max_record_bytes must be between 64B and 1GiB"),
            ))
        }
        Some(m) => m.get_ref().0 as usize,
    };
    let max_tables = match s.max_tables {
        None => DEFAULT_MAX_TABLES,
        Some(m) if *m.get_ref() < 1 || *m.get_ref() > 1_000_000 => {
            return Err(cx.err(
                m.span(),
                format!("source `{name}`: max_tables must be between 1 and 1000000"),
            ))
        }
        Some(m) => *m.get_ref() as usize,
    };
    let close_idle = match s.close_idle {
        None => Duration::from_secs(300),
        Some(d) if d.get_ref().0 >= Duration::from_secs(1) => d.into_inner().0,
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!("source `{name}`: `close_idle` must be at least 1s"),
            ))
        }
    };
    Ok(SourceConfig {
        name,
        map: Mapping::default(),
        debounce: None,
        kind: SourceKind::Tail(TailConfig {
            paths,
            format,
            table,
            key: s.key.map(|k| k.into_inner()).unwrap_or_default(),
            op_field: s.op_field.map(|f| f.into_inner()),
            op_map,
            start_at,
            max_record_bytes,
            stat_interval: s.stat_interval.map_or(Duration::from_secs(1), |d| d.0),
            rotate_wait: s.rotate_wait.map_or(Duration::from_secs(10), |d| d.0),
            close_idle,
            max_tables,
        }),
    })
}

fn single_byte(cx: &Ctx, v: &Spanned<String>, what: &str) -> Result<u8, ConfigError> {
    match v.get_ref().as_bytes() {
        [b] if b.is_ascii() && *b != b'\n' => Ok(*b),
        _ => Err(cx.err(v.span(), format!("{what} must be one ASCII character"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(t: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/lockstep/lockstep.toml"), t, true)
    }

    #[test]
    fn commands_without_secrets_read_none() {
        let text = MINIMAL.replace(
            "[[source]]",
            "[nats]\nuser = \"u\"\npassword = { file = \"lockstep-test-no-such-secret\" }\n\n\
             [admin]\nlisten = \"127.0.0.1:9999\"\n\n[[source]]",
        ) + "\n[[source]]\nname = \"db\"\nkind = \"trigger\"\n\
              odbc = { env = \"LOCKSTEP_TEST_NEVER_SET\" }\ntables = [\"t\"]\n";
        let path = Path::new("/etc/lockstep/lockstep.toml");
        let e = parse(path, &text, true).unwrap_err();
        assert!(e.message.contains("lockstep-test-no-such-secret"), "{e}");
        let c = parse(path, &text, false).unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.sources.len(), 2);
        // Two sources whose connection strings are unread are not taken for one database.
        let two = text.clone()
            + "\n[[source]]\nname = \"db2\"\nkind = \"trigger\"\n\
               odbc = { env = \"LOCKSTEP_TEST_NEVER_SET\" }\ntables = [\"t\"]\n";
        parse(path, &two, false).unwrap();
    }

    const MINIMAL: &str = "[agent]\nid = \"a1\"\nstate_dir = \"/tmp/x\"\n\n[[source]]\nname = \"log\"\nkind = \"tail\"\npaths = [\"/var/log/x*.log\"]\ntable = \"t\"\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(
            c.nats.servers,
            vec![NatsServer::from("nats://127.0.0.1:4222")]
        );
        assert_eq!(c.nats.max_in_flight, 4096);
        assert_eq!(c.admin.listen, Some("127.0.0.1:9187".parse().unwrap()));
        let SourceKind::Tail(t) = &c.sources[0].kind else {
            panic!("a tail source")
        };
        assert_eq!(t.format, Format::Jsonl);
        assert_eq!(t.start_at, StartAt::Beginning);
        assert_eq!(t.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = parse_str(&format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(10), "{e}");
        assert!(
            e.to_string().starts_with("/etc/lockstep/lockstep.toml:10:"),
            "{e}"
        );
        assert!(e.message.contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let e = parse_str(&MINIMAL.replace(
            "table = \"t\"",
            "table = \"t\"\nstat_interval = \"5 fortnights\"",
        ))
        .unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(10), "{e}");
        let e = parse_str(&MINIMAL.replace("kind = \"tail\"", "kind = \"poll\"")).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(8));
        assert!(
            e.message.contains("`paths` is not a key of poll sources"),
            "{e}"
        );
        let e = parse_str(&MINIMAL.replace("table = \"t\"", "table = \"t\"\nodbc = \"DSN=X\""))
            .unwrap_err();
        assert!(e.message.contains("not a key of tail sources"), "{e}");
    }

    #[test]
    fn quarantine_and_table_caps() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.agent.quarantine_max_bytes, DEFAULT_QUARANTINE_MAX_BYTES);
        let SourceKind::Tail(t) = &c.sources[0].kind else {
            panic!("a tail source")
        };
        assert_eq!(t.max_tables, DEFAULT_MAX_TABLES);
        let text = MINIMAL
            .replace(
                "id = \"a1\"",
                "id = \"a1\"\nquarantine_max_bytes = \"64MiB\"",
            )
            .replace("table = \"t\"", "table_field = \"t\"\nmax_tables = 5");
        let c = parse_str(&text).unwrap();
        assert_eq!(c.agent.quarantine_max_bytes, 64 << 20);
        let SourceKind::Tail(t) = &c.sources[0].kind else {
            panic!("a tail source")
        };
        assert_eq!(t.max_tables, 5);
        let e = parse_str(&text.replace("\"64MiB\"", "\"1KiB\"")).unwrap_err();
        assert!(e.message.contains("at least 64KiB"), "{e}");
        let e = parse_str(&text.replace("max_tables = 5", "max_tables = 0")).unwrap_err();
        assert!(e.message.contains("max_tables must be"), "{e}");
        let e =
            parse_str(&POLL.replace("table = \"PERMIT\"", "table = \"PERMIT\"\nmax_tables = 5"))
                .unwrap_err();
        assert!(e.message.contains("not a key of poll sources"), "{e}");
    }

    #[test]
    fn close_idle() {
        let tail = |c: &Config| match &c.sources[0].kind {
            SourceKind::Tail(t) => t.close_idle,
            _ => panic!("a tail source"),
        };
        assert_eq!(tail(&parse_str(MINIMAL).unwrap()), Duration::from_secs(300));
        let text = MINIMAL.replace("table = \"t\"", "table = \"t\"\nclose_idle = \"30s\"");
        assert_eq!(tail(&parse_str(&text).unwrap()), Duration::from_secs(30));
        let e = parse_str(&text.replace("\"30s\"", "\"500ms\"")).unwrap_err();
        assert!(
            e.message.contains("`close_idle` must be at least 1s"),
            "{e}"
        );
        let e = parse_str(&POLL.replace(
            "table = \"PERMIT\"",
            "table = \"PERMIT\"\nclose_idle = \"1m\"",
        ))
        .unwrap_err();
        assert!(e.message.contains("not a key of poll sources"), "{e}");
    }

    const POLL: &str = "[agent]\nid = \"a1\"\n\n[[source]]\nname = \"permits\"\nkind = \"poll\"\nodbc = \"DSN=P\"\ntable = \"PERMIT\"\n";

    #[test]
    fn poll_sources() {
        let c = parse_str(POLL).unwrap();
        let SourceKind::Poll(p) = &c.sources[0].kind else {
            panic!("a poll source")
        };
        assert_eq!(p.interval, Duration::from_secs(30));
        assert!(p.key.is_empty() && p.columns.is_empty() && p.cursor.is_none());
        assert!(!p.initial_skip);
        assert_eq!(p.max_value_bytes, 64 << 10);
        let c = parse_str(&format!(
            "{POLL}key = [\"ID\"]\ncolumns = [\"ID\", \"STAT\"]\ncursor = \"TS\"\nlookback = \"2m\"\nfull_scan_every = \"10m\"\ninitial = \"skip\"\ninterval = \"5s\"\n"
        ))
        .unwrap();
        let SourceKind::Poll(p) = &c.sources[0].kind else {
            panic!("a poll source")
        };
        assert_eq!(p.key, ["ID"]);
        assert_eq!(p.cursor.as_deref(), Some("TS"));
        assert_eq!(p.lookback, Lookback::Time(Duration::from_secs(120)));
        assert_eq!(p.full_scan_every, Duration::from_secs(600));
        assert!(p.initial_skip);
        let c = parse_str(&format!("{POLL}cursor = \"SEQ\"\nlookback = 500\n")).unwrap();
        let SourceKind::Poll(p) = &c.sources[0].kind else {
            panic!("a poll source")
        };
        assert_eq!(p.lookback, Lookback::Count(500));

        let bad = [
            ("lookback = \"1m\"\n", 9, "`lookback` needs `cursor`"),
            ("initial = \"all\"\n", 9, "use \"snapshot\" or \"skip\""),
            ("query = \"SELECT * FROM v\"\n", 5, "needs `key`"),
            ("query = \"DELETE FROM v\"\n", 9, "must be a SELECT"),
            (
                "tables = [\"a\"]\n",
                9,
                "`tables` is not a key of poll sources",
            ),
            ("key = []\n", 9, "`key` is empty"),
            (
                "schema_check = \"1m\"\n",
                9,
                "`schema_check` is not a key of poll sources",
            ),
        ];
        for (extra, line, msg) in bad {
            let e = parse_str(&format!("{POLL}{extra}")).unwrap_err();
            assert!(e.message.contains(msg), "{extra}: {e}");
            assert_eq!(e.at.map(|a| a.0), Some(line), "{extra}: {e}");
        }
        let e = parse_str(&POLL.replace("odbc = \"DSN=P\"", "postgres = \"host=x\"")).unwrap_err();
        assert!(e.message.contains("read through ODBC"), "{e}");
        let e = parse_str(&format!("{MINIMAL}cursor = \"TS\"\n")).unwrap_err();
        assert!(e.message.contains("not a key of tail sources"), "{e}");
        let e = parse_str(&format!("{MINIMAL}schema_check = \"1m\"\n")).unwrap_err();
        assert!(
            e.message
                .contains("`schema_check` is not a key of tail sources"),
            "{e}"
        );
    }

    #[test]
    fn trigger_sources() {
        let base = "[agent]\nid = \"a\"\nstate_dir = \"/tmp/x\"\n[nats]\nservers = [\"nats://127.0.0.1:4222\"]\nstream = \"S\"\n[[source]]\nname = \"vista\"\nkind = \"trigger\"\n";
        let c = parse_str(&format!(
            "{base}postgres = \"host=db dbname=vista\"\ntables = [\"appointments\"]\ncapture = \"rows\"\ninterval = \"200ms\""
        ))
        .unwrap();
        let SourceKind::Trigger(t) = &c.sources[0].kind else {
            panic!("a trigger source")
        };
        assert!(
            matches!(&t.db, TriggerDb::Postgres(p) if p.config().get_dbname() == Some("vista"))
        );
        assert_eq!(t.tables, ["appointments"]);
        assert_eq!(t.capture, Capture::Rows);
        assert_eq!(t.interval, Duration::from_millis(200));
        assert!(!t.snapshot_initial);
        assert_eq!(t.schema_check, Duration::from_secs(60));
        let c = parse_str(&format!(
            "{base}odbc = \"DSN=VISTA\"\ntables = [\"a\"]\ndialect = \"db2\"\nsnapshot = \"initial\"\nschema_check = \"5s\""
        ))
        .unwrap();
        let SourceKind::Trigger(t) = &c.sources[0].kind else {
            panic!("a trigger source")
        };
        assert_eq!((t.capture, t.dialect), (Capture::Keys, Some(Dialect::Db2)));
        assert!(t.snapshot_initial);
        assert_eq!(t.schema_check, Duration::from_secs(5));
        for (extra, msg) in [
            (
                "postgres = \"x\"\ntables = [\"a\"]\nsnapshot = \"always\"",
                "snapshot `always`",
            ),
            ("tables = [\"a\"]", "needs `postgres"),
            ("postgres = \"x\"", "needs `tables"),
            (
                "postgres = \"x\"\nodbc = \"y\"\ntables = [\"a\"]",
                "not both",
            ),
            (
                "postgres = \"x\"\ntables = [\"a\"]\ncapture = \"all\"",
                "capture `all`",
            ),
            (
                "odbc = \"x\"\ntables = [\"a\"]\ndialect = \"informix\"",
                "dialect `informix`",
            ),
            (
                "postgres = \"x\"\ntables = [\"a\"]\npaths = [\"/x\"]",
                "not a key of trigger sources",
            ),
            (
                "postgres = \"x\"\ntables = [\"a\"]\nschema_check = \"500ms\"",
                "source `vista`: `schema_check` must be at least 1s",
            ),
        ] {
            let e = parse_str(&format!("{base}{extra}")).unwrap_err();
            assert!(e.message.contains(msg), "{extra}: {e}");
        }
    }

    #[test]
    fn a_table_belongs_to_one_source_of_a_database() {
        let base = "[agent]\nid = \"a\"\nstate_dir = \"/tmp/x\"\n";
        let src = |name: &str, conn: &str, tables: &str| {
            format!(
                "[[source]]\nname = \"{name}\"\nkind = \"trigger\"\n{conn}\ntables = [{tables}]\n"
            )
        };
        let pg = "postgres = \"host=db dbname=vista user=a\"";
        let pg2 = "postgres = \"dbname=vista host=db user=b\"";
        let maria = "odbc = \"DRIVER={MariaDB Unicode};SERVER=db;DATABASE=vista;\"";
        // Different tables on one database, or one table name on two databases: fine.
        for ok in [
            format!(
                "{}{}",
                src("a", pg, "\"appointments\""),
                src("b", pg2, "\"clinics\"")
            ),
            format!(
                "{}{}",
                src("a", pg, "\"appointments\""),
                src("b", maria, "\"appointments\"")
            ),
            format!(
                "{}{}",
                src("a", pg, "\"x.orders\""),
                src("b", pg, "\"y.orders\"")
            ),
        ] {
            parse_str(&format!("{base}{ok}")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let two = format!(
            "{base}{}{}",
            src("vista", pg, "\"appointments\""),
            src("clinic", pg2, "\"clinics\", \"appointments\"")
        );
        let e = parse_str(&two).unwrap_err();
        assert_eq!(e.at, Some((13, 10)), "{e}");
        assert!(
            e.message.starts_with(
                "source `clinic`: table `appointments` is already captured by source `vista` on the same database"
            ),
            "{e}"
        );
        let e = parse_str(&format!(
            "{base}{}{}",
            src("vista", maria, "\"appointments\""),
            src(
                "clinic",
                &maria.replace(";\"", ";UID=x\""),
                "\"public.APPOINTMENTS\""
            )
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("table `public.APPOINTMENTS` (as `appointments` there)"),
            "{e}"
        );
        let e = parse_str(&format!("{base}{}", src("vista", pg, "\"a\", \"A\""))).unwrap_err();
        assert!(e.message.contains("lists `a` and `A`"), "{e}");
    }

    #[test]
    fn debounce_and_map() {
        let c = parse_str(&format!(
            "{MINIMAL}key = [\"ID\"]\ndebounce = {{ window = \"3s\", max_delay = \"30s\", max_keys = 500 }}\n\n[source.map]\ntables = {{ t = \"permits\" }}\nrename = {{ BRG_ID = \"bridgeId\" }}\nvalues = {{ CODE_STS = {{ A = \"ACTIVE\", 9 = 90 }} }}\nunknown = {{ CODE_STS = \"quarantine\" }}\ndrop = [\"SSN\"]\nadd = {{ region = \"VA-NE\", v = 2 }}\n"
        ))
        .unwrap();
        let s = &c.sources[0];
        assert_eq!(
            s.debounce,
            Some(DebounceConfig {
                window: Duration::from_secs(3),
                max_delay: Duration::from_secs(30),
                max_keys: 500
            })
        );
        let m = &s.map;
        assert_eq!(m.table("t"), "permits");
        assert_eq!(m.rename["BRG_ID"], "bridgeId");
        assert_eq!(m.values["CODE_STS"]["A"], Value::Text("ACTIVE".into()));
        assert_eq!(m.values["CODE_STS"]["9"], Value::Int(90));
        assert_eq!(m.unknown["CODE_STS"], Unknown::Quarantine);
        assert!(m.drop.contains("SSN") && m.drops_fields());
        assert_eq!(m.add[0], ("region".into(), Value::Text("VA-NE".into())));
        // Defaults: max_delay ten windows, 100,000 keys; no map, no debounce.
        let c = parse_str(&format!("{MINIMAL}debounce = {{ window = \"2s\" }}\n")).unwrap();
        let d = c.sources[0].debounce.unwrap();
        assert_eq!(
            (d.max_delay, d.max_keys),
            (Duration::from_secs(20), 100_000)
        );
        let c = parse_str(MINIMAL).unwrap();
        assert!(c.sources[0].debounce.is_none() && c.sources[0].map.is_identity());

        // Errors name the line of the value at fault.
        let bad = [
            ("debounce = { window = \"0s\" }\n", 11, "longer than 0"),
            (
                "debounce = { window = \"5s\", max_delay = \"1s\" }\n",
                11,
                "at least the window",
            ),
            (
                "debounce = { window = \"5s\", hold = \"1s\" }\n",
                11,
                "unknown field `hold`",
            ),
            (
                "debounce = { window = \"1s\", max_keys = 0 }\n",
                11,
                "max_keys",
            ),
            (
                "\n[source.map]\ndrop = [\"ID\"]\n",
                13,
                "`ID` is a key field",
            ),
            (
                "\n[source.map]\ndrop = [\"A\"]\nrename = { A = \"b\" }\n",
                14,
                "both dropped and renamed",
            ),
            (
                "\n[source.map]\nrename = { A = \"x\", B = \"x\" }\n",
                13,
                "two fields are renamed to `x`",
            ),
            (
                "\n[source.map]\nvalues = { S = { A = [1] } }\n",
                13,
                "`values.S.A` must be",
            ),
            (
                "\n[source.map]\nvalues = { S = { A = \"B\" } }\nunknown = \"drop\"\n",
                14,
                "`unknown` `drop`",
            ),
            (
                "\n[source.map]\nunknown = { S = \"null\" }\n",
                13,
                "`S` has no `values` table",
            ),
            (
                "\n[source.map]\nrenames = { A = \"b\" }\n",
                13,
                "unknown field `renames`",
            ),
        ];
        for (extra, line, msg) in bad {
            let e = parse_str(&format!("{MINIMAL}key = [\"ID\"]\n{extra}")).unwrap_err();
            assert!(e.message.contains(msg), "{extra}: {e}");
            assert_eq!(e.at.map(|a| a.0), Some(line), "{extra}: {e}");
        }
        // A poll source already sends one event per changed row per scan.
        let e = parse_str(&format!("{POLL}debounce = {{ window = \"1s\" }}\n")).unwrap_err();
        assert!(e.message.contains("make `interval` longer"), "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(9));
        let c = parse_str(&format!("{POLL}[source.map]\ndrop = [\"SSN\"]\n")).unwrap();
        assert!(c.sources[0].map.drops_fields());
    }

    #[test]
    fn secrets_from_env_and_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nats-token"), "s3cret\n").unwrap();
        // Only this test touches these variables.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let c = parse_str(&MINIMAL.replace(
            "[[source]]",
            "[nats]\ntoken = { file = \"nats-token\" }\n\n[[source]]",
        ))
        .unwrap();
        assert_eq!(c.nats.auth, NatsAuth::Token(Secret::for_tests("s3cret")));
        // The packaged unit loads /etc/lockstep/credentials as `lockstep_<file>`.
        std::fs::write(dir.path().join("lockstep_nats-password"), "pa55\n").unwrap();
        let c = parse_str(&MINIMAL.replace(
            "[[source]]",
            "[nats]\nuser = \"u\"\npassword = { file = \"nats-password\" }\n\n[[source]]",
        ))
        .unwrap();
        assert_eq!(
            c.nats.auth,
            NatsAuth::UserPassword {
                user: "u".into(),
                password: Secret::for_tests("pa55")
            }
        );
        std::env::set_var("LOCKSTEP_TEST_PW", "pw");
        let c = parse_str(&MINIMAL.replace(
            "[[source]]",
            "[nats]\nuser = \"u\"\npassword = { env = \"LOCKSTEP_TEST_PW\" }\n\n[[source]]",
        ))
        .unwrap();
        assert!(format!("{c:?}").contains("password: ***"));
        let e = parse_str(&MINIMAL.replace(
            "[[source]]",
            "[nats]\ntoken = { env = \"LOCKSTEP_NOT_SET\" }\n\n[[source]]",
        ))
        .unwrap_err();
        assert!(e.message.contains("LOCKSTEP_NOT_SET"), "{e}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The example config shipped in packaging/ must always load.
    #[test]
    fn packaged_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lockstep.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.agent.id, "legacy-host-01");
        assert_eq!(c.sources.len(), 1);
        let SourceKind::Tail(t) = &c.sources[0].kind else {
            panic!("a tail source")
        };
        assert_eq!(t.op_map.get("cancel"), Some(&Op::Delete));
    }

    /// So must the demo's.
    #[test]
    fn demo_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/lockstep.toml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
