//! Counters of a pool's activity.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a pool's activity, from
/// [`ProcessPoolExecutor::stats`](crate::ProcessPoolExecutor::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Worker processes currently alive.
    pub workers_alive: usize,
    /// Tasks waiting in the parent for a free worker.
    pub queued: usize,
    /// Tasks handed to workers and not finished: running, or waiting in a
    /// worker's ring for the task before them (see
    /// [`prefetch`](crate::ProcessPoolExecutorBuilder::prefetch)).
    pub running: usize,
    /// Tasks submitted so far (a `map` chunk counts as one).
    ///
    /// Every submitted task ends once, and is then counted in exactly one
    /// of `completed`, `failed`, `cancelled` and `aborted`, by the outcome
    /// its future got: once every future has ended (and nothing is
    /// `queued` or `running`), `submitted` is their sum.
    pub submitted: u64,
    /// Tasks that returned a value (a `map` chunk whose items panicked
    /// too: the chunk returns their failures as its value).
    pub completed: u64,
    /// Tasks that failed in the worker or its codec
    /// ([`Error::TaskPanicked`], [`Error::Codec`]).
    ///
    /// [`Error::TaskPanicked`]: crate::Error::TaskPanicked
    /// [`Error::Codec`]: crate::Error::Codec
    pub failed: u64,
    /// Tasks that ended with [`Error::Cancelled`]: by [`Future::cancel`],
    /// by [`Future::kill`] (waiting or running), by a shutdown with
    /// `cancel_futures`, or a dropped map's chunks that had not started.
    ///
    /// [`Error::Cancelled`]: crate::Error::Cancelled
    /// [`Future::cancel`]: crate::Future::cancel
    /// [`Future::kill`]: crate::Future::kill
    pub cancelled: u64,
    /// Tasks that ended with any other error, without a result from a
    /// worker: their worker died ([`Error::TerminatedWorker`]), their time
    /// limit fell ([`Error::TimeLimit`]), the pool shut down
    /// ([`Error::ShutdownExecutor`]: before they ran, or while they ran,
    /// with `kill_workers`), or the pool broke
    /// ([`Error::BrokenProcessPool`]).
    ///
    /// [`Error::TerminatedWorker`]: crate::Error::TerminatedWorker
    /// [`Error::TimeLimit`]: crate::Error::TimeLimit
    /// [`Error::ShutdownExecutor`]: crate::Error::ShutdownExecutor
    /// [`Error::BrokenProcessPool`]: crate::Error::BrokenProcessPool
    pub aborted: u64,
    /// Workers that died unexpectedly (crash, signal, exit). A worker
    /// that retires as the pool told it to (`max_tasks_per_child`,
    /// `memory_limit`, `idle_timeout`, a smaller `resize`, a shutdown) after
    /// answering all its tasks is not one, even when another part of the
    /// program reaped it and its exit status is lost.
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
    pub(crate) crashed: u64,
    pub(crate) respawned: u64,
    pub(crate) rerun: u64,
}

/// How tasks ended, counted where each ends (once: the first finish of a
/// task wins), by its outcome; atomics, so that no pool lock is taken there.
#[derive(Debug, Default)]
pub(crate) struct Ends {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    aborted: AtomicU64,
}

impl Ends {
    /// Counts a task that ended with `outcome`.
    pub(crate) fn count<R>(&self, outcome: &crate::Result<R>) {
        use crate::Error;
        let counter = match outcome {
            Ok(_) => &self.completed,
            Err(Error::TaskPanicked { .. } | Error::Codec { .. }) => &self.failed,
            Err(Error::Cancelled) => &self.cancelled,
            Err(_) => &self.aborted,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// (completed, failed, cancelled, aborted).
    pub(crate) fn read(&self) -> (u64, u64, u64, u64) {
        (
            self.completed.load(Relaxed),
            self.failed.load(Relaxed),
            self.cancelled.load(Relaxed),
            self.aborted.load(Relaxed),
        )
    }
}
