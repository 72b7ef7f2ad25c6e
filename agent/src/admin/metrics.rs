//! Prometheus metrics (`lockstep_` prefix), kept in atomics and rendered on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one (source, table), and the names they are counted under.
#[derive(Debug, Default)]
pub struct TableCounters {
    pub source: Arc<str>,
    pub table: Arc<str>,
    pub captured: AtomicU64,
    /// Events JetStream stored (acknowledged, not as a duplicate).
    pub published: AtomicU64,
    /// Events sent again that the stream already held: acknowledged as a duplicate, the
    /// copy dropped (a re-send after a lost acknowledgement, or after a restart).
    pub repeated: AtomicU64,
    pub failed: AtomicU64,
    /// Events the broker refused for good (too large), set aside in the quarantine.
    pub refused: AtomicU64,
}

impl TableCounters {
    /// Counts an acknowledged event: stored, or a `duplicate` the stream dropped.
    pub fn acknowledged(&self, duplicate: bool) {
        let c = if duplicate {
            &self.repeated
        } else {
            &self.published
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub quarantined: AtomicU64,
    /// Quarantine entries dropped by `quarantine_max_bytes`, oldest first.
    pub quarantine_dropped: AtomicU64,
    /// Quarantined records sent again by `lockstep quarantine resend` (acknowledged).
    pub quarantine_resent: AtomicU64,
    pub truncations: AtomicU64,
    pub rotations: AtomicU64,
    /// Bytes (tail) not yet acknowledged downstream.
    pub lag_bytes: AtomicU64,
    /// Seconds since the oldest event not yet acknowledged was captured.
    pub lag_seconds: AtomicI64,
    pub checkpoint_errors: AtomicU64,
    /// 1 while a database source is connected (trigger, poll); 1 for sources without one.
    pub db_up: AtomicU64,
    /// Connections to the source's database lost (or refused) since start.
    pub db_errors: AtomicU64,
    /// Times the source's thread ended unexpectedly and was started again.
    pub restarts: AtomicU64,
    /// A poll source: the `lockstep_poll_*` metrics below are rendered for it.
    pub is_poll: AtomicBool,
    /// Scans the poll source finished (read and compared).
    pub scans: AtomicU64,
    /// Rows read by the poll source's scans.
    pub rows_scanned: AtomicU64,
    /// How long the last scan took, scan and compare (ms).
    pub scan_ms: AtomicU64,
    /// When the last scan finished (ms since epoch); 0 before the first.
    pub last_scan_ms: AtomicI64,
    /// Changes found by the poll source's scans, by op: c, u, d, r.
    pub changes: [AtomicU64; 4],
    /// The source debounces: the `lockstep_debounce_*` metrics below are rendered for it.
    pub debounced: AtomicBool,
    /// Changes that did not become an event of their own (merged into another, or
    /// cancelled out by an insert and a delete).
    pub merged: AtomicU64,
    /// Keys held by the debouncer now.
    pub held_keys: AtomicU64,
    /// Held keys released before their time because `max_keys` were held.
    pub early_flushes: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    tables: Mutex<BTreeMap<(String, String), Arc<TableCounters>>>,
    sources: Mutex<BTreeMap<String, Arc<SourceCounters>>>,
    pub nats_connected: AtomicBool,
    pub in_flight: AtomicU64,
    pub publish_retries: AtomicU64,
    /// Messages acknowledged after a failed one before it was sent again: the stream may
    /// hold those ahead of it — never one of the same key (see docs/design.md, "Order
    /// across a broken connection").
    pub publish_reordered: AtomicU64,
    /// While publishing fails (a transient error, retried): since when (ms since epoch)
    /// and the last error. Shown on `/healthz` and `/status`.
    pub publish_failing: Mutex<Option<(i64, String)>>,
    pub spool_bytes: AtomicU64,
    pub spool_events: AtomicU64,
    pub spool_segments: AtomicU64,
    /// Capture time (ms) of the oldest spooled event; 0 when the spool is empty.
    pub spool_oldest_ms: AtomicI64,
    pub spool_appended: AtomicU64,
    pub spool_drained: AtomicU64,
    pub spool_dropped: AtomicU64,
    pub spool_corrupt_frames: AtomicU64,
    /// Spool frames (or whole segments) that could not be read back.
    pub spool_unreadable: AtomicU64,
    pub spool_write_errors: AtomicU64,
    /// From capture to JetStream's ack, per event.
    pub capture_to_ack: Histogram,
    /// Per (source, table) of a trigger source: whether the table's capture triggers
    /// no longer match it (schema drift).
    trigger_drift: Mutex<BTreeMap<(String, String), bool>>,
}

/// Upper bounds (seconds) of the capture-to-ack histogram's buckets: from a live
/// pipeline's milliseconds to an hour-long outage drained from the spool.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A Prometheus histogram over [`LATENCY_BUCKETS`], in atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let secs = ms as f64 / 1000.0;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            match LATENCY_BUCKETS.get(i) {
                Some(b) => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {total}");
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {total}");
    }
}

impl Metrics {
    /// Publishing fails now (`Some(error)`), or works again (`None`); the first failure
    /// of a run of them keeps its time.
    pub fn set_publish_failing(&self, error: Option<&str>) {
        let mut f = self
            .publish_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *f = error.map(|e| {
            let since = f.as_ref().map_or_else(crate::clock::now_ms, |p| p.0);
            (since, e.to_owned())
        });
    }

    /// While publishing fails: for how many seconds, and the last error.
    pub fn publish_failing(&self) -> Option<(i64, String)> {
        let f = self
            .publish_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f.as_ref()
            .map(|(since, e)| ((crate::clock::now_ms() - since).max(0) / 1000, e.clone()))
    }

    pub fn table(&self, source: &str, table: &str) -> Arc<TableCounters> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.entry((source.to_owned(), table.to_owned()))
            .or_insert_with(|| {
                Arc::new(TableCounters {
                    source: source.into(),
                    table: table.into(),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Events acknowledged so far, summed over each source's tables.
    pub fn published_by_source(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for s in self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
        {
            by.insert(s.clone(), 0);
        }
        for ((s, _), c) in self.tables.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            *by.entry(s.clone()).or_insert(0) += c.published.load(Ordering::Relaxed);
        }
        by
    }

    /// Whether the capture triggers of `table` of `source` no longer match it.
    pub fn set_trigger_drift(&self, source: &str, table: &str, drift: bool) {
        self.trigger_drift
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((source.to_owned(), table.to_owned()), drift);
    }

    pub fn source(&self, source: &str) -> Arc<SourceCounters> {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(source.to_owned()).or_default().clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type TableField = fn(&TableCounters) -> &AtomicU64;
        let per_table: [(&str, &str, TableField); 5] = [
            (
                "lockstep_events_captured_total",
                "Events captured from sources.",
                |c| &c.captured,
            ),
            (
                "lockstep_events_published_total",
                "Events stored by JetStream (acknowledged, not as a duplicate).",
                |c| &c.published,
            ),
            (
                "lockstep_events_repeated_total",
                "Events sent again that the stream already held (acknowledged as a duplicate, the copy dropped).",
                |c| &c.repeated,
            ),
            (
                "lockstep_events_failed_total",
                "Publish attempts that failed (each is retried).",
                |c| &c.failed,
            ),
            (
                "lockstep_events_refused_total",
                "Events the broker refused for good (over max_payload or the stream's max_msg_size), set aside in the quarantine.",
                |c| &c.refused,
            ),
        ];
        for (name, help, field) in per_table {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((s, t), c) in &tables {
                let _ = writeln!(
                    o,
                    "{name}{{source=\"{}\",table=\"{}\"}} {}",
                    esc(s),
                    esc(t),
                    field(c).load(Ordering::Relaxed)
                );
            }
        }
        let name = "lockstep_trigger_drift";
        let _ = writeln!(
            o,
            "# HELP {name} 1 while a captured table no longer matches its capture triggers (ALTER TABLE since `triggers install`): run `lockstep triggers install` again.\n# TYPE {name} gauge"
        );
        for ((s, t), drift) in self
            .trigger_drift
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "{name}{{source=\"{}\",table=\"{}\"}} {}",
                esc(s),
                esc(t),
                u8::from(*drift)
            );
        }
        type SourceField = fn(&SourceCounters) -> u64;
        let per_source: [(&str, &str, &str, SourceField); 11] = [
            (
                "lockstep_quarantined_records_total",
                "counter",
                "Records set aside in the quarantine.",
                |c| c.quarantined.load(Ordering::Relaxed),
            ),
            (
                "lockstep_quarantine_dropped_total",
                "counter",
                "Quarantine entries dropped, oldest first, to keep a quarantine file under quarantine_max_bytes.",
                |c| c.quarantine_dropped.load(Ordering::Relaxed),
            ),
            (
                "lockstep_quarantine_resent_total",
                "counter",
                "Quarantined records sent again (lockstep quarantine resend) and acknowledged.",
                |c| c.quarantine_resent.load(Ordering::Relaxed),
            ),
            (
                "lockstep_file_truncations_total",
                "counter",
                "Tailed files found truncated and read again from 0.",
                |c| c.truncations.load(Ordering::Relaxed),
            ),
            (
                "lockstep_file_rotations_total",
                "counter",
                "Tailed files that left their glob (rotated or deleted).",
                |c| c.rotations.load(Ordering::Relaxed),
            ),
            (
                "lockstep_checkpoint_errors_total",
                "counter",
                "Checkpoint writes that failed (retried).",
                |c| c.checkpoint_errors.load(Ordering::Relaxed),
            ),
            (
                "lockstep_source_lag_bytes",
                "gauge",
                "Bytes read or waiting that are not yet acknowledged.",
                |c| c.lag_bytes.load(Ordering::Relaxed),
            ),
            (
                "lockstep_source_lag_seconds",
                "gauge",
                "Age of the oldest event not yet acknowledged.",
                |c| c.lag_seconds.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "lockstep_source_db_connected",
                "gauge",
                "1 while the source's database connection is up (trigger and poll sources).",
                |c| c.db_up.load(Ordering::Relaxed),
            ),
            (
                "lockstep_source_db_errors_total",
                "counter",
                "Database connections of the source lost or refused (each retried with backoff).",
                |c| c.db_errors.load(Ordering::Relaxed),
            ),
            (
                "lockstep_source_restarts_total",
                "counter",
                "Times the source's thread ended unexpectedly (a panic, an error it could not get past) and was started again.",
                |c| c.restarts.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, field) in per_source {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (s, c) in &sources {
                let _ = writeln!(o, "{name}{{source=\"{}\"}} {}", esc(s), field(c));
            }
        }
        let polls: Vec<_> = sources
            .iter()
            .filter(|(_, c)| c.is_poll.load(Ordering::Relaxed))
            .collect();
        let per_poll: [(&str, &str, &str, SourceField); 3] = [
            (
                "lockstep_poll_scans_total",
                "counter",
                "Scans of a poll source read and compared with the previous one.",
                |c| c.scans.load(Ordering::Relaxed),
            ),
            (
                "lockstep_poll_rows_scanned_total",
                "counter",
                "Rows read by the scans of a poll source.",
                |c| c.rows_scanned.load(Ordering::Relaxed),
            ),
            (
                "lockstep_poll_last_scan_timestamp_seconds",
                "gauge",
                "When the last scan finished (Unix time); 0 before the first.",
                |c| (c.last_scan_ms.load(Ordering::Relaxed).max(0) / 1000) as u64,
            ),
        ];
        let debounced: Vec<_> = sources
            .iter()
            .filter(|(_, c)| c.debounced.load(Ordering::Relaxed))
            .collect();
        let per_debounced: [(&str, &str, &str, SourceField); 3] = [
            (
                "lockstep_debounce_merged_total",
                "counter",
                "Changes that did not become an event of their own: merged into a later change of the same key, or cancelled out (insert then delete).",
                |c| c.merged.load(Ordering::Relaxed),
            ),
            (
                "lockstep_debounce_held_keys",
                "gauge",
                "Keys whose changes the debouncer holds now.",
                |c| c.held_keys.load(Ordering::Relaxed),
            ),
            (
                "lockstep_debounce_early_flushes_total",
                "counter",
                "Held keys sent before their window passed because max_keys were held.",
                |c| c.early_flushes.load(Ordering::Relaxed),
            ),
        ];
        for (list, families) in [(&polls, &per_poll[..]), (&debounced, &per_debounced[..])] {
            for (name, kind, help, field) in families {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (s, c) in list.iter() {
                    let _ = writeln!(o, "{name}{{source=\"{}\"}} {}", esc(s), field(c));
                }
            }
        }
        let name = "lockstep_poll_scan_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} How long the last scan took, reading and comparing.\n# TYPE {name} gauge"
        );
        for (s, c) in &polls {
            let ms = c.scan_ms.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "{name}{{source=\"{}\"}} {:.3}",
                esc(s),
                ms as f64 / 1000.0
            );
        }
        let name = "lockstep_poll_changes_total";
        let _ = writeln!(
            o,
            "# HELP {name} Changes found by the scans of a poll source, by op.\n# TYPE {name} counter"
        );
        for (s, c) in &polls {
            for (i, op) in ["c", "u", "d", "r"].iter().enumerate() {
                let n = c.changes[i].load(Ordering::Relaxed);
                let _ = writeln!(o, "{name}{{source=\"{}\",op=\"{op}\"}} {n}", esc(s));
            }
        }
        let oldest = self.spool_oldest_ms.load(Ordering::Relaxed);
        let oldest_age = if oldest > 0 {
            (crate::clock::now_ms() - oldest).max(0) as u64 / 1000
        } else {
            0
        };
        let globals: [(&str, &str, &str, u64); 14] = [
            (
                "lockstep_nats_connected",
                "gauge",
                "1 while connected to a NATS server.",
                self.nats_connected.load(Ordering::Relaxed) as u64,
            ),
            (
                "lockstep_publish_in_flight",
                "gauge",
                "Publishes awaiting an ack.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "lockstep_publish_retries_total",
                "counter",
                "Times the publisher re-sent after a failure.",
                self.publish_retries.load(Ordering::Relaxed),
            ),
            (
                "lockstep_publish_reordered_total",
                "counter",
                "Messages of other keys acknowledged ahead of an earlier one that had to be re-sent.",
                self.publish_reordered.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_bytes",
                "gauge",
                "Bytes of spool segments on disk.",
                self.spool_bytes.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_events",
                "gauge",
                "Events in the spool not yet acknowledged.",
                self.spool_events.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_segments",
                "gauge",
                "Spool segment files.",
                self.spool_segments.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_oldest_event_age_seconds",
                "gauge",
                "Age of the oldest event in the spool (0 when empty).",
                oldest_age,
            ),
            (
                "lockstep_spool_appended_events_total",
                "counter",
                "Events written to the spool.",
                self.spool_appended.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_drained_events_total",
                "counter",
                "Spooled events acknowledged by JetStream (its rate is the drain rate).",
                self.spool_drained.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_dropped_events_total",
                "counter",
                "Events dropped unsent by when_full = \"drop_oldest\".",
                self.spool_dropped.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_corrupt_frames_total",
                "counter",
                "Spool frames whose checksum failed (quarantined).",
                self.spool_corrupt_frames.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_unreadable_total",
                "counter",
                "Spool frames or segments that could not be read back (I/O error, file gone): their events were skipped and recorded in the quarantine.",
                self.spool_unreadable.load(Ordering::Relaxed),
            ),
            (
                "lockstep_spool_write_errors_total",
                "counter",
                "Spool writes that failed (disk full, I/O error); retried.",
                self.spool_write_errors.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in globals {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        self.capture_to_ack.render(
            &mut o,
            "lockstep_capture_to_ack_seconds",
            "From an event's capture to JetStream's ack (spooled events included).",
        );
        o
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_operations_md() {
        let docs = include_str!("../../../docs/operations.md");
        let m = Metrics::default();
        m.table("s", "t");
        let c = m.source("s");
        c.is_poll.store(true, Ordering::Relaxed);
        c.debounced.store(true, Ordering::Relaxed);
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 33, "{names:?}");
        for n in names {
            assert!(
                docs.contains(&format!("| `{n}` |")),
                "{n} is not in the metrics table of docs/operations.md"
            );
        }
    }

    #[test]
    fn buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::default();
        for ms in [3, 40, 40, 2_000, 7_200_000] {
            h.observe_ms(ms);
        }
        let mut o = String::new();
        h.render(&mut o, "x", "help");
        assert!(o.contains("x_bucket{le=\"0.005\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.05\"} 3\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"2.5\"} 4\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"3600\"} 4\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"+Inf\"} 5\n"), "{o}");
        assert!(o.contains("x_sum 7202.083\nx_count 5\n"), "{o}");
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels() {
        let m = Metrics::default();
        m.table("vista", "appointments")
            .captured
            .fetch_add(3, Ordering::Relaxed);
        m.source("vista")
            .quarantined
            .fetch_add(1, Ordering::Relaxed);
        let t = m.render();
        assert!(
            t.contains("lockstep_events_captured_total{source=\"vista\",table=\"appointments\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("lockstep_quarantined_records_total{source=\"vista\"} 1"),
            "{t}"
        );
        assert!(t.contains("lockstep_nats_connected 0"), "{t}");
        m.set_trigger_drift("vista", "appointments", true);
        m.set_trigger_drift("vista", "clinics", false);
        let t = m.render();
        assert!(
            t.contains("lockstep_trigger_drift{source=\"vista\",table=\"appointments\"} 1\n")
                && t.contains("lockstep_trigger_drift{source=\"vista\",table=\"clinics\"} 0\n"),
            "{t}"
        );
    }
}
