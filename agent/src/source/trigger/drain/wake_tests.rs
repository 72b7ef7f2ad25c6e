//! The drain's waits on its wake-up (found by review: a notified drain without room
//! to read spun).

use std::time::{Duration, Instant};

use super::test_rig::{rig, table_t, FakeDb, Rig, Setup};
use super::*;

/// A drain whose reads wait for room (`MAX_IN_FLIGHT` rows in flight, none acked) and
/// that was notified (PostgreSQL NOTIFY, or `open` after a reconnect: it sets `woken`)
/// must wait for the acks it needs; `step` returning at once makes `run` a busy loop.
#[test]
fn a_notified_drain_without_room_waits_instead_of_spinning() {
    let Rig {
        mut drain,
        rx: _rx,
        watermark: _watermark,
        _keep,
    } = rig(
        Setup {
            channel: 64,
            capture: Capture::Rows,
            interval: Duration::from_secs(2),
            schema_check: Duration::from_secs(3600),
        },
        Box::new(|| Err(DbError::query("no second connection"))),
    );
    let db = FakeDb {
        epoch: "fake",
        tables: vec![table_t()],
        rows: Vec::new(),
        on_delete: Box::new(|_| Ok(())),
    };
    drain.set_tables(db.tables());
    drain.db = Some(Box::new(db));
    drain.in_flight.extend(1..=MAX_IN_FLIGHT as i64);
    drain.pending.push_back(Pending {
        seq: 1,
        rows: Vec::new(),
        captured_ms: 0,
    });
    drain.seq = 1;
    drain.last_read = Some(Instant::now());
    drain.woken = true;
    let t = Instant::now();
    let mut turns = 0u64;
    while t.elapsed() < Duration::from_secs(1) {
        assert!(drain.step().is_ok());
        turns += 1;
    }
    assert!(
        turns < 1000,
        "{turns} turns of step() in 1 s, no ack and nothing to read: a busy loop"
    );
}
