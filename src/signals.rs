//! SIGTERM and SIGINT: blocked in every thread and awaited by the main thread with
//! `sigwait`, so a signal never interrupts a shard and shutdown runs as ordinary code.

/// The termination signals, blocked for this thread and every thread it starts later.
pub struct Termination {
    set: libc::sigset_t,
}

/// Blocks SIGTERM and SIGINT in the calling thread (threads spawned after inherit it).
#[must_use]
pub fn block_termination() -> Termination {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls
    // only read and write that set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Termination { set }
    }
}

/// Waits for SIGTERM or SIGINT and returns its name.
#[must_use]
pub fn wait(signals: &Termination) -> &'static str {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` was initialised by `block_termination`; `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&signals.set, &mut sig) };
        if rc == 0 {
            return if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
        }
    }
}
