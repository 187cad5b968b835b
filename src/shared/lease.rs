//! Who may touch which elements of a shared array, in the parent.
//!
//! An [`Allocation`] is one arena block. Every handle to part of it holds a
//! [`Lease`] on its element range: any number of read leases, or one write
//! lease, per element — the borrow rules of `&[T]`/`&mut [T]`, checked at
//! run time because handles outlive the borrows that made them (they travel
//! into tasks). Handles sent to a worker are kept alive by the task until
//! the worker is done with it, or the pool withdrew it before it started
//! (see `wire::Pins`), so a range is never
//! re-leased, nor its memory reused, while a worker may still use it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use loky_ipc::arena::AllocFailure;
use loky_ipc::{Arena, ArenaError, Block};

use crate::error::{Error, Result};

/// One block of a pool's arena, freed when the last reference (the
/// `SharedVec`, a handle, a task's pin) goes.
pub(crate) struct Allocation {
    pub(crate) arena: Arc<Arena>,
    pub(crate) block: Block,
    /// The block's first byte in this process.
    pub(crate) base: std::ptr::NonNull<u8>,
    leases: Mutex<LeaseTable>,
}

// SAFETY: `base` points into the arena's shared mapping, which lives as long
// as `arena`; access to the bytes is governed by the lease table (behind a
// mutex), not by which thread holds the `Allocation`.
unsafe impl Send for Allocation {}
// SAFETY: as above.
unsafe impl Sync for Allocation {}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("arena", &self.arena.id())
            .field("block", &self.block)
            .finish()
    }
}

impl Allocation {
    /// Allocates `bytes` bytes in `arena` (zeroed if asked).
    pub(crate) fn new(arena: &Arc<Arena>, bytes: usize, zeroed: bool) -> Result<Arc<Self>> {
        if arena.forked() {
            return Err(crate::pool::forked_error());
        }
        let block = arena
            .allocate(bytes, zeroed)
            .map_err(|e| alloc_error(arena, bytes, e))?;
        let base = match arena.ptr(block.offset) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the block was just allocated and never handed out.
                unsafe { arena.free(block) };
                return Err(e.into());
            }
        };
        Ok(Arc::new(Self {
            arena: arena.clone(),
            block,
            base,
            leases: Mutex::new(LeaseTable::default()),
        }))
    }

    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        // The table is consistent between statements that can panic.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails if a lease conflicting with `access` to `range` (in elements)
    /// is held.
    pub(crate) fn check(&self, range: &Range<usize>, writable: bool) -> Result<()> {
        self.table().conflict(range, writable)
    }

    /// Takes a lease on `range` (in elements).
    pub(crate) fn lease(self: &Arc<Self>, range: Range<usize>, writable: bool) -> Result<Lease> {
        let id = self.table().take(&range, writable)?;
        Ok(Lease {
            alloc: self.clone(),
            id,
            range,
            writable,
            sent: AtomicBool::new(false),
        })
    }
}

/// The error for an allocation of `bytes` in `arena` that failed with
/// `failure`.
fn alloc_error(arena: &Arena, bytes: usize, failure: AllocFailure) -> Error {
    let full = |requested, reason| Error::ArenaFull {
        requested,
        in_use: arena.in_use(),
        limit: arena.limit(),
        reason,
    };
    match failure {
        AllocFailure::Arena(ArenaError::Full {
            requested,
            in_use,
            limit,
            largest_free,
        }) => {
            // Enough room in all, but no stretch long enough: without the
            // largest stretch the numbers look as if the array should fit.
            let most = crate::pool::memory_and_swap();
            let reason = if requested > most {
                format!("{} ({most} bytes)", crate::error::MORE_THAN_MACHINE)
            } else if in_use.saturating_add(requested) <= limit {
                format!(
                    "; free space is fragmented: the largest free stretch is {largest_free} bytes"
                )
            } else {
                String::new()
            };
            Error::ArenaFull {
                requested,
                in_use,
                limit,
                reason,
            }
        }
        AllocFailure::Arena(ArenaError::NoMemory { requested, reason }) => {
            full(requested, format!("; {reason}"))
        }
        // The first allocation maps the whole reservation: under a tight
        // `ulimit -v` that fails however small the array, and only a
        // smaller limit helps.
        AllocFailure::Os(e) if is_map_refused(&e) => full(bytes, map_refused(arena.limit())),
        AllocFailure::Os(e) => Error::from(e),
        AllocFailure::Arena(other) => full(bytes, format!("; {other}")),
    }
}

/// Whether mapping the arena failed for lack of address space (`ENOMEM`
/// from `mmap`: `RLIMIT_AS`, or too many mappings), as opposed to a broken
/// descriptor or the like.
pub(super) fn is_map_refused(e: &loky_ipc::Error) -> bool {
    matches!(e, loky_ipc::Error::Os { source, .. } if source.raw_os_error() == Some(libc::ENOMEM))
}

/// The `reason` of an [`Error::ArenaFull`] for an arena of `limit` bytes
/// that could not be mapped (see [`is_map_refused`]).
pub(super) fn map_refused(limit: usize) -> String {
    format!(
        "{} the arena's {limit} bytes of address space (ulimit -v?): set a smaller arena_limit",
        crate::error::MAP_REFUSED
    )
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: this was the last reference: no `SharedVec`, handle or
        // task pin remains, so no process will touch the block again (a
        // worker's copy of a handle dies with its task, and the pool drops
        // a task's pins only after the worker reported the task done or
        // died). The block came from this arena and is freed once.
        unsafe { self.arena.free(self.block) };
    }
}

/// A held claim on a range of an allocation; released on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) alloc: Arc<Allocation>,
    id: u64,
    range: Range<usize>,
    pub(crate) writable: bool,
    /// A write lease that went to a task: the parent's handle (still
    /// reachable through a type that shares it behind a lock) no longer gives access.
    pub(crate) sent: AtomicBool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.alloc
            .table()
            .release(self.id, &self.range, self.writable);
    }
}

/// Leases by start, so that taking and releasing one is `O(log n)` however
/// many are held (a task's read lease is released when its result comes).
/// Write leases are disjoint: only the last one starting before a range can
/// overlap it. Read leases may overlap: the ones that can overlap a range
/// start less than the longest read lease's length before it, which for
/// the usual equal chunks is one or two.
#[derive(Debug, Default)]
struct LeaseTable {
    next: u64,
    /// (start, id) -> end
    readers: BTreeMap<(usize, u64), usize>,
    /// The longest read lease held since `readers` was last empty.
    longest_reader: usize,
    /// start -> (end, id)
    writers: BTreeMap<usize, (usize, u64)>,
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

impl LeaseTable {
    fn conflict(&self, range: &Range<usize>, writable: bool) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        // The last writer starting before `range` ends is the only one that
        // can overlap it (writers are disjoint and non-empty).
        if let Some((&start, &(end, _))) = self.writers.range(..range.end).next_back() {
            if end > range.start {
                return Err(Error::RangeBusy { start, end });
            }
        }
        if writable {
            let from = range.start.saturating_sub(self.longest_reader);
            let reader = self
                .readers
                .range((from, 0)..(range.end, 0))
                .map(|(&(start, _), &end)| start..end)
                .find(|r| overlaps(r, range));
            if let Some(r) = reader {
                return Err(Error::RangeBusy {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        Ok(())
    }

    fn take(&mut self, range: &Range<usize>, writable: bool) -> Result<u64> {
        self.conflict(range, writable)?;
        self.next += 1;
        if !writable {
            self.readers.insert((range.start, self.next), range.end);
            self.longest_reader = self.longest_reader.max(range.len());
        } else if !range.is_empty() {
            self.writers.insert(range.start, (range.end, self.next));
        }
        Ok(self.next)
    }

    fn release(&mut self, id: u64, range: &Range<usize>, writable: bool) {
        if writable {
            if self
                .writers
                .get(&range.start)
                .is_some_and(|&(_, i)| i == id)
            {
                self.writers.remove(&range.start);
            }
        } else {
            self.readers.remove(&(range.start, id));
            if self.readers.is_empty() {
                self.longest_reader = 0;
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.readers.len() + self.writers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> Arc<Allocation> {
        let arena = Arc::new(Arena::create(1 << 20, 1).unwrap());
        Allocation::new(&arena, 800, false).unwrap()
    }

    #[test]
    fn readers_share_writers_exclude() {
        let a = alloc();
        let r1 = a.lease(0..50, false).unwrap();
        let _r2 = a.lease(10..60, false).unwrap();
        assert!(matches!(
            a.lease(40..70, true),
            Err(Error::RangeBusy { .. })
        ));
        let w = a.lease(60..100, true).unwrap();
        assert!(matches!(
            a.lease(90..95, false),
            Err(Error::RangeBusy {
                start: 60,
                end: 100
            })
        ));
        assert!(a.lease(99..100, true).is_err());
        drop(w);
        a.lease(90..95, false).unwrap();
        drop(r1);
        assert_eq!(a.table().held(), 1);
        assert!(a.check(&(0..10), true).is_ok());
        assert!(a.check(&(0..11), true).is_err());
    }

    #[test]
    fn a_writer_sees_every_overlapping_reader_whatever_their_lengths() {
        let a = alloc();
        // Short chunks, and one long reader starting well before them.
        let _chunks: Vec<_> = (50..100)
            .step_by(5)
            .map(|s| a.lease(s..s + 5, false).unwrap())
            .collect();
        let long = a.lease(0..40, false).unwrap();
        assert!(a.check(&(39..40), true).is_err(), "inside the long reader");
        assert!(a.check(&(40..50), true).is_ok());
        assert!(a.check(&(62..63), true).is_err(), "inside a chunk");
        drop(long);
        assert!(a.check(&(0..50), true).is_ok());
        assert!(a.check(&(0..51), true).is_err());
    }

    proptest::proptest! {
        /// The table agrees with a plain list of leases.
        #[test]
        fn agrees_with_a_list(ops in proptest::collection::vec((0usize..60, 0usize..20, proptest::bool::ANY, proptest::bool::ANY), 1..80)) {
            let mut t = LeaseTable::default();
            let mut held: Vec<(u64, Range<usize>, bool)> = Vec::new();
            for (start, len, writable, drop_one) in ops {
                if drop_one && !held.is_empty() {
                    let (id, r, w) = held.remove(start % held.len());
                    t.release(id, &r, w);
                    continue;
                }
                let range = start..start + len;
                let busy = held.iter().any(|(_, r, w)| (*w || writable) && overlaps(r, &range));
                match t.take(&range, writable) {
                    Ok(id) => {
                        proptest::prop_assert!(!busy, "{range:?} granted over {held:?}");
                        held.push((id, range, writable));
                    }
                    Err(_) => proptest::prop_assert!(busy, "{range:?} refused, held {held:?}"),
                }
            }
        }
    }

    #[test]
    fn an_arena_the_system_will_not_map_is_full_not_a_transport_failure() {
        let arena = Arena::create(1 << 20, 1).unwrap();
        let os = |errno| loky_ipc::Error::Os {
            op: "mmap (shared arena)",
            source: std::io::Error::from_raw_os_error(errno),
        };
        match alloc_error(&arena, 16, AllocFailure::Os(os(libc::ENOMEM))) {
            e @ Error::ArenaFull {
                requested: 16,
                limit: 1048576,
                ..
            } => {
                let message = e.to_string();
                assert!(
                    message.contains("refused to map the arena's 1048576 bytes")
                        && message.contains("set a smaller arena_limit"),
                    "{message}"
                );
                assert!(!message.contains("raise arena_limit"), "{message}");
            }
            other => panic!("expected ArenaFull, got {other:?}"),
        }
        assert!(matches!(
            alloc_error(&arena, 16, AllocFailure::Os(os(libc::EBADF))),
            Error::Ipc(_)
        ));
    }

    #[test]
    fn empty_ranges_never_conflict() {
        let a = alloc();
        let _w = a.lease(0..100, true).unwrap();
        a.lease(5..5, true).unwrap();
    }
}
