//! Segment files and the ledger: names, and reading what is on disk.

use std::io;
use std::path::{Path, PathBuf};

use lockstep_formats::frame::{check_body, find_header, parse_header, FrameError, HEADER_LEN};
use xxhash_rust::xxh3::xxh3_64;

/// Where one good frame sits in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    pub offset: u64,
    pub len: u64,
    pub first_seq: u64,
    pub count: u32,
    pub first_ms: i64,
    /// The body's size before compression.
    pub raw_len: u32,
}

impl FrameMeta {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// A stretch of a segment that is not a good frame.
#[derive(Debug, Clone)]
pub struct BadStretch {
    pub offset: u64,
    pub len: u64,
    pub error: FrameError,
    /// The sequence numbers it held, when its header could still be read.
    pub seqs: Option<(u64, u64)>,
    /// It runs to the end of the file.
    pub at_end: bool,
}

/// What a segment file holds.
#[derive(Debug, Default)]
pub struct SegmentScan {
    pub frames: Vec<FrameMeta>,
    /// Damaged frames (checksums fail), in file order.
    pub bad: Vec<BadStretch>,
    /// A frame cut short by the end of the file: where it starts.
    pub torn: Option<u64>,
}

impl SegmentScan {
    /// Where the good part of the file ends: appends may go on from here.
    pub fn clean_len(&self, file_len: u64) -> u64 {
        let mut end = file_len;
        if let Some(t) = self.torn {
            end = end.min(t);
        }
        if let Some(b) = self.bad.last().filter(|b| b.at_end) {
            end = end.min(b.offset);
        }
        end
    }
}

/// Walks the frames of a segment without decompressing them: headers and body
/// checksums only.
pub fn scan_segment(b: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut at = 0usize;
    while at < b.len() {
        let error = match parse_header(&b[at..]) {
            Ok(h) => match check_body(&h, &b[at + HEADER_LEN..]) {
                Ok(_) => {
                    scan.frames.push(FrameMeta {
                        offset: at as u64,
                        len: h.frame_len(),
                        first_seq: h.first_seq,
                        count: h.count,
                        first_ms: h.first_ms,
                        raw_len: h.raw_len,
                    });
                    at += h.frame_len() as usize;
                    continue;
                }
                Err(FrameError::ShortBody { .. }) => {
                    scan.torn = Some(at as u64);
                    break;
                }
                Err(error) => {
                    let len = h.frame_len();
                    scan.bad.push(BadStretch {
                        offset: at as u64,
                        len,
                        error,
                        seqs: Some((h.first_seq, h.last_seq())),
                        at_end: at as u64 + len == b.len() as u64,
                    });
                    at += len as usize;
                    continue;
                }
            },
            Err(FrameError::ShortHeader(_)) => {
                scan.torn = Some(at as u64);
                break;
            }
            Err(error) => error,
        };
        // A damaged header: its length cannot be trusted; find the next good header.
        let next = find_header(b, at + 1);
        let end = next.unwrap_or(b.len());
        if b[at..end].iter().all(|&x| x == 0) && next.is_none() {
            // Zeros to the end: space the file system allocated for a write that never
            // landed (a crash). That is a torn tail, not damage.
            scan.torn = Some(at as u64);
            break;
        }
        scan.bad.push(BadStretch {
            offset: at as u64,
            len: (end - at) as u64,
            error,
            seqs: None,
            at_end: next.is_none(),
        });
        at = end;
    }
    scan
}

/// `<first_seq>.seg`, zero-padded so names sort in order.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The segment files in `dir`, by first sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            segs.push((seq, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

const LEDGER_MAGIC: [u8; 4] = *b"LSL1";

pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger")
}

/// The ledger's bytes: magic, 4 spare bytes, the acknowledged sequence number, and an
/// xxh3 of the first 16 bytes.
pub fn encode_ledger(acked: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&LEDGER_MAGIC);
    b[8..16].copy_from_slice(&acked.to_le_bytes());
    let check = xxh3_64(&b[0..16]);
    b[16..24].copy_from_slice(&check.to_le_bytes());
    b
}

/// Reads the ledger: `Ok(None)` when there is none, `Err` with a reason when it is
/// damaged.
pub fn read_ledger(dir: &Path) -> io::Result<Option<Result<u64, &'static str>>> {
    let b = match std::fs::read(ledger_path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if b.len() != 24 || b[0..4] != LEDGER_MAGIC {
        return Ok(Some(Err("not a lockstep spool ledger")));
    }
    let check = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    if xxh3_64(&b[0..16]) != check {
        return Ok(Some(Err("its checksum does not match")));
    }
    Ok(Some(Ok(u64::from_le_bytes(
        b[8..16].try_into().expect("8 bytes"),
    ))))
}
