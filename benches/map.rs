//! W2 (see `loky-bench --help`): `map(x * 2)` over 1 000 000 and 10 000 000
//! `u64` with 2 workers, against rayon `par_iter` on the same data in the
//! same run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loky::ProcessPoolExecutor;
use rayon::prelude::*;

fn w2(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("W2");
    g.sample_size(10);
    for n in [1_000_000u64, 10_000_000] {
        g.throughput(Throughput::Elements(n));
        for chunk in [16_384usize, 65_536] {
            g.bench_with_input(
                BenchmarkId::new(format!("loky map chunksize {chunk}"), n),
                &n,
                |b, &n| {
                    b.iter(|| {
                        let mut sum = 0u64;
                        for r in ex.map(|x: u64| x * 2, 0..n).chunksize(chunk) {
                            sum = sum.wrapping_add(r.unwrap());
                        }
                        sum
                    })
                },
            );
        }
        g.bench_with_input(
            BenchmarkId::new("loky map auto chunksize", n),
            &n,
            |b, &n| {
                b.iter(|| {
                    ex.map(|x: u64| x * 2, 0..n)
                        .map(|r| r.unwrap())
                        .fold(0u64, u64::wrapping_add)
                })
            },
        );
        let data: Vec<u64> = (0..n).collect();
        g.bench_with_input(
            BenchmarkId::new("loky map chunksize 16384, into_vec", n),
            &n,
            |b, _| {
                b.iter(|| {
                    ex.map(|x: u64| x * 2, data.iter().copied())
                        .chunksize(16_384)
                        .into_vec()
                        .unwrap()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("reference: rayon par_iter (2 threads)", n),
            &n,
            |b, _| b.iter(|| pool.install(|| data.par_iter().map(|x| x * 2).collect::<Vec<u64>>())),
        );
    }
    g.finish();
}

criterion_group!(benches, w2);
criterion_main!(benches);
