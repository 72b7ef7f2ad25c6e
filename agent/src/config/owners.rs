//! Which trigger source owns which table. Sources on one database share its capture
//! table, and each reads only the capture rows of its own tables; so no table may be
//! listed by two sources on the same database (SPEC §5 "Several sources, one database").
//!
//! "The same database" is decided from the connection strings, without connecting: the
//! same PostgreSQL hosts, ports, database and options (a `search_path` in the options
//! names another schema, so another capture table), or the same ODBC keys and values
//! (keys in any case, spaces, order and credentials aside). Two strings that reach one
//! database by different roads (a host name and its address, a DSN and the driver string
//! it stands for) are not recognised as one: `lockstep check` shows every source's
//! tables side by side.

use super::{SourceConfig, SourceKind, TriggerDb};
use crate::db::trigger_name;

/// The database a trigger source connects to, in a form that compares equal for the same
/// target: never printed (it may hold secrets other than the credentials it drops).
pub fn db_target(db: &TriggerDb) -> String {
    match db {
        TriggerDb::Postgres(conn) => {
            let c = conn.config();
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| format!("{h:?}").to_lowercase())
                .collect();
            let ports = if c.get_ports().is_empty() {
                vec![5432]
            } else {
                c.get_ports().to_vec()
            };
            // PostgreSQL's default database is the user's name.
            let dbname = c.get_dbname().or(c.get_user()).unwrap_or_default();
            format!(
                "postgres|{hosts:?}|{ports:?}|{dbname}|{:?}",
                search_path(c.get_options().unwrap_or_default())
            )
        }
        TriggerDb::Odbc(conn) => {
            let mut pairs: Vec<(String, String)> = odbc_parts(conn.expose())
                .into_iter()
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim().to_lowercase(), v.trim().to_owned()),
                    None => (p.trim().to_lowercase(), String::new()),
                })
                .filter(|(k, _)| {
                    !k.is_empty()
                        && !matches!(k.as_str(), "uid" | "user" | "username" | "pwd" | "password")
                })
                .collect();
            pairs.sort();
            pairs.dedup();
            format!("odbc|{pairs:?}")
        }
    }
}

/// The `search_path` a PostgreSQL `options` string sets (`-c search_path=…`,
/// `--search_path=…`), the one option that names another schema and so another capture
/// table; the others (`statement_timeout`, …) leave the database the same.
fn search_path(options: &str) -> Option<String> {
    let mut found = None;
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let setting = match w {
            "-c" => words.next().unwrap_or_default(),
            _ => w
                .strip_prefix("-c")
                .or_else(|| w.strip_prefix("--"))
                .unwrap_or_default(),
        };
        if let Some((k, v)) = setting.split_once('=') {
            if k.replace('-', "_").eq_ignore_ascii_case("search_path") {
                found = Some(v.replace(' ', ""));
            }
        }
    }
    found
}

/// The `key=value` parts of an ODBC connection string: split at `;` outside `{…}`.
fn odbc_parts(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut braced) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '{' => braced = true,
            '}' => braced = false,
            ';' if !braced => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// Whether two entries of `tables` may name the same table: the same name in any case,
/// or the same table name where one of them has no schema (it may be the other's schema
/// through the search path). Both schema-qualified with different schemas: different.
pub fn may_be_same_table(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let split = |t: &str| -> (Option<String>, String) {
        match t.rsplit_once('.') {
            Some((s, n)) => (Some(s.to_lowercase()), n.to_lowercase()),
            None => (None, t.to_lowercase()),
        }
    };
    let ((sa, na), (sb, nb)) = (split(a), split(b));
    na == nb && (sa.is_none() || sb.is_none())
}

/// A trigger source as far as ownership goes.
pub struct Owner<'a> {
    pub source: &'a str,
    pub target: String,
    pub tables: &'a [String],
}

/// The ownership of a source, if it is a trigger source.
pub fn owner(s: &SourceConfig) -> Option<Owner<'_>> {
    match &s.kind {
        SourceKind::Trigger(t) => Some(Owner {
            source: &s.name,
            target: db_target(&t.db),
            tables: &t.tables,
        }),
        _ => None,
    }
}

/// Why `new` may not have its tables next to the sources `before` (on the same
/// database), or `None`.
pub fn conflict(before: &[Owner<'_>], new: &Owner<'_>) -> Option<String> {
    for (i, t) in new.tables.iter().enumerate() {
        if let Some(u) = new.tables[..i].iter().find(|u| may_be_same_table(u, t)) {
            return Some(format!(
                "source `{}`: `tables` lists `{u}` and `{t}`, which name the same table: list it once",
                new.source
            ));
        }
    }
    // Outside PostgreSQL a table's triggers are named after it (`db::trigger_name`);
    // two tables whose names differ only in other characters than letters and digits
    // would share them.
    if new.target.starts_with("odbc|") {
        let same_db = before.iter().filter(|b| b.target == new.target);
        let others: Vec<(&str, &String)> = same_db
            .flat_map(|b| b.tables.iter().map(move |t| (b.source, t)))
            .chain(new.tables.iter().map(|t| (new.source, t)))
            .collect();
        for (i, t) in new.tables.iter().enumerate() {
            let name = trigger_name(t, "");
            let earlier = others.len() - new.tables.len() + i;
            if let Some((source, u)) = others[..earlier]
                .iter()
                .find(|(_, u)| !may_be_same_table(u, t) && trigger_name(u, "") == name)
            {
                return Some(format!(
                    "source `{}`: tables `{t}` and `{u}` (source `{source}`) would need the same \
                     trigger names ({name}_…), which one database cannot hold for both (the \
                     second install fails on MariaDB, and takes the first's triggers away on \
                     SQLite): capture one of them with kind = \"poll\" instead",
                    new.source
                ));
            }
        }
    }
    for b in before.iter().filter(|b| b.target == new.target) {
        for t in new.tables {
            if let Some(u) = b.tables.iter().find(|u| may_be_same_table(u, t)) {
                let same = if u == t {
                    format!("table `{t}`")
                } else {
                    format!("table `{t}` (as `{u}` there)")
                };
                return Some(format!(
                    "source `{}`: {same} is already captured by source `{}` on the same database; \
                     two sources on one database share its capture table and each reads only the \
                     changes of its own tables, so a table belongs to one source: remove it from one \
                     of them (if these are different tables in different schemas, qualify both as \
                     `schema.table`)",
                    new.source, b.source
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn pg(s: &str) -> String {
        db_target(&TriggerDb::Postgres(Box::new(
            crate::db::postgres::PgConn::parse(s).unwrap(),
        )))
    }

    fn odbc(s: &str) -> String {
        db_target(&TriggerDb::Odbc(Secret::for_tests(s)))
    }

    #[test]
    fn the_same_database_however_it_is_written() {
        assert_eq!(
            pg("host=db dbname=vista user=a password=x"),
            pg("dbname=vista  host=DB user=b port=5432")
        );
        assert_ne!(pg("host=db dbname=vista"), pg("host=db dbname=other"));
        assert_ne!(
            pg("host=db dbname=vista options='-c search_path=a'"),
            pg("host=db dbname=vista options='-c search_path=b'")
        );
        // Other options leave it the same database, with the same capture table.
        assert_eq!(
            pg("host=db dbname=vista options='-c search_path=a'"),
            pg("host=db dbname=vista options='-c statement_timeout=5s --search_path=a'")
        );
        assert_eq!(
            pg("host=db dbname=vista"),
            pg("host=db dbname=vista options='-c statement_timeout=5s'")
        );
        assert_eq!(
            odbc("DRIVER={MariaDB Unicode};SERVER=db;DATABASE=vista;UID=a;PWD=x;"),
            odbc("database=vista; Server=db ;driver={MariaDB Unicode};user=b")
        );
        assert_ne!(
            odbc("DRIVER={MariaDB Unicode};SERVER=db;DATABASE=vista"),
            odbc("DRIVER={MariaDB Unicode};SERVER=db;DATABASE=other")
        );
        assert_eq!(odbc_parts("A={x;y};B=2;"), ["A={x;y}", "B=2"]);
    }

    #[test]
    fn tables_whose_triggers_would_share_names() {
        let maria = odbc("DRIVER={MariaDB Unicode};DATABASE=vista");
        let a = ["my-table".to_owned()];
        let b = ["my_table".to_owned(), "other".to_owned()];
        fn owner<'a>(source: &'a str, target: &str, tables: &'a [String]) -> Owner<'a> {
            Owner {
                source,
                target: target.to_owned(),
                tables,
            }
        }
        let before = [owner("a", &maria, &a[..])];
        let e = conflict(&before, &owner("b", &maria, &b[..])).unwrap();
        assert!(
            e.contains("tables `my_table` and `my-table` (source `a`)"),
            "{e}"
        );
        let both = [a[0].clone(), b[0].clone()];
        assert!(conflict(&[], &owner("b", &maria, &both)).is_some());
        // PostgreSQL names every table's trigger `lockstep_capture`: no clash.
        let pg = pg("host=db dbname=vista");
        assert!(conflict(&[owner("a", &pg, &a[..])], &owner("b", &pg, &b[..])).is_none());
    }

    #[test]
    fn tables_that_may_be_one() {
        assert!(may_be_same_table("orders", "ORDERS"));
        assert!(may_be_same_table("orders", "public.orders"));
        assert!(!may_be_same_table("a.orders", "b.orders"));
        assert!(!may_be_same_table("orders", "order_lines"));
    }
}
