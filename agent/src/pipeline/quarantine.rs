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
//! A source whose mapping drops fields (data that must not leave the host, nor be
//! copied on it) quarantines without the record: `record_withheld` says so, and the
//! file, offset and length say where the original is.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use lockstep_formats::json::encode_str;

#[derive(Debug)]
pub struct Quarantine {
    path: PathBuf,
    file: Option<File>,
    dirty: bool,
    withhold: bool,
    buf: Vec<u8>,
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
        }
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
        b.clear();
        b.extend_from_slice(b"{\"ts_ms\":");
        b.extend_from_slice(super::now_ms().to_string().as_bytes());
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
            b.extend_from_slice(b",\"event_base64\":\"");
            b.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(r.payload)
                    .as_bytes(),
            );
            b.push(b'"');
        }
        b.extend_from_slice(b"}\n");
        self.write_buf()
    }

    /// Appends a bad record (not yet fsynced; see [`Quarantine::sync`]).
    pub fn put(&mut self, r: &BadRecord) -> io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(b"{\"ts_ms\":");
        b.extend_from_slice(super::now_ms().to_string().as_bytes());
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
                b.extend_from_slice(b",\"record_base64\":\"");
                b.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(r.data)
                        .as_bytes(),
                );
                b.push(b'"');
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
        if let Some(f) = self.file.as_mut() {
            let before = f.metadata()?.len();
            if let Err(e) = f.write_all(&self.buf) {
                // No half line left behind (a full disk): the caller keeps the record and
                // tries again, and the next line must start on its own.
                let _ = f.set_len(before);
                self.file = None;
                return Err(e);
            }
        }
        self.dirty = true;
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
