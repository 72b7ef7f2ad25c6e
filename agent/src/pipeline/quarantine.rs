//! The quarantine: records that could not be turned into events (SPEC §5).
//!
//! Each source appends to `state_dir/quarantine/<source>.jsonl`, one JSON object per bad
//! record: when, the file and byte offset it came from, why, and the record itself (as
//! text when it is UTF-8, else base64; cut at `max_record_bytes`). The file is fsynced
//! before the source's checkpoint moves past the record, so a record is never both
//! skipped and missing from the quarantine.
//!
//! Events the broker refuses for good (over its `max_payload`, or its stream's
//! `max_msg_size`) go to `state_dir/quarantine/<source>.refused.jsonl`, written by the
//! publisher: when, the message id, subject, why (the broker's words), the length, and
//! the event as it would have been published (JSON). The file is fsynced before the
//! event counts as done.
//!
//! **Size cap.** A file that grows past `[agent] quarantine_max_bytes` loses its oldest
//! entries: its writer (each file has exactly one) copies the newest entries, up to 90%
//! of the cap, to `<file>.trim`, fsyncs it and renames it over the file, so a crash
//! leaves either the old file or the trimmed one. What was dropped is counted
//! (`lockstep_quarantine_dropped_total`) and logged. The newest entry is always kept.
//!
//! **Resending.** `lockstep quarantine resend` sends entries again once their cause is
//! fixed: see [`super::resend`].
//!
//! A source whose mapping drops fields (data that must not leave the host, nor be
//! copied on it) quarantines without the record: `record_withheld` says so, and the
//! file, offset and length say where the original is.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use lockstep_formats::json::encode_str;

use crate::admin::metrics::SourceCounters;
use crate::admin::telemetry::QuarantineTrimmed;

#[derive(Debug)]
pub struct Quarantine {
    path: PathBuf,
    file: Option<File>,
    dirty: bool,
    withhold: bool,
    buf: Vec<u8>,
    /// The size cap, and where drops are counted.
    cap: Option<Cap>,
}

#[derive(Debug)]
struct Cap {
    max_bytes: u64,
    source: String,
    counters: Arc<SourceCounters>,
}

/// What is known about a bad record.
#[derive(Debug)]
pub struct BadRecord<'a> {
    pub file: &'a Path,
    pub offset: u64,
    pub reason: &'a str,
    /// The record's bytes (possibly only its beginning).
    pub data: &'a [u8],
    /// The record's full length, when only its beginning is in `data`.
    pub full_len: u64,
}

/// An event the broker refused for good.
#[derive(Debug)]
pub struct RefusedEvent<'a> {
    pub msg_id: &'a str,
    pub subject: &'a str,
    pub reason: &'a str,
    /// The message's payload: the event's JSON.
    pub payload: &'a [u8],
}

impl Quarantine {
    pub fn new(state_dir: &Path, source: &str) -> Self {
        Self::at(state_dir.join("quarantine").join(format!("{source}.jsonl")))
    }

    /// The file of `source`'s events the broker refused for good.
    pub fn refused(state_dir: &Path, source: &str) -> Self {
        Self::at(
            state_dir
                .join("quarantine")
                .join(format!("{source}.refused.jsonl")),
        )
    }

    fn at(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            dirty: false,
            withhold: false,
            buf: Vec::new(),
            cap: None,
        }
    }

    /// Caps the file at `max_bytes`: past it, its oldest entries are dropped, counted on
    /// `counters` as `source`'s and logged.
    pub fn cap(&mut self, max_bytes: u64, source: &str, counters: Arc<SourceCounters>) {
        self.cap = Some(Cap {
            max_bytes,
            source: source.to_owned(),
            counters,
        });
    }

    /// With `true`, records are written without their data.
    pub fn withhold_data(&mut self, on: bool) {
        self.withhold = on;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event the broker refused (not yet fsynced; see [`Quarantine::sync`]).
    /// The event is kept as JSON when it is JSON (it always is, as lockstep encodes it),
    /// else in base64.
    pub fn put_refused(&mut self, r: &RefusedEvent) -> io::Result<()> {
        let b = &mut self.buf;
        start_line(b);
        b.extend_from_slice(b",\"msg_id\":");
        encode_str(r.msg_id, b);
        b.extend_from_slice(b",\"subject\":");
        encode_str(r.subject, b);
        b.extend_from_slice(b",\"reason\":");
        encode_str(r.reason, b);
        b.extend_from_slice(format!(",\"length\":{}", r.payload.len()).as_bytes());
        if serde_json::from_slice::<serde::de::IgnoredAny>(r.payload).is_ok() {
            b.extend_from_slice(b",\"event\":");
            b.extend_from_slice(r.payload);
        } else {
            put_base64("event_base64", r.payload, b);
        }
        b.extend_from_slice(b"}\n");
        self.write_buf()
    }

    /// Appends a bad record (not yet fsynced; see [`Quarantine::sync`]).
    pub fn put(&mut self, r: &BadRecord) -> io::Result<()> {
        let b = &mut self.buf;
        start_line(b);
        b.extend_from_slice(b",\"file\":");
        encode_str(&r.file.to_string_lossy(), b);
        b.extend_from_slice(
            format!(
                ",\"offset\":{},\"length\":{},\"reason\":",
                r.offset, r.full_len
            )
            .as_bytes(),
        );
        encode_str(r.reason, b);
        match std::str::from_utf8(r.data) {
            _ if self.withhold => {
                b.extend_from_slice(b",\"record_withheld\":\"the source's map drops fields\"");
            }
            Ok(text) => {
                b.extend_from_slice(b",\"record\":");
                encode_str(text, b);
            }
            Err(_) => {
                put_base64("record_base64", r.data, b);
            }
        }
        b.extend_from_slice(b"}\n");
        self.write_buf()
    }

    /// Appends the line in `buf`, opening the file (and making its directory) first.
    fn write_buf(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let mut len = 0;
        if let Some(f) = self.file.as_mut() {
            let before = f.metadata()?.len();
            if let Err(e) = f.write_all(&self.buf) {
                // No half line left behind (a full disk): the caller keeps the record and
                // tries again, and the next line must start on its own.
                let _ = f.set_len(before);
                self.file = None;
                return Err(e);
            }
            len = before + self.buf.len() as u64;
        }
        self.dirty = true;
        if let Some(cap) = &self.cap {
            if len > cap.max_bytes {
                // The entry is written: a failed trim is logged, never the caller's error.
                if let Err(e) = self.trim(len) {
                    tracing::error!(
                        "cannot trim the quarantine {} to quarantine_max_bytes: {e}; it keeps \
                         growing (free space on the state directory's disk)",
                        self.path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest entries of a file of `len` bytes until at most 90% of the cap
    /// is left (never the newest entry); see the module's doc.
    fn trim(&mut self, len: u64) -> io::Result<()> {
        let Some(cap) = &self.cap else {
            return Ok(());
        };
        let target = cap.max_bytes - cap.max_bytes / 10;
        let must = len.saturating_sub(target);
        let mut r = BufReader::with_capacity(1 << 16, File::open(&self.path)?);
        // The cut is the end of the first entry that ends at or past `must`, or the start
        // of the newest entry, whichever comes first; `lines` entries end before it.
        let (mut pos, mut cut, mut lines) = (0u64, 0u64, 0u64);
        'read: loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            for (i, &b) in buf.iter().enumerate() {
                if b != b'\n' {
                    continue;
                }
                let end = pos + i as u64 + 1;
                if end >= len {
                    break 'read;
                }
                cut = end;
                lines += 1;
                if end >= must {
                    break 'read;
                }
            }
            pos += n as u64;
            r.consume(n);
        }
        r.seek(SeekFrom::Start(cut))?;
        if lines == 0 {
            return Ok(());
        }
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(".trim");
        let tmp = PathBuf::from(tmp_name);
        let mut out = File::create(&tmp)?;
        io::copy(&mut r, &mut out)?;
        out.sync_all()?;
        drop(out);
        // The handle appends to the old file: let go of it before the rename.
        self.file = None;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.dirty = false;
        QuarantineTrimmed {
            source: &cap.source,
            path: &self.path,
            dropped: lines,
            bytes: cut,
            max_bytes: cap.max_bytes,
        }
        .emit(&cap.counters);
        Ok(())
    }

    /// Makes every record put so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(f) = &self.file {
                f.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }
}

/// Starts a line of the file in `b`: `{"ts_ms":<now>`.
fn start_line(b: &mut Vec<u8>) {
    b.clear();
    b.extend_from_slice(b"{\"ts_ms\":");
    b.extend_from_slice(crate::clock::now_ms().to_string().as_bytes());
}

/// Appends the field `,"<name>":"<data in base64>"` to `b`.
fn put_base64(name: &str, data: &[u8], b: &mut Vec<u8>) {
    b.extend_from_slice(b",\"");
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(b"\":\"");
    b.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .as_bytes(),
    );
    b.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn put(q: &mut Quarantine, i: usize, len: usize) {
        let data = format!("{i:04} {}", "x".repeat(len));
        q.put(&BadRecord {
            file: Path::new("/f"),
            offset: i as u64,
            reason: "bad",
            data: data.as_bytes(),
            full_len: data.len() as u64,
        })
        .unwrap();
    }

    fn records(q: &Quarantine) -> Vec<usize> {
        std::fs::read_to_string(q.path())
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["offset"].as_u64().unwrap() as usize
            })
            .collect()
    }

    #[test]
    fn past_the_cap_the_oldest_entries_go_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(SourceCounters::default());
        let mut q = Quarantine::new(dir.path(), "s");
        q.cap(4096, "s", counters.clone());
        for i in 0..200 {
            put(&mut q, i, 40);
            assert!(std::fs::metadata(q.path()).unwrap().len() <= 4096);
        }
        let kept = records(&q);
        let first = 200 - kept.len();
        assert_eq!(
            kept,
            (first..200).collect::<Vec<_>>(),
            "the newest, in order"
        );
        assert_eq!(
            counters.quarantine_dropped.load(Ordering::Relaxed),
            first as u64
        );
        // An entry larger than the cap is kept, alone.
        put(&mut q, 999, 5000);
        assert_eq!(records(&q), vec![999]);
        assert!(!dir.path().join("quarantine/s.jsonl.trim").exists());
    }
}
