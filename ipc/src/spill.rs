//! Reusable shared-memory buffers for messages larger than a ring.
//!
//! A message too large for a ring travels in a *spill buffer*: a sealed
//! memfd that the receiver maps and reads in place (see [`crate::channel`]).
//! Creating, populating and unmapping a buffer for every message costs
//! several times the copy itself (page faults dominate), so buffers are
//! reused:
//!
//! * a process keeps up to [`MAX_POOLED`] buffers in one pool; a
//!   [`Buffer`] is one of them leased for writing a message (or a one-off
//!   buffer when all are in use);
//! * a receiver keeps the mappings of the buffers it was sent, so a
//!   buffer's descriptor crosses the socket once per receiver, not once per
//!   message;
//! * each buffer's header holds a `state` word: the receiver marks the
//!   buffer free when it is done reading, and the pool leases only free
//!   buffers.
//!
//! A writer that knows its message only once it is written (an encoder)
//! leases a [`Buffer`], writes, and wraps it in a [`SpilledMessage`], which
//! [`crate::Sender::try_send_spilled`] hands over as the buffer itself
//! instead of copying it. Buffers idle for a while can be emptied with [`trim`] (their pages
//! go back to the system; the mappings stay valid).
//!
//! The protocol, its SYNC POINTs and what happens when a peer dies are in
//! `ring.md` ("Large messages").

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::MprotectFlags;

use crate::error::OsContext;
use crate::shm_alloc::Segment;
use crate::{Error, Result};

/// Bytes before the payload: the `Header`, padded to a page so that the
/// payload is page-aligned (and so 16-byte aligned, as rkyv needs).
pub const HEADER_LEN: usize = 4096;
/// The most buffers a process keeps for reuse; past that, a message whose
/// buffers are all in flight gets a one-off buffer.
pub const MAX_POOLED: usize = 8;

const MAGIC: u64 = u64::from_le_bytes(*b"lokyspil");
const VERSION: u32 = 1;
const FREE: u32 = 0;
const BUSY: u32 = 1;

/// The start of every spill buffer. `#[repr(C)]`.
///
/// * `magic`, `version`, `id`, `capacity`: written once by the creator,
///   before the descriptor leaves the process; checked by each receiver
///   when it maps the buffer.
/// * `state`: [`BUSY`] stored by the sender (Relaxed, before the ring frame
///   that announces the message is published); [`FREE`] stored by the
///   receiver (Release, after its last read of the payload); loaded by the
///   pool (Acquire) before it leases the buffer again.
#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    state: AtomicU32,
    id: u64,
    capacity: u64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);

/// One spill buffer, as its creator sees it.
#[derive(Debug)]
struct Buf {
    id: u64,
    store: Store,
    capacity: usize,
    /// The fork generation it was created in ([`crate::fork`]): in a
    /// forked child its pages are the parent's too, never to be punched or
    /// marked free there.
    born: u64,
}

/// Where a buffer's bytes are.
#[derive(Debug)]
enum Store {
    /// A spill buffer proper, made by [`Buf::create`].
    Own { file: File, map: MmapRaw },
    /// A block of the shared-memory allocator given away with its value
    /// ([`Buffer::donated`]): a one-off buffer whose receiver may keep it.
    Donated(Segment),
}

impl Store {
    fn base(&self) -> *mut u8 {
        match self {
            Store::Own { map, .. } => map.as_mut_ptr(),
            Store::Donated(s) => s.base(),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Store::Own { file, .. } => file.as_fd(),
            Store::Donated(s) => s.fd(),
        }
    }

    /// Writes a fresh header (a new id, free, `capacity`) at the start;
    /// returns the id.
    ///
    /// # Safety
    ///
    /// The first `HEADER_LEN` bytes are this store's header page, which
    /// nothing else reads or writes until the buffer is sent.
    unsafe fn write_header(&self, capacity: usize) -> u64 {
        let id = next_id();
        // SAFETY: per the contract; the page is mapped and page-aligned.
        unsafe {
            self.base().cast::<Header>().write(Header {
                magic: MAGIC,
                version: VERSION,
                state: AtomicU32::new(FREE),
                id,
                capacity: capacity as u64,
            });
        }
        id
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

impl Buf {
    /// A sealed memfd of `HEADER_LEN + capacity` bytes, pages reserved and
    /// mapped.
    fn create(capacity: usize) -> Result<Self> {
        let fd = rustix::fs::memfd_create(
            "loky-spill",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .os("memfd_create")?;
        let size = (HEADER_LEN + capacity) as u64;
        rustix::fs::ftruncate(&fd, size).os("ftruncate")?;
        // Reserving the pages now makes running out of memory an error
        // here, never a SIGBUS at first touch.
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size)
            .os("fallocate (reserving shared memory)")?;
        // A receiver checks the size once; the seals keep it true.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .os("fcntl(F_ADD_SEALS)")?;
        let file = File::from(fd);
        let map = MmapOptions::new()
            .len(HEADER_LEN + capacity)
            .populate()
            .map_raw(&file)
            .os("mmap")?;
        // SAFETY: the mapping is at least HEADER_LEN bytes, page-aligned,
        // and nobody else has it yet.
        Ok(unsafe { Self::with_header(Store::Own { file, map }, capacity) })
    }

    /// The buffer of `store`, its header written.
    ///
    /// # Safety
    ///
    /// As for [`Store::write_header`].
    unsafe fn with_header(store: Store, capacity: usize) -> Self {
        // SAFETY: the caller's.
        let id = unsafe { store.write_header(capacity) };
        Self {
            id,
            store,
            capacity,
            born: crate::fork::generation(),
        }
    }

    /// A buffer made of a donated segment: its header written, the file
    /// sealed against resizing (as a receiver requires).
    fn donated(segment: Segment) -> Result<Self> {
        if !segment.seal() {
            return Err(Error::Config(
                "a donated shared-memory block cannot be sealed".into(),
            ));
        }
        let capacity = segment.len() - HEADER_LEN;
        // SAFETY: the segment's first page is left for this header
        // (`shm_alloc::HEAD_ROOM`); the segment was just taken out of the
        // allocator, so nothing else in this process refers to it, and it
        // has not left the process yet.
        Ok(unsafe { Self::with_header(Store::Donated(segment), capacity) })
    }

    fn is_donated(&self) -> bool {
        matches!(self.store, Store::Donated(_))
    }

    /// Whether this donated buffer's header is no longer the one this
    /// `Buf` wrote: its receiver kept the block and sent it on (as another
    /// message, with a header and an id of its own). The message this
    /// `Buf` sent is then long done with, and its state word is the new
    /// message's, never to be read or written for the old one.
    fn moved_on(&self) -> bool {
        if !self.is_donated() {
            return false;
        }
        // SAFETY: the header lives as long as the mapping; another process
        // may rewrite it (the block's new owner), hence a volatile read of
        // a plain integer, any value of which is valid.
        let id =
            unsafe { std::ptr::addr_of!((*self.store.base().cast::<Header>()).id).read_volatile() };
        id != self.id
    }

    fn state(&self) -> &AtomicU32 {
        // SAFETY: the header was written at creation and lives as long as
        // the mapping; its atomics may be shared with other processes.
        unsafe { &(*self.store.base().cast::<Header>()).state }
    }

    fn is_free(&self) -> bool {
        // SYNC POINT: pairs with the Release store of FREE in
        // `Mapped::release`: the receiver's reads of the payload happen
        // before whatever we write into it next.
        self.state().load(Acquire) == FREE
    }

    fn payload(&self) -> *mut u8 {
        // SAFETY: the mapping is HEADER_LEN + capacity bytes long.
        unsafe { self.store.base().add(HEADER_LEN) }
    }

    /// Gives the payload's pages back to the system; the file keeps its
    /// size and every mapping stays valid. Only for a free buffer.
    fn punch(&self) -> Result<()> {
        rustix::fs::fallocate(
            self.store.fd(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            HEADER_LEN as u64,
            self.capacity as u64,
        )
        .os("fallocate (releasing shared memory)")
    }

    /// Reserves the payload's pages again after [`Self::punch`].
    fn reserve(&self) -> Result<()> {
        rustix::fs::fallocate(
            self.store.fd(),
            FallocateFlags::KEEP_SIZE,
            HEADER_LEN as u64,
            self.capacity as u64,
        )
        .os("fallocate (reserving shared memory)")
    }
}

/// A pooled buffer and what the pool knows about it.
#[derive(Debug)]
struct Entry {
    buf: Arc<Buf>,
    /// A [`Buffer`] (alone or in a [`SpilledMessage`]) holds it: not
    /// leasable, even once the receiver has marked it free.
    leased: bool,
    /// Its pages are allocated (false after [`trim`]).
    reserved: bool,
    /// Bumped at every lease; tells a stale [`InFlight`] from a current one.
    generation: u64,
    /// When the last lease ended.
    last_used: Instant,
    /// When [`trim`] first saw it free since then.
    free_seen: Option<Instant>,
}

static POOL: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// The fork generation `POOL`'s buffers were created in ([`crate::fork`]).
static POOL_BORN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn pool() -> MutexGuard<'static, Vec<Entry>> {
    // The pool's invariants hold between statements; a panic elsewhere
    // while it was held leaves nothing half-done.
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // In a fork()ed child the pooled buffers are the parent's too: writing
    // a message into one, or trimming it, would change a message the
    // parent's peers may be reading. The child forgets them (their
    // mappings stay, unused) and makes its own.
    let now = crate::fork::generation();
    if POOL_BORN.load(Relaxed) != now {
        std::mem::forget(std::mem::take(&mut *pool));
        POOL_BORN.store(now, Relaxed);
    }
    pool
}

/// The capacity given to a new buffer for a message of `len` bytes: some
/// room to grow (an encoder may write a little more than it asked for,
/// sizes drift), in whole 64 KiB.
fn size_class(len: usize) -> usize {
    len.saturating_add(len / 8)
        .saturating_add(64 << 10)
        .next_multiple_of(64 << 10)
}

/// A spill buffer leased for writing one message. Dropping it returns it
/// to the pool (unsent, it is at once leasable again).
#[derive(Debug)]
pub struct Buffer {
    buf: Arc<Buf>,
    generation: u64,
    pooled: bool,
}

impl Buffer {
    /// Leases a buffer of at least `len` bytes: the smallest free pooled
    /// one that fits, else a new one (replacing the smallest free one when
    /// the pool is full), else a one-off buffer.
    pub fn lease(len: usize) -> Result<Self> {
        {
            let mut pool = pool();
            let fit = pool
                .iter_mut()
                .filter(|e| !e.leased && e.buf.capacity >= len && e.buf.is_free())
                .min_by_key(|e| e.buf.capacity);
            if let Some(e) = fit {
                if !e.reserved {
                    e.buf.reserve()?;
                    e.reserved = true;
                }
                e.leased = true;
                e.generation += 1;
                e.free_seen = None;
                return Ok(Self {
                    buf: e.buf.clone(),
                    generation: e.generation,
                    pooled: true,
                });
            }
        }
        // Created without the lock: a large buffer takes a while.
        let buf = Arc::new(Buf::create(size_class(len))?);
        let mut pool = pool();
        if pool.len() >= MAX_POOLED {
            let smallest_free = pool
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.leased && e.buf.is_free())
                .min_by_key(|(_, e)| e.buf.capacity)
                .map(|(i, _)| i);
            let Some(i) = smallest_free else {
                return Ok(Self {
                    buf,
                    generation: 0,
                    pooled: false,
                });
            };
            let old = pool.swap_remove(i);
            // Receivers may keep mapping it for a while: free its pages now.
            if let Err(e) = old.buf.punch() {
                tracing::debug!(error = %e, "could not release a replaced spill buffer's pages");
            }
        }
        pool.push(Entry {
            buf: buf.clone(),
            leased: true,
            reserved: true,
            generation: 1,
            last_used: Instant::now(),
            free_seen: None,
        });
        Ok(Self {
            buf,
            generation: 1,
            pooled: true,
        })
    }

    /// A one-off buffer made of a block of the shared-memory allocator
    /// that [`shm_alloc::donate`](crate::shm_alloc::donate) gave away: its
    /// payload starts at the block's message-head page, so the block's
    /// bytes are the payload's from [`HEADER_LEN`] on. The receiver of a
    /// message sent in it may keep it ([`crate::Incoming::donated`]).
    pub fn donated(segment: Segment) -> Result<Self> {
        Ok(Self {
            buf: Arc::new(Buf::donated(segment)?),
            generation: 0,
            pooled: false,
        })
    }

    /// Whether this is a [`Buffer::donated`] one.
    pub fn is_donated(&self) -> bool {
        self.buf.is_donated()
    }

    /// Bytes that can be written.
    pub fn capacity(&self) -> usize {
        self.buf.capacity
    }

    /// Gives the buffer up for good (it was a step of a message that
    /// outgrew it): it leaves the pool, and its pages go back to the system.
    pub fn discard(self) {
        if self.pooled {
            let mut pool = pool();
            if let Some(i) = pool.iter().position(|e| Arc::ptr_eq(&e.buf, &self.buf)) {
                pool.swap_remove(i);
            }
        }
        if crate::fork::forked_since(self.buf.born) || self.buf.is_donated() {
            return;
        }
        if let Err(e) = self.buf.punch() {
            tracing::debug!(error = %e, "could not release an outgrown spill buffer's pages");
        }
    }

    /// The whole payload area, for writing (before the buffer is sent).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `capacity` bytes are mapped after the header. The lease
        // makes this the only writer in this process (the pool hands a
        // buffer to one `Buffer` at a time), and the buffer was free when
        // leased: every receiver that read it before is done (SYNC POINT in
        // `Buf::is_free`), and none reads it again before we send it.
        unsafe { std::slice::from_raw_parts_mut(self.buf.payload(), self.buf.capacity) }
    }

    /// The whole payload area.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `as_mut_slice`; shared access only reads.
        unsafe { std::slice::from_raw_parts(self.buf.payload(), self.buf.capacity) }
    }

    pub(crate) fn id(&self) -> u64 {
        self.buf.id
    }

    /// Which lease of the buffer this is (bumped at every lease of a
    /// pooled buffer; 0 for a one-off buffer).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn pooled(&self) -> bool {
        self.pooled
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.buf.store.fd()
    }

    /// Marks the buffer as handed to a receiver (before the frame that
    /// announces it is published) and returns what the sender must keep.
    pub(crate) fn hand_over(&self) -> InFlight {
        // Relaxed: the Release store of the ring's `head` that publishes
        // the frame orders it before the receiver's FREE (ring.md, "Large
        // messages").
        self.buf.state().store(BUSY, Relaxed);
        InFlight {
            buf: self.buf.clone(),
            generation: self.generation,
            pooled: self.pooled,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if !self.pooled {
            return;
        }
        let mut pool = pool();
        if let Some(e) = pool.iter_mut().find(|e| Arc::ptr_eq(&e.buf, &self.buf)) {
            e.leased = false;
            e.last_used = Instant::now();
        }
    }
}

/// A buffer a sender handed over and has not seen freed yet.
#[derive(Debug)]
pub(crate) struct InFlight {
    buf: Arc<Buf>,
    generation: u64,
    pooled: bool,
}

impl InFlight {
    /// True once the receiver is done with it. (Relaxed: only bookkeeping
    /// follows; a writer goes through `Buf::is_free`.)
    pub(crate) fn is_free(&self) -> bool {
        self.buf.moved_on() || self.buf.state().load(Relaxed) == FREE
    }

    /// The buffer's id (as the frames that announce it carry it).
    pub(crate) fn id(&self) -> u64 {
        self.buf.id
    }

    /// Which lease of the buffer was handed over (0 for a one-off buffer).
    pub(crate) fn lease(&self) -> u64 {
        self.generation
    }

    /// Takes the buffer back from a receiver that died before it read the
    /// message: leased again by this process, with the message still in
    /// it, so the message can be sent elsewhere without a copy. `None` if
    /// the receiver already marked it free (it is the pool's again, and may
    /// be leased to another message at any time).
    ///
    /// # Safety
    ///
    /// The receiver is not reading the buffer and never will again (it is
    /// gone, or its `Receiver` was dropped or never peeks again): a
    /// re-leased buffer gets written again.
    pub(crate) unsafe fn take_back(self) -> Option<Buffer> {
        if crate::fork::forked_since(self.buf.born) {
            return None;
        }
        if !self.pooled {
            if self.is_free() {
                return None;
            }
            // As below; no one else can lease a one-off buffer.
            self.buf.state().store(FREE, Relaxed);
            return Some(Buffer {
                buf: self.buf,
                generation: 0,
                pooled: false,
            });
        }
        // Under the pool's lock, which every lease takes: the buffer cannot
        // be leased by anyone else between the checks below and ours. (Its
        // receiver, being dead, can no longer mark it free.)
        let mut pool = pool();
        let e = pool.iter_mut().find(|e| self.lease_of(e) && !e.leased)?;
        if e.buf.is_free() {
            return None;
        }
        e.leased = true;
        e.generation += 1;
        e.free_seen = None;
        // Leased buffers are free (`hand_over` marks them busy when sent);
        // nobody else reads this one (its receiver is gone).
        e.buf.state().store(FREE, Relaxed);
        Some(Buffer {
            buf: e.buf.clone(),
            generation: e.generation,
            pooled: true,
        })
    }

    /// Marks the buffer free as its receiver would (`Mapped::release`).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn free_as_receiver(&self) {
        self.buf.state().store(FREE, Release);
    }

    /// The sender goes away (its receiver is presumed dead): a buffer still
    /// marked busy will never be marked free, so the pool forgets it. It is
    /// unmapped when the last process holding it lets go.
    pub(crate) fn abandon(self) {
        if !self.pooled || self.is_free() {
            return;
        }
        let mut pool = pool();
        if let Some(i) = pool.iter().position(|e| self.lease_of(e)) {
            pool.swap_remove(i);
        }
    }

    /// Whether `e` is the pool's entry of this buffer, still in the lease
    /// that was handed over.
    fn lease_of(&self, e: &Entry) -> bool {
        Arc::ptr_eq(&e.buf, &self.buf) && e.generation == self.generation
    }
}

/// Gives back the pages of every pooled buffer that has been unused for at
/// least `idle` (zero: every free one): not leased for that long, and seen
/// free by an earlier call at least that long ago (a receiver may hold a
/// buffer long after it was sent; call this periodically). The buffers stay
/// pooled and are reserved again when next leased. Returns the bytes
/// released.
pub fn trim(idle: Duration) -> usize {
    let mut pool = pool();
    let mut released = 0;
    let now = Instant::now();
    for e in pool.iter_mut() {
        if !e.reserved || e.leased || !e.buf.is_free() {
            continue;
        }
        let free_since = *e.free_seen.get_or_insert(now);
        if now.duration_since(e.last_used) >= idle && now.duration_since(free_since) >= idle {
            match e.buf.punch() {
                Ok(()) => {
                    e.reserved = false;
                    released += e.buf.capacity;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "could not release a spill buffer's pages")
                }
            }
        }
    }
    released
}

/// What the pool holds (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers pooled.
    pub buffers: usize,
    /// Their capacity in bytes, counting only those with pages reserved.
    pub reserved_bytes: usize,
    /// Buffers leased right now.
    pub leased: usize,
    /// Buffers a receiver has not marked free yet.
    pub busy: usize,
}

/// A snapshot of this process's pool.
pub fn pool_stats() -> PoolStats {
    let pool = pool();
    PoolStats {
        buffers: pool.len(),
        reserved_bytes: pool
            .iter()
            .filter(|e| e.reserved)
            .map(|e| e.buf.capacity)
            .sum(),
        leased: pool.iter().filter(|e| e.leased).count(),
        busy: pool.iter().filter(|e| !e.buf.is_free()).count(),
    }
}

// ---------------------------------------------------------------------------
// A message written in a spill buffer, to be sent without a copy.

/// The first `len` bytes of a leased [`Buffer`]: a message written in
/// place, which [`crate::Sender::try_send_spilled`] sends as that buffer
/// (no copy). Read-only from here on: once sent, a receiver reads it. It is
/// a plain owned value (`Send`), so a message that has to wait for room can
/// wait in a queue, on any thread, without being copied out.
#[derive(Debug)]
pub struct SpilledMessage {
    buffer: Buffer,
    len: usize,
}

impl SpilledMessage {
    /// The message made of the first `len` bytes of `buffer`.
    pub fn new(buffer: Buffer, len: usize) -> Result<Self> {
        if len > buffer.capacity() {
            return Err(Error::Config(format!(
                "message length {len} exceeds the buffer's {} bytes",
                buffer.capacity()
            )));
        }
        Ok(Self { buffer, len })
    }

    /// The message's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the payload are mapped (checked in `new`;
        // `buffer` keeps the mapping); nobody writes them: the buffer's
        // owner is this message, which gives no write access.
        unsafe { std::slice::from_raw_parts(self.buffer.buf.payload().cast_const(), self.len) }
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes its buffer reserves (at least [`len`](Self::len)).
    pub fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Whether its buffer is one of the process's pooled buffers (kept for
    /// reuse after this message), rather than a one-off freed with it.
    pub fn is_pooled(&self) -> bool {
        self.buffer.pooled()
    }

    /// Whether its buffer is a donated block ([`Buffer::donated`]).
    pub fn is_donated(&self) -> bool {
        self.buffer.is_donated()
    }

    pub(crate) fn buffer(&self) -> &Buffer {
        &self.buffer
    }
}

// ---------------------------------------------------------------------------
// The receiving side.

/// Whether a guarded receiver ([`crate::Receiver::guarded`]) can map the
/// buffers it receives read-only (the header page writable only for the
/// store that marks a buffer free): the header must end on a page
/// boundary. True wherever pages are 4 KiB (x86-64, and most arm64
/// systems); a sender takes a buffer back from a dead receiver only then.
pub fn guardable() -> bool {
    HEADER_LEN % rustix::param::page_size() == 0
}

/// The largest spill buffer a receiver maps: the machine's memory and swap
/// (no honest message is larger, and a peer must not make us reserve more).
fn max_buffer() -> usize {
    crate::sysmem::memory_and_swap()
}

/// A spill buffer as a receiver maps it.
#[derive(Debug)]
pub(crate) struct Mapped {
    id: u64,
    map: MmapRaw,
    capacity: usize,
    /// Mapped read-only (see [`guardable`]).
    guarded: bool,
    /// The file of a donated buffer ([`Buffer::donated`]), which the
    /// receiver may map again for itself.
    kept: Option<File>,
}

impl Mapped {
    /// Maps a buffer received from the peer, checking that it is a sealed
    /// spill buffer with id `id`; read-only with `guard`, where
    /// [`guardable`].
    /// With `keep`, keeps the file (of a donated buffer).
    pub(crate) fn open(fd: OwnedFd, id: u64, guard: bool, keep: bool) -> Result<Self> {
        let file = File::from(fd);
        let seals = rustix::fs::fcntl_get_seals(&file).os("fcntl(F_GET_SEALS)")?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::Corrupt(
                "spill buffer is not sealed against shrinking".into(),
            ));
        }
        let size = file.metadata().os("fstat")?.len() as usize;
        if size < HEADER_LEN || size > max_buffer() {
            return Err(Error::Corrupt(format!(
                "spill buffer of {size} bytes (at most {} accepted)",
                max_buffer()
            )));
        }
        // Not populated: the peer chose the size, and touching a page of a
        // sparse memfd allocates it. Reading a message faults in only its
        // own pages, once (the mapping is kept for the next messages).
        let map = MmapOptions::new().len(size).map_raw(&file).os("mmap")?;
        // SAFETY: at least HEADER_LEN bytes are mapped; every field is
        // plain data or an atomic, valid for any bit pattern.
        let h = unsafe { &*map.as_ptr().cast::<Header>() };
        let capacity = size - HEADER_LEN;
        if h.magic != MAGIC || h.version != VERSION || h.id != id || h.capacity != capacity as u64 {
            return Err(Error::Corrupt(format!(
                "spill buffer header mismatch (id {} for {id}, capacity {} of {capacity})",
                h.id, h.capacity
            )));
        }
        let guarded = guard && guardable();
        if guarded {
            // A receiver only reads the buffer, but for the moment it marks
            // it free (`release`): a stray write of its process faults
            // instead of changing a message that its sender may take back
            // and send elsewhere should this process die, or freeing a
            // buffer it has yet to read.
            // SAFETY: `[0, size)` is this whole mapping (page-aligned, from
            // `map_raw`), which only this `Mapped` owns; nothing in this
            // process writes through it but `release`, which lifts the
            // protection of the header page for its one store.
            unsafe { rustix::mm::mprotect(map.as_mut_ptr().cast(), size, MprotectFlags::READ) }
                .os("mprotect (spill buffer read-only)")?;
        }
        Ok(Self {
            id,
            map,
            capacity,
            guarded,
            kept: keep.then_some(file),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The file of a donated buffer, and its size.
    pub(crate) fn donated(&self) -> Option<(BorrowedFd<'_>, usize)> {
        self.kept
            .as_ref()
            .map(|f| (f.as_fd(), HEADER_LEN + self.capacity))
    }

    /// The first `len` bytes of the payload (`len <= capacity`, checked by
    /// the caller).
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        debug_assert!(len <= self.capacity);
        // SAFETY: `capacity` bytes are mapped after the header and the file
        // cannot shrink (sealed, checked in `open`). The sender does not
        // write them until `release` (ring.md, "Large messages").
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(HEADER_LEN), len.min(self.capacity))
        }
    }

    /// Tells the sender we are done reading. With the mapping guarded, the
    /// header page is writable only around the store. If that cannot be
    /// done (`mprotect` failing: out of memory for the split mapping), the
    /// buffer stays busy: its sender uses other buffers, and forgets it
    /// when the channel goes.
    pub(crate) fn release(&self) {
        let header = self.map.as_mut_ptr().cast::<std::ffi::c_void>();
        let protect = |flags| {
            // SAFETY: the first page of this mapping (HEADER_LEN is whole
            // pages when `guarded`); only changes access, and this process
            // writes it only below, between the two calls.
            unsafe { rustix::mm::mprotect(header, HEADER_LEN, flags) }
        };
        if self.guarded {
            if let Err(e) = protect(MprotectFlags::READ | MprotectFlags::WRITE) {
                tracing::warn!(error = %e, id = self.id, "cannot mark a spill buffer free; it stays busy");
                return;
            }
        }
        // SAFETY: as in `open`.
        let h = unsafe { &*self.map.as_ptr().cast::<Header>() };
        // SYNC POINT: pairs with the Acquire load in `Buf::is_free`: our
        // reads of the payload happen before the sender's next writes.
        h.state.store(FREE, Release);
        if self.guarded {
            if let Err(e) = protect(MprotectFlags::READ) {
                tracing::debug!(error = %e, id = self.id, "spill buffer header left writable");
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn size_classes_leave_room() {
        assert_eq!(size_class(0), 64 << 10);
        assert!(size_class(256 << 20) >= (256 << 20) + (32 << 20));
        assert_eq!(size_class(1000) % (64 << 10), 0);
    }

    #[test]
    fn mapping_a_peers_sparse_buffer_allocates_nothing() {
        // A peer (an untrusted worker) sends a large, mostly unallocated
        // buffer: mapping it must not fault it all in.
        let buf = Buf::create(256 << 20).unwrap();
        buf.punch().unwrap();
        let used = |f: &File| rustix::fs::fstat(f).unwrap().st_blocks as usize * 512;
        let Store::Own { file, .. } = &buf.store else {
            unreachable!()
        };
        assert!(used(file) < (1 << 20));
        let m = Mapped::open(
            file.as_fd().try_clone_to_owned().unwrap(),
            buf.id,
            true,
            false,
        )
        .unwrap();
        assert_eq!(m.bytes(16).len(), 16);
        assert!(
            used(file) < (1 << 20),
            "{} bytes allocated by mapping",
            used(file)
        );
    }

    #[test]
    fn a_mapped_buffer_sees_the_writes_and_frees_it() {
        let mut b = Buffer::lease(10_000).unwrap();
        b.as_mut_slice()[..5].copy_from_slice(b"hello");
        let flight = b.hand_over();
        assert!(!flight.is_free());
        let m = Mapped::open(b.fd().try_clone_to_owned().unwrap(), b.id(), true, false).unwrap();
        assert_eq!(m.bytes(5), b"hello");
        assert!(Mapped::open(
            b.fd().try_clone_to_owned().unwrap(),
            b.id() + 1,
            true,
            false
        )
        .is_err());
        m.release();
        assert!(flight.is_free());
    }

    #[test]
    fn an_unsealed_file_is_refused() {
        let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, (HEADER_LEN + 64) as u64).unwrap();
        assert!(Mapped::open(fd, 1, true, false).is_err());
    }
}
