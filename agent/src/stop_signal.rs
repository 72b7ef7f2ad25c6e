//! SIGTERM and SIGINT for `lockstep run`, from the first instant of `main`.
//!
//! A signal's default action ends the process at once: no exit code, nothing flushed.
//! Until the agent has installed its own handler (tokio's, after the runtime is built),
//! a SIGTERM from systemd or a supervisor that stops the agent right after starting it
//! would do exactly that. So `main` first [`hold`]s both signals (blocked in its thread:
//! one that arrives is kept pending by the kernel, not acted on), builds the runtime —
//! whose threads inherit the block — and, for `run`, [`Held::catch`]es them: the handler
//! is installed, then the main thread unblocks them and a pending one is delivered to
//! the handler. Every SIGTERM or SIGINT then means a clean stop with exit code 0. The
//! other commands [`Held::release`] them at once and keep the default action.
//!
//! Runtime threads keep both signals blocked; the kernel hands a process-wide signal to
//! a thread that does not block it (the main thread, which lives until the end), and the
//! handler is process-wide. Children start with an empty mask (std's `Command` clears
//! it). What cannot be covered: a signal sent before `main` runs (while the dynamic
//! loader maps the binary), which a parent that blocks it across `exec` avoids.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT blocked in the calling thread since [`hold`].
#[must_use = "dropping it releases the signals"]
pub struct Held {
    old: Option<libc::sigset_t>,
}

/// The stop signals, caught: [`Caught::recv`] returns at the first one.
pub struct Caught {
    term: Signal,
    int: Signal,
}

fn stop_set() -> libc::sigset_t {
    #[allow(unsafe_code)]
    // SAFETY: sigemptyset initializes the set before sigaddset reads it; both only
    // write the set we own, with signal numbers that exist.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Changes the calling thread's mask; returns the old one.
fn mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    #[allow(unsafe_code)]
    // SAFETY: pthread_sigmask reads `set` and writes the old mask into memory we own.
    let (r, old) = unsafe {
        let mut old = std::mem::zeroed::<libc::sigset_t>();
        (libc::pthread_sigmask(how, set, &mut old), old)
    };
    if r == 0 {
        Ok(old)
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it starts). Call
/// it first thing in `main`. When the mask cannot be changed (it always can), nothing
/// is held and the signals keep their default action.
pub fn hold() -> Held {
    Held {
        old: mask(libc::SIG_BLOCK, &stop_set()).ok(),
    }
}

impl Held {
    /// Installs the handler (within a runtime context: call it under `Runtime::enter`
    /// or in `block_on`), then unblocks both signals in this thread: one that arrived
    /// meanwhile is received by [`Caught::recv`].
    pub fn catch(self) -> io::Result<Caught> {
        let caught = Caught {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        };
        // Unblocked explicitly, even if the parent blocked them across exec: the
        // handler is in place now.
        mask(libc::SIG_UNBLOCK, &stop_set())?;
        let mut this = self;
        this.old = None;
        Ok(caught)
    }

    /// Puts the mask back as it was: the default action again (other commands).
    pub fn release(self) {}
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = mask(libc::SIG_SETMASK, &old);
        }
    }
}

impl Caught {
    /// Returns at the first SIGTERM or SIGINT (at once if one arrived while held).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM that arrives while held is neither fatal nor lost: the handler gets it
    /// once it is in place.
    #[test]
    fn a_sigterm_while_held_is_received_once_caught() {
        let held = hold();
        #[allow(unsafe_code)]
        // SAFETY: raise sends SIGTERM to this thread, which blocks it: it stays pending.
        let r = unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(r, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut caught = {
            let _in_runtime = rt.enter();
            held.catch().unwrap()
        };
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), caught.recv())
                .await
                .expect("the held SIGTERM is received")
        });
    }
}
