//! Shared arrays: plain data in a pool's shared arena that tasks read and
//! write in place, sent as handles instead of bytes.
//!
//! * [`SharedVec<T>`] owns an array in the arena (`T: bytemuck::Pod`).
//! * [`SharedSlice<T>`] (read) and [`SharedSliceMut<T>`] (write) are handles
//!   to ranges of it that tasks take as arguments.
//! * [`ProcessPoolExecutor::map_shared`] applies a function to every element
//!   of a `SharedVec` into a new one, in chunks across the workers.
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
pub(crate) use wire::{
    encoding_for, receiving, set_worker, take_pins, task_finished, unsend, Pins,
};
