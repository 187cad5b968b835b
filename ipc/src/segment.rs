//! A one-off memfd segment: shared memory for one message or one array.
//!
//! The pages are reserved with `fallocate` at creation, so running out of
//! memory is an error from [`Segment::create`], never a `SIGBUS` at first
//! touch; its descriptor can travel over a Unix socket ([`crate::fdpass`])
//! and the receiver maps the same pages. Messages larger than a ring do not
//! use one segment each any more: they go through reusable, sealed
//! [`crate::spill`] buffers, since creating and mapping fresh pages per
//! message costs several times copying into pages already mapped.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, MemfdFlags};

use crate::error::OsContext;
use crate::Result;

/// An anonymous shared-memory segment (see the module docs).
#[derive(Debug)]
pub struct Segment {
    file: File,
    map: MmapRaw,
    len: usize,
}

// SAFETY: the mapping is only reached through `&self`/`&mut self` methods.
unsafe impl Send for Segment {}
// SAFETY: shared access only reads (`as_slice`); writes need `&mut self`.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a segment of `len` bytes with its pages reserved.
    pub fn create(len: usize) -> Result<Self> {
        let fd =
            rustix::fs::memfd_create("loky-segment", MemfdFlags::CLOEXEC).os("memfd_create")?;
        let size = len.max(1) as u64;
        rustix::fs::ftruncate(&fd, size).os("ftruncate")?;
        if len > 0 {
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size)
                .os("fallocate (reserving shared memory)")?;
        }
        Self::map(File::from(fd), len)
    }

    /// Maps a segment received from another process. Its length is the
    /// file's size (the sender may pass a shorter logical length to
    /// [`Self::open_len`]).
    pub fn open(fd: OwnedFd) -> Result<Self> {
        let file = File::from(fd);
        let len = file.metadata().os("fstat")?.len() as usize;
        Self::map(file, len)
    }

    /// Maps a received segment and checks it holds at least `len` bytes.
    pub fn open_len(fd: OwnedFd, len: usize) -> Result<Self> {
        let seg = Self::open(fd)?;
        if seg.len < len {
            return Err(crate::Error::Corrupt(format!(
                "segment of {} bytes announced as {len} bytes",
                seg.len
            )));
        }
        Ok(Self { len, ..seg })
    }

    fn map(file: File, len: usize) -> Result<Self> {
        // Segments are large and read or written whole: populating the page
        // tables in one call is several times cheaper than a fault per page.
        let map = MmapOptions::new()
            .len(len.max(1))
            .populate()
            .map_raw(&file)
            .os("mmap")?;
        Ok(Self { file, map, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the segment holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor, to send to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The bytes (page-aligned).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped. By the protocol the peer does not
        // write a segment after handing it over.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }

    /// The bytes, for the writer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes are mapped; `&mut self` and the protocol (the
        // segment is not handed over yet) make this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.len) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_elsewhere() {
        let mut seg = Segment::create(10_000).unwrap();
        seg.as_mut_slice()[9_999] = 42;
        let other = Segment::open_len(seg.fd().try_clone_to_owned().unwrap(), 10_000).unwrap();
        assert_eq!(other.as_slice()[9_999], 42);
        assert_eq!(other.as_slice().as_ptr() as usize % 4096, 0);
        assert!(Segment::open_len(seg.fd().try_clone_to_owned().unwrap(), 20_000).is_err());
    }

    #[test]
    fn empty_segment() {
        let seg = Segment::create(0).unwrap();
        assert!(seg.is_empty());
        assert_eq!(seg.as_slice(), &[] as &[u8]);
    }
}
