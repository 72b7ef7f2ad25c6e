//! The filesystem operations the spool and the checkpoints write through, behind a trait
//! so tests can make the disk fill up or fail (see [`faulty`]). Reads go straight to
//! `std::fs`: a spool read error is retried once, then what cannot be read is skipped and
//! recorded (see `Spool::read`); it cannot damage anything else.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Every write the spool and the checkpoints make.
pub trait Disk: Send + Sync + Debug {
    /// Appends all of `buf` at the end of `f`. On error, part of `buf` may be written.
    fn append(&self, f: &mut File, buf: &[u8]) -> io::Result<()>;
    /// Makes what was written to `f` durable.
    fn sync(&self, f: &File) -> io::Result<()>;
    /// Cuts `f` to `len` bytes.
    fn truncate(&self, f: &File, len: u64) -> io::Result<()>;
    /// Makes the directory's entries (created, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Replaces `path` with `data`, atomically and durably.
    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes a new file (not durable until synced).
    fn create(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn append(&self, f: &mut File, buf: &[u8]) -> io::Result<()> {
        f.write_all(buf)
    }

    fn sync(&self, f: &File) -> io::Result<()> {
        f.sync_data()
    }

    fn truncate(&self, f: &File, len: u64) -> io::Result<()> {
        f.set_len(len)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = tmp_path(path);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        crate::crash::point("checkpoint");
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    }

    fn create(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Where [`Disk::replace`] writes before its rename: `<name>.tmp` beside `path` (a
/// leftover of a crash is overwritten by the next write, and never read).
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A disk that runs out of space or fails, for tests.
pub mod faulty {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    /// Writes through to the real disk until `space` bytes have been written, then
    /// writes what still fits and fails with ENOSPC (as a full disk does); with
    /// `fail_sync` set, every fsync fails with EIO; the next `fail_syncs` fsyncs fail
    /// with EIO and later ones succeed (a device that hiccups once).
    #[derive(Debug)]
    pub struct FaultyDisk {
        pub space: AtomicU64,
        pub fail_sync: AtomicBool,
        pub fail_syncs: AtomicU64,
    }

    impl FaultyDisk {
        pub fn new(space: u64) -> Self {
            Self {
                space: AtomicU64::new(space),
                fail_sync: AtomicBool::new(false),
                fail_syncs: AtomicU64::new(0),
            }
        }

        /// Counts down `fail_syncs`: true when this fsync is to fail.
        fn hiccup(&self) -> bool {
            self.fail_syncs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }

        fn take(&self, want: usize) -> usize {
            let mut have = self.space.load(Ordering::SeqCst);
            loop {
                let n = have.min(want as u64);
                match self.space.compare_exchange(
                    have,
                    have - n,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return n as usize,
                    Err(h) => have = h,
                }
            }
        }

        fn full() -> io::Error {
            io::Error::from_raw_os_error(28) // ENOSPC
        }

        fn eio(&self) -> io::Result<()> {
            if self.fail_sync.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(5)) // EIO
            } else {
                Ok(())
            }
        }
    }

    impl Disk for FaultyDisk {
        fn append(&self, f: &mut File, buf: &[u8]) -> io::Result<()> {
            let n = self.take(buf.len());
            f.write_all(&buf[..n])?;
            if n < buf.len() {
                return Err(Self::full());
            }
            Ok(())
        }

        fn sync(&self, f: &File) -> io::Result<()> {
            self.eio()?;
            if self.hiccup() {
                return Err(io::Error::from_raw_os_error(5));
            }
            RealDisk.sync(f)
        }

        fn truncate(&self, f: &File, len: u64) -> io::Result<()> {
            RealDisk.truncate(f, len)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.eio()?;
            RealDisk.sync_dir(dir)
        }

        fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.eio()?;
            if self.take(data.len()) < data.len() {
                return Err(Self::full());
            }
            RealDisk.replace(path, data)
        }

        fn create(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            if self.take(data.len()) < data.len() {
                return Err(Self::full());
            }
            RealDisk.create(path, data)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            RealDisk.remove(path)
        }
    }
}
