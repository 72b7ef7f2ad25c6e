//! Database errors, with a kind that decides what happens next.
//!
//! Every database user (the trigger and poll sources today) turns the driver's error
//! into a [`DbError`] here, worded for the operator and classified once:
//!
//! | kind | what happened | what the caller does |
//! |---|---|---|
//! | [`ErrorKind::Unreachable`] | the connection was refused, lost or closed | reconnect with backoff |
//! | [`ErrorKind::Transient`] | deadlock, lock or statement timeout, serialization failure, server busy | retry now |
//! | [`ErrorKind::Constraint`] | a unique, check, not-null or foreign key constraint | set the record aside |
//! | [`ErrorKind::Conversion`] | a value that does not fit its column | set the record aside |
//! | [`ErrorKind::NotConfigured`] | a missing table, column, key or trigger | stop the source with a message |
//! | [`ErrorKind::Permission`] | the account may not do it | stop the source with a message |
//! | [`ErrorKind::Query`] | anything else | retry with backoff |
//!
//! The kind comes from the SQLSTATE (ODBC diagnostics, PostgreSQL's error codes are
//! SQLSTATEs too), then from drivers' native codes where the SQLSTATE is the catch-all
//! `HY000` (MariaDB's lock wait timeout and deadlock, SQLite's busy and locked).

use std::fmt;

/// What a database error means for what happens next (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Unreachable,
    Transient,
    Constraint,
    Conversion,
    NotConfigured,
    Permission,
    Query,
}

/// A database error, already worded for the operator, and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DbError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> DbError {
        DbError {
            kind,
            message: message.into(),
        }
    }

    /// An error of no particular kind (a query that failed, an answer lockstep cannot
    /// read).
    pub fn query(message: impl Into<String>) -> DbError {
        DbError::new(ErrorKind::Query, message)
    }

    /// A missing table, column, key or trigger: the operator must act.
    pub fn not_configured(message: impl Into<String>) -> DbError {
        DbError::new(ErrorKind::NotConfigured, message)
    }

    /// An ODBC error, prefixed with what was being done.
    pub fn odbc(what: &str, e: &odbc_api::Error) -> DbError {
        DbError::new(odbc_kind(e), format!("ODBC: {what}: {e}"))
    }

    /// A PostgreSQL error with `message` already worded (see `describe` in the trigger
    /// source): classified by its code, or as unreachable when the connection is gone.
    pub fn postgres(e: &tokio_postgres::Error, message: impl Into<String>) -> DbError {
        DbError::new(postgres_kind(e), message)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

/// The kind of an ODBC error: by its diagnostic record's SQLSTATE and native code.
pub fn odbc_kind(e: &odbc_api::Error) -> ErrorKind {
    match e {
        odbc_api::Error::Diagnostics { record, .. } => {
            kind_of(record.state.as_str(), Some(record.native_error))
        }
        odbc_api::Error::FailedReadingInput(_) => ErrorKind::Unreachable,
        _ => ErrorKind::Query,
    }
}

/// The kind of a PostgreSQL error: a closed connection or an I/O failure is
/// unreachable; a server error by its SQLSTATE.
pub fn postgres_kind(e: &tokio_postgres::Error) -> ErrorKind {
    if e.is_closed() {
        return ErrorKind::Unreachable;
    }
    match e.code() {
        Some(code) => kind_of(code.code(), None),
        // No server error: the connection, TLS or protocol failed.
        None if std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()) =>
        {
            ErrorKind::Unreachable
        }
        None => ErrorKind::Query,
    }
}

/// The kind of a SQLSTATE, with the driver's native code where the SQLSTATE says
/// nothing more than `HY000` (general error).
pub fn kind_of(sqlstate: &str, native: Option<i32>) -> ErrorKind {
    match sqlstate {
        // Serialization failure, deadlock (PostgreSQL 40P01), lock not available
        // (55P03), query canceled by statement_timeout (57014), out of resources
        // (class 53), and the ODBC timeouts.
        "40001" | "40P01" | "55P03" | "57014" | "HYT00" | "HYT01" => ErrorKind::Transient,
        s if s.starts_with("40") || s.starts_with("53") => ErrorKind::Transient,
        // Connection exceptions; PostgreSQL's admin, crash and cannot-connect-now
        // shutdowns (57P01–57P03).
        s if s.starts_with("08") => ErrorKind::Unreachable,
        "57P01" | "57P02" | "57P03" => ErrorKind::Unreachable,
        // Integrity constraint violations.
        s if s.starts_with("23") => ErrorKind::Constraint,
        // Data exceptions: a value out of range, too long, of the wrong form.
        s if s.starts_with("22") => ErrorKind::Conversion,
        // Undefined table, column, object or function (PostgreSQL 42P01, 42703, 42704,
        // 42883; ODBC 42S02, 42S22).
        "42P01" | "42703" | "42704" | "42883" | "42S02" | "42S22" => ErrorKind::NotConfigured,
        // Insufficient privilege; invalid authorization.
        "42501" => ErrorKind::Permission,
        s if s.starts_with("28") => ErrorKind::Permission,
        "HY000" | "S1000" => match native {
            // MariaDB/MySQL: lock wait timeout, deadlock.
            Some(1205 | 1213) => ErrorKind::Transient,
            // MariaDB/MySQL: server gone away, connection lost, cannot connect.
            Some(2002 | 2003 | 2006 | 2013) => ErrorKind::Unreachable,
            // MariaDB/MySQL: access denied, command denied.
            Some(1044 | 1045 | 1142 | 1143) => ErrorKind::Permission,
            // MariaDB/MySQL: table or column does not exist.
            Some(1146 | 1054) => ErrorKind::NotConfigured,
            // SQLite (its ODBC driver passes the result code): SQLITE_BUSY, SQLITE_LOCKED.
            Some(5 | 6) => ErrorKind::Transient,
            _ => ErrorKind::Query,
        },
        _ => ErrorKind::Query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;

    #[test]
    fn sqlstates_and_native_codes_map_to_their_kinds() {
        let cases: &[(&str, Option<i32>, ErrorKind)] = &[
            ("40001", None, Transient),
            ("40P01", None, Transient),
            ("55P03", None, Transient),
            ("57014", None, Transient),
            ("HYT00", None, Transient),
            ("53300", None, Transient),
            ("08001", None, Unreachable),
            ("08S01", None, Unreachable),
            ("57P01", None, Unreachable),
            ("23505", None, Constraint),
            ("23503", None, Constraint),
            ("23502", None, Constraint),
            ("22003", None, Conversion),
            ("22001", None, Conversion),
            ("22P02", None, Conversion),
            ("42P01", None, NotConfigured),
            ("42S02", None, NotConfigured),
            ("42703", None, NotConfigured),
            ("42501", None, Permission),
            ("28000", None, Permission),
            ("28P01", None, Permission),
            ("HY000", Some(1205), Transient),
            ("HY000", Some(1213), Transient),
            ("HY000", Some(2013), Unreachable),
            ("HY000", Some(1045), Permission),
            ("HY000", Some(1146), NotConfigured),
            ("HY000", Some(5), Transient),
            ("HY000", Some(1), Query),
            ("HY000", None, Query),
            ("42601", None, Query),
            ("", None, Query),
        ];
        for &(state, native, want) in cases {
            assert_eq!(kind_of(state, native), want, "{state} {native:?}");
        }
    }

    #[test]
    fn the_message_is_what_is_shown() {
        let e = DbError::not_configured("cannot poll: table `t` has no primary key");
        assert_eq!(e.to_string(), "cannot poll: table `t` has no primary key");
        assert_eq!(e.kind, NotConfigured);
        assert_eq!(DbError::query("x").kind, Query);
    }
}
