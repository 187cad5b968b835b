//! Waiting on several futures: `wait` and `as_completed`, as in
//! `concurrent.futures`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::future::{Future, Notify};

/// When [`wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// When every future is done (or the timeout passes).
    AllCompleted,
    /// When any future is done.
    FirstCompleted,
    /// When any future fails; like `AllCompleted` if none does.
    FirstException,
}

/// The outcome of [`wait`]: indices into the slice that was passed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitResult {
    /// Futures that are done.
    pub done: Vec<usize>,
    /// Futures that are not (the timeout passed first).
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
    let deadline = timeout.map(|t| Instant::now() + t);
    let notify = Arc::new(Notify::default());
    loop {
        let done: Vec<usize> = (0..futures.len())
            .filter(|&i| futures[i].is_done_now())
            .collect();
        let finished = match return_when {
            ReturnWhen::AllCompleted => done.len() == futures.len(),
            ReturnWhen::FirstCompleted => !done.is_empty() || futures.is_empty(),
            ReturnWhen::FirstException => {
                done.len() == futures.len() || done.iter().any(|&i| futures[i].failed_now())
            }
        };
        if finished || deadline.is_some_and(|d| Instant::now() >= d) {
            let not_done = (0..futures.len()).filter(|i| !done.contains(i)).collect();
            return WaitResult { done, not_done };
        }
        let mut any_done = false;
        for f in futures.iter().filter(|f| !f.is_done_now()) {
            any_done |= f.listen(&notify);
        }
        if any_done {
            continue;
        }
        if let Some(f) = futures.iter().find(|f| !f.is_done_now()) {
            // Drain rings ourselves for a moment before sleeping.
            if f.spin_a_little(deadline) {
                continue;
            }
        }
        notify.wait_until(deadline);
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
        futures,
        yielded: vec![false; futures.len()],
        remaining: futures.len(),
        deadline: timeout.map(|t| Instant::now() + t),
        notify: Arc::new(Notify::default()),
        timed_out: false,
    }
}

/// Iterator returned by [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<'a, R> {
    futures: &'a [Future<R>],
    yielded: Vec<bool>,
    remaining: usize,
    deadline: Option<Instant>,
    notify: Arc<Notify>,
    timed_out: bool,
}

impl<'a, R: Send + 'static> Iterator for AsCompleted<'a, R> {
    type Item = Result<&'a Future<R>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.timed_out {
            return None;
        }
        loop {
            if let Some(i) =
                (0..self.futures.len()).find(|&i| !self.yielded[i] && self.futures[i].is_done_now())
            {
                self.yielded[i] = true;
                self.remaining -= 1;
                return Some(Ok(&self.futures[i]));
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.timed_out = true;
                return Some(Err(Error::Timeout));
            }
            let mut any_done = false;
            for (i, f) in self.futures.iter().enumerate() {
                if !self.yielded[i] {
                    any_done |= f.listen(&self.notify);
                }
            }
            if any_done {
                continue;
            }
            if let Some(f) = self
                .futures
                .iter()
                .enumerate()
                .find(|(i, _)| !self.yielded[*i])
                .map(|(_, f)| f)
            {
                if f.spin_a_little(self.deadline) {
                    continue;
                }
            }
            self.notify.wait_until(self.deadline);
        }
    }
}
