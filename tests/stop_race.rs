//! A stop that races the end of the task it stops, made certain: in debug
//! builds the pool waits `LOKY_TEST_KILL_PAUSE_MS` between deciding to kill
//! a worker to stop its task and the kill, so the worker always finishes
//! that task and reaches the one waiting behind it first. That one must not
//! start there (it would die with the worker): it runs on the replacement.
//! Its own binary: the variable holds for the whole process.
#![cfg(debug_assertions)]

use std::time::Duration;

use loky::{Error, ProcessPoolExecutor};

const HANG: Duration = Duration::from_secs(60);

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The sum of `bytes`, after `ms` milliseconds (longer than the pause: a
/// worker that started it would be killed in the middle).
fn slow_byte_sum((bytes, ms): (Vec<u8>, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn the_task_behind_a_stopped_one_runs_on_the_replacement_when_the_worker_reaches_it_first() {
    std::env::set_var("LOKY_TEST_KILL_PAUSE_MS", "300");
    let ex = ProcessPoolExecutor::new(1).unwrap();
    assert_eq!(
        ex.submit(nap_ms, 0).unwrap().result_timeout(HANG).unwrap(),
        0
    );
    // Its argument in the ring, then in a spill buffer (over half the
    // ring), which the worker takes off the ring before it reads the task.
    for (round, len) in [16usize, 600 << 10].into_iter().enumerate() {
        let stopped = ex.submit(nap_ms, 50).unwrap();
        let behind = ex.submit(slow_byte_sum, (vec![3u8; len], 500)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert!(stopped.running() && behind.running(), "both in the worker");
        // Blocks through the pause: the worker ends `stopped` at 50 ms and
        // reaches `behind`.
        assert!(stopped.kill());
        assert!(matches!(
            stopped.result_timeout(HANG),
            Err(Error::Cancelled)
        ));
        match behind.result_timeout(HANG) {
            Ok(sum) => assert_eq!(sum, 3 * len as u64),
            Err(e) => panic!("{len} bytes: the task behind the stopped one: {e}"),
        }
        let s = ex.stats();
        assert_eq!((s.rerun, s.crashed), (round as u64 + 1, 0), "{s:?}");
    }
    // Withdrawn while its worker is being killed (the kill paused, the
    // worker stopped before it): it never started, so the withdrawal
    // succeeds and it never runs.
    let stopped = ex.submit(nap_ms, 50).unwrap();
    let behind = ex.submit(slow_byte_sum, (vec![1u8; 16], 500)).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    std::thread::scope(|s| {
        let killer = s.spawn(|| stopped.kill());
        std::thread::sleep(Duration::from_millis(100));
        assert!(behind.withdraw(), "a held task never started");
        assert!(killer.join().unwrap());
    });
    assert!(matches!(behind.result_timeout(HANG), Err(Error::Cancelled)));
    assert!(matches!(
        stopped.result_timeout(HANG),
        Err(Error::Cancelled)
    ));
    assert_eq!(
        ex.submit(nap_ms, 1).unwrap().result_timeout(HANG).unwrap(),
        1
    );
}
