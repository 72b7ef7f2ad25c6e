//! Checkpoint files: how a source's position survives a crash.
//!
//! A checkpoint is replaced atomically, through [`Disk::replace`](crate::disk::Disk)
//! (so tests can fill the disk or fail its fsyncs): the new content is written to
//! `<name>.tmp`, fsynced, renamed over `<name>`, and the directory is fsynced so the
//! rename itself is durable. A crash at any point leaves either the old or the new checkpoint, never a
//! torn one; a leftover `.tmp` is ignored and overwritten. Sources write a checkpoint
//! only for positions the sink has acknowledged (see [`super::AckWatermark`]), so after a
//! crash they re-send from the last checkpoint and JetStream drops the duplicates by
//! their `Nats-Msg-Id`.

use std::fs;
use std::io;
use std::path::Path;

/// Reads a checkpoint; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Disk, RealDisk};

    #[test]
    fn replaces_atomically_and_ignores_leftover_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/cp.json");
        assert_eq!(read(&p).unwrap(), None);
        RealDisk.replace(&p, b"one").unwrap();
        fs::write(dir.path().join("sub/cp.json.tmp"), b"torn").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"one"[..]));
        RealDisk.replace(&p, b"two").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"two"[..]));
    }
}
