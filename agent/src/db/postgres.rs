//! PostgreSQL connection strings as libpq reads them, and the one function every
//! PostgreSQL connection of lockstep goes through ([`connect`]): the trigger source, its
//! snapshots, `lockstep triggers`, `lockstep check`.
//!
//! tokio-postgres takes `sslmode` `disable`, `prefer` and `require` only, and no
//! `sslrootcert`; so lockstep reads `sslmode` and `sslrootcert` itself, from both forms
//! (`host=… sslmode=verify-full sslrootcert=/etc/ssl/db-ca.pem` and
//! `postgresql://…?sslmode=verify-full&sslrootcert=…`), hands the rest to tokio-postgres,
//! and does TLS with rustls ([`super::pg_tls`]), with libpq's meaning of each mode:
//!
//! | sslmode | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it, else plaintext | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when a root certificate is given |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | that, and issued for the host name connected to |
//!
//! `sslrootcert` is a PEM file, or `system` for the system's CAs (which, as in libpq,
//! makes `verify-full` the default and refuses a weaker mode). Without it, `verify-ca`
//! and `verify-full` use `~/.postgresql/root.crt`, as libpq does, and say so when it is
//! missing. Under `prefer`, a handshake that fails (a server that offers only TLS 1.0,
//! say) falls back to plaintext, as libpq does, with a warning.
//!
//! Its unit tests are in `postgres/tests.rs`.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Config, Connection, Socket};

use crate::config::percent::percent_decode;

use super::pg_tls::{self, Check, MakeRustls, RustlsStream};

/// The `sslmode`s lockstep reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`.
    System,
}

/// A parsed PostgreSQL connection string. Its `Debug` shows no password (tokio-postgres
/// redacts it).
#[derive(Debug, Clone)]
pub struct PgConn {
    config: Config,
    mode: SslMode,
    root_cert: Option<RootCert>,
}

/// The keys lockstep hands to tokio-postgres (it reads them all).
const PG_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
];

/// The TLS keys lockstep reads itself (tokio-postgres does not know them).
const SSL_KEYS: &[&str] = &["sslmode", "sslrootcert"];

/// Keys of libpq (and of JDBC, which operators copy from) that lockstep does not
/// support, with what to do instead. Named in the error: they are keys, not a value.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "sslcert",
        "client certificates are not supported: authenticate with a password",
    ),
    (
        "sslkey",
        "client certificates are not supported: authenticate with a password",
    ),
    (
        "sslpassword",
        "client certificates are not supported: authenticate with a password",
    ),
    (
        "sslcertmode",
        "client certificates are not supported: authenticate with a password",
    ),
    ("sslcrl", "certificate revocation lists are not supported"),
    (
        "sslcrldir",
        "certificate revocation lists are not supported",
    ),
    (
        "ssl",
        "this is JDBC's key: write sslmode=require (or verify-ca, verify-full)",
    ),
    (
        "requiressl",
        "this is an old libpq key: write sslmode=require",
    ),
    (
        "sslsni",
        "the server name is always sent (SNI) when host= is a name",
    ),
    (
        "sslcompression",
        "TLS compression is never used (rustls has none)",
    ),
    (
        "ssl_min_protocol_version",
        "TLS 1.2 and 1.3 are used, never older (rustls has none older)",
    ),
    (
        "ssl_max_protocol_version",
        "TLS 1.2 and 1.3 are used, whichever the server prefers",
    ),
    ("sslkeylogfile", "TLS key logging is not supported"),
    (
        "gssencmode",
        "GSSAPI encryption is not supported: use sslmode",
    ),
    (
        "passfile",
        "give the password as password= (or from a secret file)",
    ),
    (
        "service",
        "connection services are not supported: write the keys out",
    ),
];

/// What a key of a connection string is to lockstep.
enum KeyKind {
    /// `sslmode`, `sslrootcert`: read by lockstep.
    Ssl,
    /// Handed to tokio-postgres.
    Pg,
}

/// Sorts a key, or refuses it: an unsupported key by its name and why; an unknown one
/// by its byte position only (counted from 1 in the string as written), since a
/// password with an unquoted blank makes its second half look like a key.
fn key_kind(key: &str, at: usize) -> Result<KeyKind, String> {
    if SSL_KEYS.contains(&key) {
        return Ok(KeyKind::Ssl);
    }
    if PG_KEYS.contains(&key) {
        return Ok(KeyKind::Pg);
    }
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(u, _)| *u == key) {
        return Err(format!(
            "`{key}` in the PostgreSQL connection string is not supported: {why}"
        ));
    }
    Err(format!(
        "the PostgreSQL connection string has an unknown key at byte {} (not shown: it may be \
         part of a password; a value with a blank is quoted: key='a b'); the keys \
         lockstep reads are {}, {}",
        at + 1,
        SSL_KEYS.join(", "),
        PG_KEYS.join(", ")
    ))
}

/// tokio-postgres's words about a string it refused, when they quote nothing of it
/// (it names a value's key, or a byte position); else a word of ours.
fn config_error(why: &str) -> String {
    let shown = if why.starts_with("invalid value for option `")
        || why.starts_with("unterminated")
        || why == "unexpected EOF"
    {
        why.to_owned()
    } else if let Some(rest) = why.strip_prefix("unexpected character at byte ") {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        format!("unexpected character at byte {n}")
    } else {
        "it does not parse".to_owned()
    };
    format!("not a PostgreSQL connection string: {shown} (the string is not shown: it may hold a password)")
}

impl PgConn {
    /// Parses a connection string (`key=value …` or a `postgresql://` URL). The error
    /// never quotes the string (it may hold a password).
    pub fn parse(s: &str) -> Result<PgConn, String> {
        let lead = s.len() - s.trim_start().len();
        let s = s.trim();
        let (rest, params) = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            split_url(s, lead)?
        } else {
            split_key_values(s, lead)?
        };
        let mut mode = None;
        let mut root_cert = None;
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => {
                    mode = Some(match v.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        "allow" => {
                            return Err("sslmode=allow is not supported: use prefer (TLS when the \
                                 server offers it) or disable"
                                .into())
                        }
                        other => {
                            return Err(format!(
                                "sslmode `{other}` is not one of disable, prefer, require, \
                                 verify-ca, verify-full"
                            ))
                        }
                    })
                }
                "sslrootcert" if v == "system" => root_cert = Some(RootCert::System),
                "sslrootcert" if v.is_empty() => root_cert = None,
                "sslrootcert" => root_cert = Some(RootCert::File(PathBuf::from(v))),
                // split_* take nothing else.
                _ => {}
            }
        }
        let mode = match (mode, &root_cert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(format!(
                    "sslmode={} may not be used with sslrootcert=system: use verify-full \
                     (as libpq says)",
                    m.name()
                ))
            }
            (m, _) => m.unwrap_or(SslMode::Prefer),
        };
        let mut config = Config::from_str(&rest).map_err(|e| {
            use std::error::Error;
            match e.source() {
                Some(why) => config_error(&why.to_string()),
                None => config_error(""),
            }
        })?;
        // Only an address (hostaddr=): libpq does TLS without a host name, except for
        // verify-full, which checks it; tokio-postgres does no TLS without one, so the
        // address stands in as the name.
        if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
            if mode == SslMode::VerifyFull {
                return Err(
                    "sslmode=verify-full checks the server's certificate against \
                            host=, and there is only hostaddr=: add host=<the name in the \
                            certificate>"
                        .into(),
                );
            }
            for a in config.get_hostaddrs().to_vec() {
                config.host(a.to_string());
            }
        }
        // libpq uses no TLS over a Unix-domain socket, whatever sslmode says (the
        // server offers none there).
        let unix_only = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        config.ssl_mode(match mode {
            _ if unix_only => PgSslMode::Disable,
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(PgConn {
            config,
            mode,
            root_cert,
        })
    }

    /// The tokio-postgres settings (hosts, ports, database, user, options).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `sslmode` as written (or `prefer`).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The certificate check and root certificates this connection uses: `require` with
    /// a root certificate (given, or `~/.postgresql/root.crt`) checks as `verify-ca`.
    fn tls(&self) -> Result<(Check, pg_tls::Roots), String> {
        self.tls_with(default_root_path())
    }

    /// [`Self::tls`] with libpq's default root certificate at `default`.
    fn tls_with(&self, default: Option<PathBuf>) -> Result<(Check, pg_tls::Roots), String> {
        let check = match self.mode {
            SslMode::Disable | SslMode::Prefer => Check::Nothing,
            SslMode::Require => Check::Ca,
            SslMode::VerifyCa => Check::Ca,
            SslMode::VerifyFull => Check::Full,
        };
        if check == Check::Nothing {
            return Ok((check, pg_tls::Roots::default()));
        }
        let root = match &self.root_cert {
            Some(r) => Some(r.clone()),
            None => default.clone().filter(|p| p.exists()).map(RootCert::File),
        };
        match root {
            Some(RootCert::File(p)) => Ok((check, pg_tls::read_roots(&p)?)),
            Some(RootCert::System) => Ok((
                check,
                pg_tls::Roots::dated(pg_tls::system_roots()?, rustls::pki_types::UnixTime::now()),
            )),
            None if self.mode == SslMode::Require => Ok((Check::Nothing, pg_tls::Roots::default())),
            None => Err(format!(
                "sslmode={} needs the CA that signed the server's certificate: give \
                 sslrootcert=/path/to/ca.pem (or sslrootcert=system for the system's CAs); \
                 {} does not exist",
                self.mode.name(),
                default.map_or("~/.postgresql/root.crt".into(), |p| p.display().to_string())
            )),
        }
    }

    /// What `check` reports about the transport.
    pub fn describe(&self) -> String {
        let root = match &self.root_cert {
            Some(RootCert::File(p)) => format!(", sslrootcert {}", p.display()),
            Some(RootCert::System) => ", the system's CAs".into(),
            None => String::new(),
        };
        format!("sslmode {}{root}", self.mode.name())
    }
}

/// libpq's default root certificate: `~/.postgresql/root.crt`.
fn default_root_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
}

/// A URL without its `sslmode` and `sslrootcert` query parameters, and those
/// parameters, decoded; an unsupported or unknown parameter is refused. `lead`: the
/// blanks trimmed before `s`, for byte positions.
fn split_url(s: &str, lead: usize) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut at = lead + base.len() + 1;
    for part in query.split('&') {
        let part_at = at;
        at += part.len() + 1;
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(k);
        match key_kind(&key, part_at)? {
            KeyKind::Ssl => taken.push((key, percent_decode(v))),
            KeyKind::Pg => kept.push(part),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

/// A `key=value` string without its `sslmode` and `sslrootcert` pairs, and those pairs;
/// an unsupported or unknown key is refused. libpq's grammar: pairs separated by
/// blanks, spaces allowed around `=`, a value in single quotes with `\'` and `\\`
/// escapes, or unquoted with `\` escapes. Errors give byte positions (counted from 1,
/// `lead` being the blanks trimmed before `s`), never a word of the string: it may be
/// part of a password.
fn split_key_values(s: &str, lead: usize) -> Result<(String, Vec<(String, String)>), String> {
    let b = s.as_bytes();
    let mut rest = String::with_capacity(s.len());
    let mut taken = Vec::new();
    let mut i = 0;
    let mut kept_from = 0;
    let blank = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !blank(b[i]) {
            i += 1;
        }
        let key = &s[start..i];
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(format!(
                "the PostgreSQL connection string has a word with no `=` at byte {} (not \
                 shown: it may be part of a password; write key=value pairs separated by \
                 spaces, a value with a blank in quotes: key='a b', or a postgresql:// \
                 URL)",
                lead + start + 1
            ));
        }
        i += 1;
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(format!(
                            "the value at byte {} of the PostgreSQL connection string opens \
                             a quote that is never closed",
                            lead + start + 1
                        ))
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !blank(b[i]) {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        if let KeyKind::Ssl = key_kind(key, lead + start)? {
            rest.push_str(&s[kept_from..start]);
            kept_from = i;
            taken.push((key.to_owned(), String::from_utf8_lossy(&value).into_owned()));
        }
    }
    rest.push_str(&s[kept_from..]);
    Ok((rest, taken))
}

/// An open connection: it runs as its caller polls it (on a task of its own).
pub type PgConnection = Connection<Socket, RustlsStream<Socket>>;

/// Connects, with TLS as `sslmode` says. The error is worded for the operator: the
/// server's message, and what to change when it is about TLS.
pub async fn connect(conn: &PgConn) -> Result<(Client, PgConnection), String> {
    let (check, roots) = conn.tls()?;
    let tls = MakeRustls::new(check, roots)?;
    match conn.config.connect(tls.clone()).await {
        Ok(c) => Ok(c),
        Err(e) if conn.mode == SslMode::Prefer && is_tls_error(&e) => {
            tracing::warn!(
                "PostgreSQL: the TLS handshake failed under sslmode=prefer ({}); connecting \
                 without TLS, as libpq does (set sslmode=require to refuse that, or \
                 disable to skip TLS)",
                tls_detail(&e)
            );
            let mut plain = conn.config.clone();
            plain.ssl_mode(PgSslMode::Disable);
            plain.connect(tls).await.map_err(|e| explain(conn, &e))
        }
        Err(e) => Err(explain(conn, &e)),
    }
}

/// The handshake failed (as opposed to the server refusing or being away).
fn is_tls_error(e: &tokio_postgres::Error) -> bool {
    e.to_string().starts_with("error performing TLS handshake")
}

/// The TLS error's own words: rustls's, when it is one.
fn tls_detail(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(s) => match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => inner.to_string(),
            None => s.to_string(),
        },
        None => e.to_string(),
    }
}

/// The rustls error under a handshake failure, if that is what it is.
fn rustls_error(e: &tokio_postgres::Error) -> Option<rustls::Error> {
    use std::error::Error;
    e.source()?
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
        .cloned()
}

/// "cannot connect to PostgreSQL (<mode>): <what went wrong>; <what to do>".
fn explain(conn: &PgConn, e: &tokio_postgres::Error) -> String {
    use rustls::CertificateError as C;
    let mode = conn.mode.name();
    let host = conn
        .config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let root = match &conn.root_cert {
        Some(RootCert::File(p)) => p.display().to_string(),
        Some(RootCert::System) => "the system's CAs".into(),
        None => {
            default_root_path().map_or("~/.postgresql/root.crt".into(), |p| p.display().to_string())
        }
    };
    let refusal = rustls_error(e).and_then(|r| pg_tls::Refusal::of(&r).map(str::to_owned));
    let hint = match rustls_error(e) {
        _ if refusal.is_some() => refusal.clone().unwrap_or_default(),
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => format!(
                "the server's certificate is not signed by a CA in {root}: give the CA that \
                 signed it as sslrootcert"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server's certificate is not issued for the host name `{host}`: connect \
                 by a name the certificate holds, or set sslmode=verify-ca to check the CA only"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".into()
            }
            C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => format!(
                "the server's certificate is a CA's (self-signed, say) and not in {root}: \
                 give that certificate itself, or the CA that signed it, as sslrootcert"
            ),
            _ => format!("the server's certificate was refused under sslmode={mode}"),
        },
        Some(_) => format!("the TLS handshake failed under sslmode={mode}"),
        None if is_tls_error(e) && tls_detail(e).contains("does not support TLS") => {
            "the server does not offer TLS (ssl = off on the server): turn it on there, or \
             set sslmode=prefer or disable"
                .into()
        }
        None if is_tls_error(e) && tls_detail(e).contains("no hostname") => {
            "TLS needs a host name: give host= (with hostaddr= for the address, if need be)".into()
        }
        None => match e.as_db_error() {
            Some(db) if db.code().code() == "28000" && db.message().contains("no encryption") => {
                "the server accepts only encrypted connections here (hostssl in pg_hba.conf): \
                 set sslmode=require, verify-ca or verify-full"
                    .into()
            }
            _ => String::new(),
        },
    };
    let what = match e.as_db_error() {
        Some(_) => describe(e),
        None if refusal.is_some() => {
            "TLS handshake failed: the server's certificate was refused".into()
        }
        None if is_tls_error(e) => format!("TLS handshake failed: {}", tls_detail(e)),
        // tokio-postgres's own words are the kind ("authentication error"); the cause
        // says what.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    if hint.is_empty() {
        format!("cannot connect to PostgreSQL (sslmode={mode}): {what}")
    } else {
        format!("cannot connect to PostgreSQL (sslmode={mode}): {what}; {hint}")
    }
}

/// The server's own message when there is one (tokio-postgres prints only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str("; ");
                s.push_str(d);
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
