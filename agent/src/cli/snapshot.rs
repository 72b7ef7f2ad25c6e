//! `lockstep snapshot --source NAME [--table T]`: queues a snapshot for the agent and,
//! while the agent runs, follows it to the end with a progress bar (on a terminal).
//!
//! The command does not read the database itself: the agent's drain does, between its
//! reads of the capture table, so that the snapshot and the change stream are ordered
//! (see `source::trigger::snapshot`). The request is a file in the state directory; the
//! progress is the snapshot's checkpoint there.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::source::trigger::snapshot::{self, Progress};

/// What went wrong, with the exit code (2: usage, 1: runtime).
#[derive(Debug)]
pub struct Failed {
    pub code: u8,
    pub message: String,
}

fn usage(message: String) -> Failed {
    Failed { code: 2, message }
}

fn runtime(message: String) -> Failed {
    Failed { code: 1, message }
}

/// Queues the snapshot, then follows it while the agent runs.
pub fn run(
    cfg: &Config,
    source: Option<&str>,
    table: Option<&str>,
    out: &mut impl Write,
) -> Result<(), Failed> {
    let (s, t) = super::trigger_source(cfg, source, "snapshots").map_err(usage)?;
    let tables: Vec<String> = match table {
        Some(name) if t.tables.iter().any(|x| x == name) => vec![name.to_owned()],
        Some(name) => {
            return Err(usage(format!(
                "source `{}` has no table `{name}` (its tables: {})",
                s.name,
                t.tables.join(", ")
            )))
        }
        None => Vec::new(),
    };
    let state_dir = &cfg.agent.state_dir;
    let last = snapshot::load(state_dir, &s.name).map_err(runtime)?;
    let last_id = last.as_ref().map_or(0, |p| p.id);
    let path = snapshot::request(state_dir, &s.name, &tables).map_err(|e| {
        runtime(format!(
            "cannot queue the snapshot in {}: {e}",
            state_dir.display()
        ))
    })?;
    give_to_state_dir_owner(state_dir, &path);
    let what = match table {
        Some(t) => format!("table `{t}`"),
        None => format!("{} table(s)", t.tables.len()),
    };
    let w = |out: &mut dyn Write, line: String| {
        writeln!(out, "{line}").map_err(|e| runtime(format!("cannot write: {e}")))
    };
    if !agent_running(state_dir) {
        return w(
            out,
            format!(
                "snapshot of source `{}` ({what}) queued; the agent takes it when it starts",
                s.name
            ),
        );
    }
    if last.as_ref().is_some_and(|p| !p.done()) {
        w(
            out,
            format!(
                "snapshot of source `{}` ({what}) queued after snapshot {last_id}, which is running",
                s.name
            ),
        )?;
    } else {
        w(
            out,
            format!("snapshot of source `{}` ({what}) queued", s.name),
        )?;
    }
    let done = follow(state_dir, &s.name, last_id)?;
    w(
        out,
        format!(
            "snapshot {} of source `{}`: {} row(s) of {} table(s) in {:.1} s",
            done.id,
            s.name,
            done.rows_done,
            done.tables.len(),
            (done.finished_ms.unwrap_or(done.started_ms) - done.started_ms) as f64 / 1000.0
        ),
    )
}

/// Waits for a snapshot numbered above `last_id` to finish, drawing its progress.
fn follow(state_dir: &Path, source: &str, last_id: u64) -> Result<Progress, Failed> {
    // Drawn on stderr, and only when it is a terminal.
    let bar = ProgressBar::new_spinner();
    bar.set_message("waiting for the agent to start it");
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut sized = false;
    let mut checked = Instant::now();
    loop {
        // The agent reports progress only through its checkpoint file: poll it.
        std::thread::sleep(Duration::from_millis(200));
        match snapshot::load(state_dir, source) {
            Ok(Some(p)) if p.id > last_id => {
                if let (Some(total), false) = (p.rows_total, sized) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:40} {human_pos}/{human_len} rows  {elapsed}  eta {eta}  {msg}",
                        )
                        .expect("a valid template"),
                    );
                    sized = true;
                }
                bar.set_position(p.rows_done);
                if p.done() {
                    bar.finish_and_clear();
                    return Ok(p);
                }
                bar.set_message(format!(
                    "snapshot {}: `{}` ({} of {})",
                    p.id,
                    p.tables[p.table],
                    p.table + 1,
                    p.tables.len()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                bar.abandon();
                return Err(runtime(e));
            }
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if !agent_running(state_dir) {
                bar.abandon();
                return Err(runtime(
                    "the agent stopped before the snapshot finished; it goes on from its last \
                     checkpoint when the agent starts again"
                        .to_owned(),
                ));
            }
        }
    }
}

/// Whether an agent holds the state directory's lock.
pub(crate) fn agent_running(state_dir: &Path) -> bool {
    match File::open(state_dir.join("lock")) {
        Ok(f) => f.try_lock().is_err(),
        Err(_) => false,
    }
}

/// Run as root for an agent running as its own user: hand it the files it must delete.
pub(crate) fn give_to_state_dir_owner(state_dir: &Path, request: &Path) {
    let Ok(owner) = std::fs::metadata(state_dir) else {
        return;
    };
    let dir = request.parent().unwrap_or(state_dir);
    for p in [dir, request] {
        let Ok(m) = std::fs::metadata(p) else {
            continue;
        };
        if m.uid() != owner.uid() || m.gid() != owner.gid() {
            if let Err(e) = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())) {
                eprintln!(
                    "lockstep: warning: cannot give {} to the owner of {}: {e}",
                    p.display(),
                    state_dir.display()
                );
            }
        }
    }
}
