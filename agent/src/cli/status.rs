//! `lockstep status`: what the running agent reports on its admin endpoint (`/status`),
//! for a person at a terminal.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::spool::inspect::human_bytes;

/// Reads the agent's `/status` and prints it (as it is with `json`).
pub fn run(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), String> {
    let Some(addr) = cfg.admin.listen else {
        return Err(format!(
            "the admin endpoint is off in {} ([admin] listen = \"\"), and `status` reads it; set [admin] listen = \"127.0.0.1:9187\" and restart the agent",
            cfg.path.display()
        ));
    };
    let body = get(addr, "/status").map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "lockstep is not running: nothing answers on {addr} ([admin] listen in {}). Start it with `systemctl start lockstep`; `journalctl -u lockstep` tells why it stopped",
            cfg.path.display()
        ),
        _ => format!("cannot read the agent's status from http://{addr}/status: {e}"),
    })?;
    let v: Value = serde_json::from_str(&body)
        .map_err(|e| format!("http://{addr}/status did not answer with lockstep's status ({e}); is another program listening there?"))?;
    let w = |e: io::Error| e.to_string();
    if json {
        return writeln!(out, "{body}").map_err(w);
    }
    print(cfg, &v, out).map_err(w)
}

/// One GET over HTTP/1.0; the body of a 200 answer.
fn get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("the answer is not HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(io::Error::other(format!("it answered `{status}`")));
    }
    Ok(body.to_owned())
}

fn print(cfg: &Config, v: &Value, out: &mut dyn Write) -> io::Result<()> {
    let agent = v["agent"].as_str().unwrap_or("?");
    writeln!(
        out,
        "lockstep {}, agent {agent}, pid {}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"]
    )?;
    if agent != cfg.agent.id {
        writeln!(
            out,
            "  note: {} names the agent `{}`; the one answering is `{agent}`",
            cfg.path.display(),
            cfg.agent.id
        )?;
    }
    let nats = &v["nats"];
    writeln!(
        out,
        "{:<12} {}, {} event(s) in flight",
        "nats",
        if nats["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "NOT CONNECTED (events go to the spool)"
        },
        nats["in_flight"]
    )?;
    if let Some(f) = nats["publish_failing"].as_object() {
        writeln!(
            out,
            "{:<12} fails for {} ({}); events go to the spool and are retried",
            "PUBLISHING",
            duration(f.get("seconds").and_then(Value::as_i64).unwrap_or(0)),
            f.get("error").and_then(Value::as_str).unwrap_or("?")
        )?;
    }
    let spool = &v["spool"];
    let events = spool["events"].as_u64().unwrap_or(0);
    write!(
        out,
        "{:<12} {events} event(s), {}",
        "spool",
        human_bytes(spool["bytes"].as_u64().unwrap_or(0))
    )?;
    match spool["oldest_age_seconds"].as_i64() {
        Some(age) if events > 0 => writeln!(out, ", oldest {} old", duration(age))?,
        _ => writeln!(out)?,
    }
    if let Some(stuck) = v["stalled"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = stuck.iter().filter_map(Value::as_str).collect();
        writeln!(
            out,
            "{:<12} {} (not moving; systemd's watchdog will restart the agent)",
            "STUCK",
            names.join(", ")
        )?;
    }
    let Some(sources) = v["sources"].as_object() else {
        return Ok(());
    };
    for (name, s) in sources {
        let kind = s["kind"].as_str().unwrap_or("?");
        writeln!(out, "\nsource {name} ({kind})")?;
        if let Some(why) = s["failing"].as_str() {
            writeln!(
                out,
                "  {:<12} {why} (started again with backoff; see the log)",
                "FAILING"
            )?;
        }
        if let Some(drift) = s["trigger_drift"].as_object() {
            for (table, why) in drift {
                writeln!(
                    out,
                    "  {:<12} table {table} has changed since its capture triggers were installed: {}",
                    "DRIFT",
                    why.as_str().unwrap_or("?")
                )?;
            }
        }
        for line in position(s) {
            writeln!(out, "  {:<12} {line}", "position")?;
        }
        let mut lag = duration(s["lag_seconds"].as_i64().unwrap_or(0));
        if let Some(b) = s["lag_bytes"].as_u64() {
            lag.push_str(&format!(", {} not acknowledged", human_bytes(b)));
        }
        writeln!(out, "  {:<12} {lag}", "lag")?;
        writeln!(
            out,
            "  {:<12} {} (sent {}, acknowledged {})",
            "events/s", s["events_per_second"], s["events_sent"], s["events_acknowledged"]
        )?;
        if let Some(held) = s["held_keys"].as_u64().filter(|h| *h > 0) {
            writeln!(out, "  {:<12} {held}", "held keys")?;
        }
        if let Some(q) = s["quarantined"].as_u64().filter(|q| *q > 0) {
            writeln!(out, "  {:<12} {q} record(s)", "quarantined")?;
        }
        writeln!(
            out,
            "  {:<12} {}",
            "last error",
            s["last_error"].as_str().unwrap_or("-")
        )?;
    }
    Ok(())
}

/// Where a source has got to, in its own terms.
fn position(s: &Value) -> Vec<String> {
    match s["kind"].as_str() {
        Some("tail") => {
            let files = s["files"].as_array().map(Vec::as_slice).unwrap_or_default();
            if files.is_empty() {
                return vec!["no file matches the source's paths yet".into()];
            }
            files
                .iter()
                .map(|f| {
                    format!(
                        "{}: {} of {} acknowledged{}",
                        f["path"].as_str().unwrap_or("?"),
                        human_bytes(f["acknowledged"].as_u64().unwrap_or(0)),
                        human_bytes(f["size"].as_u64().unwrap_or(0)),
                        if f["following"].as_bool() == Some(false) {
                            " (rotated away, finishing)"
                        } else {
                            ""
                        }
                    )
                })
                .collect()
        }
        Some("trigger") => {
            let mut p = format!(
                "capture table read to seq {}, {} row(s) in flight{}",
                s["last_seq_read"],
                s["rows_in_flight"],
                if s["connected"].as_bool() == Some(false) {
                    "; database NOT CONNECTED"
                } else {
                    ""
                }
            );
            if let Some(snap) = s["snapshot"].as_object() {
                if snap.get("running").and_then(Value::as_bool) == Some(true) {
                    p.push_str(&format!(
                        "; snapshot {} of {} row(s)",
                        snap["rows_done"], snap["rows_total"]
                    ));
                }
            }
            vec![p]
        }
        Some("poll") => {
            let mut p = format!(
                "table {}, snapshot generation {}",
                s["table"].as_str().unwrap_or("?"),
                s["snapshot_generation"]
            );
            if let Some(c) = s["cursor"].as_str() {
                p.push_str(&format!(", cursor {c}"));
            }
            let scan = &s["last_scan"];
            if scan.is_object() {
                let ago =
                    (crate::clock::now_ms() - scan["finished_ms"].as_i64().unwrap_or(0)) / 1000;
                p.push_str(&format!(
                    "; last scan {} ago: {} row(s) in {:.1} s, {} created, {} updated, {} deleted",
                    duration(ago),
                    scan["rows"],
                    scan["seconds"].as_f64().unwrap_or(0.0),
                    scan["created"],
                    scan["updated"],
                    scan["deleted"]
                ));
            }
            if s["connected"].as_bool() == Some(false) {
                p.push_str("; database NOT CONNECTED");
            }
            vec![p]
        }
        _ => vec![s.to_string()],
    }
}

/// `42 s`, `3 min 20 s`, `5 h 02 min`, `2 d 4 h`.
fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(200), "3 min 20 s");
        assert_eq!(duration(5 * 3600 + 120), "5 h 02 min");
        assert_eq!(duration(2 * 86400 + 4 * 3600 + 5), "2 d 4 h");
        assert_eq!(duration(-3), "0 s");
    }

    #[test]
    fn positions_name_what_each_kind_has_reached() {
        let tail = serde_json::json!({"kind": "tail", "files": [
            {"path": "/var/x/changes.log", "size": 2048, "acknowledged": 1024, "following": true},
            {"path": "/var/x/changes.log.1", "size": 10, "acknowledged": 10, "following": false},
        ]});
        assert_eq!(
            position(&tail),
            vec![
                "/var/x/changes.log: 1.0 KiB of 2.0 KiB acknowledged".to_owned(),
                "/var/x/changes.log.1: 10 B of 10 B acknowledged (rotated away, finishing)"
                    .to_owned()
            ]
        );
        let trig = serde_json::json!({"kind": "trigger", "connected": false,
            "last_seq_read": 77, "rows_in_flight": 3, "snapshot": null});
        assert_eq!(
            position(&trig),
            vec!["capture table read to seq 77, 3 row(s) in flight; database NOT CONNECTED"]
        );
        let poll = serde_json::json!({"kind": "poll", "connected": true, "table": "PERMITS",
            "snapshot_generation": 4, "cursor": null, "last_scan": null});
        assert_eq!(
            position(&poll),
            vec!["table PERMITS, snapshot generation 4"]
        );
    }
}
