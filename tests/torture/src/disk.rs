//! A small tmpfs for the agent's `state_dir` (spool, checkpoints, quarantine), filled
//! with a filler file as a fault (the disk full) and emptied again as its healing.
//! Mounting needs root: without it the scenario runs on the ordinary disk and says so.
//! Unmounted when dropped, on every path (after a copy of what it held to
//! `state-tmpfs/`, for the report of a failure).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::procs::Res;

pub struct Tmpfs {
    at: PathBuf,
    keep: PathBuf,
}

pub const FILLER: &str = "torture-filler";

pub fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    uid == 0
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `at` (created), or None when not root.
    pub fn mount(at: &Path, mib: u64) -> Res<Option<Tmpfs>> {
        if !is_root() {
            return Ok(None);
        }
        std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                at.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let keep = at.with_file_name(format!(
            "{}-tmpfs",
            at.file_name()
                .map_or("state".into(), |n| n.to_string_lossy())
        ));
        Ok(Some(Tmpfs {
            at: at.to_owned(),
            keep,
        }))
    }

    /// Writes the filler until the file system is full; how many bytes it took.
    pub fn fill(&self) -> Res<u64> {
        let path = self.at.join(FILLER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut written = 0u64;
        for size in [1 << 20, 4096, 1] {
            let block = vec![0x55u8; size];
            loop {
                match f.write(&block) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n as u64,
                }
            }
        }
        Ok(written)
    }

    /// Removes the filler.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(self.at.join(FILLER));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.heal();
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&self.at)
            .arg(&self.keep)
            .output();
        let ok = Command::new("umount")
            .arg(&self.at)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            // Still busy (an agent that has not exited yet): detached now, freed when
            // the last file is closed.
            let _ = Command::new("umount").arg("-l").arg(&self.at).output();
        }
    }
}
