//! Reading the spool back in sequence order, frame by frame, and what a frame that
//! cannot be read becomes (read again, or skipped and recorded: "Crash points" in
//! [`super`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lockstep_formats::frame::{parse_header, SpoolEvent, HEADER_LEN};

use super::segment::FrameMeta;
use super::{Spool, SpoolError};
use crate::admin::telemetry::SpoolUnreadable;

impl Spool {
    /// Hands the next events to `f` (with their sequence numbers), up to about `want`
    /// (whole frames). Returns how many it handed over; 0 when all is read.
    pub fn read(
        &mut self,
        want: usize,
        mut f: impl FnMut(u64, &SpoolEvent<'_>),
    ) -> Result<usize, SpoolError> {
        let mut given = 0;
        while given < want {
            let Some((seg_first, seg_last, path, meta)) = self.frame_at(self.read_seq) else {
                break;
            };
            // A read error may be passing (a fresh handle gets past a stale one): one
            // more try, then the frame (or, when the file is gone, the rest of the
            // segment) is set aside like a damaged frame and reading goes on.
            let read = self.read_frame(seg_first, &path, &meta).or_else(|_| {
                self.read_file = None;
                self.read_frame(seg_first, &path, &meta)
            });
            if let Err(e) = read {
                self.read_file = None;
                if passing(&e) {
                    // The bytes are fine: skipping them would lose events that can be
                    // read in a moment (and the segment is deleted once a later event
                    // is acknowledged). Tried again on the next read.
                    if given > 0 {
                        return Ok(given);
                    }
                    return Err(SpoolError {
                        path,
                        op: "read a segment",
                        source: e,
                    });
                }
                let gone = e.kind() == io::ErrorKind::NotFound;
                let last = if gone { seg_last } else { meta.last_seq() };
                if !gone {
                    if let Some(seg) = self.segments.iter_mut().find(|s| s.first_seq == seg_first) {
                        seg.unreadable = true;
                    }
                }
                self.set_aside_unreadable(
                    &path,
                    seg_first,
                    meta.offset,
                    Some(self.read_seq..=last),
                    &e,
                );
                self.read_seq = last + 1;
                continue;
            }
            let decoded = parse_header(&self.buf).and_then(|h| {
                self.frame_reader
                    .decode(&h, &self.buf[HEADER_LEN..])
                    .map(|evs| (h, evs))
            });
            match decoded {
                Ok((h, events)) => {
                    for (i, e) in events.iter().enumerate() {
                        let seq = h.first_seq + i as u64;
                        if seq >= self.read_seq {
                            f(seq, e);
                            given += 1;
                        }
                    }
                }
                Err(e) => {
                    let bytes = self.buf.clone();
                    self.quarantine_frame(&path, seg_first, meta.offset, &bytes, &e.to_string());
                }
            }
            self.read_seq = meta.last_seq() + 1;
        }
        Ok(given)
    }

    /// Reads the frame `meta` of segment `seg_first` into `buf`.
    fn read_frame(&mut self, seg_first: u64, path: &Path, meta: &FrameMeta) -> io::Result<()> {
        let file = match &self.read_file {
            Some((s, f)) if *s == seg_first => f,
            _ => {
                let f = match File::open(path) {
                    Ok(f) => f,
                    // The segment being written, deleted under the agent: its data is
                    // still there, behind the append handle.
                    Err(e) => match (&self.writer, self.segments.back()) {
                        (Some(w), Some(seg)) if seg.first_seq == seg_first => w.try_clone()?,
                        _ => return Err(e),
                    },
                };
                &self.read_file.insert((seg_first, f)).1
            }
        };
        self.buf.resize(meta.len as usize, 0);
        file.read_exact_at(&mut self.buf, meta.offset)
    }

    /// Events `seqs` of segment `path` could not be read back (an I/O error, the file
    /// gone): they are lost. Records them in the quarantine (once: the file is named by
    /// where they were), counts and logs it.
    pub(super) fn set_aside_unreadable(
        &self,
        path: &Path,
        seg: u64,
        offset: u64,
        seqs: Option<std::ops::RangeInclusive<u64>>,
        error: &io::Error,
    ) {
        let events = seqs.map_or("all its events".to_owned(), |r| {
            format!(
                "events {} to {} (spool sequence numbers)",
                r.start(),
                r.end()
            )
        });
        let to = self
            .quarantine_dir
            .join(format!("spool-{seg:020}-{offset}.unreadable"));
        let fresh = !to.exists();
        if fresh {
            let note = format!(
                "spool segment {} could not be read from byte {offset}: {error}\n\
                 {events} are lost and were skipped\n",
                path.display(),
            );
            let _ = std::fs::create_dir_all(&self.quarantine_dir);
            if let Err(e) = self.disk.create(&to, note.as_bytes()) {
                tracing::error!(
                    "cannot record an unreadable spool frame in {}: {e}",
                    to.display()
                );
            }
        }
        SpoolUnreadable {
            path,
            offset,
            events: &events,
            error,
            recorded_in: &to,
            first_time: fresh,
        }
        .emit(&self.metrics);
    }

    /// The segment (first and last sequence number, path) and frame holding `seq`, or
    /// the first frame after it.
    pub(super) fn frame_at(&self, seq: u64) -> Option<(u64, u64, PathBuf, FrameMeta)> {
        let seg = self.segments.iter().find(|s| s.last_seq() >= seq)?;
        let i = seg.frames.partition_point(|f| f.last_seq() < seq);
        seg.frames
            .get(i)
            .map(|f| (seg.first_seq, seg.last_seq(), seg.path.clone(), *f))
    }
}

/// A read error that says nothing about the bytes on disk, and passes: the process or
/// the system is out of file descriptors or memory, a signal interrupted the call, or
/// the file's permissions (which an operator can fix). The frame is read again later,
/// never skipped.
fn passing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::PermissionDenied
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}
