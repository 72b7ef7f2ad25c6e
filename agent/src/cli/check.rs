//! `lockstep check`: validate the config and try every connection, as a table.

use std::io::Write;
use std::time::Duration;

use crate::config::{owners, redact, Config, PollConfig, SourceKind, TriggerConfig, TriggerDb};
use crate::sink::jetstream;
use crate::source::poll::scan::PollDb;
use crate::source::tail;
use crate::source::trigger::setup::SetupDb;
use crate::source::trigger::{ddl, drift};

/// One row of the table.
struct Row {
    what: String,
    target: String,
    ok: Option<bool>,
    detail: String,
}

/// Runs the checks, prints the table to `out`, and returns whether everything passed.
pub async fn check(cfg: &Config, out: &mut impl Write) -> bool {
    let mut rows = vec![Row {
        what: "config".into(),
        target: cfg.path.display().to_string(),
        ok: Some(true),
        detail: format!("agent {}, {} source(s)", cfg.agent.id, cfg.sources.len()),
    }];
    rows.push(user());
    rows.push(state_dir(cfg));
    let servers = jetstream::shown(&cfg.nats.servers);
    match tokio::time::timeout(
        Duration::from_secs(10),
        jetstream::connect(&cfg.nats, false, None),
    )
    .await
    {
        Ok(Ok(client)) => {
            rows.push(Row {
                what: "nats".into(),
                target: servers,
                ok: Some(true),
                detail: "connected".into(),
            });
            let js = jetstream::context(client, &cfg.nats);
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                jetstream::ensure_stream(&js, &cfg.nats),
            )
            .await;
            let (ok, detail) = match r {
                Ok(Ok(())) => (
                    true,
                    if cfg.nats.create_stream {
                        "exists or created"
                    } else {
                        "exists"
                    }
                    .to_owned(),
                ),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (
                    false,
                    "no answer from JetStream within 10s (is JetStream enabled on the server?)"
                        .into(),
                ),
            };
            rows.push(Row {
                what: "stream".into(),
                target: cfg.nats.stream.clone(),
                ok: Some(ok),
                detail,
            });
        }
        Ok(Err(e)) => rows.push(Row {
            what: "nats".into(),
            target: servers,
            ok: Some(false),
            detail: e.to_string(),
        }),
        Err(_) => rows.push(Row {
            what: "nats".into(),
            target: servers,
            ok: Some(false),
            detail: "no connection within 10s".into(),
        }),
    }
    for s in &cfg.sources {
        match &s.kind {
            SourceKind::Tail(t) => {
                for pattern in &t.paths {
                    rows.push(tail_path(&s.name, pattern));
                }
            }
            SourceKind::Trigger(t) => rows.extend(trigger_tables(&s.name, t).await),
            SourceKind::Poll(p) => rows.push(poll_table(&s.name, p).await),
        }
    }
    rows.extend(capture_tables(cfg).await);
    rows.extend(quarantines(cfg));
    print(out, &rows);
    rows.iter().all(|r| r.ok != Some(false))
}

/// Who runs the check, and where secrets given by a bare name came from: a check for
/// the service should run as its user (`sudo lockstep check --user lockstep`).
fn user() -> Row {
    use super::as_user;
    let uid = as_user::effective_uid();
    let name = uid.and_then(as_user::user_name);
    let target = match (&name, uid) {
        (Some(n), Some(u)) => format!("{n} (uid {u})"),
        (None, Some(u)) => format!("uid {u}"),
        _ => "unknown".into(),
    };
    let detail = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(d) => match std::env::var_os("LOCKSTEP_CHECK_SECRETS_FROM") {
            Some(from) => format!(
                "secret files by bare name: those of {}, handed over as LoadCredential= does",
                std::path::Path::new(&from).display()
            ),
            None => format!(
                "secret files by bare name: in $CREDENTIALS_DIRECTORY ({})",
                std::path::Path::new(&d).display()
            ),
        },
        None => format!(
            "secret files by bare name: in {} ($CREDENTIALS_DIRECTORY is not set)",
            crate::config::CREDENTIALS_DIR
        ),
    };
    Row {
        what: "user".into(),
        target,
        ok: Some(true),
        detail,
    }
}

/// For each database with trigger sources: which source owns which table, and the
/// changes waiting in its capture table, with those of tables no source here owns (they
/// stay there: another agent's source may own them, or a table left `tables`).
async fn capture_tables(cfg: &Config) -> Vec<Row> {
    let owners: Vec<(&TriggerConfig, owners::Owner<'_>)> = cfg
        .sources
        .iter()
        .filter_map(|s| match &s.kind {
            SourceKind::Trigger(t) => Some((t, owners::owner(s)?)),
            _ => None,
        })
        .collect();
    let mut rows = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for (t, o) in &owners {
        if done.contains(&o.target.as_str()) {
            continue;
        }
        done.push(&o.target);
        let group: Vec<&owners::Owner<'_>> = owners
            .iter()
            .map(|(_, o)| o)
            .filter(|g| g.target == o.target)
            .collect();
        let names: Vec<&str> = group.iter().map(|g| g.source).collect();
        let what = format!("database of {}", names.join(", "));
        let target = ddl::CAPTURE_TABLE.to_owned();
        let opened = tokio::time::timeout(Duration::from_secs(10), SetupDb::open(t)).await;
        let waiting = match opened {
            Ok(Ok(db)) => db.waiting_per_table().await,
            // Reported on the source's own row already.
            _ => continue,
        };
        let waiting = match waiting {
            Ok(w) => w,
            Err(_) => {
                // No capture table: the source rows say to install the triggers.
                continue;
            }
        };
        let mut ok = Some(true);
        let mut parts: Vec<String> = group
            .iter()
            .map(|g| {
                let tables: Vec<String> = g
                    .tables
                    .iter()
                    .map(|t| match waiting.iter().find(|(w, _)| w == t) {
                        Some((_, n)) => format!("{t} ({n} waiting)"),
                        None => t.clone(),
                    })
                    .collect();
                format!("{} owns {}", g.source, tables.join(", "))
            })
            .collect();
        for (tbl, n) in &waiting {
            if !group.iter().any(|g| g.tables.contains(tbl)) {
                ok = None;
                parts.push(format!(
                    "{n} change(s) of `{tbl}`, which no source here owns, stay in it (a source \
                     of another agent may read them; if none does, they are never sent: list \
                     the table in its source's `tables` as spelled here, or delete them)"
                ));
            }
        }
        rows.push(Row {
            what,
            target,
            ok,
            detail: parts.join("; "),
        });
    }
    rows
}

/// For a trigger source: the connection, and each table with its key and whether its
/// capture triggers are installed.
async fn trigger_tables(source: &str, t: &TriggerConfig) -> Vec<Row> {
    let what = format!("source {source}");
    let target = match t.db {
        TriggerDb::Postgres(_) => "postgres",
        TriggerDb::Odbc(_) => "odbc",
    };
    let db = match tokio::time::timeout(Duration::from_secs(10), SetupDb::open(t)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return vec![Row {
                what,
                target: target.into(),
                ok: Some(false),
                detail: e,
            }]
        }
        Err(_) => {
            return vec![Row {
                what,
                target: target.into(),
                ok: Some(false),
                detail: "no connection within 10s".into(),
            }]
        }
    };
    let detail = match &t.db {
        TriggerDb::Postgres(conn) => match db.tls_version().await {
            Ok(Some(v)) => format!("connected over TLS ({v}), {}", conn.describe()),
            Ok(None) => format!("connected without TLS, {}", conn.describe()),
            Err(e) => format!("connected, {}; {e}", conn.describe()),
        },
        TriggerDb::Odbc(_) => "connected".into(),
    };
    let mut rows = vec![Row {
        what: what.clone(),
        target: db.describe(),
        ok: Some(true),
        detail,
    }];
    for table in &t.tables {
        let (ok, detail) = match db.table_def(table).await {
            Err(e) => (Some(false), e),
            Ok(def) => {
                let key = def.key.join(", ");
                match db.installed(table).await {
                    Ok(Some(Some(inst))) if !inst.unreadable.is_empty() => (
                        None,
                        format!(
                            "key ({key}); {}",
                            drift::unreadable_warning(db.dialect(), table, &inst)
                                .unwrap_or_default()
                        ),
                    ),
                    Ok(Some(Some(inst))) if inst.writes.iter().any(|n| n != table) => (
                        Some(false),
                        format!(
                            "key ({key}), triggers installed, but they record its changes as {}, \
                             which this source does not read (installed by another source, or \
                             under another spelling): remove the table from the other source, \
                             then run `lockstep triggers install --source {source}`",
                            inst.writes
                                .iter()
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    ),
                    Ok(Some(Some(inst))) => {
                        match drift::compare(&def, t.capture, Some(&inst)) {
                            Some(d) => (
                                Some(false),
                                format!(
                                    "key ({key}), triggers installed, but the table has changed since: {}; {}",
                                    d.describe(db.dialect()),
                                    drift::fix(source)
                                ),
                            ),
                            None => (Some(true), format!("key ({key}), triggers installed")),
                        }
                    }
                    Ok(Some(None)) => (
                        Some(false),
                        format!("key ({key}), triggers not installed: run `lockstep triggers install --source {source}`"),
                    ),
                    Ok(None) => (None, format!("key ({key}); triggers not checked in this dialect")),
                    Err(e) => (Some(false), e),
                }
            }
        };
        rows.push(Row {
            what: what.clone(),
            target: table.clone(),
            ok,
            detail,
        });
    }
    rows
}

/// For a poll source: the table (or query) with its key and columns, as a scan would
/// read them.
async fn poll_table(source: &str, p: &PollConfig) -> Row {
    let cfg = p.clone();
    let name = source.to_owned();
    let opened = tokio::task::spawn_blocking(move || PollDb::open(&cfg, &name));
    let (ok, detail) = match tokio::time::timeout(Duration::from_secs(10), opened).await {
        Ok(Ok(Ok(db))) => {
            let l = &db.plan.layout;
            let key: Vec<&str> = l.key.iter().map(|&i| l.columns[i].as_str()).collect();
            (
                true,
                format!(
                    "key ({}), {} column(s){}",
                    key.join(", "),
                    l.columns.len(),
                    if p.cursor.is_some() {
                        ", incremental by cursor"
                    } else {
                        ""
                    }
                ),
            )
        }
        Ok(Ok(Err(e))) => (false, e.message),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "no connection within 10s".into()),
    };
    Row {
        what: format!("source {source}"),
        target: p.table.clone(),
        ok: Some(ok),
        detail,
    }
}

fn state_dir(cfg: &Config) -> Row {
    let dir = &cfg.agent.state_dir;
    let probe = dir.join(".lockstep-check");
    let r = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"check"))
        .and_then(|()| std::fs::remove_file(&probe));
    Row {
        what: "state_dir".into(),
        target: dir.display().to_string(),
        ok: Some(r.is_ok()),
        detail: match r {
            Ok(()) => "writable".into(),
            Err(e) => format!("not writable: {e}"),
        },
    }
}

/// A warning for each source with records waiting in its quarantine (or refused events).
fn quarantines(cfg: &Config) -> Vec<Row> {
    use crate::pipeline::resend;
    let state_dir = &cfg.agent.state_dir;
    let mut rows = Vec::new();
    for s in &cfg.sources {
        let path = resend::records_path(state_dir, &s.name);
        let marks = resend::load_marks(state_dir, &s.name).unwrap_or_default();
        let waiting = resend::entry_hashes(&path)
            .iter()
            .filter(|h| !marks.contains_key(h))
            .count();
        let (refused, _) = resend::count_lines(&resend::refused_path(state_dir, &s.name));
        if waiting == 0 && refused == 0 {
            continue;
        }
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        rows.push(Row {
            what: "quarantine".into(),
            target: path.display().to_string(),
            ok: None,
            detail: format!(
                "source {}: {waiting} record(s) waiting, {refused} refused event(s); {bytes} of \
                 {} bytes (quarantine_max_bytes); see `lockstep quarantine list --source {}`",
                s.name, cfg.agent.quarantine_max_bytes, s.name
            ),
        });
    }
    rows
}

fn tail_path(source: &str, pattern: &str) -> Row {
    let what = format!("source {source}");
    let (dir, _) = tail::watch_root(pattern);
    let scan = tail::scan(&[pattern.to_owned()]);
    let found = scan.found;
    let unreadable: Vec<String> = found
        .iter()
        .filter(|f| std::fs::File::open(&f.path).is_err())
        .map(|f| f.path.display().to_string())
        .collect();
    let (ok, detail) = if !dir.is_dir() {
        (
            Some(false),
            format!("directory {} does not exist", dir.display()),
        )
    } else if let Some((d, e)) = scan.unlisted.first() {
        (Some(false), format!("cannot list {}: {e}", d.display()))
    } else if !unreadable.is_empty() {
        (
            Some(false),
            format!("cannot read {}", unreadable.join(", ")),
        )
    } else if found.is_empty() && !pattern.contains(['*', '?', '[']) {
        (Some(false), "file does not exist".into())
    } else if found.is_empty() {
        (
            None,
            "no file matches yet; files are picked up when they appear".into(),
        )
    } else {
        (Some(true), format!("{} file(s)", found.len()))
    };
    Row {
        what,
        target: pattern.to_owned(),
        ok,
        detail,
    }
}

fn print(out: &mut impl Write, rows: &[Row]) {
    let w1 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .min(60);
    for r in rows {
        let status = match r.ok {
            Some(true) => "ok",
            Some(false) => "FAIL",
            None => "warn",
        };
        // A driver's message may quote a connection string.
        let line = format!(
            "{:<w1$}  {:<w2$}  {:<4}  {}",
            r.what, r.target, status, r.detail
        );
        let _ = writeln!(out, "{}", redact(&line));
    }
}
