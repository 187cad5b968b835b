//! # loky
//!
//! A robust, reusable process-pool executor with a shared-memory data
//! plane, in the spirit of Python's `loky` and
//! `concurrent.futures.ProcessPoolExecutor`.
//!
//! ```
//! use loky::ProcessPoolExecutor;
//!
//! let ex = ProcessPoolExecutor::builder().max_workers(2).build()?;
//! let pid = ex.submit(|_: ()| std::process::id(), ())?.result()?;
//! assert_ne!(pid, std::process::id()); // it ran in another process
//! # Ok::<(), loky::Error>(())
//! ```
//!
//! Tasks run in worker processes: re-executions of the current binary that
//! are intercepted before `main`, so no init call is needed anywhere (not
//! in `main`, not in tests); by the same token, what `main` sets up (a
//! logger, a `static` it fills, parsed arguments) is not in the workers, see
//! [What a worker has](guide::worker_environment). A task that panics fails its future with
//! [`Error::TaskPanicked`]; a worker that crashes fails the task it was
//! running with [`Error::TerminatedWorker`] and is replaced (the task
//! waiting behind it runs again on another worker; every case is in
//! [Faults and recovery](guide::faults)). Arguments and results travel
//! as validated rkyv archives through per-worker shared-memory rings; serde
//! types and custom codecs work too, see
//! [Sending data to workers](guide::sending_data). Large arrays stay in
//! shared memory: a [`SharedVec`] lives in the pool's arena and tasks take
//! [`SharedSlice`]/[`SharedSliceMut`] handles to it, which cost a few bytes
//! to send whatever their length; an ordinary slice that one task only
//! reads goes by value with one copy, and the task reads it in place
//! ([`submit_slice`](ProcessPoolExecutor::submit_slice)); and with
//! [`SharedMemoryAllocator`] as the global allocator, a large `Vec` of
//! numbers goes by value with no copy at all, as its own memory.
#[cfg(not(target_os = "linux"))]
compile_error!("loky runs on Linux only (memfd, futex, pidfd, /proc)");

mod codec;
mod codec_executor;
mod codecs;
mod donation;
mod error;
mod executor;
mod future;
pub mod guide;
mod map;
mod numeric_vec;
mod pool;
mod progress;
mod protocol;
mod reusable;
#[cfg(feature = "serde")]
mod serde_payload;
mod shared;
mod slice_task;
mod spin_policy;
#[cfg(feature = "serde")]
mod stack_guard;
mod stats;
mod task;
pub mod topology;
mod transport;
mod wait;
mod worker;

/// The bytemuck whose `Pod` bounds [`SharedVec`] elements.
pub use bytemuck;
pub use codec::Payload;
pub use codec_executor::{CodecExecutor, CodecMap, CodecMapUnordered, SubmitError};
pub use codecs::{Codec, Rkyv};
pub use error::{CodecStage, Error, ExitStatus, Result};
pub use executor::{ProcessPoolExecutor, ProcessPoolExecutorBuilder};
pub use future::Future;
/// The indicatif whose `ProgressBar` [`Map::progress_with`] takes, for a
/// bar of your own without a direct dependency (feature `progress`).
#[cfg(feature = "progress")]
pub use indicatif;
#[doc(inline)]
pub use loky_ipc::shm_alloc::SharedMemoryAllocator;
pub use map::{Map, MapUnordered};
pub use reusable::{get_reusable_executor, ReusableExecutorBuilder};
/// The rkyv that loky encodes with, for derives without a direct
/// dependency: `#[rkyv(crate = loky::rkyv)]` (see
/// [Sending data to workers](guide::sending_data)).
pub use rkyv;
pub use rkyv::util::AlignedVec;
#[cfg(feature = "serde")]
pub use serde_payload::{ArchivedSerde, MsgPack, Serde, SerdeResolver};
pub use shared::{
    ArchivedHandle, ArenaUsage, SharedChunks, SharedChunksMut, SharedSlice, SharedSliceMut,
    SharedVec,
};
pub use stats::Stats;
pub use task::{SliceTaskFn, TaskFn};
pub use topology::{cpu_count, cpu_count_physical, cpu_count_report, Pinning};
pub use wait::{as_completed, wait, AsCompleted, ReturnWhen, WaitResult, Waitable};

/// The README's examples, run as doctests (so that they stay true).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
