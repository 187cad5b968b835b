//! Per-task time limits (`submit_with_timeout`), in the order they fall.
//!
//! The manager asks for the expired ones and for the next one at every
//! wake, and a task that ends forgets its limit, so both stay cheap however
//! many timed tasks are outstanding: O(log n) per limit added, expired or
//! forgotten, O(1) to tell the next one.
//!
//! The manager then stops the expired tasks one by one
//! (`Pool::expire_deadlines`), and a stop may kill a worker that holds
//! another of them, whose death can end that one first: until the pass
//! has stopped them all, their limits are known to have fallen
//! ([`Deadlines::fell`]), so that a death ends them with their own
//! `TimeLimit` too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

/// The time limits of outstanding tasks (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    /// (when, task id), earliest first.
    by_time: BTreeSet<(Instant, u64)>,
    /// Task id → its limit, to forget it when the task ends.
    by_task: HashMap<u64, Instant>,
    /// The tasks whose limits fell in a pass that has yet to stop them
    /// ([`Deadlines::expire`] to [`Deadlines::stopped`]).
    fallen: HashSet<u64>,
}

impl Deadlines {
    /// Gives task `id` the limit `at` (replacing an earlier one). Returns
    /// whether it is now the earliest limit, which a sleeping manager must
    /// be woken to see.
    pub(super) fn add(&mut self, at: Instant, id: u64) -> bool {
        if let Some(old) = self.by_task.insert(id, at) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((at, id));
        self.by_time.first() == Some(&(at, id))
    }

    /// Task `id` ended: its limit, if it had one, goes.
    pub(super) fn forget(&mut self, id: u64) {
        // The common case (no timed task outstanding) is one branch.
        if self.by_task.is_empty() {
            return;
        }
        if let Some(at) = self.by_task.remove(&id) {
            self.by_time.remove(&(at, id));
        }
    }

    /// Removes the limits that fell by `now`, appending their tasks to
    /// `expired`, which count as [fallen](Deadlines::fell) until they are
    /// [`stopped`](Deadlines::stopped); returns when the next one falls.
    pub(super) fn expire(&mut self, now: Instant, expired: &mut Vec<u64>) -> Option<Instant> {
        while let Some(&(at, id)) = self.by_time.first() {
            if at > now {
                return Some(at);
            }
            self.by_time.pop_first();
            self.by_task.remove(&id);
            self.fallen.insert(id);
            expired.push(id);
        }
        None
    }

    /// Whether task `id`'s limit fell and the pass that stops it has not
    /// finished yet: if it ends some other way meanwhile (its worker dies,
    /// killed to stop another task), it ends with `TimeLimit` all the same.
    pub(super) fn fell(&self, id: u64) -> bool {
        self.fallen.contains(&id)
    }

    /// The pass is done with `ids` (from [`Deadlines::expire`]): each was
    /// stopped, or had ended.
    pub(super) fn stopped(&mut self, ids: &[u64]) {
        for id in ids {
            self.fallen.remove(id);
        }
    }

    /// How many limits are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.by_time.len(), self.by_task.len());
        self.by_task.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Instant {
        // One base for the whole test run, so limits compare as numbers.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn limits_expire_in_time_order_and_tell_the_next_one() {
        let mut d = Deadlines::default();
        assert!(d.add(at(30), 1));
        assert!(d.add(at(10), 2), "earlier than the first: wake the manager");
        assert!(!d.add(at(20), 3));
        assert!(!d.add(at(20), 4), "two tasks may share a limit");
        let mut expired = Vec::new();
        assert_eq!(d.expire(at(5), &mut expired), Some(at(10)));
        assert!(expired.is_empty());
        assert_eq!(d.expire(at(20), &mut expired), Some(at(30)));
        assert_eq!(expired, [2, 3, 4]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.expire(at(99), &mut expired), None);
        assert_eq!(expired, [2, 3, 4, 1]);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn a_task_that_ends_forgets_its_limit() {
        let mut d = Deadlines::default();
        d.add(at(10), 1);
        d.add(at(20), 2);
        d.forget(1);
        d.forget(7); // never had one
        assert_eq!(d.len(), 1);
        let mut expired = Vec::new();
        assert_eq!(d.expire(at(15), &mut expired), Some(at(20)));
        assert!(expired.is_empty(), "a forgotten limit does not fire");
    }

    #[test]
    fn expired_limits_count_as_fallen_until_stopped() {
        let mut d = Deadlines::default();
        d.add(at(10), 1);
        d.add(at(10), 2);
        d.add(at(30), 3);
        assert!(!d.fell(1), "not expired yet");
        let mut expired = Vec::new();
        d.expire(at(20), &mut expired);
        assert!(d.fell(1) && d.fell(2) && !d.fell(3));
        // A pass nested in this one (a done-callback that waits, on the
        // manager) is done with its own tasks only.
        let mut nested = Vec::new();
        d.expire(at(40), &mut nested);
        d.stopped(&nested);
        assert!(d.fell(1) && d.fell(2) && !d.fell(3));
        d.stopped(&expired);
        assert!(!d.fell(1) && !d.fell(2));
    }

    #[test]
    fn a_new_limit_replaces_the_old_one() {
        let mut d = Deadlines::default();
        d.add(at(10), 1);
        assert!(d.add(at(40), 1));
        assert_eq!(d.len(), 1);
        let mut expired = Vec::new();
        assert_eq!(d.expire(at(20), &mut expired), Some(at(40)));
        assert!(expired.is_empty());
    }
}
