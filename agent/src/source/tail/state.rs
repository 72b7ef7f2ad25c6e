//! The tail source's checkpoint: for each file, how far its events are acknowledged.
//!
//! Stored as JSON in `state_dir/checkpoints/<source>.json` (written atomically, see
//! [`crate::pipeline::checkpoint`]). Each entry is keyed by device and inode and holds
//! the file's fingerprint and head, its generation (raised each time the file is truncated or its
//! inode is reused by a new file, so the new bytes get new message ids) and the offset
//! up to which every record's event is acknowledged. An entry whose file is gone is kept
//! as `retired` for a day, so a new file that reuses the inode starts a new generation.
//!
//! A full disk does not keep it from being written (a restart after a kill would not
//! know the files followed since, and would read their rotations under other ids: seed
//! 145): it is written padded with spaces to a size with room to grow, and a spare
//! (`<source>.json.spare`, blocks already allocated) is kept next to it; when the
//! ordinary write fails with ENOSPC, the checkpoint is written into the spare in place
//! and exchanged with it in one rename (`RENAME_EXCHANGE`), the old one becoming the
//! spare.
//!
//! Versions: 2 since file heads were added; 1, written by lockstep 0.1.0, is read as it
//! is (its entries have no head: each file is recognised by its first line once, and
//! the head recorded from then on), logged as migrated, and written again as 2.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{FileKey, Head};
use crate::admin::telemetry::StateMigrated;
use crate::disk::{Disk, RealDisk};
use crate::pipeline::checkpoint;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileCp {
    pub dev: u64,
    pub ino: u64,
    /// The last path the file was seen at.
    pub path: PathBuf,
    pub fp: Option<u64>,
    /// The file's first bytes (see [`Head`]). Checkpoints written before it existed have
    /// none: their files are recognised by `fp` alone once, at the first start after the
    /// upgrade, and the head is recorded from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    pub gen: u32,
    /// Every record before this offset is acknowledged (or quarantined).
    pub offset: u64,
    /// When the file was found gone and fully acknowledged (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<i64>,
    /// The file's birth time (ns since the epoch), where its file system keeps one: a new
    /// file that took the inode number of one deleted while the agent was stopped is told
    /// from it even when its first bytes are the same. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_ns: Option<u64>,
    /// The previous generation's head and how far it was acknowledged when the entry
    /// moved on (after a truncation): its copy (`copytruncate`), already read, is told
    /// from copies of later generations made while the agent was stopped, even when the
    /// checkpoint was written within the same tick of the file system clock as the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<(Head, u64)>,
    /// A newer generation already being read (a truncation, or a new file in the inode
    /// number of a file dropped whose last events were not acknowledged yet), which the
    /// entry reaches once those are: a stop before that finds its content (rotated and
    /// compressed meanwhile) by this head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextGen>,
    /// The generations between `gen` and `next` already read (the file was truncated
    /// again, or more than once, before the acknowledgements of `gen` came), oldest
    /// first: a stop before the checkpoint reaches them finds their copies by these
    /// heads and reads them under the file's ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub between: Vec<NextGen>,
}

/// See [`FileCp::next`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextGen {
    pub gen: u32,
    pub fp: Option<u64>,
    pub head: Head,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_ns: Option<u64>,
}

impl FileCp {
    /// The entry of a file followed from now on at `path`, acknowledged up to `offset`.
    pub fn followed(
        key: FileKey,
        path: PathBuf,
        fp: Option<u64>,
        head: Head,
        gen: u32,
        offset: u64,
        born_ns: Option<u64>,
    ) -> FileCp {
        FileCp {
            dev: key.dev,
            ino: key.ino,
            path,
            fp,
            head: Some(head),
            gen,
            offset,
            retired_ms: None,
            born_ns,
            prev: None,
            next: None,
            between: Vec::new(),
        }
    }

    /// The generations after `gen` already being read at the stop with their heads
    /// (`between`, then `next`), oldest first.
    pub fn later(&self) -> Vec<NextGen> {
        let mut later: Vec<NextGen> = self
            .between
            .iter()
            .copied()
            .chain(self.next)
            .filter(|n| n.gen > self.gen && n.head.len > 0)
            .collect();
        later.sort_by_key(|n| n.gen);
        later.dedup_by_key(|n| n.gen);
        later
    }
}

/// A birth time as stored in the checkpoint: nanoseconds since the epoch.
pub fn born_ns(born: Option<std::time::SystemTime>) -> Option<u64> {
    born?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos() as u64)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<FileCp>,
    /// When the agent stopped before the start that wrote this checkpoint, while
    /// compressed rotations found then still wait to be decompressed (a full state
    /// directory): the next start looks for rotations made since this time (ms since
    /// the epoch), not since this file was written. Ignored by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<u64>,
}

/// A generation's fingerprint, head and birth time (see [`Checkpoint::next`]).
type Ident = (Option<u64>, Head, Option<u64>);

/// The version written. 1: lockstep 0.1.0, whose entries have no `head`.
const VERSION: u32 = 2;

/// How long a retired entry is kept.
const RETIRED_KEEP_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub files: BTreeMap<FileKey, FileCp>,
    /// Whether a checkpoint existed when the source started.
    pub existed: bool,
    /// When the checkpoint found at start was last written (about when the agent stopped;
    /// or its `since_ms`, see [`OnDisk`]).
    pub written: Option<std::time::SystemTime>,
    /// Fingerprint, head and birth time of a file's newer generations (after
    /// truncations), each taken over by its entry when the checkpoint reaches that
    /// generation. Every generation is kept, not only the newest: a file truncated twice
    /// before the acks of the older generation came reaches the middle one too.
    next: HashMap<FileKey, BTreeMap<u32, Ident>>,
    /// Write `written` as the time rotations are looked for from at the next start:
    /// some found at this start wait to be decompressed.
    pub keep_since: bool,
    pub dirty: bool,
    /// A file's entry was added, or what identifies a generation (fingerprint, head,
    /// birth time) changed, since the last write. The source writes the checkpoint
    /// before it hands on events read past that: a crash must never leave events
    /// durable (spooled, stored) whose content the checkpoint cannot recognise, or the
    /// next start reads that content again under other ids (its copy after a
    /// `copytruncate`), or new content under the old ids (dropped as duplicates).
    pub identity_dirty: bool,
    /// What it is written through (the real disk; a failing one in tests).
    disk: std::sync::Arc<dyn Disk>,
}

impl Checkpoint {
    pub fn load(state_dir: &Path, source: &str) -> Result<Self, String> {
        let path = state_dir.join("checkpoints").join(format!("{source}.json"));
        let data = checkpoint::read(&path)
            .map_err(|e| format!("cannot read the checkpoint {}: {e}", path.display()))?;
        let mut files = BTreeMap::new();
        let existed = data.is_some();
        let mut dirty = false;
        let mut since = None;
        if let Some(data) = data {
            let d: OnDisk = serde_json::from_slice(&data).map_err(|e| {
                format!(
                    "the checkpoint {} is not valid ({e}); move it aside to start source `{source}` afresh \
                     (its files are then read again from the beginning)",
                    path.display()
                )
            })?;
            // An older version is written again in this one's form.
            dirty = d.version < VERSION;
            since = d
                .since_ms
                .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
            if let Some(detail) = migration_note(&d) {
                StateMigrated {
                    what: "tail checkpoint",
                    path: &path,
                    detail: &detail,
                }
                .emit();
            }
            for f in d.files {
                files.insert(
                    FileKey {
                        dev: f.dev,
                        ino: f.ino,
                    },
                    f,
                );
            }
        }
        let written = since.or_else(|| std::fs::metadata(&path).and_then(|m| m.modified()).ok());
        Ok(Self {
            path,
            files,
            existed,
            written,
            keep_since: false,
            next: HashMap::new(),
            dirty,
            identity_dirty: false,
            disk: std::sync::Arc::new(RealDisk),
        })
    }

    /// Writes through `disk` from now on (tests: a disk that fills up or fails).
    #[cfg(test)]
    pub fn with_disk(mut self, disk: std::sync::Arc<dyn Disk>) -> Self {
        self.disk = disk;
        self
    }

    /// Moves `key` to (`gen`, `offset`) if that is further than it is.
    pub fn advance(&mut self, key: FileKey, gen: u32, offset: u64) {
        if let Some(e) = self.files.get_mut(&key) {
            if (gen, offset) > (e.gen, e.offset) {
                if gen != e.gen {
                    e.prev = e.head.filter(|h| h.len > 0).map(|h| (h, e.offset));
                    let known = self.next.get_mut(&key).and_then(|n| {
                        let this = n.remove(&gen);
                        n.retain(|&g, _| g > gen);
                        this
                    });
                    if self.next.get(&key).is_some_and(|n| n.is_empty()) {
                        self.next.remove(&key);
                    }
                    (e.fp, e.head, e.born_ns) = match known {
                        Some((fp, head, born)) => (fp, Some(head), born),
                        None => (None, None, None),
                    };
                }
                e.gen = gen;
                e.offset = offset;
                self.dirty = true;
            }
        }
    }

    /// The generation for a file now at `key`: the next one when its entry was retired
    /// (the inode number was freed and is used again), else the entry's (0 when none).
    pub fn gen_for(&self, key: &FileKey) -> u32 {
        self.files.get(key).map_or(0, |c| {
            if c.retired_ms.is_some() {
                c.gen + 1
            } else {
                c.gen
            }
        })
    }

    /// Records a file's fingerprint, head and birth time for generation `gen`: in its
    /// entry when the checkpoint is at that generation, else (a newer one, not yet
    /// reached) for later.
    pub fn set_identity(
        &mut self,
        key: FileKey,
        gen: u32,
        fp: Option<u64>,
        head: Head,
        born_ns: Option<u64>,
    ) {
        let Some(e) = self.files.get_mut(&key) else {
            return;
        };
        if e.gen == gen {
            // A reader of this generation that knows no birth time (a copy or rest read
            // under the file's ids) leaves the file's own.
            let born_ns = born_ns.or(e.born_ns);
            if e.fp != fp || e.head != Some(head) || e.born_ns != born_ns {
                e.fp = fp;
                e.head = Some(head);
                e.born_ns = born_ns;
                self.dirty = true;
                self.identity_dirty = true;
            }
            // What is known of newer generations (being read by another reader of the
            // same file) stays for when the checkpoint reaches them.
            if let Some(n) = self.next.get_mut(&key) {
                n.retain(|&g, _| g > gen);
                if n.is_empty() {
                    self.next.remove(&key);
                }
            }
        } else if gen > e.gen {
            let id = (fp, head, born_ns);
            if self.next.entry(key).or_default().insert(gen, id) != Some(id) {
                self.dirty = true;
                self.identity_dirty = true;
            }
        }
    }

    /// Adds (or replaces) a file's entry.
    pub fn insert(&mut self, key: FileKey, entry: FileCp) {
        self.files.insert(key, entry);
        self.dirty = true;
        self.identity_dirty = true;
    }

    pub fn write(&mut self, now_ms: i64) -> std::io::Result<()> {
        self.files
            .retain(|_, f| f.retired_ms.is_none_or(|t| now_ms - t < RETIRED_KEEP_MS));
        for (k, e) in self.files.iter_mut() {
            let mut later: Vec<NextGen> = self
                .next
                .get(k)
                .into_iter()
                .flatten()
                .filter(|(&gen, n)| gen > e.gen && n.1.len > 0)
                .map(|(&gen, &(fp, head, born_ns))| NextGen {
                    gen,
                    fp,
                    head,
                    born_ns,
                })
                .collect();
            e.next = later.pop();
            e.between = later;
        }
        let since_ms = self
            .written
            .filter(|_| self.keep_since)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        let d = OnDisk {
            version: VERSION,
            files: self.files.values().cloned().collect(),
            since_ms,
        };
        let mut data = serde_json::to_vec_pretty(&d).map_err(std::io::Error::other)?;
        data.push(b'\n');
        let len = data.len();
        // Padded with spaces (JSON ignores them) to a size with room to grow: written on a
        // full disk, the checkpoint goes into the blocks of the one before it.
        data.resize(slot(len), b' ');
        let r = self.disk.replace(&self.path, &data);
        match r {
            Ok(()) => keep_spare(&self.path, data.len()),
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                write_into_spare(&self.path, &data[..len]).map_err(|_| e)?
            }
            Err(e) => return Err(e),
        }
        self.dirty = false;
        self.identity_dirty = false;
        self.existed = true;
        Ok(())
    }
}

/// The checkpoint's spare: a file of blocks already allocated, which a full disk does not
/// keep from being written (see [`write_into_spare`]).
fn spare_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".spare");
    path.with_file_name(name)
}

/// The length a checkpoint of `len` bytes is written with: half as long again and 4 KiB
/// more, in 16 KiB steps (see [`write_into_spare`]).
fn slot(len: usize) -> usize {
    (len + len / 2 + 4096).div_ceil(16 << 10) * (16 << 10)
}

/// After a write of `len` bytes: keeps a spare at least that long (64 KiB at least when
/// made), made while there is room. Best effort: without one, a full disk fails the
/// write as before.
fn keep_spare(path: &Path, len: usize) {
    let spare = spare_path(path);
    let want = (2 * len).max(64 << 10) as u64;
    if std::fs::metadata(&spare).is_ok_and(|m| m.len() >= len as u64) {
        return;
    }
    // Made aside and renamed over the old spare: a failure leaves the old one as it was.
    let mut name = spare.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let new = spare.with_file_name(name);
    let r = (|| {
        let f = std::fs::File::create(&new)?;
        std::io::Write::write_all(&mut &f, &vec![b' '; want as usize])?;
        f.sync_all()?;
        std::fs::rename(&new, &spare)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&new);
    }
}

/// The checkpoint written on a full disk (torture seed 145: a `state_dir` filled while
/// files were rotated and compressed, then kill -9; files created since the last write
/// were unknown to the checkpoint, and their `.gz` read whole under other ids, their
/// events sent twice): into the spare, in place (its blocks are allocated: no new one is
/// needed), padded with spaces to its length (JSON ignores them), fsynced, and exchanged
/// with the checkpoint in one rename (`RENAME_EXCHANGE`): the old checkpoint is the spare
/// from then on, a crash leaves one or the other whole.
fn write_into_spare(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let spare = spare_path(path);
    // What the failed write left (blocks of its own).
    let mut tmp = path.file_name().unwrap_or_default().to_os_string();
    tmp.push(".tmp");
    let _ = std::fs::remove_file(path.with_file_name(tmp));
    let mut f = std::fs::OpenOptions::new().write(true).open(&spare)?;
    let len = f.metadata()?.len();
    if (data.len() as u64) > len {
        return Err(std::io::ErrorKind::StorageFull.into());
    }
    let mut padded = data.to_vec();
    padded.resize(len as usize, b' ');
    f.write_all(&padded)?;
    f.sync_all()?;
    exchange(&spare, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Swaps two files' names atomically (`renameat2` with `RENAME_EXCHANGE`, Linux 3.15),
/// by the system call itself: glibc wraps it only from 2.28, and the packages are built
/// against 2.17.
#[allow(unsafe_code)]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a NUL byte in the path"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both are NUL-terminated paths that outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the migration of a checkpoint written by an older lockstep does, when it does
/// something: only entries without a head are read differently.
fn migration_note(d: &OnDisk) -> Option<String> {
    let headless = d.files.iter().filter(|f| f.head.is_none()).count();
    (d.version < VERSION && headless > 0).then(|| {
        format!(
            "{headless} of its {} file(s) have no head of their first bytes (version {}): they \
             resume at their offsets, recognised by device, inode and first line; heads are \
             recorded from the next read, and the checkpoint is written again as version \
             {VERSION}",
            d.files.len(),
            d.version
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_is_said_only_when_an_entry_lacks_a_head() {
        let entry = |ino, head| FileCp {
            dev: 1,
            ino,
            path: "/x/a.log".into(),
            fp: Some(5),
            head,
            gen: 0,
            offset: 100,
            retired_ms: None,
            born_ns: None,
            prev: None,
            next: None,
            between: Vec::new(),
        };
        let with_head = Some(Head { len: 10, hash: 7 });
        let on_disk = |version, files| OnDisk {
            version,
            files,
            since_ms: None,
        };
        assert_eq!(migration_note(&on_disk(1, vec![])), None);
        assert_eq!(
            migration_note(&on_disk(1, vec![entry(2, with_head), entry(3, with_head)])),
            None,
            "every entry has its head: nothing to say"
        );
        assert_eq!(
            migration_note(&on_disk(VERSION, vec![entry(2, None)])),
            None
        );
        let note = migration_note(&on_disk(1, vec![entry(2, with_head), entry(3, None)])).unwrap();
        assert!(
            note.starts_with("1 of its 2 file(s) have no head"),
            "{note}"
        );
    }

    #[test]
    fn a_checkpoint_written_into_its_spare_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        cp.files
            .insert(key, at_gen_0(Head { len: 10, hash: 7 }, None));
        cp.write(0).unwrap();
        let spare = spare_path(&cp.path);
        let spare_len = std::fs::metadata(&spare).unwrap().len();
        assert!(spare_len >= std::fs::metadata(&cp.path).unwrap().len());
        // As on a full disk: the next checkpoint goes into the spare's blocks.
        cp.files.get_mut(&key).unwrap().offset = 250;
        let data = serde_json::to_vec(&OnDisk {
            version: VERSION,
            files: cp.files.values().cloned().collect(),
            since_ms: None,
        })
        .unwrap();
        let old_len = std::fs::metadata(&cp.path).unwrap().len();
        write_into_spare(&cp.path, &data).unwrap();
        assert_eq!(std::fs::metadata(&cp.path).unwrap().len(), spare_len);
        assert_eq!(
            std::fs::metadata(&spare).unwrap().len(),
            old_len,
            "exchanged"
        );
        let back = Checkpoint::load(dir.path(), "s").unwrap();
        assert_eq!(back.files[&key].offset, 250);
    }

    /// The checkpoint written through a disk that fails: an fsync error (EIO) leaves the
    /// one before it in place and the checkpoint dirty (written again later); a full disk
    /// (ENOSPC) puts it into the spare the last good write left, whole.
    #[test]
    fn a_failing_disk_keeps_the_last_checkpoint_and_a_full_one_uses_the_spare() {
        use crate::disk::faulty::FaultyDisk;
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        let at = |offset| {
            FileCp::followed(
                key,
                "/x/a.log".into(),
                None,
                Head::default(),
                0,
                offset,
                None,
            )
        };
        let disk = std::sync::Arc::new(FaultyDisk::new(u64::MAX));
        let mut cp = Checkpoint::load(dir.path(), "s")
            .unwrap()
            .with_disk(disk.clone());
        cp.insert(key, at(100));
        cp.write(0).unwrap();
        let offset = || Checkpoint::load(dir.path(), "s").unwrap().files[&key].offset;
        assert_eq!(offset(), 100);

        disk.fail_sync.store(true, Ordering::SeqCst);
        cp.advance(key, 0, 200);
        cp.dirty = true;
        let e = cp.write(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        assert!(
            cp.dirty,
            "a failed write leaves the checkpoint to be written again"
        );
        assert_eq!(offset(), 100);

        disk.fail_sync.store(false, Ordering::SeqCst);
        disk.space.store(0, Ordering::SeqCst);
        cp.write(0).unwrap();
        assert!(!cp.dirty);
        assert_eq!(offset(), 200, "written into the spare on a full disk");
    }

    /// While rotations found at a start wait to be decompressed, the checkpoint keeps the
    /// time of the stop, so that a restart meanwhile looks for rotations from it again.
    #[test]
    fn the_time_of_the_stop_is_kept_while_rotations_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        cp.write(0).unwrap();
        let stop = Checkpoint::load(dir.path(), "s").unwrap().written.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        cp.keep_since = true;
        cp.write(0).unwrap();
        let kept = Checkpoint::load(dir.path(), "s").unwrap().written.unwrap();
        let ms =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(kept), ms(stop));
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        cp.write(0).unwrap();
        let moved = Checkpoint::load(dir.path(), "s").unwrap().written.unwrap();
        assert!(moved > kept, "not kept once nothing waits");
    }

    /// The entry of `/x/a.log` (device 1, inode 2) at generation 0, byte 100.
    fn at_gen_0(head: Head, born_ns: Option<u64>) -> FileCp {
        FileCp {
            dev: 1,
            ino: 2,
            path: "/x/a.log".into(),
            fp: Some(5),
            head: Some(head),
            gen: 0,
            offset: 100,
            retired_ms: None,
            born_ns,
            prev: None,
            next: None,
            between: Vec::new(),
        }
    }

    #[test]
    fn a_new_generation_takes_its_identity_only_when_the_checkpoint_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        let old = Head { len: 10, hash: 7 };
        cp.files.insert(key, at_gen_0(old, None));
        // Truncated: generation 1 is read while generation 0's events still wait for acks.
        let new = Head { len: 3, hash: 9 };
        cp.set_identity(key, 1, Some(6), new, None);
        assert_eq!(
            cp.files[&key].head,
            Some(old),
            "not before its events are acked"
        );
        assert_eq!(cp.files[&key].fp, Some(5));
        cp.advance(key, 0, 120);
        assert_eq!((cp.files[&key].gen, cp.files[&key].offset), (0, 120));
        cp.advance(key, 1, 0);
        let e = &cp.files[&key];
        assert_eq!((e.gen, e.offset, e.fp, e.head), (1, 0, Some(6), Some(new)));
        // Within one generation the identity is written at once.
        let grown = Head { len: 40, hash: 11 };
        cp.set_identity(key, 1, Some(6), grown, None);
        assert_eq!(cp.files[&key].head, Some(grown));
    }

    /// The inode number taken again and again while acknowledgements are due: every
    /// newer generation's identity is kept (written as `next` and `later`), and each is
    /// taken over when the checkpoint reaches it.
    #[test]
    fn every_newer_generation_is_kept_until_the_checkpoint_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        cp.files
            .insert(key, at_gen_0(Head { len: 10, hash: 7 }, None));
        let g1 = Head { len: 3, hash: 9 };
        let g2 = Head { len: 4, hash: 11 };
        cp.set_identity(key, 1, Some(6), g1, None);
        cp.set_identity(key, 2, Some(8), g2, None);
        cp.write(0).unwrap();
        let back = Checkpoint::load(dir.path(), "s").unwrap();
        let heads: Vec<(u32, Head)> = back.files[&key]
            .later()
            .iter()
            .map(|n| (n.gen, n.head))
            .collect();
        assert_eq!(heads, [(1, g1), (2, g2)]);
        cp.advance(key, 1, 0);
        assert_eq!(cp.files[&key].head, Some(g1));
        cp.advance(key, 2, 0);
        assert_eq!(cp.files[&key].head, Some(g2));
    }

    /// Two readers of one file at once: a copy read under the file's ids at the
    /// checkpoint's generation, and the file itself at the next. The copy's rounds keep
    /// neither the newer generation's identity from being kept nor the file's birth
    /// time (a copy knows none of its own) from staying.
    #[test]
    fn a_reader_of_the_current_generation_keeps_what_is_known_of_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        let old = Head { len: 10, hash: 7 };
        cp.files.insert(key, at_gen_0(old, Some(42)));
        let new = Head { len: 3, hash: 9 };
        // The live file, at generation 1.
        cp.set_identity(key, 1, Some(6), new, Some(42));
        // The copy of generation 0, read under the same key, with no birth time.
        cp.set_identity(key, 0, Some(5), old, None);
        assert_eq!(
            cp.files[&key].born_ns,
            Some(42),
            "the file's birth time stays"
        );
        cp.advance(key, 1, 0);
        let e = &cp.files[&key];
        assert_eq!(
            (e.gen, e.fp, e.head, e.born_ns),
            (1, Some(6), Some(new), Some(42)),
            "generation 1's identity was kept for it"
        );
    }

    /// Seeds 10214 and 10242: the file was truncated twice before the acks of the
    /// checkpoint's generation came. The middle generation keeps its identity when the
    /// checkpoint reaches it (its copy is found by its head after a stop), and every
    /// generation already read is written with its head.
    #[test]
    fn every_newer_generation_keeps_its_identity_until_the_checkpoint_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoint::load(dir.path(), "s").unwrap();
        let key = FileKey { dev: 1, ino: 2 };
        cp.files
            .insert(key, at_gen_0(Head { len: 10, hash: 7 }, None));
        let (h1, h2, h3) = (
            Head { len: 4, hash: 1 },
            Head { len: 5, hash: 2 },
            Head { len: 6, hash: 3 },
        );
        cp.set_identity(key, 1, Some(11), h1, None);
        cp.set_identity(key, 2, Some(12), h2, None);
        cp.set_identity(key, 3, Some(13), h3, None);
        cp.write(0).unwrap();
        let on_disk: OnDisk = serde_json::from_slice(&std::fs::read(&cp.path).unwrap()).unwrap();
        let e = &on_disk.files[0];
        assert_eq!(e.next.map(|n| (n.gen, n.head)), Some((3, h3)));
        assert_eq!(
            e.between
                .iter()
                .map(|n| (n.gen, n.head))
                .collect::<Vec<_>>(),
            vec![(1, h1), (2, h2)]
        );
        assert_eq!(
            e.later().iter().map(|n| n.gen).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        cp.advance(key, 1, 30);
        let e = &cp.files[&key];
        assert_eq!((e.gen, e.fp, e.head), (1, Some(11), Some(h1)));
        cp.advance(key, 2, 0);
        assert_eq!(cp.files[&key].head, Some(h2));
        cp.write(0).unwrap();
        let on_disk: OnDisk = serde_json::from_slice(&std::fs::read(&cp.path).unwrap()).unwrap();
        let e = &on_disk.files[0];
        assert_eq!(e.next.map(|n| n.gen), Some(3));
        assert!(e.between.is_empty());
    }
}
