//! Finding and recognising tailed files.
//!
//! A file is known by its device and inode (stable across renames), its fingerprint —
//! the xxh3 hash of its first line (or first 4 KiB when that line is longer), part of
//! every message id — and its [`Head`]: the hash of its first bytes, up to 4 KiB. The
//! head tells a truncated-and-rewritten or recreated file from the one that was there
//! before even when their first lines are the same (a CSV header). A file whose first
//! line is not yet complete has no fingerprint; it holds no complete record yet either.
//!
//! Its unit tests are in `files/tests.rs`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How many leading bytes the fingerprint covers at most.
pub const FINGERPRINT_MAX: usize = 4096;

/// How many leading bytes the head check covers at most.
pub const HEAD_MAX: usize = 4096;

/// A file's first bytes, as a length and a hash: `len` grows with the file up to
/// [`HEAD_MAX`]. Unlike the fingerprint (the first line, which is the same in every CSV
/// file with the same header), it tells apart files whose first line is the same; it is
/// checked again whenever the file changed, which finds a truncation even when the file
/// has already grown past the read position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub len: u32,
    pub hash: u64,
}

impl Head {
    /// Checks that `f` still starts with this head's bytes and extends it to what `f`
    /// holds now (up to [`HEAD_MAX`]). `None`: the first bytes changed (or are gone).
    pub fn recheck(self, f: &File, size: u64) -> io::Result<Option<Head>> {
        let want = (size.min(HEAD_MAX as u64)) as usize;
        let have = self.len as usize;
        if want < have {
            return Ok(None);
        }
        let mut buf = [0u8; HEAD_MAX];
        let n = read_prefix(f, &mut buf[..want])?;
        if n < have || (have > 0 && xxhash_rust::xxh3::xxh3_64(&buf[..have]) != self.hash) {
            return Ok(None);
        }
        Ok(Some(Head {
            len: n as u32,
            hash: xxhash_rust::xxh3::xxh3_64(&buf[..n]),
        }))
    }
}

impl Head {
    /// The head of content that starts with `first` (its first bytes, up to
    /// [`HEAD_MAX`] of them).
    pub fn of(first: &[u8]) -> Head {
        let n = first.len().min(HEAD_MAX);
        Head {
            len: n as u32,
            hash: xxhash_rust::xxh3::xxh3_64(&first[..n]),
        }
    }

    /// Whether `buf` (a file's first bytes) starts with this head's bytes.
    pub fn starts(self, buf: &[u8]) -> bool {
        let n = self.len as usize;
        buf.len() >= n && xxhash_rust::xxh3::xxh3_64(&buf[..n]) == self.hash
    }
}

/// The first bytes of an open file, up to [`HEAD_MAX`].
pub fn first_bytes(f: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_MAX];
    let n = read_prefix(f, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads the first bytes of `f` into `buf` (fewer at its end); returns how many.
fn read_prefix(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read_at(&mut buf[n..], n as u64)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Device and inode of a file.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// Bits set in the inode number of ids given to a file read apart from the checkpoint
/// entry that has its real number (see [`FileKey::apart`]): bit 62, else 61, else 60 when
/// those are taken. No file system gives numbers that large.
const APART: [u64; 3] = [1 << 62, 1 << 61, 1 << 60];
const APART_ANY: u64 = APART[0] | APART[1] | APART[2];

impl FileKey {
    pub fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// Ids of their own for a file whose inode number another file still holds in the
    /// checkpoint (a `.gz` or a rotated file in the number of a vanished one): read
    /// under them, it is never taken for that file's generation. `level` 0 to 2: the
    /// next when the ones before are taken too.
    pub fn apart(self, level: usize) -> Self {
        Self {
            dev: self.dev,
            ino: self.on_disk().ino | APART[level.min(APART.len() - 1)],
        }
    }

    /// The levels [`FileKey::apart`] takes.
    pub const APART_LEVELS: usize = APART.len();

    /// Whether these are ids given by [`FileKey::apart`].
    pub fn is_apart(self) -> bool {
        self.ino & APART_ANY != 0
    }

    /// The device and inode number on disk of a file followed under these ids.
    pub fn on_disk(self) -> Self {
        Self {
            dev: self.dev,
            ino: self.ino & !APART_ANY,
        }
    }
}

/// The fingerprint of an open file, or `None` while its first line is incomplete.
pub fn fingerprint(f: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; FINGERPRINT_MAX];
    let n = read_prefix(f, &mut buf)?;
    Ok(fingerprint_of(&buf[..n]))
}

/// The fingerprint of content that starts with `first` (see [`fingerprint`]).
pub fn fingerprint_of(first: &[u8]) -> Option<u64> {
    let first = &first[..first.len().min(FINGERPRINT_MAX)];
    match first.iter().position(|&b| b == b'\n') {
        Some(i) => Some(xxhash_rust::xxh3::xxh3_64(&first[..=i])),
        None if first.len() == FINGERPRINT_MAX => Some(xxhash_rust::xxh3::xxh3_64(first)),
        None => None,
    }
}

/// The first decompressed bytes (up to [`HEAD_MAX`]) of `.gz` file `gz_key` at `path`,
/// read into memory: they need no room on disk. `Ok(None)`: the path no longer holds
/// that file, or it cannot be read as gzip.
pub fn gz_first_bytes(path: &Path, gz_key: FileKey) -> io::Result<Option<Vec<u8>>> {
    Ok(open_gz(path, gz_key).map(|(_, first)| first))
}

type GzReader = flate2::read::MultiGzDecoder<io::BufReader<File>>;

/// `.gz` file `gz_key` at `path`, open and decompressing, with its first decompressed
/// bytes (up to [`HEAD_MAX`]) already read. `None`: the path no longer holds that file,
/// or it cannot be read as gzip.
fn open_gz(path: &Path, gz_key: FileKey) -> Option<(GzReader, Vec<u8>)> {
    let f = File::open(path).ok()?;
    if !f.metadata().is_ok_and(|m| FileKey::of(&m) == gz_key) {
        return None;
    }
    let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(f));
    let mut first = vec![0u8; HEAD_MAX];
    let n = read_full(&mut gz, &mut first).ok()?;
    first.truncate(n);
    Some((gz, first))
}

/// The offset just past the last newline of a file: where `start_at = "end"` begins, so
/// that a partial last line is read once it is complete.
pub fn end_of_last_line(f: &File, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Names of compressed files (`logrotate`'s `compress`): never read as records.
const COMPRESSED: [&str; 8] = [".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".Z", ".zip"];

/// Whether `path` names a compressed file, which a tail source skips even when its
/// globs match it (`app.log*` matches `app.log.2.gz`).
pub fn is_compressed(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy());
    name.is_some_and(|n| COMPRESSED.iter().any(|ext| n.ends_with(ext)))
}

/// A source's globs, to test single paths (file events) as `glob::glob` would match them.
#[derive(Debug)]
pub struct Globs(Vec<glob::Pattern>);

impl Globs {
    pub fn new(patterns: &[String]) -> Self {
        Self(
            patterns
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect(),
        )
    }

    /// Whether a glob matches `path` and it is not a compressed file.
    pub fn matches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        !is_compressed(path) && self.0.iter().any(|g| g.matches_path_with(path, opts))
    }
}

/// A regular file matched by a source's globs.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub key: FileKey,
}

/// What a look at the globs found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The regular files matching the globs, in path order, without duplicates.
    pub found: Vec<Found>,
    /// The directories that could not be listed, and why: out of file descriptors
    /// (`EMFILE`, `ENFILE`: listing a directory takes one), permissions, I/O errors. What
    /// they hold is unknown, not gone.
    pub unlisted: Vec<(PathBuf, io::Error)>,
}

impl Scan {
    /// Whether `path` lies in a directory that could not be listed: whether it is still
    /// there is unknown.
    pub fn unknown(&self, path: &Path) -> bool {
        self.unlisted.iter().any(|(d, _)| path.starts_with(d))
    }
}

/// Lists the regular files matching `patterns`, and the directories that could not be
/// listed.
pub fn scan(patterns: &[String]) -> Scan {
    let mut out = Scan::default();
    for p in patterns {
        let Ok(paths) = glob::glob(p) else { continue };
        for r in paths {
            let path = match r {
                Ok(path) => path,
                Err(e) => {
                    let dir = e.path().to_owned();
                    out.unlisted.push((dir, e.into()));
                    continue;
                }
            };
            if is_compressed(&path) {
                continue;
            }
            if let Ok(m) = fs::metadata(&path) {
                if m.is_file() && !out.found.iter().any(|f| f.path == path) {
                    out.found.push(Found {
                        key: FileKey::of(&m),
                        path,
                    });
                }
            }
        }
    }
    out.found.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Looks for a file with `key` in the directory of `was` (a file rotated to a name the
/// globs do not match while the agent was stopped). An error: the directory could not
/// be listed (out of file descriptors, …), so whether the file is there is unknown.
pub fn find_in_dir(was: &Path, key: FileKey) -> io::Result<Option<PathBuf>> {
    let Some(dir) = was.parent() else {
        return Ok(None);
    };
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Ok(m) = e.metadata() {
            if m.is_file() && FileKey::of(&m) == key {
                return Ok(Some(e.path()));
            }
        }
    }
    Ok(None)
}

/// Whether the file name `n` looks like a rotation of `name` (`live` plus a suffix, or
/// its stem and extension around one; see [`rotated_since`]).
pub fn looks_rotated(name: &str, n: &str) -> bool {
    // What a rotation adds: a separator, then a number or a date (`.1`, `-20261129`,
    // `_2026-11-29`): `app.log.bak`, `apport.log`, `orders-eu.csv` are other files.
    let added = |s: &str| {
        let b = s.as_bytes();
        b.len() >= 2 && matches!(b[0], b'.' | b'-' | b'_') && b[1].is_ascii_digit()
    };
    if n.len() <= name.len() {
        return false;
    }
    if n.strip_prefix(name).is_some_and(added) {
        return true;
    }
    // The date between the stem and the extension: `app-20261129.log`.
    let Some(dot) = name.rfind('.').filter(|&i| i > 0) else {
        return false;
    };
    let (stem, ext) = name.split_at(dot);
    n.strip_prefix(stem)
        .and_then(|r| r.strip_suffix(ext))
        .is_some_and(added)
}

/// The name `name` was rotated from when it is a rotated name itself (`app.log.1`,
/// `app.log-20261129`, `app.log-20261129-120000` → `app.log`), else `name`.
fn rotation_base(name: &str) -> &str {
    let mut base = name;
    while let Some(i) = base.rfind(['.', '-', '_']) {
        let tail = &base[i + 1..];
        if i == 0 || tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        base = &base[..i];
    }
    base
}

/// Files in the directory of `live` that look like its rotations (`live` plus a suffix,
/// as `app.log.1` or `app.log-20261129`, or its stem and extension around one, as
/// `app-20261129.log`), are not compressed and were modified at or after `since`: files
/// created and rotated away while the agent was stopped. Oldest first: by modification
/// time, then (file timestamps are coarse) by birth time where the file system keeps
/// one, then by rotation (`app.log.2` before `app.log.1`, `app.log-20261129` before
/// `app.log-20261130`).
pub fn rotated_since(live: &Path, since: std::time::SystemTime) -> Vec<(PathBuf, FileKey)> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let n = e.file_name().to_string_lossy().into_owned();
        if !looks_rotated(&name, &n) || is_compressed(&path) {
            continue;
        }
        let Ok(m) = fs::metadata(&path) else { continue };
        let mtime = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        if m.is_file() && mtime >= since {
            let older = (
                mtime,
                m.created().ok(),
                rotation_age(&name, &n),
                path.clone(),
            );
            out.push((older, path, FileKey::of(&m)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, p, k)| (p, k)).collect()
}

/// Sorts the rotations of `name` oldest first when their times tie: a number alone
/// (`app.log.3`, logrotate's numbered rotations) is older the higher it is; a date is
/// older the lower it is (and sorts by name).
fn rotation_age(name: &str, n: &str) -> std::cmp::Reverse<u64> {
    let num = n
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('.'))
        .filter(|r| (1..=6).contains(&r.len()))
        .and_then(|r| r.parse::<u64>().ok());
    std::cmp::Reverse(num.unwrap_or(0))
}

/// The copy `copytruncate` made of a file before truncating it: in the same directory,
/// another file that starts with the same `head` and holds more than `read` bytes (the
/// newest such). Compressed files are not looked at.
pub fn find_copy(of: &Path, key: FileKey, head: Head, read: u64) -> Option<(PathBuf, File, u64)> {
    let dir = of.parent()?;
    let mut best: Option<(std::time::SystemTime, PathBuf, File, u64)> = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if is_compressed(&path) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() || FileKey::of(&m) == key || m.len() <= read {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        if !matches!(head.recheck(&f, m.len()), Ok(Some(_))) {
            continue;
        }
        let mtime = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|b| mtime > b.0) {
            best = Some((mtime, path, f, m.len()));
        }
    }
    best.map(|(_, p, f, n)| (p, f, n))
}

/// A rotation of a file recovered from its gzip-compressed copy: the decompressed bytes
/// in an unnamed file, at their own offsets (the first [`HEAD_MAX`] bytes and everything
/// from `from` on; the part between is a hole).
#[derive(Debug)]
pub struct Gunzipped {
    pub gz: PathBuf,
    /// The `.gz` file's own device and inode.
    pub gz_key: FileKey,
    pub file: File,
    /// The decompressed length.
    pub len: u64,
    pub mtime: std::time::SystemTime,
}

/// Looks next to `live` for its `.gz` rotations (see [`gz_family`]: `app.log.2.gz`,
/// `app.log-20261129.gz`, …)
/// whose decompressed content starts with `head` and is longer than `from`: the rest of a
/// file compressed before it was read to its end (`compress` while the agent was stopped
/// or behind). The newest such is decompressed into an unnamed file made in `tmp_dir`.
/// `Ok(None)`: there is none.
pub fn find_gz(
    live: &Path,
    head: Head,
    from: u64,
    tmp_dir: &Path,
    taken: &[(PathBuf, FileKey)],
    since: Option<std::time::SystemTime>,
    beat: &dyn Fn(),
) -> io::Result<Option<Gunzipped>> {
    if head.len == 0 {
        return Ok(None);
    }
    let found: Vec<_> = gz_family(live)?
        .into_iter()
        .filter(|(_, p, k)| !taken.iter().any(|(tp, tk)| tp == p && tk == k))
        .collect();
    // At a start (`since`, when the checkpoint was written): the file followed at the
    // stop was rotated after the stop, before every later generation of it (which may
    // start with the same bytes: a CSV header), so the oldest written since the stop
    // comes first, then the older ones, newest first. Else the newest copy that starts
    // with the head holds the most of it.
    let order: Vec<_> = match since {
        Some(since) => {
            let (after, before): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|(m, _, _)| *m >= since);
            after.into_iter().chain(before.into_iter().rev()).collect()
        }
        None => found.into_iter().rev().collect(),
    };
    for (mtime, path, key) in order {
        let want = |first: &[u8]| head.starts(first);
        if let Some(g) = gunzip(&path, mtime, key, want, from, tmp_dir, beat)? {
            return Ok(Some(g));
        }
    }
    Ok(None)
}

/// Forgets the `.gz` files taken (path and inode) whose path no longer holds that inode:
/// deleted (logrotate's `rotate` count), or renamed (`app.log.1.gz` to `app.log.2.gz`),
/// after which they are never matched again (a `.gz` is taken by path and inode). Kept,
/// the list would grow with every compressed rotation taken, for as long as the agent
/// runs.
pub fn prune_taken(taken: &mut Vec<(PathBuf, FileKey)>) {
    taken.retain(|(p, k)| fs::metadata(p).is_ok_and(|m| FileKey::of(&m) == *k));
}

/// The `.gz` files next to `live` whose name is a rotation of `live`'s own name, or of
/// the name `live` was rotated from when it is a rotated name already (`app.log.1`,
/// whose next rotation is `app.log.2.gz`), oldest first. Never a mere prefix:
/// `apport.log.1.gz` is not a rotation of `app.log`, nor `orders-eu.csv.1.gz` of
/// `orders.csv`.
pub fn gz_family(live: &Path) -> io::Result<Vec<(std::time::SystemTime, PathBuf, FileKey)>> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return Ok(Vec::new());
    };
    let name = name.to_string_lossy().into_owned();
    // A `.gz` read whole before a stop is looked for again by its own name.
    let base = rotation_base(name.strip_suffix(".gz").unwrap_or(&name));
    let mut found = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(plain) = n.strip_suffix(".gz") else {
            continue;
        };
        if !looks_rotated(base, plain) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() {
            continue;
        }
        let mtime = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        found.push((mtime, e.path(), FileKey::of(&m)));
    }
    found.sort();
    Ok(found)
}

/// Where the `.gz` file `key`, last seen at `path` with modification time `mtime`, is
/// now: still at `path`, or renamed among the rotations of the same file (logrotate
/// renames every `.gz` up one number at each rotation; a rename keeps the inode). It is
/// found by its inode alone: gzip gives the `.gz` the rotated file's time when it
/// finishes, so one listed while being written has another time later (the time only
/// chooses between two names of one inode). `Ok(None)`: gone (deleted by logrotate's
/// `rotate` count).
pub fn find_gz_again(
    path: &Path,
    key: FileKey,
    mtime: std::time::SystemTime,
) -> io::Result<Option<PathBuf>> {
    if fs::metadata(path).is_ok_and(|m| FileKey::of(&m) == key) {
        return Ok(Some(path.to_owned()));
    }
    let same: Vec<_> = gz_family(path)?
        .into_iter()
        .filter(|(_, _, k)| *k == key)
        .collect();
    Ok(same
        .iter()
        .find(|(m, _, _)| *m == mtime)
        .or(same.first())
        .map(|(_, p, _)| p.clone()))
}

/// Decompresses `path` when it is still the file `gz_key` (not renamed away since it
/// was listed), its first bytes (up to [`HEAD_MAX`]) pass `want` and its content is
/// longer than `from`: into an unnamed file made in `tmp_dir`, the first bytes and
/// everything from `from` on, at their own offsets. `Ok(None)`: another file, not
/// wanted, not longer, or not a readable gzip file.
pub fn gunzip(
    path: &Path,
    mtime: std::time::SystemTime,
    gz_key: FileKey,
    want: impl Fn(&[u8]) -> bool,
    from: u64,
    tmp_dir: &Path,
    beat: &dyn Fn(),
) -> io::Result<Option<Gunzipped>> {
    let Some((mut gz, first)) = open_gz(path, gz_key) else {
        return Ok(None);
    };
    let n = first.len();
    if !want(&first) {
        return Ok(None);
    }
    let out = unnamed_file(tmp_dir)?;
    out.write_all_at(&first, 0)?;
    let mut len = n as u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut checked = u64::MAX;
    loop {
        // Never fills the state directory's file system (a gzip bomb, or just too big):
        // stops with an error while GUNZIP_RESERVE bytes are still free.
        if checked > GUNZIP_CHECK_EVERY {
            beat();
            let (free, total) = space(tmp_dir)?;
            let reserve = gunzip_reserve(total);
            if free < reserve {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "stopped decompressing {} at byte {len}: {} has {free} bytes free, and \
                         {reserve} are kept free",
                        path.display(),
                        tmp_dir.display()
                    ),
                ));
            }
            checked = 0;
        }
        let k = match io::Read::read(&mut gz, &mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A damaged or cut-off archive: what came before is still good.
                tracing::warn!("{}: cannot decompress past byte {len}: {e}", path.display());
                break;
            }
        };
        let end = len + k as u64;
        checked = checked.saturating_add(k as u64);
        if end > from {
            let skip = from.saturating_sub(len) as usize;
            out.write_all_at(&buf[skip..k], len + skip as u64)?;
        }
        len = end;
    }
    if len <= from {
        return Ok(None);
    }
    out.set_len(len)?;
    Ok(Some(Gunzipped {
        gz: path.to_owned(),
        gz_key,
        file: out,
        len,
        mtime,
    }))
}

/// What decompressing a `.gz` leaves free on the state directory's file system at least
/// (an eighth of a smaller file system: see [`gunzip_reserve`]).
pub const GUNZIP_RESERVE: u64 = 64 << 20;

/// The free space decompressing leaves on a file system of `total` bytes: 64 MiB, or an
/// eighth of a file system smaller than 512 MiB (a state directory on a small tmpfs could
/// never keep 64 MiB free, and its rests would never be decompressed).
pub fn gunzip_reserve(total: u64) -> u64 {
    GUNZIP_RESERVE.min(total / 8)
}
/// How many decompressed bytes between two looks at the free space (and beats).
const GUNZIP_CHECK_EVERY: u64 = 8 << 20;

/// Bytes an unprivileged process may still write on the file system of `dir`, and its
/// size.
#[allow(unsafe_code)]
fn space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{}: a NUL byte in the path", dir.display())))?;
    // SAFETY: `statvfs` is plain old data, for which all zeroes is a valid value; `c` is
    // a NUL-terminated path that outlives the call, and `st` a statvfs it only writes.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{}: statvfs: {e}", dir.display()),
        ));
    }
    let block = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(block),
        (st.f_blocks as u64).saturating_mul(block),
    ))
}

/// Fills `buf` from `r` as far as it goes; returns how many bytes.
fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A file in `dir` with no name (made, then unlinked at once): nothing is left behind
/// whatever happens to the agent.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!(".gunzip-{}-{stamp}", std::process::id()));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(f)
}

/// The directories to watch for a glob: its longest leading part without wildcards.
pub fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let mut root = PathBuf::from("/");
    let mut recursive = false;
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.contains(['*', '?', '[']) {
            recursive = !last;
            break;
        }
        if last {
            break;
        }
        root.push(part);
    }
    (root, recursive)
}

#[cfg(test)]
mod tests;
