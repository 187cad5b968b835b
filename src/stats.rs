//! Counters of a pool's activity.

/// A snapshot of a pool's activity, from
/// [`ProcessPoolExecutor::stats`](crate::ProcessPoolExecutor::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Worker processes currently alive.
    pub workers_alive: usize,
    /// Tasks waiting in the parent for a free worker.
    pub queued: usize,
    /// Tasks handed to workers and not finished.
    pub running: usize,
    /// Tasks submitted so far (a `map` chunk counts as one).
    pub submitted: u64,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks that failed in the worker (panic, codec error).
    pub failed: u64,
    /// Tasks cancelled before they ran: by [`Future::cancel`], by
    /// [`Future::kill`] while they waited (in the parent, or in a worker's
    /// ring, not started yet), or by a shutdown with
    /// `cancel_futures`.
    ///
    /// [`Future::cancel`]: crate::Future::cancel
    /// [`Future::kill`]: crate::Future::kill
    pub cancelled: u64,
    /// Workers that died unexpectedly (crash, signal, exit).
    pub crashed: u64,
    /// Workers started to replace one that died or retired.
    pub respawned: u64,
    /// Tasks run again elsewhere: a worker that died had not started them
    /// (they waited behind its running task, typically; see
    /// [`Error::TerminatedWorker`](crate::Error::TerminatedWorker)). Each
    /// is counted once per time it was put back; it then ends like any
    /// other task.
    pub rerun: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) crashed: u64,
    pub(crate) respawned: u64,
    pub(crate) rerun: u64,
}
