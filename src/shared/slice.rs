//! Handles to ranges of a [`SharedVec`](crate::SharedVec): what tasks take
//! as arguments.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range, RangeBounds};
use std::ptr::NonNull;
use std::sync::Arc;

use bytemuck::Pod;
use rkyv::rancor::{Fallible, Source};
use rkyv::Place;

use super::lease::Lease;
use super::wire::{self, ArchivedHandle, Received, Wire, WorkerGuard};
use crate::error::{Error, Result};

/// Where a handle's elements live in this process, and what keeps them.
#[derive(Debug, Clone)]
enum Origin {
    /// Made in the parent: the lease keeps the range claimed and the block
    /// allocated.
    Parent(Arc<Lease>),
    /// Received by a worker: valid during the task that received it.
    Worker(WorkerGuard),
}

/// A read-only view of a range of a [`SharedVec`](crate::SharedVec) that can
/// be sent to a worker as (part of) a task argument. Sending it costs a
/// handle — arena, offset, length, and a grant tying it to its task —
/// whatever its length: the worker reads the same pages, without a copy.
///
/// Derefs to `[T]` in the parent and in the worker. While it exists no
/// [`SharedSliceMut`] can cover any of its elements.
///
/// ```
/// use loky::{ProcessPoolExecutor, SharedSlice, SharedVec};
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let data = SharedVec::from_slice(&ex, &[1.0f64, 2.0, 3.0, 4.0])?;
/// let sum = ex.submit(|s: SharedSlice<f64>| s.iter().sum::<f64>(), data.slice(1..)?)?;
/// assert_eq!(sum.result()?, 9.0);
/// # Ok::<(), loky::Error>(())
/// ```
///
/// A handle received by a task is valid until that task returns. Keeping
/// one longer (in a `static`, a thread the task started) makes its worker
/// exit when the task returns (exit code 80), so that the memory is never
/// reused under it: the task fails with
/// [`Error::TerminatedWorker`](crate::Error::TerminatedWorker) and the
/// worker is replaced. A use after the task returned panics.
pub struct SharedSlice<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Byte offset of the first element in the arena.
    offset: usize,
    /// Index of the first element in its `SharedVec` (parent side).
    first: usize,
    arena: u64,
    origin: Origin,
    _t: PhantomData<T>,
}

/// A writable view of a range of a [`SharedVec`](crate::SharedVec) that a
/// task fills in place. Made by [`SharedVec::slice_mut`] or
/// [`SharedVec::chunks_mut`]; no other handle (read or write) can cover any
/// of its elements while it exists, so two in-flight tasks never write the
/// same element. Sent like a [`SharedSlice`]: as a handle.
///
/// ```
/// use loky::{ProcessPoolExecutor, SharedSliceMut, SharedVec};
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let mut out = SharedVec::<u32>::zeroed(&ex, 1000)?;
/// let futures = out
///     .chunks_mut(250)?
///     .map(|chunk| ex.submit(|mut c: SharedSliceMut<u32>| c.fill(7), chunk))
///     .collect::<Result<Vec<_>, _>>()?;
/// for f in futures {
///     f.result()?;
/// }
/// assert!(out.as_slice().iter().all(|&x| x == 7));
/// # Ok::<(), loky::Error>(())
/// ```
///
/// It is `Send` but not `Sync`, like a writer that must not be read from
/// two places: a handle shared through an `Arc` cannot be sent to a task,
/// where the worker would write elements the parent may still be reading.
///
/// ```compile_fail,E0277
/// # use loky::{ProcessPoolExecutor, SharedSliceMut, SharedVec};
/// # let ex = ProcessPoolExecutor::new(1)?;
/// let mut out = SharedVec::<u32>::zeroed(&ex, 16)?;
/// let shared = std::sync::Arc::new(out.slice_mut(..)?);
/// let view: &[u32] = &shared;
/// ex.submit(|s: std::sync::Arc<SharedSliceMut<u32>>| s.len(), shared.clone())?;
/// # let _ = view;
/// # Ok::<(), loky::Error>(())
/// ```
///
/// [`SharedVec::slice_mut`]: crate::SharedVec::slice_mut
/// [`SharedVec::chunks_mut`]: crate::SharedVec::chunks_mut
pub struct SharedSliceMut<T> {
    inner: SharedSlice<T>,
    /// Not `Sync` (see the `Send` impl below); `Cell` is `Send`, not `Sync`.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: a `SharedSlice` gives shared (`&[T]`) access to elements no one
// writes while it exists (the lease table excludes writers; a worker's copy
// lives within its task, during which the parent holds the lease). `T: Pod`
// contains no pointers and no interior mutability (bytemuck's contract), so
// its values are `Send` and `Sync` whatever auto traits the compiler infers.
unsafe impl<T: Pod> Send for SharedSlice<T> {}
// SAFETY: as above; `&SharedSlice` only hands out `&[T]`.
unsafe impl<T: Pod> Sync for SharedSlice<T> {}
// SAFETY: a `SharedSliceMut` is the only handle to its elements (a write
// lease), like a `&mut [T]`, which is `Send` for `T: Send` (and `Pod` is,
// see above). It is deliberately not `Sync`: a `&SharedSliceMut` on another
// thread, or an `Arc` of one, could otherwise be encoded into a task (which
// then writes the elements) while a `&[T]` borrowed from it is still read.
// Without `Sync`, an `Arc<SharedSliceMut>` is not `Send`, so it is no
// `Payload`, and every way to send the handle moves it.
unsafe impl<T: Pod> Send for SharedSliceMut<T> {}

impl<T: Pod> SharedSlice<T> {
    /// Makes a parent-side handle from a lease on `range` (in elements) of
    /// the allocation whose elements start at `base`.
    pub(super) fn from_lease(lease: Lease, range: Range<usize>) -> Self {
        let alloc = &lease.alloc;
        let elem = std::mem::size_of::<T>();
        let byte_start = range.start * elem;
        // SAFETY: `range` lies within the allocation's elements (checked by
        // the caller), so the offset stays inside the block.
        let ptr = unsafe { alloc.base.add(byte_start) }.cast::<T>();
        Self {
            ptr,
            len: range.len(),
            offset: alloc.block.offset + byte_start,
            first: range.start,
            arena: alloc.arena.id(),
            origin: Origin::Parent(Arc::new(lease)),
            _t: PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the slice has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements.
    ///
    /// # Panics
    ///
    /// In a worker, if the handle is used after the task that received it
    /// returned.
    pub fn as_slice(&self) -> &[T] {
        if let Origin::Worker(guard) = &self.origin {
            assert!(
                guard.valid(),
                "a SharedSlice received by a task is only valid until that task returns"
            );
        }
        // SAFETY: `ptr` points to `len` initialised `T`s (Pod: every bit
        // pattern is valid) inside a live arena block. In the parent the
        // lease keeps the block allocated. In a worker the parent pins the
        // lease until the worker reported the task done or died (or the
        // pool withdrew the task before the worker started it), and a
        // worker never reports a task done while a handle it received is
        // alive (`wire::task_finished`: it exits instead), so the block
        // outlives this borrow. No one writes the elements meanwhile: no
        // write lease overlaps a read one.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// A handle to a sub-range (indices relative to this slice).
    ///
    /// Only in the parent; fails with [`Error::OutOfBounds`] if the range
    /// does not fit.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<SharedSlice<T>> {
        let r = super::vec::resolve_range(range, self.len)?;
        match &self.origin {
            Origin::Parent(lease) => {
                let abs = self.first + r.start..self.first + r.end;
                let sub = lease.alloc.lease(abs.clone(), false)?;
                Ok(SharedSlice::from_lease(sub, abs))
            }
            Origin::Worker(_) => Err(Error::InvalidArgument(
                "a SharedSlice can only be re-sliced in the parent".into(),
            )),
        }
    }

    fn wire(&self, writable: bool) -> Wire {
        Wire {
            arena: self.arena,
            offset: self.offset,
            len: self.len,
            elem_size: std::mem::size_of::<T>(),
            writable,
        }
    }

    fn received(r: Received, len: usize) -> Self {
        Self {
            ptr: r.ptr.cast(),
            len,
            offset: 0,
            first: 0,
            arena: 0,
            origin: Origin::Worker(r.guard),
            _t: PhantomData,
        }
    }

    /// Panics if this is the parent's side of a write handle that went to
    /// a task. Sending moves a handle (it is not `Sync`, so no `Arc` of it
    /// is a payload); this catches a type that shares one behind a lock and
    /// encodes it without moving it.
    fn check_not_sent(&self) {
        if let Origin::Parent(lease) = &self.origin {
            assert!(
                !lease.sent.load(std::sync::atomic::Ordering::Acquire),
                "this SharedSliceMut was sent to a task: the parent cannot use it any more"
            );
        }
    }

    fn pin(&self) -> Option<wire::Pin> {
        match &self.origin {
            Origin::Parent(lease) => Some(lease.clone()),
            Origin::Worker(_) => None,
        }
    }
}

impl<T: Pod> Clone for SharedSlice<T> {
    /// Another handle to the same elements (sharing the read lease).
    fn clone(&self) -> Self {
        Self {
            origin: self.origin.clone(),
            ..*self
        }
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlice")
            .field("len", &self.len)
            .field("worker_side", &matches!(self.origin, Origin::Worker(_)))
            .finish_non_exhaustive()
    }
}

impl<T: Pod> SharedSliceMut<T> {
    pub(super) fn from_lease(lease: Lease, range: Range<usize>) -> Self {
        Self {
            inner: SharedSlice::from_lease(lease, range),
            _not_sync: PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// True if the slice has no elements.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The elements.
    ///
    /// # Panics
    ///
    /// As [`SharedSlice::as_slice`].
    pub fn as_slice(&self) -> &[T] {
        self.inner.check_not_sent();
        self.inner.as_slice()
    }

    /// The elements, for writing.
    ///
    /// # Panics
    ///
    /// In a worker, if the handle is used after the task that received it
    /// returned; in the parent, if the handle was sent to a task (possible
    /// only through a type that encodes a handle it shares behind a lock).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // The checks of `as_slice` (it panics where access is refused); the
        // slice it returns is not used: write access must not derive from
        // a shared reference.
        let _ = self.as_slice();
        // SAFETY: as in `as_slice` (checked just above): `ptr` is the
        // handle's own pointer into the mapping, to `len` initialised `T`s;
        // and this handle holds the only lease on its elements: a write
        // lease excludes every other handle, it can be sent to one task
        // only, and once sent the parent's copy refuses access
        // (`check_not_sent`). With `&mut self` this is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.inner.ptr.as_ptr(), self.inner.len) }
    }
}

impl<T: Pod> Deref for SharedSliceMut<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> DerefMut for SharedSliceMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for SharedSliceMut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSliceMut")
            .field("len", &self.inner.len)
            .finish_non_exhaustive()
    }
}

// ---- crossing the process boundary -------------------------------------

impl<T: Pod> SharedSlice<T> {
    /// Pins this handle into the task being encoded (see `wire`); returns
    /// its grant.
    fn send<E: Source>(&self, writable: bool) -> Result<u64, E> {
        let pin = self.pin().ok_or_else(|| {
            E::new(wire::HandleError(
                "a shared array handle received by a task cannot be sent on".into(),
            ))
        })?;
        self.wire(writable).send(pin)
    }

    /// Maps a received handle into this worker.
    fn receive<E: Source>(h: &ArchivedHandle, writable: bool) -> Result<Self, E> {
        let (r, len) = h.receive(std::mem::size_of::<T>(), writable)?;
        if r.ptr.as_ptr() as usize % std::mem::align_of::<T>() != 0 {
            return Err(E::new(wire::HandleError(
                "misaligned shared array handle".into(),
            )));
        }
        Ok(Self::received(r, len))
    }
}

impl<T: Pod> rkyv::Archive for SharedSlice<T> {
    type Archived = ArchivedHandle;
    /// The handle's grant.
    type Resolver = u64;

    fn resolve(&self, grant: u64, out: Place<ArchivedHandle>) {
        self.wire(false).resolve(grant, out)
    }
}

impl<T: Pod, S: Fallible + ?Sized> rkyv::Serialize<S> for SharedSlice<T>
where
    S::Error: Source,
{
    fn serialize(&self, _: &mut S) -> Result<u64, S::Error> {
        self.send(false)
    }
}

impl<T: Pod, D: Fallible + ?Sized> rkyv::Deserialize<SharedSlice<T>, D> for ArchivedHandle
where
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<SharedSlice<T>, D::Error> {
        SharedSlice::receive(self, false)
    }
}

impl<T: Pod> rkyv::Archive for SharedSliceMut<T> {
    type Archived = ArchivedHandle;
    /// The handle's grant.
    type Resolver = u64;

    fn resolve(&self, grant: u64, out: Place<ArchivedHandle>) {
        self.inner.wire(true).resolve(grant, out)
    }
}

impl<T: Pod, S: Fallible + ?Sized> rkyv::Serialize<S> for SharedSliceMut<T>
where
    S::Error: Source,
{
    fn serialize(&self, _: &mut S) -> Result<u64, S::Error> {
        self.inner.send(true)
    }
}

impl<T: Pod, D: Fallible + ?Sized> rkyv::Deserialize<SharedSliceMut<T>, D> for ArchivedHandle
where
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<SharedSliceMut<T>, D::Error> {
        Ok(SharedSliceMut {
            inner: SharedSlice::receive(self, true)?,
            _not_sync: PhantomData,
        })
    }
}
