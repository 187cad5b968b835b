//! Single-producer, single-consumer byte ring in shared memory.
//!
//! The protocol is described in `ring.md` next to this file. In short:
//! `head` and `tail` are monotonically increasing byte counters (never
//! wrapped; `u64` lasts for centuries). The producer owns `head`, the consumer
//! owns `tail`. A message is a 16-byte frame header (`len: u32`, `tag: u32`,
//! 8 reserved bytes) followed by `len` payload bytes padded to 16, stored
//! contiguously; when it does not fit before the end of the buffer the
//! producer writes a *wrap* frame and continues at offset 0. Payloads are
//! therefore 16-byte aligned and contiguous, so a consumer can decode them in
//! place.
//!
//! The largest message that always fits is [`Producer::max_message`] (half
//! the capacity minus a frame): larger ones must travel another way
//! ([`crate::channel`] sends them in [`crate::spill`] buffers).

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::sync::{AtomicU64, Padded};
use crate::{Error, Result};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Size of a frame header, and the alignment of every frame.
pub const FRAME: usize = 16;
const WRAP: u32 = u32::MAX;
/// Clears the bits of a position below a frame boundary.
const FRAME_MASK: u64 = !(FRAME as u64 - 1);

/// The shared part of a ring. `#[repr(C)]`; the data buffer (of
/// `capacity` bytes) lives elsewhere in the same region.
///
/// * `head`: bytes ever published. Written by the producer only (Release in
///   [`Grant::commit`]); read by the consumer (Acquire in [`Consumer::peek`]).
/// * `tail`: bytes ever consumed. Written by the consumer only (Release in
///   [`Consumer::pop`]); read by the producer (Acquire in
///   [`Producer::reserve`]).
/// * `capacity`: written once by the creator before the ring is shared.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    head: Padded<AtomicU64>,
    tail: Padded<AtomicU64>,
    capacity: u64,
}

impl RingHeader {
    /// A fresh, empty ring header for a buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            tail: Padded(AtomicU64::new(0)),
            capacity: capacity as u64,
        }
    }

    /// Validates a capacity: a power of two of at least 256 bytes that fits
    /// frame lengths (`u32`).
    pub fn check_capacity(capacity: usize) -> Result<()> {
        if capacity < 256 || !capacity.is_power_of_two() || capacity > (1usize << 31) {
            return Err(Error::Config(format!(
                "ring capacity must be a power of two between 256 B and 2 GiB, got {capacity}"
            )));
        }
        Ok(())
    }

    /// Capacity of the data buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Bytes currently queued (a snapshot; exact only when both sides idle).
    pub fn used(&self) -> usize {
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        head.saturating_sub(tail) as usize
    }

    /// Empties the ring, while neither end is attached anywhere (its
    /// capacity stays).
    pub(crate) fn reset(&self) {
        self.head.store(0, Relaxed);
        self.tail.store(0, Relaxed);
    }

    /// Bytes the producer has published so far (a snapshot). A consumer
    /// that knows its own [`Consumer::position`] can tell whether a message
    /// waits without trusting the shared `tail`, which its peer may have
    /// overwritten.
    pub fn published(&self) -> u64 {
        self.head.load(Acquire)
    }

    /// True if nothing is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.used() == 0
    }
}

#[inline]
fn frame_len(len: usize) -> usize {
    FRAME + len.next_multiple_of(FRAME)
}

/// Reads the frame at stream position `*at` of a buffer `data` of `cap`
/// bytes, skipping a wrap frame (which moves `*at` to the start of the
/// buffer): the frame's offset in the buffer, its payload length and tag.
/// A frame that does not fit before `end` (where the written bytes stop),
/// or that no producer could have written, is [`Error::Corrupt`].
///
/// # Safety
///
/// `data` is the ring's buffer of `cap` bytes, `*at` is a multiple of
/// [`FRAME`], and the bytes from `*at` to `end` were written by the
/// producer and are not written again while the caller reads them.
unsafe fn frame_at(
    data: NonNull<u8>,
    shadow: Shadow,
    cap: u64,
    at: &mut u64,
    end: u64,
) -> Result<(u64, usize, u32)> {
    loop {
        let pos = *at % cap;
        shadow.read(pos, FRAME);
        // SAFETY: `pos` is 16-aligned and < cap, so the frame header is in
        // bounds; the caller vouches for its bytes.
        let (len, tag) = unsafe {
            let p = data.as_ptr().add(pos as usize).cast::<u32>();
            (p.read_volatile(), p.add(1).read_volatile())
        };
        if len == WRAP {
            // A producer wraps only a frame that does not fit before the
            // end of the buffer, and every frame fits in a whole buffer:
            // a wrap at offset 0 (or a second one in a row) is made up.
            if pos == 0 {
                return Err(Error::Corrupt("wrap frame at the start of the ring".into()));
            }
            *at = at
                .checked_add(cap - pos)
                .filter(|&next| next <= end)
                .ok_or_else(|| Error::Corrupt("wrap frame past head".into()))?;
            continue;
        }
        let len = len as usize;
        if len > cap as usize / 2
            || pos + frame_len(len) as u64 > cap
            || *at + frame_len(len) as u64 > end
        {
            return Err(Error::Corrupt(format!(
                "frame of {len} bytes at {pos} does not fit (capacity {cap}, written {})",
                // `end` comes from the peer and may be behind `at`.
                end.saturating_sub(*at)
            )));
        }
        return Ok((pos, len, tag));
    }
}

/// The `len` payload bytes of the frame at offset `pos` of `data`.
///
/// # Safety
///
/// As for [`frame_at`], which returned `pos` and `len` (so they fit).
unsafe fn payload<'a>(data: NonNull<u8>, shadow: Shadow, pos: u64, len: usize) -> &'a [u8] {
    shadow.read(pos + FRAME as u64, len);
    // SAFETY: the payload lies inside the buffer (checked by `frame_at`)
    // and the caller vouches that it is not written while borrowed.
    unsafe { std::slice::from_raw_parts(data.as_ptr().add(pos as usize + FRAME), len) }
}

/// Under `--cfg loom`, a model-checked stand-in for the data buffer: one
/// `loom::cell::UnsafeCell` per 16-byte chunk, touched wherever the ring
/// reads or writes those bytes, so that loom reports any buffer access that
/// the `head`/`tail` SYNC POINTs do not order. Only [`HeapRing`] provides
/// one; elsewhere (and always without loom) it is empty and free.
#[derive(Debug, Clone, Copy, Default)]
struct Shadow(#[cfg(loom)] Option<NonNull<loom::cell::UnsafeCell<()>>>);

#[cfg(not(loom))]
impl Shadow {
    #[inline(always)]
    fn read(&self, _start: u64, _len: usize) {}
    #[inline(always)]
    fn write(&self, _start: u64, _len: usize) {}
}

#[cfg(loom)]
impl Shadow {
    fn read(&self, start: u64, len: usize) {
        self.touch(start, len, |cell| cell.with(|_| ()));
    }
    fn write(&self, start: u64, len: usize) {
        self.touch(start, len, |cell| cell.with_mut(|_| ()));
    }
    fn touch(&self, start: u64, len: usize, access: impl Fn(&loom::cell::UnsafeCell<()>)) {
        let Some(cells) = self.0 else { return };
        let first = start as usize / FRAME;
        let end = (start as usize + len).div_ceil(FRAME);
        for chunk in first..end {
            // SAFETY: `HeapRing` allocates one cell per 16-byte chunk of its
            // buffer and outlives both ends; callers pass in-bounds ranges.
            access(unsafe { &*cells.as_ptr().add(chunk) });
        }
    }
}

/// The writing end of a ring. At most one `Producer` may exist per ring at
/// any time, across all processes.
#[derive(Debug)]
pub struct Producer<'r> {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    cap: u64,
    head: u64,
    cached_tail: u64,
    shadow: Shadow,
    _region: PhantomData<&'r [u8]>,
}

// SAFETY: a Producer only touches the ring through atomics and the bytes the
// protocol reserves for it; moving it to another thread keeps the single-
// producer property (it is not Clone, and `&mut self` methods serialise use).
unsafe impl Send for Producer<'_> {}

impl<'r> Producer<'r> {
    /// Attaches the producing end.
    ///
    /// # Safety
    ///
    /// * `hdr` points to an initialised [`RingHeader`] and `data` to its
    ///   `capacity` bytes, both valid (and mapped) for `'r`;
    /// * no other producer for this ring exists while this one lives;
    /// * the capacity passed [`RingHeader::check_capacity`].
    pub unsafe fn attach(hdr: NonNull<RingHeader>, data: NonNull<u8>) -> Self {
        // SAFETY: the caller guarantees `hdr` is valid for reads.
        let cap = unsafe { hdr.as_ref() }.capacity;
        // SAFETY: the caller's contract, and `cap` is the header's own.
        unsafe { Self::attach_with_capacity(hdr, data, cap) }
    }

    /// [`Self::attach`] with the capacity from a trusted source instead of
    /// the shared header, which the peer process could have overwritten.
    ///
    /// # Safety
    ///
    /// As for [`Self::attach`], with `cap` the size of `data`.
    pub(crate) unsafe fn attach_with_capacity(
        hdr: NonNull<RingHeader>,
        data: NonNull<u8>,
        cap: u64,
    ) -> Self {
        // SAFETY: the caller guarantees `hdr` is valid for reads.
        let h = unsafe { hdr.as_ref() };
        // Frame-aligned whatever another process may have written here:
        // every position this end computes from it stays 16-aligned, which
        // `reserve` and `write_frame` rely on (a misaligned value from a
        // peer's stray write costs that peer garbled frames, not us UB).
        let head = h.head.load(Relaxed) & FRAME_MASK;
        Self {
            hdr,
            data,
            cap,
            head,
            cached_tail: h.tail.load(Acquire),
            shadow: Shadow::default(),
            _region: PhantomData,
        }
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: valid for 'r per `attach`'s contract.
        unsafe { self.hdr.as_ref() }
    }

    /// The largest payload that is guaranteed to fit once the ring drains.
    pub fn max_message(&self) -> usize {
        self.cap as usize / 2 - FRAME
    }

    /// Reserves room for a payload of `len` bytes. Returns `None` if the ring
    /// is currently too full (or `len` exceeds [`Self::max_message`]).
    /// Nothing is visible to the consumer until [`Grant::commit`].
    pub fn reserve(&mut self, len: usize) -> Option<Grant<'_, 'r>> {
        if len > self.max_message() {
            return None;
        }
        let need = frame_len(len) as u64;
        let pos = self.head % self.cap;
        let to_end = self.cap - pos;
        let total = if to_end >= need { need } else { to_end + need };
        if self.free() < total {
            // SYNC POINT: pairs with the Release store of `tail` in
            // `Consumer::pop`: the consumer is done with the bytes we reuse.
            self.cached_tail = self.header().tail.load(Acquire);
            if self.free() < total {
                return None;
            }
        }
        let start = if to_end >= need {
            pos
        } else {
            // SAFETY: `pos` is 16-aligned and < cap, so a full frame header
            // fits before the end; the bytes are free (checked above).
            unsafe { self.write_frame(pos, WRAP, 0) };
            0
        };
        Some(Grant {
            ring: self,
            start,
            skip: total - need,
            len,
        })
    }

    /// Bytes free as far as the last `tail` we read says. `tail` comes from
    /// the other process: one that no consumer following the protocol could
    /// have written (ahead of `head`, or more than `cap` behind it) reads as
    /// a full ring rather than overflowing.
    #[inline]
    fn free(&self) -> u64 {
        self.cap
            .saturating_sub(self.head.wrapping_sub(self.cached_tail))
    }

    /// Calls `visit` with the tag and the bytes of each message the consumer
    /// has not released (popped) yet, oldest first: what a consumer that
    /// died never finished with, so that the producer can send it
    /// elsewhere (copying only what it wants).
    ///
    /// Meant for a consumer that is gone. With a live one the answer is
    /// only a snapshot (it may release more meanwhile), but nothing breaks:
    /// released bytes are not written again before the next `reserve`.
    ///
    /// `tail` comes from the consumer's process; one that no consumer
    /// following the protocol could have written, or a frame that does not
    /// fit between it and `head`, is [`Error::Corrupt`] (the messages
    /// visited before it are whole, but the caller should trust none).
    pub fn unreleased(&self, mut visit: impl FnMut(u32, &[u8])) -> Result<()> {
        // SYNC POINT: pairs with the Release store of `tail` in
        // `Consumer::pop`: the consumer is done with the bytes before it.
        let mut at = self.header().tail.load(Acquire);
        if at > self.head || self.head - at > self.cap || at % FRAME as u64 != 0 {
            return Err(Error::Corrupt(format!(
                "consumer position {at} is not within the {} bytes before {}",
                self.cap, self.head
            )));
        }
        while at < self.head {
            // SAFETY: `at` is 16-aligned (checked above; `frame_at` moves
            // it by multiples of 16) and `[at, head)` was written by this
            // producer, which writes it again only once `reserve` sees it
            // released.
            let (pos, len, tag) =
                unsafe { frame_at(self.data, self.shadow, self.cap, &mut at, self.head) }?;
            // SAFETY: as above; `frame_at` checked the payload fits.
            visit(tag, unsafe { payload(self.data, self.shadow, pos, len) });
            at += frame_len(len) as u64;
        }
        Ok(())
    }

    /// Copies `payload` into the ring as one message; false if it is full.
    pub fn try_push(&mut self, tag: u32, payload: &[u8]) -> bool {
        match self.reserve(payload.len()) {
            Some(mut g) => {
                g.payload().copy_from_slice(payload);
                g.commit(tag);
                true
            }
            None => false,
        }
    }

    /// # Safety
    /// `pos` is 16-aligned, `pos + FRAME <= cap`, and the frame is free.
    unsafe fn write_frame(&mut self, pos: u64, len: u32, tag: u32) {
        self.shadow.write(pos, FRAME);
        // SAFETY: in bounds and 16-aligned per the contract; the consumer does
        // not read it before the Release store of `head` publishes it.
        unsafe {
            let p = self.data.as_ptr().add(pos as usize).cast::<u32>();
            p.write(len);
            p.add(1).write(tag);
        }
    }
}

/// Room reserved in a ring by [`Producer::reserve`]. Dropping it without
/// committing abandons the reservation (nothing becomes visible).
#[derive(Debug)]
pub struct Grant<'p, 'r> {
    ring: &'p mut Producer<'r>,
    start: u64,
    skip: u64,
    len: usize,
}

impl Grant<'_, '_> {
    /// The payload bytes to fill (16-byte aligned, `len` long).
    pub fn payload(&mut self) -> &mut [u8] {
        self.ring.shadow.write(self.start + FRAME as u64, self.len);
        // SAFETY: `reserve` checked that [start, start + frame_len(len)) is
        // inside the buffer and not readable by the consumer until commit.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ring.data.as_ptr().add(self.start as usize + FRAME),
                self.len,
            )
        }
    }

    /// Publishes the message with a user `tag` (any value but `u32::MAX`).
    pub fn commit(self, tag: u32) {
        debug_assert_ne!(tag, WRAP);
        let len = self.len as u32;
        // SAFETY: `start` is 16-aligned and the frame is reserved.
        unsafe { self.ring.write_frame(self.start, len, tag) };
        self.ring.head += self.skip + frame_len(self.len) as u64;
        // SYNC POINT: Release publishes the frame (and any wrap frame) to the
        // consumer's Acquire load of `head` in `Consumer::peek`.
        self.ring.header().head.store(self.ring.head, Release);
    }
}

/// The reading end of a ring. At most one `Consumer` may exist per ring at
/// any time, across all processes.
#[derive(Debug)]
pub struct Consumer<'r> {
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    cap: u64,
    tail: u64,
    cached_head: u64,
    /// The frame at `tail` as the last `peek` read and checked it, (pos,
    /// len, tag), until `pop`: its header is read once from the shared
    /// buffer, so a peer that rewrites it meanwhile can neither show a
    /// second `peek` another message nor make `pop` skip another length.
    peeked: Option<(u64, usize, u32)>,
    shadow: Shadow,
    _region: PhantomData<&'r [u8]>,
}

// SAFETY: as for Producer: single consumer, serialised by `&mut self`.
unsafe impl Send for Consumer<'_> {}

/// A message read in place by [`Consumer::peek`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The producer's tag.
    pub tag: u32,
    /// The payload, 16-byte aligned.
    pub payload: &'a [u8],
}

impl<'r> Consumer<'r> {
    /// Attaches the consuming end.
    ///
    /// # Safety
    ///
    /// Same as [`Producer::attach`], for consumers.
    pub unsafe fn attach(hdr: NonNull<RingHeader>, data: NonNull<u8>) -> Self {
        // SAFETY: the caller guarantees `hdr` is valid for reads.
        let cap = unsafe { hdr.as_ref() }.capacity;
        // SAFETY: the caller's contract, and `cap` is the header's own.
        unsafe { Self::attach_with_capacity(hdr, data, cap) }
    }

    /// See [`Producer::attach_with_capacity`].
    ///
    /// # Safety
    ///
    /// As for [`Self::attach`], with `cap` the size of `data`.
    pub(crate) unsafe fn attach_with_capacity(
        hdr: NonNull<RingHeader>,
        data: NonNull<u8>,
        cap: u64,
    ) -> Self {
        // SAFETY: the caller guarantees `hdr` is valid for reads.
        let h = unsafe { hdr.as_ref() };
        Self {
            hdr,
            data,
            cap,
            // Frame-aligned, as for the producer's `head`: `frame_at`
            // reads frame headers at `tail`.
            tail: h.tail.load(Relaxed) & FRAME_MASK,
            cached_head: h.head.load(Acquire),
            peeked: None,
            shadow: Shadow::default(),
            _region: PhantomData,
        }
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: valid for 'r per `attach`'s contract.
        unsafe { self.hdr.as_ref() }
    }

    /// Bytes this consumer has consumed so far (its private count; see
    /// [`RingHeader::published`]).
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// True if a message is ready (cheap: one Acquire load when empty).
    #[inline]
    pub fn has_message(&mut self) -> bool {
        if self.cached_head != self.tail {
            return true;
        }
        // SYNC POINT: pairs with the Release store in `Grant::commit`.
        self.cached_head = self.header().head.load(Acquire);
        self.cached_head != self.tail
    }

    /// The next message, read in place, or `None` if the ring is empty.
    /// The message stays in the ring until [`Self::pop`]; until then, every
    /// `peek` returns it, with the tag and length read the first time.
    pub fn peek(&mut self) -> Result<Option<Message<'_>>> {
        let (pos, len, tag) = match self.peeked {
            Some(frame) => frame,
            None => {
                if !self.has_message() {
                    return Ok(None);
                }
                let frame = self.frame()?;
                self.peeked = Some(frame);
                frame
            }
        };
        // SAFETY: `frame` validated that the payload lies inside the buffer
        // and before `head` (here or at an earlier `peek`, and `tail` has
        // not moved since), so the producer published it and will not write
        // it again before we advance `tail`.
        let payload = unsafe { payload(self.data, self.shadow, pos, len) };
        Ok(Some(Message { tag, payload }))
    }

    /// Reads (and skips past a wrap frame to) the next frame: (pos, len, tag).
    fn frame(&mut self) -> Result<(u64, usize, u32)> {
        // The producer's `head` is never more than a buffer ahead of our
        // `tail`; a peer that wrote one further would have us read frames
        // it may be overwriting (or skip wrap frames for a very long time).
        if self.cached_head.wrapping_sub(self.tail) > self.cap {
            return Err(Error::Corrupt(format!(
                "ring head {} is more than the capacity {} ahead of tail {}",
                self.cached_head, self.cap, self.tail
            )));
        }
        // SAFETY: `tail` is 16-aligned (it only ever moves by frames) and
        // there is a message (the callers checked `has_message`): the bytes
        // up to `cached_head` were published by the producer, which writes
        // them again only once we advance `tail` past them.
        unsafe {
            frame_at(
                self.data,
                self.shadow,
                self.cap,
                &mut self.tail,
                self.cached_head,
            )
        }
    }

    /// Releases the message returned by the last `peek` (or, without one,
    /// the next message) to the producer.
    pub fn pop(&mut self) -> Result<()> {
        let (pos, len, _) = match self.peeked.take() {
            Some(frame) => frame,
            None => {
                if !self.has_message() {
                    return Ok(());
                }
                self.frame()?
            }
        };
        // The payload borrowed since `peek` is last read before this point.
        self.shadow.read(pos + FRAME as u64, len);
        self.tail += frame_len(len) as u64;
        // SYNC POINT: Release hands the bytes back to the producer's Acquire
        // load of `tail` in `Producer::reserve`.
        self.header().tail.store(self.tail, Release);
        Ok(())
    }
}

/// A ring in ordinary heap memory: the same protocol for tests and for
/// threads within one process.
#[derive(Debug)]
pub struct HeapRing {
    hdr: Box<RingHeader>,
    data: Box<[std::mem::MaybeUninit<u128>]>,
    #[cfg(loom)]
    shadow: Box<[loom::cell::UnsafeCell<()>]>,
}

impl HeapRing {
    /// A ring of `capacity` bytes (see [`RingHeader::check_capacity`]).
    pub fn new(capacity: usize) -> Result<Self> {
        RingHeader::check_capacity(capacity)?;
        let data = vec![std::mem::MaybeUninit::new(0u128); capacity / 16].into_boxed_slice();
        Ok(Self {
            hdr: Box::new(RingHeader::new(capacity)),
            data,
            #[cfg(loom)]
            shadow: (0..capacity / FRAME)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
        })
    }

    /// Splits into the two ends.
    pub fn split(&mut self) -> (Producer<'_>, Consumer<'_>) {
        let hdr = NonNull::from(&*self.hdr);
        let data =
            NonNull::new(self.data.as_mut_ptr().cast::<u8>()).expect("boxed slice is non-null");
        // SAFETY: both pointers are valid while `self` is mutably borrowed,
        // which the returned lifetimes enforce; exactly one end of each kind.
        let ends = unsafe { (Producer::attach(hdr, data), Consumer::attach(hdr, data)) };
        #[cfg(loom)]
        let ends = {
            let cells = Shadow(NonNull::new(self.shadow.as_mut_ptr()));
            let (mut p, mut c) = ends;
            (p.shadow, c.shadow) = (cells, cells);
            (p, c)
        };
        ends
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| (i.wrapping_mul(31).wrapping_add(j)) as u8)
            .collect()
    }

    #[test]
    fn rejects_bad_capacity() {
        assert!(HeapRing::new(100).is_err());
        assert!(HeapRing::new(128).is_err());
        assert!(HeapRing::new(1024).is_ok());
    }

    #[test]
    fn push_peek_pop_in_order_with_wrap() {
        let mut ring = HeapRing::new(256).unwrap();
        let (mut p, mut c) = ring.split();
        assert_eq!(p.max_message(), 112);
        for i in 0..1000 {
            let len = i % 100;
            assert!(p.try_push(i as u32, &pattern(i, len)), "push {i}");
            let m = c.peek().unwrap().expect("message");
            assert_eq!(m.tag, i as u32);
            assert_eq!(m.payload, &pattern(i, len)[..]);
            assert_eq!(m.payload.as_ptr() as usize % 16, 0);
            c.pop().unwrap();
            assert!(c.peek().unwrap().is_none());
        }
    }

    #[test]
    fn ends_attach_at_frame_boundaries_whatever_the_header_says() {
        let mut ring = HeapRing::new(256).unwrap();
        // A peer's stray writes left both counters off a frame boundary.
        ring.hdr.head.store(7 * 16 + 5, Relaxed);
        ring.hdr.tail.store(7 * 16 + 9, Relaxed);
        let (mut p, mut c) = ring.split();
        assert_eq!((p.head, c.tail), (7 * 16, 7 * 16));
        // The producer sees a tail ahead of its head: a full ring, so it
        // writes nothing; the consumer reads frame headers at aligned
        // offsets only, and reports the head it cannot reach as corrupt.
        assert!(!p.try_push(3, b"x"));
        assert!(c.peek().is_err());
    }

    #[test]
    fn full_ring_refuses_then_accepts() {
        let mut ring = HeapRing::new(256).unwrap();
        let (mut p, mut c) = ring.split();
        let mut pushed = 0;
        while p.try_push(pushed, &[7u8; 40]) {
            pushed += 1;
        }
        assert!(pushed >= 3);
        assert!(!p.try_push(99, &[0u8; 1]));
        c.peek().unwrap().unwrap();
        c.pop().unwrap();
        assert!(p.try_push(99, &[1u8; 40]));
        assert!(p.reserve(113).is_none(), "over max_message");
    }

    #[test]
    fn abandoned_grant_publishes_nothing() {
        let mut ring = HeapRing::new(256).unwrap();
        let (mut p, mut c) = ring.split();
        {
            let mut g = p.reserve(10).unwrap();
            g.payload().fill(1);
        }
        assert!(c.peek().unwrap().is_none());
        assert!(p.try_push(5, b"hello"));
        assert_eq!(c.peek().unwrap().unwrap().payload, b"hello");
    }

    #[test]
    fn corrupt_length_is_an_error_not_ub() {
        let mut ring = HeapRing::new(256).unwrap();
        let data = ring.data.as_mut_ptr().cast::<u32>();
        let (mut p, mut c) = ring.split();
        assert!(p.try_push(1, b"abc"));
        // SAFETY: test-only write of the first frame's length field, standing
        // in for a buggy peer.
        unsafe { data.write(10_000) };
        assert!(matches!(c.peek(), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_frame_rewritten_after_peek_is_released_as_it_was_read() {
        let mut ring = HeapRing::new(256).unwrap();
        let data = ring.data.as_mut_ptr().cast::<u32>();
        let (mut p, mut c) = ring.split();
        assert!(p.try_push(1, &pattern(1, 40)));
        assert!(p.try_push(2, &pattern(2, 20)));
        assert_eq!(c.peek().unwrap().unwrap().tag, 1);
        // SAFETY: test-only writes of the first frame's length and tag (no
        // borrow of the payload is alive), standing in for a buggy peer
        // that rewrites a published frame.
        unsafe {
            data.write(0);
            data.add(1).write(9);
        }
        let m = c.peek().unwrap().unwrap();
        assert_eq!((m.tag, m.payload), (1, &pattern(1, 40)[..]));
        // `pop` skips the 40 bytes that were read, not the 0 written since.
        c.pop().unwrap();
        let m = c.peek().unwrap().unwrap();
        assert_eq!((m.tag, m.payload), (2, &pattern(2, 20)[..]));
        c.pop().unwrap();
        assert!(c.peek().unwrap().is_none());
    }

    #[test]
    fn a_head_too_far_ahead_or_made_up_wraps_are_errors_not_loops() {
        // A head more than a buffer ahead, far ahead, or behind the tail.
        for bad_head in [256 + 16, 1 << 50, u64::MAX] {
            let mut ring = HeapRing::new(256).unwrap();
            let head = &ring.hdr.head.0 as *const AtomicU64;
            let (_p, mut c) = ring.split();
            // SAFETY: test-only store to the producer's position, standing
            // in for a buggy peer; the ring outlives it.
            unsafe { (*head).store(bad_head, Release) };
            assert!(matches!(c.peek(), Err(Error::Corrupt(_))), "{bad_head}");
        }
        // Wrap markers everywhere, head within a buffer: the consumer
        // refuses the wrap at offset 0 instead of going round and round.
        let mut ring = HeapRing::new(256).unwrap();
        let data = ring.data.as_mut_ptr().cast::<u32>();
        let head = &ring.hdr.head.0 as *const AtomicU64;
        let (_p, mut c) = ring.split();
        for frame in 0..256 / FRAME {
            // SAFETY: test-only writes inside the 256-byte buffer.
            unsafe { data.add(frame * FRAME / 4).write(WRAP) };
        }
        // SAFETY: as above.
        unsafe { (*head).store(256, Release) };
        assert!(matches!(c.peek(), Err(Error::Corrupt(_))));
    }

    /// Copies of the unreleased messages.
    fn unreleased(p: &Producer<'_>) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        p.unreleased(|tag, bytes| out.push((tag, bytes.to_vec())))?;
        Ok(out)
    }

    #[test]
    fn unreleased_messages_are_those_not_popped_across_a_wrap() {
        let mut ring = HeapRing::new(256).unwrap();
        let (mut p, mut c) = ring.split();
        // Move the positions near the end so that the next frames wrap.
        for i in 0..3 {
            assert!(p.try_push(i, &pattern(i as usize, 60)));
            c.pop().unwrap();
        }
        assert!(unreleased(&p).unwrap().is_empty());
        for i in 10..13 {
            assert!(p.try_push(i, &pattern(i as usize, 40)), "push {i}");
        }
        // The first is being read (peeked, not popped): still unreleased.
        assert_eq!(c.peek().unwrap().unwrap().tag, 10);
        let all = unreleased(&p).unwrap();
        let tags: Vec<u32> = all.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, [10, 11, 12]);
        for (tag, bytes) in &all {
            assert_eq!(bytes, &pattern(*tag as usize, 40));
        }
        c.pop().unwrap();
        let rest: Vec<u32> = unreleased(&p).unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(rest, [11, 12]);
    }

    #[test]
    fn an_impossible_consumer_position_is_an_error() {
        let mut ring = HeapRing::new(256).unwrap();
        let tail = &ring.hdr.tail.0 as *const AtomicU64;
        let (mut p, _c) = ring.split();
        assert!(p.try_push(1, b"abc"));
        for bad in [5u64, 1 << 40] {
            // SAFETY: test-only store to the consumer's position, standing
            // in for a buggy peer; the ring outlives it.
            unsafe { (*tail).store(bad, Release) };
            assert!(matches!(unreleased(&p), Err(Error::Corrupt(_))), "{bad}");
        }
    }

    #[test]
    fn two_threads_stream() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (mut p, mut c) = ring.split();
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..20_000usize {
                    let m = pattern(i, i % 300);
                    while !p.try_push(i as u32, &m) {
                        std::hint::spin_loop();
                    }
                }
            });
            s.spawn(move || {
                for i in 0..20_000usize {
                    let m = loop {
                        if let Some(m) = c.peek().unwrap() {
                            break (m.tag, m.payload.to_vec());
                        }
                        std::hint::spin_loop();
                    };
                    assert_eq!(m.0, i as u32);
                    assert_eq!(m.1, pattern(i, i % 300));
                    c.pop().unwrap();
                }
            });
        });
    }

    proptest! {
        /// Random interleavings of pushes and pops with sizes from 0 to the
        /// largest inline message: everything arrives intact and in order.
        #[test]
        fn random_sequences_arrive_in_order(
            sizes in proptest::collection::vec(0usize..=496, 1..200),
            pops in proptest::collection::vec(0usize..4, 1..200),
        ) {
            let mut ring = HeapRing::new(1024).unwrap();
            let (mut p, mut c) = ring.split();
            let mut sent = std::collections::VecDeque::new();
            for (i, &len) in sizes.iter().enumerate() {
                let msg = pattern(i, len);
                while !p.try_push(i as u32, &msg) {
                    let m = c.peek().unwrap().expect("full ring must have a message");
                    let (tag, want): (u32, Vec<u8>) = sent.pop_front().unwrap();
                    prop_assert_eq!(m.tag, tag);
                    prop_assert_eq!(m.payload, &want[..]);
                    c.pop().unwrap();
                }
                sent.push_back((i as u32, msg));
                for _ in 0..pops[i % pops.len()] {
                    if let Some(m) = c.peek().unwrap() {
                        let (tag, want) = sent.pop_front().unwrap();
                        prop_assert_eq!(m.tag, tag);
                        prop_assert_eq!(m.payload, &want[..]);
                        c.pop().unwrap();
                    }
                }
            }
            while let Some(m) = c.peek().unwrap() {
                let (tag, want) = sent.pop_front().unwrap();
                prop_assert_eq!(m.tag, tag);
                prop_assert_eq!(m.payload, &want[..]);
                c.pop().unwrap();
            }
            prop_assert!(sent.is_empty());
        }
    }
}

/// Loom model of the ring (run with `RUSTFLAGS="--cfg loom" cargo test -p
/// loky-ipc --release --lib loom`). The buffer is checked through
/// [`Shadow`]: loom fails the model if any read or write of the bytes is not
/// ordered by the `head`/`tail` SYNC POINTs.
#[cfg(all(test, loom))]
pub(crate) mod loom_model {
    use super::*;
    use loom::thread;

    /// Runs `f` with both ends of a fresh ring of `capacity` bytes. The ends
    /// are `'static` so that one can move into `loom::thread::spawn`; `f`
    /// must join every thread it gives an end to. The ring is freed when `f`
    /// returns (leaking it instead would cost one ring per interleaving).
    pub(crate) fn with_ring(capacity: usize, f: impl FnOnce(Producer<'static>, Consumer<'static>)) {
        let ring = Box::into_raw(Box::new(HeapRing::new(capacity).expect("valid capacity")));
        // SAFETY: `ring` stays allocated until after `f` returns, and `f`
        // joins the threads it handed an end to, so no end outlives it. (If
        // `f` panics the ring is leaked, never freed under a live end.)
        let (p, c) = unsafe { (*ring).split() };
        f(p, c);
        // SAFETY: allocated by `Box::into_raw` above; both ends are gone.
        drop(unsafe { Box::from_raw(ring) });
    }

    /// Payload sizes: frames of 96, 80 and 96 bytes in a 256-byte ring, so
    /// the third message does not fit before the end: the producer must wait
    /// for the first to be popped, write a wrap frame and reuse its bytes.
    const LENS: [usize; 3] = [80, 64, 80];

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 101 + j) as u8).collect()
    }

    /// One producer, one consumer, three messages (one wrapping, one
    /// waiting for room): contents and order hold in every interleaving,
    /// and no buffer access races (explored exhaustively).
    #[test]
    fn loom_ring_three_messages_in_order() {
        loom::model(|| {
            with_ring(256, |mut p, mut c| {
                let producer = thread::spawn(move || {
                    for (i, &len) in LENS.iter().enumerate() {
                        while !p.try_push(i as u32, &pattern(i, len)) {
                            thread::yield_now();
                        }
                    }
                });
                for (i, &len) in LENS.iter().enumerate() {
                    loop {
                        if let Some(m) = c.peek().expect("well-formed ring") {
                            assert_eq!(m.tag, i as u32);
                            assert_eq!(m.payload, &pattern(i, len)[..]);
                            break;
                        }
                        thread::yield_now();
                    }
                    c.pop().expect("well-formed ring");
                }
                assert!(c.peek().expect("well-formed ring").is_none());
                producer.join().expect("producer");
            });
        });
    }
}
