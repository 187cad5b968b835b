//! Decoding a large `Vec` of plain numbers with a parallel copy.
//!
//! rkyv decodes an archived `Vec<f64>` by allocating a `Vec` and copying
//! the archived elements into it on one thread. When a task's whole
//! argument or result is a `Vec` of one of the numeric types listed in
//! [`try_decode`] and its archive has at least [`bulk::PARALLEL_MIN`]
//! bytes, the copy is done by [`bulk::copy`] instead, after the same
//! validation. The archived elements must have the native layout (rkyv's
//! default little-endian format on a little-endian machine); otherwise, and
//! for every other type, rkyv decodes as usual.

use std::any::Any;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use bytemuck::Pod;
use loky_ipc::bulk;
use rkyv::rancor;
use rkyv::vec::ArchivedVec;
use rkyv::Archived;

/// Decodes `bytes` as a `T` if `T` is a `Vec` of plain numbers and the
/// archive is large, or returns `None` (then rkyv decodes it).
pub(crate) fn try_decode<T: 'static>(bytes: &[u8]) -> Option<Result<T, String>> {
    if bytes.len() < bulk::PARALLEL_MIN {
        return None;
    }
    let mut out: Option<T> = None;
    macro_rules! each_numeric_vec {
        ($($p:ty),*) => {$(
            if let Some(slot) = (&mut out as &mut dyn Any).downcast_mut::<Option<Vec<$p>>>() {
                if std::mem::size_of::<Archived<$p>>() != std::mem::size_of::<$p>()
                    || !rkyv_is_native()
                {
                    return None;
                }
                let archived =
                    match rkyv::access::<ArchivedVec<Archived<$p>>, rancor::BoxedError>(bytes) {
                        Ok(archived) => archived.as_slice(),
                        Err(e) => return Some(Err(e.to_string())),
                    };
                // SAFETY: an archived `$p` is `size_of::<$p>()` bytes (checked
                // above) holding the value's native bytes (`rkyv_is_native`),
                // so the elements (validated by `access`, inside `bytes`) are
                // `len * size_of::<$p>()` readable bytes.
                let raw = unsafe {
                    std::slice::from_raw_parts(
                        archived.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(archived),
                    )
                };
                *slot = Some(copy_out::<$p>(raw));
                return out.map(Ok);
            }
        )*};
    }
    each_numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    None
}

/// Whether rkyv archives primitives as their native bytes (its default
/// little-endian format on a little-endian machine), so that an archived
/// `[P]` is a plain `[P]` in memory. rkyv's byte order is one setting for
/// every primitive, so one `u64` whose bytes all differ (a byte-swapped
/// archive of it cannot look native) decides it, once per process.
fn rkyv_is_native() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        let sample = u64::from_ne_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        rkyv::to_bytes::<rancor::BoxedError>(&sample)
            .is_ok_and(|archive| archive.get(..8) == Some(&sample.to_ne_bytes()[..]))
    })
}

/// A new `Vec<P>` holding the elements whose native bytes are `raw`.
fn copy_out<P: Pod>(raw: &[u8]) -> Vec<P> {
    let len = raw.len() / std::mem::size_of::<P>();
    let mut v = Vec::<P>::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if raw.len() >= HUGE_ADVICE_MIN {
        advise_huge_pages(spare);
    }
    // SAFETY: `spare` is `len` uninitialised `P`s, exclusively borrowed;
    // viewed as `len * size_of::<P>()` uninitialised bytes (`P` is `Pod`: no
    // padding, any bytes are a valid `P`, alignment of bytes is 1).
    let dst = unsafe {
        std::slice::from_raw_parts_mut(
            spare.as_mut_ptr().cast::<MaybeUninit<u8>>(),
            std::mem::size_of_val(spare),
        )
    };
    bulk::copy(dst, &raw[..dst.len()]);
    // SAFETY: `bulk::copy` initialised all `len` elements, within capacity.
    unsafe { v.set_len(len) };
    v
}

/// Buffers from this size on get [`advise_huge_pages`]: glibc serves
/// smaller ones from its heap (its mmap threshold rises up to 32 MiB),
/// where the advice would outlive the buffer.
const HUGE_ADVICE_MIN: usize = 32 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of a large new buffer
/// with transparent huge pages, where the system leaves that to the
/// program (`madvise` mode): fresh memory then costs one page fault per
/// 2 MiB instead of one per 4 KiB, which on a virtual machine is most of
/// the cost of filling it. Only a hint: an error changes nothing.
fn advise_huge_pages<T>(buf: &mut [MaybeUninit<T>]) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if last <= first {
        return;
    }
    // SAFETY: `[first, last)` lies inside `buf`, memory this process owns
    // (a fresh allocation not yet handed to anyone); `MADV_HUGEPAGE` only
    // changes how the kernel backs those pages, never their contents.
    let advised = unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            last - first,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
    if let Err(e) = advised {
        tracing::trace!("madvise(MADV_HUGEPAGE) refused: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive<T: crate::codec::Archivable>(value: &T) -> rkyv::util::AlignedVec {
        let mut out = rkyv::util::AlignedVec::new();
        crate::codec::archive(value, &mut out).unwrap();
        out
    }

    fn round_trip<P>(make: impl Fn(usize) -> P)
    where
        P: Pod,
        Vec<P>: crate::codec::Archivable,
    {
        let len = bulk::PARALLEL_MIN / std::mem::size_of::<P>() + 1001;
        let v: Vec<P> = (0..len).map(make).collect();
        let bytes = archive(&v);
        let fast = try_decode::<Vec<P>>(&bytes).expect("a large numeric Vec takes the fast path");
        let fast = fast.expect("a valid archive decodes");
        // Bitwise, so that a NaN compares equal to itself.
        assert_eq!(
            bytemuck::cast_slice::<P, u8>(&fast),
            bytemuck::cast_slice::<P, u8>(&v)
        );
    }

    #[test]
    fn large_numeric_vecs_decode_to_the_same_values() {
        round_trip(|i| i as u8);
        round_trip(|i| (i as i16).wrapping_neg());
        round_trip(|i| i as u32 ^ 0xdead_beef);
        round_trip(|i| (i as i64) * -7);
        round_trip(|i| i as f32 * 0.25);
        round_trip(|i| if i == 5 { f64::NAN } else { i as f64 / 3.0 });
    }

    #[test]
    fn other_types_and_small_archives_are_left_to_rkyv() {
        let small = archive(&vec![1.0f64; 1000]);
        assert!(try_decode::<Vec<f64>>(&small).is_none());
        let strings = archive(&vec![String::from("x"); bulk::PARALLEL_MIN]);
        assert!(try_decode::<Vec<String>>(&strings).is_none());
        let pairs = archive(&vec![(1u32, 2u32); bulk::PARALLEL_MIN / 8 + 1]);
        assert!(try_decode::<Vec<(u32, u32)>>(&pairs).is_none());
    }

    #[test]
    fn a_corrupt_archive_is_an_error() {
        let v = vec![1u64; bulk::PARALLEL_MIN / 8 + 16];
        let mut bytes = archive(&v);
        // The root (relative pointer and length) is the archive's last bytes:
        // a length far past the end must be refused, not read.
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        match try_decode::<Vec<u64>>(&bytes) {
            Some(Err(_)) => {}
            other => panic!(
                "expected a validation error, got {:?}",
                other.map(|r| r.map(|v| v.len()))
            ),
        }
        let truncated = &archive(&v)[..bulk::PARALLEL_MIN];
        assert!(matches!(try_decode::<Vec<u64>>(truncated), Some(Err(_))));
    }
}
