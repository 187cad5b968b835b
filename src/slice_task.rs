//! Tasks that read a slice in place: `submit_slice`.
//!
//! The slice is copied once, by the caller, into the task's message (a
//! shared-memory spill buffer when large), and the worker's function gets a
//! `&[T]` pointing into that message: no second copy, no allocation in the
//! worker. Message layout, after the task header:
//!
//! ```text
//! [elements: u64][arg_len: u64][arg encoding][pad to 16][elements * size_of::<T>() bytes]
//! ```

use std::time::Duration;

use bytemuck::Pod;
use rkyv::util::AlignedVec;

use crate::codec::Payload;
use crate::error::Result;
use crate::executor::{decode_result, ProcessPoolExecutor};
use crate::future::Future;
use crate::task::SliceTaskFn;
use crate::transport::{assert_zero_sized, conjure, offset_of};

/// Bytes before the argument's encoding.
const PREFIX: usize = 16;

/// What `T` must be to travel as raw bytes and be read in place.
const fn assert_slice_element<T>() {
    assert!(
        std::mem::size_of::<T>() > 0,
        "loky: submit_slice needs elements of non-zero size"
    );
    assert!(
        std::mem::align_of::<T>() <= 16,
        "loky: submit_slice needs elements aligned to at most 16 bytes"
    );
}

impl ProcessPoolExecutor {
    /// Submits `f(data, arg)` to run in a worker, which reads `data` in
    /// place: a large array sent by value for the price of one copy.
    ///
    /// [`submit`](Self::submit) with a `Vec<T>` argument copies the array
    /// twice: once into shared memory here, once out of it into the
    /// worker's own `Vec`, whose fresh pages the worker also has to fault
    /// in. Here the copy made by this call (into shared memory, split
    /// across threads when large) is the only one: `f` gets a `&[T]` that
    /// points at it, valid while `f` runs. Nothing else writes there, and
    /// the caller's `data` may change or be dropped as soon as this
    /// returns.
    ///
    /// `T` is any [`Pod`](bytemuck::Pod) type (numbers, arrays of them,
    /// `#[repr(C)]` structs deriving `Pod`) of non-zero size and aligned to
    /// at most 16 bytes (checked at compile time). `arg` travels as in
    /// [`submit`](Self::submit): pass `()` if `f` needs nothing more. `f`
    /// must be a fn item or a closure without captures, as for every task.
    ///
    /// To keep an array in shared memory across many tasks, or to have
    /// workers write into one, use a [`SharedVec`](crate::SharedVec)
    /// instead: it is copied in once, and a task gets a handle to it rather
    /// than a copy.
    ///
    /// Errors as [`submit`](Self::submit).
    ///
    /// ```
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let data: Vec<f64> = (0..1_000_000).map(f64::from).collect();
    /// fn sum_above(xs: &[f64], floor: f64) -> f64 {
    ///     xs.iter().filter(|&&x| x > floor).sum()
    /// }
    /// let total = ex.submit_slice(sum_above, &data, 999_997.0)?;
    /// assert_eq!(total.result()?, 999_998.0 + 999_999.0);
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn submit_slice<F, T, A, R>(&self, f: F, data: &[T], arg: A) -> Result<Future<R>>
    where
        F: SliceTaskFn<T, A, R>,
        T: Pod,
        A: Payload,
        R: Payload,
    {
        self.submit_slice_as(f, data, arg, decode_result::<R>, None)
    }

    /// [`submit_slice`](Self::submit_slice) with a time limit, as
    /// [`submit_with_timeout`](Self::submit_with_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
    /// let spin = |_: &[u8], (): ()| loop { std::hint::spin_loop() };
    /// let stuck = ex.submit_slice_with_timeout(spin, &[1, 2, 3], (), Duration::from_millis(50))?;
    /// assert!(matches!(stuck.result(), Err::<(), _>(loky::Error::TimeLimit)));
    /// # Ok::<(), loky::Error>(())
    /// ```
    pub fn submit_slice_with_timeout<F, T, A, R>(
        &self,
        f: F,
        data: &[T],
        arg: A,
        timeout: Duration,
    ) -> Result<Future<R>>
    where
        F: SliceTaskFn<T, A, R>,
        T: Pod,
        A: Payload,
        R: Payload,
    {
        let deadline = crate::wait::deadline_after(timeout);
        self.submit_slice_as(f, data, arg, decode_result::<R>, deadline)
    }

    /// Submits `g(data, arg)` as a slice task whose result message
    /// `decode` reads (a codec view's: see [`crate::CodecExecutor`]).
    pub(crate) fn submit_slice_as<G, T, A, R, Out>(
        &self,
        g: G,
        data: &[T],
        arg: A,
        decode: crate::future::Decoder<Out>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Future<Out>>
    where
        G: SliceTaskFn<T, A, R>,
        T: Pod,
        A: Payload,
        R: Payload,
        Out: Send + 'static,
    {
        const { assert_zero_sized::<G>() };
        const { assert_slice_element::<T>() };
        let _ = g;
        self.submit_raw(
            offset_of(run_slice_task::<G, T, A, R>),
            |out| encode(data, &arg, out),
            decode,
            deadline,
        )
    }
}

/// Appends the message body (see the module's layout) to `out`, which
/// starts 16-byte aligned.
fn encode<T: Pod, A: Payload>(data: &[T], arg: &A, out: &mut AlignedVec) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    arg.encode(out)?;
    let arg_len = out.len() - start - PREFIX;
    let elements = data.len() as u64;
    out[start..start + 8].copy_from_slice(&elements.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&(arg_len as u64).to_le_bytes());
    out.resize(out.len().next_multiple_of(16), 0);
    crate::codec::append_direct(out, bytemuck::cast_slice(data))
}

/// Splits a message body into the argument's bytes and the slice.
fn parse<T: Pod>(input: &[u8]) -> std::result::Result<(&[u8], &[T]), String> {
    let word = |at: usize| -> std::result::Result<usize, String> {
        let bytes = input
            .get(at..at + 8)
            .ok_or("slice task message too short")?;
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        usize::try_from(u64::from_le_bytes(w)).map_err(|_| "slice length out of range".to_owned())
    };
    let (elements, arg_len) = (word(0)?, word(8)?);
    let arg_end = PREFIX
        .checked_add(arg_len)
        .filter(|&e| e <= input.len())
        .ok_or("slice task argument out of range")?;
    let data_start = arg_end.next_multiple_of(16);
    let data_end = elements
        .checked_mul(std::mem::size_of::<T>())
        .and_then(|n| n.checked_add(data_start))
        .filter(|&e| e <= input.len())
        .ok_or("slice out of range of its message")?;
    let data = bytemuck::try_cast_slice(&input[data_start..data_end])
        .map_err(|e| format!("slice not readable in place: {e}"))?;
    Ok((&input[PREFIX..arg_end], data))
}

/// The trampoline of a `submit_slice` task.
fn run_slice_task<F, T, A, R>(input: &[u8], out: &mut AlignedVec) -> u32
where
    F: SliceTaskFn<T, A, R>,
    T: Pod,
    A: Payload,
    R: Payload,
{
    // Reported as any argument that cannot be decoded.
    let (arg, data) = match crate::transport::decode_arg(input, |_| parse::<T>(input)) {
        Ok(parts) => parts,
        Err((status, failure)) => return crate::transport::fail(out, status, failure),
    };
    crate::transport::run_decoded(arg, out, move |a: A| conjure::<F>()(data, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<T: Pod, A: Payload>(data: &[T], arg: A) -> AlignedVec {
        let mut out = AlignedVec::new();
        encode(data, &arg, &mut out).unwrap();
        out
    }

    #[test]
    fn a_body_parses_back_to_its_slice_and_argument() {
        for n in [0usize, 1, 3, 1000] {
            let data: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let bytes = body(&data, (7u8, String::from("k")));
            let (arg, back) = parse::<u32>(&bytes).unwrap();
            assert_eq!(back, &data[..]);
            assert_eq!(<(u8, String)>::decode(arg).unwrap(), (7, "k".to_owned()));
        }
    }

    #[test]
    fn a_large_slice_goes_straight_to_shared_memory_whatever_its_argument() {
        let data: Vec<f64> = (0..(2 << 20) / 8).map(|i| i as f64).collect();
        // A small argument, and one that makes the scratch buffer grow (and
        // move) before the slice is written.
        for arg in [Vec::new(), vec![7u8; 8000], vec![9u8; 3 << 20]] {
            let mut out = AlignedVec::with_capacity(4096);
            out.extend_from_slice(&[0; 16]);
            let (written, spilled) =
                crate::codec::direct_encode(&mut out, |out| encode(&data, &arg, out));
            written.unwrap();
            let (buffer, len) = spilled.expect("the slice went to a spill buffer");
            assert_eq!(out.len(), 16, "only the header stays behind");
            let (arg_bytes, back) = parse::<f64>(&buffer.as_slice()[16..len]).unwrap();
            assert_eq!(back, &data[..]);
            assert_eq!(<Vec<u8>>::decode(arg_bytes).unwrap(), arg);
        }
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_wild_read() {
        let bytes = body(&[1u64, 2, 3], ());
        // Cut anywhere: too short for what the prefix announces.
        for cut in 0..bytes.len() {
            assert!(parse::<u64>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Lengths that overflow or point past the end.
        for (at, value) in [(0, u64::MAX), (0, 4), (8, u64::MAX), (8, 1 << 40)] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            assert!(parse::<u64>(&bad).is_err(), "word {at} = {value}");
        }
    }
}
