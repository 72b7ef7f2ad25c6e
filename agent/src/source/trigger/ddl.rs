//! The DDL of trigger capture: the capture table `lockstep_changes` and the triggers
//! that fill it, in each database's dialect.
//!
//! Every dialect records the same thing: one row per changed row, with the table name,
//! the op (`c`, `u`, `d`), the key as a JSON object (`pk`), with `capture = "rows"` the
//! before and after images as JSON, the time, and the origin marker of the session that
//! made the change (NULL for ordinary sessions). An update that changes the key is
//! recorded as a delete of the old key and an insert of the new one.
//!
//! The origin marker, per dialect: PostgreSQL `SET lockstep.origin = '…'`; MariaDB/MySQL
//! `SET @lockstep_origin = '…'`; SQL Server `sp_set_session_context 'lockstep.origin'`;
//! Oracle `DBMS_SESSION.SET_CONTEXT('CLIENTCONTEXT', 'lockstep_origin', '…')`; DB2 the
//! client application name (`CURRENT CLIENT_APPLNAME`) when it starts with `lockstep`.
//! SQLite has no session state a trigger can read: its origin is always NULL.
//!
//! On PostgreSQL the trigger functions keep the search_path of the session that installed
//! them (`SET search_path FROM CURRENT`), so changes made by sessions with any other
//! search_path still land in the same capture table.
//!
//! Statements are generated in the order they must run; each `install` statement is
//! idempotent (create-if-missing, or replace for triggers), so running `install` again
//! upgrades the triggers to the table's current columns — without a moment in which a
//! table has no trigger (see [`create_triggers`]), so no change made meanwhile is lost.

use std::fmt::Write as _;

pub use crate::config::Capture;
pub use crate::db::dialect::{lit, trigger_name, Dialect, TableDef};

/// The capture table's name in every dialect.
pub const CAPTURE_TABLE: &str = "lockstep_changes";

/// The condition that selects the capture rows of `tables` (`tbl IN ('a', 'b')`): a
/// source reads and deletes only these, so that sources sharing one capture table never
/// touch each other's rows. The names are compared exactly as the triggers write them:
/// as configured (the same literal), schema-qualified or not, in the same case — also
/// where the column's collation ignores case (MariaDB's and SQL Server's defaults), since
/// `Orders` and `orders` may be two tables, captured by two sources.
pub fn own_rows(d: Dialect, tables: &[String]) -> String {
    let list: Vec<String> = tables.iter().map(|t| lit(t)).collect();
    let tbl = d.ident("tbl");
    let tbl = match d {
        Dialect::MariaDb => format!("CAST({tbl} AS BINARY)"),
        Dialect::SqlServer => format!("{tbl} COLLATE Latin1_General_BIN2"),
        _ => tbl,
    };
    format!("{tbl} IN ({})", list.join(", "))
}

/// One statement, and whether it is a compound block (a body with its own `;`s) that
/// a command-line client needs a different terminator for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub compound: bool,
}

fn simple(sql: String) -> Statement {
    Statement {
        sql,
        compound: false,
    }
}

fn compound(sql: String) -> Statement {
    Statement {
        sql,
        compound: true,
    }
}

/// Statements that create the capture table (and, on PostgreSQL, its trigger function
/// and the statement-level NOTIFY).
pub fn create_capture_table(d: Dialect) -> Vec<Statement> {
    let t = d.ident(CAPTURE_TABLE);
    match d {
        Dialect::Postgres => vec![
            simple(format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    seq bigserial PRIMARY KEY,\n    tbl text NOT NULL,\n    op char(1) NOT NULL,\n    pk json NOT NULL,\n    before json,\n    after json,\n    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),\n    origin text\n)"
            )),
            compound(format!(
                "CREATE OR REPLACE FUNCTION lockstep_capture() RETURNS trigger LANGUAGE plpgsql\n\
                 SET search_path FROM CURRENT AS $lockstep$\n\
                 DECLARE\n\
                 \x20   rows boolean := TG_ARGV[0] = 'rows';\n\
                 \x20   tbl text := TG_ARGV[1];\n\
                 \x20   origin text := NULLIF(current_setting('lockstep.origin', true), '');\n\
                 \x20   old_pk json;\n\
                 \x20   new_pk json;\n\
                 BEGIN\n\
                 \x20   IF TG_OP <> 'INSERT' THEN\n\
                 \x20       old_pk := (SELECT json_object_agg(k, row_to_json(OLD) -> k) FROM unnest(TG_ARGV[2:]) AS k);\n\
                 \x20   END IF;\n\
                 \x20   IF TG_OP <> 'DELETE' THEN\n\
                 \x20       new_pk := (SELECT json_object_agg(k, row_to_json(NEW) -> k) FROM unnest(TG_ARGV[2:]) AS k);\n\
                 \x20   END IF;\n\
                 \x20   IF TG_OP = 'INSERT' THEN\n\
                 \x20       INSERT INTO {t} (tbl, op, pk, after, origin)\n\
                 \x20       VALUES (tbl, 'c', new_pk, CASE WHEN rows THEN row_to_json(NEW) END, origin);\n\
                 \x20   ELSIF TG_OP = 'DELETE' THEN\n\
                 \x20       INSERT INTO {t} (tbl, op, pk, before, origin)\n\
                 \x20       VALUES (tbl, 'd', old_pk, CASE WHEN rows THEN row_to_json(OLD) END, origin);\n\
                 \x20   ELSIF old_pk::text IS DISTINCT FROM new_pk::text THEN\n\
                 \x20       INSERT INTO {t} (tbl, op, pk, before, origin)\n\
                 \x20       VALUES (tbl, 'd', old_pk, CASE WHEN rows THEN row_to_json(OLD) END, origin);\n\
                 \x20       INSERT INTO {t} (tbl, op, pk, after, origin)\n\
                 \x20       VALUES (tbl, 'c', new_pk, CASE WHEN rows THEN row_to_json(NEW) END, origin);\n\
                 \x20   ELSE\n\
                 \x20       INSERT INTO {t} (tbl, op, pk, before, after, origin)\n\
                 \x20       VALUES (tbl, 'u', new_pk, CASE WHEN rows THEN row_to_json(OLD) END, CASE WHEN rows THEN row_to_json(NEW) END, origin);\n\
                 \x20   END IF;\n\
                 \x20   RETURN NULL;\n\
                 END\n\
                 $lockstep$"
            )),
            compound(
                "CREATE OR REPLACE FUNCTION lockstep_notify() RETURNS trigger LANGUAGE plpgsql\n\
                 SET search_path FROM CURRENT AS $lockstep$\n\
                 BEGIN\n\
                 \x20   PERFORM pg_notify('lockstep_changes', '');\n\
                 \x20   RETURN NULL;\n\
                 END\n\
                 $lockstep$"
                    .to_owned(),
            ),
            // Made only when missing: dropping it again would lock the capture table
            // before the captured tables, the opposite order of a writer's (its table,
            // then the capture table through the trigger), and deadlock with it.
            compound(format!(
                "DO $lockstep$\n\
                 BEGIN\n\
                 \x20   IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = {lt}::regclass AND tgname = 'lockstep_notify') THEN\n\
                 \x20       CREATE TRIGGER lockstep_notify AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION lockstep_notify();\n\
                 \x20   END IF;\n\
                 END\n\
                 $lockstep$",
                lt = lit(&t)
            )),
        ],
        Dialect::MariaDb => vec![simple(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    `seq` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,\n    `tbl` VARCHAR(128) NOT NULL,\n    `op` CHAR(1) NOT NULL,\n    `pk` LONGTEXT NOT NULL,\n    `before` LONGTEXT NULL,\n    `after` LONGTEXT NULL,\n    `changed_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n    `origin` VARCHAR(64) NULL\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ))],
        Dialect::Sqlite => vec![simple(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    \"seq\" INTEGER PRIMARY KEY AUTOINCREMENT,\n    \"tbl\" TEXT NOT NULL,\n    \"op\" TEXT NOT NULL,\n    \"pk\" TEXT NOT NULL,\n    \"before\" TEXT,\n    \"after\" TEXT,\n    \"changed_at\" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),\n    \"origin\" TEXT\n)"
        ))],
        Dialect::SqlServer => vec![compound(format!(
            "IF OBJECT_ID(N'{CAPTURE_TABLE}', N'U') IS NULL\nCREATE TABLE {t} (\n    [seq] BIGINT IDENTITY(1,1) NOT NULL PRIMARY KEY,\n    [tbl] NVARCHAR(128) NOT NULL,\n    [op] CHAR(1) NOT NULL,\n    [pk] NVARCHAR(MAX) NOT NULL,\n    [before] NVARCHAR(MAX) NULL,\n    [after] NVARCHAR(MAX) NULL,\n    [changed_at] DATETIME2(6) NOT NULL DEFAULT SYSUTCDATETIME(),\n    [origin] NVARCHAR(64) NULL\n)"
        ))],
        Dialect::Oracle => vec![compound(format!(
            "DECLARE\n    n NUMBER;\nBEGIN\n    SELECT COUNT(*) INTO n FROM user_tables WHERE table_name = '{CAPTURE_TABLE}';\n    IF n = 0 THEN\n        EXECUTE IMMEDIATE 'CREATE TABLE {t} (\n            \"seq\" NUMBER(19) GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n            \"tbl\" VARCHAR2(128) NOT NULL,\n            \"op\" CHAR(1) NOT NULL,\n            \"pk\" CLOB NOT NULL,\n            \"before\" CLOB,\n            \"after\" CLOB,\n            \"changed_at\" TIMESTAMP(6) DEFAULT SYSTIMESTAMP NOT NULL,\n            \"origin\" VARCHAR2(64)\n        )';\n    END IF;\nEND;"
        ))],
        Dialect::Db2 => vec![simple(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    \"seq\" BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    \"tbl\" VARCHAR(128) NOT NULL,\n    \"op\" CHAR(1) NOT NULL,\n    \"pk\" CLOB(1M) NOT NULL,\n    \"before\" CLOB(16M),\n    \"after\" CLOB(16M),\n    \"changed_at\" TIMESTAMP(6) NOT NULL DEFAULT CURRENT TIMESTAMP,\n    \"origin\" VARCHAR(64)\n)"
        ))],
    }
}

/// Statements that drop the capture table (and PostgreSQL's functions).
pub fn drop_capture_table(d: Dialect) -> Vec<Statement> {
    let t = d.ident(CAPTURE_TABLE);
    match d {
        Dialect::Postgres => vec![
            simple(format!("DROP TABLE IF EXISTS {t}")),
            simple("DROP FUNCTION IF EXISTS lockstep_notify()".into()),
            simple("DROP FUNCTION IF EXISTS lockstep_capture()".into()),
        ],
        Dialect::SqlServer => vec![simple(format!(
            "IF OBJECT_ID(N'{CAPTURE_TABLE}', N'U') IS NOT NULL DROP TABLE {t}"
        ))],
        Dialect::Oracle => vec![compound(format!(
            "BEGIN\n    EXECUTE IMMEDIATE 'DROP TABLE {t}';\nEXCEPTION\n    WHEN OTHERS THEN IF SQLCODE <> -942 THEN RAISE; END IF;\nEND;"
        ))],
        _ => vec![simple(format!("DROP TABLE IF EXISTS {t}"))],
    }
}

/// A JSON object of `cols` of the row `row` (`NEW`/`OLD` or a table alias), in the
/// dialect's JSON function. Binary columns are written as hex text: the JSON functions
/// would otherwise put raw bytes in a JSON string (MariaDB) or refuse them (SQLite).
pub(crate) fn json_object(d: Dialect, row: &str, cols: &[String], binary: &[String]) -> String {
    json_object_utc(d, row, cols, binary, &[])
}

/// [`json_object`], with the `utc` columns (MariaDB `TIMESTAMP`) converted from the
/// session's time zone to UTC.
pub(crate) fn json_object_utc(
    d: Dialect,
    row: &str,
    cols: &[String],
    binary: &[String],
    utc: &[String],
) -> String {
    let pairs: Vec<String> = cols
        .iter()
        .map(|c| {
            let mut v = format!("{row}.{}", d.ident(c));
            let bin = binary.contains(c);
            v = match d {
                // The stored instant itself, as UTC: `CONVERT_TZ` from the session's
                // zone picks the wrong one of the hour a DST change repeats (a key
                // recorded an hour off), and makes the zero date NULL.
                Dialect::MariaDb if utc.contains(c) => format!(
                    "IF(COALESCE(UNIX_TIMESTAMP({v}), 0) = 0, {v}, DATE_ADD(TIMESTAMP'1970-01-01 00:00:00', INTERVAL UNIX_TIMESTAMP({v}) SECOND))"
                ),
                // json_object refuses BLOBs (and the write that fired the trigger with
                // it); SQLite's columns hold any type, so every column is checked.
                Dialect::Sqlite => {
                    format!("CASE WHEN typeof({v}) = 'blob' THEN hex({v}) ELSE {v} END")
                }
                Dialect::MariaDb | Dialect::Db2 if bin => format!("HEX({v})"),
                Dialect::SqlServer if bin => format!("CONVERT(varchar(max), {v}, 2)"),
                Dialect::Oracle if bin => format!("RAWTOHEX({v})"),
                _ => v,
            };
            match d {
                Dialect::Oracle => format!("{} VALUE {v}", lit(c)),
                Dialect::Db2 => format!("KEY {} VALUE {v}", lit(c)),
                _ => format!("{}, {v}", lit(c)),
            }
        })
        .collect();
    match d {
        Dialect::Sqlite => format!("json_object({})", pairs.join(", ")),
        Dialect::Oracle => format!("JSON_OBJECT({} NULL ON NULL)", pairs.join(", ")),
        Dialect::Db2 => format!("JSON_OBJECT({} NULL ON NULL)", pairs.join(", ")),
        _ => format!("JSON_OBJECT({})", pairs.join(", ")),
    }
}

/// Statements that (re)create the triggers of one table. Replacing them leaves no moment
/// without a trigger: MariaDB, SQL Server, Oracle and DB2 replace each in place (`CREATE
/// OR REPLACE` / `CREATE OR ALTER`); PostgreSQL and SQLite drop and create inside the
/// one transaction `install` runs in (their DDL is transactional).
pub fn create_triggers(d: Dialect, t: &TableDef, capture: Capture) -> Vec<Statement> {
    let mut out = match d {
        Dialect::MariaDb => Vec::new(),
        _ => drop_triggers(d, t),
    };
    let tbl = d.table(&t.name);
    let ct = d.ident(CAPTURE_TABLE);
    let name = lit(&t.name);
    let rows = capture == Capture::Rows;
    match d {
        Dialect::Postgres => {
            let args: Vec<String> = [if rows { "rows" } else { "keys" }, &t.name]
                .into_iter()
                .chain(t.key.iter().map(String::as_str))
                .map(lit)
                .collect();
            out.push(simple(format!(
                "CREATE TRIGGER lockstep_capture AFTER INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE FUNCTION lockstep_capture({})",
                args.join(", ")
            )));
        }
        Dialect::MariaDb | Dialect::Sqlite => {
            let origin = if d == Dialect::MariaDb {
                "@lockstep_origin"
            } else {
                "NULL"
            };
            let img = |row: &str| {
                if rows {
                    json_object_utc(d, row, &t.columns, &t.binary, &t.utc)
                } else {
                    "NULL".to_owned()
                }
            };
            let ins = |op: &str, row: &str, image_col: &str| {
                format!(
                    "INSERT INTO {ct} ({}, {}, {}, {}, {}) VALUES ({name}, '{op}', {}, {}, {origin})",
                    d.ident("tbl"),
                    d.ident("op"),
                    d.ident("pk"),
                    d.ident(image_col),
                    d.ident("origin"),
                    json_object_utc(d, row, &t.key, &t.binary, &t.utc),
                    img(row)
                )
            };
            let upd = format!(
                "INSERT INTO {ct} ({}, {}, {}, {}, {}, {}) VALUES ({name}, 'u', {}, {}, {}, {origin})",
                d.ident("tbl"),
                d.ident("op"),
                d.ident("pk"),
                d.ident("before"),
                d.ident("after"),
                d.ident("origin"),
                json_object_utc(d, "NEW", &t.key, &t.binary, &t.utc),
                img("OLD"),
                img("NEW")
            );
            let same_key = t
                .key
                .iter()
                .map(|k| {
                    let (o, n) = (format!("OLD.{}", d.ident(k)), format!("NEW.{}", d.ident(k)));
                    // Byte for byte: under a case-insensitive collation `abc` and
                    // `ABC` are equal, and a key changed only in case would be an
                    // update of the new key, leaving the old one in every replica.
                    if d == Dialect::MariaDb {
                        format!("CAST({o} AS BINARY) <=> CAST({n} AS BINARY)")
                    } else {
                        format!("{o} IS {n} COLLATE BINARY")
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            let trig = |suffix: &str| d.ident(&trigger_name(&t.name, suffix));
            if d == Dialect::MariaDb {
                out.push(simple(format!(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {tbl} FOR EACH ROW\n{}",
                    trig("ins"),
                    ins("c", "NEW", "after")
                )));
                out.push(compound(format!(
                    "CREATE OR REPLACE TRIGGER {} AFTER UPDATE ON {tbl} FOR EACH ROW\nBEGIN\n    IF {same_key} THEN\n        {upd};\n    ELSE\n        {};\n        {};\n    END IF;\nEND",
                    trig("upd"),
                    ins("d", "OLD", "before"),
                    ins("c", "NEW", "after")
                )));
                out.push(simple(format!(
                    "CREATE OR REPLACE TRIGGER {} AFTER DELETE ON {tbl} FOR EACH ROW\n{}",
                    trig("del"),
                    ins("d", "OLD", "before")
                )));
            } else {
                out.push(compound(format!(
                    "CREATE TRIGGER {} AFTER INSERT ON {tbl} BEGIN\n    {};\nEND",
                    trig("ins"),
                    ins("c", "NEW", "after")
                )));
                out.push(compound(format!(
                    "CREATE TRIGGER {} AFTER UPDATE ON {tbl} WHEN {same_key} BEGIN\n    {upd};\nEND",
                    trig("upd")
                )));
                out.push(compound(format!(
                    "CREATE TRIGGER {} AFTER UPDATE ON {tbl} WHEN NOT ({same_key}) BEGIN\n    {};\n    {};\nEND",
                    trig("updk"),
                    ins("d", "OLD", "before"),
                    ins("c", "NEW", "after")
                )));
                out.push(compound(format!(
                    "CREATE TRIGGER {} AFTER DELETE ON {tbl} BEGIN\n    {};\nEND",
                    trig("del"),
                    ins("d", "OLD", "before")
                )));
            }
        }
        Dialect::SqlServer => out.push(sqlserver_trigger(t, rows)),
        Dialect::Oracle => out.push(oracle_trigger(t, rows)),
        Dialect::Db2 => out.extend(db2_triggers(t, rows)),
    }
    out
}

fn sqlserver_trigger(t: &TableDef, rows: bool) -> Statement {
    let d = Dialect::SqlServer;
    let ct = d.ident(CAPTURE_TABLE);
    let join = t
        .key
        .iter()
        .map(|k| format!("i.{0} = d.{0}", d.ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let k0 = d.ident(&t.key[0]);
    // Per row: the key and images as JSON, built with FOR JSON from the joined row.
    let obj = |alias: &str, cols: &[String]| {
        let sel = cols
            .iter()
            .map(|c| format!("{alias}.{} AS {}", d.ident(c), d.ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("(SELECT {sel} FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES)")
    };
    let img = |alias: &str| {
        if rows {
            format!(
                "CASE WHEN {alias}.{k0} IS NULL THEN NULL ELSE {} END",
                obj(alias, &t.columns)
            )
        } else {
            "NULL".to_owned()
        }
    };
    compound(format!(
        "CREATE OR ALTER TRIGGER {} ON {} AFTER INSERT, UPDATE, DELETE AS\nBEGIN\n    SET NOCOUNT ON;\n    INSERT INTO {ct} ([tbl], [op], [pk], [before], [after], [origin])\n    SELECT {},\n           CASE WHEN d.{k0} IS NULL THEN 'c' WHEN i.{k0} IS NULL THEN 'd' ELSE 'u' END,\n           CASE WHEN i.{k0} IS NULL THEN {} ELSE {} END,\n           {},\n           {},\n           CAST(SESSION_CONTEXT(N'lockstep.origin') AS NVARCHAR(64))\n    FROM inserted i FULL OUTER JOIN deleted d ON {join};\nEND",
        d.ident(&trigger_name(&t.name, "")),
        d.table(&t.name),
        lit(&t.name).replacen('\'', "N'", 1),
        obj("d", &t.key),
        obj("i", &t.key),
        img("d"),
        img("i"),
    ))
}

fn oracle_trigger(t: &TableDef, rows: bool) -> Statement {
    let d = Dialect::Oracle;
    let ct = d.ident(CAPTURE_TABLE);
    let img = |row: &str| {
        if rows {
            json_object(d, row, &t.columns, &t.binary)
        } else {
            "NULL".to_owned()
        }
    };
    let same_key = t
        .key
        .iter()
        .map(|k| {
            let k = d.ident(k);
            format!("(:OLD.{k} = :NEW.{k} OR (:OLD.{k} IS NULL AND :NEW.{k} IS NULL))")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let ins = |op: &str, row: &str, col: &str| {
        format!(
            "INSERT INTO {ct} (\"tbl\", \"op\", \"pk\", \"{col}\", \"origin\") VALUES ({}, '{op}', {}, {}, origin)",
            lit(&t.name),
            json_object(d, row, &t.key, &t.binary),
            img(row)
        )
    };
    compound(format!(
        "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW\nDECLARE\n    origin VARCHAR2(64) := SYS_CONTEXT('CLIENTCONTEXT', 'lockstep_origin');\nBEGIN\n    IF INSERTING THEN\n        {};\n    ELSIF DELETING THEN\n        {};\n    ELSIF {same_key} THEN\n        INSERT INTO {ct} (\"tbl\", \"op\", \"pk\", \"before\", \"after\", \"origin\") VALUES ({}, 'u', {}, {}, {}, origin);\n    ELSE\n        {};\n        {};\n    END IF;\nEND;",
        d.ident(&trigger_name(&t.name, "")),
        d.table(&t.name),
        ins("c", ":NEW", "after"),
        ins("d", ":OLD", "before"),
        lit(&t.name),
        json_object(d, ":NEW", &t.key, &t.binary),
        img(":OLD"),
        img(":NEW"),
        ins("d", ":OLD", "before"),
        ins("c", ":NEW", "after"),
    ))
}

fn db2_triggers(t: &TableDef, rows: bool) -> Vec<Statement> {
    let d = Dialect::Db2;
    let ct = d.ident(CAPTURE_TABLE);
    let tbl = d.table(&t.name);
    let origin =
        "CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END";
    let img = |row: &str| {
        if rows {
            json_object(d, row, &t.columns, &t.binary)
        } else {
            "CAST(NULL AS CLOB)".to_owned()
        }
    };
    let ins = |op: &str, row: &str, col: &str| {
        format!(
            "INSERT INTO {ct} (\"tbl\", \"op\", \"pk\", \"{col}\", \"origin\") VALUES ({}, '{op}', {}, {}, {origin})",
            lit(&t.name),
            json_object(d, row, &t.key, &t.binary),
            img(row)
        )
    };
    let same_key = t
        .key
        .iter()
        .map(|k| {
            let k = d.ident(k);
            format!("O.{k} IS NOT DISTINCT FROM N.{k}")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let trig = |s: &str| d.ident(&trigger_name(&t.name, s));
    vec![
        simple(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {tbl} REFERENCING NEW AS N FOR EACH ROW\n{}",
            trig("ins"),
            ins("c", "N", "after")
        )),
        compound(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER UPDATE ON {tbl} REFERENCING OLD AS O NEW AS N FOR EACH ROW\nBEGIN ATOMIC\n    IF {same_key} THEN\n        INSERT INTO {ct} (\"tbl\", \"op\", \"pk\", \"before\", \"after\", \"origin\") VALUES ({}, 'u', {}, {}, {}, {origin});\n    ELSE\n        {};\n        {};\n    END IF;\nEND",
            trig("upd"),
            lit(&t.name),
            json_object(d, "N", &t.key, &t.binary),
            img("O"),
            img("N"),
            ins("d", "O", "before"),
            ins("c", "N", "after"),
        )),
        simple(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER DELETE ON {tbl} REFERENCING OLD AS O FOR EACH ROW\n{}",
            trig("del"),
            ins("d", "O", "before")
        )),
    ]
}

/// Statements that drop one table's triggers (none fail when they are missing).
pub fn drop_triggers(d: Dialect, t: &TableDef) -> Vec<Statement> {
    match d {
        Dialect::Postgres => vec![simple(format!(
            "DROP TRIGGER IF EXISTS lockstep_capture ON {}",
            d.table(&t.name)
        ))],
        Dialect::MariaDb | Dialect::Sqlite => {
            let suffixes: &[&str] = if d == Dialect::Sqlite {
                &["ins", "upd", "updk", "del"]
            } else {
                &["ins", "upd", "del"]
            };
            suffixes
                .iter()
                .map(|s| {
                    simple(format!(
                        "DROP TRIGGER IF EXISTS {}",
                        d.ident(&trigger_name(&t.name, s))
                    ))
                })
                .collect()
        }
        // CREATE OR ALTER / CREATE OR REPLACE replace in place; uninstall drops.
        Dialect::SqlServer | Dialect::Oracle | Dialect::Db2 => Vec::new(),
    }
}

/// Statements that remove one table's triggers for `uninstall`.
pub fn uninstall_triggers(d: Dialect, t: &TableDef) -> Vec<Statement> {
    let drop_named = |names: &[String]| -> Vec<Statement> {
        names
            .iter()
            .map(|n| match d {
                Dialect::SqlServer => simple(format!(
                    "IF OBJECT_ID(N'{n}', N'TR') IS NOT NULL DROP TRIGGER {}",
                    d.ident(n)
                )),
                Dialect::Oracle => compound(format!(
                    "BEGIN\n    EXECUTE IMMEDIATE 'DROP TRIGGER {}';\nEXCEPTION\n    WHEN OTHERS THEN IF SQLCODE <> -4080 THEN RAISE; END IF;\nEND;",
                    d.ident(n)
                )),
                _ => simple(format!("DROP TRIGGER IF EXISTS {}", d.ident(n))),
            })
            .collect()
    };
    match d {
        Dialect::SqlServer | Dialect::Oracle => drop_named(&[trigger_name(&t.name, "")]),
        Dialect::Db2 => drop_named(&["ins", "upd", "del"].map(|s| trigger_name(&t.name, s))),
        _ => drop_triggers(d, t),
    }
}

/// How long `install` waits for a table's lock before it gives up.
pub const LOCK_WAIT_SECS: u32 = 10;

/// Everything `install` runs, in order.
///
/// It waits at most [`LOCK_WAIT_SECS`] for a table's lock (PostgreSQL, MariaDB): replacing
/// a trigger needs the table to itself for a moment, and while it waits for a long
/// transaction to end, every other write to the table queues behind it. Better to fail
/// and be run again than to stall the application.
pub fn install(d: Dialect, tables: &[TableDef], capture: Capture) -> Vec<Statement> {
    let mut out = match d {
        Dialect::Postgres => vec![simple(format!(
            "SET LOCAL lock_timeout = '{LOCK_WAIT_SECS}s'"
        ))],
        Dialect::MariaDb => vec![simple(format!(
            "SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"
        ))],
        _ => Vec::new(),
    };
    out.extend(create_capture_table(d));
    for t in tables {
        out.extend(create_triggers(d, t, capture));
    }
    out
}

/// What `uninstall` runs first: the triggers of these tables (one source's). The capture
/// table is shared by every source on the database, so it is dropped after them (with
/// [`drop_capture_table`]) only when [`capture_triggers_left`] counts none.
pub fn uninstall(d: Dialect, tables: &[TableDef]) -> Vec<Statement> {
    tables
        .iter()
        .flat_map(|t| uninstall_triggers(d, t))
        .collect()
}

/// A query counting the capture tables (0 or 1) in the schema the connection uses.
pub fn capture_table_exists(d: Dialect) -> String {
    let name = lit(CAPTURE_TABLE);
    match d {
        Dialect::Postgres => format!(
            "SELECT count(*) FROM (SELECT to_regclass({}) AS t) x WHERE t IS NOT NULL",
            lit(&d.ident(CAPTURE_TABLE))
        ),
        Dialect::MariaDb => format!(
            "SELECT count(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {name}"
        ),
        Dialect::Sqlite => {
            format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = {name}")
        }
        Dialect::SqlServer => format!("SELECT count(*) FROM sys.tables WHERE name = {name}"),
        Dialect::Oracle => format!("SELECT count(*) FROM user_tables WHERE table_name = {name}"),
        Dialect::Db2 => format!(
            "SELECT count(*) FROM SYSCAT.TABLES WHERE TABSCHEMA = CURRENT SCHEMA AND TABNAME = {name}"
        ),
    }
}

/// A query counting the capture triggers still on any table of the database (of any
/// source, this config's or another's): lockstep's triggers are known by their names,
/// `lockstep_…` (on PostgreSQL, by their function `lockstep_capture()` of the capture
/// table's schema, since each is named `lockstep_capture`).
pub fn capture_triggers_left(d: Dialect) -> String {
    let like = "LIKE 'lockstep!_%' ESCAPE '!'";
    match d {
        Dialect::Postgres => "SELECT count(*) FROM pg_trigger \
             WHERE tgfoid = to_regproc('lockstep_capture') AND NOT tgisinternal"
            .to_owned(),
        Dialect::MariaDb => format!(
            "SELECT count(*) FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME {like}"
        ),
        Dialect::Sqlite => {
            format!("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name {like}")
        }
        Dialect::SqlServer => {
            format!("SELECT count(*) FROM sys.triggers WHERE parent_class = 1 AND name {like}")
        }
        Dialect::Oracle => format!("SELECT count(*) FROM user_triggers WHERE trigger_name {like}"),
        Dialect::Db2 => format!(
            "SELECT count(*) FROM SYSCAT.TRIGGERS WHERE TRIGSCHEMA = CURRENT SCHEMA AND TRIGNAME {like}"
        ),
    }
}

/// `install`'s statements as a script for the database's own command-line client (what
/// `triggers show` prints): in one transaction where DDL is transactional, so that run
/// by hand it replaces the triggers as atomically as `install` does.
pub fn install_script(d: Dialect, stmts: &[Statement]) -> String {
    match d {
        Dialect::Postgres => format!("BEGIN;\n\n{}COMMIT;\n", script(d, stmts)),
        Dialect::Sqlite => format!("BEGIN IMMEDIATE;\n\n{}COMMIT;\n", script(d, stmts)),
        _ => script(d, stmts),
    }
}

/// Statements as a script for the database's own command-line client: `;` after each, `DELIMITER` around MariaDB compound
/// statements, `/` after Oracle blocks, `GO` after SQL Server batches, `@` as DB2's
/// terminator for compound ones.
pub fn script(d: Dialect, stmts: &[Statement]) -> String {
    let mut s = String::new();
    for st in stmts {
        match (d, st.compound) {
            (Dialect::MariaDb, true) => {
                let _ = write!(s, "DELIMITER $$\n{}$$\nDELIMITER ;\n\n", st.sql);
            }
            (Dialect::SqlServer, _) => {
                let _ = write!(s, "{}\nGO\n\n", st.sql);
            }
            (Dialect::Oracle, true) => {
                let _ = write!(s, "{}\n/\n\n", st.sql);
            }
            (Dialect::Db2, true) => {
                let _ = write!(
                    s,
                    "--#SET TERMINATOR @\n{}@\n--#SET TERMINATOR ;\n\n",
                    st.sql
                );
            }
            _ => {
                let _ = write!(s, "{};\n\n", st.sql);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;
