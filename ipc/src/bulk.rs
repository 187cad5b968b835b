//! Copies of large messages, split across a few threads.
//!
//! One thread copies about 8-10 GB/s on common hardware: a 256 MiB value
//! takes about 30 ms, and it is copied once into a spill buffer by its
//! sender and once out of it by its receiver. A memory bus serves several
//! copying cores at once, so past [`PARALLEL_MIN`] bytes [`copy`] splits the
//! copy into one contiguous part per thread, up to [`MAX_THREADS`] threads
//! (the caller and scoped helpers; the caller copies any part whose helper
//! could not be started).
//!
//! The thread count stays within the CPUs the calling thread may run on (a
//! worker pinned to one core copies alone) and within the process's limit
//! ([`set_max_threads`]: a pool's workers share the machine, so each takes
//! its share).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Copies shorter than this stay on the calling thread: starting a thread
/// costs tens of microseconds, a 16 MiB copy about 2 ms.
pub const PARALLEL_MIN: usize = 16 << 20;
/// The most threads one copy uses (the caller included). Past about four,
/// one process's copy no longer gets faster on a typical memory bus.
pub const MAX_THREADS: usize = 4;
/// Each thread of a split copy gets at least this many bytes.
pub const PART_MIN: usize = 8 << 20;
/// Stack of a helper thread: a copy needs next to none (and a large
/// `RUST_MIN_STACK` must not make helpers fail under a memory limit).
const HELPER_STACK: usize = 64 << 10;

/// This process's limit on the threads of one copy ([`set_max_threads`]).
static LIMIT: AtomicUsize = AtomicUsize::new(MAX_THREADS);

/// Limits the threads one copy may use in this process, the caller
/// included (clamped to `1..=MAX_THREADS`; 1 turns splitting off). A pool
/// sets it in each worker to the worker's share of the CPUs, so that
/// workers copying at the same time do not crowd each other's cores.
pub fn set_max_threads(n: usize) {
    LIMIT.store(n.clamp(1, MAX_THREADS), Ordering::Relaxed);
}

/// This process's limit on the threads of one copy.
pub fn max_threads() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Copies `src` into `dst` (same length) and returns `dst` as initialised
/// bytes.
///
/// # Panics
///
/// If the lengths differ (a bug of the caller, like
/// [`slice::copy_from_slice`]).
///
/// ```
/// use std::mem::MaybeUninit;
/// let src = vec![7u8; 1000];
/// let mut dst = vec![MaybeUninit::<u8>::uninit(); 1000];
/// let copied = loky_ipc::bulk::copy(&mut dst, &src);
/// assert_eq!(copied, &src[..]);
/// ```
pub fn copy<'d>(dst: &'d mut [MaybeUninit<u8>], src: &[u8]) -> &'d mut [u8] {
    assert_eq!(dst.len(), src.len(), "bulk::copy between different lengths");
    let threads = threads_for(src.len());
    if threads <= 1 {
        copy_part(dst, src);
    } else {
        // One contiguous part per thread: cutting the copy finer (4 or 16
        // MiB parts taken in turn) measured 30-50 % slower on x86-64,
        // probably because glibc's memcpy uses non-temporal stores only for
        // long copies. Each part is taken exactly once, by whichever thread
        // gets to it first; the caller takes parts too, so a helper that
        // never starts leaves its part to the caller.
        let per = src.len().div_ceil(threads);
        let todo: Vec<Part<'_, '_>> = dst
            .chunks_mut(per)
            .zip(src.chunks(per))
            .map(|part| Mutex::new(Some(part)))
            .collect();
        let work = || todo.iter().for_each(take_and_copy);
        std::thread::scope(|s| {
            for _ in 1..threads {
                let spawned = std::thread::Builder::new()
                    .name("loky-copy".into())
                    .stack_size(HELPER_STACK)
                    .spawn_scoped(s, work);
                if let Err(e) = spawned {
                    tracing::debug!("bulk copy thread not started ({e}); copying with fewer");
                    break;
                }
            }
            work();
        });
    }
    // Every byte of `dst` was written above: its parts (zipped with equal
    // parts of `src`) cover it, the caller's sweep takes every part no
    // helper took, and `thread::scope` returns after every helper finished.
    let written: *mut [MaybeUninit<u8>] = dst;
    // SAFETY: all of `dst` is initialised (above), and `MaybeUninit<u8>`
    // has the layout of `u8`; the borrow of `dst` is carried over.
    unsafe { &mut *(written as *mut [u8]) }
}

/// Copies `src` into the initialised `dst` (same length), in parallel like
/// [`copy`].
pub fn copy_init(dst: &mut [u8], src: &[u8]) {
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and `copy`
    // only writes initialised bytes, so `dst` stays initialised.
    let dst = unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) };
    copy(dst, src);
}

/// How many threads copy `len` bytes.
fn threads_for(len: usize) -> usize {
    if len < PARALLEL_MIN {
        return 1;
    }
    (len / PART_MIN).clamp(1, max_threads().min(cpus()))
}

/// The CPUs the calling thread may run on, read once per thread:
/// `available_parallelism` reads the affinity mask and the cgroup quota
/// files, about 35 µs a call (2 % of a 16 MiB copy).
fn cpus() -> usize {
    thread_local! {
        static CPUS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    CPUS.with(|c| {
        if c.get() == 0 {
            c.set(std::thread::available_parallelism().map_or(1, |n| n.get()));
        }
        c.get()
    })
}

fn copy_part(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the lengths are
    // equal (chunks of equal-length slices with the same size); `dst` is an
    // exclusive borrow, so it cannot overlap the shared `src`.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len());
    }
}

/// One part of a split copy, until someone takes it.
type Part<'d, 's> = Mutex<Option<(&'d mut [MaybeUninit<u8>], &'s [u8])>>;

fn take_and_copy(part: &Part<'_, '_>) {
    let taken = part.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((dst, src)) = taken {
        copy_part(dst, src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[test]
    fn small_and_large_copies_are_exact() {
        for len in [
            0,
            1,
            4095,
            PARALLEL_MIN - 1,
            PARALLEL_MIN,
            PARALLEL_MIN + 4097,
            3 * PART_MIN + 5,
        ] {
            let src = pattern(len);
            let mut dst = vec![MaybeUninit::<u8>::uninit(); len];
            assert_eq!(copy(&mut dst, &src), &src[..], "length {len}");
            let mut init = vec![0u8; len];
            copy_init(&mut init, &src);
            assert_eq!(init, src, "length {len}");
        }
    }

    #[test]
    fn large_copies_are_split_within_the_limits() {
        assert_eq!(threads_for(PARALLEL_MIN - 1), 1);
        assert_eq!(threads_for(256 << 20), max_threads().min(cpus()));
        assert!(threads_for(PARALLEL_MIN) <= PARALLEL_MIN / PART_MIN);
        // The process limit (the only test that changes it, so no other
        // test sees it changed).
        let before = max_threads();
        set_max_threads(1);
        assert_eq!(threads_for(256 << 20), 1);
        let src = pattern(PARALLEL_MIN + 3);
        let mut dst = vec![MaybeUninit::<u8>::uninit(); src.len()];
        assert_eq!(copy(&mut dst, &src), &src[..]);
        set_max_threads(0);
        assert_eq!(max_threads(), 1, "clamped to at least 1");
        set_max_threads(100);
        assert_eq!(max_threads(), MAX_THREADS);
        set_max_threads(before);
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn lengths_must_match() {
        let mut dst = vec![MaybeUninit::<u8>::uninit(); 3];
        copy(&mut dst, &[1, 2]);
    }
}
