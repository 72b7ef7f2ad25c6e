//! Secrets: values that must never be printed, logged or serialized.
//!
//! In the config a secret is a string, `{ file = "/path" }` or `{ env = "NAME" }`. A
//! `file` given as a bare name (no `/`) is looked up in `$CREDENTIALS_DIRECTORY`, where
//! systemd's `LoadCredential=` puts it.

use std::fmt;
use std::path::PathBuf;

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
        match self {
            RawSecret::Inline(s) => Ok(Secret(s.clone())),
            RawSecret::Env { env } => std::env::var(env).map(Secret).map_err(|_| {
                format!("the environment variable `{env}` named for this secret is not set")
            }),
            RawSecret::File { file } => {
                let path = credential_path(file);
                std::fs::read_to_string(&path)
                    .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
                    .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))
            }
        }
    }
}

/// Where a secret file lives: a bare name is looked up in `$CREDENTIALS_DIRECTORY`, as
/// `<name>` or, when the packaged unit loaded the directory /etc/lockstep/credentials
/// under the ID `lockstep`, as `lockstep_<name>`.
pub fn credential_path(file: &str) -> PathBuf {
    if !file.contains('/') {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let dir = PathBuf::from(dir);
            let plain = dir.join(file);
            let loaded = dir.join(format!("{CREDENTIAL_ID}_{file}"));
            return if !plain.exists() && loaded.exists() {
                loaded
            } else {
                plain
            };
        }
    }
    PathBuf::from(file)
}

/// The credential ID the packaged unit loads /etc/lockstep/credentials under.
pub const CREDENTIAL_ID: &str = "lockstep";

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
    fn never_printed() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }
}
