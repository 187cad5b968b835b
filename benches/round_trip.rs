//! W1 (DESIGN.md section 4): a warm pool of 2 workers; submit `x + 1`, wait
//! for it, 10 000 times in sequence. Criterion reports the time per round
//! trip; `loky-bench` reports p50/p99 of the same loop.

use criterion::{criterion_group, criterion_main, Criterion};
use loky::ProcessPoolExecutor;

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

criterion_group!(benches, w1);
criterion_main!(benches);
