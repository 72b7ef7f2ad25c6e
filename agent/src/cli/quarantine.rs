//! `lockstep quarantine list [--source S]` and `lockstep quarantine resend --source S
//! [--since T]`.
//!
//! `list` reads the quarantine files (safe while the agent runs). `resend` queues a
//! request for the agent, which sends the records through the source's normal path
//! (see `pipeline::resend`), and waits for its outcome while the agent runs.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::snapshot::{agent_running, give_to_state_dir_owner, Failed};
use crate::clock::now_ms;
use crate::config::{Config, SourceKind};
use crate::pipeline::resend::{self, format_time};

fn usage(message: String) -> Failed {
    Failed { code: 2, message }
}

fn runtime(message: String) -> Failed {
    Failed { code: 1, message }
}

fn w(out: &mut dyn Write, line: &str) -> Result<(), Failed> {
    writeln!(out, "{line}").map_err(|e| runtime(format!("cannot write: {e}")))
}

/// Prints the quarantined records (and refused events) of each source, or of `source`.
pub fn list(cfg: &Config, source: Option<&str>, out: &mut dyn Write) -> Result<(), Failed> {
    let sources: Vec<&str> = match source {
        Some(name) => {
            if !cfg.sources.iter().any(|s| s.name == name) {
                return Err(usage(format!(
                    "no source named `{name}` in {}",
                    cfg.path.display()
                )));
            }
            vec![name]
        }
        None => cfg.sources.iter().map(|s| s.name.as_str()).collect(),
    };
    let state_dir = &cfg.agent.state_dir;
    for name in sources {
        let path = resend::records_path(state_dir, name);
        let entries = resend::read_entries(&path).map_err(runtime)?;
        let marks = resend::load_marks(state_dir, name).map_err(runtime)?;
        let resent = entries
            .iter()
            .filter(|e| marks.contains_key(&e.hash))
            .count();
        w(
            out,
            &format!(
                "source {name}: {} record(s) in {} ({} waiting, {resent} resent)",
                entries.len(),
                path.display(),
                entries.len() - resent
            ),
        )?;
        for e in &entries {
            let state = if marks.contains_key(&e.hash) {
                "resent "
            } else {
                "waiting"
            };
            let kept = match &e.data {
                None => " [withheld]",
                Some(d) if (d.len() as u64) < e.length => " [first bytes only]",
                Some(_) => "",
            };
            w(
                out,
                &format!(
                    "  {}  {state}  {} byte {} ({} bytes{kept}): {}",
                    format_time(e.ts_ms),
                    e.file.display(),
                    e.offset,
                    e.length,
                    e.reason
                ),
            )?;
        }
        let refused = resend::refused_path(state_dir, name);
        let (n, bytes) = resend::count_lines(&refused);
        if n > 0 {
            w(
                out,
                &format!(
                    "source {name}: {n} event(s) the broker refused in {} ({bytes} bytes; not resent by \
                     `quarantine resend`: see docs/operations.md)",
                    refused.display()
                ),
            )?;
        }
        if let Ok(Some(r)) = resend::load_request(state_dir, name) {
            w(
                out,
                &format!("source {name}: resend {} queued, not finished yet", r.id),
            )?;
        }
        if let Ok(Some(o)) = resend::load_outcome(state_dir, name) {
            w(
                out,
                &format!(
                    "source {name}: last resend {} finished {}: {} resent, {} still bad",
                    o.id,
                    format_time(o.finished_ms),
                    o.resent,
                    o.still_bad
                ),
            )?;
        }
    }
    Ok(())
}

/// Queues a resend of `source`'s quarantined records (those quarantined at or after
/// `since`), then waits for the agent to finish it.
pub fn resend(
    cfg: &Config,
    source: &str,
    since: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), Failed> {
    let s = cfg
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| {
            usage(format!(
                "no source named `{source}` in {}",
                cfg.path.display()
            ))
        })?;
    if !matches!(s.kind, SourceKind::Tail(_)) {
        return Err(usage(format!(
            "source `{source}` is of kind `{}`: `quarantine resend` sends tail sources' records again. \
             A {} source's quarantined rows are still in its database: fix the cause, then the next \
             change to a row sends it{}",
            s.kind.name(),
            s.kind.name(),
            match s.kind {
                SourceKind::Trigger(_) => {
                    format!(", and `lockstep snapshot --source {source}` sends them all now")
                }
                _ => String::new(),
            }
        )));
    }
    let now = now_ms();
    let since_ms = since
        .map(|t| resend::parse_since(t, now))
        .transpose()
        .map_err(usage)?;
    let state_dir = &cfg.agent.state_dir;
    let entries =
        resend::read_entries(&resend::records_path(state_dir, source)).map_err(runtime)?;
    let marks = resend::load_marks(state_dir, source).map_err(runtime)?;
    let waiting = entries
        .iter()
        .filter(|e| since_ms.is_none_or(|s| e.ts_ms >= s) && !marks.contains_key(&e.hash))
        .count();
    // The same request queued and not finished (an agent stopped in the middle): wait
    // for it rather than start over.
    let req = match resend::load_request(state_dir, source).map_err(runtime)? {
        Some(r) if r.since_ms == since_ms => r,
        _ => {
            let (path, req) = resend::request(state_dir, source, since_ms).map_err(|e| {
                runtime(format!(
                    "cannot queue the resend in {}: {e}",
                    resend::dir(state_dir).display()
                ))
            })?;
            give_to_state_dir_owner(state_dir, &path);
            req
        }
    };
    let since_text = since_ms.map_or(String::new(), |s| format!(" since {}", format_time(s)));
    if !agent_running(state_dir) {
        return w(
            out,
            &format!(
                "resend of source `{source}` queued ({waiting} record(s) waiting{since_text}); the \
                 agent sends them when it starts"
            ),
        );
    }
    w(
        out,
        &format!("resend of source `{source}` queued ({waiting} record(s) waiting{since_text})"),
    )?;
    let o = follow(state_dir, source, req.id)?;
    w(
        out,
        &format!(
            "resent {} record(s) of source `{source}`; {} still bad (kept in the quarantine)",
            o.resent, o.still_bad
        ),
    )?;
    for r in &o.reasons {
        w(out, &format!("  still bad: {r}"))?;
    }
    Ok(())
}

/// Waits for the outcome of request `id`.
fn follow(state_dir: &Path, source: &str, id: u64) -> Result<resend::Outcome, Failed> {
    let mut checked = Instant::now();
    loop {
        // The agent reports only through its outcome file: poll it.
        std::thread::sleep(Duration::from_millis(200));
        match resend::load_outcome(state_dir, source) {
            Ok(Some(o)) if o.id == id => return Ok(o),
            Ok(_) => {}
            Err(e) => return Err(runtime(e)),
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if !agent_running(state_dir) {
                return Err(runtime(
                    "the agent stopped before the resend finished; it goes on when the agent \
                     starts again (records already sent are marked and not sent twice)"
                        .to_owned(),
                ));
            }
        }
    }
}
