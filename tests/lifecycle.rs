//! Worker lifecycle: stopping running tasks, time limits, idle timeout,
//! recycling, resizing, the reusable executor, nesting.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use loky::{get_reusable_executor, Error, Pinning, ProcessPoolExecutor, ReusableExecutorBuilder};

mod support;

const HANG: Duration = Duration::from_secs(60);

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn spin_forever(_: ()) -> u32 {
    loop {
        std::hint::spin_loop();
    }
}

/// The length of a `Vec<u8>` argument whose task message (its 16-byte
/// header, the bytes, rkyv's 8-byte vector root) is exactly the largest a
/// default 1 MiB ring takes inline: half the ring, less one frame header.
const HALF_RING_ARG: usize = (1 << 19) - 16 - 16 - 8;

fn hold_then_len(v: Vec<u8>) -> usize {
    std::thread::sleep(Duration::from_millis(500));
    v.len()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `path`, then spins for ever.
fn mark_then_spin(path: String) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    spin_forever(())
}

#[test]
fn kill_stops_a_running_task_and_the_pool_heals() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let before = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-spin-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let f = ex
        .submit(mark_then_spin, marker.to_string_lossy().into_owned())
        .unwrap();
    // `running()` means handed to a worker; the marker, that it started.
    wait_until("the task to start", || marker.exists());
    let _ = std::fs::remove_file(&marker);
    assert!(f.running());
    assert!(!f.cancel(), "cancel() keeps the concurrent.futures meaning");
    assert!(f.kill());
    assert!(matches!(f.result_timeout(HANG), Err(Error::Cancelled)));
    let after = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    assert_ne!(before, after, "a new worker replaced the killed one");
    assert!(!f.kill(), "nothing to kill any more");
    assert_eq!(ex.stats().crashed, 0, "a kill we asked for is not a crash");
}

/// A pool of one whose worker runs a 1 s task with a task queued
/// behind it in its ring (one that writes a marker file, with time limit
/// `limit`), stopped by `stop` (which returns the error it expects); checks
/// that the stopped task never runs and that the worker was not killed.
fn stop_a_waiting_task(
    name: &str,
    limit: Duration,
    stop: impl FnOnce(&loky::Future<u32>) -> Error,
) {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let worker = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // Long enough for the manager to act on a 100 ms limit on a loaded
    // machine before it ends.
    let running = ex.submit(pid_after_ms, 1000).unwrap();
    let path = marker.to_string_lossy().into_owned();
    let waiting = ex.submit_with_timeout(mark, path, limit).unwrap();
    wait_until("both tasks in the worker", || ex.stats().running == 2);
    let expected = stop(&waiting);
    let got = waiting.result_timeout(HANG).unwrap_err();
    assert_eq!(got.to_string(), expected.to_string());
    // The worker lives on: it finishes the running task, skips the stopped
    // one, and takes the next.
    assert_eq!(running.result_timeout(HANG).unwrap(), worker, "not killed");
    let next = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    assert_eq!(next, worker);
    assert!(!marker.exists(), "{name}: the stopped task ran");
    let s = ex.stats();
    let cancelled = u64::from(matches!(expected, Error::Cancelled));
    assert_eq!(
        (s.crashed, s.respawned, s.completed, s.failed, s.cancelled),
        (0, 0, 3, 0, cancelled),
        "{s:?}"
    );
}

#[test]
fn a_time_limit_passed_at_submit_fails_the_task_before_any_worker_runs_it() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let worker = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-late-limit-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let path = marker.to_string_lossy().into_owned();
    // The worker idles, ready: without the check at hand-over it would run
    // these (and a limit of a nanosecond lost the race to it at times).
    for limit in [Duration::ZERO, Duration::from_nanos(1)] {
        for _ in 0..20 {
            let late = ex.submit_with_timeout(mark, path.clone(), limit).unwrap();
            let got = late.result_timeout(HANG);
            assert!(matches!(got, Err(Error::TimeLimit)), "{limit:?}: {got:?}");
        }
    }
    // The same worker, in order, after all of them: they never reached it.
    assert_eq!(
        ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap(),
        worker
    );
    assert!(!marker.exists(), "a task out of time at submit ran");
    let s = ex.stats();
    assert_eq!((s.submitted, s.completed, s.crashed), (42, 2, 0), "{s:?}");
}

fn pid_after_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Writes `path` (the proof that the task ran); its pid.
fn mark(path: String) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    std::process::id()
}

#[test]
fn a_task_killed_while_it_waits_in_a_workers_ring_never_runs() {
    stop_a_waiting_task("kill", Duration::from_secs(3600), |f| {
        assert!(!f.cancel(), "handed to the worker already");
        assert!(f.kill());
        Error::Cancelled
    });
}

#[test]
fn a_task_withdrawn_while_it_waits_in_a_workers_ring_never_runs() {
    stop_a_waiting_task("withdraw", Duration::from_secs(3600), |f| {
        assert!(f.withdraw());
        assert!(!f.withdraw(), "withdrawn already");
        Error::Cancelled
    });
}

#[test]
fn a_running_task_is_not_withdrawn() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let worker = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-not-withdrawn-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let f = ex
        .submit(
            mark_then_pid_after_ms,
            (marker.to_string_lossy().into_owned(), 200),
        )
        .unwrap();
    wait_until("the task to start", || marker.exists());
    assert!(!f.withdraw(), "it runs: left to finish");
    assert_eq!(
        f.result_timeout(HANG).unwrap(),
        worker,
        "finished, not killed"
    );
    assert_eq!(ex.stats().cancelled, 0);
    let _ = std::fs::remove_file(&marker);
}

/// Writes `path`, then sleeps `ms`; its pid.
fn mark_then_pid_after_ms((path, ms): (String, u64)) -> u32 {
    std::fs::write(path, b"started").unwrap();
    pid_after_ms(ms)
}

#[test]
fn a_task_killed_as_soon_as_it_is_handed_over_never_runs() {
    // Killed before the worker even started the task in front of it: the
    // withdrawal must outlive that start.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let mut worker = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-soon-{}", std::process::id()));
    let mut killed = 0;
    for round in 0..200 {
        let _ = std::fs::remove_file(&marker);
        let front = ex.submit(pid_after_ms, 1).unwrap();
        let path = marker.to_string_lossy().into_owned();
        let behind = ex.submit(mark, path).unwrap();
        if !behind.kill() {
            // This thread was held up past both tasks: nothing to stop.
            assert_eq!(behind.result_timeout(HANG).unwrap(), worker);
            continue;
        }
        let outcome = behind.result_timeout(HANG);
        assert_eq!(front.result_timeout(HANG).unwrap(), worker, "round {round}");
        // The next task runs after the skipped one would have.
        let next = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
        if next != worker {
            // It had started (this thread was held up past the first one):
            // stopped by killing its worker, as a running task is (or it
            // finished first, and kept its value).
            worker = next;
            continue;
        }
        assert!(
            matches!(outcome, Err(Error::Cancelled)),
            "round {round}: {outcome:?}"
        );
        killed += 1;
        assert!(!marker.exists(), "round {round}: the killed task ran");
    }
    let _ = std::fs::remove_file(&marker);
    assert!(killed > 0, "no round withdrew its task in time");
    assert_eq!(ex.stats().crashed, 0);
}

#[test]
fn a_task_killed_before_an_idle_worker_starts_it_never_runs() {
    // Handed straight to an idle worker and killed at once: withdrawn if
    // the worker has not started it (no kill, no new worker), else stopped
    // by killing the worker. Either way a cancelled task that ran is a bug.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let mut worker = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-idle-{}", std::process::id()));
    let mut withdrawn = 0;
    for round in 0..200 {
        let _ = std::fs::remove_file(&marker);
        let f = ex
            .submit(mark, marker.to_string_lossy().into_owned())
            .unwrap();
        let stopped = f.kill();
        let outcome = f.result_timeout(HANG);
        // Never a worker we are killing: it takes no new task.
        let next = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
        if !stopped {
            assert_eq!(outcome.unwrap(), worker, "round {round}: finished first");
        } else if next == worker {
            assert!(
                matches!(outcome, Err(Error::Cancelled)),
                "round {round}: {outcome:?}"
            );
            assert!(!marker.exists(), "round {round}: the withdrawn task ran");
            withdrawn += 1;
        } else {
            // Started already: its worker was killed.
            worker = next;
        }
    }
    let _ = std::fs::remove_file(&marker);
    assert!(withdrawn > 0, "no round withdrew its task in time");
    assert_eq!(ex.stats().crashed, 0);
}

#[test]
fn a_task_whose_time_limit_falls_while_it_waits_in_a_workers_ring_never_runs() {
    // Nothing to do: the limit falls while the task waits.
    stop_a_waiting_task("limit", Duration::from_millis(100), |_| Error::TimeLimit);
}

/// Writes its pid to `path`, then spins for ever.
fn write_pid_then_spin(path: String) -> u32 {
    std::fs::write(path, std::process::id().to_string()).unwrap();
    spin_forever(())
}

/// Kills the pool's workers if the test fails, so that a worker left
/// spinning turns into a failure rather than a hang (dropping the last
/// handle waits for the workers' tasks).
struct KillOnFailure<'a>(&'a ProcessPoolExecutor);

impl Drop for KillOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.shutdown(false, true, true);
        }
    }
}

#[test]
fn a_task_past_its_time_limit_fails_with_timeout() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let _kill = KillOnFailure(&ex);
    let marker = std::env::temp_dir().join(format!("loky-limit-{}", std::process::id()));
    // A limit that falls before the task starts stops it without a kill:
    // try again until the spinning task did start (the first round, but
    // on a loaded machine).
    let mut spinner = None;
    for _round in 0..50 {
        let _ = std::fs::remove_file(&marker);
        let slow = ex
            .submit_with_timeout(
                write_pid_then_spin,
                marker.to_string_lossy().into_owned(),
                Duration::from_millis(100),
            )
            .unwrap();
        let fast = ex
            .submit_with_timeout(|x: u32| x * 2, 21, Duration::from_secs(30))
            .unwrap();
        assert!(matches!(slow.result_timeout(HANG), Err(Error::TimeLimit)));
        assert_eq!(fast.result_timeout(HANG).unwrap(), 42);
        // (Unreadable or partly written: killed before it wrote its pid.)
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            spinner = Some(pid);
            break;
        }
    }
    let _ = std::fs::remove_file(&marker);
    let spinner = spinner.expect("the spinning task never started before its limit");
    // It ran past its limit: its worker was killed (and reaped) and
    // replaced, with the other worker there to take the other tasks.
    wait_until("the spinning worker to be killed", || {
        !std::path::Path::new(&format!("/proc/{spinner}")).exists()
    });
    assert!(!ex.worker_pids().contains(&spinner));
    wait_until("the killed worker to be replaced", || {
        ex.stats().respawned >= 1
    });
    assert_eq!(
        ex.submit(|x: u8| x, 3)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        3
    );
}

#[test]
fn time_limits_fall_in_time_order_not_in_submit_order() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let long = ex
        .submit_with_timeout(spin_forever, (), Duration::from_secs(3600))
        .unwrap();
    // Many finished tasks with limits in between leave nothing behind that
    // fires or delays the next limit.
    for i in 0..1000u32 {
        let f = ex
            .submit_with_timeout(|x: u32| x + 1, i, Duration::from_secs(1800))
            .unwrap();
        assert_eq!(f.result_timeout(HANG).unwrap(), i + 1);
    }
    let short = ex
        .submit_with_timeout(spin_forever, (), Duration::from_millis(100))
        .unwrap();
    assert!(matches!(short.result_timeout(HANG), Err(Error::TimeLimit)));
    assert!(
        !long.done(),
        "the earlier-submitted, longer limit has not fallen"
    );
    assert!(long.kill());
    assert!(matches!(long.result_timeout(HANG), Err(Error::Cancelled)));
}

#[test]
fn idle_workers_exit_and_come_back_on_demand() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .idle_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    wait_until("idle workers to exit", || ex.stats().workers_alive == 0);
    assert_eq!(
        ex.submit(|x: u64| x + 1, 1)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        2
    );
    assert!(ex.stats().workers_alive >= 1);
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..9)
        .map(|_| ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap())
        .collect();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    for w in pids.chunks(3) {
        assert!(
            w.iter().all(|p| *p == w[0]),
            "each worker serves exactly 3 tasks: {pids:?}"
        );
    }
}

#[test]
fn max_tasks_per_child_holds_for_a_burst_of_tasks() {
    // Submitted at once, tasks wait in the workers' rings (prefetch): a
    // worker must not be handed one past its last.
    for (workers, n) in [(1, 1), (1, 3), (2, 2)] {
        let ex = ProcessPoolExecutor::builder()
            .max_workers(workers)
            .max_tasks_per_child(n)
            .build()
            .unwrap();
        let futures: Vec<_> = (0..12).map(|_| ex.submit(pid, ()).unwrap()).collect();
        let mut per_worker = std::collections::BTreeMap::<u32, u64>::new();
        for f in futures {
            *per_worker
                .entry(f.result_timeout(HANG).unwrap())
                .or_default() += 1;
        }
        assert!(
            per_worker.values().all(|&ran| ran <= n),
            "{workers} workers, max_tasks_per_child({n}): tasks per worker {per_worker:?}"
        );
        assert_eq!(per_worker.values().sum::<u64>(), 12);
    }
}

#[test]
fn memory_limit_retires_a_worker_that_grew() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .memory_limit(200 << 20)
        .build()
        .unwrap();
    let first = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    // Grow the worker's heap past the limit and keep it.
    let grown = ex
        .submit(
            |mb: usize| {
                let v = vec![1u8; mb << 20];
                std::mem::forget(v);
                std::process::id()
            },
            300,
        )
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(grown, first, "the task itself completes on the same worker");
    let next = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    assert_ne!(next, first, "the bloated worker was replaced");
}

/// The reusable executor is process-wide: a test that asks for it with
/// its own configuration would replace, or resize, the one another test
/// holds. The tests that use it take this first.
static REUSABLE: Mutex<()> = Mutex::new(());

fn reusable_alone() -> MutexGuard<'static, ()> {
    // One failed test does not fail the others.
    REUSABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn reusable_executor_reuses_resizes_and_replaces() {
    let _alone = reusable_alone();
    let a = get_reusable_executor().max_workers(2).get().unwrap();
    let b = get_reusable_executor().max_workers(2).get().unwrap();
    assert!(a.same_pool(&b));
    assert_eq!(
        a.submit(|x: u64| x + 1, 1)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        2
    );

    // Only max_workers differs: resized in place.
    let c = get_reusable_executor().max_workers(1).get().unwrap();
    assert!(c.same_pool(&a));
    assert_eq!(c.max_workers(), 1);
    wait_until("shrink to 1 worker", || c.stats().workers_alive == 1);
    let d = get_reusable_executor().max_workers(2).get().unwrap();
    assert!(d.same_pool(&a));
    wait_until("grow to 2 workers", || d.stats().workers_alive == 2);

    // Shrinking while each worker's task ring is full (a running task and
    // one waiting, each half the ring): no room for the exit message. The
    // retiring worker gets it once its running task's message is released,
    // and exits after its tasks: none of them fails. A fresh pool: its
    // rings are empty, so two half-ring messages fill each one exactly.
    let fresh = get_reusable_executor()
        .max_workers(2)
        .env("LOKY_SHRINK_TEST", "1")
        .get()
        .unwrap();
    assert!(!fresh.same_pool(&a));
    let held: Vec<_> = (0..4)
        .map(|_| {
            fresh
                .submit(hold_then_len, vec![7u8; HALF_RING_ARG])
                .unwrap()
        })
        .collect();
    // (A worker still starting takes one task; the manager's next round
    // gives it its second, well before the first ends.)
    wait_until("both workers hold two tasks", || fresh.stats().running == 4);
    let shrunk = get_reusable_executor()
        .max_workers(1)
        .env("LOKY_SHRINK_TEST", "1")
        .get()
        .unwrap();
    assert!(shrunk.same_pool(&fresh));
    for f in held {
        assert_eq!(f.result_timeout(HANG).unwrap(), HALF_RING_ARG);
    }
    wait_until("shrink to 1 worker", || shrunk.stats().workers_alive == 1);
    let s = shrunk.stats();
    assert_eq!((s.crashed, s.respawned), (0, 0), "{s:?}");

    // Another configuration: a new executor; the old handle still works.
    let e = get_reusable_executor()
        .max_workers(2)
        .env("LOKY_REUSE_TEST", "1")
        .get()
        .unwrap();
    assert!(!e.same_pool(&a));
    assert_eq!(
        a.submit(|x: u64| x * 3, 3)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        9
    );
    assert_eq!(
        e.submit(
            |_: ()| std::env::var("LOKY_REUSE_TEST").unwrap_or_default(),
            ()
        )
        .unwrap()
        .result_timeout(HANG)
        .unwrap(),
        "1"
    );

    // A shut-down executor is replaced.
    e.shutdown(true, false, false);
    let f = get_reusable_executor()
        .max_workers(2)
        .env("LOKY_REUSE_TEST", "1")
        .get()
        .unwrap();
    assert!(!f.same_pool(&e));
    assert_eq!(
        f.submit(|x: u8| x, 5)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        5
    );

    // Replaced with kill_workers: the old executor's queued tasks are
    // cancelled, and their callbacks may ask for the reusable executor.
    // Enough to fill both workers' rings, so the last one waits in the
    // parent's queue; they wait on a gate that never opens, so that only
    // the kill ends them.
    let gate = support::Gate::closed("reusable-kill");
    let busy: Vec<_> = (0..8)
        .map(|_| f.submit(support::wait_for_gate, gate.path()).unwrap())
        .collect();
    let queued = f.submit(|x: u8| x, 6).unwrap();
    assert!(f.stats().queued > 0, "{:?}", f.stats());
    let (tx, rx) = std::sync::mpsc::channel();
    queued.add_done_callback(move |r| {
        let again = get_reusable_executor()
            .max_workers(1)
            .get()
            .map(|ex| ex.max_workers());
        let _ = tx.send((matches!(r, Err(Error::Cancelled)), again.ok()));
    });
    let (gtx, grx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let g = get_reusable_executor()
            .max_workers(1)
            .kill_workers(true)
            .get()
            .map(|g| g.max_workers());
        let _ = gtx.send(g.ok());
    });
    assert_eq!(grx.recv_timeout(HANG).expect("get() returned"), Some(1));
    let (cancelled, again) = rx.recv_timeout(HANG).expect("the callback ran");
    assert!(cancelled, "a queued task of a killed executor does not run");
    assert_eq!(again, Some(1));
    // Those its workers held (at least one: a worker ran the task above;
    // at most two each) fail with the shutdown, those still in the
    // parent's queue are cancelled.
    let (mut shut, mut dropped) = (0, 0);
    for t in busy {
        match t.result_timeout(HANG) {
            Err(Error::ShutdownExecutor) => shut += 1,
            Err(Error::Cancelled) => dropped += 1,
            r => panic!("not killed with its executor: {r:?}"),
        }
    }
    assert!(
        (1..=4).contains(&shut),
        "{shut} held by the workers, {dropped} queued"
    );
    wait_until("the old executor's workers to be gone", || {
        f.stats().workers_alive == 0
    });
    drop(gate);

    // Many threads, different configurations at once: never a spurious
    // ShutdownExecutor (Python loky #458).
    std::thread::scope(|s| {
        for t in 0..8usize {
            s.spawn(move || {
                for i in 0..10u64 {
                    let ex = get_reusable_executor()
                        .max_workers(1 + (t + i as usize) % 2)
                        .get()
                        .unwrap();
                    assert_eq!(
                        ex.submit(|x: u64| x + 1, i)
                            .unwrap()
                            .result_timeout(HANG)
                            .unwrap(),
                        i + 1
                    );
                }
            });
        }
    });
}

type Options = fn(ReusableExecutorBuilder) -> ReusableExecutorBuilder;

/// The reusable executor with `options`, asked for with two workers, then
/// one, then two again: the same pool each time, resized in place (only
/// `max_workers` differs, within the cpu_count() it may grow to).
fn reusable_with(options: Options) -> ProcessPoolExecutor {
    let two = options(get_reusable_executor().max_workers(2))
        .get()
        .unwrap();
    let one = options(get_reusable_executor().max_workers(1))
        .get()
        .unwrap();
    let again = options(get_reusable_executor().max_workers(2))
        .get()
        .unwrap();
    assert!(
        one.same_pool(&two) && again.same_pool(&two),
        "the same options with another max_workers give the same pool"
    );
    assert_eq!(two.max_workers(), 2);
    two
}

#[test]
fn reusable_envs_that_give_the_same_environment_are_the_same_pool() {
    let _alone = reusable_alone();
    let a = get_reusable_executor()
        .max_workers(1)
        .env("LOKY_TEST_ENV_A", "0")
        .env("LOKY_TEST_ENV_B", "1")
        .env("LOKY_TEST_ENV_A", "2")
        .get()
        .unwrap();
    // Another order, and no overridden value: the workers see the same.
    let b = get_reusable_executor()
        .max_workers(1)
        .env("LOKY_TEST_ENV_B", "1")
        .env("LOKY_TEST_ENV_A", "2")
        .get()
        .unwrap();
    assert!(a.same_pool(&b));
    let seen = b
        .submit(
            |_: ()| std::env::var("LOKY_TEST_ENV_A").unwrap_or_default(),
            (),
        )
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(seen, "2", "the last value given wins");
    let c = get_reusable_executor()
        .max_workers(1)
        .env("LOKY_TEST_ENV_A", "3")
        .env("LOKY_TEST_ENV_B", "1")
        .get()
        .unwrap();
    assert!(!c.same_pool(&b), "another value is another pool");
}

#[test]
fn each_reusable_option_sets_its_pool_apart() {
    let _alone = reusable_alone();
    // Each option at two values, the first one not its default.
    let options: [(&str, Options, Options); 6] = [
        ("prefetch", |b| b.prefetch(false), |b| b.prefetch(true)),
        (
            "hard_memory_limit",
            |b| b.hard_memory_limit(1 << 40),
            |b| b.hard_memory_limit(1 << 41),
        ),
        (
            "pin",
            |b| b.pin(Pinning::Cores),
            |b| b.pin(Pinning::PhysicalCores),
        ),
        (
            "ring_capacity",
            |b| b.ring_capacity(1 << 16),
            |b| b.ring_capacity(1 << 17),
        ),
        (
            "arena_limit",
            |b| b.arena_limit(1 << 20),
            |b| b.arena_limit(2 << 20),
        ),
        (
            "spin",
            |b| b.spin(Duration::ZERO),
            |b| b.spin(Duration::from_micros(10)),
        ),
    ];
    for (name, first, second) in options {
        let plain = reusable_with(|b| b);
        let a = reusable_with(first);
        assert!(
            !a.same_pool(&plain),
            "{name} set: another pool than the default"
        );
        let b = reusable_with(second);
        assert!(!b.same_pool(&a), "{name} changed: another pool");
        assert_eq!(
            b.submit(|x: u64| x + 1, 1)
                .unwrap()
                .result_timeout(HANG)
                .unwrap(),
            2,
            "{name}: the new pool runs tasks"
        );
    }
}

#[test]
fn reusable_prefetch_false_keeps_short_tasks_from_waiting_behind_a_long_one() {
    let _alone = reusable_alone();
    let ex = reusable_with(|b| b.prefetch(false));
    // With prefetching (the default) one of the 4 waits behind the long
    // task: see `with_prefetch_a_task_may_wait_behind_a_long_one` in api.rs.
    assert_eq!(
        support::short_tasks_done_beside_a_held_one(&ex, "reusable-prefetch"),
        4
    );
}

#[test]
fn reusable_arena_limit_is_its_arenas_limit() {
    let _alone = reusable_alone();
    let ex = reusable_with(|b| b.arena_limit(1 << 20));
    assert_eq!(ex.shared_memory().limit, 1 << 20);
    assert!(matches!(
        loky::SharedVec::<u8>::zeroed(&ex, 2 << 20),
        Err(Error::ArenaFull { .. })
    ));
}

/// A task: the soft `RLIMIT_DATA` of its worker (`None`: unlimited).
fn data_limit(_: ()) -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Data).current
}

#[test]
fn reusable_hard_memory_limit_caps_each_workers_heap() {
    let _alone = reusable_alone();
    // Far above what a worker uses: it only has to be seen.
    let ex = reusable_with(|b| b.hard_memory_limit(1 << 40));
    let limits: Vec<_> = ex
        .map(data_limit, [(); 8])
        .chunksize(1)
        .map(Result::unwrap)
        .collect();
    assert!(limits.iter().all(|&l| l == Some(1 << 40)), "{limits:?}");
}

#[test]
fn reusable_pin_pins_each_worker_to_one_cpu() {
    let _alone = reusable_alone();
    let mask = loky::topology::affinity_cpus();
    if mask.len() < 2 {
        eprintln!("one CPU: a pinned worker looks like an unpinned one; skipped");
        return;
    }
    let cpus_seen = |_: ()| loky::topology::affinity_cpus().len();
    let pinned = reusable_with(|b| b.pin(Pinning::Cores));
    let seen: Vec<usize> = pinned
        .map(cpus_seen, [(); 8])
        .chunksize(1)
        .map(Result::unwrap)
        .collect();
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    // The default leaves them the whole mask: the check above can fail.
    let plain = reusable_with(|b| b);
    let seen = plain
        .submit(cpus_seen, ())
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(seen, mask.len());
}

#[test]
fn nested_pools_work_and_depth_is_limited() {
    fn inner(x: u64) -> u64 {
        let ex = ProcessPoolExecutor::new(1).unwrap();
        ex.submit(|y: u64| y * 10, x).unwrap().result().unwrap()
    }
    let ex = ProcessPoolExecutor::new(1).unwrap();
    assert_eq!(
        ex.submit(inner, 4).unwrap().result_timeout(HANG).unwrap(),
        40
    );

    fn recurse(depth: u32) -> Result<u32, String> {
        match ProcessPoolExecutor::new(1) {
            Ok(ex) => ex
                .submit(recurse, depth + 1)
                .map_err(|e| e.to_string())?
                .result()
                .map_err(|e| e.to_string())?,
            Err(e) => Err(format!("{depth}: {e}")),
        }
    }
    let err = ex
        .submit(recurse, 1)
        .unwrap()
        .result_timeout(HANG)
        .unwrap()
        .unwrap_err();
    assert!(err.contains("nested"), "{err}");
}

/// When process `pid` started (clock ticks after boot), while it exists,
/// a zombie included: with the pid, it tells one process from a later one
/// that reuses the pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses, which may hold
    // anything); the start time is the 22nd field.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[test]
fn shutdown_with_wait_returns_once_every_worker_has_exited() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    // Both workers busy when the shutdown comes: it waits for their tasks,
    // then for the processes to end.
    let busy: Vec<_> = (0..4).map(|_| ex.submit(sleep_ms, 200).unwrap()).collect();
    wait_until("both workers to start", || ex.worker_pids().len() == 2);
    let workers: Vec<(u32, u64)> = ex
        .worker_pids()
        .into_iter()
        .map(|p| (p, start_time(p).expect("a worker's /proc entry")))
        .collect();
    ex.shutdown(true, false, false);
    for &(pid, started) in &workers {
        assert_ne!(
            start_time(pid),
            Some(started),
            "worker {pid} is still there (running or a zombie) after shutdown(wait = true)"
        );
    }
    for f in &busy {
        assert_eq!(f.result_timeout(HANG).unwrap(), 200);
    }
    assert_eq!(ex.stats().workers_alive, 0);
}

#[test]
fn killing_a_running_task_runs_the_task_waiting_behind_it_again() {
    if !support::reruns_supported() {
        return;
    }
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let before = ex.submit(pid, ()).unwrap().result_timeout(HANG).unwrap();
    let marker = std::env::temp_dir().join(format!("loky-kill-front-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let running = ex
        .submit(mark_then_spin, marker.to_string_lossy().into_owned())
        .unwrap();
    let behind = ex.submit(pid, ()).unwrap();
    wait_until("the first task to start", || marker.exists());
    let _ = std::fs::remove_file(&marker);
    assert_eq!(
        ex.stats().running,
        2,
        "the second waits in the worker's ring"
    );
    assert!(running.kill());
    assert!(matches!(
        running.result_timeout(HANG),
        Err(Error::Cancelled)
    ));
    let ran_on = behind
        .result_timeout(HANG)
        .expect("the task behind the killed one runs again");
    assert_ne!(ran_on, before, "on the replacement worker");
    let s = ex.stats();
    assert_eq!((s.crashed, s.rerun, s.cancelled), (0, 1, 1), "{s:?}");
}

/// Set in the copy of this test binary that
/// [`a_low_open_file_limit_still_starts_workers`] runs under a low limit.
const LOW_NOFILE: &str = "LOKY_TEST_LOW_NOFILE";

#[test]
fn a_low_open_file_limit_still_starts_workers() {
    if std::env::var_os(LOW_NOFILE).is_some() {
        // The copy: a pool of 2 under a limit of 64 descriptors (a worker
        // start moved descriptors to 512 and up, and failed below 513).
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let sum: u64 = ex.map(|x: u64| x + 1, 0..100).map(|r| r.unwrap()).sum();
        assert_eq!(sum, 5050);
        // Both workers start (the map may have needed only one).
        let start = Instant::now();
        while ex.stats().workers_alive < 2 {
            assert!(start.elapsed() < HANG, "the second worker never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut copy = std::process::Command::new(std::env::current_exe().unwrap());
    copy.args([
        "--exact",
        "a_low_open_file_limit_still_starts_workers",
        "--test-threads=1",
    ])
    .env(LOW_NOFILE, "1");
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one system call (async-signal-safe) on a local struct.
    unsafe {
        copy.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = copy.output().unwrap();
    assert!(
        out.status.success(),
        "the copy under `ulimit -n 64` failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_killed_map_frees_the_worker_its_endless_item_held() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    // Item 3 marks its start, then waits on a gate nobody opens (a minute,
    // for this test: endless).
    let (started, never) = (
        support::Gate::closed("killed-map-started"),
        support::Gate::closed("killed-map-never"),
    );
    let items = (0..10).map(|i| {
        if i == 3 {
            (started.path(), never.path())
        } else {
            (String::new(), String::new())
        }
    });
    let mut m = ex.map(support::mark_start_then_wait, items).chunksize(1);
    assert_eq!(m.next().unwrap().unwrap(), 1);
    let start = Instant::now();
    while !started.is_open() {
        assert!(start.elapsed() < HANG, "item 3 never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A drop would leave item 3 running; kill stops its worker.
    m.kill();
    assert_eq!(
        ex.submit(|x: u64| x + 1, 1)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        2
    );
    // Dropping the executor waits for its workers: none is stuck.
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(ex);
        let _ = done.send(());
    });
    assert!(
        dropped.recv_timeout(Duration::from_secs(20)).is_ok(),
        "the executor's drop still waits for the endless item"
    );
}
