//! Running as a service: systemd's notify protocol, with a unix datagram listener
//! standing in for systemd; `lockstep status` against a running agent; secrets kept out
//! of every log line and every report.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::harness::{Db, Kind};

/// What systemd would have heard on `NOTIFY_SOCKET`, with when.
struct FakeSystemd {
    heard: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl FakeSystemd {
    fn listen(path: &Path) -> FakeSystemd {
        let sock = UnixDatagram::bind(path).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                h.lock().unwrap().push((Instant::now(), msg));
            }
        });
        FakeSystemd { heard }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.heard.lock().unwrap().clone()
    }

    /// Datagrams holding the line `line`.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.messages()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| t)
            .collect()
    }

    fn pings_since(&self, since: Instant) -> usize {
        self.times("WATCHDOG=1")
            .into_iter()
            .filter(|t| *t > since)
            .count()
    }
}

#[tokio::test]
async fn notify_socket_hears_ready_watchdog_and_stopping_and_no_watchdog_while_a_source_is_stuck() {
    let mut w = World::new();
    w.with_admin();
    let db = Db::new(Kind::Pg, &w, "notify");
    db.create_tables();
    let cfg = w.config_with(&db.source(&["appointments"], "keys", ""));
    let (code, out, err) = lockstep(&["triggers", "install", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let sock = w.dir().join("notify.sock");
    let systemd = FakeSystemd::listen(&sock);
    let mut agent = Agent::start(
        &cfg,
        &w.dir().join("agent.log"),
        &[
            ("NOTIFY_SOCKET", &sock),
            // 3 s: pings every 1.5 s; a loop quiet for 3 s is stuck.
            ("WATCHDOG_USEC", Path::new("3000000")),
        ],
    );
    wait_for("READY=1", Duration::from_secs(30), || {
        !systemd.times("READY=1").is_empty()
    })
    .await;
    let first = &systemd.messages()[0].1;
    assert!(first.starts_with("READY=1\n"), "READY comes first: {first}");
    assert!(agent_log(&w).contains("ready: 1 source(s) and the publisher are running"));

    // The pipeline works, and the watchdog is fed.
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'North'), (2, 'South');");
    assert_eq!(w.wait_count(2, Duration::from_secs(30)).await, 2);
    let ready_at = systemd.times("READY=1")[0];
    wait_for("watchdog pings", Duration::from_secs(10), || {
        systemd.pings_since(ready_at) >= 3
    })
    .await;

    // The source's loop hangs inside its database call: the capture table is locked by
    // another session, so the drain's SELECT waits for as long as the lock is held.
    let mut lock = db.session();
    lock.send("BEGIN; LOCK TABLE lockstep_changes IN ACCESS EXCLUSIVE MODE;");
    wait_for(
        "the stuck source on /healthz",
        Duration::from_secs(20),
        || w.admin("/healthz").0 == 503,
    )
    .await;
    let stuck_at = Instant::now();
    let (_, body) = w.admin("/healthz");
    assert_eq!(body, "stuck: source vista\n");
    assert!(
        agent_log(&w).contains("source vista has not moved for"),
        "{}",
        agent_log(&w)
    );
    assert!(systemd
        .messages()
        .iter()
        .any(|(_, m)| m == "STATUS=stuck: source vista"));
    let (code, out, _) = lockstep(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("STUCK        source vista"), "{out}");
    // Three ping periods with no ping: systemd would now kill and restart the agent.
    let quiet_until = stuck_at + Duration::from_millis(4500);
    // Absence is asserted over a window, so the test waits it out.
    while Instant::now() < quiet_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        systemd.pings_since(stuck_at),
        0,
        "no WATCHDOG=1 while a source is stuck"
    );

    // The lock goes: the loop comes round, the pings come back, and nothing was lost.
    lock.send("ROLLBACK;");
    let released = Instant::now();
    wait_for("pings after the stall", Duration::from_secs(20), || {
        systemd.pings_since(released) >= 2
    })
    .await;
    assert_eq!(w.admin("/healthz"), (200, "ok\n".to_owned()));
    assert!(agent_log(&w).contains("source vista is moving again"));
    db.sql("UPDATE appointments SET clinic = 'East' WHERE id = 1;");
    assert_eq!(w.wait_count(3, Duration::from_secs(30)).await, 3);
    lock.finish();

    // SIGTERM: STOPPING, then a clean exit.
    let before_stop = Instant::now();
    assert_eq!(agent.stop(), Some(0));
    let stopping = systemd.times("STOPPING=1");
    assert_eq!(stopping.len(), 1, "{:?}", systemd.messages());
    assert!(stopping[0] > before_stop);
    assert_eq!(systemd.times("READY=1").len(), 1);
    // Exactly the three changes, in order, each once.
    let msgs = w.messages().await;
    let got: Vec<(String, String)> = msgs
        .iter()
        .map(|m| (m.json["op"].to_string(), m.json["key"]["id"].to_string()))
        .collect();
    let want =
        [("c", "1"), ("c", "2"), ("u", "1")].map(|(op, id)| (format!("\"{op}\""), id.to_owned()));
    assert_eq!(got, want);
    let ids: std::collections::HashSet<_> = msgs.iter().map(|m| &m.id).collect();
    assert_eq!(ids.len(), 3);
}

#[tokio::test]
async fn status_shows_positions_rates_spool_and_nats_and_says_when_the_agent_is_not_running() {
    let mut w = World::new();
    w.with_admin();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]");
    let cfg_s = cfg.to_str().unwrap();
    let file = w.logs().join("a.log");
    append(&file, (0..200).map(line));
    let mut agent = w.agent(&cfg);
    assert_eq!(w.wait_count(200, Duration::from_secs(30)).await, 200);

    // Keep changes coming for a few seconds so that there is a rate to see.
    let mut next = 200;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        append(&file, (next..next + 20).map(line));
        next += 20;
        // Pacing the workload (20 lines every 100 ms), not waiting for a result.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = lockstep(&["status", "--json", "--config", cfg_s]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rate = v["sources"]["vista"]["events_per_second"].as_f64().unwrap();
    assert!(rate > 0.0, "events/s while changes arrive: {out}");
    assert_eq!(w.wait_count(next, Duration::from_secs(30)).await, next);

    let size = std::fs::metadata(&file).unwrap().len();
    let acked = || {
        let (_, out, _) = lockstep(&["status", "--json", "--config", cfg_s]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["sources"]["vista"]["files"][0]
            ["acknowledged"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for(
        "the whole file acknowledged",
        Duration::from_secs(10),
        || acked() == size,
    )
    .await;
    let (code, out, _) = lockstep(&["status", "--config", cfg_s]);
    assert_eq!(code, 0);
    assert!(out.starts_with("lockstep "), "{out}");
    assert!(out.contains(", agent e2e, pid "), "{out}");
    assert!(
        out.contains("nats         connected, 0 event(s) in flight"),
        "{out}"
    );
    assert!(out.contains("spool        0 event(s), 0 B\n"), "{out}");
    assert!(out.contains("source vista (tail)"), "{out}");
    let human = |b: u64| {
        if b < 1024 {
            format!("{b} B")
        } else {
            format!("{:.1} KiB", b as f64 / 1024.0)
        }
    };
    assert!(
        out.contains(&format!(
            "position     {}: {} of {} acknowledged",
            file.display(),
            human(size),
            human(size)
        )),
        "{out}"
    );
    assert!(
        out.contains("lag          0 s, 0 B not acknowledged"),
        "{out}"
    );
    assert!(
        out.contains(&format!("(sent {next}, acknowledged {next})")),
        "{out}"
    );
    assert!(out.contains("last error   -"), "{out}");

    // The broker goes away: the spool fills, and status says so.
    w.nats.kill();
    append(&file, (next..next + 50).map(line));
    wait_for("spooled events in status", Duration::from_secs(30), || {
        let (_, out, _) = lockstep(&["status", "--json", "--config", cfg_s]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["spool"]["events"].as_u64() == Some(50) && v["nats"]["connected"] == false
    })
    .await;
    let (_, out, _) = lockstep(&["status", "--config", cfg_s]);
    assert!(
        out.contains("NOT CONNECTED (events go to the spool)"),
        "{out}"
    );
    assert!(out.contains("spool        50 event(s), "), "{out}");
    assert!(
        out.contains(" old\n"),
        "the oldest spooled event's age: {out}"
    );

    assert_eq!(agent.stop(), Some(0));
    let (code, out, err) = lockstep(&["status", "--config", cfg_s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "lockstep is not running: nothing answers on 127.0.0.1:{}",
            w.admin_port.unwrap()
        )),
        "{err}"
    );
    assert!(err.contains("systemctl start lockstep"), "{err}");
}

#[tokio::test]
async fn secrets_never_reach_logs_status_metrics_or_check() {
    let nats_pass = "n4ts-pa55-Q7";
    let odbc_pass = "odbc-pa55-Q7";
    let pg_pass = "pg-pa55-Q7";
    let mut w = World::with_nats_args(&["--user", "lockstep", "--pass", nats_pass]);
    w.with_admin();
    w.nats_extra = format!("user = \"lockstep\"\npassword = \"{nats_pass}\"");
    w.client_auth = Some(async_nats::ConnectOptions::with_user_and_password(
        "lockstep".into(),
        nats_pass.into(),
    ));
    let db = Db::new(Kind::Pg, &w, "secrets");
    db.create_tables();
    db.sql("INSERT INTO appointments (id, clinic) VALUES (1, 'North'), (2, 'South');");
    // A poll source that connects (trust auth takes any password), and two sources
    // whose databases refuse them, so that connection errors are logged too.
    let sources = format!(
        "[[source]]\nname = \"permits\"\nkind = \"poll\"\nodbc = \"{odbc};PWD={odbc_pass}\"\ntable = \"appointments\"\nkey = [\"id\"]\ninterval = \"1s\"\n\n\
         [[source]]\nname = \"down-odbc\"\nkind = \"poll\"\nodbc = \"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT=1;DATABASE=test;UID=postgres;PWD={odbc_pass}\"\ntable = \"appointments\"\nkey = [\"id\"]\ninterval = \"1s\"\n\n\
         [[source]]\nname = \"down-pg\"\nkind = \"trigger\"\npostgres = \"host=127.0.0.1 port=1 user=postgres password={pg_pass} dbname=test\"\ntables = [\"appointments\"]\ninterval = \"200ms\"\n",
        odbc = db.odbc()
    );
    let cfg = w.config_with(&sources);
    let cfg_s = cfg.to_str().unwrap();
    // Everything, from every library, at the most talkative level.
    let log = w.dir().join("agent.log");
    let mut child = std::process::Command::new(lockstep_bin())
        .args(["run", "--config", cfg_s])
        .env("LOCKSTEP_LOG", "trace")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert_eq!(w.wait_count(2, Duration::from_secs(30)).await, 2);
    wait_for("both refusals logged", Duration::from_secs(30), || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("down-odbc") && l.contains("down-pg") && l.contains("refused")
    })
    .await;
    let mut seen = String::new();
    for args in [
        vec!["status", "--config", cfg_s],
        vec!["status", "--json", "--config", cfg_s],
        vec!["check", "--config", cfg_s],
    ] {
        let (_, out, err) = lockstep(&args);
        seen.push_str(&out);
        seen.push_str(&err);
    }
    assert!(
        seen.contains("down-pg"),
        "check and status name the sources: {seen}"
    );
    seen.push_str(&w.admin("/metrics").1);
    seen.push_str(&w.admin("/status").1);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    seen.push_str(
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(nats_pass, "")
            .replace(odbc_pass, "")
            .replace(pg_pass, ""),
    );
    assert!(
        seen.len() > 10_000,
        "a trace log was written: {} bytes",
        seen.len()
    );
    for secret in [nats_pass, odbc_pass, pg_pass] {
        if let Some(at) = seen.find(secret) {
            panic!(
                "`{secret}` was printed: …{}…",
                &seen[at.saturating_sub(200)..(at + 50).min(seen.len())]
            );
        }
    }
}

#[tokio::test]
async fn under_systemd_log_lines_are_json_behind_journald_priorities() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    let cfg = w.config("table = \"appointments\"\nkey = [\"id\"]");
    // A line the source cannot read: a warning in the log.
    append(&w.logs().join("a.log"), ["not json".to_owned(), line(1)]);
    // systemd names the journal stream it connects stderr to: here, the log file.
    let log = w.dir().join("agent.log");
    let file = std::fs::File::create(&log).unwrap();
    let m = file.metadata().unwrap();
    let mut child = std::process::Command::new(lockstep_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(file)
        .spawn()
        .unwrap();
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut levels = std::collections::BTreeSet::new();
    for l in text.lines() {
        let (prio, json) = l.split_at(3);
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l}"));
        let level = v["level"].as_str().unwrap();
        let want = match level {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert_eq!(prio, want, "{l}");
        levels.insert(level.to_owned());
    }
    assert!(levels.contains("INFO") && levels.contains("WARN"), "{text}");
    // The default filter is `info`: no debug lines.
    assert!(!levels.contains("DEBUG"), "{text}");
}

/// An idle agent under a watchdog shorter than a second and a bit (here 900 ms): every
/// loop that waits for a wake-up still beats within a quarter of it
/// (`service::beat_within`), so none is reported stuck and the pings go on. Before, the
/// idle publisher came round once a second and was reported stuck again and again
/// (found by review: 5 reports in 12 s).
#[tokio::test]
async fn an_idle_agent_is_not_reported_stuck_with_a_900_ms_watchdog() {
    let w = World::new();
    let cfg = w.config_with(&w.tail_source("vista", "app.log", "table = \"t\"\nkey = [\"id\"]"));
    append(&w.logs().join("app.log"), [line(1)]);
    let sock = w.dir().join("notify.sock");
    let systemd = FakeSystemd::listen(&sock);
    let mut agent = Agent::start(
        &cfg,
        &w.dir().join("agent.log"),
        &[
            ("NOTIFY_SOCKET", &sock),
            ("WATCHDOG_USEC", Path::new("900000")),
        ],
    );
    wait_for("READY=1", Duration::from_secs(30), || {
        !systemd.times("READY=1").is_empty()
    })
    .await;
    assert_eq!(w.wait_count(1, Duration::from_secs(30)).await, 1);
    // Idle for 12 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(agent.stop(), Some(0));
    let log = agent_log(&w);
    let stuck = log.matches("has not moved for").count();
    let stuck_status = systemd
        .messages()
        .iter()
        .filter(|(_, m)| m.starts_with("STATUS=stuck"))
        .count();
    assert_eq!((stuck, stuck_status), (0, 0), "{log}");
    assert!(systemd.times("WATCHDOG=1").len() > 1, "{log}");
}
