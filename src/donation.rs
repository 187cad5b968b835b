//! Large `Vec`s of numbers that travel as their own memory.
//!
//! With [`loky::SharedMemoryAllocator`](crate::SharedMemoryAllocator) as
//! the global allocator, a `Vec` of 4 MiB or more lives in a memfd of its
//! own. When such a `Vec` of one of the numeric types of
//! [`crate::numeric_vec`] is a task's whole argument or result, the sender
//! gives its block away ([`donate`]) and writes the rest of the message
//! around the elements, in place: the task's header in the page before
//! them, the archive's root after them. The message goes out in that block
//! as a spill buffer (`loky_ipc::spill::Buffer::donated`), and the
//! receiver maps the same file and takes the elements as its `Vec`
//! ([`adopt`]). Neither side copies them.
//!
//! Everything else about the message is as for any spilled one: a worker
//! that dies before it starts the task gives it back to the pool, whole,
//! to be sent to another worker; a receiver that does not run the
//! allocator (or cannot map the file) copies the elements out instead.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use bytemuck::Pod;
use loky_ipc::shm_alloc;
use loky_ipc::spill::{Buffer, HEADER_LEN};
use loky_ipc::Donated;

use crate::numeric_vec::{native_layout, write_root, VEC_ROOT_ALIGN, VEC_ROOT_LEN};

/// What [`donate`] did with a value.
pub(crate) enum Donation<T> {
    /// Given away: the message (its first bytes are `head`) is in this
    /// buffer, this many bytes long.
    Sent(Buffer, usize),
    /// Not a value that can be given away; here it is back.
    Kept(T),
    /// Given away, then the buffer could not be made: the value is lost.
    Failed(String),
}

/// Gives `value` away as the body of a message whose first bytes are
/// `head`, if it is a `Vec` of numbers in a block of the shared-memory
/// allocator.
pub(crate) fn donate<T: 'static>(value: T, head: &[u8]) -> Donation<T> {
    let mut slot = Some(value);
    macro_rules! each_numeric_vec {
        ($($p:ty),*) => {$(
            if let Some(v) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<$p>>>() {
                return match v.take() {
                    Some(vec) => match donate_vec::<$p>(vec, head) {
                        Donation::Sent(b, n) => Donation::Sent(b, n),
                        Donation::Failed(e) => Donation::Failed(e),
                        Donation::Kept(vec) => {
                            *v = Some(vec);
                            match slot {
                                Some(value) => Donation::Kept(value),
                                None => Donation::Failed("value vanished".into()),
                            }
                        }
                    },
                    None => Donation::Failed("value vanished".into()),
                };
            }
        )*};
    }
    each_numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    match slot {
        Some(value) => Donation::Kept(value),
        None => Donation::Failed("value vanished".into()),
    }
}

fn donate_vec<P: Pod + rkyv::Archive>(vec: Vec<P>, head: &[u8]) -> Donation<Vec<P>> {
    let size = std::mem::size_of::<P>();
    if vec.capacity() * size < shm_alloc::MIN_THRESHOLD
        || head.len() > HEADER_LEN
        || !native_layout::<P>()
        || shm_alloc::installed().is_none()
    {
        return Donation::Kept(vec);
    }
    // In the message (the buffer's payload, which starts HEADER_LEN bytes
    // into the block): the head, the elements at HEADER_LEN (where the
    // block's allocation starts), the root after them.
    let body = vec.len() * size;
    let root_at = (HEADER_LEN + body).next_multiple_of(VEC_ROOT_ALIGN);
    let Some(root) = write_root(HEADER_LEN as isize - root_at as isize, vec.len()) else {
        return Donation::Kept(vec);
    };
    let len = root_at + VEC_ROOT_LEN;
    // SAFETY: `vec` owns the block (the global allocator is the
    // shared-memory one: `installed` above) and is forgotten below, unless
    // the segment goes back first.
    let Some(segment) = (unsafe { shm_alloc::donate(vec.as_ptr().cast()) }) else {
        return Donation::Kept(vec);
    };
    // The message must fit the file (a block made here always has room for
    // the root: the allocator adds `TAIL_ROOM`, and capacities of received
    // ones leave it out), and the file must take its seals.
    if segment.len() - HEADER_LEN < len || !segment.seal() {
        return match shm_alloc::restore(segment) {
            Ok(()) => Donation::Kept(vec),
            Err(segment) => {
                // No room to put it back (many threads racing for the
                // allocator's last entries): the block goes with `segment`.
                std::mem::forget(vec);
                drop(segment);
                Donation::Failed("the shared-memory allocator's table is full".into())
            }
        };
    }
    // The block is the segment's now, and goes with the message.
    std::mem::forget(vec);
    let mut buffer = match Buffer::donated(segment) {
        Ok(b) => b,
        Err(e) => return Donation::Failed(e.to_string()),
    };
    let payload = buffer.as_mut_slice();
    payload[..head.len()].copy_from_slice(head);
    payload[root_at..len].copy_from_slice(&root);
    Donation::Sent(buffer, len)
}

/// The donated block of the message being decoded on this thread.
#[derive(Clone, Copy)]
struct Ticket {
    /// Where the message's payload is mapped (read-only, perhaps).
    payload: *const u8,
    fd: RawFd,
    len: usize,
}

thread_local! {
    static TICKET: Cell<Option<Ticket>> = const { Cell::new(None) };
}

/// Runs `decode` (the decoding of the message whose payload is `payload`)
/// with that message's donated block, if any, on offer to [`adopt`].
pub(crate) fn receiving<R>(
    donated: Option<Donated<'_>>,
    payload: &[u8],
    decode: impl FnOnce() -> R,
) -> R {
    let Some(d) = donated else {
        return decode();
    };
    struct Restore(Option<Ticket>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = TICKET.try_with(|t| t.set(self.0));
        }
    }
    let ticket = Ticket {
        payload: payload.as_ptr(),
        fd: d.fd.as_raw_fd(),
        len: d.len,
    };
    let _restore = Restore(TICKET.with(|t| t.replace(Some(ticket))));
    decode()
}

/// The elements `raw` (of an archived `Vec<P>` being decoded) as a `Vec`
/// that owns their memory, if they are the body of the donated block on
/// offer ([`receiving`]) and this process can keep it; `None`: copy them.
pub(crate) fn adopt<P: Pod>(raw: &[u8]) -> Option<Vec<P>> {
    let ticket = TICKET.try_with(Cell::get).ok().flatten()?;
    let size = std::mem::size_of::<P>();
    // SAFETY: only the address is computed (HEADER_LEN bytes into the
    // payload, which is longer: the elements follow).
    let body = ticket.payload.wrapping_add(HEADER_LEN);
    if raw.as_ptr() != body || size == 0 {
        return None;
    }
    let threshold = shm_alloc::installed()?;
    // Less the tail room: sent on, the Vec needs it for the archive's root.
    let capacity = (ticket
        .len
        .checked_sub(shm_alloc::HEAD_ROOM + shm_alloc::TAIL_ROOM)?)
        / size;
    if capacity * size < threshold || raw.len() / size > capacity {
        return None;
    }
    // Once: a second decode of the same message copies.
    let _ = TICKET.try_with(|t| t.set(None));
    // SAFETY: the descriptor belongs to the message being decoded, which
    // its receiver keeps (and so the descriptor open) until it is popped,
    // after this decode.
    let fd = unsafe { BorrowedFd::borrow_raw(ticket.fd) };
    let data = shm_alloc::adopt(fd, ticket.len)?;
    // SAFETY: `data` is a block of this process's global allocator (the
    // shared-memory one: `adopt` checked), page-aligned, of at least
    // `capacity * size >= threshold` bytes, so it is freed through the
    // table like any segment; it maps the same file as the message, so its
    // first `raw.len()` bytes are the elements, which any bytes make valid
    // `P`s (`Pod`).
    Some(unsafe { Vec::from_raw_parts(data.cast::<P>(), raw.len() / size, capacity) })
}
