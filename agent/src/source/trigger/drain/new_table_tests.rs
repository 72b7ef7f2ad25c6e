//! A capture table made anew while events of the old one await their acks: their rows
//! are not deleted from the new table, where the same `seq`s are other changes. A fake
//! database (a trait-level fake: the e2e tests use the real ones) makes the moment
//! deterministic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::test_rig::{change_row_1, rig, table_t, FakeDb, Rig, Setup};
use super::*;

#[test]
fn rows_of_a_capture_table_made_anew_are_not_deleted_from_the_new_one() {
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let epochs = Arc::new(Mutex::new(vec!["new", "old"]));
    let (d, e) = (deleted.clone(), epochs.clone());
    let connect: Connect = Box::new(move || {
        let epoch = e.lock().unwrap().pop().ok_or(DbError::query("no more"))?;
        let d = d.clone();
        Ok(Box::new(FakeDb {
            epoch,
            tables: vec![table_t()],
            rows: if epoch == "old" {
                vec![change_row_1(Some(1_000))]
            } else {
                Vec::new()
            },
            on_delete: Box::new(move |rows| {
                let mut d = d.lock().unwrap();
                d.extend(rows.iter().map(|r| (epoch, r.seq)));
                Ok(())
            }),
        }) as Box<dyn CaptureDb>)
    });
    let Rig {
        mut drain,
        mut rx,
        watermark,
        _keep,
    } = rig(
        Setup {
            channel: 16,
            capture: Capture::Keys,
            interval: Duration::from_millis(50),
            schema_check: Duration::from_secs(60),
        },
        connect,
    );
    drain.open();
    assert!(drain.step().is_ok());
    let sent: usize = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|b| b.msgs.len())
        .sum();
    assert_eq!(
        sent, 1,
        "the change of capture row 1 was handed to the sink"
    );
    // The capture table is dropped and made again before the event is acknowledged;
    // the drain connects again and finds the new one, whose row 1 is another change.
    drain.db = None;
    drain.open();
    assert_eq!(drain.epoch, "new");
    watermark.advance(1);
    drain.apply_acks();
    drain.delete_acked().unwrap();
    assert_eq!(
        *deleted.lock().unwrap(),
        Vec::<(&str, i64)>::new(),
        "a row of the old capture table was deleted by its seq from the new one"
    );
}
