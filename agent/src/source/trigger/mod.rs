//! Trigger-table capture (SPEC §6 "trigger"): triggers write each change into the
//! capture table `lockstep_changes`, and the source drains it in `seq` order.
//!
//! [`ddl`] makes the capture table and triggers in each dialect; [`drain`] reads,
//! publishes and deletes, over a [`postgres`] connection (woken by `NOTIFY`) or an
//! [`odbc`] one (polled); [`snapshot`] reads the tables themselves, as op `r`;
//! [`drift`] finds tables changed (`ALTER TABLE`) since their triggers were installed;
//! [`setup`] is the connection of the commands that install, check and remove them.

pub mod conn_string;
pub mod ddl;
pub mod drain;
pub mod drift;
pub mod odbc;
pub mod postgres;
pub mod setup;
pub mod snapshot;
pub mod timestamps;

use crate::config::{TriggerConfig, TriggerDb};
use crate::source::{SourceContext, SourceThread};

/// Starts a trigger source on its own thread.
pub fn spawn(cfg: TriggerConfig, cx: SourceContext) -> std::io::Result<SourceThread> {
    let name = cx.name.clone();
    let tables = cfg.tables.clone();
    let connect: drain::Connect = match &cfg.db {
        TriggerDb::Postgres(conn) => {
            let conn = conn.clone();
            let rt = cx.runtime.clone();
            let wake = cx.watermark.wake().notifier();
            Box::new(move || {
                postgres::PgCapture::open(&rt, &conn, &name, &tables, wake.clone())
                    .map(|c| Box::new(c) as Box<dyn drain::CaptureDb>)
            })
        }
        TriggerDb::Odbc(conn) => {
            let conn = conn.clone();
            let dialect = cfg.dialect;
            Box::new(move || {
                odbc::OdbcCapture::open(conn.expose(), dialect, &name, &tables)
                    .map(|c| Box::new(c) as Box<dyn drain::CaptureDb>)
            })
        }
    };
    std::thread::Builder::new()
        .name(format!("trigger:{}", cx.name))
        .spawn(move || {
            drain::Drain::new(cfg, cx, connect).run();
            Ok(())
        })
}
