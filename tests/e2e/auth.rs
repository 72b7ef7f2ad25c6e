//! NATS authentication: token and user/password, secrets from files and from systemd's
//! credentials directory.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn token_from_a_file_authenticates() {
    let mut w = World::with_nats_args(&["--auth", "t0ken-s3cret"]);
    let token = w.dir().join("token");
    std::fs::write(&token, "t0ken-s3cret\n").unwrap();
    w.nats_extra = format!("token = {{ file = \"{}\" }}", token.display());
    w.client_auth = Some(async_nats::ConnectOptions::with_token(
        "t0ken-s3cret".into(),
    ));
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    append(&w.logs().join("a.log"), (0..10).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(10, Duration::from_secs(30)).await,
        10,
        "{}",
        agent_log(&w)
    );
    agent.stop();
    assert!(
        !agent_log(&w).contains("t0ken-s3cret"),
        "the token never appears in logs"
    );

    // A wrong token: check names the failure and exits 1.
    std::fs::write(&token, "wrong").unwrap();
    let o = Command::new(lockstep_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("nats") && l.contains("FAIL")),
        "{out}"
    );
    assert!(!out.contains("wrong"), "the secret is not printed: {out}");
}

#[tokio::test]
async fn user_and_password_from_the_credentials_directory() {
    let mut w = World::with_nats_args(&["--user", "lockstep", "--pass", "pw-from-systemd"]);
    let creds = w.dir().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("nats-password"), "pw-from-systemd").unwrap();
    w.nats_extra = "user = \"lockstep\"\npassword = { file = \"nats-password\" }".into();
    w.client_auth = Some(async_nats::ConnectOptions::with_user_and_password(
        "lockstep".into(),
        "pw-from-systemd".into(),
    ));
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    append(&w.logs().join("a.log"), (0..5).map(line));
    let mut agent = Agent::start(
        &cfg,
        &w.dir().join("agent.log"),
        &[("CREDENTIALS_DIRECTORY", creds.as_path())],
    );
    assert_eq!(
        w.wait_count(5, Duration::from_secs(30)).await,
        5,
        "{}",
        agent_log(&w)
    );
    let msgs = w.messages().await;
    assert_eq!(ints(&msgs, "id"), vec![0, 1, 2, 3, 4]);
    agent.stop();
}
