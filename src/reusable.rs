//! The process-wide reusable executor, as Python loky's
//! `get_reusable_executor`.

use std::sync::Mutex;
use std::time::Duration;

use crate::codec::Payload;
use crate::error::Result;
use crate::executor::{ProcessPoolExecutor, ProcessPoolExecutorBuilder};
use crate::future::lock;

static REUSABLE: Mutex<Option<ProcessPoolExecutor>> = Mutex::new(None);

/// Configures the process-wide reusable executor; finish with
/// [`get`](ReusableExecutorBuilder::get).
///
/// Calling it again is cheap and safe from any number of threads at once:
///
/// * same configuration → the same executor;
/// * only `max_workers` differs → the executor is resized in place, up to
///   the larger of the `max_workers` it was created with and
///   [`cpu_count()`](crate::cpu_count) at that time (growing spawns workers;
///   shrinking retires idle workers first and never kills a running task);
/// * anything else differs, `max_workers` grows past that bound, or the pool
///   is broken or shut down → a new executor, with a new arena. The old
///   one is not shut down under other holders' feet: it finishes when its
///   last handle is dropped, unless
///   [`kill_workers`](ReusableExecutorBuilder::kill_workers) asks to kill
///   its workers at once. If this call held its last handle (nobody else
///   kept the old executor), dropping it waits, here, for its queued and
///   running tasks, as Python loky's `get_reusable_executor` does.
///
/// ```
/// use std::time::Duration;
/// let ex = loky::get_reusable_executor().max_workers(2).idle_timeout(Duration::from_secs(2)).get()?;
/// assert_eq!(ex.submit(|x: u64| x + 1, 1)?.result()?, 2);
/// let again = loky::get_reusable_executor().max_workers(2).idle_timeout(Duration::from_secs(2)).get()?;
/// assert!(ex.same_pool(&again));
/// # Ok::<(), loky::Error>(())
/// ```
pub fn get_reusable_executor() -> ReusableExecutorBuilder {
    ReusableExecutorBuilder {
        builder: ProcessPoolExecutor::builder(),
        kill_workers: false,
    }
}

/// Builder returned by [`get_reusable_executor`].
#[derive(Debug, Clone)]
pub struct ReusableExecutorBuilder {
    builder: ProcessPoolExecutorBuilder,
    kill_workers: bool,
}

impl ReusableExecutorBuilder {
    /// See [`ProcessPoolExecutorBuilder::max_workers`] (default `cpu_count()`).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.builder = self.builder.max_workers(n);
        self
    }

    /// See [`ProcessPoolExecutorBuilder::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.builder = self.builder.idle_timeout(timeout);
        self
    }

    /// See [`ProcessPoolExecutorBuilder::env`].
    pub fn env(
        mut self,
        key: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Self {
        self.builder = self.builder.env(key, value);
        self
    }

    /// See [`ProcessPoolExecutorBuilder::initializer`].
    pub fn initializer<F, A>(mut self, f: F, arg: A) -> Self
    where
        F: Fn(A) + Copy + Send + 'static,
        A: Payload,
    {
        self.builder = self.builder.initializer(f, arg);
        self
    }

    /// See [`ProcessPoolExecutorBuilder::max_tasks_per_child`].
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.builder = self.builder.max_tasks_per_child(n);
        self
    }

    /// See [`ProcessPoolExecutorBuilder::memory_limit`].
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.builder = self.builder.memory_limit(bytes);
        self
    }

    /// When the configuration changed and a new executor replaces the old
    /// one: kill the old one's workers (their tasks fail with
    /// `ShutdownExecutor`, its queued tasks with `Cancelled`) instead of
    /// letting them finish.
    pub fn kill_workers(mut self, kill: bool) -> Self {
        self.kill_workers = kill;
        self
    }

    /// Returns the reusable executor, reusing, resizing or replacing it.
    pub fn get(self) -> Result<ProcessPoolExecutor> {
        let config = self.builder.clone().config()?;
        let mut slot = lock(&REUSABLE);
        if let Some(ex) = slot.as_ref() {
            let pool = ex.pool();
            if !pool.is_unusable() {
                let mut current = pool.config.clone();
                current.max_workers = config.max_workers;
                if current == config
                    && (ex.max_workers() == config.max_workers || pool.resize(config.max_workers))
                {
                    return Ok(ex.clone());
                }
            }
        }
        let ex = ProcessPoolExecutor::from_config(config)?;
        tracing::debug!(max_workers = ex.max_workers(), "new reusable executor");
        let old = slot.replace(ex.clone());
        // The old one is shut down (or dropped) without the lock: that runs
        // the callbacks of its tasks, which may well ask for the reusable
        // executor again.
        drop(slot);
        if let Some(old) = old {
            if self.kill_workers {
                old.shutdown(false, true, true);
            }
            // Otherwise it lives on until its other holders drop it:
            // replacing it never fails someone else's `submit`.
        }
        Ok(ex)
    }
}
