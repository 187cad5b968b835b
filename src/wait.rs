//! Waiting on several futures: `wait` and `as_completed`, as in
//! `concurrent.futures`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The instant `timeout` from now, or `None` (no deadline) when that lies
/// beyond what an `Instant` can hold: `Duration::MAX` reads as "for ever".
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
use crate::future::{FinishedSet, Future, Notify};
use crate::pool::Pool;

/// What [`wait`] and [`as_completed`] wait on: a [`Future`] of any result
/// type, or a reference to anything that is. A slice of
/// `&dyn Waitable` mixes futures of different result types (a scheduler's
/// tasks):
///
/// ```
/// use loky::{wait, ReturnWhen, Waitable};
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
/// let count = ex.submit(|s: String| s.len() as u64, "four".to_owned())?;
/// let flag = ex.submit(|x: u8| x > 1, 2)?;
/// let all: [&dyn Waitable; 2] = [&count, &flag];
/// let r = wait(&all, None, ReturnWhen::AllCompleted);
/// assert_eq!(r.done, [0, 1]);
/// assert_eq!((count.result()?, flag.result()?), (4, true));
/// # Ok::<(), loky::Error>(())
/// ```
///
/// Implemented for [`Future`], and for references, `Box`es and `Arc`s of
/// anything that is (so `Vec<Arc<dyn Waitable>>` works too, and crosses
/// threads: every `Waitable` is `Send + Sync`); sealed: not for other
/// types. A `dyn Waitable` waits, and stops its task (a scheduler's table
/// of tasks of mixed result types cancels them through it); keep the typed
/// futures for their results.
///
/// ```
/// use loky::Waitable;
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let nap = |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms));
/// let tasks: Vec<Box<dyn Waitable>> = vec![
///     Box::new(ex.submit(nap, 50)?),
///     Box::new(ex.submit(|s: String| s.len(), "queued".to_owned())?),
/// ];
/// // Stop them all, running or not, whatever their result types.
/// for t in &tasks {
///     t.kill();
/// }
/// assert!(tasks.iter().all(|t| t.done()));
/// # Ok::<(), loky::Error>(())
/// ```
pub trait Waitable: sealed::Sealed + Send + Sync {
    /// The task behind it, for the waiting functions.
    #[doc(hidden)]
    fn watched(&self) -> Watched<'_>;

    /// [`Future::id`], whatever the result type.
    fn id(&self) -> u64 {
        self.watched().0.id()
    }

    /// [`Future::done`], whatever the result type.
    fn done(&self) -> bool {
        self.watched().0.done()
    }

    /// [`Future::cancel`], whatever the result type.
    fn cancel(&self) -> bool {
        self.watched().0.cancel()
    }

    /// [`Future::withdraw`], whatever the result type.
    fn withdraw(&self) -> bool {
        self.watched().0.withdraw()
    }

    /// [`Future::kill`], whatever the result type.
    fn kill(&self) -> bool {
        self.watched().0.kill()
    }
}

/// A task as [`wait`] and [`as_completed`] see it, without its result type
/// (opaque; see [`Waitable`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Watched<'a>(&'a dyn Watchable);

impl std::fmt::Debug for Watched<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched")
    }
}

/// What the waiting functions need of a task, whatever its result type.
pub(crate) trait Watchable {
    fn pool(&self) -> Option<Arc<Pool>>;
    fn listen_indexed(&self, set: &Arc<FinishedSet>, i: usize) -> bool;
    fn raised_now(&self) -> bool;
    /// Blocks until `set` has news or `deadline`; whether it has.
    fn block_on(&self, set: &Arc<FinishedSet>, deadline: Option<Instant>) -> bool;
    fn id(&self) -> u64;
    fn done(&self) -> bool;
    fn cancel(&self) -> bool;
    fn withdraw(&self) -> bool;
    fn kill(&self) -> bool;
}

impl<R: Send + 'static> Watchable for Future<R> {
    fn pool(&self) -> Option<Arc<Pool>> {
        Future::pool(self)
    }
    fn listen_indexed(&self, set: &Arc<FinishedSet>, i: usize) -> bool {
        Future::listen_indexed(self, set, i)
    }
    fn raised_now(&self) -> bool {
        Future::raised_now(self)
    }
    fn block_on(&self, set: &Arc<FinishedSet>, deadline: Option<Instant>) -> bool {
        // Everything was registered when the watch began: nothing to
        // register here.
        self.block_until(|| set.any(), deadline, || Some(set.notify().clone()))
    }
    fn id(&self) -> u64 {
        Future::id(self)
    }
    fn done(&self) -> bool {
        Future::done(self)
    }
    fn cancel(&self) -> bool {
        Future::cancel(self)
    }
    fn withdraw(&self) -> bool {
        Future::withdraw(self)
    }
    fn kill(&self) -> bool {
        Future::kill(self)
    }
}

impl<R: Send + 'static> Waitable for Future<R> {
    fn watched(&self) -> Watched<'_> {
        Watched(self)
    }
}

impl<W: Waitable + ?Sized> Waitable for &W {
    fn watched(&self) -> Watched<'_> {
        (**self).watched()
    }
}

impl<W: Waitable + ?Sized> Waitable for Box<W> {
    fn watched(&self) -> Watched<'_> {
        (**self).watched()
    }
}

impl<W: Waitable + ?Sized> Waitable for Arc<W> {
    fn watched(&self) -> Watched<'_> {
        (**self).watched()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<R> Sealed for super::Future<R> {}
    impl<W: Sealed + ?Sized> Sealed for &W {}
    impl<W: Sealed + ?Sized> Sealed for Box<W> {}
    impl<W: Sealed + ?Sized> Sealed for std::sync::Arc<W> {}
}

/// When [`wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// When every future is done (or the timeout passes).
    AllCompleted,
    /// When any future is done.
    FirstCompleted,
    /// When any future fails (ends with an error other than
    /// [`Error::Cancelled`], as in `concurrent.futures`, where a cancelled
    /// future raised nothing; a task stopped with
    /// [`Future::kill`] is cancelled too); like `AllCompleted` if none does.
    FirstException,
}

/// The outcome of [`wait`]: indices into the slice that was passed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitResult {
    /// Futures that are done.
    pub done: Vec<usize>,
    /// Futures that are not: `wait` returned before them (the condition
    /// held, or the timeout passed).
    pub not_done: Vec<usize>,
}

/// Waits for `futures` as `return_when` says, at most `timeout`. They may
/// come from several pools, and have different result types as a slice of
/// `&dyn Waitable` (see [`Waitable`]).
///
/// ```
/// use loky::{wait, ReturnWhen};
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
/// let futs = vec![ex.submit(|x: u64| x + 1, 1)?, ex.submit(|x: u64| x + 1, 2)?];
/// let r = wait(&futs, None, ReturnWhen::AllCompleted);
/// assert_eq!(r.done.len(), 2);
/// # Ok::<(), loky::Error>(())
/// ```
pub fn wait<W: Waitable>(
    futures: &[W],
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> WaitResult {
    let deadline = timeout.and_then(deadline_after);
    let mut watch = Watch::new(futures);
    let mut failed = false;
    let mut seen = 0;
    loop {
        watch.collect();
        if return_when == ReturnWhen::FirstException {
            failed |= watch.order[seen..]
                .iter()
                .any(|&i| futures[i].watched().0.raised_now());
            seen = watch.order.len();
        }
        let finished = match return_when {
            ReturnWhen::AllCompleted => watch.pending() == 0,
            ReturnWhen::FirstCompleted => !watch.order.is_empty() || futures.is_empty(),
            ReturnWhen::FirstException => watch.pending() == 0 || failed,
        };
        if finished || !watch.block(deadline) {
            let mut done = watch.order;
            done.sort_unstable();
            let not_done = (0..futures.len()).filter(|&i| !watch.is_done[i]).collect();
            return WaitResult { done, not_done };
        }
    }
}

/// The futures of one `wait` or `as_completed`: each registered once, and
/// the finished ones collected as they finish, so that waiting on n futures
/// costs O(n) in all, not O(n) per completion.
struct Watch<'a, W> {
    futures: &'a [W],
    set: Option<Arc<FinishedSet>>,
    is_done: Vec<bool>,
    /// Indices of the finished futures, in the order they were seen to
    /// finish.
    order: Vec<usize>,
    /// The lowest index that may not be done (the one to block on).
    lowest: usize,
    scratch: Vec<usize>,
    /// The pools of the futures, each once.
    pools: Vec<Arc<Pool>>,
}

impl<'a, W: Waitable> Watch<'a, W> {
    fn new(futures: &'a [W]) -> Self {
        let mut w = Self {
            futures,
            set: None,
            is_done: vec![false; futures.len()],
            order: Vec::new(),
            lowest: 0,
            scratch: Vec::new(),
            pools: Vec::new(),
        };
        if !futures.is_empty() {
            let mut seen = std::collections::HashSet::new();
            for p in futures.iter().filter_map(|f| f.watched().0.pool()) {
                if seen.insert(Arc::as_ptr(&p)) {
                    w.pools.push(p);
                }
            }
            // A finish rings the doorbell of every pool in the slice: the
            // waiter sleeps on one of them.
            let regions = w.pools.iter().map(|p| p.region_arc()).collect();
            let set = Arc::new(FinishedSet::new(Arc::new(Notify::on_bells(regions))));
            for (i, f) in futures.iter().enumerate() {
                if f.watched().0.listen_indexed(&set, i) {
                    w.mark(i);
                }
            }
            w.set = Some(set);
        }
        w
    }

    fn mark(&mut self, i: usize) {
        if !std::mem::replace(&mut self.is_done[i], true) {
            self.order.push(i);
        }
    }

    fn pending(&self) -> usize {
        self.futures.len() - self.order.len()
    }

    /// Takes in the futures that finished since the last call.
    fn collect(&mut self) {
        let Some(set) = &self.set else { return };
        set.take(&mut self.scratch);
        for i in std::mem::take(&mut self.scratch) {
            self.mark(i);
        }
    }

    /// Blocks until more futures finish or `deadline`; false once the
    /// deadline has passed (or nothing is left to wait for).
    fn block(&mut self, deadline: Option<Instant>) -> bool {
        while self.lowest < self.futures.len() && self.is_done[self.lowest] {
            self.lowest += 1;
        }
        let (Some(f), Some(set)) = (self.futures.get(self.lowest), &self.set) else {
            return false;
        };
        // Whichever future it would sleep for, nobody else may drain this
        // thread's own pool, if it has one.
        if let Some(done) = crate::pool::drain_if_pool_thread(&self.pools, || set.any(), deadline) {
            return done;
        }
        f.watched().0.block_on(set, deadline) || deadline.map_or(true, |d| Instant::now() < d)
    }
}

/// Yields each future as it completes (in completion order); after
/// `timeout`, yields `Err(Error::Timeout)` once and stops. Like [`wait`],
/// over futures of one result type or a slice of `&dyn Waitable`.
///
/// ```
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
/// let futs: Vec<_> = (0..4u64).map(|i| ex.submit(|x: u64| x * x, i)).collect::<Result<_, _>>()?;
/// let mut total = 0;
/// for f in loky::as_completed(&futs, None) {
///     total += f?.result()?;
/// }
/// assert_eq!(total, 0 + 1 + 4 + 9);
/// # Ok::<(), loky::Error>(())
/// ```
pub fn as_completed<W: Waitable>(futures: &[W], timeout: Option<Duration>) -> AsCompleted<'_, W> {
    AsCompleted {
        watch: Watch::new(futures),
        yielded: 0,
        deadline: timeout.and_then(deadline_after),
        stopped: false,
    }
}

/// Iterator returned by [`as_completed`], over `&W`: the futures (or
/// `&dyn Waitable`s) of the slice it was given.
pub struct AsCompleted<'a, W> {
    watch: Watch<'a, W>,
    /// How many of `watch.order` were yielded.
    yielded: usize,
    deadline: Option<Instant>,
    stopped: bool,
}

impl<W> std::fmt::Debug for AsCompleted<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("futures", &self.watch.futures.len())
            .field("yielded", &self.yielded)
            .field("deadline", &self.deadline)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl<W: Waitable> AsCompleted<'_, W> {
    /// Like `next`, but the position in the slice of the future that
    /// completed: over `&dyn Waitable`s, what finds its typed future.
    ///
    /// ```
    /// use loky::{as_completed, Waitable};
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let (name, size) = (ex.submit(|x: u8| format!("#{x}"), 7)?, ex.submit(|x: u64| x * 2, 21)?);
    /// let all: [&dyn Waitable; 2] = [&name, &size];
    /// let mut done = as_completed(&all, None);
    /// while let Some(i) = done.next_index() {
    ///     match i? {
    ///         0 => assert_eq!(name.result()?, "#7"),
    ///         _ => assert_eq!(size.result()?, 42),
    ///     }
    /// }
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn next_index(&mut self) -> Option<Result<usize>> {
        if self.yielded == self.watch.futures.len() || self.stopped {
            return None;
        }
        loop {
            self.watch.collect();
            if let Some(&i) = self.watch.order.get(self.yielded) {
                self.yielded += 1;
                return Some(Ok(i));
            }
            if !self.watch.block(self.deadline) {
                self.stopped = true;
                return Some(Err(Error::Timeout));
            }
        }
    }
}

impl<'a, W: Waitable> Iterator for AsCompleted<'a, W> {
    type Item = Result<&'a W>;

    fn next(&mut self) -> Option<Self::Item> {
        let futures = self.watch.futures;
        self.next_index().map(|r| r.map(|i| &futures[i]))
    }
}
