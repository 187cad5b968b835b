//! Serde adapters that refuse to recurse when the thread's stack runs low.
//!
//! Serde (de)serialization recurses once per nesting level of the value. A
//! deeply nested value (a long linked list, a degenerate tree, a hostile
//! message) would overflow the stack, which aborts the whole process: the
//! caller in the parent, or a worker. [`Ser`] and [`De`] wrap any serde
//! serializer or deserializer and, before every nested value, compare the
//! stack pointer with the bottom of the current thread's stack: with less
//! than [`RED_ZONE`] left, they fail with a serde error instead.
//!
//! Primitive values pass straight through (no check), so flat data such as
//! a `Vec<f64>` costs one forwarding call per element, which inlines away.

use std::cell::Cell;
use std::fmt::Display;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};

/// Stack kept free below the deepest nested value (or a quarter of the
/// stack, if it is smaller than 1 MiB).
const RED_ZONE: usize = 256 << 10;
/// Stack assumed usable below the first check when the thread's stack
/// bounds cannot be read.
const FALLBACK_BUDGET: usize = 512 << 10;

thread_local! {
    /// `(lowest address, lowest usable address, highest address)` of this
    /// thread's stack; all 0 until first computed.
    static BOUNDS: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
}

/// The message of the error returned when the stack runs low.
pub(crate) fn too_deep_message() -> String {
    format!(
        "the value is nested too deeply for this thread's stack (less than {} KiB left); \
         flatten it, or send it in smaller pieces",
        RED_ZONE >> 10
    )
}

/// Stack kept free on a small stack (at most half of it), however small a
/// quarter of it is: one nesting level of a debug build can take a few KiB.
const RED_ZONE_FLOOR: usize = 64 << 10;

/// The current thread's stack bounds (see [`BOUNDS`]), computed once per
/// thread; where they cannot be read, [`FALLBACK_BUDGET`] below `sp`.
#[cold]
fn compute_bounds(sp: usize) -> (usize, usize, usize) {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `pthread_getattr_np` initialises `attr` on success, and we
    // destroy it exactly once after reading the stack range out of it.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            let low = addr as usize;
            if ok && size > 0 {
                // Kept even if `sp` is elsewhere (this check runs on a
                // coroutine's stack): the thread's own stack is judged by
                // them later.
                let red = RED_ZONE.min(size / 4).max(RED_ZONE_FLOOR.min(size / 2));
                return (low, low + red, low + size);
            }
        }
    }
    (0, sp.saturating_sub(FALLBACK_BUDGET), usize::MAX)
}

/// True while there is room on the stack for one more nesting level.
#[inline]
pub(crate) fn stack_ok() -> bool {
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    BOUNDS
        .try_with(|b| {
            let (mut low, mut limit, mut high) = b.get();
            if high == 0 {
                (low, limit, high) = compute_bounds(sp);
                b.set((low, limit, high));
            }
            // A stack pointer outside the thread's stack (an alternate
            // stack, a coroutine), above or below it, cannot be judged:
            // let it through.
            sp < low || sp > high || sp >= limit
        })
        .unwrap_or(true)
}

#[inline]
fn ser_guard<E: ser::Error>() -> Result<(), E> {
    if stack_ok() {
        Ok(())
    } else {
        Err(E::custom(too_deep_message()))
    }
}

#[inline]
fn de_guard<E: de::Error>() -> Result<(), E> {
    if stack_ok() {
        Ok(())
    } else {
        Err(E::custom(too_deep_message()))
    }
}

/// A serializer (or one of its compound states) that checks the stack
/// before each nested value.
pub(crate) struct Ser<S>(pub(crate) S);

/// A value serialized through [`Ser`].
struct Guarded<'a, T: ?Sized>(&'a T);

impl<T: ?Sized + Serialize> Serialize for Guarded<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Ser(serializer))
    }
}

macro_rules! forward_ser {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method(self, $($arg: $ty),*) -> Result<Self::Ok, Self::Error> {
            self.0.$method($($arg),*)
        }
    )*};
}

impl<S: Serializer> Serializer for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Ser<S::SerializeSeq>;
    type SerializeTuple = Ser<S::SerializeTuple>;
    type SerializeTupleStruct = Ser<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Ser<S::SerializeTupleVariant>;
    type SerializeMap = Ser<S::SerializeMap>;
    type SerializeStruct = Ser<S::SerializeStruct>;
    type SerializeStructVariant = Ser<S::SerializeStructVariant>;

    forward_ser! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, S::Error> {
        ser_guard()?;
        self.0.serialize_some(&Guarded(value))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        ser_guard()?;
        self.0.serialize_newtype_struct(name, &Guarded(value))
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        ser_guard()?;
        self.0
            .serialize_newtype_variant(name, index, variant, &Guarded(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        ser_guard()?;
        self.0.serialize_seq(len).map(Ser)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        ser_guard()?;
        self.0.serialize_tuple(len).map(Ser)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        ser_guard()?;
        self.0.serialize_tuple_struct(name, len).map(Ser)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        ser_guard()?;
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Ser)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        ser_guard()?;
        self.0.serialize_map(len).map(Ser)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        ser_guard()?;
        self.0.serialize_struct(name, len).map(Ser)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        ser_guard()?;
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Ser)
    }

    fn collect_str<T: ?Sized + Display>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.collect_str(value)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<S: ser::SerializeSeq> ser::SerializeSeq for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(&Guarded(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeTuple> ser::SerializeTuple for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(&Guarded(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeTupleStruct> ser::SerializeTupleStruct for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_field(&Guarded(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeTupleVariant> ser::SerializeTupleVariant for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_field(&Guarded(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeMap> ser::SerializeMap for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Guarded(key))
    }
    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Guarded(value))
    }
    #[inline]
    fn serialize_entry<K: ?Sized + Serialize, V: ?Sized + Serialize>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), S::Error> {
        self.0.serialize_entry(&Guarded(key), &Guarded(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStruct> ser::SerializeStruct for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, &Guarded(value))
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStructVariant> ser::SerializeStructVariant for Ser<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, &Guarded(value))
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

/// A deserializer, or one of its access states, that checks the stack
/// before each nested value. Visitors and seeds are wrapped in it too, so
/// the check reaches every level however the format recurses.
pub(crate) struct De<D>(pub(crate) D);

macro_rules! forward_de {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* De(visitor))
        }
    )*};
}

macro_rules! guarded_de {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            de_guard()?;
            self.0.$method($($arg,)* De(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for De<D> {
    type Error = D::Error;

    forward_de! {
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_identifier();
    }

    guarded_de! {
        deserialize_any();
        deserialize_option();
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for De<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(De(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(De(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(De(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(De(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(De(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for De<S> {
    type Value = S::Value;
    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(De(d))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for De<A> {
    type Error = A::Error;
    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(De(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for De<A> {
    type Error = A::Error;
    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(De(seed))
    }
    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(De(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for De<A> {
    type Error = A::Error;
    type Variant = De<A::Variant>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, De<A::Variant>), A::Error> {
        self.0
            .variant_seed(De(seed))
            .map(|(value, variant)| (value, De(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for De<A> {
    type Error = A::Error;
    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        de_guard()?;
        self.0.newtype_variant_seed(De(seed))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        de_guard()?;
        self.0.tuple_variant(len, De(visitor))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        de_guard()?;
        self.0.struct_variant(fields, De(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_has_room_at_the_top() {
        assert!(stack_ok());
        let (low, limit, high) = BOUNDS.with(|b| b.get());
        assert!(low < limit && limit < high);
    }

    #[test]
    fn a_small_stack_keeps_a_useful_red_zone_and_a_foreign_one_passes() {
        let (low, limit, high) = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(|| {
                assert!(stack_ok());
                BOUNDS.with(|b| b.get())
            })
            .unwrap()
            .join()
            .unwrap();
        // At least 64 KiB (half of it), not a quarter: 32 KiB.
        assert!(limit - low >= 64 << 10, "{}", limit - low);
        assert!(high - low >= 128 << 10);
        // Below and above this thread's stack: not judged (say, a coroutine's).
        BOUNDS.with(|b| b.set((low, limit, high)));
        let here = std::hint::black_box(&0u8) as *const u8 as usize;
        assert!(here < low || here > high, "a different thread's stack");
        assert!(stack_ok());
        BOUNDS.with(|b| b.set((0, 0, 0)));
    }

    #[test]
    fn running_out_of_stack_is_detected() {
        fn dig(n: usize) -> usize {
            let pad = [0u8; 4096];
            if !stack_ok() {
                return n;
            }
            let deeper = dig(n + 1);
            // Keep the frame (and its padding) alive across the call.
            deeper + std::hint::black_box(&pad)[0] as usize
        }
        // 4 KiB frames: the guard trips long before a 2+ MiB stack overflows.
        let depth = std::thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(|| dig(0))
            .unwrap()
            .join()
            .unwrap();
        assert!(depth > 100 && depth < 1100, "depth {depth}");
    }
}
