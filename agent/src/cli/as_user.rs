//! `sudo lockstep check --user lockstep`: the checks as the service runs them.
//!
//! The packaged unit runs the agent as `lockstep`, which cannot read
//! /etc/lockstep/credentials (root, 0700): systemd reads that directory as root and hands
//! each file to the agent in a private `$CREDENTIALS_DIRECTORY` (`LoadCredential=`). From
//! a shell there is no systemd to do it, so this does the same: as root it copies the
//! directory's files into a fresh directory only the user can read (as
//! `lockstep_<file>`, the names `LoadCredential=lockstep:…` gives them), then runs
//! `lockstep check` again as that user (its uid and gid, no supplementary groups) with
//! `$CREDENTIALS_DIRECTORY` pointing there, and removes the directory when the check
//! ends. Everything else — the config, absolute secret paths, change files, the state
//! directory — the check reads as the user, as the service would.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{CREDENTIALS_DIR, CREDENTIAL_ID};

/// A user's ids, from the system's user database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// The effective user id of this process (from /proc/self/status).
pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The name of user `uid` (from `getent passwd`), when it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let out = Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split(':')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// Looks `user` up with `getent passwd` (a name or a number).
pub fn lookup(user: &str) -> Result<Ids, String> {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .map_err(|e| format!("cannot run `getent passwd {user}` to look the user up: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.trim_end().split(':').collect();
    if !out.status.success() || fields.len() < 4 {
        return Err(format!(
            "no user `{user}` on this machine (`getent passwd {user}` found none); the package \
             creates `lockstep`"
        ));
    }
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("`getent passwd {user}` gave a malformed entry: {text}"))
    };
    Ok(Ids {
        uid: num(fields[2])?,
        gid: num(fields[3])?,
    })
}

/// Runs `lockstep check --config <config>` as `user`, with the secret files handed over
/// as the packaged unit's `LoadCredential=` does; returns the check's exit code. Must
/// run as root.
pub fn check_as(user: &str, config: &Path) -> Result<u8, String> {
    if effective_uid() != Some(0) {
        return Err(format!(
            "--user {user}: run it as root (`sudo lockstep check --user {user}`): it reads \
             the secrets in {CREDENTIALS_DIR} as root, as systemd does, then checks as {user}"
        ));
    }
    let ids = lookup(user)?;
    // The child starts in `/` (root's working directory may be closed to the user).
    let config = std::path::absolute(config)
        .map_err(|e| format!("the config path {}: {e}", config.display()))?;
    let handed = Handed::make(ids)?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the lockstep binary to run as {user}: {e}"))?;
    let status = Command::new(&exe)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &handed.dir)
        .env("LOCKSTEP_CHECK_SECRETS_FROM", handed.from.as_os_str())
        .current_dir("/")
        .uid(ids.uid)
        .gid(ids.gid)
        .status()
        .map_err(|e| format!("cannot run {} as {user}: {e}", exe.display()))?;
    Ok(status.code().map_or(1, |c| c as u8))
}

/// The private credentials directory of one check; removed on drop.
struct Handed {
    dir: PathBuf,
    /// Where the files came from.
    from: PathBuf,
}

impl Handed {
    /// Copies the secret files into a new directory owned by `ids`, mode 0700, each file
    /// 0400: those of `$CREDENTIALS_DIRECTORY` under their names when it is set (root
    /// runs under a unit that loaded them), else those of /etc/lockstep/credentials as
    /// `lockstep_<file>`.
    fn make(ids: Ids) -> Result<Handed, String> {
        let (from, prefix) = match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(d) => (PathBuf::from(d), String::new()),
            None => (PathBuf::from(CREDENTIALS_DIR), format!("{CREDENTIAL_ID}_")),
        };
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("lockstep-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let handed = Handed { dir, from };
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid))
                .map_err(|e| format!("cannot hand {} to uid {}: {e}", p.display(), ids.uid))
        };
        chown(&handed.dir)?;
        let entries = match fs::read_dir(&handed.from) {
            Ok(e) => e,
            // No credentials directory: nothing to hand over.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(handed),
            Err(e) => return Err(format!("cannot read {}: {e}", handed.from.display())),
        };
        for e in entries.flatten() {
            let path = e.path();
            if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let to = handed
                .dir
                .join(format!("{prefix}{}", e.file_name().to_string_lossy()));
            let data =
                fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&to)
                .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
            std::io::Write::write_all(&mut f, &data)
                .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
            chown(&to)?;
        }
        Ok(handed)
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "lockstep: cannot remove {} (copies of the secrets): {e}; remove it by hand",
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root() {
        assert_eq!(lookup("root").unwrap(), Ids { uid: 0, gid: 0 });
        let e = lookup("lockstep-no-such-user").unwrap_err();
        assert!(e.contains("no user `lockstep-no-such-user`"), "{e}");
        assert!(effective_uid().is_some());
    }
}
