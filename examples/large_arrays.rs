//! A 1 GiB array reduced by 4 workers without copying it: the array lives
//! in the pool's shared arena, each task gets a handle to a quarter of it.
//!
//! ```sh
//! cargo run --release --example large_arrays
//! ```

use std::time::Instant;

use loky::{ProcessPoolExecutor, SharedSlice, SharedSliceMut, SharedVec};

/// Sum and maximum of a chunk.
fn reduce(chunk: SharedSlice<f64>) -> (f64, f64) {
    chunk
        .iter()
        .fold((0.0, f64::MIN), |(s, m), &x| (s + x, m.max(x)))
}

fn main() -> Result<(), loky::Error> {
    const LEN: usize = (1 << 30) / std::mem::size_of::<f64>();
    let workers = 4;
    let ex = ProcessPoolExecutor::new(workers)?;

    // Fill the array in place, in parallel: each task writes its own chunk.
    let t = Instant::now();
    let mut data = SharedVec::<f64>::zeroed(&ex, LEN)?;
    let chunk = LEN.div_ceil(workers);
    let fills = data
        .chunks_mut(chunk)?
        .enumerate()
        .map(|(i, c)| {
            ex.submit(
                |(first, mut c): (usize, SharedSliceMut<f64>)| {
                    for (j, x) in c.iter_mut().enumerate() {
                        *x = ((first + j) % 1000) as f64;
                    }
                },
                (i * chunk, c),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for f in fills {
        f.result()?;
    }
    let filled = t.elapsed();

    // Reduce it: sending a handle costs the same for 1 KiB or 1 GiB.
    let t = Instant::now();
    let parts = data
        .chunks(chunk)?
        .map(|c| ex.submit(reduce, c))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut sum, mut max) = (0.0, f64::MIN);
    for p in parts {
        let (s, m) = p.result()?;
        sum += s;
        max = max.max(m);
    }
    let reduced = t.elapsed();

    let gib = (LEN * 8) as f64 / (1u64 << 30) as f64;
    println!("{gib:.0} GiB of f64 in shared memory, {workers} workers");
    println!("  filled in place in {:.0} ms", filled.as_secs_f64() * 1e3);
    println!(
        "  reduced in {:.0} ms ({:.1} GB/s): sum = {sum:e}, max = {max}",
        reduced.as_secs_f64() * 1e3,
        (LEN * 8) as f64 / reduced.as_secs_f64() / 1e9
    );
    let loky::ArenaUsage { in_use, limit, .. } = ex.shared_memory();
    println!(
        "  arena: {} MiB in use of {} MiB",
        in_use >> 20,
        limit >> 20
    );
    assert_eq!(max, 999.0);
    Ok(())
}
