//! The spool frame decoder on arbitrary bytes: it must never panic, never allocate
//! by a length it has not checked, and never report a frame whose checksums fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_formats::frame::scan;

fuzz_target!(|data: &[u8]| {
    let _ = scan(data, |_, h, events| assert_eq!(events.len(), h.count as usize), |_, _| {});
});
