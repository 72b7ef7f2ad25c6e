//! `lockstep check` and config errors, through the real binary.

use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn check_passes_against_a_live_broker_and_existing_files() {
    let w = World::new();
    append(&w.logs().join("a.log"), [line(1)]);
    let cfg = w.config("table = \"t\"");
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("nats") && l.contains(" ok ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("stream") && l.contains(" ok ")),
        "{out}"
    );
    assert!(out.contains("1 file(s)"), "{out}");
}

#[test]
fn check_reports_a_bad_url_and_a_missing_file_and_exits_1() {
    let w = World::new();
    let cfg = w.config("table = \"t\"");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.nats.url(), "nats://127.0.0.1:1")
        .replace(
            &format!("{}/*.log", w.logs().display()),
            "/nonexistent/lockstep/changes.log",
        );
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = lockstep(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let nats = out.lines().find(|l| l.starts_with("nats")).expect(&out);
    assert!(
        nats.contains("FAIL") && nats.contains("nats://127.0.0.1:1"),
        "{out}"
    );
    let src = out
        .lines()
        .find(|l| l.starts_with("source vista"))
        .expect(&out);
    assert!(
        src.contains("FAIL") && src.contains("/nonexistent/lockstep"),
        "{out}"
    );
}

#[test]
fn unknown_config_key_fails_with_its_line_and_exit_2() {
    let w = World::new();
    let cfg = w.config("table = \"t\"\ncolour = \"blue\"");
    let line_no = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("colour"))
        .unwrap()
        + 1;
    for cmd in ["check", "run"] {
        let (code, _, err) = lockstep(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("{}:{line_no}:", cfg.display())),
            "{err}"
        );
        assert!(err.contains("colour"), "{err}");
    }
}

#[test]
fn usage_errors_exit_2_and_version_prints() {
    let (code, _, _) = lockstep(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, out, _) = lockstep(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("lockstep "), "{out}");
}

/// Fields of /proc/<pid>/stat after the command name and state: ppid, pgrp, session,
/// tty_nr.
fn proc_stat(pid: u32) -> Option<Vec<i64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .take(4)
            .map(|f| f.parse().unwrap_or(-1))
            .collect(),
    )
}

/// `sudo lockstep check --user nobody`, run as root: the check runs as the user in a
/// session of its own (no terminal to inject into), stdin /dev/null, with the user's
/// groups and only the environment the service would have; a SIGINT while it runs
/// stops it and removes the copies of the secrets.
#[test]
fn check_as_a_user_is_cut_off_from_root_and_a_sigint_removes_its_copies() {
    if std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| !s.lines().any(|l| l.starts_with("Uid:\t0\t")))
    {
        eprintln!("skipped: needs root (check --user)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let creds = t.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("pw"), "e2e-secret\n").unwrap();
    // A "broker" that accepts and never answers: the check waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let port = silent.local_addr().unwrap().port();
    let cfg = t.path().join("lockstep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"e2e-as-user\"\nstate_dir = \"{dir}/state\"\n\n\
             [nats]\nservers = [\"nats://127.0.0.1:{port}\"]\nstream = \"E2E_AS_USER\"\n\
             user = \"u\"\npassword = {{ file = \"pw\" }}\n\n\
             [[source]]\nname = \"files\"\nkind = \"tail\"\npaths = [\"{dir}/logs/*.log\"]\n\
             table = \"t\"\nkey = [\"id\"]\n\n\
             [[source]]\nname = \"db\"\nkind = \"trigger\"\n\
             postgres = {{ env = \"LOCKSTEP_E2E_AS_USER_PG\" }}\ntables = [\"t\"]\n",
            dir = t.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut parent = std::process::Command::new(lockstep_bin())
        .args(["check", "--user", "nobody", "--config"])
        .arg(&cfg)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env(
            "LOCKSTEP_E2E_AS_USER_PG",
            "host=127.0.0.1 user=postgres dbname=test",
        )
        .env("LOCKSTEP_E2E_AS_USER_LEAK", "root's")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ppid = parent.id();
    let copies = std::path::PathBuf::from(format!("/run/lockstep-check-{ppid}"));
    // The check, as nobody, connected to the silent broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = Vec::new();
    let child = loop {
        assert!(
            Instant::now() < deadline,
            "the check never reached the broker"
        );
        // Held open (never answered): a dropped connection would end the check's
        // connect at once, before the SIGINT below.
        let connected = match silent.accept() {
            Ok((conn, _)) => {
                held.push(conn);
                true
            }
            Err(_) => false,
        };
        let kids = std::fs::read_to_string(format!("/proc/{ppid}/task/{ppid}/children"))
            .unwrap_or_default();
        if let (true, Some(c)) = (connected, kids.split_whitespace().next()) {
            break c.parse::<u32>().unwrap();
        }
        if connected {
            panic!("a connection, but no child of {ppid}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), ["65534"; 4], "{status}");
    let out = std::process::Command::new("id")
        .args(["-G", "nobody"])
        .output()
        .unwrap();
    let mut want: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    want.sort();
    let mut groups = field("Groups:");
    groups.sort();
    assert_eq!(groups, want, "the user's supplementary groups");
    let stat = proc_stat(child).unwrap();
    let (session, tty) = (stat[2], stat[3]);
    assert_eq!(
        session,
        i64::from(child),
        "not a session of its own: {stat:?}"
    );
    assert_eq!(tty, 0, "a controlling terminal: {stat:?}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{child}/fd/0")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let mut names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v.split(|b| *b == b'=').next().unwrap()).into_owned())
        .collect();
    names.sort();
    let allowed = [
        "CREDENTIALS_DIRECTORY",
        "HOME",
        "LANG",
        "LOCKSTEP_CHECK_SECRETS_FROM",
        "LOCKSTEP_E2E_AS_USER_PG",
        "LOCKSTEP_LOG",
        "LOGNAME",
        "PATH",
        "RUST_LOG",
        "USER",
    ];
    assert!(
        names.iter().all(|n| allowed.contains(&n.as_str())),
        "the check inherited root's environment: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "LOCKSTEP_E2E_AS_USER_PG"),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read_to_string(copies.join("pw")).unwrap(),
        "e2e-secret\n"
    );

    // Ctrl-C.
    let kill = std::process::Command::new("kill")
        .args(["-INT", &ppid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = parent.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "check --user did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut parent.stderr.take().unwrap(), &mut err).unwrap();
    let left = copies.exists();
    // The old binary's check, orphaned, would wait on the silent broker: end it.
    if proc_stat(child).is_some_and(|s| s[0] == i64::from(ppid) || s[0] == 1) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &child.to_string()])
            .status();
    }
    if left {
        let _ = std::fs::remove_dir_all(&copies);
    }
    assert!(
        !left,
        "SIGINT left the copies of the secrets in {}",
        copies.display()
    );
    assert_eq!(status.code(), Some(130), "{status:?}: {err}");
    assert!(err.contains("SIGINT stopped the check"), "{err}");
    assert!(
        proc_stat(child).is_none(),
        "the check as nobody outlived check --user"
    );
}
