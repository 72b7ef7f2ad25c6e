//! The poll source's files: the encoding of a scanned row, the scan's spill, the snapshot
//! of the previous scan, and the merge that compares the two (see the design note in
//! [`super`]).
//!
//! **A row** is encoded column by column: `0` for NULL, else `1`, the value's length as
//! a LEB128 varint, and its bytes as the driver gave them (text, or the raw bytes of a
//! binary column). The same value always gives the same bytes, and NULL differs from
//! the empty string. The key is the same encoding of the key columns alone.
//!
//! **The spill** of a scan is two files. `scan.rows` holds every row as
//! `[u32 length][row]`, in the order read. `scan.runs` holds sorted runs of
//! `[key hash u128][row hash u64][offset of the row in scan.rows u64][u32 key length][key]`,
//! each run at most [`RUN_ENTRIES`] entries sorted by key hash in memory before it is
//! written. Neither is fsynced: a crash before the merge ends throws the scan away.
//!
//! **The last scan** (called the snapshot in its file names, `snapshot` and
//! `snapshot.next`, and in the log; in the code it is the last scan, so as not to be
//! taken for a trigger source's initial snapshot) is `[magic][u32 n][n bytes of JSON: LastScanMeta]`, then the entries
//! `[key hash u128][row hash u64][u32 key length][key]` in key-hash order, then a trailer
//! `[u64 entries][u64 xxh3 of the entry bytes][magic]`. It is written to `snapshot.next`,
//! fsynced, and renamed over `snapshot` (the swap). It is read front to back through a
//! window of memory map that moves along the file, so the pages of the part already
//! merged are let go and memory stays flat whatever the table's size.
//!
//! **The changes** of a scan are `[op u8][u32 length][row or key]`: the row for `c`, `u`
//! and `r`, the key for `d`. The merge writes them with the next snapshot; both are
//! fsynced before any event is sent.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

/// Entries sorted in memory before a run is written (32 bytes each, plus the keys).
pub const RUN_ENTRIES: usize = 256 * 1024;
/// Key bytes held in memory for one run, at most.
const RUN_KEY_BYTES: usize = 8 << 20;
/// The part of the snapshot mapped at once.
const WINDOW: u64 = 4 << 20;
/// Map offsets are aligned to this (a multiple of every page size lockstep runs on).
const ALIGN: u64 = 64 << 10;
const MAGIC: &[u8; 8] = b"LSPOLL1\n";
const END: &[u8; 8] = b"LSPEND1\n";
/// Buffer of each sequential reader and writer.
const IO_BUF: usize = 256 << 10;
/// Keys and rows longer than this are a damaged file, not data.
const MAX_RECORD: usize = 256 << 20;

/// What a change is, in the changes file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
    Read,
}

impl ChangeOp {
    fn byte(self) -> u8 {
        match self {
            ChangeOp::Create => b'c',
            ChangeOp::Update => b'u',
            ChangeOp::Delete => b'd',
            ChangeOp::Read => b'r',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'c' => ChangeOp::Create,
            b'u' => ChangeOp::Update,
            b'd' => ChangeOp::Delete,
            b'r' => ChangeOp::Read,
            _ => return None,
        })
    }
}

/// Appends one column value of a row or key encoding.
pub fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            let mut n = b.len() as u64;
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(b);
        }
    }
}

/// The values of a row or key encoding, in order; `None` for NULL.
pub fn values(mut enc: &[u8]) -> impl Iterator<Item = Result<Option<&[u8]>, String>> {
    std::iter::from_fn(move || {
        let (&tag, rest) = enc.split_first()?;
        enc = rest;
        if tag == 0 {
            return Some(Ok(None));
        }
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let Some((&b, rest)) = enc.split_first() else {
                enc = &[];
                return Some(Err("a value's length is cut short".into()));
            };
            enc = rest;
            n |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 63 {
                enc = &[];
                return Some(Err("a value's length is too long".into()));
            }
        }
        if n as usize > enc.len() {
            enc = &[];
            return Some(Err("a value is cut short".into()));
        }
        let (v, rest) = enc.split_at(n as usize);
        enc = rest;
        Some(Ok(Some(v)))
    })
}

pub fn key_hash(key: &[u8]) -> u128 {
    xxh3_128(key)
}

pub fn row_hash(row: &[u8]) -> u64 {
    xxh3_64(row)
}

/// What the snapshot file says about the scan that made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastScanMeta {
    /// The scan's generation: its start time in ms, above every earlier generation. It
    /// is part of every event's position, so each scan's events have ids of their own.
    pub gen: u64,
    /// When the last full scan started (ms since epoch).
    pub full_ms: i64,
    /// Rows in the snapshot.
    pub rows: u64,
    /// The highest cursor value seen, as the database wrote it (incremental mode).
    pub cursor: Option<String>,
    /// Identifies what was scanned (table or query, and key): a snapshot of something
    /// else is not compared with.
    pub shape: String,
    /// The columns of each row, in order.
    pub columns: Vec<String>,
}

/// One entry of a run or snapshot; `key` is borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key_hash: u128,
    pub row_hash: u64,
    /// Offset of the row in `scan.rows` (runs only).
    pub off: u64,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// The rows and sorted runs of a scan in progress.
pub struct Spill {
    rows_path: PathBuf,
    runs_path: PathBuf,
    rows: BufWriter<File>,
    rows_len: u64,
    runs: BufWriter<File>,
    runs_len: u64,
    /// Byte ranges of the runs written so far.
    run_ranges: Vec<(u64, u64)>,
    entries: Vec<(Entry, u32, u32)>,
    keys: Vec<u8>,
    pub rows_written: u64,
}

impl Spill {
    pub fn create(dir: &Path) -> io::Result<Spill> {
        fs::create_dir_all(dir)?;
        let rows_path = dir.join("scan.rows");
        let runs_path = dir.join("scan.runs");
        Ok(Spill {
            rows: BufWriter::with_capacity(IO_BUF, File::create(&rows_path)?),
            runs: BufWriter::with_capacity(IO_BUF, File::create(&runs_path)?),
            rows_path,
            runs_path,
            rows_len: 0,
            runs_len: 0,
            run_ranges: Vec::new(),
            entries: Vec::with_capacity(RUN_ENTRIES.min(16 * 1024)),
            keys: Vec::new(),
            rows_written: 0,
        })
    }

    /// Adds one scanned row.
    pub fn push(&mut self, key: &[u8], row: &[u8]) -> io::Result<()> {
        let off = self.rows_len;
        self.rows.write_all(&(row.len() as u32).to_le_bytes())?;
        self.rows.write_all(row)?;
        self.rows_len += 4 + row.len() as u64;
        let at = self.keys.len() as u32;
        self.keys.extend_from_slice(key);
        self.entries.push((
            Entry {
                key_hash: key_hash(key),
                row_hash: row_hash(row),
                off,
            },
            at,
            key.len() as u32,
        ));
        self.rows_written += 1;
        if self.entries.len() >= RUN_ENTRIES || self.keys.len() >= RUN_KEY_BYTES {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> io::Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.entries.sort_unstable_by_key(|e| e.0.key_hash);
        let start = self.runs_len;
        for (e, at, len) in &self.entries {
            let key = &self.keys[*at as usize..(*at + *len) as usize];
            self.runs.write_all(&e.key_hash.to_le_bytes())?;
            self.runs.write_all(&e.row_hash.to_le_bytes())?;
            self.runs.write_all(&e.off.to_le_bytes())?;
            self.runs.write_all(&len.to_le_bytes())?;
            self.runs.write_all(key)?;
            self.runs_len += 36 + u64::from(*len);
        }
        self.run_ranges.push((start, self.runs_len));
        self.entries.clear();
        self.keys.clear();
        Ok(())
    }

    /// Ends the scan: the last run is written and the files are ready to merge.
    pub fn finish(mut self) -> io::Result<Scanned> {
        self.write_run()?;
        self.rows.flush()?;
        self.runs.flush()?;
        Ok(Scanned {
            rows_path: self.rows_path,
            runs_path: self.runs_path,
            run_ranges: self.run_ranges,
            rows: self.rows_written,
        })
    }
}

/// A finished spill.
pub struct Scanned {
    rows_path: PathBuf,
    runs_path: PathBuf,
    run_ranges: Vec<(u64, u64)>,
    pub rows: u64,
}

impl Scanned {
    /// Deletes the spill files.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.rows_path);
        let _ = fs::remove_file(&self.runs_path);
    }
}

/// Reads one sorted run front to back.
struct RunReader {
    r: BufReader<io::Take<File>>,
    key: Vec<u8>,
}

impl RunReader {
    fn next(&mut self) -> io::Result<Option<Entry>> {
        let mut head = [0u8; 36];
        match self.r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let e = Entry {
            key_hash: u128::from_le_bytes(head[..16].try_into().expect("16 bytes")),
            row_hash: u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")),
            off: u64::from_le_bytes(head[24..32].try_into().expect("8 bytes")),
        };
        let len = u32::from_le_bytes(head[32..36].try_into().expect("4 bytes")) as usize;
        self.key.resize(len, 0);
        self.r.read_exact(&mut self.key)?;
        Ok(Some(e))
    }
}

/// The runs of a spill merged into one stream in key-hash order.
struct Runs {
    readers: Vec<RunReader>,
    heads: BinaryHeap<Reverse<(u128, usize)>>,
    current: Vec<Option<Entry>>,
}

impl Runs {
    fn open(s: &Scanned) -> io::Result<Runs> {
        let mut readers = Vec::with_capacity(s.run_ranges.len());
        // Many runs share the memory budget of one reader.
        let buf = (IO_BUF / s.run_ranges.len().max(1)).max(16 << 10);
        for &(start, end) in &s.run_ranges {
            let mut f = File::open(&s.runs_path)?;
            f.seek(SeekFrom::Start(start))?;
            readers.push(RunReader {
                r: BufReader::with_capacity(buf, f.take(end - start)),
                key: Vec::new(),
            });
        }
        let mut runs = Runs {
            heads: BinaryHeap::with_capacity(readers.len()),
            current: vec![None; readers.len()],
            readers,
        };
        for i in 0..runs.readers.len() {
            runs.advance(i)?;
        }
        Ok(runs)
    }

    fn advance(&mut self, i: usize) -> io::Result<()> {
        self.current[i] = self.readers[i].next()?;
        if let Some(e) = self.current[i] {
            self.heads.push(Reverse((e.key_hash, i)));
        }
        Ok(())
    }

    /// The smallest entry not yet taken, and the run it is in (its key is that run's
    /// `key` until [`Runs::take`]).
    fn peek(&self) -> Option<(Entry, usize)> {
        let Reverse((_, i)) = *self.heads.peek()?;
        Some((self.current[i].expect("a head has an entry"), i))
    }

    fn take(&mut self, i: usize) -> io::Result<()> {
        self.heads.pop();
        self.advance(i)
    }
}

/// Writes a snapshot file.
pub struct LastScanWriter {
    path: PathBuf,
    w: BufWriter<File>,
    hash: Xxh3,
    count: u64,
}

impl LastScanWriter {
    pub fn create(path: &Path, meta: &LastScanMeta) -> io::Result<LastScanWriter> {
        let mut w = BufWriter::with_capacity(IO_BUF, File::create(path)?);
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u32).to_le_bytes())?;
        w.write_all(&json)?;
        Ok(LastScanWriter {
            path: path.to_owned(),
            w,
            hash: Xxh3::new(),
            count: 0,
        })
    }

    pub fn push(&mut self, key_hash: u128, row_hash: u64, key: &[u8]) -> io::Result<()> {
        let mut head = [0u8; 28];
        head[..16].copy_from_slice(&key_hash.to_le_bytes());
        head[16..24].copy_from_slice(&row_hash.to_le_bytes());
        head[24..28].copy_from_slice(&(key.len() as u32).to_le_bytes());
        crate::crash::point("snapshot");
        self.hash.update(&head);
        self.hash.update(key);
        self.w.write_all(&head)?;
        self.w.write_all(key)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file; returns the number of entries.
    pub fn finish(mut self) -> io::Result<u64> {
        self.w.write_all(&self.count.to_le_bytes())?;
        self.w.write_all(&self.hash.digest().to_le_bytes())?;
        self.w.write_all(END)?;
        let f = self.w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let _ = &self.path;
        Ok(self.count)
    }
}

/// Reads a snapshot file front to back through a moving memory map.
pub struct LastScanReader {
    path: PathBuf,
    file: File,
    pub meta: LastScanMeta,
    /// Where the entries end (the trailer starts).
    end: u64,
    pos: u64,
    map: Option<memmap2::Mmap>,
    map_at: u64,
    pub entries: u64,
    checksum: u64,
    pub key: Vec<u8>,
}

impl LastScanReader {
    /// Opens a snapshot and checks its header and trailer; `Ok(None)` when there is none.
    pub fn open(path: &Path) -> io::Result<Option<LastScanReader>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut head = [0u8; 12];
        if len < 12 + 24 || file.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
            return Err(corrupt(path, "not a lockstep poll snapshot (bad header)"));
        }
        let n = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as u64;
        if 12 + n + 24 > len {
            return Err(corrupt(path, "the header is longer than the file"));
        }
        let mut json = vec![0u8; n as usize];
        file.read_exact(&mut json)?;
        let meta: LastScanMeta = serde_json::from_slice(&json)
            .map_err(|e| corrupt(path, format!("the header is not valid: {e}")))?;
        let mut tail = [0u8; 24];
        file.read_exact_at(&mut tail, len - 24)?;
        if &tail[16..] != END {
            return Err(corrupt(
                path,
                "the trailer is missing (the file is cut short)",
            ));
        }
        Ok(Some(LastScanReader {
            path: path.to_owned(),
            file,
            meta,
            end: len - 24,
            pos: 12 + n,
            map: None,
            map_at: 0,
            entries: u64::from_le_bytes(tail[..8].try_into().expect("8 bytes")),
            checksum: u64::from_le_bytes(tail[8..16].try_into().expect("8 bytes")),
            key: Vec::new(),
        }))
    }

    /// Reads every entry and checks the count and checksum of the trailer, then goes
    /// back to the first entry.
    pub fn verify(&mut self) -> io::Result<()> {
        let start = self.pos;
        let mut hash = Xxh3::new();
        let mut n = 0u64;
        while let Some(e) = self.next_entry()? {
            hash.update(&e.key_hash.to_le_bytes());
            hash.update(&e.row_hash.to_le_bytes());
            hash.update(&(self.key.len() as u32).to_le_bytes());
            hash.update(&self.key);
            n += 1;
        }
        self.pos = start;
        self.map = None;
        if n != self.entries || hash.digest() != self.checksum {
            return Err(corrupt(
                &self.path,
                format!(
                    "the entries do not match the trailer ({n} read, {} written, checksum {})",
                    self.entries,
                    if hash.digest() == self.checksum {
                        "matches"
                    } else {
                        "differs"
                    }
                ),
            ));
        }
        Ok(())
    }

    /// `n` bytes at the read position, mapping the window that holds them.
    fn bytes(&mut self, n: u64) -> io::Result<&[u8]> {
        if self.pos + n > self.end {
            return Err(corrupt(&self.path, "an entry runs past the end"));
        }
        let mapped = self.map.as_ref().is_some_and(|m| {
            self.pos >= self.map_at && self.pos + n <= self.map_at + m.len() as u64
        });
        if !mapped {
            let at = self.pos / ALIGN * ALIGN;
            let len = (self.pos + n - at).max(WINDOW).min(self.end - at);
            self.map = None;
            self.map = Some(map(&self.file, at, len as usize)?);
            self.map_at = at;
        }
        let m = self.map.as_ref().expect("mapped above");
        let from = (self.pos - self.map_at) as usize;
        self.pos += n;
        Ok(&m[from..from + n as usize])
    }

    /// The next entry (its key in `self.key`), or `None` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let head = self.bytes(28)?;
        let e = Entry {
            key_hash: u128::from_le_bytes(head[..16].try_into().expect("16 bytes")),
            row_hash: u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")),
            off: 0,
        };
        let len = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")) as u64;
        if len as usize > MAX_RECORD {
            return Err(corrupt(&self.path, "a key is impossibly long"));
        }
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        key.extend_from_slice(self.bytes(len)?);
        self.key = key;
        Ok(Some(e))
    }
}

/// Maps `len` bytes of `file` from `at`, read-only, for a front-to-back read.
#[allow(unsafe_code)]
fn map(file: &File, at: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapped file is a snapshot lockstep wrote, fsynced and renamed into
    // place; lockstep never writes to a snapshot again (the next one is a new file
    // renamed over it, which leaves this inode as it is), so the bytes cannot change
    // under the map. Another process truncating it would be sabotage of the state
    // directory, which is the agent's alone.
    let m = unsafe { memmap2::MmapOptions::new().offset(at).len(len).map(file)? };
    let _ = m.advise(memmap2::Advice::Sequential);
    Ok(m)
}

/// Writes the changes of a scan.
pub struct ChangesWriter {
    w: BufWriter<File>,
    pub count: u64,
}

impl ChangesWriter {
    pub fn create(path: &Path) -> io::Result<ChangesWriter> {
        Ok(ChangesWriter {
            w: BufWriter::with_capacity(IO_BUF, File::create(path)?),
            count: 0,
        })
    }

    pub fn push(&mut self, op: ChangeOp, data: &[u8]) -> io::Result<()> {
        self.w.write_all(&[op.byte()])?;
        self.w.write_all(&(data.len() as u32).to_le_bytes())?;
        self.w.write_all(data)?;
        self.count += 1;
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub fn finish(self) -> io::Result<u64> {
        let f = self.w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(self.count)
    }
}

/// Reads the changes of a scan in order.
pub struct ChangesReader {
    path: PathBuf,
    r: BufReader<File>,
    pub data: Vec<u8>,
    /// Index of the next change (0-based).
    pub index: u64,
}

impl ChangesReader {
    pub fn open(path: &Path) -> io::Result<ChangesReader> {
        Ok(ChangesReader {
            path: path.to_owned(),
            r: BufReader::with_capacity(IO_BUF, File::open(path)?),
            data: Vec::new(),
            index: 0,
        })
    }

    /// The next change (its bytes in `self.data`), or `None` at the end.
    pub fn next_change(&mut self) -> io::Result<Option<ChangeOp>> {
        if self.r.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.r.read_exact(&mut head)?;
        let op = ChangeOp::from_byte(head[0])
            .ok_or_else(|| corrupt(&self.path, format!("change {} has no op", self.index)))?;
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return Err(corrupt(&self.path, "a change is impossibly long"));
        }
        self.data.resize(len, 0);
        self.r.read_exact(&mut self.data)?;
        self.index += 1;
        Ok(Some(op))
    }
}

/// How the scan is compared with the previous snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeMode {
    /// No previous snapshot: every row is op `r` (`emit`) or only recorded.
    First { emit: bool },
    /// A full scan: a key of the snapshot that the scan lacks is a delete.
    Full,
    /// An incremental scan: the scan holds only some rows; the others are unchanged.
    Partial,
}

/// What a merge found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub read: u64,
    pub unchanged: u64,
    /// Rows of the scan whose key an earlier row of the same scan already had.
    pub repeated_keys: u64,
    /// Rows in the new snapshot.
    pub rows: u64,
}

impl MergeCounts {
    pub fn changes(&self) -> u64 {
        self.created + self.updated + self.deleted + self.read
    }
}

/// Compares a finished scan with the previous snapshot (`old`), writing the next
/// snapshot and the changes; both files are fsynced when this returns. A repeated key
/// keeps its first row.
pub fn merge(
    scanned: &Scanned,
    mut old: Option<&mut LastScanReader>,
    mode: MergeMode,
    next: LastScanWriter,
    changes: &mut ChangesWriter,
    stop: &dyn Fn() -> bool,
) -> io::Result<MergeCounts> {
    let mut runs = Runs::open(scanned)?;
    let rows = File::open(&scanned.rows_path)?;
    let mut row = Vec::new();
    let mut next = next;
    let mut counts = MergeCounts::default();
    let mut o = match old.as_deref_mut() {
        Some(r) => r.next_entry()?,
        None => None,
    };
    let mut last: Option<u128> = None;
    let read_row = |off: u64, row: &mut Vec<u8>| -> io::Result<()> {
        let mut len = [0u8; 4];
        rows.read_exact_at(&mut len, off)?;
        row.resize(u32::from_le_bytes(len) as usize, 0);
        rows.read_exact_at(row, off + 4)
    };
    let mut n = 0u64;
    loop {
        n += 1;
        if n.is_multiple_of(64 * 1024) && stop() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        let new = runs.peek();
        match (new, o) {
            (None, None) => break,
            (Some((e, i)), _) if last == Some(e.key_hash) => {
                counts.repeated_keys += 1;
                runs.take(i)?;
            }
            (Some((e, i)), old_e) if old_e.is_none_or(|oe| e.key_hash < oe.key_hash) => {
                // A key the snapshot does not have.
                next.push(e.key_hash, e.row_hash, &runs.readers[i].key)?;
                let op = match mode {
                    MergeMode::First { emit: false } => None,
                    MergeMode::First { emit: true } => Some(ChangeOp::Read),
                    MergeMode::Full | MergeMode::Partial => Some(ChangeOp::Create),
                };
                if let Some(op) = op {
                    read_row(e.off, &mut row)?;
                    changes.push(op, &row)?;
                    match op {
                        ChangeOp::Read => counts.read += 1,
                        _ => counts.created += 1,
                    }
                }
                last = Some(e.key_hash);
                counts.rows += 1;
                runs.take(i)?;
            }
            (Some((e, i)), Some(oe)) if e.key_hash == oe.key_hash => {
                next.push(e.key_hash, e.row_hash, &runs.readers[i].key)?;
                if e.row_hash == oe.row_hash {
                    counts.unchanged += 1;
                } else {
                    read_row(e.off, &mut row)?;
                    changes.push(ChangeOp::Update, &row)?;
                    counts.updated += 1;
                }
                last = Some(e.key_hash);
                counts.rows += 1;
                runs.take(i)?;
                o = old
                    .as_deref_mut()
                    .expect("an old entry came from it")
                    .next_entry()?;
            }
            (_, Some(oe)) => {
                // A key the scan does not have.
                let r = old.as_deref_mut().expect("an old entry came from it");
                if mode == MergeMode::Partial {
                    next.push(oe.key_hash, oe.row_hash, &r.key)?;
                    counts.rows += 1;
                } else {
                    changes.push(ChangeOp::Delete, &r.key)?;
                    counts.deleted += 1;
                }
                o = r.next_entry()?;
            }
            (Some(_), None) => unreachable!("handled by the guard above"),
        }
    }
    next.finish()?;
    Ok(counts)
}

#[cfg(test)]
mod tests;
