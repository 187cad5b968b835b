//! The effect of `pin(...)` on W2 and a W3-like workload, 2 workers:
//! `Pinning::None` (the kernel places workers) against `Pinning::Cores` and
//! `Pinning::PhysicalCores`.
//!
//! * W2: `map(x * 2)` over 10 000 000 `u64`, chunksize 16 384 (the ring
//!   and dispatch path; the parent and its threads compete with the workers
//!   for the CPUs).
//! * W3-like: 8 tasks, each filling a 32 MiB `Vec<f64>` of its own (first
//!   touch, so on the worker's NUMA node when pinned) and summing it
//!   (memory bandwidth).
//!
//! `Pinning::Numa` is `PhysicalCores` on a single-node machine (and without
//! the `hwloc` feature), so it is not measured separately.
//!
//! ```text
//! cargo bench --bench pinning
//! ```

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use loky::{Pinning, ProcessPoolExecutor};

const WORKERS: usize = 2;
const W2_ITEMS: u64 = 10_000_000;
const W2_CHUNK: usize = 16_384;
const W3_TASKS: u64 = 8;
const W3_BYTES: usize = 32 << 20;

/// Fills a 32 MiB buffer and sums it.
fn fill_and_sum(seed: u64) -> f64 {
    let v: Vec<f64> = (0..W3_BYTES / 8)
        .map(|i| (i as u64 ^ seed) as f64)
        .collect();
    v.iter().sum()
}

fn pool(pinning: Pinning) -> ProcessPoolExecutor {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(WORKERS)
        .pin(pinning)
        .build()
        .expect("pool");
    // Start every worker before measuring.
    for r in ex.map(|x: u64| x, 0..WORKERS as u64).chunksize(1) {
        r.expect("warm-up");
    }
    ex
}

const PINNINGS: [Pinning; 3] = [Pinning::None, Pinning::Cores, Pinning::PhysicalCores];

fn w2(c: &mut Criterion) {
    let mut g = c.benchmark_group("pinning/W2 map x*2, 2 workers");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(W2_ITEMS));
    for pinning in PINNINGS {
        let ex = pool(pinning);
        g.bench_function(BenchmarkId::from_parameter(format!("{pinning:?}")), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for r in ex.map(|x: u64| x * 2, 0..W2_ITEMS).chunksize(W2_CHUNK) {
                    sum = sum.wrapping_add(r.unwrap());
                }
                sum
            })
        });
        ex.shutdown(true, false, false);
    }
    g.finish();
}

fn w3(c: &mut Criterion) {
    let mut g = c.benchmark_group("pinning/W3-like 8 x 32 MiB fill+sum, 2 workers");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(W3_TASKS * W3_BYTES as u64));
    for pinning in PINNINGS {
        let ex = pool(pinning);
        g.bench_function(BenchmarkId::from_parameter(format!("{pinning:?}")), |b| {
            b.iter(|| {
                ex.map(fill_and_sum, 0..W3_TASKS)
                    .chunksize(1)
                    .map(|r| r.unwrap())
                    .sum::<f64>()
            })
        });
        ex.shutdown(true, false, false);
    }
    g.finish();
}

criterion_group!(benches, w2, w3);
criterion_main!(benches);
