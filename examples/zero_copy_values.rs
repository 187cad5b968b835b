//! Large `Vec`s by value, without a copy: with loky's shared-memory
//! allocator installed, a 256 MiB `Vec<f64>` goes to a worker and comes
//! back as its own pages (a memfd both processes map).
//!
//! `cargo run --release --example zero_copy_values`

use std::time::Instant;

use loky::ProcessPoolExecutor;

// The workers run this same binary, so they use it too.
#[global_allocator]
static ALLOC: loky::SharedMemoryAllocator = loky::SharedMemoryAllocator::new();

/// Scales a series to zero mean and unit variance, in place, and returns it.
fn standardise(mut xs: Vec<f64>) -> Vec<f64> {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let sd = var.sqrt();
    xs.iter_mut().for_each(|x| *x = (*x - mean) / sd);
    xs
}

fn main() -> loky::Result<()> {
    let len = (256 << 20) / 8;
    let ex = ProcessPoolExecutor::new(2)?;
    ex.submit(|x: u8| x, 0)?.result()?; // a warm worker
    for round in 0..3 {
        let series: Vec<f64> = (0..len).map(|i| (i % 1000) as f64).collect();
        let start = Instant::now();
        let sent = ex.submit(standardise, series)?;
        let submitted = start.elapsed();
        let out = sent.result()?;
        let total = start.elapsed();
        let mean = out.iter().sum::<f64>() / out.len() as f64;
        println!(
            "round {round}: 256 MiB there and back: submit {:.2} ms, result after {:.1} ms (mean now {mean:.1e})",
            submitted.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
