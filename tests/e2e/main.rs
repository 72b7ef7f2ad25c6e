//! lockstep's end-to-end tests: the real binary, a real nats-server, a real consumer.
//! Build the binary first: `cargo build -p lockstep` (the README's test command does).

mod auth;
mod broker;
mod capture;
mod cli;
mod conn_strings;
mod debounce;
mod descriptors;
mod faults;
mod harness;
mod key_types;
mod keys_outside;
mod pg_tls;
mod poll;
mod quarantine;
mod redaction;
mod refused;
mod rotation;
mod schema_drift;
mod schema_drift_cases;
mod service;
mod snapshot;
mod spool;
mod tail;
mod triggers;
mod upgrade;
