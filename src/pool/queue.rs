//! The tasks waiting for a worker, in submit order.
//!
//! Every operation is O(1) (amortised), including taking out one task by
//! id: cancelling or timing out tasks anywhere in a long queue must not cost
//! a scan each. Removed tasks leave a hole where they were, skipped when
//! the queue is popped; a position table maps each waiting task to its
//! place.
//!
//! The queue also decides how a message waits: bytes in the caller's
//! scratch buffer are copied; a message already in a spill buffer waits in
//! it (no copy), unless many already do (each may hold a file descriptor)
//! or its buffer is a one-off much larger than the message (its pages
//! would stay reserved while it waits; a pooled buffer's stay reserved
//! anyway), in which case it is copied to the heap and its buffer goes back
//! at once. A message in a donated block (a large `Vec` that travels as its
//! own memory, `crate::donation`) waits in it however many do: the block
//! and its descriptor were the caller's value already, and a copy would
//! only move them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::codec::Encoded;
use crate::future::Completion;

/// Spilled messages that may wait in the queue in their spill buffers.
const MAX_SPILLED_WAITING: usize = 16;
/// Unused bytes of a one-off spill buffer, beyond a quarter of the
/// message, above which a waiting message is copied to the heap instead.
const MAX_SPILL_SLACK: usize = 1 << 20;

/// Table sizes kept once the queue is empty (larger ones are freed).
const KEEP_CAPACITY: usize = 4096;

/// A task waiting for a worker: its completion and its encoded message.
pub(super) struct Queued {
    pub(super) cell: Arc<dyn Completion>,
    pub(super) message: Encoded<Vec<u8>>,
}

/// The waiting tasks (see the module docs).
#[derive(Default)]
pub(super) struct TaskQueue {
    /// Waiting tasks and holes, front first.
    entries: VecDeque<Option<Queued>>,
    /// The position number of `entries[0]`; `entries[k]` has position
    /// `front + k` (wrapping: tasks put back at the front count down).
    front: u64,
    /// Task id → position, for each waiting task.
    position: HashMap<u64, u64>,
    /// How many waiting messages are in spill buffers.
    spilled: usize,
}

impl TaskQueue {
    /// How many tasks wait.
    pub(super) fn len(&self) -> usize {
        self.position.len()
    }

    /// Whether no task waits.
    pub(super) fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    /// Queues a task behind the others. Its message is kept as described in
    /// the module docs.
    pub(super) fn push_back(&mut self, cell: Arc<dyn Completion>, message: Encoded<&[u8]>) {
        let message = match message {
            Encoded::Bytes(b) => Encoded::Bytes(b.to_vec()),
            Encoded::Spilled(m)
                if may_wait_in_buffer(
                    self.spilled,
                    m.len(),
                    m.capacity(),
                    m.is_pooled(),
                    m.is_donated(),
                ) =>
            {
                Encoded::Spilled(m)
            }
            Encoded::Spilled(m) => Encoded::Bytes(m.bytes().to_vec()),
        };
        let at = self.front.wrapping_add(self.entries.len() as u64);
        self.insert(at, Queued { cell, message });
    }

    /// Puts a task taken with [`pop_front`](Self::pop_front) back in front.
    pub(super) fn push_front(&mut self, q: Queued) {
        self.front = self.front.wrapping_sub(1);
        self.entries.push_front(None);
        self.insert(self.front, q);
    }

    /// Takes the task at the front.
    pub(super) fn pop_front(&mut self) -> Option<Queued> {
        while let Some(e) = self.entries.pop_front() {
            self.front = self.front.wrapping_add(1);
            if let Some(q) = e {
                self.taken(&q);
                return Some(q);
            }
        }
        None
    }

    /// Takes task `id` out of the queue, wherever it is.
    pub(super) fn remove(&mut self, id: u64) -> Option<Queued> {
        let at = *self.position.get(&id)?;
        let k = at.wrapping_sub(self.front) as usize;
        let q = self.entries.get_mut(k)?.take()?;
        self.taken(&q);
        // Holes at either end go now; those inside go when popped.
        while matches!(self.entries.back(), Some(None)) {
            self.entries.pop_back();
        }
        while matches!(self.entries.front(), Some(None)) {
            self.entries.pop_front();
            self.front = self.front.wrapping_add(1);
        }
        Some(q)
    }

    /// Takes every waiting task, front first.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Queued> {
        self.position.clear();
        self.spilled = 0;
        std::mem::take(&mut self.entries).into_iter().flatten()
    }

    fn insert(&mut self, at: u64, q: Queued) {
        if matches!(q.message, Encoded::Spilled(_)) {
            self.spilled += 1;
        }
        self.position.insert(q.cell.id(), at);
        let k = at.wrapping_sub(self.front) as usize;
        if k == self.entries.len() {
            self.entries.push_back(Some(q));
        } else {
            self.entries[k] = Some(q);
        }
    }

    fn taken(&mut self, q: &Queued) {
        self.position.remove(&q.cell.id());
        if matches!(q.message, Encoded::Spilled(_)) {
            self.spilled -= 1;
        }
        if self.position.is_empty() {
            // Only holes are left. A burst of a million queued tasks leaves
            // tens of MB of table behind: given back once it has drained.
            self.entries.clear();
            if self.entries.capacity() > KEEP_CAPACITY {
                self.entries = VecDeque::new();
                self.position = HashMap::new();
            }
        }
    }
}

/// Whether a message of `len` bytes in a spill buffer of `capacity` may
/// wait in it, with `waiting` others already doing so (see the module
/// docs).
fn may_wait_in_buffer(
    waiting: usize,
    len: usize,
    capacity: usize,
    pooled: bool,
    donated: bool,
) -> bool {
    (waiting < MAX_SPILLED_WAITING || donated)
        && (pooled || capacity.saturating_sub(len) <= len / 4 + MAX_SPILL_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future::{Cell, TaskCell};
    use std::sync::Weak;

    fn cell(id: u64) -> Arc<dyn Completion> {
        Arc::new(Cell::new(TaskCell::new(id, Weak::new()), |_, _| Ok(0u8)))
    }

    fn push(q: &mut TaskQueue, id: u64) {
        q.push_back(cell(id), Encoded::Bytes(&id.to_le_bytes()));
    }

    fn ids(q: &mut TaskQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop_front().map(|t| t.cell.id())).collect()
    }

    #[test]
    fn tasks_leave_in_order_and_any_one_can_be_taken_out() {
        let mut q = TaskQueue::default();
        for id in 1..=5 {
            push(&mut q, id);
        }
        let t = q.remove(3).expect("waiting");
        assert_eq!(t.cell.id(), 3);
        assert!(matches!(t.message, Encoded::Bytes(ref b) if b == &3u64.to_le_bytes()));
        assert!(q.remove(3).is_none(), "taken once");
        assert!(!q.position.contains_key(&3) && q.position.contains_key(&4));
        assert!(q.remove(9).is_none(), "never queued");
        assert_eq!(q.len(), 4);
        let first = q.pop_front().expect("waiting");
        assert_eq!(first.cell.id(), 1);
        q.push_front(first);
        assert_eq!(ids(&mut q), [1, 2, 4, 5]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_drained_burst_gives_its_tables_back() {
        let mut q = TaskQueue::default();
        for id in 0..10 * KEEP_CAPACITY as u64 {
            push(&mut q, id);
        }
        assert!(q.remove(5).is_some());
        assert_eq!(ids(&mut q).len(), 10 * KEEP_CAPACITY - 1);
        assert!(q.entries.capacity() <= KEEP_CAPACITY);
        assert!(q.position.capacity() <= KEEP_CAPACITY);
        push(&mut q, 1);
        assert_eq!(ids(&mut q), [1]);
    }

    #[test]
    fn removing_from_the_back_in_reverse_leaves_no_holes() {
        let mut q = TaskQueue::default();
        for id in 0..1000 {
            push(&mut q, id);
        }
        for id in (0..1000).rev() {
            assert!(q.remove(id).is_some());
            assert_eq!(q.entries.len(), id as usize, "holes at the back go at once");
        }
        assert!(q.is_empty());
    }

    fn spilled(len: usize, capacity: usize) -> loky_ipc::spill::SpilledMessage {
        let buffer = loky_ipc::spill::Buffer::lease(capacity).expect("spill buffer");
        loky_ipc::spill::SpilledMessage::new(buffer, len).expect("fits")
    }

    #[test]
    fn a_one_off_buffer_much_larger_than_its_message_is_not_kept_waiting() {
        const MIB: usize = 1 << 20;
        assert!(may_wait_in_buffer(
            0,
            32 * MIB,
            36 * MIB + 65536,
            false,
            false
        ));
        assert!(!may_wait_in_buffer(0, 32 * MIB, 71 * MIB, false, false));
        assert!(!may_wait_in_buffer(0, 10, 4 * MIB, false, false));
        // A pooled buffer's pages are reserved whether the message waits
        // in it or not.
        assert!(may_wait_in_buffer(0, 10, 64 * MIB, true, false));
        assert!(!may_wait_in_buffer(
            MAX_SPILLED_WAITING,
            10,
            4096,
            true,
            false
        ));
    }

    #[test]
    fn a_donated_block_waits_in_itself_however_many_do_unless_mostly_empty() {
        const MIB: usize = 1 << 20;
        let many = MAX_SPILLED_WAITING + 100;
        assert!(may_wait_in_buffer(
            many,
            256 * MIB,
            256 * MIB + 8192,
            false,
            true
        ));
        assert!(!may_wait_in_buffer(
            many,
            256 * MIB,
            256 * MIB + 8192,
            false,
            false
        ));
        // A Vec of 10 elements in a 64 MiB capacity: copied out, the block
        // freed.
        assert!(!may_wait_in_buffer(0, 4096 + 96, 64 * MIB, false, true));
    }

    #[test]
    fn a_few_spilled_messages_wait_in_their_buffers_the_rest_on_the_heap() {
        let mut q = TaskQueue::default();
        for id in 0..MAX_SPILLED_WAITING as u64 + 4 {
            q.push_back(cell(id), Encoded::Spilled(spilled(4096, 4096)));
        }
        let kinds: Vec<bool> = std::iter::from_fn(|| q.pop_front())
            .map(|t| matches!(t.message, Encoded::Spilled(_)))
            .collect();
        let mut want = vec![true; MAX_SPILLED_WAITING];
        want.extend([false; 4]);
        assert_eq!(kinds, want);
        assert_eq!(q.spilled, 0);
        // Room again once they left.
        q.push_back(cell(100), Encoded::Spilled(spilled(4096, 4096)));
        assert!(matches!(
            q.remove(100).map(|t| t.message),
            Some(Encoded::Spilled(_))
        ));
    }

    proptest::proptest! {
        /// The queue behaves as a plain list with removal by id.
        #[test]
        fn behaves_as_a_list(ops in proptest::collection::vec((0u8..4, 0u64..40), 0..200)) {
            let mut q = TaskQueue::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0;
            for (op, pick) in ops {
                match op {
                    0 => {
                        push(&mut q, next);
                        model.push_back(next);
                        next += 1;
                    }
                    1 => {
                        let got = q.pop_front().map(|t| t.cell.id());
                        proptest::prop_assert_eq!(got, model.pop_front());
                        if let Some(id) = got {
                            if pick % 2 == 0 {
                                // Put back, as refill does with a full ring.
                                q.push_front(Queued {
                                    cell: cell(id),
                                    message: Encoded::Bytes(Vec::new()),
                                });
                                model.push_front(id);
                            }
                        }
                    }
                    _ => {
                        let got = q.remove(pick).map(|t| t.cell.id());
                        let want = model.iter().position(|&id| id == pick).map(|k| {
                            model.remove(k);
                            pick
                        });
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
            }
            proptest::prop_assert_eq!(ids(&mut q), Vec::from(model));
        }
    }
}
