//! Swappable codecs: the [`Codec`] trait (the counterpart of a custom
//! pickler in Python's loky), the built-in [`Rkyv`] codec, and the adapter
//! that lets any codec drive the rkyv-based transport.

use std::marker::PhantomData;

use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::Place;

use crate::codec::{archive, unarchive, Archivable, Payload};

/// How task arguments and results become bytes and back: implement it to
/// plug your own format into an executor (see
/// [`ProcessPoolExecutor::with_codec`](crate::ProcessPoolExecutor::with_codec)).
///
/// A codec is a type, not a value: tasks travel as monomorphised function
/// offsets, so the worker knows the codec from the type alone. Put any
/// configuration in the type (a const generic, a marker type).
///
/// * `encode` **appends** to `out`, which already holds a message header:
///   never clear or rewrite what is there (loky checks, and reports a codec
///   error if you do). `out` is an [`AlignedVec`](crate::AlignedVec) and
///   implements `std::io::Write`.
/// * `decode` receives exactly the bytes `encode` appended, starting at a
///   16-byte aligned address.
/// * Errors are plain messages; they reach the caller as
///   [`Error::Codec`](crate::Error::Codec) with the stage that failed. A
///   panicking codec is caught at every stage too.
///
/// The batch methods serve `map`, which sends items in chunks. The default
/// frames each item on its own; override them when your format can encode a
/// sequence more cheaply.
///
/// ```
/// use loky::{AlignedVec, Codec};
///
/// /// Sends `String`s as raw UTF-8 bytes.
/// struct Utf8;
///
/// impl Codec<String> for Utf8 {
///     fn encode(value: &String, out: &mut AlignedVec) -> Result<(), String> {
///         out.extend_from_slice(value.as_bytes());
///         Ok(())
///     }
///     fn decode(bytes: &[u8]) -> Result<String, String> {
///         String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
///     }
/// }
///
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let up = ex.with_codec::<Utf8>().submit(|s: String| s.to_uppercase(), "hi".to_string())?;
/// assert_eq!(up.result()?, "HI");
/// # Ok::<(), loky::Error>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "the codec `{Self}` cannot encode or decode `{T}`",
    label = "`{T}` is not supported by this codec",
    note = "with `loky::MsgPack`, derive `serde::Serialize, serde::Deserialize` on `{T}`",
    note = "with `loky::Rkyv`, derive `rkyv::Archive, rkyv::Serialize, rkyv::Deserialize` on `{T}`",
    note = "with your own codec, implement `loky::Codec<{T}>` for `{Self}`"
)]
pub trait Codec<T>: 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode(value: &T, out: &mut AlignedVec) -> Result<(), String>;

    /// Decodes a value from the bytes [`encode`](Codec::encode) appended.
    ///
    /// `bytes` may lie in memory the sending process can still write (if
    /// it misbehaves): a decoder in safe Rust can at most read garbage
    /// then, but one that validates bytes and later reads them again
    /// without checks (zero-copy access through `unsafe`) should copy them
    /// first, as loky's own rkyv decoding does.
    ///
    /// A shared-array handle decoded in a worker is accepted only if the
    /// pool sent it with this very task, once: bytes of another message
    /// (a codec that caches encodings) or a handle decoded twice are an
    /// error, never a second writer of the same elements.
    fn decode(bytes: &[u8]) -> Result<T, String>;

    /// Appends the encoding of a chunk of `map` items. The default writes a
    /// count, then each item with [`encode`](Codec::encode) behind its
    /// length, each starting 16-byte aligned.
    fn encode_batch(items: &[T], out: &mut AlignedVec) -> Result<(), String> {
        encode_framed::<T, Self>(items, out)
    }

    /// Decodes what [`encode_batch`](Codec::encode_batch) wrote.
    fn decode_batch(bytes: &[u8]) -> Result<Vec<T>, String> {
        decode_framed::<T, Self>(bytes)
    }
}

/// The default codec: rkyv archives, validated on read. Every
/// [`Payload`] type works with it; `ProcessPoolExecutor::submit` uses it
/// without asking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rkyv;

impl<T> Codec<T> for Rkyv
where
    T: Archivable,
    Vec<T>: Archivable,
{
    #[inline]
    fn encode(value: &T, out: &mut AlignedVec) -> Result<(), String> {
        archive(value, out)
    }

    #[inline]
    fn decode(bytes: &[u8]) -> Result<T, String> {
        unarchive(bytes)
    }

    fn encode_batch(items: &[T], out: &mut AlignedVec) -> Result<(), String> {
        // A no-op loop unless `T` is `usize`/`isize` in rkyv's 32-bit format.
        for item in items {
            crate::codec::fits_rkyv_width(item)?;
        }
        let buf = std::mem::take(out);
        match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(&SliceArchive(items), buf)
        {
            Ok(buf) => {
                *out = buf;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn decode_batch(bytes: &[u8]) -> Result<Vec<T>, String> {
        unarchive::<Vec<T>>(bytes)
    }
}

/// Archives a slice exactly as rkyv archives a `Vec` of the same items.
struct SliceArchive<'a, T>(&'a [T]);

impl<T: rkyv::Archive> rkyv::Archive for SliceArchive<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<T, S> rkyv::Serialize<S> for SliceArchive<'_, T>
where
    T: rkyv::Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Reads a little-endian `u64` length at `at`.
fn read_len(bytes: &[u8], at: usize) -> Result<usize, String> {
    let n = bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| "batch frame truncated".to_string())?;
    usize::try_from(n).map_err(|e| e.to_string())
}

fn pad16(out: &mut AlignedVec, start: usize) {
    while (out.len() - start) % 16 != 0 {
        out.push(0);
    }
}

/// `[count u64, 0u64]`, then per item `[len u64, 0u64]` and the item's
/// bytes padded to 16.
fn encode_framed<T, C: Codec<T> + ?Sized>(items: &[T], out: &mut AlignedVec) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    for item in items {
        let frame = out.len();
        out.extend_from_slice(&[0u8; 16]);
        C::encode(item, out)?;
        if out.len() < frame + 16 {
            return Err(truncated_message());
        }
        let len = (out.len() - frame - 16) as u64;
        out[frame..frame + 8].copy_from_slice(&len.to_le_bytes());
        pad16(out, start);
    }
    Ok(())
}

fn decode_framed<T, C: Codec<T> + ?Sized>(bytes: &[u8]) -> Result<Vec<T>, String> {
    let count = read_len(bytes, 0)?;
    // Every item takes at least a 16-byte frame after the 16-byte count.
    if count > bytes.len().saturating_sub(16) / 16 {
        return Err(format!(
            "batch claims {count} items in {} bytes",
            bytes.len()
        ));
    }
    // Grown as items decode: a large `T` times a made-up count must not
    // reserve more than the frame could hold.
    let mut items = Vec::with_capacity(count.min(1024));
    let mut at = 16;
    for _ in 0..count {
        let len = read_len(bytes, at)?;
        let body = at + 16;
        let end = body
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| "batch item length out of range".to_string())?;
        items.push(C::decode(&bytes[body..end])?);
        at = end.next_multiple_of(16);
    }
    Ok(items)
}

fn truncated_message() -> String {
    "the codec removed bytes it did not write: `Codec::encode` must append to `out`, \
     not clear or truncate it"
        .to_string()
}

/// Runs `encode` and checks it only appended to `out`.
fn append_only(
    out: &mut AlignedVec,
    encode: impl FnOnce(&mut AlignedVec) -> Result<(), String>,
) -> Result<(), String> {
    const KEPT: usize = 64;
    let mark = out.len();
    let kept = mark.min(KEPT);
    let mut before = [0u8; KEPT];
    before[..kept].copy_from_slice(&out[..kept]);
    encode(out)?;
    if out.len() < mark || out[..kept] != before[..kept] {
        return Err(truncated_message());
    }
    Ok(())
}

/// A value that travels with codec `C` through the rkyv-based transport: its
/// [`Payload`] impl calls `C`.
#[repr(transparent)]
pub(crate) struct Coded<T, C>(T, PhantomData<fn() -> C>);

impl<T, C> Coded<T, C> {
    #[inline]
    pub(crate) fn new(value: T) -> Self {
        Self(value, PhantomData)
    }

    #[inline]
    pub(crate) fn into_inner(self) -> T {
        self.0
    }

    fn as_values(items: &[Self]) -> &[T] {
        // SAFETY: `Coded<T, C>` is `repr(transparent)` over `T` (the other
        // field is a zero-sized marker), so `[Coded<T, C>]` and `[T]` have
        // the same layout and the same length.
        unsafe { &*(items as *const [Self] as *const [T]) }
    }
}

impl<T, C> Payload for Coded<T, C>
where
    T: Send + 'static,
    C: Codec<T>,
{
    #[inline]
    fn encode(&self, out: &mut AlignedVec) -> Result<(), String> {
        append_only(out, |out| C::encode(&self.0, out))
    }

    #[inline]
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        C::decode(bytes).map(Self::new)
    }

    #[allow(clippy::ptr_arg)]
    fn encode_batch(items: &Vec<Self>, out: &mut AlignedVec) -> Result<(), String> {
        append_only(out, |out| C::encode_batch(Self::as_values(items), out))
    }

    fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, String> {
        // Same layout: this collects in place, without copying.
        C::decode_batch(bytes).map(|v| v.into_iter().map(Self::new).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text;
    impl Codec<String> for Text {
        fn encode(value: &String, out: &mut AlignedVec) -> Result<(), String> {
            out.extend_from_slice(value.as_bytes());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<String, String> {
            String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
        }
    }

    struct Clearing;
    impl Codec<u8> for Clearing {
        fn encode(value: &u8, out: &mut AlignedVec) -> Result<(), String> {
            out.clear();
            out.push(*value);
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<u8, String> {
            bytes.first().copied().ok_or_else(|| "empty".into())
        }
    }

    #[test]
    fn default_framing_round_trips() {
        let items: Vec<String> = ["", "a", "seventeen bytes!!", "ü"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut out = AlignedVec::new();
        out.extend_from_slice(&[7u8; 16]);
        Text::encode_batch(&items, &mut out).unwrap();
        assert_eq!(Text::decode_batch(&out[16..]).unwrap(), items);
        // Corruptions are errors, not panics.
        for cut in 0..out.len() - 16 {
            let _ = Text::decode_batch(&out[16..16 + cut]);
        }
        let mut huge = out[16..].to_vec();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Text::decode_batch(&huge).is_err());
    }

    #[test]
    fn rkyv_batch_matches_vec_archive() {
        let items = vec![1u64, 2, 3];
        let mut out = AlignedVec::new();
        Rkyv::encode_batch(&items, &mut out).unwrap();
        assert_eq!(<u64 as Payload>::decode_batch(&out).unwrap(), items);
        assert_eq!(<Rkyv as Codec<u64>>::decode_batch(&out).unwrap(), items);
    }

    #[test]
    fn a_codec_that_clears_the_buffer_is_caught() {
        let mut out = AlignedVec::new();
        out.extend_from_slice(&[1u8; 16]);
        let e = Coded::<u8, Clearing>::new(5).encode(&mut out).unwrap_err();
        assert!(e.contains("must append"), "{e}");
        let coded = vec![Coded::<String, Text>::new("x".into())];
        out.clear();
        Payload::encode_batch(&coded, &mut out).unwrap();
        let back = <Coded<String, Text> as Payload>::decode_batch(&out).unwrap();
        assert_eq!(back[0].0, "x");
    }
}
