//! The spool frame decoder on arbitrary bytes: it must never panic, never allocate by
//! a length it has not checked, and never report a frame whose checksums fail.
//!
//! Two ways in: the bytes as a whole segment (headers, resync, checksums), and the
//! bytes as the body of a frame whose checksums are made to match, so that zstd and
//! postcard see hostile input too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_formats::frame::{scan, FrameHeader, FrameReader, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = scan(data, |_, h, events| assert_eq!(events.len(), h.count as usize), |_, _| {});

    if data.len() >= 6 {
        let count = u32::from(u16::from_le_bytes([data[0], data[1]])).max(1);
        let raw_len = u32::from_le_bytes([data[2], data[3], data[4], data[5]]) % (1 << 20);
        let body = &data[6..];
        let h = FrameHeader::for_body(1, count, raw_len, 0, body);
        let mut frame = h.to_bytes().to_vec();
        frame.extend_from_slice(body);
        assert_eq!(frame.len(), HEADER_LEN + body.len());
        if let Ok(mut r) = FrameReader::new() {
            if let Ok(events) = r.decode(&h, body) {
                assert_eq!(events.len(), count as usize);
            }
        }
    }
});
