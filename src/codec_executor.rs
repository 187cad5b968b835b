//! An executor view that encodes arguments and results with a chosen
//! [`Codec`].

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::codecs::{Codec, Coded};
use crate::error::{Error, Result};
use crate::executor::{decode_with, ProcessPoolExecutor};
use crate::future::Future;
use crate::map::{Map, MapUnordered};
use crate::task::SliceTaskFn;
use crate::task::TaskFn;
use crate::transport::{assert_zero_sized, conjure, offset_of, run_task};

impl ProcessPoolExecutor {
    /// A view of this executor whose tasks encode arguments and results
    /// with codec `C` instead of rkyv: `MsgPack` (feature `serde`) for
    /// serde types, [`Rkyv`](crate::Rkyv), or your own [`Codec`].
    ///
    /// The view shares the pool (it holds a handle, like a clone); each
    /// task's codec is fixed when it is submitted, so views with different
    /// codecs can be used side by side.
    ///
    /// ```
    /// # #[cfg(feature = "serde")] {
    /// use loky::MsgPack;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Reading { sensor: String, celsius: f64 }
    ///
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let serde_ex = ex.with_codec::<MsgPack>();
    /// let hot = serde_ex.submit(|r: Reading| r.celsius > 30.0, Reading { sensor: "a".into(), celsius: 31.5 })?;
    /// assert!(hot.result()?);
    /// let f: Vec<f64> = serde_ex
    ///     .map(|r: Reading| r.celsius * 9.0 / 5.0 + 32.0, vec![Reading { sensor: "b".into(), celsius: 100.0 }])
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(f, [212.0]);
    /// # }
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn with_codec<C: 'static>(&self) -> CodecExecutor<C> {
        CodecExecutor {
            ex: self.clone(),
            _codec: PhantomData,
        }
    }
}

/// A [`ProcessPoolExecutor`] whose arguments and results use codec `C`;
/// made by [`ProcessPoolExecutor::with_codec`].
pub struct CodecExecutor<C> {
    ex: ProcessPoolExecutor,
    _codec: PhantomData<fn() -> C>,
}

impl<C> Clone for CodecExecutor<C> {
    fn clone(&self) -> Self {
        Self {
            ex: self.ex.clone(),
            _codec: PhantomData,
        }
    }
}

impl<C> std::fmt::Debug for CodecExecutor<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecExecutor")
            .field("codec", &std::any::type_name::<C>())
            .field("executor", &self.ex)
            .finish()
    }
}

/// The task a worker runs for `F` under codec `C`: decode with `C`, call
/// `F`, encode with `C`. A closure without captures, so zero-sized.
fn adapt<F, A, R, C>() -> impl Fn(Coded<A, C>) -> Coded<R, C> + Copy + Send + 'static
where
    F: TaskFn<A, R>,
    A: Send + 'static,
    R: Send + 'static,
    C: 'static,
{
    |arg: Coded<A, C>| Coded::new(conjure::<F>()(arg.into_inner()))
}

/// [`adapt`] for a slice task: the slice is read in place, the argument
/// and the result go through `C`.
fn adapt_slice<F, T, A, R, C>() -> impl Fn(&[T], Coded<A, C>) -> Coded<R, C> + Copy + Send + 'static
where
    F: SliceTaskFn<T, A, R>,
    T: bytemuck::Pod,
    A: Send + 'static,
    R: Send + 'static,
    C: 'static,
{
    |data: &[T], arg: Coded<A, C>| Coded::new(conjure::<F>()(data, arg.into_inner()))
}

/// The trampoline offset of `run_task` for the (unnameable) type of `g`.
fn task_offset<G, A, R, C>(_: G) -> i64
where
    G: Fn(Coded<A, C>) -> Coded<R, C> + Copy + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
    C: Codec<A> + Codec<R>,
{
    offset_of(run_task::<G, Coded<A, C>, Coded<R, C>>)
}

/// Decodes a result message with codec `C`.
fn decode_coded<R, C: Codec<R>>(status: u32, bytes: &[u8]) -> Result<R> {
    decode_with(status, bytes, C::decode)
}

impl<C> CodecExecutor<C> {
    /// The underlying executor (whose own `submit`/`map` use rkyv).
    pub fn executor(&self) -> &ProcessPoolExecutor {
        &self.ex
    }

    /// Submits `f(arg)`, encoding `arg` and the result with `C`.
    ///
    /// Same contract as [`ProcessPoolExecutor::submit`]; a failing or
    /// panicking `C::encode` is an [`Error::Codec`] here, a failing decode
    /// (in the worker or the parent) fails only the returned future.
    pub fn submit<F, A, R>(&self, f: F, arg: A) -> Result<Future<R>>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        self.try_submit(f, arg).map_err(|e| e.error)
    }

    /// Like [`submit`](Self::submit), but hands the argument back when the
    /// task could not be submitted (any error [`submit`](Self::submit)
    /// fails with at once: a codec error, a shut-down executor, ...).
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// ex.shutdown(true, false, false);
    /// let big = vec![0u8; 1 << 20];
    /// let rejected = ex.with_codec::<loky::Rkyv>().try_submit(|v: Vec<u8>| v.len(), big).unwrap_err();
    /// assert!(matches!(rejected.error, loky::Error::ShutdownExecutor));
    /// assert_eq!(rejected.arg.len(), 1 << 20); // not lost
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn try_submit<F, A, R>(
        &self,
        f: F,
        arg: A,
    ) -> std::result::Result<Future<R>, SubmitError<A>>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        self.try_submit_until(f, arg, None)
    }

    /// [`try_submit`](Self::try_submit) with an optional time limit.
    fn try_submit_until<F, A, R>(
        &self,
        f: F,
        arg: A,
        deadline: Option<Instant>,
    ) -> std::result::Result<Future<R>, SubmitError<A>>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        let trampoline = task_offset::<_, A, R, C>(adapt::<F, A, R, C>());
        let arg = Coded::<A, C>::new(arg);
        match self.ex.submit_raw(
            trampoline,
            |out| crate::Payload::encode(&arg, out),
            decode_coded::<R, C>,
            deadline,
        ) {
            Ok(fut) => Ok(fut),
            Err(error) => Err(SubmitError {
                error,
                arg: arg.into_inner(),
            }),
        }
    }

    /// Like [`submit`](Self::submit), with a time limit counted from now
    /// (see [`ProcessPoolExecutor::submit_with_timeout`]).
    pub fn submit_with_timeout<F, A, R>(&self, f: F, arg: A, timeout: Duration) -> Result<Future<R>>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        self.try_submit_until(f, arg, crate::wait::deadline_after(timeout))
            .map_err(|e| e.error)
    }

    /// [`ProcessPoolExecutor::submit_slice`] with codec `C` for the argument
    /// and the result (the slice travels as raw bytes, read in place).
    ///
    /// ```
    /// # #[cfg(feature = "serde")] {
    /// let ex = loky::ProcessPoolExecutor::new(1)?;
    /// let data: Vec<f64> = (0..1000).map(f64::from).collect();
    /// let labels = ex.with_codec::<loky::MsgPack>();
    /// let f = |xs: &[f64], name: String| format!("{name}: {}", xs.iter().sum::<f64>());
    /// assert_eq!(labels.submit_slice(f, &data, "total".into())?.result()?, "total: 499500");
    /// # }
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn submit_slice<F, T, A, R>(&self, f: F, data: &[T], arg: A) -> Result<Future<R>>
    where
        F: SliceTaskFn<T, A, R>,
        T: bytemuck::Pod,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        self.submit_slice_until(f, data, arg, None)
    }

    /// [`submit_slice`](Self::submit_slice) with a time limit (see
    /// [`ProcessPoolExecutor::submit_with_timeout`]).
    pub fn submit_slice_with_timeout<F, T, A, R>(
        &self,
        f: F,
        data: &[T],
        arg: A,
        timeout: Duration,
    ) -> Result<Future<R>>
    where
        F: SliceTaskFn<T, A, R>,
        T: bytemuck::Pod,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        self.submit_slice_until(f, data, arg, crate::wait::deadline_after(timeout))
    }

    fn submit_slice_until<F, T, A, R>(
        &self,
        f: F,
        data: &[T],
        arg: A,
        deadline: Option<Instant>,
    ) -> Result<Future<R>>
    where
        F: SliceTaskFn<T, A, R>,
        T: bytemuck::Pod,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        self.ex.submit_slice_as(
            adapt_slice::<F, T, A, R, C>(),
            data,
            Coded::<A, C>::new(arg),
            decode_coded::<R, C>,
            deadline,
        )
    }

    /// [`ProcessPoolExecutor::map`] with codec `C`: lazy, in order, chunked
    /// (chunks use [`Codec::encode_batch`]).
    pub fn map<'a, F, A, R, I>(&self, f: F, input: I) -> CodecMap<'a, R>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        let input = input
            .into_iter()
            .map(Coded::<A, C>::new as fn(A) -> Coded<A, C>);
        CodecMap {
            inner: Box::new(Some(self.ex.map(adapt::<F, A, R, C>(), input))),
        }
    }

    /// [`ProcessPoolExecutor::map_unordered`] with codec `C`: yields
    /// `(input position, outcome)` pairs as chunks complete.
    pub fn map_unordered<'a, F, A, R, I>(&self, f: F, input: I) -> CodecMapUnordered<'a, R>
    where
        F: TaskFn<A, R>,
        A: Send + 'static,
        R: Send + 'static,
        C: Codec<A> + Codec<R>,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        let input = input
            .into_iter()
            .map(Coded::<A, C>::new as fn(A) -> Coded<A, C>);
        CodecMapUnordered {
            inner: Box::new(Some(self.ex.map_unordered(adapt::<F, A, R, C>(), input))),
        }
    }
}

/// Why [`CodecExecutor::try_submit`] refused a task, with the argument.
pub struct SubmitError<A> {
    /// What went wrong.
    pub error: Error,
    /// The argument, handed back.
    pub arg: A,
}

impl<A> std::fmt::Debug for SubmitError<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .field("arg", &std::any::type_name::<A>())
            .finish()
    }
}

impl<A> std::fmt::Display for SubmitError<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl<A> std::error::Error for SubmitError<A> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<A> From<SubmitError<A>> for Error {
    fn from(e: SubmitError<A>) -> Self {
        e.error
    }
}

/// The codec-erased state of a map (the adapter closure's type cannot be
/// named). `None` only transiently, while `chunksize` rebuilds it.
trait MapState<T> {
    fn next_item(&mut self) -> Option<T>;
    fn set_chunksize(&mut self, n: usize);
    fn set_timeout(&mut self, timeout: Duration);
    fn set_isolate_crashes(&mut self);
    /// [`Map::kill`]: stops the map now.
    fn kill(&mut self);
    fn chunks_in_flight(&self) -> usize;
    fn size_hint(&self) -> (usize, Option<usize>);
    /// Attaches `bar`, or the default bar for `None` (`Map::progress`).
    #[cfg(feature = "progress")]
    fn set_progress(&mut self, bar: Option<indicatif::ProgressBar>);
}

impl<G, A, R, C, J> MapState<Result<R>> for Option<Map<G, Coded<A, C>, Coded<R, C>, J>>
where
    G: Fn(Coded<A, C>) -> Coded<R, C> + Copy + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
    C: Codec<A> + Codec<R>,
    J: Iterator<Item = Coded<A, C>>,
{
    #[inline]
    fn next_item(&mut self) -> Option<Result<R>> {
        let item = self.as_mut()?.next()?;
        Some(item.map(Coded::into_inner))
    }

    fn set_chunksize(&mut self, n: usize) {
        *self = self.take().map(|m| m.chunksize(n));
    }

    fn set_timeout(&mut self, timeout: Duration) {
        *self = self.take().map(|m| m.timeout(timeout));
    }

    fn set_isolate_crashes(&mut self) {
        *self = self.take().map(|m| m.isolate_crashes());
    }

    fn kill(&mut self) {
        if let Some(m) = self.take() {
            m.kill();
        }
    }

    fn chunks_in_flight(&self) -> usize {
        self.as_ref().map_or(0, |m| m.chunks_in_flight())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.as_ref().map_or((0, Some(0)), Iterator::size_hint)
    }

    #[cfg(feature = "progress")]
    fn set_progress(&mut self, bar: Option<indicatif::ProgressBar>) {
        *self = self.take().map(|m| match bar {
            Some(bar) => m.progress_with(bar),
            None => m.progress(),
        });
    }
}

impl<G, A, R, C, J> MapState<(usize, Result<R>)>
    for Option<MapUnordered<G, Coded<A, C>, Coded<R, C>, J>>
where
    G: Fn(Coded<A, C>) -> Coded<R, C> + Copy + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
    C: Codec<A> + Codec<R>,
    J: Iterator<Item = Coded<A, C>>,
{
    #[inline]
    fn next_item(&mut self) -> Option<(usize, Result<R>)> {
        let (i, item) = self.as_mut()?.next()?;
        Some((i, item.map(Coded::into_inner)))
    }

    fn set_chunksize(&mut self, n: usize) {
        *self = self.take().map(|m| m.chunksize(n));
    }

    fn set_timeout(&mut self, timeout: Duration) {
        *self = self.take().map(|m| m.timeout(timeout));
    }

    fn set_isolate_crashes(&mut self) {
        *self = self.take().map(|m| m.isolate_crashes());
    }

    fn kill(&mut self) {
        if let Some(m) = self.take() {
            m.kill();
        }
    }

    fn chunks_in_flight(&self) -> usize {
        0
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.as_ref().map_or((0, Some(0)), Iterator::size_hint)
    }

    #[cfg(feature = "progress")]
    fn set_progress(&mut self, bar: Option<indicatif::ProgressBar>) {
        *self = self.take().map(|m| match bar {
            Some(bar) => m.progress_with(bar),
            None => m.progress(),
        });
    }
}

/// Iterator returned by [`CodecExecutor::map`]; behaves like
/// [`Map`](crate::Map).
pub struct CodecMap<'a, R> {
    inner: Box<dyn MapState<Result<R>> + 'a>,
}

/// The builder methods, `Iterator` and `FusedIterator` of the two codec
/// maps, which differ only in their item and in their docs' examples: the
/// docs of `progress` and `progress_with` are given per type.
macro_rules! codec_map_methods {
    (
        $map:ident, $item:ty,
        progress: $(#[$progress:meta])*
        progress_with: $(#[$progress_with:meta])*
    ) => {
        impl<R> $map<'_, R> {
            /// Sends `n` items per task (see [`Map::chunksize`]).
            pub fn chunksize(mut self, n: usize) -> Self {
                self.inner.set_chunksize(n);
                self
            }

            /// Gives the whole map a deadline (see [`Map::timeout`]).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.inner.set_timeout(timeout);
                self
            }

            /// Fails only the items that kill their worker, for items that
            /// may run twice (see [`Map::isolate_crashes`]).
            pub fn isolate_crashes(mut self) -> Self {
                self.inner.set_isolate_crashes();
                self
            }

            /// Stops the map now, killing the workers running its
            /// chunks (see [`Map::kill`]).
            pub fn kill(mut self) {
                self.inner.kill();
            }

            $(#[$progress])*
            #[cfg(feature = "progress")]
            pub fn progress(mut self) -> Self {
                self.inner.set_progress(None);
                self
            }

            $(#[$progress_with])*
            #[cfg(feature = "progress")]
            pub fn progress_with(mut self, bar: indicatif::ProgressBar) -> Self {
                self.inner.set_progress(Some(bar));
                self
            }
        }

        impl<R> Iterator for $map<'_, R> {
            type Item = $item;

            #[inline]
            fn next(&mut self) -> Option<$item> {
                self.inner.next_item()
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.inner.size_hint()
            }
        }

        impl<R> std::iter::FusedIterator for $map<'_, R> {}
    };
}

codec_map_methods!(
    CodecMap, Result<R>,
    progress:
        /// Draws a progress bar on stderr while the map runs (see
        /// [`Map::progress`]): items done / total, rate and ETA when the
        /// input's length is known, else a spinner with a count; advanced per
        /// finished chunk and cleared when the map ends. Feature `progress`.
        ///
        /// ```
        /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
        /// let total: u64 = ex
        ///     .with_codec::<loky::Rkyv>()
        ///     .map(|x: u64| x % 7, 0..70_000)
        ///     .progress()
        ///     .map(|r| r.unwrap())
        ///     .sum();
        /// assert_eq!(total, 210_000); // 10 000 times 0 + 1 + ... + 6
        /// # Ok::<(), loky::Error>(())
        /// ```
    progress_with:
        /// Like [`progress`](Self::progress), with a bar of your own (see
        /// [`Map::progress_with`]): its length is set from the input's if it
        /// has none, and it is finished as its
        /// [`ProgressFinish`](indicatif::ProgressFinish) says when the map
        /// ends (abandoned at the items done if the map was cut short).
        /// Feature `progress`.
        ///
        /// ```
        /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
        /// let bar = indicatif::ProgressBar::hidden();
        /// let n = ex
        ///     .with_codec::<loky::Rkyv>()
        ///     .map(|x: u64| x + 1, 0..1000)
        ///     .progress_with(bar.clone())
        ///     .count();
        /// assert_eq!((n, bar.position(), bar.length()), (1000, 1000, Some(1000)));
        /// assert!(bar.is_finished());
        /// # Ok::<(), loky::Error>(())
        /// ```
);

impl<R> CodecMap<'_, R> {
    /// Chunks currently submitted and not yet consumed.
    pub fn chunks_in_flight(&self) -> usize {
        self.inner.chunks_in_flight()
    }
}

impl<R> std::fmt::Debug for CodecMap<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecMap")
            .field("chunks_in_flight", &self.chunks_in_flight())
            .finish()
    }
}

/// Iterator returned by [`CodecExecutor::map_unordered`]: `(input position,
/// outcome)` pairs in completion order.
pub struct CodecMapUnordered<'a, R> {
    inner: Box<dyn MapState<(usize, Result<R>)> + 'a>,
}

codec_map_methods!(
    CodecMapUnordered, (usize, Result<R>),
    progress:
        /// See [`CodecMap::progress`]. Feature `progress`.
        ///
        /// ```
        /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
        /// let n = ex
        ///     .with_codec::<loky::Rkyv>()
        ///     .map_unordered(|x: u64| x * 2, 0..100_000)
        ///     .progress()
        ///     .count();
        /// assert_eq!(n, 100_000);
        /// # Ok::<(), loky::Error>(())
        /// ```
    progress_with:
        /// See [`CodecMap::progress_with`]. Feature `progress`.
);

impl<R> std::fmt::Debug for CodecMapUnordered<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecMapUnordered").finish_non_exhaustive()
    }
}
