//! NATS server URLs as configured: credentials written in one (`nats://user:pw@host`,
//! `nats://token@host`) are taken out when the config is read and become the
//! connection's [`super::NatsAuth`] (async-nats 0.51 does not read them from the URL,
//! and would print the URL, password included, in its debug lines).

use std::fmt;

use super::percent::percent_decode;
use super::redact::{redact, MASK};

/// A NATS server URL. Credentials written in it (`nats://user:pw@host`, `nats://token@host`)
/// are taken out when the config is read and become [`NatsAuth`] (async-nats does not
/// read them from the URL): what is kept is the URL to connect to, without them, and the
/// URL as written with its secret masked, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// What async-nats connects to: no user info.
    pub url: String,
    /// As configured, the password or token masked (`nats://user:***@host:4222`).
    pub shown: String,
}

impl NatsServer {
    /// Parses a configured URL into the server and the credentials it carries: (user,
    /// password), or (token, `None`). The error never holds the URL (it may hold a
    /// secret that did not parse).
    pub fn parse(written: &str) -> Result<(NatsServer, Option<UrlCredentials>), String> {
        let addr = written.parse::<async_nats::ServerAddr>().map_err(|_| {
            if written.contains('@') {
                "not a NATS URL like nats://host:4222 (not shown: it holds credentials; \
                 a `@`, `:` or `/` in a password is written %40, %3A, %2F)"
                    .to_owned()
            } else {
                format!("`{written}` is not a NATS URL like nats://host:4222")
            }
        })?;
        let url = addr.into_inner();
        // `user:@host` is a user with an empty password, as async-nats and nats.go read
        // it (the URL parser forgets the empty password: the `:` tells it apart from a
        // token).
        let creds = match (url.username(), url.password()) {
            ("", _) => None,
            (user, Some(pw)) => Some((percent_decode(user), Some(percent_decode(pw)))),
            (user, None) if has_empty_password(written) => {
                Some((percent_decode(user), Some(String::new())))
            }
            (user, None) => Some((percent_decode(user), None)),
        };
        // What is shown is made from the parsed URL, the secret replaced, never from the
        // text as written: however a password is spelled (quotes, blanks, no scheme),
        // none of it is kept.
        let mut shown = url.clone();
        let mut bare = url;
        if creds.is_some() {
            // Always allowed for the schemes a ServerAddr takes (they have a host).
            match &creds {
                Some((_, Some(_))) => {
                    let _ = shown.set_password(Some(MASK));
                }
                _ => {
                    let _ = shown.set_username(MASK);
                }
            }
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
        }
        Ok((
            NatsServer {
                url: bare.to_string(),
                shown: shown.to_string(),
            },
            creds,
        ))
    }
}

/// Whether the user info of `written` ends in `:` (`nats://user:@host`): a user with an
/// empty password.
fn has_empty_password(written: &str) -> bool {
    let rest = written.split_once("://").map_or(written, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .is_some_and(|(info, _)| info.ends_with(':'))
}

/// Credentials found in a NATS URL: (user, password), or (token, `None`).
pub type UrlCredentials = (String, Option<String>);

impl From<&str> for NatsServer {
    /// A URL without credentials.
    fn from(url: &str) -> Self {
        NatsServer {
            url: url.to_owned(),
            shown: redact(url).into_owned(),
        }
    }
}

impl fmt::Display for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, NatsAuth};

    #[test]
    fn credentials_leave_the_url_and_the_shown_url_masks_them() {
        let (s, c) = NatsServer::parse("nats://alice:p%40ss@10.0.0.1:4222").unwrap();
        assert_eq!(s.url, "nats://10.0.0.1:4222");
        assert_eq!(s.shown, "nats://alice:***@10.0.0.1:4222");
        assert_eq!(s.to_string(), s.shown);
        assert_eq!(c, Some(("alice".into(), Some("p@ss".into()))));
        let (s, c) = NatsServer::parse("tls://t0k@nats.example:4222").unwrap();
        assert_eq!(s.url, "tls://nats.example:4222");
        assert_eq!(s.shown, "tls://***@nats.example:4222");
        assert_eq!(c, Some(("t0k".into(), None)));
        let (s, c) = NatsServer::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((s.url.as_str(), c), ("nats://127.0.0.1:4222", None));
        // Unparsable: said so without the URL when it holds credentials.
        let e = NatsServer::parse("nats://u:pa/ss@h:4222").unwrap_err();
        assert!(!e.contains("pa/ss") && e.contains("%2F"), "{e}");
        let e = NatsServer::parse("http://h:4222").unwrap_err();
        assert!(e.contains("http://h:4222"), "{e}");
    }

    #[test]
    fn the_shown_url_is_made_from_the_parsed_one_whatever_the_password_holds() {
        for (written, secret, shown, user, pw) in [
            (
                "alice:s3cret@h:4222",
                "s3cret",
                "nats://alice:***@h:4222",
                "alice",
                Some("s3cret"),
            ),
            (
                "nats://u:pa'ss@h:4222",
                "pa'ss",
                "nats://u:***@h:4222",
                "u",
                Some("pa'ss"),
            ),
            (
                "nats://u:p ss@h:4222",
                "p ss",
                "nats://u:***@h:4222",
                "u",
                Some("p ss"),
            ),
            (
                "nats://u:p%20ss@h:4222",
                "p%20ss",
                "nats://u:***@h:4222",
                "u",
                Some("p ss"),
            ),
            ("nats://u:p<s@h", "p<s", "nats://u:***@h", "u", Some("p<s")),
            (
                "nats://u:p\"s`x@h",
                "s`x",
                "nats://u:***@h",
                "u",
                Some("p\"s`x"),
            ),
            ("tls://tok\\en@h", "en", "tls://***@h", "tok\\en", None),
            ("tok'en@h:4222", "en", "nats://***@h:4222", "tok'en", None),
        ] {
            let (s, c) = NatsServer::parse(written).unwrap();
            assert_eq!(s.shown, shown, "{written}");
            assert!(
                !s.shown.contains(secret) && !s.url.contains(secret),
                "{written}: {s:?}"
            );
            assert_eq!(c, Some((user.into(), pw.map(String::from))), "{written}");
        }
    }

    #[test]
    fn an_empty_password_is_a_user_with_an_empty_password_not_a_token() {
        let (s, c) = NatsServer::parse("nats://u:@h:4222").unwrap();
        assert_eq!(c, Some(("u".into(), Some(String::new()))));
        assert_eq!(
            (s.url.as_str(), s.shown.as_str()),
            ("nats://h:4222", "nats://u:***@h:4222")
        );
        let c = config(r#"["nats://u:@h1:4222"]"#, "").unwrap();
        assert_eq!(
            c.nats.auth,
            NatsAuth::UserPassword {
                user: "u".into(),
                password: crate::config::Secret::for_tests("")
            }
        );
        // A `:` in a path or query is not one in the user info.
        let (_, c) = NatsServer::parse("nats://tok@h:4222/a:@b").unwrap();
        assert_eq!(c, Some(("tok".into(), None)));
    }

    fn config(servers: &str, extra: &str) -> Result<Config, String> {
        Config::parse(
            Path::new("t.toml"),
            &format!("[agent]\nid = \"a\"\n[nats]\nservers = {servers}\n{extra}\n"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn url_credentials_become_the_authentication_once() {
        let c = config(r#"["nats://u:pw@h1:4222", "nats://u:pw@h2:4222"]"#, "").unwrap();
        assert_eq!(
            c.nats.auth,
            NatsAuth::UserPassword {
                user: "u".into(),
                password: crate::config::Secret::for_tests("pw")
            }
        );
        assert_eq!(c.nats.servers[1].url, "nats://h2:4222");
        let c = config(r#"["nats://tok@h1:4222"]"#, "").unwrap();
        assert_eq!(
            c.nats.auth,
            NatsAuth::Token(crate::config::Secret::for_tests("tok"))
        );
        let e = config(r#"["nats://u:pw@h1:4222", "nats://u:other@h2:4222"]"#, "").unwrap_err();
        assert!(
            e.contains("different credentials") && !e.contains("other"),
            "{e}"
        );
        let e = config(r#"["nats://u:pw@h1:4222", "nats://h2:4222"]"#, "").unwrap_err();
        assert!(e.contains("different credentials"), "{e}");
        let e = config(r#"["nats://u:pw@h1:4222"]"#, "token = \"t\"").unwrap_err();
        assert!(
            e.contains("give one NATS authentication") && !e.contains("pw@"),
            "{e}"
        );
    }
}
