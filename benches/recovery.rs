//! Recovery and start-up workloads (W4-W6 of `loky-bench --help`):
//!
//! * W6: a warm pool of 2 workers; a task SIGKILLs its own worker. Measured:
//!   submit → the future fails (with a trivial round trip measured in the
//!   same iteration as the baseline; the difference estimates the detection
//!   latency), the kill → the failure directly (the task stamps
//!   `CLOCK_MONOTONIC` just before it kills itself), the failure → the next
//!   successful task (on the surviving worker), and on a pool of 1 the
//!   failure → the next successful task, which has to wait for the respawn.
//! * W5: `get_reusable_executor().max_workers(2).get()` (warm, same
//!   configuration) then one trivial task.
//! * W4: cold: create a pool of 2 workers, first result, drop the pool.
//!
//! * W6 again with 1 GiB of heap in the parent (printed only): how the
//!   recovery path scales with the parent's memory.
//!
//! Besides criterion's figures, p50/p99 of each W6 quantity (and of W5, W4)
//! are printed to stderr, like `round_trip.rs` does for W1.
//!
//! ```text
//! cargo bench --bench recovery -- --warm-up-time 1 --measurement-time 3
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use loky::{get_reusable_executor, Error, ProcessPoolExecutor};

/// Repetitions behind the printed percentiles of W6.
const W6_REPS: usize = 50;
/// Heap held by the parent in the last W6 variant, and its repetitions.
const BALLAST_MIB: usize = 1024;
const BALLAST_REPS: usize = 10;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain system call writing into a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn killer(stamp: String) -> u64 {
    let file = (!stamp.is_empty()).then(|| File::options().write(true).open(&stamp).unwrap());
    let t = mono_ns();
    if let Some(f) = file {
        f.write_all_at(&t.to_le_bytes(), 0).unwrap();
    }
    // SAFETY: plain system calls; the worker is meant to die here.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn plus_one(x: u64) -> u64 {
    x + 1
}

fn nap_pid(us: u64) -> u32 {
    std::thread::sleep(Duration::from_micros(us));
    std::process::id()
}

fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call on a valid struct; only lowers a limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn pool(n: usize) -> ProcessPoolExecutor {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(n)
        .build()
        .expect("pool");
    heal(&ex, 0);
    for i in 0..200 {
        assert_eq!(ex.submit(plus_one, i).unwrap().result().unwrap(), i + 1);
    }
    ex
}

/// Waits (untimed) until the pool is whole again: every slot has a ready
/// worker and none of them is `dead`.
fn heal(ex: &ProcessPoolExecutor, dead: u32) {
    let n = ex.max_workers();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pool did not heal: {:?}",
            ex.stats()
        );
        let pids = ex.worker_pids();
        if pids.len() == n && !pids.contains(&dead) {
            // Ready workers each take one of n concurrent naps.
            let futs: Vec<_> = (0..n).map(|_| ex.submit(nap_pid, 300).unwrap()).collect();
            let mut ran: Vec<u32> = futs.iter().map(|f| f.result().unwrap()).collect();
            ran.sort_unstable();
            ran.dedup();
            if ran.len() == n && !ran.contains(&dead) {
                return;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One W6 round on a healed pool.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// submit → result of a trivial task (the baseline).
    baseline: Duration,
    /// submit of the killer → its future fails.
    error: Duration,
    /// The kill (stamped by the task) → the future fails in the caller.
    kill_to_error: Duration,
    /// The failure → the next trivial task's result.
    next: Duration,
}

fn round(ex: &ProcessPoolExecutor, stamp: &str) -> Round {
    let t = Instant::now();
    assert_eq!(ex.submit(plus_one, 1).unwrap().result().unwrap(), 2);
    let baseline = t.elapsed();

    File::create(stamp)
        .unwrap()
        .write_all_at(&[0; 8], 0)
        .unwrap();
    let t = Instant::now();
    let r = ex.submit(killer, stamp.to_owned()).unwrap().result();
    let error = t.elapsed();
    let err_ns = mono_ns();
    let dead = match r {
        Err(Error::TerminatedWorker { pid, .. }) => pid,
        other => panic!("the killer's future got {other:?}"),
    };
    let mut buf = [0u8; 8];
    std::fs::File::open(stamp)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    let kill_ns = u64::from_le_bytes(buf);
    assert!(kill_ns != 0 && kill_ns <= err_ns, "no kill stamp");
    let kill_to_error = Duration::from_nanos(err_ns - kill_ns);

    let t = Instant::now();
    assert_eq!(ex.submit(plus_one, 41).unwrap().result().unwrap(), 42);
    let next = t.elapsed();
    heal(ex, dead);
    Round {
        baseline,
        error,
        kill_to_error,
        next,
    }
}

fn pct(v: &mut [Duration], p: usize) -> f64 {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e6
}

fn report(what: &str, mut v: Vec<Duration>) {
    eprintln!(
        "{what}: p50 {:.1} us, p99 {:.1} us, min {:.1} us (n = {})",
        pct(&mut v, 50),
        pct(&mut v, 99),
        pct(&mut v, 0),
        v.len()
    );
}

/// W6 iterations are slow in wall time (each waits for a respawn) but
/// short in measured time: keep criterion's iteration counts small.
fn slow_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(100))
        .sampling_mode(criterion::SamplingMode::Flat);
    g
}

fn w6(c: &mut Criterion) {
    no_core_dumps();
    let stamp = std::env::temp_dir()
        .join(format!("loky-w6-{}", std::process::id()))
        .to_string_lossy()
        .into_owned();

    // Percentiles over W6_REPS rounds on a pool of 2.
    let ex = pool(2);
    let rounds: Vec<Round> = (0..W6_REPS).map(|_| round(&ex, &stamp)).collect();
    let stats = ex.stats();
    eprintln!(
        "W6 loky (2 workers, {} cores), {W6_REPS} kills:",
        loky::cpu_count()
    );
    report(
        "  baseline submit -> result      ",
        rounds.iter().map(|r| r.baseline).collect(),
    );
    report(
        "  killer submit -> error         ",
        rounds.iter().map(|r| r.error).collect(),
    );
    let mut diff: Vec<Duration> = rounds
        .iter()
        .map(|r| r.error.saturating_sub(r.baseline))
        .collect();
    report(
        "  (submit -> error) - baseline   ",
        std::mem::take(&mut diff),
    );
    report(
        "  kill (stamped) -> error        ",
        rounds.iter().map(|r| r.kill_to_error).collect(),
    );
    report(
        "  error -> next result (2 wkrs)  ",
        rounds.iter().map(|r| r.next).collect(),
    );
    assert_eq!(stats.crashed as usize, W6_REPS, "{stats:?}");

    // The respawn: on a pool of 1 the next task waits for the new worker.
    let one = pool(1);
    let rounds1: Vec<Round> = (0..W6_REPS).map(|_| round(&one, &stamp)).collect();
    report(
        "  error -> next result (1 wkr)   ",
        rounds1.iter().map(|r| r.next).collect(),
    );
    report(
        "  kill (stamped) -> error (1 wkr)",
        rounds1.iter().map(|r| r.kill_to_error).collect(),
    );

    let mut g = slow_group(c, "W6");
    g.bench_function("killer submit -> error (2 workers)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(&ex, &stamp).error).sum())
    });
    g.bench_function("kill -> error, stamped in the task (2 workers)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(&ex, &stamp).kill_to_error).sum())
    });
    g.bench_function("error -> next result (2 workers)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(&ex, &stamp).next).sum())
    });
    g.bench_function("error -> next result, respawn (1 worker)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round(&one, &stamp).next).sum())
    });
    g.finish();

    // The same on a parent that holds 1 GiB of (touched) heap, as a batch
    // job with large arrays does: the respawn's cost must not grow with it.
    {
        let ballast = vec![1u8; BALLAST_MIB << 20];
        std::hint::black_box(&ballast);
        let rounds: Vec<Round> = (0..BALLAST_REPS).map(|_| round(&ex, &stamp)).collect();
        let rounds1: Vec<Round> = (0..BALLAST_REPS).map(|_| round(&one, &stamp)).collect();
        eprintln!("W6 with {BALLAST_MIB} MiB of heap in the parent, {BALLAST_REPS} kills:");
        report(
            "  kill (stamped) -> error        ",
            rounds.iter().map(|r| r.kill_to_error).collect(),
        );
        report(
            "  error -> next result (2 wkrs)  ",
            rounds.iter().map(|r| r.next).collect(),
        );
        report(
            "  error -> next result (1 wkr)   ",
            rounds1.iter().map(|r| r.next).collect(),
        );
    }
    let _ = std::fs::remove_file(&stamp);
}

fn w5(c: &mut Criterion) {
    let get = || get_reusable_executor().max_workers(2).get().unwrap();
    let ex = get();
    heal(&ex, 0);
    for i in 0..1000 {
        assert_eq!(get().submit(plus_one, i).unwrap().result().unwrap(), i + 1);
    }
    let mut lat: Vec<Duration> = (0..10_000u64)
        .map(|i| {
            let t = Instant::now();
            let r = get().submit(plus_one, i).unwrap().result().unwrap();
            let dt = t.elapsed();
            assert_eq!(r, i + 1);
            dt
        })
        .collect();
    let mut get_only: Vec<Duration> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            let e = get();
            let dt = t.elapsed();
            drop(e);
            dt
        })
        .collect();
    eprintln!(
        "W5 loky: get_reusable_executor().max_workers(2).get() + one task: p50 {:.2} us, p99 {:.2} us; get() alone: p50 {:.2} us (n = 10000)",
        pct(&mut lat, 50),
        pct(&mut lat, 99),
        pct(&mut get_only, 50),
    );
    assert!(ex.same_pool(&get()), "the reusable executor was replaced");
    let mut g = c.benchmark_group("W5");
    g.bench_function(
        "get_reusable_executor (warm, same config) + one task",
        |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                get().submit(plus_one, i).unwrap().result().unwrap()
            })
        },
    );
    g.bench_function("get_reusable_executor (warm, same config) alone", |b| {
        b.iter(get)
    });
    g.finish();
}

fn cold(n: usize) -> Duration {
    let t = Instant::now();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(n)
        .build()
        .unwrap();
    assert_eq!(ex.submit(plus_one, 1).unwrap().result().unwrap(), 2);
    drop(ex);
    t.elapsed()
}

fn w4(c: &mut Criterion) {
    let mut lat: Vec<Duration> = (0..20).map(|_| cold(2)).collect();
    eprintln!(
        "W4 loky: create a pool of 2, first result, drop: p50 {:.2} ms, max {:.2} ms (n = 20)",
        pct(&mut lat, 50) / 1e3,
        pct(&mut lat, 100) / 1e3,
    );
    let mut g = c.benchmark_group("W4");
    g.sample_size(10);
    g.bench_function("cold pool of 2: build, first result, drop", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold(2)).sum())
    });
    g.finish();
}

criterion_group!(benches, w6, w4, w5);
criterion_main!(benches);
