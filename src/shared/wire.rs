//! How a shared-array handle crosses a process boundary: as an
//! [`ArchivedHandle`] (arena id, byte offset, length), never as its bytes.
//!
//! * In the parent, encoding only happens inside [`encoding_for`], which
//!   names the arena of the pool the task goes to. Encoding checks the
//!   handle belongs to it and *pins* the handle's lease: the pins travel
//!   with the task and are dropped only once the worker is done with it (a
//!   result came back, or the worker died) or will never start it (the pool
//!   withdrew it from the worker's ring), so the elements stay leased and
//!   the memory stays allocated while a worker may use them.
//! * In a worker, decoding maps the parent's arena (descriptor
//!   [`crate::pool::ARENA_FD`]), checks the range lies inside it, and makes
//!   a handle that is valid until the task returns: each task gets a new
//!   epoch, and a handle kept past its task refuses to give access.
//! * Each handle carries a *grant*: a hash, keyed with a secret of the pool
//!   that its workers learn at start, of the task it was pinned for and of
//!   what it names. A worker accepts only handles granted to the task it
//!   runs, and no two handles of one task that overlap where either may
//!   write. So a handle that loky did not pin for this task (bytes of an
//!   earlier message replayed by a custom codec, or made up) is an error,
//!   not a second writer of leased or freed memory.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rkyv::rancor::{Fallible, Source};
use rkyv::rend::{u32_le, u64_le};
use rkyv::Place;

use crate::error::Error;

/// Something a task keeps alive until its worker is done with it.
pub(crate) type Pin = Arc<super::lease::Lease>;

/// The pins of one task.
pub(crate) type Pins = Vec<Pin>;

struct EncodeContext {
    arena: u64,
    key: GrantKey,
    task: u64,
    pins: Pins,
    error: Option<Error>,
}

/// The secret a pool's grants are keyed with.
pub(crate) type GrantKey = [u64; 2];

/// A fresh secret for a pool's grants. Not for adversaries (a task can read
/// its own process's memory); it tells apart the handles loky sent with a
/// task from any other bytes.
pub(crate) fn new_grant_key() -> GrantKey {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    [random.hash_one(1u64), random.hash_one(2u64)]
}

/// The grant of the handle `w` for task `task`. Parent and worker run the
/// same binary, so they hash alike.
fn grant(key: GrantKey, task: u64, w: &Wire) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, task, w.arena, w.offset, w.len, w.elem_size, w.writable).hash(&mut h);
    h.finish()
}

thread_local! {
    static CONTEXT: RefCell<Vec<EncodeContext>> = const { RefCell::new(Vec::new()) };
}

/// Runs `encode`, which encodes the argument of task `task` for the pool
/// whose arena is `arena` and whose grants are keyed with `key`, and then
/// collects the pins with [`take_pins`]. A typed error recorded by a handle
/// (e.g. [`Error::ForeignArena`]) replaces the generic codec error it
/// caused.
pub(crate) fn encoding_for<O>(
    arena: u64,
    key: GrantKey,
    task: u64,
    encode: impl FnOnce() -> Result<O, Error>,
) -> Result<O, Error> {
    /// Pops the context even if `encode` unwinds.
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            if let Some(ctx) = CONTEXT.with(|c| c.borrow_mut().pop()) {
                // Pins left here were not taken by a task: the handles they
                // belong to were not sent after all.
                unsend(ctx.pins);
            }
        }
    }
    CONTEXT.with(|c| {
        c.borrow_mut().push(EncodeContext {
            arena,
            key,
            task,
            pins: Vec::new(),
            error: None,
        })
    });
    let scope = Scope;
    let out = encode();
    let error = CONTEXT.with(|c| c.borrow_mut().last_mut().and_then(|ctx| ctx.error.take()));
    drop(scope);
    match (out, error) {
        (Err(_), Some(e)) => Err(e),
        (out, _) => out,
    }
}

/// Undoes the "sent" mark of pins whose task never went out, so their
/// `SharedSliceMut`s are usable in the parent again.
pub(crate) fn unsend(pins: Pins) {
    for pin in pins {
        pin.sent.store(false, Ordering::Release);
    }
}

/// Whether the innermost [`encoding_for`] has collected pins so far (the
/// argument being encoded holds shared-array handles).
pub(crate) fn has_pins() -> bool {
    CONTEXT.with(|c| c.borrow().last().is_some_and(|ctx| !ctx.pins.is_empty()))
}

/// The pins collected so far by the innermost [`encoding_for`].
pub(crate) fn take_pins() -> Pins {
    CONTEXT.with(|c| {
        c.borrow_mut()
            .last_mut()
            .map(|ctx| std::mem::take(&mut ctx.pins))
            .unwrap_or_default()
    })
}

/// Called by a handle being encoded: checks it goes to its own arena, pins
/// `lease`, and returns the handle's grant. A write lease can be sent once.
fn pin_for_send(wire: &Wire, lease: Pin) -> Result<u64, HandleError> {
    let arena = wire.arena;
    CONTEXT.with(|c| {
        let mut stack = c.borrow_mut();
        let Some(ctx) = stack.last_mut() else {
            return Err(HandleError(
                "a shared array handle can only be sent as (part of) a task argument \
                 through the pool that allocated it: not returned from a task (write \
                 results into a SharedSliceMut instead), nor inside the argument of \
                 map_shared_with (pass the array as the map's input, or send it with \
                 submit)"
                    .into(),
            ));
        };
        if ctx.arena != arena {
            ctx.error = Some(Error::ForeignArena);
            return Err(HandleError(Error::ForeignArena.to_string()));
        }
        if lease.writable && lease.sent.swap(true, Ordering::AcqRel) {
            return Err(HandleError(
                "this SharedSliceMut was already sent to a task (it is shared by a type \
                 that encodes it without moving it); a writable range goes to one task only"
                    .into(),
            ));
        }
        ctx.pins.push(lease);
        Ok(grant(ctx.key, ctx.task, wire))
    })
}

/// A handle that cannot be encoded or decoded, as an rkyv error source.
#[derive(Debug)]
pub(crate) struct HandleError(pub(crate) String);

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandleError {}

/// The archived form of a [`SharedSlice`](crate::SharedSlice) or
/// [`SharedSliceMut`](crate::SharedSliceMut): which arena, where, how long.
/// It carries no element data.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ArchivedHandle {
    arena: u64_le,
    offset: u64_le,
    len: u64_le,
    elem_size: u32_le,
    writable: u32_le,
    /// The grant of the task it was sent with (see the module docs).
    grant: u64_le,
}

// SAFETY: `ArchivedHandle` is `repr(C)` of fixed-endian integers with no
// padding (8 + 8 + 8 + 4 + 4 + 8 bytes, alignment of `u64_le` is 8), so it
// has the same layout everywhere.
unsafe impl rkyv::Portable for ArchivedHandle {}

// SAFETY: as above, it has no padding, so every byte is defined.
unsafe impl rkyv::traits::NoUndef for ArchivedHandle {}

// SAFETY: every bit pattern is a valid `ArchivedHandle` (plain integers);
// the values themselves are checked when a handle is made from it.
unsafe impl<C: Fallible + ?Sized> rkyv::bytecheck::CheckBytes<C> for ArchivedHandle {
    unsafe fn check_bytes(_value: *const Self, _context: &mut C) -> Result<(), C::Error> {
        Ok(())
    }
}

/// What a handle is, independent of its element type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wire {
    pub(crate) arena: u64,
    /// Byte offset in the arena.
    pub(crate) offset: usize,
    /// Length in elements.
    pub(crate) len: usize,
    pub(crate) elem_size: usize,
    pub(crate) writable: bool,
}

impl Wire {
    /// Writes the handle with `grant` (from [`Wire::send`]).
    pub(crate) fn resolve(&self, grant: u64, out: Place<ArchivedHandle>) {
        out.write(ArchivedHandle {
            arena: u64_le::from_native(self.arena),
            offset: u64_le::from_native(self.offset as u64),
            len: u64_le::from_native(self.len as u64),
            elem_size: u32_le::from_native(self.elem_size as u32),
            writable: u32_le::from_native(u32::from(self.writable)),
            grant: u64_le::from_native(grant),
        })
    }

    /// Checks `lease` may be sent and pins it (see [`pin_for_send`]);
    /// returns the handle's grant.
    pub(crate) fn send<E: Source>(&self, lease: Pin) -> Result<u64, E> {
        pin_for_send(self, lease).map_err(E::new)
    }
}

/// Where a decoded handle's elements are in this (worker) process, and its
/// guard.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) ptr: std::ptr::NonNull<u8>,
    pub(crate) guard: WorkerGuard,
}

impl ArchivedHandle {
    /// Maps the handle into this worker, for elements of `elem_size` bytes
    /// with write access if `writable`.
    pub(crate) fn receive<E: Source>(
        &self,
        elem_size: usize,
        writable: bool,
    ) -> Result<(Received, usize), E> {
        let fail = |msg: String| E::new(HandleError(msg));
        if self.elem_size.to_native() as usize != elem_size {
            return Err(fail(format!(
                "shared array of {}-byte elements received as {elem_size}-byte elements",
                self.elem_size.to_native()
            )));
        }
        if (self.writable.to_native() != 0) != writable {
            return Err(fail(
                "a SharedSlice and a SharedSliceMut are not interchangeable".into(),
            ));
        }
        if !RECEIVING.with(Cell::get) {
            return Err(fail(
                "shared array handles can only be decoded by loky, as part of a task's \
                 argument"
                    .into(),
            ));
        }
        let view = worker_arena().map_err(fail)?;
        if view.id() != self.arena.to_native() {
            return Err(fail(
                "this shared array belongs to another pool's arena".into(),
            ));
        }
        let len = usize::try_from(self.len.to_native()).map_err(|e| fail(e.to_string()))?;
        let bytes = len
            .checked_mul(elem_size)
            .ok_or_else(|| fail("shared array length overflows".into()))?;
        let offset = usize::try_from(self.offset.to_native()).map_err(|e| fail(e.to_string()))?;
        let wire = Wire {
            arena: view.id(),
            offset,
            len,
            elem_size,
            writable,
        };
        accept(&wire, self.grant.to_native(), bytes).map_err(fail)?;
        let ptr = view
            .range(offset, bytes)
            .map_err(|e| fail(view_error(view, &e)))?;
        Ok((
            Received {
                ptr,
                guard: WorkerGuard::new(),
            },
            len,
        ))
    }
}

thread_local! {
    /// Set while loky decodes a task's argument in a worker.
    static RECEIVING: Cell<bool> = const { Cell::new(false) };
    /// The task this worker runs ([`begin_task`]).
    static TASK: Cell<u64> = const { Cell::new(0) };
    /// The byte ranges of the handles the current task received.
    static RECEIVED: RefCell<ReceivedRanges> = const { RefCell::new(ReceivedRanges::new()) };
}

/// The byte ranges a task's handles cover, as two sets of disjoint
/// intervals (start → end): the writable ones, and the union of the
/// read-only ones (readers may overlap each other, not a writer).
#[derive(Debug)]
struct ReceivedRanges {
    writable: BTreeMap<usize, usize>,
    readable: BTreeMap<usize, usize>,
}

impl ReceivedRanges {
    const fn new() -> Self {
        Self {
            writable: BTreeMap::new(),
            readable: BTreeMap::new(),
        }
    }

    fn clear(&mut self) {
        self.writable.clear();
        self.readable.clear();
    }

    /// Adds a handle's range, unless it overlaps one already received
    /// where either may write.
    fn add(&mut self, range: std::ops::Range<usize>, writable: bool) -> Result<(), String> {
        if range.is_empty() {
            return Ok(());
        }
        let clash =
            overlaps(&self.writable, &range) || (writable && overlaps(&self.readable, &range));
        if clash {
            return Err(
                "a task received two handles to the same elements, one of them \
                        writable (a codec that decodes a handle twice?)"
                    .to_owned(),
            );
        }
        if writable {
            self.writable.insert(range.start, range.end);
        } else {
            // Merged into the union of the read-only ranges.
            // Those it touches are the last ones starting by its end (the
            // stored ones never touch each other), back to the first that
            // ends before its start.
            let (mut start, mut end) = (range.start, range.end);
            while let Some((&s, &e)) = self.readable.range(..=end).next_back() {
                if e < start {
                    break;
                }
                self.readable.remove(&s);
                start = start.min(s);
                end = end.max(e);
            }
            self.readable.insert(start, end);
        }
        Ok(())
    }
}

/// Whether `range` overlaps one of the disjoint intervals of `set`: only
/// the last interval starting before its end can.
fn overlaps(set: &BTreeMap<usize, usize>, range: &std::ops::Range<usize>) -> bool {
    set.range(..range.end)
        .next_back()
        .is_some_and(|(_, &end)| end > range.start)
}

/// This worker's copy of its pool's grant key ([`set_worker`]).
static WORKER_KEY: OnceLock<GrantKey> = OnceLock::new();

/// Tells the handle checks which task this worker runs next.
pub(crate) fn begin_task(task: u64) {
    TASK.with(|t| t.set(task));
    RECEIVED.with(|r| r.borrow_mut().clear());
}

/// Accepts a handle `w` of `bytes` bytes with `grant` for the current task
/// if the parent granted it to this task and it overlaps no handle the
/// task received before where either may write (the parent never sends
/// such: its leases exclude it; a codec that decodes a handle twice would
/// make them). Checked here, before the handle exists: a codec's decoder
/// could otherwise use two writers of the same elements before the task
/// runs.
fn accept(w: &Wire, grant_seen: u64, bytes: usize) -> Result<(), String> {
    let key = WORKER_KEY
        .get()
        .ok_or("this worker does not know its pool's grant key")?;
    if grant(*key, TASK.with(Cell::get), w) != grant_seen {
        return Err(
            "a shared array handle that the pool did not send with this task \
                    (a codec that replays or makes up handles?)"
                .into(),
        );
    }
    let end = w
        .offset
        .checked_add(bytes)
        .ok_or("a shared array handle past the end of the address space")?;
    RECEIVED.with(|r| r.borrow_mut().add(w.offset..end, w.writable))
}

/// Runs `decode` (a worker's decoder of its task's argument) with handle
/// decoding allowed (each handle checked as it is made, see [`accept`]).
pub(crate) fn receiving<O>(decode: impl FnOnce() -> Result<O, String>) -> Result<O, String> {
    /// Puts the flag back as it was, also when `decode` unwinds.
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            RECEIVING.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(RECEIVING.with(|r| r.replace(true)));
    decode()
}

/// Whether this thread is decoding its task's argument ([`receiving`]):
/// bytes the parent wrote, which need no private copy (`codec::unarchive`).
pub(crate) fn receiving_argument() -> bool {
    RECEIVING.with(Cell::get)
}

/// Worker-side handles alive in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Counts a worker-side handle, and remembers the task it belongs to.
#[derive(Debug)]
pub(crate) struct WorkerGuard {
    epoch: u64,
}

impl WorkerGuard {
    fn new() -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self {
            epoch: EPOCH.load(Ordering::Relaxed),
        }
    }

    /// Whether the task that received the handle is still running.
    pub(crate) fn valid(&self) -> bool {
        EPOCH.load(Ordering::Relaxed) == self.epoch
    }
}

impl Clone for WorkerGuard {
    fn clone(&self) -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Self { epoch: self.epoch }
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        // SYNC POINT: Release pairs with the Acquire load in
        // `task_finished`: what a thread wrote through the handle before
        // dropping it happens before the task's result is sent.
        LIVE.fetch_sub(1, Ordering::Release);
    }
}

/// Set once this process is known to be a worker (its arena descriptor is
/// [`crate::pool::ARENA_FD`]).
static IS_WORKER: AtomicBool = AtomicBool::new(false);
static VIEW: OnceLock<Result<loky_ipc::ArenaView, String>> = OnceLock::new();
/// Bumped after every task this worker runs.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Marks this process as a worker whose parent's arena is at
/// [`crate::pool::ARENA_FD`] and whose grants are keyed with `key`.
pub(crate) fn set_worker(key: GrantKey) {
    let _ = WORKER_KEY.set(key);
    // SAFETY: in a worker the parent placed the arena's memfd at `ARENA_FD`
    // before exec, and it stays open for the life of the process (only
    // `worker_arena` takes ownership, and keeps it in a static).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::pool::ARENA_FD) };
    // Programs a task starts must not inherit the arena.
    let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    IS_WORKER.store(true, Ordering::Relaxed);
}

/// Ends the current task: handles it received stop giving access. Returns
/// how many of them are still alive (leaked, or kept in a `static` or
/// another thread); the worker must then exit rather than report the task
/// done, because the parent would reuse the memory they point to.
pub(crate) fn task_finished() -> usize {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    // SYNC POINT: see `WorkerGuard::drop`.
    LIVE.load(Ordering::Acquire)
}

/// Why a worker cannot reach a handle's bytes. A mapping refused for lack
/// of address space says what to do in the same words as in the parent:
/// a worker inherits the parent's `ulimit -v` but may have used more of
/// it (its tasks' own memory).
fn view_error(view: &loky_ipc::ArenaView, e: &loky_ipc::Error) -> String {
    if super::lease::is_map_refused(e) {
        format!(
            "this worker cannot map the shared arena{}",
            super::lease::map_refused(view.limit())
        )
    } else {
        e.to_string()
    }
}

fn worker_arena() -> Result<&'static loky_ipc::ArenaView, String> {
    if !IS_WORKER.load(Ordering::Relaxed) {
        return Err(
            "a shared array handle can only be received by a worker of the pool \
                    that allocated it (it cannot come back as a result)"
                .into(),
        );
    }
    VIEW.get_or_init(|| {
        // SAFETY: in a worker, the parent placed the arena's memfd at
        // `ARENA_FD` before exec and nothing else in this process owns that
        // number (`set_worker` is only called by the worker's start-up).
        // It is taken exactly once, here, under `OnceLock`.
        let fd = unsafe { OwnedFd::from_raw_fd(crate::pool::ARENA_FD) };
        loky_ipc::ArenaView::attach(fd).map_err(|e| format!("cannot attach the shared arena: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether handles to these (byte range, writable), received in this
    /// order, would be refused.
    fn clash(handles: &[(usize, usize, bool)]) -> bool {
        begin_task(1);
        RECEIVED.with(|r| {
            let mut r = r.borrow_mut();
            handles.iter().any(|&(s, e, w)| r.add(s..e, w).is_err())
        })
    }

    #[test]
    fn only_overlaps_with_a_writer_are_refused() {
        assert!(!clash(&[]));
        assert!(!clash(&[(0, 8, true), (8, 16, true), (16, 24, false)]));
        assert!(!clash(&[(0, 100, false), (10, 20, false), (50, 60, false)]));
        assert!(
            !clash(&[(0, 8, true), (4, 4, true), (4, 4, false)]),
            "empty"
        );
        assert!(clash(&[(0, 8, true), (0, 8, true)]));
        assert!(clash(&[(10, 20, false), (0, 100, true)]));
        assert!(clash(&[(0, 100, false), (10, 20, false), (90, 95, true)]));
        assert!(clash(&[(0, 100, true), (10, 20, false), (95, 200, false)]));
        assert!(clash(&[(50, 60, false), (0, 51, true)]));
        // Readers merged into one stretch still clash with a writer inside.
        assert!(clash(&[
            (0, 10, false),
            (20, 30, false),
            (5, 25, false),
            (12, 14, true)
        ]));
        assert!(!clash(&[(0, 10, false), (20, 30, false), (10, 20, true)]));
        assert!(clash(&[(10, 20, true), (0, 11, false)]));
        assert!(clash(&[(10, 20, true), (19, 40, false)]));
    }

    proptest::proptest! {
        /// The eager check refuses exactly the sets with an overlap where
        /// either range may write, whatever their order.
        #[test]
        fn eager_check_agrees_with_pairwise(
            handles in proptest::collection::vec((0usize..64, 0usize..16, proptest::bool::ANY), 0..12)
        ) {
            let handles: Vec<(usize, usize, bool)> =
                handles.into_iter().map(|(s, n, w)| (s, s + n, w)).collect();
            let pairwise = handles.iter().enumerate().any(|(i, a)| {
                handles[..i].iter().any(|b| {
                    (a.2 || b.2) && a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
                })
            });
            proptest::prop_assert_eq!(clash(&handles), pairwise);
        }
    }
}
