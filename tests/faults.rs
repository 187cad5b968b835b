//! The fault matrix (see `docs/faults.md`), with real faults: tasks that
//! panic, abort, segfault, overflow their stack, call `exit`, SIGKILL
//! themselves or a sibling; codecs that fail, panic or abort at each stage of
//! a round trip; failing initializers; misbehaving done-callbacks; shutdown
//! racing a crash. Each test asserts the exact error and that the pool heals
//! (the next task on the same executor succeeds).
//!
//! Nothing here may wait unbounded: every body runs under [`bounded`] (a
//! watchdog that fails the test instead of hanging, executor drop
//! included), and every result is read with a timeout.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loky::{CodecStage, Error, ExitStatus, Payload, ProcessPoolExecutor};

/// Generous bound used only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(60);

mod support;

use support::{wait_for_gate, Gate};

// ---------------------------------------------------------------------------
// Helpers

/// Runs `body` on its own thread; fails the test if it (including the drop of
/// its executors) has not finished within twice [`HANG`].
fn bounded(body: impl FnOnce() + Send + 'static) {
    support::bounded(2 * HANG, body)
}

/// Crashing workers dump no core: the limit is inherited by the workers
/// spawned afterwards.
fn no_core_dumps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system call on a valid struct; only lowers a limit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    });
}

/// A pool of `n` workers.
fn pool(n: usize) -> ProcessPoolExecutor {
    no_core_dumps();
    ProcessPoolExecutor::builder()
        .max_workers(n)
        .build()
        .expect("pool")
}

/// The pid of the worker that runs the next task (the only one in a pool of
/// one).
fn worker_pid(ex: &ProcessPoolExecutor) -> u32 {
    ex.submit(|_: ()| std::process::id(), ())
        .unwrap()
        .result_timeout(HANG)
        .expect("worker pid")
}

/// The pids of both workers of a pool of two (once both are ready).
fn two_worker_pids(ex: &ProcessPoolExecutor) -> (u32, u32) {
    fn pid_after(ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }
    for _ in 0..200 {
        let a = ex.submit(pid_after, 30).unwrap();
        let b = ex.submit(pid_after, 30).unwrap();
        let (a, b) = (
            a.result_timeout(HANG).unwrap(),
            b.result_timeout(HANG).unwrap(),
        );
        if a != b {
            return (a, b);
        }
    }
    panic!("never saw two distinct workers");
}

/// The pool heals: a new task on the same executor succeeds.
fn assert_heals(ex: &ProcessPoolExecutor) {
    let f = ex
        .submit(|x: u64| x + 1, 41)
        .expect("submit after the fault");
    assert_eq!(f.result_timeout(HANG).expect("task after the fault"), 42);
}

/// The pool's stats once it has `workers` live workers again: a dead
/// worker's replacement is counted when it starts, which may be after a
/// task already ran on the other worker.
fn stats_when_whole(ex: &ProcessPoolExecutor, workers: usize) -> loky::Stats {
    support::wait_for_stats("the replacement workers", ex, HANG, |s| {
        s.workers_alive == workers
    })
}

/// Checks that a codec error carries the codec's own message. rkyv's
/// `rancor::Error` keeps it only in builds with debug assertions (in release
/// it reads "failed without error information").
fn assert_mentions(message: &str, needle: &str) {
    if cfg!(debug_assertions) {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

/// Unpacks a `TerminatedWorker` error.
fn terminated<R: std::fmt::Debug>(r: Result<R, Error>) -> (u32, ExitStatus, u64) {
    match r {
        Err(Error::TerminatedWorker { pid, status, task }) => (pid, status, task),
        other => panic!("expected TerminatedWorker, got {other:?}"),
    }
}

fn signaled(status: ExitStatus) -> Option<i32> {
    match status {
        ExitStatus::Signaled { signal, .. } => Some(signal),
        // `ExitStatus` is non-exhaustive: `Exited`, `Unknown`, and more.
        _ => None,
    }
}

/// Submits a task that kills its worker to a fresh pool of one, and checks
/// the contract: `TerminatedWorker` naming the worker and the task, with a
/// status `want` accepts; a replacement worker; counters; the pool heals.
fn assert_crash<F, A>(f: F, arg: A, want: fn(ExitStatus) -> bool)
where
    F: Fn(A) -> u64 + Copy + Send + 'static,
    A: Payload,
{
    let ex = pool(1);
    let before = worker_pid(&ex);
    let fut = ex.submit(f, arg).unwrap();
    let (pid, status, task) = terminated(fut.result_timeout(HANG));
    assert_eq!(pid, before, "the error names the dead worker");
    assert_eq!(task, fut.id(), "the error names the task");
    assert!(want(status), "unexpected exit status: {status}");
    // The error stays in the future.
    assert!(matches!(
        fut.result_timeout(HANG),
        Err(Error::TerminatedWorker { .. })
    ));
    assert_heals(&ex);
    assert_ne!(
        worker_pid(&ex),
        before,
        "a new worker replaced the dead one"
    );
    let s = ex.stats();
    assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    assert_eq!(s.workers_alive, 1, "{s:?}");
}

fn abort_task(_: ()) -> u64 {
    std::process::abort()
}

/// Recurses until the stack runs out.
fn overflow(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    overflow(depth + 1).wrapping_add(frame[(depth % 64) as usize])
}

// ---------------------------------------------------------------------------
// A payload whose codec misbehaves on demand, at a chosen stage.

/// What a [`Fuse`] does when its `Serialize`/`Deserialize` runs.
mod mode {
    pub(crate) const OK: u8 = 0;
    pub(crate) const PANIC: u8 = 1;
    pub(crate) const ABORT: u8 = 2;
    pub(crate) const ERROR: u8 = 3;
}

/// Only `Archive` is derived; `Serialize` does what `ser` says and
/// `Deserialize` what `de` says.
#[derive(rkyv::Archive, Debug, Clone, Copy, PartialEq, Eq)]
struct Fuse {
    ser: u8,
    de: u8,
    value: u64,
}

impl Fuse {
    const fn new(ser: u8, de: u8, value: u64) -> Self {
        Self { ser, de, value }
    }
}

#[derive(Debug)]
struct FuseError(&'static str);

impl std::fmt::Display for FuseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fuse refused to {}", self.0)
    }
}

impl std::error::Error for FuseError {}

fn blow<E: rkyv::rancor::Source>(mode: u8, what: &'static str) -> Result<(), E> {
    match mode {
        mode::PANIC => panic!("fuse panicked in {what}"),
        mode::ABORT => std::process::abort(),
        mode::ERROR => Err(E::new(FuseError(what))),
        _ => Ok(()),
    }
}

impl<S> rkyv::Serialize<S> for Fuse
where
    S: rkyv::rancor::Fallible + ?Sized,
    S::Error: rkyv::rancor::Source,
{
    fn serialize(&self, _: &mut S) -> Result<FuseResolver, S::Error> {
        blow(self.ser, "serialize")?;
        Ok(FuseResolver {
            ser: (),
            de: (),
            value: (),
        })
    }
}

impl<D> rkyv::Deserialize<Fuse, D> for ArchivedFuse
where
    D: rkyv::rancor::Fallible + ?Sized,
    D::Error: rkyv::rancor::Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Fuse, D::Error> {
        blow(self.de, "deserialize")?;
        Ok(Fuse::new(self.ser, self.de, self.value.to_native()))
    }
}

// ---------------------------------------------------------------------------
// Worker, running the task

#[test]
fn panic_in_task_is_task_panicked_and_the_worker_survives() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let f = ex
            .submit(|x: u32| -> u32 { panic!("bad input {x}") }, 7)
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::TaskPanicked {
                message, location, ..
            }) => {
                assert_eq!(message, "bad input 7");
                assert!(location.contains("faults.rs"), "{location}");
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        assert_eq!(worker_pid(&ex), pid, "the same worker serves the next task");
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned, s.failed), (0, 0, 1), "{s:?}");
    });
}

#[test]
fn abort_is_terminated_worker_with_sigabrt() {
    bounded(|| assert_crash(abort_task, (), |s| signaled(s) == Some(libc::SIGABRT)));
}

#[test]
fn null_pointer_write_is_terminated_worker_with_sigsegv() {
    bounded(|| {
        assert_crash(
            |_: ()| -> u64 {
                // Near null, in the never-mapped first page, but not null
                // itself: with debug assertions, older toolchains check
                // `write_volatile`'s pointer for null and abort instead.
                let near_null = 16usize as *mut u8;
                // SAFETY: none; this is the fault under test (the worker dies).
                unsafe { near_null.write_volatile(1) };
                0
            },
            (),
            |s| signaled(s) == Some(libc::SIGSEGV),
        )
    });
}

#[test]
fn exit_zero_is_terminated_worker_with_exit_code_zero() {
    bounded(|| {
        assert_crash(
            |code: i32| -> u64 { std::process::exit(code) },
            0,
            |s| s == ExitStatus::Exited(0),
        )
    });
}

#[test]
fn exit_seven_is_terminated_worker_with_exit_code_seven() {
    bounded(|| {
        assert_crash(
            |code: i32| -> u64 { std::process::exit(code) },
            7,
            |s| s == ExitStatus::Exited(7),
        )
    });
}

#[test]
// Seen early only through the lifeline (glibc, 64-bit) and a non-zero code:
// elsewhere such a worker still holds its slot (a known limit).
#[cfg_attr(
    not(all(target_env = "gnu", target_pointer_width = "64")),
    ignore = "needs the lifeline (glibc, 64-bit)"
)]
fn a_task_that_ends_only_the_main_thread_frees_its_slot() {
    bounded(|| {
        // One worker: if its slot stayed taken, the next task would never run.
        let ex = pool(1);
        let worker = worker_pid(&ex);
        let first = ex.submit(
            |code: i64| -> u64 {
                // Another thread lives on while the main thread exits: the
                // process does not end by itself.
                std::thread::spawn(|| std::thread::sleep(Duration::from_secs(600)));
                // SAFETY: exits the calling thread only; nothing of it is
                // used afterwards.
                unsafe { libc::syscall(libc::SYS_exit, code) };
                unreachable!()
            },
            3,
        );
        let first = first.unwrap();
        let (pid, status, task) = terminated(first.result_timeout(HANG));
        assert_eq!((pid, task), (worker, first.id()));
        // The code its main thread exited with, seen as it exits; the pool
        // then kills the rest of the process, and, rarely, reaps it (which
        // reports that kill) before the early path has failed the task.
        assert!(
            status == ExitStatus::Exited(3) || signaled(status) == Some(libc::SIGKILL),
            "first task: {status}"
        );
        let next = ex.submit(|x: u64| x + 1, 1).unwrap();
        assert_eq!(next.result_timeout(Duration::from_secs(60)).unwrap(), 2);
    });
}

#[test]
fn sigkill_of_itself_is_terminated_worker_with_sigkill() {
    bounded(|| {
        assert_crash(
            |_: ()| -> u64 {
                // SAFETY: plain system calls.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
            (),
            |s| signaled(s) == Some(libc::SIGKILL),
        )
    });
}

#[test]
fn stack_overflow_is_terminated_worker_with_sigsegv() {
    // Workers never run `main`, so Rust's stack-guard handler is not
    // installed: the overflow is a plain SIGSEGV (SIGBUS on some kernels).
    bounded(|| {
        assert_crash(overflow, 0, |s| {
            matches!(signaled(s), Some(libc::SIGSEGV) | Some(libc::SIGBUS))
        })
    });
}

#[test]
fn sigkill_of_a_sibling_fails_only_the_siblings_task() {
    bounded(|| {
        let ex = pool(2);
        let pids = two_worker_pids(&ex);
        // A long task occupies one worker (started: a task its worker
        // never started would run again elsewhere)...
        let marker = std::env::temp_dir().join(format!("loky-long-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let long = ex
            .submit(
                |(path, ms): (String, u64)| -> u32 {
                    std::fs::write(path, b"started").unwrap();
                    std::thread::sleep(Duration::from_millis(ms));
                    std::process::id()
                },
                (
                    marker.to_string_lossy().into_owned(),
                    HANG.as_millis() as u64,
                ),
            )
            .unwrap();
        let start = Instant::now();
        while !marker.exists() {
            assert!(start.elapsed() < HANG, "the long task never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = std::fs::remove_file(&marker);
        // ... so the killer goes to the other (least loaded) one, and kills
        // the worker that is not itself.
        let killer = ex
            .submit(
                |pids: (u32, u32)| -> (u32, u32, i32) {
                    let me = std::process::id();
                    let victim = if pids.0 == me { pids.1 } else { pids.0 };
                    // SAFETY: plain system call.
                    let rc = unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                    (me, victim, rc)
                },
                pids,
            )
            .unwrap();
        let (killer_pid, victim, rc) = killer.result_timeout(HANG).expect("the killer succeeds");
        assert_eq!(rc, 0, "kill({victim}) failed");
        assert_ne!(killer_pid, victim);
        let (pid, status, task) = terminated(long.result_timeout(HANG));
        assert_eq!(pid, victim);
        assert_eq!(signaled(status), Some(libc::SIGKILL), "{status}");
        assert_eq!(task, long.id());
        assert_heals(&ex);
        // The dead worker was replaced: two live workers, neither the victim.
        let (a, b) = two_worker_pids(&ex);
        assert!(a != victim && b != victim, "{a} {b} {victim}");
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
        assert!(a == killer_pid || b == killer_pid, "the killer lives on");
    });
}

/// Sleeps `ms`, then aborts its worker.
fn abort_after(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::abort()
}

/// Submits `first` (which ends its worker: a crash, a time limit) to a
/// pool of one whose worker is ready, then three small tasks that wait
/// behind it in that worker's ring or in the queue; returns the first's
/// future and the others' results.
fn behind<F>(ex: &ProcessPoolExecutor, first: F) -> (loky::Future<u64>, Vec<Result<u64, Error>>)
where
    F: FnOnce(&ProcessPoolExecutor) -> loky::Future<u64>,
{
    worker_pid(ex);
    let first = first(ex);
    let others: Vec<_> = (0..3u64)
        .map(|x| ex.submit(|x: u64| x * 10, x).unwrap())
        .collect();
    let results = others.iter().map(|f| f.result_timeout(HANG)).collect();
    (first, results)
}

#[test]
fn tasks_waiting_behind_a_crash_run_on_the_replacement() {
    if !support::reruns_supported() {
        return;
    }
    bounded(|| {
        let ex = pool(1);
        let (crash, others) = behind(&ex, |ex| ex.submit(abort_after, 100).unwrap());
        let (_, status, task) = terminated(crash.result_timeout(HANG));
        assert_eq!(signaled(status), Some(libc::SIGABRT), "{status}");
        assert_eq!(task, crash.id());
        // The one that waited in the dead worker's ring never started: it
        // runs again, as do the queued ones.
        let values: Vec<u64> = others
            .into_iter()
            .map(|r| r.expect("a task behind the crash"))
            .collect();
        assert_eq!(values, [0, 10, 20]);
        // The crashing task itself was not run again (it would have killed
        // the replacement too).
        let s = stats_when_whole(&ex, 1);
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
        assert_eq!((s.submitted, s.completed), (5, 4), "{s:?}");
        // One waited in the ring (put back); two in the queue (never left it).
        assert_eq!(s.rerun, 1, "{s:?}");
    });
}

#[test]
fn tasks_waiting_behind_a_timed_out_task_run_on_the_replacement() {
    if !support::reruns_supported() {
        return;
    }
    bounded(|| {
        let ex = pool(1);
        let (slow, others) = behind(&ex, |ex| {
            ex.submit_with_timeout(
                |ms: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    ms
                },
                HANG.as_millis() as u64,
                Duration::from_millis(200),
            )
            .unwrap()
        });
        assert!(
            matches!(slow.result_timeout(HANG), Err(Error::TimeLimit)),
            "the slow task times out"
        );
        let values: Vec<u64> = others
            .into_iter()
            .map(|r| r.expect("a task behind the timed-out one"))
            .collect();
        assert_eq!(values, [0, 10, 20]);
        assert_eq!(ex.stats().rerun, 1, "{:?}", ex.stats());
    });
}

#[test]
fn a_task_that_exits_on_a_retiring_worker_is_not_taken_for_its_retirement() {
    // The worker retires after one task, but a second one already waits in
    // its ring, before the exit message: its `exit(0)` must still fail it.
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        worker_pid(&ex); // the first worker retires after this
        worker_pid(&ex); // its replacement is ready: it takes two tasks
        let first = ex
            .submit(
                |ms: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    ms
                },
                100,
            )
            .unwrap();
        let exits = ex
            .submit(|_: ()| -> u64 { std::process::exit(0) }, ())
            .unwrap();
        assert_eq!(first.result_timeout(HANG).unwrap(), 100);
        let (_, status, task) = terminated(exits.result_timeout(HANG));
        assert_eq!(status, ExitStatus::Exited(0));
        assert_eq!(task, exits.id());
        assert_heals(&ex);
    });
}

#[test]
fn a_task_timed_out_while_waiting_behind_a_crash_is_not_run_again() {
    bounded(|| {
        let ex = pool(1);
        worker_pid(&ex);
        let marker = std::env::temp_dir().join(format!("loky-not-rerun-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let crash = ex.submit(abort_after, 300).unwrap();
        // Waits in the worker's ring behind the crash; its limit falls first.
        let late = ex
            .submit_with_timeout(
                |path: String| std::fs::write(path, b"ran").is_ok(),
                marker.to_string_lossy().into_owned(),
                Duration::from_millis(50),
            )
            .unwrap();
        assert!(matches!(late.result_timeout(HANG), Err(Error::TimeLimit)));
        terminated(crash.result_timeout(HANG));
        // Anything put back in the queue would run before this.
        assert_heals(&ex);
        assert!(
            !marker.exists(),
            "a task whose future already failed ran after its worker died"
        );
        let s = ex.stats();
        assert_eq!((s.cancelled, s.rerun), (0, 0), "{s:?}");
    });
}

#[test]
fn a_large_argument_waiting_behind_a_crash_runs_again_from_its_spill_buffer() {
    if !support::reruns_supported() {
        return;
    }
    // A large message travels in a spill buffer, which the parent takes
    // back from the dead worker (the worker maps its payload read-only) and
    // sends to the replacement. (It waits in the worker's ring: the pool of
    // one is whole.)
    bounded(|| {
        let ex = pool(1);
        worker_pid(&ex);
        let crash = ex.submit(abort_after, 100).unwrap();
        let big = ex
            .submit(
                |v: Vec<u8>| v.iter().map(|&b| u64::from(b)).sum::<u64>(),
                vec![7u8; 8 << 20],
            )
            .unwrap();
        terminated(crash.result_timeout(HANG));
        assert_eq!(big.result_timeout(HANG).unwrap(), 7 * (8 << 20));
        assert_heals(&ex);
        assert_eq!(ex.stats().rerun, 1, "{:?}", ex.stats());
    });
}

// ---------------------------------------------------------------------------
// Codec faults, stage by stage

#[test]
fn parent_encoding_the_argument_error_is_an_err_from_submit() {
    bounded(|| {
        let ex = pool(1);
        match ex.submit(|f: Fuse| f.value, Fuse::new(mode::ERROR, mode::OK, 1)) {
            Err(Error::Codec {
                stage: CodecStage::EncodeArgument,
                message,
            }) => assert_mentions(&message, "fuse refused to serialize"),
            other => panic!("expected a codec error from submit, got {other:?}"),
        }
        assert_heals(&ex);
        assert_eq!(ex.stats().submitted, 1, "the failed submit is not counted");
    });
}

#[test]
fn parent_encoding_the_argument_panic_is_an_err_from_submit() {
    bounded(|| {
        let ex = pool(1);
        let submitted = catch_unwind(AssertUnwindSafe(|| {
            ex.submit(|f: Fuse| f.value, Fuse::new(mode::PANIC, mode::OK, 1))
        }));
        match submitted {
            // The panic's own message, whatever the build.
            Ok(Err(Error::Codec {
                stage: CodecStage::EncodeArgument,
                message,
            })) => assert_eq!(message, "the codec panicked: fuse panicked in serialize"),
            Ok(other) => panic!("expected Codec(EncodeArgument) from submit, got {other:?}"),
            Err(_) => panic!("the panic in Serialize escaped from submit()"),
        }
        assert_heals(&ex);
        assert_eq!(ex.stats().submitted, 1, "the failed submit is not counted");
    });
}

#[test]
fn worker_decoding_the_argument_error_is_a_codec_error() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let f = ex
            .submit(|f: Fuse| f.value, Fuse::new(mode::OK, mode::ERROR, 1))
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::Codec {
                stage: CodecStage::DecodeArgument,
                message,
            }) => assert_mentions(&message, "fuse refused to deserialize"),
            other => panic!("expected Codec(DecodeArgument), got {other:?}"),
        }
        assert_eq!(worker_pid(&ex), pid, "the worker survives");
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 0);
    });
}

#[test]
fn worker_decoding_the_argument_panic_is_task_panicked() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let f = ex
            .submit(|f: Fuse| f.value, Fuse::new(mode::OK, mode::PANIC, 1))
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::TaskPanicked {
                message, location, ..
            }) => {
                assert_eq!(message, "fuse panicked in deserialize");
                assert!(location.contains("faults.rs"), "{location}");
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        assert_eq!(worker_pid(&ex), pid, "the worker survives");
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 0);
    });
}

#[test]
fn worker_decoding_the_argument_abort_is_terminated_worker() {
    bounded(|| {
        assert_crash(
            |f: Fuse| f.value,
            Fuse::new(mode::OK, mode::ABORT, 1),
            |s| signaled(s) == Some(libc::SIGABRT),
        )
    });
}

#[test]
fn worker_encoding_the_result_error_is_a_codec_error() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let f = ex
            .submit(|m: u8| Fuse::new(m, mode::OK, 1), mode::ERROR)
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::Codec {
                stage: CodecStage::EncodeResult,
                message,
            }) => assert_mentions(&message, "fuse refused to serialize"),
            other => panic!("expected Codec(EncodeResult), got {other:?}"),
        }
        assert_eq!(worker_pid(&ex), pid, "the worker survives");
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 0);
    });
}

#[test]
fn worker_encoding_the_result_panic_is_task_panicked() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        let f = ex
            .submit(|m: u8| Fuse::new(m, mode::OK, 1), mode::PANIC)
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::TaskPanicked { message, .. }) => {
                assert_eq!(message, "fuse panicked in serialize")
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        assert_eq!(worker_pid(&ex), pid, "the worker survives");
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 0);
    });
}

#[test]
fn worker_encoding_the_result_abort_is_terminated_worker() {
    bounded(|| {
        let ex = pool(1);
        let before = worker_pid(&ex);
        let f = ex
            .submit(|m: u8| Fuse::new(m, mode::OK, 1), mode::ABORT)
            .unwrap();
        let (pid, status, task) = terminated(f.result_timeout(HANG));
        assert_eq!((pid, task), (before, f.id()));
        assert_eq!(signaled(status), Some(libc::SIGABRT), "{status}");
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    });
}

#[test]
fn parent_decoding_the_result_error_is_a_codec_error() {
    bounded(|| {
        let ex = pool(1);
        let f = ex
            .submit(|m: u8| Fuse::new(mode::OK, m, 1), mode::ERROR)
            .unwrap();
        match f.result_timeout(HANG) {
            Err(Error::Codec {
                stage: CodecStage::DecodeResult,
                message,
            }) => assert_mentions(&message, "fuse refused to deserialize"),
            other => panic!("expected Codec(DecodeResult), got {other:?}"),
        }
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 0);
    });
}

#[test]
fn parent_decoding_the_result_panic_fails_only_that_future() {
    // The result's Deserialize runs in the parent, on whichever thread
    // drains the ring (the manager, or a caller spinning in `result`). A
    // panic there must fail that future, not escape or kill the manager.
    bounded(|| {
        let ex = pool(1);
        let f = ex
            .submit(
                |m: u8| {
                    std::thread::sleep(Duration::from_millis(50));
                    Fuse::new(mode::OK, m, 1)
                },
                mode::PANIC,
            )
            .unwrap();
        // Let the manager (not this thread) drain it.
        let (tx, rx) = mpsc::channel();
        f.add_done_callback(move |_| {
            let _ = tx.send(());
        });
        rx.recv_timeout(HANG).expect("the future completed");
        match catch_unwind(AssertUnwindSafe(|| f.result_timeout(HANG))) {
            // The panic's own message, whatever the build.
            Ok(Err(Error::Codec {
                stage: CodecStage::DecodeResult,
                message,
            })) => assert_eq!(message, "the codec panicked: fuse panicked in deserialize"),
            Ok(other) => panic!("expected Codec(DecodeResult) in the future, got {other:?}"),
            Err(_) => panic!("the panic in Deserialize escaped from result_timeout()"),
        }
        assert_heals(&ex);
    });
}

// ---------------------------------------------------------------------------
// Initializer

fn assert_broken_by_initializer(ex: ProcessPoolExecutor, hint: &str) {
    let mut futures = Vec::new();
    for i in 0..5u64 {
        match ex.submit(|x: u64| x, i) {
            Ok(f) => futures.push(f),
            Err(Error::BrokenProcessPool { .. }) => {}
            Err(other) => panic!("expected BrokenProcessPool from submit, got {other:?}"),
        }
    }
    for f in &futures {
        match f.result_timeout(HANG) {
            Err(Error::BrokenProcessPool { cause }) => {
                assert!(cause.contains(hint), "{cause:?} lacks {hint:?}")
            }
            other => panic!("expected BrokenProcessPool, got {other:?}"),
        }
    }
    // Once broken (at the latest when a future failed with it, and at once
    // if none was accepted), later submits fail too.
    let start = Instant::now();
    loop {
        match ex.submit(|x: u64| x, 1) {
            // (Its cause is checked by
            // `broken_pool_cause_names_the_failing_initializer`.)
            Err(Error::BrokenProcessPool { .. }) => break,
            Ok(f) => {
                assert!(futures.is_empty(), "submit accepted work after breaking");
                assert!(matches!(
                    f.result_timeout(HANG),
                    Err(Error::BrokenProcessPool { .. })
                ));
                assert!(start.elapsed() < HANG, "the pool never broke");
            }
            Err(other) => panic!("expected BrokenProcessPool, got {other:?}"),
        }
    }
    assert!(matches!(
        ex.map(|x: u64| x, 0..3).next(),
        Some(Err(Error::BrokenProcessPool { .. }))
    ));
}

/// `x * 3`, but item 137 aborts its worker.
fn triple_but_137_aborts(x: u64) -> u64 {
    if x == 137 {
        std::process::abort();
    }
    x * 3
}

#[test]
fn a_map_without_isolation_fails_the_whole_crashed_chunk() {
    if !support::reruns_supported() {
        // The chunk waiting behind the crashed one would fail with it.
        return;
    }
    bounded(|| {
        let ex = pool(2);
        let out: Vec<_> = ex
            .map(triple_but_137_aborts, 0..200u64)
            .chunksize(50)
            .collect();
        for (i, r) in out.iter().enumerate() {
            // Items run at most once: those of the crashed chunk all fail.
            assert_eq!(r.is_err(), (100..150).contains(&i), "item {i}: {r:?}");
        }
        assert_eq!(ex.stats().crashed, 1);
    });
}

#[test]
fn a_map_isolates_the_item_that_kills_its_worker() {
    bounded(|| {
        let ex = pool(2);
        // Chunks of 50: the one holding item 137 is split in halves until
        // that item runs alone; every other item gets its result.
        let out: Vec<_> = ex
            .map(triple_but_137_aborts, 0..200u64)
            .chunksize(50)
            .isolate_crashes()
            .collect();
        assert_eq!(out.len(), 200);
        for (i, r) in out.iter().enumerate() {
            match r {
                Err(Error::TerminatedWorker { status, .. }) if i == 137 => {
                    assert!(
                        matches!(status, ExitStatus::Signaled { signal, .. } if *signal == libc::SIGABRT),
                        "{status:?}"
                    );
                }
                Ok(v) if i != 137 => assert_eq!(*v, 3 * i as u64),
                other => panic!("item {i}: {other:?}"),
            }
        }
        // 50 → 25 → 13 → 6 → 3 → 1 for item 137: one crash per size
        // (and one more for a chunk sent again whole, where the pool does
        // not run a crashed worker's waiting task again).
        let s = ex.stats();
        assert!((2..=7).contains(&s.crashed), "{s:?}");
        // Unordered too: every position once, only 137 failed.
        let mut seen = [false; 200];
        let unordered = ex
            .map_unordered(triple_but_137_aborts, 0..200u64)
            .chunksize(50)
            .isolate_crashes();
        for (i, r) in unordered {
            assert!(!std::mem::replace(&mut seen[i], true), "position {i} twice");
            assert_eq!(r.is_err(), i == 137, "item {i}: {r:?}");
        }
        assert!(seen.iter().all(|&s| s));
        // And through a codec.
        let coded: Vec<_> = ex
            .with_codec::<loky::Rkyv>()
            .map(triple_but_137_aborts, 0..200u64)
            .chunksize(50)
            .isolate_crashes()
            .collect();
        for (i, r) in coded.iter().enumerate() {
            assert_eq!(r.is_err(), i == 137, "item {i}: {r:?}");
        }
        assert_heals(&ex);
    });
}

#[test]
fn a_map_isolates_the_bad_item_where_waiting_tasks_do_not_run_again() {
    // Rings under a page: a chunk waiting behind the crashing one fails
    // with it; the map sends it again whole.
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .ring_capacity(2048)
            .build()
            .unwrap();
        for round in 0..20 {
            let out: Vec<_> = ex
                .map(triple_but_137_aborts, 0..400u64)
                .chunksize(1 + round % 3)
                .isolate_crashes()
                .collect();
            let failed: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_err()).collect();
            let first = failed.first().map(|&i| &out[i]);
            assert_eq!(failed, [137], "round {round}: {first:?}");
        }
        assert_heals(&ex);
    });
}

/// Items below 2 take a second each; item 2 aborts its worker.
fn slow_then_2_aborts(x: u64) -> u64 {
    if x == 2 {
        std::process::abort();
    }
    if x < 2 {
        std::thread::sleep(Duration::from_secs(1));
    }
    x
}

#[test]
fn a_map_splits_no_crashed_chunk_past_its_timeout() {
    bounded(|| {
        let ex = pool(2);
        // Chunk [0, 1] runs past the timeout; chunk [2, 3] crashes at once,
        // but is read only after the first one, once the time is up: its
        // items keep the crash's error (halves sent now would only fail
        // with TimeLimit, or kill one more worker).
        let out: Vec<_> = ex
            .map(slow_then_2_aborts, 0..4u64)
            .chunksize(2)
            .timeout(Duration::from_secs(1))
            .isolate_crashes()
            .collect();
        assert!(matches!(out[0], Err(Error::TimeLimit)), "{:?}", out[0]);
        for r in &out[2..] {
            assert!(matches!(r, Err(Error::TerminatedWorker { .. })), "{r:?}");
        }
        assert_heals(&ex);
        assert_eq!(ex.stats().crashed, 1);
    });
}

/// `x * 2`, but one item in 1000 aborts its worker.
fn one_in_1000_aborts(x: u64) -> u64 {
    if x % 1000 == 7 {
        std::process::abort();
    }
    x * 2
}

#[test]
fn a_map_with_automatic_chunks_isolates_frequent_crashes() {
    // Automatic chunks grow to 16 384 items, about 16 bad ones each: far
    // past the split limit, unless chunks shrink once crashes show up.
    bounded(|| {
        let ex = pool(2);
        let n = 100_000u64;
        let start = Instant::now();
        let out: Vec<_> = ex.map(one_in_1000_aborts, 0..n).isolate_crashes().collect();
        let failed: Vec<u64> = (0..n).filter(|&i| out[i as usize].is_err()).collect();
        let bad: Vec<u64> = (0..n).filter(|i| i % 1000 == 7).collect();
        let s = ex.stats();
        eprintln!(
            "{} failed, {} crashes, {:?}",
            failed.len(),
            s.crashed,
            start.elapsed()
        );
        assert_eq!(failed, bad, "{s:?}");
        for (i, r) in out.iter().enumerate() {
            if let Ok(v) = r {
                assert_eq!(*v, 2 * i as u64);
            }
        }
    });
}

/// Aborts on items 1234 and 6234; from 20 000 on, sleeps a minute on one
/// item in 2000.
fn aborts_then_hangs(x: u64) -> u64 {
    if x < 10_000 && x % 5000 == 1234 {
        std::process::abort();
    }
    if x >= 20_000 && x % 2000 == 999 {
        std::thread::sleep(Duration::from_secs(60));
    }
    x + 1
}

#[test]
fn an_ordered_map_isolates_crashes_before_its_time_limit_falls() {
    // The ordered map reads in input order, and goes on past a slow oldest
    // chunk: it must split the crashed chunks it went past at once, not
    // when it reads them. Split late, after the hanging items took both
    // workers, they failed whole at the deadline: thousands of items that
    // never crashed reported as TerminatedWorker.
    bounded(|| {
        let ex = pool(2);
        let out: Vec<_> = ex
            .map(aborts_then_hangs, 0..60_000u64)
            .chunksize(1000)
            .isolate_crashes()
            .timeout(Duration::from_secs(5))
            .collect();
        assert_eq!(out.len(), 60_000);
        // The hanging items take both workers until the deadline: what did
        // not run by then fails with TimeLimit (split halves of a crashed
        // chunk too, queued behind them), never with another item's crash.
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i as u64 + 1),
                Err(Error::TerminatedWorker { .. }) => {
                    assert!(i == 1234 || i == 6234, "item {i} reported a crash")
                }
                Err(Error::TimeLimit) => {}
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        assert!(
            out[..1000].iter().all(|r| r.is_ok()),
            "a crashed chunk split"
        );
    });
}

fn always_aborts(_: u64) -> u64 {
    std::process::abort();
}

#[test]
fn a_map_whose_every_item_kills_its_worker_stops_splitting() {
    bounded(|| {
        let ex = pool(2);
        let out: Vec<_> = ex
            .map(always_aborts, 0..400u64)
            .chunksize(400)
            .isolate_crashes()
            .collect();
        assert_eq!(out.len(), 400);
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(Error::TerminatedWorker { .. }))),
            "{:?}",
            out.iter().find(|r| r.is_ok())
        );
        // At most 64 splits (documented), each sending two halves that
        // crash: 1 + 2 × 64 crashes, not one per item (799 without the
        // limit). Where the pool does not run a crashed worker's waiting
        // task again, the map sends such a chunk again whole, and it
        // crashes too: up to 4 times each, so allow some more.
        let s = ex.stats();
        let most = if support::reruns_supported() {
            1 + 2 * 64
        } else {
            300
        };
        assert!((64..=most).contains(&s.crashed), "{s:?}");
        assert_heals(&ex);
    });
}

#[test]
fn panicking_initializer_breaks_the_pool() {
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .initializer(|_: u32| panic!("init"), 0)
            .build()
            .unwrap();
        assert_broken_by_initializer(ex, "initializer panicked");
    });
}

#[test]
fn dropping_a_pool_whose_initializer_fails_with_work_queued_ends() {
    // Shut down (by the drop) before the failures broke the pool: it must
    // still break, failing the queued task, rather than start worker after
    // worker for the task that waits.
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .initializer(|code: i32| std::process::exit(code), 3)
            .build()
            .unwrap();
        let f = ex.submit(|x: u64| x + 1, 1).unwrap();
        drop(ex);
        assert!(
            matches!(f.result_timeout(HANG), Err(Error::BrokenProcessPool { .. })),
            "the queued task fails with the broken pool"
        );
    });
}

#[test]
fn exiting_initializer_breaks_the_pool() {
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .initializer(|code: i32| std::process::exit(code), 3)
            .build()
            .unwrap();
        assert_broken_by_initializer(ex, "exit code 3");
    });
}

#[test]

fn broken_pool_cause_names_the_failing_initializer() {
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(4)
            .initializer(|_: u32| panic!("init"), 0)
            .build()
            .unwrap();
        let start = Instant::now();
        while let Ok(f) = ex.submit(|x: u64| x, 1) {
            assert!(matches!(
                f.result_timeout(HANG),
                Err(Error::BrokenProcessPool { .. })
            ));
            assert!(start.elapsed() < HANG, "the pool never broke");
        }
        // Once every worker is gone the cause is final.
        while ex.stats().workers_alive > 0 {
            assert!(start.elapsed() < HANG, "workers of a broken pool linger");
            std::thread::sleep(Duration::from_millis(1));
        }
        match ex.submit(|x: u64| x, 1) {
            Err(Error::BrokenProcessPool { cause }) => assert!(
                cause.contains("initializer panicked"),
                "the cause does not name the initializer: {cause:?}"
            ),
            other => panic!("expected BrokenProcessPool, got {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------
// Done-callbacks

#[test]
fn panicking_done_callback_does_not_affect_the_result_or_the_pool() {
    bounded(|| {
        let ex = pool(1);
        // On a success (runs on the manager or a caller thread)...
        let f = ex
            .submit(
                |x: u64| {
                    std::thread::sleep(Duration::from_millis(20));
                    x
                },
                5,
            )
            .unwrap();
        f.add_done_callback(|_| panic!("callback bug"));
        assert_eq!(f.result_timeout(HANG).unwrap(), 5);
        // ... on a crash (runs on the watchdog thread) ...
        let c = ex
            .submit(
                |ms: u64| -> u64 {
                    std::thread::sleep(Duration::from_millis(ms));
                    std::process::abort()
                },
                50,
            )
            .unwrap();
        c.add_done_callback(|_| panic!("callback bug on a crash"));
        terminated(c.result_timeout(HANG));
        // ... and added after completion (runs on this thread).
        let g = ex.submit(|x: u64| x * 2, 4).unwrap();
        assert_eq!(g.result_timeout(HANG).unwrap(), 8);
        g.add_done_callback(|_| panic!("late callback bug"));
        assert_heals(&ex);
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    });
}

#[test]
fn done_callback_of_a_success_submits_and_waits_without_deadlock() {
    bounded(|| {
        let ex = pool(1);
        let (tx, rx) = mpsc::channel();
        let ex2 = ex.clone();
        let f = ex
            .submit(
                |x: u64| {
                    std::thread::sleep(Duration::from_millis(50));
                    x + 1
                },
                1,
            )
            .unwrap();
        f.add_done_callback(move |r| {
            let v = *r.as_ref().unwrap();
            let g = ex2.submit(|x: u64| x * 10, v).unwrap();
            tx.send(g.result_timeout(HANG)).unwrap();
        });
        assert_eq!(rx.recv_timeout(HANG).unwrap().unwrap(), 20);
        assert_heals(&ex);
    });
}

#[test]

fn done_callback_of_a_crash_submits_and_waits_without_deadlock() {
    bounded(|| {
        let ex = pool(1);
        let (tx, rx) = mpsc::channel();
        let ex2 = ex.clone();
        let f = ex
            .submit(
                |ms: u64| -> u64 {
                    std::thread::sleep(Duration::from_millis(ms));
                    std::process::abort()
                },
                100,
            )
            .unwrap();
        f.add_done_callback(move |r| {
            let crashed = matches!(r, Err(Error::TerminatedWorker { .. }));
            let g = ex2.submit(|x: u64| x * 10, 2).unwrap();
            let thread = std::thread::current().name().map(str::to_owned);
            tx.send((crashed, g.result_timeout(HANG), thread)).unwrap();
        });
        let (crashed, g, thread) = rx
            .recv_timeout(HANG + Duration::from_secs(10))
            .expect("callback finished");
        assert!(crashed, "the callback saw TerminatedWorker");
        match g {
            Ok(v) => assert_eq!(v, 20),
            Err(e) => panic!("work submitted from a callback on {thread:?}: {e:?}"),
        }
        terminated(f.result_timeout(HANG));
        assert_heals(&ex);
    });
}

// ---------------------------------------------------------------------------
// Shutdown racing a crash

fn sleep_then(ms: u64, crash: bool) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    if crash {
        std::process::abort();
    }
    ms
}

/// `shutdown(wait = true, ..)`, failing with the pool's state if it does not
/// return.
fn shutdown_and_wait(ex: &ProcessPoolExecutor, cancel_futures: bool, kill_workers: bool) {
    let (tx, rx) = mpsc::channel();
    let ex2 = ex.clone();
    std::thread::spawn(move || {
        ex2.shutdown(true, cancel_futures, kill_workers);
        let _ = tx.send(());
    });
    if rx.recv_timeout(HANG).is_err() {
        panic!(
            "shutdown(wait = true, cancel_futures = {cancel_futures}, kill_workers = \
             {kill_workers}) did not return; {:?}\n{}",
            ex.stats(),
            ex.debug_state()
        );
    }
}

#[test]

fn shutdown_while_workers_are_still_starting_does_not_hang() {
    // The watchdog may be half-way through spawning a worker when shutdown
    // begins: that worker must still be told to exit (or be killed).
    bounded(|| {
        for kill_workers in [false, true, false, true, false, true] {
            let ex = pool(2);
            shutdown_and_wait(&ex, false, kill_workers);
        }
    });
}

#[test]
fn shutdown_killing_workers_races_a_crashing_task() {
    bounded(|| {
        for (crash_ms, pause_ms) in [(0, 0), (0, 5), (5, 0), (10, 10), (20, 5), (1, 30)] {
            let ex = pool(2);
            // Both workers up first: this races the crash (and the respawn
            // it triggers) with shutdown, not the initial start-up.
            two_worker_pids(&ex);
            let crash = ex.submit(|ms: u64| sleep_then(ms, true), crash_ms).unwrap();
            let others: Vec<_> = (0..6u64)
                .map(|i| ex.submit(|ms: u64| sleep_then(ms, false), 10 + i).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(pause_ms));
            shutdown_and_wait(&ex, false, true);
            match crash.result_timeout(HANG) {
                Err(Error::TerminatedWorker { .. }) | Err(Error::ShutdownExecutor) => {}
                other => panic!("crashing task: {other:?}"),
            }
            for (i, f) in others.iter().enumerate() {
                match f.result_timeout(HANG) {
                    Ok(v) => assert_eq!(v, 10 + i as u64),
                    Err(Error::TerminatedWorker { .. }) | Err(Error::ShutdownExecutor) => {}
                    other => panic!("task {i}: {other:?}"),
                }
            }
            assert!(matches!(
                ex.submit(|x: u64| x, 1),
                Err(Error::ShutdownExecutor)
            ));
        }
    });
}

#[test]

fn shutdown_right_after_a_crash_while_the_replacement_starts() {
    // The crash is reported, then the watchdog spawns a replacement: a
    // shutdown now races that spawn.
    bounded(|| {
        for kill_workers in [true, false, true, false, true, false] {
            let ex = pool(1);
            worker_pid(&ex);
            terminated(ex.submit(abort_task, ()).unwrap().result_timeout(HANG));
            shutdown_and_wait(&ex, false, kill_workers);
            assert!(matches!(
                ex.submit(|x: u64| x, 1),
                Err(Error::ShutdownExecutor)
            ));
        }
    });
}

#[test]
fn graceful_shutdown_races_a_crashing_task_and_still_runs_queued_work() {
    bounded(|| {
        for (crash_ms, pause_ms) in [(0, 0), (5, 0), (10, 10), (1, 30)] {
            let ex = pool(2);
            two_worker_pids(&ex);
            let crash = ex.submit(|ms: u64| sleep_then(ms, true), crash_ms).unwrap();
            let others: Vec<_> = (0..8u64)
                .map(|i| ex.submit(|ms: u64| sleep_then(ms, false), 10 + i).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(pause_ms));
            shutdown_and_wait(&ex, false, false);
            terminated(crash.result_timeout(HANG));
            let mut failed = 0;
            for (i, f) in others.iter().enumerate() {
                match f.result_timeout(HANG) {
                    Ok(v) => assert_eq!(v, 10 + i as u64),
                    Err(Error::TerminatedWorker { .. }) => failed += 1,
                    other => panic!("task {i}: {other:?}"),
                }
            }
            // Only a task behind the crashing one on its worker may fail.
            assert!(failed <= 1, "{failed} innocent tasks failed");
        }
    });
}

// ---------------------------------------------------------------------------
// Crashes among other work, and many crashes

#[test]
fn crash_among_queued_tasks_fails_at_most_the_tasks_on_that_worker() {
    bounded(|| {
        let ex = pool(2);
        let futs: Vec<_> = (0..20u64)
            .map(|i| {
                ex.submit(
                    |i: u64| -> u64 {
                        if i == 7 {
                            std::process::abort();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        i * 10
                    },
                    i,
                )
                .unwrap()
            })
            .collect();
        let (dead, status, task) = terminated(futs[7].result_timeout(HANG));
        assert_eq!(signaled(status), Some(libc::SIGABRT), "{status}");
        assert_eq!(task, futs[7].id());
        let mut failures = 1;
        for (i, f) in futs.iter().enumerate().filter(|(i, _)| *i != 7) {
            match f.result_timeout(HANG) {
                Ok(v) => assert_eq!(v, i as u64 * 10, "task {i}"),
                Err(Error::TerminatedWorker { pid, task: t, .. }) => {
                    assert_eq!(pid, dead, "task {i} failed with another crash");
                    // It names the crashing task (or itself).
                    assert!(t == task || t == f.id(), "task {i}: task = {t}");
                    failures += 1;
                }
                other => panic!("task {i}: {other:?}"),
            }
        }
        assert!(failures <= 2, "{failures} tasks failed for one crash");
        assert_heals(&ex);
        let s = stats_when_whole(&ex, 2);
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    });
}

#[test]
fn many_crashes_in_a_row_do_not_break_the_pool() {
    bounded(|| {
        let ex = pool(1);
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let f = ex.submit(abort_task, ()).unwrap();
            let (pid, status, task) = terminated(f.result_timeout(HANG));
            assert_eq!(signaled(status), Some(libc::SIGABRT), "{status}");
            assert_eq!(task, f.id());
            assert!(pids.insert(pid), "pid {pid} reported twice");
        }
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned), (20, 20), "{s:?}");
        assert_eq!(s.workers_alive, 1, "{s:?}");
    });
}

#[test]
fn a_burst_of_concurrent_crashes_does_not_break_the_pool() {
    bounded(|| {
        let ex = pool(2);
        let futs: Vec<_> = (0..20)
            .map(|_| ex.submit(abort_task, ()).unwrap())
            .collect();
        for f in &futs {
            terminated(f.result_timeout(HANG));
        }
        assert_heals(&ex);
        let s = stats_when_whole(&ex, 2);
        // Up to two tasks die with each worker.
        assert!((10..=20).contains(&s.crashed), "{s:?}");
        assert_eq!(s.respawned, s.crashed, "{s:?}");
    });
}

/// Touches `mib` MiB of heap, then SIGKILLs its own worker.
fn die_with_a_big_heap(mib: usize) -> u64 {
    let mut heap = vec![0u8; mib << 20];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&heap);
    // SAFETY: plain system calls; the worker is meant to die here.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL is not caught")
}

/// The state letter of process `pid` (`/proc/<pid>/stat`'s third field:
/// `Z` for a zombie), or `None` once it is reaped.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain any
    // character: the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
// Seen early only through the lifeline (glibc, 64-bit); elsewhere the task
// fails once the worker is reaped (a known limit).
#[cfg_attr(
    not(all(target_env = "gnu", target_pointer_width = "64")),
    ignore = "needs the lifeline (glibc, 64-bit)"
)]
fn a_dying_worker_fails_its_task_before_the_kernel_has_torn_it_down() {
    bounded(|| {
        let ex = pool(1);
        let pid = worker_pid(&ex);
        // Unmapping 256 MiB takes the kernel milliseconds, and the process
        // becomes a zombie only after that (its pidfd turns readable, then
        // the watchdog reaps it). Its lifeline breaks first.
        let f = ex.submit(die_with_a_big_heap, 256).unwrap();
        // A done-callback runs when the task fails, before its waiters
        // wake: what it sees of the worker is how far its end had got.
        let (tx, rx) = mpsc::channel();
        f.add_done_callback(move |_| {
            let _ = tx.send(process_state(pid));
        });
        let r = f.result_timeout(HANG);
        let state = rx.recv_timeout(HANG).expect("the callback ran");
        let (dead, status, _) = terminated(r);
        assert_eq!(dead, pid);
        assert_eq!(signaled(status), Some(libc::SIGKILL), "{status}");
        assert!(
            state.is_some_and(|s| s != 'Z' && s != 'X'),
            "worker {pid} was {state:?} (None: reaped) when its task failed: \
             the error came only once it was torn down (no lifeline?)"
        );
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
    });
}

#[test]
fn callbacks_of_tasks_dropped_by_shutdown_may_call_the_executor() {
    // Cancelling or failing queued tasks runs their callbacks: not under
    // the pool's lock, or a callback that asks the pool anything would
    // deadlock the shutdown.
    bounded(|| {
        for (cancel_futures, kill_workers) in [(true, false), (false, true), (true, true)] {
            let ex = pool(1);
            let busy = ex.submit(|ms: u64| sleep_then(ms, false), 300).unwrap();
            let start = Instant::now();
            while !busy.running() {
                assert!(start.elapsed() < HANG, "the first task never ran");
                std::thread::sleep(Duration::from_millis(1));
            }
            let (tx, rx) = mpsc::channel();
            let queued: Vec<_> = (0..20u64)
                .map(|i| {
                    let f = ex.submit(|x: u64| x, i).unwrap();
                    let (ex2, tx) = (ex.clone(), tx.clone());
                    f.add_done_callback(move |r| {
                        let stats = ex2.stats();
                        let _ = tx.send((r.is_ok(), stats.submitted));
                    });
                    f
                })
                .collect();
            drop(tx);
            shutdown_and_wait(&ex, cancel_futures, kill_workers);
            // Tasks already in the worker's ring run (or die with it); the
            // others were dropped from the queue, and every callback ran.
            let calls: Vec<(bool, u64)> = rx.iter().collect();
            assert_eq!(calls.len(), queued.len());
            assert!(calls.iter().all(|&(_, submitted)| submitted == 21));
            let cancelled = queued.iter().filter(|f| f.cancelled()).count();
            let dropped = queued
                .iter()
                .filter(|f| f.result_timeout(HANG).is_err())
                .count();
            assert!(dropped > 0, "some tasks were still queued at shutdown");
            let stats = ex.stats();
            assert_eq!(stats.cancelled as usize, cancelled, "{stats:?}");
            if cancel_futures && !kill_workers {
                assert_eq!(cancelled, dropped, "only the queued tasks fail");
            } else if cancel_futures {
                // Those in the killed worker's ring fail instead.
                assert!(cancelled > 0 && cancelled <= dropped);
            } else {
                assert_eq!(cancelled, 0);
            }
            let _ = busy.result_timeout(HANG);
        }
    });
}

#[test]
fn a_task_whose_worker_dies_before_starting_it_runs_again() {
    if !support::reruns_supported() {
        return;
    }
    bounded(|| {
        let ex = pool(1);
        let first = worker_pid(&ex);
        // Stopped, the worker cannot start what it is given: the task sits
        // at the head of its ring when something outside the pool kills it.
        // SAFETY: plain system calls on our own child.
        unsafe { libc::kill(first as i32, libc::SIGSTOP) };
        let f = ex.submit(|x: u64| (x, std::process::id()), 7).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(f.running(), "handed to the stopped worker");
        // SAFETY: as above.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let (x, ran_on) = f.result_timeout(HANG).expect("run again elsewhere");
        assert_eq!(x, 7);
        assert_ne!(ran_on, first);
        let s = ex.stats();
        assert_eq!((s.crashed, s.rerun, s.failed), (1, 1, 0), "{s:?}");
    });
}

#[test]
fn touching_the_running_binary_does_not_stop_workers_from_starting() {
    bounded(|| {
        let ex = pool(1);
        let first = worker_pid(&ex);
        // A new modification time on the running executable (as `touch`
        // does): the replacement worker is still the same binary.
        let exe = std::ffi::CString::new(
            std::env::current_exe()
                .unwrap()
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a valid path; null times means "now" for both.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, exe.as_ptr(), std::ptr::null(), 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: plain system call on our own child.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        let f = ex.submit(|x: u64| x + 1, 1).unwrap();
        assert_eq!(f.result_timeout(HANG).expect("a replacement worker"), 2);
        assert_ne!(worker_pid(&ex), first);
    });
}

#[test]
fn shutdown_with_kill_workers_does_not_wait_for_initializers() {
    // Workers still in a (very) long initializer, some perhaps being
    // started at the very moment of the shutdown: all are killed.
    bounded(|| {
        for round in 0..60u64 {
            let ex = ProcessPoolExecutor::builder()
                .max_workers(2)
                .initializer(|s: u64| std::thread::sleep(Duration::from_secs(s)), 600)
                .build()
                .unwrap();
            // Sweeps the moments a worker is being started.
            std::thread::sleep(Duration::from_micros(round * 100));
            let pids = ex.worker_pids();
            let start = Instant::now();
            ex.shutdown(true, false, true);
            assert!(start.elapsed() < HANG, "round {round}");
            // Waiting, it returns once every worker was killed and reaped.
            let s = ex.stats();
            assert_eq!(s.workers_alive, 0, "round {round}: {s:?}");
            assert!(ex.worker_pids().is_empty(), "round {round}");
            for pid in pids {
                assert_eq!(
                    process_state(pid),
                    None,
                    "round {round}: worker {pid} lives on"
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The hard memory limit, runs again, and rings under a page

/// Allocates and touches up to `mib` MiB, one MiB at a time, keeping all
/// of it; how many MiB it got.
fn hog(mib: usize) -> usize {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        held.push(chunk);
    }
    std::hint::black_box(&held);
    held.len()
}

#[test]
fn a_task_past_the_hard_memory_limit_kills_only_its_worker() {
    bounded(|| {
        no_core_dumps();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(2)
            .hard_memory_limit(128 << 20)
            .build()
            .unwrap();
        let (a, b) = two_worker_pids(&ex);
        // Four times the cap: the allocation that crosses it fails, and
        // a failed allocation aborts.
        let fut = ex.submit(hog, 512).unwrap();
        let (pid, status, task) = terminated(fut.result_timeout(HANG));
        assert!(pid == a || pid == b, "{pid} is not a worker ({a}, {b})");
        assert_eq!(task, fut.id(), "the error names the task");
        assert_eq!(signaled(status), Some(libc::SIGABRT), "{status}");
        assert_heals(&ex);
        let s = stats_when_whole(&ex, 2);
        assert_eq!((s.crashed, s.respawned), (1, 1), "{s:?}");
        let other = if pid == a { b } else { a };
        assert!(
            ex.worker_pids().contains(&other),
            "the other worker ({other}) died too: {:?}",
            ex.worker_pids()
        );
        // Below the cap a task still gets its memory.
        assert_eq!(
            ex.submit(hog, 16).unwrap().result_timeout(HANG).unwrap(),
            16
        );
    });
}

/// Stops workers (SIGSTOP) and, when dropped, lets every one it stopped go
/// on (SIGCONT), also when a failed assertion unwinds: the executor's drop
/// waits for its workers to exit.
struct Stopper(Vec<u32>);

impl Stopper {
    fn stop(&mut self, pid: u32) {
        // SAFETY: plain system call on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        self.0.push(pid);
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: plain system call; SIGCONT to a process that is not
            // stopped does nothing.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }
}

fn sigkill(pid: u32) {
    // SAFETY: plain system call on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn a_task_whose_workers_keep_dying_before_they_start_it_fails_after_four_runs_again() {
    if !support::reruns_supported() {
        return;
    }
    bounded(|| {
        let ex = pool(2);
        let mut stopper = Stopper(Vec::new());
        let (a, b) = two_worker_pids(&ex);
        // One worker is held by a task; the other, idle, is stopped, and
        // takes the victim (it holds the fewest tasks), which it cannot start.
        let release = Gate::closed("holder");
        let held = ex
            .submit(
                |gate: String| -> u32 {
                    wait_for_gate(gate);
                    std::process::id()
                },
                release.path(),
            )
            .unwrap();
        assert!(held.running(), "handed to a worker");
        // The idle one is where a task goes now (it holds the fewest
        // tasks); the held task's pid, once released, confirms it.
        let mut holder = worker_pid(&ex);
        assert!(holder == a || holder == b, "{holder} not in {a}, {b}");
        let busy = if holder == a { b } else { a };
        stopper.stop(holder);
        let victim = ex.submit(|x: u64| x + 1, 7).unwrap();
        assert!(victim.running(), "handed to the stopped worker");
        release.open();
        let mut spare = held.result_timeout(HANG).unwrap();
        assert_eq!(spare, busy, "the held task ran on the other worker");
        // Each round: the victim waits in the stopped `holder`; `spare`,
        // idle, is stopped too; `holder` is killed. The victim never
        // started, so it goes to `spare` (the only worker that takes work),
        // until it ran again 4 times.
        for death in 1..=5u64 {
            stopper.stop(spare);
            sigkill(holder);
            let s = support::wait_for_stats("the death and the replacement", &ex, HANG, |s| {
                s.crashed == death && s.respawned == death
            });
            if death <= 4 {
                assert_eq!(s.rerun, death, "{s:?}");
                assert!(victim.running(), "death {death}: {s:?}");
                // The dead worker's replacement: the other one holds the
                // victim, so this goes to the new one, which is then idle.
                let fresh = worker_pid(&ex);
                assert!(fresh != holder && fresh != spare, "{fresh}");
                holder = spare;
                spare = fresh;
            } else {
                assert_eq!(s.rerun, 4, "not run again a fifth time: {s:?}");
                let (pid, status, task) = terminated(victim.result_timeout(HANG));
                assert_eq!(pid, holder, "the last worker that held it");
                assert_eq!(signaled(status), Some(libc::SIGKILL), "{status}");
                assert_eq!(task, victim.id());
            }
        }
        drop(stopper); // the stopped spare goes on
        assert_heals(&ex);
        let s = stats_when_whole(&ex, 2);
        assert_eq!((s.crashed, s.rerun, s.aborted), (5, 4, 1), "{s:?}");
    });
}

#[test]
fn with_rings_under_a_page_the_waiting_tasks_of_a_dead_worker_fail() {
    // A ring under 4 KiB cannot be guarded (less than a page): the tasks a
    // dead worker never started fail instead of running again. (With 4 KiB
    // rings both would run again: see
    // `a_task_whose_worker_dies_before_starting_it_runs_again`.)
    bounded(|| {
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .ring_capacity(2048)
            .build()
            .unwrap();
        let mut stopper = Stopper(Vec::new());
        let first = worker_pid(&ex);
        stopper.stop(first);
        let futs: Vec<_> = (0..2u64)
            .map(|x| ex.submit(|x: u64| x + 1, x).unwrap())
            .collect();
        assert_eq!(ex.stats().running, 2, "both in the stopped worker's ring");
        sigkill(first);
        for f in &futs {
            let (pid, status, task) = terminated(f.result_timeout(HANG));
            assert_eq!(pid, first);
            assert_eq!(signaled(status), Some(libc::SIGKILL), "{status}");
            assert_eq!(task, futs[0].id(), "the task it was about to run");
        }
        drop(stopper);
        assert_heals(&ex);
        let s = ex.stats();
        assert_eq!((s.crashed, s.respawned, s.rerun), (1, 1, 0), "{s:?}");
    });
}

/// Two tasks of one worker whose time limits fall in the same pass of the
/// manager: the running one (`mark_start_then_wait`, stopped by killing its
/// worker) and the one waiting behind it in the worker's ring. The pass stops the
/// tasks in the order their limits fell, and a queued task whose limit fell
/// between those two runs its done-callback there, on the manager: it holds
/// the pass until the test saw the running task end, that is until the
/// worker's death was handled, before the pass gets to the waiting task.
/// (Another queued task, whose limit falls first, holds the manager in its
/// own pass until all three limits have fallen, so that they fall in one.)
/// Returns the waiting task's outcome, whether it ran, and the pool's stats
/// once it healed.
fn time_out_both_tasks_of_a_worker_in_one_pass(
    ring_capacity: Option<usize>,
) -> (Result<bool, Error>, bool, loky::Stats) {
    const HOLDER: Duration = Duration::from_millis(500);
    const RUNNING: Duration = Duration::from_millis(1500);
    const WAITING: Duration = Duration::from_millis(2500);
    no_core_dumps();
    let mut builder = ProcessPoolExecutor::builder().max_workers(1);
    if let Some(bytes) = ring_capacity {
        builder = builder.ring_capacity(bytes);
    }
    let ex = builder.build().unwrap();
    worker_pid(&ex); // ready: it now takes two tasks
    let dir = std::env::temp_dir();
    let tag = format!("{}-{}", ring_capacity.unwrap_or(0), std::process::id());
    let pid_path = dir.join(format!("loky-pass-running-{tag}"));
    let ran = dir.join(format!("loky-pass-ran-{tag}"));
    // Never created: the running task holds until its worker is killed.
    let release = dir.join(format!("loky-pass-release-{tag}"));
    for path in [&pid_path, &ran, &release] {
        let _ = std::fs::remove_file(path);
    }
    let me = std::thread::current().id();

    let before_running = Instant::now();
    let running = ex
        .submit_with_timeout(
            support::mark_start_then_wait,
            (
                pid_path.to_string_lossy().into_owned(),
                release.to_string_lossy().into_owned(),
            ),
            RUNNING,
        )
        .unwrap();
    let before_waiting = Instant::now();
    let waiting = ex
        .submit_with_timeout(
            |path: String| std::fs::write(path, b"ran").is_ok(),
            ran.to_string_lossy().into_owned(),
            WAITING,
        )
        .unwrap();
    let after_waiting = Instant::now();
    assert_eq!(ex.stats().running, 2, "both in the worker");
    // Its limit falls after the running task's (the same limit, given
    // later) and before the waiting one's.
    let between = ex.submit_with_timeout(|x: u64| x, 1, RUNNING).unwrap();
    let after_between = Instant::now();
    let (go, go_rx) = mpsc::channel::<()>();
    between.add_done_callback(move |_| {
        let _ = go_rx.recv_timeout(HANG);
    });
    // All three limits have fallen by then.
    let all_fell = (after_waiting + WAITING).max(after_between + RUNNING);
    let holder = ex.submit_with_timeout(|x: u64| x, 2, HOLDER).unwrap();
    let (held, held_rx) = mpsc::channel();
    let started = pid_path.clone();
    holder.add_done_callback(move |_| {
        let at = Instant::now();
        // The running task must have started, or its stop would withdraw
        // it instead of killing its worker.
        while !started.exists() && at.elapsed() < HANG {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(all_fell.saturating_duration_since(Instant::now()));
        let _ = held.send((std::thread::current().id(), at));
    });
    // The order of the limits, as the test relies on it.
    assert!(
        after_between - before_waiting < WAITING - RUNNING,
        "submitting took too long"
    );
    assert!(
        Instant::now() - before_running < RUNNING - HOLDER,
        "submitting took too long"
    );

    assert!(
        matches!(running.result_timeout(HANG), Err(Error::TimeLimit)),
        "the running task times out"
    );
    let (manager, held_at) = held_rx.try_recv().expect("the first pass held the manager");
    assert_ne!(manager, me, "the holder's callback ran on the manager");
    assert!(
        held_at < before_running + RUNNING,
        "the manager's first pass came after the running task's limit fell"
    );
    // Its worker's death was handled: the pass goes on to the waiting task.
    go.send(()).unwrap();
    let outcome = waiting.result_timeout(HANG);
    assert!(matches!(
        between.result_timeout(HANG),
        Err(Error::TimeLimit)
    ));
    assert!(matches!(holder.result_timeout(HANG), Err(Error::TimeLimit)));
    assert_heals(&ex);
    let stats = stats_when_whole(&ex, 1);
    let ran_at_all = ran.exists();
    for path in [&pid_path, &ran] {
        let _ = std::fs::remove_file(path);
    }
    (outcome, ran_at_all, stats)
}

#[test]
fn with_rings_under_a_page_a_waiting_task_timed_out_with_the_running_one_fails_with_time_limit() {
    // The tasks a dead worker never started are not run again here: the
    // worker's death, which the pass caused, must not take the waiting
    // task's own outcome.
    bounded(|| {
        let (outcome, ran, s) = time_out_both_tasks_of_a_worker_in_one_pass(Some(2048));
        assert!(matches!(outcome, Err(Error::TimeLimit)), "{outcome:?}");
        assert!(!ran, "a task whose time limit fell ran");
        assert_eq!((s.crashed, s.respawned, s.rerun), (0, 1, 0), "{s:?}");
    });
}

#[test]
fn a_waiting_task_timed_out_with_the_running_one_fails_with_time_limit_and_never_runs() {
    // With rings that the worker guards, a task its dead worker never
    // started runs again, but not one whose own time limit fell: it is
    // being stopped.
    bounded(|| {
        let (outcome, ran, s) = time_out_both_tasks_of_a_worker_in_one_pass(None);
        assert!(matches!(outcome, Err(Error::TimeLimit)), "{outcome:?}");
        assert!(!ran, "a task whose time limit fell ran");
        assert_eq!((s.crashed, s.respawned, s.rerun), (0, 1, 0), "{s:?}");
    });
}

/// Closes the worker's sockets (its ends of the descriptor socket), as
/// code that closes "inherited" descriptors would; the worker's pid.
fn close_the_workers_sockets(_: ()) -> u32 {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if let (true, Ok(fd)) = (socket, entry.file_name().to_string_lossy().parse::<i32>()) {
            // SAFETY: closes a descriptor this process owns; the worker
            // loop does not read it for small messages (and large ones are
            // what is tested).
            unsafe { libc::close(fd) };
        }
    }
    std::process::id()
}

#[test]
fn a_worker_whose_descriptor_socket_was_closed_is_replaced_and_large_tasks_run() {
    // One worker, then two: the task goes to the replacement, or to the
    // other worker at once.
    for workers in [1, 2] {
        let ex = pool(workers);
        let broken = ex.submit(close_the_workers_sockets, ()).unwrap();
        let broken = broken.result_timeout(HANG).unwrap();
        // A task it runs when the first large one finds its socket closed
        // finishes there: the worker retires, it is not killed.
        let running = ex
            .submit(
                |ms: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    std::process::id()
                },
                200,
            )
            .unwrap();
        // Large arguments travel with a descriptor over that socket.
        let big = vec![7u8; 2 << 20];
        for round in 0..4 {
            let sum = ex.submit(
                |v: Vec<u8>| v.iter().map(|&b| u64::from(b)).sum::<u64>(),
                big.clone(),
            );
            match sum.map(|f| f.result_timeout(HANG)) {
                Ok(Ok(sum)) => assert_eq!(sum, 7 * (2 << 20)),
                other => panic!("{workers} workers, round {round}: {other:?}"),
            }
        }
        assert!(
            !ex.worker_pids().contains(&broken) || workers > 1,
            "{:?}",
            ex.worker_pids()
        );
        let ran_on = running.result_timeout(HANG).unwrap();
        assert!(ran_on == broken || workers > 1);
        // (Its exit may count as a crash: with debug assertions, the
        // standard library aborts on closing a descriptor closed already.)
        let s = ex.stats();
        assert_eq!((s.completed, s.failed, s.aborted), (6, 0, 0), "{s:?}");
    }
}

fn close_sockets_at_start(_: ()) {
    close_the_workers_sockets(());
}

#[test]
fn workers_that_all_lose_their_socket_fail_a_large_task_after_a_few_tries() {
    // Every worker's initializer closes its sockets: no large message can
    // reach any of them. The task is tried on a few workers, then fails
    // with the transport error, instead of going round for ever; small
    // tasks still run.
    no_core_dumps();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(close_sockets_at_start, ())
        .build()
        .unwrap();
    let outcome = ex
        .submit(|v: Vec<u8>| v.len(), vec![1u8; 2 << 20])
        .and_then(|f| f.result_timeout(HANG));
    match outcome {
        Err(Error::Ipc(e)) => assert!(e.to_string().contains("sendmsg"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ex.submit(|x: u64| x + 1, 1)
            .unwrap()
            .result_timeout(HANG)
            .unwrap(),
        2
    );
    let s = ex.stats();
    assert!(s.respawned <= 5, "{s:?}");
}
