//! One large allocation: a memfd of its own, mapped `MAP_SHARED`.
//!
//! ```text
//! 0            HEAD_ROOM/2     HEAD_ROOM                      len
//! | spill header | message head | the allocation | tail room |
//! ```
//!
//! The first page is left for a [`crate::spill`] header and the second for
//! the head of a message (what precedes the value), so that the segment
//! can be sent as the spill buffer of a message whose body is the
//! allocation itself. The tail room holds what follows the value in such a
//! message (an archive's root). Nothing here allocates on the heap: these
//! functions run inside the global allocator.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, MremapFlags, ProtFlags};

/// Bytes before the allocation: a page for a spill header, a page for the
/// head of a message.
pub const HEAD_ROOM: usize = 2 * crate::spill::HEADER_LEN;

/// Bytes at least after the allocation, for the end of a message.
pub const TAIL_ROOM: usize = 64;

/// A segment's mapping and descriptor, owned (unmapped and closed on drop).
#[derive(Debug)]
pub struct Segment {
    base: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory, reachable from any thread;
// whoever owns the `Segment` owns the memory.
unsafe impl Send for Segment {}
// SAFETY: `&Segment` gives only the addresses and the descriptor.
unsafe impl Sync for Segment {}

/// The mapped length of a segment holding `size` bytes, or `None` on
/// overflow: the rooms around it, in whole pages.
pub(super) fn mapped_len(size: usize) -> Option<usize> {
    let page = rustix::param::page_size();
    size.checked_add(HEAD_ROOM + TAIL_ROOM)?
        .checked_next_multiple_of(page)
}

impl Segment {
    /// A new segment for `size` bytes (zeroed: fresh shared memory is), or
    /// `None` if the system refuses (out of memory or descriptors).
    pub fn create(size: usize) -> Option<Self> {
        let len = mapped_len(size)?;
        let fd =
            rustix::fs::memfd_create(c"loky-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .ok()?;
        rustix::fs::ftruncate(&fd, len as u64).ok()?;
        let base = map(fd.as_fd(), len)?;
        Some(Self { base, len, fd })
    }

    /// Maps the whole of a segment another process sent (read and write),
    /// keeping a duplicate of its descriptor.
    pub fn map_received(fd: BorrowedFd<'_>, len: usize) -> Option<Self> {
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 0).ok()?;
        let base = map(fd.as_fd(), len)?;
        Some(Self { base, len, fd })
    }

    /// Grows or shrinks the segment to hold `size` bytes, moving it if
    /// need be; `false` (nothing changed) if the system refuses, or the
    /// file is sealed against it.
    pub fn resize(&mut self, size: usize) -> bool {
        let Some(len) = mapped_len(size) else {
            return false;
        };
        if len == self.len {
            return true;
        }
        // A received segment is sealed against resizing (its sender's
        // receiver checked that): its file must keep the size its mapping
        // has, or a header written for the mapping would not match the file
        // when it is sent on. The caller copies instead.
        match rustix::fs::fcntl_get_seals(&self.fd) {
            Ok(seals) if seals.intersects(SealFlags::SHRINK | SealFlags::GROW) => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
        if len > self.len && rustix::fs::ftruncate(&self.fd, len as u64).is_err() {
            return false;
        }
        // SAFETY: `base..base + self.len` is this segment's mapping, owned
        // by it; the caller holds no reference into the part that goes (a
        // shrink keeps the allocation's live bytes, `size` of them).
        match unsafe { rustix::mm::mremap(self.base.cast(), self.len, len, MremapFlags::MAYMOVE) } {
            Ok(p) => {
                self.base = p.cast();
                if len < self.len {
                    // The file's tail is past every mapping now; a failure
                    // only leaves pages allocated until the segment goes.
                    let _ = rustix::fs::ftruncate(&self.fd, len as u64);
                }
                self.len = len;
                true
            }
            Err(_) => {
                if len > self.len {
                    let _ = rustix::fs::ftruncate(&self.fd, self.len as u64);
                }
                false
            }
        }
    }

    /// Seals the file against growing and shrinking (before it leaves the
    /// process: a receiver maps it whole and must never find it shorter).
    pub fn seal(&self) -> bool {
        rustix::fs::fcntl_add_seals(&self.fd, SealFlags::SHRINK | SealFlags::GROW).is_ok()
    }

    /// The start of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The start of the allocation.
    pub fn data(&self) -> *mut u8 {
        // SAFETY: the mapping is at least HEAD_ROOM bytes long.
        unsafe { self.base.add(HEAD_ROOM) }
    }

    /// The mapped length (the file's size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: it holds the rooms).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Takes the segment apart (the caller owns the mapping from now on).
    pub(super) fn into_raw(self) -> (*mut u8, usize, OwnedFd) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped; each field is read once.
        let fd = unsafe { std::ptr::read(&this.fd) };
        (this.base, this.len, fd)
    }

    /// Puts a segment back together from [`Segment::into_raw`].
    ///
    /// # Safety
    ///
    /// The parts come from `into_raw` and nobody else owns them.
    pub(super) unsafe fn from_raw(base: *mut u8, len: usize, fd: RawFd) -> Self {
        Self {
            base,
            len,
            // SAFETY: the caller passes the descriptor `into_raw` gave up.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: the mapping is this segment's own; nothing refers into
        // it any more (its owner let go of the allocation).
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}

/// `MAP_SHARED`, read and write, the whole of `len` bytes of `fd`.
fn map(fd: BorrowedFd<'_>, len: usize) -> Option<*mut u8> {
    // SAFETY: a fresh mapping at an address the kernel picks; it aliases
    // nothing in this process.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .ok()?;
    Some(p.cast())
}
