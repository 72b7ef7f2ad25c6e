//! `lockstep triggers show|install|uninstall --source NAME`.

use std::io::Write;

use crate::config::Config;
use crate::source::trigger::admin::AdminDb;
use crate::source::trigger::ddl;

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
    let mut db = AdminDb::open(t).await.map_err(fail)?;
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
            let _ = writeln!(
                out,
                "source {}: removed the capture triggers of {} table(s) and {}",
                s.name,
                defs.len(),
                ddl::CAPTURE_TABLE
            );
        }
        TriggersCommand::Show | TriggersCommand::Install => {
            let mut defs = Vec::with_capacity(t.tables.len());
            for name in &t.tables {
                defs.push(db.table_def(name).await.map_err(fail)?);
            }
            let stmts = ddl::install(d, &defs, t.capture);
            if matches!(command, TriggersCommand::Show) {
                let _ = write!(out, "{}", ddl::script(d, &stmts));
                return Ok(());
            }
            db.apply(&stmts).await.map_err(fail)?;
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
