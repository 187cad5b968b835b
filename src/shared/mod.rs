//! Shared arrays: plain data in a pool's shared arena that tasks read and
//! write in place, sent as handles instead of bytes.
//!
//! * [`SharedVec<T>`] owns an array in the arena (`T: bytemuck::Pod`).
//! * [`SharedSlice<T>`] (read) and [`SharedSliceMut<T>`] (write) are handles
//!   to ranges of it that tasks take as arguments.
//! * [`ProcessPoolExecutor::map_shared`] applies a function to every element
//!   of a `SharedVec` into a new one, in chunks across the workers
//!   ([`map_shared_with`](ProcessPoolExecutor::map_shared_with) with an
//!   argument every call borrows).
//!
//! See the module [`lease`] for the borrow rules and [`wire`] for how a
//! handle crosses into a worker.

mod lease;
mod map;
mod slice;
mod vec;
mod wire;

pub use slice::{SharedSlice, SharedSliceMut};
pub use vec::{SharedChunks, SharedChunksMut, SharedVec};
pub use wire::ArchivedHandle;

/// How much of a pool's shared arena is in use; see
/// [`ProcessPoolExecutor::shared_memory`](crate::ProcessPoolExecutor::shared_memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArenaUsage {
    /// Bytes held by live shared arrays (including padding).
    pub in_use: usize,
    /// The most the arena may hold
    /// ([`arena_limit`](crate::ProcessPoolExecutorBuilder::arena_limit)).
    pub limit: usize,
}
pub(crate) use wire::{
    begin_task, encoding_for, has_pins, new_grant_key, receiving, receiving_argument, set_worker,
    take_pins, task_finished, unsend, GrantKey, Pins,
};
