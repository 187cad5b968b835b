//! `map` over shared arrays: element-wise, in place, chunked across the
//! workers.

use bytemuck::Pod;

use super::{SharedSlice, SharedSliceMut, SharedVec};
use crate::error::{Error, Result};
use crate::executor::ProcessPoolExecutor;
use crate::task::TaskFn;

/// Chunks per worker: enough to even out uneven workers, few enough that
/// the per-task cost (a few µs) is lost in the work.
const CHUNKS_PER_WORKER: usize = 4;
/// No chunk is smaller than this many elements (unless the array is): a
/// task costs a few µs, 256 cheap elements about as much. Not more: the
/// chunks are at most `CHUNKS_PER_WORKER` per worker anyway, and a larger
/// floor leaves workers idle on a small array of costly elements (10 000
/// elements of 1 ms over 16 workers were 3 chunks of 4096 with a floor of
/// 4096: 4.1 s instead of 0.6 s).
const MIN_CHUNK: usize = 256;

impl ProcessPoolExecutor {
    /// `f` applied to every element of `input`, into a new [`SharedVec`] in
    /// the same arena: the work is split into a few chunks per worker, each
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
        if input.len() != output.len() {
            return Err(Error::InvalidArgument(format!(
                "map_shared_into: input has {} elements, output {}",
                input.len(),
                output.len()
            )));
        }
        let chunk = shared_chunk_len(input.len(), self.max_workers());
        let mut futures = Vec::new();
        let mut first_error = None;
        for (i, o) in input.chunks(chunk)?.zip(output.chunks_mut(chunk)?) {
            match self.submit(apply_chunk::<F, T, R>, (i, o)) {
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
            if let Err(e) = fut.result() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Elements per chunk for `len` elements over `workers` workers.
fn shared_chunk_len(len: usize, workers: usize) -> usize {
    len.div_ceil(workers.max(1) * CHUNKS_PER_WORKER)
        .max(MIN_CHUNK)
        .min(len.max(1))
}

/// The task of one chunk: `F` over each element of `input` into `output`.
fn apply_chunk<F, T, R>((input, mut output): (SharedSlice<T>, SharedSliceMut<R>))
where
    F: TaskFn<T, R>,
    T: Pod,
    R: Pod,
{
    let f = crate::transport::conjure::<F>();
    for (o, &i) in output.iter_mut().zip(input.iter()) {
        *o = f(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lengths() {
        assert_eq!(shared_chunk_len(0, 2), 1);
        assert_eq!(shared_chunk_len(10, 2), 10);
        assert_eq!(shared_chunk_len(10_000_000, 2), 1_250_000);
        // Every worker gets work on a small array.
        assert_eq!(shared_chunk_len(10_000, 16), MIN_CHUNK);
        assert!(10_000usize.div_ceil(MIN_CHUNK) >= 16);
        assert_eq!(shared_chunk_len(100_000, 16), 1563);
    }
}
