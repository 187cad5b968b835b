//! `Future<R>`: the handle to a task's eventual result, in the manner of
//! `concurrent.futures.Future`, and a `std::future::Future` too.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pool::Pool;

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const FINISHED: u8 = 2;
/// Cancelled before it ran, outcome not published yet: no worker may get it.
const CANCELLING: u8 = 3;

/// Wakes a thread blocked on one or more futures (`result`, `wait`,
/// `as_completed`).
#[derive(Debug, Default)]
pub(crate) struct Notify {
    fired: Mutex<bool>,
    cond: Condvar,
    /// The regions whose parent doorbells a waiter may sleep on instead of
    /// `cond` (the pools of the futures it waits for): all are rung.
    bells: Vec<Arc<loky_ipc::Region>>,
}

impl Notify {
    /// A notifier whose waiter sleeps on any of these regions' parent
    /// doorbells.
    pub(crate) fn on_bells(regions: Vec<Arc<loky_ipc::Region>>) -> Self {
        Self {
            bells: regions,
            ..Self::default()
        }
    }

    pub(crate) fn fire(&self) {
        *lock(&self.fired) = true;
        self.cond.notify_all();
        for region in &self.bells {
            region.parent_bell().wake_all();
        }
    }

    /// Consumes a pending notification; true if there was one.
    pub(crate) fn take(&self) -> bool {
        std::mem::take(&mut *lock(&self.fired))
    }

    /// Waits until fired (then re-arms) or until `deadline`; whether it
    /// was fired.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut fired = lock(&self.fired);
        while !*fired {
            match deadline {
                None => fired = self.cond.wait(fired).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    fired = self
                        .cond
                        .wait_timeout(fired, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        std::mem::take(&mut *fired)
    }
}

/// The indices of the futures (of one `wait` or `as_completed`) that
/// finished since last asked, in the order they finished.
#[derive(Debug)]
pub(crate) struct FinishedSet {
    indices: Mutex<Vec<usize>>,
    notify: Arc<Notify>,
}

impl FinishedSet {
    /// A set whose `notify` (see [`Future::notifier`]) is fired at each
    /// finish.
    pub(crate) fn new(notify: Arc<Notify>) -> Self {
        Self {
            indices: Mutex::new(Vec::new()),
            notify,
        }
    }

    fn push(&self, i: usize) {
        lock(&self.indices).push(i);
        self.notify.fire();
    }

    /// Whether any index is waiting to be taken.
    pub(crate) fn any(&self) -> bool {
        !lock(&self.indices).is_empty()
    }

    /// Moves the finished indices to the end of `out`.
    pub(crate) fn take(&self, out: &mut Vec<usize>) {
        out.append(&mut lock(&self.indices));
    }

    /// The notifier fired at each finish.
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks cannot leave the data
    // inconsistent in a way that matters more than a hang would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Callback<R> = Box<dyn FnOnce(&Result<R>) + Send>;

enum Listener<R> {
    Thread(Arc<Notify>),
    /// One of the futures of a `wait` or `as_completed`, by its index (a
    /// weak reference: a waiter that left leaves nothing alive behind).
    Indexed(Weak<FinishedSet>, usize),
    Waker(Waker),
    Callback(Callback<R>),
}

struct Slot<R> {
    outcome: Option<Result<R>>,
    taken: bool,
    /// `finish` has taken the outcome to run the callbacks: nothing more
    /// is staged.
    closing: bool,
    /// The error of the final outcome, if it is one (kept apart from
    /// `outcome`, which may be lent to a callback or taken).
    error: Option<Error>,
    listeners: Vec<Listener<R>>,
}

/// The shared state of one task: written by whoever completes it, read by
/// the [`Future`] handle.
pub(crate) struct TaskCell<R> {
    pub(crate) id: u64,
    elapsed_ns: std::sync::atomic::AtomicU64,
    state: AtomicU8,
    /// The finished outcome is lent to done-callbacks (moved out of the
    /// slot while they run, see [`TaskCell::lend`]): it cannot be taken
    /// yet. Written under the slot's lock; read without it to poll.
    lent: AtomicBool,
    slot: Mutex<Slot<R>>,
    pool: Weak<Pool>,
}

impl<R> std::fmt::Debug for TaskCell<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCell")
            .field("id", &self.id)
            .field("state", &self.state)
            .finish()
    }
}

/// What the pool needs from a task of any result type.
pub(crate) trait Completion: Send + Sync {
    fn id(&self) -> u64;
    /// Marks the task as about to be handed to a worker. False if it was
    /// cancelled (or otherwise finished) meanwhile.
    fn set_running(&self) -> bool;
    /// Undoes [`Completion::set_running`]: the worker's ring was full, or
    /// the worker died before it started the task, and the task waits in
    /// the parent again (so it can still be cancelled). False if it was not
    /// running (it already has its outcome).
    fn requeued(&self) -> bool;
    /// Counts a worker death before the task started; whether it may run
    /// again ([`MAX_RUNS_AGAIN`]).
    fn may_run_again(&self) -> bool;
    /// Records that the task's bytes are in a worker's ring: from now on
    /// only the pool releases its pins, once the worker is done with it (or
    /// the pool withdrew it before it started).
    fn mark_sent(&self);
    /// Stores the outcome decoded from a worker's result message; does not
    /// wake anyone yet (see [`Completion::publish`]).
    fn stage_bytes(&self, status: u32, elapsed_ns: u64, bytes: &[u8]);
    /// Stores a failure; does not wake anyone yet.
    fn stage_error(&self, error: Error);
    /// Makes a staged outcome visible: wakes waiters, runs callbacks. Must
    /// be called without holding any pool lock.
    fn publish(&self);
    /// Cancels the task if it has not started; true on success.
    fn try_cancel(&self) -> bool {
        self.try_end(Error::Cancelled)
    }
    /// Ends a task that waits in the parent (not handed to a worker) with
    /// `error`, unless someone else is ending it (a cancel in progress) or
    /// it was handed over meanwhile; true if this call ended it.
    fn try_end(&self, error: Error) -> bool;
    /// The first half of [`Completion::try_end`], for a caller that stages
    /// the error and publishes it itself (perhaps later, from another
    /// thread): takes a task that waits in the parent out of the reach of
    /// `cancel`; false if a cancel or another end came first.
    fn claim_end(&self) -> bool;
    /// [`Completion::publish`], but only if that runs no done-callback:
    /// false (nothing published) if one is registered. Decided under the
    /// task's lock, so a callback added meanwhile runs on the thread that
    /// adds it, never on this one.
    fn publish_without_callbacks(&self) -> bool;
    /// Drops what the task kept alive for its worker; called by the pool
    /// once the worker is done with the task (its result came, or it died)
    /// or will never start it (withdrawn while it waited in its ring).
    fn release_pins(&self);
    /// Whether the task holds shared-array pins (which only the worker's
    /// end with the task may release: its result, its death, or a
    /// withdrawal it will honour).
    fn has_pins(&self) -> bool;
    /// Whether the task has finished (its outcome is published).
    fn is_finished(&self) -> bool;
}

impl<R: Send + 'static> TaskCell<R> {
    pub(crate) fn new(id: u64, pool: Weak<Pool>) -> Self {
        Self {
            id,
            elapsed_ns: std::sync::atomic::AtomicU64::new(0),
            state: AtomicU8::new(PENDING),
            lent: AtomicBool::new(false),
            slot: Mutex::new(Slot {
                outcome: None,
                taken: false,
                closing: false,
                error: None,
                listeners: Vec::new(),
            }),
            pool,
        }
    }

    /// Stores `outcome` if none is staged yet.
    pub(crate) fn stage(&self, outcome: Result<R>) {
        let mut slot = lock(&self.slot);
        if Self::open(&slot) {
            slot.outcome = Some(outcome);
        }
    }

    /// Whether an outcome staged now would be kept (none is staged or
    /// final yet).
    pub(crate) fn wants_outcome(&self) -> bool {
        !self.is_done() && Self::open(&lock(&self.slot))
    }

    fn open(slot: &Slot<R>) -> bool {
        slot.outcome.is_none() && !slot.taken && !slot.closing
    }

    /// Time the worker spent on the task (0 until it finished).
    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Relaxed)
    }

    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == FINISHED
    }
}

/// Decodes a result message's payload into `R` (or the error it reports).
pub(crate) type Decoder<R> = fn(u32, &[u8]) -> Result<R>;

pub(crate) struct Cell<R> {
    pub(crate) task: TaskCell<R>,
    pub(crate) decode: Decoder<R>,
    /// What the task keeps alive for its worker (shared-array leases).
    pins: Mutex<crate::shared::Pins>,
    /// Whether `pins` holds any: most tasks carry no shared array, and then
    /// never take the lock.
    pinned: std::sync::atomic::AtomicBool,
    /// Set once the task was handed to a worker: from then on only the pool
    /// may drop the pins (when the worker is done with the task, or the
    /// pool withdrew it before it started).
    sent: std::sync::atomic::AtomicBool,
    /// Times a worker died before it started the task (see
    /// [`Completion::may_run_again`]).
    orphaned: std::sync::atomic::AtomicU32,
}

/// How many times a task whose worker died before starting it runs again;
/// after that it fails with the worker's error. Workers that die before
/// starting anything (something outside the pool kills them) must not keep
/// one task going round for ever.
pub(crate) const MAX_RUNS_AGAIN: u32 = 4;

impl<R> Cell<R> {
    pub(crate) fn new(task: TaskCell<R>, decode: Decoder<R>) -> Self {
        Self {
            task,
            decode,
            pins: Mutex::new(Vec::new()),
            pinned: std::sync::atomic::AtomicBool::new(false),
            sent: std::sync::atomic::AtomicBool::new(false),
            orphaned: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A task that never reached a worker: nothing can still use its pins,
    /// and their writable ranges are the parent's again.
    fn unsend_unless_sent(&self) {
        if !self.sent.load(Ordering::Acquire) {
            crate::shared::unsend(self.take_pins());
        }
    }

    pub(crate) fn set_pins(&self, pins: crate::shared::Pins) {
        if pins.is_empty() {
            return;
        }
        *lock(&self.pins) = pins;
        self.pinned.store(true, Ordering::Release);
    }

    pub(crate) fn take_pins(&self) -> crate::shared::Pins {
        if !self.pinned.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.pins))
    }
}

impl<R: Send + 'static> Completion for Cell<R> {
    fn id(&self) -> u64 {
        self.task.id
    }

    fn is_finished(&self) -> bool {
        self.task.is_done()
    }

    fn set_running(&self) -> bool {
        // PENDING -> RUNNING. A task being cancelled (or finished) is
        // refused: its pins may already be gone.
        self.task
            .state
            .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn requeued(&self) -> bool {
        self.task
            .state
            .compare_exchange(RUNNING, PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn may_run_again(&self) -> bool {
        self.orphaned.fetch_add(1, Ordering::Relaxed) < MAX_RUNS_AGAIN
    }

    fn mark_sent(&self) {
        self.sent.store(true, Ordering::Release);
    }

    fn release_pins(&self) {
        drop(self.take_pins());
    }

    fn has_pins(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }

    fn stage_bytes(&self, status: u32, elapsed_ns: u64, bytes: &[u8]) {
        // A task that already has its outcome (stopped while it waited
        // behind another one in the worker's ring) does not want this one:
        // decoding it would run user code, and drop its value, for nothing.
        // Nor its time: its outcome is not the worker's.
        if !self.task.wants_outcome() {
            return;
        }
        self.task.elapsed_ns.store(elapsed_ns, Ordering::Relaxed);
        self.task.stage((self.decode)(status, bytes));
    }

    fn stage_error(&self, error: Error) {
        self.task.stage(Err(error));
    }

    fn publish(&self) {
        self.unsend_unless_sent();
        self.task.finish(None);
    }

    fn publish_without_callbacks(&self) -> bool {
        self.unsend_unless_sent();
        self.task.finish_without_callbacks()
    }

    fn try_end(&self, error: Error) -> bool {
        if !self.claim_end() {
            return false;
        }
        // Not in a worker: never sent (sending needs PENDING -> RUNNING
        // first), or put back in the queue after its worker died before
        // starting it, which is only done for tasks without pins.
        crate::shared::unsend(self.take_pins());
        self.task.finish(Some(Err(error)));
        true
    }

    fn claim_end(&self) -> bool {
        // Only the state: the pins go when the outcome is published
        // (`publish` gives back those of a task never sent), which callers
        // of this do outside the pool's state lock.
        self.task
            .state
            .compare_exchange(PENDING, CANCELLING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl<R: Send + 'static> TaskCell<R> {
    /// Publishes the staged outcome (or `outcome`): marks the task finished
    /// and wakes every waiter, then runs the callbacks with a view of the
    /// outcome (no lock held), as `concurrent.futures` does: a callback
    /// sees its future done, its exception, and the pool's counts with it.
    /// Idempotent.
    fn finish(&self, outcome: Option<Result<R>>) {
        let (lent, callbacks, listeners) = {
            let mut slot = lock(&self.slot);
            // The first finish wins: another one has published already.
            if slot.closing || self.state.load(Ordering::Acquire) == FINISHED {
                return;
            }
            let outcome = outcome
                .or_else(|| slot.outcome.take())
                .unwrap_or(Err(Error::Cancelled));
            slot.closing = true;
            let callbacks = Self::take_callbacks(&mut slot);
            let listeners = self.settle(&mut slot, outcome);
            // Lent to the callbacks while they run; `take` waits meanwhile.
            let lent = if callbacks.is_empty() {
                None
            } else {
                self.lent.store(true, Ordering::Release);
                // The threads waiting to take the value wake now (it is
                // finished), find it lent and wait on: they are woken again
                // when the callbacks give it back ([`TaskCell::lend`]).
                for l in &listeners {
                    if let Listener::Thread(n) = l {
                        slot.listeners.push(Listener::Thread(n.clone()));
                    }
                }
                slot.outcome.take()
            };
            (lent, callbacks, listeners)
        };
        // A waker that panics must not leave the value lent for ever.
        let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wake(listeners);
        }));
        if let Some(outcome) = lent {
            self.lend(outcome, callbacks);
        }
        if let Err(panic) = woken {
            std::panic::resume_unwind(panic);
        }
    }

    /// The done-callbacks registered in `slot`, taken out of it.
    fn take_callbacks(slot: &mut Slot<R>) -> Vec<Callback<R>> {
        let mut callbacks = Vec::new();
        for l in std::mem::take(&mut slot.listeners) {
            match l {
                Listener::Callback(cb) => callbacks.push(cb),
                other => slot.listeners.push(other),
            }
        }
        callbacks
    }

    /// Runs `callbacks` on the finished `outcome`, lent out of the slot
    /// (`lent`), then those added meanwhile (by any thread: see
    /// [`TaskCell::run_with_outcome`]), and gives the outcome back.
    fn lend(&self, outcome: Result<R>, mut callbacks: Vec<Callback<R>>) {
        loop {
            for cb in callbacks.drain(..) {
                run_callback(cb, &outcome, self.id, self.address());
            }
            let mut slot = lock(&self.slot);
            callbacks = Self::take_callbacks(&mut slot);
            if callbacks.is_empty() {
                slot.outcome = Some(outcome);
                self.lent.store(false, Ordering::Release);
                // Those who found the value lent (`result`, `.await`) wait
                // for it.
                let waiting = std::mem::take(&mut slot.listeners);
                drop(slot);
                self.wake(waiting);
                return;
            }
        }
    }

    /// Identifies this task among the tasks whose callbacks a thread runs.
    fn address(&self) -> usize {
        self as *const Self as usize
    }

    /// Stores the outcome and marks the task finished (under its lock);
    /// returns the listeners to wake.
    fn settle(&self, slot: &mut Slot<R>, outcome: Result<R>) -> Vec<Listener<R>> {
        if let Some(pool) = self.pool.upgrade() {
            pool.ends.count(&outcome);
        }
        slot.error = outcome.as_ref().err().cloned();
        slot.outcome = Some(outcome);
        self.state.store(FINISHED, Ordering::Release);
        std::mem::take(&mut slot.listeners)
    }

    /// Wakes the listeners of a finished task (its callbacks, taken out
    /// before by [`TaskCell::finish`], run apart; any other runs here).
    fn wake(&self, listeners: Vec<Listener<R>>) {
        for l in listeners {
            match l {
                Listener::Thread(n) => n.fire(),
                Listener::Indexed(set, i) => {
                    if let Some(set) = set.upgrade() {
                        set.push(i);
                    }
                }
                Listener::Waker(w) => w.wake(),
                Listener::Callback(cb) => self.run_with_outcome(cb),
            }
        }
    }

    /// [`TaskCell::finish`] with the staged outcome, if no done-callback is
    /// registered (false otherwise, and nothing changes). One critical
    /// section from the check to `FINISHED`: a callback added after it
    /// finds the task finished and runs on its own thread.
    fn finish_without_callbacks(&self) -> bool {
        let listeners = {
            let mut slot = lock(&self.slot);
            if slot.closing || self.state.load(Ordering::Acquire) == FINISHED {
                return true;
            }
            if slot
                .listeners
                .iter()
                .any(|l| matches!(l, Listener::Callback(_)))
            {
                return false;
            }
            let outcome = slot.outcome.take().unwrap_or(Err(Error::Cancelled));
            slot.closing = true;
            self.settle(&mut slot, outcome)
        };
        // No callback among them: checked under the same lock.
        self.wake(listeners);
        true
    }

    /// Runs `cb` (added after the task finished) on the outcome: lent out
    /// of the slot for the call (a concurrent `take` waits meanwhile). If
    /// the outcome is lent already (the task's callbacks are running, on
    /// this thread or another), `cb` joins them and runs on that thread
    /// after them: two threads cannot both hold it.
    fn run_with_outcome(&self, cb: Callback<R>) {
        let outcome = {
            let mut slot = lock(&self.slot);
            if self.lent.load(Ordering::Acquire) {
                slot.listeners.push(Listener::Callback(cb));
                return;
            }
            if slot.taken {
                None
            } else {
                let lent = slot.outcome.take();
                self.lent.store(lent.is_some(), Ordering::Release);
                lent
            }
        };
        match outcome {
            Some(o) => self.lend(o, vec![cb]),
            None => run_callback(cb, &Err(Error::ResultTaken), self.id, self.address()),
        }
    }
}

thread_local! {
    /// The tasks whose done-callbacks this thread is running (innermost
    /// last): a callback waiting for its own future would wait for itself.
    static IN_CALLBACKS_OF: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this thread is running a done-callback of the task at `cell`.
fn in_callback_of(cell: usize) -> bool {
    IN_CALLBACKS_OF
        .try_with(|c| c.borrow().contains(&cell))
        .unwrap_or(false)
}

fn run_callback<R>(cb: Callback<R>, outcome: &Result<R>, id: u64, cell: usize) {
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = IN_CALLBACKS_OF.try_with(|c| c.borrow_mut().pop());
        }
    }
    let _ = IN_CALLBACKS_OF.try_with(|c| c.borrow_mut().push(cell));
    let _running = Running;
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(outcome))).is_err() {
        tracing::error!(
            task = id,
            "a done-callback panicked; the result is still delivered"
        );
    }
}

/// The eventual result of a task submitted to a
/// [`ProcessPoolExecutor`](crate::ProcessPoolExecutor).
///
/// Block with [`result`](Self::result), poll with [`done`](Self::done), or
/// `.await` it from any async runtime (it never blocks a runtime thread).
///
/// ```
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let fut = ex.submit(|x: u64| x * 2, 21)?;
/// assert_eq!(fut.result()?, 42);
/// # Ok::<(), loky::Error>(())
/// ```
///
/// Dropping a future, or giving up an `.await` (a timeout, a client that
/// went away), does not stop its task: it still runs, and takes a worker.
/// To stop it, call [`withdraw`](Self::withdraw) (never kills a worker: a
/// task that started runs on), or [`kill`](Self::kill) (stops it even if
/// it runs, by killing its worker; blocks until the pool has seen the
/// worker die, about a millisecond), for instance from a drop guard:
///
/// ```
/// struct StopOnDrop<'a>(&'a loky::Future<u64>);
/// impl Drop for StopOnDrop<'_> {
///     fn drop(&mut self) {
///         self.0.withdraw(); // false, and nothing happens, if it ended
///     }
/// }
///
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let slow = ex.submit(|ms: u64| { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }, 100)?;
/// let queued = ex.submit(|x: u64| x, 1)?;
/// {
///     let _guard = StopOnDrop(&queued);
///     // ... the request was abandoned before `queued` started
/// }
/// assert!(matches!(queued.result(), Err(loky::Error::Cancelled)));
/// assert_eq!(slow.result()?, 100);
/// # Ok::<(), loky::Error>(())
/// ```
pub struct Future<R> {
    pub(crate) cell: Arc<Cell<R>>,
}

/// [`Future::cancel`] of one task, without its result type.
pub(crate) struct Canceller {
    cell: Arc<dyn Completion>,
    pool: Weak<Pool>,
}

impl Canceller {
    /// As [`Future::cancel`], but true only for the call that cancelled.
    pub(crate) fn cancel(&self) -> bool {
        cancel(&*self.cell, &self.pool)
    }

    /// As [`Future::kill`], but a task that already started is left to
    /// finish: one waiting in the parent or in a worker's ring is
    /// withdrawn, and no worker is killed.
    pub(crate) fn withdraw(&self) -> bool {
        stop(&*self.cell, &self.pool, false)
    }

    /// As [`Future::kill`], without waiting for the pool to see the killed
    /// worker's end.
    pub(crate) fn kill(&self) -> bool {
        stop(&*self.cell, &self.pool, true)
    }
}

/// [`Future::kill`] (with `kill`) or [`Canceller::withdraw`] of task `cell`
/// of `pool`.
fn stop(cell: &dyn Completion, pool: &Weak<Pool>, kill: bool) -> bool {
    if cell.is_finished() {
        return false;
    }
    if cancel(cell, pool) {
        return true;
    }
    match pool.upgrade() {
        // In a fork()ed child the task and its worker are the parent's.
        Some(pool) if !pool.forked() => pool.stop_task(cell.id(), Error::Cancelled, kill),
        _ => false,
    }
}

/// Whether this process is a `fork()`ed child of `pool`'s creator (see
/// [`Pool::forked`]); false once the pool is gone.
fn forked(pool: &Weak<Pool>) -> bool {
    pool.upgrade().is_some_and(|p| p.forked())
}

/// [`Future::cancel`] of task `cell` of `pool`.
fn cancel(cell: &dyn Completion, pool: &Weak<Pool>) -> bool {
    // In a fork()ed child the task and its worker are the parent's.
    if forked(pool) {
        return false;
    }
    let mut cancelled = cell.try_cancel();
    if !cancelled && !cell.is_finished() {
        // A refill marks a task running before it tries the worker's ring,
        // and puts it back in the queue (pending again) if the ring is
        // full, both under the pool's state lock: a task seen running may
        // be in that window. Once the lock was free, it is settled.
        if let Some(pool) = pool.upgrade() {
            drop(pool.state());
            cancelled = cell.try_cancel();
        }
    }
    if cancelled {
        if let Some(pool) = pool.upgrade() {
            pool.forget_queued(cell.id());
        }
    }
    cancelled
}

/// The longest [`Future::kill`] waits for the pool to see the killed
/// worker die (a pidfd the watchdog polls: about a millisecond, unless the
/// process is stuck in the kernel, which delays a `SIGKILL`).
const KILL_SETTLE: Duration = Duration::from_secs(2);

impl<R> std::fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.cell.task.state.load(Ordering::Acquire) {
            PENDING => "pending",
            RUNNING => "running",
            _ => "finished",
        };
        f.debug_struct("Future")
            .field("task", &self.cell.task.id)
            .field("state", &state)
            .finish()
    }
}

impl<R: Send + 'static> Future<R> {
    pub(crate) fn new(cell: Arc<Cell<R>>) -> Self {
        Self { cell }
    }

    /// The id of the task (as reported in [`Error::TerminatedWorker`]):
    /// unique among the tasks of this process, whatever their pool.
    pub fn id(&self) -> u64 {
        self.cell.task.id
    }

    /// Blocks until the task finished and returns its result, taking a
    /// value out of the future (a second call then returns
    /// [`Error::ResultTaken`]; an error is returned again).
    ///
    /// Dropping a future does not cancel its task; call
    /// [`cancel`](Self::cancel) or [`kill`](Self::kill) for that. From one
    /// of this task's own done-callbacks it returns
    /// [`Error::InvalidArgument`] at once (see
    /// [`add_done_callback`](Self::add_done_callback)).
    pub fn result(&self) -> Result<R> {
        self.not_from_own_callback()?;
        self.take_by(None)
    }

    /// An error if this thread is running one of this task's done-callbacks
    /// (or one of a task whose callback runs this one): the outcome is lent
    /// to them until they return, so taking it there would never end.
    pub(crate) fn not_from_own_callback(&self) -> Result<()> {
        if in_callback_of(self.cell.task.address()) {
            return Err(Error::InvalidArgument(
                "a done-callback cannot wait for a future whose callbacks this thread is \
                 running (its own, or an enclosing one's); use the outcome it is given"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Like [`result`](Self::result), giving up with [`Error::Timeout`]
    /// after `timeout` (the task keeps running; call again later).
    pub fn result_timeout(&self, timeout: Duration) -> Result<R> {
        self.not_from_own_callback()?;
        self.take_by(crate::wait::deadline_after(timeout))
    }

    /// Blocks until finished; returns the error the task failed with, or
    /// `None` if it succeeded.
    pub fn exception(&self) -> Option<Error> {
        if !self.wait_done(None) {
            // Only in a fork()ed child (see `wait_until_reached`).
            return Some(crate::pool::forked_error());
        }
        lock(&self.cell.task.slot).error.clone()
    }

    /// Like [`exception`](Self::exception) with a timeout; `Err(Timeout)`
    /// if the task has not finished in time.
    pub fn exception_timeout(&self, timeout: Duration) -> Result<Option<Error>> {
        if !self.wait_done(crate::wait::deadline_after(timeout)) {
            return Err(self.forked_or(Error::Timeout));
        }
        Ok(self.exception())
    }

    /// What cancels this task later from code that does not know `R` (a
    /// `Drop` without bounds): see [`Canceller`].
    pub(crate) fn canceller(&self) -> Canceller {
        Canceller {
            cell: self.cell.clone(),
            pool: self.cell.task.pool.clone(),
        }
    }

    /// Cancels the task if it is still queued in the parent (not handed to
    /// a worker yet); returns whether it is cancelled (true again once
    /// the future has finished cancelled, as in `concurrent.futures`, its
    /// callbacks running or not). Its done-callbacks run on this thread,
    /// before `cancel` returns, as in `concurrent.futures`. A task a worker
    /// holds cannot be cancelled this way, even one waiting in its ring (as
    /// in `concurrent.futures`); [`kill`](Self::kill) stops those.
    pub fn cancel(&self) -> bool {
        cancel(&*self.cell, &self.cell.task.pool) || self.cancelled_now()
    }

    /// Finished with [`Error::Cancelled`], without polling the pool.
    fn cancelled_now(&self) -> bool {
        self.ended_with(|e| matches!(e, Error::Cancelled))
    }

    /// Finished (no polling of the pool) with an error that `which` picks.
    fn ended_with(&self, which: impl Fn(&Error) -> bool) -> bool {
        self.cell.task.is_done() && lock(&self.cell.task.slot).error.as_ref().is_some_and(which)
    }

    /// Stops the task even if it is running: a task still waiting (in the
    /// parent, or in a worker's ring, not started yet) is withdrawn and
    /// never runs, and no worker is killed for it; a running one is
    /// stopped by killing its worker process, which the pool replaces (also
    /// a waiting one that its worker started meanwhile, or whose worker is
    /// still to skip another withdrawn task: see
    /// [`guide::faults`](crate::guide::faults)). When it returns true the
    /// future has ended with [`Error::Cancelled`] (results the worker
    /// already sent are read first: a task that finished meanwhile is not
    /// killed), and the shared arrays the task held are free again: a kill
    /// blocks until the pool has seen its worker die, a millisecond or so
    /// (at most 2 s for a process the system is slow to end,
    /// after which the future ends as soon as it does). The done-callbacks
    /// of a task killed while it ran run on the pool's thread, never on
    /// this one; those of a task stopped before it started run on this
    /// thread before `kill` returns, as [`cancel`](Self::cancel)'s do.
    /// Returns false if the task had already finished, or if another stop
    /// came first (an earlier `kill`, its time limit, a shutdown), whose
    /// outcome the future keeps.
    ///
    /// A task that was waiting behind it in the killed worker's ring (at
    /// most one) runs again on another worker, or, where it cannot (see
    /// [`Error::TerminatedWorker`]), fails with that error.
    pub fn kill(&self) -> bool {
        let stopped = stop(&*self.cell, &self.cell.task.pool, true);
        if stopped {
            self.settle_after_kill(Instant::now() + KILL_SETTLE);
        }
        stopped
    }

    /// Waits, until `deadline`, for the pool to publish the outcome of a
    /// task just stopped: without draining the pool, as a plain waiter
    /// would, since that could run other tasks' done-callbacks on this
    /// thread, a user's, which may hold a lock they take (the pool's
    /// manager runs them). On one of the pool's own threads nobody else
    /// would publish it: there it drains the pool, as [`Future::result`]
    /// does.
    fn settle_after_kill(&self, deadline: Instant) {
        let pools: Vec<Arc<Pool>> = self.pool().into_iter().collect();
        let done = || self.cell.task.is_done();
        if crate::pool::drain_if_pool_thread(&pools, done, Some(deadline)).is_some() {
            return;
        }
        let notify = Arc::new(Notify::default());
        while !self.listen(&notify) && Instant::now() < deadline {
            notify.wait_until(Some(deadline));
        }
    }

    /// Stops the task if no worker has started it, and never kills one: a
    /// task waiting in the parent or in a worker's ring (behind the task
    /// that worker runs, see
    /// [`prefetch`](crate::ProcessPoolExecutorBuilder::prefetch)) is
    /// withdrawn, and the future ends with [`Error::Cancelled`]; a running
    /// one is left to finish. Between [`cancel`](Self::cancel), which
    /// reaches only tasks still in the parent, and [`kill`](Self::kill):
    /// what a scheduler wants when it no longer needs a result but would
    /// not lose the work under way. Returns true if it withdrew the task;
    /// false if it runs or ended, and also, rarely, for a task waiting in a
    /// worker's ring behind another task withdrawn a moment before that the
    /// worker has yet to skip (a worker skips one withdrawn task at a
    /// time): that one then runs. A withdrawn task's done-callbacks run on
    /// this thread before `withdraw` returns, as [`cancel`](Self::cancel)'s
    /// do.
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let nap = |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms));
    /// let first = ex.submit(nap, 300)?;
    /// let second = ex.submit(nap, 100)?; // waits in the worker's ring
    /// while !second.running() {
    ///     std::thread::yield_now(); // until handed to the worker
    /// }
    /// assert!(!second.cancel(), "in the worker already");
    /// assert!(second.withdraw());
    /// assert!(matches!(second.result(), Err(loky::Error::Cancelled)));
    /// first.result()?; // the worker went on with it, not killed
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn withdraw(&self) -> bool {
        stop(&*self.cell, &self.cell.task.pool, false)
    }

    /// True if the task was cancelled.
    pub fn cancelled(&self) -> bool {
        self.done() && self.cancelled_now()
    }

    /// True while a worker holds the task: running it, or holding it in
    /// its ring behind the task it runs (see
    /// [`prefetch`](crate::ProcessPoolExecutorBuilder::prefetch)), as in
    /// `concurrent.futures`, where a task taken into the call queue reads
    /// as running.
    pub fn running(&self) -> bool {
        self.cell.task.state.load(Ordering::Acquire) == RUNNING
    }

    /// How long the worker spent on the task, as it measured it: decoding
    /// the argument, running the task and encoding its result (not the
    /// wait in queues, nor the trip back). `None` until the task finished,
    /// and for a task that no worker finished (cancelled, withdrawn, or its
    /// worker died); `Some` for one that panicked. A scheduler can learn
    /// task costs from it.
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let nap = |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms));
    /// let f = ex.submit(nap, 20)?;
    /// f.result()?;
    /// assert!(f.elapsed().unwrap() >= std::time::Duration::from_millis(20));
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn elapsed(&self) -> Option<Duration> {
        if !self.cell.task.is_done() {
            return None;
        }
        let ns = self.cell.task.elapsed_ns();
        (ns > 0).then(|| Duration::from_nanos(ns))
    }

    /// True once the task finished, failed or was cancelled.
    pub fn done(&self) -> bool {
        if !self.cell.task.is_done() {
            if let Some(pool) = self.cell.task.pool.upgrade() {
                pool.poll_results();
            }
        }
        self.cell.task.is_done()
    }

    /// Calls `f` with the outcome when the task finishes, exactly once; at
    /// once if it already has: on this thread, or, while the task's
    /// callbacks are running, on their thread right after them (below).
    /// `f` gets the outcome by
    /// reference, `&Ok(value)` or `&Err(error)`: the one that
    /// [`result`](Self::result) returns, or `&Err(Error::ResultTaken)` if
    /// `result` already took the value. A panic in `f` is logged and does
    /// not affect the result.
    ///
    /// As in `concurrent.futures`, the task is finished before its
    /// callbacks run: in `f`, [`done`](Self::done) is true,
    /// [`exception`](Self::exception) answers, waiters have been woken and
    /// [`stats`](crate::ProcessPoolExecutor::stats) counts the task. So
    /// the callbacks of two futures that finish at about the same time may
    /// each see both done (count completions with an atomic, not with
    /// `done()`, to start a task once).
    ///
    /// `f` runs on whichever thread publishes the outcome, which need not
    /// be one of the pool's: the pool's manager thread; or any thread of
    /// yours that blocks on a future of the same pool (`result`,
    /// `result_timeout`, `exception`, [`wait`](fn@crate::wait),
    /// [`as_completed`](fn@crate::as_completed), a map's iterator), since
    /// such a thread publishes every result it finds, not only the one it
    /// waits for (`done` and `.await` leave callbacks to the manager, or to
    /// such a thread); or the thread that ends the
    /// task with [`cancel`](Self::cancel), [`kill`](Self::kill) or
    /// [`shutdown`](crate::ProcessPoolExecutor::shutdown). At the very end
    /// of a shutdown, once the manager has exited, it runs on whichever
    /// thread publishes the outcome: a thread of yours that waits on or
    /// polls a future of the pool (`done` and `.await` included), or the
    /// one that cancels, kills or shuts down. Therefore:
    ///
    /// * `f` must not take a lock that a thread may hold while it blocks on
    ///   or polls a future of this pool: `f` may run on that very thread,
    ///   or on the manager thread that the poller waits for (a
    ///   `std::sync::Mutex` then deadlocks or panics);
    /// * `f` should be short: the thread that runs it does nothing else
    ///   meanwhile, and [`result`](Self::result) on another thread waits
    ///   until the callbacks have returned (the value is lent to them).
    ///   Send long work elsewhere (a channel to a thread of your own).
    ///
    /// While the callbacks run, the value is theirs: from inside `f`,
    /// `result` (or `result_timeout`) and `.await` on this same future
    /// fail at once with [`Error::InvalidArgument`]: they would wait for
    /// `f` to return, that is, for themselves. Use `f`'s argument. A
    /// callback added while the callbacks run (from `f`, or from another
    /// thread) joins them: it runs on that thread, after them.
    pub fn add_done_callback(&self, f: impl FnOnce(&Result<R>) + Send + 'static) {
        {
            let mut slot = lock(&self.cell.task.slot);
            if !self.cell.task.is_done() {
                slot.listeners.push(Listener::Callback(Box::new(f)));
                return;
            }
        }
        self.cell.task.run_with_outcome(Box::new(f));
    }

    /// Waits (until `deadline`) for the outcome, finished and not lent to
    /// done-callbacks, and takes it; `Err(Timeout)` if the deadline came
    /// first.
    fn take_by(&self, deadline: Option<Instant>) -> Result<R> {
        loop {
            // Finished and given back by the done-callbacks, with the work
            // `wait_done` does for the pool meanwhile.
            if !self.wait_until_reached(true, deadline) {
                return Err(self.forked_or(Error::Timeout));
            }
            // `None`: a callback added meanwhile borrowed it: wait again.
            if let Some(r) = self.try_take(&mut lock(&self.cell.task.slot)) {
                return r;
            }
        }
    }

    /// Takes the outcome out of `slot` (a value once; an error is kept
    /// and given again), or `None` if it is not there yet: not finished,
    /// or lent to done-callbacks.
    fn try_take(&self, slot: &mut Slot<R>) -> Option<Result<R>> {
        if !self.cell.task.is_done() || self.cell.task.lent.load(Ordering::Acquire) {
            return None;
        }
        Some(match slot.outcome.take() {
            Some(Ok(v)) => {
                slot.taken = true;
                Ok(v)
            }
            Some(Err(e)) => {
                let err = e.clone();
                slot.outcome = Some(Err(e));
                Err(err)
            }
            None => Err(Error::ResultTaken),
        })
    }

    /// Whether the task finished and, with `takeable`, its outcome can be
    /// taken too (not lent to its done-callbacks).
    fn reached(&self, takeable: bool) -> bool {
        self.cell.task.is_done() && !(takeable && self.cell.task.lent.load(Ordering::Acquire))
    }

    /// Waits until done or the deadline; returns whether done. Spins a
    /// little first, draining result rings itself (no thread hop on the
    /// fast path), then sleeps until woken by whoever completes the task.
    pub(crate) fn wait_done(&self, deadline: Option<Instant>) -> bool {
        self.wait_until_reached(false, deadline)
    }

    /// [`wait_done`](Self::wait_done), or with `takeable` also until the
    /// done-callbacks gave the value back (same deadline, same work for the
    /// pool meanwhile: a pool thread that waits keeps its pool going).
    fn wait_until_reached(&self, takeable: bool, deadline: Option<Instant>) -> bool {
        if self.reached(takeable) {
            return true;
        }
        // In a fork()ed child nothing will finish it: the workers and the
        // threads that read their results are the parent's.
        if forked(&self.cell.task.pool) {
            return false;
        }
        self.block_until(
            || self.reached(takeable),
            deadline,
            || {
                let notify = self.notifier();
                (!self.listen_until(&notify, takeable)).then_some(notify)
            },
        )
    }

    /// `other`, or the error of a future waited on in a `fork()`ed child of
    /// its pool's creator.
    fn forked_or(&self, other: Error) -> Error {
        if forked(&self.cell.task.pool) {
            crate::pool::forked_error()
        } else {
            other
        }
    }

    /// A notifier for [`block_until`](Self::block_until): one that wakes a
    /// thread sleeping on this task's pool's doorbell.
    pub(crate) fn notifier(&self) -> Arc<Notify> {
        Arc::new(Notify::on_bells(
            self.pool().map(|p| p.region_arc()).into_iter().collect(),
        ))
    }

    /// This task's pool, while it lives.
    pub(crate) fn pool(&self) -> Option<Arc<Pool>> {
        self.cell.task.pool.upgrade()
    }

    /// Blocks until `done()` or `deadline`; returns whether `done()`. Spins
    /// a little first, draining this task's pool's result rings itself,
    /// then calls `register` for a notifier to sleep with (one whose waiter
    /// sleeps on this pool's doorbell, see [`notifier`](Self::notifier),
    /// fired by whatever makes `done()` true; `None` if `done()` already
    /// holds) and sleeps on the pool's doorbell.
    pub(crate) fn block_until(
        &self,
        done: impl Fn() -> bool,
        deadline: Option<Instant>,
        register: impl FnOnce() -> Option<Arc<Notify>>,
    ) -> bool {
        // In a fork()ed child the rings are the parent's: never read them
        // (a wait there sleeps until its deadline; nothing finishes).
        if let Some(pool) = self.pool().filter(|p| !p.forked()) {
            if pool.spin_for_results(&done, deadline) {
                return true;
            }
            // A pool thread waits without sleeping on a doorbell, and keeps
            // its own pool going meanwhile.
            if let Some(finished) =
                crate::pool::drain_if_pool_thread(std::slice::from_ref(&pool), &done, deadline)
            {
                return finished;
            }
            // Sleep on the doorbell the workers ring: the first result wakes
            // this thread directly, with no hop through the manager thread.
            let Some(notify) = register() else {
                return true;
            };
            return pool.wait_on_bell(&done, deadline, &notify);
        }
        let Some(notify) = register() else {
            return true;
        };
        loop {
            if done() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            notify.wait_until(deadline);
        }
    }

    /// Registers `set` to receive index `i` when the task finishes; true
    /// (and nothing registered) if it is done already.
    pub(crate) fn listen_indexed(&self, set: &Arc<FinishedSet>, i: usize) -> bool {
        let mut slot = lock(&self.cell.task.slot);
        if self.cell.task.is_done() {
            return true;
        }
        // Forget sets whose waiters left.
        slot.listeners
            .retain(|l| !matches!(l, Listener::Indexed(set, _) if set.strong_count() == 0));
        slot.listeners
            .push(Listener::Indexed(Arc::downgrade(set), i));
        false
    }

    /// Registers `notify` to be fired on completion (once per notifier);
    /// true if already done.
    pub(crate) fn listen(&self, notify: &Arc<Notify>) -> bool {
        self.listen_until(notify, false)
    }

    /// [`listen`](Self::listen); with `takeable`, until the outcome can be
    /// taken, not only until the task finished: a notifier registered
    /// while the value is lent to done-callbacks fires when they give it
    /// back.
    fn listen_until(&self, notify: &Arc<Notify>, takeable: bool) -> bool {
        let mut slot = lock(&self.cell.task.slot);
        if self.reached(takeable) {
            return true;
        }
        // Forget notifiers whose waiters left, and do not register twice.
        slot.listeners
            .retain(|l| !matches!(l, Listener::Thread(n) if Arc::strong_count(n) == 1));
        if !slot
            .listeners
            .iter()
            .any(|l| matches!(l, Listener::Thread(n) if Arc::ptr_eq(n, notify)))
        {
            slot.listeners.push(Listener::Thread(notify.clone()));
        }
        false
    }

    pub(crate) fn is_done_now(&self) -> bool {
        self.cell.task.is_done()
    }

    /// Done with an error other than [`Error::Cancelled`]: what
    /// `ReturnWhen::FirstException` waits for (a cancelled future raised
    /// nothing, as in `concurrent.futures`).
    pub(crate) fn raised_now(&self) -> bool {
        self.ended_with(|e| !matches!(e, Error::Cancelled))
    }
}

impl<R: Send + 'static> std::future::Future for Future<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        self.not_from_own_callback()?;
        // Reads the pool's result rings first (what `done` does).
        if !self.done() && forked(&self.cell.task.pool) {
            // Nothing finishes it in a fork()ed child of its pool's creator.
            return Poll::Ready(Err(crate::pool::forked_error()));
        }
        let mut slot = lock(&self.cell.task.slot);
        // Taken under the lock that found it ready: a callback added from
        // another thread cannot borrow it in between (which would block
        // this runtime thread until that callback returned).
        if let Some(r) = self.try_take(&mut slot) {
            return Poll::Ready(r);
        }
        // Not finished, or finished with its value lent to its callbacks:
        // woken when it can be taken (see [`TaskCell::lend`]). Only the
        // waker of the latest poll must be woken (`Future` is not `Clone`,
        // so one task polls it at a time): replace the previous one, so
        // that polls with a new waker each time do not pile them up.
        match slot
            .listeners
            .iter_mut()
            .find(|l| matches!(l, Listener::Waker(_)))
        {
            Some(Listener::Waker(w)) => w.clone_from(cx.waker()),
            _ => slot.listeners.push(Listener::Waker(cx.waker().clone())),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> Cell<u64> {
        Cell::new(TaskCell::new(1, Weak::new()), |_, _| Ok(0))
    }

    #[test]
    fn a_requeued_task_can_run_later_or_be_cancelled() {
        // `refill` marks a task running, may find the ring full and queue it
        // again: it is pending again, so it still runs later, and a cancel
        // meanwhile wins.
        let c = cell();
        assert!(c.set_running());
        assert!(!c.try_cancel(), "a running task cannot be cancelled");
        c.requeued();
        assert!(c.set_running(), "a requeued task runs later");
        c.requeued();
        assert!(c.try_cancel(), "a requeued task can be cancelled");
        assert!(!c.set_running(), "and is then never started");
    }

    #[test]
    fn a_cancelled_task_is_never_started() {
        let c = cell();
        assert!(c.try_cancel());
        assert!(!c.set_running());
    }

    #[test]
    fn waiters_that_left_leave_no_listeners_behind() {
        let f = Future::new(Arc::new(cell()));
        for _ in 0..100 {
            let set = Arc::new(FinishedSet::new(Arc::new(Notify::default())));
            assert!(!f.listen_indexed(&set, 0));
            drop(set);
        }
        assert!(lock(&f.cell.task.slot).listeners.len() <= 1);
        // A live one is told, by index.
        let set = Arc::new(FinishedSet::new(Arc::new(Notify::default())));
        assert!(!f.listen_indexed(&set, 7));
        f.cell.stage_error(Error::TimeLimit);
        f.cell.publish();
        let mut got = Vec::new();
        set.take(&mut got);
        assert_eq!(got, [7]);
        assert!(f.raised_now());
        assert!(f.listen_indexed(&set, 7), "done: nothing to register");
    }

    /// A future with an outcome staged (not published) and a callback
    /// that, once run, says so on the first channel and returns when the
    /// second one says so (or is dropped).
    fn held_by_a_callback() -> (
        Future<u64>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (f, in_callback, release) = with_a_holding_callback();
        f.cell.stage_bytes(crate::protocol::STATUS_OK, 0, &[]);
        (f, in_callback, release)
    }

    /// [`held_by_a_callback`] before its outcome is staged.
    fn with_a_holding_callback() -> (
        Future<u64>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let f = Future::new(Arc::new(cell()));
        let (started, in_callback) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        f.add_done_callback(move |_| {
            let _ = started.send(());
            let _ = released.recv();
        });
        (f, in_callback, release)
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn polls_with_new_wakers_keep_one_and_wake_the_latest() {
        use std::sync::atomic::Ordering;
        let mut f = Future::new(Arc::new(cell()));
        let wakers: Vec<_> = (0..100)
            .map(|_| Arc::new(Count(std::sync::atomic::AtomicUsize::new(0))))
            .collect();
        for w in &wakers {
            let waker = std::task::Waker::from(w.clone());
            let mut cx = Context::from_waker(&waker);
            assert!(std::future::Future::poll(Pin::new(&mut f), &mut cx).is_pending());
        }
        assert_eq!(lock(&f.cell.task.slot).listeners.len(), 1);
        f.cell.stage_error(Error::Cancelled);
        f.cell.publish();
        let woken: Vec<usize> = wakers.iter().map(|w| w.0.load(Ordering::Relaxed)).collect();
        assert_eq!(woken[99], 1, "the latest poll's waker is woken");
        assert_eq!(woken[..99].iter().sum::<usize>(), 0, "{woken:?}");
    }

    #[test]
    fn a_result_waiting_for_a_long_late_callback_does_not_burn_a_core() {
        fn thread_cpu() -> Duration {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: writes only into `ts`.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        }
        let f = Arc::new(Future::new(Arc::new(cell())));
        f.cell.stage_bytes(crate::protocol::STATUS_OK, 0, &[]);
        f.cell.publish();
        let (started, in_callback) = std::sync::mpsc::channel();
        let late = f.clone();
        // Added after completion: it runs at once, on that thread, looking
        // at the outcome (lent to it) for 300 ms.
        let looker = std::thread::spawn(move || {
            late.add_done_callback(move |_| {
                let _ = started.send(());
                std::thread::sleep(Duration::from_millis(300));
            })
        });
        in_callback.recv().expect("the callback runs");
        let cpu = thread_cpu();
        assert_eq!(f.result().expect("the outcome, once given back"), 0);
        let spent = thread_cpu() - cpu;
        looker.join().unwrap();
        // Spinning on yield spends most of the 300 ms on a 2-core machine.
        assert!(spent < Duration::from_millis(100), "{spent:?} of CPU");
    }

    #[test]
    fn a_thread_waiting_before_the_end_gets_the_value_once_callbacks_give_it_back() {
        let (f, in_callback, release) = with_a_holding_callback();
        let waiting = || {
            lock(&f.cell.task.slot)
                .listeners
                .iter()
                .any(|l| matches!(l, Listener::Thread(_)))
        };
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let start = Instant::now();
                (f.result_timeout(Duration::from_secs(10)), start.elapsed())
            });
            // The waiter sleeps on its notifier before the task ends.
            while !waiting() {
                std::thread::sleep(Duration::from_millis(1));
            }
            f.cell.stage_bytes(crate::protocol::STATUS_OK, 0, &[]);
            let cell = f.cell.clone();
            s.spawn(move || cell.publish());
            in_callback.recv().expect("the callback runs");
            // Woken by the end, it finds the value lent and waits on.
            std::thread::sleep(Duration::from_millis(50));
            release.send(()).expect("the callback waits");
            let (outcome, waited) = waiter.join().expect("the waiter returns");
            assert_eq!(outcome.expect("the value, not a timeout"), 0);
            assert!(
                waited < Duration::from_secs(5),
                "woke only after {waited:?}"
            );
        });
    }

    #[test]
    fn an_await_does_not_block_while_callbacks_hold_the_value() {
        use std::sync::atomic::Ordering;
        let (mut f, in_callback, release) = held_by_a_callback();
        let woken = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        std::thread::scope(|s| {
            let release = release;
            let cell = f.cell.clone();
            s.spawn(move || cell.publish());
            in_callback.recv().expect("the callback runs");
            // Finished, its value lent to the callback: pending, not a
            // runtime thread blocked until the callback returns.
            let mut cx = Context::from_waker(&waker);
            assert!(f.done());
            assert!(std::future::Future::poll(Pin::new(&mut f), &mut cx).is_pending());
            assert_eq!(woken.0.load(Ordering::Relaxed), 0);
            release.send(()).expect("the callback waits");
        });
        assert_eq!(
            woken.0.load(Ordering::Relaxed),
            1,
            "woken once the value is back"
        );
        let mut cx = Context::from_waker(&waker);
        match std::future::Future::poll(Pin::new(&mut f), &mut cx) {
            Poll::Ready(Ok(v)) => assert_eq!(v, 0),
            other => panic!("expected the value, got {other:?}"),
        }
    }

    #[test]
    fn the_first_finish_wins() {
        // The callback holds the first finish until the checks below are
        // done.
        let (f, in_callback, release) = held_by_a_callback();
        std::thread::scope(|s| {
            // Dropped if a check fails, which lets the callback return too.
            let release = release;
            s.spawn(|| f.cell.publish());
            in_callback.recv().expect("the callback runs");
            // A time limit falls meanwhile: too late.
            f.cell.stage_error(Error::TimeLimit);
            f.cell.publish();
            assert!(f.done(), "finished before its callbacks run");
            assert!(f.exception().is_none(), "the first finish's outcome stands");
            release.send(()).expect("the callback waits");
        });
        assert!(f.done());
        assert!(!f.raised_now());
        assert!(f.exception().is_none());
        assert_eq!(f.result().expect("the first outcome"), 0);
    }

    #[test]
    fn nothing_is_staged_once_the_outcome_is_being_published() {
        let c = cell();
        c.task.stage(Ok(1));
        {
            // What `finish` does first: take the outcome, close the slot.
            let mut slot = lock(&c.task.slot);
            slot.outcome.take();
            slot.closing = true;
        }
        assert!(!c.task.wants_outcome());
        c.task.stage(Ok(2));
        assert!(
            lock(&c.task.slot).outcome.is_none(),
            "a late outcome is not kept"
        );
    }
}
