//! Test helpers: an access made in a forked child, to check that it faults.

/// Runs `touch` in a forked child; its wait status.
pub(crate) fn in_child(touch: impl FnOnce()) -> i32 {
    // SAFETY: the child only runs `touch` (a volatile access) and `_exit`,
    // both async-signal-safe, so forking this multi-threaded test process
    // is sound.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            touch();
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

/// Whether a wait status is a death by `SIGSEGV`.
pub(crate) fn segfaulted(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV
}

/// A child that segfaults on purpose dumps no core.
pub(crate) fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call on a valid struct; only lowers a limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}
