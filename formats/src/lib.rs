//! lockstep's data formats: the change-event model and its JSON wire encoding, and the
//! record formats read from change files.
//!
//! This crate is synchronous and knows nothing of tokio, NATS or ODBC; the agent owns
//! all I/O. Everything that parses outside input here reports the byte offset of what it
//! could not read, so the agent can quarantine it with its position.

pub mod event;
pub mod frame;
pub mod json;
pub mod record;
pub mod value;

pub use event::{ChangeEvent, Op, SourceInfo};
pub use record::{Format, RecordError};
pub use value::{Record, Value};
