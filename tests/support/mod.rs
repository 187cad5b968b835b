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

/// A gate that tasks in the workers wait on ([`wait_for_gate`]): a file
/// that exists once the gate is open. Removed when dropped; but left open
/// when dropped by a failing test, so that the tasks still waiting end
/// (and the executor's drop, which waits for them, does not wait long).
pub(crate) struct Gate(std::path::PathBuf);

impl Gate {
    /// A closed gate, named `name` for this test process.
    pub(crate) fn closed(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("loky-gate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// What to send to a task that calls [`wait_for_gate`].
    pub(crate) fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// Lets the tasks waiting on it go on.
    pub(crate) fn open(&self) {
        std::fs::write(&self.0, b"open").expect("open the gate");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::fs::write(&self.0, b"open");
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A task: waits until the gate at `path` is open (not at all for an empty
/// path), for at most a minute (so that a failed test does not leave a
/// worker waiting for ever); returns 1.
pub(crate) fn wait_for_gate(path: String) -> u64 {
    let start = std::time::Instant::now();
    while !path.is_empty()
        && !std::path::Path::new(&path).exists()
        && start.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    1
}

/// A task: creates the file `started` (unless the path is empty), then
/// waits on the gate at `gate` ([`wait_for_gate`]); returns 1.
pub(crate) fn mark_start_then_wait((started, gate): (String, String)) -> u64 {
    if !started.is_empty() {
        let _ = std::fs::write(started, b"started");
    }
    wait_for_gate(gate)
}

/// Runs `body` on a thread of its own and returns what it returns; a panic
/// in it is re-raised here with its own message, and a body still running
/// after `limit` fails the test (a hang becomes a failure).
#[allow(dead_code)] // not every test binary uses every helper
pub(crate) fn bounded<T: Send + 'static>(
    limit: std::time::Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    let (tx, rx) = std::sync::mpsc::channel();
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(body)));
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => {
            let _ = handle.join();
            value
        }
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!(
            "{name}: hung for {limit:?} (the pool did not heal, or a failure reported \
             above dropped an executor whose shutdown hangs)"
        ),
    }
}
