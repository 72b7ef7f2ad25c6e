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
//!   and URL queries (`?password=abc&…`), and TOML's double quotes (`password = "a\"b"`).
//!   An unquoted value ends at `;`, `&`, `"`, a line end, or a space followed by the
//!   next `key=`: when unsure, more is hidden, not less. A quoted value keeps its quotes
//!   (`password='***'`, `PWD={***}`); one whose quote is never closed is hidden to the
//!   end of its line, or of the JSON string it is in: a JSON log line or `/status`
//!   stays valid JSON.
//! - In a JSON text (a log line, `/status`), a password's characters may be escaped
//!   (`\"`, `\\`): they are read as JSON means them.
//!
//! It is idempotent (`***` is left as it is) and borrows when there is nothing to hide.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// `text` with every password, token and password-bearing URL user info replaced by
/// [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let Some(mut out) = redact_once(text) else {
        return Cow::Borrowed(text);
    };
    // Masking can join what was apart (`pwd: "password={"}`): again until nothing
    // changes, so that redacting twice changes nothing. Each round shortens the text or
    // turns more of it into `*`, so this ends (in one or two rounds in practice).
    while let Some(again) = redact_once(&out) {
        out = again;
    }
    Cow::Owned(out)
}

/// One round of [`redact`]: `None` when it changes nothing.
fn redact_once(text: &str) -> Option<String> {
    if !may_hold_secret(text) {
        return None;
    }
    let spans = secret_spans(text);
    if spans.is_empty() {
        return None;
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
    Some(out)
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
    let json = is_json(text);
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
        // A quoted value keeps its quotes (`password='***'`): what follows the mask is
        // then read the same way the second time (idempotence).
        let (v, end) = match (b.get(v), b.get(v + 1)) {
            // ODBC braces: `}}` is one `}`.
            (Some(b'{'), _) => (v + 1, quoted_end(b, v + 1, b'}', json)),
            // libpq quotes: `\'` and `\\` are escapes.
            (Some(b'\''), _) => (v + 1, quoted_end(b, v + 1, b'\'', json)),
            // TOML's (a parse error shows the line): `\"` is an escape. In a JSON text a
            // bare `"` ends the string the value is in; a quote written `\"` is one in
            // a JSON or Rust string, whose characters may be escaped.
            (Some(b'"'), _) if !json => (v + 1, quoted_end(b, v + 1, b'"', false)),
            (Some(b'\\'), Some(b'"')) => (v + 2, quoted_end(b, v + 2, b'"', true)),
            _ => (v, unquoted_end(b, v, json)),
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
    let json = is_json(text);
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
        // In a JSON text a bare `"` ends the string: a quote inside is written `\"`.
        if json && !escaped {
            continue;
        }
        if !text[v..].starts_with(quote) {
            continue;
        }
        v += quote.len();
        // Up to the closing quote (kept); unclosed, to the line's end or that of the
        // JSON string the text is in.
        let end = quoted_end(b, v, b'"', escaped);
        if end > v {
            spans.push((v, end));
        }
        search = end;
    }
    spans
}

/// Whether `text` is a JSON object (a log line, `/status`): in it, a password's
/// characters may be written `\X`, and a bare `"` ends the string it is in.
fn is_json(text: &str) -> bool {
    text.trim_start()
        .strip_prefix('{')
        .is_some_and(|r| r.trim_start().starts_with('"'))
}

/// The character at `j` as the text means it, and how many bytes it takes: in a JSON
/// text, `\"` is `"` and `\\` is `\` (and so on), and a bare `"` is the end of the
/// string (`None`, as is the end of the text).
fn char_at(b: &[u8], j: usize, json: bool) -> Option<(u8, usize)> {
    let c = *b.get(j)?;
    if !json {
        return Some((c, 1));
    }
    match (c, b.get(j + 1)) {
        (b'"', _) => None,
        (b'\\', Some(b'n')) => Some((b'\n', 2)),
        (b'\\', Some(b'r')) => Some((b'\r', 2)),
        (b'\\', Some(b't')) => Some((b'\t', 2)),
        (b'\\', Some(b'u')) => Some((0, 6.min(b.len() - j))),
        (b'\\', Some(&e)) => Some((e, 2)),
        _ => Some((c, 1)),
    }
}

/// Where the text of a value quoted by `close` (`'`, `"`, or `}` for an ODBC `{`) that
/// starts at `v` ends: at its closing quote. Unclosed, it ends at the line's end or at
/// the end of the JSON string it is in: a line or a JSON document keeps its shape, and
/// the rest of the line is hidden.
fn quoted_end(b: &[u8], v: usize, close: u8, json: bool) -> usize {
    let mut j = v;
    loop {
        let Some((c, len)) = char_at(b, j, json) else {
            return j;
        };
        match c {
            b'\n' | b'\r' => return j,
            // ODBC: `}}` is one `}`.
            b'}' if close == b'}' => match char_at(b, j + len, json) {
                Some((b'}', l2)) => j += len + l2,
                _ => return j,
            },
            c if c == close => return j,
            // libpq and TOML: `\` escapes the next character (not a line end).
            b'\\' if close != b'}' => {
                j += len;
                match char_at(b, j, json) {
                    Some((b'\n' | b'\r', _)) | None => return j,
                    Some((_, l2)) => j += l2,
                }
            }
            _ => j += len,
        }
    }
}

/// Where an unquoted value that starts at `v` ends: at `;`, `&`, `"`, a line end, or a
/// space followed by the next `key=` (libpq's separator).
fn unquoted_end(b: &[u8], v: usize, json: bool) -> usize {
    let mut j = v;
    while let Some((c, len)) = char_at(b, j, json) {
        match c {
            b';' | b'&' | b'"' | b'\n' | b'\r' => return j,
            // Text that quotes a JSON line escapes a quote as `\"`.
            b'\\' if !json && b.get(j + 1) == Some(&b'"') => return j,
            b' ' | b'\t' if next_is_key(b, j) => return j,
            _ => j += len,
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
        assert_eq!(r("DSN=x;pwd={a;b}}c};UID=u"), "DSN=x;pwd={***};UID=u");
        assert_eq!(r("Password = my pass;UID=u"), "Password = ***;UID=u");
        assert_eq!(
            r("host=h password=s3c dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            r(r"host=h password='a b\'c' dbname=d"),
            "host=h password='***' dbname=d"
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
        // In a JSON line, as the log writes it (a bare `"` would end the string).
        assert_eq!(
            r(r#"{"server":"Url { password: Some(\"s3c\"), port: 1 }"}"#),
            r#"{"server":"Url { password: Some(\"***\"), port: 1 }"}"#
        );
        assert_eq!(r("password: None"), "password: None");
    }

    #[test]
    fn an_unclosed_quote_hides_the_rest_of_the_line_not_of_the_text() {
        // A JSON log line keeps its closing `"}` and its newline.
        assert_eq!(
            r("{\"message\":\"bad: host=h password='s3c ret\",\"target\":\"x\"}\nnext"),
            "{\"message\":\"bad: host=h password='***\",\"target\":\"x\"}\nnext"
        );
        assert_eq!(
            r("{\"message\":\"DSN=d;PWD={s3c;ret\"}\n"),
            "{\"message\":\"DSN=d;PWD={***\"}\n"
        );
        // Escaped in JSON, a quote or a backslash in the password is still inside it.
        assert_eq!(
            r(r#"{"message":"password='a\\'b c' dbname=d"}"#),
            r#"{"message":"password='***' dbname=d"}"#
        );
        assert_eq!(
            r(r#"{"message":"PWD={a\"}}b};UID=u"}"#),
            r#"{"message":"PWD={***};UID=u"}"#
        );
        // Plain text: to the line's end.
        assert_eq!(
            r("password='s3c ret\nthe next line"),
            "password='***\nthe next line"
        );
        assert_eq!(r("PWD={s3c;ret\r\nUID=u"), "PWD={***\r\nUID=u");
        // A Debug field with no closing quote.
        assert_eq!(
            r("{\"message\":\"Url { password: Some(\\\"s3c\"}\n"),
            "{\"message\":\"Url { password: Some(\\\"***\"}\n"
        );
    }

    #[test]
    fn a_double_quoted_password_is_hidden_as_toml_shows_it() {
        // As a TOML parse error shows the line.
        assert_eq!(
            r("3 | password = \"s3cret\"\n  |            ^"),
            "3 | password = \"***\"\n  |            ^"
        );
        assert_eq!(
            r(r#"nats_password = "s3c\"ret x""#),
            "nats_password = \"***\""
        );
        assert_eq!(r("password = \"s3c ret"), "password = \"***");
        // The same, in a JSON log line, and quoted in a Rust string.
        assert_eq!(
            r(r#"{"message":"line 3: password = \"s3c\\\"ret\" x"}"#),
            r#"{"message":"line 3: password = \"***\" x"}"#
        );
        assert_eq!(
            r(r#"Err("password = \"s3cret\"")"#),
            r#"Err("password = \"***\"")"#
        );
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for s in [
            "nats://a:***@h",
            "PWD=***;UID=u",
            "password=*** dbname=d",
            "password='***' dbname=d",
            "PWD={***};UID=u",
            "password = \"***\"",
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
            // A JSON log line stays one, whatever its message.
            let line = serde_json::json!({ "message": junk, "target": "t" }).to_string();
            let out = r(&line);
            proptest::prop_assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{} -> {}", line, out
            );
            proptest::prop_assert_eq!(r(&out), out.clone());
            let odbc_pw = pw.replace('}', "}}");
            for s in [
                format!("nats://{user}:{pw}@host:4222"),
                format!("x {junk} nats://{user}:{pw}@host:4222 {junk}"),
                format!("DSN=d;UID={user};PWD={{{odbc_pw}}};X=1"),
                format!("host=h user={user} password='{}' dbname=d", pw.replace('\\', "\\\\").replace('\'', "\\'")),
                format!("password = \"{}\"", pw.replace('\\', "\\\\").replace('"', "\\\"")),
                format!("{junk}password='{pw}"),
                format!("{junk}PWD={{{pw}"),
            ] {
                let out = r(&s);
                proptest::prop_assert!(!out.contains(&pw), "{} -> {}", s, out);
            }
        }

        /// Text made of the pieces that matter: a JSON line stays one, and redaction is
        /// idempotent.
        #[test]
        fn json_lines_keep_their_shape(pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "password=", "PWD=", "password = ", "pwd: ", "password: Some(", "'", "\"",
                "\\", "{", "}", " ", "a", "=", ";", "\n", "&", "nats://u:p@h", "é",
            ]),
            0..24,
        )) {
            let text: String = pieces.concat();
            let once = r(&text);
            proptest::prop_assert_eq!(r(&once), once.clone(), "{:?}", text);
            let line = serde_json::json!({ "message": text, "target": "t" }).to_string();
            let out = r(&line);
            proptest::prop_assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{} -> {}", line, out
            );
            proptest::prop_assert_eq!(r(&out), out.clone(), "{}", line);
        }
    }
}
