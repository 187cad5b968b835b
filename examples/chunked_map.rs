//! A map over 10 million items with a progress bar.
//!
//! ```sh
//! cargo run --release --example chunked_map --features progress
//! cargo run --release --example chunked_map --features progress -- 100000000 4   # items, workers
//! ```
//!
//! The input is a range, read lazily: at most two chunks per worker are in
//! flight, so memory stays flat whatever the item count. The chunk size is
//! chosen automatically from the measured task durations (see
//! `Map::chunksize`); the bar advances once per chunk.

use std::time::Instant;

use loky::ProcessPoolExecutor;

/// A cheap, non-trivial item: one step of a 64-bit mixer (splitmix64).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() -> Result<(), loky::Error> {
    let mut args = std::env::args().skip(1);
    let items: u64 = args
        .next()
        .map_or(10_000_000, |a| a.parse().expect("item count"));
    let workers: usize = args
        .next()
        .map_or_else(loky::cpu_count, |a| a.parse().expect("worker count"));

    let ex = ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()?;
    let start = Instant::now();
    let mut checksum = 0u64;
    for r in ex.map(mix, 0..items).progress() {
        checksum ^= r?;
    }
    let elapsed = start.elapsed();
    println!(
        "{items} items on {workers} workers in {:.2} s: {:.1} M items/s (checksum {checksum:016x})",
        elapsed.as_secs_f64(),
        items as f64 / elapsed.as_secs_f64() / 1e6,
    );
    let s = ex.stats();
    println!(
        "{} chunks completed, {} failed, {} workers respawned",
        s.completed, s.failed, s.respawned
    );
    Ok(())
}
