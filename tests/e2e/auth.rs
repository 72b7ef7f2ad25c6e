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
