//! How many files the tail sources hold open: one budget shared by every tail source and
//! its watcher, under the process's limit on open files (`RLIMIT_NOFILE`).
//!
//! At start the soft limit is raised to the hard one ([`raise_limit`]; the systemd units
//! set `LimitNOFILE=65536`, which does it before the agent starts). The budget is that
//! limit less a reserve for everything else the agent opens (spool segments, checkpoint
//! writes, sockets, ODBC drivers, the copies and `.gz` rotations a tail source reads for
//! a moment): a quarter of it, at least 32 and at most 1,024.
//!
//! A tail source holds a file open while it may still change under a name the globs
//! match, and closes one that is read to its end and unchanged for `close_idle` (it is
//! reopened by path, with an identity check, when it changes). When the budget is spent,
//! a source that needs a file first closes its own files that are read to their end and
//! still matched, least recently changed first; a file it still cannot open waits for
//! the next look, and one log line says how many wait. While any source waits, every
//! source closes its idle files after a second instead of `close_idle`. The watcher's
//! open of a file renamed out of the globs (a rotation, perhaps soon deleted or
//! compressed) may go past the budget into a quarter of the reserve (the agent itself
//! holds some 18 descriptors with no file followed: under `ulimit -n 64` half of the
//! reserve left too few for a checkpoint write or a directory listing).

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An open file counted in a [`Budget`]; closing it (dropping) gives its slot back.
#[derive(Debug)]
pub struct Held {
    file: File,
    budget: &'static Budget,
}

impl Deref for Held {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a file was not opened.
#[derive(Debug)]
pub enum OpenError {
    /// The budget is spent (or the process ran out of descriptors): close a file first.
    NoSlot,
    /// Any other error: the file is missing, unreadable, …
    Io(io::Error),
}

/// Open files allowed, and open now.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    /// How far past `limit` a file renamed out of the globs may go.
    urgent: usize,
    open: AtomicUsize,
    /// When a file last found no slot (ms since `EPOCH`), or `i64::MIN`.
    starved_at: AtomicI64,
}

/// When the process started, for [`Budget::starved_at`].
static EPOCH: OnceLock<Instant> = OnceLock::new();
static GLOBAL: OnceLock<Budget> = OnceLock::new();

/// How long after a file found no slot every source closes idle files early.
const STARVED_FOR: Duration = Duration::from_secs(10);

impl Budget {
    /// A budget for a process that may open `nofile` files.
    pub fn for_limit(nofile: u64) -> Budget {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX).max(64);
        let reserve = (nofile / 4).clamp(32, 1024);
        Budget {
            limit: nofile - reserve,
            urgent: reserve / 4,
            open: AtomicUsize::new(0),
            starved_at: AtomicI64::new(i64::MIN),
        }
    }

    /// The process's budget, from its soft limit on open files when first asked.
    pub fn global() -> &'static Budget {
        GLOBAL.get_or_init(|| Budget::for_limit(limits().map_or(1024, |(soft, _)| soft)))
    }

    /// How many files the tail sources may hold open.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many they hold now.
    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Opens `path` for reading if a slot is free (`urgent`: past the budget into a
    /// quarter of the reserve).
    pub fn open(&'static self, path: &Path, urgent: bool) -> Result<Held, OpenError> {
        let max = if urgent {
            self.limit + self.urgent
        } else {
            self.limit
        };
        let took = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        if took.is_err() {
            self.starve();
            return Err(OpenError::NoSlot);
        }
        match File::open(path) {
            Ok(file) => Ok(Held { file, budget: self }),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                // ENFILE, EMFILE: the rest of the process took more than its reserve.
                if matches!(e.raw_os_error(), Some(libc::ENFILE | libc::EMFILE)) {
                    self.starve();
                    Err(OpenError::NoSlot)
                } else {
                    Err(OpenError::Io(e))
                }
            }
        }
    }

    /// Counts a file opened elsewhere (a copy read for a moment, a decompressed rotation).
    pub fn adopt(&'static self, file: File) -> Held {
        self.open.fetch_add(1, Ordering::Relaxed);
        Held { file, budget: self }
    }

    fn starve(&self) {
        self.starved_at.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a file found no slot lately: then idle files are closed early.
    pub fn starved_lately(&self) -> bool {
        now_ms().saturating_sub(self.starved_at.load(Ordering::Relaxed))
            < STARVED_FOR.as_millis() as i64
    }
}

fn now_ms() -> i64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// The process's soft and hard limits on open files.
#[allow(unsafe_code)]
pub fn limits() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit the call only writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft limit on open files to the hard one (as systemd's `LimitNOFILE` does
/// for the unit). Returns the soft and hard limits now in force; a refusal (a seccomp
/// filter) leaves the limits as they were.
#[allow(unsafe_code)]
pub fn raise_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = limits()?;
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `r` is a valid rlimit the call only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            let e = io::Error::last_os_error();
            tracing::debug!("cannot raise the limit on open files from {soft} to {hard}: {e}");
        }
    }
    limits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let b: &'static Budget = Box::leak(Box::new(Budget::for_limit(64)));
        // 64 files: 32 kept for the rest of the process, 8 of them for urgent opens.
        assert_eq!(b.limit(), 32);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "x\n").unwrap();
        let mut held: Vec<Held> = (0..32).map(|_| b.open(&p, false).unwrap()).collect();
        assert_eq!(b.open_now(), 32);
        assert!(!b.starved_lately());
        assert!(matches!(b.open(&p, false), Err(OpenError::NoSlot)));
        assert!(b.starved_lately());
        for _ in 0..8 {
            held.push(b.open(&p, true).unwrap());
        }
        assert!(matches!(b.open(&p, true), Err(OpenError::NoSlot)));
        held.truncate(31);
        assert_eq!(b.open_now(), 31);
        held.push(b.open(&p, false).unwrap());
        assert!(matches!(
            b.open(&dir.path().join("missing"), true),
            Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        assert_eq!(b.open_now(), 32, "a failed open takes no slot");
        drop(held);
        assert_eq!(b.open_now(), 0);
        assert_eq!(Budget::for_limit(256).limit(), 192);
        assert_eq!(Budget::for_limit(1 << 20).limit(), (1 << 20) - 1024);
    }
}
