//! The manager thread: drains result rings when no caller is doing it,
//! refills workers, and runs housekeeping.

use std::sync::Arc;

use super::{Pool, TICK};

pub(super) fn run(pool: &Arc<Pool>) {
    super::OWN_POOL.with(|own| *own.borrow_mut() = Some(Arc::downgrade(pool)));
    let bell = pool.region().parent_bell();
    let mut drained = Vec::new();
    loop {
        pool.drain_into(true, &mut drained);
        if pool.publish_awake(drained.drain(..)) {
            continue;
        }
        // The watchdog decides when the pool is over (it alone starts
        // workers, so it cannot miss one being started).
        if pool
            .watchdog_done
            .load(std::sync::atomic::Ordering::Acquire)
            && pool.finished()
        {
            pool.stop_publishing_later();
            break;
        }
        // Off the doorbell: stopping a task past its time limit, or failing
        // one that cannot be sent, may run its done-callbacks here.
        bell.leave();
        let next_deadline = pool.housekeeping();
        bell.enter();
        let nap = next_deadline.map_or(TICK, |at| {
            at.saturating_duration_since(std::time::Instant::now())
                .min(TICK)
        });
        if pool.standby.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            // Callers are sleeping on the doorbell and drain the rings
            // themselves: step off it until the last of them leaves.
            bell.leave();
            // A worker that published while this thread still counted as
            // awake rang nobody, and the callers sleep: read it now, or it
            // would wait for the nap below.
            if pool.has_work() {
                bell.enter();
                continue;
            }
            // Up to the next time limit: the waiting callers drain results
            // but do not watch time limits.
            pool.manager_wake
                .wait_until(Some(std::time::Instant::now() + nap));
            bell.enter();
            continue;
        }
        // (Once the watchdog is done the pool stays finished: the check at
        // the top of the loop ends it.)
        pool.sleep_on_bell(nap, || {
            pool.has_work()
                || pool
                    .watchdog_done
                    .load(std::sync::atomic::Ordering::Acquire)
        });
    }
    tracing::debug!("manager exits");
}

impl Pool {
    /// Periodic work: time limits, idle workers, a shutdown in progress.
    /// Returns when the next task time limit falls, if any.
    pub(super) fn housekeeping(&self) -> Option<std::time::Instant> {
        let next = self.expire_deadlines();
        self.refill_idle();
        self.retire_idle();
        // Large-message buffers nobody used for a while give their pages back.
        loky_ipc::spill::trim(self.config.keep_freed);
        let mut st = self.state();
        if st.shutdown {
            st.exit_idle_workers();
        }
        // One-off buffers of large messages that idle workers read already.
        st.collect_spills();
        next
    }
}
