//! SQL dialects: quoting by database, and the definition of a table as its catalog
//! describes it.

use std::fmt::Write as _;

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MariaDb,
    Sqlite,
    SqlServer,
    Oracle,
    Db2,
}

impl Dialect {
    pub const ALL: [Dialect; 6] = [
        Dialect::Postgres,
        Dialect::MariaDb,
        Dialect::Sqlite,
        Dialect::SqlServer,
        Dialect::Oracle,
        Dialect::Db2,
    ];

    /// The config name (`dialect = "…"`).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MariaDb => "mariadb",
            Dialect::Sqlite => "sqlite",
            Dialect::SqlServer => "sqlserver",
            Dialect::Oracle => "oracle",
            Dialect::Db2 => "db2",
        }
    }

    pub fn from_name(s: &str) -> Option<Dialect> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    /// From the DBMS name a driver reports (ODBC `SQL_DBMS_NAME`).
    pub fn from_dbms_name(s: &str) -> Option<Dialect> {
        let s = s.to_ascii_lowercase();
        Some(if s.contains("postgres") {
            Dialect::Postgres
        } else if s.contains("mariadb") || s.contains("mysql") {
            Dialect::MariaDb
        } else if s.contains("sqlite") {
            Dialect::Sqlite
        } else if s.contains("sql server") {
            Dialect::SqlServer
        } else if s.contains("oracle") {
            Dialect::Oracle
        } else if s.contains("db2") {
            Dialect::Db2
        } else {
            return None;
        })
    }

    /// A table name, each dot-separated part quoted (`schema.table`).
    pub fn table(self, name: &str) -> String {
        name.split('.')
            .map(|p| self.ident(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// An identifier, quoted.
    pub fn ident(self, name: &str) -> String {
        match self {
            Dialect::MariaDb => format!("`{}`", name.replace('`', "``")),
            Dialect::SqlServer => format!("[{}]", name.replace(']', "]]")),
            _ => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }
}

/// A string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A captured table as the database describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDef {
    pub name: String,
    pub key: Vec<String>,
    /// Every column, key included, in table order.
    pub columns: Vec<String>,
    /// Binary columns: their JSON values arrive as hex text and are sent as binary.
    pub binary: Vec<String>,
    /// Date and time columns whose JSON text separates date and time with a space
    /// (MariaDB): sent as ISO-8601, with a `T`.
    pub timestamps: Vec<String>,
    /// Columns shown in the session's time zone (MariaDB `TIMESTAMP`): the triggers
    /// record them in UTC, and the agent reads them in a UTC session, so that a key
    /// written in any session's time zone is found again.
    pub utc: Vec<String>,
}

/// A trigger's name: `lockstep_<table>_<suffix>`, safe in every dialect and at most 60
/// characters (longer names end in a hash of the whole).
pub fn trigger_name(table: &str, suffix: &str) -> String {
    let mut n = String::from("lockstep_");
    n.extend(
        table
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    if !suffix.is_empty() {
        n.push('_');
        n.push_str(suffix);
    }
    if n.len() > 60 {
        let h = xxh3_64(n.as_bytes());
        n.truncate(51);
        let _ = write!(n, "_{:08x}", h as u32);
    }
    n
}
