//! How a shared-array handle crosses a process boundary: as an
//! [`ArchivedHandle`] (arena id, byte offset, length), never as its bytes.
//!
//! * In the parent, encoding only happens inside [`encoding_for`], which
//!   names the arena of the pool the task goes to. Encoding checks the
//!   handle belongs to it and *pins* the handle's lease: the pins travel
//!   with the task and are dropped only once the worker is done with it (a
//!   result came back, or the worker died), so the elements stay leased and
//!   the memory stays allocated while a worker may use them.
//! * In a worker, decoding maps the parent's arena (descriptor
//!   [`crate::pool::ARENA_FD`]), checks the range lies inside it, and makes
//!   a handle that is valid until the task returns: each task gets a new
//!   epoch, and a handle kept past its task refuses to give access.

use std::any::Any;
use std::cell::RefCell;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rkyv::rancor::{Fallible, Source};
use rkyv::rend::{u32_le, u64_le};
use rkyv::Place;

use crate::error::Error;

/// Something a task keeps alive until its worker is done with it.
pub(crate) type Pin = Arc<dyn Any + Send + Sync>;

/// The pins of one task.
pub(crate) type Pins = Vec<Pin>;

struct EncodeContext {
    arena: u64,
    pins: Pins,
    error: Option<Error>,
}

thread_local! {
    static CONTEXT: RefCell<Vec<EncodeContext>> = const { RefCell::new(Vec::new()) };
}

/// Runs `encode`, which encodes one task's argument for the pool whose arena
/// is `arena` and then collects the pins with [`take_pins`]. A typed error
/// recorded by a handle (e.g. [`Error::ForeignArena`]) replaces the generic
/// codec error it caused.
pub(crate) fn encoding_for<O>(
    arena: u64,
    encode: impl FnOnce() -> Result<O, Error>,
) -> Result<O, Error> {
    CONTEXT.with(|c| {
        c.borrow_mut().push(EncodeContext {
            arena,
            pins: Vec::new(),
            error: None,
        })
    });
    let out = encode();
    let ctx = CONTEXT.with(|c| c.borrow_mut().pop());
    match (out, ctx) {
        (Err(_), Some(EncodeContext { error: Some(e), .. })) => Err(e),
        (out, _) => out,
    }
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

/// Called by a handle being encoded: checks it goes to its own arena and
/// pins `lease`.
fn pin_for_send(arena: u64, lease: Pin) -> Result<(), HandleError> {
    CONTEXT.with(|c| {
        let mut stack = c.borrow_mut();
        let Some(ctx) = stack.last_mut() else {
            return Err(HandleError(
                "a shared array handle can only be sent as (part of) a task argument \
                 through the pool that allocated it; it cannot be returned from a task \
                 (write results into a SharedSliceMut instead)"
                    .into(),
            ));
        };
        if ctx.arena != arena {
            ctx.error = Some(Error::ForeignArena);
            return Err(HandleError(Error::ForeignArena.to_string()));
        }
        ctx.pins.push(lease);
        Ok(())
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
}

// SAFETY: `ArchivedHandle` is `repr(C)` of fixed-endian integers with no
// padding (8 + 8 + 8 + 4 + 4 bytes, alignment of `u64_le` is 8), so it has
// the same layout everywhere.
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
    pub(crate) fn resolve(&self, out: Place<ArchivedHandle>) {
        out.write(ArchivedHandle {
            arena: u64_le::from_native(self.arena),
            offset: u64_le::from_native(self.offset as u64),
            len: u64_le::from_native(self.len as u64),
            elem_size: u32_le::from_native(self.elem_size as u32),
            writable: u32_le::from_native(u32::from(self.writable)),
        })
    }

    /// Checks `lease` may be sent (see [`pin_for_send`]).
    pub(crate) fn send<E: Source>(&self, lease: Pin) -> Result<(), E> {
        pin_for_send(self.arena, lease).map_err(E::new)
    }
}

/// Where a decoded handle's elements are in this (worker) process, and the
/// epoch it is valid in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) ptr: std::ptr::NonNull<u8>,
    pub(crate) epoch: u64,
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
        let ptr = view.range(offset, bytes).map_err(|e| fail(e.to_string()))?;
        Ok((
            Received {
                ptr,
                epoch: EPOCH.load(Ordering::Relaxed),
            },
            len,
        ))
    }
}

/// Set once this process is known to be a worker (its arena descriptor is
/// [`crate::pool::ARENA_FD`]).
static IS_WORKER: AtomicBool = AtomicBool::new(false);
static VIEW: OnceLock<Result<loky_ipc::ArenaView, String>> = OnceLock::new();
/// Bumped after every task this worker runs.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Marks this process as a worker whose parent's arena is at
/// [`crate::pool::ARENA_FD`].
pub(crate) fn set_worker() {
    // SAFETY: in a worker the parent placed the arena's memfd at `ARENA_FD`
    // before exec, and it stays open for the life of the process (only
    // `worker_arena` takes ownership, and keeps it in a static).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::pool::ARENA_FD) };
    // Programs a task starts must not inherit the arena.
    let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    IS_WORKER.store(true, Ordering::Relaxed);
}

/// Ends the current task: handles it received stop giving access.
pub(crate) fn task_finished() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Whether a handle received in `epoch` may still be used.
pub(crate) fn still_valid(epoch: u64) -> bool {
    EPOCH.load(Ordering::Relaxed) == epoch
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
