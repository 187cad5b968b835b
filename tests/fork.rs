//! A pool does not cross `fork()`: in a forked child of its creator it
//! refuses work and leaves the parent's workers, rings and arrays alone.
//!
//! One test in its own binary: the test forks, and no other test's
//! threads may hold a lock at that moment.

use std::future::Future as _;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use loky::{Error, ProcessPoolExecutor, SharedVec};

fn sleep_then(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(500));
    x
}

/// What the forked child checks; `Err` names the first check that failed.
/// Polls `f` once with a waker that does nothing.
fn poll_once(f: &mut loky::Future<u64>) -> Poll<Result<u64, Error>> {
    fn noop_raw() -> RawWaker {
        fn clone(_: *const ()) -> RawWaker {
            noop_raw()
        }
        fn noop(_: *const ()) {}
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    // SAFETY: the vtable's functions do nothing and ignore the data pointer.
    let waker = unsafe { Waker::from_raw(noop_raw()) };
    std::pin::Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn in_child(
    ex: ProcessPoolExecutor,
    mut pending: loky::Future<u64>,
    shared: SharedVec<u64>,
) -> Result<(), String> {
    let forked = |r: &Result<(), Error>| matches!(r, Err(Error::BrokenProcessPool { cause }) if cause.contains("fork"));
    let submitted = ex.submit(|x: u64| x + 1, 1).map(drop);
    if !forked(&submitted) {
        return Err(format!("submit: {submitted:?}"));
    }
    let started = Instant::now();
    let waited = pending.result().map(drop);
    if !forked(&waited) || started.elapsed() > Duration::from_millis(100) {
        return Err(format!("result of the parent's task: {waited:?}"));
    }
    let allocated = SharedVec::<u64>::zeroed(&ex, 10).map(drop);
    if !forked(&allocated) {
        return Err(format!("SharedVec::zeroed: {allocated:?}"));
    }
    if pending.done() {
        return Err("done() took the parent's result from its rings".into());
    }
    let polled = poll_once(&mut pending);
    if !matches!(&polled, Poll::Ready(Err(Error::BrokenProcessPool { .. }))) {
        return Err(format!("poll of the parent's task: {polled:?}"));
    }
    if pending.cancel() || pending.kill() {
        return Err("stopped the parent's task".into());
    }
    // The reusable executor of the child is its own, and works.
    let reusable = loky::get_reusable_executor()
        .max_workers(1)
        .get()
        .map_err(|e| format!("reusable executor: {e}"))?;
    if reusable.same_pool(&ex) {
        return Err("the reusable executor is the parent's".into());
    }
    let two = reusable
        .submit(|x: u64| x + 1, 1)
        .and_then(|f| f.result_timeout(Duration::from_secs(30)));
    if !matches!(two, Ok(2)) {
        return Err(format!("the child's own pool: {two:?}"));
    }
    reusable.shutdown(true, false, true);
    // Neither may touch the parent's array or workers.
    drop(shared);
    ex.shutdown(true, true, true);
    drop(ex);
    Ok(())
}

#[test]
fn a_forked_child_cannot_use_or_harm_its_parent_s_pool() {
    // The reusable one: the child asks for it too.
    let ex = loky::get_reusable_executor().max_workers(1).get().unwrap();
    // Warm: the worker started and registered (its pid is known).
    assert_eq!(ex.submit(|x: u64| x, 7).unwrap().result().unwrap(), 7);
    // 4 MiB: large enough that freeing it would punch its pages out.
    let shared = SharedVec::from_iter_in(&ex, (0..1u64 << 19).map(|i| i * 3)).unwrap();
    let pending = ex.submit(sleep_then, 42).unwrap();
    let workers = ex.worker_pids();

    // SAFETY: the child runs only loky calls that check for the fork before
    // taking any lock the parent's threads might hold, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The executor itself: its last handle drops in the child.
            in_child(ex, pending, shared)
        }));
        let code = match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(what)) => {
                eprintln!("child: {what}");
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let start = Instant::now();
    // SAFETY: plain waitpid and kill on our own child.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if start.elapsed() > Duration::from_secs(60) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed (status {status:#x}; 1: a check, 2: a panic)"
    );

    // The parent's pool, task and array are as they were.
    assert_eq!(pending.result().unwrap(), 42);
    assert_eq!(ex.worker_pids(), workers);
    assert_eq!(ex.submit(|x: u64| x + 1, 1).unwrap().result().unwrap(), 2);
    assert!(shared
        .as_slice()
        .iter()
        .enumerate()
        .all(|(i, &v)| v == i as u64 * 3));
}
