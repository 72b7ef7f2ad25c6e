//! `sudo lockstep check --user lockstep`: the checks as the service runs them.
//!
//! The packaged unit runs the agent as `lockstep`, which cannot read
//! /etc/lockstep/credentials (root, 0700): systemd reads that directory as root and hands
//! each file to the agent in a private `$CREDENTIALS_DIRECTORY` (`LoadCredential=`). From
//! a shell there is no systemd to do it, so this does the same: as root it copies the
//! directory's files into a fresh directory (as `lockstep_<file>`, the names
//! `LoadCredential=lockstep:…` gives them), then runs `lockstep check` again as that user
//! with `$CREDENTIALS_DIRECTORY` pointing there, and removes the directory when the check
//! ends. Everything else — the config, absolute secret paths, change files, the state
//! directory — the check reads as the user, as the service would.
//!
//! Root works here on behalf of a user who may be hostile (a compromised agent runs as
//! `lockstep`), so:
//! - the directory is made and filled while root owns it (mode 0700), each copy created
//!   with `O_CREAT|O_EXCL|O_NOFOLLOW` and handed to the user through its open handle
//!   (`fchown`), never by path; the directory is handed over last, through its handle
//!   too. A user who swaps a copy for a symlink could otherwise make root chown the
//!   symlink's target (/etc/shadow).
//! - the child runs in a session of its own (`setsid`: no controlling terminal, so no
//!   `TIOCSTI` into root's shell), stdin from /dev/null, its output relayed by the parent;
//!   with the user's uid, gid and supplementary groups (as systemd's `User=` sets them)
//!   and a clean environment: `PATH`, `HOME` (the user's), `LANG`, `LOCKSTEP_LOG`,
//!   `RUST_LOG`, the variables the config names in `{ env = "…" }` (the service gets
//!   those from `EnvironmentFile=`), and `$CREDENTIALS_DIRECTORY`.
//! - SIGINT, SIGHUP and SIGTERM do not kill the parent while the check runs: it kills
//!   the check (which no longer has the terminal) and removes the copies. A parent killed
//!   with SIGKILL leaves `lockstep-check-<pid>` behind; the next `check --user` removes
//!   the directories of processes that are gone.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{CREDENTIALS_DIR, CREDENTIAL_ID};

/// The prefix of the directories the copies go to, under [`base_dir`].
const DIR_PREFIX: &str = "lockstep-check-";

/// A user's ids, from the system's user database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// A user the check runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub ids: Ids,
    pub home: PathBuf,
    /// Supplementary groups (`id -G`: the primary group and every group listing the user).
    pub groups: Vec<u32>,
}

/// The effective user id of this process (from /proc/self/status).
pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The name of user `uid` (from `getent passwd`), when it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let out = std::process::Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split(':')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// Looks `user` up with `getent passwd` (a name or a number), and its groups with `id -G`.
pub fn lookup(user: &str) -> Result<User, String> {
    let out = std::process::Command::new("getent")
        .args(["passwd", user])
        .output()
        .map_err(|e| format!("cannot run `getent passwd {user}` to look the user up: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.trim_end().split(':').collect();
    if !out.status.success() || fields.len() < 6 {
        return Err(format!(
            "no user `{user}` on this machine (`getent passwd {user}` found none); the package \
             creates `lockstep`"
        ));
    }
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("`getent passwd {user}` gave a malformed entry: {text}"))
    };
    let name = fields[0].to_owned();
    let ids = Ids {
        uid: num(fields[2])?,
        gid: num(fields[3])?,
    };
    let out = std::process::Command::new("id")
        .args(["-G", "--", &name])
        .output()
        .map_err(|e| format!("cannot run `id -G {name}` to find the user's groups: {e}"))?;
    let groups_text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`id -G {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut groups = Vec::new();
    for g in groups_text.split_whitespace() {
        groups.push(
            g.parse::<u32>().map_err(|_| {
                format!("`id -G {name}` gave a malformed group list: {groups_text}")
            })?,
        );
    }
    if !groups.contains(&ids.gid) {
        groups.insert(0, ids.gid);
    }
    Ok(User {
        name,
        ids,
        home: PathBuf::from(fields[5]),
        groups,
    })
}

/// Runs `lockstep check --config <config>` as `user`, with the secret files handed over
/// as the packaged unit's `LoadCredential=` does; returns the check's exit code (128 +
/// the signal's number when SIGINT, SIGHUP or SIGTERM stopped it). Must run as root,
/// inside the runtime (it catches signals through it).
pub async fn check_as(user: &str, config: &Path) -> Result<u8, String> {
    if effective_uid() != Some(0) {
        return Err(format!(
            "--user {user}: run it as root (`sudo lockstep check --user {user}`): it reads \
             the secrets in {CREDENTIALS_DIR} as root, as systemd does, then checks as {user}"
        ));
    }
    let target = lookup(user)?;
    // The child starts in `/` (root's working directory may be closed to the user).
    let config = std::path::absolute(config)
        .map_err(|e| format!("the config path {}: {e}", config.display()))?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the lockstep binary to run as {user}: {e}"))?;
    // From here on, these signals no longer kill this process (they would leave the
    // copies behind): it stops the check and cleans up.
    let catch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot catch {name}: {e}"))
    };
    let mut sigint = catch(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = catch(SignalKind::hangup(), "SIGHUP")?;
    let mut sigterm = catch(SignalKind::terminate(), "SIGTERM")?;

    let base = base_dir();
    remove_leftovers(&base);
    let (from, prefix) = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(d) => (PathBuf::from(d), String::new()),
        None => (PathBuf::from(CREDENTIALS_DIR), format!("{CREDENTIAL_ID}_")),
    };
    let handed = Handed::make(&base, &from, &prefix, target.ids, &mut |_| {})?;

    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("check")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .envs(child_env(&target, &config))
        .env("CREDENTIALS_DIRECTORY", &handed.dir)
        .env("LOCKSTEP_CHECK_SECRETS_FROM", from.as_os_str())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    become_user(&mut cmd, &target);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} as {user}: {e}", exe.display()))?;
    let out = child
        .stdout
        .take()
        .map(|r| tokio::spawn(relay(r, tokio::io::stdout())));
    let err = child
        .stderr
        .take()
        .map(|r| tokio::spawn(relay(r, tokio::io::stderr())));
    let stopped_by = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| format!("waiting for the check as {user}: {e}"))?;
            for relay in [out, err].into_iter().flatten() {
                let _ = relay.await;
            }
            return Ok(status.code().map_or(1, |c| c as u8));
        }
        _ = sigint.recv() => ("SIGINT", 2u8),
        _ = sighup.recv() => ("SIGHUP", 1),
        _ = sigterm.recv() => ("SIGTERM", 15),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    for relay in [out, err].into_iter().flatten() {
        let _ = relay.await;
    }
    drop(handed);
    // The terminal may be gone (SIGHUP): a failed write is no matter.
    let mut stderr = io::stderr();
    let _ = io::Write::write_all(
        &mut stderr,
        format!(
            "lockstep: {} stopped the check as {user}; its copies of the secrets are removed\n",
            stopped_by.0
        )
        .as_bytes(),
    );
    Ok(128 + stopped_by.1)
}

/// Where the copies go: /run (root's, in memory), else the temporary directory.
fn base_dir() -> PathBuf {
    if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    }
}

/// The environment of the check: what the service would have, no more.
fn child_env(user: &User, config: &Path) -> Vec<(String, std::ffi::OsString)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var_os("PATH")
                .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into()),
        ),
        ("HOME".to_owned(), user.home.clone().into_os_string()),
        ("USER".to_owned(), user.name.clone().into()),
        ("LOGNAME".to_owned(), user.name.clone().into()),
    ];
    let mut pass = vec![
        "LANG".to_owned(),
        "LOCKSTEP_LOG".to_owned(),
        "RUST_LOG".to_owned(),
    ];
    // Unreadable or broken: the check itself says so, as the user.
    if let Ok(text) = fs::read_to_string(config) {
        pass.extend(env_secret_names(&text));
    }
    for name in pass {
        if let Some(v) = std::env::var_os(&name) {
            if !env.iter().any(|(n, _)| *n == name) {
                env.push((name, v));
            }
        }
    }
    env
}

/// The names of the environment variables a config reads secrets from (`{ env = "…" }`).
fn env_secret_names(config_text: &str) -> Vec<String> {
    fn walk(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                if t.len() == 1 {
                    if let Some(toml::Value::String(name)) = t.get("env") {
                        out.push(name.clone());
                        return;
                    }
                }
                t.values().for_each(|v| walk(v, out));
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = config_text.parse::<toml::Table>() {
        walk(&toml::Value::Table(v), &mut out);
    }
    out
}

/// Makes `cmd` start as `user`: a session of its own (no controlling terminal), the
/// user's supplementary groups, gid and uid — in that order, while it still may.
#[allow(unsafe_code)]
fn become_user(cmd: &mut tokio::process::Command, user: &User) {
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.ids.uid, user.ids.gid);
    let check = |r: libc::c_int| {
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the closure runs in the forked child before exec. It only makes
    // async-signal-safe system calls (setsid, setgroups, setgid, setuid) on values made
    // before the fork, and allocates nothing (`last_os_error` does not allocate).
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setsid())?;
            check(libc::setgroups(groups.len() as _, groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
}

/// Copies everything `from` gives until it ends; a writer that fails (the terminal
/// gone) is dropped, and the rest is read and discarded so that the check never blocks.
async fn relay(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 8192];
    let mut writing = true;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writing && (to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err())
                {
                    writing = false;
                }
            }
        }
    }
}

/// Removes the copies left in `base` by checks that were killed (SIGKILL, a crash): the
/// `lockstep-check-<pid>` directories whose process is gone, and one of this process's
/// id (its directory is not made yet).
fn remove_leftovers(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let own = std::process::id();
    let proc_mounted = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = pid == own || (proc_mounted && !Path::new(&format!("/proc/{pid}")).exists());
        // Never followed: only a real directory is removed.
        let is_dir = fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir());
        if !gone || !is_dir {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => eprintln!(
                "lockstep: removed {}, copies of the secrets left by a check that was killed",
                e.path().display()
            ),
            Err(err) => eprintln!(
                "lockstep: cannot remove {} (copies of the secrets left by a check that was \
                 killed): {err}; remove it by hand",
                e.path().display()
            ),
        }
    }
}

/// The private credentials directory of one check; removed on drop.
struct Handed {
    dir: PathBuf,
}

impl Handed {
    /// Copies the regular files of `from` into `<base>/lockstep-check-<pid>` as
    /// `<prefix><name>` and hands them, then the directory, to `ids`. The directory is
    /// root's (0700) until every copy is in; each copy is created anew (`O_EXCL`, never
    /// through a symlink), mode 0400, and handed over through its open handle.
    /// `after_write` is called with each copy's path once its bytes are written, before
    /// anything is handed over.
    fn make(
        base: &Path,
        from: &Path,
        prefix: &str,
        ids: Ids,
        after_write: &mut dyn FnMut(&Path),
    ) -> Result<Handed, String> {
        let dir = base.join(format!("{DIR_PREFIX}{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // From here on, a failure removes what was made (drop).
        let handed = Handed { dir };
        let hand = |f: &fs::File, p: &Path| {
            std::os::unix::fs::fchown(f, Some(ids.uid), Some(ids.gid))
                .map_err(|e| format!("cannot hand {} to uid {}: {e}", p.display(), ids.uid))
        };
        let mut copies = Vec::new();
        match fs::read_dir(from) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let path = e.path();
                    if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                        continue;
                    }
                    let to = handed
                        .dir
                        .join(format!("{prefix}{}", e.file_name().to_string_lossy()));
                    let data = fs::read(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .mode(0o400)
                        .open(&to)
                        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
                    io::Write::write_all(&mut f, &data)
                        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
                    after_write(&to);
                    copies.push((f, to));
                }
            }
            // No credentials directory: nothing to hand over.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", from.display())),
        }
        for (f, to) in &copies {
            hand(f, to)?;
        }
        let d = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&handed.dir)
            .map_err(|e| format!("cannot open {}: {e}", handed.dir.display()))?;
        hand(&d, &handed.dir)?;
        Ok(handed)
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        // remove_dir_all never follows a symlink the user may have put inside.
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn looks_up_root() {
        let root = lookup("root").unwrap();
        assert_eq!(root.ids, Ids { uid: 0, gid: 0 });
        assert_eq!(root.name, "root");
        assert!(root.groups.contains(&0), "{root:?}");
        let e = lookup("lockstep-no-such-user").unwrap_err();
        assert!(e.contains("no user `lockstep-no-such-user`"), "{e}");
        assert!(effective_uid().is_some());
    }

    #[test]
    fn names_the_environment_variables_of_env_secrets() {
        let text = r#"
            [nats]
            password = { env = "NATS_PW" }
            user = "env"
            [[source]]
            name = "a"
            odbc = { env = "ODBC_CONN" }
            [[source]]
            name = "b"
            odbc = { file = "b-odbc" }
        "#;
        assert_eq!(env_secret_names(text), ["NATS_PW", "ODBC_CONN"]);
        assert!(env_secret_names("not toml [").is_empty());
    }

    /// An unprivileged user (nobody, uid 65534) is handed the copies; while they are
    /// written it tries what a compromised agent would: replace a copy with a symlink
    /// to a root file, so that root's chown lands on that file.
    #[test]
    fn the_copies_are_handed_over_through_their_handles_after_root_filled_the_directory() {
        if effective_uid() != Some(0) {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let nobody = Ids {
            uid: 65534,
            gid: 65534,
        };
        let t = tempfile::tempdir().unwrap();
        // The attacker can reach the base, as it can reach /run.
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let base = t.path().join("run");
        let from = t.path().join("credentials");
        fs::create_dir(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(&from).unwrap();
        fs::write(from.join("nats-password"), "s3cret\n").unwrap();
        fs::write(from.join("permits-odbc"), "DSN=permits").unwrap();
        let victim = t.path().join("shadow");
        fs::write(&victim, "root:x").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();

        let mut attempts = Vec::new();
        let handed = Handed::make(&base, &from, "lockstep_", nobody, &mut |copy| {
            let out = std::process::Command::new("ln")
                .arg("-sfn")
                .arg(&victim)
                .arg(copy)
                .uid(nobody.uid)
                .gid(nobody.gid)
                .output()
                .unwrap();
            attempts.push(out.status.success());
        })
        .unwrap();
        assert_eq!(attempts, [false, false], "the user could touch the copies");
        let v = fs::metadata(&victim).unwrap();
        assert_eq!((v.uid(), v.gid()), (0, 0), "root's file was handed over");

        let d = fs::symlink_metadata(&handed.dir).unwrap();
        assert!(d.is_dir());
        assert_eq!((d.uid(), d.gid(), d.mode() & 0o777), (65534, 65534, 0o700));
        let mut names: Vec<String> = fs::read_dir(&handed.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["lockstep_nats-password", "lockstep_permits-odbc"]);
        for (name, want) in [
            ("lockstep_nats-password", "s3cret\n"),
            ("lockstep_permits-odbc", "DSN=permits"),
        ] {
            let p = handed.dir.join(name);
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file(), "{name}");
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o400));
            assert_eq!(fs::read_to_string(&p).unwrap(), want);
        }
        let dir = handed.dir.clone();
        drop(handed);
        assert!(!dir.exists(), "the copies were not removed");
    }

    #[test]
    fn removes_the_copies_of_checks_that_are_gone_and_only_those() {
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = t.path().join(format!("{DIR_PREFIX}{dead}"));
        fs::create_dir(&gone).unwrap();
        fs::write(gone.join("lockstep_pw"), "x").unwrap();
        let own = t.path().join(format!("{DIR_PREFIX}{}", std::process::id()));
        fs::create_dir(&own).unwrap();
        // Process 1 is alive: its check is still running.
        let running = t.path().join(format!("{DIR_PREFIX}1"));
        fs::create_dir(&running).unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("keep"), "x").unwrap();
        let link = t.path().join(format!("{DIR_PREFIX}{}", u32::MAX));
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let other = t.path().join("lockstep-checkpoint");
        fs::create_dir(&other).unwrap();

        remove_leftovers(t.path());
        assert!(!gone.exists(), "the copies of a dead check are left");
        assert!(!own.exists());
        assert!(
            running.exists(),
            "the copies of a running check were removed"
        );
        assert!(other.exists());
        assert!(elsewhere.join("keep").exists(), "a symlink was followed");
        assert!(fs::symlink_metadata(&link).is_ok());
    }
}
