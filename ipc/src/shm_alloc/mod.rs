//! A global allocator whose large blocks are shared memory, so that a large
//! value can move to another process without being copied.
//!
//! Each allocation of at least a threshold (4 MiB by default) gets a memfd
//! of its own ([`Segment`]), mapped `MAP_SHARED`; smaller ones, and any
//! that the system refuses a memfd for, come from [`std::alloc::System`].
//! A sender gives such a block away ([`donate`]): the file's descriptor
//! crosses a Unix socket, the receiver maps it ([`adopt`]) and owns the
//! same pages. Nothing is copied, whatever the size.
//!
//! Install it in the binary that runs the pool (its workers run the same
//! binary, so they get it too):
//!
//! ```
//! #[global_allocator]
//! static ALLOC: loky_ipc::shm_alloc::SharedMemoryAllocator =
//!     loky_ipc::shm_alloc::SharedMemoryAllocator::new();
//!
//! let v = vec![1.0f64; 1 << 20]; // 8 MiB: a memfd of its own
//! assert_eq!(loky_ipc::shm_alloc::installed(), Some(4 << 20));
//! # drop(v);
//! ```
//!
//! What it costs: a large allocation makes three system calls more than
//! glibc's (`memfd_create`, `ftruncate`, `mmap`, and `close` when freed),
//! and its first touch of each page faults as anonymous memory does.
//! Freed segments are not kept for reuse. Growing one this process made
//! (`Vec::push` past its capacity) remaps it without a copy; a received one
//! is sealed against resizing and is copied instead.
//!
//! Setting the environment variable `LOKY_SHARED_ALLOC=0` ([`ENV_SWITCH`])
//! turns shared blocks off for a process without a rebuild (workers
//! inherit it); [`set_enabled`] does it from code.
//!
//! A `fork()` copies every segment into a file of the child's own, in the
//! child's `pthread_atfork` handler, while the parent waits in its own
//! handler (so the copy is the memory as it was at the fork): parent and
//! child never share memory `fork` would have copied. `posix_spawn` and a
//! vfork-style `clone` run no handlers and copy nothing;
//! `std::process::Command` forks (and copies) only with `pre_exec`, a
//! `uid`/`gid` or a `PATH` of its own.

mod segment;
mod table;

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{
    AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

pub use segment::{Segment, HEAD_ROOM, TAIL_ROOM};

/// The default threshold: allocations of at least 4 MiB are shared memory.
pub const DEFAULT_THRESHOLD: usize = 4 << 20;

/// The smallest threshold [`SharedMemoryAllocator::with_threshold`] takes
/// (below it, a block's system calls would cost more than copying it).
pub const MIN_THRESHOLD: usize = 64 << 10;

/// Allocations of at least the threshold are made shared memory; see
/// [`set_enabled`].
static CREATING: AtomicBool = AtomicBool::new(true);

/// The environment variable that turns shared blocks off for a whole
/// process (`0`, `off` or `false`), read at its first large allocation.
pub const ENV_SWITCH: &str = "LOKY_SHARED_ALLOC";

/// Whether [`ENV_SWITCH`] was read: 0 not yet, 1 read.
static ENV_READ: AtomicUsize = AtomicUsize::new(0);

/// Reads [`ENV_SWITCH`] once (it allocates a little, from `System`: only
/// large allocations come here).
fn read_env_switch() {
    if ENV_READ.load(Acquire) != 0 {
        return;
    }
    // Threads that come here together all read it; none goes on before
    // the switch is applied.
    if let Some(v) = std::env::var_os(ENV_SWITCH) {
        if matches!(v.to_str(), Some("0" | "off" | "false")) {
            CREATING.store(false, Relaxed);
        }
    }
    ENV_READ.store(1, Release);
}

/// The installed allocator's threshold, once [`installed`] asked it.
static THRESHOLD: AtomicUsize = AtomicUsize::new(0);

/// What [`installed`] found: 0 not asked yet, 1 not installed, 2 installed.
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// The layout [`installed`] asks for: impossible for any real allocator
/// (it returns null), answered by ours with a dangling aligned pointer.
const PROBE_SIZE: usize = 1 << 62;
const PROBE_ALIGN: usize = 4096;

/// A global allocator whose allocations of at least a threshold are
/// shared memory that [`donate`] can give to another process. See the
/// [module documentation](self).
#[derive(Debug, Clone, Copy)]
pub struct SharedMemoryAllocator {
    threshold: usize,
}

impl Default for SharedMemoryAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedMemoryAllocator {
    /// The allocator with the [`DEFAULT_THRESHOLD`].
    pub const fn new() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// The allocator for which allocations of at least `bytes` (and at
    /// least [`MIN_THRESHOLD`]) are shared memory.
    pub const fn with_threshold(bytes: usize) -> Self {
        Self {
            threshold: if bytes < MIN_THRESHOLD {
                MIN_THRESHOLD
            } else {
                bytes
            },
        }
    }

    /// The threshold.
    pub const fn threshold(&self) -> usize {
        self.threshold
    }

    /// The environment variable that turns shared blocks off for a process
    /// and the workers it starts ([`ENV_SWITCH`]).
    pub const ENV_SWITCH: &'static str = ENV_SWITCH;

    /// The threshold of the instance this process runs as its global
    /// allocator, or `None` if it runs another allocator ([`installed`]).
    pub fn installed() -> Option<usize> {
        installed()
    }

    /// Turns shared blocks off (`false`) or on again for this process's
    /// allocations from now on ([`set_enabled`]).
    pub fn set_enabled(on: bool) {
        set_enabled(on)
    }

    /// How many shared blocks are alive in this process ([`live_segments`]).
    pub fn live_blocks() -> usize {
        live_segments()
    }

    /// Whether a block of `layout` may be a segment (it is one if it is in
    /// the table).
    fn takes(&self, layout: Layout) -> bool {
        layout.size() >= self.threshold && layout.align() <= crate::spill::HEADER_LEN
    }
}

/// A new segment of `size` bytes, recorded; `None` if shared memory is off
/// or the system refuses.
fn create(size: usize) -> Option<*mut u8> {
    read_env_switch();
    if !CREATING.load(Relaxed) {
        return None;
    }
    table::watch_forks();
    if !CREATING.load(Relaxed) {
        return None;
    }
    let segment = Segment::create(size)?;
    let data = segment.data();
    table::insert(segment).ok()?;
    Some(data)
}

// SAFETY: every block comes either from `System` (and goes back to it), or
// from a segment recorded in the table, whose mapping is the block's alone
// until `dealloc` or `realloc` takes it out of the table; a block is a
// segment iff the table holds its address, which only its owner frees.
unsafe impl GlobalAlloc for SharedMemoryAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.takes(layout) {
            if layout.size() == PROBE_SIZE && layout.align() == PROBE_ALIGN {
                THRESHOLD.store(self.threshold, Release);
                return PROBE_ALIGN as *mut u8;
            }
            if let Some(p) = create(layout.size()) {
                return p;
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.takes(layout) && layout.size() != PROBE_SIZE {
            // A new file's pages read as zero.
            if let Some(p) = create(layout.size()) {
                return p;
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.takes(layout) {
            if layout.size() == PROBE_SIZE && ptr as usize == PROBE_ALIGN {
                return;
            }
            if let Some(segment) = table::remove(ptr) {
                table::release(segment);
                return;
            }
        }
        // SAFETY: not a segment, so `System` made it.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid size for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let keep = layout.size().min(new_size);
        if self.takes(layout) {
            if let Some(mut segment) = table::remove(ptr) {
                if self.takes(new_layout) && segment.resize(new_size) {
                    let data = segment.data();
                    match table::put_back(segment) {
                        Ok(()) => return data,
                        Err(back) => segment = back,
                    }
                }
                // To another block, with a copy.
                // SAFETY: `new_layout` is valid (above) and not zero-sized.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks hold at least `keep` bytes and are
                    // distinct (the old one is out of the table).
                    unsafe { std::ptr::copy_nonoverlapping(segment.data(), new, keep) };
                    table::release(segment);
                } else if table::put_back(segment).is_err() {
                    // The old block stays the caller's, and must stay in
                    // the table, or its `dealloc` would go to `System`.
                    // Only with every spare entry taken by such races.
                    std::process::abort();
                }
                return new;
            }
        }
        if self.takes(new_layout) && CREATING.load(Relaxed) {
            if let Some(new) = create(new_size) {
                // SAFETY: the old block (from `System`) holds `layout.size()`
                // bytes, the new one `new_size`; they are distinct.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, keep);
                    System.dealloc(ptr, layout);
                }
                return new;
            }
        }
        // SAFETY: not a segment, so `System` made it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The threshold of the [`SharedMemoryAllocator`] this process runs as its
/// global allocator, or `None` if it runs another one. Cheap after the
/// first call.
pub fn installed() -> Option<usize> {
    match INSTALLED.load(Acquire) {
        1 => return None,
        2 => return Some(THRESHOLD.load(Acquire)),
        _ => {}
    }
    // SAFETY: a valid layout (a power-of-two alignment, a size far below
    // `isize::MAX`); any other allocator fails it (null), ours answers with
    // a dangling pointer that its `dealloc` recognises.
    let layout = unsafe { Layout::from_size_align_unchecked(PROBE_SIZE, PROBE_ALIGN) };
    // SAFETY: as above.
    // `black_box`: a compiler may drop an allocation whose result is only
    // compared and freed (and assume it succeeded).
    let p = std::hint::black_box(unsafe { std::alloc::alloc(layout) });
    let ours = !p.is_null() && THRESHOLD.load(Acquire) != 0;
    if ours {
        // SAFETY: `p` came from this `alloc` with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    INSTALLED.store(if ours { 2 } else { 1 }, Release);
    ours.then(|| THRESHOLD.load(Acquire))
}

/// With `false`, every allocation of this process from now on comes from
/// the system allocator (segments alive stay segments): for a process
/// whose memory must count as its own, since shared memory escapes
/// `RLIMIT_DATA` and the private resident size. With `true`, large ones are
/// shared memory again. The environment variable [`ENV_SWITCH`] set to `0`
/// does the former for a whole process, workers included (they inherit the
/// environment), without a rebuild.
pub fn set_enabled(on: bool) {
    read_env_switch();
    CREATING.store(on, Relaxed);
}

/// From now on (with `true`), freed segments are unmapped only at the next
/// [`release_deferred`] (or when more than a few wait): for a process that
/// frees a large value at the end of a job and has something more urgent
/// to do before the unmapping (a worker sending its result). With `false`,
/// at once again (those waiting are released now).
pub fn defer_release(on: bool) {
    table::defer(on);
}

/// Unmaps the segments freed since [`defer_release`] was turned on.
pub fn release_deferred() {
    table::release_deferred();
}

/// Takes the segment whose allocation starts at `data` out of the
/// allocator, to send it away: the returned [`Segment`] owns the memory
/// from now on. `None` if `data` is not the start of a segment.
///
/// # Safety
///
/// The caller owns the allocation at `data` (it comes from the global
/// allocator, which is this one) and gives it up: the value that held it
/// is forgotten, never used or dropped again, unless [`restore`] gives the
/// segment back first.
pub unsafe fn donate(data: *const u8) -> Option<Segment> {
    table::remove_starting_at(data)
}

/// Gives a segment [`donate`] took back to the allocator (it was not sent
/// after all): the allocation is the caller's value's again. Gives it back
/// only if the table has no room even for that (a race of many threads).
pub fn restore(segment: Segment) -> Result<(), Segment> {
    table::put_back(segment)
}

/// Maps a segment another process donated (the `len` bytes of `fd`, as
/// [`Segment::len`] was there) and records it as an allocation of this
/// process: returns where its allocation starts, which the caller owns and
/// frees with the global allocator (with a layout of at least the
/// threshold and at most `len - HEAD_ROOM - TAIL_ROOM` bytes, which leaves
/// room to send it on). `None` if this process
/// does not run the allocator, or the allocation would be below its
/// threshold, or the system refuses.
pub fn adopt(fd: BorrowedFd<'_>, len: usize) -> Option<*mut u8> {
    let threshold = installed()?;
    if len.checked_sub(HEAD_ROOM)? < threshold {
        return None;
    }
    // A process that only receives blocks needs the fork handlers too.
    table::watch_forks();
    let segment = Segment::map_received(fd, len)?;
    let data = segment.data();
    table::insert(segment).ok()?;
    Some(data)
}

/// How many segments are alive in this process.
pub fn live_segments() -> usize {
    table::count()
}
