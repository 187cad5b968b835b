//! Large values by value: a 256 MiB `Vec<f64>` as a task's argument (W3 by
//! value, see `loky-bench --help`: the worker sums it) and as a task's result,
//! next to the in-process references on the same data in the same run;
//! the same sum with the array sent by `submit_slice` (read in place by the
//! worker: one copy instead of two); and
//! [`QUEUED`] arguments of 32 MiB submitted while the worker is busy, so
//! that most of them wait in the parent's queue (the submit loop is timed,
//! against an in-process copy of the same bytes).
//!
//! ```sh
//! cargo bench --bench large_values
//! ```
//!
//! Before criterion's own report it prints one line per figure (median and
//! best seconds per call over [`CALLS`] calls, and GB/s = 256 MiB / seconds
//! per call), so the figures can be quoted. The input's clone is made
//! outside the timed part; dropping the argument (which `submit` consumes)
//! is inside it, dropping a received result is not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loky::ProcessPoolExecutor;

/// 256 MiB of `f64`.
const BYTES: usize = 256 << 20;
const LEN: usize = BYTES / 8;
/// Calls per figure for the printed lines.
const CALLS: usize = 10;

fn value(i: usize) -> f64 {
    (i % 1000) as f64 * 0.5
}

fn make(len: u64) -> Vec<f64> {
    (0..len as usize).map(value).collect()
}

fn sum(v: Vec<f64>) -> f64 {
    v.iter().sum()
}

fn sum_in_place(v: &[f64], (): ()) -> f64 {
    v.iter().sum()
}

/// Arguments submitted at once to the busy worker (256 MiB in all, as W3).
const QUEUED: usize = 8;
/// Each queued argument: 32 MiB of `f64`.
const QUEUED_LEN: usize = (32 << 20) / 8;
const _: () = assert!(QUEUED * QUEUED_LEN * 8 == BYTES);

/// A task that keeps its worker busy for a while, so that the next
/// arguments wait in the parent's queue.
fn slow_len(v: Vec<f64>) -> usize {
    std::thread::sleep(Duration::from_millis(20));
    v.len()
}

/// Submits `args` (timed), then waits for their results (not timed).
fn submit_queued(ex: &ProcessPoolExecutor, args: Vec<Vec<f64>>) -> Duration {
    let t = Instant::now();
    let futures: Vec<_> = args
        .into_iter()
        .map(|v| ex.submit(slow_len, v).unwrap())
        .collect();
    let dt = t.elapsed();
    for f in futures {
        assert_eq!(f.result().unwrap(), QUEUED_LEN);
    }
    dt
}

/// Median and best of `CALLS` timings of `call` (which times itself).
fn stats(mut call: impl FnMut() -> Duration) -> (f64, f64) {
    let mut t: Vec<f64> = (0..CALLS).map(|_| call().as_secs_f64()).collect();
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

fn large_values(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .expect("pool");
    let data = make(LEN as u64);
    let want: f64 = data.iter().sum();
    // Warm up: the worker is started and has seen a large message each way.
    assert_eq!(
        ex.submit(sum, data.clone()).unwrap().result().unwrap(),
        want
    );
    assert_eq!(
        ex.submit(make, LEN as u64).unwrap().result().unwrap().len(),
        LEN
    );

    let in_process_sum = stats(|| {
        let t = Instant::now();
        black_box(black_box(&data).iter().sum::<f64>());
        t.elapsed()
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
        let dt = t.elapsed();
        assert_eq!(got, want);
        dt
    });
    report(
        "W3 by value: 256 MiB Vec<f64> argument, the worker sums it",
        by_value,
        Some(in_process_sum.0),
    );

    let in_place = stats(|| {
        let t = Instant::now();
        let got = ex
            .submit_slice(sum_in_place, &data, ())
            .unwrap()
            .result()
            .unwrap();
        let dt = t.elapsed();
        assert_eq!(got, want);
        dt
    });
    report(
        "W3 by value, read in place: submit_slice of 256 MiB f64, the worker sums it",
        in_place,
        Some(in_process_sum.0),
    );

    let in_process_make = stats(|| {
        let t = Instant::now();
        let v = make(black_box(LEN as u64));
        let dt = t.elapsed();
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
        let dt = t.elapsed();
        assert_eq!((v.len(), v[LEN - 1]), (LEN, value(LEN - 1)));
        dt
    });
    report(
        "256 MiB Vec<f64> result (the worker fills it)",
        result,
        Some(in_process_make.0),
    );

    let small = make(QUEUED_LEN as u64);
    let queued_args = || (0..QUEUED).map(|_| small.clone()).collect::<Vec<_>>();
    let in_process_copy = stats(|| {
        let args = queued_args();
        let t = Instant::now();
        let copies: Vec<Vec<f64>> = black_box(&args).iter().map(|v| v.to_vec()).collect();
        let dt = t.elapsed();
        drop(black_box(copies));
        dt
    });
    report(
        "reference: in-process copy of 8 x 32 MiB f64 into new Vecs",
        in_process_copy,
        None,
    );
    let queued = stats(|| submit_queued(&ex, queued_args()));
    report(
        "8 x 32 MiB arguments submitted to a busy worker (the submit loop)",
        queued,
        Some(in_process_copy.0),
    );

    let mut g = c.benchmark_group("large_values");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(BYTES as u64));
    g.bench_function("reference: in-process sum", |b| {
        b.iter(|| black_box(&data).iter().sum::<f64>())
    });
    g.bench_function("W3 by value: sum of a 256 MiB argument", |b| {
        b.iter_batched(
            || data.clone(),
            |v| ex.submit(sum, v).unwrap().result().unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("W3 by value, read in place: sum of a 256 MiB slice", |b| {
        b.iter(|| {
            ex.submit_slice(sum_in_place, &data, ())
                .unwrap()
                .result()
                .unwrap()
        })
    });
    g.bench_function("reference: in-process fill", |b| {
        b.iter_with_large_drop(|| make(black_box(LEN as u64)))
    });
    g.bench_function("256 MiB result", |b| {
        b.iter_with_large_drop(|| ex.submit(make, LEN as u64).unwrap().result().unwrap())
    });
    g.bench_function("8 x 32 MiB submitted to a busy worker", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| submit_queued(&ex, queued_args())).sum())
    });
    g.finish();
}

criterion_group!(benches, large_values);
criterion_main!(benches);
