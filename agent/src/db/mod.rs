//! Database connections, the ground floor every part that talks to a database uses.
//!
//! [`postgres`]: PostgreSQL connection strings as libpq reads them (`sslmode`,
//! `sslrootcert`) and the one function that opens every PostgreSQL connection, with TLS
//! by [`pg_tls`].

pub mod pg_tls;
pub mod postgres;
