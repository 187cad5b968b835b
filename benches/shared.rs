//! W3 (sum of a 256 MiB f64 array in a worker, through a `SharedVec`) and
//! W2 over shared arrays (`map(x*2)` of 10 M u64, input and output in shared
//! memory), each with its in-process reference measured in the same run:
//! a single-thread sum for W3, rayon `par_iter` for W2.
//!
//! `cargo bench --bench shared` (`-- --quick` for a short run). Besides
//! criterion's report, prints one `W3`/`W2` line per figure with GB/s or
//! items/s and the ratio to the reference.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loky::{ProcessPoolExecutor, SharedSlice, SharedVec};
use rayon::prelude::*;

const W3_BYTES: usize = 256 << 20;
const W2_ITEMS: usize = 10_000_000;

fn sum_task(s: SharedSlice<f64>) -> f64 {
    s.iter().sum()
}

/// Median seconds per call of `f` over `n` calls.
fn median_secs(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn w3(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::new(2).expect("pool");
    let n = W3_BYTES / 8;
    let local: Vec<f64> = (0..n).map(|i| (i % 1024) as f64).collect();
    let shared = SharedVec::from_slice(&ex, &local).expect("arena");
    let want: f64 = local.iter().sum();
    let slice = shared.slice(..).expect("slice");
    // Warm up: the worker maps the arena and its page tables once.
    let got = ex
        .submit(sum_task, slice.clone())
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(got, want);

    let mut g = c.benchmark_group("w3_sum_256MiB");
    g.throughput(Throughput::Bytes(W3_BYTES as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("in_process_vec", |b| {
        b.iter(|| black_box(black_box(&local).iter().sum::<f64>()))
    });
    g.bench_function("in_process_shared_pages", |b| {
        b.iter(|| black_box(black_box(shared.as_slice()).iter().sum::<f64>()))
    });
    g.bench_function("worker_shared_vec", |b| {
        b.iter(|| {
            ex.submit(sum_task, slice.clone())
                .unwrap()
                .result()
                .unwrap()
        })
    });
    g.finish();

    // Interleaved medians, same run: the ratio the target is about.
    let reps = 15;
    let mut in_proc = Vec::new();
    let mut worker = Vec::new();
    for _ in 0..3 {
        in_proc.push(median_secs(reps, || {
            black_box(black_box(&local).iter().sum::<f64>());
        }));
        worker.push(median_secs(reps, || {
            black_box(
                ex.submit(sum_task, slice.clone())
                    .unwrap()
                    .result()
                    .unwrap(),
            );
        }));
    }
    in_proc.sort_by(f64::total_cmp);
    worker.sort_by(f64::total_cmp);
    let (a, b) = (in_proc[1], worker[1]);
    let gbs = |s: f64| W3_BYTES as f64 / s / 1e9;
    eprintln!(
        "W3 in-process sum {:.2} ms ({:.2} GB/s); SharedVec in a worker {:.2} ms ({:.2} GB/s); ratio {:.1} %",
        a * 1e3,
        gbs(a),
        b * 1e3,
        gbs(b),
        100.0 * a / b
    );
}

fn w2(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::new(2).expect("pool");
    let data: Vec<u64> = (0..W2_ITEMS as u64).collect();
    let input = SharedVec::from_slice(&ex, &data).expect("arena");
    let mut output = SharedVec::<u64>::zeroed(&ex, W2_ITEMS).expect("arena");
    let mut rayon_out = vec![0u64; W2_ITEMS];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon");
    ex.map_shared_into(|x: u64| x * 2, &input, &mut output)
        .unwrap();
    assert_eq!(output.as_slice()[W2_ITEMS - 1], 2 * (W2_ITEMS as u64 - 1));

    let mut g = c.benchmark_group("w2_map_x2_10M_shared");
    g.throughput(Throughput::Elements(W2_ITEMS as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("rayon_par_iter_2_threads", |b| {
        b.iter(|| {
            pool.install(|| {
                rayon_out
                    .par_iter_mut()
                    .zip(data.par_iter())
                    .for_each(|(o, &x)| *o = x * 2)
            })
        })
    });
    g.bench_function("loky_map_shared_into", |b| {
        b.iter(|| {
            ex.map_shared_into(|x: u64| x * 2, &input, &mut output)
                .unwrap()
        })
    });
    g.bench_function("loky_map_shared_new_output", |b| {
        b.iter(|| black_box(ex.map_shared(|x: u64| x * 2, &input).unwrap()))
    });
    g.finish();

    let reps = 15;
    let mut r = Vec::new();
    let mut l = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        r.push(median_secs(reps, || {
            pool.install(|| {
                rayon_out
                    .par_iter_mut()
                    .zip(data.par_iter())
                    .for_each(|(o, &x)| *o = x * 2)
            })
        }));
        l.push(median_secs(reps, || {
            ex.map_shared_into(|x: u64| x * 2, &input, &mut output)
                .unwrap()
        }));
        fresh.push(median_secs(reps, || {
            black_box(ex.map_shared(|x: u64| x * 2, &input).unwrap());
        }));
    }
    for v in [&mut r, &mut l, &mut fresh] {
        v.sort_by(f64::total_cmp);
    }
    let ips = |s: f64| W2_ITEMS as f64 / s / 1e6;
    eprintln!(
        "W2 shared 10M: rayon {:.0} M items/s; map_shared_into {:.0} M items/s ({:.1} % of rayon); map_shared (new output) {:.0} M items/s",
        ips(r[1]),
        ips(l[1]),
        100.0 * r[1] / l[1],
        ips(fresh[1])
    );
}

/// Sending a handle costs the same whatever its length: a round trip of a
/// task taking a 1 KiB slice and one taking a 1 GiB slice.
fn handle_cost(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::new(2).expect("pool");
    let small = SharedVec::<u8>::zeroed(&ex, 1 << 10).expect("arena");
    let big = SharedVec::<u8>::zeroed(&ex, 1 << 30).expect("arena");
    let (s, b) = (small.slice(..).unwrap(), big.slice(..).unwrap());
    let len = |x: SharedSlice<u8>| x.len();
    assert_eq!(
        ex.submit(len, b.clone()).unwrap().result().unwrap(),
        1 << 30
    );
    let mut g = c.benchmark_group("send_a_handle");
    g.bench_function("1KiB", |bch| {
        bch.iter(|| ex.submit(len, s.clone()).unwrap().result().unwrap())
    });
    g.bench_function("1GiB", |bch| {
        bch.iter(|| ex.submit(len, b.clone()).unwrap().result().unwrap())
    });
    g.finish();
    let reps = 2001;
    let small_s = median_secs(reps, || {
        black_box(ex.submit(len, s.clone()).unwrap().result().unwrap());
    });
    let big_s = median_secs(reps, || {
        black_box(ex.submit(len, b.clone()).unwrap().result().unwrap());
    });
    eprintln!(
        "handle round trip: 1 KiB slice {:.2} us, 1 GiB slice {:.2} us",
        small_s * 1e6,
        big_s * 1e6
    );
}

criterion_group!(benches, w3, w2, handle_cost);
criterion_main!(benches);
