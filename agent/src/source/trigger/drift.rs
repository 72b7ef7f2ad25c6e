//! Schema drift: a captured table changed (`ALTER TABLE`) after its capture triggers were
//! installed, so what the triggers record no longer matches the table.
//!
//! What each dialect does (checked by `tests/e2e/schema_drift.rs`):
//!
//! - **PostgreSQL**: the trigger records `row_to_json` of the row, which follows the
//!   table's columns: an added column is captured, a dropped one is gone, writes never
//!   fail. Only the key columns (the trigger's arguments) and the capture mode are named.
//! - **MariaDB**: a trigger can only build JSON from named columns (`JSON_OBJECT`, no
//!   dynamic SQL in triggers). With `capture = "rows"`, after `DROP COLUMN` every insert,
//!   update and delete of the table fails (`Unknown column 'x' in 'NEW'`): the
//!   application's own writes break; after `ADD COLUMN` the new column is not captured.
//!   With `capture = "keys"` the triggers name only the key columns, so a non-key column
//!   may be dropped or added freely (the agent reads the row itself).
//! - **SQLite**: the same naming; but `ALTER TABLE … DROP COLUMN` of a column a trigger
//!   names is refused (`error in trigger …: no such column`), writes go on; `RENAME
//!   COLUMN` rewrites the trigger's reference but not the JSON key, so the value is
//!   recorded under the old name; `ADD COLUMN` is not captured.
//! - SQL Server, Oracle, DB2 (generated, no server at hand): their triggers name the
//!   columns too; drift is not checked there.
//!
//! The check reads back what the installed triggers record — from the trigger bodies
//! (MariaDB, SQLite: the keys of their `JSON_OBJECT`s) or the trigger's arguments
//! (PostgreSQL) — and compares it with the catalog. The agent does so at start and every
//! `schema_check`, `lockstep check` and `lockstep triggers show` each time they run.

use super::ddl::{lit, Capture, Dialect, TableDef};

/// What the installed capture triggers of one table record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The table names written into the capture table's `tbl`.
    pub writes: Vec<String>,
    /// The columns of the key (`pk`).
    pub key: Vec<String>,
    /// The columns of the before/after images.
    pub image: Image,
    /// Triggers whose bodies could not be read (MariaDB without the TRIGGER
    /// privilege): what they record is not known, so nothing is compared.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Image {
    /// No images (`capture = "keys"`).
    #[default]
    None,
    /// The whole row, whatever its columns (PostgreSQL's `row_to_json`).
    All,
    /// These columns.
    Columns(Vec<String>),
}

/// Whether drift is checked in this dialect.
pub fn checked(d: Dialect) -> bool {
    matches!(d, Dialect::Postgres | Dialect::MariaDb | Dialect::Sqlite)
}

/// A query for lockstep's triggers on `table` (`name` or `schema.name`) through ODBC:
/// each trigger's name and what it records: its body (MariaDB, SQLite; NULL where the
/// user may not read it), or its arguments (PostgreSQL, NUL bytes as `\000`). The
/// table's own schema is searched (MariaDB's `EVENT_OBJECT_SCHEMA`, SQLite's
/// `aux.sqlite_master`), the connection's default one when the name has none.
pub fn triggers_sql(d: Dialect, table: &str) -> Option<String> {
    let (schema, name) = match table.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, table),
    };
    let name_lit = lit(name);
    match d {
        Dialect::MariaDb => Some(format!(
            "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = {} AND EVENT_OBJECT_TABLE = {name_lit} \
             AND TRIGGER_NAME LIKE 'lockstep!_%' ESCAPE '!'",
            schema.map_or_else(|| "DATABASE()".to_owned(), lit)
        )),
        Dialect::Sqlite => Some(format!(
            "SELECT name, sql FROM {}sqlite_master WHERE type = 'trigger' \
             AND tbl_name = {name_lit} AND name LIKE 'lockstep!_%' ESCAPE '!'",
            schema.map_or_else(String::new, |s| format!("{}.", d.ident(s)))
        )),
        Dialect::Postgres => Some(format!(
            "SELECT tgname::text, encode(tgargs, 'escape') FROM pg_trigger \
             WHERE tgrelid = to_regclass({}) AND tgname = 'lockstep_capture'",
            lit(table)
        )),
        _ => None,
    }
}

/// What the rows of [`triggers_sql`] say (`None`: no trigger).
pub fn from_trigger_rows(d: Dialect, rows: &[Vec<Option<String>>]) -> Option<Installed> {
    if rows.is_empty() {
        return None;
    }
    let cell = |r: &Vec<Option<String>>, i: usize| r.get(i).cloned().flatten();
    if d == Dialect::Postgres {
        let args = cell(&rows[0], 1).unwrap_or_default();
        return Some(Installed::from_pg_args(&unescape_bytea(&args)));
    }
    let bodies: Vec<String> = rows.iter().filter_map(|r| cell(r, 1)).collect();
    let unreadable: Vec<String> = rows
        .iter()
        .filter(|r| cell(r, 1).is_none())
        .map(|r| cell(r, 0).unwrap_or_default())
        .collect();
    let mut inst = Installed::from_bodies(&bodies).unwrap_or_default();
    inst.unreadable = unreadable;
    Some(inst)
}

/// PostgreSQL's `encode(…, 'escape')`: `\\` is a backslash, `\nnn` an octal byte.
fn unescape_bytea(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            let oct = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = oct {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The warning for triggers whose bodies cannot be read, or `None`.
pub fn unreadable_warning(d: Dialect, table: &str, inst: &Installed) -> Option<String> {
    if inst.unreadable.is_empty() {
        return None;
    }
    let grant = match d {
        Dialect::MariaDb => format!(
            " (grant it: `GRANT TRIGGER ON {} TO <the agent's user>`)",
            if table.contains('.') {
                table.to_owned()
            } else {
                format!("<database>.{table}")
            }
        ),
        _ => String::new(),
    };
    Some(format!(
        "cannot read the bodies of the capture triggers of `{table}` ({}): the user lacks the \
         TRIGGER privilege{grant}, so schema drift of this table is not checked",
        inst.unreadable.join(", ")
    ))
}

impl Installed {
    /// From the bodies of a table's triggers (MariaDB, SQLite); `None` when there are
    /// none. Each `INSERT … VALUES (tbl, op, <key object>, <image objects>…, origin)`
    /// gives the table name, the key's columns and the images' columns.
    pub fn from_bodies<S: AsRef<str>>(bodies: &[S]) -> Option<Installed> {
        if bodies.is_empty() {
            return None;
        }
        let mut out = Installed::default();
        let mut image: Option<Vec<String>> = None;
        for body in bodies {
            let body = body.as_ref();
            let upper = body.to_ascii_uppercase();
            let mut from = 0;
            while let Some(at) = upper[from..].find("VALUES") {
                let start = from + at + "VALUES".len();
                from = start;
                let rest = body[start..].trim_start();
                let Some(inner) = rest.strip_prefix('(') else {
                    continue;
                };
                let args = split_args(inner);
                if let Some(t) = args.first().and_then(|a| literal(a)) {
                    if !out.writes.contains(&t) {
                        out.writes.push(t);
                    }
                }
                let objects: Vec<Vec<String>> =
                    args.iter().skip(1).filter_map(|a| json_keys(a)).collect();
                let mut objects = objects.into_iter();
                if let Some(key) = objects.next() {
                    if out.key.is_empty() {
                        out.key = key;
                    }
                }
                for cols in objects {
                    let all = image.get_or_insert_with(Vec::new);
                    for c in cols {
                        if !all.contains(&c) {
                            all.push(c);
                        }
                    }
                }
            }
        }
        out.image = image.map_or(Image::None, Image::Columns);
        Some(out)
    }

    /// From a PostgreSQL trigger's arguments (`tgargs`: NUL-separated capture mode,
    /// table name, key columns).
    pub fn from_pg_args(args: &[u8]) -> Installed {
        let mut parts = args
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let mode = parts.next().unwrap_or_default();
        let writes: Vec<String> = parts.next().into_iter().collect();
        Installed {
            writes,
            key: parts.collect(),
            image: if mode == "rows" {
                Image::All
            } else {
                Image::None
            },
            unreadable: Vec::new(),
        }
    }
}

/// The top-level arguments of a call or tuple whose `(` was just passed, up to its `)`.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                // A doubled quote is one quote inside the literal or identifier.
                if chars.peek().is_some_and(|&(_, n)| n == q) {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '[' => quote = Some(']'),
            '(' => depth += 1,
            ')' if depth == 0 => {
                out.push(&s[start..i]);
                return out;
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    // Not closed: not a list this parser knows.
    Vec::new()
}

/// A string literal (`'a''b'` → `a'b`), or `None`.
fn literal(arg: &str) -> Option<String> {
    let inner = arg.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let unescaped = inner.replace("''", "'");
    // A lone quote inside means this was not one literal (`'a', 'b'`).
    (unescaped.matches('\'').count() * 2 == inner.matches('\'').count()).then_some(unescaped)
}

/// The keys of a `json_object('k', v, …)` argument, or `None` when it is not one.
fn json_keys(arg: &str) -> Option<Vec<String>> {
    let a = arg.trim();
    let open = a.find('(')?;
    if !a[..open].trim().eq_ignore_ascii_case("json_object") {
        return None;
    }
    let args = split_args(&a[open + 1..]);
    // Oracle and DB2 write each pair as one argument, `'k' VALUE v` / `KEY 'k' VALUE v`;
    // the others `'k', v`.
    let pairs = args.iter().any(|x| x.contains(" VALUE "));
    Some(
        args.iter()
            .step_by(if pairs { 1 } else { 2 })
            .filter_map(|k| {
                let k = k.trim();
                let k = k.strip_prefix("KEY ").unwrap_or(k);
                literal(k.split(" VALUE ").next().unwrap_or(k))
            })
            .collect(),
    )
}

/// How the installed triggers of a table differ from the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub table: String,
    /// No capture trigger on the table.
    pub missing: bool,
    /// Columns of the table the triggers do not record.
    pub not_captured: Vec<String>,
    /// Columns the triggers name that the table no longer has.
    pub gone: Vec<String>,
    /// The key the triggers record, when it is not the table's primary key.
    pub key: Option<Vec<String>>,
    /// The capture mode the triggers were installed with, when it is not the source's.
    pub mode: Option<Capture>,
}

/// Compares a table as the catalog has it now with what its triggers record (`None`:
/// no trigger); `None` when they agree.
pub fn compare(def: &TableDef, capture: Capture, installed: Option<&Installed>) -> Option<Drift> {
    let mut d = Drift {
        table: def.name.clone(),
        ..Drift::default()
    };
    let Some(inst) = installed else {
        d.missing = true;
        return Some(d);
    };
    if !inst.unreadable.is_empty() {
        // Not known: a warning (`unreadable_warning`), not drift.
        return None;
    }
    let same_set = |a: &[String], b: &[String]| {
        a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
    };
    if !same_set(&inst.key, &def.key) {
        d.key = Some(inst.key.clone());
    }
    let mut named: Vec<&String> = inst.key.iter().collect();
    match (&inst.image, capture) {
        (Image::None, Capture::Rows) => d.mode = Some(Capture::Keys),
        (Image::All | Image::Columns(_), Capture::Keys) => d.mode = Some(Capture::Rows),
        _ => {}
    }
    if let Image::Columns(cols) = &inst.image {
        named.extend(cols);
        if capture == Capture::Rows {
            d.not_captured = def
                .columns
                .iter()
                .filter(|c| !cols.contains(c))
                .cloned()
                .collect();
        }
    }
    for c in named {
        if !def.columns.contains(c) && !d.gone.contains(c) {
            d.gone.push(c.clone());
        }
    }
    let agree =
        d.key.is_none() && d.mode.is_none() && d.not_captured.is_empty() && d.gone.is_empty();
    (!agree).then_some(d)
}

fn names(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Drift {
    /// What is wrong and what it does, for the operator (without the fix).
    pub fn describe(&self, d: Dialect) -> String {
        if self.missing {
            return "it has no capture trigger: its changes are not captured (was the table \
                    dropped and made again, or rebuilt by a migration tool?)"
                .into();
        }
        let mut parts = Vec::new();
        if !self.gone.is_empty() {
            parts.push(match d {
                Dialect::Postgres => format!(
                    "the trigger records key column(s) {} that the table no longer has (renamed \
                     or dropped?): writes go on, but their changes are captured with a null key",
                    names(&self.gone)
                ),
                Dialect::Sqlite => format!(
                    "the triggers name column(s) {} that the table no longer has (renamed? \
                     their values are recorded under the old name)",
                    names(&self.gone)
                ),
                _ => format!(
                    "the triggers name column(s) {} that the table no longer has: every insert, \
                     update and delete of the table FAILS until they are replaced",
                    names(&self.gone)
                ),
            });
        }
        if !self.not_captured.is_empty() {
            parts.push(format!(
                "column(s) {} are not captured",
                names(&self.not_captured)
            ));
        }
        if let Some(k) = &self.key {
            parts.push(format!(
                "the triggers record the key ({}), which is not the table's primary key",
                names(k)
            ));
        }
        if let Some(m) = self.mode {
            let (was, is) = match m {
                Capture::Keys => ("keys", "rows"),
                Capture::Rows => ("rows", "keys"),
            };
            parts.push(format!(
                "the triggers were installed with capture = \"{was}\" and the source has capture = \"{is}\""
            ));
        }
        parts.join("; ")
    }
}

/// The fix, for the operator.
pub fn fix(source: &str) -> String {
    format!(
        "run `lockstep triggers install --source {source}` (it replaces the triggers without a moment uncaptured)"
    )
}

#[cfg(test)]
mod tests {
    use super::super::ddl::{create_triggers, install, Capture, Dialect, TableDef};
    use super::*;

    fn table() -> TableDef {
        TableDef {
            name: "appointments".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "clinic".into(), "fee".into(), "at".into()],
            binary: vec!["clinic".into()],
            timestamps: vec!["at".into()],
            utc: vec!["at".into()],
        }
    }

    fn bodies(d: Dialect, t: &TableDef, c: Capture) -> Vec<String> {
        create_triggers(d, t, c)
            .into_iter()
            .map(|s| s.sql)
            .filter(|s| s.starts_with("CREATE"))
            .collect()
    }

    #[test]
    fn what_generated_triggers_record_is_read_back_in_every_dialect() {
        let t = table();
        for d in [
            Dialect::MariaDb,
            Dialect::Sqlite,
            Dialect::Oracle,
            Dialect::Db2,
        ] {
            let rows = Installed::from_bodies(&bodies(d, &t, Capture::Rows)).unwrap();
            assert_eq!(rows.writes, ["appointments"], "{d:?}");
            assert_eq!(rows.key, ["id"], "{d:?}");
            assert_eq!(rows.image, Image::Columns(t.columns.clone()), "{d:?}");
            assert_eq!(compare(&t, Capture::Rows, Some(&rows)), None, "{d:?}");
            let keys = Installed::from_bodies(&bodies(d, &t, Capture::Keys)).unwrap();
            assert_eq!(
                (keys.key.as_slice(), &keys.image),
                (&["id".to_owned()][..], &Image::None)
            );
            assert_eq!(compare(&t, Capture::Keys, Some(&keys)), None, "{d:?}");
        }
        assert_eq!(Installed::from_bodies::<&str>(&[]), None);
        // Only the triggers, not the capture table's DDL.
        let all: Vec<String> = install(Dialect::MariaDb, std::slice::from_ref(&t), Capture::Rows)
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            Installed::from_bodies(&all).unwrap().image,
            Image::Columns(t.columns.clone())
        );
    }

    #[test]
    fn added_dropped_and_renamed_columns_are_drift() {
        let t = table();
        let inst = Installed::from_bodies(&bodies(Dialect::MariaDb, &t, Capture::Rows)).unwrap();
        let mut now = t.clone();
        now.columns.retain(|c| c != "fee");
        now.columns.push("priority".into());
        let d = compare(&now, Capture::Rows, Some(&inst)).unwrap();
        assert_eq!(d.gone, ["fee"]);
        assert_eq!(d.not_captured, ["priority"]);
        let text = d.describe(Dialect::MariaDb);
        assert!(text.contains("name column(s) `fee` that the table no longer has: every insert, update and delete of the table FAILS"), "{text}");
        assert!(
            text.contains("column(s) `priority` are not captured"),
            "{text}"
        );
        // Keys mode: a non-key column comes and goes freely.
        let keys = Installed::from_bodies(&bodies(Dialect::MariaDb, &t, Capture::Keys)).unwrap();
        assert_eq!(compare(&now, Capture::Keys, Some(&keys)), None);
        // ... but not the key.
        let mut rekeyed = now.clone();
        rekeyed.key = vec!["clinic".into()];
        let d = compare(&rekeyed, Capture::Keys, Some(&keys)).unwrap();
        assert_eq!(d.key, Some(vec!["id".to_owned()]));
        // The mode, and a table without triggers.
        let d = compare(&t, Capture::Rows, Some(&keys)).unwrap();
        assert_eq!(d.mode, Some(Capture::Keys));
        assert!(d.describe(Dialect::Sqlite).contains("capture = \"keys\""));
        assert!(compare(&t, Capture::Keys, None).unwrap().missing);
    }

    #[test]
    fn a_sqlite_rename_keeps_the_old_key_in_the_body() {
        // What SQLite leaves after `ALTER TABLE appointments RENAME COLUMN fee TO price`.
        let body = r#"CREATE TRIGGER "lockstep_appointments_ins" AFTER INSERT ON "appointments" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', NEW."id", 'fee', CASE WHEN typeof(NEW."price") = 'blob' THEN hex(NEW."price") ELSE NEW."price" END), NULL);
END"#;
        let inst = Installed::from_bodies(&[body]).unwrap();
        assert_eq!(inst.image, Image::Columns(vec!["id".into(), "fee".into()]));
        let now = TableDef {
            columns: vec!["id".into(), "price".into()],
            ..table()
        };
        let d = compare(&now, Capture::Rows, Some(&inst)).unwrap();
        assert_eq!(
            (d.gone, d.not_captured),
            (vec!["fee".into()], vec!["price".into()])
        );
    }

    #[test]
    fn postgres_arguments_and_odd_text() {
        let inst = Installed::from_pg_args(b"rows\0s.appointments\0day\0clinic\0");
        assert_eq!(inst.writes, ["s.appointments"]);
        assert_eq!(inst.key, ["day", "clinic"]);
        assert_eq!(inst.image, Image::All);
        let t = TableDef {
            key: vec!["clinic".into(), "day".into()],
            columns: vec!["day".into(), "clinic".into(), "n".into()],
            ..table()
        };
        assert_eq!(compare(&t, Capture::Rows, Some(&inst)), None);
        assert_eq!(
            compare(&t, Capture::Keys, Some(&inst)).unwrap().mode,
            Some(Capture::Rows)
        );
        // Text that is not what lockstep writes is read without a panic.
        for junk in [
            "VALUES",
            "VALUES (",
            "VALUES ('a",
            "VALUES (json_object(')",
            "values ('x''y', 1)",
        ] {
            let _ = Installed::from_bodies(&[junk]);
        }
        assert_eq!(
            Installed::from_bodies(&["values ('x''y', 'c', JSON_OBJECT('a,b', NEW.`a,b`))"])
                .unwrap(),
            Installed {
                writes: vec!["x'y".into()],
                key: vec!["a,b".into()],
                image: Image::None,
                unreadable: Vec::new(),
            }
        );
    }

    #[test]
    fn triggers_are_looked_up_in_the_tables_own_schema() {
        let sql = triggers_sql(Dialect::MariaDb, "clinic_db.appointments").unwrap();
        assert!(
            sql.contains(
                "EVENT_OBJECT_SCHEMA = 'clinic_db' AND EVENT_OBJECT_TABLE = 'appointments'"
            ),
            "{sql}"
        );
        assert!(!sql.contains("TRIGGER_SCHEMA"), "{sql}");
        let sql = triggers_sql(Dialect::MariaDb, "appointments").unwrap();
        assert!(sql.contains("EVENT_OBJECT_SCHEMA = DATABASE()"), "{sql}");
        let sql = triggers_sql(Dialect::Sqlite, "aux.appointments").unwrap();
        assert!(
            sql.contains("FROM \"aux\".sqlite_master") && sql.contains("tbl_name = 'appointments'"),
            "{sql}"
        );
        assert!(triggers_sql(Dialect::Sqlite, "appointments")
            .unwrap()
            .contains("FROM sqlite_master"));
        assert!(triggers_sql(Dialect::Postgres, "s.appointments")
            .unwrap()
            .contains("to_regclass('s.appointments')"));
        assert_eq!(triggers_sql(Dialect::SqlServer, "appointments"), None);
    }

    #[test]
    fn trigger_rows_unreadable_bodies_and_postgres_arguments() {
        let t = table();
        // MariaDB without the TRIGGER privilege: names, no bodies. Not "missing".
        let rows = vec![
            vec![Some("lockstep_appointments_ins".to_owned()), None],
            vec![Some("lockstep_appointments_upd".to_owned()), None],
        ];
        let inst = from_trigger_rows(Dialect::MariaDb, &rows).unwrap();
        assert_eq!(compare(&t, Capture::Rows, Some(&inst)), None);
        let w = unreadable_warning(Dialect::MariaDb, "appointments", &inst).unwrap();
        assert!(
            w.contains("lockstep_appointments_ins, lockstep_appointments_upd")
                && w.contains("GRANT TRIGGER ON <database>.appointments"),
            "{w}"
        );
        assert_eq!(from_trigger_rows(Dialect::MariaDb, &[]), None);
        // Readable bodies are compared as before.
        let rows: Vec<Vec<Option<String>>> = bodies(Dialect::MariaDb, &t, Capture::Rows)
            .into_iter()
            .map(|b| vec![Some("x".to_owned()), Some(b)])
            .collect();
        let inst = from_trigger_rows(Dialect::MariaDb, &rows).unwrap();
        assert_eq!(
            unreadable_warning(Dialect::MariaDb, "appointments", &inst),
            None
        );
        assert_eq!(compare(&t, Capture::Rows, Some(&inst)), None);
        // PostgreSQL over ODBC: `encode(tgargs, 'escape')`.
        let rows = vec![vec![
            Some("lockstep_capture".to_owned()),
            Some("rows\\000appointments\\000id\\000".to_owned()),
        ]];
        let inst = from_trigger_rows(Dialect::Postgres, &rows).unwrap();
        assert_eq!(
            (inst.writes, inst.key, inst.image),
            (vec!["appointments".into()], vec!["id".into()], Image::All)
        );
        assert_eq!(unescape_bytea("a\\\\b\\000"), b"a\\b\0");
    }

    #[test]
    fn a_renamed_key_column_on_postgres_is_a_null_key_not_failing_writes() {
        let t = table();
        let inst = Installed::from_pg_args(b"keys\0appointments\0appt_id\0");
        let d = compare(&t, Capture::Keys, Some(&inst)).unwrap();
        assert_eq!(d.gone, ["appt_id"]);
        let text = d.describe(Dialect::Postgres);
        assert!(
            text.contains("writes go on, but their changes are captured with a null key"),
            "{text}"
        );
        assert!(!text.contains("FAILS"), "{text}");
    }
}
