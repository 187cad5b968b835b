//! Serde interop: [`Serde<T>`] carries any serde value inside an rkyv
//! archive, and [`MsgPack`] is the per-executor codec with the same format.
//!
//! Both encode with MessagePack (`rmp-serde`), structs as maps. The format is
//! self-describing on purpose: `serde_json::Value`, `#[serde(flatten)]`,
//! `#[serde(untagged)]`, internally tagged enums and
//! `#[serde(skip_serializing_if = ...)]` need a self-describing format, and
//! compact non-self-describing formats (postcard, bincode) fail on them at
//! decode time. Every nested level is checked against the thread's stack
//! (see `stack_guard`), so a deeply nested value is an error, never a stack
//! overflow.

use std::any::type_name;
use std::marker::PhantomData;

use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::Place;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codecs::Codec;
use crate::stack_guard::{De, Ser};

/// Carries a serde value as a task argument or result.
///
/// `Serde<T>` is a [`Payload`](crate::Payload) for every
/// `T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static`,
/// so types that derive only serde (and third-party types such as
/// `serde_json::Value`, dates, UUIDs) travel without an rkyv derive. Inside,
/// the value is MessagePack bytes held in the rkyv archive, so `Serde<T>`
/// can also be a field of your own rkyv-derived struct.
///
/// ```
/// use std::collections::HashMap;
/// use loky::Serde;
///
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let mut prices = HashMap::new();
/// prices.insert("apple".to_string(), vec![1.0, 1.5]);
/// let total = ex.submit(
///     |Serde(m): Serde<HashMap<String, Vec<f64>>>| m.values().flatten().sum::<f64>(),
///     Serde(prices),
/// )?;
/// assert_eq!(total.result()?, 2.5);
/// # Ok::<(), loky::Error>(())
/// ```
///
/// Costs: encoding walks the value once, into a reusable per-thread
/// buffer, then copies those bytes into the message; decoding builds it
/// once. Both run at roughly MessagePack speed; see the
/// [guide](crate::guide::sending_data) for measurements. A decode failure
/// (a type mismatch, a `Deserialize` impl that rejects the data) is an [`Error::Codec`](crate::Error::Codec), never
/// a panic. `Some(None)` of an `Option<Option<T>>` comes back as `None`, as
/// with JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Serde<T>(pub T);

impl<T> Serde<T> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// Views a borrowed value as a `Serde<T>` (no copy), for encoding it
    /// with [`Payload::encode`](crate::Payload::encode) without giving it
    /// up.
    pub fn from_ref(value: &T) -> &Serde<T> {
        // SAFETY: `Serde<T>` is `repr(transparent)` over `T`.
        unsafe { &*(value as *const T as *const Serde<T>) }
    }
}

impl<T> From<T> for Serde<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> std::ops::Deref for Serde<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Serde<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// The archived form of [`Serde<T>`]: the MessagePack bytes of the value.
#[repr(transparent)]
pub struct ArchivedSerde<T> {
    bytes: ArchivedVec<u8>,
    _value: PhantomData<fn() -> T>,
}

impl<T> ArchivedSerde<T> {
    /// The encoded bytes (MessagePack).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Decodes the value.
    pub fn decode(&self) -> Result<T, String>
    where
        T: DeserializeOwned,
    {
        decode_msgpack(self.as_bytes())
    }
}

impl<T> std::fmt::Debug for ArchivedSerde<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchivedSerde")
            .field("type", &type_name::<T>())
            .field("len", &self.bytes.len())
            .finish()
    }
}

// SAFETY: `ArchivedSerde<T>` is `repr(transparent)` over `ArchivedVec<u8>`
// (which is `Portable`) plus a zero-sized marker.
unsafe impl<T> rkyv::Portable for ArchivedSerde<T> {}

// SAFETY: the layout is that of `ArchivedVec<u8>` (`repr(transparent)`), so
// the bytes are valid for `Self` exactly when they are for the vector, and
// any byte content of the vector is acceptable here (decoding validates).
unsafe impl<T, C> rkyv::bytecheck::CheckBytes<C> for ArchivedSerde<T>
where
    C: Fallible + ?Sized,
    ArchivedVec<u8>: rkyv::bytecheck::CheckBytes<C>,
{
    unsafe fn check_bytes(value: *const Self, context: &mut C) -> Result<(), C::Error> {
        // SAFETY: same layout (see above); the caller's guarantees on
        // `value` carry over.
        unsafe { ArchivedVec::<u8>::check_bytes(value.cast(), context) }
    }
}

/// Where the bytes of a [`Serde<T>`] landed in the archive.
#[derive(Debug)]
pub struct SerdeResolver {
    pos: usize,
    len: usize,
}

impl<T> rkyv::Archive for Serde<T> {
    type Archived = ArchivedSerde<T>;
    type Resolver = SerdeResolver;

    fn resolve(&self, resolver: SerdeResolver, out: Place<ArchivedSerde<T>>) {
        // SAFETY: `ArchivedSerde<T>` is `repr(transparent)` over
        // `ArchivedVec<u8>`.
        let out = unsafe { out.cast_unchecked::<ArchivedVec<u8>>() };
        ArchivedVec::<u8>::resolve_from_len(resolver.len, VecResolver::from_pos(resolver.pos), out);
    }
}

/// A serde or codec failure as an rkyv error source.
#[derive(Debug)]
struct SerdeCodecError(String);

impl std::fmt::Display for SerdeCodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerdeCodecError {}

thread_local! {
    /// Where `Serde<T>` encodes before the bytes go into the archive.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes `value` as MessagePack into a reusable per-thread buffer and
/// hands the bytes to `use_bytes`. (Writing straight into the rkyv writer
/// through `std::io::Write` measured twice as slow for small values: rkyv's
/// writer is not inlined into MessagePack's many tiny writes.)
fn with_msgpack<T: Serialize, O>(
    value: &T,
    use_bytes: impl FnOnce(&[u8]) -> O,
) -> Result<O, String> {
    let mut run = Some(|buf: &mut Vec<u8>| {
        buf.clear();
        encode_msgpack(value, &mut *buf).map(|()| use_bytes(buf))
    });
    let pooled = SCRATCH.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        let out = run.take()?(&mut buf);
        if buf.capacity() > (64 << 20) {
            *buf = Vec::new(); // do not pin a huge buffer to the thread
        }
        Some(out)
    });
    match pooled {
        Ok(Some(out)) => out,
        // Re-entrant use (a `Serialize` impl that submits a task), or a
        // thread being torn down: a fresh buffer.
        _ => run.take().expect("not run yet")(&mut Vec::new()),
    }
}

impl<T, S> rkyv::Serialize<S> for Serde<T>
where
    T: Serialize,
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<SerdeResolver, S::Error> {
        let pos = serializer.pos();
        let len = with_msgpack(&self.0, |bytes| {
            serializer.write(bytes).map(|()| bytes.len())
        })
        .map_err(|message| S::Error::new(SerdeCodecError(message)))??;
        Ok(SerdeResolver { pos, len })
    }
}

impl<T, D> rkyv::Deserialize<Serde<T>, D> for ArchivedSerde<T>
where
    T: DeserializeOwned,
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Serde<T>, D::Error> {
        decode_msgpack(self.as_bytes())
            .map(Serde)
            .map_err(|message| D::Error::new(SerdeCodecError(message)))
    }
}

/// Writes `value` as MessagePack (structs as maps) to `w`.
pub(crate) fn encode_msgpack<T: Serialize + ?Sized>(
    value: &T,
    w: impl std::io::Write,
) -> Result<(), String> {
    let mut ser = rmp_serde::Serializer::new(w).with_struct_map();
    value.serialize(Ser(&mut ser)).map_err(|e| {
        format!(
            "serde/MessagePack could not encode `{}`: {e}",
            type_name::<T>()
        )
    })
}

/// Reads a `T` from MessagePack bytes.
///
/// Trailing bytes are not checked: both ends run the same binary and the
/// same monomorphised code, so they always agree on `T`, and the borrowing
/// reader that makes decoding ~1.5x faster does not report them.
pub(crate) fn decode_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    // Depth is bounded by the stack guard, which knows the real stack size.
    de.set_max_depth(usize::MAX);
    T::deserialize(De(&mut de)).map_err(|e| {
        format!(
            "serde/MessagePack could not decode `{}`: {e}",
            type_name::<T>()
        )
    })
}

/// The serde codec: MessagePack through `rmp-serde`, structs as maps.
///
/// Select it per executor with
/// [`with_codec::<MsgPack>()`](crate::ProcessPoolExecutor::with_codec): then
/// every argument and result only needs `serde::Serialize` and
/// `serde::Deserialize`, with no wrapper.
///
/// ```
/// use loky::MsgPack;
///
/// let ex = loky::ProcessPoolExecutor::builder().max_workers(1).build()?;
/// let json = ex.with_codec::<MsgPack>();
/// let v = serde_json::json!({"n": [1, 2, 3]});
/// let n = json.submit(|v: serde_json::Value| v["n"].as_array().map_or(0, |a| a.len()), v)?;
/// assert_eq!(n.result()?, 3);
/// # Ok::<(), loky::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

impl<T> Codec<T> for MsgPack
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    fn encode(value: &T, out: &mut AlignedVec) -> Result<(), String> {
        encode_msgpack(value, out)
    }

    fn decode(bytes: &[u8]) -> Result<T, String> {
        decode_msgpack(bytes)
    }

    fn encode_batch(items: &[T], out: &mut AlignedVec) -> Result<(), String> {
        encode_msgpack(items, out)
    }

    fn decode_batch(bytes: &[u8]) -> Result<Vec<T>, String> {
        decode_msgpack(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;

    #[test]
    fn serde_round_trips_through_rkyv() {
        let v: Serde<(String, Vec<Option<u32>>)> = Serde(("x".into(), vec![Some(1), None]));
        let mut out = AlignedVec::new();
        v.encode(&mut out).unwrap();
        assert_eq!(Serde::decode(&out).unwrap(), v);
        let batch = vec![v.clone(), v.clone()];
        out.clear();
        Serde::encode_batch(&batch, &mut out).unwrap();
        assert_eq!(Serde::decode_batch(&out).unwrap(), batch);
    }

    #[test]
    fn a_type_mismatch_is_an_error() {
        let mut out = AlignedVec::new();
        Serde(vec!["a".to_string()]).encode(&mut out).unwrap();
        let e = <Serde<Vec<u64>> as Payload>::decode(&out).unwrap_err();
        assert!(e.contains("could not decode"), "{e}");
        let e = decode_msgpack::<u8>(&[]).unwrap_err();
        assert!(e.contains("could not decode `u8`"), "{e}");
    }

    #[test]
    fn msgpack_codec_batches() {
        let items = vec![(1u8, "a".to_string()), (2, "b".to_string())];
        let mut out = AlignedVec::new();
        MsgPack::encode_batch(&items, &mut out).unwrap();
        assert_eq!(
            <MsgPack as Codec<(u8, String)>>::decode_batch(&out).unwrap(),
            items
        );
    }

    /// A linked list (a struct, so MessagePack keeps every level).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nest {
        next: Option<Box<Nest>>,
    }

    impl Drop for Nest {
        fn drop(&mut self) {
            let mut next = self.next.take();
            while let Some(mut n) = next {
                next = n.next.take();
            }
        }
    }

    fn nest(depth: usize) -> Nest {
        let mut v = Nest { next: None };
        for _ in 0..depth {
            v = Nest {
                next: Some(Box::new(v)),
            };
        }
        v
    }

    #[test]
    fn deep_values_fail_cleanly_on_both_sides() {
        let on = |stack: usize, f: Box<dyn FnOnce() -> Result<(), String> + Send>| {
            std::thread::Builder::new()
                .stack_size(stack)
                .spawn(f)
                .unwrap()
                .join()
                .unwrap()
        };
        // Too deep to encode on a 1 MiB stack.
        let e = on(
            1 << 20,
            Box::new(|| encode_msgpack(&nest(100_000), Vec::new())),
        )
        .unwrap_err();
        assert!(e.contains("nested too deeply"), "{e}");
        // Encodes on a big stack, then is too deep to decode on a small one.
        let bytes = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                let mut buf = Vec::new();
                encode_msgpack(&nest(20_000), &mut buf).map(|()| buf)
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let e = on(
            1 << 20,
            Box::new(move || decode_msgpack::<Nest>(&bytes).map(drop)),
        )
        .unwrap_err();
        assert!(e.contains("nested too deeply"), "{e}");
        // A moderate depth is fine.
        on(
            1 << 20,
            Box::new(|| {
                let mut buf = Vec::new();
                encode_msgpack(&nest(100), &mut buf)?;
                decode_msgpack::<Nest>(&buf).map(drop)
            }),
        )
        .unwrap();
    }
}
