//! Decoding a `Vec` of plain numbers: one read of the archive's root, then
//! a copy (parallel when large).
//!
//! rkyv decodes an archived `Vec<f64>` by validating the archive, then
//! reading its root (where the elements are, how many) a second time, and
//! copying the elements one by one on one thread. When a task's whole
//! argument or result is a `Vec` of one of the numeric types listed in
//! [`try_decode`], this module instead copies the root out of the message
//! once, checks that the elements it names lie inside the message, and
//! copies them with [`bulk::copy`]. Reading the root once matters because
//! the message may sit in memory its sender can still write (a peer that
//! misbehaves): a root that changed between the check and the use cannot
//! lead the copy outside the message. The elements themselves may be any
//! bytes. The archived elements must have the native layout (rkyv's
//! default little-endian format on a little-endian machine, with 32- or
//! 64-bit relative pointers); otherwise, and for every other type, the caller
//! decodes with rkyv (from a private copy, see [`crate::codec`]).

use std::any::Any;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use bytemuck::Pod;
use loky_ipc::bulk;
use rkyv::vec::ArchivedVec;
use rkyv::Archived;

/// Decodes `bytes` as a `T` if `T` is a `Vec` of plain numbers, or returns
/// `None` (then rkyv decodes it).
pub(crate) fn try_decode<T: 'static>(bytes: &[u8]) -> Option<Result<T, String>> {
    let mut out: Option<T> = None;
    macro_rules! each_numeric_vec {
        ($($p:ty),*) => {$(
            if let Some(slot) = (&mut out as &mut dyn Any).downcast_mut::<Option<Vec<$p>>>() {
                if std::mem::size_of::<Archived<$p>>() != std::mem::size_of::<$p>()
                    || std::mem::size_of::<ArchivedVec<Archived<$p>>>() != ROOT_LEN
                    || !rkyv_is_native()
                {
                    return None;
                }
                let raw = match elements::<$p>(bytes) {
                    Ok(raw) => raw,
                    Err(e) => return Some(Err(e)),
                };
                *slot = Some(crate::donation::adopt::<$p>(raw).unwrap_or_else(|| copy_out::<$p>(raw)));
                return out.map(Ok);
            }
        )*};
    }
    each_numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    None
}

/// Bytes of one field of an archived `Vec`'s root: rkyv's pointer width
/// (32 bits by default, 64 with its `pointer_width_64` feature).
const WIDTH: usize = std::mem::size_of::<rkyv::primitive::FixedUsize>();

/// Bytes of an archived `Vec`'s root: a signed offset from the root to the
/// first element, then the length, each [`WIDTH`] bytes (rkyv 0.8's
/// `ArchivedVec`). The root is the archive's last bytes.
const ROOT_LEN: usize = 2 * WIDTH;

/// The offset and length that the root `bytes` of an archived `Vec` holds,
/// in native byte order, each [`WIDTH`] bytes; `None` if a value does not
/// fit this machine's `isize`/`usize`.
fn parse_root(root: &[u8; ROOT_LEN]) -> Option<(isize, usize)> {
    let (offset, len) = root.split_at(WIDTH);
    let signed = |b: &[u8]| -> Option<isize> {
        match *b {
            [a, b, c, d] => isize::try_from(i32::from_ne_bytes([a, b, c, d])).ok(),
            [a, b, c, d, e, f, g, h] => {
                isize::try_from(i64::from_ne_bytes([a, b, c, d, e, f, g, h])).ok()
            }
            _ => None,
        }
    };
    let unsigned = |b: &[u8]| -> Option<usize> {
        match *b {
            [a, b, c, d] => usize::try_from(u32::from_ne_bytes([a, b, c, d])).ok(),
            [a, b, c, d, e, f, g, h] => {
                usize::try_from(u64::from_ne_bytes([a, b, c, d, e, f, g, h])).ok()
            }
            _ => None,
        }
    };
    Some((signed(offset)?, unsigned(len)?))
}

/// The bytes of the elements of the archived `Vec<P>` that `bytes` holds,
/// reading its root exactly once.
fn elements<P: Pod>(bytes: &[u8]) -> Result<&[u8], String> {
    let pos = bytes
        .len()
        .checked_sub(ROOT_LEN)
        .ok_or("archive shorter than a Vec's root")?;
    // One read of the root; everything below uses this copy.
    let mut root = [0u8; ROOT_LEN];
    root.copy_from_slice(&bytes[pos..]);
    let (offset, len) = parse_root(&root).ok_or("archived Vec root out of range")?;
    let start = (pos as isize)
        .checked_add(offset)
        .and_then(|s| usize::try_from(s).ok());
    let size = len.checked_mul(std::mem::size_of::<P>());
    let range = match (start, size) {
        (Some(start), Some(size)) => start.checked_add(size).map(|end| start..end),
        _ => None,
    };
    let in_bounds = range.filter(|r| r.end <= pos || (r.is_empty() && r.start <= bytes.len()));
    let Some(range) = in_bounds else {
        return Err(format!(
            "archived Vec of {len} elements at offset {offset} lies outside the {} bytes of the message",
            bytes.len()
        ));
    };
    let elems = &bytes[range];
    if (elems.as_ptr() as usize) % std::mem::align_of::<P>() != 0 {
        return Err("archived Vec elements are misaligned".into());
    }
    Ok(elems)
}

/// Whether an archived `Vec<P>` is a root of [`ROOT_LEN`] bytes after
/// the elements as `[P]` in native bytes, which [`try_decode`] reads and
/// [`write_root`] writes.
pub(crate) fn native_layout<P: Pod + rkyv::Archive>() -> bool {
    std::mem::size_of::<Archived<P>>() == std::mem::size_of::<P>()
        && std::mem::size_of::<ArchivedVec<Archived<P>>>() == ROOT_LEN
        && rkyv_is_native()
}

/// Bytes of an archived `Vec`'s root, and its alignment.
pub(crate) const VEC_ROOT_LEN: usize = ROOT_LEN;
pub(crate) const VEC_ROOT_ALIGN: usize = WIDTH;

/// The root of an archived `Vec` of `len` elements that start `offset`
/// bytes from the root (negative: before it); `None` if a value does not
/// fit rkyv's pointer width.
pub(crate) fn write_root(offset: isize, len: usize) -> Option<[u8; ROOT_LEN]> {
    let mut root = [0u8; ROOT_LEN];
    let (o, l) = root.split_at_mut(WIDTH);
    match WIDTH {
        4 => {
            o.copy_from_slice(&i32::try_from(offset).ok()?.to_ne_bytes());
            l.copy_from_slice(&u32::try_from(len).ok()?.to_ne_bytes());
        }
        8 => {
            o.copy_from_slice(&i64::try_from(offset).ok()?.to_ne_bytes());
            l.copy_from_slice(&u64::try_from(len).ok()?.to_ne_bytes());
        }
        _ => return None,
    }
    Some(root)
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
        rkyv::to_bytes::<rkyv::rancor::BoxedError>(&sample)
            .is_ok_and(|archive| archive.get(..8) == Some(&sample.to_ne_bytes()[..]))
    })
}

/// A new `Vec<P>` holding the elements whose native bytes are `raw`.
fn copy_out<P: Pod>(raw: &[u8]) -> Vec<P> {
    let len = raw.len() / std::mem::size_of::<P>();
    let mut v = Vec::<P>::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    advise_huge_pages(spare);
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

/// [`advise_huge_pages`] leaves smaller buffers alone: glibc serves them
/// from its heap (its mmap threshold rises up to 32 MiB), where the advice
/// would outlive the buffer.
const HUGE_ADVICE_MIN: usize = 32 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of a new buffer of
/// [`HUGE_ADVICE_MIN`] bytes or more with transparent huge pages, where the system leaves that to the
/// program (`madvise` mode): fresh memory then costs one page fault per
/// 2 MiB instead of one per 4 KiB, which on a virtual machine is most of
/// the cost of filling it. Only a hint: an error changes nothing.
pub(crate) fn advise_huge_pages<T>(buf: &mut [MaybeUninit<T>]) {
    const HUGE: usize = 2 << 20;
    if std::mem::size_of_val(buf) < HUGE_ADVICE_MIN {
        return;
    }
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

    fn round_trip<P>(len: usize, make: impl Fn(usize) -> P)
    where
        P: Pod,
        Vec<P>: crate::codec::Archivable,
    {
        let v: Vec<P> = (0..len).map(make).collect();
        let bytes = archive(&v);
        let fast = try_decode::<Vec<P>>(&bytes).expect("a numeric Vec takes the fast path");
        let fast = fast.expect("a valid archive decodes");
        // Bitwise, so that a NaN compares equal to itself.
        assert_eq!(
            bytemuck::cast_slice::<P, u8>(&fast),
            bytemuck::cast_slice::<P, u8>(&v),
            "{len} elements"
        );
    }

    #[test]
    fn numeric_vecs_of_every_size_decode_to_the_same_values() {
        for len in [0, 1, 7, 1000, bulk::PARALLEL_MIN / 8 + 1001] {
            round_trip(len, |i| i as u8);
            round_trip(len, |i| (i as i16).wrapping_neg());
            round_trip(len, |i| i as u32 ^ 0xdead_beef);
            round_trip(len, |i| (i as i64) * -7);
            round_trip(len, |i| i as f32 * 0.25);
            round_trip(len, |i| if i == 5 { f64::NAN } else { i as f64 / 3.0 });
        }
    }

    #[test]
    fn the_root_is_read_where_rkyv_reads_it() {
        // If a later rkyv changes where an archived Vec keeps its elements,
        // this fails rather than the fast path decoding garbage.
        for len in [0usize, 1, 3, 64, 5000] {
            let v: Vec<u32> = (0..len as u32).collect();
            let bytes = archive(&v);
            let archived =
                rkyv::access::<ArchivedVec<Archived<u32>>, rkyv::rancor::BoxedError>(&bytes)
                    .unwrap();
            let ours = elements::<u32>(&bytes).unwrap();
            assert_eq!(ours.len(), len * 4);
            if len > 0 {
                assert_eq!(
                    ours.as_ptr(),
                    archived.as_ptr().cast::<u8>(),
                    "{len} elements"
                );
            }
        }
    }

    #[test]
    fn other_types_are_left_to_rkyv() {
        let strings = archive(&vec![String::from("x"); 100]);
        assert!(try_decode::<Vec<String>>(&strings).is_none());
        let pairs = archive(&vec![(1u32, 2u32); 100]);
        assert!(try_decode::<Vec<(u32, u32)>>(&pairs).is_none());
        assert!(try_decode::<u64>(&archive(&7u64)).is_none());
    }

    fn refused(bytes: &[u8]) -> bool {
        matches!(try_decode::<Vec<u64>>(bytes), Some(Err(_)))
    }

    #[test]
    fn a_corrupt_archive_is_an_error() {
        let v = vec![1u64; 1000];
        let good = archive(&v);
        let n = good.len();
        // A root of rkyv's width (32 or 64 bits per field), little-endian.
        let with_root = |offset: i64, len: u64| {
            let mut bytes = good.clone();
            bytes[n - ROOT_LEN..n - WIDTH].copy_from_slice(&offset.to_le_bytes()[..WIDTH]);
            bytes[n - WIDTH..].copy_from_slice(&len.to_le_bytes()[..WIDTH]);
            bytes
        };
        let mut root = [0u8; ROOT_LEN];
        root.copy_from_slice(&good[n - ROOT_LEN..]);
        let (offset, len) = parse_root(&root).unwrap();
        assert_eq!(len, 1000);
        let offset = offset as i64;
        // A length past the end, elements overlapping the root, before the
        // start, far away, misaligned.
        assert!(refused(&with_root(offset, u64::from(u32::MAX))));
        assert!(refused(&with_root(offset, 1001)));
        assert!(refused(&with_root(-(n as i64), 1)));
        assert!(refused(&with_root(i64::from(i32::MAX), 1)));
        assert!(refused(&with_root(i64::from(i32::MIN), 0)));
        assert!(refused(&with_root(offset + 1, 10)));
        // Too short for a root at all, and cut off in the middle.
        assert!(refused(&good[..5]));
        assert!(refused(&good[..n / 2]));
        // An empty Vec whose pointer stays inside the message is fine.
        assert!(
            matches!(try_decode::<Vec<u64>>(&with_root(offset, 0)), Some(Ok(v)) if v.is_empty())
        );
    }

    proptest::proptest! {
        /// Any bytes at all: an error or a Vec of the named length, never
        /// a panic or a read outside them.
        #[test]
        fn any_root_is_checked(offset: i64, len in 0u64..4096, body in 0usize..256) {
            let mut bytes = vec![0u8; body * 8];
            bytes.extend_from_slice(&offset.to_le_bytes()[..WIDTH]);
            bytes.extend_from_slice(&len.to_le_bytes()[..WIDTH]);
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes);
            if let Some(Ok(v)) = try_decode::<Vec<u64>>(&aligned) {
                proptest::prop_assert_eq!(v.len(), len as usize);
            }
        }
    }
}
