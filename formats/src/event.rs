//! The change event (SPEC §4): one per changed row or record.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::Record;

/// What happened to the row: Debezium's `c`, `u`, `d` and `r` (snapshot read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }

    /// Parses a Debezium op code (`c`, `u`, `d`, `r`).
    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "r" => Some(Op::Read),
            _ => None,
        }
    }
}

/// Where an event came from. The `Arc<str>` fields are shared by every event of a source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub agent: Arc<str>,
    pub name: Arc<str>,
    pub kind: Arc<str>,
    pub table: Arc<str>,
    /// The source's position of this change; with agent and name it makes the message id.
    pub position: String,
    /// When the change happened at the source, as far as the source knows (ms since epoch).
    pub ts_ms: i64,
    pub snapshot: bool,
}

/// One normalized change: Debezium-compatible on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub op: Op,
    /// The key fields; `None` when the source has no key (sent as `null`).
    pub key: Option<Record>,
    pub before: Option<Record>,
    pub after: Option<Record>,
    pub source: SourceInfo,
    /// When lockstep captured the change (ms since epoch).
    pub ts_ms: i64,
}
