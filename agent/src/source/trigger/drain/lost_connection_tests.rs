//! Issue 16 item 11: the drain's connection lost while it waits for a full sink.
//!
//! While `send` waits for room in the sink it deletes the capture rows of acknowledged
//! events; when that delete fails the connection is dropped. The step then went on to
//! `self.db.as_mut().expect("connected")` and the thread panicked, leaving the source
//! dead. A fake database (a trait-level fake: the e2e tests use the real ones) makes
//! that path happen deterministically.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::test_rig::{change_row_1, rig, table_t, FakeDb, Rig, Setup};
use super::*;

#[test]
fn a_connection_lost_while_waiting_for_the_sink_does_not_panic_the_drain() {
    let Rig {
        mut drain,
        mut rx,
        watermark,
        _keep,
    } = rig(
        Setup {
            channel: 1,
            capture: Capture::Rows,
            interval: Duration::from_millis(50),
            schema_check: Duration::from_secs(60),
        },
        Box::new(|| Err(DbError::query("no second connection"))),
    );
    // The sink is full: one batch waits in the channel.
    drain
        .cx
        .tx
        .try_send(Batch {
            source: 0,
            msgs: Vec::new(),
        })
        .unwrap();
    // Everything the source sends counts as acknowledged at once (spooled).
    watermark.advance(1_000);
    let deleted = Arc::new(AtomicBool::new(false));
    let db = FakeDb {
        epoch: "fake",
        tables: vec![table_t()],
        rows: vec![change_row_1(None)],
        on_delete: Box::new({
            let deleted = deleted.clone();
            move |_| {
                deleted.store(true, Ordering::SeqCst);
                Err(DbError::query("server closed the connection unexpectedly"))
            }
        }),
    };
    drain.set_tables(db.tables());
    drain.db = Some(Box::new(db));
    // The sink makes room only once the drain has lost its connection in `send`.
    let sink = std::thread::spawn(move || {
        while !deleted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = 0;
        while let Some(b) = rx.blocking_recv() {
            got += b.msgs.len();
            if got == 1 {
                return got;
            }
        }
        got
    });
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drain.step()));
    assert!(r.is_ok(), "the drain panicked");
    assert!(
        matches!(r, Ok(Err(Fail::Db(_)))),
        "the step ends with the lost connection, for the run loop to reconnect"
    );
    assert!(drain.db.is_none());
    assert_eq!(sink.join().unwrap(), 1, "the event was handed to the sink");
}
