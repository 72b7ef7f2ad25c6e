//! NATS server URLs as configured: credentials written in one (`nats://user:pw@host`,
//! `nats://token@host`) are taken out when the config is read and become the
//! connection's [`super::NatsAuth`] (async-nats 0.51 does not read them from the URL,
//! and would print the URL, password included, in its debug lines).

use std::fmt;

use super::redact;

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
        let creds = addr
            .username()
            .map(|user| (percent_decode(user), addr.password().map(percent_decode)));
        let mut url = addr.into_inner();
        if creds.is_some() {
            // Always allowed for the schemes a ServerAddr takes (they have a host).
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        Ok((
            NatsServer {
                url: url.to_string(),
                shown: redact(written).into_owned(),
            },
            creds,
        ))
    }
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

/// `%XX` escapes undone (URL user info); invalid ones are kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
