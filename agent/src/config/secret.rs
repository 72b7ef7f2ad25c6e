//! Secrets: values that must never be printed, logged or serialized.
//!
//! In the config a secret is a string, `{ file = "/path" }` or `{ env = "NAME" }`. A
//! `file` given as a bare name (no `/`) is looked up in `$CREDENTIALS_DIRECTORY`, where
//! systemd's `LoadCredential=` puts it; outside such a unit (`lockstep check` or
//! `triggers` run by root from a shell, the legacy unit) in [`CREDENTIALS_DIR`], the
//! directory the packaged unit loads them from.
//!
//! Only the commands that use a secret resolve it: `status`, `spool` and `snapshot`
//! read the config with [`RawSecret::unresolved`] in their place (see
//! `Config::load_without_secrets`), so that anyone may run them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A resolved secret. `Debug` and `Display` print `***`; there is no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret found inside another value of the config (a NATS URL's password).
    pub(super) fn from_config(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret as written in the config file.
#[derive(Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { file = \"/path\" } or { env = \"NAME\" }"
)]
pub enum RawSecret {
    Inline(String),
    File { file: String },
    Env { env: String },
}

impl RawSecret {
    pub fn resolve(&self) -> Result<Secret, String> {
        let systemd = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        self.resolve_in(systemd.as_deref())
    }

    /// Resolves the secret, with `$CREDENTIALS_DIRECTORY` as given.
    fn resolve_in(&self, systemd: Option<&Path>) -> Result<Secret, String> {
        match self {
            RawSecret::Inline(s) => Ok(Secret(s.clone())),
            RawSecret::Env { env } => std::env::var(env).map(Secret).map_err(|_| {
                format!("the environment variable `{env}` named for this secret is not set")
            }),
            RawSecret::File { file } => {
                let path = credential_path_in(file, systemd);
                std::fs::read_to_string(&path)
                    .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
                    .map_err(|e| unreadable(file, &path, systemd, &e))
            }
        }
    }

    /// The stand-in for a secret a command does not use: it is never read, and holds
    /// nothing.
    pub fn unresolved() -> Secret {
        Secret(String::new())
    }
}

/// What went wrong reading the secret file `file` (as written in the config) at `path`,
/// where lockstep looked for it, and what to do.
fn unreadable(file: &str, path: &Path, systemd: Option<&Path>, e: &std::io::Error) -> String {
    if file.contains('/') {
        return format!("cannot read the secret file {}: {e}", path.display());
    }
    match systemd {
        Some(dir) => format!(
            "cannot read the secret file `{file}` (a bare name, looked up in \
             $CREDENTIALS_DIRECTORY={}, as `{file}` and `{CREDENTIAL_ID}_{file}`): {e}; put the \
             file in {CREDENTIALS_DIR} (root, mode 0600) and restart the service, which hands \
             that directory over with LoadCredential=",
            dir.display()
        ),
        None => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    "{CREDENTIALS_DIR} is root's: run the command as root (`sudo lockstep \
                     check` reads the secrets there, then checks as the `lockstep` user, as the \
                     service runs)"
                )
            } else {
                format!(
                    "put the file there (root, mode 0600), or give an absolute path \
                     (`{{ file = \"/path/{file}\" }}`)"
                )
            };
            format!(
                "cannot read the secret file `{file}` (a bare name): looked for {} \
                 ($CREDENTIALS_DIRECTORY is not set: not started by the packaged systemd \
                 unit): {e}; {hint}; see \"Secrets\" in docs/operations.md",
                path.display()
            )
        }
    }
}

/// Where a secret file lives: a bare name is looked up in `$CREDENTIALS_DIRECTORY`, as
/// `<name>` or, when the packaged unit loaded the directory /etc/lockstep/credentials
/// under the ID `lockstep`, as `lockstep_<name>`; without `$CREDENTIALS_DIRECTORY`, in
/// [`CREDENTIALS_DIR`].
pub fn credential_path(file: &str) -> PathBuf {
    let systemd = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    credential_path_in(file, systemd.as_deref())
}

fn credential_path_in(file: &str, systemd: Option<&Path>) -> PathBuf {
    if file.contains('/') {
        return PathBuf::from(file);
    }
    match systemd {
        Some(dir) => {
            let plain = dir.join(file);
            let loaded = dir.join(format!("{CREDENTIAL_ID}_{file}"));
            if !plain.exists() && loaded.exists() {
                loaded
            } else {
                plain
            }
        }
        None => Path::new(CREDENTIALS_DIR).join(file),
    }
}

/// The credential ID the packaged unit loads /etc/lockstep/credentials under.
pub const CREDENTIAL_ID: &str = "lockstep";

/// The directory of secret files the packaged unit hands to the agent
/// (`LoadCredential=lockstep:/etc/lockstep/credentials`).
pub const CREDENTIALS_DIR: &str = "/etc/lockstep/credentials";

#[cfg(test)]
impl Secret {
    pub fn for_tests(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_outside_systemd_are_looked_up_in_the_credentials_directory() {
        assert_eq!(
            credential_path_in("permits-odbc", None),
            Path::new("/etc/lockstep/credentials/permits-odbc")
        );
        assert_eq!(credential_path_in("/x/y", None), Path::new("/x/y"));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            credential_path_in("a", Some(dir.path())),
            dir.path().join("a")
        );
        std::fs::write(dir.path().join("lockstep_a"), "s\n").unwrap();
        assert_eq!(
            credential_path_in("a", Some(dir.path())),
            dir.path().join("lockstep_a")
        );
        let s = RawSecret::File { file: "a".into() };
        assert_eq!(s.resolve_in(Some(dir.path())).unwrap().expose(), "s");
    }

    #[test]
    fn an_unreadable_bare_name_says_where_it_looked_and_what_to_run() {
        let s = RawSecret::File {
            file: "lockstep-test-no-such-secret".into(),
        };
        let e = s.resolve_in(None).unwrap_err();
        assert!(
            e.contains("/etc/lockstep/credentials/lockstep-test-no-such-secret")
                && e.contains("$CREDENTIALS_DIRECTORY is not set"),
            "{e}"
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = unreadable("x", Path::new("/etc/lockstep/credentials/x"), None, &denied);
        assert!(e.contains("sudo lockstep check"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = s.resolve_in(Some(dir.path())).unwrap_err();
        assert!(
            e.contains(&dir.path().display().to_string())
                && e.contains("lockstep_lockstep-test-no-such-secret"),
            "{e}"
        );
    }

    #[test]
    fn never_printed() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }
}
