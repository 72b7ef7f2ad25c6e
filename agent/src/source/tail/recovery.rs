//! Start-up recovery and `.gz` rests: files rotated, copied or compressed while the agent
//! was stopped, rests and copies recovered from `.gz` files, and the retry of a `.gz` that
//! could not be decompressed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use lockstep_formats::record::Decoder;

use super::files::{FileKey, Head};
use super::state::FileCp;
use super::{files, read_header, state, GzWait, Out, Rest, Retry, Tail, Tracked, Whole};
use crate::clock::now_ms;

impl Tail {
    /// Files created and rotated out of the globs while the agent was stopped: the live
    /// file of a rotated checkpointed one was rotated again before the start. They are
    /// unknown to the checkpoint; found by name next to it (see `files::rotated_since`)
    /// and read whole, oldest first, before the live files.
    /// With a head: the live file was truncated, and the copy that starts with that head
    /// is left to [`Out::finish_from_copy`].
    ///
    /// `truncated` (copytruncate while stopped): the oldest such file of a live file
    /// that had nothing of its generation read, or acknowledged, at the stop (no head,
    /// offset 0: empty then, or killed before the checkpoint caught up) is that
    /// generation's copy: it is read under the live file's ids, from 0, so that events
    /// already sent are sent again with their ids (JetStream drops them), and the live
    /// file goes on with a new generation. Unless the live file starts with all of it (a
    /// plain copy of the file as it is, not truncated).
    pub(super) fn track_rotated_while_stopped(
        &mut self,
        live: &[(PathBuf, Option<Head>)],
        since: SystemTime,
        truncated: bool,
    ) {
        // Copies of generations already read (their head and length), which a
        // checkpoint written within the same clock tick as the copy does not tell apart
        // by time.
        let read: Vec<(Head, u64)> = self.out.cp.files.values().filter_map(|c| c.prev).collect();
        for (l, head) in live {
            let mut generation = truncated;
            if truncated && head.is_some() && self.track_later_generations(l, since) {
                // The live file is the newest generation read at the stop: no copy was
                // made of it since.
                generation = false;
            }
            for (p, key) in files::rotated_since(l, since) {
                // A retired entry is another file's when this one took its inode number
                // since (`delaycompress`: a new file in a dropped file's number, rotated
                // while stopped): its birth time differs, or else it is not the entry's
                // bytes.
                let same = |c: &FileCp| {
                    let born = fs::metadata(&p).ok().and_then(|m| m.created().ok());
                    match (c.born_ns, state::born_ns(born)) {
                        (Some(a), Some(b)) => a == b,
                        _ => File::open(&p).is_ok_and(|f| {
                            let size = f.metadata().map_or(0, |m| m.len());
                            size == c.offset
                                && c.head
                                    .is_some_and(|h| matches!(h.recheck(&f, size), Ok(Some(_))))
                        }),
                    }
                };
                // The entry still followed is this file's unless its birth time differs
                // (seed 22135: a new file in the number the followed file freed when it
                // was rotated and compressed while stopped; the entry's rest is read
                // from the `.gz`, this file apart, below).
                let other = |c: &FileCp| {
                    let born = fs::metadata(&p).ok().and_then(|m| m.created().ok());
                    matches!((c.born_ns, state::born_ns(born)), (Some(a), Some(b)) if a != b)
                };
                let entry = self.out.cp.files.get(&key);
                // A copy already followed as a generation of the live file is known too,
                // and a file followed in this number (not a rest recovered under its ids).
                let known = entry.is_some_and(|c| {
                    if c.retired_ms.is_none() {
                        !other(c)
                    } else {
                        same(c)
                    }
                }) || self
                    .files
                    .iter()
                    .any(|t| t.path == p || (t.key == key && !t.recovered));
                if known || self.globs.matches(&p) {
                    continue;
                }
                if self.track_later_generation(&p, key) {
                    continue;
                }
                let already_read = File::open(&p).is_ok_and(|f| {
                    let size = f.metadata().map_or(0, |m| m.len());
                    read.iter()
                        .any(|&(h, len)| len == size && matches!(h.recheck(&f, size), Ok(Some(_))))
                });
                if already_read {
                    continue;
                }
                let copy_of_checkpointed = head.is_some_and(|h| {
                    File::open(&p).is_ok_and(|f| {
                        let size = f.metadata().map_or(0, |m| m.len());
                        matches!(h.recheck(&f, size), Ok(Some(_)))
                    })
                });
                if copy_of_checkpointed {
                    continue;
                }
                if std::mem::take(&mut generation)
                    && self.copy_of_bare_generation(l, &p, head.is_some())
                {
                    continue;
                }
                tracing::info!(
                    "source {}: {} was written and rotated away while stopped; reading it whole",
                    self.out.cx.name,
                    p.display()
                );
                // Its number is another file's in the checkpoint, or a rest's being
                // recovered: read under ids of its own, never as a generation of that
                // file (which would take that file's newer generations for its own, or
                // the ids of one being recovered).
                let taken =
                    self.out.cp.files.contains_key(&key) || self.files.iter().any(|t| t.key == key);
                if !(taken && self.track_apart(&p, key)) {
                    self.track(&p, false);
                }
            }
        }
    }

    /// `path`, rotated away while stopped in the inode number `key` of a checkpoint
    /// entry, when it is a generation of that number newer than the entry's that was
    /// being read at the stop (its birth time is the one the entry keeps for it, in
    /// `next` or `between`; a kill -9 left the entry behind): read whole under the
    /// number's ids as that generation, from byte 0, so that what was sent of it is sent
    /// again with the same ids. A retired entry is followed again (its generation moves
    /// on with the acknowledgements, so a stop before the end resumes it). `false`: it is
    /// no such generation.
    fn track_later_generation(&mut self, path: &Path, key: FileKey) -> bool {
        let Some(c) = self.out.cp.files.get(&key) else {
            return false;
        };
        let Ok(f) = File::open(path) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        let Some(born) = state::born_ns(m.created().ok()) else {
            return false;
        };
        let Some(n) = c.later().into_iter().find(|n| n.born_ns == Some(born)) else {
            return false;
        };
        if self.files.iter().any(|t| t.key == key && t.gen == n.gen) {
            // Already read (recovered from a `.gz` by its head).
            return true;
        }
        tracing::info!(
            "source {}: {} is generation {} of {} (read before the stop, not all acknowledged), rotated away while stopped; reading it whole under that file's ids",
            self.out.cx.name,
            path.display(),
            n.gen,
            c.path.display()
        );
        if let Some(e) = self.out.cp.files.get_mut(&key) {
            if e.retired_ms.take().is_some() {
                self.out.cp.dirty = true;
            }
        }
        self.track_copy(key, path, f, (m.len(), mtime_of(&m)), n.gen);
        true
    }

    /// Follows `path`, file `key` on disk, whole under ids of its own ([`FileKey::apart`]),
    /// kept in the checkpoint so that a stop before its end resumes it (see
    /// [`Tail::resume_apart`]). The ids of a file read apart before in this number
    /// (its entry retired) go on with their next generation. `false`: every level of
    /// those ids is in use, or the file is not there any more.
    fn track_apart(&mut self, path: &Path, key: FileKey) -> bool {
        let free = |own: &FileKey| {
            !self.files.iter().any(|t| t.key == *own)
                && self
                    .out
                    .cp
                    .files
                    .get(own)
                    .is_none_or(|c| c.retired_ms.is_some())
        };
        let Some(own) = (0..FileKey::APART_LEVELS)
            .map(|l| key.apart(l))
            .find(|k| free(k))
        else {
            return false;
        };
        let Ok(f) = File::open(path) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        if FileKey::of(&m) != key {
            return false;
        }
        let fp = files::fingerprint(&f).ok().flatten();
        let head = Head::default()
            .recheck(&f, m.len())
            .ok()
            .flatten()
            .unwrap_or_default();
        let born = state::born_ns(m.created().ok());
        let gen = self.out.cp.gen_for(&own);
        let c = FileCp::followed(own, path.to_owned(), fp, head, gen, 0, born);
        self.out.cp.insert(own, c.clone());
        self.follow_apart(f, &m, &c);
        true
    }

    /// At a start, checkpoint entry `c`, of a file followed apart (see
    /// [`Tail::track_apart`]) and not read to its end at the stop: it is found again by
    /// its inode number and birth time (else its first bytes) in its directory and read
    /// on from its offset. `false`: it is not there as a plain file (compressed since: its
    /// rest is looked for in the `.gz` rotations, as any vanished file's).
    pub(super) fn resume_apart(&mut self, c: &FileCp) -> bool {
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        let Ok(Some(path)) = files::find_in_dir(&c.path, key.on_disk()) else {
            return false;
        };
        if files::is_compressed(&path) {
            return false;
        }
        let Ok(f) = File::open(&path) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        let born = state::born_ns(m.created().ok());
        let same = match (c.born_ns, born) {
            (Some(a), Some(b)) => a == b,
            _ => {
                m.len() >= c.offset
                    && c.head
                        .is_some_and(|h| matches!(h.recheck(&f, m.len()), Ok(Some(_))))
            }
        };
        if !same || FileKey::of(&m) != key.on_disk() {
            return false;
        }
        tracing::info!(
            "source {}: {} (read apart, under ids of its own, checkpointed at byte {}) is read on",
            self.out.cx.name,
            path.display(),
            c.offset
        );
        let c = FileCp { path, ..c.clone() };
        self.follow_apart(f, &m, &c);
        true
    }

    fn follow_apart(&mut self, f: File, m: &fs::Metadata, c: &FileCp) {
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && c.offset > 0 {
            read_header(&f, &mut decoder, self.out.cfg.max_record_bytes);
        }
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        let t = Tracked::recovered(key, c.path.clone(), f, (m.len(), mtime), order, decoder);
        self.files.push(Tracked {
            fp: c.fp,
            head: c.head.unwrap_or_default(),
            gen: c.gen,
            offset: c.offset,
            ..t
        });
    }

    /// See [`Tail::track_rotated_while_stopped`]: `copy`, made while stopped, read as the
    /// generation of live file `live` that had nothing read or acknowledged at the stop.
    /// `false`: it is not (no such live file, or a plain copy of it as it is).
    fn copy_of_bare_generation(&mut self, live: &Path, copy: &Path, after: bool) -> bool {
        let Some(i) = self.files.iter().position(|t| {
            t.path == live
                && !t.recovered
                && t.gone_since.is_none()
                && (after || t.read_pos() == 0)
                // A new file in the inode number of the checkpointed one (`create`, not
                // `copytruncate`): the files rotated since are renamed files of their
                // own, not copies of a generation of it.
                && !(after && t.replaced)
                && t.blocked.is_none()
        }) else {
            return false;
        };
        let Ok(f) = File::open(copy) else {
            return false;
        };
        let Ok(m) = f.metadata() else { return false };
        let first = files::first_bytes(&f).unwrap_or_default();
        let t = &self.files[i];
        let now = t
            .file
            .as_deref()
            .and_then(|lf| files::first_bytes(lf).ok())
            .unwrap_or_default();
        let lsize = t
            .file
            .as_deref()
            .and_then(|lf| lf.metadata().ok())
            .map_or(0, |lm| lm.len());
        if first.is_empty() || (m.len() <= lsize && now.starts_with(&first)) {
            return false;
        }
        // With a head, the checkpointed generation is finished first (from its copy) by
        // the first read round: this copy is the one after it, or after the later
        // generations read at the stop whose copies were found (see
        // [`Tail::track_later_generations`]).
        let gen = t.gen + u32::from(after) + t.gen_skip;
        tracing::info!(
            "source {}: {} is the copy of generation {gen} of {}, which the checkpoint had not reached at the stop; reading it under that file's ids, then the file as a new generation",
            self.out.cx.name,
            copy.display(),
            live.display()
        );
        let key = t.key;
        self.track_copy(key, copy, f, (m.len(), mtime_of(&m)), gen);
        let t = &mut self.files[i];
        if after {
            // Its truncation, found by the first read round, goes past this generation.
            t.gen_skip += 1;
        } else {
            // Read after its copy (the copy ranks first): the checkpoint moves on with it.
            self.out
                .new_generation(t, "copied and truncated while stopped", false);
        }
        true
    }

    /// Follows `copy` (open as `f`, `len` bytes long, last written at `mtime`) whole as
    /// generation `gen` of file `key`: read under that file's ids, among the rests
    /// recovered at the start.
    pub(super) fn track_copy(
        &mut self,
        key: FileKey,
        copy: &Path,
        f: File,
        (len, mtime): (u64, SystemTime),
        gen: u32,
    ) {
        let head = Head::default()
            .recheck(&f, len)
            .ok()
            .flatten()
            .unwrap_or_default();
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let decoder = Decoder::new(self.out.cfg.format.clone());
        let t = Tracked::recovered(key, copy.to_owned(), f, (len, mtime), order, decoder);
        self.files.push(Tracked { head, gen, ..t });
    }

    /// Live file `live`, checkpointed at a generation with a head and truncated since:
    /// the generations after that one which were already being read at the stop (the
    /// file was copytruncated again before their acknowledgements came; see
    /// `FileCp::between` and `FileCp::next`) are in copies made before or after the
    /// stop. Each is found by its head (a plain copy next to the file, else a `.gz`
    /// rotation) and read whole under the file's ids, in generation order after the
    /// rest of the checkpointed one, so that what was sent of it before the stop is sent
    /// again with the same ids. The live file itself may be the newest of them (not
    /// truncated since): it goes on as that generation, from 0; else as the one after.
    /// `true`: the live file is that newest generation.
    fn track_later_generations(&mut self, live: &Path, since: SystemTime) -> bool {
        let Some(i) = self.files.iter().position(|t| {
            t.path == live
                && !t.recovered
                && t.gone_since.is_none()
                && !t.replaced
                && t.blocked.is_none()
        }) else {
            return false;
        };
        let (key, gen) = (self.files[i].key, self.files[i].gen);
        let Some(c) = self.out.cp.files.get(&key).filter(|c| c.gen == gen) else {
            return false;
        };
        let later = c.later();
        let Some(newest) = later.last().map(|n| n.gen) else {
            return false;
        };
        let (head, offset, prev) = (c.head.unwrap_or_default(), c.offset, c.prev);
        // The copy of the checkpointed generation (its rest, read by the first read
        // round) and older copies are not later generations: a short head (a CSV header)
        // may start them too.
        let rest = files::find_copy(live, key, head, offset);
        let not_before = rest
            .as_ref()
            .and_then(|(_, f, _)| f.metadata().and_then(|m| m.modified()).ok());
        // A copy the globs match, followed from its end since it was made (see
        // `Out::copy_consumed`: everything in it was read from the live file, under that
        // file's ids) and resumed there: known, yet still the copy of its generation.
        let consumed = |p: &Path, k: &FileKey| {
            let mut known = self.files.iter().filter(|t| t.key == *k || t.path == p);
            let size = fs::metadata(p).map_or(u64::MAX, |m| m.len());
            known.clone().next().is_some()
                && known.all(|t| {
                    t.key == *k
                        && !t.recovered
                        && t.gone_since.is_none()
                        && t.read_pos() == size
                        && self
                            .out
                            .cp
                            .files
                            .get(k)
                            .is_some_and(|c| c.retired_ms.is_none() && c.offset == size)
                })
        };
        let mut candidates: Vec<(PathBuf, FileKey)> =
            files::rotated_since(live, SystemTime::UNIX_EPOCH)
                .into_iter()
                .filter(|(p, k)| {
                    rest.as_ref().is_none_or(|(r, _, _)| r != p)
                        && (consumed(p, k)
                            || (!self.files.iter().any(|t| t.key == *k || t.path == *p)
                                && !self.globs.matches(p)))
                        && fs::metadata(p).is_ok_and(|m| {
                            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                            not_before.is_none_or(|t| mtime >= t)
                                && !prev.is_some_and(|(h, n)| {
                                    n == m.len()
                                        && File::open(p)
                                            .is_ok_and(|f| matches!(h.recheck(&f, n), Ok(Some(_))))
                                })
                        })
                })
                .collect();
        let live_first = self.files[i]
            .file
            .as_deref()
            .and_then(|f| files::first_bytes(f).ok())
            .unwrap_or_default();
        let mut live_is_newest = false;
        for n in later {
            let found = candidates.iter().position(|(p, _)| {
                File::open(p).is_ok_and(|f| {
                    let size = f.metadata().map_or(0, |m| m.len());
                    matches!(n.head.recheck(&f, size), Ok(Some(_)))
                })
            });
            if let Some(k) = found {
                let (p, _) = candidates.remove(k);
                let (Ok(f), Ok(m)) = (File::open(&p), fs::metadata(&p)) else {
                    continue;
                };
                tracing::info!(
                    "source {}: {} is the copy of generation {} of {}, read before the stop but not all acknowledged; reading it under that file's ids",
                    self.out.cx.name,
                    p.display(),
                    n.gen,
                    live.display()
                );
                self.track_copy(key, &p, f, (m.len(), mtime_of(&m)), n.gen);
                continue;
            }
            if n.gen == newest && n.head.starts(&live_first) {
                live_is_newest = true;
                continue;
            }
            let mut c2 = self.out.cp.files[&key].clone();
            (c2.gen, c2.offset, c2.fp) = (n.gen, 0, n.fp);
            (c2.head, c2.next, c2.between) = (Some(n.head), None, Vec::new());
            match self.out.gunzip(live, n.head, 0, Some(since)) {
                Ok(Some(g)) => self.track_recovered(g, &c2),
                // Not decompressed yet (a full state directory): waited for, retried.
                Err(e) => self.gz_wait(GzWait::Rest { c: c2, gone: false }, &e),
                Ok(None) => tracing::warn!(
                    "source {}: generation {} of {} (read before the stop, not all acknowledged) was not found in its copies; whatever of it was not acknowledged is lost",
                    self.out.cx.name,
                    n.gen,
                    live.display()
                ),
            }
        }
        // The first read round finds the checkpointed generation truncated and moves the
        // file past these generations.
        self.files[i].gen_skip = newest - gen - u32::from(live_is_newest);
        live_is_newest
    }

    /// Follows the rest of a vanished file, decompressed from its `.gz` rotation, under
    /// the vanished file's ids from its checkpointed offset.
    pub(super) fn track_recovered(&mut self, g: files::Gunzipped, c: &FileCp) {
        tracing::info!(
            "source {}: {} (checkpointed at byte {}) was compressed before it was read to its end; reading the rest, up to byte {}, from {}",
            self.out.cx.name,
            c.path.display(),
            c.offset,
            g.len,
            g.gz.display()
        );
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && c.offset > 0 {
            read_header(&g.file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let t = Tracked::recovered(key, g.gz, g.file, (g.len, g.mtime), order, decoder);
        self.files.push(Tracked {
            fp: c.fp,
            head: c.head.unwrap_or_default(),
            gen: c.gen,
            offset: c.offset,
            ..t
        });
    }

    /// The rest of truncated file `i`'s generation, in `rest`, read as a recovered rest
    /// (under `i`'s ids, from its read position; see [`Tail::track_recovered`]) among the
    /// other rests, by the time it was last written.
    pub(super) fn track_rest(&mut self, i: usize, rest: Rest) {
        let t = &self.files[i];
        tracing::info!(
            "source {}: {} was truncated, or replaced by a new file in its inode number, at byte {}; reading the rest, up to byte {}, from {} among the other rotations recovered at the start",
            self.out.cx.name,
            t.path.display(),
            t.read_pos(),
            rest.size,
            rest.path.display()
        );
        let mut decoder = Decoder::new(self.out.cfg.format.clone());
        if decoder.needs_header() && t.read_pos() > 0 {
            read_header(&rest.file, &mut decoder, self.out.cfg.max_record_bytes);
        }
        let order = self.discovered.fetch_add(1, Ordering::Relaxed);
        let r = Tracked::recovered(
            t.key,
            rest.path,
            rest.file,
            (rest.size, rest.mtime),
            order,
            decoder,
        );
        self.files.push(Tracked {
            fp: t.fp,
            head: t.head,
            gen: t.gen,
            offset: t.read_pos(),
            ..r
        });
    }

    /// Compressed rotations written while the agent was stopped (modified since the
    /// checkpoint was last written) that start with no head the checkpoint or the files
    /// followed know: content written to a followed file after the stop and rotated and
    /// compressed before the start (copies `copytruncate` made of a file that was still
    /// empty at the stop, or a copy compressed by the very next rotation). Read whole,
    /// oldest first, after the rests recovered from the checkpoint's files and before
    /// every other file, under the `.gz` file's own ids.
    pub(super) fn track_compressed_while_stopped(&mut self, since: SystemTime) {
        // Known: the heads of the files followed, and of the checkpoint's files but those
        // whose rest was just recovered from a `.gz`: every other `.gz` that starts as
        // such a vanished file did is a later generation (the same CSV header), unread.
        let recovered: Vec<FileKey> = self
            .files
            .iter()
            .filter(|t| t.recovered)
            .map(|t| t.key)
            .collect();
        let mut heads: Vec<Head> = self
            .out
            .cp
            .files
            .iter()
            .filter(|(k, _)| !recovered.contains(k))
            .filter_map(|(_, c)| c.head)
            .collect();
        heads.extend(self.files.iter().filter(|t| !t.recovered).map(|t| t.head));
        heads.retain(|h| h.len > 0);
        // Only rotations of the checkpointed files' own names (see `files::gz_family`).
        let mut families: Vec<PathBuf> = Vec::new();
        for c in self.out.cp.files.values() {
            if !files::is_compressed(&c.path) && !families.contains(&c.path) {
                families.push(c.path.clone());
            }
        }
        let mut gzs: Vec<(SystemTime, PathBuf, FileKey)> = Vec::new();
        for fam in &families {
            match files::gz_family(fam) {
                Ok(found) => {
                    for (m, p, k) in found {
                        if m >= since && !gzs.iter().any(|(_, q, _)| *q == p) {
                            gzs.push((m, p, k));
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    "source {}: cannot list the compressed rotations next to {}: {e}",
                    self.out.cx.name,
                    fam.display()
                ),
            }
        }
        gzs.sort();
        for (mtime, path, gz_key) in gzs {
            // Only the `.gz` files already being read are skipped (not those that merely
            // share an inode number with a vanished file the checkpoint knows).
            if self.out.gz_taken.contains(&(path.clone(), gz_key)) {
                continue;
            }
            let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
            match self.out.gunzip_whole(&path, mtime, gz_key, unknown) {
                Ok(Whole::Read(g)) => self.track_compressed(g, gz_key),
                Ok(Whole::Known) => {}
                Ok(Whole::Gone) => self.gz_gone(&path),
                Err(e) => {
                    let heads = heads.clone();
                    let key = gz_key;
                    self.gz_wait(
                        GzWait::Whole {
                            path,
                            mtime,
                            key,
                            heads,
                        },
                        &e,
                    );
                }
            }
        }
    }

    fn track_compressed(&mut self, g: files::Gunzipped, gz_key: FileKey) {
        tracing::info!(
            "source {}: {} was written, rotated and compressed while stopped; reading it whole",
            self.out.cx.name,
            g.gz.display()
        );
        let path = g.gz.clone();
        self.track_gz_whole(g, path, gz_key);
    }

    /// A `.gz` to be read whole (written while stopped, or a copy made while the source
    /// waited), deleted (logrotate's `rotate` count) before it could be read.
    pub(super) fn gz_gone(&self, path: &Path) {
        tracing::warn!(
            "source {}: {} (a compressed rotation to be read whole) was deleted before it could be read; its records were not read",
            self.out.cx.name,
            path.display()
        );
    }

    /// A compressed rotation found at the start that could not be decompressed (`why`):
    /// it waits, and no file is read until it is (see [`Tail::retry_gz`]).
    pub(super) fn gz_wait(&mut self, w: GzWait, why: &str) {
        let what = match &w {
            GzWait::Rest { c, .. } => format!(
                "the rest of {} (checkpointed at byte {}, generation {})",
                c.path.display(),
                c.offset,
                c.gen
            ),
            GzWait::Whole { path, .. } => format!("{} (written while stopped)", path.display()),
            GzWait::Later { c, gz, .. } => format!(
                "{} (generation {} of {}, copied while the source waited)",
                gz.display(),
                c.gen,
                c.path.display()
            ),
        };
        tracing::error!(
            "source {}: {why}; {what} waits to be decompressed: no other file of this source is read until it is (they are newer), and it is tried again until it can be (and at the next start). Free space in {}",
            self.out.cx.name,
            self.out.cx.state_dir.join("checkpoints").display()
        );
        self.gz_waiting.push(w);
        self.gz_retry = Some(Retry::first());
        // The next start looks for it from the same time (see `Checkpoint::keep_since`).
        self.out.cp.keep_since = true;
    }

    /// A file of the checkpoint gone while stopped, with no `.gz` holding its rest.
    pub(super) fn vanished(&mut self, c: &FileCp) {
        tracing::warn!(
            "source {}: {} (checkpointed at byte {}) is gone; whatever it held after that offset was not read",
            self.out.cx.name,
            c.path.display(),
            c.offset
        );
        let key = FileKey {
            dev: c.dev,
            ino: c.ino,
        };
        if let Some(e) = self.out.cp.files.get_mut(&key) {
            e.retired_ms = Some(now_ms());
            self.out.cp.dirty = true;
        }
    }

    /// Tries the decompressions that wait (see [`Tail::gz_wait`]) when they are due.
    /// `true` when none waits any more: files may be read.
    pub(super) fn retry_gz(&mut self) -> bool {
        if self.gz_waiting.is_empty() {
            return true;
        }
        if !self.gz_retry.is_none_or(|r| r.due()) {
            return false;
        }
        let since = self.out.cp.written;
        let mut recovered = Vec::new();
        let mut later = Vec::new();
        let mut failed = None;
        for w in std::mem::take(&mut self.gz_waiting) {
            if failed.is_some() {
                self.gz_waiting.push(w);
                continue;
            }
            match w {
                GzWait::Rest { c, gone } => {
                    let head = c.head.unwrap_or_default();
                    match self.out.gunzip(&c.path, head, c.offset, since) {
                        Ok(Some(g)) => recovered.push((g, c)),
                        Ok(None) if gone => self.vanished(&c),
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            self.gz_waiting.push(GzWait::Rest { c, gone });
                        }
                    }
                }
                GzWait::Later {
                    c,
                    gz,
                    gz_key,
                    mtime,
                } => {
                    let head = c.head.unwrap_or_default();
                    match self
                        .out
                        .gunzip_whole(&gz, mtime, gz_key, |f| head.starts(f))
                    {
                        Ok(Whole::Read(g)) => {
                            self.out.gz_taken.push((g.gz.clone(), g.gz_key));
                            later.push((g, c));
                        }
                        Ok(Whole::Known) | Ok(Whole::Gone) => self.gz_gone(&gz),
                        Err(e) => {
                            failed = Some(e);
                            let w = GzWait::Later {
                                c,
                                gz,
                                gz_key,
                                mtime,
                            };
                            self.gz_waiting.push(w);
                        }
                    }
                }
                GzWait::Whole {
                    path,
                    mtime,
                    key,
                    heads,
                } => {
                    let unknown = |first: &[u8]| !heads.iter().any(|h| h.starts(first));
                    match self.out.gunzip_whole(&path, mtime, key, unknown) {
                        Ok(Whole::Read(g)) => self.track_compressed(g, key),
                        Ok(Whole::Known) => {}
                        Ok(Whole::Gone) => self.gz_gone(&path),
                        Err(e) => {
                            failed = Some(e);
                            let w = GzWait::Whole {
                                path,
                                mtime,
                                key,
                                heads,
                            };
                            self.gz_waiting.push(w);
                        }
                    }
                }
            }
        }
        recovered.sort_by_key(|(g, c)| (g.mtime, c.gen));
        for (g, c) in recovered {
            self.track_recovered(g, &c);
        }
        for (g, c) in later {
            let key = FileKey {
                dev: c.dev,
                ino: c.ino,
            };
            self.track_copy(key, &g.gz, g.file, (g.len, g.mtime), c.gen);
        }
        if let Some(e) = failed {
            tracing::debug!(
                "source {}: {} compressed rotation(s) still wait to be decompressed: {e}",
                self.out.cx.name,
                self.gz_waiting.len()
            );
            self.gz_retry = self.gz_retry.map(Retry::again);
            return false;
        }
        tracing::info!(
            "source {}: the compressed rotations that waited for room are decompressed; reading goes on",
            self.out.cx.name
        );
        self.gz_retry = None;
        self.out.cp.keep_since = false;
        self.out.cp.dirty = true;
        true
    }

    /// Follows the content of a `.gz` file, decompressed into `g`, read whole under the
    /// `.gz` file's own ids (its inode number, or that number with bit 62 flipped when a
    /// file still known has it).
    pub(super) fn track_gz_whole(&mut self, g: files::Gunzipped, path: PathBuf, gz_key: FileKey) {
        self.out.gz_taken.push((path.clone(), gz_key));
        // Its inode number may be a vanished file's still in the checkpoint (or
        // followed for its rest): then it is kept apart under a number no file has.
        let taken = |k: &FileKey| {
            self.files.iter().any(|t| t.key == *k)
                || self.out.cp.files.get(k).is_some_and(|c| c.path != path)
        };
        let key = if taken(&gz_key) {
            gz_key.apart(0)
        } else {
            gz_key
        };
        let fp = files::fingerprint(&g.file).ok().flatten();
        let head = Head::default()
            .recheck(&g.file, g.len)
            .ok()
            .flatten()
            .unwrap_or_default();
        let gen = self.out.cp.gen_for(&key);
        let c = FileCp::followed(key, path, fp, head, gen, 0, None);
        self.out.cp.insert(key, c.clone());
        self.track_recovered(g, &c);
    }
}

impl Out {
    /// The whole content of `.gz` file `key` (modified at `mtime`, last seen at `path`)
    /// when its first bytes are `want`ed, decompressed into the state directory. The file
    /// is found by its inode and time wherever logrotate renamed it since (it may have
    /// waited for room while logrotate ran: seed 21159). A failure (a full disk) is shown
    /// in the status; the caller logs it, and tries again later.
    pub(super) fn gunzip_whole(
        &mut self,
        path: &Path,
        mtime: SystemTime,
        key: FileKey,
        want: impl Fn(&[u8]) -> bool,
    ) -> Result<Whole, String> {
        let tmp = self.cx.state_dir.join("checkpoints");
        let beat = self.cx.beat.clone();
        // A rename between the look-up and the open is looked up again.
        for _ in 0..3 {
            let now = match files::find_gz_again(path, key, mtime) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(Whole::Gone),
                Err(e) => {
                    return self
                        .gz_result(Err(e), || {
                            format!("cannot list the rotations next to {}", path.display())
                        })
                        .map(|_| Whole::Known)
                }
            };
            let r = files::gunzip(&now, mtime, key, &want, 0, &tmp, &|| beat.beat());
            let renamed = matches!(r, Ok(None))
                && !std::fs::metadata(&now).is_ok_and(|m| FileKey::of(&m) == key);
            if renamed {
                continue;
            }
            let g = self.gz_result(r, || {
                format!("cannot decompress {} into {}", now.display(), tmp.display())
            })?;
            return Ok(g.map_or(Whole::Known, Whole::Read));
        }
        Err(format!(
            "{} keeps being renamed while it is opened",
            path.display()
        ))
    }

    /// A decompression's result, its error (with `what` was done) kept for the status;
    /// the status's error is cleared once one succeeds.
    fn gz_result(
        &mut self,
        r: std::io::Result<Option<files::Gunzipped>>,
        what: impl FnOnce() -> String,
    ) -> Result<Option<files::Gunzipped>, String> {
        const GZ: &str = "cannot decompress";
        match r {
            Ok(g) => {
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(GZ))
                {
                    self.last_error = None;
                }
                Ok(g)
            }
            Err(e) => {
                let msg = format!("{GZ}: {}: {e}", what());
                self.last_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// [`files::find_gz`]: the rest of a file past `from`, from a compressed rotation
    /// next to `path` that starts with `head`. A failure (a full disk) is shown in the
    /// status; the caller logs it, and tries again later.
    pub(super) fn gunzip(
        &mut self,
        path: &Path,
        head: Head,
        from: u64,
        since: Option<SystemTime>,
    ) -> Result<Option<files::Gunzipped>, String> {
        let tmp = self.cx.state_dir.join("checkpoints");
        let beat = self.cx.beat.clone();
        let r = files::find_gz(path, head, from, &tmp, &self.gz_taken, since, &|| {
            beat.beat()
        });
        let g = self.gz_result(r, || {
            format!(
                "the rest of {} (after byte {from}) from its compressed rotation, into {}",
                path.display(),
                tmp.display()
            )
        })?;
        if let Some(g) = &g {
            self.gz_taken.push((g.gz.clone(), g.gz_key));
        }
        Ok(g)
    }
}

/// A file's modification time (the epoch when the file system keeps none).
fn mtime_of(m: &fs::Metadata) -> SystemTime {
    m.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}
