//! Large values by value with loky's shared-memory allocator installed
//! (this bench binary's global allocator): a 256 MiB `Vec<f64>` argument
//! that the worker sums (W3 by value, see `loky-bench --help`), a 256 MiB
//! result the worker fills, and one that goes to the worker and comes back
//! changed; each next to its in-process reference in the same run.
//!
//! ```sh
//! cargo bench --bench zero_copy
//! ```
//!
//! Before criterion's report it prints one line per figure (median and best
//! seconds per call over [`CALLS`] calls, GB/s = 256 MiB / seconds per
//! call). The argument's clone is made outside the timed part.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loky::{ProcessPoolExecutor, SharedMemoryAllocator};

#[global_allocator]
static ALLOC: SharedMemoryAllocator = SharedMemoryAllocator::new();

/// 256 MiB of `f64`.
const BYTES: usize = 256 << 20;
const LEN: usize = BYTES / 8;
/// Calls per figure for the printed lines.
const CALLS: usize = 10;

fn make(len: u64) -> Vec<f64> {
    (0..len).map(|i| (i % 1000) as f64 * 0.5).collect()
}

/// The sum W3 measures (as `loky-bench` does): eight running sums, so
/// that it runs at memory speed rather than at one addition's latency.
fn sum_f64(xs: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f64>() + rest
}

fn sum(v: Vec<f64>) -> f64 {
    sum_f64(&v)
}

fn scale(mut v: Vec<f64>) -> Vec<f64> {
    v.iter_mut().for_each(|x| *x *= 2.0);
    v
}

/// Median and best of `CALLS` timings (seconds) of `call`, which times itself.
fn stats(mut call: impl FnMut() -> f64) -> (f64, f64) {
    let mut t: Vec<f64> = (0..CALLS).map(|_| call()).collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

fn report(what: &str, (median, best): (f64, f64), reference: Option<f64>) {
    let gbps = |s: f64| BYTES as f64 / s / 1e9;
    let ratio = reference.map_or(String::new(), |r| {
        format!(", {:.2} x the in-process figure", median / r)
    });
    eprintln!(
        "{what}: median {median:.4} s/call = {:.2} GB/s (best {best:.4} s = {:.2} GB/s){ratio}",
        gbps(median),
        gbps(best)
    );
}

fn zero_copy(c: &mut Criterion) {
    assert!(
        SharedMemoryAllocator::installed().is_some(),
        "the allocator is installed"
    );
    let ex = ProcessPoolExecutor::new(1).expect("pool");
    let data = make(LEN as u64);
    let want = sum_f64(&data);
    assert_eq!(
        ex.submit(sum, data.clone()).unwrap().result().unwrap(),
        want
    );

    let in_process_sum = stats(|| {
        let t = Instant::now();
        black_box(sum_f64(black_box(&data)));
        t.elapsed().as_secs_f64()
    });
    report(
        "reference: in-process sequential sum of 256 MiB f64",
        in_process_sum,
        None,
    );
    let by_value = stats(|| {
        let v = data.clone();
        let t = Instant::now();
        let got = ex.submit(sum, v).unwrap().result().unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(got, want);
        dt
    });
    report(
        "W3 by value, shared-memory allocator: 256 MiB Vec<f64> argument, the worker sums it",
        by_value,
        Some(in_process_sum.0),
    );

    let in_process_make = stats(|| {
        let t = Instant::now();
        let v = make(black_box(LEN as u64));
        let dt = t.elapsed().as_secs_f64();
        drop(black_box(v));
        dt
    });
    report(
        "reference: in-process fill of a 256 MiB Vec<f64>",
        in_process_make,
        None,
    );
    let result = stats(|| {
        let t = Instant::now();
        let v = ex.submit(make, LEN as u64).unwrap().result().unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(v.len(), LEN);
        dt
    });
    report(
        "256 MiB Vec<f64> result (the worker fills it), shared-memory allocator",
        result,
        Some(in_process_make.0),
    );

    let in_process_scale = stats(|| {
        let v = data.clone();
        let t = Instant::now();
        let v = scale(black_box(v));
        let dt = t.elapsed().as_secs_f64();
        drop(black_box(v));
        dt
    });
    report(
        "reference: in-process scale of 256 MiB f64",
        in_process_scale,
        None,
    );
    let there_and_back = stats(|| {
        let v = data.clone();
        let t = Instant::now();
        let v = ex.submit(scale, v).unwrap().result().unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(v[1], 1.0);
        dt
    });
    report(
        "256 MiB Vec<f64> to the worker and back, scaled, shared-memory allocator",
        there_and_back,
        Some(in_process_scale.0),
    );

    let mut g = c.benchmark_group("zero_copy_256MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(BYTES as u64));
    g.bench_function("in_process_sum", |b| {
        b.iter(|| black_box(sum_f64(black_box(&data))))
    });
    g.bench_function("by_value_sum_in_worker", |b| {
        b.iter_batched(
            || data.clone(),
            |v| ex.submit(sum, v).unwrap().result().unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, zero_copy);
criterion_main!(benches);
