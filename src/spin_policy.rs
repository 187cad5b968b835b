//! When a waiting thread may spin rather than sleep: only while a CPU is
//! free for it.
//!
//! A spinning thread answers a message in a microsecond instead of the tens
//! a futex wake costs, but it holds a CPU while it waits. On a machine with
//! as many workers as CPUs that CPU is taken from a thread with work to do:
//! the parent's thread that feeds the workers (encoding a map's chunks), or
//! a worker the parent waits for. Measured on 2 CPUs with 2 workers, workers
//! spinning beside a busy feeder made a 10M-item `map` 15-20 % slower, and a
//! parent spinning beside two running workers made a 1M-element
//! `map_shared` 10 % slower; neither costs anything on a round trip, where
//! one task runs at a time.
//!
//! What is counted comes from the shared region: the threads spinning (the
//! parent's and the workers') and the workers running tasks (each worker's
//! `running` flag). A snapshot, read without locks: the rules only tune
//! speed, never correctness (a thread that does not spin sleeps on its
//! doorbell and is woken). "Running" means not idle, not "on a CPU": a
//! task that sleeps or waits on I/O counts, so a pool of I/O-bound tasks
//! with as many workers as CPUs answers through futex wakes, a few
//! microseconds each. With one CPU, no worker spins: the parent needs it to
//! send the next message.

use loky_ipc::Activity;

/// Whether a worker that just ran out of messages may spin: fewer threads
/// spin than there are CPUs, and the other workers (spinning or running)
/// leave a CPU for it and one for the parent's thread that feeds them (a
/// worker whose spin takes that thread's CPU waits longer for its next
/// message). That thread's own spin is not counted again: it is the one
/// the CPU is left for.
pub(crate) fn worker_may_spin(a: Activity, ncpu: u32) -> bool {
    let others = a.workers_spinning.saturating_add(a.workers_running);
    a.spinning() < ncpu && others.saturating_add(2) <= ncpu
}

/// Whether a parent thread waiting for results may spin: the threads
/// spinning and the workers running leave a CPU for it (it would take one
/// from a worker it waits for).
pub(crate) fn parent_may_spin(a: Activity, ncpu: u32) -> bool {
    a.spinning().saturating_add(a.workers_running) < ncpu
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(parent_spinning: u32, workers_spinning: u32, workers_running: u32) -> Activity {
        Activity {
            parent_spinning,
            workers_spinning,
            workers_running,
        }
    }

    #[test]
    fn a_round_trip_spins_on_both_sides() {
        // One task at a time on 2 CPUs: the parent waits while one worker
        // runs; the worker, done, finds the parent still spinning.
        assert!(parent_may_spin(seen(0, 0, 1), 2));
        assert!(worker_may_spin(seen(1, 0, 0), 2));
    }

    #[test]
    fn a_busy_machine_spins_no_more() {
        // 2 workers on 2 CPUs, both running: the parent sleeps.
        assert!(!parent_may_spin(seen(0, 0, 2), 2));
        // One worker still runs and the parent feeds it: the other sleeps.
        assert!(!worker_may_spin(seen(0, 0, 1), 2));
        // Both wait for the parent's next chunk: one spins, not both.
        assert!(worker_may_spin(seen(0, 0, 0), 2));
        assert!(!worker_may_spin(seen(0, 1, 0), 2));
        // Every CPU already spins.
        assert!(!worker_may_spin(seen(2, 0, 0), 2));
        assert!(!parent_may_spin(seen(1, 1, 0), 2));
    }

    #[test]
    fn spare_cpus_are_used() {
        // 16 CPUs, 8 workers all running: room for everyone to spin.
        assert!(parent_may_spin(seen(0, 0, 8), 16));
        assert!(worker_may_spin(seen(1, 0, 7), 16));
        // 16 workers on 16 CPUs: one that finishes while the others run
        // may spin only if a CPU besides the parent's is free.
        assert!(!worker_may_spin(seen(0, 0, 15), 16));
        assert!(!worker_may_spin(seen(0, 1, 14), 16));
        assert!(worker_may_spin(seen(1, 0, 14), 16));
    }

    #[test]
    fn one_cpu_never_spins_a_worker() {
        // The parent needs the only CPU to send the next message.
        assert!(!worker_may_spin(seen(0, 0, 0), 1));
        assert!(parent_may_spin(seen(0, 0, 0), 1));
        assert!(!parent_may_spin(seen(0, 0, 1), 1));
    }

    /// The `running` flag the rules read: up while the worker runs its
    /// initializer (its first message, waiting before it starts) and its
    /// tasks, down once it is idle.
    #[test]
    fn a_worker_counts_as_running_from_its_start_until_it_is_idle() {
        use std::time::{Duration, Instant};
        fn nap(ms: u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let ex = crate::ProcessPoolExecutor::builder()
            .max_workers(1)
            .initializer(nap, 1_500)
            .build()
            .unwrap();
        let region = ex.pool().region_arc();
        let running = || region.activity().workers_running;
        let until = |want: u32, within: Duration| {
            let end = Instant::now() + within;
            while running() != want && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            running()
        };
        // Started (on demand) by the first task, which waits behind the
        // initializer.
        let first = ex.submit(|x: u64| x + 1, 1).unwrap();
        assert_eq!(until(1, Duration::from_secs(10)), 1, "in its initializer");
        assert!(!first.done(), "the initializer took 1.5 s");
        assert_eq!(first.result().unwrap(), 2);
        assert_eq!(until(0, Duration::from_secs(10)), 0, "idle after its task");
        let napping = ex.submit(nap, 300).unwrap();
        assert_eq!(until(1, Duration::from_secs(10)), 1, "in a task");
        napping.result().unwrap();
        assert_eq!(until(0, Duration::from_secs(10)), 0, "idle again");
    }

    #[test]
    fn counts_from_a_scribbled_region_do_not_overflow() {
        assert!(!worker_may_spin(seen(0, u32::MAX, u32::MAX), 4));
        assert!(!parent_may_spin(seen(u32::MAX, u32::MAX, u32::MAX), 4));
    }
}
