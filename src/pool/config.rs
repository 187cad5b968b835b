//! The resolved configuration of a pool.

use std::ffi::OsString;
use std::time::Duration;

/// Everything a pool is built from (see `ProcessPoolExecutorBuilder`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) max_workers: usize,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The initializer message (`TaskHeader` + archived argument).
    pub(crate) initializer: Option<Vec<u8>>,
    pub(crate) ring_capacity: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) hard_memory_limit: Option<u64>,
    pub(crate) pin: crate::topology::Pinning,
    /// How long a waiting thread (caller or worker) spins before sleeping.
    pub(crate) spin: Duration,
    /// Whether a worker gets its next task while it runs one.
    pub(crate) prefetch: bool,
    /// How long idle workers, and the parent's large-message buffers, keep
    /// freed memory for reuse.
    pub(crate) keep_freed: Duration,
    /// Most bytes the shared arena may hold (default: see
    /// `arena_limit::default_arena_limit`).
    pub(crate) arena_limit: Option<usize>,
}
