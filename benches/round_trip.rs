//! W1 (see `loky-bench --help`): a warm pool of 2 workers; submit `x + 1`, wait
//! for it, 10 000 times in sequence. Criterion reports the time per round
//! trip; `loky-bench` reports p50/p99 of the same loop.
//!
//! Also a burst: 20 000 tasks submitted, then waited for, with and without
//! a time limit each (`submit_with_timeout`), and through `as_completed`;
//! and 20 000 queued tasks cancelled last first. Each costs a little per
//! task however many tasks are outstanding.
//!
//! And many threads at once, each submitting `x + 1` and waiting for it in
//! turn (a scheduler's threads): a result should wake the thread that waits
//! for it, not every waiting thread.

use criterion::{criterion_group, criterion_main, Criterion};
use loky::ProcessPoolExecutor;
use std::time::Duration;

fn w1(c: &mut Criterion) {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    // Warm up: workers started and the first task done.
    for i in 0..1000u64 {
        assert_eq!(
            ex.submit(|x: u64| x + 1, i).unwrap().result().unwrap(),
            i + 1
        );
    }
    // The W1 figure itself: p50/p99 of 10 000 sequential round trips.
    let mut lat: Vec<f64> = (0..10_000u64)
        .map(|i| {
            let t = std::time::Instant::now();
            let r = ex.submit(|x: u64| x + 1, i).unwrap().result().unwrap();
            let dt = t.elapsed().as_secs_f64() * 1e6;
            assert_eq!(r, i + 1);
            dt
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "W1 loky (2 workers, {} cores): p50 {:.2} us, p99 {:.2} us over 10000 round trips",
        loky::cpu_count(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    let mut g = c.benchmark_group("W1");
    g.bench_function("submit+result round trip (2 workers)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            ex.submit(|x: u64| x + 1, i).unwrap().result().unwrap()
        })
    });
    // The in-process reference: a function call through a thread hop.
    g.bench_function("reference: std thread channel round trip", |b| {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let (rtx, rrx) = std::sync::mpsc::channel::<u64>();
        let t = std::thread::spawn(move || {
            while let Ok(x) = rx.recv() {
                if rtx.send(x + 1).is_err() {
                    break;
                }
            }
        });
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tx.send(i).unwrap();
            rrx.recv().unwrap()
        });
        drop(tx);
        t.join().unwrap();
    });
    g.finish();
}

fn burst(c: &mut Criterion) {
    const TASKS: u64 = 20_000;
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    let mut g = c.benchmark_group("burst of 20 000 tasks (2 workers)");
    g.sample_size(10);
    for timed in [false, true] {
        let name = if timed {
            "submit_with_timeout(600 s), then results"
        } else {
            "submit, then results"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let futs: Vec<_> = (0..TASKS)
                    .map(|i| {
                        if timed {
                            ex.submit_with_timeout(|x: u64| x + 1, i, Duration::from_secs(600))
                        } else {
                            ex.submit(|x: u64| x + 1, i)
                        }
                        .unwrap()
                    })
                    .collect();
                let sum: u64 = futs.into_iter().map(|f| f.result().unwrap()).sum();
                assert_eq!(sum, TASKS * (TASKS + 1) / 2);
            })
        });
    }
    g.bench_function("submit, then as_completed", |b| {
        b.iter(|| {
            let futs: Vec<_> = (0..TASKS)
                .map(|i| ex.submit(|x: u64| x + 1, i).unwrap())
                .collect();
            let sum: u64 = loky::as_completed(&futs, None)
                .map(|f| f.unwrap().result().unwrap())
                .sum();
            assert_eq!(sum, TASKS * (TASKS + 1) / 2);
        })
    });
    // Only the cancel loop is timed: tasks queued behind sleeping ones,
    // cancelled last first (each is found in the queue by id).
    g.bench_function("cancel the queued tasks, last first", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let gates: Vec<_> = (0..8)
                    .map(|_| {
                        ex.submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 50)
                            .unwrap()
                    })
                    .collect();
                let futs: Vec<_> = (0..TASKS)
                    .map(|i| ex.submit(|x: u64| x + 1, i).unwrap())
                    .collect();
                let start = std::time::Instant::now();
                let cancelled = futs.iter().rev().filter(|f| f.cancel()).count();
                timed += start.elapsed();
                assert_eq!(cancelled, TASKS as usize, "all were still queued");
                for g in gates {
                    g.result().unwrap();
                }
            }
            timed
        })
    });
    g.finish();
}

fn many_waiters(c: &mut Criterion) {
    const TASKS: u64 = 4096;
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    let mut g = c.benchmark_group("4096 round trips from N threads (2 workers)");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(TASKS));
    for threads in [1u64, 4, 16, 32] {
        g.bench_function(format!("{threads} threads"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            for i in 0..TASKS / threads {
                                let r = ex.submit(|x: u64| x + 1, i).unwrap().result().unwrap();
                                assert_eq!(r, i + 1);
                            }
                        });
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, w1, burst, many_waiters);
criterion_main!(benches);
