//! The test harness: a throwaway nats-server ([`nats`]), the real `lockstep` binary and
//! the world it runs in ([`agent`]), the databases and their workloads ([`db`]), and whole
//! captured runs replayed against the tables ([`replay`]).

mod agent;
mod db;
mod nats;
mod replay;

pub use agent::*;
pub use db::*;
pub use nats::*;
pub use replay::*;
