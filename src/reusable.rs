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
///
/// It takes every option of [`ProcessPoolExecutorBuilder`], under the same
/// name, with the same meaning and the same checks (a bad value is an
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) at
/// [`get`](Self::get) rather than at `build`), plus
/// [`kill_workers`](Self::kill_workers). Every option but `max_workers`
/// takes part in "same configuration?": asked for with another value of
/// any of them, `get` gives a new executor. An option left unset is its
/// default, so `prefetch(true)` asks for the same executor as no `prefetch`
/// at all; [`arena_limit`](Self::arena_limit) is the exception. The
/// environment is the same when the workers would see the same variables
/// (in any order; a variable set twice counts with its last value). An
/// initializer is the same when it is the same function with an argument
/// that encodes to the same bytes.
///
/// ```
/// let ex = loky::get_reusable_executor().max_workers(1).prefetch(false).get()?;
/// let same = loky::get_reusable_executor().max_workers(1).prefetch(false).get()?;
/// assert!(ex.same_pool(&same));
/// let other = loky::get_reusable_executor().max_workers(1).get()?; // prefetching
/// assert!(!other.same_pool(&ex));
/// # Ok::<(), loky::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReusableExecutorBuilder {
    builder: ProcessPoolExecutorBuilder,
    kill_workers: bool,
}

/// Defines options that hand their arguments on to the held
/// [`ProcessPoolExecutorBuilder`], each documented by a link to the option
/// of the same name there (and whatever follows it here): one definition
/// of the forwarding, and one place for each option's documentation.
macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),+);)+) => {$(
        #[doc = concat!("See [`ProcessPoolExecutorBuilder::", stringify!($name), "`].")]
        $(#[$doc])*
        pub fn $name(mut self, $($arg: $ty),+) -> Self {
            self.builder = self.builder.$name($($arg),+);
            self
        }
    )+};
}

impl ReusableExecutorBuilder {
    forward! {
        ///
        /// Default [`cpu_count()`](crate::cpu_count). The only option the
        /// executor changes in place (see [`get_reusable_executor`]).
        fn max_workers(n: usize);
        fn idle_timeout(timeout: Duration);
        fn env(key: impl Into<std::ffi::OsString>, value: impl Into<std::ffi::OsString>);
        fn max_tasks_per_child(n: u64);
        fn memory_limit(bytes: u64);
        fn hard_memory_limit(bytes: u64);
        ///
        /// Growing in place pins the new workers by the same plan.
        fn pin(pinning: crate::Pinning);
        fn ring_capacity(bytes: usize);
        fn prefetch(on: bool);
        fn spin(d: Duration);
        fn keep_freed_memory(d: Duration);
        ///
        /// Another limit is a new executor with a new arena: the
        /// [`SharedVec`](crate::SharedVec)s of the old one stay in the old
        /// one's arena (the new one refuses them with
        /// [`Error::ForeignArena`](crate::Error::ForeignArena)). Left unset,
        /// the limit is worked out when the executor starts, so setting it,
        /// even to that very value, asks for another executor than leaving
        /// it unset.
        fn arena_limit(bytes: usize);
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
                // Every option is a field of `Config`, compared by its
                // derived `PartialEq` (the initializer as its message: the
                // function's offset and the encoded argument); only
                // `max_workers` may differ, for a resize.
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
                // The pool's own shutdown: the executor's would also let the
                // last drop of `old` go without waiting for the threads.
                old.pool().shutdown(false, true, true);
            }
            // Otherwise it lives on until its other holders drop it:
            // replacing it never fails someone else's `submit`.
        }
        Ok(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_reaches_the_reusable_pool() {
        // The only test of this binary that uses the reusable executor.
        let ex = get_reusable_executor()
            .max_workers(1)
            .ring_capacity(1 << 16)
            .spin(Duration::from_micros(7))
            .prefetch(false)
            .hard_memory_limit(1 << 40)
            .pin(crate::Pinning::Cores)
            .arena_limit(1 << 20)
            .keep_freed_memory(Duration::from_secs(9))
            .get()
            .unwrap();
        let c = &ex.pool().config;
        assert_eq!(c.ring_capacity, 1 << 16);
        assert_eq!(c.spin, Duration::from_micros(7));
        assert!(!c.prefetch);
        assert_eq!(c.hard_memory_limit, Some(1 << 40));
        assert_eq!(c.pin, crate::Pinning::Cores);
        assert_eq!(c.arena_limit, Some(1 << 20));
        assert_eq!(c.keep_freed, Duration::from_secs(9));
    }

    #[test]
    fn bad_values_are_refused_as_by_the_executor_builder() {
        // Checked before the reusable executor is looked at: this does not
        // touch it.
        for bad in [
            get_reusable_executor().hard_memory_limit(0),
            get_reusable_executor().ring_capacity(3),
            get_reusable_executor().arena_limit(0),
            get_reusable_executor().spin(Duration::MAX),
        ] {
            assert!(matches!(bad.get(), Err(crate::Error::InvalidConfig(_))));
        }
    }
}
