//! Sinks: where events go. Today there is one, JetStream.
//!
//! The contract every sink keeps (and every consumer can rely on):
//! - It is **at-least-once**. A message may be sent more than once (after a failure, a
//!   crash, a restart); every re-send carries the same `Nats-Msg-Id`, so JetStream drops
//!   the duplicate within the stream's duplicate window.
//! - It **acknowledges in order**. It raises a source's [`AckWatermark`] to `seq` only
//!   when the message `seq` and every earlier message of that source are acknowledged.
//!   Sources advance their checkpoints only up to the watermark, so nothing that was not
//!   acknowledged is ever checkpointed.
//! - It **keeps each key's order**: it never has two messages of one key awaiting an
//!   ack, so a message lost with a connection is stored again before any later message
//!   of its key (see [`publisher`]).
//! - It **retries forever** with the same ids, backing off, until it is told to stop —
//!   except a message the broker refuses for good (too large), which goes to the
//!   quarantine and counts as done ([`refusal`]).
//!
//! [`AckWatermark`]: crate::pipeline::AckWatermark

pub mod jetstream;
pub mod keys;
pub mod publisher;
pub mod refusal;
