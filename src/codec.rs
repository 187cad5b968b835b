//! How arguments and results become bytes: rkyv 0.8, validated on read.
//!
//! Any type that derives `rkyv::Archive`, `rkyv::Serialize` and
//! `rkyv::Deserialize` (with the default `bytecheck` validation) is a
//! [`Payload`]: integers, floats, `String`, `Vec`, tuples, `Option`,
//! `HashMap`, and your own structs. Bytes that come from another process are
//! always validated before use, so a corrupted message is a
//! [`Error::Codec`], never undefined behaviour.

use std::cell::RefCell;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

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
        note = "or use a serde executor: `ex.with_codec::<loky::MsgPack>().submit(..)`"
    )
)]
#[cfg_attr(
    not(feature = "serde"),
    diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to or from a worker process",
        label = "this type is not a loky::Payload",
        note = "derive `rkyv::Archive, rkyv::Serialize, rkyv::Deserialize` on `{Self}` (all its fields must be archivable too)",
        note = "or enable loky's `serde` feature and wrap serde types in `loky::Serde`"
    )
)]
pub trait Payload: Sized + Send + 'static {
    /// Appends the encoding of `self` to `out` (which starts 16-byte aligned).
    fn encode(&self, out: &mut AlignedVec) -> Result<(), String>;
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
        + Send
        + 'static
{
}

/// Appends the archive of `value` to `out`.
pub(crate) fn archive<T: Archivable>(value: &T, out: &mut AlignedVec) -> Result<(), String> {
    let buf = std::mem::take(out);
    match rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, buf) {
        Ok(buf) => {
            *out = buf;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Validates and decodes an archive.
pub(crate) fn unarchive<T: Archivable>(bytes: &[u8]) -> Result<T, String> {
    rkyv::from_bytes::<T, rancor::BoxedError>(bytes).map_err(|e| e.to_string())
}

thread_local! {
    static SCRATCH: RefCell<AlignedVec> = RefCell::new(AlignedVec::with_capacity(4096));
}

/// Encodes `value` behind a `header` (whose length must be a multiple of
/// 16) into a reusable per-thread buffer and hands the bytes to `use_bytes`.
///
/// rkyv's relative pointers are position independent and its padding is
/// computed from the buffer start, so an archive appended after a 16-byte
/// multiple decodes from `&bytes[header.len()..]`.
pub(crate) fn with_encoded<O>(
    header: &[u8],
    write: impl FnOnce(&mut AlignedVec) -> Result<(), String>,
    stage: CodecStage,
    use_bytes: impl FnOnce(&[u8]) -> O,
) -> Result<O, Error> {
    debug_assert_eq!(header.len() % 16, 0);
    let encode = |buf: &mut AlignedVec| -> Result<O, Error> {
        buf.clear();
        buf.extend_from_slice(header);
        // A panicking encoder (a `Serialize` impl, a custom codec) is a
        // codec error for this task, not a panic in the caller.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(buf)))
            .unwrap_or_else(|panic| Err(panic_message(&*panic)))
            .map_err(|message| Error::Codec { stage, message })?;
        Ok(use_bytes(buf))
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
