//! Reading and framing: the read round, a file's new bytes framed into records and
//! events, and the quarantine of bad records.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::Instant;

use lockstep_formats::{ChangeEvent, Op, Record, SourceInfo};

use super::{
    ctime, files, note_first, state, still_same, value_text, Blocked, Out, Retry, TableInfo, Tail,
    Tracked, CHUNK, QUARANTINE_RETRY, READ_SLICE,
};
use crate::admin::telemetry::{FileTruncated, RecordQuarantined};
use crate::clock::now_ms;
use crate::config::TableFrom;
use crate::pipeline::quarantine::BadRecord;
use crate::source::{Stopping, BATCH_SIZE};

impl Tail {
    /// Reads every file that has new bytes, oldest first. Returns the bytes read.
    pub(super) fn read_round(&mut self) -> Result<u64, Stopping> {
        self.waiting_reopen = 0;
        if !self.retry_gz() {
            // Rotations older than every file wait to be decompressed.
            return Ok(0);
        }
        for i in 0..self.files.len() {
            if self.files[i].file.is_none() && !self.reopen(i) {
                continue;
            }
            if self.files[i].rest_wait.is_some_and(|r| !r.due()) {
                continue;
            }
            let t = &mut self.files[i];
            let Some(f) = t.file.as_deref() else { continue };
            let Ok(m) = f.metadata() else { continue };
            // A recovered rest keeps the time its rotation was last written (its unnamed
            // file's own time is when it was decompressed): rests are read in that order.
            let mtime = if t.recovered {
                t.mtime
            } else {
                m.modified().unwrap_or(t.mtime)
            };
            let changed = m.len() != t.size || mtime != t.mtime || t.suspect;
            if changed {
                t.changed_at = Instant::now();
            }
            t.size = m.len();
            t.mtime = mtime;
            t.nlink = m.nlink();
            t.suspect = false;
            // Cheap: at most one 4 KiB read of a file that changed. It finds a truncation
            // even when the file grew back past the read position before this look.
            let head = if changed {
                match t.head.recheck(f, t.size) {
                    Ok(h) => h,
                    // Unreadable now: judge by the size alone this time.
                    Err(_) => Some(t.head),
                }
            } else {
                Some(t.head)
            };
            // Nothing of this generation read and no head, and the file changed since the
            // last look (written, truncated): what was written may already be in a copy.
            let bare_was = t.bare_since.take();
            let now_ctime = ctime(&m);
            let truncated = t.size < t.read_pos() || head.is_none() || t.replaced;
            t.replaced = false;
            if let Some(since) = bare_was.filter(|&c| c != now_ctime) {
                let bare = t.read_pos() == 0 && t.head.len == 0 && !truncated;
                if bare && t.blocked.is_none() && t.copy_wait.is_none() && !t.recovered {
                    self.ingest();
                    if let Err(e) = self.copied_before_read(i, since) {
                        // Looked for again from the same time; the file's new bytes wait.
                        self.files[i].bare_since = Some(since);
                        self.wait_for_rest(i, &e);
                        continue;
                    }
                }
            }
            if truncated {
                // copytruncate: what was not read yet is in the copy. Read it from there,
                // as the same file (same ids), before the file starts again from 0. A new
                // file held as a possible copy of it (a glob that matches the copies) is
                // taken first; then one found next to it, then a compressed one.
                // The copy's file event may have come in since the loop's last look.
                self.ingest();
                let held = self.held_copy(i);
                // Rests of vanished files recovered at a start wait to be read: this
                // generation's rest is read among them, in the order they were written
                // (a file deleted while stopped whose inode number the live file took
                // may be newer than another vanished file, or older), not before them.
                let rests_wait = self
                    .files
                    .iter()
                    .any(|o| o.recovered && o.size > o.read_pos());
                let t = &self.files[i];
                let whole = t.buf.is_empty() && t.skipping.is_none() && t.blocked.is_none();
                let rest = match self.out.find_rest(t, held) {
                    Ok(rest) => rest,
                    Err(e) => {
                        // Its new bytes wait for the rest (see `Tracked::rest_wait`); the
                        // truncation is handled again at the next try.
                        self.files[i].replaced = true;
                        self.wait_for_rest(i, &e);
                        continue;
                    }
                };
                // Where the rest was found: copies made after it hold generations never
                // seen (see `copies_after_truncation`).
                let anchor = rest.as_ref().map(|r| (r.path.clone(), r.mtime));
                let (used, read) = if rests_wait && whole {
                    let t = &self.files[i];
                    match rest {
                        Some(rest) if rest.size <= t.read_pos() => (rest.used, None),
                        Some(rest) => {
                            let read = rest.size.max(t.read_pos());
                            let used = rest.used.as_ref().and_then(|(p, f, n)| {
                                f.try_clone().ok().map(|f| (p.clone(), f, *n))
                            });
                            self.track_rest(i, rest);
                            (used, Some(read))
                        }
                        None => (None, None),
                    }
                } else {
                    let t = &mut self.files[i];
                    (self.out.finish_from_copy(t, rest)?, None)
                };
                if let Some((path, file, size)) = used {
                    self.copy_consumed(&path, file, size);
                }
                self.copies_after_truncation(i, anchor);
                let t = &mut self.files[i];
                if t.head.len > 0 {
                    let upto = read.unwrap_or(t.read_pos());
                    self.truncations.push((t.head, upto, Instant::now()));
                }
                FileTruncated {
                    source: &self.out.cx.name,
                    file: &t.path,
                    was: t.read_pos(),
                    now: t.size,
                }
                .emit(&self.out.cx.counters);
                // With the rest (or a later generation's copy) still to read, the
                // checkpoint must not move to the new generation before it: their own
                // positions move it there.
                let key = t.key;
                let pending = self
                    .files
                    .iter()
                    .any(|o| o.recovered && o.key == key && o.size > o.read_pos());
                let t = &mut self.files[i];
                self.out
                    .new_generation(t, "truncated", read.is_none() && !pending);
            }
            let t = &mut self.files[i];
            if t.rest_wait.take().is_some() {
                tracing::info!(
                    "source {}: what {} waited for is found; reading goes on",
                    self.out.cx.name,
                    t.path.display()
                );
            }
            if let (false, Some(h)) = (truncated, head) {
                t.head = h;
            }
            note_first(t);
            if t.fp.is_none() {
                t.fp = t
                    .file
                    .as_deref()
                    .and_then(|f| files::fingerprint(f).ok().flatten());
            }
            let born = state::born_ns(t.born);
            self.out.cp.set_identity(t.key, t.gen, t.fp, t.head, born);
            if t.read_pos() == 0 && t.head.len == 0 && !t.recovered {
                t.bare_since = Some(now_ctime);
            }
        }
        self.judge_new_files();
        if !self.gz_waiting.is_empty() {
            // A copy found by this round waits to be decompressed: it is older than
            // what the files hold now (see `Tail::copies_after_truncation`).
            return Ok(0);
        }
        let mut order: Vec<usize> = (0..self.files.len())
            .filter(|&i| {
                let t = &self.files[i];
                t.copy_wait.is_none()
                    && (t.size > t.read_pos() || t.blocked.is_some() || t.rest_wait.is_some())
            })
            .collect();
        // Rests and copies recovered from rotations and files that left the globs (they
        // were rotated away) first, by the time they were last written (a rest by its
        // rotation's; when times tie, a rest first), then the files in the globs by
        // modification time; then by discovery (file timestamps are coarse: a rotated
        // file and its successor often share one). A rotated file being finished is
        // older than the copies of later generations of the live file (seed 5000: they
        // were read first, and older events of keys came after newer ones).
        let rank = |t: &Tracked| (t.gone_since.is_none(), t.mtime, !t.recovered, t.discovered);
        order.sort_by(|&a, &b| rank(&self.files[a]).cmp(&rank(&self.files[b])));
        // The rests and copies of one file's generations, in generation order whatever
        // their times say (a copy made within the clock tick of the one before it).
        let rests: Vec<usize> = (0..order.len())
            .filter(|&k| self.files[order[k]].recovered)
            .collect();
        for &k in &rests {
            let key = self.files[order[k]].key;
            let slots: Vec<usize> = rests
                .iter()
                .copied()
                .filter(|&j| self.files[order[j]].key == key)
                .collect();
            let mut of_key: Vec<usize> = slots.iter().map(|&j| order[j]).collect();
            of_key.sort_by_key(|&i| (self.files[i].gen, self.files[i].discovered));
            for (j, i) in slots.into_iter().zip(of_key) {
                order[j] = i;
            }
        }
        let mut total = 0;
        for i in order {
            if self.files[i].rest_wait.is_some() {
                // It and the files after it wait for older content (see `rest_wait`).
                break;
            }
            total += self.out.read_file(&mut self.files[i])?;
            self.out.refresh_identity(&mut self.files[i]);
            let t = &self.files[i];
            if t.size > t.read_pos() || t.blocked.is_some() {
                // Not read to its end in this round (a long backlog, a record waiting for
                // the quarantine): files after it wait, so a rotated file is finished
                // before its successor is read.
                break;
            }
        }
        self.drop_finished();
        Ok(total)
    }

    /// File `i`'s new bytes wait for older content that could not be had (`why`): a `.gz`
    /// that could not be decompressed, a copy no descriptor was free for. Tried again
    /// with backoff; logged at the first try.
    fn wait_for_rest(&mut self, i: usize, why: &str) {
        let name = &self.out.cx.name;
        let t = &mut self.files[i];
        match t.rest_wait {
            Some(r) => {
                tracing::debug!("source {name}: {} still waits: {why}", t.path.display());
                t.rest_wait = Some(r.again());
            }
            None => {
                tracing::error!(
                    "source {name}: {why}; {} (read to byte {}) and the files after it wait for it: tried again until it can be had. Free space in {} (or raise LimitNOFILE when out of file descriptors)",
                    t.path.display(),
                    t.read_pos(),
                    self.out.cx.state_dir.join("checkpoints").display()
                );
                t.rest_wait = Some(Retry::first());
            }
        }
    }

    /// Stops following files that left the globs and are read to their end: at once when
    /// deleted, after `rotate_wait` when renamed away (a writer may still add to them).
    fn drop_finished(&mut self) {
        let rotate_wait = self.out.cfg.rotate_wait;
        let mut i = 0;
        while i < self.files.len() {
            let t = &self.files[i];
            let done = match t.gone_since {
                Some(since) => {
                    t.size == t.read_pos()
                        && t.blocked.is_none()
                        && t.copy_wait.is_none()
                        && t.rest_wait.is_none()
                        // A closed file is read to its end only once opened again (its
                        // size is the one it had when it was closed), unless deleted.
                        && (t.file.is_some() || t.nlink == 0)
                        && (t.nlink == 0 || since.elapsed() >= rotate_wait)
                }
                None => false,
            };
            if !done {
                i += 1;
                continue;
            }
            let mut t = self.files.swap_remove(i);
            if !t.buf.is_empty() {
                let reason = "incomplete last record of a file that was rotated away or deleted";
                let (off, len) = (t.offset, t.buf.len() as u64);
                let buf = std::mem::take(&mut t.buf);
                t.offset += len;
                self.out
                    .set_aside(&mut t, off, buf, len, reason.to_owned(), off + len);
                if t.blocked.is_some() {
                    // Kept until the quarantine takes it.
                    self.files.push(t);
                    continue;
                }
            }
            tracing::info!(
                "source {}: done with {}",
                self.out.cx.name,
                t.path.display()
            );
            // The rest of a file still followed (truncated, or replaced by a new file in
            // its inode number) leaves that file's entry alone.
            // So does the rest of an older generation while a newer one's is still read.
            let later = |o: &Tracked| o.key == t.key && (!o.recovered || o.gen > t.gen);
            if !(t.recovered && self.files.iter().any(later)) {
                self.out.retiring.insert(t.key, (t.gen, t.offset));
            }
        }
    }
}

impl Out {
    /// Reads one file from its position up to its end (or `READ_SLICE` bytes).
    pub(super) fn read_file(&mut self, t: &mut Tracked) -> Result<u64, Stopping> {
        let mut read = 0u64;
        let max = self.cfg.max_record_bytes;
        if !self.retry_blocked(t) {
            return Ok(0);
        }
        // Bytes read before a stop at a blocked record are framed first.
        let mut first = true;
        while read < READ_SLICE && t.blocked.is_none() {
            if read > 0 && !still_same(t) {
                // Truncated (and perhaps grown back past the read position) while this
                // read went on, e.g. while the source waited on a full spool: the next
                // round starts it again from 0.
                t.suspect = true;
                break;
            }
            let have = t.buf.len();
            let at = t.read_pos();
            t.buf.resize(have + CHUNK, 0);
            let got = match t.file.as_deref() {
                Some(f) => f.read_at(&mut t.buf[have..], at),
                None => Ok(0),
            };
            let n = match got {
                Ok(n) => n,
                Err(e) => {
                    t.buf.truncate(have);
                    self.last_error = Some(format!("reading {}: {e}", t.path.display()));
                    tracing::error!(
                        "source {}: cannot read {}: {e}",
                        self.cx.name,
                        t.path.display()
                    );
                    break;
                }
            };
            t.buf.truncate(have + n);
            if n == 0 && !(first && have > 0) {
                break;
            }
            first = false;
            read += n as u64;
            let mut pos = 0usize;
            loop {
                if let Some(start) = t.skipping {
                    match t.buf[pos..].iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            pos += i + 1;
                            let end = t.offset + pos as u64;
                            t.skipping = None;
                            let reason =
                                format!("record longer than max_record_bytes ({max} bytes)");
                            self.quarantine_long(t, start, end - start, reason);
                            if t.blocked.is_some() {
                                break;
                            }
                        }
                        None => {
                            pos = t.buf.len();
                            break;
                        }
                    }
                }
                let rest = &t.buf[pos..];
                match t.decoder.format().frame(rest) {
                    Some(len) if len > max => {
                        let start = t.offset + pos as u64;
                        let reason = format!("record longer than max_record_bytes ({max} bytes)");
                        self.quarantine_long(t, start, len as u64, reason);
                        pos += len;
                        if t.blocked.is_some() {
                            break;
                        }
                    }
                    Some(len) => {
                        let at = t.offset + pos as u64;
                        self.record(t, pos, len, at)?;
                        pos += len;
                        if t.blocked.is_some() {
                            break;
                        }
                    }
                    None if rest.len() > max => {
                        // Over-long and still no end: discard up to its newline.
                        t.skipping = Some(t.offset + pos as u64);
                        pos = t.buf.len();
                        break;
                    }
                    None => break,
                }
            }
            // What was framed (or skipped) is consumed; a partial record stays.
            t.buf.drain(..pos);
            t.offset += pos as u64;
        }
        Ok(read)
    }

    /// Turns one framed record into an event (or a quarantine entry).
    fn record(&mut self, t: &mut Tracked, pos: usize, len: usize, at: u64) -> Result<(), Stopping> {
        let end = at + len as u64;
        let bytes = &t.buf[pos..pos + len];
        if t.decoder.needs_header() {
            match t.decoder.read_header(bytes, at) {
                Ok(()) => self.mark(t, end),
                Err(e) => {
                    let data = bytes.to_vec();
                    self.set_aside(t, at, data, len as u64, e.reason, end);
                }
            }
            return Ok(());
        }
        let rec = match t.decoder.decode(bytes, at) {
            Ok(r) => r,
            Err(e) => {
                let data = bytes.to_vec();
                self.set_aside(t, at, data, len as u64, e.reason, end);
                return Ok(());
            }
        };
        match self.event(t, rec, at) {
            Ok(()) => {
                // The event's own position: safe once it is acknowledged.
                self.mark(t, end);
                if self.batch.len() >= BATCH_SIZE {
                    // Review fix: the checkpoint must know this file's first bytes as
                    // far as they are read before its events are handed on.
                    self.refresh_identity(t);
                    self.flush()?;
                }
            }
            Err(reason) => {
                let data = t.buf[pos..pos + len].to_vec();
                self.set_aside(t, at, data, len as u64, reason, end);
            }
        }
        Ok(())
    }

    /// Maps a record to an event and queues it for the sink.
    fn event(&mut self, t: &Tracked, rec: Record, at: u64) -> Result<(), String> {
        let fp = t.fp.unwrap_or(0);
        let position = format!("{:x}.{:x}.{fp:016x}.{}@{at}", t.key.dev, t.key.ino, t.gen);
        let (ev, info) = self.build(rec, position)?;
        let now = ev.ts_ms;
        self.deb
            .push(ev, info, now, Instant::now(), &mut self.released);
        self.emit();
        Ok(())
    }

    /// Builds the event of a record at `position`: its table, op and key, mapped. The
    /// error is the reason to quarantine the record.
    pub(super) fn build(
        &mut self,
        mut rec: Record,
        position: String,
    ) -> Result<(ChangeEvent, Arc<TableInfo>), String> {
        let table = match &self.cfg.table {
            TableFrom::Fixed(name) => name.clone(),
            TableFrom::Field(f) => match rec.remove(f) {
                Some(v) => {
                    value_text(&v).ok_or_else(|| format!("table field `{f}` is not text"))?
                }
                None => return Err(format!("no table field `{f}`")),
            },
        };
        let op = match &self.cfg.op_field {
            None => Op::Create,
            Some(f) => {
                let v = rec.remove(f).ok_or_else(|| format!("no op field `{f}`"))?;
                let code = value_text(&v).ok_or_else(|| format!("op field `{f}` is not text"))?;
                match self
                    .cfg
                    .op_map
                    .get(&code)
                    .copied()
                    .or_else(|| Op::from_code(&code))
                {
                    Some(op) => op,
                    None => {
                        return Err(format!(
                            "op field `{f}` has `{code}`, which is not c, u, d, r or in op_map"
                        ))
                    }
                }
            }
        };
        let key = if self.cfg.key.is_empty() {
            None
        } else {
            let mut k = Record::with_capacity(self.cfg.key.len());
            for name in &self.cfg.key {
                match rec.get(name) {
                    Some(v) => k.push(name.clone(), v.clone()),
                    None => return Err(format!("no key field `{name}`")),
                }
            }
            Some(k)
        };
        let (before, after) = if op == Op::Delete {
            (Some(rec), None)
        } else {
            (None, Some(rec))
        };
        let now = now_ms();
        let info = self.table(&table)?.clone();
        let mut ev = ChangeEvent {
            op,
            key,
            before,
            after,
            source: SourceInfo {
                agent: self.agent.clone(),
                name: self.name.clone(),
                kind: self.kind.clone(),
                table: info.name.clone(),
                position,
                ts_ms: now,
                snapshot: false,
            },
            ts_ms: now,
        };
        self.cx.map.apply(&mut ev)?;
        Ok((ev, info))
    }

    /// A table's name after mapping, subject and counters. A table past `max_tables`
    /// (tables named by `table_field`) is refused: the error is the reason to quarantine
    /// its record, so a file cannot make state and metric series without bound.
    fn table(&mut self, table: &str) -> Result<&Arc<TableInfo>, String> {
        if !self.tables.contains_key(table) {
            if self.tables.len() >= self.cfg.max_tables {
                let mut shown: String = table.chars().take(64).collect();
                if shown.len() < table.len() {
                    shown.push('…');
                }
                return Err(format!(
                    "table `{shown}` would be table {} of this source, over max_tables = {} \
                     (raise max_tables if the files really name that many tables)",
                    self.tables.len() + 1,
                    self.cfg.max_tables
                ));
            }
            let name = self.cx.map.table(table);
            let info = TableInfo {
                name: Arc::from(name),
                subject: self.cx.encoder.subject(name),
                counters: self.cx.metrics.table(&self.cx.name, name),
            };
            self.tables.insert(table.to_owned(), Arc::new(info));
        }
        Ok(&self.tables[table])
    }

    /// Writes a bad record to the quarantine and moves the position past it; when the
    /// quarantine cannot be written, the record is kept and reading this file stops at it
    /// until a retry succeeds (the position never passes a record that is nowhere).
    pub(super) fn set_aside(
        &mut self,
        t: &mut Tracked,
        offset: u64,
        mut data: Vec<u8>,
        full_len: u64,
        reason: String,
        end: u64,
    ) {
        data.truncate(self.cfg.max_record_bytes);
        let b = Blocked {
            offset,
            data,
            full_len,
            reason,
            end,
            gen: t.gen,
            retry_at: Instant::now() + QUARANTINE_RETRY.0,
            backoff: QUARANTINE_RETRY.0,
        };
        if self.put_quarantine(t, &b) {
            self.mark(t, end);
        } else {
            t.blocked = Some(b);
        }
    }

    /// Tries the quarantine write of a file's blocked record when it is due; true when
    /// the file has no blocked record (any more).
    fn retry_blocked(&mut self, t: &mut Tracked) -> bool {
        let Some(mut b) = t.blocked.take() else {
            return true;
        };
        if Instant::now() < b.retry_at {
            t.blocked = Some(b);
            return false;
        }
        if self.put_quarantine(t, &b) {
            tracing::info!(
                "source {}: the quarantine {} is writable again; reading {} goes on after byte {}",
                self.cx.name,
                self.quarantine.path().display(),
                t.path.display(),
                b.offset
            );
            self.mark_at(t.key, b.gen, b.end);
            return true;
        }
        b.backoff = (b.backoff * 2).min(QUARANTINE_RETRY.1);
        b.retry_at = Instant::now() + b.backoff;
        t.blocked = Some(b);
        false
    }

    /// One quarantine write: counted and logged when done, logged and shown in the
    /// status's `last_error` when not.
    fn put_quarantine(&mut self, t: &Tracked, b: &Blocked) -> bool {
        let bad = BadRecord {
            file: &t.path,
            offset: b.offset,
            reason: &b.reason,
            data: &b.data,
            full_len: b.full_len,
        };
        if let Err(e) = self.quarantine.put(&bad) {
            let msg = format!(
                "cannot write the bad record at byte {} of {} to the quarantine {}: {e}; \
                 reading that file waits at it and retries (free space or fix the directory)",
                b.offset,
                t.path.display(),
                self.quarantine.path().display()
            );
            tracing::error!("source {}: {msg}", self.cx.name);
            self.last_error = Some(format!("quarantine: {msg}"));
            return false;
        }
        if self
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("quarantine"))
        {
            self.last_error = None;
        }
        RecordQuarantined {
            source: &self.cx.name,
            file: &t.path,
            offset: b.offset,
            reason: &b.reason,
        }
        .emit(&self.cx.counters);
        true
    }

    /// Quarantines an over-long record, keeping its first `max_record_bytes`.
    fn quarantine_long(&mut self, t: &mut Tracked, offset: u64, len: u64, reason: String) {
        let keep = (len as usize).min(self.cfg.max_record_bytes);
        let mut head = vec![0u8; keep];
        let n = t
            .file
            .as_deref()
            .map_or(0, |f| f.read_at(&mut head, offset).unwrap_or(0));
        head.truncate(n);
        self.set_aside(t, offset, head, len, reason, offset + len);
    }
}
