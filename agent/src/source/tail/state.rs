//! The tail source's checkpoint: for each file, how far its events are acknowledged.
//!
//! Stored as JSON in `state_dir/checkpoints/<source>.json` (written atomically, see
//! [`crate::pipeline::checkpoint`]). Each entry is keyed by device and inode and holds
//! the file's fingerprint and head, its generation (raised each time the file is truncated or its
//! inode is reused by a new file, so the new bytes get new message ids) and the offset
//! up to which every record's event is acknowledged. An entry whose file is gone is kept
//! as `retired` for a day, so a new file that reuses the inode starts a new generation.
//!
//! Versions: 2 since file heads were added; 1, written by lockstep 0.1.0, is read as it
//! is (its entries have no head: each file is recognised by its first line once, and
//! the head recorded from then on), logged as migrated, and written again as 2.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{FileKey, Head};
use crate::admin::events::StateMigrated;
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
    /// When the checkpoint found at start was last written (about when the agent stopped).
    pub written: Option<std::time::SystemTime>,
    /// Fingerprint, head and birth time of a file's newer generations (after
    /// truncations), each taken over by its entry when the checkpoint reaches that
    /// generation. Every generation is kept, not only the newest: a file truncated twice
    /// before the acks of the older generation came reaches the middle one too.
    next: HashMap<FileKey, BTreeMap<u32, Ident>>,
    pub dirty: bool,
}

impl Checkpoint {
    pub fn load(state_dir: &Path, source: &str) -> Result<Self, String> {
        let path = state_dir.join("checkpoints").join(format!("{source}.json"));
        let data = checkpoint::read(&path)
            .map_err(|e| format!("cannot read the checkpoint {}: {e}", path.display()))?;
        let mut files = BTreeMap::new();
        let existed = data.is_some();
        let mut dirty = false;
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
        let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path,
            files,
            existed,
            written,
            next: HashMap::new(),
            dirty,
        })
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
            self.next
                .entry(key)
                .or_default()
                .insert(gen, (fp, head, born_ns));
        }
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
        let d = OnDisk {
            version: VERSION,
            files: self.files.values().cloned().collect(),
        };
        let data = serde_json::to_vec_pretty(&d).map_err(std::io::Error::other)?;
        checkpoint::write_atomic(&self.path, &data)?;
        self.dirty = false;
        self.existed = true;
        Ok(())
    }
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
        let on_disk = |version, files| OnDisk { version, files };
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
