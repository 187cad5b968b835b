//! A one-way channel of arbitrarily large messages: a [`crate::ring`] for
//! messages that fit, a reusable [`crate::spill`] buffer for larger ones,
//! its descriptor passed over a Unix socket ([`crate::fdpass`]) the first
//! time the receiver needs it.
//!
//! The ring frame of a large message has the [`SPILL`] bit set in its tag
//! and carries a `SpillFrame`: the payload length, the buffer's id, and
//! the slot of the receiver's cache of mapped buffers it lives in. When the
//! frame says a descriptor follows, the descriptor was sent before the frame
//! was published, so the receiver finds it queued. The sender mirrors the
//! receiver's cache (the receiver applies the frames in the order they were
//! sent), so it knows when a descriptor must travel again. Protocol:
//! `ring.md`, "Large messages".

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::ring::{Consumer, Grant, Producer};
use crate::spill::{self, Buffer, InFlight, Mapped, SpilledMessage};
use crate::{fdpass, Error, Result};

/// Tag bit marking a frame that announces a spill buffer. User tags must be
/// below it.
pub const SPILL: u32 = 1 << 31;

/// Spill buffers a receiver keeps mapped (per channel).
pub const RECEIVER_CACHE: usize = spill::MAX_POOLED;

/// The frame's `slot` for a buffer the receiver must not keep.
const UNCACHED: u32 = u32::MAX;
/// Frame flag: a descriptor for this buffer was sent before the frame.
const FD_FOLLOWS: u32 = 1;
/// Frame flag: the buffer is a donated block ([`Buffer::donated`]), which
/// the receiver may keep (only with [`FD_FOLLOWS`], uncached).
const DONATED: u32 = 2;
const FRAME_LEN: usize = 32;

/// The payload of a [`SPILL`] frame (little-endian, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpillFrame {
    /// Payload length.
    len: u64,
    /// The buffer's id (checked against the receiver's cache).
    id: u64,
    /// Slot in the receiver's cache, or [`UNCACHED`].
    slot: u32,
    /// [`FD_FOLLOWS`] or 0.
    flags: u32,
    /// The sender's lease of the buffer this message went out in (only the
    /// sender reads it: it takes back exactly that lease from a receiver
    /// that died, never a later one of the same buffer).
    lease: u64,
}

impl SpillFrame {
    fn write(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..20].copy_from_slice(&self.slot.to_le_bytes());
        out[20..24].copy_from_slice(&self.flags.to_le_bytes());
        out[24..32].copy_from_slice(&self.lease.to_le_bytes());
    }

    fn read(bytes: &[u8]) -> Result<Self> {
        let word = |at: usize, n: usize| -> Result<u64> {
            let b = bytes
                .get(at..at + n)
                .ok_or_else(|| Error::Corrupt("short spill frame".into()))?;
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(b);
            Ok(u64::from_le_bytes(v))
        };
        if bytes.len() != FRAME_LEN {
            return Err(Error::Corrupt(format!(
                "spill frame of {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            len: word(0, 8)?,
            id: word(8, 8)?,
            slot: word(16, 4)? as u32,
            flags: word(20, 4)? as u32,
            lease: word(24, 8)?,
        })
    }
}

/// The sender's side of the spill protocol: its mirror of the receiver's
/// cache and the buffers it handed over.
#[derive(Debug)]
struct Spills {
    /// Buffer id in each slot of the receiver's cache (0: empty) and when
    /// it was last used (for least-recently-used replacement).
    remote: [(u64, u64); RECEIVER_CACHE],
    clock: u64,
    /// Handed over, not seen freed yet.
    in_flight: Vec<Handed>,
    /// Donated buffers are not kept once announced ([`Sender::forgetting_donated`]).
    forget_donated: bool,
}

/// A spill buffer handed over, with the tag and length of its message (to
/// give the message back if the receiver dies holding it).
#[derive(Debug)]
struct Handed {
    buf: InFlight,
    tag: u32,
    len: u64,
}

impl Spills {
    fn new() -> Self {
        Self {
            remote: [(0, 0); RECEIVER_CACHE],
            clock: 0,
            in_flight: Vec::new(),
            forget_donated: false,
        }
    }

    /// Drops the handed-over buffers the receiver marked free.
    fn collect(&mut self) {
        self.in_flight.retain(|h| !h.buf.is_free());
    }

    /// Announces `buf`'s first `len` bytes in `grant` (a reserved frame of
    /// `FRAME_LEN`), sending its descriptor first if the receiver lacks it.
    fn publish(
        &mut self,
        socket: &OwnedFd,
        mut grant: Grant<'_, '_>,
        buf: &Buffer,
        len: usize,
        tag: u32,
    ) -> Result<()> {
        self.collect();
        self.clock += 1;
        let (slot, fd) = if !buf.pooled() {
            (UNCACHED, true)
        } else if let Some(i) = self.remote.iter().position(|&(id, _)| id == buf.id()) {
            (i as u32, false)
        } else {
            let lru = (0..RECEIVER_CACHE)
                .min_by_key(|&i| self.remote[i].1)
                .unwrap_or(0);
            (lru as u32, true)
        };
        if fd {
            fdpass::send_fd(socket.as_fd(), buf.fd())?;
        }
        // Nothing can fail past this point: the mirror changes with the
        // frame the receiver will see.
        if slot != UNCACHED {
            self.remote[slot as usize] = (buf.id(), self.clock);
        }
        let handed = buf.hand_over();
        if !(self.forget_donated && buf.is_donated()) {
            self.in_flight.push(Handed {
                buf: handed,
                tag,
                len: len as u64,
            });
        }
        SpillFrame {
            len: len as u64,
            id: buf.id(),
            slot,
            flags: if fd { FD_FOLLOWS } else { 0 } | if buf.is_donated() { DONATED } else { 0 },
            lease: buf.generation(),
        }
        .write(grant.payload());
        grant.commit(tag | SPILL);
        Ok(())
    }
}

/// A message its receiver never released, as [`Sender::take_unreleased`]
/// offers it.
#[derive(Debug)]
pub enum Unreleased<'a> {
    /// It travelled in the ring: its bytes, in place.
    Inline(&'a [u8]),
    /// It travelled in a spill buffer, now the sender's again.
    Spilled(SpilledMessage),
    /// It travelled in a spill buffer that could not be taken back.
    Lost,
}

/// The sending end.
#[derive(Debug)]
pub struct Sender<'r> {
    ring: Producer<'r>,
    socket: OwnedFd,
    spills: Spills,
}

impl<'r> Sender<'r> {
    /// Wraps the producing end of a ring and this side's socket.
    pub fn new(ring: Producer<'r>, socket: OwnedFd) -> Self {
        Self {
            ring,
            socket,
            spills: Spills::new(),
        }
    }

    /// Lets go of a donated buffer ([`Buffer::donated`]) as soon as its
    /// message is announced, instead of when the receiver is done with it:
    /// its memory is the receiver's from then on (the descriptor in the
    /// socket keeps it alive until the receiver maps it), and this side
    /// keeps no view of it. For a sender that never takes its messages
    /// back ([`Sender::take_unreleased`] finds none of those).
    pub fn forgetting_donated(mut self) -> Self {
        self.spills.forget_donated = true;
        self
    }

    /// The largest payload that travels inline in the ring.
    pub fn max_inline(&self) -> usize {
        self.ring.max_message()
    }

    fn check_tag(tag: u32) -> Result<()> {
        if tag >= SPILL {
            return Err(Error::Config(format!(
                "tag {tag:#x} uses the reserved SPILL bit"
            )));
        }
        Ok(())
    }

    /// Lets go of the spill buffers the receiver is done with that are not
    /// pooled: their memory and mapping. Sending does it too; call this now
    /// and then on a sender that may stay idle after a large message.
    pub fn collect(&mut self) {
        self.spills.collect();
    }

    /// Sends a message of `len` bytes written by `fill`. Returns `Ok(false)`
    /// (and does not call `fill`) when the ring is full; `tag < SPILL`.
    pub fn send_with(
        &mut self,
        tag: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool> {
        Self::check_tag(tag)?;
        if len <= self.ring.max_message() {
            if !self.spills.in_flight.is_empty() {
                // Lets go of one-off buffers (and their mappings) soon; a
                // large message does it in `Spills::publish`.
                self.spills.collect();
            }
            return Ok(match self.ring.reserve(len) {
                Some(mut grant) => {
                    fill(grant.payload());
                    grant.commit(tag);
                    true
                }
                None => false,
            });
        }
        let Some(grant) = self.ring.reserve(FRAME_LEN) else {
            return Ok(false);
        };
        send_spilled(&mut self.spills, &self.socket, grant, tag, len, fill)
    }

    /// Sends a copy of `payload`; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, tag: u32, payload: &[u8]) -> Result<bool> {
        if payload.len() > self.ring.max_message() {
            Self::check_tag(tag)?;
            let Some(grant) = self.ring.reserve(FRAME_LEN) else {
                return Ok(false);
            };
            let (spills, socket) = (&mut self.spills, &self.socket);
            return send_spilled(spills, socket, grant, tag, payload.len(), |buf| {
                crate::bulk::copy_init(buf, payload)
            });
        }
        self.send_with(tag, payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Calls `visit` with the tag of each message the receiver has not
    /// released, oldest first, and the message: its bytes in the ring, or
    /// the spill buffer it travelled in, taken back (leased to this side
    /// again, so it can be sent elsewhere without a copy, or dropped to
    /// return it to the pool). Meant for a receiver that died: see
    /// [`Producer::unreleased`]. A message counts until the receiver pops
    /// it: a spilled one that it peeked (which takes its frame off the ring)
    /// and never released comes first.
    ///
    /// A spilled message is [`Unreleased::Lost`] when its buffer cannot be
    /// taken back: the receiver marked it free (so it may hold other bytes
    /// by now: the frame names the lease it was sent in, and only that one
    /// is taken back), or receivers cannot map spill buffers read-only here
    /// ([`spill::guardable`]), so the dead process may have written to it.
    /// The caller must have made its receivers [`Receiver::guarded`].
    ///
    /// # Safety
    ///
    /// The receiver must not be peeking, and must never peek again: the
    /// receiving process is gone (or every thread of it that could use the
    /// [`Receiver`] has exited), or its `Receiver` was dropped or is never
    /// used again. A live receiver may have just taken a
    /// spill frame off the ring and be reading its buffer (the `&[u8]` of
    /// [`Receiver::peek`]) while this call leases that buffer out again to
    /// be written: a data race on the message's bytes.
    pub unsafe fn take_unreleased(
        &mut self,
        mut visit: impl FnMut(u32, Unreleased<'_>),
    ) -> Result<()> {
        let (ring, spills) = (&self.ring, &mut self.spills);
        let protected = spill::guardable();
        // The buffers whose frames are still in the ring. A handed-over
        // buffer that is not among them and not freed holds the message the
        // receiver peeked last and never released (it releases each before
        // it peeks the next), unless it is an old lease of a buffer leased
        // again since (elsewhere: `take_back` then refuses it).
        let mut framed = Vec::new();
        ring.unreleased(|tag, bytes| {
            if tag & SPILL != 0 {
                if let Ok(f) = SpillFrame::read(bytes) {
                    framed.push((f.id, f.lease));
                }
            }
        })?;
        // (Where a dead receiver may have written to them, they stay for
        // the sender's drop to abandon, as the ring's do.)
        let (peeked, rest) = std::mem::take(&mut spills.in_flight)
            .into_iter()
            .partition::<Vec<_>, _>(|h| {
                protected && !h.buf.is_free() && !framed.contains(&(h.buf.id(), h.buf.lease()))
            });
        spills.in_flight = rest;
        for h in peeked {
            // SAFETY: the receiver is not reading the buffer and never will
            // (this function's contract).
            let taken = unsafe { h.buf.take_back() }
                .and_then(|buffer| SpilledMessage::new(buffer, usize::try_from(h.len).ok()?).ok());
            visit(h.tag, taken.map_or(Unreleased::Lost, Unreleased::Spilled));
        }
        ring.unreleased(|tag, bytes| {
            if tag & SPILL == 0 {
                visit(tag, Unreleased::Inline(bytes));
                return;
            }
            let taken = SpillFrame::read(bytes)
                .ok()
                .filter(|_| protected)
                .and_then(|f| {
                    let i = spills
                        .in_flight
                        .iter()
                        .position(|h| h.buf.id() == f.id && h.buf.lease() == f.lease)?;
                    // SAFETY: the receiver is not peeking and never peeks
                    // again (this function's contract), so it is not
                    // reading the buffer and never will.
                    let buffer = unsafe { spills.in_flight.swap_remove(i).buf.take_back() }?;
                    SpilledMessage::new(buffer, usize::try_from(f.len).ok()?).ok()
                });
            visit(
                tag & !SPILL,
                taken.map_or(Unreleased::Lost, Unreleased::Spilled),
            );
        })
    }

    /// Sends a message already written in a spill buffer: the buffer itself
    /// when the message is too large for the ring, a copy in the ring
    /// otherwise; `Ok(false)` when the ring is full. The caller keeps the
    /// message: to send again later, or to drop once sent (the receiver
    /// has the buffer then; dropping our lease returns it to the pool once
    /// the receiver is done with it), or to send elsewhere after an error.
    pub fn try_send_spilled(&mut self, tag: u32, message: &SpilledMessage) -> Result<bool> {
        let len = message.len();
        if len <= self.ring.max_message() {
            return self.send_with(tag, len, |buf| buf.copy_from_slice(message.bytes()));
        }
        Self::check_tag(tag)?;
        let Some(grant) = self.ring.reserve(FRAME_LEN) else {
            return Ok(false);
        };
        self.spills
            .publish(&self.socket, grant, message.buffer(), len, tag)?;
        Ok(true)
    }
}

/// Sends a large message in a leased spill buffer that `fill` writes,
/// announced in `grant` (a reserved frame of `FRAME_LEN`).
fn send_spilled(
    spills: &mut Spills,
    socket: &OwnedFd,
    grant: Grant<'_, '_>,
    tag: u32,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<bool> {
    let mut buf = Buffer::lease(len)?;
    fill(&mut buf.as_mut_slice()[..len]);
    spills.publish(socket, grant, &buf, len, tag)?;
    Ok(true)
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        // A receiver that never marks a buffer free again (it died) must not
        // keep it out of use forever.
        for h in self.spills.in_flight.drain(..) {
            h.buf.abandon();
        }
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver<'r> {
    ring: Consumer<'r>,
    socket: OwnedFd,
    cache: [Option<Mapped>; RECEIVER_CACHE],
    current: Option<Current>,
    /// Maps the spill buffers it receives read-only ([`Self::guarded`]).
    guard: bool,
}

/// A large message taken off the ring and not released yet.
#[derive(Debug)]
struct Current {
    tag: u32,
    len: usize,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Cached(usize),
    Uncached(Mapped),
}

/// A message borrowed from a [`Receiver`] until [`Receiver::pop`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The sender's tag.
    pub tag: u32,
    /// The payload, at least 16-byte aligned.
    pub bytes: &'a [u8],
    /// For a message sent in a donated block ([`Buffer::donated`]), the
    /// block's file, which the receiver may map for itself
    /// ([`crate::shm_alloc::adopt`]) to keep the value without a copy.
    pub donated: Option<Donated<'a>>,
}

/// The block a message was sent in, given away by its sender
/// ([`Incoming::donated`]).
#[derive(Debug, Clone, Copy)]
pub struct Donated<'a> {
    /// The block's file.
    pub fd: BorrowedFd<'a>,
    /// Its size ([`crate::shm_alloc::Segment::len`]): the message's payload
    /// starts [`crate::spill::HEADER_LEN`] bytes in.
    pub len: usize,
}

impl<'r> Receiver<'r> {
    /// Wraps the consuming end of a ring and this side's socket.
    pub fn new(ring: Consumer<'r>, socket: OwnedFd) -> Self {
        Self {
            ring,
            socket,
            cache: std::array::from_fn(|_| None),
            current: None,
            guard: false,
        }
    }

    /// Maps the spill buffers it receives read-only, where
    /// [`spill::guardable`], making their header page writable only for the
    /// store that marks a buffer free: a stray write of this process then
    /// faults instead of changing a message, or freeing a buffer it has yet
    /// to read. For a receiver whose sender may take its messages back
    /// should it die ([`Sender::take_unreleased`]); it costs two
    /// `mprotect` calls per large message.
    pub fn guarded(mut self) -> Self {
        self.guard = true;
        self
    }

    /// True if a message is waiting (cheap).
    #[inline]
    pub fn has_message(&mut self) -> bool {
        self.current.is_some() || self.ring.has_message()
    }

    /// Bytes of its ring consumed so far (see [`Consumer::position`]).
    pub fn position(&self) -> u64 {
        self.ring.position()
    }

    /// Maps (or finds) the buffer a frame announces.
    fn attach(&mut self, frame: SpillFrame) -> Result<Place> {
        let len = usize::try_from(frame.len)
            .map_err(|_| Error::Corrupt("spill length out of range".into()))?;
        let place = if frame.flags & FD_FOLLOWS != 0 {
            let fd = fdpass::recv_fd(self.socket.as_fd())?;
            let donated = frame.flags & DONATED != 0;
            if donated && frame.slot != UNCACHED {
                return Err(Error::Corrupt("a donated buffer in a cache slot".into()));
            }
            let mapped = Mapped::open(fd, frame.id, self.guard, donated)?;
            match frame.slot {
                UNCACHED => Place::Uncached(mapped),
                s if (s as usize) < RECEIVER_CACHE => {
                    // Replaces (unmaps) what the sender evicted from this
                    // slot; no message of ours still points there (they
                    // are read and released in order).
                    self.cache[s as usize] = Some(mapped);
                    Place::Cached(s as usize)
                }
                s => return Err(Error::Corrupt(format!("spill cache slot {s}"))),
            }
        } else {
            let s = frame.slot as usize;
            match self.cache.get(s).and_then(Option::as_ref) {
                Some(m) if m.id() == frame.id => Place::Cached(s),
                _ => {
                    return Err(Error::Corrupt(format!(
                        "spill buffer {} is not in cache slot {s}",
                        frame.id
                    )))
                }
            }
        };
        if len > self.mapped(&place).capacity() {
            return Err(Error::Corrupt(format!(
                "spill of {len} bytes in a buffer of {}",
                self.mapped(&place).capacity()
            )));
        }
        Ok(place)
    }

    fn mapped<'a>(&'a self, place: &'a Place) -> &'a Mapped {
        match place {
            Place::Uncached(m) => m,
            Place::Cached(s) => match &self.cache[*s] {
                Some(m) => m,
                // `attach` only returns slots it has checked or filled.
                None => unreachable!("cached spill slot {s} is empty"),
            },
        }
    }

    /// The next message, in place; `None` if none is waiting.
    pub fn peek(&mut self) -> Result<Option<Incoming<'_>>> {
        if self.current.is_none() {
            // Two steps because returning the first borrow conditionally is
            // beyond the borrow checker; the second `peek` returns the frame
            // the first one read (`Consumer::peek` reads a frame's tag and
            // length once), so it is the same message.
            let spill = match self.ring.peek()? {
                None => return Ok(None),
                Some(m) if m.tag & SPILL == 0 => None,
                Some(m) => Some((m.tag & !SPILL, SpillFrame::read(m.payload)?)),
            };
            let Some((tag, frame)) = spill else {
                let m = self
                    .ring
                    .peek()?
                    .ok_or_else(|| Error::Corrupt("message vanished".into()))?;
                return Ok(Some(Incoming {
                    tag: m.tag,
                    bytes: m.payload,
                    donated: None,
                }));
            };
            let place = self.attach(frame)?;
            self.ring.pop()?;
            self.current = Some(Current {
                tag,
                len: frame.len as usize,
                place,
            });
        }
        Ok(self.current.as_ref().map(|c| {
            let mapped = self.mapped(&c.place);
            Incoming {
                tag: c.tag,
                bytes: mapped.bytes(c.len),
                donated: mapped.donated().map(|(fd, len)| Donated { fd, len }),
            }
        }))
    }

    /// Releases the message returned by the last [`Self::peek`].
    pub fn pop(&mut self) -> Result<()> {
        if let Some(c) = self.current.take() {
            self.mapped(&c.place).release();
            return Ok(());
        }
        self.ring.pop()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapRing;
    use crate::test_child::{in_child, no_core_dumps, segfaulted};
    use proptest::prelude::*;

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i ^ j.wrapping_mul(7)) as u8).collect()
    }

    proptest! {
        /// Sizes from 0 to several times the ring's capacity arrive intact
        /// and in order, the large ones through spill buffers.
        #[test]
        fn any_size_arrives_in_order(sizes in proptest::collection::vec(0usize..5000, 1..60)) {
            let mut ring = HeapRing::new(1024).unwrap();
            let (p, c) = ring.split();
            let (a, b) = fdpass::socket_pair().unwrap();
            let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
            let mut queued = std::collections::VecDeque::new();
            for (i, &len) in sizes.iter().enumerate() {
                let msg = pattern(i, len);
                while !tx.try_send(i as u32, &msg).unwrap() {
                    let m = rx.peek().unwrap().expect("full ring has a message");
                    let (tag, want): (u32, Vec<u8>) = queued.pop_front().unwrap();
                    prop_assert_eq!(m.tag, tag);
                    prop_assert_eq!(m.bytes, &want[..]);
                    rx.pop().unwrap();
                }
                queued.push_back((i as u32, msg));
            }
            while let Some(m) = rx.peek().unwrap() {
                let (tag, want) = queued.pop_front().unwrap();
                prop_assert_eq!(m.tag, tag);
                prop_assert_eq!(m.bytes, &want[..]);
                prop_assert_eq!(m.bytes.as_ptr() as usize % 16, 0);
                rx.pop().unwrap();
            }
            prop_assert!(queued.is_empty());
        }
    }

    /// A message's length and a checksum of its bytes (short to print).
    type Digest = (usize, u64);

    fn digest(bytes: &[u8]) -> Digest {
        let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (bytes.len(), fnv)
    }

    /// What `take_unreleased` offers, as (tag, digest of the bytes, whether
    /// it was spilled); no digest for a lost one.
    fn take_back(tx: &mut Sender<'_>) -> Vec<(u32, Option<Digest>, bool)> {
        let mut back = Vec::new();
        // SAFETY: each test calls it only once its receiver (if it made
        // one) is done: that one never peeks again.
        unsafe {
            tx.take_unreleased(|tag, m| {
                back.push(match m {
                    Unreleased::Inline(b) => (tag, Some(digest(b)), false),
                    Unreleased::Spilled(m) => (tag, Some(digest(m.bytes())), true),
                    Unreleased::Lost => (tag, None, true),
                })
            })
        }
        .unwrap();
        back
    }

    #[test]
    fn unreleased_messages_come_back_inline_or_in_their_spill_buffer() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, c) = ring.split();
        let (a, b) = fdpass::socket_pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
        assert!(tx.try_send(1, &pattern(1, 100)).unwrap());
        assert!(tx.try_send(2, &pattern(2, 3000)).unwrap(), "spilled");
        assert!(tx.try_send(3, &pattern(3, 200)).unwrap());
        assert_eq!(rx.peek().unwrap().unwrap().tag, 1);
        rx.pop().unwrap();
        if !spill::guardable() {
            return; // pages over 4 KiB: spilled messages are never taken back
        }
        assert_eq!(
            take_back(&mut tx),
            [
                (2, Some(digest(&pattern(2, 3000))), true),
                (3, Some(digest(&pattern(3, 200))), false)
            ]
        );
        // The spill buffer was the sender's again, and dropping the message
        // gave it back: a second look finds nothing to take back.
        assert_eq!(
            take_back(&mut tx),
            [(2, None, true), (3, Some(digest(&pattern(3, 200))), false)]
        );
    }

    #[test]
    fn a_spilled_message_peeked_and_never_released_comes_back_first() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, c) = ring.split();
        let (a, b) = fdpass::socket_pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
        assert!(tx.try_send(1, &pattern(1, 3000)).unwrap(), "spilled");
        assert!(tx.try_send(2, &pattern(2, 100)).unwrap());
        assert!(tx.try_send(3, &pattern(3, 4000)).unwrap(), "spilled");
        // The receiver looks at the first (its frame leaves the ring) and
        // stops there, as a worker that exits at a held task does.
        assert_eq!(rx.peek().unwrap().unwrap().tag, 1);
        drop(rx);
        if !spill::guardable() {
            return; // pages over 4 KiB: spilled messages are never taken back
        }
        assert_eq!(
            take_back(&mut tx),
            [
                (1, Some(digest(&pattern(1, 3000))), true),
                (2, Some(digest(&pattern(2, 100))), false),
                (3, Some(digest(&pattern(3, 4000))), true),
            ]
        );
    }

    #[test]
    fn a_spill_buffer_its_receiver_marked_free_is_not_taken_back() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, _c) = ring.split();
        let (a, _b) = fdpass::socket_pair().unwrap();
        let mut tx = Sender::new(p, a);
        assert!(tx.try_send(2, &pattern(2, 3000)).unwrap(), "spilled");
        // Its frame is still in the ring, but the buffer reads as free (a
        // stray write of the receiver, say): it may be leased again at any
        // time, so its bytes are not trusted.
        tx.spills.in_flight[0].buf.free_as_receiver();
        assert_eq!(take_back(&mut tx), [(2, None, true)]);
    }

    #[test]
    fn collect_lets_go_of_buffers_the_receiver_is_done_with() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, _c) = ring.split();
        let (a, _b) = fdpass::socket_pair().unwrap();
        let mut tx = Sender::new(p, a);
        assert!(tx.try_send(2, &pattern(2, 3000)).unwrap(), "spilled");
        tx.collect();
        assert_eq!(tx.spills.in_flight.len(), 1, "still being read");
        tx.spills.in_flight[0].buf.free_as_receiver();
        tx.collect();
        assert!(tx.spills.in_flight.is_empty());
    }

    #[test]
    fn a_later_lease_of_the_same_buffer_is_not_taken_for_an_earlier_message() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, _c) = ring.split();
        let (a, _b) = fdpass::socket_pair().unwrap();
        let mut tx = Sender::new(p, a);
        if !spill::guardable() {
            return; // pages over 4 KiB: spilled messages are never taken back
        }
        let len = (3 << 20) + 7;
        assert!(tx.try_send(1, &pattern(1, len)).unwrap(), "spilled");
        // The buffer reads as free before the receiver got to it, so the
        // next message of its size leases it again (unless a test running
        // alongside took it first) and goes out behind the first frame.
        tx.spills.in_flight[0].buf.free_as_receiver();
        assert!(tx.try_send(2, &pattern(2, len)).unwrap(), "spilled");
        // The first frame names the earlier lease: its bytes are gone.
        assert_eq!(
            take_back(&mut tx),
            [(1, None, true), (2, Some(digest(&pattern(2, len))), true)]
        );
    }

    #[test]
    fn a_guarded_receiver_maps_spill_buffers_read_only_but_still_frees_them() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, c) = ring.split();
        let (a, b) = fdpass::socket_pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b).guarded());
        assert!(tx.try_send(2, &pattern(2, 3000)).unwrap(), "spilled");
        let payload = rx.peek().unwrap().unwrap().bytes.as_ptr();
        if !spill::guardable() {
            return; // pages over 4 KiB: the payload stays writable
        }
        no_core_dumps();
        let write = in_child(|| {
            // SAFETY: a write inside the received payload's mapping, in a
            // forked child that is the only process touching it.
            unsafe { payload.cast_mut().write_volatile(0) }
        });
        assert!(segfaulted(write), "a received spill payload: {write:#x}");
        // The header too (its `state` word, 12 bytes in), but for the
        // receiver's own store of FREE when it is done.
        // SAFETY: the header page precedes the payload in the same mapping.
        let state = unsafe { payload.sub(spill::HEADER_LEN).add(12) };
        let write_state = || {
            in_child(|| {
                // SAFETY: a write inside the header page of the mapping, in
                // a forked child that is the only process touching it.
                unsafe { state.cast_mut().write_volatile(0) }
            })
        };
        let before = write_state();
        assert!(segfaulted(before), "a received spill header: {before:#x}");
        assert_eq!(rx.peek().unwrap().unwrap().bytes, &pattern(2, 3000)[..]);
        assert!(!tx.spills.in_flight[0].buf.is_free());
        rx.pop().unwrap();
        assert!(tx.spills.in_flight[0].buf.is_free(), "released");
        let after = write_state();
        assert!(segfaulted(after), "the header after release: {after:#x}");
    }

    /// A message in a donated block of `len` payload bytes (pattern `i`).
    fn donated(i: usize, len: usize) -> SpilledMessage {
        let segment = crate::shm_alloc::Segment::create(len).unwrap();
        let mut buffer = Buffer::donated(segment).unwrap();
        buffer.as_mut_slice()[..len].copy_from_slice(&pattern(i, len));
        SpilledMessage::new(buffer, len).unwrap()
    }

    #[test]
    fn a_donated_block_arrives_with_its_file_and_comes_back_if_unread() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, c) = ring.split();
        let (a, b) = fdpass::socket_pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(p, a), Receiver::new(c, b));
        let m = donated(5, 70_000);
        assert!(m.is_donated() && !m.is_pooled());
        assert!(tx.try_send_spilled(4, &m).unwrap());
        assert!(tx.try_send_spilled(6, &donated(6, 90_000)).unwrap());
        drop(m);
        let got = rx.peek().unwrap().unwrap();
        assert_eq!((got.tag, got.bytes), (4, &pattern(5, 70_000)[..]));
        let d = got.donated.expect("the block's file");
        assert!(d.len >= 70_000 + spill::HEADER_LEN);
        assert_eq!(rustix::fs::fstat(d.fd).unwrap().st_size as usize, d.len);
        rx.pop().unwrap();
        if !spill::guardable() {
            return;
        }
        // The second was never read: it comes back whole.
        assert_eq!(
            take_back(&mut tx),
            [(6, Some(digest(&pattern(6, 90_000))), true)]
        );
    }

    #[test]
    fn a_sender_forgetting_donated_blocks_keeps_none() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, c) = ring.split();
        let (a, b) = fdpass::socket_pair().unwrap();
        let (mut tx, mut rx) = (Sender::new(p, a).forgetting_donated(), Receiver::new(c, b));
        assert!(tx.try_send_spilled(4, &donated(5, 70_000)).unwrap());
        assert!(tx.spills.in_flight.is_empty());
        // The descriptor in the socket kept the block alive for the receiver.
        let got = rx.peek().unwrap().unwrap();
        assert_eq!(got.bytes, &pattern(5, 70_000)[..]);
        rx.pop().unwrap();
        // Ordinary spill buffers are still kept until released.
        assert!(tx.try_send(7, &pattern(7, 3000)).unwrap());
        assert_eq!(tx.spills.in_flight.len(), 1);
    }

    #[test]
    fn reserved_tag_is_refused() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, _c) = ring.split();
        let (a, _b) = fdpass::socket_pair().unwrap();
        let mut tx = Sender::new(p, a);
        assert!(tx.try_send(SPILL, b"x").is_err());
    }
}
