//! `ProcessPoolExecutor` and its builder.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{with_encoded, Payload};
use crate::error::{CodecStage, Error, Result};
use crate::future::{Cell, Future, TaskCell};
use crate::pool::{init_message, Config, Pool};
use crate::protocol::{
    Failure, TaskHeader, STATUS_DECODE_ARG, STATUS_ENCODE_RESULT, STATUS_OK, STATUS_PANIC,
};
use crate::stats::Stats;
use crate::task::TaskFn;
use crate::transport::{assert_zero_sized, offset_of, run_init, run_task};

/// Default capacity of each ring (one per direction per worker).
const DEFAULT_RING: usize = 1 << 20;
/// Default of [`ProcessPoolExecutorBuilder::keep_freed_memory`].
const DEFAULT_KEEP_FREED: Duration = Duration::from_secs(1);
/// Default time a waiting thread spins before it sleeps.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// A pool of worker processes that run tasks sent through shared memory.
///
/// Workers are re-executions of the current binary, turned into workers
/// before `main` runs: no registration, no init call. A task is a fn item or
/// a closure without captures, plus one argument; both argument and result
/// must be [`Payload`]s.
///
/// ```
/// use loky::ProcessPoolExecutor;
///
/// let ex = ProcessPoolExecutor::builder().max_workers(2).build()?;
/// let fut = ex.submit(|x: u64| x + 1, 41)?;
/// assert_eq!(fut.result()?, 42);
/// let squares: Vec<u64> = ex.map(|x: u64| x * x, 0..10).collect::<Result<_, _>>()?;
/// assert_eq!(squares[9], 81);
/// # Ok::<(), loky::Error>(())
/// ```
///
/// The handle is cheap to clone; the pool shuts down (waiting for submitted
/// work, unless [`shutdown`](Self::shutdown) was called without `wait`)
/// when the last handle is dropped.
///
/// A capturing closure is rejected at compile time:
///
/// ```compile_fail,E0080
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build().unwrap();
/// let offset = 10u64;
/// let _ = ex.submit(move |x: u64| x + offset, 1); // error: the task function captures variables
/// ```
#[derive(Clone)]
pub struct ProcessPoolExecutor {
    pub(crate) handle: Arc<Handle>,
}

/// Shuts the pool down when the last executor handle goes away.
pub(crate) struct Handle {
    pub(crate) pool: Arc<Pool>,
    /// A `shutdown` without `wait` was asked for: the drop does not wait.
    let_go: AtomicBool,
}

impl Handle {
    fn new(pool: Arc<Pool>) -> Self {
        Self {
            pool,
            let_go: AtomicBool::new(false),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.pool.forked() {
            // A fork()ed child: the threads to join are not in this process,
            // and the workers, rings and buffers are the parent's. Nothing
            // of it is touched; the child's copy of the pool is left as is.
            std::mem::forget(self.pool.clone());
            return;
        }
        self.pool
            .shutdown(!self.let_go.load(Ordering::Relaxed), false, false);
        // The process-wide large-message buffers this pool used give their
        // pages back (they are reserved again if another pool needs them).
        loky_ipc::spill::trim(std::time::Duration::ZERO);
    }
}

impl std::fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPoolExecutor")
            .field("max_workers", &self.max_workers())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ProcessPoolExecutor {
    /// A builder with defaults: `max_workers = cpu_count()`.
    pub fn builder() -> ProcessPoolExecutorBuilder {
        ProcessPoolExecutorBuilder::default()
    }

    /// A pool of `max_workers` workers with default settings.
    pub fn new(max_workers: usize) -> Result<Self> {
        Self::builder().max_workers(max_workers).build()
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.handle.pool
    }

    /// The number of worker processes the pool runs (at most).
    pub fn max_workers(&self) -> usize {
        self.pool().max_workers()
    }

    /// True if both handles drive the same pool.
    pub fn same_pool(&self, other: &ProcessPoolExecutor) -> bool {
        Arc::ptr_eq(self.pool(), other.pool())
    }

    pub(crate) fn from_config(config: Config) -> Result<Self> {
        let pool = Pool::start(config)?;
        Ok(Self {
            handle: Arc::new(Handle::new(pool)),
        })
    }

    /// Submits `f(arg)` to run in a worker.
    ///
    /// `f` must be a fn item or a closure without captures (checked at
    /// compile time); send captured state in `arg`. Fails at once with
    /// [`Error::BrokenProcessPool`] if the pool broke,
    /// [`Error::ShutdownExecutor`] after `shutdown`, [`Error::Codec`] if
    /// `arg` cannot be encoded, [`Error::ForeignArena`] if `arg` holds a
    /// shared array of another pool, or [`Error::Ipc`] if its message
    /// cannot be sent (say, no memory for a spill buffer); everything that
    /// happens later is reported through the future.
    pub fn submit<F, A, R>(&self, f: F, arg: A) -> Result<Future<R>>
    where
        F: TaskFn<A, R>,
        A: Payload,
        R: Payload,
    {
        self.submit_until(f, arg, None)
    }

    /// Like [`submit`](Self::submit), with a time limit counted from now: a
    /// task not finished by then fails with [`Error::TimeLimit`]. If it is
    /// running, its worker is killed (and replaced) to stop it; if it is
    /// still waiting (in the parent, or in a worker's ring, not started),
    /// it never runs, and no worker is killed (as for
    /// [`Future::kill`](crate::Future::kill)); nor does a task whose limit
    /// has passed by the time it is handed over (`Duration::ZERO`). A
    /// result that reached the parent before the limit was acted on is
    /// kept: a task that ends right at its limit may succeed. The limit
    /// counts the time the task waits for a worker too: submitting many
    /// more tasks than workers, give each one the time to wait for the
    /// tasks before it, or submit them as workers free up; and with tasks
    /// of very different lengths, see
    /// [`prefetch`](ProcessPoolExecutorBuilder::prefetch).
    ///
    /// ```
    /// use std::time::Duration;
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let slow = ex.submit_with_timeout(|_: ()| -> u8 { loop { std::hint::spin_loop() } }, (), Duration::from_millis(50))?;
    /// assert!(matches!(slow.result(), Err(loky::Error::TimeLimit)));
    /// assert_eq!(ex.submit(|x: u8| x, 7)?.result()?, 7); // the pool healed
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn submit_with_timeout<F, A, R>(&self, f: F, arg: A, timeout: Duration) -> Result<Future<R>>
    where
        F: TaskFn<A, R>,
        A: Payload,
        R: Payload,
    {
        self.submit_until(f, arg, crate::wait::deadline_after(timeout))
    }

    /// [`submit`](Self::submit) with an optional time limit.
    fn submit_until<F, A, R>(
        &self,
        f: F,
        arg: A,
        deadline: Option<std::time::Instant>,
    ) -> Result<Future<R>>
    where
        F: TaskFn<A, R>,
        A: Payload,
        R: Payload,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        self.submit_raw(
            offset_of(run_task::<F, A, R>),
            move |out| arg.encode_top_owned(out),
            decode_result::<R>,
            deadline,
        )
    }

    /// Encodes (with `write`) and dispatches a task with an explicit
    /// trampoline, and its time limit `deadline` if any.
    pub(crate) fn submit_raw<R: Send + 'static>(
        &self,
        trampoline: i64,
        write: impl FnOnce(&mut rkyv::util::AlignedVec) -> std::result::Result<(), String>,
        decode: crate::future::Decoder<R>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Future<R>> {
        let pool = self.pool();
        if pool.forked() {
            return Err(crate::pool::forked_error());
        }
        let id = pool.next_id()?;
        let cell = Arc::new(Cell::new(TaskCell::new(id, Arc::downgrade(pool)), decode));
        let header = TaskHeader {
            task_id: id,
            trampoline,
        };
        // Shared-array handles in the argument pin their leases into the
        // cell before it can reach a worker.
        crate::shared::encoding_for(pool.arena.id(), pool.grant_key, id, || {
            with_encoded(
                bytemuck::bytes_of(&header),
                write,
                CodecStage::EncodeArgument,
                |message| {
                    cell.set_pins(crate::shared::take_pins());
                    let sent = pool.dispatch(cell.clone(), message, deadline);
                    if sent.is_err() {
                        // Not sent after all: the handles are usable again.
                        crate::shared::unsend(cell.take_pins());
                    }
                    sent
                },
            )?
        })?;
        Ok(Future::new(cell))
    }

    /// Shuts the pool down.
    ///
    /// * `wait`: block until every worker has exited (after finishing what
    ///   it was given, unless killed);
    /// * `cancel_futures`: cancel the tasks still waiting in the parent.
    ///   Tasks already handed to a worker are not cancelled, including
    ///   one waiting in its ring behind the running task: if that worker
    ///   dies, such a task is still run again (see
    ///   [`Error::TerminatedWorker`]), since it was given before shutdown;
    /// * `kill_workers`: kill the workers now; their tasks (running or
    ///   waiting in their rings) and the tasks still queued in the parent
    ///   fail with [`Error::ShutdownExecutor`] (queued ones with
    ///   [`Error::Cancelled`] if `cancel_futures`), and none runs again.
    ///
    /// Later `submit`s fail with [`Error::ShutdownExecutor`]. Idempotent.
    ///
    /// `wait` waits for every worker to finish what it holds, an
    /// initializer included: one that never returns holds it for ever
    /// unless `kill_workers`. From a done-callback that runs on one of the
    /// pool's own threads, `wait` is not honoured (that thread would wait
    /// for itself): the call returns at once and the pool closes behind it.
    /// Dropping the last handle to an executor is `shutdown(true, false,
    /// false)`, unless a `shutdown` without `wait` came first: then the drop
    /// does not wait either (the workers finish what they hold behind it,
    /// and end with this process if it exits first).
    ///
    /// ```
    /// use std::time::Duration;
    /// let ex = loky::ProcessPoolExecutor::new(1)?;
    /// let slow = ex.submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 1000)?;
    /// let start = std::time::Instant::now();
    /// ex.shutdown(false, false, false);
    /// drop(ex); // does not wait for the task
    /// assert!(start.elapsed() < Duration::from_millis(500));
    /// slow.result()?; // which still finishes
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn shutdown(&self, wait: bool, cancel_futures: bool, kill_workers: bool) {
        if !wait {
            self.handle.let_go.store(true, Ordering::Relaxed);
        }
        self.pool().shutdown(wait, cancel_futures, kill_workers);
    }

    /// The dispatch state, one line per worker (for diagnosing a stuck pool;
    /// the format is not stable).
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        self.pool().debug_state()
    }

    /// Process ids of the live workers (in slot order).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool().worker_pids()
    }

    /// The pool's shared arena.
    pub(crate) fn arena(&self) -> Result<&Arc<loky_ipc::Arena>> {
        Ok(&self.pool().arena)
    }

    /// How much of the pool's shared arena live
    /// [`SharedVec`](crate::SharedVec)s hold (including arrays whose handles
    /// are still in running tasks), and its limit.
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::new(1)?;
    /// let v = loky::SharedVec::<u64>::zeroed(&ex, 1000)?;
    /// assert!(ex.shared_memory().in_use >= 8000);
    /// drop(v);
    /// assert_eq!(ex.shared_memory().in_use, 0);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn shared_memory(&self) -> crate::ArenaUsage {
        let arena = &self.pool().arena;
        crate::ArenaUsage {
            in_use: arena.in_use(),
            limit: arena.limit(),
        }
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        self.pool().stats()
    }
}

/// Turns a result message into the task's outcome.
pub(crate) fn decode_result<R: Payload>(status: u32, bytes: &[u8]) -> Result<R> {
    decode_with(status, bytes, R::decode)
}

/// Like [`decode_result`] with an explicit decoder for the success case.
pub(crate) fn decode_with<R>(
    status: u32,
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> std::result::Result<R, String>,
) -> Result<R> {
    match status {
        // This runs on whichever thread drains the result (often the
        // manager's): a panicking decoder fails this future, not the pool.
        STATUS_OK => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(bytes)))
            .unwrap_or_else(|panic| Err(crate::codec::panic_message(&*panic)))
            .map_err(|message| Error::Codec {
                stage: CodecStage::DecodeResult,
                message,
            }),
        _ => Err(decode_failure(status, bytes)),
    }
}

pub(crate) fn decode_failure(status: u32, bytes: &[u8]) -> Error {
    let failure = crate::codec::unarchive::<Failure>(bytes).unwrap_or_else(|e| Failure {
        message: format!("(undecodable failure report: {e})"),
        location: String::new(),
        backtrace: None,
    });
    failure_to_error(status, failure)
}

pub(crate) fn failure_to_error(status: u32, f: Failure) -> Error {
    match status {
        STATUS_PANIC => Error::TaskPanicked {
            message: f.message,
            location: f.location,
            backtrace: f.backtrace,
        },
        STATUS_DECODE_ARG => Error::Codec {
            stage: CodecStage::DecodeArgument,
            message: f.message,
        },
        STATUS_ENCODE_RESULT => Error::Codec {
            stage: CodecStage::EncodeResult,
            message: f.message,
        },
        // Only a task the pool stopped is skipped, and it has its outcome
        // by then: this is not reached.
        crate::protocol::STATUS_SKIPPED => Error::Cancelled,
        other => Error::Codec {
            stage: CodecStage::DecodeResult,
            message: format!("unknown status {other}"),
        },
    }
}

/// Configures and builds a [`ProcessPoolExecutor`].
///
/// ```
/// use std::time::Duration;
/// let ex = loky::ProcessPoolExecutor::builder()
///     .max_workers(2)
///     .env("OMP_NUM_THREADS", "1")
///     .initializer(|level: u32| assert!(level > 0), 3)
///     .build()?;
/// assert_eq!(ex.submit(|_: ()| std::env::var("OMP_NUM_THREADS").unwrap(), ())?.result()?, "1");
/// # Ok::<(), loky::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProcessPoolExecutorBuilder {
    max_workers: Option<usize>,
    env: Vec<(OsString, OsString)>,
    initializer: Option<std::result::Result<Vec<u8>, Error>>,
    ring_capacity: Option<usize>,
    idle_timeout: Option<Duration>,
    max_tasks_per_child: Option<u64>,
    memory_limit: Option<u64>,
    hard_memory_limit: Option<u64>,
    pin: crate::topology::Pinning,
    spin: Option<Duration>,
    prefetch: Option<bool>,
    arena_limit: Option<usize>,
    keep_freed_memory: Option<Duration>,
}

/// An [`Error::InvalidConfig`] for an environment variable that cannot be
/// passed to a process (see [`ProcessPoolExecutorBuilder::env`]).
fn check_env(key: &OsString, value: &OsString) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (k, v) = (key.as_bytes(), value.as_bytes());
    let problem = if k.is_empty() {
        Some("an empty name")
    } else if k.contains(&b'=') {
        Some("a name holding '='")
    } else if k.contains(&0) {
        Some("a name holding a NUL byte")
    } else if v.contains(&0) {
        Some("a value holding a NUL byte")
    } else {
        None
    };
    match problem {
        // The key only: a value may be a secret, and errors get logged.
        Some(problem) => Err(Error::InvalidConfig(format!(
            "env({key:?}, ..): {problem} cannot be passed to a process"
        ))),
        None => Ok(()),
    }
}

impl ProcessPoolExecutorBuilder {
    /// Number of worker processes (default: [`cpu_count`](crate::cpu_count),
    /// at most 4096). Zero, or more than 4096, is an
    /// [`Error::InvalidConfig`] at `build`.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Sets an environment variable in every worker, on top of the parent's
    /// environment as it is when the pool is built (later changes to the
    /// parent's environment do not reach the workers). Setting the same
    /// variable again replaces its value. A name that is empty or holds `=`
    /// or a NUL byte, or a value with a NUL byte, is an
    /// [`Error::InvalidConfig`] at `build` (as `std::env::set_var` would
    /// panic on them), and so is an environment the kernel would refuse a
    /// new process (`E2BIG`): one `NAME=value` over 32 pages (128 KiB), or
    /// all the workers' variables together over a quarter of the stack
    /// limit (`ulimit -s`). Large data goes in a task's argument instead.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let (key, value) = (key.into(), value.into());
        // One value per variable, the last one given, kept in key order:
        // configurations that give workers the same environment compare
        // equal (for `get_reusable_executor`) however they were written.
        match self.env.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.env[i].1 = value,
            Err(i) => self.env.insert(i, (key, value)),
        }
        self
    }

    /// Runs `f(arg)` in every worker before its first task. A worker whose
    /// initializer panics exits; after a few such failures in a row the pool
    /// is [`Error::BrokenProcessPool`].
    pub fn initializer<F, A>(mut self, f: F, arg: A) -> Self
    where
        F: TaskFn<A, ()>,
        A: Payload,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        let trampoline = offset_of(run_init::<F, A>);
        let mut buf = rkyv::util::AlignedVec::new();
        self.initializer = Some(
            Payload::encode(&arg, &mut buf)
                .map(|()| init_message(trampoline, &buf))
                .map_err(|message| Error::Codec {
                    stage: CodecStage::EncodeArgument,
                    message,
                }),
        );
        self
    }

    /// Workers idle for longer than this exit, and come back on demand.
    /// Must be more than zero (else [`Error::InvalidConfig`] at `build`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// A worker retires (and is replaced) after this many tasks (at least
    /// 1, else [`Error::InvalidConfig`] at `build`). A map's chunk counts as
    /// one task, however many items it holds (up to 32 768 with automatic
    /// chunking): to recycle workers every n items of a map, give it
    /// [`chunksize`](crate::Map::chunksize) too. A replacement starts in the
    /// background: [`Stats::workers_alive`](crate::Stats::workers_alive)
    /// may read one less meanwhile.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// A worker whose resident memory grew by more than `bytes` since its
    /// first task *ended* retires after the task it is running, and is
    /// replaced (one `tracing` warning). This catches leaks without
    /// interrupting a task; see [`hard_memory_limit`](Self::hard_memory_limit)
    /// to stop a runaway task. At least 1 byte (else [`Error::InvalidConfig`]).
    ///
    /// The baseline is the resident size measured after the first task, as
    /// in Python's loky: what the first task leaves (caches, a library's
    /// state loaded once, a leak too) is the worker's normal size, and only
    /// growth beyond it counts. So a leak shows from the second task on;
    /// `hard_memory_limit` bounds the first one.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Caps each worker's heap (`RLIMIT_DATA`: private writable memory) at
    /// `bytes`. A task that allocates past it aborts its worker, which is
    /// reported as [`Error::TerminatedWorker`] and replaced; unlike
    /// [`memory_limit`](Self::memory_limit) this stops a runaway task while it
    /// runs. Shared memory (rings, shared arrays) does not count. At least 1
    /// byte (else [`Error::InvalidConfig`]). The limit covers what the
    /// worker holds already when it is set (its binary's data, its start-up
    /// heap: a few MiB): below that, the worker starts but every allocation
    /// that grows its heap fails, and the task aborts it. Such a worker's
    /// error says `SIGABRT`; its standard error, "memory allocation of N
    /// bytes failed".
    pub fn hard_memory_limit(mut self, bytes: u64) -> Self {
        self.hard_memory_limit = Some(bytes);
        self
    }

    /// Pins each worker to a CPU (see [`Pinning`](crate::Pinning)); a
    /// replacement worker takes its predecessor's CPU.
    pub fn pin(mut self, pinning: crate::topology::Pinning) -> Self {
        self.pin = pinning;
        self
    }

    /// Capacity of each worker's rings in bytes (a power of two from 256 B
    /// to 2 GiB, else [`Error::InvalidConfig`]; default 1 MiB). Messages up
    /// to half of it travel inline; larger ones in a shared-memory spill
    /// buffer (see [`guide::sending_data`](crate::guide::sending_data)).
    /// Under 4 KiB (less than a page) a dead worker's waiting tasks are not
    /// run again (see [`guide::faults`](crate::guide::faults)).
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = Some(bytes);
        self
    }

    /// Whether a worker gets its next task while it runs one (default
    /// true).
    ///
    /// With prefetching, each worker holds up to two tasks: the one it runs
    /// and the next, waiting in its ring, so that it goes from one to the
    /// next without waiting for the parent. That matters for a stream of
    /// short tasks (a burst on two workers measured about 2.4 µs a task
    /// with it, 4.5 µs without, on a 2-core VM), not for one task at a
    /// time. The price: a task handed to a worker waits for that worker,
    /// even if another one becomes free first. With tasks of very
    /// different lengths (minutes next to milliseconds), a short task can
    /// wait behind a long one while another worker idles, and a time limit
    /// counted from `submit` can fall meanwhile. `prefetch(false)` keeps
    /// every task in the parent until a worker is free to start it, as
    /// Celery's prefetch multiplier of 1 does: no task waits behind
    /// another, nor fails with the worker of a task that crashes, and
    /// [`Future::cancel`](crate::Future::cancel) reaches every task not
    /// started yet.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).prefetch(false).build()?;
    /// let nap = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    /// let long = ex.submit(nap, 500)?;
    /// let short: Vec<_> = (0..3).map(|_| ex.submit(nap, 10)).collect::<Result<_, _>>()?;
    /// for f in &short {
    ///     f.result()?; // all on the free worker, none behind the long one
    /// }
    /// assert!(!long.done());
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn prefetch(mut self, on: bool) -> Self {
        self.prefetch = Some(on);
        self
    }

    /// How long a waiting thread spins before it sleeps (default 50 µs, at
    /// most 1 s, else [`Error::InvalidConfig`]), in the parent and in the
    /// workers. A thread spins only while a core is free for it: not when
    /// the threads already spinning and the workers running tasks fill
    /// every core (a worker also leaves one to the parent's thread that
    /// feeds it), since its spin would take the core of a thread with work.
    /// So with one CPU (a quota of one, or `LOKY_MAX_CPU_COUNT=1`) workers
    /// never spin, and the parent does not while a worker runs.
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = Some(d);
        self
    }

    /// How long an idle worker keeps the memory its tasks freed, and the
    /// parent the buffers of large messages, before giving them back to
    /// the system (default 1 s; [`Duration::MAX`]: never while the pool
    /// lives).
    ///
    /// A task that takes or returns a large value (a 256 MiB `Vec`, say)
    /// needs that much fresh memory on both sides, and first touching fresh
    /// memory costs several times the copy into it (page faults, zeroing).
    /// Kept, the next such task reuses it: back to back, a 256 MiB argument
    /// costs about 70 ms on a 2-core VM, but 200-550 ms when 1.5 s pass
    /// between calls and the default gave it all back in between. A
    /// pipeline that works in the parent between large calls keeps the fast
    /// path with a longer time here, for as much memory held while idle:
    /// about the largest value, per worker and in the parent.
    ///
    /// Not for workers with a [`memory_limit`](Self::memory_limit) or a
    /// [`hard_memory_limit`](Self::hard_memory_limit): they free memory at
    /// once, so that what they keep does not count against the limit. The
    /// parent's buffers serve every pool of the process, and the shortest
    /// time among them applies to them.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ex = loky::ProcessPoolExecutor::builder()
    ///     .max_workers(2)
    ///     .keep_freed_memory(Duration::from_secs(30))
    ///     .build()?;
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn keep_freed_memory(mut self, d: Duration) -> Self {
        self.keep_freed_memory = Some(d);
        self
    }

    /// The most bytes the pool's shared arena may hold, i.e. the total size
    /// of its live [`SharedVec`](crate::SharedVec)s (at least 1 byte and at
    /// most memory plus swap, else [`Error::InvalidConfig`]). Allocating
    /// past it fails with [`Error::ArenaFull`]; memory is committed per
    /// array, not up front.
    ///
    /// The arena maps the whole limit as address space when the first
    /// shared array is made, in the parent and in each worker that receives
    /// one. So the default is the smallest of the machine's physical
    /// memory, half the address-space limit (`ulimit -v`) and the memory
    /// limit of the process's cgroup, and at least 64 MiB. A limit set
    /// here is taken as given: if the system refuses to map it, allocating
    /// fails with [`Error::ArenaFull`], whose message says so.
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).arena_limit(1 << 20).build()?;
    /// assert!(loky::SharedVec::<u8>::zeroed(&ex, 1 << 20).is_ok());
    /// assert!(matches!(loky::SharedVec::<u8>::zeroed(&ex, 2 << 20), Err(loky::Error::ArenaFull { .. })));
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn arena_limit(mut self, bytes: usize) -> Self {
        self.arena_limit = Some(bytes);
        self
    }

    pub(crate) fn config(self) -> Result<Config> {
        /// The most workers one pool takes.
        const MAX_WORKERS: usize = 4096;
        /// The longest spin before sleeping that makes sense.
        const MAX_SPIN: Duration = Duration::from_secs(1);
        // Unset: one per CPU, within the most a pool takes.
        let max_workers = self
            .max_workers
            .unwrap_or_else(|| crate::cpu_count().min(MAX_WORKERS));
        if max_workers == 0 {
            return Err(Error::InvalidConfig(
                "max_workers must be at least 1".into(),
            ));
        }
        if max_workers > MAX_WORKERS {
            return Err(Error::InvalidConfig(format!(
                "max_workers = {max_workers} is more than {MAX_WORKERS}"
            )));
        }
        for (zero, what) in [
            (
                self.hard_memory_limit == Some(0),
                "hard_memory_limit must be at least 1 byte (leave it unset for no limit)",
            ),
            (
                self.memory_limit == Some(0),
                "memory_limit must be at least 1 byte (leave it unset for no limit)",
            ),
            (
                self.idle_timeout.is_some_and(|t| t.is_zero()),
                "idle_timeout must be more than zero (leave it unset to keep idle workers)",
            ),
        ] {
            if zero {
                return Err(Error::InvalidConfig(what.into()));
            }
        }
        if let Some(spin) = self.spin.filter(|&d| d > MAX_SPIN) {
            return Err(Error::InvalidConfig(format!(
                "spin of {spin:?} is more than {MAX_SPIN:?} (a waiting thread sleeps after it)"
            )));
        }
        let ring_capacity = self.ring_capacity.unwrap_or(DEFAULT_RING);
        loky_ipc::RingHeader::check_capacity(ring_capacity).map_err(|e| {
            // Its own message, without the ipc error's "invalid
            // configuration" prefix (ours says it).
            Error::InvalidConfig(match e {
                loky_ipc::Error::Config(message) => message,
                other => other.to_string(),
            })
        })?;
        for (key, value) in &self.env {
            check_env(key, value)?;
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidConfig(
                "max_tasks_per_child must be at least 1".into(),
            ));
        }
        if self.arena_limit == Some(0) {
            return Err(Error::InvalidConfig(
                "arena_limit must be at least 1 byte".into(),
            ));
        }
        if let Some(limit) = self.arena_limit {
            let most = crate::pool::memory_and_swap();
            if limit > most {
                return Err(Error::InvalidConfig(format!(
                    "arena_limit of {limit} bytes is more than this machine's memory and swap ({most} bytes)"
                )));
            }
        }
        Ok(Config {
            arena_limit: self.arena_limit,
            max_workers,
            env: self.env,
            initializer: self.initializer.transpose()?,
            ring_capacity,
            idle_timeout: self.idle_timeout,
            max_tasks_per_child: self.max_tasks_per_child,
            memory_limit: self.memory_limit,
            hard_memory_limit: self.hard_memory_limit,
            pin: self.pin,
            spin: self.spin.unwrap_or(DEFAULT_SPIN),
            prefetch: self.prefetch.unwrap_or(true),
            keep_freed: self.keep_freed_memory.unwrap_or(DEFAULT_KEEP_FREED),
        })
    }

    /// Starts the pool. Workers start in the background; tasks submitted
    /// meanwhile wait for them.
    pub fn build(self) -> Result<ProcessPoolExecutor> {
        let pool = Pool::start(self.config()?)?;
        Ok(ProcessPoolExecutor {
            handle: Arc::new(Handle::new(pool)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_that_fails_validation_is_a_codec_error() {
        // A u64 archive is 8 bytes; 3 bytes cannot be one.
        let err = decode_result::<u64>(STATUS_OK, &[1, 2, 3]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Codec {
                    stage: CodecStage::DecodeResult,
                    ..
                }
            ),
            "{err}"
        );
        // Bytes of the right size that are not a valid value.
        let mut bytes = rkyv::util::AlignedVec::<16>::new();
        bytes.extend_from_slice(&[2]);
        assert!(matches!(
            decode_result::<bool>(STATUS_OK, &bytes),
            Err(Error::Codec { .. })
        ));
        bytes.clear();
        bytes.extend_from_slice(&0xD800u32.to_le_bytes()); // a lone surrogate
        assert!(matches!(
            decode_result::<char>(STATUS_OK, &bytes),
            Err(Error::Codec { .. })
        ));
        // An undecodable failure report still becomes an error, not a panic.
        assert!(matches!(
            decode_result::<u64>(STATUS_PANIC, &[9; 5]),
            Err(Error::TaskPanicked { .. })
        ));
    }
}
