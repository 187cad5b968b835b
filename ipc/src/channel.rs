//! A one-way channel of arbitrarily large messages: a [`crate::ring`] for
//! messages that fit, a [`Segment`] per larger message, its descriptor passed
//! over a Unix socket ([`crate::fdpass`]).
//!
//! The ring frame of a large message has the [`SPILL`] bit set in its tag
//! and carries the payload length (`u64`); the descriptor is sent before the
//! frame is published, so the receiver finds it queued.

use std::os::fd::{AsFd, OwnedFd};

use crate::ring::{Consumer, Producer};
use crate::{fdpass, Error, Result, Segment};

/// Tag bit marking a frame that announces a segment. User tags must be
/// below it.
pub const SPILL: u32 = 1 << 31;

/// The sending end.
#[derive(Debug)]
pub struct Sender<'r> {
    ring: Producer<'r>,
    socket: OwnedFd,
}

impl<'r> Sender<'r> {
    /// Wraps the producing end of a ring and this side's socket.
    pub fn new(ring: Producer<'r>, socket: OwnedFd) -> Self {
        Self { ring, socket }
    }

    /// The largest payload that travels inline in the ring.
    pub fn max_inline(&self) -> usize {
        self.ring.max_message()
    }

    /// Sends a message of `len` bytes written by `fill`. Returns `Ok(false)`
    /// (and does not call `fill`) when the ring is full; `tag < SPILL`.
    pub fn send_with(
        &mut self,
        tag: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool> {
        if tag >= SPILL {
            return Err(Error::Config(format!(
                "tag {tag:#x} uses the reserved SPILL bit"
            )));
        }
        if len <= self.ring.max_message() {
            return Ok(match self.ring.reserve(len) {
                Some(mut grant) => {
                    fill(grant.payload());
                    grant.commit(tag);
                    true
                }
                None => false,
            });
        }
        let Some(mut grant) = self.ring.reserve(8) else {
            return Ok(false);
        };
        let mut segment = Segment::create(len)?;
        fill(segment.as_mut_slice());
        fdpass::send_fd(self.socket.as_fd(), segment.fd())?;
        grant.payload().copy_from_slice(&(len as u64).to_le_bytes());
        grant.commit(tag | SPILL);
        Ok(true)
    }

    /// Sends a copy of `payload`; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, tag: u32, payload: &[u8]) -> Result<bool> {
        self.send_with(tag, payload.len(), |buf| buf.copy_from_slice(payload))
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver<'r> {
    ring: Consumer<'r>,
    socket: OwnedFd,
    segment: Option<(u32, Segment)>,
}

/// A message borrowed from a [`Receiver`] until [`Receiver::pop`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The sender's tag.
    pub tag: u32,
    /// The payload, at least 16-byte aligned.
    pub bytes: &'a [u8],
}

impl<'r> Receiver<'r> {
    /// Wraps the consuming end of a ring and this side's socket.
    pub fn new(ring: Consumer<'r>, socket: OwnedFd) -> Self {
        Self {
            ring,
            socket,
            segment: None,
        }
    }

    /// True if a message is waiting (cheap).
    #[inline]
    pub fn has_message(&mut self) -> bool {
        self.segment.is_some() || self.ring.has_message()
    }

    /// The next message, in place; `None` if none is waiting.
    pub fn peek(&mut self) -> Result<Option<Incoming<'_>>> {
        if self.segment.is_none() {
            // Two steps because returning the first borrow conditionally is
            // beyond the borrow checker; the second `peek` is a cached read.
            let spill = match self.ring.peek()? {
                None => return Ok(None),
                Some(m) if m.tag & SPILL == 0 => None,
                Some(m) => {
                    let len: [u8; 8] = m
                        .payload
                        .try_into()
                        .map_err(|_| Error::Corrupt("spill frame without a length".into()))?;
                    Some((m.tag & !SPILL, u64::from_le_bytes(len) as usize))
                }
            };
            let Some((tag, len)) = spill else {
                let m = self
                    .ring
                    .peek()?
                    .ok_or_else(|| Error::Corrupt("message vanished".into()))?;
                return Ok(Some(Incoming {
                    tag: m.tag,
                    bytes: m.payload,
                }));
            };
            let fd = fdpass::recv_fd(self.socket.as_fd())?;
            let segment = Segment::open_len(fd, len)?;
            self.ring.pop()?;
            self.segment = Some((tag, segment));
        }
        Ok(self.segment.as_ref().map(|(tag, s)| Incoming {
            tag: *tag,
            bytes: s.as_slice(),
        }))
    }

    /// Releases the message returned by the last [`Self::peek`].
    pub fn pop(&mut self) -> Result<()> {
        if self.segment.take().is_some() {
            return Ok(());
        }
        self.ring.pop()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapRing;
    use proptest::prelude::*;

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i ^ j.wrapping_mul(7)) as u8).collect()
    }

    proptest! {
        /// Sizes from 0 to several times the ring's capacity arrive intact
        /// and in order, the large ones through segments.
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

    #[test]
    fn reserved_tag_is_refused() {
        let mut ring = HeapRing::new(1024).unwrap();
        let (p, _c) = ring.split();
        let (a, _b) = fdpass::socket_pair().unwrap();
        let mut tx = Sender::new(p, a);
        assert!(tx.try_send(SPILL, b"x").is_err());
    }
}
