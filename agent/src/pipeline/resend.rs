//! Sending quarantined records again (`lockstep quarantine resend`).
//!
//! The agent owns the spool and the sink, so the command does not publish: it queues a
//! request, and the source whose records they are sends them, on its own thread, through
//! its normal path: decoded by its format, built into events by its `table`/`key`/`op`
//! settings and its **current** mapping (the cause may have been a mapping), counted and
//! handed to the sink like its other events (the spool when the broker is away). This is
//! the pattern of `lockstep snapshot`.
//!
//! Files, all in `state_dir/quarantine/`:
//!
//! - `<source>.resend` — the request: `{"id": …, "since_ms": …}`, written by the command
//!   (write, fsync, rename). The agent takes it at start and while it runs, and removes
//!   it once every selected record is sent and acknowledged, so a request outlives a
//!   crash and is finished after it.
//! - `<source>.resent` — the marks: one line `<entry hash> <request id>` per record
//!   resent, appended and fsynced **after** its event's ack. The entry hash is the xxh3
//!   of the quarantine line, so marks survive the cap's trimming. A line cut by a crash
//!   (no newline) is ignored: each mark is whole or absent. A marked entry is never sent
//!   again.
//! - `<source>.resend-done` — the outcome of the last request (counts, the first reasons
//!   a record is still bad), written (write, fsync, rename) when it is done; the command
//!   waits for it.
//!
//! Message ids: a resent record's event gets the position `resend.<entry hash>`, so its
//! `Nats-Msg-Id` is new (the record never had one in the stream) and the same every
//! time that entry is sent. A crash between the ack and the mark sends it again with the
//! same id, and JetStream drops the copy (within its duplicate window, as for every
//! other event).
//!
//! A record that still cannot become an event stays in the quarantine, unmarked, and is
//! counted as still bad; it is not written to the quarantine a second time.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use lockstep_formats::Format;
use serde::{Deserialize, Serialize};

use crate::calendar::{civil_from_days, days_from_civil};
use crate::disk::{Disk, RealDisk};

/// The queued request of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    /// Only entries quarantined at or after this time (ms since epoch).
    pub since_ms: Option<i64>,
}

/// The outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: u64,
    /// Records of this request sent again and acknowledged (over all its runs).
    pub resent: u64,
    /// Records that still cannot become an event: kept in the quarantine.
    pub still_bad: u64,
    /// The first few reasons, with where each record came from.
    pub reasons: Vec<String>,
    pub finished_ms: i64,
}

/// `state_dir/quarantine`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// The quarantine file of `source`'s bad records.
pub fn records_path(state_dir: &Path, source: &str) -> PathBuf {
    dir(state_dir).join(format!("{source}.jsonl"))
}

/// The quarantine file of `source`'s events the broker refused.
pub fn refused_path(state_dir: &Path, source: &str) -> PathBuf {
    dir(state_dir).join(format!("{source}.refused.jsonl"))
}

fn request_path(state_dir: &Path, source: &str) -> PathBuf {
    dir(state_dir).join(format!("{source}.resend"))
}

fn marks_path(state_dir: &Path, source: &str) -> PathBuf {
    dir(state_dir).join(format!("{source}.resent"))
}

fn outcome_path(state_dir: &Path, source: &str) -> PathBuf {
    dir(state_dir).join(format!("{source}.resend-done"))
}

/// Queues a request (replacing one not yet taken); returns its path and the request.
pub fn request(
    state_dir: &Path,
    source: &str,
    since_ms: Option<i64>,
) -> io::Result<(PathBuf, Request)> {
    std::fs::create_dir_all(dir(state_dir))?;
    let r = Request {
        id: crate::clock::now_ms().max(1) as u64,
        since_ms,
    };
    let path = request_path(state_dir, source);
    let text = serde_json::to_vec(&r).map_err(io::Error::other)?;
    RealDisk.replace(&path, &text)?;
    Ok((path, r))
}

/// The queued request of `source`, if any.
pub fn load_request(state_dir: &Path, source: &str) -> Result<Option<Request>, String> {
    let path = request_path(state_dir, source);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: not a resend request: {e} (delete it and run `lockstep quarantine resend` again)", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Ends a request: writes its outcome, then removes the request (unless a newer one
/// replaced it meanwhile).
pub fn finish(state_dir: &Path, source: &str, o: &Outcome) -> io::Result<()> {
    let text = serde_json::to_vec(o).map_err(io::Error::other)?;
    RealDisk.replace(&outcome_path(state_dir, source), &text)?;
    if let Ok(Some(r)) = load_request(state_dir, source) {
        if r.id == o.id {
            std::fs::remove_file(request_path(state_dir, source))?;
        }
    }
    Ok(())
}

/// The outcome of `source`'s last finished request, if any.
pub fn load_outcome(state_dir: &Path, source: &str) -> Result<Option<Outcome>, String> {
    let path = outcome_path(state_dir, source);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: not a resend outcome: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The marks of `source`: entry hash → the request that resent it. A last line without
/// its newline (cut by a crash) is not a mark.
pub fn load_marks(state_dir: &Path, source: &str) -> Result<HashMap<u64, u64>, String> {
    let path = marks_path(state_dir, source);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = HashMap::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\n") else {
            break;
        };
        let text = String::from_utf8_lossy(line);
        let mut it = text.split_whitespace();
        if let (Some(h), Some(r)) = (it.next(), it.next()) {
            if let (Ok(h), Ok(r)) = (u64::from_str_radix(h, 16), r.parse::<u64>()) {
                out.insert(h, r);
            }
        }
    }
    Ok(out)
}

/// Appends marks, each made durable before the call returns.
#[derive(Debug)]
pub struct Marks {
    path: PathBuf,
    file: Option<File>,
}

impl Marks {
    pub fn new(state_dir: &Path, source: &str) -> Self {
        Self {
            path: marks_path(state_dir, source),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the entries `hashes` as resent by request `id`.
    pub fn append(&mut self, hashes: &[u64], id: u64) -> io::Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            // A line cut by an earlier crash is no mark: cut it off, so that the next
            // mark starts a line of its own.
            let len = f.metadata()?.len();
            if len > 0 {
                let mut last = [0u8];
                f.read_exact_at(&mut last, len - 1)?;
                if last[0] != b'\n' {
                    let data = std::fs::read(&self.path)?;
                    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    f.set_len(keep as u64)?;
                    f.sync_data()?;
                }
            }
            self.file = Some(f);
        }
        let mut text = String::with_capacity(hashes.len() * 32);
        for h in hashes {
            text.push_str(&format!("{h:016x} {id}\n"));
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let r = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
        if r.is_err() {
            self.file = None;
        }
        r
    }
}

/// One entry of a quarantine file of bad records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// xxh3 of the line: the entry's identity.
    pub hash: u64,
    pub ts_ms: i64,
    pub file: PathBuf,
    pub offset: u64,
    /// The record's full length.
    pub length: u64,
    pub reason: String,
    /// The record's bytes as kept (possibly only its first `max_record_bytes`); `None`
    /// when withheld (the source's map drops fields).
    pub data: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct RawEntry {
    ts_ms: i64,
    file: Option<String>,
    offset: Option<u64>,
    length: Option<u64>,
    reason: Option<String>,
    record: Option<String>,
    record_base64: Option<String>,
}

/// The entries of a quarantine file of bad records (none when it does not exist).
/// Lines that are not entries (cut by a crash) are skipped.
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, String> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            break;
        }
        let body = &line[..line.len() - 1];
        let Ok(raw) = serde_json::from_slice::<RawEntry>(body) else {
            continue;
        };
        let data = match (raw.record, raw.record_base64) {
            (Some(t), _) => Some(t.into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            (None, None) => None,
        };
        out.push(Entry {
            hash: xxhash_rust::xxh3::xxh3_64(body),
            ts_ms: raw.ts_ms,
            file: PathBuf::from(raw.file.unwrap_or_default()),
            offset: raw.offset.unwrap_or(0),
            length: raw.length.unwrap_or(0),
            reason: raw.reason.unwrap_or_default(),
            data,
        });
    }
    Ok(out)
}

/// The entry hashes of a quarantine file of bad records, without reading the entries
/// (for `check`: a file may hold up to `quarantine_max_bytes`).
pub fn entry_hashes(path: &Path) -> Vec<u64> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut line) {
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        out.push(xxhash_rust::xxh3::xxh3_64(&line[..line.len() - 1]));
        line.clear();
    }
    out
}

/// Lines in a quarantine file (of refused events): (count, bytes).
pub fn count_lines(path: &Path) -> (u64, u64) {
    let Ok(f) = File::open(path) else {
        return (0, 0);
    };
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut r = BufReader::with_capacity(1 << 16, f);
    while let Ok(buf) = r.fill_buf() {
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += n as u64;
        r.consume(n);
    }
    (lines, bytes)
}

/// Longest record read back from its file for a resend.
const MAX_READ_BACK: u64 = 1 << 30;

impl Entry {
    /// The record's bytes: as kept in the quarantine when they are whole, else read
    /// back from its file at its offset, where they must still be: one whole record of
    /// `format` of the same length (and beginning with the bytes kept, if any).
    pub fn record(&self, format: &Format) -> Result<Vec<u8>, String> {
        if let Some(d) = &self.data {
            if d.len() as u64 == self.length {
                return Ok(d.clone());
            }
        }
        let why = match &self.data {
            None => "withheld from the quarantine (the source's map drops fields)",
            Some(_) => "kept only in part in the quarantine",
        };
        if self.file.as_os_str().is_empty() || self.length > MAX_READ_BACK {
            return Err(format!(
                "the record is {why}, and there is no file to read it from"
            ));
        }
        let f = File::open(&self.file).map_err(|e| {
            format!(
                "the record is {why}, and its file {} cannot be read: {e}",
                self.file.display()
            )
        })?;
        let mut buf = vec![0u8; self.length as usize];
        f.read_exact_at(&mut buf, self.offset).map_err(|e| {
            format!(
                "the record is {why}, and its file {} no longer holds it at byte {}: {e}",
                self.file.display(),
                self.offset
            )
        })?;
        let same_start = self.data.as_ref().is_none_or(|d| buf.starts_with(d));
        if !same_start || format.frame(&buf) != Some(buf.len()) {
            return Err(format!(
                "the record is {why}, and its file {} holds something else at byte {} now",
                self.file.display(),
                self.offset
            ));
        }
        Ok(buf)
    }

    /// A header record (CSV with `header = true`) from the start of the entry's file.
    pub fn header(&self, format: &Format) -> Result<Vec<u8>, String> {
        let f = File::open(&self.file)
            .map_err(|e| format!("the header of {} cannot be read: {e}", self.file.display()))?;
        let mut buf = vec![0u8; 64 << 10];
        let n = f
            .read_at(&mut buf, 0)
            .map_err(|e| format!("the header of {} cannot be read: {e}", self.file.display()))?;
        buf.truncate(n);
        match format.frame(&buf) {
            Some(len) => {
                buf.truncate(len);
                Ok(buf)
            }
            None => Err(format!(
                "{} has no header record in its first 64 KiB",
                self.file.display()
            )),
        }
    }
}

/// `ms` since the epoch as `2026-11-29T16:00:01Z` (UTC).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `--since`: a UTC time (`2026-11-29T16:00:00Z`, `2026-11-29 16:00`, `2026-11-29`) or a
/// duration before `now_ms` (`30m`, `2h`, `7d`); ms since the epoch.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = crate::config::units::parse_duration(s) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    let bad = || {
        format!(
            "--since `{s}` is neither a UTC time like 2026-11-29T16:00:00Z (or 2026-11-29) nor \
             a duration like 30m, 2h or 7d"
        )
    };
    let t = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (t, None),
    };
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let dp: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = dp.as_slice() else {
        return Err(bad());
    };
    let (y, mo, d) = (num(y)?, num(mo)?, num(d)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, mo, d) * 86_400;
    if let Some(time) = time {
        let tp: Vec<&str> = time.split(':').collect();
        let (h, mi, se) = match tp.as_slice() {
            [h, m] => (num(h)?, num(m)?, 0),
            [h, m, s] => (num(h)?, num(m)?, num(s.split('.').next().unwrap_or(s))?),
            _ => return Err(bad()),
        };
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se;
    }
    Ok(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_since_parses() {
        let ms = parse_since("2026-11-29T16:00:01Z", 0).unwrap();
        assert_eq!(format_time(ms), "2026-11-29T16:00:01Z");
        assert_eq!(
            parse_since("2026-11-29", 0).unwrap(),
            ms - 16 * 3_600_000 - 1000
        );
        assert_eq!(parse_since("1970-01-01 00:01", 0).unwrap(), 60_000);
        assert_eq!(
            parse_since("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert!(parse_since("yesterday", 0)
            .unwrap_err()
            .contains("yesterday"));
        assert!(parse_since("2026-13-01", 0).is_err());
    }

    #[test]
    fn entries_are_read_back_as_the_quarantine_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = crate::pipeline::quarantine::Quarantine::new(dir.path(), "s");
        for (i, data) in [&b"{\"id\":1}\n"[..], &[0xff, 0xfe, b'\n']]
            .iter()
            .enumerate()
        {
            q.put(&crate::pipeline::quarantine::BadRecord {
                file: Path::new("/logs/a.log"),
                offset: i as u64 * 10,
                reason: "why",
                data,
                full_len: data.len() as u64 + 5,
            })
            .unwrap();
        }
        let path = records_path(dir.path(), "s");
        let e = read_entries(&path).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].data.as_deref(), Some(&b"{\"id\":1}\n"[..]));
        assert_eq!(
            e[1].data.as_deref(),
            Some(&[0xff, 0xfe, b'\n'][..]),
            "base64"
        );
        assert_eq!((e[1].offset, e[1].length), (10, 8));
        assert_eq!(e[0].file, Path::new("/logs/a.log"));
        let hashes: Vec<u64> = e.iter().map(|e| e.hash).collect();
        assert_eq!(entry_hashes(&path), hashes);
        assert_ne!(hashes[0], hashes[1]);
        assert_eq!(count_lines(&path).0, 2);
    }

    #[test]
    fn marks_cut_by_a_crash_are_not_marks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(super::dir(dir.path())).unwrap();
        let mut m = Marks::new(dir.path(), "s");
        m.append(&[1, 2], 7).unwrap();
        let mut f = OpenOptions::new().append(true).open(m.path()).unwrap();
        f.write_all(b"00000000000000ff 7").unwrap();
        let marks = load_marks(dir.path(), "s").unwrap();
        assert_eq!(marks, HashMap::from([(1, 7), (2, 7)]));
        // The next append starts on its own line.
        let mut m = Marks::new(dir.path(), "s");
        m.append(&[3], 8).unwrap();
        let marks = load_marks(dir.path(), "s").unwrap();
        assert_eq!(marks, HashMap::from([(1, 7), (2, 7), (3, 8)]));
    }

    #[test]
    fn a_truncated_record_is_read_back_from_its_file_when_it_is_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let second = b"{\"id\":2,\"x\":\"long\"}\n";
        std::fs::write(&log, [&b"{\"id\":1}\n"[..], second].concat()).unwrap();
        let mut e = Entry {
            hash: 0,
            ts_ms: 0,
            file: log.clone(),
            offset: 9,
            length: second.len() as u64,
            reason: "long".into(),
            data: Some(b"{\"id\":2".to_vec()),
        };
        assert_eq!(
            e.record(&Format::Jsonl).unwrap(),
            b"{\"id\":2,\"x\":\"long\"}\n"
        );
        e.data = None;
        assert_eq!(
            e.record(&Format::Jsonl).unwrap(),
            b"{\"id\":2,\"x\":\"long\"}\n"
        );
        e.data = Some(b"{\"id\":3".to_vec());
        assert!(e
            .record(&Format::Jsonl)
            .unwrap_err()
            .contains("something else"));
        e.offset = 5;
        e.data = None;
        assert!(
            e.record(&Format::Jsonl).is_err(),
            "not one whole record there"
        );
        std::fs::remove_file(&log).unwrap();
        assert!(e
            .record(&Format::Jsonl)
            .unwrap_err()
            .contains("cannot be read"));
    }
}
