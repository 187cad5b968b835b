//! The arena behind shared arrays: one anonymous memfd that the parent carves
//! into blocks and every worker maps, so a block travels between processes as
//! an `(offset, len)` pair instead of its bytes.
//!
//! ```text
//! offset 0      ArenaHeader (one page), written once by the creator
//! PAGE ..       blocks, each 64-byte aligned (page aligned from 64 KiB up)
//!        .. reserve
//! ```
//!
//! The file is sized to the whole reservation up front but is sparse: a page
//! costs memory only once a block that covers it is allocated. Allocation
//! commits the block's pages with `fallocate` (unless the allocator knows
//! them all committed already, in reused freed memory), so running
//! out of memory is an
//! [`ArenaError`] at allocation time, never a `SIGBUS` when a worker touches
//! the page. Because the file never shrinks, any offset below the reservation
//! is backed by the file, and a view that checks its bounds cannot fault
//! either. Freed blocks return to a free list (coalesced with their
//! neighbours); large free stretches are punched out of the file so their
//! memory goes back to the system.
//!
//! Only the creator allocates; the allocator's state lives in its process, so
//! a worker that dies cannot corrupt it. Mappings are made lazily (the first
//! allocation, the first [`ArenaView::range`]): a pool that never uses shared
//! arrays pays for one empty memfd.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

use crate::error::OsContext;
use crate::range_set::RangeSet;
use crate::{Error, Result};

const MAGIC: [u8; 8] = *b"LOKYARN\0";
/// Version of the arena header layout. Bump on any change to
/// [`ArenaHeader`].
pub const ARENA_VERSION: u32 = 1;
const PAGE: usize = 4096;
/// Every block starts on a cache line: element types aligned to at most
/// this many bytes can live in a block.
pub const BLOCK_ALIGN: usize = 64;
/// Blocks at least this large start on a page (so their pages can be punched
/// and populated as a whole).
const PAGE_ALIGN_FROM: usize = 64 << 10;
/// Free stretches at least this large give their pages back to the system
/// (once more than the retained amount is free).
const PUNCH_FROM: usize = 1 << 20;
/// Freed memory kept committed for reuse, at most: a block reused soon
/// (the output of the next `map`) then costs neither zeroing by the kernel
/// nor page faults in the workers, whose mappings still hold its pages.
const RETAIN_MAX: usize = 256 << 20;
/// Blocks at least this large get their page tables filled in one call.
const POPULATE_FROM: usize = 2 << 20;

/// The arena header at offset 0. `#[repr(C)]`, written once by the creator
/// before the descriptor is handed to anyone, read-only afterwards.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaHeader {
    magic: [u8; 8],
    version: u32,
    header_size: u32,
    /// Bytes reserved (the file's size): no block ends past this.
    reserve: u64,
    /// The creator's identity for this arena; handles carry it.
    id: u64,
}

const _: () = assert!(std::mem::size_of::<ArenaHeader>() <= PAGE);

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// The arena's reservation (its configured limit) has no free stretch
    /// large enough.
    #[error("shared arena full: {requested} bytes requested, {in_use} of {limit} bytes in use, the longest free stretch {largest_free} bytes")]
    Full {
        /// Bytes asked for.
        requested: usize,
        /// Bytes in live blocks.
        in_use: usize,
        /// The reservation.
        limit: usize,
        /// The longest run of free bytes: less than `requested` where
        /// `limit - in_use` is not, when free space is fragmented.
        largest_free: usize,
    },
    /// The system refused to commit memory for the block (`fallocate`
    /// failed: memory or a cgroup limit is exhausted).
    #[error("no memory for a shared block of {requested} bytes: {reason}")]
    NoMemory {
        /// Bytes asked for.
        requested: usize,
        /// What the kernel said.
        reason: String,
    },
}

/// A block of an arena: `len` bytes at `offset` from the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Offset from the start of the arena file.
    pub offset: usize,
    /// Length in bytes (the requested length; the block may be padded).
    pub len: usize,
}

/// The creator's side of an arena (see the module docs): allocates, frees,
/// and maps the whole reservation.
#[derive(Debug)]
pub struct Arena {
    file: File,
    id: u64,
    reserve: usize,
    map: OnceLock<MmapRaw>,
    state: Mutex<FreeList>,
    /// The fork generation it was created in ([`crate::fork`]).
    born: u64,
}

// SAFETY: the mapping is shared memory handed out as raw pointers to blocks;
// who may touch which block is the caller's protocol (see `Arena::ptr`).
unsafe impl Send for Arena {}
// SAFETY: as above; the allocator's state is behind a mutex.
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates an arena that can hold up to `limit` bytes (rounded up to
    /// pages, plus one header page); `id` identifies it in handles.
    pub fn create(limit: usize, id: u64) -> Result<Self> {
        let reserve = limit
            .checked_next_multiple_of(PAGE)
            .and_then(|l| l.checked_add(PAGE))
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or_else(|| Error::Config(format!("arena limit {limit} is too large")))?;
        let fd = rustix::fs::memfd_create(
            "loky-arena",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .os("memfd_create")?;
        rustix::fs::ftruncate(&fd, reserve as u64).os("ftruncate (sizing the arena)")?;
        // The size never changes again, so no peer can make a checked offset
        // fault by shrinking the file.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .os("fcntl(F_ADD_SEALS)")?;
        let header = ArenaHeader {
            magic: MAGIC,
            version: ARENA_VERSION,
            header_size: std::mem::size_of::<ArenaHeader>() as u32,
            reserve: reserve as u64,
            id,
        };
        // SAFETY: `ArenaHeader` is `#[repr(C)]` plain data without padding
        // (8 + 4 + 4 + 8 + 8 bytes), so viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&header as *const ArenaHeader).cast::<u8>(),
                std::mem::size_of::<ArenaHeader>(),
            )
        };
        rustix::io::pwrite(&fd, bytes, 0).os("pwrite (arena header)")?;
        Ok(Self {
            file: File::from(fd),
            id,
            reserve,
            map: OnceLock::new(),
            state: Mutex::new(FreeList::new(PAGE, reserve, (reserve / 8).min(RETAIN_MAX))),
            born: crate::fork::generation(),
        })
    }

    /// The descriptor, for workers to [`ArenaView::attach`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The identity given at creation.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The largest number of bytes the arena can hold.
    pub fn limit(&self) -> usize {
        self.reserve - PAGE
    }

    /// Bytes in live blocks (padding included).
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    fn lock(&self) -> MutexGuard<'_, FreeList> {
        // The free list is consistent between statements that can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mapping(&self) -> Result<&MmapRaw> {
        lazy_map(&self.map, &self.file, self.reserve)
    }

    /// Allocates a block of `len` bytes with its pages committed. With
    /// `zeroed`, its bytes read as zero (fresh pages already do; reused
    /// ones are cleared). A zero-length block takes no space.
    pub fn allocate(&self, len: usize, zeroed: bool) -> Result<Block, AllocFailure> {
        if len == 0 {
            return Ok(Block {
                offset: PAGE,
                len: 0,
            });
        }
        let map = self.mapping().map_err(AllocFailure::Os)?;
        let full = |st: &FreeList| {
            AllocFailure::Arena(ArenaError::Full {
                requested: len,
                in_use: st.in_use,
                limit: self.limit(),
                largest_free: st.largest(),
            })
        };
        let (padded, align) = padded_len(len).ok_or_else(|| full(&self.lock()))?;
        let (offset, clean_from, pages, committed) = {
            let mut st = self.lock();
            let (offset, clean_from) = st.take(padded, align).ok_or_else(|| full(&st))?;
            let pages = offset / PAGE * PAGE..(offset + padded).next_multiple_of(PAGE);
            // A block reused from freed memory that stayed committed has all
            // its pages already: `fallocate` would walk every one of them
            // again (so would asking the file where its holes are: a fifth
            // of a 1M `map_shared` on 2 cores either way). The free list's
            // punches round inward, so no page of this block is punched
            // while it is live.
            let committed = st.committed.contains(pages.clone());
            (offset, clean_from, pages, committed)
        };
        if !committed {
            let commit = rustix::fs::fallocate(
                &self.file,
                FallocateFlags::KEEP_SIZE,
                pages.start as u64,
                pages.len() as u64,
            );
            let mut st = self.lock();
            st.commits += 1;
            if let Err(e) = commit {
                self.release(&mut st, offset, padded);
                return Err(AllocFailure::Arena(ArenaError::NoMemory {
                    requested: len,
                    reason: std::io::Error::from(e).to_string(),
                }));
            }
            st.committed.insert(pages);
        }
        let base = map.as_mut_ptr();
        if zeroed && clean_from > offset {
            let dirty = clean_from.min(offset + len) - offset;
            // SAFETY: `[offset, offset + dirty)` is inside the block just
            // taken from the free list, which no one else holds.
            unsafe { base.add(offset).write_bytes(0, dirty) };
        }
        Ok(Block { offset, len })
    }

    /// Whether this process is a `fork()`ed child of the one that created
    /// the arena ([`crate::fork`]): its blocks are the parent's, and
    /// [`Arena::free`] leaves them alone.
    pub fn forked(&self) -> bool {
        crate::fork::forked_since(self.born)
    }

    /// Returns a block to the arena.
    ///
    /// # Safety
    ///
    /// `block` came from [`Arena::allocate`] on this arena, is freed once,
    /// and nothing (in any process) touches its bytes afterwards.
    pub unsafe fn free(&self, block: Block) {
        if block.len == 0 {
            return;
        }
        // In a fork()ed child the file and its pages are the parent's:
        // punching the block out would zero the parent's array. Leave it.
        if self.forked() {
            return;
        }
        let Some((padded, _)) = padded_len(block.len) else {
            return;
        };
        let mut st = self.lock();
        self.release(&mut st, block.offset, padded);
    }

    /// Returns `[offset, offset + padded)` to the free list and, while more
    /// than the retained amount of freed memory is committed, punches the
    /// merged free stretch out of the file. All under the free-list lock: a
    /// stretch must not be handed out again before its punch is done (the
    /// punch would zero and uncommit a live block).
    fn release(&self, st: &mut FreeList, offset: usize, padded: usize) {
        let (start, end) = st.give_back(offset, padded);
        let tail = end >= st.clean;
        let punch_start = start.next_multiple_of(PAGE);
        let punch_end = if tail {
            // The written part of the never-used tail: once punched, all of
            // it reads as zero again.
            st.clean.next_multiple_of(PAGE)
        } else {
            end / PAGE * PAGE
        };
        // Only large stretches (or the tail) are worth a system call, and
        // only while more than the retained amount of freed memory is
        // committed (the file's real size says how much is).
        if punch_end <= punch_start || (!tail && punch_end - punch_start < PUNCH_FROM) {
            return;
        }
        let Ok(stat) = rustix::fs::fstat(&self.file) else {
            return;
        };
        let committed = (stat.st_blocks as u64).saturating_mul(512) as usize;
        if committed.saturating_sub(st.in_use) <= st.retain_max {
            return;
        }
        // Best effort: on failure the pages stay committed and are reused.
        let punched = rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            punch_start as u64,
            (punch_end - punch_start) as u64,
        );
        if punched.is_ok() {
            st.committed.remove(punch_start..punch_end);
            if tail {
                st.clean = punch_start;
            }
        }
    }

    /// Fills the creator's page tables for `block` in one call rather than a
    /// fault per page, before the creator writes it whole; an optimisation
    /// only (small blocks and old kernels skip it, and a block that does
    /// not lie in the arena is ignored).
    pub fn populate(&self, block: Block) {
        if block.len < POPULATE_FROM {
            return;
        }
        let Some((start, end)) = populate_range(block, self.reserve) else {
            return;
        };
        let Ok(map) = self.mapping() else { return };
        // SAFETY: `[start, end)` lies inside the mapping, whose length is
        // `reserve` (`populate_range`); populating changes no contents.
        let _ = unsafe {
            rustix::mm::madvise(
                map.as_mut_ptr().add(start).cast(),
                end - start,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }

    /// The address of byte `offset` in the creator's mapping.
    ///
    /// Dereferencing it is up to the caller's protocol: the block holding
    /// it must be allocated and not written by anyone else meanwhile.
    pub fn ptr(&self, offset: usize) -> Result<NonNull<u8>> {
        let map = self.mapping()?;
        if offset > self.reserve {
            return Err(Error::Config(format!("offset {offset} outside the arena")));
        }
        // SAFETY: `offset <= reserve`, the mapping's length, so the result
        // is in bounds or one past the end; the mapping is non-null.
        Ok(unsafe { NonNull::new_unchecked(map.as_mut_ptr().add(offset)) })
    }
}

/// The pages `[start, end)` that hold `block`, if it lies in the blocks'
/// part of an arena of `reserve` bytes (a whole number of pages): from the
/// end of the header page to the end. `None` for a block that does not,
/// wrapping past `usize::MAX` included (its fields are public).
fn populate_range(block: Block, reserve: usize) -> Option<(usize, usize)> {
    let end = block
        .offset
        .checked_add(block.len)
        .filter(|&end| block.offset >= PAGE && end <= reserve)?;
    // At most `reserve`, a multiple of `PAGE`, once rounded up.
    Some((block.offset / PAGE * PAGE, end.next_multiple_of(PAGE)))
}

/// Why [`Arena::allocate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocFailure {
    /// No room or no memory.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// Mapping the arena failed.
    #[error(transparent)]
    Os(Error),
}

/// A worker's read/write view of an arena it was given the descriptor of.
#[derive(Debug)]
pub struct ArenaView {
    file: File,
    header: ArenaHeader,
    map: OnceLock<MmapRaw>,
}

// SAFETY: as for `Arena`: raw shared memory whose use follows the caller's
// protocol.
unsafe impl Send for ArenaView {}
// SAFETY: as above.
unsafe impl Sync for ArenaView {}

impl ArenaView {
    /// Attaches to an arena: reads and checks its header (magic, version,
    /// size, seals). The reservation is mapped at the first [`Self::range`].
    pub fn attach(fd: OwnedFd) -> Result<Self> {
        let mut raw = [0u8; std::mem::size_of::<ArenaHeader>()];
        let n = rustix::io::pread(&fd, &mut raw, 0).os("pread (arena header)")?;
        if n != raw.len() {
            return Err(Error::BadHeader("arena shorter than its header".into()));
        }
        // SAFETY: `raw` holds `size_of::<ArenaHeader>()` bytes and every bit
        // pattern is a valid `ArenaHeader` (integers and a byte array);
        // `read_unaligned` needs no alignment.
        let header = unsafe { raw.as_ptr().cast::<ArenaHeader>().read_unaligned() };
        if header.magic != MAGIC {
            return Err(Error::BadHeader("not a loky arena".into()));
        }
        if header.version != ARENA_VERSION
            || header.header_size != std::mem::size_of::<ArenaHeader>() as u32
        {
            return Err(Error::BadHeader(format!(
                "arena layout version {} (header {} bytes), expected {ARENA_VERSION} ({} bytes)",
                header.version,
                header.header_size,
                std::mem::size_of::<ArenaHeader>()
            )));
        }
        let size = rustix::fs::fstat(&fd).os("fstat (arena)")?.st_size as u64;
        let seals = rustix::fs::fcntl_get_seals(&fd).os("fcntl(F_GET_SEALS)")?;
        // As for a region: an unsealed descriptor is misused, not foreign.
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::Config(
                "arena descriptor is not sealed against shrinking".into(),
            ));
        }
        if size != header.reserve {
            return Err(Error::BadHeader(format!(
                "arena of {size} bytes announced as {} bytes",
                header.reserve
            )));
        }
        Ok(Self {
            file: File::from(fd),
            header,
            map: OnceLock::new(),
        })
    }

    /// The creator's identity for this arena.
    pub fn id(&self) -> u64 {
        self.header.id
    }

    /// The largest number of bytes the arena can hold, as
    /// [`Arena::limit`] says in the creator (its mapping is one header
    /// page more).
    pub fn limit(&self) -> usize {
        (self.header.reserve as usize).saturating_sub(PAGE)
    }

    /// The address of `len` bytes at `offset`, after checking they lie
    /// inside the arena (so touching them cannot fault).
    ///
    /// Whether the bytes belong to a live block, and who may write them, is
    /// the caller's protocol.
    pub fn range(&self, offset: usize, len: usize) -> Result<NonNull<u8>> {
        let reserve = self.header.reserve as usize;
        let in_bounds = offset >= PAGE && offset.checked_add(len).is_some_and(|end| end <= reserve);
        if !in_bounds {
            return Err(Error::Corrupt(format!(
                "block of {len} bytes at {offset} outside an arena of {reserve} bytes"
            )));
        }
        let map = lazy_map(&self.map, &self.file, reserve)?;
        // SAFETY: `offset + len <= reserve`, the mapping's length; the
        // mapping is non-null.
        let ptr = unsafe { NonNull::new_unchecked(map.as_mut_ptr().add(offset)) };
        // No populating here: a worker keeps its page tables between tasks,
        // so the second task on the same array takes no fault at all, while
        // populating an already mapped range costs about as much as
        // faulting it in (measured: ~20 ms per 256 MiB either way).
        Ok(ptr)
    }
}

/// The mapping in `cell`, made on first use.
fn lazy_map<'a>(cell: &'a OnceLock<MmapRaw>, file: &File, reserve: usize) -> Result<&'a MmapRaw> {
    if let Some(m) = cell.get() {
        return Ok(m);
    }
    let map = map_reserve(file, reserve)?;
    Ok(cell.get_or_init(|| map))
}

/// Maps `reserve` bytes of `file` shared, without reserving swap: pages are
/// committed per block by `fallocate`, unless already committed.
fn map_reserve(file: &File, reserve: usize) -> Result<MmapRaw> {
    MmapOptions::new()
        .len(reserve)
        .no_reserve_swap()
        .map_raw(file)
        .os("mmap (shared arena)")
}

/// The padded length and alignment of a block of `len` bytes.
fn padded_len(len: usize) -> Option<(usize, usize)> {
    let align = if len >= PAGE_ALIGN_FROM {
        PAGE
    } else {
        BLOCK_ALIGN
    };
    Some((len.checked_next_multiple_of(align)?, align))
}

/// The creator's bookkeeping: free stretches by offset and by size. Offsets
/// at or past `clean` have never been written since they were last punched
/// (or created), so they read as zero.
#[derive(Debug)]
struct FreeList {
    by_offset: BTreeMap<usize, usize>,
    by_size: BTreeSet<(usize, usize)>,
    clean: usize,
    in_use: usize,
    /// Freed memory that may stay committed, in bytes.
    retain_max: usize,
    /// Pages known to be committed: those of every block allocated, until
    /// a punch takes them out. (Pages committed otherwise, by a write
    /// through a neighbouring block's page, are committed again when a
    /// block first covers them: harmless.)
    committed: RangeSet,
    /// `fallocate` calls made to commit blocks (for tests).
    commits: usize,
}

impl FreeList {
    fn new(start: usize, end: usize, retain_max: usize) -> Self {
        let mut list = Self {
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            clean: start,
            in_use: 0,
            retain_max,
            committed: RangeSet::default(),
            commits: 0,
        };
        if end > start {
            list.insert(start, end - start);
        }
        list
    }

    fn insert(&mut self, offset: usize, len: usize) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
    }

    fn remove(&mut self, offset: usize, len: usize) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
    }

    /// The length of the longest free stretch. The never-used tail is one
    /// of the stretches (`clean` only says which bytes read as zero), so
    /// this is all the room there is.
    fn largest(&self) -> usize {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// Takes `len` bytes aligned to `align` (best fit); returns the offset
    /// and the offset from which the bytes are known to be zero.
    fn take(&mut self, len: usize, align: usize) -> Option<(usize, usize)> {
        let (free_len, free_off, start) = self
            .by_size
            .range((len, 0)..)
            .map(|&(l, o)| (l, o, o.next_multiple_of(align)))
            .find(|&(l, o, start)| start - o + len <= l)?;
        self.remove(free_off, free_len);
        if start > free_off {
            self.insert(free_off, start - free_off);
        }
        let end = start + len;
        if free_off + free_len > end {
            self.insert(end, free_off + free_len - end);
        }
        self.in_use += len;
        let clean_from = self.clean.max(start);
        if end > self.clean {
            self.clean = end;
        }
        Some((start, clean_from))
    }

    /// Returns `[offset, offset + len)`, merging it with free neighbours;
    /// returns the merged free stretch.
    fn give_back(&mut self, offset: usize, len: usize) -> (usize, usize) {
        self.in_use -= len;
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&o, &l)) = self.by_offset.range(..start).next_back() {
            if o + l == start {
                self.remove(o, l);
                start = o;
            }
        }
        if let Some(&l) = self.by_offset.get(&end) {
            self.remove(end, l);
            end += l;
        }
        self.insert(start, end - start);
        (start, end)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn arena(limit: usize) -> Arena {
        Arena::create(limit, 7).unwrap()
    }

    #[test]
    fn populate_takes_only_blocks_inside_the_arena() {
        let reserve = (64 << 20) + PAGE;
        let block = |offset, len| Block { offset, len };
        assert_eq!(
            populate_range(block(PAGE + 64, 3 << 20), reserve),
            Some((PAGE, PAGE + (3 << 20) + PAGE))
        );
        assert_eq!(
            populate_range(block(reserve - (4 << 20), 4 << 20), reserve),
            Some((reserve - (4 << 20), reserve))
        );
        // Past the end, over the header page, or wrapping round to an end
        // inside the arena.
        let wraps = block(usize::MAX - (4 << 20) + 1, (4 << 20) + 2 * PAGE);
        for bad in [
            block(reserve - (4 << 20), (4 << 20) + 1),
            block(0, 4 << 20),
            block(PAGE - 64, 4 << 20),
            wraps,
            block(usize::MAX, usize::MAX),
        ] {
            assert_eq!(populate_range(bad, reserve), None, "{bad:?}");
        }
        // Ignored, not a page-table walk of memory outside the mapping.
        let a = arena(64 << 20);
        assert_eq!(a.reserve, reserve);
        a.populate(wraps);
        a.populate(block(usize::MAX - PAGE, 4 << 20));
        let b = a.allocate(3 << 20, false).unwrap();
        a.populate(b);
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let a = arena(8 << 20);
        let b1 = a.allocate(100, false).unwrap();
        let b2 = a.allocate(100_000, false).unwrap();
        let b3 = a.allocate(10, false).unwrap();
        assert_eq!(b1.offset % BLOCK_ALIGN, 0);
        assert_eq!(b2.offset % PAGE, 0);
        let ranges = [b1, b2, b3].map(|b| b.offset..b.offset + b.len);
        for (i, r) in ranges.iter().enumerate() {
            for s in &ranges[i + 1..] {
                assert!(r.end <= s.start || s.end <= r.start, "{r:?} overlaps {s:?}");
            }
        }
        // SAFETY: each block is freed once and not touched afterwards.
        unsafe { a.free(b2) };
        let b4 = a.allocate(50_000, false).unwrap();
        assert!(
            b4.offset + b4.len <= b2.offset + b2.len,
            "best fit reuses the freed stretch: {b4:?} after {b2:?}"
        );
        // SAFETY: as above.
        unsafe {
            a.free(b1);
            a.free(b3);
            a.free(b4);
        }
        assert_eq!(a.in_use(), 0);
        let st = a.lock();
        assert_eq!(
            st.by_offset.len(),
            1,
            "everything merged back: {:?}",
            st.by_offset
        );
    }

    #[test]
    fn full_is_an_error_not_a_fault() {
        let a = arena(1 << 20);
        let b = a.allocate(600 << 10, false).unwrap();
        match a.allocate(600 << 10, false) {
            Err(AllocFailure::Arena(ArenaError::Full { requested, .. })) => {
                assert_eq!(requested, 600 << 10)
            }
            other => panic!("expected Full, got {other:?}"),
        }
        // SAFETY: freed once, untouched afterwards.
        unsafe { a.free(b) };
        a.allocate(1 << 20, false).unwrap();
    }

    #[test]
    fn full_says_how_fragmented_free_space_is() {
        let a = arena(4 << 20);
        let blocks: Vec<Block> = (0..4)
            .map(|_| a.allocate(1 << 20, false).unwrap())
            .collect();
        // SAFETY: freed once each, untouched afterwards.
        unsafe {
            a.free(blocks[0]);
            a.free(blocks[2]);
        }
        match a.allocate(2 << 20, false) {
            Err(AllocFailure::Arena(ArenaError::Full {
                requested,
                in_use,
                limit,
                largest_free,
            })) => {
                assert_eq!((requested, in_use, limit), (2 << 20, 2 << 20, 4 << 20));
                assert_eq!(largest_free, 1 << 20);
            }
            other => panic!("expected Full, got {other:?}"),
        }
        // SAFETY: as above.
        unsafe { a.free(blocks[1]) };
        match a.allocate(4 << 20, false) {
            Err(AllocFailure::Arena(ArenaError::Full { largest_free, .. })) => {
                assert_eq!(largest_free, 3 << 20, "freed neighbours merge")
            }
            other => panic!("expected Full, got {other:?}"),
        }
    }

    #[test]
    fn zeroed_blocks_read_zero_after_reuse() {
        let a = arena(4 << 20);
        for len in [64usize, 5000, 100_000, 3 << 20] {
            let b = a.allocate(len, false).unwrap();
            let p = a.ptr(b.offset).unwrap();
            // SAFETY: the block is ours and `len` bytes long.
            unsafe { p.as_ptr().write_bytes(0xAB, len) };
            // SAFETY: freed once, untouched afterwards.
            unsafe { a.free(b) };
            let z = a.allocate(len, true).unwrap();
            let p = a.ptr(z.offset).unwrap();
            // SAFETY: the block is ours and `len` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
            assert!(bytes.iter().all(|&x| x == 0), "len {len}");
            // SAFETY: freed once, untouched afterwards.
            unsafe { a.free(z) };
        }
    }

    #[test]
    fn a_view_sees_the_creators_bytes_and_checks_bounds() {
        let a = arena(1 << 20);
        let b = a.allocate(4096, false).unwrap();
        // SAFETY: the block is ours.
        unsafe { a.ptr(b.offset).unwrap().as_ptr().add(10).write(42) };
        let view = ArenaView::attach(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(view.id(), 7);
        let p = view.range(b.offset, b.len).unwrap();
        // SAFETY: in bounds (checked), and the creator wrote it above.
        assert_eq!(unsafe { p.as_ptr().add(10).read() }, 42);
        assert!(view.range(0, 16).is_err(), "the header is not a block");
        assert!(view.range(a.limit() + PAGE, 1).is_err());
        assert!(view.range(usize::MAX - 3, 8).is_err());
    }

    #[test]
    fn attach_rejects_other_files() {
        let fd = rustix::fs::memfd_create("not-an-arena", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        assert!(matches!(ArenaView::attach(fd), Err(Error::BadHeader(_))));
    }

    #[test]
    fn large_frees_return_memory() {
        let a = arena(64 << 20);
        let b = a.allocate(32 << 20, false).unwrap();
        let p = a.ptr(b.offset).unwrap();
        // SAFETY: the block is ours.
        unsafe { p.as_ptr().write_bytes(1, b.len) };
        let used = |f: &File| rustix::fs::fstat(f).unwrap().st_blocks as usize * 512;
        assert!(used(&a.file) >= 32 << 20);
        // SAFETY: freed once, untouched afterwards.
        unsafe { a.free(b) };
        assert!(
            used(&a.file) < 1 << 20,
            "{} bytes still held",
            used(&a.file)
        );
    }

    #[test]
    fn concurrent_frees_never_punch_a_live_block() {
        let a = std::sync::Arc::new(arena(16 << 20));
        let threads: Vec<_> = (0..3u8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for round in 0..60u8 {
                        let Ok(b) = a.allocate(4 << 20, true) else {
                            continue;
                        };
                        let p = a.ptr(b.offset).unwrap().as_ptr();
                        // SAFETY: the block is ours until freed below.
                        let bytes = unsafe { std::slice::from_raw_parts_mut(p, b.len) };
                        assert!(
                            bytes.iter().step_by(4096).all(|&x| x == 0),
                            "zeroed block not zero"
                        );
                        let mark = t.wrapping_mul(61).wrapping_add(round) | 1;
                        bytes.iter_mut().step_by(512).for_each(|x| *x = mark);
                        std::thread::yield_now();
                        assert!(
                            bytes.iter().step_by(512).all(|&x| x == mark),
                            "data vanished"
                        );
                        // SAFETY: freed once, untouched afterwards.
                        unsafe { a.free(b) };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn reused_blocks_are_committed_once_and_punched_ones_again() {
        // 64 MiB: 8 MiB of freed memory may stay committed.
        let a = arena(64 << 20);
        let commits = |a: &Arena| a.lock().commits;
        let fill = |b: Block| {
            // SAFETY: the block is ours until freed.
            unsafe { a.ptr(b.offset).unwrap().as_ptr().write_bytes(7, b.len) }
        };
        let b = a.allocate(4 << 20, false).unwrap();
        fill(b);
        assert_eq!(commits(&a), 1);
        // SAFETY: freed once, untouched afterwards.
        unsafe { a.free(b) };
        for _ in 0..3 {
            let again = a.allocate(4 << 20, true).unwrap();
            assert_eq!(again.offset, b.offset, "best fit takes the same pages");
            assert_eq!(commits(&a), 1, "kept committed: not committed again");
            {
                // SAFETY: the block is ours; the slice ends before the
                // block is written or freed.
                let bytes = unsafe {
                    std::slice::from_raw_parts(a.ptr(again.offset).unwrap().as_ptr(), again.len)
                };
                assert!(
                    bytes.iter().step_by(512).all(|&x| x == 0),
                    "zeroed on reuse"
                );
            }
            fill(again);
            // SAFETY: freed once, untouched afterwards.
            unsafe { a.free(again) };
        }
        // Over the retained amount: freeing punches, and the next block on
        // those pages is committed again (so running out of memory is still
        // an error at allocation, not a fault later).
        let big = a.allocate(32 << 20, false).unwrap();
        fill(big);
        let before = commits(&a);
        // SAFETY: freed once, untouched afterwards.
        unsafe { a.free(big) };
        let again = a.allocate(32 << 20, false).unwrap();
        assert_eq!(commits(&a), before + 1, "punched pages are committed again");
        let used = rustix::fs::fstat(&a.file).unwrap().st_blocks as usize * 512;
        assert!(used >= 32 << 20, "committed: {used} bytes");
        // SAFETY: freed once, untouched afterwards.
        unsafe { a.free(again) };
    }

    #[test]
    fn freed_memory_kept_committed_is_capped() {
        let a = arena(512 << 20);
        let cap = a.lock().retain_max;
        let committed = |a: &Arena| rustix::fs::fstat(&a.file).unwrap().st_blocks as usize * 512;
        let mut live = Vec::new();
        for i in 0..40usize {
            let b = a.allocate((1 + i % 7) << 20, false).unwrap();
            let p = a.ptr(b.offset).unwrap();
            // SAFETY: the block is ours.
            unsafe { p.as_ptr().write_bytes(1, b.len) };
            live.push(b);
            if i % 3 == 2 {
                for b in live.drain(..2) {
                    // SAFETY: freed once, untouched afterwards.
                    unsafe { a.free(b) };
                }
            }
            let free_committed = committed(&a).saturating_sub(a.in_use());
            assert!(
                free_committed <= cap + (8 << 20),
                "{free_committed} bytes of freed memory committed, cap {cap}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn random_alloc_free_never_overlaps(ops in proptest::collection::vec((1usize..200_000, proptest::bool::ANY), 1..60)) {
            let a = arena(16 << 20);
            let mut live: Vec<Block> = Vec::new();
            for (len, free_one) in ops {
                if free_one && !live.is_empty() {
                    let b = live.swap_remove(len % live.len());
                    // SAFETY: freed once, untouched afterwards.
                    unsafe { a.free(b) };
                } else if let Ok(b) = a.allocate(len, false) {
                    for o in &live {
                        proptest::prop_assert!(b.offset + b.len <= o.offset || o.offset + o.len <= b.offset);
                    }
                    proptest::prop_assert!(b.offset >= PAGE && b.offset + b.len <= a.reserve);
                    live.push(b);
                }
            }
            for b in live.drain(..) {
                // SAFETY: freed once, untouched afterwards.
                unsafe { a.free(b) };
            }
            proptest::prop_assert_eq!(a.in_use(), 0);
        }
    }
}
