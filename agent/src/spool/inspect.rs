//! `lockstep spool inspect` and `lockstep spool export`: read-only views of a spool,
//! safe while the agent runs. They open files for reading only, change nothing, and
//! take a frame being written at that moment for what it is (reported, not an error).

use std::io::{self, Write};
use std::path::Path;

use lockstep_formats::frame::{parse_header, FrameReader, HEADER_LEN};
use lockstep_formats::json::encode_str;

use super::segment::{list_segments, read_ledger, scan_segment};

/// What `inspect` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub acked: u64,
    pub ledger_problem: Option<&'static str>,
    pub segments: usize,
    pub frames: u64,
    pub damaged_frames: u64,
    /// Frames cut short at the end of a segment (being written, or left by a crash).
    pub torn_frames: u64,
    pub events_on_disk: u64,
    pub events_waiting: u64,
    pub bytes_on_disk: u64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub oldest_waiting_ms: Option<i64>,
}

pub fn summarize(dir: &Path) -> io::Result<Summary> {
    let mut s = Summary::default();
    match read_ledger(dir)? {
        Some(Ok(a)) => s.acked = a,
        Some(Err(why)) => s.ledger_problem = Some(why),
        None => {}
    }
    for (_, data) in segments(dir)? {
        let data = data?;
        let scan = scan_segment(&data);
        s.segments += 1;
        s.bytes_on_disk += data.len() as u64;
        s.damaged_frames += scan.bad.len() as u64;
        s.torn_frames += u64::from(scan.torn.is_some());
        for f in &scan.frames {
            s.frames += 1;
            s.events_on_disk += u64::from(f.count);
            s.raw_bytes += u64::from(f.raw_len);
            s.compressed_bytes += f.len - HEADER_LEN as u64;
            let waiting = (f.last_seq() + 1).saturating_sub(f.first_seq.max(s.acked + 1));
            if waiting > 0 {
                s.events_waiting += waiting;
                s.oldest_waiting_ms.get_or_insert(f.first_ms);
            }
        }
    }
    Ok(s)
}

/// Prints a summary for an operator.
pub fn print_summary(dir: &Path, s: &Summary, now_ms: i64, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "spool       {}", dir.display())?;
    match s.ledger_problem {
        Some(why) => writeln!(
            out,
            "ledger      damaged ({why}): the agent will send every event on disk again"
        )?,
        None => writeln!(out, "ledger      acknowledged through event {}", s.acked)?,
    }
    writeln!(
        out,
        "segments    {} ({} on disk)",
        s.segments,
        human_bytes(s.bytes_on_disk)
    )?;
    writeln!(
        out,
        "frames      {} good, {} damaged, {} being written or torn",
        s.frames, s.damaged_frames, s.torn_frames
    )?;
    writeln!(
        out,
        "events      {} waiting to be sent ({} on disk)",
        s.events_waiting, s.events_on_disk
    )?;
    if s.compressed_bytes > 0 {
        writeln!(
            out,
            "compression {} of events in {}: {:.1}x",
            human_bytes(s.raw_bytes),
            human_bytes(s.compressed_bytes),
            s.raw_bytes as f64 / s.compressed_bytes as f64
        )?;
    }
    match s.oldest_waiting_ms {
        Some(ms) => writeln!(
            out,
            "oldest      captured {}s ago",
            (now_ms - ms).max(0) / 1000
        )?,
        None => writeln!(out, "oldest      (nothing waiting)")?,
    }
    Ok(())
}

/// Writes events as JSON lines: `{"seq":…,"source":…,"table":…,"subject":…,
/// "msg_id":…,"captured_ms":…,"event":{…}}`. Only events waiting to be sent, unless
/// `all`. Returns how many.
pub fn export(dir: &Path, all: bool, out: &mut dyn Write) -> io::Result<u64> {
    let acked = match read_ledger(dir)? {
        Some(Ok(a)) if !all => a,
        _ => 0,
    };
    let mut reader = FrameReader::new()?;
    let mut line = Vec::with_capacity(1024);
    let mut n = 0;
    for (path, data) in segments(dir)? {
        let data = data?;
        for f in scan_segment(&data).frames {
            if f.last_seq() <= acked {
                continue;
            }
            let frame = &data[f.offset as usize..(f.offset + f.len) as usize];
            let h = parse_header(frame).map_err(io::Error::other)?;
            let events = reader.decode(&h, &frame[HEADER_LEN..]).map_err(|e| {
                io::Error::other(format!("{} at byte {}: {e}", path.display(), f.offset))
            })?;
            for (i, e) in events.iter().enumerate() {
                let seq = h.first_seq + i as u64;
                if seq <= acked {
                    continue;
                }
                line.clear();
                line.extend_from_slice(format!("{{\"seq\":{seq},\"source\":").as_bytes());
                encode_str(e.source, &mut line);
                line.extend_from_slice(b",\"table\":");
                encode_str(e.table, &mut line);
                line.extend_from_slice(b",\"subject\":");
                encode_str(e.subject, &mut line);
                line.extend_from_slice(b",\"msg_id\":");
                encode_str(e.msg_id, &mut line);
                line.extend_from_slice(
                    format!(",\"captured_ms\":{},\"event\":", e.captured_ms).as_bytes(),
                );
                match std::str::from_utf8(e.payload.0) {
                    // Payloads are the JSON the agent built: copy them as they are.
                    Ok(p) if p.starts_with('{') => line.extend_from_slice(p.as_bytes()),
                    Ok(p) => encode_str(p, &mut line),
                    Err(_) => encode_str(&String::from_utf8_lossy(e.payload.0), &mut line),
                }
                line.extend_from_slice(b"}\n");
                out.write_all(&line)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Each segment file with its bytes, oldest first; files the agent deleted since the
/// listing (fully acknowledged) are left out.
fn segments(
    dir: &Path,
) -> io::Result<impl Iterator<Item = (std::path::PathBuf, io::Result<Vec<u8>>)>> {
    Ok(list_segments(dir)?
        .into_iter()
        .filter_map(|(_, path)| match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            r => Some((path, r)),
        }))
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
