//! `executor.stats()` counts what happened: workers alive, tasks queued and
//! running, completed, failed (panics), crashed workers and their
//! replacements, in one pool that sees all of them.

use std::path::Path;
use std::time::Duration;

use loky::{Error, ProcessPoolExecutor, Stats};

/// A hang detector, not a timing assertion.
const HANG: Duration = Duration::from_secs(60);

mod support;

fn wait_for(what: &str, ex: &ProcessPoolExecutor, cond: impl Fn(&Stats) -> bool) -> Stats {
    support::wait_for_stats(what, ex, HANG, cond)
}

/// Blocks until the file `path` exists.
fn wait_for_file(path: String) -> u32 {
    while !Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::process::id()
}

#[test]
fn stats_count_completions_failures_crashes_and_respawns() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let s = wait_for("the worker", &ex, |s| s.workers_alive == 1);
    assert_eq!((s.submitted, s.queued, s.running), (0, 0, 0), "{s:?}");

    // Four tasks that block until a file appears: one worker holds some
    // (running: handed to it), the parent keeps the rest (queued).
    let gate = std::env::temp_dir()
        .join(format!("loky-stats-gate-{}", std::process::id()))
        .to_str()
        .unwrap()
        .to_owned();
    let _ = std::fs::remove_file(&gate);
    let blocked: Vec<_> = (0..4)
        .map(|_| ex.submit(wait_for_file, gate.clone()).unwrap())
        .collect();
    let s = wait_for("a task to reach the worker", &ex, |s| s.running >= 1);
    assert_eq!(s.queued + s.running, 4, "{s:?}");
    assert!(s.queued >= 1, "one worker cannot hold 4 tasks: {s:?}");
    assert_eq!((s.submitted, s.completed), (4, 0), "{s:?}");
    std::fs::write(&gate, b"").unwrap();
    for f in &blocked {
        f.result_timeout(HANG).unwrap();
    }
    std::fs::remove_file(&gate).unwrap();

    // A panic fails its task; the worker lives on.
    let panicked = ex
        .submit(|_: ()| -> u8 { panic!("on purpose") }, ())
        .unwrap();
    assert!(matches!(
        panicked.result_timeout(HANG),
        Err(Error::TaskPanicked { .. })
    ));
    // An abort kills the worker: a crash and a replacement.
    let crashed = ex
        .submit(|_: ()| -> u8 { std::process::abort() }, ())
        .unwrap();
    assert!(matches!(
        crashed.result_timeout(HANG),
        Err(Error::TerminatedWorker { .. })
    ));
    // A map is one task per chunk.
    let n = ex.map(|x: u64| x, 0..1000).chunksize(100).count();
    assert_eq!(n, 1000);

    let s = wait_for("the replacement worker", &ex, |s| s.workers_alive == 1);
    assert_eq!(s.submitted, 4 + 1 + 1 + 10, "{s:?}");
    assert_eq!(s.completed, 4 + 10, "{s:?}");
    assert_eq!(s.failed, 1, "the panic, not the crash: {s:?}");
    assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    assert_eq!((s.queued, s.running, s.cancelled), (0, 0, 0), "{s:?}");
    assert_eq!(s.aborted, 1, "the crash: {s:?}");
}

/// `submitted` is the sum of the four ends.
fn ends(s: &Stats) -> u64 {
    s.completed + s.failed + s.cancelled + s.aborted
}

#[test]
fn every_task_ends_in_exactly_one_counter() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let sleep = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    ex.submit(|x: u8| x, 0)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    // A time limit that falls while the task runs (its worker is killed).
    let limited = ex
        .submit_with_timeout(sleep, 5_000, Duration::from_millis(50))
        .unwrap();
    assert!(matches!(
        limited.result_timeout(HANG),
        Err(Error::TimeLimit)
    ));
    // A kill while it runs, a cancel while it waits.
    let running = ex.submit(sleep, 5_000).unwrap();
    let queued = ex.submit(sleep, 1).unwrap();
    let behind = ex.submit(sleep, 1).unwrap();
    wait_for("the task to run", &ex, |s| s.running >= 1);
    assert!(behind.cancel() || behind.kill());
    assert!(running.kill());
    assert!(matches!(
        running.result_timeout(HANG),
        Err(Error::Cancelled)
    ));
    queued.result_timeout(HANG).unwrap();
    // A panic, and tasks a shutdown drops without running them.
    let panicked = ex.submit(|_: ()| -> u8 { panic!("x") }, ()).unwrap();
    assert!(panicked.result_timeout(HANG).is_err());
    // Killed by the shutdown below: it must still run then.
    let blocker = ex.submit(sleep, 60_000).unwrap();
    let dropped: Vec<_> = (0..5).map(|_| ex.submit(sleep, 1).unwrap()).collect();
    ex.shutdown(false, false, true);
    for f in dropped.iter().chain([&blocker]) {
        assert!(f.result_timeout(HANG).is_err());
    }
    let s = ex.stats();
    assert_eq!(s.submitted, 12, "{s:?}");
    assert_eq!(ends(&s), s.submitted, "{s:?}");
    // The first task and `queued`; the panic; the kill and the cancel;
    // the time limit, the blocker and the dropped tasks.
    assert_eq!(
        (s.completed, s.failed, s.cancelled, s.aborted),
        (2, 1, 2, 7),
        "{s:?}"
    );
}

#[test]
fn every_cancel_is_counted_once_when_shutdown_and_cancel_race() {
    // Shutdown with `cancel_futures` takes the waiting tasks out of the
    // queue while another thread cancels their futures: each task is
    // cancelled by one of the two, and counted once, whichever won.
    for round in 0..20 {
        let ex = ProcessPoolExecutor::new(1).unwrap();
        // The worker is ready: the blocker runs, the others wait.
        ex.submit(|x: u8| x, 0)
            .unwrap()
            .result_timeout(HANG)
            .unwrap();
        let blocker = ex
            .submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 50)
            .unwrap();
        let waiting: Vec<_> = (0..200u64)
            .map(|x| ex.submit(|x: u64| x, x).unwrap())
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for f in waiting.iter().rev() {
                    f.cancel();
                }
            });
            ex.shutdown(false, true, false);
        });
        let cancelled = waiting
            .iter()
            .filter(|f| matches!(f.result_timeout(HANG), Err(Error::Cancelled)))
            .count();
        blocker.result_timeout(HANG).unwrap();
        let s = ex.stats();
        assert_eq!(s.cancelled as usize, cancelled, "round {round}: {s:?}");
        assert_eq!(ends(&s), s.submitted, "round {round}: {s:?}");
    }
}

#[test]
fn a_task_stopped_while_it_waits_in_a_ring_is_not_counted_running() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    wait_for("the worker", &ex, |s| s.workers_alive == 1);
    // Ready: from now on the worker takes a second task into its ring.
    assert_eq!(ex.submit(|x: u64| x, 1).unwrap().result().unwrap(), 1);
    let gate = support::Gate::closed("stats-withdrawn");
    let held = ex.submit(support::wait_for_gate, gate.path()).unwrap();
    let behind = ex.submit(|x: u64| x, 2).unwrap();
    wait_for("both in the worker", &ex, |s| s.running == 2);
    // Withdrawn: it ends Cancelled now, though it stays in the worker's
    // ring until the worker skips it, after the held task.
    assert!(behind.kill());
    assert!(matches!(behind.result(), Err(Error::Cancelled)));
    let s = ex.stats();
    assert_eq!((s.running, s.cancelled), (1, 1), "{s:?}");
    gate.open();
    assert_eq!(held.result_timeout(HANG).unwrap(), 1);
    let s = wait_for("the ring emptied", &ex, |s| s.running == 0);
    assert_eq!((s.completed, s.cancelled), (2, 1), "{s:?}");
}
