//! A capture table made anew while events of the old one await their acks: their rows
//! are not deleted from the new table, where the same `seq`s are other changes. A fake
//! database (a trait-level fake: the e2e tests use the real ones) makes the moment
//! deterministic.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::admin::metrics::Metrics;
use crate::admin::StatusBoard;
use crate::config::{TriggerConfig, TriggerDb};
use crate::pipeline::{AckWatermark, Encoder};
use crate::service::Liveness;

struct FakeDb {
    epoch: &'static str,
    tables: Vec<TableDef>,
    deleted: Arc<Mutex<Vec<(&'static str, i64)>>>,
}

impl CaptureDb for FakeDb {
    fn tables(&self) -> &[TableDef] {
        &self.tables
    }
    fn epoch(&self) -> &str {
        self.epoch
    }
    fn read(
        &mut self,
        cursor: i64,
        _: &HashSet<i64>,
        _: usize,
        out: &mut Vec<ChangeRow>,
    ) -> Result<bool, DbError> {
        if cursor == 0 && self.epoch == "old" {
            out.push(ChangeRow {
                seq: 1,
                table: "t".into(),
                op: "c".into(),
                pk: r#"{"id": 1}"#.into(),
                before: None,
                after: Some(r#"{"id": 1, "note": "x"}"#.into()),
                changed_ms: Some(1_000),
                origin: None,
            });
        }
        Ok(false)
    }
    fn current(&mut self, _: &TableDef, _: &[&str]) -> Result<Vec<String>, DbError> {
        Ok(Vec::new())
    }
    fn chunk(&mut self, _: &TableDef, _: Option<&str>, _: usize) -> Result<Vec<String>, DbError> {
        Ok(Vec::new())
    }
    fn estimate_rows(&mut self, _: &TableDef) -> Result<Option<u64>, DbError> {
        Ok(None)
    }
    fn delete(&mut self, rows: &[RowId]) -> Result<(), DbError> {
        let mut d = self.deleted.lock().unwrap();
        d.extend(rows.iter().map(|r| (self.epoch, r.seq)));
        Ok(())
    }
    fn wait(&mut self, _: Duration) -> bool {
        false
    }
}

fn table() -> TableDef {
    TableDef {
        name: "t".into(),
        key: vec!["id".into()],
        columns: vec!["id".into(), "note".into()],
        binary: Vec::new(),
        timestamps: Vec::new(),
        utc: Vec::new(),
    }
}

#[test]
fn rows_of_a_capture_table_made_anew_are_not_deleted_from_the_new_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (tx, mut rx) = mpsc::channel(16);
    let watermark = Arc::new(AckWatermark::default());
    let (_stop, shutdown) = watch::channel(false);
    let (_done, sink_done) = watch::channel(false);
    let cx = SourceContext {
        index: 0,
        name: "vista".into(),
        agent_id: "a".into(),
        state_dir: dir.path().to_owned(),
        encoder: Encoder::new("legacy", "a", "vista"),
        tx,
        watermark: watermark.clone(),
        metrics: metrics.clone(),
        counters: metrics.source("vista"),
        status: Arc::new(StatusBoard::new("a")),
        shutdown,
        sink_done,
        drain_for: Duration::from_secs(1),
        quarantine_max_bytes: crate::config::DEFAULT_QUARANTINE_MAX_BYTES,
        runtime: rt.handle().clone(),
        map: Arc::default(),
        debounce: None,
        beat: Liveness::default().register("source vista"),
        handed: Arc::new(AtomicU64::new(0)),
    };
    let cfg = TriggerConfig {
        db: TriggerDb::Postgres(Box::new(
            crate::db::postgres::PgConn::parse("host=nowhere").unwrap(),
        )),
        tables: vec!["t".into()],
        capture: Capture::Keys,
        interval: Duration::from_millis(50),
        dialect: None,
        snapshot_initial: false,
        schema_check: Duration::from_secs(60),
    };
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let epochs = Arc::new(Mutex::new(vec!["new", "old"]));
    let (d, e) = (deleted.clone(), epochs.clone());
    let connect: Connect = Box::new(move || {
        let epoch = e.lock().unwrap().pop().ok_or(DbError("no more".into()))?;
        Ok(Box::new(FakeDb {
            epoch,
            tables: vec![table()],
            deleted: d.clone(),
        }) as Box<dyn CaptureDb>)
    });
    let mut drain = Drain::new(cfg, cx, connect);
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
