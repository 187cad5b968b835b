//! Function transport without registration.
//!
//! A task is sent as the offset of a monomorphised trampoline
//! `run_task::<F, A, R>` from [`ANCHOR`], a `static` of this crate. The worker
//! is the same binary (checked at attach), so `ANCHOR + offset` is the same
//! trampoline in its address space even under ASLR, which moves the whole
//! image at once. The offset is taken from a `static` and not from a
//! function because small functions can be duplicated across codegen units,
//! each copy at its own address.
//!
//! `F` must be zero-sized (a fn item or a closure without captures), so the
//! worker needs nothing but the type to call it: the trampoline conjures the
//! value. A compile-time assertion rejects anything else.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rkyv::util::AlignedVec;

use crate::codec::Payload;
use crate::protocol::{Failure, STATUS_DECODE_ARG, STATUS_ENCODE_RESULT, STATUS_OK, STATUS_PANIC};

/// The base every trampoline offset is measured from.
#[used]
static ANCHOR: u8 = 0;

/// Entry point of a task in the worker: decode the argument from `input`,
/// run, and append the encoded result (or a [`Failure`]) to `out`; returns a
/// `STATUS_*` code.
pub(crate) type Trampoline = fn(input: &[u8], out: &mut AlignedVec) -> u32;

/// The offset of `t` from [`ANCHOR`].
pub(crate) fn offset_of(t: Trampoline) -> i64 {
    (t as usize as i64).wrapping_sub(std::ptr::addr_of!(ANCHOR) as usize as i64)
}

/// The trampoline at `offset` from [`ANCHOR`].
///
/// # Safety
///
/// `offset` must come from [`offset_of`] in a process running the same
/// binary (the worker checks this at attach).
pub(crate) unsafe fn resolve(offset: i64) -> Trampoline {
    let addr = (std::ptr::addr_of!(ANCHOR) as usize as i64).wrapping_add(offset) as usize;
    // SAFETY: per the contract, `addr` is the address of a function of type
    // `Trampoline` in this same image.
    unsafe { std::mem::transmute::<usize, Trampoline>(addr) }
}

/// Proves at compile time that `F` carries no data.
pub(crate) const fn assert_zero_sized<F>() {
    assert!(
        std::mem::size_of::<F>() == 0,
        "loky: this task carries data: a closure that captures variables, or a fn pointer \
         (`fn(A) -> R`, chosen at run time). A task must be a fn item or a closure without \
         captures: pass captured values in the argument, e.g. \
         `submit(|(x, k): (u64, u64)| x + k, (x, k))` instead of `submit(move |x: u64| x + k, x)` \
         (over shared arrays, `map_shared_with(|x: u64, k: &u64| x + k, &input, k)`); \
         choose among functions inside one task, e.g. by matching on an enum in its argument \
         (see loky::TaskFn)"
    );
}

/// Produces the (only) value of a zero-sized function type.
pub(crate) fn conjure<F: Copy>() -> F {
    const { assert_zero_sized::<F>() };
    // SAFETY: `F` is zero-sized (asserted at compile time), so reading it
    // touches no memory and a dangling, aligned, non-null pointer is valid
    // for the read; fn items and non-capturing closures have no validity
    // invariant beyond their type, and `F: Copy` rules out drop glue.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<Failure>> = const { std::cell::RefCell::new(None) };
}

/// Installs the worker's panic hook, on the thread that runs the tasks: a
/// panic there is recorded (message, location and, with `RUST_BACKTRACE`, a
/// backtrace) for the task's result instead of printed. A panic that no
/// result will report is printed as usual: on another thread (one a task
/// started), or when panics abort (`panic = "abort"`: the worker dies with
/// SIGABRT, and its stderr is the only place the message reaches).
pub(crate) fn install_panic_hook() {
    let tasks = std::thread::current().id();
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let elsewhere = std::thread::current().id() != tasks;
        if cfg!(panic = "abort") || elsewhere {
            print(info);
        }
        if elsewhere {
            return;
        }
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        let location = info
            .location()
            .map(|l| l.to_string())
            .unwrap_or_else(|| "<unknown>".into());
        let bt = std::backtrace::Backtrace::capture();
        let backtrace =
            (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
        tracing::debug!(%message, %location, "task panicked");
        let _ = LAST_PANIC.try_with(|p| {
            *p.borrow_mut() = Some(Failure {
                message,
                location,
                backtrace,
            })
        });
    }));
}

fn take_panic() -> Failure {
    LAST_PANIC
        .try_with(|p| p.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_else(|| Failure {
            message: "panic".into(),
            location: "<unknown>".into(),
            backtrace: None,
        })
}

/// Writes `failure` as the result payload and returns `status`.
pub(crate) fn fail(out: &mut AlignedVec, status: u32, failure: Failure) -> u32 {
    let mark = out.len();
    if crate::codec::archive(&failure, out).is_err() {
        out.resize(mark, 0);
    }
    status
}

/// Runs `body`, catching a panic into a `Failure`.
fn guarded<T>(body: impl FnOnce() -> T) -> Result<T, Failure> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|_| take_panic())
}

/// Encodes with `write` after what `out` holds, reporting panics and errors.
fn encode_result(
    out: &mut AlignedVec,
    write: impl FnOnce(&mut AlignedVec) -> Result<(), String>,
) -> u32 {
    let mark = out.len();
    match guarded(|| write(out)) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(message)) => {
            out.resize(mark, 0);
            fail(
                out,
                STATUS_ENCODE_RESULT,
                Failure {
                    message,
                    location: String::new(),
                    backtrace: None,
                },
            )
        }
        Err(panic) => {
            out.resize(mark, 0);
            fail(out, STATUS_PANIC, panic)
        }
    }
}

/// Runs a task's argument decoder, its errors and panics made the
/// failure reported for the task.
pub(crate) fn decode_arg<A>(
    input: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<A, String>,
) -> Result<A, (u32, Failure)> {
    match guarded(|| crate::shared::receiving(|| decode(input))) {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(message)) => Err((
            STATUS_DECODE_ARG,
            Failure {
                message,
                location: String::new(),
                backtrace: None,
            },
        )),
        Err(panic) => Err((STATUS_PANIC, panic)),
    }
}

/// The trampoline of a single task `F(A) -> R`.
pub(crate) fn run_task<F, A, R>(input: &[u8], out: &mut AlignedVec) -> u32
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
{
    run_decoded(input, out, conjure::<F>())
}

/// Decodes an `A` from `input`, runs `f` on it and encodes its result (or
/// its failure) into `out`; returns the status.
pub(crate) fn run_decoded<A, R>(input: &[u8], out: &mut AlignedVec, f: impl FnOnce(A) -> R) -> u32
where
    A: Payload,
    R: Payload,
{
    let arg = match decode_arg(input, A::decode) {
        Ok(a) => a,
        Err((status, failure)) => return fail(out, status, failure),
    };
    match guarded(move || f(arg)) {
        Ok(value) => encode_result(out, move |out| value.encode_top_owned(out)),
        Err(panic) => fail(out, STATUS_PANIC, panic),
    }
}

/// What a chunk of a `map` returns: the values of the items that succeeded,
/// in order, and the position and failure of each item that panicked.
pub(crate) type ChunkOutput<R> = (Vec<R>, Vec<(u32, Failure)>);

/// A chunk result is `[values_len: u64, 0u64]`, the values' batch archive
/// padded to 16, then the failures' archive.
const CHUNK_PREFIX: usize = 16;

/// The trampoline of a `map` chunk: `F` over every item of a batch. A
/// panicking item fails alone; the others still produce values.
pub(crate) fn run_chunk<F, A, R>(input: &[u8], out: &mut AlignedVec) -> u32
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
{
    let items = match decode_arg(input, A::decode_batch) {
        Ok(a) => a,
        Err((status, failure)) => return fail(out, status, failure),
    };
    let f = conjure::<F>();
    let mut values = Vec::with_capacity(items.len());
    let mut failures: Vec<(u32, Failure)> = Vec::new();
    let mut items = items.into_iter();
    loop {
        // `extend` keeps `values`' length right if `f` panics, and `items`
        // has then moved past the item that panicked.
        let run = guarded(|| values.extend(items.by_ref().map(f)));
        match run {
            Ok(()) => break,
            Err(failure) => failures.push(((values.len() + failures.len()) as u32, failure)),
        }
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; CHUNK_PREFIX]);
    encode_result(out, |out| {
        R::encode_batch(&values, out)?;
        let values_len = out.len() - start - CHUNK_PREFIX;
        while out.len() % 16 != 0 {
            out.push(0);
        }
        crate::codec::archive(&failures, out)?;
        out[start..start + 8].copy_from_slice(&(values_len as u64).to_le_bytes());
        Ok(())
    })
}

/// Decodes what [`run_chunk`] wrote.
pub(crate) fn decode_chunk<R: Payload>(bytes: &[u8]) -> Result<ChunkOutput<R>, String> {
    let len = bytes.get(..8).ok_or("short chunk result")?;
    let values_len = usize::try_from(u64::from_le_bytes(
        len.try_into().map_err(|_| "short chunk result")?,
    ))
    .map_err(|_| "chunk result length out of range")?;
    let values_end = CHUNK_PREFIX
        .checked_add(values_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("chunk result length out of range")?;
    let values = R::decode_batch(&bytes[CHUNK_PREFIX..values_end])?;
    let failures_start = values_end.next_multiple_of(16).min(bytes.len());
    let failures = crate::codec::unarchive(&bytes[failures_start..])?;
    Ok((values, failures))
}

/// The trampoline of an initializer `F(A)`.
pub(crate) fn run_init<F, A>(input: &[u8], out: &mut AlignedVec) -> u32
where
    F: Fn(A) + Copy + Send + 'static,
    A: Payload,
{
    run_task::<F, A, ()>(input, out)
}
