//! The watchdog thread: spawns workers, and notices their deaths through
//! pidfds the moment they happen.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loky_ipc::{ExitStatus, PidFd, Reap};

use super::{Ended, Pool};
use crate::error::Error;
use crate::future::Completion;

/// Consecutive start-up failures after which the pool is broken.
pub(crate) const MAX_STARTUP_FAILURES: u32 = 3;

pub(super) fn run(pool: &Arc<Pool>) {
    loop {
        pool.fill_slots();
        if pool.finished() {
            break;
        }
        let watched: Vec<(usize, Arc<PidFd>)> = {
            let st = pool.state();
            st.workers
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.as_ref().map(|w| (i, w.pidfd.clone())))
                .collect()
        };
        let mut fds: Vec<_> = watched.iter().map(|(_, p)| p.as_fd()).collect();
        fds.push(pool.watchdog_wake.as_fd());
        let ready = match loky_ipc::pidfd::wait_readable(&fds, Some(Duration::from_secs(1))) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "watchdog poll failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        pool.watchdog_wake.clear();
        let mut buried = false;
        for ((i, pidfd), _) in watched.iter().zip(&ready).filter(|(_, r)| **r) {
            pool.bury(*i, pidfd);
            buried = true;
        }
        if buried {
            // Let the callers just woken with the failures run before this
            // thread spends the core on spawning replacements.
            std::thread::yield_now();
        }
    }
    tracing::debug!("watchdog exits");
    pool.watchdog_done
        .store(true, std::sync::atomic::Ordering::Release);
    pool.manager_wake.fire();
    pool.region().parent_bell().wake_all();
}

impl Pool {
    /// Spawns workers into empty slots until the pool is whole.
    fn fill_slots(self: &Arc<Self>) {
        loop {
            let next = {
                let st = self.state();
                // After a shutdown, workers are still (re)started while
                // submitted work waits for them.
                if st.broken.is_some() || (st.shutdown && st.queue.is_empty()) {
                    return;
                }
                let want = if st.shutdown { st.want.max(1) } else { st.want };
                if st.alive() >= want {
                    return;
                }
                st.workers.iter().position(Option::is_none)
            };
            let Some(i) = next else { return };
            if let Err(e) = self.launch(i) {
                tracing::error!(error = %e, "could not start a worker");
                let cause = format!("could not start a worker: {e}");
                if self.startup_failed(cause) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Counts a start-up failure; breaks the pool after too many in a row.
    /// Returns whether the pool is now broken.
    fn startup_failed(&self, cause: String) -> bool {
        let mut failed: Vec<Arc<dyn Completion>> = Vec::new();
        let broken = {
            let mut st = self.state();
            if st.broken.is_some() {
                // Already broken: keep the first cause (the workers killed
                // when it broke are not start-up failures of their own).
                return true;
            }
            st.startup_failures += 1;
            if st.startup_failures < MAX_STARTUP_FAILURES {
                return false;
            }
            let cause = format!(
                "{} consecutive worker start-up failures; last: {cause}",
                st.startup_failures
            );
            tracing::error!(%cause, "process pool broken");
            st.broken = Some(cause.clone());
            // Each taken out of a concurrent cancel's reach first: a cancel
            // that won would report a task cancelled that fails as broken.
            failed.extend(
                st.drain_queue()
                    .into_iter()
                    .map(|q| q.cell)
                    .filter(|c| c.claim_end()),
            );
            // (A worker already seen dying keeps the error its tasks got.)
            for w in st.workers.iter_mut().flatten().filter(|w| w.died.is_none()) {
                // Their tasks fail in `bury`, once the worker is dead (and
                // so done with the tasks' shared arrays).
                w.kill_reason = Some(Error::BrokenProcessPool {
                    cause: cause.clone(),
                });
                let _ = w.pidfd.kill(rustix::process::Signal::KILL);
            }
            cause
        };
        for c in failed {
            c.stage_error(Error::BrokenProcessPool {
                cause: broken.clone(),
            });
            self.publish_later(c);
        }
        true
    }

    /// Handles the death of the worker in slot `i`: delivers the results it
    /// sent before dying, fails its other tasks, frees the slot.
    fn bury(self: &Arc<Self>, i: usize, pidfd: &PidFd) {
        // Reaped under the state lock, and marked so: whoever finds this
        // worker unmarked under that lock knows its pid is not yet free for
        // reuse (see `lifeline_broke`). One reaped elsewhere is marked too;
        // the kernel's kept status is read after the lock (it may take the
        // kernel a moment to release the process).
        let reaped = {
            let mut st = self.state();
            let reaped = pidfd.try_reap();
            // (After an error, it may be reaped: taken as such.)
            if let (Ok(Reap::Exited(_) | Reap::Elsewhere) | Err(_), Some(w)) =
                (&reaped, st.workers[i].as_mut())
            {
                w.reaped = true;
            }
            reaped
        };
        let status = match reaped {
            Ok(Reap::Exited(s)) => s,
            Ok(Reap::Elsewhere) => {
                let status = pidfd.kept_status_when_released();
                if status == ExitStatus::Unknown {
                    report_lost_status(pidfd.pid());
                }
                status
            }
            Ok(Reap::Running) => return, // spurious readiness
            // Not another reaper: said as what it is, once.
            Err(e) => {
                tracing::error!(error = %e, pid = pidfd.pid(), "cannot reap worker; its exit status is unknown");
                ExitStatus::Unknown
            }
        };
        // Results it published before dying are real results.
        let mut done = Vec::new();
        self.drain_slot_locked(i, true, &mut done);
        let mut ended = Ended::default();
        let mut startup_failure = None;
        {
            let mut st = self.state();
            let Some(w) = st.workers[i].as_ref() else {
                return;
            };
            let clean = retired(w.exiting, !w.in_flight.is_empty(), status);
            // Counted already if the early path saw it die.
            let counted = w.died.is_some();
            if !clean {
                // Also during a shutdown: a pool whose workers keep dying
                // at start-up while work waits must break (failing that
                // work), not start worker after worker for ever.
                if !w.ready && !w.killed_by_us() {
                    startup_failure = Some(describe_startup_failure(status));
                }
                // The worker is dead (`died` is set first): none of the
                // tasks queued again goes to it.
                ended = st.end_dead_tasks(i, status, false, self.rerun_claim(i));
            }
            if let Some(w) = st.workers[i].take() {
                if !counted {
                    w.count_end(&mut st.stats, clean);
                }
            }
            // A worker that died running (or retired, which it does after
            // reading its exit message) left its flags up: they would count
            // as a busy core until the slot is used again.
            self.region().slot(i as u32).clear_activity();
        }
        // Completed on the manager thread, not here: a done-callback that
        // blocks must not stop this thread from noticing deaths and
        // spawning replacements.
        self.publish_ended(done, ended);
        if let Some(cause) = startup_failure {
            self.startup_failed(cause);
        }
        self.region().parent_bell().wake_all();
    }
}

/// Whether a worker's end is the retirement the pool asked for: told to
/// exit, it had answered every task it was given, and it exited 0. A lost
/// status (another part of the program reaped it) counts as that exit: the
/// pool asked for it, and no task of the worker's is left to say
/// otherwise. A worker that exits 0 with a task still held did not retire:
/// that task called `exit(0)` before the exit message.
fn retired(exiting: bool, holds_tasks: bool, status: ExitStatus) -> bool {
    exiting && !holds_tasks && matches!(status, ExitStatus::Exited(0) | ExitStatus::Unknown)
}

/// Logs a worker whose exit status someone else took: once as a warning
/// (the program's own choice, which holds for every worker after), then
/// at debug level.
fn report_lost_status(pid: u32) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(
            pid,
            "worker reaped by another part of the program; its exit status is lost"
        );
    } else {
        tracing::warn!(
            pid,
            "worker reaped by another part of the program (SIGCHLD ignored, or a waitpid(-1)), \
             and its exit status lost: the statuses of workers reaped so read as unknown"
        );
    }
}

fn describe_startup_failure(status: ExitStatus) -> String {
    let hint = crate::worker::exit_hint(status)
        .unwrap_or("the worker died before it was ready (in the initializer or at start-up)");
    format!("worker exited with {status}: {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNKNOWN: ExitStatus = ExitStatus::Unknown;
    const CLEAN: ExitStatus = ExitStatus::Exited(0);
    const ABORT: ExitStatus = ExitStatus::Signaled {
        signal: 6,
        core_dumped: false,
    };

    #[test]
    fn a_dead_or_retired_worker_no_longer_counts_as_running() {
        fn nap(ms: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        }
        fn abort_after(ms: u64) -> u64 {
            nap(ms);
            std::process::abort()
        }
        let ex = crate::ProcessPoolExecutor::builder()
            .max_workers(1)
            .idle_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let region = ex.pool().region_arc();
        let running_soon = || {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while region.activity().workers_running == 0 && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            region.activity().workers_running
        };
        let idle_soon = |what: &str| {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while (ex.stats().workers_alive > 0 || region.activity().workers_running > 0)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                ex.stats().workers_alive,
                0,
                "{what}: a worker is still alive"
            );
            assert_eq!(
                region.activity().workers_running,
                0,
                "{what}: its running flag is still up"
            );
        };
        // Killed while running a task: nothing replaces it until asked.
        let dying = ex.submit(abort_after, 300).unwrap();
        assert_eq!(running_soon(), 1);
        assert!(matches!(
            dying.result(),
            Err(crate::Error::TerminatedWorker { .. })
        ));
        idle_soon("after a crash");
        // Retired for idleness: it exits after reading its exit message.
        assert_eq!(ex.submit(nap, 1).unwrap().result().unwrap(), 1);
        idle_soon("after a retirement");
    }

    #[test]
    fn a_retirement_asked_for_is_clean_even_when_its_status_is_lost() {
        assert!(retired(true, false, CLEAN));
        assert!(retired(true, false, UNKNOWN));
    }

    #[test]
    fn an_end_not_asked_for_or_with_a_task_held_is_not_a_retirement() {
        for status in [CLEAN, UNKNOWN, ABORT, ExitStatus::Exited(3)] {
            // Not told to exit.
            assert!(!retired(false, false, status), "{status}");
            // A task it held ended it (`exit(0)` included).
            assert!(!retired(true, true, status), "{status}");
        }
        // Told to exit, but it did not exit cleanly.
        assert!(!retired(true, false, ABORT));
        assert!(!retired(true, false, ExitStatus::Exited(3)));
    }
}
