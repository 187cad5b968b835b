//! How arguments and results become bytes: rkyv 0.8, validated on read.
//!
//! Any type that derives `rkyv::Archive`, `rkyv::Serialize` and
//! `rkyv::Deserialize` (with the default `bytecheck` validation) is a
//! [`Payload`]: integers, floats, `String`, `Vec`, tuples, `Option`,
//! `HashMap`, and your own structs. Bytes that come from another process are
//! always validated before use, so a corrupted message is a
//! [`Error::Codec`], never undefined behaviour; validation and decoding of
//! a result read a private copy, which the worker cannot change in between
//! ([`unarchive`]).

use std::cell::RefCell;

use loky_ipc::bulk;
use loky_ipc::spill::{Buffer, SpilledMessage};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::donation::Donation;
use crate::error::{CodecStage, Error};

/// A value that can travel between processes as a task argument or result.
///
/// Implemented for every type rkyv can archive with validation. Derive
/// `rkyv::{Archive, Serialize, Deserialize}` on your own types:
///
/// ```
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// struct Point { x: f64, y: f64 }
///
/// fn assert_payload<T: loky::Payload>() {}
/// assert_payload::<Point>();
/// assert_payload::<(u64, String, Vec<f32>)>();
/// ```
#[cfg_attr(
    feature = "serde",
    diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to or from a worker process",
        label = "this type is not a loky::Payload",
        note = "derive `rkyv::Archive, rkyv::Serialize, rkyv::Deserialize` on `{Self}` (all its fields must be archivable too)",
        note = "or, if `{Self}` implements serde's `Serialize` and `Deserialize`, wrap it: `loky::Serde(value)` as the argument, `|loky::Serde(x): loky::Serde<{Self}>| ...` in the task",
        note = "or use a serde executor: `ex.with_codec::<loky::MsgPack>().submit(..)`",
        note = "tasks take owned values: for a reference `&T`, send `T` (`.cloned()` or `.copied()` on an iterator of references); for a slice `&[T]`, a `Vec<T>` (`.to_vec()`), or `ex.submit_slice(f, slice, arg)` (the task reads the slice where it arrives), or a `loky::SharedVec` and its `chunks` (no copy at all)"
    )
)]
#[cfg_attr(
    not(feature = "serde"),
    diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to or from a worker process",
        label = "this type is not a loky::Payload",
        note = "derive `rkyv::Archive, rkyv::Serialize, rkyv::Deserialize` on `{Self}` (all its fields must be archivable too)",
        note = "or enable loky's `serde` feature and wrap serde types in `loky::Serde`",
        note = "tasks take owned values: for a reference `&T`, send `T` (`.cloned()` or `.copied()` on an iterator of references); for a slice `&[T]`, a `Vec<T>` (`.to_vec()`), or `ex.submit_slice(f, slice, arg)` (the task reads the slice where it arrives), or a `loky::SharedVec` and its `chunks` (no copy at all)"
    )
)]
pub trait Payload: Sized + Send + 'static {
    /// Appends the encoding of `self` to `out` (which starts 16-byte aligned).
    fn encode(&self, out: &mut AlignedVec) -> Result<(), String>;
    /// Like [`Payload::encode`], for a task's whole argument or result only
    /// (loky calls it; nothing may be appended after it): a large rkyv
    /// archive may go straight to shared memory instead of `out`.
    #[doc(hidden)]
    fn encode_top(&self, out: &mut AlignedVec) -> Result<(), String> {
        self.encode(out)
    }
    /// Like [`Payload::encode_top`], given the value (loky calls it): a
    /// large `Vec` of numbers that lives in a block of the
    /// [`SharedMemoryAllocator`](crate::SharedMemoryAllocator) goes as that
    /// block, without a copy.
    #[doc(hidden)]
    fn encode_top_owned(self, out: &mut AlignedVec) -> Result<(), String> {
        self.encode_top(out)
    }
    /// Validates and decodes a value from 16-byte aligned bytes.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
    /// Appends the encoding of a batch of values (one archive, for `map`).
    /// Takes a `Vec` because the archive is that of a `Vec<Self>`, which is
    /// what [`Payload::decode_batch`] returns.
    #[allow(clippy::ptr_arg)]
    fn encode_batch(items: &Vec<Self>, out: &mut AlignedVec) -> Result<(), String>;
    /// Validates and decodes a batch written by [`Payload::encode_batch`].
    fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, String>;
}

impl<T> Payload for T
where
    T: Archivable,
    Vec<T>: Archivable,
{
    #[inline]
    fn encode(&self, out: &mut AlignedVec) -> Result<(), String> {
        archive(self, out)
    }

    #[inline]
    fn encode_top(&self, out: &mut AlignedVec) -> Result<(), String> {
        archive_direct(self, out)
    }

    #[inline]
    fn encode_top_owned(self, out: &mut AlignedVec) -> Result<(), String> {
        archive_donating(self, out)
    }

    #[inline]
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        unarchive(bytes)
    }

    #[inline]
    #[allow(clippy::ptr_arg)]
    fn encode_batch(items: &Vec<Self>, out: &mut AlignedVec) -> Result<(), String> {
        archive(items, out)
    }

    #[inline]
    fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, String> {
        unarchive(bytes)
    }
}

/// What rkyv needs to write a value and to read it back with validation.
#[doc(hidden)]
pub trait Archivable:
    rkyv::Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                      + rkyv::Deserialize<Self, HighDeserializer<rancor::BoxedError>>,
    > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
    + for<'a> rkyv::Serialize<HighSerializer<SpillWriter, ArenaHandle<'a>, rancor::BoxedError>>
    + Sized
    + Send
    + 'static
{
}

impl<T> Archivable for T where
    T: rkyv::Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                          + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
        > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
        + for<'a> rkyv::Serialize<HighSerializer<SpillWriter, ArenaHandle<'a>, rancor::BoxedError>>
        + Send
        + 'static
{
}

/// Appends the archive of `value` to `out`.
pub(crate) fn archive<T: Archivable>(value: &T, out: &mut AlignedVec) -> Result<(), String> {
    fits_rkyv_width(value)?;
    archive_checked(value, out)
}

/// [`archive`] of a value [`fits_rkyv_width`] already passed.
fn archive_checked<T: Archivable>(value: &T, out: &mut AlignedVec) -> Result<(), String> {
    let buf = std::mem::take(out);
    match rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, buf) {
        Ok(buf) => {
            *out = buf;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses a `usize` or `isize`, alone or a `Vec` of them, that rkyv would
/// cut short. rkyv archives them as [`rkyv::primitive::FixedUsize`] and
/// `FixedIsize`: 64 bits with loky's `pointer_width_64` feature (a default
/// one), else 32 bits, and then it truncates a larger value without an
/// error (a task would get `1 << 33` as 0). The values rkyv keeps inside
/// other types cannot be checked here; the feature is the cure for those.
pub(crate) fn fits_rkyv_width<T: 'static>(value: &T) -> Result<(), String> {
    use rkyv::primitive::{FixedIsize, FixedUsize};
    use std::any::Any;
    if std::mem::size_of::<FixedUsize>() >= std::mem::size_of::<usize>() {
        return Ok(());
    }
    let fits_u = |v: &usize| FixedUsize::try_from(*v).is_ok();
    let fits_i = |v: &isize| FixedIsize::try_from(*v).is_ok();
    let any = value as &dyn Any;
    let cut = if let Some(v) = any.downcast_ref::<usize>() {
        (!fits_u(v)).then(|| v.to_string())
    } else if let Some(v) = any.downcast_ref::<isize>() {
        (!fits_i(v)).then(|| v.to_string())
    } else if let Some(v) = any.downcast_ref::<Vec<usize>>() {
        v.iter().find(|v| !fits_u(v)).map(usize::to_string)
    } else if let Some(v) = any.downcast_ref::<Vec<isize>>() {
        v.iter().find(|v| !fits_i(v)).map(isize::to_string)
    } else {
        None
    };
    match cut {
        None => Ok(()),
        Some(v) => Err(format!(
            "{v} does not fit rkyv's {}-bit usize/isize and would arrive cut short: \
             turn on loky's `pointer_width_64` feature (a default feature), or send a u64/i64",
            8 * std::mem::size_of::<FixedUsize>()
        )),
    }
}

/// Validates and decodes an archive.
///
/// `bytes` may lie in memory another process can still write (a result in
/// a worker's ring, while a stray thread of that worker scribbles on it).
/// rkyv reads an archive twice, once to validate it and once to decode it,
/// so a change in between could take the second read outside the message.
/// Hence a `Vec` of numbers is decoded by [`crate::numeric_vec`], which
/// reads each byte once, and everything else from a private copy, except a
/// worker's task argument, which comes from its parent
/// (`shared::receiving_argument`).
pub(crate) fn unarchive<T: Archivable>(bytes: &[u8]) -> Result<T, String> {
    if let Some(decoded) = crate::numeric_vec::try_decode::<T>(bytes) {
        return decoded;
    }
    let decode =
        |bytes: &[u8]| rkyv::from_bytes::<T, rancor::BoxedError>(bytes).map_err(|e| e.to_string());
    if crate::shared::receiving_argument() {
        // A worker reads the argument its parent wrote, and nothing else
        // writes there (its own view of a large message is read-only); a
        // copy would cost a large argument's size again in memory. Only
        // then: a task that runs a pool of its own decodes its results,
        // from its own workers, with the copy.
        return decode(bytes);
    }
    with_private_copy(bytes, decode)
}

/// Messages up to this size are copied into a buffer kept per thread;
/// longer ones into a fresh one (so a thread does not hold on to the
/// memory of its largest message).
const PRIVATE_COPY_KEPT: usize = 1 << 20;

thread_local! {
    static PRIVATE_COPY: RefCell<AlignedVec> = RefCell::new(AlignedVec::new());
}

/// Runs `read` on a copy of `bytes` (16-byte aligned) that no other
/// process can change.
fn with_private_copy<R>(bytes: &[u8], read: impl FnOnce(&[u8]) -> R) -> R {
    /// Small messages (most results) are copied to the stack.
    #[repr(C, align(16))]
    struct Small([u8; SMALL]);
    const SMALL: usize = 256;
    if bytes.len() <= SMALL {
        let mut copy = Small([0; SMALL]);
        let copy = &mut copy.0[..bytes.len()];
        copy.copy_from_slice(bytes);
        return read(copy);
    }
    // Taken out of the cell while in use: a nested decode on this thread
    // (a user's `Deserialize` that decodes a message) finds it empty.
    let kept = (bytes.len() <= PRIVATE_COPY_KEPT)
        .then(|| PRIVATE_COPY.try_with(|kept| kept.take()).ok())
        .flatten();
    let keep = kept.is_some();
    let mut copy = kept.unwrap_or_default();
    copy.clear();
    copy.reserve(bytes.len());
    // SAFETY: `reserve` made room for `bytes.len()` bytes past the (zero)
    // length; `MaybeUninit<u8>` has the layout of `u8`.
    let spare = unsafe {
        std::slice::from_raw_parts_mut(
            copy.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            bytes.len(),
        )
    };
    // Split across threads when large (the parent decoding a large result).
    bulk::copy(spare, bytes);
    // SAFETY: `bulk::copy` initialised all `bytes.len()` bytes, within the
    // capacity reserved above.
    unsafe { copy.set_len(bytes.len()) };
    let r = read(&copy);
    if keep {
        let _ = PRIVATE_COPY.try_with(|kept| kept.replace(copy));
    }
    r
}

/// An archive that grows past this many bytes (header included) while it is
/// written is moved into a shared-memory spill buffer and finished there
/// (see [`direct_encode`]).
const DIRECT_MIN: usize = 1 << 20;

/// The one archive on this thread that may go straight to shared memory: the
/// top-level one written into `scratch` after its first `mark` bytes.
struct Direct {
    /// The target itself (not its bytes, which move when it grows).
    scratch: *const AlignedVec,
    mark: usize,
    spilled: Option<(Buffer, usize)>,
}

thread_local! {
    static SCRATCH: RefCell<AlignedVec> = RefCell::new(AlignedVec::with_capacity(4096));
    static DIRECT: RefCell<Option<Direct>> = const { RefCell::new(None) };
}

/// Runs `write` on `out` and lets the top-level archive it appends (through
/// [`Payload::encode`] of an rkyv type) go straight into a spill buffer once
/// it grows past [`DIRECT_MIN`], instead of into `out` and then, copied, into
/// shared memory. Large values thus cost one copy on the sending side, and
/// the pages they go to are reused from message to message.
///
/// Returns what `write` returned and, if the archive was spilled, the
/// buffer and the message's length: the buffer then holds a copy of the
/// `out.len()` bytes `out` held before `write`, followed by the archive,
/// and `out` is left as it was. Nested uses (an encoder that submits a task)
/// each get their own target.
pub(crate) fn direct_encode<T>(
    out: &mut AlignedVec,
    write: impl FnOnce(&mut AlignedVec) -> T,
) -> (T, Option<(Buffer, usize)>) {
    /// Puts back the enclosing target, also when `write` panics (dropping
    /// ours returns its buffer to the pool).
    struct Restore(Option<Direct>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let ours = DIRECT.try_with(|d| std::mem::replace(&mut *d.borrow_mut(), prev));
            drop(ours);
        }
    }
    let target = Direct {
        scratch: std::ptr::from_ref(out),
        mark: out.len(),
        spilled: None,
    };
    let mark = out.len();
    let _restore = Restore(DIRECT.with(|d| d.borrow_mut().replace(target)));
    let written = write(out);
    let mut spilled = DIRECT.with(|d| d.borrow_mut().as_mut().and_then(|d| d.spilled.take()));
    // The spilled archive must be the whole of what `write` wrote: only
    // `Payload::encode_top` spills, and loky appends nothing after it. If
    // something was appended anyway, drop the spill: the message is then
    // incomplete and fails to decode, rather than being sent truncated as
    // if whole.
    if spilled.is_some() && out.len() != mark {
        tracing::error!("bytes were appended after an archive that went to shared memory");
        spilled = None;
    }
    (written, spilled)
}

/// Appends the archive of `value` to `out`, or writes it to the spill buffer
/// if `out` is the target of the enclosing [`direct_encode`] (nothing was
/// appended to it since) and the archive is large.
pub(crate) fn archive_direct<T: Archivable>(value: &T, out: &mut AlignedVec) -> Result<(), String> {
    fits_rkyv_width(value)?;
    match direct_mark(out) {
        Some(mark) if mark == out.len() => write_spilling(out, mark, |writer| {
            rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, writer)
                .map_err(|e| e.to_string())
        }),
        _ => archive_checked(value, out),
    }
}

/// [`archive_direct`], or, where `value` can go as the shared-memory block
/// it lives in ([`crate::donation`]), that block as the enclosing
/// [`direct_encode`]'s spill buffer.
pub(crate) fn archive_donating<T: Archivable>(
    value: T,
    out: &mut AlignedVec,
) -> Result<(), String> {
    let value = match direct_mark(out) {
        Some(mark) if mark == out.len() => match crate::donation::donate(value, out) {
            Donation::Sent(buffer, len) => {
                DIRECT.with(|d| {
                    if let Some(d) = d.borrow_mut().as_mut() {
                        d.spilled = Some((buffer, len));
                    }
                });
                return Ok(());
            }
            Donation::Kept(value) => value,
            Donation::Failed(e) => return Err(e),
        },
        _ => value,
    };
    archive_direct(&value, out)
}

/// Appends `bytes` to `out`, the last bytes of a message: straight into a
/// spill buffer if `out` is the target of the enclosing [`direct_encode`]
/// (whatever was appended to it since goes along) and the message grows
/// large, so that a large slice costs one copy on the sending side.
pub(crate) fn append_direct(out: &mut AlignedVec, bytes: &[u8]) -> Result<(), String> {
    match direct_mark(out) {
        Some(mark) if out.len().saturating_add(bytes.len()) > DIRECT_MIN => {
            write_spilling(out, mark, |mut writer| {
                rkyv::ser::Writer::<rancor::BoxedError>::write(&mut writer, bytes)
                    .map_err(|e| e.to_string())?;
                Ok(writer)
            })
        }
        _ => {
            out.extend_from_slice(bytes);
            Ok(())
        }
    }
}

/// The length `out` had when the enclosing [`direct_encode`] began, if
/// `out` is its target and nothing went to a spill buffer yet.
fn direct_mark(out: &AlignedVec) -> Option<usize> {
    DIRECT.with(|d| match &*d.borrow() {
        Some(d) if d.spilled.is_none() && std::ptr::eq(d.scratch, out) => Some(d.mark),
        _ => None,
    })
}

/// Goes on writing `out` through a [`SpillWriter`] (`write`), and records
/// the spill buffer for the enclosing [`direct_encode`] if the writer moved
/// there: `out` is then cut back to `mark`, the length it had when that
/// began (the spill buffer holds a copy of its bytes).
fn write_spilling(
    out: &mut AlignedVec,
    mark: usize,
    write: impl FnOnce(SpillWriter) -> Result<SpillWriter, String>,
) -> Result<(), String> {
    let writer = SpillWriter {
        pos: out.len(),
        head: std::mem::take(out),
        spill: None,
    };
    let writer = write(writer)?;
    *out = writer.head;
    if let Some(spill) = writer.spill {
        out.resize(mark, 0);
        DIRECT.with(|d| {
            if let Some(d) = d.borrow_mut().as_mut() {
                d.spilled = Some((spill, writer.pos));
            }
        });
    }
    Ok(())
}

/// The rkyv writer behind [`archive_direct`]: appends to an `AlignedVec`
/// until the archive reaches [`DIRECT_MIN`] bytes, then moves what it has
/// into a leased spill buffer and goes on there. Positions are the same as
/// in the `AlignedVec` (both start 16-byte aligned), so the bytes are too.
#[doc(hidden)]
#[derive(Debug)]
pub struct SpillWriter {
    head: AlignedVec,
    spill: Option<Buffer>,
    pos: usize,
}

impl rkyv::ser::Positional for SpillWriter {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: rancor::Source> rkyv::ser::Writer<E> for SpillWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or_else(|| E::new(loky_ipc::Error::Config("archive too large".into())))?;
        match &mut self.spill {
            None if end <= DIRECT_MIN => self.head.extend_from_slice(bytes),
            None => {
                let mut spill = Buffer::lease(end).map_err(E::new)?;
                let dst = spill.as_mut_slice();
                dst[..self.pos].copy_from_slice(&self.head[..self.pos]);
                bulk::copy_init(&mut dst[self.pos..end], bytes);
                self.spill = Some(spill);
            }
            Some(spill) => {
                if end > spill.capacity() {
                    let mut bigger = Buffer::lease(end.max(spill.capacity().saturating_mul(2)))
                        .map_err(E::new)?;
                    bulk::copy_init(
                        &mut bigger.as_mut_slice()[..self.pos],
                        &spill.as_slice()[..self.pos],
                    );
                    // The outgrown buffer served only this archive: do not
                    // keep it pooled (nor its pages).
                    std::mem::replace(spill, bigger).discard();
                }
                bulk::copy_init(&mut spill.as_mut_slice()[self.pos..end], bytes);
            }
        }
        self.pos = end;
        Ok(())
    }
}

/// An encoded message on its way to a channel: bytes the channel copies
/// (into its ring, or into a spill buffer when large), or a message already
/// written in a spill buffer, which the channel sends as that buffer.
#[derive(Debug)]
pub(crate) enum Encoded<B> {
    Bytes(B),
    Spilled(SpilledMessage),
}

impl<B: AsRef<[u8]>> Encoded<B> {
    /// Sends the message; gives it back if the ring is full, and with the
    /// error if it could not be sent (to send it elsewhere).
    pub(crate) fn try_send(
        self,
        tx: &mut loky_ipc::Sender<'_>,
        tag: u32,
    ) -> Result<Option<Self>, (loky_ipc::Error, Self)> {
        let sent = match &self {
            Encoded::Bytes(b) => tx.try_send(tag, b.as_ref()),
            Encoded::Spilled(m) => tx.try_send_spilled(tag, m),
        };
        match sent {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(self)),
            Err(e) => Err((e, self)),
        }
    }
}

/// Encodes `value` behind a `header` (whose length must be a multiple of
/// 16) into a reusable per-thread buffer and hands the message to
/// `use_message`. A large archive goes straight into a shared-memory spill
/// buffer instead ([`direct_encode`]), handed over as a [`SpilledMessage`]
/// so that the channel sends that buffer rather than a copy of it.
///
/// rkyv's relative pointers are position independent and its padding is
/// computed from the buffer start, so an archive appended after a 16-byte
/// multiple decodes from `&bytes[header.len()..]`.
pub(crate) fn with_encoded<O>(
    header: &[u8],
    write: impl FnOnce(&mut AlignedVec) -> Result<(), String>,
    stage: CodecStage,
    use_message: impl FnOnce(Encoded<&[u8]>) -> O,
) -> Result<O, Error> {
    debug_assert_eq!(header.len() % 16, 0);
    let encode = |buf: &mut AlignedVec| -> Result<O, Error> {
        buf.clear();
        buf.extend_from_slice(header);
        // A panicking encoder (a `Serialize` impl, a custom codec) is a
        // codec error for this task, not a panic in the caller.
        let (written, spilled) = direct_encode(buf, |buf| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(buf)))
                .unwrap_or_else(|panic| Err(panic_message(&*panic)))
        });
        written.map_err(|message| Error::Codec { stage, message })?;
        match spilled {
            Some((spill, len)) => Ok(use_message(Encoded::Spilled(SpilledMessage::new(
                spill, len,
            )?))),
            None => Ok(use_message(Encoded::Bytes(buf))),
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let out = encode(&mut buf);
            if buf.capacity() > (64 << 20) {
                // Do not pin a huge buffer to the thread after a big message.
                *buf = AlignedVec::with_capacity(4096);
            }
            out
        }
        // Re-entrant use (a Serialize impl that submits a task): fresh buffer.
        Err(_) => encode(&mut AlignedVec::new()),
    })
}

/// Describes a caught panic of a codec.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "Box<dyn Any>"
    };
    format!("the codec panicked: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_reads_an_aligned_private_copy() {
        for len in [
            0,
            1,
            255,
            256,
            257,
            5000,
            PRIVATE_COPY_KEPT,
            PRIVATE_COPY_KEPT + 1,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (elsewhere, same, aligned) = with_private_copy(&bytes, |copy| {
                (
                    len == 0 || copy.as_ptr() != bytes.as_ptr(),
                    copy == &bytes[..],
                    copy.as_ptr() as usize % 16 == 0,
                )
            });
            assert!(elsewhere && same && aligned, "{len} bytes");
        }
    }

    #[test]
    fn only_a_task_argument_is_trusted_and_only_while_it_is_decoded() {
        use crate::shared::{receiving, receiving_argument as trusted};
        let trusting = |f: &dyn Fn() -> bool| receiving(|| Ok(f())).unwrap();
        assert!(!trusted());
        let inner = receiving(|| Ok((trusted(), trusting(&trusted), trusted()))).unwrap();
        assert_eq!(inner, (true, true, true));
        assert!(!trusted(), "reset after");
        let _ = std::panic::catch_unwind(|| receiving::<()>(|| panic!("decoder bug")));
        assert!(!trusted(), "reset after a panic");
    }

    #[test]
    fn a_nested_decode_gets_its_own_copy() {
        let outer = vec![1u8; 4000];
        let inner = vec![2u8; 3000];
        let (a, b) = with_private_copy(&outer, |o| {
            let b = with_private_copy(&inner, |i| i.to_vec());
            (o.to_vec(), b)
        });
        assert_eq!((a, b), (outer, inner));
    }

    #[test]
    fn archives_round_trip_through_the_copy() {
        let value = (7u64, String::from("seven"), vec![Some(1.5f32), None]);
        let mut out = AlignedVec::new();
        archive(&value, &mut out).unwrap();
        assert_eq!(
            unarchive::<(u64, String, Vec<Option<f32>>)>(&out).unwrap(),
            value
        );
        let big = vec![String::from("x"); 200_000];
        let mut out = AlignedVec::new();
        archive(&big, &mut out).unwrap();
        assert!(out.len() > PRIVATE_COPY_KEPT);
        assert_eq!(unarchive::<Vec<String>>(&out).unwrap(), big);
    }
}
