//! The watcher: opens files the moment they appear in the globs or are renamed into or
//! out of them, and wakes the loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::files::Globs;
use super::{fds, files};

/// What the watcher thread saw since the source last looked.
#[derive(Default)]
pub(super) struct Seen {
    /// Files opened the moment they appeared in the globs or were renamed into or out of
    /// them: held from then on, a file written and rotated away before the source's next
    /// look is still read.
    pub(super) opened: Vec<(PathBuf, fds::Held, u64)>,
    /// A file may have appeared or gone (or events were lost): scan the globs.
    pub(super) structural: bool,
}

/// Most files held in [`Seen::opened`] between two looks; past it the scan finds them.
const SEEN_MAX: usize = 4096;

/// Watches the directories of the globs. On the watcher's own thread, at once, it opens
/// every file created in (or renamed into) the globs and every file renamed out of them,
/// so that none is missed however fast logrotate turns; data changes only wake the loop.
pub(super) fn watch(
    source: String,
    patterns: &[String],
    globs: Arc<Globs>,
    seen: Arc<Mutex<Seen>>,
    discovered: Arc<AtomicU64>,
    wake: crossbeam_channel::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let structural = match &res {
            Ok(ev) => {
                ev.need_rescan()
                    || matches!(
                        ev.kind,
                        EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                            | EventKind::Other
                    )
            }
            Err(_) => true,
        };
        if structural {
            let mut s = match seen.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            s.structural = true;
            if let Ok(ev) = &res {
                let open = match ev.kind {
                    EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                        ev.paths
                            .first()
                            .filter(|p| globs.matches(p))
                            .map(|p| (p, false))
                    }
                    // A rename out of the globs (`app.log` to `app.log.1`): follow it (it
                    // may be compressed or deleted soon, so past the budget if need be).
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match &ev.paths[..] {
                        [from, to] if globs.matches(from) && !files::is_compressed(to) => {
                            Some((to, !globs.matches(to)))
                        }
                        _ => None,
                    },
                    _ => None,
                };
                if let Some((p, urgent)) = open {
                    if s.opened.len() < SEEN_MAX {
                        match fds::Budget::global().open(p, urgent) {
                            Ok(f) => {
                                // Numbered now, in event order: the order files were created.
                                let order = discovered.fetch_add(1, Ordering::Relaxed);
                                s.opened.push((p.clone(), f, order));
                            }
                            // No descriptor free: the scan finds it (and says how many wait).
                            Err(fds::OpenError::NoSlot) => {}
                            // Gone already (deleted, renamed again): the scan looks again.
                            Err(fds::OpenError::Io(e))
                                if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(fds::OpenError::Io(e)) => {
                                tracing::warn!("source {source}: cannot open {}: {e}", p.display());
                            }
                        }
                    }
                }
            }
        }
        // One pending wake-up is enough: the loop takes everything in `seen`.
        let _ = wake.try_send(());
    })?;
    for p in patterns {
        let (root, recursive) = files::watch_root(p);
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = w.watch(&root, mode) {
            tracing::debug!(
                "cannot watch {}: {e}; relying on periodic checks",
                root.display()
            );
        }
    }
    Ok(w)
}
