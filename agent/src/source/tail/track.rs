//! Finding and holding files: the look at the globs (`scan`), tracking, opening, closing
//! idle files and opening them again, and the checkpoint matched to a file first seen.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use lockstep_formats::record::Decoder;

use super::files::{FileKey, Head};
use super::state::FileCp;
use super::{closable, ctime, fds, files, read_header, state, GzWait, Tail, Tracked};
use crate::admin::telemetry::{FileRotated, FileTruncated};
use crate::config::StartAt;

impl Tail {
    /// Finds files: new ones are opened and tracked, tracked ones that left the globs
    /// are marked gone. A directory that cannot be listed (no file descriptor left for
    /// it, permissions, I/O) tells nothing: the files in it stay as they were, and the
    /// checkpoint's files in it are looked for once it can be listed.
    pub(super) fn scan(&mut self) {
        self.rescan = false;
        self.last_scan = Instant::now();
        let mut scan = files::scan(&self.out.cfg.paths);
        self.log_unlisted(&scan);
        files::prune_taken(&mut self.out.gz_taken);
        let mut found = std::mem::take(&mut scan.found);
        // Files resumed from the checkpoint are older than files seen for the first time.
        let cp = &self.out.cp.files;
        found.sort_by_key(|f| cp.get(&f.key).is_none_or(|c| c.retired_ms.is_some()));
        for t in &mut self.files {
            if !scan.unknown(&t.path) {
                t.matched = false;
            }
        }
        self.waiting_open = 0;
        // Every file the globs match now, opened or not (waiting for a descriptor).
        let matched: std::collections::HashSet<FileKey> = found.iter().map(|f| f.key).collect();
        for f in found {
            if let Some(t) = self
                .files
                .iter_mut()
                .find(|t| t.key == f.key && !t.recovered)
            {
                t.matched = true;
                t.gone_since = None;
                t.path = f.path;
                continue;
            }
            if !self.track(&f.path, true) {
                self.waiting_open += 1;
                if self.first_scan {
                    self.waited_at_start.insert(f.key);
                }
            }
        }
        if !self.first_scan {
            // One that vanished before it had a descriptor: its inode number may be a
            // new file's later.
            self.waited_at_start.retain(|k| matched.contains(k));
            // Copies made while stopped of files that waited for a descriptor at the
            // start and were found truncated once opened (see `track_file`).
            let truncated = std::mem::take(&mut self.truncated_while_stopped);
            if let (false, Some(since)) = (truncated.is_empty(), self.out.cp.written) {
                self.track_rotated_while_stopped(&truncated, since, true);
            }
        }
        if self.waiting_open > 0 {
            // Looked for again as soon as files are read to their end and can be closed.
            self.rescan = true;
        }
        let unknown = |c: &FileCp| c.retired_ms.is_none() && scan.unknown(&c.path);
        if self.first_scan && !self.out.cp.files.values().any(unknown) {
            // Files from the checkpoint that the globs no longer match: rotated to another
            // name while the agent was stopped. Finish them first. (A file the globs
            // match that waits for a descriptor is not missing; nor is one whose
            // directory cannot be listed: the next scan looks again.)
            let missing: Vec<FileCp> = self
                .out
                .cp
                .files
                .values()
                .filter(|c| {
                    c.retired_ms.is_none()
                        && !matched.contains(&FileKey {
                            dev: c.dev,
                            ino: c.ino,
                        })
                        && !self.files.iter().any(|t| {
                            t.key
                                == FileKey {
                                    dev: c.dev,
                                    ino: c.ino,
                                }
                        })
                })
                .cloned()
                .collect();
            let mut rotated_live = Vec::new();
            let mut recovered = Vec::new();
            for c in missing {
                let key = FileKey {
                    dev: c.dev,
                    ino: c.ino,
                };
                if key.is_apart() && self.resume_apart(&c) {
                    continue;
                }
                // A compressed rotation is never opened as text: its rest is recovered.
                // Not a file that took its inode number since (deleted while stopped,
                // the number reused: its birth time differs): then it vanished.
                let same_birth = |p: &PathBuf| {
                    let born = fs::metadata(p).ok().and_then(|m| m.created().ok());
                    match (c.born_ns, state::born_ns(born)) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
                };
                let found = match files::find_in_dir(&c.path, key) {
                    Ok(found) => found.filter(|p| !files::is_compressed(p) && same_birth(p)),
                    Err(e) => {
                        // Kept in the checkpoint: the next start looks again.
                        tracing::error!(
                            "source {}: {} (checkpointed at byte {}) is not in the globs, and its directory cannot be listed to find where it went ({e}); it is kept for the next start: fix the cause (raise LimitNOFILE when out of file descriptors), then restart",
                            self.out.cx.name,
                            c.path.display(),
                            c.offset
                        );
                        continue;
                    }
                };
                match found {
                    Some(p) => {
                        tracing::info!(
                            "source {}: {} was rotated to {} while stopped; finishing it",
                            self.out.cx.name,
                            c.path.display(),
                            p.display()
                        );
                        self.track(&p, false);
                        rotated_live.push(c.path.clone());
                    }
                    None => {
                        // Files rotated after it while stopped are found next to it.
                        rotated_live.push(c.path.clone());
                        // Rotated and compressed while stopped (`compress`): the rest is
                        // read from the `.gz` whose content starts as the file did.
                        let since = self.out.cp.written;
                        // A newer generation of its inode number being read at the stop
                        // (a new file in it, while this one's last events were not all
                        // acknowledged), gone as well: its content, compressed since, is
                        // found by its head and read among the rests, under its ids.
                        // (Each of them, when it was taken again and again.)
                        let newer: Vec<state::NextGen> = c.later();
                        for n in newer {
                            let mut c2 = c.clone();
                            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
                            (c2.head, c2.born_ns, c2.next) = (Some(n.head), n.born_ns, None);
                            c2.between.clear();
                            match self.out.gunzip(&c.path, n.head, 0, since) {
                                Ok(Some(g)) => recovered.push((g, c2)),
                                Ok(None) => {}
                                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
                            }
                        }
                        let g = match c.head {
                            Some(h) => self.out.gunzip(&c.path, h, c.offset, since),
                            None => Ok(None),
                        };
                        match g {
                            Ok(Some(g)) => recovered.push((g, c)),
                            Ok(None) => self.vanished(&c),
                            // Kept in the checkpoint: tried again (and at the next start).
                            Err(e) => self.gz_wait(GzWait::Rest { c, gone: true }, &e),
                        }
                    }
                }
            }
            // Oldest first; of one file, its older generation first when the times tie
            // (file timestamps are coarse).
            recovered.sort_by_key(|(g, c)| (g.mtime, c.gen));
            for (g, c) in recovered {
                self.track_recovered(g, &c);
            }
            if let Some(since) = self.out.cp.written {
                self.track_compressed_while_stopped(since);
            }
            if let Some(since) = self.out.cp.written {
                // A live file truncated while stopped (its entry's old path may be its
                // own: a rename the checkpoint did not catch) is left to the second
                // pass, which tells its copies from files rotated away.
                let truncated = &self.truncated_while_stopped;
                let rotated: Vec<(PathBuf, Option<Head>)> = rotated_live
                    .into_iter()
                    .filter(|p| !truncated.iter().any(|(q, _)| q == p))
                    .map(|p| (p, None))
                    .collect();
                self.track_rotated_while_stopped(&rotated, since, false);
                // copytruncate while stopped: the copy of the checkpointed generation is
                // finished by the first read round; copies made after it hold
                // generations never seen.
                let truncated = std::mem::take(&mut self.truncated_while_stopped);
                self.track_rotated_while_stopped(&truncated, since, true);
            }
            if !self.out.cp.existed {
                // Record the starting offsets now, so that start_at applies only once.
                self.out.cp.dirty = true;
                self.out.checkpoint(true);
            }
            self.first_scan = false;
        }
        for t in &mut self.files {
            if !t.matched && t.gone_since.is_none() {
                t.gone_since = Some(Instant::now());
                FileRotated {
                    source: &self.out.cx.name,
                    file: &t.path,
                }
                .emit(&self.out.cx.counters);
            }
        }
    }

    /// Opens a file and tracks it. `false`: no file descriptor could be had for it (see
    /// `fds`); it waits for a later look.
    pub(super) fn track(&mut self, path: &Path, matched: bool) -> bool {
        match self.open(path, !matched) {
            Ok(file) => {
                let order = self.discovered.fetch_add(1, Ordering::Relaxed);
                self.track_file(path, file, matched, order);
                true
            }
            Err(fds::OpenError::NoSlot) => false,
            Err(fds::OpenError::Io(e)) => {
                tracing::warn!(
                    "source {}: cannot open {}: {e}; trying again at the next scan",
                    self.out.cx.name,
                    path.display()
                );
                true
            }
        }
    }

    /// Opens `path` within the tail sources' budget of open files (`urgent`: a file that
    /// left the globs, which may go past it; see `fds`), first closing files of this
    /// source that are read to their end when the budget is spent.
    fn open(&mut self, path: &Path, urgent: bool) -> Result<fds::Held, fds::OpenError> {
        loop {
            match fds::Budget::global().open(path, urgent) {
                Err(fds::OpenError::NoSlot) if self.close_one() => {}
                r => return r,
            }
        }
    }

    /// Closes the file of this source that is read to its end, still matched by the globs
    /// and changed least recently (a file that never had a byte only after a second: it
    /// may be a copy `copytruncate` is about to fill). `false`: none can be closed.
    fn close_one(&mut self) -> bool {
        let now = Instant::now();
        let pick = self
            .files
            .iter_mut()
            .filter(|t| {
                closable(t)
                    && (!t.fresh || now.duration_since(t.changed_at) >= Duration::from_secs(1))
            })
            .min_by_key(|t| t.changed_at);
        match pick {
            Some(t) => {
                tracing::debug!(
                    "source {}: closing {} (read to its end) to open another file",
                    self.out.cx.name,
                    t.path.display()
                );
                t.file = None;
                true
            }
            None => false,
        }
    }

    /// Closes the files read to their end, still matched by the globs and unchanged for
    /// `close_idle` (for a second while a file waits for a descriptor: see `fds`). They
    /// are looked at by path from then on (see [`Tail::reopen`]).
    pub(super) fn close_idle(&mut self) {
        let mut idle = self.out.cfg.close_idle;
        if fds::Budget::global().starved_lately() {
            idle = idle.min(Duration::from_secs(1));
        }
        let now = Instant::now();
        for t in &mut self.files {
            if closable(t) && now.duration_since(t.changed_at) >= idle {
                tracing::debug!(
                    "source {}: closing {} (read to its end, unchanged for {idle:?})",
                    self.out.cx.name,
                    t.path.display()
                );
                t.file = None;
            }
        }
    }

    /// Looks at closed file `i` by its path: reopens it when it changed, when it left the
    /// globs, or when its name now holds another file (then it is looked for by its inode
    /// in its directory: a rotation the watcher did not report). Returns whether it is
    /// open now. A closed file found nowhere once the globs were scanned again was
    /// deleted: it is dropped as read to its end.
    pub(super) fn reopen(&mut self, i: usize) -> bool {
        let t = &self.files[i];
        let here = fs::metadata(&t.path)
            .ok()
            .filter(|m| FileKey::of(m) == t.key);
        let path = match here {
            Some(m)
                if t.gone_since.is_none()
                    && m.len() == t.size
                    && m.modified().ok() == Some(t.mtime) =>
            {
                return false;
            }
            Some(_) => t.path.clone(),
            None => match files::find_in_dir(&t.path, t.key) {
                Ok(Some(p)) => p,
                // The directory cannot be listed now (no descriptor free, …): where the
                // file went is not known, so it is not taken for deleted; looked for
                // again at the next round.
                Err(e) => {
                    tracing::debug!(
                        "source {}: cannot look for {} in its directory: {e}",
                        self.out.cx.name,
                        t.path.display()
                    );
                    self.waiting_reopen += 1;
                    return false;
                }
                Ok(None) if t.gone_since.is_none() => {
                    // The next scan tells whether the globs match it under another name.
                    self.rescan = true;
                    return false;
                }
                Ok(None) => {
                    let t = &mut self.files[i];
                    if t.nlink != 0 {
                        t.nlink = 0;
                        tracing::info!(
                            "source {}: {} was deleted (or moved to another directory) while closed, read to byte {}; whatever was written to it after it was closed was not read",
                            self.out.cx.name,
                            t.path.display(),
                            t.read_pos()
                        );
                    }
                    return false;
                }
            },
        };
        let urgent = t.gone_since.is_some() || !self.globs.matches(&path);
        let file = match self.open(&path, urgent) {
            Ok(f) => f,
            Err(fds::OpenError::NoSlot) => {
                self.waiting_reopen += 1;
                return false;
            }
            Err(fds::OpenError::Io(e)) => {
                tracing::warn!(
                    "source {}: cannot open {} again: {e}; trying again at the next look",
                    self.out.cx.name,
                    path.display()
                );
                return false;
            }
        };
        let Ok(m) = file.metadata() else { return false };
        if FileKey::of(&m) != self.files[i].key {
            // Renamed again between the look and the open: the next round looks again.
            return false;
        }
        self.files[i].path = path;
        self.reopened(i, file, &m);
        true
    }

    /// Closed file `i` is open again as `file`. Its identity was checked by device and
    /// inode; when its birth time differs too, the file it was was deleted while closed
    /// and a new one took its inode number: the next look handles that as a truncation
    /// (the old file's rest from a copy or `.gz` rotation, then the new one from byte 0
    /// as a new generation). Its head is checked at the next look (a truncation while
    /// closed).
    fn reopened(&mut self, i: usize, file: fds::Held, m: &fs::Metadata) {
        let born = m.created().ok();
        let t = &mut self.files[i];
        t.file = Some(file);
        t.suspect = true;
        t.changed_at = Instant::now();
        if matches!((t.born, born), (Some(a), Some(b)) if a != b) {
            tracing::info!(
                "source {}: {} was deleted while closed, read to byte {}, and a new file took its inode number; the rest of the old one is looked for in its rotations, then the new one is read from byte 0",
                self.out.cx.name,
                t.path.display(),
                t.read_pos()
            );
            t.born = born;
            t.replaced = true;
        }
    }

    /// Tracks an open file from now on (empty or not: it may be written and renamed away
    /// before the next look) and decides where reading starts. A file already tracked
    /// only takes the new name.
    pub(super) fn track_file(&mut self, path: &Path, file: fds::Held, matched: bool, order: u64) {
        let Ok(meta) = file.metadata() else { return };
        if !meta.is_file() {
            return;
        }
        let key = FileKey::of(&meta);
        // Judged as at the first scan: found then, but it waited for a descriptor.
        let at_start = self.first_scan || self.waited_at_start.remove(&key);
        if let Some(i) = self.files.iter().position(|t| t.key == key && !t.recovered) {
            self.files[i].path = path.to_owned();
            if self.files[i].file.is_none() {
                // A closed file renamed (a rotation the watcher saw): open from now on.
                self.reopened(i, file, &meta);
            }
            return;
        }
        // None while the first line is incomplete (an empty file, as `create` makes).
        let fp = files::fingerprint(&file).ok().flatten();
        let size = meta.len();
        let name = &self.out.cx.name;
        let same = |c: &FileCp| {
            let first_line = (c.fp.is_some() && c.fp == fp) || (c.fp.is_none() && c.offset == 0);
            // A checkpoint from before heads were recorded: the first line alone, once.
            let head = c
                .head
                .is_none_or(|h| matches!(h.recheck(&file, size), Ok(Some(_))));
            first_line && head && size >= c.offset
        };
        let mut fp = fp;
        let mut old_head = None;
        let born = state::born_ns(meta.created().ok());
        let same_birth = |c: &FileCp| born.is_some() && c.born_ns == born;
        let replaced = |c: &FileCp| born.is_some() && c.born_ns.is_some() && c.born_ns != born;
        let has_head = |c: &FileCp| c.head.is_some_and(|h| h.len > 0);
        let mut force_truncated = false;
        // Dropped in this run (read to its end: `retiring`), its entry waiting for the
        // acks of its last events: the entry is still that file's, acknowledged short of
        // where it was read to. The same file seen again (its birth time says so: opened
        // again under its rotated name before it was deleted) goes on where it was read
        // to; a new file in its inode number (the old one was deleted) is a new
        // generation from 0. The entry stays as it is, so a stop before those acks
        // finishes the old file at the next start.
        let dropped = self.out.retiring.get(&key).copied().and_then(|(g, end)| {
            let c = self.out.cp.files.get(&key)?;
            if c.retired_ms.is_some() {
                None
            } else if same_birth(c) {
                Some((g, end))
            } else if replaced(c) {
                Some((g + 1, 0))
            } else {
                None
            }
        });
        let (gen, offset) = match (dropped, self.out.cp.files.get(&key)) {
            (Some(at), _) => at,
            (None, c) => match c {
                // Dropped (deleted, or left the globs and read to its end), and its inode
                // number now holds another file. The same file seen again (its birth time
                // says so: a rotation whose file event came after it was dropped) resumes
                // where it was, below.
                Some(c) if c.retired_ms.is_some() && !same_birth(c) => (c.gen + 1, 0),
                // Another file than the checkpointed one (which was deleted while the agent
                // was stopped, and whose inode number it took) is never taken for it, even
                // when it starts with the same bytes: it is handled as a truncation, below.
                Some(c) if same(c) && !(replaced(c) && has_head(c)) => {
                    if at_start && c.offset == 0 && c.head.is_none_or(|h| h.len == 0) {
                        // Empty when the agent stopped: copies made since (copytruncate)
                        // hold what was written to it meanwhile.
                        self.truncated_while_stopped.push((path.to_owned(), None));
                    }
                    (c.gen, c.offset)
                }
                // Truncated (copytruncate) while the agent was stopped: resume the old
                // generation where it was, with its fingerprint and head. The first read
                // round finds the truncation, reads the rest from the copy when there is one,
                // and starts the file again from 0.
                // The same for a new file in the inode number of a deleted one: the deleted
                // file's rest is looked for in its copies and `.gz` rotations first.
                Some(c) if has_head(c) => {
                    if replaced(c) {
                        tracing::info!(
                        "source {name}: {} is a new file in the inode number of {} (deleted, checkpointed at byte {}); the rest of that file is looked for in its rotations, then the new one is read from byte 0",
                        path.display(),
                        c.path.display(),
                        c.offset
                    );
                        force_truncated = true;
                    }
                    fp = c.fp;
                    old_head = c.head;
                    if at_start {
                        self.truncated_while_stopped.push((path.to_owned(), c.head));
                    }
                    (c.gen, c.offset)
                }
                Some(c) => {
                    FileTruncated {
                        source: name,
                        file: path,
                        was: c.offset,
                        now: size,
                    }
                    .emit(&self.out.cx.counters);
                    (c.gen + 1, 0)
                }
                None if at_start && self.first_start && self.out.cfg.start_at == StartAt::End => {
                    (0, files::end_of_last_line(&file, size).unwrap_or(0))
                }
                None => (0, 0),
            },
        };
        // A new file in the checkpointed one's inode number at a start: the generations
        // read after the checkpointed one before the stop are recovered first.
        let checkpointed = self.out.cp.files.get(&key).cloned();
        let skip = match (at_start && force_truncated, checkpointed) {
            (true, Some(c)) => self.recover_newer(&c, &file, size, born),
            _ => 0,
        };
        let head = old_head.unwrap_or_else(|| {
            Head::default()
                .recheck(&file, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        });
        match dropped {
            Some((g, _)) => {
                self.out.cp.set_identity(key, g, fp, head, born);
                if offset == 0 {
                    // Reached once every event of the dropped file is acknowledged.
                    self.out.mark_at(key, g, 0);
                }
            }
            None => {
                let mut c = FileCp::followed(key, path.to_owned(), fp, head, gen, offset, born);
                // The same generation goes on: what is known of the one before stays, and
                // of those after it read before the stop (see
                // [`Tail::track_later_generations`]).
                if let Some(o) = self
                    .out
                    .cp
                    .files
                    .get(&key)
                    .filter(|o| o.gen == gen && o.retired_ms.is_none())
                {
                    (c.prev, c.next, c.between) = (o.prev, o.next, o.between.clone());
                }
                self.out.cp.insert(key, c);
            }
        }
        self.out.retiring.remove(&key);
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && offset > 0 {
            read_header(&file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        tracing::info!(
            "source {}: following {} from byte {offset}",
            self.out.cx.name,
            path.display()
        );
        self.files.push(Tracked {
            key,
            path: path.to_owned(),
            born: meta.created().ok(),
            changed_at: Instant::now(),
            file: Some(file),
            fp,
            head,
            suspect: old_head.is_some(),
            replaced: force_truncated,
            blocked: None,
            gen,
            offset,
            buf: Vec::new(),
            decoder,
            skipping: None,
            size,
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            matched,
            gone_since: if matched { None } else { Some(Instant::now()) },
            nlink: meta.nlink(),
            discovered: order,
            fresh: offset == 0,
            copy_wait: None,
            recovered: false,
            first: Vec::new(),
            bare_since: (offset == 0 && head.len == 0).then(|| ctime(&meta)),
            gen_skip: skip,
            rest_wait: None,
        });
    }

    /// At a start, a new file in the inode number of checkpoint entry `c` (its birth time
    /// differs; `create`, not `copytruncate`, whose copies are found otherwise): the
    /// newer generations of that number the agent was reading at the stop, while the
    /// entry waited for acknowledgements (`FileCp::later`), were rotated and compressed
    /// since. Each is recovered from its `.gz`, by its head, under its ids (as for a
    /// vanished file), up to the one the file itself is (its head and birth time). The
    /// generations the file's own next generation goes past: before, they were lost
    /// (torture seed 145, `create` + `compress` while the broker stalled).
    fn recover_newer(&mut self, c: &FileCp, file: &File, size: u64, born: Option<u64>) -> u32 {
        let since = self.out.cp.written;
        let newer: Vec<state::NextGen> = c.later();
        let mut skip = 0;
        for n in newer {
            let same_birth = n.born_ns.is_none() || born.is_none() || n.born_ns == born;
            if same_birth && matches!(n.head.recheck(file, size), Ok(Some(_))) {
                // The file is this generation: it goes on as it.
                return n.gen.saturating_sub(c.gen + 1);
            }
            let mut c2 = c.clone();
            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
            (c2.head, c2.born_ns, c2.next) = (Some(n.head), n.born_ns, None);
            c2.between.clear();
            match self.out.gunzip(&c.path, n.head, 0, since) {
                Ok(Some(g)) => self.track_recovered(g, &c2),
                Ok(None) => tracing::warn!(
                    "source {}: generation {} of {} (being read at the stop) is gone; whatever of it was not acknowledged was not read",
                    self.out.cx.name,
                    n.gen,
                    c.path.display()
                ),
                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
            }
            skip = n.gen.saturating_sub(c.gen);
        }
        skip
    }
}
