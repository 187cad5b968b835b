//! The segments this process's allocator handed out, by address.
//!
//! A fixed table under a spin lock: the global allocator cannot allocate
//! to keep its books, and a `fork()`ed child's handler must be able to take
//! the lock that the fork's `prepare` handler holds across the fork.
//! Lookups scan the used part of the table; they come only with
//! allocations of at least the allocator's threshold (a megabyte or more),
//! which cost far more than a scan of a few hundred words.

use std::cell::UnsafeCell;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::segment::Segment;

/// The most segments alive at once; past that, large allocations come
/// from the system allocator (and travel by copy). Fewer where the
/// open-file limit is low ([`limit`]).
pub(super) const MAX: usize = 1024;

/// Entries beyond [`MAX`] for a segment put back after it was taken out
/// (a `realloc` that failed): that must never find the table full, or the
/// block would be freed as the system allocator's.
const SPARE: usize = 64;
const SLOTS: usize = MAX + SPARE;

/// The most segments this process keeps: [`MAX`], or a quarter of its
/// soft open-file limit if that is less (each segment holds a descriptor,
/// and the program and its pools need theirs), at least 16. Read once.
fn limit() -> usize {
    static LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    match LIMIT.load(Ordering::Relaxed) {
        0 => {
            let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .map_or(u64::MAX, |n| n);
            let n = usize::try_from(soft / 4).unwrap_or(MAX).clamp(16, MAX);
            LIMIT.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

#[derive(Clone, Copy)]
struct Entry {
    /// The mapping's start; 0: a free entry.
    base: usize,
    len: usize,
    fd: RawFd,
}

const FREE: Entry = Entry {
    base: 0,
    len: 0,
    fd: -1,
};

struct Table {
    locked: AtomicBool,
    /// Entries at and past `used` are free.
    used: UnsafeCell<usize>,
    entries: UnsafeCell<[Entry; SLOTS]>,
}

// SAFETY: `used` and `entries` are only touched with `locked` held (see
// `with`), which makes access exclusive.
unsafe impl Sync for Table {}

static TABLE: Table = Table {
    locked: AtomicBool::new(false),
    used: UnsafeCell::new(0),
    entries: UnsafeCell::new([FREE; SLOTS]),
};

fn lock() {
    let mut spins = 0u32;
    while TABLE
        .locked
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn unlock() {
    TABLE.locked.store(false, Ordering::Release);
}

/// Runs `f` on the table, locked.
fn with<R>(f: impl FnOnce(&mut [Entry], &mut usize) -> R) -> R {
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            unlock();
        }
    }
    lock();
    let _unlock = Unlock;
    // SAFETY: the lock is held until `_unlock` drops, after `f`.
    let (entries, used) = unsafe { (&mut *TABLE.entries.get(), &mut *TABLE.used.get()) };
    f(entries, used)
}

/// Records a new `segment`; gives it back if the table is full.
pub(super) fn insert(segment: Segment) -> Result<(), Segment> {
    insert_within(segment, limit())
}

/// Records again a segment taken out of the table by [`remove`]: beyond
/// the limit if need be (into the spare entries). Gives it back only if
/// even those are taken.
pub(super) fn put_back(segment: Segment) -> Result<(), Segment> {
    insert_within(segment, SLOTS)
}

fn insert_within(segment: Segment, limit: usize) -> Result<(), Segment> {
    with(|entries, used| {
        if entries[..*used].iter().filter(|e| e.base != 0).count() >= limit {
            return Err(segment);
        }
        let slot = match entries[..*used].iter().position(|e| e.base == 0) {
            Some(i) => i,
            None if *used < SLOTS => {
                *used += 1;
                *used - 1
            }
            None => return Err(segment),
        };
        let (base, len, fd) = segment.into_raw();
        entries[slot] = Entry {
            base: base as usize,
            len,
            fd: fd.into_raw_fd(),
        };
        Ok(())
    })
}

/// Takes out the segment whose mapping holds `ptr`, if any.
pub(super) fn remove(ptr: *const u8) -> Option<Segment> {
    let addr = ptr as usize;
    remove_where(|e| (e.base..e.base + e.len).contains(&addr))
}

/// Takes out the segment whose allocation starts at `data`, if any.
pub(super) fn remove_starting_at(data: *const u8) -> Option<Segment> {
    let addr = data as usize;
    remove_where(|e| e.base + super::segment::HEAD_ROOM == addr)
}

fn remove_where(found: impl Fn(&Entry) -> bool) -> Option<Segment> {
    with(|entries, used| {
        let i = entries[..*used]
            .iter()
            .position(|e| e.base != 0 && found(e))?;
        let e = std::mem::replace(&mut entries[i], FREE);
        while *used > 0 && entries[*used - 1].base == 0 {
            *used -= 1;
        }
        // SAFETY: the entry held the parts of a segment `insert` took
        // apart, and it is gone from the table: nobody else has them.
        Some(unsafe { Segment::from_raw(e.base as *mut u8, e.len, e.fd) })
    })
}

/// How many segments are alive.
pub(super) fn count() -> usize {
    with(|entries, used| entries[..*used].iter().filter(|e| e.base != 0).count())
}

// ---------------------------------------------------------------------------
// Deferred release

/// Freed segments waiting for [`release_deferred`]: the last one only
/// (a task's argument, freed as it ends); freeing another releases the one
/// before, so a task that frees many blocks holds on to one at most.
const DEFERRED: usize = 1;

static DEFER: AtomicBool = AtomicBool::new(false);

struct Deferred {
    locked: AtomicBool,
    parts: UnsafeCell<[(usize, usize, RawFd); DEFERRED]>,
}

// SAFETY: `parts` is only touched with `locked` held (`with_deferred`).
unsafe impl Sync for Deferred {}

static WAITING: Deferred = Deferred {
    locked: AtomicBool::new(false),
    parts: UnsafeCell::new([(0, 0, -1); DEFERRED]),
};

fn with_deferred<R>(f: impl FnOnce(&mut [(usize, usize, RawFd); DEFERRED]) -> R) -> R {
    while WAITING
        .locked
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: the lock is held until the store below; `f` only edits the
    // array (no system call, no allocation, no panic).
    let r = f(unsafe { &mut *WAITING.parts.get() });
    WAITING.locked.store(false, Ordering::Release);
    r
}

pub(super) fn defer(on: bool) {
    DEFER.store(on, Ordering::Relaxed);
    if !on {
        release_deferred();
    }
}

/// Lets go of a freed segment: now, or at the next [`release_deferred`].
pub(super) fn release(segment: Segment) {
    if !DEFER.load(Ordering::Relaxed) {
        return drop(segment);
    }
    let (base, len, fd) = segment.into_raw();
    let fd = fd.into_raw_fd();
    let before = with_deferred(|parts| std::mem::replace(&mut parts[0], (base as usize, len, fd)));
    if before.0 != 0 {
        // SAFETY: parts of a segment an earlier `release` stored, which it
        // no longer holds.
        drop(unsafe { Segment::from_raw(before.0 as *mut u8, before.1, before.2) });
    }
}

pub(super) fn release_deferred() {
    loop {
        let next = with_deferred(|parts| {
            let slot = parts.iter_mut().find(|p| p.0 != 0)?;
            Some(std::mem::replace(slot, (0, 0, -1)))
        });
        let Some((base, len, fd)) = next else {
            return;
        };
        // SAFETY: parts of a segment `release` stored and nobody else owns.
        drop(unsafe { Segment::from_raw(base as *mut u8, len, fd) });
    }
}

// ---------------------------------------------------------------------------
// fork()

/// Registers the fork handlers (once).
pub(super) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are `extern "C"` functions valid for the
        // process's life; they only take and release the table's lock and,
        // in the child, make system calls on the table's own entries.
        let rc = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_parent),
                Some(after_fork_child),
            )
        };
        // Without the handlers a fork() would share the segments between
        // parent and child; such a program gets no segments at all.
        if rc != 0 {
            super::set_enabled(false);
        }
    });
}

/// The pipe through which a forked child tells its parent that it has
/// copied the segments (it closes its write end; so does its death): the
/// parent waits for that, so that the copy is the memory as it was at the
/// fork, not as the parent goes on changing it. Only touched between
/// `before_fork` and the after-fork handlers, under the table's lock.
static FORK_PIPE: [std::sync::atomic::AtomicI32; 2] = [
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
];

extern "C" fn before_fork() {
    lock();
    while WAITING
        .locked
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: the lock is held.
    let live = unsafe { (*TABLE.entries.get()).iter().any(|e| e.base != 0) };
    if live {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`. Without a pipe
        // (out of descriptors) the parent does not wait.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
            FORK_PIPE[0].store(fds[0], Ordering::Relaxed);
            FORK_PIPE[1].store(fds[1], Ordering::Relaxed);
        }
    }
}

extern "C" fn after_fork_parent() {
    let (r, w) = (
        FORK_PIPE[0].swap(-1, Ordering::Relaxed),
        FORK_PIPE[1].swap(-1, Ordering::Relaxed),
    );
    if r >= 0 {
        // SAFETY: our pipe's ends. The read returns 0 once the child has
        // closed its write end (its copies done) or died; it writes nothing.
        unsafe {
            libc::close(w);
            let mut byte = 0u8;
            while libc::read(r, std::ptr::addr_of_mut!(byte).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::close(r);
        }
    }
    WAITING.locked.store(false, Ordering::Release);
    unlock();
}

/// In the child, every segment is still the parent's memory too (a shared
/// mapping survives `fork`): copy each into a file of the child's own and
/// map that at the same address, as `fork` would have copied private
/// memory. Runs with the lock the parent took in `before_fork`; only
/// async-signal-safe system calls.
extern "C" fn after_fork_child() {
    // SAFETY: the lock is held (taken by `before_fork` in the parent, and
    // the child is a copy of that thread); the child has one thread.
    let (entries, used) = unsafe { (&mut *TABLE.entries.get(), *TABLE.used.get()) };
    for e in entries[..used].iter_mut().filter(|e| e.base != 0) {
        // SAFETY: the entry is a live mapping of `len` bytes at `base`
        // and its file; see `private_copy`.
        match unsafe { private_copy(e.base as *mut libc::c_void, e.len) } {
            Some(fd) => {
                // SAFETY: the parent's descriptor, ours to close in the child.
                unsafe { libc::close(e.fd) };
                e.fd = fd;
            }
            None => {
                const MSG: &[u8] = b"loky: cannot copy shared-memory allocations into a fork()ed child (out of memory); aborting the child\n";
                // SAFETY: write(2) and abort(3) are async-signal-safe.
                unsafe {
                    libc::write(2, MSG.as_ptr().cast(), MSG.len());
                    libc::abort();
                }
            }
        }
    }
    // The parent may go on.
    let (r, w) = (
        FORK_PIPE[0].swap(-1, Ordering::Relaxed),
        FORK_PIPE[1].swap(-1, Ordering::Relaxed),
    );
    if r >= 0 {
        // SAFETY: the child's copies of the pipe's ends.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
    // Segments waiting for a deferred release are freed ones: the child
    // only ever unmaps them.
    WAITING.locked.store(false, Ordering::Release);
    unlock();
}

/// Copies the `len` bytes mapped at `base` into a new memfd and maps that
/// over them, at the same address; returns its descriptor.
///
/// # Safety
///
/// `base..base + len` is one whole mapping of this process that nothing
/// else is using (a freshly forked child's only thread runs this).
unsafe fn private_copy(base: *mut libc::c_void, len: usize) -> Option<RawFd> {
    // SAFETY: plain system calls on a new descriptor and new mappings, a
    // copy between two mappings of `len` bytes each, and a fixed mapping
    // over `base`, which the contract gives us.
    unsafe {
        let fd = libc::memfd_create(
            c"loky-shm".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        if fd < 0 {
            return None;
        }
        let fail = |fd| {
            libc::close(fd);
            None
        };
        if libc::ftruncate(fd, len as libc::off_t) != 0 {
            return fail(fd);
        }
        let tmp = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if tmp == libc::MAP_FAILED {
            return fail(fd);
        }
        std::ptr::copy_nonoverlapping(base.cast::<u8>(), tmp.cast::<u8>(), len);
        libc::munmap(tmp, len);
        let at = libc::mmap(
            base,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            0,
        );
        if at != base {
            return fail(fd);
        }
        Some(fd)
    }
}
