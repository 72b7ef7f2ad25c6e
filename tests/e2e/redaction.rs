//! Secrets written inside other values (a NATS URL's `user:password@` or `token@`) are
//! used, and never printed: not in the agent's log (at debug level, async-nats's own
//! lines included), not by `check`, `/status`, `/healthz` or `/metrics`, not in errors.

use std::time::Duration;

use crate::harness::*;

/// The config at `cfg` with the broker's URL replaced by `url`.
fn with_server_url(w: &World, cfg: &std::path::Path, url: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = text.replace(&format!("\"{}\"", w.nats.url()), &format!("\"{url}\""));
    std::fs::write(cfg, text).unwrap();
}

#[tokio::test]
async fn a_password_in_the_nats_url_authenticates_and_is_never_printed() {
    const PW: &str = "url-s3cret-pw";
    let mut w = World::with_nats_args(&["--user", "lockstep", "--pass", PW]);
    w.client_auth = Some(async_nats::ConnectOptions::with_user_and_password(
        "lockstep".into(),
        PW.into(),
    ));
    w.with_admin();
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let port = w.nats.port;
    // As an operator copies it from the broker's documentation.
    with_server_url(&w, &cfg, &format!("nats://lockstep:{PW}@127.0.0.1:{port}"));
    let shown = format!("nats://lockstep:***@127.0.0.1:{port}");

    append(&w.logs().join("a.log"), (0..20).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(20, Duration::from_secs(30)).await,
        20,
        "{}",
        agent_log(&w)
    );
    let mut admin = String::new();
    for path in ["/status", "/healthz", "/metrics"] {
        let (code, body) = w.admin(path);
        assert_eq!(code, 200, "{path}: {body}");
        admin.push_str(&body);
    }
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    assert_eq!(ints(&msgs, "id"), (0..20).collect::<Vec<i64>>());
    let log = agent_log(&w);
    assert!(!log.contains(PW), "the password is in the log:\n{log}");
    assert!(
        log.contains(&shown),
        "the log names the server as {shown}:\n{log}"
    );
    assert!(
        !admin.contains(PW),
        "the password is in the admin endpoint:\n{admin}"
    );

    // check connects with it and shows the URL masked.
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let nats = out.lines().find(|l| l.starts_with("nats")).unwrap();
    assert!(nats.contains(&shown) && nats.contains(" ok "), "{out}");
    assert!(!out.contains(PW) && !err.contains(PW), "{out}{err}");

    // A wrong password: check fails at NATS, and shows neither.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace(PW, "wr0ng-pw-xyz")).unwrap();
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let nats = out.lines().find(|l| l.starts_with("nats")).unwrap();
    assert!(nats.contains(&shown) && nats.contains("FAIL"), "{out}");
    assert!(
        !out.contains("wr0ng-pw-xyz") && !err.contains("wr0ng-pw-xyz"),
        "{out}{err}"
    );

    // A URL that does not parse (an unencoded `/` in the password): the error names the
    // entry, not the URL.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("wr0ng-pw-xyz", "pa/ss-w0rd")).unwrap();
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("nats.servers, entry 1"), "{err}");
    assert!(
        !err.contains("ss-w0rd") && !out.contains("ss-w0rd"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_token_in_the_nats_url_authenticates_and_is_never_printed() {
    const TOKEN: &str = "t0ken-in-the-url";
    let mut w = World::with_nats_args(&["--auth", TOKEN]);
    w.client_auth = Some(async_nats::ConnectOptions::with_token(TOKEN.into()));
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let port = w.nats.port;
    with_server_url(&w, &cfg, &format!("nats://{TOKEN}@127.0.0.1:{port}"));
    append(&w.logs().join("a.log"), (0..5).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(5, Duration::from_secs(30)).await,
        5,
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    assert!(!agent_log(&w).contains(TOKEN), "{}", agent_log(&w));
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("nats://***@127.0.0.1:{port}")),
        "{out}"
    );
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "{out}{err}");
}

/// However the password is spelled (a quote, a blank, `<`, no scheme), the agent's log
/// and `check` show the URL the parser read, with `***` for the password: before, they
/// showed the text as written through a pattern that missed these.
#[tokio::test]
async fn an_oddly_spelled_password_in_the_nats_url_is_never_printed() {
    const PW: &str = "s3c'r t<pw";
    let mut w = World::with_nats_args(&["--user", "lockstep", "--pass", PW]);
    w.client_auth = Some(async_nats::ConnectOptions::with_user_and_password(
        "lockstep".into(),
        PW.into(),
    ));
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    let port = w.nats.port;
    // No scheme: async-nats takes it as nats://.
    with_server_url(&w, &cfg, &format!("lockstep:{PW}@127.0.0.1:{port}"));
    let shown = format!("nats://lockstep:***@127.0.0.1:{port}");
    append(&w.logs().join("a.log"), (0..10).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(10, Duration::from_secs(30)).await,
        10,
        "{}",
        agent_log(&w)
    );
    assert_eq!(agent.stop(), Some(0), "{}", agent_log(&w));
    let msgs = w.messages().await;
    assert_unique(&msgs, "id");
    assert_eq!(ints(&msgs, "id"), (0..10).collect::<Vec<i64>>());
    let log = agent_log(&w);
    for part in ["s3c'r", "t<pw", "s3c"] {
        assert!(!log.contains(part), "`{part}` is in the log:\n{log}");
    }
    assert!(log.contains(&shown), "the log names {shown}:\n{log}");

    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&shown), "{out}");
    assert!(!out.contains("s3c") && !err.contains("s3c"), "{out}{err}");

    // Refused by the broker: the connect error shows it masked too.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace(PW, "wr0'ng p<w")).unwrap();
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&shown), "{out}");
    assert!(!out.contains("wr0") && !err.contains("wr0"), "{out}{err}");
}
