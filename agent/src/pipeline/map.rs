//! Mapping (SPEC §7): what a source's events look like when they leave the host.
//!
//! A source applies its [`Mapping`] to each event as soon as the event is built, before
//! debouncing, encoding, the spool or the quarantine see it:
//!
//! - `drop` removes fields from the key, `before` and `after`: data that must never leave
//!   the host. A source with dropped fields also withholds the raw bytes of the records
//!   it quarantines (see [`crate::pipeline::quarantine`]), since a record that could not
//!   be read cannot have its fields removed.
//! - `values` translates coded values (`A` → `ACTIVE`); a code missing from the table
//!   is kept, made null, or sends the record to the quarantine, by field.
//! - `rename` renames fields, keeping their place.
//! - `add` appends constant fields to `before` and `after`.
//! - `tables` renames tables; the subject follows the new name.
//!
//! Field names in `drop`, `values` and `rename` are the source's own names.

use std::collections::{HashMap, HashSet};

use lockstep_formats::{ChangeEvent, Record, Value};

/// What to do with a coded value that `values` does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Keep,
    Null,
    Quarantine,
}

impl Unknown {
    pub fn from_name(s: &str) -> Option<Unknown> {
        match s {
            "keep" => Some(Unknown::Keep),
            "null" => Some(Unknown::Null),
            "quarantine" => Some(Unknown::Quarantine),
            _ => None,
        }
    }
}

/// One source's mapping; the default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub tables: HashMap<String, String>,
    pub rename: HashMap<String, String>,
    /// Per field: code (as text) → value.
    pub values: HashMap<String, HashMap<String, Value>>,
    /// Per field, for codes not in `values`; fields not listed keep them.
    pub unknown: HashMap<String, Unknown>,
    pub drop: HashSet<String>,
    pub add: Vec<(String, Value)>,
}

impl Mapping {
    /// True when the mapping changes nothing about fields.
    pub fn is_identity(&self) -> bool {
        self.rename.is_empty()
            && self.values.is_empty()
            && self.drop.is_empty()
            && self.add.is_empty()
    }

    /// True when some field never leaves the host.
    pub fn drops_fields(&self) -> bool {
        !self.drop.is_empty()
    }

    /// The name a table's events carry (and their subject is made of).
    pub fn table<'a>(&'a self, table: &'a str) -> &'a str {
        self.tables.get(table).map_or(table, String::as_str)
    }

    /// Maps the fields of `ev`'s key, `before` and `after`. The error is the reason to
    /// quarantine the record, which is then left as it was: a code not in `values` of a
    /// field whose rule is `quarantine`.
    pub fn apply(&self, ev: &mut ChangeEvent) -> Result<(), String> {
        if self.is_identity() {
            return Ok(());
        }
        for rec in [&ev.key, &ev.before, &ev.after].into_iter().flatten() {
            self.check(rec)?;
        }
        if let Some(k) = ev.key.as_mut() {
            // Constants belong to rows, not keys.
            self.fields(k, false);
        }
        for rec in [&mut ev.before, &mut ev.after].into_iter().flatten() {
            self.fields(rec, true);
        }
        Ok(())
    }

    /// Fails on a code that `values` does not list, of a field whose rule is `quarantine`.
    fn check(&self, rec: &Record) -> Result<(), String> {
        for (field, rule) in &self.unknown {
            if *rule != Unknown::Quarantine {
                continue;
            }
            let (Some(v), Some(codes)) = (rec.get(field), self.values.get(field)) else {
                continue;
            };
            if let Some(code) = code_of(v) {
                if !codes.contains_key(&code) {
                    return Err(format!(
                        "field `{field}` has the code `{code}`, which `values` does not list"
                    ));
                }
            }
        }
        Ok(())
    }

    fn fields(&self, rec: &mut Record, add: bool) {
        let fields = std::mem::take(rec);
        let mut out = Record::with_capacity(fields.len() + self.add.len());
        for (name, value) in fields.into_fields() {
            if self.drop.contains(&name) {
                continue;
            }
            let value = match self.values.get(&name) {
                Some(codes) => self.translate(&name, codes, value),
                None => value,
            };
            match self.rename.get(&name) {
                Some(to) => out.push(to.clone(), value),
                None => out.push(name, value),
            }
        }
        if add {
            for (name, value) in &self.add {
                out.push(name.clone(), value.clone());
            }
        }
        *rec = out;
    }

    fn translate(&self, field: &str, codes: &HashMap<String, Value>, value: Value) -> Value {
        let Some(code) = code_of(&value) else {
            return value;
        };
        match codes.get(&code) {
            Some(to) => to.clone(),
            None => match self.unknown.get(field) {
                Some(Unknown::Null) => Value::Null,
                // Keep; quarantine was checked before.
                _ => value,
            },
        }
    }
}

/// A value as a code of `values`: its text; `None` for null and values that are not
/// codes (binary, floats, documents).
fn code_of(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        v => v.as_text().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lockstep_formats::{Op, SourceInfo};

    use super::*;

    fn ev(after: Record) -> ChangeEvent {
        let s: Arc<str> = Arc::from("x");
        ChangeEvent {
            op: Op::Update,
            key: Some([("ID".to_owned(), Value::Int(1))].into_iter().collect()),
            before: None,
            after: Some(after),
            source: SourceInfo {
                agent: s.clone(),
                name: s.clone(),
                kind: s.clone(),
                table: s,
                position: "1".into(),
                ts_ms: 0,
                snapshot: false,
            },
            ts_ms: 0,
        }
    }

    fn row(fields: &[(&str, Value)]) -> Record {
        fields
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect()
    }

    fn mapping() -> Mapping {
        let mut m = Mapping::default();
        m.rename.insert("ID".into(), "id".into());
        m.rename.insert("CODE_STS".into(), "status".into());
        m.values.insert(
            "CODE_STS".into(),
            [("A".to_owned(), Value::Text("ACTIVE".into()))].into(),
        );
        m.values.insert(
            "LVL".into(),
            [("1".to_owned(), Value::Text("LOW".into()))].into(),
        );
        m.unknown.insert("LVL".into(), Unknown::Null);
        m.drop.insert("SSN".into());
        m.add.push(("region".into(), Value::Text("VA-NE".into())));
        m
    }

    #[test]
    fn renames_translates_drops_and_adds_in_place() {
        let m = mapping();
        let mut e = ev(row(&[
            ("ID", Value::Int(1)),
            ("SSN", Value::Text("123-45-6789".into())),
            ("CODE_STS", Value::Text("A".into())),
            ("LVL", Value::Int(1)),
        ]));
        m.apply(&mut e).unwrap();
        let expect = row(&[
            ("id", Value::Int(1)),
            ("status", Value::Text("ACTIVE".into())),
            ("LVL", Value::Text("LOW".into())),
            ("region", Value::Text("VA-NE".into())),
        ]);
        assert_eq!(e.after.unwrap(), expect);
        assert_eq!(e.key.unwrap(), row(&[("id", Value::Int(1))]));
    }

    #[test]
    fn unknown_codes_follow_their_rule() {
        let mut m = mapping();
        let mut e = ev(row(&[
            ("CODE_STS", Value::Text("Q".into())),
            ("LVL", Value::Int(7)),
        ]));
        m.apply(&mut e).unwrap();
        let after = e.after.unwrap();
        assert_eq!(after.get("status"), Some(&Value::Text("Q".into())), "kept");
        assert_eq!(after.get("LVL"), Some(&Value::Null), "made null");

        m.unknown.insert("CODE_STS".into(), Unknown::Quarantine);
        let mut e = ev(row(&[("CODE_STS", Value::Text("Q".into()))]));
        let before = e.clone();
        let err = m.apply(&mut e).unwrap_err();
        assert!(err.contains("`CODE_STS`") && err.contains("`Q`"), "{err}");
        assert_eq!(e, before, "left as it was, for the quarantine");
        // A null is not a code.
        let mut e = ev(row(&[("CODE_STS", Value::Null)]));
        m.apply(&mut e).unwrap();
    }

    #[test]
    fn tables_are_renamed() {
        let mut m = Mapping::default();
        m.tables.insert("PERMIT_TABLE".into(), "permits".into());
        assert_eq!(m.table("PERMIT_TABLE"), "permits");
        assert_eq!(m.table("other"), "other");
        assert!(m.is_identity());
    }
}
