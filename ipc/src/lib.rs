//! `loky-ipc`: the shared-memory transport under the `loky` process pool.
//!
//! This crate knows nothing about tasks. It owns the pieces two processes need
//! to talk through shared memory without any cross-process lock:
//!
//! * [`region`]: one anonymous `memfd` mapped `MAP_SHARED` by the parent and
//!   every worker, with a versioned `#[repr(C)]` header checked at attach time,
//!   laid out as a table of duplex [`region::Slot`]s (one per worker).
//! * [`ring`]: a single-producer single-consumer byte ring of length-prefixed,
//!   16-byte aligned messages (protocol in `ring.md`).
//! * [`doorbell`]: a futex-backed event count; producers issue a wake only when
//!   no consumer is awake.
//! * [`claim`]: a producer withdrawing a message its consumer has not
//!   started yet, or learning that it has.
//! * [`channel`], [`spill`] and [`fdpass`]: messages larger than a ring
//!   travel in reusable memfd spill buffers whose descriptors are passed over
//!   a Unix socket once per receiver.
//! * [`bulk`]: copies of large messages split across a few threads.
//! * [`pidfd`]: process handles that report a death the moment it happens;
//!   [`lifeline`]: robust-futex words that report it even before the kernel
//!   has torn the process down.
//! * [`spawn`]: a vfork-style `clone` + `execve` (as `posix_spawn` does)
//!   with descriptors placed at fixed numbers and a parent-death signal.
//!
//! Every atomic that lives in shared memory documents its writer, its readers
//! and the `SYNC POINT` that pairs each Release store with its Acquire load.
#![cfg(target_os = "linux")]

pub mod arena;
pub mod bulk;
pub mod channel;
pub mod claim;
pub mod doorbell;
mod error;
pub mod fdpass;
pub mod fork;
pub mod lifeline;
pub mod pidfd;
mod range_set;
pub mod region;
pub mod ring;
pub mod shm_alloc;
pub mod spawn;
pub mod spill;
mod spin;
mod sync;
pub mod sysmem;
#[cfg(all(test, not(loom)))]
mod test_child;

pub use arena::{Arena, ArenaError, ArenaView, Block};
pub use channel::{Donated, Incoming, Receiver, Sender, Unreleased};
pub use claim::{Claim, Hold, Start};
pub use doorbell::Doorbell;
pub use error::{Error, Result};
pub use pidfd::{ExitStatus, PidFd, Reap};
pub use region::{Activity, Region, RegionConfig, Slot};
pub use ring::{Consumer, Message, Producer, RingHeader};
pub use spin::spin_until;
