//! [`SharedVec`]: an array in a pool's shared arena.

use std::marker::PhantomData;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;

use bytemuck::Pod;

use super::lease::Allocation;
use super::slice::{SharedSlice, SharedSliceMut};
use crate::error::{Error, Result};
use crate::executor::ProcessPoolExecutor;

/// A fixed-length array of plain data (`T: bytemuck::Pod`) in the shared
/// arena of a pool, which its workers map too.
///
/// Tasks take ranges of it — [`SharedSlice`] to read, [`SharedSliceMut`] to
/// write — as arguments; a range costs a few bytes to send whatever its
/// length, and the worker works on the same pages. Handles follow the
/// borrow rules at run time: any number of read handles or one write handle
/// per element, and `&mut` access to the whole array only when no handle is
/// left (handles sent to tasks count until the task is over). The memory
/// returns to the arena when the `SharedVec` and every handle to it are
/// gone.
///
/// ```
/// use loky::{ProcessPoolExecutor, SharedSlice, SharedVec};
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let data = SharedVec::from_iter_in(&ex, (0..1_000_000u32).map(|i| i as f64))?;
/// let partial_sums = data
///     .chunks(250_000)?
///     .map(|chunk| ex.submit(|c: SharedSlice<f64>| c.iter().sum::<f64>(), chunk))
///     .collect::<Result<Vec<_>, _>>()?;
/// let mut total = 0.0;
/// for f in partial_sums {
///     total += f.result()?;
/// }
/// assert_eq!(total, data.as_slice().iter().sum::<f64>());
/// # Ok::<(), loky::Error>(())
/// ```
///
/// A `SharedVec` belongs to the pool it was allocated with: sending a
/// handle to another pool fails with [`Error::ForeignArena`]. That includes
/// the new pool [`get_reusable_executor`](crate::get_reusable_executor)
/// makes when the configuration changes, `max_workers` grows past what the
/// pool can take in place, or the old pool broke (resizing in place keeps
/// the pool and its arena); check with
/// [`belongs_to`](Self::belongs_to). The arena holds at most the pool's
/// [`arena_limit`](crate::ProcessPoolExecutorBuilder::arena_limit); past it
/// allocation fails with [`Error::ArenaFull`].
///
/// Elements must be plain data (`bytemuck::Pod`): no pointers, so the
/// bytes mean the same in every process.
///
/// ```compile_fail,E0277
/// let ex = loky::ProcessPoolExecutor::new(1)?;
/// let v = loky::SharedVec::from_slice(&ex, &[String::from("no")])?;
/// # Ok::<(), loky::Error>(())
/// ```
pub struct SharedVec<T> {
    alloc: Arc<Allocation>,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: the elements are plain data (`Pod`: no pointers, no interior
// mutability) in shared memory reached through `&self`/`&mut self` under the
// lease rules (see `as_slice`).
unsafe impl<T: Pod> Send for SharedVec<T> {}
// SAFETY: `&SharedVec` only gives `&[T]` (checked against write handles).
unsafe impl<T: Pod> Sync for SharedVec<T> {}

impl<T: Pod> SharedVec<T> {
    fn allocate(ex: &ProcessPoolExecutor, len: usize, zeroed: bool) -> Result<Self> {
        if std::mem::align_of::<T>() > loky_ipc::arena::BLOCK_ALIGN {
            return Err(Error::InvalidArgument(format!(
                "shared arrays support element alignment up to {} bytes, {} has {}",
                loky_ipc::arena::BLOCK_ALIGN,
                std::any::type_name::<T>(),
                std::mem::align_of::<T>()
            )));
        }
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::InvalidArgument(format!("{len} elements overflow the address space"))
        })?;
        let alloc = Allocation::new(ex.arena()?, bytes, zeroed)?;
        Ok(Self {
            alloc,
            len,
            _t: PhantomData,
        })
    }

    /// An array of `len` elements with unspecified (but initialised) values,
    /// for outputs that tasks overwrite.
    pub(crate) fn uninit(ex: &ProcessPoolExecutor, len: usize) -> Result<Self> {
        Self::allocate(ex, len, false)
    }

    /// An array of `len` zeros in the arena of `ex`'s pool.
    ///
    /// Fails with [`Error::ArenaFull`] if the arena cannot hold it.
    pub fn zeroed(ex: &ProcessPoolExecutor, len: usize) -> Result<Self> {
        Self::allocate(ex, len, true)
    }

    /// Prepares the parent's page tables for writing every element.
    fn populate(&self) {
        self.alloc.arena.populate(self.alloc.block);
    }

    /// A copy of `data` in the arena of `ex`'s pool.
    pub fn from_slice(ex: &ProcessPoolExecutor, data: &[T]) -> Result<Self> {
        let mut v = Self::allocate(ex, data.len(), false)?;
        v.populate();
        loky_ipc::bulk::copy_init(
            bytemuck::cast_slice_mut(v.as_mut_slice()),
            bytemuck::cast_slice(data),
        );
        Ok(v)
    }

    /// The items of `iter`, in the arena of `ex`'s pool. An iterator with an
    /// exact size hint is written in place; others are collected first.
    pub fn from_iter_in(
        ex: &ProcessPoolExecutor,
        iter: impl IntoIterator<Item = T>,
    ) -> Result<Self> {
        let iter = iter.into_iter();
        match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => {
                let mut v = Self::allocate(ex, lo, false)?;
                v.populate();
                let dst = v.as_mut_slice();
                let mut iter = iter;
                let mut n = 0;
                for (slot, x) in dst.iter_mut().zip(iter.by_ref()) {
                    *slot = x;
                    n += 1;
                }
                if n != lo || iter.next().is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "the iterator's size hint promised exactly {lo} items, it gave {}",
                        if n == lo {
                            "more".to_string()
                        } else {
                            n.to_string()
                        }
                    )));
                }
                Ok(v)
            }
            _ => Self::from_slice(ex, &iter.collect::<Vec<T>>()),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn whole(&self) -> Range<usize> {
        0..self.len
    }

    /// The elements, or [`Error::RangeBusy`] while a [`SharedSliceMut`] of
    /// this array exists (it may be in a task, writing).
    pub fn try_as_slice(&self) -> Result<&[T]> {
        self.alloc.check(&self.whole(), false)?;
        // SAFETY: the block's `len * size_of::<T>()` bytes are initialised
        // whatever was done to them: they are pages of the arena's mapped
        // file, which read as zero until written and keep what was last
        // written (an `uninit` array, `map_shared`'s output, is not
        // written or zeroed at creation), and `T: Pod` accepts any bytes.
        // The block is aligned for `T` (checked at allocation) and lives as
        // long as `self.alloc`; no write lease is held (checked), and none
        // can be taken while `&self` is borrowed (that needs `&mut self`).
        Ok(unsafe { std::slice::from_raw_parts(self.alloc.base.as_ptr().cast::<T>(), self.len) })
    }

    /// The elements.
    ///
    /// # Panics
    ///
    /// While a [`SharedSliceMut`] of this array exists (wait for the tasks
    /// that write it first); see [`try_as_slice`](Self::try_as_slice).
    pub fn as_slice(&self) -> &[T] {
        match self.try_as_slice() {
            Ok(s) => s,
            Err(e) => panic!("SharedVec::as_slice: {e}"),
        }
    }

    /// The elements, for writing, or [`Error::RangeBusy`] while any handle
    /// to this array exists.
    pub fn try_as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.alloc.check(&self.whole(), true)?;
        // SAFETY: as in `try_as_slice`; no handle at all is held (checked)
        // and none can be made while `&mut self` is borrowed, so this is
        // the only access.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(self.alloc.base.as_ptr().cast::<T>(), self.len)
        })
    }

    /// The elements, for writing.
    ///
    /// # Panics
    ///
    /// While any handle to this array exists; see
    /// [`try_as_mut_slice`](Self::try_as_mut_slice).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match self.try_as_mut_slice() {
            Ok(s) => s,
            Err(e) => panic!("SharedVec::as_mut_slice: {e}"),
        }
    }

    /// A copy of the elements in a `Vec`.
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }

    /// A read handle to `range`, to send to tasks.
    ///
    /// Fails with [`Error::OutOfBounds`] or, if a [`SharedSliceMut`]
    /// overlaps it, [`Error::RangeBusy`].
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<SharedSlice<T>> {
        let r = resolve_range(range, self.len)?;
        let lease = self.alloc.lease(r.clone(), false)?;
        Ok(SharedSlice::from_lease(lease, r))
    }

    /// A write handle to `range`, for a task to fill.
    ///
    /// Fails with [`Error::OutOfBounds`] or, if any handle overlaps it,
    /// [`Error::RangeBusy`].
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> Result<SharedSliceMut<T>> {
        let r = resolve_range(range, self.len)?;
        let lease = self.alloc.lease(r.clone(), true)?;
        Ok(SharedSliceMut::from_lease(lease, r))
    }

    /// Read handles to consecutive chunks of `chunk_len` elements (the last
    /// may be shorter), e.g. one per task.
    ///
    /// Fails with [`Error::InvalidArgument`] for a zero `chunk_len`, or
    /// [`Error::RangeBusy`] while a [`SharedSliceMut`] of this array exists.
    pub fn chunks(&self, chunk_len: usize) -> Result<SharedChunks<'_, T>> {
        check_chunk_len(chunk_len)?;
        self.alloc.check(&self.whole(), false)?;
        Ok(SharedChunks {
            at: ChunkCursor {
                next: 0,
                chunk_len,
                len: self.len,
            },
            vec: self,
        })
    }

    /// Write handles to consecutive, disjoint chunks of `chunk_len`
    /// elements (the last may be shorter), for tasks to fill in place.
    ///
    /// Fails with [`Error::InvalidArgument`] for a zero `chunk_len`, or
    /// [`Error::RangeBusy`] while any handle to this array exists.
    pub fn chunks_mut(&mut self, chunk_len: usize) -> Result<SharedChunksMut<'_, T>> {
        check_chunk_len(chunk_len)?;
        self.alloc.check(&self.whole(), true)?;
        Ok(SharedChunksMut {
            at: ChunkCursor {
                next: 0,
                chunk_len,
                len: self.len,
            },
            vec: self,
        })
    }

    /// Whether `self` lives in the arena of `ex`'s pool.
    pub fn belongs_to(&self, ex: &ProcessPoolExecutor) -> bool {
        ex.arena().is_ok_and(|a| Arc::ptr_eq(a, &self.alloc.arena))
    }
}

impl<T> std::fmt::Debug for SharedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedVec")
            .field("len", &self.len)
            .field("arena", &self.alloc.arena.id())
            .field("offset", &self.alloc.block.offset)
            .finish()
    }
}

fn check_chunk_len(chunk_len: usize) -> Result<()> {
    if chunk_len == 0 {
        return Err(Error::InvalidArgument(
            "chunk length must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Turns `range` into `start..end` within `0..len`.
pub(super) fn resolve_range(range: impl RangeBounds<usize>, len: usize) -> Result<Range<usize>> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    if start > end || end > len {
        return Err(Error::OutOfBounds { start, end, len });
    }
    Ok(start..end)
}

/// Read handles to consecutive chunks; see [`SharedVec::chunks`].
#[derive(Debug)]
pub struct SharedChunks<'a, T> {
    vec: &'a SharedVec<T>,
    at: ChunkCursor,
}

/// Where consecutive chunks of `chunk_len` elements of `len` stand.
#[derive(Debug)]
struct ChunkCursor {
    next: usize,
    chunk_len: usize,
    len: usize,
}

impl ChunkCursor {
    fn advance(&mut self) -> Option<Range<usize>> {
        if self.next >= self.len {
            return None;
        }
        let r = self.next..self.next.saturating_add(self.chunk_len).min(self.len);
        self.next = r.end;
        Some(r)
    }

    fn remaining(&self) -> (usize, Option<usize>) {
        let n = (self.len - self.next.min(self.len)).div_ceil(self.chunk_len);
        (n, Some(n))
    }
}

impl<T: Pod> Iterator for SharedChunks<'_, T> {
    type Item = SharedSlice<T>;

    fn next(&mut self) -> Option<SharedSlice<T>> {
        let r = self.at.advance()?;
        // No write lease can appear while `vec` is borrowed shared, and
        // there was none at creation: taking a read lease cannot fail.
        let lease = self.vec.alloc.lease(r.clone(), false).ok()?;
        Some(SharedSlice::from_lease(lease, r))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.at.remaining()
    }
}

impl<T: Pod> ExactSizeIterator for SharedChunks<'_, T> {}

/// Write handles to consecutive, disjoint chunks; see
/// [`SharedVec::chunks_mut`].
#[derive(Debug)]
pub struct SharedChunksMut<'a, T> {
    vec: &'a mut SharedVec<T>,
    at: ChunkCursor,
}

impl<T: Pod> Iterator for SharedChunksMut<'_, T> {
    type Item = SharedSliceMut<T>;

    fn next(&mut self) -> Option<SharedSliceMut<T>> {
        let r = self.at.advance()?;
        // No handle existed at creation and only this iterator can make
        // new ones (it borrows `vec` exclusively); chunks are disjoint.
        let lease = self.vec.alloc.lease(r.clone(), true).ok()?;
        Some(SharedSliceMut::from_lease(lease, r))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.at.remaining()
    }
}

impl<T: Pod> ExactSizeIterator for SharedChunksMut<'_, T> {}
