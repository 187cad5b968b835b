//! `map` and `map_unordered`: lazy, chunked, bounded in flight.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Payload;
use crate::error::{Error, Result};
use crate::executor::{decode_with, failure_to_error, ProcessPoolExecutor};
use crate::future::{Future, Notify};
use crate::protocol::STATUS_PANIC;
use crate::transport::{assert_zero_sized, decode_chunk, offset_of, run_chunk, ChunkOutput};

/// Chunks in flight per worker (the rest of the input is not read yet).
const CHUNKS_PER_WORKER: usize = 2;
/// What automatic chunking aims at: long enough to amortise the ~10 µs
/// round trip of a chunk to noise, short enough to balance load and keep
/// the first results coming quickly.
const TARGET_CHUNK: Duration = Duration::from_millis(5);
/// Upper bound of an automatic chunk.
const MAX_AUTO_CHUNK: usize = 1 << 14;

impl ProcessPoolExecutor {
    /// Applies `f` to every item of `input` in the workers and yields the
    /// results in input order.
    ///
    /// Lazy: nothing is read or submitted before the first `next()`, and at
    /// most `2 × max_workers` chunks are in flight, so a map over millions
    /// of items (or an endless iterator) uses bounded memory. Items travel
    /// in chunks: [`Map::chunksize`] fixes the size; by default it adapts to
    /// the measured duration of the tasks. A panicking item yields
    /// `Err(TaskPanicked)` in its place; a chunk whose worker died yields
    /// `Err(TerminatedWorker)` for each of its items.
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let doubled: Vec<u64> = ex.map(|x: u64| x * 2, 0..1000).chunksize(100).collect::<Result<_, _>>()?;
    /// assert_eq!(doubled[999], 1998);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn map<F, A, R, I>(&self, f: F, input: I) -> Map<F, A, R, I::IntoIter>
    where
        F: crate::TaskFn<A, R>,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        Map::new(self.clone(), input.into_iter(), true)
    }

    /// Like [`map`](Self::map), but yields results as soon as their chunk
    /// completes, in no particular order, each with its input position.
    pub fn map_unordered<F, A, R, I>(&self, f: F, input: I) -> MapUnordered<F, A, R, I::IntoIter>
    where
        F: crate::TaskFn<A, R>,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        const { assert_zero_sized::<F>() };
        let _ = f;
        MapUnordered {
            inner: Map::new(self.clone(), input.into_iter(), false),
        }
    }
}

struct Chunk<R> {
    fut: Future<ChunkOutput<R>>,
    start: usize,
    len: usize,
}

/// Iterator returned by [`ProcessPoolExecutor::map`].
pub struct Map<F, A, R, I> {
    ex: ProcessPoolExecutor,
    input: I,
    exhausted: bool,
    fixed: Option<usize>,
    auto: usize,
    window: VecDeque<Chunk<R>>,
    ready: Ready<R>,
    ready_start: usize,
    next_index: usize,
    submit_error: Option<Error>,
    notify: Arc<Notify>,
    _f: PhantomData<fn(A) -> F>,
}

impl<F, A, R, I> std::fmt::Debug for Map<F, A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("chunks_in_flight", &self.window.len())
            .field("items_submitted", &self.next_index)
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

impl<F, A, R, I> Map<F, A, R, I>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
    I: Iterator<Item = A>,
{
    fn new(ex: ProcessPoolExecutor, input: I, _ordered: bool) -> Self {
        Self {
            ex,
            input,
            exhausted: false,
            fixed: None,
            auto: 1,
            window: VecDeque::new(),
            ready: Ready::empty(),
            ready_start: 0,
            next_index: 0,
            submit_error: None,
            notify: Arc::new(Notify::default()),
            _f: PhantomData,
        }
    }

    /// Sends `n` items per task (at least 1). Without it the size adapts to
    /// the measured task durations.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.fixed = Some(n.max(1));
        self
    }

    /// Chunks currently submitted and not yet consumed.
    pub fn chunks_in_flight(&self) -> usize {
        self.window.len()
    }

    fn max_chunks(&self) -> usize {
        self.ex.max_workers() * CHUNKS_PER_WORKER
    }

    fn chunk_len(&self) -> usize {
        self.fixed.unwrap_or(self.auto)
    }

    /// Submits chunks until the window is full or the input ends.
    fn fill(&mut self) {
        while !self.exhausted
            && self.submit_error.is_none()
            && self.window.len() < self.max_chunks()
        {
            let n = self.chunk_len();
            let items: Vec<A> = self.input.by_ref().take(n).collect();
            if items.len() < n {
                self.exhausted = true;
            }
            if items.is_empty() {
                return;
            }
            let len = items.len();
            let trampoline = offset_of(run_chunk::<F, A, R>);
            match self.ex.submit_raw(
                trampoline,
                |out| A::encode_batch(&items, out),
                decode_chunk_result::<R>,
            ) {
                Ok(fut) => {
                    self.window.push_back(Chunk {
                        fut,
                        start: self.next_index,
                        len,
                    });
                }
                Err(e) => self.submit_error = Some(e),
            }
            self.next_index += len;
        }
    }

    /// Learns from a finished chunk how many items make a good chunk.
    fn adapt(&mut self, chunk: &Chunk<R>) {
        if self.fixed.is_some() {
            return;
        }
        let ns = chunk.fut.cell.task.elapsed_ns();
        if ns == 0 || chunk.len < self.auto {
            return;
        }
        let per_item = (ns as f64 / chunk.len as f64).max(1.0);
        let ideal = (TARGET_CHUNK.as_nanos() as f64 / per_item) as usize;
        // Grow at most 4x per step (durations are noisy), shrink at once.
        self.auto = ideal.clamp(1, (self.auto * 4).min(MAX_AUTO_CHUNK));
    }

    /// The outcomes of a finished chunk, one per item, produced lazily (a
    /// `Vec<Result<R>>` would cost far more memory traffic than the values).
    fn expand(&mut self, chunk: Chunk<R>) -> Ready<R> {
        self.adapt(&chunk);
        match chunk.fut.result() {
            Ok((values, failures)) => Ready::new(values, failures, chunk.len),
            Err(e) => Ready::failed(e, chunk.len),
        }
    }

    #[inline]
    fn next_ordered(&mut self) -> Option<Result<R>> {
        if let Some(r) = self.ready.next() {
            return Some(r);
        }
        self.next_chunk_ordered()
    }

    #[inline(never)]
    fn next_chunk_ordered(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.next() {
                return Some(r);
            }
            self.fill();
            let Some(chunk) = self.window.pop_front() else {
                return self.submit_error.take().map(Err);
            };
            self.ready_start = chunk.start;
            self.ready = self.expand(chunk);
            self.fill();
        }
    }

    fn next_unordered(&mut self) -> Option<(usize, Result<R>)> {
        loop {
            let i = self.ready_start + self.ready.position();
            if let Some(r) = self.ready.next() {
                return Some((i, r));
            }
            self.fill();
            if self.window.is_empty() {
                return self.submit_error.take().map(|e| (self.next_index, Err(e)));
            }
            let pos = loop {
                if let Some(p) = self.window.iter().position(|c| c.fut.is_done_now()) {
                    break p;
                }
                let mut done = false;
                for c in &self.window {
                    done |= c.fut.listen(&self.notify);
                }
                if done {
                    continue;
                }
                if self.window[0].fut.spin_a_little(None) {
                    continue;
                }
                self.notify
                    .wait_until(Some(std::time::Instant::now() + Duration::from_millis(100)));
            };
            let chunk = self.window.remove(pos).expect("position in range");
            self.ready_start = chunk.start;
            self.ready = self.expand(chunk);
        }
    }
}

impl<F, A, R, I> Iterator for Map<F, A, R, I>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
    I: Iterator<Item = A>,
{
    type Item = Result<R>;

    #[inline]
    fn next(&mut self) -> Option<Result<R>> {
        self.next_ordered()
    }
}

/// Iterator returned by [`ProcessPoolExecutor::map_unordered`]: yields
/// `(input position, outcome)` pairs in completion order.
pub struct MapUnordered<F, A, R, I> {
    inner: Map<F, A, R, I>,
}

impl<F, A, R, I> std::fmt::Debug for MapUnordered<F, A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<F, A, R, I> MapUnordered<F, A, R, I>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
    I: Iterator<Item = A>,
{
    /// See [`Map::chunksize`].
    pub fn chunksize(mut self, n: usize) -> Self {
        self.inner = self.inner.chunksize(n);
        self
    }
}

impl<F, A, R, I> Iterator for MapUnordered<F, A, R, I>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
    I: Iterator<Item = A>,
{
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_unordered()
    }
}

fn decode_chunk_result<R: Payload>(status: u32, bytes: &[u8]) -> Result<ChunkOutput<R>> {
    decode_with(status, bytes, decode_chunk::<R>)
}

/// The outcomes of one finished chunk, yielded in item order.
struct Ready<R> {
    values: std::vec::IntoIter<R>,
    failures: std::iter::Peekable<std::vec::IntoIter<(u32, crate::protocol::Failure)>>,
    pos: usize,
    len: usize,
    /// The whole chunk failed (worker died, codec error): every item gets it.
    error: Option<Error>,
    /// Every item succeeded: `next` is just the values' iterator.
    clean: bool,
}

impl<R> Ready<R> {
    fn empty() -> Self {
        Self {
            values: Vec::new().into_iter(),
            failures: Vec::new().into_iter().peekable(),
            pos: 0,
            len: 0,
            error: None,
            clean: true,
        }
    }

    fn new(values: Vec<R>, failures: Vec<(u32, crate::protocol::Failure)>, len: usize) -> Self {
        let clean = failures.is_empty() && values.len() == len;
        Self {
            values: values.into_iter(),
            failures: failures.into_iter().peekable(),
            pos: 0,
            len,
            error: None,
            clean,
        }
    }

    fn failed(error: Error, len: usize) -> Self {
        Self {
            error: Some(error),
            len,
            clean: false,
            ..Self::empty()
        }
    }

    /// Position (within the chunk) of the item `next` returns next.
    fn position(&self) -> usize {
        if self.clean {
            self.len - self.values.len()
        } else {
            self.pos
        }
    }

    #[inline]
    fn next(&mut self) -> Option<Result<R>> {
        if self.clean {
            return self.values.next().map(Ok);
        }
        self.next_mixed()
    }

    fn next_mixed(&mut self) -> Option<Result<R>> {
        if self.pos == self.len {
            return None;
        }
        let i = self.pos;
        self.pos += 1;
        if let Some(e) = &self.error {
            return Some(Err(e.clone()));
        }
        if self.failures.peek().is_some_and(|(k, _)| *k as usize == i) {
            let (_, f) = self.failures.next()?;
            return Some(Err(failure_to_error(STATUS_PANIC, f)));
        }
        Some(self.values.next().ok_or_else(|| Error::Codec {
            stage: crate::error::CodecStage::DecodeResult,
            message: "chunk returned fewer values than items".into(),
        }))
    }
}
