//! Database connections, the ground floor every part that talks to a database uses.
//!
//! [`error`]: [`DbError`] and its [`ErrorKind`], which decides what happens next.
//! [`dialect`]: each database's quoting, and a table's definition from its catalog.
//!
//! [`postgres`]: PostgreSQL connection strings as libpq reads them (`sslmode`,
//! `sslrootcert`) and the one function that opens every PostgreSQL connection, with TLS
//! by [`pg_tls`].

pub mod dialect;
pub mod error;
pub mod pg_tls;
pub mod postgres;

pub use dialect::{Dialect, TableDef};
pub use error::{DbError, ErrorKind};
