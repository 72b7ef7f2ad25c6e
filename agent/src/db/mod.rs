//! Database connections, the ground floor every part that talks to a database uses.
//!
//! [`error`]: [`DbError`] and its [`ErrorKind`], which decides what happens next.
//! [`dialect`]: each database's quoting, a table's definition from its catalog, and
//! the names of lockstep's triggers.
//!
//! [`postgres`]: PostgreSQL connection strings as libpq reads them (`sslmode`,
//! `sslrootcert`) and the one function that opens every PostgreSQL connection, with TLS
//! by [`pg_tls`].

pub mod dialect;
pub mod error;
pub mod pg_tls;
pub mod postgres;

pub use dialect::{trigger_name, Dialect, TableDef};
pub use error::{DbError, ErrorKind};
