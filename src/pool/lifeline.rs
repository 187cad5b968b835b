//! Deaths seen early: the threads that sleep on the parent doorbell (a
//! caller waiting for a result, or the manager) also sleep on the workers'
//! lifelines, and fail a dead worker's tasks as soon as its main thread
//! starts to exit, instead of when the kernel has finished tearing the
//! process down (which is when the watchdog's pidfd turns readable: 0.1 ms
//! for a small worker, milliseconds to tens of milliseconds for one with a
//! large heap).
//!
//! Each worker holds the lifeline of its slot (see
//! [`loky_ipc::lifeline`]); the kernel wakes one sleeper when it breaks.
//! That sleeper, and the callers it wakes in turn, are often queued on the
//! dying worker's own core, where they would wait for the teardown to
//! finish; so the first thing it does is give the dying worker the lowest
//! priority, and they run first.
//!
//! The watchdog still reaps the process, fails whatever this path left
//! (tasks holding shared arrays, which only a reaped worker is surely done
//! with), and starts the replacement. Where a worker cannot hold its
//! lifeline (a C library other than glibc, a 32-bit target), the watchdog
//! alone does it all, from the pidfd. On a kernel without `futex_waitv`
//! (before 5.16) lifelines are still armed, but a sleeper waits on the
//! doorbell alone (`SleepToken::wait_watching` falls back to a plain wait)
//! and checks the lifelines when it wakes: a dead worker's tasks then fail
//! at the next wake-up, at most one `TICK` (100 ms) later.

use std::time::Duration;

use loky_ipc::lifeline::{Armed, State};

use super::{Ended, Pool};

/// Lifelines armed for a sleep, with their slots; and the (slot, pid) of
/// the workers whose lifeline is broken already.
type Lifelines<'a> = (Vec<(usize, Armed<'a>)>, Vec<(usize, u32)>);

impl Pool {
    /// Sleeps on the parent doorbell (and the workers' lifelines) for at
    /// most `nap`, unless `busy()` finds work after announcing the sleep.
    /// Returns false if it did not sleep. Handles the lifelines that broke.
    pub(super) fn sleep_on_bell(&self, nap: Duration, busy: impl FnOnce() -> bool) -> bool {
        let token = self.region.parent_bell().announce_sleep();
        if busy() {
            token.cancel();
            return false;
        }
        // Armed after the announcement (so a thread with work to do takes
        // no lock here): a lifeline that breaks meanwhile reads as broken
        // below, or makes the wait return at once.
        let (armed, broken) = self.arm_lifelines();
        if !broken.is_empty() {
            token.cancel();
            for (i, pid) in broken {
                self.lifeline_broke(i, pid);
            }
            return false;
        }
        let lines: Vec<Armed<'_>> = armed.iter().map(|(_, a)| *a).collect();
        token.wait_watching(&lines, nap);
        for (i, a) in &armed {
            if a.broken() {
                self.lifeline_broke(*i, a.tid());
            }
        }
        true
    }

    /// Arms the lifelines of the ready workers still watched. Returns them
    /// with their slots, and the (slot, pid) of those already broken.
    fn arm_lifelines(&self) -> Lifelines<'_> {
        let mut armed = Vec::new();
        let mut broken = Vec::new();
        let mut st = self.state();
        for (i, w) in st.workers.iter_mut().enumerate() {
            let Some(w) = w.as_mut() else { continue };
            if !(w.ready && w.watch_lifeline && w.died.is_none()) {
                continue;
            }
            let line = self.region.slot(i as u32).lifeline();
            match line.arm() {
                Some(a) if a.tid() == w.pid => armed.push((i, a)),
                None if line.state() == State::Broken => broken.push((i, w.pid)),
                // Not taken (the worker could not hold it), or held by some
                // other thread: the pidfd alone tells of this worker.
                _ => w.watch_lifeline = false,
            }
        }
        (armed, broken)
    }

    /// The lifeline of worker `pid` in slot `i` broke: if the kernel already
    /// says how it is exiting, fail its tasks now (see the module docs).
    fn lifeline_broke(&self, i: usize, pid: u32) {
        let status = {
            let mut st = self.state();
            let Some(w) = st.workers[i].as_mut().filter(|w| w.pid == pid && !w.reaped) else {
                return;
            };
            w.watch_lifeline = false;
            // A clean exit(0) or an execve says nothing here: the pidfd will.
            let Some(status) = w.probe.as_ref().and_then(|p| p.exiting()) else {
                return;
            };
            // Draining its results below refills slots: not this one.
            w.dying = true;
            // Its teardown must not delay this thread or the callers woken
            // below. Done under the state lock, which the watchdog holds to
            // reap and mark the worker reaped: unmarked, `pid` is still this
            // process and not a reused number.
            deprioritise(pid);
            // Exiting is not yet gone: if only its main thread exits (a
            // task ended it alone while other threads live on), the
            // process would stay, the pidfd would never report it, and the
            // slot would stay taken. Its tasks fail below either way. Not
            // on a signal, which ends the whole process anyway (and which
            // may be writing a core dump that a kill would cut short).
            if matches!(status, crate::ExitStatus::Exited(_)) {
                let _ = w.pidfd.kill(rustix::process::Signal::KILL);
            }
            status
        };
        // Results it published before dying are real results.
        let mut done = Vec::new();
        self.drain_slot_locked(i, false, &mut done);
        let ended = {
            let mut guard = self.state();
            let st = &mut *guard;
            match st.workers[i].as_mut() {
                // Not reaped, and not failed by another sleeper meanwhile.
                Some(w) if w.pid == pid && w.died.is_none() => {
                    w.count_end(&mut st.stats, false);
                    st.end_dead_tasks(i, status, true, self.rerun_claim(i))
                }
                _ => Ended::default(),
            }
        };
        tracing::debug!(pid, %status, failed = ended.failed.len(), "worker dying; its tasks fail now");
        // Whatever happened meanwhile, the results drained above are out of
        // the worker's books: they must be published here.
        self.publish_ended(done, ended);
        self.region.parent_bell().wake_all();
    }
}

/// Gives the dying worker the lowest priority for the rest of its teardown,
/// so that the threads it is about to wake (the callers of its tasks) run
/// before it on its core instead of after it.
fn deprioritise(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::setpriority_process(Some(pid), 19);
    }
}
