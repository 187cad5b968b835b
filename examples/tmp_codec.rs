//! temp
use std::time::Instant;
use loky::Payload;
fn main() {
    let v: Vec<u64> = (0..16384).collect();
    let mut out = rkyv::util::AlignedVec::new();
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n { out.clear(); <u64 as Payload>::encode_batch(&v, &mut out).unwrap(); }
    let enc = t.elapsed().as_nanos() as f64 / (n as f64 * 16384.0);
    let t = Instant::now();
    let mut s = 0u64;
    for _ in 0..n { let d = <u64 as Payload>::decode_batch(&out).unwrap(); s = s.wrapping_add(d[5]); }
    let dec = t.elapsed().as_nanos() as f64 / (n as f64 * 16384.0);
    let t = Instant::now();
    for _ in 0..n { let d: Vec<u64> = (0..16384u64).collect(); s = s.wrapping_add(d[5]); }
    let col = t.elapsed().as_nanos() as f64 / (n as f64 * 16384.0);
    println!("encode {enc:.2} ns/item, decode {dec:.2} ns/item, collect {col:.2} ns/item {s}");
}
