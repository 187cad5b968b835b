//! Per-task time limits (`submit_with_timeout`), in the order they fall.
//!
//! The manager asks for the expired ones and for the next one at every
//! wake, and a task that ends forgets its limit, so both stay cheap however
//! many timed tasks are outstanding: O(log n) per limit added, expired or
//! forgotten, O(1) to tell the next one.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// The time limits of outstanding tasks (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    /// (when, task id), earliest first.
    by_time: BTreeSet<(Instant, u64)>,
    /// Task id → its limit, to forget it when the task ends.
    by_task: HashMap<u64, Instant>,
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
    /// `expired`; returns when the next one falls.
    pub(super) fn expire(&mut self, now: Instant, expired: &mut Vec<u64>) -> Option<Instant> {
        while let Some(&(at, id)) = self.by_time.first() {
            if at > now {
                return Some(at);
            }
            self.by_time.pop_first();
            self.by_task.remove(&id);
            expired.push(id);
        }
        None
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
