//! Validation of `[nats]` and `[spool]`.

use super::*;

pub(super) fn nats(cx: &Ctx, raw: Option<RawNats>) -> Result<NatsConfig, ConfigError> {
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
pub(super) fn spool(cx: &Ctx, raw: Option<RawSpool>) -> Result<SpoolConfig, ConfigError> {
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
