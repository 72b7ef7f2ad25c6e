//! NATS authentication and TLS: token, user/password, a private CA; secrets from files and
//! from systemd's credentials directory.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Runs `lockstep check`, expects exit 1 with the NATS line failing, returns its output.
fn check_fails_at_nats(cfg: &std::path::Path) -> String {
    let o = Command::new(lockstep_bin())
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("nats") && l.contains("FAIL")),
        "{out}"
    );
    out
}

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
    let out = check_fails_at_nats(&cfg);
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

/// Makes a throwaway CA and a server certificate for 127.0.0.1 with openssl.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=lockstep test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let (cert, key) = (p("server.pem"), p("server-key.pem"));
    let mut w = World::with_nats_args(&["--tls", "--tlscert", &cert, "--tlskey", &key]);
    w.nats_extra = format!("tls = {{ ca = \"{}\" }}", p("ca.pem"));
    w.client_auth = Some(
        async_nats::ConnectOptions::new()
            .add_root_certificates(p("ca.pem").into())
            .require_tls(true),
    );
    let cfg = w.config("table = \"t\"\nkey = [\"id\"]");
    append(&w.logs().join("a.log"), (0..7).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(
        w.wait_count(7, Duration::from_secs(30)).await,
        7,
        "{}",
        agent_log(&w)
    );
    agent.stop();
    assert_eq!(ints(&w.messages().await, "id"), (0..7).collect::<Vec<_>>());

    // Without the CA the server's certificate is not trusted: check says so and exits 1.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("tls = {{ ca = \"{}\" }}", p("ca.pem")), "tls = {}");
    std::fs::write(&cfg, text).unwrap();
    check_fails_at_nats(&cfg);
}

/// Runs `lockstep <args>` outside any systemd unit (no `$CREDENTIALS_DIRECTORY`), as an
/// operator at a shell: (exit code, stdout, stderr).
fn lockstep_at_a_shell(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(lockstep_bin())
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("LOCKSTEP_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The documented first run (issue 17, item 5): secrets given by bare name live in the
/// credentials directory that only the service sees. `status`, `spool` and `snapshot`
/// need none and must work for anyone; `check` without them says where it looked and
/// what to run.
#[tokio::test]
async fn commands_that_need_no_secret_read_none() {
    let mut w = World::with_nats_args(&["--user", "lockstep", "--pass", "pw-from-systemd"]);
    w.with_admin();
    let creds = w.dir().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    // As the packaged unit hands it over: `lockstep_<file>`.
    std::fs::write(creds.join("lockstep_i17-nats-password"), "pw-from-systemd").unwrap();
    w.nats_extra = "user = \"lockstep\"\npassword = { file = \"i17-nats-password\" }".into();
    w.client_auth = Some(async_nats::ConnectOptions::with_user_and_password(
        "lockstep".into(),
        "pw-from-systemd".into(),
    ));
    let tail = w.tail_source("vista", "*.log", "table = \"t\"\nkey = [\"id\"]");
    // A database source whose connection string comes from an unset variable: only the
    // agent (here: its environment) has it.
    let trigger = "[[source]]\nname = \"permits\"\nkind = \"trigger\"\n\
                   odbc = { env = \"LOCKSTEP_TEST_UNSET_SECRET\" }\ntables = [\"permits\"]\n";
    let cfg = w.config_with(&format!("{tail}\n{trigger}"));
    let cfg_s = cfg.to_str().unwrap();
    append(&w.logs().join("a.log"), (0..5).map(line));
    // The agent runs the tail source only (the database is not the point here).
    let tail_only = w.dir().join("tail-only.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(trigger, "");
    std::fs::write(&tail_only, text).unwrap();
    let mut agent = Agent::start(
        &tail_only,
        &w.dir().join("agent.log"),
        &[("CREDENTIALS_DIRECTORY", creds.as_path())],
    );
    assert_eq!(
        w.wait_count(5, Duration::from_secs(30)).await,
        5,
        "{}",
        agent_log(&w)
    );

    // status: reads only [admin] listen.
    let mut last = (0, String::new(), String::new());
    wait_for("lockstep status to answer", Duration::from_secs(30), || {
        last = lockstep_at_a_shell(&["status", "--config", cfg_s]);
        last.0 == 0
    })
    .await;
    assert!(
        last.1.contains("vista"),
        "status shows the source: {last:?}"
    );
    // spool: reads only state_dir.
    let (code, out, err) = lockstep_at_a_shell(&["spool", "inspect", "--config", cfg_s]);
    assert_eq!(code, 0, "spool inspect: {out}{err}");
    assert!(out.contains("waiting to be sent"), "{out}");
    agent.stop();

    // check needs the secrets: outside the unit it says where it looked and what to run.
    let (code, out, err) = lockstep_at_a_shell(&["check", "--config", cfg_s]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("/etc/lockstep/credentials/i17-nats-password")
            && err.contains("$CREDENTIALS_DIRECTORY is not set")
            && err.contains("docs/operations.md"),
        "{err}"
    );
    assert!(!err.contains("pw-from-systemd"), "{err}");
}
