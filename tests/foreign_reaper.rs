//! A program that reaps child processes itself: it ignores `SIGCHLD` (the
//! kernel then reaps children as they exit) or a thread of it loops on
//! `waitpid(-1, ..)`, as supervisors and schedulers that start their own
//! subprocesses do. Either may take a worker's exit status before the
//! pool's watchdog does. A worker's death must still read as what the
//! kernel says, or as `ExitStatus::Unknown`, never as a made-up exit code;
//! and a worker that retires as told must not count as a crash.
//!
//! Both set-ups hold for the whole process, so each test re-runs itself in
//! a fresh copy of this binary and sets its reaper up there first.

use std::time::Duration;

use loky::{Error, ExitStatus, ProcessPoolExecutor};

mod support;

/// Set in the copy of this binary that a test re-runs itself as.
const CHILD: &str = "LOKY_TEST_FOREIGN_REAPER";

/// Who reaps the workers besides the pool.
#[derive(Clone, Copy)]
enum Reaper {
    /// `SIGCHLD` ignored: the kernel reaps each child as it exits.
    IgnoreSigchld,
    /// A thread that waits for any child, for ever.
    WaitAnyThread,
}

impl Reaper {
    fn install(self) {
        match self {
            // SAFETY: `signal` with `SIG_IGN` installs no handler; it only
            // changes this process's disposition of SIGCHLD.
            Self::IgnoreSigchld => unsafe {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            },
            Self::WaitAnyThread => {
                std::thread::spawn(|| loop {
                    let mut status = 0;
                    // SAFETY: `waitpid` writes only `status`.
                    if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
                        // No child right now (ECHILD): look again soon.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
        }
    }
}

/// Runs `body` in a fresh process of this binary (the test `name` run
/// again there) with `reaper` installed, and fails if it fails there.
fn in_own_process(name: &str, reaper: Reaper, body: fn()) {
    if std::env::var_os(CHILD).is_some() {
        no_core_dumps();
        reaper.install();
        body();
        println!("CHILD OK");
        return;
    }
    support::rerun_in_child(name, CHILD, "1", |_| {});
}

/// Aborting workers dump no core (the limit is inherited by the workers
/// spawned afterwards).
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call on a valid struct; only lowers a limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn abort_task(_: ()) -> u64 {
    std::process::abort()
}

fn inc(x: u64) -> u64 {
    x + 1
}

/// `n` tasks that abort their worker each fail with `TerminatedWorker`
/// whose status is SIGABRT or unknown, never an exit code; each death is
/// one crash; the pool then runs tasks as before.
fn aborts_read_as_sigabrt_or_unknown(n: u64) {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let (mut abrt, mut unknown) = (0, 0);
    for _ in 0..n {
        match ex.submit(abort_task, ()).unwrap().result() {
            Err(Error::TerminatedWorker {
                status: ExitStatus::Signaled { signal, .. },
                ..
            }) if signal == libc::SIGABRT => abrt += 1,
            Err(Error::TerminatedWorker {
                status: ExitStatus::Unknown,
                ..
            }) => unknown += 1,
            other => panic!("an abort read as {other:?}"),
        }
    }
    println!("SIGABRT {abrt}, unknown {unknown}");
    let s = support::wait_for_stats("every death counted", &ex, Duration::from_secs(30), |s| {
        s.crashed >= n
    });
    assert_eq!(s.crashed, n, "{s:?}");
    for i in 0..20 {
        assert_eq!(ex.submit(inc, i).unwrap().result().unwrap(), i + 1);
    }
}

/// A worker retiring after each of `n` tasks (`max_tasks_per_child(1)`)
/// is no crash, whoever reaped it.
fn retirements_are_no_crashes(n: u64) {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    for i in 0..n {
        assert_eq!(ex.submit(inc, i).unwrap().result().unwrap(), i + 1);
    }
    // Each retired worker is replaced once the watchdog has buried it.
    let s = support::wait_for_stats("every retirement seen", &ex, Duration::from_secs(30), |s| {
        s.respawned >= n
    });
    assert_eq!(s.crashed, 0, "retirements counted as crashes: {s:?}");
}

/// Workers retiring for being idle (`idle_timeout`) are no crashes either.
fn idle_retirements_are_no_crashes() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .idle_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    for i in 0..4 {
        assert_eq!(ex.submit(inc, i).unwrap().result().unwrap(), i + 1);
    }
    let s = support::wait_for_stats("idle workers retired", &ex, Duration::from_secs(30), |s| {
        s.workers_alive == 0
    });
    assert_eq!(s.crashed, 0, "idle retirements counted as crashes: {s:?}");
    // And they come back on demand.
    assert_eq!(ex.submit(inc, 41).unwrap().result().unwrap(), 42);
}

#[test]
fn with_sigchld_ignored_a_dead_worker_s_status_is_real_or_unknown() {
    in_own_process(
        "with_sigchld_ignored_a_dead_worker_s_status_is_real_or_unknown",
        Reaper::IgnoreSigchld,
        || {
            support::bounded(Duration::from_secs(60), || {
                aborts_read_as_sigabrt_or_unknown(100)
            })
        },
    );
}

#[test]
fn with_sigchld_ignored_retiring_workers_are_no_crashes() {
    in_own_process(
        "with_sigchld_ignored_retiring_workers_are_no_crashes",
        Reaper::IgnoreSigchld,
        || {
            support::bounded(Duration::from_secs(60), || {
                retirements_are_no_crashes(20);
                idle_retirements_are_no_crashes();
            })
        },
    );
}

#[test]
fn with_a_thread_reaping_any_child_deaths_and_retirements_read_right() {
    in_own_process(
        "with_a_thread_reaping_any_child_deaths_and_retirements_read_right",
        Reaper::WaitAnyThread,
        || {
            support::bounded(Duration::from_secs(60), || {
                aborts_read_as_sigabrt_or_unknown(50);
                retirements_are_no_crashes(20);
            })
        },
    );
}
