//! Telling a process made by `fork()` from the one that created a resource.
//!
//! A child of `fork()` gets a copy of its parent's memory, including the
//! state of every ring, arena and spill buffer, but shares their pages
//! with the parent: freeing a block of an inherited arena, trimming or
//! reusing an inherited spill buffer, or reading an inherited ring would
//! change the parent's data under it. A resource records the process's
//! *fork generation* when it is created ([`generation`]); where it has
//! changed since ([`forked_since`]), the process is a forked child of its
//! creator and must leave the resource alone.
//!
//! The generation counts the forks since the first call to [`generation`]
//! in this process or an ancestor it was forked from: that call registers
//! a `pthread_atfork` handler, which adds one in each child. (Processes
//! started with `clone` and `execve`, as workers are, begin afresh.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// This process's fork generation, to record in a resource being created;
/// registers the handler that counts forks on the first call.
///
/// ```
/// let born = loky_ipc::fork::generation();
/// assert!(!loky_ipc::fork::forked_since(born));
/// ```
pub fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only does an atomic add
        // on a static (async-signal-safe, valid for the process's life).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        if rc != 0 {
            tracing::warn!(
                rc,
                "pthread_atfork failed: a fork()ed child would not be told from its parent"
            );
        }
    });
    FORKS.load(Ordering::Relaxed)
}

/// Whether this process is a `fork()`ed child (or grandchild...) of the
/// one where [`generation`] returned `born`.
pub fn forked_since(born: u64) -> bool {
    FORKS.load(Ordering::Relaxed) != born
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn a_forked_child_has_a_new_generation() {
        let born = super::generation();
        // SAFETY: the child only reads an atomic and calls `_exit`, both
        // async-signal-safe, so forking this multi-threaded test process
        // is sound.
        let status = unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                libc::_exit(if super::forked_since(born) { 0 } else { 1 });
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            status
        };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(!super::forked_since(born), "the parent did not fork");
    }
}
