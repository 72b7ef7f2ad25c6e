//! Redaction: the one function every text an operator sees passes through before it
//! leaves the process (log lines, `check`'s table, errors on stderr, `/status`,
//! `/healthz`, `/metrics`).
//!
//! Secrets that lockstep reads itself are [`super::Secret`]s and never formatted; but a
//! password can also ride inside a value that is printed: a NATS URL
//! (`nats://user:pw@host`), a PostgreSQL URL or `key=value` string (`password=…`), an
//! ODBC string (`PWD=…`), or a driver's error message that quotes one of them. Such text
//! goes through [`redact`], which replaces the secret part with `***`:
//!
//! - URL user info: `scheme://user:pw@host` keeps the user (`user:***@`); a NATS URL
//!   with a bare `token@` (its token form) becomes `***@`.
//! - `key=value` whose key ends in `pwd`, `password` or `passwd` (any case; `PWD`,
//!   `password`, `sslpassword`, `nats_password`), in each way it can be written: ODBC
//!   (`PWD={a;b}}c}`, `PWD=abc;`), libpq (`password='a b\'c'`, `password=abc dbname=x`)
//!   and URL queries (`?password=abc&…`). An unquoted value ends at `;`, `&`, `"`, a line
//!   end, or a space followed by the next `key=`: when unsure, more is hidden, not less.
//!
//! It is idempotent (`***` is left as it is) and borrows when there is nothing to hide.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// `text` with every password, token and password-bearing URL user info replaced by
/// [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    if !may_hold_secret(text) {
        return Cow::Borrowed(text);
    }
    let spans = secret_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (from, to) in spans {
        if from < at {
            continue;
        }
        out.push_str(&text[at..from]);
        out.push_str(MASK);
        at = to;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// A quick test that skips the scan for the text of almost every log line.
fn may_hold_secret(text: &str) -> bool {
    let b = text.as_bytes();
    (b.windows(3).any(|w| w == b"://") && b.contains(&b'@'))
        || b.windows(3).any(|w| w.eq_ignore_ascii_case(b"pwd"))
        || b.windows(6).any(|w| w.eq_ignore_ascii_case(b"passwd"))
        || b.windows(8).any(|w| w.eq_ignore_ascii_case(b"password"))
}

/// The byte ranges of `text` to mask, in order, not overlapping.
fn secret_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = url_userinfo_spans(text);
    spans.extend(key_value_spans(text));
    spans.extend(debug_field_spans(text));
    spans.sort_unstable();
    // Merge overlaps (a `password=` inside a URL's user info, say).
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (from, to) in spans {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    // A span that is the mask already stays as it is (idempotence).
    merged.retain(|&(from, to)| &text[from..to] != MASK);
    merged
}

/// NATS URL schemes: in them a user info without `:` is a token.
const NATS_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

/// The secret part of each `scheme://userinfo@` in `text`.
fn url_userinfo_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut search = 0;
    while let Some(p) = text[search..].find("://") {
        let sep = search + p;
        search = sep + 3;
        let scheme_start = b[..sep]
            .iter()
            .rposition(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))
            .map_or(0, |i| i + 1);
        let scheme = &text[scheme_start..sep];
        let start = sep + 3;
        // The authority ends at the path, query or fragment, or where the text around
        // the URL goes on.
        let end = b[start..]
            .iter()
            .position(|&c| {
                c.is_ascii_whitespace()
                    || matches!(
                        c,
                        b'/' | b'?' | b'#' | b'"' | b'\'' | b'`' | b'<' | b'>' | b'\\'
                    )
            })
            .map_or(b.len(), |i| start + i);
        // The user info ends at the last `@` of the authority (a password may hold an
        // unencoded `@`).
        let Some(at) = b[start..end].iter().rposition(|&c| c == b'@') else {
            continue;
        };
        let at = start + at;
        let info = &text[start..at];
        match info.find(':') {
            Some(colon) if start + colon + 1 < at => spans.push((start + colon + 1, at)),
            Some(_) => {}
            None if NATS_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) && at > start => {
                spans.push((start, at))
            }
            None => {}
        }
        search = at + 1;
    }
    spans
}

/// Whether a `key` names a password.
fn is_password_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("pwd") || k.ends_with("password") || k.ends_with("passwd")
}

/// The value of each `password-key = value` in `text`.
fn key_value_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'=' {
            i += 1;
            continue;
        }
        // The key: the word before the `=` (spaces allowed between them).
        let mut k_end = i;
        while k_end > 0 && b[k_end - 1] == b' ' {
            k_end -= 1;
        }
        let k_start = b[..k_end]
            .iter()
            .rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'))
            .map_or(0, |p| p + 1);
        let key = &text[k_start..k_end];
        i += 1;
        if key.is_empty() || !is_password_key(key) {
            continue;
        }
        let mut v = i;
        while v < b.len() && b[v] == b' ' {
            v += 1;
        }
        let end = match b.get(v) {
            // ODBC braces: `}}` is one `}`.
            Some(b'{') => {
                let mut j = v + 1;
                loop {
                    match b.get(j) {
                        None => break b.len(),
                        Some(b'}') if b.get(j + 1) == Some(&b'}') => j += 2,
                        Some(b'}') => break j + 1,
                        Some(_) => j += 1,
                    }
                }
            }
            // libpq quotes: `\'` and `\\` are escapes.
            Some(b'\'') => {
                let mut j = v + 1;
                loop {
                    match b.get(j) {
                        None => break b.len(),
                        Some(b'\\') => j += 2,
                        Some(b'\'') => break j + 1,
                        Some(_) => j += 1,
                    }
                }
                .min(b.len())
            }
            _ => unquoted_end(b, v),
        };
        if end > v {
            spans.push((v, end));
        }
        i = end.max(i);
    }
    spans
}

/// The value of each `password: "…"` or `password: Some("…")` (a library's `Debug` of a
/// struct, in a log line, where the quotes may be escaped as `\"`).
fn debug_field_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut search = 0;
    while let Some(p) = text[search..].find(": ") {
        let colon = search + p;
        search = colon + 2;
        let k_start = b[..colon]
            .iter()
            .rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
            .map_or(0, |i| i + 1);
        if !is_password_key(&text[k_start..colon]) {
            continue;
        }
        let mut v = colon + 2;
        if text[v..].starts_with("Some(") {
            v += 5;
        }
        let escaped = text[v..].starts_with("\\\"");
        let quote = if escaped { "\\\"" } else { "\"" };
        if !text[v..].starts_with(quote) {
            continue;
        }
        v += quote.len();
        let end = text[v..].find(quote).map_or(b.len(), |e| v + e);
        if end > v {
            spans.push((v, end));
        }
        search = end;
    }
    spans
}

/// Where an unquoted value that starts at `v` ends: at `;`, `&`, `"`, a line end, or a
/// space followed by the next `key=` (libpq's separator).
fn unquoted_end(b: &[u8], v: usize) -> usize {
    let mut j = v;
    while j < b.len() {
        match b[j] {
            b';' | b'&' | b'"' | b'\n' | b'\r' => return j,
            // A JSON log line escapes a quote as `\"`.
            b'\\' if b.get(j + 1) == Some(&b'"') => return j,
            b' ' | b'\t' if next_is_key(b, j) => return j,
            _ => j += 1,
        }
    }
    j
}

/// Whether the text after the blank at `j` starts with `word=` (or `word =`).
fn next_is_key(b: &[u8], j: usize) -> bool {
    let mut k = j;
    while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
        k += 1;
    }
    let w = k;
    while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
        k += 1;
    }
    if k == w {
        return false;
    }
    while k < b.len() && b[k] == b' ' {
        k += 1;
    }
    b.get(k) == Some(&b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact(s).into_owned()
    }

    #[test]
    fn nats_urls_keep_the_user_and_lose_the_password_or_token() {
        assert_eq!(
            r("nats://alice:s3cret@10.0.0.1:4222"),
            "nats://alice:***@10.0.0.1:4222"
        );
        assert_eq!(
            r("tls://t0ken@nats.example:4222"),
            "tls://***@nats.example:4222"
        );
        assert_eq!(
            r("connecting to nats://a:p1@h1:4222, nats://a:p2@h2:4222 now"),
            "connecting to nats://a:***@h1:4222, nats://a:***@h2:4222 now"
        );
        // An unencoded `@` in the password: the last `@` ends the user info.
        assert_eq!(r("nats://a:p@ss@h:4222"), "nats://a:***@h:4222");
        // In a JSON log line.
        assert_eq!(
            r(r#"{"message":"on nats://a:pw@h:4222"}"#),
            r#"{"message":"on nats://a:***@h:4222"}"#
        );
        // Nothing to hide: borrowed, unchanged.
        assert!(matches!(redact("nats://127.0.0.1:4222"), Cow::Borrowed(_)));
        assert!(matches!(redact("user@example.com"), Cow::Borrowed(_)));
        // A PostgreSQL URL keeps a user without a password.
        assert_eq!(r("postgresql://bob@db/x"), "postgresql://bob@db/x");
        assert_eq!(
            r("postgresql://bob:pw@db:5432/x?sslmode=require"),
            "postgresql://bob:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            r("postgresql://db/x?user=bob&password=pw&sslmode=verify-full"),
            "postgresql://db/x?user=bob&password=***&sslmode=verify-full"
        );
    }

    #[test]
    fn odbc_and_libpq_passwords_in_every_quoting() {
        assert_eq!(
            r("DSN=x;UID=u;PWD=s3c;DATABASE=d"),
            "DSN=x;UID=u;PWD=***;DATABASE=d"
        );
        assert_eq!(r("DSN=x;pwd={a;b}}c};UID=u"), "DSN=x;pwd=***;UID=u");
        assert_eq!(r("Password = my pass;UID=u"), "Password = ***;UID=u");
        assert_eq!(
            r("host=h password=s3c dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            r(r"host=h password='a b\'c' dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(r("sslpassword=k3y"), "sslpassword=***");
        assert_eq!(r("NATS_PASSWORD=x y z"), "NATS_PASSWORD=***");
        // A key that merely contains the word is not one.
        assert_eq!(r("password_file=/etc/x"), "password_file=/etc/x");
        assert_eq!(r("the password is wrong"), "the password is wrong");
    }

    #[test]
    fn debug_output_of_a_url_loses_its_password() {
        assert_eq!(
            r(r#"Url { username: "u", password: Some("s3c"), host: Some(Domain("h")) }"#),
            r#"Url { username: "u", password: Some("***"), host: Some(Domain("h")) }"#
        );
        assert_eq!(
            r(r#"{"server":"Url { password: Some("s3c"), port: 1 }"}"#),
            r#"{"server":"Url { password: Some("***"), port: 1 }"}"#
        );
        assert_eq!(r("password: None"), "password: None");
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for s in [
            "nats://a:***@h",
            "PWD=***;UID=u",
            "password=*** dbname=d",
            "tls://***@h:4222",
        ] {
            assert_eq!(r(s), s);
        }
    }

    proptest::proptest! {
        /// A password, written in any of the forms, never survives; and redaction is
        /// idempotent on any text.
        #[test]
        fn a_password_never_survives(
            pw in "[A-Za-z0-9!$%()*+,\\-.:=@\\[\\]^_|~]{4,16}",
            user in "[a-z]{1,8}",
            junk in "[ -~]{0,60}",
        ) {
            let once = r(&junk);
            proptest::prop_assert_eq!(r(&once), once.clone());
            let odbc_pw = pw.replace('}', "}}");
            for s in [
                format!("nats://{user}:{pw}@host:4222"),
                format!("x {junk} nats://{user}:{pw}@host:4222 {junk}"),
                format!("DSN=d;UID={user};PWD={{{odbc_pw}}};X=1"),
                format!("host=h user={user} password='{}' dbname=d", pw.replace('\\', "\\\\").replace('\'', "\\'")),
            ] {
                let out = r(&s);
                proptest::prop_assert!(!out.contains(&pw), "{} -> {}", s, out);
            }
        }
    }
}
