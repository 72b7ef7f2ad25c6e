//! lockstep: a change-data-capture agent for legacy hosts.
//!
//! The pipeline is the architecture: [`source`] reads changes, [`pipeline`] turns them
//! into ordered, encoded messages and tracks their acknowledgements, [`sink`] publishes
//! them to JetStream, [`admin`] reports on all of it. [`config`] is read once at start;
//! [`db`] opens database connections; [`calendar`] is the date arithmetic they share,
//! [`clock`] the wall clock and [`backoff`] the retry delays;
//! [`cli`] and [`runner`] are the edges; [`crash`] holds the crash points the torture
//! suite aims kills at.

pub mod admin;
pub mod backoff;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crash;
pub mod db;
pub mod disk;
pub mod logging;
pub mod pipeline;
pub mod runner;
pub mod service;
pub mod sink;
pub mod source;
pub mod spool;
pub mod stop_signal;
