//! The tables compared with what their capture triggers record (drift), at connect,
//! every `schema_check`, and when an image's columns differ from the definition.

use std::time::Instant;

use super::drift;
use super::{not_connected, DbError, Drain, Schema, TableDef, TriggerDrift};

impl Drain {
    /// Compares each table with what its capture triggers record (see [`drift`]), takes
    /// its definition as it is now, and reports each change of drift. A table that
    /// cannot be read (dropped, no primary key) is reported the same way and keeps its
    /// last definition; only a failure of the connection is an error.
    pub(super) fn check_schema(&mut self) -> Result<(), DbError> {
        self.schema_at = Some(Instant::now());
        self.cx.beat.beat();
        let Some(db) = self.db.as_mut() else {
            return Err(not_connected(&self.name));
        };
        let Some(mut schema) = db.schema()? else {
            return Ok(());
        };
        self.cx.beat.beat();
        let problems = |schema: &Schema| -> Vec<(String, Option<String>, bool)> {
            let mut out: Vec<(String, Option<String>, bool)> = schema
                .tables
                .iter()
                .map(|(def, installed)| {
                    let d = drift::compare(def, self.cfg.capture, installed.as_ref());
                    let alarm = d.as_ref().is_some_and(|d| d.missing || !d.gone.is_empty());
                    (
                        def.name.clone(),
                        d.map(|d| d.describe(schema.dialect)),
                        alarm,
                    )
                })
                .collect();
            out.extend(
                schema
                    .broken
                    .iter()
                    .map(|(name, why)| (name.clone(), Some(why.clone()), true)),
            );
            out
        };
        let mut found = problems(&schema);
        // A check made while `lockstep triggers install` replaces the triggers can see
        // a moment without them, or old and new bodies mixed: a table newly seen
        // without its triggers, or naming columns gone, is read a second time first.
        let new_alarm = found
            .iter()
            .any(|(t, p, alarm)| *alarm && self.drift.get(t) != p.as_ref());
        if new_alarm {
            if let Some(again) = db.schema()? {
                schema = again;
                found = problems(&schema);
            }
            self.cx.beat.beat();
        }
        let defs: Vec<TableDef> = schema.tables.iter().map(|(d, _)| d.clone()).collect();
        self.set_tables(&defs);
        for (def, installed) in &schema.tables {
            let warning = installed
                .as_ref()
                .and_then(|i| drift::unreadable_warning(schema.dialect, &def.name, i));
            match warning {
                Some(w) if self.unreadable.insert(def.name.clone()) => {
                    tracing::warn!("source {}: {w}", self.name);
                }
                Some(_) => {}
                None => {
                    self.unreadable.remove(&def.name);
                }
            }
        }
        for (table, problem, _) in found {
            TriggerDrift {
                source: &self.name,
                table: &table,
                problem: problem.as_deref(),
                was: self.drift.get(&table).map(String::as_str),
                fix: &drift::fix(&self.name),
            }
            .emit(&self.cx.metrics, &self.cx.status);
            match problem {
                Some(p) => self.drift.insert(table, p),
                None => self.drift.remove(&table),
            };
        }
        Ok(())
    }

    /// An image with `columns` of table `t`, which are not the columns of its
    /// definition (added, dropped or renamed): the table changed (PostgreSQL's
    /// `row_to_json` follows it; elsewhere the triggers were installed again after an
    /// `ALTER TABLE`). Looks at the table again at once, so that a new column is typed
    /// (binary, date-time) from this event on; true when it did. Once per set of
    /// columns, so that triggers that still record the old columns (drift) do not make
    /// it look at every row.
    pub(super) fn table_changed(&mut self, t: usize, columns: &[String]) -> bool {
        let out = &mut self.tables[t];
        if out.knows(|| columns.iter().map(String::as_str), columns.len()) {
            return false;
        }
        out.checked_columns = columns.to_vec();
        match self.check_schema() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "source {}: cannot read the definition of `{}` again: {}",
                    self.name,
                    self.tables[t].def.name,
                    e.message
                );
                // Tried again (and the connection with it) at the next step.
                self.schema_at = None;
                false
            }
        }
    }
}
