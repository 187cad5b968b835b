//! The parent side of a pool: dispatch, completion, the manager and the
//! watchdog threads.
//!
//! Locks, always taken in this order: a slot's receiver (`receivers[i]`),
//! then `state`. Futures are published (waiters woken, callbacks run) only
//! after both are released, so a callback may submit work or wait on other
//! futures.

mod arena_limit;
mod config;
mod deadlines;
mod identity;
mod launch;
mod lifeline;
mod manager;
mod queue;
mod watchdog;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use loky_ipc::pidfd::Notifier;
use loky_ipc::{Claim, Hold, PidFd, Receiver, Region, RegionConfig, Sender, Unreleased};

pub(crate) use config::Config;
pub(crate) use identity::binary_tag;
pub(crate) use launch::{WorkerSpec, ARENA_FD, ENV_WORKER, REGION_FD, SOCKET_FD};

use crate::codec::Encoded;
use crate::error::{Error, Result};
use crate::future::{lock, Completion};
use crate::protocol::{
    read_header, ResultHeader, TaskHeader, TAG_EXIT, TAG_READY, TAG_RESULT, TAG_TASK,
};

/// Tasks that failed, each with its error, to publish once the state lock
/// is released.
type Failures = Vec<(Arc<dyn Completion>, Error)>;

/// The tasks a worker's death ended, to publish outside the state lock.
#[derive(Default)]
struct Ended {
    /// Failed, with their errors (not staged yet).
    failed: Failures,
    /// Queued again but could not be sent (their error is staged).
    not_sent: Vec<Arc<dyn Completion>>,
}

/// What one try of [`Pool::stop_task`] came to.
enum Stop {
    /// Decided: whether the task was stopped.
    Done(bool),
    /// The task runs in worker `i`, whose results nobody has read yet:
    /// read them, then try again (the task may have finished).
    DrainFirst(usize),
}

/// Tasks a worker holds at once (running + waiting in its ring). Two keeps
/// the worker busy while the parent refills, and balances load.
pub(crate) const DEPTH: usize = 2;
// `stop_task` withdraws a task behind the front one with a plain
// withdrawal, exact only while nothing can sit behind it.
const _: () = assert!(DEPTH <= 2, "stop_task assumes at most two tasks per worker");

/// Waits for `done()` or `deadline` on one of the pools' own threads (in a
/// done-callback), where nobody else may drain their result rings: drains
/// them all meanwhile, and does the manager's housekeeping (time limits,
/// idle workers), which would otherwise wait for this callback to return.
/// Returns whether `done()`.
fn drain_until(pools: &[Arc<Pool>], done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
    /// Counts this wait while it lasts (also when a callback unwinds).
    struct Nested;
    impl Drop for Nested {
        fn drop(&mut self) {
            NESTED_WAITS.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    NESTED_WAITS.with(|n| n.set(n.get() + 1));
    let _nested = Nested;
    let mut chores = Instant::now();
    while !done() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let mut any = false;
        for p in pools {
            any |= p.drain_all(false);
        }
        if chores.elapsed() >= CHORES_EVERY {
            chores = Instant::now();
            for p in pools {
                p.housekeeping();
            }
        }
        if !any {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    true
}

/// A wait on `pools`' futures from one of a pool's own threads (or from a
/// done-callback on a manager thread), which must not sleep on a doorbell
/// while nobody else drains its own pool: drains `pools`, and this thread's
/// own pool, until `done()` or `deadline` ([`drain_until`]). `Some(whether
/// done)`; `None` if this thread may sleep like any caller.
pub(crate) fn drain_if_pool_thread(
    pools: &[Arc<Pool>],
    done: impl Fn() -> bool,
    deadline: Option<Instant>,
) -> Option<bool> {
    let own = own_pool();
    if own.is_none() && !pools.iter().any(|p| p.on_pool_thread()) {
        return None;
    }
    let mut all = pools.to_vec();
    all.extend(own.filter(|o| !pools.iter().any(|p| Arc::ptr_eq(p, o))));
    Some(drain_until(&all, done, deadline))
}

thread_local! {
    /// The pool whose manager thread this is (see [`own_pool`]).
    static OWN_POOL: std::cell::RefCell<Option<std::sync::Weak<Pool>>> =
        const { std::cell::RefCell::new(None) };
    /// How many [`drain_until`] calls this thread is inside.
    static NESTED_WAITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The pool whose manager thread is calling, if it is one: a done-callback
/// it runs that waits, even on another pool's futures, must keep doing that
/// pool's housekeeping ([`drain_until`]), which would otherwise stop until
/// the callback returns. Not past [`MAX_NESTED_WAITS`] waits inside one
/// another: each publishes results, whose callbacks may wait in turn, and
/// the thread's stack is finite; those deeper waits on another pool leave
/// this pool to the outer ones, as before. (A wait on the pool's own
/// futures must drain it at any depth, as it always did: nobody else
/// would.)
pub(crate) fn own_pool() -> Option<Arc<Pool>> {
    if NESTED_WAITS.with(std::cell::Cell::get) >= MAX_NESTED_WAITS {
        return None;
    }
    OWN_POOL.with(|own| own.borrow().as_ref().and_then(std::sync::Weak::upgrade))
}

/// See [`own_pool`].
const MAX_NESTED_WAITS: u32 = 16;
/// Outcomes staged for publishing, and whether the manager thread, which
/// publishes them when nobody else does, has exited (then whoever stages
/// them publishes them).
#[derive(Default)]
struct Staging {
    cells: VecDeque<Arc<dyn Completion>>,
    manager_gone: bool,
}

/// `Pool::read_to` of a slot without a receiver.
const CLOSED: u64 = u64::MAX;

/// How often [`drain_until`] does the housekeeping of the pools it drains.
const CHORES_EVERY: Duration = Duration::from_millis(1);

/// The parent's view of one live worker.
pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) pidfd: Arc<PidFd>,
    sender: Sender<'static>,
    bell: &'static loky_ipc::Doorbell,
    in_flight: VecDeque<Arc<dyn Completion>>,
    ready: bool,
    exiting: bool,
    /// Told to exit, but its task ring had no room for the exit message
    /// (full with the tasks it holds): sent again after each of its
    /// results, so that it exits after its tasks instead of being killed
    /// with one running.
    exit_owed: bool,
    /// The error in-flight tasks get if this worker dies because we killed it.
    kill_reason: Option<Error>,
    /// A task we killed this worker to stop, and the error it gets.
    task_kill: Option<(u64, Error)>,
    /// A task stopped (failed) while it waited behind the running one, and
    /// withdrawn: the worker skips it, and it is never run again should the
    /// worker die first. One at a time: the slot's claim word remembers
    /// one withdrawal, and the worker gets no new task until it skipped it
    /// ([`Worker::has_room`]).
    withdrawn: Option<u64>,
    /// The last task whose result (not a skip) came back: the last one this
    /// worker started, as far as the parent knows (0: none yet). A task at
    /// the front is withdrawn only while the claim word still says so.
    last_ran: u64,
    tasks_done: u64,
    /// Resident size after the first task (for `memory_limit`).
    rss_baseline: Option<u64>,
    pub(crate) idle_since: Instant,
    /// Reads the exit code of the dying worker before it is a zombie.
    probe: Option<loky_ipc::lifeline::ExitProbe>,
    /// Whether sleepers still watch this worker's lifeline.
    watch_lifeline: bool,
    /// Its lifeline broke and the kernel says it is exiting: it takes no
    /// new task.
    dying: bool,
    /// Set once the worker is known dead (its lifeline broke, or it was
    /// reaped): the error its tasks get (unless one was stopped on purpose),
    /// fixed at first sight so tasks failed then and at reaping agree. It
    /// gets no more work; the watchdog reaps it and fills the slot.
    died: Option<Error>,
    /// The watchdog has reaped it (under the state lock): its pid may
    /// belong to another process now.
    reaped: bool,
}

#[derive(Default)]
pub(crate) struct State {
    workers: Vec<Option<Worker>>,
    generations: Vec<u32>,
    /// Whether a worker ever started in each slot (a later one replaces it).
    had_worker: Vec<bool>,
    queue: queue::TaskQueue,
    shutdown: bool,
    /// A shutdown with `kill_workers`: a worker that starts now is killed
    /// too.
    killing: bool,
    broken: Option<String>,
    startup_failures: u32,
    /// Workers the pool should have now: `max_workers`, less those that
    /// retired for being idle (they come back on demand).
    want: usize,
    /// The current size limit (changed by `resize`).
    max_workers: usize,
    /// Whether a worker gets its next task while it runs one
    /// (`ProcessPoolExecutorBuilder::prefetch`).
    prefetch: bool,
    /// `ProcessPoolExecutorBuilder::max_tasks_per_child`: a worker is given
    /// no more tasks than that in all, so none runs one past its limit.
    max_tasks_per_child: Option<u64>,
    /// Per-task time limits (`submit_with_timeout`), checked by the manager.
    deadlines: deadlines::Deadlines,
    pub(crate) stats: crate::stats::Counters,
}

thread_local! {
    /// Whether this thread is in [`Pool::drain_slot`], holding a receiver
    /// (a result's decoding runs there, user code included).
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// One process pool (shared by the executor handle, its threads and its
/// futures).
pub(crate) struct Pool {
    pub(crate) config: Config,
    state: Mutex<State>,
    receivers: Box<[Mutex<Option<Receiver<'static>>>]>,
    /// Per slot, how far its receiver has read the result ring, updated
    /// after each drain ([`CLOSED`] when the slot has no receiver): whether
    /// results wait is decided from this and the worker's `head`, never
    /// from the ring's shared `tail`, which the worker can overwrite.
    read_to: Box<[AtomicU64]>,
    /// How the pool's tasks ended (see [`crate::Stats::submitted`]).
    pub(crate) ends: crate::stats::Ends,
    watchdog_wake: Notifier,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The watchdog's and the manager's ids, set once both started (read
    /// on `done()`/`poll`: no lock).
    thread_ids: std::sync::OnceLock<[std::thread::ThreadId; 2]>,
    ncpu: u32,
    /// The workers' environment, snapshotted at pool creation.
    worker_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The CPU of each slot when workers are pinned.
    pub(crate) cpu_plan: Option<Vec<usize>>,
    /// Caller threads sleeping on the parent doorbell; while there are any,
    /// the manager steps off it (see `wait_on_bell`).
    standby: std::sync::atomic::AtomicUsize,
    /// The caller thread holding the doorbell ([`thread_token`]; 0: none),
    /// the others sleeping on their own notifiers (see `wait_on_bell`).
    bell_owner: AtomicU64,
    /// The notifiers of the caller threads waiting while another holds the
    /// doorbell: one is fired when it is let go.
    bell_waiters: Mutex<Vec<Arc<crate::future::Notify>>>,
    manager_wake: crate::future::Notify,
    /// Set by the watchdog when it exits (the pool has no worker left).
    watchdog_done: AtomicBool,
    /// Outcomes with done-callbacks waiting to be published (see
    /// [`Pool::publish_later`]).
    to_publish: Mutex<Staging>,
    /// Whether `to_publish` holds anything (set and cleared under its lock;
    /// read without it by the spinning and sleeping callers).
    staged: AtomicBool,
    /// The shared arena behind `SharedVec`s (mapped lazily).
    pub(crate) arena: Arc<loky_ipc::Arena>,
    /// The secret the grants of shared-array handles are keyed with
    /// (`crate::shared::wire`); its workers learn it at start.
    pub(crate) grant_key: crate::shared::GrantKey,
    /// The fork generation the pool was created in (`loky_ipc::fork`).
    born: u64,
    // Declared last: dropped after every Sender/Receiver borrowing it.
    region: Arc<Region>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_workers", &self.config.max_workers)
            .finish_non_exhaustive()
    }
}

/// Debug builds only, for tests (`tests/stop_race.rs`): waits
/// `LOKY_TEST_KILL_PAUSE_MS` between deciding to kill a worker to stop its
/// task and the kill, which lets the worker finish that task and reach the
/// next one first. Release builds never read it.
fn pause_before_kill() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("LOKY_TEST_KILL_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The error for a pool used in a `fork()`ed child of its creator.
pub(crate) fn forked_error() -> Error {
    Error::BrokenProcessPool {
        cause: "this executor was created before a fork(): in the forked child its workers, \
                threads and queues are the parent's; create a new executor in the child"
            .into(),
    }
}

impl Pool {
    /// Whether this process is a `fork()`ed child of the pool's creator:
    /// its workers, threads and rings are the parent's, so it must not
    /// submit, wait on the rings, or shut them down ([`forked_error`]).
    pub(crate) fn forked(&self) -> bool {
        loky_ipc::fork::forked_since(self.born)
    }

    pub(crate) fn start(config: Config) -> Result<Arc<Self>> {
        let depth = nesting_depth();
        if depth >= MAX_NESTING {
            return Err(Error::InvalidConfig(format!(
                "pools nested {depth} deep (a task of a task of ... starting a pool); the limit is {MAX_NESTING}"
            )));
        }
        let worker_env = launch::worker_env(&config);
        launch::check_env_size(&worker_env)?;
        // Room to grow in place (`get_reusable_executor` resizing): slots
        // cost address space only until a worker uses them.
        let slots = config.max_workers.max(crate::topology::cpu_count()) as u32;
        let region = Region::create(RegionConfig {
            slots,
            ring_capacity: config.ring_capacity,
            tag: binary_tag(),
        })?;
        let arena = loky_ipc::Arena::create(
            config
                .arena_limit
                .unwrap_or_else(arena_limit::default_arena_limit),
            arena_id(),
        )?;
        let pool = Arc::new(Self {
            arena: Arc::new(arena),
            grant_key: crate::shared::new_grant_key(),
            receivers: (0..slots).map(|_| Mutex::new(None)).collect(),
            read_to: (0..slots).map(|_| AtomicU64::new(CLOSED)).collect(),
            ends: Default::default(),
            state: Mutex::new(State {
                want: config.max_workers,
                max_workers: config.max_workers,
                prefetch: config.prefetch,
                max_tasks_per_child: config.max_tasks_per_child,
                workers: (0..slots).map(|_| None).collect(),
                generations: vec![0; slots as usize],
                had_worker: vec![false; slots as usize],
                ..State::default()
            }),
            watchdog_wake: Notifier::new()?,
            threads: Mutex::new(Vec::new()),
            thread_ids: std::sync::OnceLock::new(),
            ncpu: crate::topology::cpu_count() as u32,
            cpu_plan: crate::topology::plan_for(config.pin, slots as usize),
            worker_env,
            standby: Default::default(),
            bell_owner: AtomicU64::new(0),
            bell_waiters: Mutex::new(Vec::new()),
            manager_wake: Default::default(),
            watchdog_done: AtomicBool::new(false),
            to_publish: Mutex::new(Staging::default()),
            staged: AtomicBool::new(false),
            region: Arc::new(region),
            born: loky_ipc::fork::generation(),
            config,
        });
        let w = pool.clone();
        let watchdog = std::thread::Builder::new()
            .name("loky-watchdog".into())
            .spawn(move || watchdog::run(&w))
            .map_err(|e| {
                Error::Ipc(Arc::new(loky_ipc::Error::Os {
                    op: "spawn thread",
                    source: e,
                }))
            })?;
        let m = pool.clone();
        let manager = match std::thread::Builder::new()
            .name("loky-manager".into())
            .spawn(move || manager::run(&m))
        {
            Ok(manager) => manager,
            Err(e) => {
                // The watchdog runs already (and may have started workers):
                // close the pool so that it ends them and exits, on its own
                // time (a worker it is starting may take a while to exit).
                pool.shutdown(false, true, true);
                drop(watchdog);
                return Err(Error::Ipc(Arc::new(loky_ipc::Error::Os {
                    op: "spawn thread",
                    source: e,
                })));
            }
        };
        let _ = pool
            .thread_ids
            .set([watchdog.thread().id(), manager.thread().id()]);
        lock(&pool.threads).extend([watchdog, manager]);
        Ok(pool)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Allocates a task id: unique in the process, across pools (a
    /// scheduler may key its tables by id, and the reusable executor may be
    /// replaced by a new pool), never 0.
    pub(crate) fn next_id(&self) -> Result<u64> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        self.state().check_open()?;
        Ok(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands an encoded task (`TaskHeader` + archive) to the least loaded
    /// ready worker, or queues it; with its time limit `deadline`, if any
    /// (see `submit_with_timeout`).
    pub(crate) fn dispatch(
        &self,
        cell: Arc<dyn Completion>,
        message: Encoded<&[u8]>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut st = self.state();
        st.check_open()?;
        if deadline.is_some_and(|at| Instant::now() >= at) {
            // Out of time already: it never runs, whether a worker is free
            // or not (a time limit of zero fails every time alike).
            st.stats.submitted += 1;
            drop(st);
            cell.try_end(Error::TimeLimit);
            return Ok(());
        }
        let id = cell.id();
        let mut message = message;
        if st.queue.is_empty() {
            while let Some(i) = st.least_loaded() {
                // An error here is `submit`'s: the task was not submitted.
                match st.push_to(i, &cell, message)? {
                    None => {
                        st.stats.submitted += 1;
                        // Not visible to anyone else yet, so it cannot have
                        // been cancelled: this only records that it is
                        // running.
                        cell.set_running();
                        self.limit_time(st, id, deadline);
                        return Ok(());
                    }
                    Some(back) => message = back,
                }
                // Its ring was full: queued. Retiring, its socket closed
                // (`push_to`): the next worker.
                if st.workers[i].as_ref().is_some_and(|w| w.takes_work()) {
                    break;
                }
            }
        }
        st.stats.submitted += 1;
        st.queue.push_back(cell, message);
        // Workers retired for idleness come back on demand.
        let grow = st.want < st.max_workers && st.want < st.alive() + st.queue.len();
        if grow {
            st.want = st.max_workers.min(st.alive() + st.queue.len());
        }
        self.limit_time(st, id, deadline);
        if grow {
            self.watchdog_wake.notify();
        }
        Ok(())
    }

    /// Gives task `id`, placed under `st` just now (so it cannot have ended
    /// yet), its time limit if it has one, and lets go of the state lock.
    fn limit_time(&self, mut st: MutexGuard<'_, State>, id: u64, deadline: Option<Instant>) {
        let earliest = deadline.is_some_and(|at| st.deadlines.add(at, id));
        drop(st);
        if earliest {
            // The manager may be sleeping longer than this limit.
            self.manager_wake.fire();
            self.region.parent_bell().wake_all();
        }
    }

    /// Removes a task its future just cancelled ([`Future::cancel`] won the
    /// race to it) from the queue, unless a refill or a shutdown took it
    /// out first (both leave a cancelled task alone).
    ///
    /// [`Future::cancel`]: crate::Future::cancel
    pub(crate) fn forget_queued(&self, id: u64) {
        let mut st = self.state();
        if st.queue.remove(id).is_some() {
            st.deadlines.forget(id);
        }
    }

    /// Drains every result ring and publishes what it drained and what is
    /// staged ([`Pool::publish_in_turn`]); with `block`, waits for receivers
    /// held by other threads. Returns whether anything was published.
    pub(crate) fn drain_all(&self, block: bool) -> bool {
        let mut done = Vec::new();
        self.drain_into(block, &mut done);
        self.publish_in_turn(done, |_| {})
    }

    /// [`Pool::drain_all`] after this thread counted as awake on the
    /// doorbell: what a worker published meanwhile woke nobody. Another
    /// thread holding a receiver drains it, but may have read its ring just
    /// before that result came, and not look again: then this waits for it
    /// and reads the rest.
    ///
    /// Not on a thread that is itself draining (a codec's decode that waits
    /// for another task of this pool): it may hold the receiver.
    fn drain_all_surely(&self) {
        let mut done = Vec::new();
        self.drain_into(false, &mut done);
        if !DRAINING.with(Cell::get) && !self.forked() {
            for i in 0..self.receivers.len() {
                if self.results_pending_in(i) {
                    self.drain_slot_locked(i, false, &mut done);
                }
            }
        }
        // One publication for both passes.
        self.publish_in_turn(done, |_| {});
    }

    /// Drains what is there without running done-callbacks here: outcomes
    /// without one are published, the others staged for the manager (or
    /// a caller blocked on the pool) to publish.
    fn drain_staging_callbacks(&self) {
        if self.results_pending() {
            let mut drained = Vec::new();
            self.drain_into(false, &mut drained);
            self.publish_later_all(drained);
        }
    }

    /// Drains every result ring into `done` (see [`Pool::drain_all`]),
    /// publishing nothing.
    pub(super) fn drain_into(&self, block: bool, done: &mut Vec<Arc<dyn Completion>>) {
        // In a fork()ed child the rings are the parent's: reading them
        // would take its results (and refill its workers from a stale copy
        // of the queue).
        if self.forked() {
            return;
        }
        for i in 0..self.receivers.len() {
            let guard = if block {
                Some(lock(&self.receivers[i]))
            } else {
                self.receivers[i].try_lock().ok()
            };
            if let Some(mut rx) = guard {
                if let Some(rx) = rx.as_mut() {
                    self.drain_slot(i, rx, done);
                }
            }
        }
    }

    /// True if any result ring has a message its receiver has not read
    /// (cheap check for sleepers). Unread bytes in a slot without a
    /// receiver (a dead worker's, say, after a corrupt message) do not
    /// count: nobody will read them, and counting them would keep every
    /// sleeper awake.
    pub(crate) fn results_pending(&self) -> bool {
        (0..self.read_to.len()).any(|i| self.results_pending_in(i))
    }

    /// True if slot `i`'s result ring has a message its receiver has not
    /// read.
    fn results_pending_in(&self, i: usize) -> bool {
        let at = self.read_to[i].load(Ordering::Acquire);
        at != CLOSED && self.region.slot(i as u32).up_header().published() != at
    }

    /// Installs (or, with `None`, drops) the parent's receiver of slot `i`.
    pub(super) fn set_receiver(&self, i: usize, receiver: Option<Receiver<'static>>) {
        let mut rx = lock(&self.receivers[i]);
        let at = receiver.as_ref().map_or(CLOSED, Receiver::position);
        *rx = receiver;
        self.read_to[i].store(at, Ordering::Release);
    }

    /// Processes the results waiting in slot `i`'s ring, waiting for a
    /// thread that holds its receiver, and adds the completed tasks to
    /// `done`; with `close` (a dead worker's slot), drops the parent's
    /// receiver of the slot afterwards.
    fn drain_slot_locked(&self, i: usize, close: bool, done: &mut Vec<Arc<dyn Completion>>) {
        let mut rx = lock(&self.receivers[i]);
        if let Some(r) = rx.as_mut() {
            self.drain_slot(i, r, done);
        }
        if close {
            *rx = None;
            self.read_to[i].store(CLOSED, Ordering::Release);
        }
    }

    /// Processes the messages waiting in slot `i`'s result ring.
    fn drain_slot(
        &self,
        i: usize,
        rx: &mut Receiver<'static>,
        done: &mut Vec<Arc<dyn Completion>>,
    ) {
        let before = rx.position();
        /// Restores the thread's `DRAINING` mark, even if a drain unwinds.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                DRAINING.with(|d| d.set(self.0));
            }
        }
        let restore = Restore(DRAINING.with(|d| d.replace(true)));
        self.drain_messages(i, rx, done);
        drop(restore);
        // Only when it moved: waiters poll these words while they spin.
        if rx.position() != before {
            self.read_to[i].store(rx.position(), Ordering::Release);
        }
    }

    /// Processes the messages that were in slot `i`'s ring when it began,
    /// not those that come meanwhile: each result refills its worker, which
    /// may send the next one before this reads the last, and a pass that
    /// followed them would publish nothing (its outcomes held, their values
    /// piling up in memory) until the workers ran out of tasks.
    fn drain_messages(
        &self,
        i: usize,
        rx: &mut Receiver<'static>,
        done: &mut Vec<Arc<dyn Completion>>,
    ) {
        let start = rx.position();
        // A count behind this reader's own (the worker can write it) bounds
        // nothing: then read until the ring is empty.
        let quota = self
            .region
            .slot(i as u32)
            .up_header()
            .published()
            .checked_sub(start)
            .unwrap_or(u64::MAX);
        while rx.position().wrapping_sub(start) < quota {
            let msg = match rx.peek() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(slot = i, error = %e, "corrupt result ring; killing the worker");
                    self.kill_slot(i);
                    return;
                }
            };
            match msg.tag {
                TAG_RESULT => {
                    let Some((hdr, payload)) = read_header::<ResultHeader>(msg.bytes) else {
                        tracing::error!(slot = i, "short result message; killing the worker");
                        self.kill_slot(i);
                        return;
                    };
                    let cell = self.complete_in_state(i, &hdr, done);
                    match cell {
                        Some(cell) => {
                            // The worker is done with the task: its shared
                            // arrays go (outside the state lock: a large
                            // free returns memory with a system call).
                            cell.release_pins();
                            crate::donation::receiving(msg.donated, msg.bytes, || {
                                cell.stage_bytes(hdr.status, hdr.elapsed_ns, payload)
                            });
                            done.push(cell);
                        }
                        None => {
                            tracing::error!(
                                slot = i,
                                task = hdr.task_id,
                                "result for an unknown task; killing the worker"
                            );
                            self.kill_slot(i);
                            return;
                        }
                    }
                }
                TAG_READY => {
                    let mut st = self.state();
                    st.startup_failures = 0;
                    if let Some(w) = st.workers[i].as_mut() {
                        w.ready = true;
                        w.idle_since = Instant::now();
                    }
                    st.refill(i, done);
                }
                other => {
                    tracing::error!(
                        slot = i,
                        tag = other,
                        "unknown message from worker; killing it"
                    );
                    self.kill_slot(i);
                    return;
                }
            }
            if let Err(e) = rx.pop() {
                tracing::error!(slot = i, error = %e, "corrupt result ring; killing the worker");
                self.kill_slot(i);
                return;
            }
        }
    }

    /// Matches a result to the oldest in-flight task of worker `i`, refills
    /// the worker, and applies the recycling rules.
    /// Tasks that failed to be sent in the refill are added to `failed`.
    fn complete_in_state(
        &self,
        i: usize,
        hdr: &ResultHeader,
        failed: &mut Vec<Arc<dyn Completion>>,
    ) -> Option<Arc<dyn Completion>> {
        let mut guard = self.state();
        let st = &mut *guard;
        let shutdown = st.shutdown;
        let w = st.workers[i].as_mut()?;
        if w.in_flight.front().map(|c| c.id()) != Some(hdr.task_id) {
            return None;
        }
        let cell = w.in_flight.pop_front()?;
        // A task withdrawn while it waited (`stop_task`) is answered
        // without being run: it counts for nothing.
        let skipped = hdr.status == crate::protocol::STATUS_SKIPPED;
        if w.withdrawn == Some(hdr.task_id) {
            w.withdrawn = None;
        } else if skipped {
            tracing::error!(
                pid = w.pid,
                task = hdr.task_id,
                "worker skipped a task the pool did not withdraw"
            );
        }
        st.deadlines.forget(hdr.task_id);
        // The worker released that task's message before sending its
        // result: room for an exit message a full ring refused.
        w.retry_exit();
        if w.in_flight.is_empty() {
            w.idle_since = Instant::now();
        }
        if !skipped {
            w.last_ran = hdr.task_id;
            w.tasks_done += 1;
            // Memory growth is measured from the resident size after the
            // first task (imports, caches and the like are not a leak).
            let rss = u64::from(hdr.rss_kib) * 1024;
            let baseline = *w.rss_baseline.get_or_insert(rss);
            let by_count = self
                .config
                .max_tasks_per_child
                .is_some_and(|n| w.tasks_done >= n);
            let growth = rss.saturating_sub(baseline);
            let by_memory = self.config.memory_limit.is_some_and(|limit| growth > limit);
            if (by_count || by_memory) && !w.exiting {
                // Routine recycling, asked for: not a warning.
                if by_memory {
                    tracing::info!(
                        pid = w.pid,
                        tasks = w.tasks_done,
                        growth_kib = growth / 1024,
                        "retiring worker: it grew past memory_limit since its first task; a new one replaces it"
                    );
                } else {
                    tracing::debug!(
                        pid = w.pid,
                        tasks = w.tasks_done,
                        "retiring worker: it ran max_tasks_per_child tasks; a new one replaces it"
                    );
                }
                w.exiting = true;
                w.send_exit();
            }
        }
        st.refill(i, failed);
        if shutdown {
            st.exit_idle_workers();
        }
        Some(cell)
    }

    /// Kills worker `i` after a protocol violation; the watchdog then ends
    /// its in-flight tasks ([`Worker::fail_in_flight`]) and replaces it.
    pub(crate) fn kill_slot(&self, i: usize) {
        let pidfd = self.state().workers[i].as_ref().map(|w| w.pidfd.clone());
        if let Some(pidfd) = pidfd {
            let _ = pidfd.kill(rustix::process::Signal::KILL);
        }
    }

    /// Stops task `id` with `reason`: a queued task is failed at once; a
    /// task a worker holds but has not started (waiting behind another one
    /// in its ring, or not reached yet) is withdrawn (the worker skips it)
    /// and failed at once; a running task is stopped by killing its worker
    /// (the pool heals), unless `kill` is false: a running task is then
    /// left to finish (and its time limit, if any, kept).
    /// Returns whether the task was stopped (false if it is not known:
    /// already finished; or running, without `kill`; or already withdrawn,
    /// or its worker already being killed for it: the first stop's reason
    /// stands).
    pub(crate) fn stop_task(&self, id: u64, reason: Error, kill: bool) -> bool {
        // A kill is decided only with the task's worker's results read (see
        // `stop_in_worker`): drained at most 3 times (results keep coming,
        // none of them this task's: a 4th try stops it as things stand).
        let mut drains = 0;
        loop {
            match self.stop_in_worker(id, &reason, kill, drains < 3) {
                Stop::Done(stopped) => return stopped,
                Stop::DrainFirst(i) => {
                    self.drain_slot_waiting(i);
                    drains += 1;
                }
            }
        }
    }

    /// Drains slot `i`'s result ring, waiting for a thread that holds it,
    /// and leaves done-callbacks to the manager (this may be a user's
    /// thread).
    fn drain_slot_waiting(&self, i: usize) {
        let mut drained = Vec::new();
        self.drain_slot_locked(i, false, &mut drained);
        self.publish_later_all(drained);
    }

    /// One try of [`Pool::stop_task`]; `may_drain`: whether to ask for the
    /// results of the task's worker to be read before a kill.
    fn stop_in_worker(&self, id: u64, reason: &Error, kill: bool, may_drain: bool) -> Stop {
        // In the queue: ended there. Else in a worker, it seems: the results
        // already in the rings first, as a task that finished must not be
        // stopped by killing its worker (which would take the task that
        // worker started next with it). Not before the queue: a drain
        // refills workers from it. And the queue again after: a worker's
        // death may have put the task back meanwhile.
        let mut st = match self.stop_queued(id, reason) {
            Ok(ended) => return Stop::Done(ended),
            Err(st) => {
                drop(st);
                // Without running callbacks here: this may be a user's
                // thread (`kill`, a dropped map).
                self.drain_staging_callbacks();
                match self.stop_queued(id, reason) {
                    Ok(ended) => return Stop::Done(ended),
                    Err(st) => st,
                }
            }
        };
        let state = &mut *st;
        for (i, w) in state.workers.iter_mut().enumerate() {
            let Some(w) = w.as_mut() else { continue };
            let Some(pos) = w.in_flight.iter().position(|c| c.id() == id) else {
                continue;
            };
            if w.withdrawn == Some(id) || w.task_kill.as_ref().is_some_and(|(k, _)| *k == id) {
                // Withdrawn (and failed) already, or its worker is being
                // killed for it, by a stop that came first (whose reason
                // stands): a second withdrawal would outlive its skip.
                return Stop::Done(false);
            }
            // A task the worker has not started (waiting behind the
            // running one, or just handed to an idle worker) is withdrawn:
            // the worker will skip it (and answer with an empty result).
            // If it started, or another withdrawal of this worker awaits its
            // skip, it is stopped by killing its worker. At the front, only
            // while the worker has started nothing since the task whose
            // result came last: else it may have run this one and gone on.
            let claim = self.region.slot(i as u32).claim();
            let withdrawn = if pos == 0 {
                claim.withdraw_next(id, w.last_ran)
            } else {
                claim.withdraw(id)
            };
            if !withdrawn && !kill {
                return Stop::Done(false);
            }
            if !withdrawn && may_drain && self.results_pending_in(i) {
                // The worker sent results that nobody has read yet (another
                // thread may be reading them, waiting for this lock): this
                // task's may be among them. Read them before killing.
                return Stop::DrainFirst(i);
            }
            if !withdrawn && pos == 0 {
                if let Some(next) = w.in_flight.get(1).map(|c| c.id()) {
                    // The worker may yet finish this task and go on to the
                    // next before the kill lands, which would take that one
                    // with it. Held, the next one never starts: the worker
                    // exits before it, and it runs elsewhere. Not held
                    // because the worker started it (it runs them in
                    // order): this task ran to its end and its result is on
                    // its way (in a ring another thread is draining), so
                    // there is nothing to stop. (Withdrawn already, it will
                    // not start either. Refused, which the pool never leaves
                    // pending: killed all the same, as the running task must
                    // stop.)
                    if w.withdrawn != Some(next) && claim.hold(next, id) == Hold::Ended {
                        return Stop::Done(false);
                    }
                }
            }
            state.deadlines.forget(id);
            // Staged under the state lock: a death path, the skip's result
            // or a late result of the task (it finished meanwhile), which
            // take it too, find the outcome set, so the future ends as the
            // stop said.
            let cell = w.in_flight[pos].clone();
            cell.stage_error(reason.clone());
            if !withdrawn {
                tracing::info!(pid = w.pid, task = id, error = %reason, "killing a worker to stop its task");
                w.task_kill = Some((id, reason.clone()));
                pause_before_kill();
                let _ = w.pidfd.kill(rustix::process::Signal::KILL);
            } else {
                // If the worker dies before it skips it, it must not be read
                // back and run elsewhere either.
                w.withdrawn = Some(id);
                drop(st);
                // The claim says the worker will not start it (or has
                // finished it already): its shared arrays are the caller's
                // again now, not once the worker gets round to skipping it
                // (after the task in front, however long that runs).
                cell.release_pins();
                cell.publish();
            }
            return Stop::Done(true);
        }
        Stop::Done(false)
    }

    /// [`Pool::stop_task`] of a task in the queue: `Ok(whether this call
    /// ended it)` (not if a cancel of its future is ending it right now),
    /// or, if it is not queued, `Err` with the state still locked.
    fn stop_queued(
        &self,
        id: u64,
        reason: &Error,
    ) -> std::result::Result<bool, MutexGuard<'_, State>> {
        let mut st = self.state();
        let Some(q) = st.queue.remove(id) else {
            return Err(st);
        };
        st.deadlines.forget(id);
        drop(st);
        Ok(q.cell.try_end(reason.clone()))
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.state()
            .workers
            .iter()
            .flatten()
            .filter(|w| w.died.is_none())
            .map(|w| w.pid)
            .collect()
    }

    /// The current size limit.
    pub(crate) fn max_workers(&self) -> usize {
        self.state().max_workers
    }

    /// Broken or shut down: `get_reusable_executor` replaces it.
    pub(crate) fn is_unusable(&self) -> bool {
        // In a fork()ed child its workers are the parent's: a reusable
        // executor there is a new one.
        if self.forked() {
            return true;
        }
        let st = self.state();
        st.shutdown || st.broken.is_some()
    }

    /// Changes the number of workers in place: growing spawns workers,
    /// shrinking retires idle workers first and never kills a running task
    /// (a busy worker retires after the tasks it holds). False if `n`
    /// exceeds the region's slots (build a new pool instead).
    pub(crate) fn resize(&self, n: usize) -> bool {
        if n == 0 || n > self.receivers.len() || self.forked() {
            return false;
        }
        let mut st = self.state();
        st.max_workers = n;
        st.want = n;
        let mut excess = st.staying().saturating_sub(n);
        // Idle ones first, then the least loaded.
        for max_load in 0..=DEPTH {
            for w in st.workers.iter_mut().flatten() {
                if excess > 0 && !w.exiting && w.died.is_none() && w.in_flight.len() <= max_load {
                    w.exiting = true;
                    w.send_exit();
                    excess -= 1;
                }
            }
        }
        drop(st);
        self.watchdog_wake.notify();
        true
    }

    /// Retires workers idle for longer than `idle_timeout` (called by the
    /// manager); they come back on demand.
    pub(crate) fn retire_idle(&self) {
        let Some(limit) = self.config.idle_timeout else {
            return;
        };
        let mut st = self.state();
        if st.shutdown || !st.queue.is_empty() {
            return;
        }
        let mut retired = 0;
        for w in st.workers.iter_mut().flatten() {
            if w.takes_work() && w.in_flight.is_empty() && w.idle_since.elapsed() >= limit {
                tracing::debug!(pid = w.pid, "worker idle for {limit:?}; retiring it");
                w.exiting = true;
                w.send_exit();
                retired += 1;
            }
        }
        st.want = st.want.saturating_sub(retired);
    }

    /// Refills every worker that has room while tasks wait. Refills follow
    /// a worker's start and each of its results; this catches a worker left
    /// idle with tasks waiting (after a failed send, say).
    pub(crate) fn refill_idle(&self) {
        let mut failed = Vec::new();
        {
            let mut st = self.state();
            if st.queue.is_empty() {
                return;
            }
            st.refill_all(&mut failed);
        }
        for c in failed {
            c.publish();
        }
    }

    /// Stops tasks past their time limit; returns when the next limit falls.
    /// Until it has stopped them all they count as fallen
    /// ([`deadlines::Deadlines::fell`]): stopping one may kill a worker
    /// that holds another, and that worker's death, handled on another
    /// thread before this one gets to the other task, must end it with its
    /// own `TimeLimit` (see [`Worker::fail_in_flight`]).
    pub(crate) fn expire_deadlines(&self) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = self.state().deadlines.expire(Instant::now(), &mut expired);
        if expired.is_empty() {
            return next;
        }
        for &id in &expired {
            self.stop_task(id, Error::TimeLimit, true);
        }
        self.state().deadlines.stopped(&expired);
        next
    }

    /// Spins up to the configured budget draining result rings until
    /// `done()`; returns `done()`. Spins only if a core is free for it
    /// ([`parent_may_spin`](crate::spin_policy::parent_may_spin)).
    pub(crate) fn spin_for_results(
        &self,
        mut done: impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        let mut budget = self.config.spin;
        if let Some(d) = deadline {
            budget = budget.min(d.saturating_duration_since(Instant::now()));
        }
        if budget.is_zero()
            || !crate::spin_policy::parent_may_spin(self.region.activity(), self.ncpu)
        {
            self.drain_all(false);
            return done();
        }
        let bell = self.region.parent_bell();
        let spinning = self.region.parent_spinning();
        spinning.fetch_add(1, Ordering::Relaxed);
        bell.enter();
        let mut drained = Vec::new();
        let found = loky_ipc::spin_until(budget, || {
            if self.results_pending() {
                self.drain_into(false, &mut drained);
            }
            self.publish_awake(drained.drain(..));
            done()
        });
        bell.leave();
        spinning.fetch_sub(1, Ordering::Relaxed);
        // Dekker re-check: a result published while we counted as awake did
        // not wake the manager.
        self.drain_all_surely();
        found || done()
    }

    /// Publishes what a worker's death left: the results it sent before it
    /// died (`done`), then the tasks it ended.
    fn publish_ended(&self, done: Vec<Arc<dyn Completion>>, ended: Ended) {
        let failed = ended.failed.into_iter().map(|(c, e)| {
            // Its worker is done with it: nothing uses the task's shared
            // arrays any more (a task that still had them in a dying worker
            // was kept in flight, not failed).
            c.release_pins();
            c.stage_error(e);
            c
        });
        self.publish_later_all(done.into_iter().chain(failed).chain(ended.not_sent));
    }

    /// Hands a staged outcome over for publishing. Outcomes without
    /// callbacks are published at once (waking the waiter directly); those
    /// with callbacks are staged, as a callback may block and this thread
    /// must keep watching the workers: the manager publishes them, or a
    /// caller blocked on the pool, or (once the manager has exited, which
    /// is after the watchdog has) this thread.
    pub(crate) fn publish_later(&self, cell: Arc<dyn Completion>) {
        self.publish_later_all([cell]);
    }

    /// [`publish_later`](Self::publish_later) of a batch: all of it staged
    /// before any callback runs, should this thread have to run them (the
    /// manager has exited), as a callback may wait on another of the batch.
    fn publish_later_all(&self, cells: impl IntoIterator<Item = Arc<dyn Completion>>) {
        if self.publish_or_stage(cells).1 {
            self.hand_over_staged();
        }
    }

    /// Publishes those of `cells` without done-callbacks and stages the
    /// others: (whether there was any, whether any was staged).
    fn publish_or_stage(
        &self,
        cells: impl IntoIterator<Item = Arc<dyn Completion>>,
    ) -> (bool, bool) {
        let (mut any, mut staged) = (false, false);
        for c in cells {
            any = true;
            if !c.publish_without_callbacks() {
                self.stage(c);
                staged = true;
            }
        }
        (any, staged)
    }

    /// After staging: wakes the manager and the callers that may publish
    /// what is staged; once the manager has exited, publishes it here.
    fn hand_over_staged(&self) {
        if lock(&self.to_publish).manager_gone {
            while let Some(c) = self.take_one_staged() {
                c.publish();
            }
        } else {
            self.manager_wake.fire();
            self.region.parent_bell().wake_all();
        }
    }

    /// Puts `cell` (with done-callbacks) on the staging list.
    fn stage(&self, cell: Arc<dyn Completion>) {
        // The flag changes only under the lock, with the list.
        let mut staging = lock(&self.to_publish);
        staging.cells.push_back(cell);
        self.staged.store(true, Ordering::Release);
    }

    /// The first outcome on the staging list.
    fn take_one_staged(&self) -> Option<Arc<dyn Completion>> {
        if !self.has_pending_publish() {
            return None;
        }
        let mut staging = lock(&self.to_publish);
        let first = staging.cells.pop_front();
        self.staged
            .store(!staging.cells.is_empty(), Ordering::Release);
        first
    }

    /// Publishes `cells` (outcomes this thread drained) and what is staged:
    /// those without done-callbacks at once, then those with one, one at a
    /// time, the others staged meanwhile. A callback may wait on a future
    /// of the same batch: the wait then takes it from the staging list,
    /// where it would otherwise sit in this thread's hands for ever. At
    /// most as many as were staged once `cells` were: what others stage
    /// meanwhile is handed over, not left to keep this caller publishing.
    /// `around(true)` runs before the callbacks, `around(false)` after (to
    /// step off the doorbell). True if there was any outcome.
    fn publish_in_turn(
        &self,
        cells: impl IntoIterator<Item = Arc<dyn Completion>>,
        mut around: impl FnMut(bool),
    ) -> bool {
        let (any, _) = self.publish_or_stage(cells);
        let staged = if self.has_pending_publish() {
            lock(&self.to_publish).cells.len()
        } else {
            0
        };
        if staged > 0 {
            around(true);
            for _ in 0..staged {
                match self.take_one_staged() {
                    Some(c) => c.publish(),
                    None => break,
                }
            }
            around(false);
            if self.has_pending_publish() {
                self.hand_over_staged();
            }
        }
        any || staged > 0
    }

    pub(crate) fn has_pending_publish(&self) -> bool {
        self.staged.load(Ordering::Acquire)
    }

    /// Whether a thread that drains this pool has something to do now: a
    /// result to read, or outcomes staged for publishing (what a sleeper
    /// checks before and after it sleeps on the doorbell).
    pub(crate) fn has_work(&self) -> bool {
        self.results_pending() || self.has_pending_publish()
    }

    /// Publishes `cells` from a thread counted as awake on the parent
    /// doorbell: those without done-callbacks at once, the others off the
    /// doorbell. While this thread counts as awake no worker rings it, so a
    /// long callback run there would leave the callers asleep on it to
    /// their naps (up to [`TICK`]) for every result. True if there was any.
    pub(super) fn publish_awake(
        &self,
        cells: impl IntoIterator<Item = Arc<dyn Completion>>,
    ) -> bool {
        let bell = self.region.parent_bell();
        self.publish_in_turn(cells, |before| {
            if before {
                bell.leave();
            } else {
                bell.enter();
            }
        })
    }

    /// The manager's last act: publishes what is staged, and makes every
    /// later [`publish_later`](Self::publish_later) publish by itself (a
    /// thread that failed a dead worker's tasks may stage them after the
    /// manager saw the pool finished).
    pub(crate) fn stop_publishing_later(&self) {
        lock(&self.to_publish).manager_gone = true;
        self.hand_over_staged();
    }

    /// Blocks a caller until `done()` or `deadline`, sleeping on the parent
    /// doorbell and draining result rings itself when a worker rings it.
    /// While any caller does this the manager steps off the doorbell, so a
    /// result costs one wake-up instead of two (worker → manager → caller).
    ///
    /// One caller thread at a time holds the doorbell ([`Pool::bell_owner`]),
    /// draining and publishing for all; the others sleep on their own
    /// notifiers, which a publish fires for their tasks alone. (All on the
    /// doorbell, every result woke every one of them: 32 threads each
    /// waiting on its own tasks ran 1.8 times slower.) The holder's own
    /// nested waits (in a done-callback or a codec's decode it runs) hold it
    /// too, as they did when every waiter slept there. When the holder lets
    /// go it wakes one waiting thread to take over; and a waiting thread that
    /// napped [`TICK`] without news drains once itself, in case both the
    /// holder and the manager are busy in long callbacks.
    pub(crate) fn wait_on_bell(
        &self,
        mut done: impl FnMut() -> bool,
        deadline: Option<Instant>,
        notify: &Arc<crate::future::Notify>,
    ) -> bool {
        let me = thread_token();
        loop {
            let nested = self.bell_owner.load(Ordering::Acquire) == me;
            if nested
                || self
                    .bell_owner
                    .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let _release = (!nested).then_some(BellRelease(self));
                return self.hold_bell(&mut done, deadline, notify);
            }
            if done() {
                return true;
            }
            let Some(nap) = next_nap(deadline) else {
                // One look at the rings first: the holder and the manager
                // may both be busy in callbacks.
                self.drain_all(false);
                return done();
            };
            lock(&self.bell_waiters).push(notify.clone());
            let fired = notify.wait_until(Some(Instant::now() + nap));
            lock(&self.bell_waiters).retain(|n| !Arc::ptr_eq(n, notify));
            if !fired && !done() {
                // A nap without news: look at the rings once.
                self.drain_all(false);
            }
        }
    }

    /// [`Pool::wait_on_bell`] for the thread holding the doorbell.
    fn hold_bell(
        &self,
        done: &mut impl FnMut() -> bool,
        deadline: Option<Instant>,
        notify: &crate::future::Notify,
    ) -> bool {
        let bell = self.region.parent_bell();
        self.standby.fetch_add(1, Ordering::SeqCst);
        bell.enter();
        let mut drained = Vec::new();
        let finished = loop {
            if self.results_pending() {
                self.drain_into(false, &mut drained);
            }
            // Outcomes staged for the manager too (a `done()` elsewhere may
            // have drained this caller's result): the manager may be busy
            // in a long callback. Done-callbacks run off the doorbell:
            // while this thread counts as awake on it, no worker rings it,
            // and a callback may take long (or shut a pool down).
            self.publish_in_turn(drained.drain(..), |before| {
                if before {
                    bell.leave();
                    if self.standby.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.manager_wake.fire();
                    }
                } else {
                    self.standby.fetch_add(1, Ordering::SeqCst);
                    bell.enter();
                }
            });
            if done() {
                break true;
            }
            let Some(nap) = next_nap(deadline) else {
                break false;
            };
            if !self.sleep_on_bell(nap, || self.has_work() || done() || notify.take()) {
                continue;
            }
        };
        bell.leave();
        if self.standby.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last caller leaves: the manager takes the doorbell back.
            self.manager_wake.fire();
        }
        // Dekker re-check: a result published while we counted as awake
        // woke nobody.
        self.drain_all_surely();
        finished || done()
    }

    pub(crate) fn region_arc(&self) -> Arc<Region> {
        self.region.clone()
    }

    /// Drains without spinning (for `done()` and `poll`). Done-callbacks are
    /// left to the manager thread (this may be an async runtime's thread),
    /// unless this is one of the pool's own threads: a callback there
    /// polling another future would wait on itself.
    pub(crate) fn poll_results(&self) {
        if !self.has_work() || self.forked() {
            return;
        }
        if self.on_pool_thread() {
            // Staged outcomes too: this thread may be the one meant to
            // publish them.
            self.drain_all(false);
        } else {
            self.drain_staging_callbacks();
        }
    }

    /// Begins shutdown; see [`crate::ProcessPoolExecutor::shutdown`].
    pub(crate) fn shutdown(&self, wait: bool, cancel_futures: bool, kill_workers: bool) {
        if self.forked() {
            tracing::warn!("shutdown of an executor in a fork()ed child of its creator: ignored (its workers are the parent's)");
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut st = self.state();
            st.shutdown = true;
            if cancel_futures || kill_workers {
                dropped = st.drain_queue();
            }
            if kill_workers {
                st.killing = true;
                for w in st.workers.iter_mut().flatten() {
                    w.kill_reason.get_or_insert(Error::ShutdownExecutor);
                    let _ = w.pidfd.kill(rustix::process::Signal::KILL);
                }
            }
            st.exit_idle_workers();
        }
        // Outside the state lock: cancelling or failing a task runs its
        // callbacks, which may call back into the pool.
        for q in dropped {
            // A task whose future is cancelling it right now is left to
            // that cancel.
            if cancel_futures {
                q.cell.try_cancel();
            } else {
                q.cell.try_end(Error::ShutdownExecutor);
            }
        }
        self.wake_threads();
        if wait {
            self.join_threads();
        }
    }

    pub(crate) fn wake_threads(&self) {
        self.watchdog_wake.notify();
        self.region.parent_bell().wake_all();
    }

    fn join_threads(&self) {
        if self.on_pool_thread() {
            // Called from a callback on one of our own threads: joining
            // would deadlock; the threads finish on their own.
            return;
        }
        // Joined under the lock: a second caller waits for the first one's
        // joins instead of finding nothing to join and returning early.
        let mut threads = lock(&self.threads);
        for t in threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Whether the calling thread is one of the pool's own (manager or
    /// watchdog), which must never sleep waiting for a result.
    pub(crate) fn on_pool_thread(&self) -> bool {
        let me = std::thread::current().id();
        self.thread_ids.get().is_some_and(|ids| ids.contains(&me))
    }

    /// True once shutdown was requested and no worker is left.
    pub(crate) fn finished(&self) -> bool {
        let st = self.state();
        (st.shutdown || st.broken.is_some())
            && st.queue.is_empty()
            && st.workers.iter().all(Option::is_none)
    }

    /// A one-line-per-worker dump of the dispatch state, for diagnosing hangs.
    pub(crate) fn debug_state(&self) -> String {
        let st = self.state();
        let mut out = format!(
            "queue={} shutdown={} broken={:?}\n",
            st.queue.len(),
            st.shutdown,
            st.broken
        );
        for (i, w) in st.workers.iter().enumerate() {
            let slot = self.region.slot(i as u32);
            match w {
                Some(w) => out += &format!(
                    "slot {i}: pid={} ready={} exiting={} died={:?} in_flight={:?} down_used={} up_used={} worker_awake={}\n",
                    w.pid,
                    w.ready,
                    w.exiting,
                    w.died,
                    w.in_flight.iter().map(|c| c.id()).collect::<Vec<_>>(),
                    slot.down_header().used(),
                    slot.up_header().used(),
                    slot.bell().awake()
                ),
                None => out += &format!("slot {i}: empty\n"),
            }
        }
        out
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> crate::stats::Stats {
        let st = self.state();
        let c = st.stats;
        let (completed, failed, cancelled, aborted) = self.ends.read();
        crate::stats::Stats {
            workers_alive: st
                .workers
                .iter()
                .flatten()
                .filter(|w| w.died.is_none())
                .count(),
            queued: st.queue.len(),
            // Not the tasks a stop ended already, which stay in flight
            // until their worker skips them or dies.
            running: st
                .workers
                .iter()
                .flatten()
                .flat_map(|w| &w.in_flight)
                .filter(|c| !c.is_finished())
                .count(),
            submitted: c.submitted,
            completed,
            failed,
            cancelled,
            aborted,
            crashed: c.crashed,
            respawned: c.respawned,
            rerun: c.rerun,
        }
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The claim word of slot `i`, through which the tasks a dead worker
    /// never started are told apart and run again; `None` where nothing is
    /// run again (the worker could not guard its ring: see
    /// [`Region::rings_protectable`]).
    fn rerun_claim(&self, i: usize) -> Option<&Claim> {
        self.region
            .rings_protectable()
            .then(|| self.region.slot(i as u32).claim())
    }
}

impl State {
    fn check_open(&self) -> Result<()> {
        if let Some(cause) = &self.broken {
            return Err(Error::BrokenProcessPool {
                cause: cause.clone(),
            });
        }
        if self.shutdown {
            return Err(Error::ShutdownExecutor);
        }
        Ok(())
    }

    /// Tasks a worker may hold: [`DEPTH`] once every slot has a ready
    /// worker, one while some are still starting, or always without
    /// prefetching.
    fn depth(&self) -> usize {
        if !self.prefetch {
            return 1;
        }
        let starting = self
            .workers
            .iter()
            .flatten()
            .any(|w| !w.ready && !w.exiting);
        if starting || self.alive() < self.want {
            1
        } else {
            DEPTH
        }
    }

    /// The ready worker with the fewest tasks, if one has room.
    fn least_loaded(&self) -> Option<usize> {
        let depth = self.depth();
        let mut best: Option<(usize, usize)> = None;
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(w) = w {
                if w.has_room(depth, self.max_tasks_per_child)
                    && best.map_or(true, |(_, n)| w.in_flight.len() < n)
                {
                    best = Some((i, w.in_flight.len()));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Copies a task into worker `i`'s ring; false if the ring is full.
    fn push_to<B: AsRef<[u8]>>(
        &mut self,
        i: usize,
        cell: &Arc<dyn Completion>,
        message: Encoded<B>,
    ) -> Result<Option<Encoded<B>>> {
        let Some(w) = self.workers[i].as_mut() else {
            return Ok(Some(message));
        };
        match message.try_send(&mut w.sender, TAG_TASK) {
            Ok(None) => {}
            Ok(Some(back)) => return Ok(Some(back)),
            Err((e, back)) if e.peer_gone() => {
                // A large message's descriptor found the worker's end of the
                // socket closed: it died (its death is on its way), or a
                // task closed that descriptor, and no large message can
                // reach it again. It gets nothing more and retires after
                // what it holds (its ring still works), and the pool
                // replaces it; the task goes to another worker, a few times
                // at most (workers whose initializer closes the socket
                // would pass it round for ever), then fails with the error.
                if !w.exiting {
                    tracing::warn!(
                        pid = w.pid,
                        error = %e,
                        "a worker's descriptor socket is closed (it died, or a task or the initializer \
                         closed its descriptors): it retires"
                    );
                    w.exiting = true;
                    w.send_exit();
                }
                if cell.may_run_again() {
                    return Ok(Some(back));
                }
                return Err(e.into());
            }
            Err((e, _)) => return Err(e.into()),
        }
        w.in_flight.push_back(cell.clone());
        cell.mark_sent();
        w.wake();
        Ok(None)
    }

    /// Moves queued tasks into worker `i` while it has room. A task that
    /// cannot be sent (no memory for its message, a broken socket) is failed
    /// and added to `failed`, for the caller to publish once it has let go
    /// of the state lock; the others wait for the next refill.
    fn refill(&mut self, i: usize, failed: &mut Vec<Arc<dyn Completion>>) {
        let depth = self.depth();
        loop {
            let Some(w) = self.workers[i].as_ref() else {
                return;
            };
            if !w.has_room(depth, self.max_tasks_per_child) {
                return;
            }
            let Some(q) = self.queue.pop_front() else {
                return;
            };
            if !q.cell.set_running() {
                // Cancelled by its future, which had yet to take it out of
                // the queue (it counts the cancel: `forget_queued`).
                self.deadlines.forget(q.cell.id());
                continue;
            }
            let queue::Queued { cell, message } = q;
            match self.push_to(i, &cell, message) {
                Ok(None) => {}
                Ok(Some(message)) => {
                    cell.requeued();
                    self.queue.push_front(queue::Queued { cell, message });
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not hand a task to a worker");
                    self.deadlines.forget(cell.id());
                    cell.stage_error(e);
                    failed.push(cell);
                    // The others wait: the cause (a dead worker's socket, no
                    // memory or descriptors for now) may well hit them too.
                    // The worker's replacement, its next result, or the
                    // manager's next round (`refill_idle`) refills it.
                    return;
                }
            }
        }
    }

    /// Ends the in-flight tasks of the dead worker in slot `i`
    /// ([`Worker::fail_in_flight`]) and queues again, in front, those that
    /// never started ([`State::run_again`]). What it returns is published
    /// outside the state lock ([`Pool::publish_ended`]).
    fn end_dead_tasks(
        &mut self,
        i: usize,
        status: loky_ipc::ExitStatus,
        keep_pinned: bool,
        rerun: Option<&Claim>,
    ) -> Ended {
        let mut ended = Ended::default();
        let Some(w) = self.workers[i].as_mut() else {
            return ended;
        };
        let again;
        (ended.failed, again) = w.fail_in_flight(status, keep_pinned, rerun, &mut self.deadlines);
        self.run_again(again, &mut ended.not_sent);
        ended
    }

    /// Queues `again` (tasks a dead worker never started, in their order)
    /// in front of the waiting tasks, and hands out what the live workers
    /// have room for; tasks that could not be sent go to `failed`, as in
    /// [`State::refill`]. In a broken pool, whose queue nobody drains any
    /// more, they fail at once.
    fn run_again(&mut self, again: Vec<queue::Queued>, failed: &mut Vec<Arc<dyn Completion>>) {
        if let Some(cause) = &self.broken {
            // Pending again (`requeued`): out of a concurrent cancel's reach
            // first, as in the watchdog's `startup_failed`.
            for q in again {
                self.deadlines.forget(q.cell.id());
                if !q.cell.claim_end() {
                    continue;
                }
                q.cell.stage_error(Error::BrokenProcessPool {
                    cause: cause.clone(),
                });
                failed.push(q.cell);
            }
            return;
        }
        self.stats.rerun += again.len() as u64;
        for q in again.into_iter().rev() {
            self.queue.push_front(q);
        }
        self.refill_all(failed);
    }

    /// [`State::refill`] of every worker.
    fn refill_all(&mut self, failed: &mut Vec<Arc<dyn Completion>>) {
        for i in 0..self.workers.len() {
            self.refill(i, failed);
        }
    }

    /// Takes every queued task out; their time limits go too.
    fn drain_queue(&mut self) -> Vec<queue::Queued> {
        let drained: Vec<_> = self.queue.drain().collect();
        for q in &drained {
            self.deadlines.forget(q.cell.id());
        }
        drained
    }

    /// During shutdown: tells idle workers to exit once the queue is empty.
    fn exit_idle_workers(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        for w in self.workers.iter_mut().flatten() {
            if w.in_flight.is_empty() && !w.exiting && w.died.is_none() {
                w.exiting = true;
                w.send_exit();
            }
        }
    }

    /// Lets each worker's sender drop the one-off spill buffers its worker
    /// has read ([`Sender::collect`]).
    fn collect_spills(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            w.sender.collect();
        }
    }

    /// Workers neither retiring nor dead: those that count toward the
    /// pool's size.
    fn staying(&self) -> usize {
        self.workers
            .iter()
            .flatten()
            .filter(|w| !w.exiting && w.died.is_none())
            .count()
    }

    pub(crate) fn alive(&self) -> usize {
        self.workers.iter().flatten().count()
    }
}

impl Worker {
    /// Whether the pool killed this worker (its tasks get the reason).
    fn killed_by_us(&self) -> bool {
        self.kill_reason.is_some() || self.task_kill.is_some()
    }

    /// Counts this worker's end in `stats`: a crash unless it exited
    /// cleanly or the pool killed it (its replacement is counted when it
    /// starts). Called once per worker, by the first to see its death: the
    /// early path (which also sets `died`), or the reaping if `died` is
    /// still unset.
    fn count_end(&self, stats: &mut crate::stats::Counters, clean: bool) {
        if !clean && !self.killed_by_us() {
            stats.crashed += 1;
        }
    }

    /// Ready, not retiring, not dead or dying (its lifeline broke, or it
    /// was reaped: the death paths drain its results, and a refill then
    /// must not hand it new tasks), not being killed by us: may be given
    /// tasks (one sent to a worker that is going would die with it).
    fn takes_work(&self) -> bool {
        self.ready
            && !self.exiting
            && !self.dying
            && !self.reaped
            && self.died.is_none()
            && !self.killed_by_us()
    }

    /// Whether it takes one more task now, holding up to `depth`, and up to
    /// `max_tasks` in its life (those it ran and those it holds): a task
    /// queued in its ring past its last would run before the exit message
    /// that retires it. Not while a task it holds is withdrawn and not
    /// skipped yet: its slot's claim word remembers one withdrawal, so the
    /// next task it could be asked to withdraw waits for that skip.
    fn has_room(&self, depth: usize, max_tasks: Option<u64>) -> bool {
        let held = self.in_flight.len();
        self.takes_work()
            && held < depth
            && max_tasks.map_or(true, |n| self.tasks_done.saturating_add(held as u64) < n)
            && self.withdrawn.is_none()
    }

    /// Ends the in-flight tasks of this dead worker: returns those that
    /// fail, with their errors, and those to run again elsewhere; counts
    /// and logs the death the first time.
    ///
    /// The tasks after the last one the worker started (its slot's claim
    /// word tells; the worker starts its tasks in order) never started:
    /// each is handed back, message and all, to be queued again in front,
    /// unless the pool is stopping it (shutdown, or its own time limit or
    /// cancel), it holds shared arrays, it ran again too often already
    /// ([`crate::future::MAX_RUNS_AGAIN`]), or its message cannot be had
    /// back (a large one comes back in its spill buffer, which the worker
    /// mapped read-only, unless the buffer reads as freed: see
    /// `Sender::take_unreleased`). The others, which may have run, fail.
    ///
    /// A task whose time limit fell in a pass of [`Pool::expire_deadlines`]
    /// that has yet to stop it is being stopped too: it fails with
    /// `TimeLimit`, whatever the worker died of (the pass may have killed
    /// it to stop another of its tasks).
    ///
    /// Only with `rerun` (the slot's claim word): the worker guarded its
    /// task ring against its own stray writes
    /// ([`Region::protect_for_slot`]), so the messages read back are the
    /// ones the parent wrote.
    ///
    /// With `keep_pinned`, tasks holding shared arrays stay in flight: only
    /// the reaped process is surely done with them (another of its threads
    /// may still run for a moment after the main thread started to exit).
    /// The failed tasks' time limits go from `deadlines`; those of the tasks
    /// handed back stay.
    ///
    /// Only for a worker whose main thread will never run again: reaped, or
    /// seen exiting (it takes the worker's task messages back, see
    /// `unstarted_messages`).
    fn fail_in_flight(
        &mut self,
        status: loky_ipc::ExitStatus,
        keep_pinned: bool,
        rerun: Option<&Claim>,
        deadlines: &mut deadlines::Deadlines,
    ) -> (Failures, Vec<queue::Queued>) {
        let error = if let Some(e) = &self.died {
            e.clone()
        } else {
            let running = self.in_flight.front().map_or(0, |c| c.id());
            if !self.killed_by_us() {
                tracing::warn!(pid = self.pid, %status, task = running, in_flight = self.in_flight.len(), "worker died");
            }
            let error = self.kill_reason.clone().unwrap_or(Error::TerminatedWorker {
                pid: self.pid,
                status,
                task: running,
            });
            self.died = Some(error.clone());
            error
        };
        let mut failed = Vec::new();
        let mut again = Vec::new();
        let mut kept = VecDeque::new();
        // The worker starts its tasks in order, and its slot's claim word
        // holds the key of the last one it started: the tasks after that
        // one never started, whatever was (or was not) read of its results.
        // Loads of a word the dead worker can no longer change.
        // A key the parent does not know (a stray write of the dying
        // worker) proves nothing: then nothing runs again.
        let first_unstarted = rerun.and_then(|claim| {
            match self
                .in_flight
                .iter()
                .rposition(|c| claim.last_started_is(c.id()))
            {
                Some(p) => Some(p + 1),
                None => claim.last_started_is(self.last_ran).then_some(0),
            }
        });
        let mut unstarted = match first_unstarted {
            Some(first) => self.unstarted_messages(first),
            None => HashMap::new(),
        };
        for (k, c) in self.in_flight.drain(..).enumerate() {
            if keep_pinned && c.has_pins() {
                kept.push_back(c);
                continue;
            }
            let own_error = match &self.task_kill {
                Some((id, e)) if *id == c.id() => Some(e.clone()),
                // Its time limit fell, and the pass that stops it has yet to
                // get to it (its worker may have died for the stop of
                // another of its tasks): it is being stopped all the same.
                _ if deadlines.fell(c.id()) => Some(Error::TimeLimit),
                _ => None,
            };
            let stopping = own_error.is_some() || self.withdrawn == Some(c.id());
            let never_started = first_unstarted.is_some_and(|first| k >= first);
            if never_started && !stopping && !c.has_pins() {
                match unstarted.remove(&c.id()) {
                    Some(message) if c.may_run_again() && c.requeued() => {
                        again.push(queue::Queued { cell: c, message });
                        continue;
                    }
                    _ => {}
                }
            }
            let e = own_error.unwrap_or_else(|| error.clone());
            deadlines.forget(c.id());
            failed.push((c, e));
        }
        self.in_flight = kept;
        if !again.is_empty() {
            tracing::debug!(
                pid = self.pid,
                tasks = again.len(),
                "tasks that never started on the dead worker are queued again"
            );
        }
        (failed, again)
    }

    /// The messages of the tasks from position `first` in flight, which
    /// this dead worker never started, by task id (none when the pool itself
    /// killed it to shut down, or when its ring reads as corrupt: its tasks
    /// then all fail). A large one comes back in its spill buffer, without a
    /// copy; the spill buffers of the messages not wanted go back to this
    /// process's pool.
    fn unstarted_messages(&mut self, first: usize) -> HashMap<u64, Encoded<Vec<u8>>> {
        if self.kill_reason.is_some() || self.in_flight.len() <= first {
            return HashMap::new();
        }
        let wanted: Vec<u64> = self.in_flight.iter().skip(first).map(|c| c.id()).collect();
        let task_id = |bytes: &[u8]| {
            read_header::<TaskHeader>(bytes)
                .map(|(hdr, _)| hdr.task_id)
                .filter(|id| wanted.contains(id))
        };
        let mut found = HashMap::new();
        let visit = |tag, message: Unreleased<'_>| {
            if tag != TAG_TASK {
                return;
            }
            match message {
                Unreleased::Inline(bytes) => {
                    if let Some(id) = task_id(bytes) {
                        found.insert(id, Encoded::Bytes(bytes.to_vec()));
                    }
                }
                Unreleased::Spilled(m) => {
                    if let Some(id) = task_id(m.bytes()) {
                        found.insert(id, Encoded::Spilled(m));
                    }
                }
                Unreleased::Lost => {}
            }
        };
        // SAFETY: the worker's task receiver is not peeking and never peeks
        // again. Only `fail_in_flight` calls this, and only
        // `State::end_dead_tasks` calls that: from `bury`, once the
        // worker's pidfd read as ready, which the kernel reports only when
        // every thread of the process has exited; or from `lifeline_broke`,
        // once the kernel flags the worker's main thread as exiting
        // (`ExitProbe::exiting`: that thread never returns to user space).
        // The main thread is the only one that uses the receiver:
        // `worker::run` makes it there, before `main`, and serves tasks
        // with it, private to its loop.
        let read = unsafe { self.sender.take_unreleased(visit) };
        if let Err(e) = read {
            tracing::warn!(pid = self.pid, error = %e, "the dead worker's task ring is unreadable; its waiting tasks fail");
            return HashMap::new();
        }
        found
    }

    fn wake(&self) {
        // The worker is the only consumer of its bell; ring after publishing.
        self.bell.ring();
    }

    /// Asks the worker to exit once it has run the tasks it holds. The
    /// exit message queues behind them in its task ring; when the ring is
    /// full with those tasks, it is owed and sent again after the next
    /// result ([`State::complete_in_state`] calls [`Self::retry_exit`]).
    /// A full ring signals only a worker that holds no task (nothing of it
    /// is lost); a broken ring (an error sending) signals it in any case.
    fn send_exit(&mut self) {
        self.exit_owed = false;
        match self.sender.try_send(TAG_EXIT, &[]) {
            Ok(true) => self.wake(),
            Ok(false) if !self.in_flight.is_empty() => self.exit_owed = true,
            Ok(false) => self.terminate("its task ring is full with no task in flight"),
            Err(e) => self.terminate(&e.to_string()),
        }
    }

    /// Sends the exit message owed since a full ring refused it.
    fn retry_exit(&mut self) {
        if self.exit_owed {
            self.send_exit();
        }
    }

    fn terminate(&self, why: &str) {
        tracing::warn!(
            pid = self.pid,
            why,
            "cannot send the exit message; terminating the worker"
        );
        let _ = self.pidfd.kill(rustix::process::Signal::TERM);
    }
}

/// The initializer message: a `TaskHeader` (task id 0) and the archived
/// argument, built once per pool and sent to every new worker.
pub(crate) fn init_message(trampoline: i64, arg: &[u8]) -> Vec<u8> {
    let hdr = TaskHeader {
        task_id: 0,
        trampoline,
    };
    let mut v = bytemuck::bytes_of(&hdr).to_vec();
    v.extend_from_slice(arg);
    v
}

/// How deep pools may nest (a task starting a pool whose task starts a
/// pool ...).
pub(crate) const MAX_NESTING: u32 = 3;
/// Carries the nesting depth to workers.
pub(crate) const ENV_DEPTH: &str = "LOKY_NESTING_DEPTH";

fn nesting_depth() -> u32 {
    std::env::var(ENV_DEPTH)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn child_depth() -> String {
    (nesting_depth() + 1).to_string()
}

/// How long the manager sleeps between housekeeping rounds.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// A number for the calling thread, never 0, unique in the process.
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// Lets go of a pool's doorbell (see [`Pool::wait_on_bell`]) and wakes one
/// thread waiting to take it over.
struct BellRelease<'a>(&'a Pool);

impl Drop for BellRelease<'_> {
    fn drop(&mut self) {
        self.0.bell_owner.store(0, Ordering::Release);
        let next = lock(&self.0.bell_waiters).first().cloned();
        if let Some(next) = next {
            next.fire();
        }
    }
}

/// How long a waiter sleeps before it looks again: at most [`TICK`], and
/// not past `deadline`; `None` once that has passed.
fn next_nap(deadline: Option<Instant>) -> Option<Duration> {
    let now = Instant::now();
    match deadline {
        Some(d) if now >= d => None,
        Some(d) => Some((d - now).min(TICK)),
        None => Some(TICK),
    }
}

/// Physical memory plus swap: no arena can hold more.
pub(crate) fn memory_and_swap() -> usize {
    loky_ipc::sysmem::memory_and_swap().max(64 << 20)
}

/// A fresh identity for an arena, different in every pool of every process
/// (handles carry it so a worker can tell a foreign one).
fn arena_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}
