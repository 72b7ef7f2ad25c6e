//! `lockstep check` and config errors, through the real binary.

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
