//! Checkpoint files: how a source's position survives a crash.
//!
//! A checkpoint is replaced atomically: the new content is written to `<name>.tmp`,
//! fsynced, renamed over `<name>`, and the directory is fsynced so the rename itself is
//! durable. A crash at any point leaves either the old or the new checkpoint, never a
//! torn one; a leftover `.tmp` is ignored and overwritten. Sources write a checkpoint
//! only for positions the sink has acknowledged (see [`super::AckWatermark`]), so after a
//! crash they re-send from the last checkpoint and JetStream drops the duplicates by
//! their `Nats-Msg-Id`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
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

/// Reads a checkpoint; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_ignores_leftover_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/cp.json");
        assert_eq!(read(&p).unwrap(), None);
        write_atomic(&p, b"one").unwrap();
        fs::write(tmp_path(&p), b"torn").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"one"[..]));
        write_atomic(&p, b"two").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"two"[..]));
    }
}
