//! The shared region: one anonymous memfd, mapped `MAP_SHARED` by the parent
//! and by every worker, holding a versioned header and a table of slots.
//!
//! ```text
//! offset 0            RegionHeader (one page)
//! PAGE                SlotHeader × slots (one page each)
//! PAGE × (1 + slots)  ring buffers: slot i has `down` then `up`, each
//!                     `ring_capacity` bytes
//! ```
//!
//! A slot is a duplex channel between the parent and one worker: the `down`
//! ring carries parent → worker messages, the `up` ring worker → parent, the
//! slot's doorbell wakes the worker, and the region's doorbell wakes the
//! parent. Every ring has exactly one producer and one consumer, so a worker
//! that dies can only leave its own slot in an unknown state; the parent
//! resets that slot before it hands it to a replacement.
//!
//! The memfd has no name in any filesystem and is sealed against resizing;
//! it disappears when the last process holding it (or a mapping) goes away.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::claim::Claim;
use crate::error::OsContext;
use crate::lifeline::Lifeline;
use crate::ring::{Consumer, Producer, RingHeader};
use crate::sync::{AtomicU32, Padded};
use crate::{Doorbell, Error, Result};
use std::sync::atomic::Ordering::{Relaxed, Release};

const MAGIC: [u8; 8] = *b"LOKYIPC\0";
/// Version of the region layout. Bump on any change to a `#[repr(C)]`
/// structure below, to the meaning of its words, or to the ring framing.
/// (5: a slot's claim word holds 31-bit keys and a hold flag.)
pub const LAYOUT_VERSION: u32 = 5;
const PAGE: usize = 4096;

/// What to build a region for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionConfig {
    /// Number of duplex slots (workers that can be attached at once).
    pub slots: u32,
    /// Capacity of each ring in bytes (power of two, >= 256).
    pub ring_capacity: usize,
    /// A value of the creator's choosing that attachers must present, e.g. an
    /// identity of the binary so that a different program cannot attach.
    pub tag: u64,
}

impl RegionConfig {
    fn total_len(&self) -> Result<usize> {
        RingHeader::check_capacity(self.ring_capacity)?;
        if self.slots == 0 || self.slots > 65_536 {
            return Err(Error::Config(format!(
                "slots must be in 1..=65536, got {}",
                self.slots
            )));
        }
        let slots = self.slots as usize;
        PAGE.checked_mul(1 + slots)
            .and_then(|h| {
                self.ring_capacity
                    .checked_mul(2 * slots)
                    .and_then(|d| d.checked_add(h))
            })
            .ok_or_else(|| Error::Config("region size overflows".into()))
    }
}

/// The region header at offset 0. `#[repr(C)]`.
///
/// The identification fields are written once by the creator before any
/// other process maps the region, and only read afterwards.
/// * `parent_bell`: consumers are the parent's threads that drain `up` rings
///   (they alone touch `awake`); producers are the workers (`ring`).
/// * `parent_spinning`: parent threads currently spinning; written and read
///   by the parent, read by workers to decide whether they may spin.
#[repr(C)]
#[derive(Debug)]
pub struct RegionHeader {
    magic: [u8; 8],
    version: u32,
    header_size: u32,
    slot_header_size: u32,
    slots: u32,
    ring_capacity: u64,
    total_len: u64,
    tag: u64,
    parent_bell: Padded<Doorbell>,
    parent_spinning: Padded<AtomicU32>,
}

/// The header of one slot. `#[repr(C)]`.
///
/// * `generation`: written by the parent when it (re)initialises the slot,
///   read by the worker at attach to check it holds the slot it was given.
/// * `pid`: written by the worker once attached; read by the parent (logs).
/// * `spinning`: 1 while the worker spins; written by the worker, read by
///   everyone deciding whether to spin. Reset by the parent with the slot,
///   and when it buries the worker ([`Slot::clear_activity`]).
/// * `running`: 1 while the worker is not idle: from its start, and from
///   the first message it finds after a wait until it waits again (a task
///   that sleeps or waits for room in the `up` ring counts as running).
///   Written by the worker, read by everyone deciding whether to spin.
///   Reset like `spinning`.
/// * `claim`: the race between the worker starting a task message and the
///   parent withdrawing it (see [`Claim`]); both write it, by
///   compare-and-swap. Reset by the parent with the slot.
/// * `bell`: the worker is the only consumer (`awake`), the parent rings.
/// * `lifeline`: held by the worker's main thread, watched by the parent;
///   see [`Lifeline`]. Reset by the parent with the slot.
/// * `down`, `up`: see [`RingHeader`].
#[repr(C)]
#[derive(Debug)]
pub struct SlotHeader {
    generation: AtomicU32,
    pid: AtomicU32,
    spinning: AtomicU32,
    running: AtomicU32,
    claim: Claim,
    bell: Padded<Doorbell>,
    lifeline: Lifeline,
    down: RingHeader,
    up: RingHeader,
}

const _: () = assert!(std::mem::size_of::<RegionHeader>() <= PAGE);
const _: () = assert!(std::mem::size_of::<SlotHeader>() <= PAGE);

/// A snapshot of the threads busy with the region ([`Region::activity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// The parent's threads spinning for results.
    pub parent_spinning: u32,
    /// Workers spinning for a message (their `spinning` flags).
    pub workers_spinning: u32,
    /// Workers running (their `running` flags).
    pub workers_running: u32,
}

impl Activity {
    /// Threads spinning, in every process.
    pub fn spinning(&self) -> u32 {
        self.parent_spinning.saturating_add(self.workers_spinning)
    }
}

/// A mapped region (see the module docs).
#[derive(Debug)]
pub struct Region {
    file: File,
    map: MmapRaw,
    cfg: RegionConfig,
}

// SAFETY: the mapping is shared memory accessed only through atomics and the
// ring protocol; `Region` hands out no `&mut` to it.
unsafe impl Sync for Region {}
// SAFETY: as above; the mapping is not tied to a thread.
unsafe impl Send for Region {}

impl Region {
    /// Creates a fresh region: an anonymous memfd, sized, sealed and mapped,
    /// with every slot initialised empty.
    pub fn create(cfg: RegionConfig) -> Result<Self> {
        let len = cfg.total_len()?;
        let fd = rustix::fs::memfd_create(
            "loky-region",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .os("memfd_create")?;
        rustix::fs::ftruncate(&fd, len as u64).os("ftruncate")?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .os("fcntl(F_ADD_SEALS)")?;
        let file = File::from(fd);
        let map = MmapOptions::new().len(len).map_raw(&file).os("mmap")?;
        let region = Self { file, map, cfg };
        let hdr = RegionHeader {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: std::mem::size_of::<RegionHeader>() as u32,
            slot_header_size: std::mem::size_of::<SlotHeader>() as u32,
            slots: cfg.slots,
            ring_capacity: cfg.ring_capacity as u64,
            total_len: len as u64,
            tag: cfg.tag,
            // The parent starts with one consumer awake: its manager thread.
            parent_bell: Padded(Doorbell::new(1)),
            parent_spinning: Padded(AtomicU32::new(0)),
        };
        // SAFETY: the mapping is at least one page, page-aligned, and not yet
        // shared with any other process; no reference to it exists yet.
        unsafe { region.map.as_mut_ptr().cast::<RegionHeader>().write(hdr) };
        for i in 0..cfg.slots {
            let slot = region.slot(i);
            let hdr = SlotHeader {
                generation: AtomicU32::new(0),
                pid: AtomicU32::new(0),
                spinning: AtomicU32::new(0),
                running: AtomicU32::new(0),
                claim: Claim::new(),
                bell: Padded(Doorbell::new(1)),
                lifeline: Lifeline::new(),
                down: RingHeader::new(cfg.ring_capacity),
                up: RingHeader::new(cfg.ring_capacity),
            };
            // SAFETY: in bounds and aligned (page offset), and nobody else
            // can see the region yet.
            unsafe { slot.hdr.as_ptr().write(hdr) };
        }
        Ok(region)
    }

    /// Maps a region received from the creator and checks it: a memfd
    /// sealed against shrinking (as [`Self::create`] makes it), then its
    /// header: magic, layout version, structure sizes, length and `tag`.
    /// A descriptor that is not such a memfd is [`Error::Config`]; a header
    /// that does not match, [`Error::BadHeader`].
    pub fn attach(fd: OwnedFd, tag: u64) -> Result<Self> {
        let file = File::from(fd);
        // Another holder of the descriptor could otherwise shrink the file
        // under the mapping: the next access past its new end would be a
        // SIGBUS. (A file that is not a memfd has no seals at all.)
        let seals = match rustix::fs::fcntl_get_seals(&file) {
            // A misused descriptor, not a region of another binary.
            Err(rustix::io::Errno::INVAL) => {
                return Err(Error::Config(
                    "region descriptor is not a memfd (it cannot be sealed against shrinking)"
                        .into(),
                ))
            }
            seals => seals.os("fcntl(F_GET_SEALS)")?,
        };
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::Config(
                "region descriptor is not sealed against shrinking".into(),
            ));
        }
        let len = file.metadata().os("fstat")?.len() as usize;
        if len < PAGE {
            return Err(Error::BadHeader(format!(
                "region is {len} bytes, smaller than its header"
            )));
        }
        let map = MmapOptions::new().len(len).map_raw(&file).os("mmap")?;
        // SAFETY: at least one page is mapped; RegionHeader is plain data
        // (integers and atomics), valid for any bit pattern.
        let hdr = unsafe { &*map.as_ptr().cast::<RegionHeader>() };
        if hdr.magic != MAGIC {
            return Err(Error::BadHeader("not a loky region (bad magic)".into()));
        }
        if hdr.version != LAYOUT_VERSION {
            return Err(Error::BadHeader(format!(
                "layout version {} (this binary speaks {LAYOUT_VERSION})",
                hdr.version
            )));
        }
        if hdr.header_size as usize != std::mem::size_of::<RegionHeader>()
            || hdr.slot_header_size as usize != std::mem::size_of::<SlotHeader>()
        {
            return Err(Error::BadHeader("structure sizes differ".into()));
        }
        if hdr.tag != tag {
            return Err(Error::BadHeader(format!(
                "tag {:#x}, expected {tag:#x}",
                hdr.tag
            )));
        }
        let cfg = RegionConfig {
            slots: hdr.slots,
            ring_capacity: hdr.ring_capacity as usize,
            tag,
        };
        let want = cfg.total_len()?;
        if want != len || hdr.total_len as usize != len {
            return Err(Error::BadHeader(format!(
                "length {len}, header says {}",
                hdr.total_len
            )));
        }
        Ok(Self { file, map, cfg })
    }

    /// The configuration the region was created with.
    pub fn config(&self) -> RegionConfig {
        self.cfg
    }

    /// The memfd (to pass to a worker).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn header(&self) -> &RegionHeader {
        // SAFETY: initialised by `create` or checked by `attach`.
        unsafe { &*self.map.as_ptr().cast::<RegionHeader>() }
    }

    /// The doorbell that wakes the parent.
    pub fn parent_bell(&self) -> &Doorbell {
        &self.header().parent_bell
    }

    /// The parent's count of spinning threads.
    pub fn parent_spinning(&self) -> &AtomicU32 {
        &self.header().parent_spinning
    }

    /// Who is spinning and running, in every process (a snapshot, read
    /// without locks).
    pub fn activity(&self) -> Activity {
        // The slot flags are written by workers: saturate, never overflow.
        (0..self.cfg.slots).fold(
            Activity {
                parent_spinning: self.parent_spinning().load(Relaxed),
                ..Activity::default()
            },
            |a, i| {
                let h = self.slot(i).header();
                Activity {
                    workers_spinning: a.workers_spinning.saturating_add(h.spinning.load(Relaxed)),
                    workers_running: a.workers_running.saturating_add(h.running.load(Relaxed)),
                    ..a
                }
            },
        )
    }

    /// Slot `i`. Panics if `i` is out of range (a bug in the caller).
    pub fn slot(&self, i: u32) -> Slot<'_> {
        assert!(i < self.cfg.slots, "slot {i} out of range");
        let base = self.map.as_mut_ptr();
        let cap = self.cfg.ring_capacity;
        let data_start = PAGE * (1 + self.cfg.slots as usize);
        // SAFETY: all offsets are inside the mapping (total_len was checked).
        unsafe {
            Slot {
                hdr: NonNull::new_unchecked(base.add(PAGE * (1 + i as usize)).cast()),
                down: NonNull::new_unchecked(base.add(data_start + 2 * cap * i as usize)),
                up: NonNull::new_unchecked(base.add(data_start + 2 * cap * i as usize + cap)),
                _region: self,
            }
        }
    }

    /// Whether [`Self::protect_for_slot`] can guard the rings: their
    /// capacity is a whole number of pages, and the ring data starts on a
    /// page (the layout's 4 KiB headers are whole pages of this machine).
    pub fn rings_protectable(&self) -> bool {
        let page = rustix::param::page_size();
        PAGE % page == 0 && self.cfg.ring_capacity % page == 0
    }

    /// Guards the rings of this mapping against stray writes of the
    /// process that owns slot `i` (a worker): the data of its `down` ring,
    /// which it only reads, becomes read-only, the ring data of every other
    /// slot inaccessible, and the other slots' headers read-only (their
    /// `spinning` and `running` flags are read). A task that scribbles over memory then
    /// faults instead of corrupting messages that its parent may read back
    /// after its death ([`crate::ring::Producer::unreleased`]), or another
    /// worker's messages, claim word or lifeline. Does nothing unless
    /// [`Self::rings_protectable`].
    ///
    /// Meant for the owner of slot `i`, on its own mapping, before it
    /// reads its rings. Panics if `i` is out of range (a bug in the caller).
    ///
    /// # Safety
    ///
    /// From the call on (even one that fails: some pages may be guarded
    /// already), no thread of this process may use any slot but `i` of
    /// this mapping, except to read its header with plain loads
    /// ([`Self::activity`], [`Slot::generation`], [`Slot::pid`], a load of
    /// [`Slot::spinning`] or [`Slot::running`]): no store, no `set_pid`, [`Self::init_slot`],
    /// doorbell, claim or lifeline of another slot, and none of its ring
    /// ends (its header page becomes read-only, its ring data
    /// inaccessible: such a use faults with `SIGSEGV`); nor may it make a
    /// producer of slot `i`'s `down` ring (its data becomes read-only).
    /// The region header, slot `i`'s header, its `down` consumer and its
    /// `up` ring stay usable, as do other mappings of the region.
    pub unsafe fn protect_for_slot(&self, i: u32) -> Result<()> {
        assert!(i < self.cfg.slots, "slot {i} out of range");
        if !self.rings_protectable() {
            return Ok(());
        }
        let base = self.map.as_mut_ptr();
        let cap = self.cfg.ring_capacity;
        let data_start = PAGE * (1 + self.cfg.slots as usize);
        for s in 0..self.cfg.slots as usize {
            let flags = if s == i as usize {
                rustix::mm::MprotectFlags::READ
            } else {
                rustix::mm::MprotectFlags::empty()
            };
            // Slot `s`'s rings: `down` then `up`; its own `up` stays writable.
            let len = if s == i as usize { cap } else { 2 * cap };
            // SAFETY: the range lies inside this mapping (as in `slot`), is
            // page-aligned (`data_start` and `cap` are page multiples,
            // `rings_protectable`) and
            // only changes access: this process only reads its `down` ring
            // and never touches another slot's rings (this function's
            // contract), so no access it makes is cut off.
            unsafe { rustix::mm::mprotect(base.add(data_start + 2 * cap * s).cast(), len, flags) }
                .os("mprotect (guarding the rings)")?;
            if s != i as usize {
                // SAFETY: slot `s`'s header page, inside this mapping and
                // page-aligned (`rings_protectable`); this process only
                // reads it (this function's contract), so no access is cut
                // off.
                unsafe {
                    rustix::mm::mprotect(
                        base.add(PAGE * (1 + s)).cast(),
                        PAGE,
                        rustix::mm::MprotectFlags::READ,
                    )
                }
                .os("mprotect (guarding the slot headers)")?;
            }
        }
        Ok(())
    }

    /// Resets slot `i` to empty rings and stamps a new `generation`.
    ///
    /// # Safety
    ///
    /// No process other than the caller may be using the slot: its previous
    /// worker has exited (or never existed) and the caller holds no
    /// producer or consumer of it.
    ///
    /// Field by field, with atomic stores: other threads of this process
    /// read every slot's counters meanwhile (whether results wait, how many
    /// threads spin). The ring capacities, written at creation, stay.
    pub unsafe fn init_slot(&self, i: u32, generation: u32) {
        let h = self.slot(i).header();
        h.pid.store(0, Relaxed);
        h.spinning.store(0, Relaxed);
        h.running.store(0, Relaxed);
        h.claim.reset();
        h.bell.reset(1);
        h.lifeline.reset();
        h.down.reset();
        h.up.reset();
        h.generation.store(generation, Release);
    }
}

/// A view of one slot of a [`Region`].
#[derive(Debug, Clone, Copy)]
pub struct Slot<'r> {
    hdr: NonNull<SlotHeader>,
    down: NonNull<u8>,
    up: NonNull<u8>,
    _region: &'r Region,
}

impl<'r> Slot<'r> {
    fn header(&self) -> &'r SlotHeader {
        // SAFETY: points into the region, which outlives 'r.
        unsafe { self.hdr.as_ref() }
    }

    /// The ring capacity from the region's configuration (validated at
    /// create or attach), never from the slot header, which the worker can
    /// write.
    fn capacity(&self) -> u64 {
        self._region.cfg.ring_capacity as u64
    }

    /// The generation stamped by the last [`Region::init_slot`].
    pub fn generation(&self) -> u32 {
        self.header().generation.load(Relaxed)
    }

    /// The pid the worker recorded, 0 if none.
    pub fn pid(&self) -> u32 {
        self.header().pid.load(Relaxed)
    }

    /// The slot's lifeline (see [`crate::lifeline`]).
    pub fn lifeline(&self) -> &'r Lifeline {
        &self.header().lifeline
    }

    /// Records the attached worker's pid.
    pub fn set_pid(&self, pid: u32) {
        self.header().pid.store(pid, Relaxed);
    }

    /// The worker's spinning flag.
    pub fn spinning(&self) -> &'r AtomicU32 {
        &self.header().spinning
    }

    /// The worker's running flag (see [`SlotHeader`]).
    pub fn running(&self) -> &'r AtomicU32 {
        &self.header().running
    }

    /// Puts the `spinning` and `running` flags down: for the parent once
    /// the slot's worker is dead, whose flags would otherwise count as a
    /// busy core until the slot is used again.
    pub fn clear_activity(&self) {
        let h = self.header();
        h.spinning.store(0, Relaxed);
        h.running.store(0, Relaxed);
    }

    /// The race between the worker starting a message of its `down` ring
    /// and the parent withdrawing it.
    pub fn claim(&self) -> &'r Claim {
        &self.header().claim
    }

    /// The doorbell that wakes the worker.
    pub fn bell(&self) -> &'r Doorbell {
        &self.header().bell
    }

    /// The parent → worker ring's shared header.
    pub fn down_header(&self) -> &'r RingHeader {
        &self.header().down
    }

    /// The worker → parent ring's shared header.
    pub fn up_header(&self) -> &'r RingHeader {
        &self.header().up
    }

    /// # Safety
    /// No other producer of this slot's `down` ring exists (in any process).
    pub unsafe fn down_producer(&self) -> Producer<'r> {
        // SAFETY: header and data are in the mapped region; exclusivity is
        // the caller's contract.
        unsafe {
            Producer::attach_with_capacity(
                NonNull::from(&self.header().down),
                self.down,
                self.capacity(),
            )
        }
    }

    /// # Safety
    /// No other consumer of this slot's `down` ring exists (in any process).
    pub unsafe fn down_consumer(&self) -> Consumer<'r> {
        // SAFETY: as in `down_producer`.
        unsafe {
            Consumer::attach_with_capacity(
                NonNull::from(&self.header().down),
                self.down,
                self.capacity(),
            )
        }
    }

    /// # Safety
    /// No other producer of this slot's `up` ring exists (in any process).
    pub unsafe fn up_producer(&self) -> Producer<'r> {
        // SAFETY: as in `down_producer`.
        unsafe {
            Producer::attach_with_capacity(
                NonNull::from(&self.header().up),
                self.up,
                self.capacity(),
            )
        }
    }

    /// # Safety
    /// No other consumer of this slot's `up` ring exists (in any process).
    pub unsafe fn up_consumer(&self) -> Consumer<'r> {
        // SAFETY: as in `down_producer`.
        unsafe {
            Consumer::attach_with_capacity(
                NonNull::from(&self.header().up),
                self.up,
                self.capacity(),
            )
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_child::{in_child, no_core_dumps, segfaulted};

    fn cfg() -> RegionConfig {
        RegionConfig {
            slots: 3,
            ring_capacity: 4096,
            tag: 0xfeed,
        }
    }

    #[test]
    fn create_and_attach_checks_header() {
        let region = Region::create(cfg()).unwrap();
        let fd = region.fd().try_clone_to_owned().unwrap();
        let other = Region::attach(fd, 0xfeed).unwrap();
        assert_eq!(other.config(), cfg());
        let fd = region.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            Region::attach(fd, 0xbad),
            Err(Error::BadHeader(_))
        ));
    }

    #[test]
    fn a_guarded_slot_owner_cannot_write_rings_it_only_reads() {
        no_core_dumps();
        let region = Region::create(cfg()).unwrap();
        let fd = region.fd().try_clone_to_owned().unwrap();
        let worker = Region::attach(fd, 0xfeed).unwrap();
        if !worker.rings_protectable() {
            return; // pages over 4 KiB: the rings are not guarded
        }
        // SAFETY: through `worker`, the test then uses only slot 1 and
        // reads other slots' headers; the accesses meant to fault are made
        // in forked children.
        unsafe { worker.protect_for_slot(1) }.unwrap();
        let (own, other) = (worker.slot(1), worker.slot(0));
        // Each access below is inside the mapping's ring data, in a forked
        // child that is the only process touching it.
        let read_own = in_child(|| {
            // SAFETY: see above.
            unsafe { own.down.as_ptr().read_volatile() };
        });
        assert!(libc::WIFEXITED(read_own), "own down ring stays readable");
        let write_up = in_child(|| {
            // SAFETY: see above.
            unsafe { own.up.as_ptr().write_volatile(1) }
        });
        assert!(libc::WIFEXITED(write_up), "own up ring stays writable");
        let write_down = in_child(|| {
            // SAFETY: see above.
            unsafe { own.down.as_ptr().write_volatile(1) }
        });
        assert!(segfaulted(write_down), "own down ring: {write_down:#x}");
        let read_other = in_child(|| {
            // SAFETY: see above.
            unsafe { other.up.as_ptr().read_volatile() };
        });
        assert!(
            segfaulted(read_other),
            "another slot's ring: {read_other:#x}"
        );
        // Another slot's header: readable (its `spinning` flag), not
        // writable; its own stays writable.
        let read_header = in_child(|| {
            std::hint::black_box(other.spinning().load(std::sync::atomic::Ordering::Relaxed));
        });
        assert!(
            libc::WIFEXITED(read_header),
            "another slot's header is read"
        );
        let write_header = in_child(|| {
            other
                .spinning()
                .store(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(
            segfaulted(write_header),
            "another slot's header: {write_header:#x}"
        );
        let write_own = in_child(|| {
            own.spinning()
                .store(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(libc::WIFEXITED(write_own), "own header stays writable");
        // Other mappings (the parent's) are not affected.
        // SAFETY: as above, in this process's own unguarded mapping.
        unsafe { region.slot(1).down.as_ptr().write_volatile(2) };
    }

    /// The bytes of a valid region in a new file that `make` returns.
    fn copy_of_region(make: impl FnOnce() -> OwnedFd) -> OwnedFd {
        let region = Region::create(cfg()).unwrap();
        let len = cfg().total_len().unwrap();
        let mut bytes = vec![0u8; len];
        let n = rustix::io::pread(region.fd(), &mut bytes, 0).unwrap();
        assert_eq!(n, len);
        let fd = make();
        let n = rustix::io::pwrite(&fd, &bytes, 0).unwrap();
        assert_eq!(n, len);
        fd
    }

    fn refused_for_seals(r: Result<Region>) -> bool {
        matches!(r, Err(Error::Config(why)) if why.contains("seal"))
    }

    #[test]
    fn attach_requires_a_memfd_sealed_against_shrinking() {
        let memfd = || {
            rustix::fs::memfd_create("copy", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap()
        };
        // A valid header, but anyone holding the descriptor could shrink
        // the file under the mapping.
        let unsealed = copy_of_region(memfd);
        let r = Region::attach(unsealed, 0xfeed);
        assert!(refused_for_seals(r), "unsealed memfd attached");
        // Sealed against shrinking only: accepted (growing is harmless).
        let sealed = copy_of_region(memfd);
        rustix::fs::fcntl_add_seals(&sealed, SealFlags::SHRINK).unwrap();
        Region::attach(sealed, 0xfeed).unwrap();
        // A regular file has no seals.
        let file = copy_of_region(|| {
            let path = std::env::temp_dir().join(format!(
                "loky-ipc-region-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            file.into()
        });
        let r = Region::attach(file, 0xfeed);
        assert!(refused_for_seals(r), "regular file attached");
    }

    #[test]
    fn attach_rejects_foreign_memfd() {
        // Sealed as a region is, so that the header check is what refuses.
        let fd =
            rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let r = Region::attach(fd, 0);
        assert!(
            matches!(&r, Err(Error::BadHeader(why)) if why.contains("magic")),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn rejects_bad_config() {
        assert!(Region::create(RegionConfig { slots: 0, ..cfg() }).is_err());
        assert!(Region::create(RegionConfig {
            ring_capacity: 1000,
            ..cfg()
        })
        .is_err());
    }

    /// The worker can write its slot header; a capacity scribbled there must
    /// not change the bounds the parent's ends use.
    #[test]
    fn ends_ignore_capacity_written_into_the_slot_header() {
        let region = Region::create(cfg()).unwrap();
        let slot = region.slot(1);
        let base = region.map.as_mut_ptr();
        // `capacity` follows `head` and `tail`, 128 bytes each.
        let offset = slot.up_header() as *const RingHeader as usize - base as usize + 256;
        // SAFETY: in bounds of the mapping, 8-aligned, and no reference to
        // the field is alive (a stand-in for a write by the worker process).
        unsafe { base.add(offset).cast::<u64>().write(1 << 40) };
        assert_eq!(
            slot.up_header().capacity(),
            1 << 40,
            "wrote the capacity field"
        );
        // SAFETY: the only producer and consumer of this ring.
        let (mut p, mut c) = unsafe { (slot.up_producer(), slot.up_consumer()) };
        assert_eq!(p.max_message(), 4096 / 2 - crate::ring::FRAME);
        for i in 0..1000u32 {
            assert!(p.try_push(i, &[i as u8; 1000]));
            assert_eq!(c.peek().unwrap().unwrap().payload, &[i as u8; 1000][..]);
            c.pop().unwrap();
        }
    }

    #[test]
    fn slots_carry_messages_between_two_mappings() {
        let a = Region::create(cfg()).unwrap();
        let b = Region::attach(a.fd().try_clone_to_owned().unwrap(), 0xfeed).unwrap();
        for i in 0..3 {
            // SAFETY: one producer (in `a`) and one consumer (in `b`) per ring.
            let (mut p, mut c) = unsafe { (a.slot(i).down_producer(), b.slot(i).down_consumer()) };
            assert!(p.try_push(i, &[i as u8; 33]));
            let m = c.peek().unwrap().unwrap();
            assert_eq!((m.tag, m.payload), (i, &[i as u8; 33][..]));
        }
    }

    #[test]
    fn spinning_and_running_count_every_process_and_reset_with_the_slot() {
        let a = Region::create(cfg()).unwrap();
        let b = Region::attach(a.fd().try_clone_to_owned().unwrap(), 0xfeed).unwrap();
        b.slot(0).running().store(1, Relaxed);
        b.slot(2).running().store(1, Relaxed);
        b.slot(1).spinning().store(1, Relaxed);
        a.parent_spinning().store(2, Relaxed);
        let seen = |r: &Region| {
            let a = r.activity();
            (a.parent_spinning, a.workers_spinning, a.workers_running)
        };
        assert_eq!(seen(&a), (2, 1, 2));
        assert_eq!(a.activity().spinning(), 3);
        // A scribbled flag saturates the count rather than wrapping it.
        b.slot(1).running().store(u32::MAX, Relaxed);
        assert_eq!(a.activity().workers_running, u32::MAX);
        // SAFETY: no worker is attached to slot 2; nothing holds its rings.
        unsafe { a.init_slot(2, 7) };
        a.slot(1).clear_activity();
        assert_eq!(seen(&a), (2, 0, 1));
    }
}
