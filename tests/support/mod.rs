//! What the integration tests read of their own process to check that
//! nothing leaks (open descriptors and memory mappings), waits for a
//! pool's statistics or a task to reach a state, gates that hold tasks,
//! and checks shared by more than one test file.

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

/// Waits until a worker holds the task; fails the test after a minute (a
/// bound that only turns a hang into a failure).
pub(crate) fn wait_running<R: Send + 'static>(f: &loky::Future<R>) {
    let start = std::time::Instant::now();
    while !f.running() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "task never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
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

    /// Whether it was opened, here or by a task (the `started` file of
    /// [`mark_start_then_wait`]).
    #[allow(dead_code)] // not every test binary uses every helper
    pub(crate) fn is_open(&self) -> bool {
        self.0.exists()
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

/// Runs the test `name` again, alone, in a fresh process of this test
/// binary, with the environment variable `env` set to `value` (which tells
/// the test it is the child) and `configure` applied to the command
/// (resource limits...); fails unless it passed there and printed
/// `CHILD OK`. For tests that change what a whole process does (signal
/// dispositions, limits) without touching the other tests.
pub(crate) fn rerun_in_child(
    name: &str,
    env: &str,
    value: &str,
    configure: impl FnOnce(&mut std::process::Command),
) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, value);
    configure(&mut command);
    let out = bounded(std::time::Duration::from_secs(120), move || {
        command.output().unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "{name} in its own process ({env}={value}): {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A task: sleeps `ms` milliseconds, then returns its worker's pid.
pub(crate) fn nap_pid(ms: u64) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    std::process::id()
}

/// Holds one worker of `ex` (a pool of two) with a task waiting on a gate
/// (named `gate` for this test process), then submits short tasks; returns
/// how many of them finished while the long one still held its worker:
/// all 4 without prefetching, fewer with it (one waits behind the held
/// task).
pub(crate) fn short_tasks_done_beside_a_held_one(
    ex: &loky::ProcessPoolExecutor,
    gate: &str,
) -> usize {
    use std::time::{Duration, Instant};
    const HANG: Duration = Duration::from_secs(60);
    assert_eq!(ex.max_workers(), 2, "a pool of two");
    // Both workers ready (a pool whose workers are still starting hands
    // out one task each): two naps at once ran on two workers.
    let start = Instant::now();
    loop {
        let pids: std::collections::BTreeSet<u32> = ex
            .map(nap_pid, [50u64; 2])
            .chunksize(1)
            .map(Result::unwrap)
            .collect();
        if pids.len() == 2 {
            break;
        }
        assert!(start.elapsed() < HANG, "the two workers never ran at once");
    }
    let gate = Gate::closed(gate);
    let long = ex.submit(wait_for_gate, gate.path()).unwrap();
    wait_running(&long);
    // 20 ms each: the free worker is still busy with one when the next is
    // submitted, so with prefetching the next goes to the held worker.
    let short: Vec<_> = (0..4).map(|_| ex.submit(nap_pid, 20).unwrap()).collect();
    // Bounded: with prefetching, one of them waits behind the held task.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) && !short.iter().all(|f| f.done()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = short.iter().filter(|f| f.done()).count();
    assert!(!long.done(), "the gate is still closed");
    gate.open();
    assert_eq!(long.result_timeout(HANG).unwrap(), 1);
    for f in &short {
        f.result_timeout(HANG).unwrap();
    }
    done
}
