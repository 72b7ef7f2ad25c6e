//! Copytruncate: copies made before a file was read or after a truncation, possible
//! copies judged, and a truncated generation finished from its copy before a new one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use lockstep_formats::record::Decoder;

use super::files::{FileKey, Head};
use super::state::FileCp;
use super::{
    fds, files, note_first, read_header, starts_as, state, GzWait, Out, Rest, Tail, Tracked, Whole,
    COPY_WAIT,
};
use crate::source::Stopping;

impl Tail {
    /// Followed file `i` had nothing of its generation read and no head at the last look
    /// (`since`: its ctime then), and it changed: a `copytruncate` may have copied what
    /// was written meanwhile and truncated the file before the agent read a byte of it
    /// (the file never looks truncated: its read position is 0, and there is no head to
    /// find the copy by). Files next to it whose name is a rotation of its name (or the
    /// `.gz` of one), created after `since` (birth time: where the file system keeps
    /// none, nothing is found), unknown to the source (not followed, not in the
    /// checkpoint, not a `.gz` already taken), that start with no head a known file has
    /// and are not a plain snapshot of what the file holds now, are such copies: read
    /// whole, oldest first, under their own ids, before the file's new bytes.
    /// An error: such a copy could not be taken (a `.gz` that could not be decompressed,
    /// no file descriptor free); the copies after it are not looked at, and the file's
    /// new bytes must wait for the next look.
    pub(super) fn copied_before_read(&mut self, i: usize, since: SystemTime) -> Result<(), String> {
        let t = &self.files[i];
        let (Some(dir), Some(name)) = (t.path.parent(), t.path.file_name()) else {
            return Ok(());
        };
        let name = name.to_string_lossy().into_owned();
        let live_path = t.path.clone();
        let now_first = t
            .file
            .as_deref()
            .and_then(|f| files::first_bytes(f).ok())
            .unwrap_or_default();
        let now_size = t.size;
        // A plain copy of the file as it is (`cp`, no truncation): its bytes are read
        // from the file itself.
        let snapshot = move |first: &[u8], len: u64| {
            len <= now_size && !first.is_empty() && now_first.starts_with(first)
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(
                    "source {}: cannot list {} for copies of {}: {e}",
                    self.out.cx.name,
                    dir.display(),
                    live_path.display()
                );
                return Ok(());
            }
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let gz = n.strip_suffix(".gz");
            let path = e.path();
            if !files::looks_rotated(&name, gz.unwrap_or(&n))
                || (gz.is_none() && files::is_compressed(&path))
            {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            let Ok(born) = m.created() else { continue };
            // Made after the last look, and holding bytes written since: a `.gz` keeps
            // the time of the file it compressed (the rotation before this file, with
            // `create` + `compress`, is compressed after this file was created).
            let mtime = m.modified().unwrap_or(born);
            if !m.is_file() || m.len() == 0 || born <= since || mtime < since {
                continue;
            }
            let key = FileKey::of(&m);
            let known = self.files.iter().any(|o| o.key == key)
                || self
                    .out
                    .cp
                    .files
                    .get(&key)
                    .is_some_and(|c| c.retired_ms.is_none())
                || self
                    .out
                    .gz_taken
                    .iter()
                    .any(|(p, k)| *p == path && *k == key);
            if !known {
                found.push((born, path, key, gz.is_some(), mtime));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        found.sort();
        // The heads of the files the source knows: a file that starts with one is not
        // new content (a copy of a generation already read, a CSV header aside: a head
        // covers the first 4 KiB, or the whole of a file shorter than that).
        let mut heads: Vec<Head> = self.files.iter().map(|o| o.head).collect();
        heads.extend(self.truncations.iter().map(|(h, _, _)| *h));
        heads.extend(
            self.out
                .cp
                .files
                .values()
                .filter(|c| c.retired_ms.is_none())
                .filter_map(|c| c.head),
        );
        heads.retain(|h| h.len > 0);
        let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
        // Files read to their end and retired, and generations before the current one:
        // the same bytes (their whole length, or a full head's 4 KiB; a shorter head, a
        // CSV header, may begin any later file).
        let done: Vec<(Head, u64)> = self
            .out
            .cp
            .files
            .values()
            .flat_map(|c| {
                let retired = c.retired_ms.and(c.head).map(|h| (h, c.offset));
                [retired, c.prev].into_iter().flatten()
            })
            .filter(|(h, _)| h.len > 0)
            .collect();
        let read_before = |first: &[u8], len: u64| {
            done.iter()
                .any(|&(h, n)| (n == len || h.len as usize == files::HEAD_MAX) && h.starts(first))
        };
        for (_, path, key, gz, mtime) in found {
            if gz {
                let g = match self.out.gunzip_whole(&path, mtime, key, unknown)? {
                    Whole::Read(g) => g,
                    Whole::Known => continue,
                    Whole::Gone => {
                        self.gz_gone(&path);
                        continue;
                    }
                };
                let path = g.gz.clone();
                let first = files::first_bytes(&g.file).unwrap_or_default();
                if snapshot(&first, g.len) || read_before(&first, g.len) {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was made of {} (copytruncate, then compressed) before a byte of it was read; reading it whole",
                    self.out.cx.name,
                    path.display(),
                    live_path.display()
                );
                self.track_gz_whole(g, path, key);
            } else {
                let Ok(f) = File::open(&path) else { continue };
                let first = files::first_bytes(&f).unwrap_or_default();
                let len = f.metadata().map_or(0, |m| m.len());
                if !unknown(&first) || snapshot(&first, len) || read_before(&first, len) {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was made of {} (copytruncate) before a byte of it was read; reading it whole",
                    self.out.cx.name,
                    path.display(),
                    live_path.display()
                );
                let matched = self.globs.matches(&path);
                if !self.track(&path, matched) {
                    return Err(format!(
                        "no file descriptor is free to read {}, a copy of {}",
                        path.display(),
                        live_path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// File `i` was found truncated and the rest of its generation is in `copy` (a plain
    /// copy or a `.gz` rotation, with its modification time; or, when nothing was left
    /// to read, the newest plain copy that starts with its head and holds what was read):
    /// copies made after that one (next to it, their name a rotation of its name,
    /// unknown to the source; plain, or compressed since) hold generations the agent
    /// never saw: the file was copytruncated again and again before this look (while the
    /// source waited on a full spool, say). They are read whole, oldest first, under the
    /// file's ids as the generations after its current one, before the file is read
    /// again from 0 as the generation after them. (Torture seed 24048: the rest was in a
    /// `.gz`, and the copy after it, compressed too, was never read.)
    pub(super) fn copies_after_truncation(
        &mut self,
        i: usize,
        copy: Option<(PathBuf, SystemTime)>,
    ) {
        let t = &self.files[i];
        // Generations already skipped for copies found at a start (the copies made since
        // the stop, and those of the generations read before it) are all accounted for.
        if t.head.len == 0 || t.recovered || t.gen_skip > 0 {
            return;
        }
        let copy = copy.or_else(|| {
            let (p, f, _) =
                files::find_copy(&t.path, t.key, t.head, t.read_pos().saturating_sub(1))?;
            let mtime = f.metadata().and_then(|m| m.modified()).ok()?;
            Some((p, mtime))
        });
        let Some((copy, since)) = copy else { return };
        // Copies of generations already read: the heads of the truncations handled
        // lately, and what the checkpoint knows was read before.
        let mut heads: Vec<Head> = self.truncations.iter().map(|(h, _, _)| *h).collect();
        heads.push(t.head);
        heads.retain(|h| h.len > 0);
        // Files read to their end and retired, and generations before the current one
        // (as in [`Tail::copied_before_read`]).
        let done: Vec<(Head, u64)> = self
            .out
            .cp
            .files
            .values()
            .flat_map(|c| {
                let retired = c.retired_ms.and(c.head).map(|h| (h, c.offset));
                [retired, c.prev].into_iter().flatten()
            })
            .filter(|(h, _)| h.len > 0)
            .collect();
        let known = |first: &[u8], len: u64| {
            first.is_empty()
                || heads.iter().any(|h| h.starts(first))
                || done.iter().any(|&(h, n)| {
                    (n == len || h.len as usize == files::HEAD_MAX) && h.starts(first)
                })
        };
        let (key, live) = (self.files[i].key, self.files[i].path.clone());
        let mut found: Vec<(SystemTime, Option<SystemTime>, PathBuf, Later)> = Vec::new();
        // The first bytes of the plain copies found: one compressed between the two
        // listings is found twice, and read once.
        let mut plain: Vec<Vec<u8>> = Vec::new();
        for (p, k) in files::rotated_since(&live, since) {
            if p == copy
                || self.globs.matches(&p)
                || self.files.iter().any(|o| o.key == k || o.path == p)
                || self
                    .out
                    .cp
                    .files
                    .get(&k)
                    .is_some_and(|c| c.retired_ms.is_none())
            {
                continue;
            }
            let (Ok(f), Ok(m)) = (File::open(&p), fs::metadata(&p)) else {
                continue;
            };
            let first = files::first_bytes(&f).unwrap_or_default();
            if known(&first, m.len()) {
                continue;
            }
            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            plain.push(first);
            found.push((mtime, m.created().ok(), p, Later::Plain(f, m)));
        }
        // Compressed since (`compress`, the next rotation), their time kept by gzip.
        match files::gz_family(&live) {
            Ok(gzs) => {
                for (mtime, p, k) in gzs {
                    let taken = self.out.gz_taken.iter().any(|(q, j)| *q == p || *j == k);
                    if mtime < since || p == copy || taken {
                        continue;
                    }
                    found.push((mtime, None, p, Later::Gz(k)));
                }
            }
            Err(e) => tracing::warn!(
                "source {}: cannot list the compressed rotations next to {}: {e}",
                self.out.cx.name,
                live.display()
            ),
        }
        found.sort_by_key(|a| (a.0, a.1));
        for (mtime, _, p, later) in found {
            let gen = {
                let t = &self.files[i];
                t.gen + 1 + t.gen_skip
            };
            let name = &self.out.cx.name.clone();
            let said = |p: &Path| {
                tracing::info!(
                    "source {name}: {} was copytruncated again before it was read: {} holds generation {gen}, never read; reading it whole under that file's ids before the file",
                    live.display(),
                    p.display()
                );
            };
            // What the checkpoint keeps of each such generation (its head): a stop
            // before it is read finds it again at the next start (see
            // `Tail::track_later_generations`).
            match later {
                Later::Plain(f, m) => {
                    said(&p);
                    let first = files::first_bytes(&f).unwrap_or_default();
                    let (fp, head) = (files::fingerprint_of(&first), Head::of(&first));
                    self.out.cp.set_identity(key, gen, fp, head, None);
                    self.track_copy(key, &p, f, (m.len(), mtime), gen);
                }
                Later::Gz(gz_key) => {
                    // Its first bytes, in memory (no room needed), tell whether it is
                    // a generation never read.
                    let first = match files::gz_first_bytes(&p, gz_key) {
                        Ok(Some(first)) => first,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(
                                "source {name}: cannot read {}, which may hold a generation of {} never read: {e}",
                                p.display(),
                                live.display()
                            );
                            continue;
                        }
                    };
                    if known(&first, 0) || plain.contains(&first) {
                        continue;
                    }
                    let (fp, head) = (files::fingerprint_of(&first), Head::of(&first));
                    self.out.cp.set_identity(key, gen, fp, head, None);
                    said(&p);
                    match self.out.gunzip_whole(&p, mtime, gz_key, |f| head.starts(f)) {
                        Ok(Whole::Read(g)) => {
                            self.out.gz_taken.push((g.gz.clone(), g.gz_key));
                            self.track_copy(key, &g.gz, g.file, (g.len, g.mtime), gen);
                        }
                        Ok(Whole::Known | Whole::Gone) => {
                            self.gz_gone(&p);
                            continue;
                        }
                        Err(e) => {
                            // Waits for room: nothing of this file is read before it.
                            let mut c = match self.out.cp.files.get(&key) {
                                Some(c) => c.clone(),
                                None => FileCp::followed(key, live.clone(), fp, head, gen, 0, None),
                            };
                            (c.gen, c.offset, c.fp, c.head) = (gen, 0, fp, Some(head));
                            (c.born_ns, c.next, c.prev) = (None, None, None);
                            c.between.clear();
                            let w = GzWait::Later {
                                c,
                                gz: p,
                                gz_key,
                                mtime,
                            };
                            self.gz_wait(w, &e);
                        }
                    }
                }
            }
            self.files[i].gen_skip += 1;
        }
    }

    /// Checks each new file, once it has bytes and before anything is read from it,
    /// against the files followed: one that starts as a followed file does may be the
    /// copy `copytruncate` is making of it (with a glob that matches the copies). It is
    /// held, unread, until that file is found truncated (then it is the copy: see
    /// [`Tail::held_copy`]) or for [`COPY_WAIT`] (then it is a new file and read from 0:
    /// a CSV file with the same header, a plain `cp`). Also ends the waits that are over.
    pub(super) fn judge_new_files(&mut self) {
        let now = Instant::now();
        self.truncations
            .retain(|(_, _, at)| now.duration_since(*at) < COPY_WAIT);
        for i in 0..self.files.len() {
            let t = &self.files[i];
            let held = t.copy_wait.is_some();
            if !held && (!t.fresh || t.size == 0 || t.recovered) {
                continue;
            }
            let Some(f) = t.file.as_deref() else { continue };
            let first = files::first_bytes(f).ok();
            if !held {
                // The copy of a generation whose truncation was already handled: what it
                // holds up to `read` was read (from the file, or from this copy found by
                // name or compressed); only what lies past it is read, under its own ids.
                let late = first.as_deref().and_then(|first| {
                    self.truncations
                        .iter()
                        .find(|(h, _, _)| h.len > 0 && h.starts(first))
                        .map(|&(_, read, _)| read)
                });
                if let Some(read) = late {
                    let t = &mut self.files[i];
                    t.fresh = false;
                    t.offset = read.min(t.size);
                    if let (true, Some(f)) = (t.decoder.needs_header() && t.offset > 0, &t.file) {
                        read_header(f, &mut t.decoder, self.out.cfg.max_record_bytes);
                    }
                    tracing::info!(
                        "source {}: {} is the copy of a file whose truncation was already handled; following it from byte {}",
                        self.out.cx.name,
                        t.path.display(),
                        t.offset
                    );
                    let (key, gen, offset) = (t.key, t.gen, t.offset);
                    self.out.cp.advance(key, gen, offset);
                    continue;
                }
            }
            // The followed file it starts as, if any. Looked at again on every round while
            // it is held: a new file that only began like another (a CSV header) is
            // released as soon as its bytes differ.
            let of = first.as_deref().and_then(|first| {
                self.files
                    .iter()
                    .enumerate()
                    .find(|&(j, o)| {
                        j != i
                            && !o.fresh
                            && o.copy_wait.is_none()
                            && !o.recovered
                            && starts_as(first, o)
                    })
                    .map(|(_, o)| o.path.clone())
            });
            let name = &self.out.cx.name;
            let t = &mut self.files[i];
            t.fresh = false;
            match (t.copy_wait, of) {
                (Some(until), Some(_)) if now < until => {}
                (Some(_), of) => {
                    t.copy_wait = None;
                    let why = if of.is_some() {
                        format!("no followed file starting the same way was truncated within {COPY_WAIT:?}")
                    } else {
                        "its content differs from every followed file's".to_owned()
                    };
                    tracing::info!(
                        "source {name}: {} is not a copy ({why}); reading it as a new file",
                        t.path.display()
                    );
                }
                (None, Some(of)) => {
                    tracing::info!(
                        "source {name}: {} starts as {} does; held as its possible copy until that file is found truncated, or for {COPY_WAIT:?}",
                        t.path.display(),
                        of.display()
                    );
                    t.copy_wait = Some(now + COPY_WAIT);
                }
                (None, None) => {}
            }
        }
    }

    /// After file `i` was found truncated: a new file not read yet (held as a possible
    /// copy, or not yet checked) that starts with `i`'s head, the newest such: the copy
    /// `copytruncate` made of it.
    pub(super) fn held_copy(&self, i: usize) -> Option<(PathBuf, File, u64)> {
        let t = &self.files[i];
        if t.head.len == 0 {
            return None;
        }
        let c = self
            .files
            .iter()
            .enumerate()
            .filter(|&(j, c)| {
                j != i
                    && !c.recovered
                    && (c.copy_wait.is_some() || (c.fresh && c.read_pos() == 0))
                    && c.file.as_deref().is_some_and(|f| {
                        f.metadata()
                            .is_ok_and(|m| matches!(t.head.recheck(f, m.len()), Ok(Some(_))))
                            // A copy made before the file grew: the beginning of what it held.
                            || (c.copy_wait.is_some()
                                && t.first.len() == t.head.len as usize
                                && files::first_bytes(f).is_ok_and(|b| {
                                    !b.is_empty()
                                        && b.len() < t.first.len()
                                        && t.first.starts_with(&b)
                                }))
                    })
            })
            .max_by_key(|(_, c)| c.discovered)?
            .1;
        let f = c.file.as_deref()?;
        let size = f.metadata().ok()?.len();
        Some((c.path.clone(), f.try_clone().ok()?, size))
    }

    /// A copy that what a truncated file had not read yet was read from: it holds nothing
    /// else, so it is never read itself. Followed (or, when the globs match it, followed
    /// from now on) from its end.
    pub(super) fn copy_consumed(&mut self, path: &Path, file: File, size: u64) {
        let Ok(m) = file.metadata() else { return };
        let key = FileKey::of(&m);
        let fp = files::fingerprint(&file).ok().flatten();
        let head = Head::default()
            .recheck(&file, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(c) = self.files.iter_mut().find(|c| c.key == key && !c.recovered) {
            tracing::info!(
                "source {}: {} is the copy of a truncated file; following it from byte {size}",
                self.out.cx.name,
                path.display()
            );
            if c.read_pos() < size {
                c.offset = size;
                c.buf.clear();
                c.skipping = None;
            }
            c.fresh = false;
            c.copy_wait = None;
            c.fp = fp;
            c.head = head;
            if c.file.is_none() {
                c.file = Some(fds::Budget::global().adopt(file));
                c.changed_at = Instant::now();
            }
            if let (true, Some(f)) = (c.decoder.needs_header() && c.offset > 0, &c.file) {
                read_header(f, &mut c.decoder, self.out.cfg.max_record_bytes);
            }
            let (gen, offset) = (c.gen, c.offset);
            let born = state::born_ns(m.created().ok());
            self.out.cp.set_identity(key, gen, fp, head, born);
            self.out.cp.advance(key, gen, offset);
            return;
        }
        if !self.globs.matches(path) {
            return;
        }
        // Not seen yet (its file event is still on its way): recorded as read to its end,
        // so that it is followed from there when it is.
        let gen = self.out.cp.gen_for(&key);
        self.out.cp.insert(
            key,
            FileCp::followed(
                key,
                path.to_owned(),
                fp,
                head,
                gen,
                size,
                state::born_ns(m.created().ok()),
            ),
        );
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        self.track_file(path, fds::Budget::global().adopt(file), true, order);
    }
}

impl Out {
    /// Takes a file's fingerprint and head as they are now (after a read: the checkpoint
    /// must know the content it points into, in case the file is truncated next).
    pub(super) fn refresh_identity(&mut self, t: &mut Tracked) {
        // A closed file's identity was taken when it was last read.
        let Some(f) = t.file.as_deref() else { return };
        if t.fp.is_none() {
            t.fp = files::fingerprint(f).ok().flatten();
        }
        if (t.head.len as usize) < files::HEAD_MAX {
            if let Ok(m) = f.metadata() {
                if let Ok(Some(h)) = t.head.recheck(f, m.len()) {
                    t.head = h;
                }
            }
        }
        note_first(t);
        self.cp
            .set_identity(t.key, t.gen, t.fp, t.head, state::born_ns(t.born));
    }

    /// Starts `t` again from byte 0 under a new generation (new ids): it was truncated, or
    /// a new file took its inode number while it was closed. A record cut off at the end
    /// of the old generation is set aside.
    pub(super) fn new_generation(&mut self, t: &mut Tracked, why: &str, mark: bool) {
        if !t.buf.is_empty() {
            // A record cut off by the truncation, with no copy that holds its end.
            let reason = format!("incomplete last record of a file that was {why}");
            let (off, len) = (t.offset, t.buf.len() as u64);
            let data = std::mem::take(&mut t.buf);
            t.offset += len;
            self.set_aside(t, off, data, len, reason, off + len);
        }
        t.gen += 1 + std::mem::take(&mut t.gen_skip);
        t.offset = 0;
        t.buf.clear();
        t.skipping = None;
        t.fp = None;
        t.head = t
            .file
            .as_deref()
            .and_then(|f| Head::default().recheck(f, t.size).ok().flatten())
            .unwrap_or_default();
        t.decoder = Decoder::new(self.cfg.format.clone());
        t.fresh = false;
        // The checkpoint moves to the new generation only once every event of the old
        // one is acknowledged: a stop before that finishes it at the next start.
        if mark {
            self.mark_at(t.key, t.gen, 0);
        }
    }

    /// After a truncation of `t`: reads the rest of `t`'s generation, with `t`'s ids,
    /// from the copy logrotate's `copytruncate` made of it (found by [`Out::find_rest`]).
    /// Returns the uncompressed copy it used.
    pub(super) fn finish_from_copy(
        &mut self,
        t: &mut Tracked,
        rest: Option<Rest>,
    ) -> Result<Option<(PathBuf, File, u64)>, Stopping> {
        let Some(rest) = rest else {
            return Ok(None);
        };
        let Rest {
            path,
            file: copy,
            size,
            used,
            ..
        } = rest;
        if size > t.read_pos() {
            tracing::info!(
                "source {}: {} was truncated at byte {}; reading the rest, up to byte {size}, from its copy {}",
                self.cx.name,
                t.path.display(),
                t.read_pos(),
                path.display()
            );
        }
        let own = t.file.replace(fds::Budget::global().adopt(copy));
        let own_size = std::mem::replace(&mut t.size, size);
        let mut r = Ok(());
        while t.read_pos() < size && t.blocked.is_none() {
            match self.read_file(t) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        t.file = own;
        t.size = own_size;
        r.map(|()| used)
    }

    /// After a truncation of `t`: the copy that holds the rest of `t`'s generation:
    /// `held` (a new file held as its possible copy), else a file in the same directory
    /// that starts with `t`'s head and is longer than what was read, else a `.gz`
    /// rotation whose content does (the copy was compressed before it was read). An
    /// error: that `.gz` could not be decompressed (a full state directory).
    pub(super) fn find_rest(
        &mut self,
        t: &Tracked,
        held: Option<(PathBuf, File, u64)>,
    ) -> Result<Option<Rest>, String> {
        if t.head.len == 0 || t.blocked.is_some() {
            return Ok(None);
        }
        let plain = held.or_else(|| files::find_copy(&t.path, t.key, t.head, t.read_pos()));
        Ok(Some(match plain {
            Some((path, copy, size)) => {
                let used = copy.try_clone().ok().map(|f| (path.clone(), f, size));
                let mtime = copy
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Rest {
                    path,
                    file: copy,
                    size,
                    mtime,
                    used,
                }
            }
            None => match self.gunzip(&t.path, t.head, t.read_pos(), None)? {
                Some(g) => Rest {
                    path: g.gz,
                    file: g.file,
                    size: g.len,
                    mtime: g.mtime,
                    used: None,
                },
                None => return Ok(None),
            },
        }))
    }
}

/// A copy made after the one that held a truncated file's rest (see
/// [`Tail::copies_after_truncation`]).
enum Later {
    Plain(File, fs::Metadata),
    /// A `.gz` rotation, by its own device and inode.
    Gz(FileKey),
}
