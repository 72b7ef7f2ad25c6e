//! Where log lines go, and in what form.
//!
//! - On a terminal: human lines.
//! - Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`): JSON lines,
//!   each behind a `<N>` syslog priority prefix, which journald takes off and keeps as
//!   the entry's `PRIORITY` (so `journalctl -p err -u lockstep` works).
//! - Anywhere else (a file, a pipe): JSON lines.
//!
//! Which lines: a `RUST_LOG`-style filter (`info`, `warn,lockstep::source=debug`), from
//! `LOCKSTEP_LOG` if set, else `[agent] log` in the config, else `info`. Secrets never
//! reach a log line: they are [`crate::config::Secret`]s, which print as `***`; and each
//! line goes through [`crate::config::redact`] on its way out, for the password a
//! library or a driver's message may quote (a URL's user info, `PWD=…`).

use std::io::{IsTerminal, Write};
use std::str::FromStr;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter used when neither the environment nor the config sets one.
pub const DEFAULT_FILTER: &str = "info";

/// Parses a filter, with an error an operator can act on.
pub fn parse_filter(spec: &str) -> Result<Targets, String> {
    Targets::from_str(spec).map_err(|e| {
        format!("`{spec}` is not a log filter ({e}); write e.g. \"info\" or \"warn,lockstep::source=debug\"")
    })
}

/// How the lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Human,
    Json,
    /// JSON lines with a syslog priority prefix, for journald.
    Journal,
}

/// The form for this process's stderr.
pub fn detect() -> Form {
    if std::io::stderr().is_terminal() {
        Form::Human
    } else if stderr_is_journal() {
        Form::Journal
    } else {
        Form::Json
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a service's stdout/stderr stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// Installs the global subscriber.
pub fn init(filter: Targets, form: Form) {
    let fmt = tracing_subscriber::fmt::layer();
    let registry = tracing_subscriber::registry().with(filter);
    match form {
        Form::Human => registry
            .with(
                fmt.with_target(false)
                    .with_writer(RedactedStderr { journal: false }),
            )
            .init(),
        Form::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(RedactedStderr { journal: false }),
            )
            .init(),
        Form::Journal => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(RedactedStderr { journal: true }),
            )
            .init(),
    }
}

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Stderr, each line redacted and, for journald, behind its level's syslog priority
/// prefix.
struct RedactedStderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line::new(self.journal.then_some(&Level::INFO))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line::new(self.journal.then(|| meta.level()))
    }
}

/// One event's line (the formatter writes an event whole, in one call): redacted, and
/// the prefix goes out with its first bytes, in the same write.
struct Line {
    prefix: Option<[u8; 3]>,
}

impl Line {
    fn new(level: Option<&Level>) -> Self {
        Self {
            prefix: level.map(|l| [b'<', b'0' + priority(l), b'>']),
        }
    }
}

/// The bytes that go out for `buf`: redacted, behind `prefix`.
fn render(buf: &[u8], prefix: Option<[u8; 3]>) -> Vec<u8> {
    let text = String::from_utf8_lossy(buf);
    let text = crate::config::redact(&text);
    let mut line = Vec::with_capacity(3 + text.len());
    if let Some(p) = prefix {
        line.extend_from_slice(&p);
    }
    line.extend_from_slice(text.as_bytes());
    line
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = render(buf, self.prefix.take());
        std::io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_like_rust_log_and_a_bad_one_says_what_to_write() {
        let t = parse_filter("warn,lockstep::source=debug").unwrap();
        assert!(t.would_enable("lockstep::source::tail", &Level::DEBUG));
        assert!(!t.would_enable("lockstep::sink", &Level::INFO));
        assert!(t.would_enable("async_nats", &Level::WARN));
        let e = parse_filter("lockstep=loud").unwrap_err();
        assert!(e.contains("lockstep=loud") && e.contains("\"info\""), "{e}");
    }

    #[test]
    fn lines_go_out_redacted_behind_their_prefix() {
        let line = br#"{"level":"DEBUG","server":"nats://u:s3cret@h:4222","dsn":"DSN=x;PWD=pw2"}"#;
        let out = String::from_utf8(render(line, Some(*b"<7>"))).unwrap();
        assert_eq!(
            out,
            r#"<7>{"level":"DEBUG","server":"nats://u:***@h:4222","dsn":"DSN=x;PWD=***"}"#
        );
        assert_eq!(render(b"plain line\n", None), b"plain line\n");
    }

    #[test]
    fn journal_priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
