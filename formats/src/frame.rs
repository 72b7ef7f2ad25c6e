//! The spool's frame: a batch of events, postcard-encoded and zstd-compressed, behind a
//! checksummed header. Pure functions over bytes; the agent's `spool` module owns the
//! files.
//!
//! ```text
//! offset size field
//!      0    4 magic "LSF2" (or "LSF1": the version before events carried a key hash)
//!      4    4 body_len      compressed body length (u32 LE)
//!      8    4 raw_len       body length before compression
//!     12    4 count         events in the frame
//!     16    8 first_seq     spool sequence number of the first event (u64 LE)
//!     24    8 first_ms      capture time of the first event (ms since epoch, i64 LE)
//!     32    8 body_check    xxh3-64 of the compressed body
//!     40    8 header_check  xxh3-64 of bytes 0..40
//!     48      body          zstd(postcard(event) × count)
//! ```
//!
//! Two checksums: `header_check` makes the length trustworthy before anything is read
//! past the header, so a flipped bit in a length can never send a reader off to a wrong
//! offset; `body_check` catches damage in the body. A reader that meets a bad header
//! looks for the next offset where a valid header starts ([`find_header`]).
//!
//! Versions: `LSF2` frames hold [`SpoolEvent`]s with their `key_hash`; `LSF1` frames,
//! written by lockstep before it ordered publishes by key, hold the same events without
//! it. Both are read (an `LSF1` event gets [`KEY_UNKNOWN`]); only `LSF2` is written.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: [u8; 4] = *b"LSF2";
/// The magic of version 1 frames (events without `key_hash`): read, never written.
pub const MAGIC_V1: [u8; 4] = *b"LSF1";
/// `key_hash` of an event without a key.
pub const KEY_NONE: u64 = 0;
/// `key_hash` of an event whose key is not known (read from a version 1 frame).
pub const KEY_UNKNOWN: u64 = u64::MAX;
pub const HEADER_LEN: usize = 48;
/// No frame body, compressed or not, is larger than this; a header that says otherwise
/// is damaged.
pub const MAX_BODY: u32 = 256 << 20;

/// One event as the spool keeps it: everything needed to publish it again, and the
/// source and table it is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEvent<'a> {
    pub source: &'a str,
    pub table: &'a str,
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub captured_ms: i64,
    #[serde(borrow)]
    pub payload: RawBytes<'a>,
    /// The event's key identity for ordering (see the agent's `pipeline::Outgoing`);
    /// [`KEY_NONE`] without a key.
    pub key_hash: u64,
}

/// An event of a version 1 frame: a [`SpoolEvent`] without `key_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SpoolEventV1<'a> {
    source: &'a str,
    table: &'a str,
    subject: &'a str,
    msg_id: &'a str,
    captured_ms: i64,
    #[serde(borrow)]
    payload: RawBytes<'a>,
}

impl<'a> From<SpoolEventV1<'a>> for SpoolEvent<'a> {
    fn from(e: SpoolEventV1<'a>) -> Self {
        SpoolEvent {
            source: e.source,
            table: e.table,
            subject: e.subject,
            msg_id: e.msg_id,
            captured_ms: e.captured_ms,
            payload: e.payload,
            key_hash: KEY_UNKNOWN,
        }
    }
}

impl<'a> From<SpoolEvent<'a>> for SpoolEventV1<'a> {
    fn from(e: SpoolEvent<'a>) -> Self {
        SpoolEventV1 {
            source: e.source,
            table: e.table,
            subject: e.subject,
            msg_id: e.msg_id,
            captured_ms: e.captured_ms,
            payload: e.payload,
        }
    }
}

/// Bytes written with serde's `bytes` type, so postcard copies them in one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawBytes<'a>(pub &'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawBytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawBytes<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(RawBytes(v))
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// A frame header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// 2, or 1 for a frame written before events carried a key hash.
    pub version: u8,
    pub body_len: u32,
    pub raw_len: u32,
    pub count: u32,
    pub first_seq: u64,
    pub first_ms: i64,
    pub body_check: u64,
}

impl FrameHeader {
    /// Header and body together.
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// The sequence number of the frame's last event.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count).saturating_sub(1)
    }

    /// The header of a frame whose compressed body is `body` (the checksum is computed).
    pub fn for_body(first_seq: u64, count: u32, raw_len: u32, first_ms: i64, body: &[u8]) -> Self {
        FrameHeader {
            version: 2,
            body_len: body.len() as u32,
            raw_len,
            count,
            first_seq,
            first_ms,
            body_check: xxh3_64(body),
        }
    }

    /// The header's 48 bytes, with its own checksum.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(if self.version == 1 { &MAGIC_V1 } else { &MAGIC });
        b[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_ms.to_le_bytes());
        b[32..40].copy_from_slice(&self.body_check.to_le_bytes());
        let check = xxh3_64(&b[0..40]);
        b[40..48].copy_from_slice(&check.to_le_bytes());
        b
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame header is cut short ({0} of {HEADER_LEN} bytes)")]
    ShortHeader(usize),
    #[error("no frame starts here (bad magic)")]
    BadMagic,
    #[error("frame header checksum does not match")]
    HeaderChecksum,
    #[error("frame header is inconsistent: {0}")]
    BadHeader(&'static str),
    #[error("frame body is cut short ({have} of {want} bytes)")]
    ShortBody { have: u64, want: u64 },
    #[error("frame body checksum does not match")]
    BodyChecksum,
    #[error("frame body does not decompress: {0}")]
    Decompress(String),
    #[error("event {index} of the frame does not decode: {error}")]
    Decode { index: u32, error: String },
    #[error("frame has {0} bytes after its last event")]
    Trailing(usize),
}

/// Reads and checks a header from the start of `b`.
pub fn parse_header(b: &[u8]) -> Result<FrameHeader, FrameError> {
    if b.len() < HEADER_LEN {
        return Err(FrameError::ShortHeader(b.len()));
    }
    let version = match b[0..4].try_into().expect("4 bytes") {
        MAGIC => 2,
        MAGIC_V1 => 1,
        _ => return Err(FrameError::BadMagic),
    };
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if xxh3_64(&b[0..40]) != u64_at(40) {
        return Err(FrameError::HeaderChecksum);
    }
    let h = FrameHeader {
        version,
        body_len: u32_at(4),
        raw_len: u32_at(8),
        count: u32_at(12),
        first_seq: u64_at(16),
        first_ms: u64_at(24) as i64,
        body_check: u64_at(32),
    };
    if h.body_len > MAX_BODY || h.raw_len > MAX_BODY {
        return Err(FrameError::BadHeader("length past the limit"));
    }
    if h.count == 0 || h.first_seq == 0 || h.first_seq.checked_add(u64::from(h.count)).is_none() {
        return Err(FrameError::BadHeader("sequence numbers out of range"));
    }
    Ok(h)
}

/// The offset of the next valid header in `b` at or after `from`, if any.
pub fn find_header(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + HEADER_LEN <= b.len() {
        let at = b[i..b.len() - HEADER_LEN + 4]
            .windows(4)
            .position(|w| w == MAGIC || w == MAGIC_V1)?;
        i += at;
        if parse_header(&b[i..]).is_ok() {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Encodes batches of events into frames, reusing its buffers and its zstd context.
pub struct FrameWriter {
    raw: Vec<u8>,
    packed: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

/// The zstd level frames are written at: fast, and ample for JSON events.
pub const ZSTD_LEVEL: i32 = 1;

impl FrameWriter {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            raw: Vec::with_capacity(256 << 10),
            packed: Vec::with_capacity(64 << 10),
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        })
    }

    /// Appends one frame holding `events` (numbered from `first_seq`) to `out` and
    /// returns its header.
    pub fn encode<'a, I>(
        &mut self,
        first_seq: u64,
        events: I,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, std::io::Error>
    where
        I: IntoIterator<Item = SpoolEvent<'a>>,
    {
        self.encode_version(2, first_seq, events, out)
    }

    /// As [`FrameWriter::encode`], in frame version `version`: 1 writes what lockstep
    /// wrote before events carried a key hash (dropping `key_hash`), for tests that an
    /// old spool is still read.
    pub fn encode_version<'a, I>(
        &mut self,
        version: u8,
        first_seq: u64,
        events: I,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, std::io::Error>
    where
        I: IntoIterator<Item = SpoolEvent<'a>>,
    {
        self.raw.clear();
        let mut count = 0u32;
        let mut first_ms = 0;
        for e in events {
            if count == 0 {
                first_ms = e.captured_ms;
            }
            count += 1;
            let raw = std::mem::take(&mut self.raw);
            self.raw = if version == 1 {
                postcard::to_extend(&SpoolEventV1::from(e), raw)
            } else {
                postcard::to_extend(&e, raw)
            }
            .map_err(std::io::Error::other)?;
        }
        if count == 0 || self.raw.len() > MAX_BODY as usize {
            return Err(std::io::Error::other(format!(
                "a frame holds 1 to {} bytes of events; this batch has {} events in {} bytes",
                MAX_BODY,
                count,
                self.raw.len()
            )));
        }
        self.packed.clear();
        self.packed
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        self.zstd.compress_to_buffer(&self.raw, &mut self.packed)?;
        let h = FrameHeader {
            version: if version == 1 { 1 } else { 2 },
            body_len: self.packed.len() as u32,
            raw_len: self.raw.len() as u32,
            count,
            first_seq,
            first_ms,
            body_check: xxh3_64(&self.packed),
        };
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&self.packed);
        Ok(h)
    }
}

/// Checks that `body` starts with the whole body `h` describes, intact; returns it.
pub fn check_body<'b>(h: &FrameHeader, body: &'b [u8]) -> Result<&'b [u8], FrameError> {
    if (body.len() as u64) < u64::from(h.body_len) {
        return Err(FrameError::ShortBody {
            have: body.len() as u64,
            want: u64::from(h.body_len),
        });
    }
    let body = &body[..h.body_len as usize];
    if xxh3_64(body) != h.body_check {
        return Err(FrameError::BodyChecksum);
    }
    Ok(body)
}

/// Decodes frame bodies, reusing its buffer and its zstd context.
pub struct FrameReader {
    raw: Vec<u8>,
    zstd: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").finish_non_exhaustive()
    }
}

impl FrameReader {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            raw: Vec::new(),
            zstd: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Checks `body` against `h` and decodes its events. The events borrow from this
    /// reader's buffer until the next call.
    pub fn decode(
        &mut self,
        h: &FrameHeader,
        body: &[u8],
    ) -> Result<Vec<SpoolEvent<'_>>, FrameError> {
        let body = check_body(h, body)?;
        self.raw.clear();
        self.raw.reserve(h.raw_len as usize);
        let n = self
            .zstd
            .decompress_to_buffer(body, &mut self.raw)
            .map_err(|e| FrameError::Decompress(e.to_string()))?;
        if n != h.raw_len as usize {
            return Err(FrameError::Decompress(format!(
                "{n} bytes where the header says {}",
                h.raw_len
            )));
        }
        let mut rest: &[u8] = &self.raw;
        // A postcard event takes at least 7 bytes; never trust `count` for a capacity.
        let mut events = Vec::with_capacity((h.count as usize).min(rest.len() / 7 + 1));
        for index in 0..h.count {
            let decoded = if h.version == 1 {
                postcard::take_from_bytes::<SpoolEventV1<'_>>(rest)
                    .map(|(e, r)| (SpoolEvent::from(e), r))
            } else {
                postcard::take_from_bytes::<SpoolEvent<'_>>(rest)
            };
            let (e, r) = decoded.map_err(|e| FrameError::Decode {
                index,
                error: e.to_string(),
            })?;
            events.push(e);
            rest = r;
        }
        if !rest.is_empty() {
            return Err(FrameError::Trailing(rest.len()));
        }
        Ok(events)
    }
}

/// Walks a byte string of frames the way the spool's recovery does: `good` sees every
/// frame that decodes, with its offset; `bad` sees the offset and error of every damaged
/// stretch, after which the walk goes on at the next valid header. A frame cut short
/// at the end ends the walk. This is the fuzz target's entry point.
pub fn scan(
    b: &[u8],
    mut good: impl FnMut(usize, &FrameHeader, &[SpoolEvent<'_>]),
    mut bad: impl FnMut(usize, &FrameError),
) -> std::io::Result<()> {
    let mut reader = FrameReader::new()?;
    let mut at = 0;
    while at < b.len() {
        let e = match parse_header(&b[at..]) {
            Ok(h) => match reader.decode(&h, &b[at + HEADER_LEN..]) {
                Ok(events) => {
                    good(at, &h, &events);
                    at += h.frame_len() as usize;
                    continue;
                }
                Err(e @ FrameError::ShortBody { .. }) => e,
                Err(e) => {
                    bad(at, &e);
                    at += h.frame_len() as usize;
                    continue;
                }
            },
            Err(e) => e,
        };
        bad(at, &e);
        if matches!(e, FrameError::ShortHeader(_) | FrameError::ShortBody { .. }) {
            break;
        }
        match find_header(b, at + 1) {
            Some(next) => at = next,
            None => break,
        }
    }
    Ok(())
}
