//! What the integration tests read of their own process to check that
//! nothing leaks (open descriptors and memory mappings), and a wait for a
//! pool's statistics to reach a state.

#![allow(dead_code)] // each test file uses what it needs

/// Entries of a `/proc` directory, such as `/proc/self/fd` (descriptors)
/// or `/proc/self/task` (threads); 0 if it cannot be read.
pub(crate) fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// This process's open descriptors.
pub(crate) fn fd_count() -> usize {
    count_dir("/proc/self/fd")
}

/// This process's memory mappings whose line in `/proc/self/maps`
/// contains `matching` (all of them for `""`).
pub(crate) fn mappings(matching: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains(matching))
        .count()
}

/// Polls `ex.stats()` until `cond` holds and returns those stats; fails
/// the test after `limit` (a bound that only turns a hang into a failure).
pub(crate) fn wait_for_stats(
    what: &str,
    ex: &loky::ProcessPoolExecutor,
    limit: std::time::Duration,
    cond: impl Fn(&loky::Stats) -> bool,
) -> loky::Stats {
    let start = std::time::Instant::now();
    loop {
        let s = ex.stats();
        if cond(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "waited {limit:?} for {what}: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Whether tasks waiting behind a crashing one run again on this machine:
/// the worker must be able to guard the messages it reads, which takes
/// 4 KiB pages (see `loky::Error::TerminatedWorker`). Elsewhere the tests
/// that count on it skip.
pub(crate) fn reruns_supported() -> bool {
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page != 4096 {
        eprintln!("pages of {page} bytes: tasks behind a crash fail with it; skipped");
    }
    page == 4096
}
