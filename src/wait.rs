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

/// Waits for `futures` as `return_when` says, at most `timeout`.
///
/// ```
/// use loky::{wait, ReturnWhen};
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
/// let futs = vec![ex.submit(|x: u64| x + 1, 1)?, ex.submit(|x: u64| x + 1, 2)?];
/// let r = wait(&futs, None, ReturnWhen::AllCompleted);
/// assert_eq!(r.done.len(), 2);
/// # Ok::<(), loky::Error>(())
/// ```
pub fn wait<R: Send + 'static>(
    futures: &[Future<R>],
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
            failed |= watch.order[seen..].iter().any(|&i| futures[i].raised_now());
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
struct Watch<'a, R> {
    futures: &'a [Future<R>],
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

impl<'a, R: Send + 'static> Watch<'a, R> {
    fn new(futures: &'a [Future<R>]) -> Self {
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
            for p in futures.iter().filter_map(Future::pool) {
                if seen.insert(Arc::as_ptr(&p)) {
                    w.pools.push(p);
                }
            }
            // A finish rings the doorbell of every pool in the slice: the
            // waiter sleeps on one of them.
            let regions = w.pools.iter().map(|p| p.region_arc()).collect();
            let set = Arc::new(FinishedSet::new(Arc::new(Notify::on_bells(regions))));
            for (i, f) in futures.iter().enumerate() {
                if f.listen_indexed(&set, i) {
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
        // Everything was registered in `new`: nothing to register here.
        f.block_until(|| set.any(), deadline, || Some(set.notify().clone()))
            || deadline.map_or(true, |d| Instant::now() < d)
    }
}

/// Yields each future as it completes (in completion order); after
/// `timeout`, yields `Err(Error::Timeout)` once and stops.
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
pub fn as_completed<R: Send + 'static>(
    futures: &[Future<R>],
    timeout: Option<Duration>,
) -> AsCompleted<'_, R> {
    AsCompleted {
        watch: Watch::new(futures),
        yielded: 0,
        deadline: timeout.and_then(deadline_after),
        stopped: false,
    }
}

/// Iterator returned by [`as_completed`].
pub struct AsCompleted<'a, R> {
    watch: Watch<'a, R>,
    /// How many of `watch.order` were yielded.
    yielded: usize,
    deadline: Option<Instant>,
    stopped: bool,
}

impl<R> std::fmt::Debug for AsCompleted<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("futures", &self.watch.futures.len())
            .field("yielded", &self.yielded)
            .field("deadline", &self.deadline)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl<'a, R: Send + 'static> Iterator for AsCompleted<'a, R> {
    type Item = Result<&'a Future<R>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.yielded == self.watch.futures.len() || self.stopped {
            return None;
        }
        loop {
            self.watch.collect();
            if let Some(&i) = self.watch.order.get(self.yielded) {
                self.yielded += 1;
                return Some(Ok(&self.watch.futures[i]));
            }
            if !self.watch.block(self.deadline) {
                self.stopped = true;
                return Some(Err(Error::Timeout));
            }
        }
    }
}
