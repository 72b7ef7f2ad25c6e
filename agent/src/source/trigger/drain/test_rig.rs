//! The drain as its unit tests drive it: a drain of table `t` (`id`, `note`) whose sink
//! is the source's channel, read by the test, and whose acks are the watermark, advanced
//! by the test. The database is what `connect` opens (a fake or a real one).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::admin::metrics::Metrics;
use crate::admin::StatusBoard;
use crate::config::{TriggerConfig, TriggerDb};
use crate::pipeline::{AckWatermark, Encoder};
use crate::service::Liveness;

/// What a test drives: the drain, its sink's channel and its acks.
pub(super) struct Rig {
    pub(super) drain: Drain,
    pub(super) rx: mpsc::Receiver<Batch>,
    pub(super) watermark: Arc<AckWatermark>,
    /// Held for the drain's life: its runtime, state directory, stop and done signals.
    pub(super) _keep: (
        tokio::runtime::Runtime,
        tempfile::TempDir,
        watch::Sender<bool>,
        watch::Sender<bool>,
    ),
}

/// How the drain of a rig captures and paces itself.
pub(super) struct Setup {
    /// Batches the sink's channel holds.
    pub(super) channel: usize,
    pub(super) capture: Capture,
    pub(super) interval: Duration,
    pub(super) schema_check: Duration,
}

/// A drain of table `t` connected by `connect` (source `vista` of agent `a`; the
/// configured database is never reached).
pub(super) fn rig(setup: Setup, connect: Connect) -> Rig {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel(setup.channel);
    let watermark = Arc::new(AckWatermark::default());
    let (stop, shutdown) = watch::channel(false);
    let (done, sink_done) = watch::channel(false);
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
        capture: setup.capture,
        interval: setup.interval,
        dialect: None,
        snapshot_initial: false,
        schema_check: setup.schema_check,
    };
    Rig {
        drain: Drain::new(cfg, cx, connect),
        rx,
        watermark,
        _keep: (rt, dir, stop, done),
    }
}

/// Table `t` as a fake database describes it.
pub(super) fn table_t() -> TableDef {
    TableDef {
        name: "t".into(),
        key: vec!["id".into()],
        columns: vec!["id".into(), "note".into()],
        binary: Vec::new(),
        timestamps: Vec::new(),
        utc: Vec::new(),
    }
}

/// Capture row 1 of a fake database: row `{"id": 1}` created with note `x`.
pub(super) fn change_row_1(changed_ms: Option<i64>) -> ChangeRow {
    ChangeRow {
        seq: 1,
        table: "t".into(),
        op: "c".into(),
        pk: r#"{"id": 1}"#.into(),
        before: None,
        after: Some(r#"{"id": 1, "note": "x"}"#.into()),
        changed_ms,
        origin: None,
    }
}

/// What a fake database does when asked to delete capture rows.
pub(super) type OnDelete = Box<dyn FnMut(&[RowId]) -> Result<(), DbError> + Send>;

/// A fake database (a trait-level fake: the e2e tests use the real ones) holding table
/// `t`: its first read returns `rows`, every later one nothing; deletes go to
/// `on_delete`.
pub(super) struct FakeDb {
    pub(super) epoch: &'static str,
    pub(super) tables: Vec<TableDef>,
    pub(super) rows: Vec<ChangeRow>,
    pub(super) on_delete: OnDelete,
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
        if cursor == 0 {
            out.extend(self.rows.iter().cloned());
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
        (self.on_delete)(rows)
    }
    fn notified(&mut self) -> bool {
        false
    }
}
