//! `lockstep triggers show|install|uninstall --source NAME`.

use std::io::Write;

use crate::config::Config;
use crate::source::trigger::setup::SetupDb;
use crate::source::trigger::{ddl, drift};

use super::TriggersCommand;

/// Runs the command; the error is the message for the operator.
pub async fn run(
    cfg: &Config,
    source: Option<&str>,
    command: &TriggersCommand,
    out: &mut impl Write,
) -> Result<(), String> {
    let (s, t) = super::trigger_source(cfg, source, "triggers")?;
    let fail = |e: String| format!("source `{}`: {e}", s.name);
    let mut db = SetupDb::open(t).await.map_err(fail)?;
    let d = db.dialect();
    match command {
        TriggersCommand::Uninstall => {
            let defs: Vec<ddl::TableDef> = t
                .tables
                .iter()
                .map(|name| ddl::TableDef {
                    name: name.clone(),
                    ..ddl::TableDef::default()
                })
                .collect();
            db.apply(&ddl::uninstall(d, &defs)).await.map_err(fail)?;
            let removed = format!(
                "source {}: removed the capture triggers of {} table(s)",
                s.name,
                defs.len()
            );
            let _ = writeln!(
                out,
                "{}",
                uninstall_capture_table(&mut db, d, &t.tables, &removed)
                    .await
                    .map_err(fail)?
            );
        }
        TriggersCommand::Show | TriggersCommand::Install => {
            let mut defs = Vec::with_capacity(t.tables.len());
            for name in &t.tables {
                defs.push(db.table_def(name).await.map_err(fail)?);
            }
            let stmts = ddl::install(d, &defs, t.capture);
            if matches!(command, TriggersCommand::Show) {
                let _ = write!(out, "{}", drift_notes(&db, &s.name, t.capture, &defs).await);
                let _ = write!(out, "{}", ddl::install_script(d, &stmts));
                return Ok(());
            }
            db.apply(&stmts).await.map_err(|e| {
                let lock = ["lock timeout", "Lock wait timeout"];
                if lock.iter().any(|l| e.contains(l)) {
                    fail(format!(
                        "{e} (a transaction held a table's lock for more than {} s; the \
                         triggers of the tables not yet reached are unchanged and still \
                         capture: run install again once it has ended)",
                        ddl::LOCK_WAIT_SECS
                    ))
                } else {
                    fail(e)
                }
            })?;
            let _ = writeln!(
                out,
                "source {}: {} and capture triggers installed on {}",
                s.name,
                ddl::CAPTURE_TABLE,
                defs.iter()
                    .map(|d| format!("{} (key {})", d.name, d.key.join(", ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// For `show`: each table whose installed triggers no longer match it (an `ALTER TABLE`
/// since they were installed), as SQL comments, with the fix. A table with no trigger
/// at all is not named (before the first install none has one).
async fn drift_notes(
    db: &SetupDb,
    source: &str,
    capture: ddl::Capture,
    defs: &[ddl::TableDef],
) -> String {
    let mut notes = String::new();
    for def in defs {
        let Ok(Some(Some(installed))) = db.installed(&def.name).await else {
            continue;
        };
        if let Some(d) = drift::compare(def, capture, Some(&installed)) {
            notes.push_str(&format!(
                "-- DRIFT: table `{}` has changed since its capture triggers were installed: {}.\n",
                def.name,
                d.describe(db.dialect())
            ));
        }
    }
    if !notes.is_empty() {
        notes.push_str(&format!(
            "-- The fix: {}; or run this script, which does the same.\n\n",
            drift::fix(source)
        ));
    }
    notes
}

/// After a source's triggers are gone: drops the capture table when no capture trigger of
/// any source is left on the database and it holds no row still to be sent; otherwise
/// keeps it and says why. Returns the report.
async fn uninstall_capture_table(
    db: &mut SetupDb,
    d: ddl::Dialect,
    tables: &[String],
    removed: &str,
) -> Result<String, String> {
    let ct = ddl::CAPTURE_TABLE;
    let left = db
        .count(
            &ddl::capture_triggers_left(d),
            "count the capture triggers left",
        )
        .await?;
    let rows = |filter: Option<String>| {
        format!(
            "SELECT count(*) FROM {}{}",
            d.ident(ct),
            filter.map_or(String::new(), |f| format!(" WHERE {f}"))
        )
    };
    let what = "count the rows of the capture table";
    if left > 0 {
        let own = rows(Some(ddl::own_rows(d, tables)));
        let own = db.count(&own, what).await.unwrap_or(0);
        let mut report = format!(
            "{removed}; {ct} is kept: {left} capture trigger(s) of other sources still write to it"
        );
        if own > 0 {
            report.push_str(&format!(
                "; {own} change(s) of these tables are still in it, sent while the agent runs this source"
            ));
        }
        return Ok(report);
    }
    let exists = ddl::capture_table_exists(d);
    if db.count(&exists, "look for the capture table").await? == 0 {
        return Ok(format!("{removed}; {ct} was gone already"));
    }
    // A count that fails keeps the table: it may hold changes not yet sent.
    let waiting = db.count(&rows(None), what).await?;
    if waiting > 0 {
        return Ok(format!(
            "{removed}; {ct} is kept: it still holds {waiting} change(s) not yet sent \
             (run the agent until they are sent, then uninstall again; or delete them from {ct} \
             if they are not wanted)"
        ));
    }
    db.apply(&ddl::drop_capture_table(d)).await?;
    Ok(format!("{removed} and {ct}"))
}
