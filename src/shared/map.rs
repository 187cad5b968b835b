//! `map` over shared arrays: element-wise, in place, chunked across the
//! workers.

use bytemuck::Pod;

use super::{SharedSlice, SharedSliceMut, SharedVec};
use crate::codec::Payload;
use crate::error::{CodecStage, Error, Result};
use crate::executor::ProcessPoolExecutor;
use crate::task::TaskFn;

/// Chunks per worker: enough to even out uneven workers, few enough that
/// the per-task cost (a few µs) is lost in the work.
const CHUNKS_PER_WORKER: usize = 4;
/// No chunk is smaller than this many elements, unless that leaves a worker
/// without one: a task costs a few µs, 256 cheap elements about as much.
/// Not more: the chunks are at most `CHUNKS_PER_WORKER` per worker anyway,
/// and a larger floor leaves workers idle on a small array of costly
/// elements (10 000 elements of 1 ms over 16 workers were 3 chunks of 4096
/// with a floor of 4096: 4.1 s instead of 0.6 s). Nor does the floor make
/// fewer chunks than workers: 100 simulations of 20 ms each were one chunk
/// on one worker of two, 2 s instead of 1 s.
const MIN_CHUNK: usize = 256;

impl ProcessPoolExecutor {
    /// `f` applied to every element of `input`, into a new [`SharedVec`] in
    /// the same arena: the work is split into a few chunks per worker (of
    /// at least 256 elements, unless that leaves a worker without one), each
    /// task reads its chunk of `input` and writes its chunk of the output in
    /// place, so no element is copied through the rings.
    ///
    /// ```
    /// use loky::{ProcessPoolExecutor, SharedVec};
    ///
    /// let ex = ProcessPoolExecutor::new(2)?;
    /// let input = SharedVec::from_iter_in(&ex, 0..100_000u64)?;
    /// let doubled = ex.map_shared(|x: u64| x * 2, &input)?;
    /// assert_eq!(doubled.as_slice()[99_999], 199_998);
    /// # Ok::<(), loky::Error>(())
    /// ```
    ///
    /// Fails with the first task's error if any task fails (a panic in `f`,
    /// a worker crash); every task has finished by then.
    ///
    /// It has no time limit and chooses the chunks itself. For a time limit,
    /// chunks of your own size, or work on each chunk as it finishes, submit
    /// the chunks yourself: [`SharedVec::chunks`] and
    /// [`SharedVec::chunks_mut`] hand out the handles, one pair per task.
    ///
    /// ```
    /// use std::time::Duration;
    /// use loky::{ProcessPoolExecutor, SharedSlice, SharedSliceMut, SharedVec};
    ///
    /// fn double((input, mut output): (SharedSlice<u64>, SharedSliceMut<u64>)) {
    ///     for (o, &i) in output.iter_mut().zip(input.iter()) {
    ///         *o = i * 2;
    ///     }
    /// }
    ///
    /// let ex = ProcessPoolExecutor::new(2)?;
    /// let input = SharedVec::from_iter_in(&ex, 0..100_000u64)?;
    /// let mut output = SharedVec::<u64>::zeroed(&ex, input.len())?;
    /// let limit = Duration::from_secs(60);
    /// let tasks = input
    ///     .chunks(10_000)?
    ///     .zip(output.chunks_mut(10_000)?)
    ///     .map(|pair| ex.submit_with_timeout(double, pair, limit))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// for task in tasks {
    ///     task.result()?; // Err(Error::TimeLimit) for a chunk past its limit
    /// }
    /// assert_eq!(output.as_slice()[99_999], 199_998);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn map_shared<F, T, R>(&self, f: F, input: &SharedVec<T>) -> Result<SharedVec<R>>
    where
        F: TaskFn<T, R>,
        T: Pod,
        R: Pod,
    {
        let mut out = SharedVec::<R>::uninit(self, input.len())?;
        self.map_shared_into(f, input, &mut out)?;
        Ok(out)
    }

    /// Like [`map_shared`](Self::map_shared), writing into `output`, which
    /// must have the same length as `input` ([`Error::InvalidArgument`]
    /// otherwise).
    pub fn map_shared_into<F, T, R>(
        &self,
        f: F,
        input: &SharedVec<T>,
        output: &mut SharedVec<R>,
    ) -> Result<()>
    where
        F: TaskFn<T, R>,
        T: Pod,
        R: Pod,
    {
        let _ = f;
        self.map_shared_into_with(ignore_arg::<F, T, R>, input, output, ())
    }

    /// Like [`map_shared`](Self::map_shared), with an argument that every
    /// element's call borrows: `f(x, &arg)`. `arg` is any
    /// [`Payload`](crate::Payload) but a shared array (an
    /// [`Error::Codec`]): parameters, a lookup table. It is encoded once,
    /// into the pool's arena (so it counts towards
    /// [`arena_limit`](crate::ProcessPoolExecutorBuilder::arena_limit) while
    /// the map runs), and decoded once per task (a few per worker), not per
    /// element.
    ///
    /// ```
    /// use loky::{ProcessPoolExecutor, SharedVec};
    ///
    /// let ex = ProcessPoolExecutor::new(2)?;
    /// let input = SharedVec::from_iter_in(&ex, (0..1000).map(f64::from))?;
    /// let (scale, offset) = (0.5, 10.0); // known only at run time
    /// let affine = |x: f64, &(a, b): &(f64, f64)| a * x + b;
    /// let out = ex.map_shared_with(affine, &input, (scale, offset))?;
    /// assert_eq!(out.as_slice()[999], 509.5);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn map_shared_with<F, T, A, R>(
        &self,
        f: F,
        input: &SharedVec<T>,
        arg: A,
    ) -> Result<SharedVec<R>>
    where
        F: Fn(T, &A) -> R + Copy + Send + 'static,
        T: Pod,
        A: Payload,
        R: Pod,
    {
        let mut out = SharedVec::<R>::uninit(self, input.len())?;
        self.map_shared_into_with(f, input, &mut out, arg)?;
        Ok(out)
    }

    /// [`map_shared_with`](Self::map_shared_with), writing into `output`, as
    /// [`map_shared_into`](Self::map_shared_into).
    pub fn map_shared_into_with<F, T, A, R>(
        &self,
        f: F,
        input: &SharedVec<T>,
        output: &mut SharedVec<R>,
        arg: A,
    ) -> Result<()>
    where
        F: Fn(T, &A) -> R + Copy + Send + 'static,
        T: Pod,
        A: Payload,
        R: Pod,
    {
        const { crate::transport::assert_zero_sized::<F>() };
        let _ = f;
        if input.len() != output.len() {
            return Err(Error::InvalidArgument(format!(
                "map_shared_into: input has {} elements, output {}",
                input.len(),
                output.len()
            )));
        }
        // Encoded once, into the arena (16-byte words keep it aligned for
        // decoding): the tasks read it there, so a large table is held
        // once, not once per task waiting in the queue.
        let mut encoded = rkyv::util::AlignedVec::<16>::new();
        arg.encode(&mut encoded).map_err(|message| Error::Codec {
            stage: CodecStage::EncodeArgument,
            message,
        })?;
        // (None for an empty encoding, `map_shared`'s `()`: nothing to hold.)
        let shared = if encoded.is_empty() {
            None
        } else {
            let mut words = SharedVec::<u128>::zeroed(self, encoded.len().div_ceil(16))?;
            bytemuck::cast_slice_mut::<u128, u8>(words.as_mut_slice())[..encoded.len()]
                .copy_from_slice(&encoded);
            Some(words)
        };
        let arg_len = encoded.len() as u64;
        drop(encoded);
        let chunk = shared_chunk_len(input.len(), self.max_workers());
        let mut futures = Vec::new();
        let mut first_error = None;
        for (i, o) in input.chunks(chunk)?.zip(output.chunks_mut(chunk)?) {
            let arg = shared.as_ref().map(|words| words.slice(..)).transpose()?;
            match self.submit(apply_chunk::<F, T, A, R>, (i, o, arg, arg_len)) {
                Ok(fut) => futures.push(fut),
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        // Wait for every task, even after a failure: until they are done
        // their chunks of `output` are leased to them.
        for fut in futures {
            let outcome = fut.result().and_then(|decoded| {
                decoded.map_err(|message| Error::Codec {
                    stage: CodecStage::DecodeArgument,
                    message,
                })
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `F` as a function of an element and a unit argument.
fn ignore_arg<F, T, R>(x: T, (): &()) -> R
where
    F: TaskFn<T, R>,
{
    crate::transport::conjure::<F>()(x)
}

fn shared_chunk_len(len: usize, workers: usize) -> usize {
    let workers = workers.max(1);
    len.div_ceil(workers * CHUNKS_PER_WORKER)
        .max(MIN_CHUNK)
        .min(len.div_ceil(workers))
        .max(1)
}

/// The task of one chunk of `map_shared_into_with`: `F` over each element
/// of `input` into `output`, with the argument decoded from the first
/// `arg_len` bytes of `arg` (its encoding, in the arena; none for an empty
/// one); an argument that cannot be decoded is the task's error.
fn apply_chunk<F, T, A, R>(
    (input, mut output, arg, arg_len): (
        SharedSlice<T>,
        SharedSliceMut<R>,
        Option<SharedSlice<u128>>,
        u64,
    ),
) -> std::result::Result<(), String>
where
    F: Fn(T, &A) -> R + Copy + Send + 'static,
    T: Pod,
    A: Payload,
    R: Pod,
{
    // Decoded from a private copy when large (other workers map the arena
    // too), as results are in the parent.
    let words: &[u128] = arg.as_deref().unwrap_or(&[]);
    let bytes = bytemuck::cast_slice::<u128, u8>(words)
        .get(..usize::try_from(arg_len).unwrap_or(usize::MAX))
        .ok_or("the argument's length is past its array")?;
    let arg = A::decode(bytes)?;
    let f = crate::transport::conjure::<F>();
    for (o, &i) in output.iter_mut().zip(input.iter()) {
        *o = f(i, &arg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lengths() {
        assert_eq!(shared_chunk_len(0, 2), 1);
        // Every worker gets a share of a small array: its elements may be
        // costly (a parameter sweep).
        assert_eq!(shared_chunk_len(10, 2), 5);
        assert_eq!(shared_chunk_len(255, 2), 128);
        assert_eq!(shared_chunk_len(100, 16), 7);
        assert_eq!(shared_chunk_len(1, 16), 1);
        assert_eq!(shared_chunk_len(600, 2), 256);
        assert_eq!(shared_chunk_len(10_000_000, 2), 1_250_000);
        // Every worker gets work on a small array.
        assert_eq!(shared_chunk_len(10_000, 16), MIN_CHUNK);
        assert!(10_000usize.div_ceil(MIN_CHUNK) >= 16);
        assert_eq!(shared_chunk_len(100_000, 16), 1563);
    }
}
