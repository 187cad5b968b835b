//! `map` and `map_unordered`: lazy, chunked, bounded in flight.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Payload;
use crate::error::{Error, Result};
use crate::executor::{decode_with, failure_to_error, ProcessPoolExecutor};
use crate::future::{Future, Notify};
use crate::protocol::STATUS_PANIC;
use crate::transport::{assert_zero_sized, decode_chunk, offset_of, run_chunk, ChunkOutput};

/// Chunks in flight per worker (the rest of the input is not read yet):
/// one running, one queued in its ring (or in the parent's queue, without
/// prefetching), so a worker never waits for the map between chunks.
const CHUNKS_PER_WORKER: usize = 2;
/// Chunks an ordered map may hold per chunk in flight, finished ones
/// included, while its oldest chunk is slow: it yields in input order, so
/// the later chunks that finish meanwhile wait to be read; up to this many
/// times the window, they make room for new chunks, so that one slow chunk
/// does not leave the other workers idle at once. Eight: a worker goes on
/// for 16 chunks (about 80 ms of automatic 5 ms chunks) behind a slow one;
/// four left the other worker idle for most of a 100 ms item among 1 ms
/// ones. Not more: the results held are bounded by this count alone, not
/// by their bytes (for `u64` results of automatic chunks, 4 MiB per
/// worker).
const REORDER: usize = 8;
/// The longest a map sleeps between looks at its chunks while none has
/// finished: every chunk that finishes wakes it, so this only bounds the
/// cost of a wake-up that would go missing.
const WAKE_FALLBACK: Duration = Duration::from_millis(100);
/// What automatic chunking aims at, in task time per chunk. See
/// [`Map::chunksize`] for why 5 ms and not joblib's 0.2-2 s.
const TARGET_CHUNK: Duration = Duration::from_millis(5);
/// Upper bound of an automatic chunk, in items: beyond it the per-chunk
/// overhead is already far below the per-item cost, and a larger chunk only
/// delays the first results and holds more memory.
const MAX_AUTO_CHUNK: usize = 1 << 15;
/// Tapered chunks at the end of a known-length input keep at least
/// `1 / TAPER_FLOOR_DIVISOR` of the target's work (see [`taper_floor`]).
const TAPER_FLOOR_DIVISOR: usize = 8;
/// Automatic chunks may grow at once to the items that would take
/// `TARGET_CHUNK / QUICK_DIVISOR` (see [`next_auto`]).
const QUICK_DIVISOR: u32 = 16;
/// ... once a chunk of at least this many items was measured.
const QUICK_MIN_ITEMS: usize = 16;
/// An automatic chunk's encoded arguments stay within this fraction of the
/// ring, so the chunks in flight of a worker travel inline in its ring
/// (messages over half the ring take a spill buffer instead)
/// and memory in flight stays bounded when the items are large.
const RING_FRACTION: usize = 4;
/// How many times a map may split a chunk whose worker died, to find the
/// item that killed it ([`Map::isolate_crashes`]), before crashed chunks
/// fail whole: each split costs
/// one more crash (a worker replaced). Every chunk that ends with its
/// worker alive gives one split back, and one more per 16 of its items, up
/// to this many, so a long map with a few bad items keeps isolating them
/// while one whose every item kills its worker soon stops paying for it.
const SPLITS: usize = 64;
/// A map out of time gives each unread item of an input of known length
/// its own error up to this many items left; past it, one error stands for
/// them all (a map over `0..1 << 40` used as a time budget would otherwise
/// yield errors for hours, and `collect` would reserve room for them).
const MAX_UNREAD_ERRORS: usize = 1 << 20;
/// How many times a map sends a chunk again whole after it failed only
/// because it waited behind a chunk that killed their worker (where the
/// pool does not run such tasks again: see [`Map::isolate_crashes`]).
const RESENDS: u8 = 4;

impl ProcessPoolExecutor {
    /// Applies `f` to every item of `input` in the workers and yields the
    /// results in input order.
    ///
    /// Lazy: nothing is read or submitted before the first `next()`, at
    /// most `2 × max_workers` chunks run or wait in the workers, and at most
    /// that many are held in all, but for an ordered map whose oldest chunk
    /// still runs when later ones finish: then up to 8 times as many,
    /// finished ones waiting to be read in order (and a few more while
    /// [`Map::isolate_crashes`] splits a crashed one), so a map over millions
    /// of items (or an endless iterator) uses bounded memory: its peak
    /// resident set does not grow with the number of items (measured by
    /// `tests/map_memory.rs`). Items travel in chunks: [`Map::chunksize`]
    /// fixes the size; by default it adapts to the measured duration of the
    /// tasks (see there). Results come in input order: while a chunk much
    /// slower than the others runs, the workers go on with the chunks after
    /// it until 8 × 2 × `max_workers` chunks are held, then may idle;
    /// [`map_unordered`](Self::map_unordered) does not wait for the oldest
    /// chunk. Either way the chunk a worker already holds behind a slow one
    /// waits for it, even while other workers idle, and can reach the map's
    /// [`timeout`](Map::timeout) there without having started; build the
    /// pool with
    /// [`prefetch(false)`](crate::ProcessPoolExecutorBuilder::prefetch) to
    /// keep chunks in the parent until a worker is free. A
    /// panicking item yields `Err(TaskPanicked)` in
    /// its place; a chunk whose worker died yields `Err(TerminatedWorker)`
    /// for each of its items (unless [`Map::isolate_crashes`]), and so does
    /// a chunk whose arguments cannot be
    /// encoded (`Err(Codec)`, say an item the codec rejects, or
    /// `Err(ForeignArena)`; set [`Map::chunksize`] to 1 to tell the bad
    /// items apart), or that comes back with the wrong number of outcomes
    /// (`Err(Codec)` at `DecodeResult`: a custom codec's batch decoding). If a chunk
    /// cannot be submitted at all (the executor was shut down, the pool
    /// broke, or its message cannot be sent: `Err(Ipc)`), the map ends with
    /// that one error and reads no more input.
    /// Dropping the map withdraws its chunks still waiting (in the parent or
    /// in a worker's ring; of two a worker holds before starting either,
    /// only one); chunks already running end normally (or at the map's
    /// [`timeout`](Map::timeout), if it has one).
    /// With the `progress` feature, `.progress()` draws a progress bar.
    ///
    /// Cheap items (an `f` that costs less than moving its item, such as
    /// `x * 2`) keep the parent's thread busier than the workers: it reads
    /// the input, encodes the chunks and collects the results. Then map a
    /// [`SharedVec`](crate::SharedVec) with
    /// [`map_shared`](Self::map_shared) (no item crosses a ring), collect
    /// with [`Map::into_vec`], and on a machine with few cores leave one to
    /// the parent: on 2 cores, `x * 2` over 10M `u64` by value ran at
    /// 140–205 M items/s with one worker and 84–173 M with two (runs
    /// alternating between the two).
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
        Map::new(self.clone(), input.into_iter())
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
            inner: Map::new(self.clone(), input.into_iter()),
        }
    }
}

struct Chunk<A, R> {
    /// The chunk's task, or why its arguments could not be encoded.
    sent: std::result::Result<Future<ChunkOutput<R>>, Error>,
    /// Cancels the task when the map is dropped (`Drop` cannot name `R`'s
    /// bounds).
    cancel: Option<crate::future::Canceller>,
    start: usize,
    len: usize,
    /// The items, kept to send them again in two halves should the chunk's
    /// worker die (see [`Map::split`]); empty when the chunk cannot be split
    /// (one item, arguments too large to keep a second copy of, or holding
    /// shared arrays).
    items: Vec<A>,
    /// How many times these items were sent again whole: they waited
    /// behind a crashing chunk on a worker whose waiting tasks the pool
    /// does not run again ([`Map::split`]).
    resent: u8,
    /// Whether [`Map::split_crashed_early`] looked at its outcome already.
    looked_at: bool,
    /// Whether [`Map::split`] was asked about it already (and left it
    /// whole): by [`Map::split_crashed_early`], for a crash.
    split_declined: bool,
}

impl<A, R: Send + 'static> Chunk<A, R> {
    fn is_done_now(&self) -> bool {
        self.sent.as_ref().map_or(true, Future::is_done_now)
    }

    /// How long the worker ran it (0: not run).
    fn elapsed_ns(&self) -> u64 {
        self.sent.as_ref().map_or(0, |f| f.cell.task.elapsed_ns())
    }

    /// Its outcome, once ended, checked against its length: one outcome per
    /// item, failures in increasing positions within the chunk (a codec's
    /// batch decoding might get that wrong).
    fn outcome(&self) -> Result<ChunkOutput<R>> {
        let (values, failures) = match &self.sent {
            Ok(f) => f.result()?,
            Err(e) => return Err(e.clone()),
        };
        let ordered = failures.windows(2).all(|w| w[0].0 < w[1].0);
        let in_chunk = failures.last().map_or(true, |f| (f.0 as usize) < self.len);
        if values.len() + failures.len() != self.len || !ordered || !in_chunk {
            return Err(Error::Codec {
                stage: crate::error::CodecStage::DecodeResult,
                message: format!(
                    "a chunk of {} items came back with {} values and {} failures",
                    self.len,
                    values.len(),
                    failures.len()
                ),
            });
        }
        Ok((values, failures))
    }
}

/// Iterator returned by [`ProcessPoolExecutor::map`].
pub struct Map<F, A, R, I> {
    ex: ProcessPoolExecutor,
    input: I,
    exhausted: bool,
    fixed: Option<usize>,
    /// Items per chunk learned from the measured task durations.
    auto: usize,
    /// Items that would take [`TARGET_CHUNK`] by the latest measure, before
    /// any cap (0 until a chunk was measured).
    ideal: usize,
    /// Largest chunk whose encoded arguments fit the byte budget (learned
    /// from the size of the chunks sent so far).
    byte_cap: usize,
    /// Largest chunk submitted so far.
    largest: usize,
    window: VecDeque<Chunk<A, R>>,
    ready: Ready<R>,
    ready_start: usize,
    next_index: usize,
    /// A chunk that could not be submitted (the pool was shut down or
    /// broke), or the input left when the map ran out of time: its first
    /// item's index and the error. The map ends with it.
    submit_error: Option<(usize, Error)>,
    /// How many items after the first `submit_error` also stands for (the
    /// rest of an input of known length, out of time).
    error_repeats: usize,
    /// The time the whole map may take ([`Map::timeout`]), until the first
    /// `next()` turns it into `deadline`.
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    notify: Arc<Notify>,
    progress: crate::progress::Tracker,
    /// Whether crashed chunks are split ([`Map::isolate_crashes`]).
    isolate: bool,
    /// Splits of crashed chunks still allowed ([`SPLITS`]).
    splits_left: usize,
    /// Items whose chunk ended with its worker alive, and items found to
    /// kill their worker (a crashed chunk not split further): with
    /// automatic chunking, chunks stay small enough that few of them hold
    /// a bad item ([`Map::chunk_len`]).
    ok_items: usize,
    bad_items: usize,
    /// [`Map::kill`]: the drop kills the running chunks' workers.
    kill_on_drop: bool,
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
    fn new(ex: ProcessPoolExecutor, input: I) -> Self {
        // Fired by every chunk that ends, it also rings the pool's doorbell,
        // on which a thread waiting for a chunk sleeps.
        let notify = Arc::new(Notify::on_bells(vec![ex.pool().region_arc()]));
        Self {
            ex,
            input,
            exhausted: false,
            fixed: None,
            auto: 1,
            ideal: 0,
            byte_cap: usize::MAX,
            largest: 0,
            window: VecDeque::new(),
            ready: Ready::empty(),
            ready_start: 0,
            next_index: 0,
            submit_error: None,
            error_repeats: 0,
            timeout: None,
            deadline: None,
            notify,
            progress: crate::progress::Tracker::default(),
            isolate: false,
            splits_left: SPLITS,
            ok_items: 0,
            bad_items: 0,
            kill_on_drop: false,
            _f: PhantomData,
        }
    }

    /// Sends `n` items per task: 0 is taken as 1, and more than `u32::MAX`
    /// as `u32::MAX` (outcomes are numbered within a chunk by a `u32`).
    ///
    /// Without it the size is chosen automatically from the task durations
    /// the workers measure: each finished chunk reports how long it ran, and
    /// the next chunks aim at **5 ms** of work each (at most 32 768 items,
    /// and at most a quarter of the ring in encoded arguments). Chunking
    /// starts at one item per chunk and grows per measurement at most 16×,
    /// or to what would take a sixteenth of the target (durations are noisy:
    /// a chunk measured too fast is at most 16 times too long, or its items
    /// were far cheaper than the next ones), and shrinks at once when items
    /// turn out slower. When the input's length is known (an exact
    /// [`size_hint`](Iterator::size_hint)), the last chunks also shrink so
    /// that the remaining items spread over all the chunks in flight, and
    /// every worker finishes at about the same time; not below an eighth of
    /// the target's work (cheap items capped at 32 768 per chunk do not
    /// shrink).
    ///
    /// Why 5 ms and not joblib's 0.2-2 s batches: joblib sizes its batches
    /// to hide a pickle and a pipe round trip each, milliseconds in Python.
    /// Here a chunk is encoded into a per-thread buffer and copied into the
    /// worker's shared-memory ring, and the worker's next chunk is already
    /// queued while it runs one: a round trip costs about 1.5 µs when nobody
    /// sleeps, and a map of one-item chunks of `x * 2` costs about 33 µs per chunk on a 2-core
    /// VM where the parent and two workers share the cores (futex wake-ups,
    /// mostly). Against 5 ms of work that is under 1 %. Short chunks are
    /// what keeps every worker busy until the end of the map: the last
    /// chunk of a worker finishes at most one chunk's duration after the
    /// others, 5 ms rather than seconds. Items cheaper than 5 ms / 32 768
    /// ≈ 0.15 µs are capped at 32 768 per chunk, or at a quarter of the
    /// ring (`u64` arguments: about 32 000 items, 256 KiB of the default
    /// 1 MiB ring); items slower than 5 ms travel one per chunk.
    ///
    /// Set it yourself when the items' cost varies a lot along the input (the
    /// automatic size follows the recent chunks), or to reproduce a run
    /// exactly.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.fixed = Some(n.clamp(1, u32::MAX as usize));
        self
    }

    /// Gives the whole map `timeout`, counted from the first `next()` (as
    /// `concurrent.futures`' `map(timeout=...)` counts from the call): its
    /// chunks get that instant as their time limit, so a chunk still
    /// running or waiting then is stopped (its worker killed, if it runs)
    /// and each of its items yields [`Error::TimeLimit`]; and past it the
    /// map reads no more input: each item left yields `Err(TimeLimit)`
    /// where the input's size hint says exactly how many are left, up to
    /// 2^20 of them (a `Vec`, a range: outcomes still zip with the input),
    /// else a single `Err(TimeLimit)` stands for them all (none if the hint
    /// says nothing was left). Items whose
    /// chunk finished before it are yielded as usual (results come back by
    /// chunk: a chunk stopped half-way yields `TimeLimit` for all its
    /// items). The deadline stays with the chunks
    /// when the map is dropped: a chunk still running then is stopped at
    /// it all the same.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let ex = loky::ProcessPoolExecutor::new(2)?;
    /// let naps = ex
    ///     .map(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), [1, 1, 60_000])
    ///     .chunksize(1)
    ///     // Ample for the two short naps, workers' start-up included.
    ///     .timeout(Duration::from_secs(3));
    /// let outcomes: Vec<_> = naps.collect();
    /// assert!(outcomes[..2].iter().all(Result::is_ok));
    /// assert!(matches!(outcomes[2], Err(loky::Error::TimeLimit)));
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Finds the items that kill their worker (abort, segfault, `exit`, the
    /// kernel's OOM killer) and fails only them: a chunk whose worker died
    /// while running it is sent again in two halves, and so on, until the
    /// item that killed it runs alone and yields `Err(TerminatedWorker)`;
    /// the other items of the chunk get their results. (A chunk that only
    /// waited behind it, where the pool does not run such tasks again, is
    /// sent again whole, up to 4 times.)
    ///
    /// **Items of a crashed chunk run again**, those before the bad item
    /// once per halving (up to about log₂(chunk size) + 1 runs), so use it
    /// only when running an item more than once is harmless. Without it, a
    /// map runs every item at most once, like every task (see
    /// [`guide::faults`](crate::guide::faults)), and each item of a crashed
    /// chunk yields `Err(TerminatedWorker)`. The item that killed its
    /// worker is not tried again, even if something else killed it (say
    /// the OOM killer, for another process's memory).
    ///
    /// Each halving costs one more crash (a worker replaced): about
    /// log₂(chunk size) for one bad item. With automatic chunking, chunks
    /// then shrink to about a quarter of the items seen per bad item, so
    /// that most hold none. Splits are limited to 64 at a time, each chunk
    /// that ends with its worker alive giving one back and one more per 16
    /// of its items, so a map whose every item (or one in a few) kills its
    /// worker soon stops paying for them; past the limit a crashed chunk
    /// fails whole. So does one whose
    /// arguments take over half the ring (a second copy of them would stay
    /// in memory while it runs), or that holds shared arrays, and every
    /// crashed chunk once the map's [`timeout`](Map::timeout) has passed.
    /// A chunk is split as soon as the map sees its crash, also in an
    /// ordered map that has yet to read it; its halves queue behind the
    /// chunks already sent, so with a time limit and items that hang, they
    /// may fail with [`Error::TimeLimit`] for want of a free worker.
    /// Splitting adds chunks in flight (the items in flight stay as many).
    /// A chunk's items are dropped once its outcomes are read, not once
    /// they are sent.
    ///
    /// ```
    /// fn risky(x: u64) -> u64 {
    ///     if x == 37 {
    ///         std::process::exit(3); // say, a crash in a C library
    ///     }
    ///     x * 2
    /// }
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let out: Vec<_> = ex.map(risky, 0..100).chunksize(20).isolate_crashes().collect();
    /// assert!(matches!(out[37], Err(loky::Error::TerminatedWorker { .. })));
    /// assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 99);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn isolate_crashes(mut self) -> Self {
        self.isolate = true;
        self
    }

    /// Runs the map to its end and returns every result not yet yielded,
    /// in input order, or the first error in input order (the map is then
    /// dropped: its chunks still waiting are withdrawn, see
    /// [`Drop`](#impl-Drop-for-Map%3CF,+A,+R,+I%3E)).
    ///
    /// The same as `.collect::<Result<Vec<R>, Error>>()`, faster: each
    /// chunk's values are moved into the output in one block instead of
    /// one by one, which matters when the items are cheap (a map of
    /// `x * 2` over `u64` spends most of the caller's time yielding items).
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(2).build()?;
    /// let doubled = ex.map(|x: u64| x * 2, 0..100_000).into_vec()?;
    /// assert_eq!((doubled.len(), doubled[99_999]), (100_000, 199_998));
    ///
    /// let failed = ex.map(|x: u64| 10 / x, [5, 2, 0, 1]).into_vec();
    /// assert!(matches!(failed, Err(loky::Error::TaskPanicked { .. })));
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn into_vec(mut self) -> Result<Vec<R>> {
        // Room for every result up front where the input's length is
        // known (and can be had): an endless or lying input is not trusted.
        let mut out = Vec::new();
        if let (lo, Some(hi)) = self.input.size_hint() {
            if lo == hi {
                let _ = out.try_reserve_exact(self.remaining().0.saturating_add(lo));
            }
        }
        // Filled from one thread: its fresh pages cost most of the time of
        // a map of cheap items unless they come 2 MiB at a time.
        crate::numeric_vec::advise_huge_pages(out.spare_capacity_mut());
        loop {
            self.ready.drain_into(&mut out)?;
            match self.next_chunk_ordered() {
                Some(r) => out.push(r?),
                None => return Ok(out),
            }
        }
    }

    /// Chunks currently submitted and not yet consumed.
    pub fn chunks_in_flight(&self) -> usize {
        self.window.len()
    }

    /// The largest chunk (in items) submitted so far: with automatic
    /// chunking, what the measured durations led to. For tests.
    #[doc(hidden)]
    pub fn largest_chunk(&self) -> usize {
        self.largest
    }

    #[cfg(feature = "progress")]
    pub(crate) fn tracker_mut(&mut self) -> &mut crate::progress::Tracker {
        &mut self.progress
    }

    /// The total number of items, if the input knows it: those already
    /// read plus the exact remaining length.
    #[cfg_attr(not(feature = "progress"), allow(dead_code))]
    pub(crate) fn total_items(&self) -> Option<usize> {
        match self.input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(self.next_index + lo),
            _ => None,
        }
    }

    /// Bounds on the outcomes still to come: one per item of the chunk
    /// being read and of the chunks in flight, the pending submit error if
    /// any (and the unread items it stands for one by one, out of time),
    /// and at most one per item left in the input (a submit that fails
    /// ends the map with a single error, so unread items count towards the
    /// upper bound only).
    fn remaining(&self) -> (usize, Option<usize>) {
        let known = (self.ready.len - self.ready.position())
            + self.window.iter().map(|c| c.len).sum::<usize>()
            + usize::from(self.submit_error.is_some())
            + self.error_repeats;
        let unread = if self.exhausted {
            Some(0)
        } else {
            self.input.size_hint().1
        };
        (known, unread.and_then(|u| known.checked_add(u)))
    }

    fn max_chunks(&self) -> usize {
        self.ex.max_workers() * CHUNKS_PER_WORKER
    }

    /// Items in the next chunk, with at most `max_chunks` in flight.
    fn chunk_len(&self, max_chunks: usize) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let mut n = self.auto.min(self.byte_cap);
        // Isolating crashes: a chunk costs a split per halving for each bad
        // item it holds, so chunks hold a quarter of the items seen per
        // bad one (most chunks then hold none).
        if self.isolate && self.bad_items > 0 {
            n = n.min((self.ok_items / (4 * self.bad_items)).max(1));
        }
        // Near the end of a known-length input, spread what is left over
        // all the chunks in flight (guided self-scheduling), so no worker
        // is left with a long last chunk while the others idle.
        // Not below an eighth of the target (about 0.6 ms of work, see
        // `taper_floor`): tiny tail chunks would cost more in per-chunk
        // overhead than they save in balance.
        if let (remaining, Some(hi)) = self.input.size_hint() {
            if remaining == hi && remaining > 0 {
                let cap = MAX_AUTO_CHUNK.min(self.byte_cap);
                let floor = taper_floor(self.auto, cap, self.ideal);
                n = n.min(remaining.div_ceil(max_chunks).max(floor));
            }
        }
        n.max(1)
    }

    /// Whether another chunk may be sent: fewer than `max_chunks` held, or,
    /// `behind_oldest` (the oldest chunk of an ordered map is slow: see
    /// [`Map::wait_for_oldest`]), fewer than `max_chunks` not finished and
    /// fewer than [`REORDER`] times that in all.
    fn has_room(&self, max_chunks: usize, behind_oldest: bool) -> bool {
        self.window.len() < max_chunks
            || (behind_oldest
                && self.window.len() < max_chunks * REORDER
                && self.window.iter().filter(|c| !c.is_done_now()).count() < max_chunks)
    }

    /// Waits for the oldest chunk of an ordered map, sending a new chunk
    /// each time a later one finishes meanwhile (see [`REORDER`]). Returns
    /// once it finished, or once no more chunks may be sent at all (then
    /// reading it blocks).
    fn wait_for_oldest(&mut self) {
        // Read once, and only when waiting: it takes the pool's lock.
        let mut max_chunks = None;
        loop {
            let Some(Chunk {
                sent: Ok(oldest), ..
            }) = self.window.front()
            else {
                return;
            };
            if oldest.is_done_now() || self.exhausted || self.submit_error.is_some() {
                return;
            }
            let max = *max_chunks.get_or_insert_with(|| self.max_chunks());
            if self.window.len() >= max * REORDER {
                return;
            }
            // Woken by the first of the chunks still running to finish, the
            // oldest or a later one: each makes room for a new chunk, and a
            // worker whose chunks are short must not wait long for its next.
            self.wait_for_any_chunk();
            self.split_crashed_early(max * REORDER);
            self.fill_up(true);
        }
    }

    /// Splits, now, the crashed chunks behind the oldest of an ordered map
    /// ([`Map::isolate_crashes`]), rather than when the reader gets to
    /// them: while the oldest chunk is slow, the map goes on far past them,
    /// and their halves should run before the chunks sent after them (with
    /// a time limit, a crashed chunk not split by then fails whole, every
    /// item with the crash). Not past `most` chunks in the window, the
    /// ordered map's bound ([`REORDER`]); and a chunk met while no split is
    /// left is looked at again later (ended chunks give splits back).
    fn split_crashed_early(&mut self, most: usize) {
        if !self.isolate {
            return;
        }
        let mut pos = 1;
        while pos < self.window.len() && self.window.len() < most && self.splits_left > 0 {
            let chunk = &mut self.window[pos];
            if chunk.looked_at || !chunk.is_done_now() {
                pos += 1;
                continue;
            }
            chunk.looked_at = true;
            let crash = match &chunk.sent {
                Ok(f) => f.exception(),
                Err(_) => None,
            };
            let Some(crash @ Error::TerminatedWorker { .. }) = crash else {
                pos += 1;
                continue;
            };
            let Some(mut chunk) = self.window.remove(pos) else {
                return;
            };
            if self.split(&mut chunk, &Err(crash), pos) {
                // Its halves (or the chunk sent again) are at `pos`: they
                // have yet to finish, the next look passes them.
                continue;
            }
            chunk.split_declined = true;
            self.window.insert(pos, chunk);
            pos += 1;
        }
    }

    /// Waits until one of the chunks still running ends, or at most
    /// [`WAKE_FALLBACK`], as a wait on a future does: on one of the pool's
    /// own threads (a done-callback iterating a map) it drains the pool
    /// itself, for nobody else would; elsewhere it spins a little, then
    /// sleeps on the pool's doorbell, which the first result rings.
    fn wait_for_any_chunk(&self) {
        // No list of the running chunks (a wait is frequent): chunks only
        // ever become done, so one more done chunk in the window than
        // counted here, before listening, is one of the running ones ending.
        let done_now = || self.window.iter().filter(|c| c.is_done_now()).count();
        let before = done_now();
        let mut running = self
            .window
            .iter()
            .filter_map(|c| c.sent.as_ref().ok())
            .filter(|f| !f.is_done_now());
        let Some(first) = running.next() else {
            return;
        };
        if first.listen(&self.notify) || running.any(|f| f.listen(&self.notify)) {
            return;
        }
        first.block_until(
            || done_now() > before,
            Some(Instant::now() + WAKE_FALLBACK),
            || Some(self.notify.clone()),
        );
    }

    /// Submits chunks until the window is full or the input ends.
    fn fill(&mut self) {
        self.fill_up(false);
    }

    /// [`Map::fill`], past the window while the oldest chunk of an ordered
    /// map is slow (`behind_oldest`, see [`Map::has_room`]).
    fn fill_up(&mut self, behind_oldest: bool) {
        if let Some(timeout) = self.timeout.take() {
            self.deadline = crate::wait::deadline_after(timeout);
        }
        // Read once per fill: it takes the pool's lock.
        let max_chunks = self.max_chunks();
        while !self.exhausted
            && self.submit_error.is_none()
            && self.has_room(max_chunks, behind_oldest)
        {
            if self.deadline.is_some_and(|at| Instant::now() >= at) {
                // Out of time: the input left is not read. Each of its
                // items gets the error where the input says how many are
                // left (outcomes then zip with the input); else one error
                // stands for them all, unless the input says it has none.
                if self.input.size_hint().1 != Some(0) {
                    self.submit_error = Some((self.next_index, Error::TimeLimit));
                    if let (lo, Some(hi)) = self.input.size_hint() {
                        if lo == hi && hi <= MAX_UNREAD_ERRORS {
                            self.error_repeats = hi - 1;
                        }
                    }
                }
                self.exhausted = true;
                return;
            }
            let n = self.chunk_len(max_chunks);
            let items: Vec<A> = self.input.by_ref().take(n).collect();
            if items.len() < n {
                self.exhausted = true;
            }
            if items.is_empty() {
                return;
            }
            let len = items.len();
            self.largest = self.largest.max(len);
            let start = self.next_index;
            self.next_index += len;
            let (chunk, encoded) = match self.submit(items, start) {
                Ok(sent) => sent,
                Err(e) => {
                    // Later chunks would fail the same way: end the map
                    // here, with this error, and read no more input.
                    self.submit_error = Some((start, e));
                    self.exhausted = true;
                    return;
                }
            };
            // Learnt only from a whole encoding (a failed one stops short).
            if self.fixed.is_none() && encoded > 0 && chunk.sent.is_ok() {
                let budget = self.ex.pool().config.ring_capacity / RING_FRACTION;
                self.byte_cap = usize::try_from(budget as u128 * len as u128 / encoded as u128)
                    .unwrap_or(usize::MAX)
                    .max(1);
            }
            self.window.push_back(chunk);
        }
    }

    /// Submits `items` (the input's items from position `start` on) as one
    /// task, and returns its chunk and the size of its encoded arguments.
    /// A chunk whose items cannot be encoded comes back failed (its items
    /// fail, the others go on); an error that would fail every later chunk
    /// too (the pool was shut down or broke, the message cannot be sent) is
    /// returned.
    fn submit(&self, items: Vec<A>, start: usize) -> Result<(Chunk<A, R>, usize)> {
        let len = items.len();
        let mut encoded = 0;
        let mut pinned = false;
        let submitted = self.ex.submit_raw(
            offset_of(run_chunk::<F, A, R>),
            |out| {
                let before = out.len();
                let r = A::encode_batch(&items, out);
                // An encoder that failed may have emptied `out`.
                encoded = out.len().saturating_sub(before);
                pinned = crate::shared::has_pins();
                r
            },
            decode_chunk_result::<R>,
            self.deadline,
        );
        let (sent, cancel) = match submitted {
            Ok(fut) => {
                let cancel = Some(fut.canceller());
                (Ok(fut), cancel)
            }
            Err(e @ (Error::Codec { .. } | Error::ForeignArena)) => (Err(e), None),
            Err(e) => return Err(e),
        };
        // Kept for a split only while they are cheap to keep: arguments
        // that travel in the ring (larger ones would stay in memory twice
        // over), and no shared arrays (the pool never sends a task holding
        // them twice either).
        let keep = self.isolate
            && sent.is_ok()
            && !pinned
            && encoded <= self.ex.pool().config.ring_capacity / 2;
        let chunk = Chunk {
            sent,
            cancel,
            start,
            len,
            items: if keep { items } else { Vec::new() },
            resent: 0,
            looked_at: false,
            split_declined: false,
        };
        Ok((chunk, encoded))
    }

    /// If `chunk` failed because its worker died ([`Map::isolate_crashes`]),
    /// sends its items again in its place (at `pos` in the window) and
    /// returns true:
    ///
    /// * whole, if the worker died running another task (this one waited
    ///   behind it, where the pool does not run waiting tasks again), up to
    ///   [`RESENDS`] times;
    /// * else in two halves, if it has more than one item and a split is
    ///   left: once a crashed chunk is down to one item, that item fails
    ///   alone, and the others get their results.
    ///
    /// Nothing is sent once the map's time is up.
    fn split(
        &mut self,
        chunk: &mut Chunk<A, R>,
        outcome: &Result<ChunkOutput<R>>,
        pos: usize,
    ) -> bool {
        if !self.isolate {
            return false;
        }
        let (crash, killer) = match outcome {
            Ok(_) => {
                // One split back for the chunk, and one per 16 items: a map
                // whose items mostly succeed keeps isolating its bad ones.
                self.ok_items += chunk.len;
                self.splits_left = (self.splits_left + 1 + chunk.len / 16).min(SPLITS);
                return false;
            }
            Err(e @ Error::TerminatedWorker { task, .. }) => (e, *task),
            Err(_) => return false,
        };
        let Ok(fut) = &chunk.sent else {
            return false;
        };
        if chunk.items.is_empty() || self.deadline.is_some_and(|at| Instant::now() >= at) {
            return false;
        }
        if killer != fut.id() {
            // It only waited behind the chunk that killed the worker. Sent
            // again only where the pool does not run a dead worker's
            // waiting tasks again itself (elsewhere it already did, up to
            // its own limit), and at most RESENDS times: never split, its
            // items did not kill anything.
            let reruns = self.ex.pool().region().rings_protectable();
            if reruns || chunk.resent >= RESENDS {
                return false;
            }
            let items = std::mem::take(&mut chunk.items);
            let Ok((mut again, _)) = self.submit(items, chunk.start) else {
                return false;
            };
            again.resent = chunk.resent + 1;
            tracing::debug!(
                items = chunk.len,
                start = chunk.start,
                "a chunk waited behind one that killed its worker: sent again"
            );
            self.window.insert(pos, again);
            return true;
        }
        if chunk.items.len() < 2 || self.splits_left == 0 {
            self.bad_items += 1;
            return false;
        }
        let mut first = std::mem::take(&mut chunk.items);
        let second = first.split_off(first.len() / 2);
        let mid = chunk.start + first.len();
        // The pool takes no more tasks (shut down, broken): the chunk
        // fails whole, as it would have without a split.
        let Ok((a, _)) = self.submit(first, chunk.start) else {
            return false;
        };
        let len = second.len();
        let b = match self.submit(second, mid) {
            Ok((b, _)) => b,
            // The first half went, the second could not (the pool was
            // shut down meanwhile): its items fail with the crash.
            Err(_) => Chunk {
                sent: Err(crash.clone()),
                cancel: None,
                start: mid,
                len,
                items: Vec::new(),
                resent: 0,
                looked_at: false,
                split_declined: false,
            },
        };
        self.splits_left -= 1;
        tracing::debug!(
            items = chunk.len,
            start = chunk.start,
            "a chunk's worker died: its two halves run again"
        );
        self.window.insert(pos, b);
        self.window.insert(pos, a);
        true
    }

    /// Learns from a finished chunk how many items make a good chunk.
    fn adapt(&mut self, chunk: &Chunk<A, R>) {
        if self.fixed.is_some() {
            return;
        }
        // The worker's own measure of the chunk (decode, run, encode); zero
        // when it failed as a whole (its worker died).
        let ns = chunk.elapsed_ns();
        // A chunk smaller than the current size (sent before the last
        // growth, or a tapered one at the end) says less: its fixed costs
        // weigh more per item.
        if ns == 0 || chunk.len < self.auto.min(self.byte_cap) {
            return;
        }
        let per_item = (ns as f64 / chunk.len as f64).max(1.0);
        // Growth takes one window of chunks per step, which is most of a
        // short map of cheap items: see `next_auto` for how fast.
        (self.auto, self.ideal) = next_auto(self.auto, per_item);
    }

    /// Makes the finished chunk taken from position `pos` of the window
    /// the one being read: its outcomes, one per item, produced lazily (a
    /// `Vec<Result<R>>` would cost far more memory traffic than the
    /// values). Unless it was split instead: then its halves are in the
    /// window at `pos`, and the one being read stays as it was (read out).
    fn expand(&mut self, mut chunk: Chunk<A, R>, pos: usize) {
        // Wait first: the duration is known only once the chunk finished.
        let outcome = chunk.outcome();
        if !chunk.split_declined && self.split(&mut chunk, &outcome, pos) {
            return;
        }
        self.adapt(&chunk);
        self.progress.advance(chunk.len);
        self.ready_start = chunk.start;
        self.ready = match outcome {
            Ok((values, failures)) => Ready::new(values, failures, chunk.len),
            Err(e) => Ready::failed(e, chunk.len),
        };
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
            self.wait_for_oldest();
            let Some(chunk) = self.window.pop_front() else {
                self.progress.finish(self.submit_error.is_none());
                return self.take_submit_error().map(|(_, e)| Err(e));
            };
            self.expand(chunk, 0);
            self.fill();
        }
    }

    /// The pending submit error, for its next item.
    fn take_submit_error(&mut self) -> Option<(usize, Error)> {
        if self.error_repeats == 0 {
            return self.submit_error.take();
        }
        self.error_repeats -= 1;
        let (i, e) = self.submit_error.as_mut()?;
        *i += 1;
        Some((*i - 1, e.clone()))
    }

    fn next_unordered(&mut self) -> Option<(usize, Result<R>)> {
        loop {
            let i = self.ready_start + self.ready.position();
            if let Some(r) = self.ready.next() {
                return Some((i, r));
            }
            self.fill();
            if self.window.is_empty() {
                self.progress.finish(self.submit_error.is_none());
                return self.take_submit_error().map(|(i, e)| (i, Err(e)));
            }
            let pos = loop {
                if let Some(p) = self.window.iter().position(Chunk::is_done_now) {
                    break p;
                }
                self.wait_for_any_chunk();
            };
            let chunk = self.window.remove(pos).expect("position in range");
            self.expand(chunk, pos);
            // Keep the workers busy while the caller works through it.
            self.fill();
        }
    }
}

impl<F, A, R, I> Map<F, A, R, I> {
    /// Stops the map now: the chunks waiting (in the parent or in a
    /// worker's ring) never run, and the workers running its chunks are
    /// killed (the pool replaces them), as [`Future::kill`] does. Dropping
    /// the map instead lets the running chunks finish: with an item that
    /// never ends, its worker would stay busy for ever, and the executor's
    /// drop, which waits for the workers, with it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ex = loky::ProcessPoolExecutor::new(2)?;
    /// let mut m = ex.map(|x: u64| { if x == 3 { loop { std::thread::sleep(Duration::from_secs(1)) } } x }, 0..10);
    /// assert_eq!(m.next().unwrap()?, 0);
    /// m.kill(); // the worker stuck on item 3 is killed
    /// assert_eq!(ex.submit(|x: u64| x + 1, 1)?.result()?, 2);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn kill(mut self) {
        self.kill_on_drop = true;
    }
}

impl<F, A, R, I> Drop for Map<F, A, R, I> {
    /// Withdraws the chunks still waiting, in the parent or in a worker's
    /// ring; those already running end normally (no worker is killed, but
    /// for a [`timeout`](Self::timeout), which still falls, or after
    /// [`kill`](Self::kill)) and their results are dropped.
    fn drop(&mut self) {
        let waiting = || self.window.iter().filter_map(|c| c.cancel.as_ref());
        // Those in the parent first: a withdrawal drains the rings, which
        // could hand one of them to a worker meanwhile.
        for cancel in waiting() {
            cancel.cancel();
        }
        for cancel in waiting() {
            if self.kill_on_drop {
                cancel.kill();
            } else {
                cancel.withdraw();
            }
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

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.remaining()
    }
}

impl<F, A, R, I> std::iter::FusedIterator for Map<F, A, R, I> where Self: Iterator {}

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

    /// See [`Map::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.timeout(timeout);
        self
    }

    /// See [`Map::isolate_crashes`].
    pub fn isolate_crashes(mut self) -> Self {
        self.inner = self.inner.isolate_crashes();
        self
    }

    /// See [`Map::kill`].
    pub fn kill(self) {
        self.inner.kill();
    }

    /// See [`Map::largest_chunk`].
    #[doc(hidden)]
    pub fn largest_chunk(&self) -> usize {
        self.inner.largest_chunk()
    }

    #[cfg(feature = "progress")]
    pub(crate) fn inner(&self) -> &Map<F, A, R, I> {
        &self.inner
    }

    #[cfg(feature = "progress")]
    pub(crate) fn inner_mut(&mut self) -> &mut Map<F, A, R, I> {
        &mut self.inner
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

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.remaining()
    }
}

impl<F, A, R, I> std::iter::FusedIterator for MapUnordered<F, A, R, I> where Self: Iterator {}

fn decode_chunk_result<R: Payload>(status: u32, bytes: &[u8]) -> Result<ChunkOutput<R>> {
    decode_with(status, bytes, decode_chunk::<R>)
}

/// The outcomes of one finished chunk, yielded in item order.
struct Ready<R> {
    values: std::vec::IntoIter<R>,
    failures: std::iter::Peekable<std::vec::IntoIter<(u32, crate::protocol::Failure)>>,
    pos: usize,
    len: usize,
    /// The whole chunk failed (worker died and no split was left, codec
    /// error): every item gets it.
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

    /// Moves the outcomes left into `out` until the first failure, which
    /// it returns (a clean chunk's values go in one block).
    fn drain_into(&mut self, out: &mut Vec<R>) -> Result<()> {
        if self.clean {
            out.extend(self.values.by_ref());
            return Ok(());
        }
        while let Some(r) = self.next_mixed() {
            out.push(r?);
        }
        Ok(())
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

/// The automatic chunk size after a chunk of `auto` items (the current
/// size) that took `per_item_ns` nanoseconds per item, and the ideal size
/// (items that would take [`TARGET_CHUNK`], uncapped).
///
/// The next chunk aims at [`TARGET_CHUNK`], within [`MAX_AUTO_CHUNK`], and
/// grows at most to 16 times `auto`, or, once the measure is of at least
/// [`QUICK_MIN_ITEMS`] items, to the items that would take a sixteenth of
/// the target ([`QUICK_DIVISOR`]), whichever is more: durations are noisy,
/// and one item says little about the next ones (a first item that does
/// nothing, before items of 10 ms, made chunks of 35-75 such items), so a
/// chunk grows in steps; but a chunk of many cheap items that took
/// microseconds (its per-chunk costs, mostly) may grow at once to a
/// fraction of a millisecond. From one item to the cap took 4 steps of
/// 16x; now 3. It shrinks at once.
fn next_auto(auto: usize, per_item_ns: f64) -> (usize, usize) {
    let target = TARGET_CHUNK.as_nanos() as f64;
    let ideal = (target / per_item_ns) as usize;
    let quick = if auto >= QUICK_MIN_ITEMS {
        (target / f64::from(QUICK_DIVISOR) / per_item_ns) as usize
    } else {
        0
    };
    let most = auto.saturating_mul(16).max(quick).min(MAX_AUTO_CHUNK);
    (ideal.clamp(1, most), ideal)
}

/// The smallest chunk near the end of a known-length input, for chunks of
/// `auto` items, capped at `cap` items ([`MAX_AUTO_CHUNK`] or the ring's
/// share), when `ideal` items would take [`TARGET_CHUNK`] (0: not measured
/// yet).
///
/// Tapering spreads the last items over all the workers so that none is
/// left with a long last chunk: down to `auto / 8` items while chunks are
/// sized by their time (growing, or at the target). Chunks at their cap
/// whose items are cheap keep at least an eighth of the target's worth of
/// work, so at their cap their time is far below the target: a chunk costs
/// a round trip whatever its size, and the imbalance it could save is
/// smaller than the round trips it costs.
fn taper_floor(auto: usize, cap: usize, ideal: usize) -> usize {
    let eighth = auto / TAPER_FLOOR_DIVISOR;
    let floor = if auto >= cap {
        auto.min(eighth.max(ideal / TAPER_FLOOR_DIVISOR))
    } else {
        eighth
    };
    floor.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{next_auto, taper_floor, MAX_AUTO_CHUNK};
    use crate::ProcessPoolExecutor;

    fn slow(x: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(1));
        x
    }

    #[test]
    fn automatic_chunks_follow_the_measured_task_durations() {
        // One worker is the case where the ordered map always waits on a
        // chunk still running: the duration must be read after it finished.
        for workers in [1, 2] {
            let ex = ProcessPoolExecutor::new(workers).unwrap();
            let mut fast = ex.map(|x: u64| x * 2, 0..1_000_000);
            let sum = fast.by_ref().map(|r| r.unwrap()).fold(0, u64::wrapping_add);
            assert_eq!(sum, 999_999_000_000);
            // Nanoseconds per item: the chunks grow to the cap.
            let n = fast.largest_chunk();
            assert!(
                (MAX_AUTO_CHUNK / 4..=MAX_AUTO_CHUNK).contains(&n),
                "fast items, {workers} workers: largest chunk {n}"
            );

            let mut slow_map = ex.map(slow, 0..200);
            assert_eq!(slow_map.by_ref().map(|r| r.unwrap()).sum::<u64>(), 19_900);
            // At least 1 ms per item against a 5 ms target: at most 5 items
            // per chunk, and more than 1 once a duration was measured.
            let n = slow_map.largest_chunk();
            assert!(
                (2..=5).contains(&n),
                "1 ms items, {workers} workers: largest chunk {n}"
            );

            let mut slow_unordered = ex.map_unordered(slow, 0..200);
            assert_eq!(slow_unordered.by_ref().count(), 200);
            let n = slow_unordered.largest_chunk();
            assert!(
                (2..=5).contains(&n),
                "1 ms items, unordered: largest chunk {n}"
            );
        }
    }

    #[test]
    fn automatic_chunks_grow_in_steps_and_shrink_at_once() {
        // One item in 10 µs: 16x, though a sixteenth of the 5 ms target
        // would be 31 (one item says too little).
        assert_eq!(next_auto(1, 10_000.0), (16, 500));
        // 16 items in 10 µs each (mostly the chunk's own costs): the next
        // chunk may take a sixteenth of the target, 31 items (16x: 256)...
        assert_eq!(next_auto(16, 10_000.0), (256, 500));
        // ...or, at 1 µs per item, 312 (16x: 256).
        assert_eq!(next_auto(16, 1_000.0), (312, 5000));
        // One item in 200 µs: 16x, though the target would allow 25.
        assert_eq!(next_auto(1, 200_000.0), (16, 25));
        // One item in 1 ms: 5 items make the target, no more.
        assert_eq!(next_auto(1, 1e6), (5, 5));
        // Nanoseconds per item: up to the cap, whatever the growth allows.
        assert_eq!(next_auto(3900, 3.0).0, MAX_AUTO_CHUNK);
        // 80 ns per item: a sixteenth of the target, 3906 (16x: 576).
        assert_eq!(next_auto(36, 80.0), (3906, 62_500));
        // 200 ns per item after 16: 1562 (16x: 256).
        assert_eq!(next_auto(16, 200.0), (1562, 25_000));
        // Slower than measured before: shrinks at once, at least 1 item.
        assert_eq!(next_auto(MAX_AUTO_CHUNK, 1e6), (5, 5));
        assert_eq!(next_auto(100, 1e9), (1, 0));
    }

    #[test]
    fn tapering_stops_where_it_would_cost_more_than_it_saves() {
        let cap = MAX_AUTO_CHUNK;
        // Not measured yet, or sized by time: an eighth of the chunk.
        assert_eq!(taper_floor(4096, cap, 0), 512);
        assert_eq!(taper_floor(4096, cap, 4096), 512);
        assert_eq!(taper_floor(5, cap, 5), 1);
        // Still growing, whatever the measure says: an eighth of the chunk
        // (one cheap first item may hide costly ones).
        assert_eq!(taper_floor(35, cap, 500_000), 4);
        // Capped far below the target: no tapering.
        assert_eq!(taper_floor(cap, cap, 1_000_000), cap);
        // Capped by the ring, below MAX_AUTO_CHUNK: the same.
        assert_eq!(taper_floor(64, 64, 1_000_000), 64);
        // In between: an eighth of the target's items.
        assert_eq!(taper_floor(cap, cap, 80_000), 10_000);
    }

    #[test]
    fn automatic_chunks_of_large_items_stay_within_a_quarter_of_the_ring() {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        // 4 KiB per item, fast to process: the duration alone would allow
        // 32 768 items (128 MiB) per chunk; the default 1 MiB ring allows 64.
        let mut m = ex.map(
            |v: Vec<u8>| v.len() as u64,
            (0..5000).map(|_| vec![7u8; 4096]),
        );
        assert_eq!(m.by_ref().map(|r| r.unwrap()).sum::<u64>(), 5000 * 4096);
        // The byte cap is the point; growth past one item shows the cap,
        // not the durations, bounds it. (How far the durations let it grow
        // depends on the machine's load: 15 was seen under a parallel test
        // run on 2 cores.)
        let n = m.largest_chunk();
        assert!((2..=64).contains(&n), "largest chunk {n}");
    }

    #[test]
    fn a_fixed_chunksize_is_kept() {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let mut m = ex.map(|x: u64| x, 0..10_000).chunksize(300);
        assert_eq!(m.by_ref().count(), 10_000);
        assert_eq!(m.largest_chunk(), 300);
    }

    /// Steps through `it`, checking before each item that its size hint
    /// brackets what is really left; returns how many items it yielded.
    fn count_checking_hints<T>(mut it: impl Iterator<Item = T>, what: &str) -> usize {
        let mut hints = vec![it.size_hint()];
        while it.next().is_some() {
            hints.push(it.size_hint());
        }
        assert!(it.next().is_none(), "{what}: not fused");
        let total = hints.len() - 1;
        for (i, (lo, hi)) in hints.into_iter().enumerate() {
            let left = total - i;
            assert!(
                lo <= left,
                "{what}: after {i} items, lower bound {lo} > {left} left"
            );
            assert!(
                hi.map_or(true, |hi| hi >= left),
                "{what}: after {i} items, upper bound {hi:?} < {left} left"
            );
        }
        total
    }

    #[test]
    fn size_hints_bracket_the_items_left() {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let m = ex.map(|x: u64| x, 0..1000).chunksize(64);
        assert_eq!(m.size_hint(), (0, Some(1000)));
        assert_eq!(count_checking_hints(m, "ordered"), 1000);
        let m = ex.map_unordered(|x: u64| x, 0..1000).chunksize(64);
        assert_eq!(count_checking_hints(m, "unordered"), 1000);
        // Unknown length: no upper bound until the input ends.
        let m = ex
            .map(|x: u64| x, (0..500).filter(|x| x % 2 == 0))
            .chunksize(16);
        assert_eq!(count_checking_hints(m, "filtered"), 250);

        // Once the pool is shut down mid-map, the map ends with one error:
        // fewer items than the input has, still within the bounds.
        let mut m = ex.map(|x: u64| x, 0..10_000).chunksize(10);
        assert!(m.next().is_some());
        let (lo, hi) = m.size_hint();
        assert!(lo <= 9_999 && hi == Some(9_999), "{lo} {hi:?}");
        ex.shutdown(true, false, false);
        let n = count_checking_hints(m, "shut down");
        assert!(n < 9_999, "{n} items after shutdown");
    }
}
