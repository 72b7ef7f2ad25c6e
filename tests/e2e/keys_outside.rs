//! Issue 16 item 6 ("kill -9 loses changes in keys mode"), run the way an outside user
//! runs it: one broker, one stream, one state directory and one schema for every run,
//! the agent restarted from a config file with the defaults, the table reset between
//! runs, keys reused from run to run. Ignored: `scripts/soak-keys-outside` runs it,
//! with the variants its header lists. The 8 s wait is the reporter's check, made on
//! purpose at that moment; the verdict is taken once everything is drained.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::harness::{install, value_text, Db, Kind};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The broker: the test's own, or with `OUT_NATS=system` the machine's long-running
/// one (127.0.0.1:4222, shared with everything else on the machine), as an operator's.
fn nats_url(w: &World) -> String {
    if env("OUT_NATS", "") == "system" {
        "nats://127.0.0.1:4222".into()
    } else {
        w.nats.url()
    }
}

/// A stream of this process's own on a shared broker.
fn stream_name() -> String {
    if env("OUT_NATS", "") == "system" {
        format!("OUTSIDE_{}", std::process::id())
    } else {
        "OUTSIDE".into()
    }
}

fn config(w: &World, db: &Db, fsync: &str, agent_extra: &str) -> PathBuf {
    let text = format!(
        r#"[agent]
id = "outside"
state_dir = "{state}"

[nats]
servers = ["{url}"]
stream = "{stream}"
subject_prefix = "{stream}"
create_stream = true

[admin]
listen = ""

[spool]
fsync = "{fsync}"
{agent_extra}

[[source]]
name = "vista"
kind = "trigger"
postgres = "host=127.0.0.1 user=postgres dbname=test options='-c search_path={schema}'"
tables = ["appointments"]
capture = "keys"
"#,
        state = w.dir().join("state").display(),
        url = nats_url(w),
        stream = stream_name(),
        schema = db.name,
    );
    let p = w.dir().join("lockstep.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The random workload of writer `writer` of `writers`: `ops` changes on its keys (those
/// equal to `writer` modulo `writers`) in 1..=`keys`, given the keys present.
fn workload(
    seed: u64,
    ops: usize,
    (keys, writer, writers): (u64, u64, u64),
    present: &mut [bool],
    tx: bool,
) -> Vec<String> {
    let mut r = seed;
    let mut next = move |n: u64| {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (r >> 33) % n
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops {
        let mut s = String::new();
        let n = if tx { 1 + next(5) } else { 1 };
        if tx {
            s.push_str("BEGIN;");
        }
        for _ in 0..n {
            i += 1;
            let k = writer + 1 + writers * next(keys / writers);
            let v = next(1_000_000);
            if !present[k as usize] {
                present[k as usize] = true;
                s.push_str(&format!(
                    "INSERT INTO appointments VALUES ({k}, 'C{}', {v}.5, 'v{v}');",
                    v % 7
                ));
            } else if next(10) < 6 {
                s.push_str(&format!(
                    "UPDATE appointments SET fee = {v}.25, note = 'v{v}' WHERE id = {k};"
                ));
            } else {
                present[k as usize] = false;
                s.push_str(&format!("DELETE FROM appointments WHERE id = {k};"));
            }
        }
        if tx {
            s.push_str("COMMIT;");
        }
        out.push(s);
    }
    out
}

fn dump(db: &Db) -> BTreeMap<String, String> {
    db.sql("SELECT id, coalesce(clinic, '∅'), coalesce(fee::text, '∅'), coalesce(note, '∅') FROM appointments;")
        .lines()
        .map(|l| {
            let cols: Vec<String> = l.split('|').map(crate::harness::norm).collect();
            (cols[0].clone(), cols.join("|"))
        })
        .collect()
}

fn replay(msgs: &[(u64, Msg)]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for (_, m) in msgs {
        let j = &m.json;
        let id = value_text(&j["key"]["id"]);
        if j["op"] == "d" {
            state.remove(&id);
        } else {
            let a = &j["after"];
            let row: Vec<String> = ["id", "clinic", "fee", "note"]
                .iter()
                .map(|c| value_text(&a[c]))
                .collect();
            state.insert(id, row.join("|"));
        }
    }
    state
}

/// Every message of the stream with its stream sequence.
async fn messages(w: &World) -> Vec<(u64, Msg)> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url(w)).await.unwrap());
    let Ok(mut stream) = js.get_stream(stream_name()).await else {
        return Vec::new();
    };
    let total = stream.info().await.unwrap().state.messages as usize;
    let c = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    let mut out = Vec::new();
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let seq = m.info().unwrap().stream_sequence;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push((
            seq,
            Msg {
                subject: m.subject.to_string(),
                id,
                json,
            },
        ));
    }
    out
}

fn lockstep_cmd(args: &[&str], cfg: &std::path::Path) -> String {
    let o = Command::new(lockstep_bin())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `OUT_RUNS` runs (modes `OUT_MODES`, comma-separated: kill, term, off), each resetting
/// the table as `OUT_RESET` says (drop, uninstall, keep), then five parts of a random
/// workload with a restart 0.3 s after each.
#[tokio::test]
#[ignore]
async fn outside_keys_restarts() {
    let modes = env("OUT_MODES", "kill,kill,kill,term,term,off");
    let reset = env("OUT_RESET", "drop");
    let seed: u64 = env("OUT_SEED", "7").parse().unwrap();
    let ops: usize = env("OUT_OPS", "3000").parse().unwrap();
    let keys: u64 = env("OUT_KEYS", "10000").parse().unwrap();
    let tx = env("OUT_TX", "0") == "1";
    let wait_ms: u64 = env("OUT_WAIT_MS", "300").parse().unwrap();
    let between = env("OUT_BETWEEN", "stop");
    let agent_extra = env("OUT_EXTRA", "");
    let writers: u64 = env("OUT_WRITERS", "1").parse().unwrap();
    let w = World::new();
    let db = Db::new(Kind::Pg, &w, "outside");
    let create = "CREATE TABLE appointments (id int PRIMARY KEY, clinic text, fee numeric(20,5), note text);";
    db.sql(create);
    let mut present = vec![false; keys as usize + 1];
    let mut agent: Option<Agent> = None;
    let log = w.dir().join("agent.log");
    let mut failed = Vec::new();
    for (run, mode) in modes.split(',').enumerate() {
        let fsync = if mode == "off" { "off" } else { "batch" };
        let cfg = config(&w, &db, fsync, &agent_extra);
        match between.as_str() {
            "stop" => {
                if let Some(mut a) = agent.take() {
                    a.stop();
                }
            }
            "kill" => {
                if let Some(mut a) = agent.take() {
                    a.kill9();
                }
            }
            _ => {}
        }
        match reset.as_str() {
            "drop" => {
                db.sql(&format!("DROP TABLE IF EXISTS appointments; {create}"));
                present.iter_mut().for_each(|p| *p = false);
            }
            "uninstall" => {
                if run > 0 {
                    let out = lockstep_cmd(&["triggers", "uninstall"], &cfg);
                    eprintln!("uninstall: {out}");
                }
                db.sql(&format!("DROP TABLE IF EXISTS appointments; {create}"));
                present.iter_mut().for_each(|p| *p = false);
            }
            "restart" => {
                db.sql(&format!("DROP TABLE IF EXISTS appointments; {create}"));
                if run > 0 {
                    db.sql("TRUNCATE lockstep_changes RESTART IDENTITY;");
                }
                present.iter_mut().for_each(|p| *p = false);
            }
            _ => {}
        }
        install(&w, &cfg);
        let before = messages(&w).await.last().map_or(0, |(s, _)| *s);
        let oid = db.sql("SELECT 'lockstep_changes'::regclass::oid;");
        let seq0 = db.sql("SELECT last_value FROM lockstep_changes_seq_seq;");
        eprintln!(
            "run {run} ({mode}): capture table oid {} seq {}",
            oid.trim(),
            seq0.trim()
        );
        if between != "carry" || agent.is_none() {
            if let Some(mut a) = agent.take() {
                a.kill9();
            }
            agent = Some(Agent::start(&cfg, &log, &[]));
        }
        let same = env("OUT_SAMESEED", "0") == "1";
        let parts: Vec<Vec<String>> = (0..writers)
            .map(|wr| {
                let seed = if same { seed } else { seed * 1000 + run as u64 };
                let stmts = workload(
                    seed * 10 + wr,
                    ops / writers as usize,
                    (keys, wr, writers),
                    &mut present,
                    tx,
                );
                let per = stmts.len().div_ceil(5);
                stmts.chunks(per).map(|c| c.concat()).collect()
            })
            .collect();
        for i in 0..5 {
            let sessions: Vec<_> = parts
                .iter()
                .map(|p| {
                    let mut s = db.session();
                    s.send(p.get(i).map_or("", String::as_str));
                    s
                })
                .collect();
            for s in sessions {
                assert!(s.finish(), "a workload part failed");
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            let mut a = agent.take().unwrap();
            if mode == "term" {
                a.stop();
            } else {
                a.kill9();
            }
            agent = Some(Agent::start(&cfg, &log, &[]));
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        let left = db.sql("SELECT count(*) FROM lockstep_changes;");
        let spooled = w.spool_waiting(&cfg);
        let check = |msgs: &[(u64, Msg)]| {
            // Keys left from the runs before are in the table too: then the whole stream.
            let from = if reset == "keep" { 0 } else { before };
            let mine: Vec<(u64, Msg)> = msgs.iter().filter(|(s, _)| *s > from).cloned().collect();
            let got = replay(&mine);
            let want = dump(&db);
            let mut diff = Vec::new();
            for (k, v) in &want {
                match got.get(k) {
                    None => diff.push(format!("{k}: no event (table {v})")),
                    Some(g) if g != v => diff.push(format!("{k}: stream {g}, table {v}")),
                    _ => {}
                }
            }
            for (k, g) in &got {
                if !want.contains_key(k) {
                    diff.push(format!("{k}: stream {g}, row deleted"));
                }
            }
            (mine.len(), diff)
        };
        let (n8, diff8) = check(&messages(&w).await);
        eprintln!(
            "run {run} ({mode}) at 8 s: {} capture rows left, {spooled} spooled, {n8} messages, {} keys differ",
            left.trim(),
            diff8.len()
        );
        for d in diff8.iter().take(20) {
            eprintln!("  {d}");
        }
        // And once everything is surely drained.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (db.sql("SELECT count(*) FROM lockstep_changes;").trim() != "0"
            || w.spool_waiting(&cfg) > 0)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (n, diff) = check(&messages(&w).await);
        eprintln!(
            "run {run} ({mode}) drained: {n} messages, {} keys differ",
            diff.len()
        );
        for d in diff.iter().take(20) {
            eprintln!("  {d}");
        }
        if !diff.is_empty() {
            failed.push(run);
        }
        // For the next run (keep): the keys the table holds.
        present.iter_mut().for_each(|p| *p = false);
        for k in dump(&db).keys() {
            present[k.parse::<usize>().unwrap()] = true;
        }
    }
    if let Some(mut a) = agent.take() {
        a.stop();
    }
    if env("OUT_NATS", "") == "system" {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url(&w)).await.unwrap());
        let _ = js.delete_stream(stream_name()).await;
    }
    let keep = std::env::temp_dir().join(format!("outside-agent-{}.log", std::process::id()));
    let _ = std::fs::copy(w.dir().join("agent.log"), &keep);
    eprintln!("the agent's log: {}", keep.display());
    assert!(failed.is_empty(), "runs {failed:?} differ");
}
