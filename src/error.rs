//! The one error type of the crate.

use std::sync::Arc;

pub use loky_ipc::ExitStatus;

/// Everything that can go wrong when running work on a process pool. Each
/// variant says what happened and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The executor was shut down before the task could run, its worker was
    /// killed by `shutdown(kill_workers = true)`, or `submit` was called
    /// after `shutdown`. Build a new executor (or call
    /// `get_reusable_executor`, which replaces a closed one).
    #[error("the executor has been shut down; create a new one or use get_reusable_executor()")]
    ShutdownExecutor,

    /// The pool cannot run tasks any more, typically because workers crashed
    /// repeatedly while starting (a failing initializer). Fix the cause and
    /// create a new executor.
    #[error("the process pool is broken: {cause}")]
    BrokenProcessPool {
        /// Why the pool broke.
        cause: String,
    },

    /// The worker running this task died (abort, segfault, stack overflow,
    /// `exit`, OOM kill, a signal). The pool replaced it; tasks on other
    /// workers were not affected. Look at `status` for the exit code or
    /// signal: [`ExitStatus::Unknown`] if the program reaps child processes
    /// itself (`SIGCHLD` ignored, a `waitpid(-1)`) and took it first (see
    /// [`guide::faults`](crate::guide::faults)).
    ///
    /// A task that was only waiting behind `task` on that worker (or any
    /// task of a worker that died before it started it) never started and
    /// runs again on another worker, up to 4 times (counted in
    /// [`Stats::rerun`](crate::Stats::rerun)); a large argument, one that
    /// travelled in a spill buffer, is sent again from that buffer. It
    /// fails with this error instead when it holds shared arrays, when the
    /// ring capacity is not a whole number of pages, or the pages are not
    /// 4 KiB (the worker cannot then guard its ring and the buffers it
    /// reads against its own stray writes), when its message cannot be read
    /// back (an unreadable ring, a spill buffer that reads as freed), or
    /// after its fourth run again.
    #[error("worker {pid} died with {status} while running task {task}{}", crate::worker::exit_hint_suffix(.status))]
    TerminatedWorker {
        /// The worker's process id.
        pid: u32,
        /// Exit code or terminating signal, or [`ExitStatus::Unknown`].
        status: ExitStatus,
        /// The id of the task the worker was running (or was about to run).
        task: u64,
    },

    /// The task panicked. The worker survived and the pool goes on.
    #[error("task panicked at {location}: {message}")]
    TaskPanicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
        /// A backtrace, if `RUST_BACKTRACE` was set in the worker.
        backtrace: Option<String>,
    },

    /// A wait gave up (`result_timeout`, `exception_timeout`,
    /// `as_completed`): the task goes on; wait again, or stop it with
    /// [`Future::kill`](crate::Future::kill). Never a task's outcome.
    #[error("timed out waiting for the result (the task goes on)")]
    Timeout,

    /// The task's own time limit fell
    /// ([`submit_with_timeout`](crate::ProcessPoolExecutor::submit_with_timeout),
    /// or a map's [`timeout`](crate::Map::timeout)): it was stopped (a
    /// running task by killing its worker, which the pool replaces; a
    /// waiting one never runs). This is its outcome; submit it again with a
    /// longer limit if it needs more time. A map also ends with it once for
    /// the input it did not read after its deadline.
    #[error("the task's time limit fell; it was stopped")]
    TimeLimit,

    /// The task was cancelled: by [`Future::cancel`](crate::Future::cancel)
    /// or a shutdown with `cancel_futures` before it ran, or by
    /// [`Future::kill`](crate::Future::kill) (which stops it even while it
    /// runs).
    #[error("the task was cancelled")]
    Cancelled,

    /// Encoding or decoding an argument or a result failed. The pool is
    /// unaffected; check that both sides use the same types.
    #[error("could not {stage}: {message}")]
    Codec {
        /// Which step failed.
        stage: CodecStage,
        /// The codec's message.
        message: String,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The result was already taken out of this future by an earlier call to
    /// `result`/`result_timeout`.
    #[error("the result of this future was already taken")]
    ResultTaken,

    /// The pool's shared arena has no room for a new [`SharedVec`]: its
    /// limit is reached, its free space is too fragmented, or the system
    /// refused to commit the memory. Drop shared arrays you no longer
    /// need, or raise the limit with
    /// [`arena_limit`](crate::ProcessPoolExecutorBuilder::arena_limit).
    /// Or the system refused to map the arena's address space at all
    /// (`ulimit -v`), and only a smaller `arena_limit` helps; `reason` then
    /// says so.
    ///
    /// [`SharedVec`]: crate::SharedVec
    #[error(
        "shared arena cannot hold {requested} more bytes ({in_use} of {limit} in use{reason}){}",
        arena_full_advice(reason)
    )]
    ArenaFull {
        /// Bytes asked for.
        requested: usize,
        /// Bytes held by live shared arrays.
        in_use: usize,
        /// The arena's limit in bytes.
        limit: usize,
        /// Empty, or more about the cause (with a leading `"; "`): why the
        /// system refused, or how fragmented the free space is.
        reason: String,
    },

    /// A range of a shared array is out of its bounds.
    #[error("{}", out_of_bounds_message(*start, *end, *len))]
    OutOfBounds {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// Length of the array.
        len: usize,
    },

    /// A range of a shared array is in use by a handle that conflicts with
    /// the access asked for: a writable handle ([`SharedSliceMut`]) excludes
    /// every other handle to the same elements, and any handle excludes
    /// `&mut` access to the whole array. Drop the handle, or wait for the
    /// task that holds it to finish.
    ///
    /// A task stopped while it waited in a worker's ring (by
    /// [`Future::kill`](crate::Future::kill), a time limit, or a dropped
    /// map) fails at once but keeps its ranges until that worker has
    /// skipped it, after the task it runs now: until then its elements
    /// stay busy.
    ///
    /// [`SharedSliceMut`]: crate::SharedSliceMut
    #[error("elements {start}..{end} of a shared array are in use by another handle (a SharedSliceMut excludes all other access to its range); drop it or wait for its task")]
    RangeBusy {
        /// Start of the conflicting range.
        start: usize,
        /// End of the conflicting range.
        end: usize,
    },

    /// A shared array handle was sent to a pool other than the one whose
    /// arena holds it. Allocate it with the executor you submit to (pools
    /// do not share arenas), or send the data by value.
    #[error("this shared array belongs to another pool's arena; allocate it with the executor you submit to, or send the data by value")]
    ForeignArena,

    /// An argument is out of its domain (a zero chunk length, lengths that
    /// must match and do not, ...), or a call that cannot be made where it
    /// is made (waiting, from a done-callback, for a future whose callbacks
    /// that thread is running).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An operating-system or shared-memory transport failure (out of
    /// memory for a spill buffer, out of file descriptors, ...). The arena
    /// refusing to commit memory for a shared array, or the system refusing
    /// to map the arena for lack of address space, is [`Error::ArenaFull`]
    /// instead.
    #[error("transport failure: {0}")]
    Ipc(#[source] Arc<loky_ipc::Error>),
}

/// The step of a task's round trip at which a codec failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecStage {
    /// Encoding the argument in the parent.
    EncodeArgument,
    /// Decoding the argument in the worker.
    DecodeArgument,
    /// Encoding the result in the worker.
    EncodeResult,
    /// Decoding the result in the parent.
    DecodeResult,
}

impl std::fmt::Display for CodecStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EncodeArgument => "encode the argument (in the parent)",
            Self::DecodeArgument => "decode the argument (in the worker)",
            Self::EncodeResult => "encode the result (in the worker)",
            Self::DecodeResult => "decode the result (in the parent)",
        })
    }
}

impl From<loky_ipc::Error> for Error {
    fn from(e: loky_ipc::Error) -> Self {
        Self::Ipc(Arc::new(e))
    }
}

/// How an [`Error::ArenaFull`] `reason` starts when the system refused to
/// map the arena: raising the limit would make that worse, so the message
/// does not end by suggesting it.
pub(crate) const MAP_REFUSED: &str = "; the system refused to map";

/// How an [`Error::ArenaFull`] `reason` starts when the array alone is
/// larger than the machine's memory and swap: no limit would help.
pub(crate) const MORE_THAN_MACHINE: &str = "; more than this machine's memory and swap";

/// The text of [`Error::OutOfBounds`]: a reversed range says so.
fn out_of_bounds_message(start: usize, end: usize, len: usize) -> String {
    if start > end {
        format!(
            "range {start}..{end} of a shared array of length {len} starts after its end \
             (a range is start..end with start <= end)"
        )
    } else {
        format!("range {start}..{end} out of bounds for a shared array of length {len}")
    }
}

/// The advice that ends an [`Error::ArenaFull`] message.
fn arena_full_advice(reason: &str) -> &'static str {
    if reason.starts_with(MAP_REFUSED) || reason.starts_with(MORE_THAN_MACHINE) {
        ""
    } else {
        "; drop unused SharedVecs or raise arena_limit"
    }
}

/// Shorthand for `Result<T, loky::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated(status: ExitStatus) -> String {
        Error::TerminatedWorker {
            pid: 7,
            status,
            task: 3,
        }
        .to_string()
    }

    #[test]
    fn a_dead_worker_s_message_explains_what_loky_knows() {
        let lost = terminated(ExitStatus::Unknown);
        assert!(
            lost.contains("exit status unknown") && lost.contains("SIGCHLD"),
            "{lost}"
        );
        let kept = terminated(ExitStatus::Exited(crate::worker::EXIT_KEPT_HANDLE));
        assert!(kept.contains("kept a shared array handle"), "{kept}");
        let held = terminated(ExitStatus::Exited(crate::worker::EXIT_HELD));
        assert!(held.contains("before its next task"), "{held}");
        let killed = terminated(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        });
        assert!(killed.contains("OOM killer"), "{killed}");
        let aborted = terminated(ExitStatus::Signaled {
            signal: 6,
            core_dumped: false,
        });
        assert!(aborted.contains("hard_memory_limit"), "{aborted}");
        let segv = terminated(ExitStatus::Signaled {
            signal: 11,
            core_dumped: true,
        });
        assert!(segv.contains("stack overflow"), "{segv}");
        let plain = terminated(ExitStatus::Exited(3));
        assert_eq!(plain, "worker 7 died with exit code 3 while running task 3");
    }
}
