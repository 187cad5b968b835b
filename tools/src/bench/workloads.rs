//! The benchmark workloads W1–W6 (summed up in `loky-bench --help`),
//! measured in this process through loky's public API, each with its
//! in-process reference where one makes sense.

use std::error::Error as StdError;
use std::hint::black_box;
use std::time::{Duration, Instant};

use loky::{get_reusable_executor, Error, ProcessPoolExecutor, SharedSlice, SharedVec};
use rayon::prelude::*;

use crate::report::{Row, Unit};

/// Every workload, in order.
pub(crate) const WORKLOADS: [&str; 6] = ["W1", "W2", "W3", "W4", "W5", "W6"];

pub(crate) type Result<T> = std::result::Result<T, Box<dyn StdError>>;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Workers per pool (and rayon threads).
    pub(crate) workers: usize,
    /// Few repetitions and smaller arrays: a smoke run.
    pub(crate) quick: bool,
}

impl Config {
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Runs one workload and returns its rows.
pub(crate) fn run(workload: &str, cfg: &Config) -> Result<Vec<Row>> {
    match workload {
        "W1" => w1(cfg),
        "W2" => w2(cfg),
        "W3" => w3(cfg),
        "W4" => w4(cfg),
        "W5" => w5(cfg),
        "W6" => w6(cfg),
        other => Err(format!("unknown workload {other}").into()),
    }
}

// ---------------------------------------------------------------------------
// Tasks (fn items: they run in the workers, which are this binary; the
// procspawn peer runs the same ones).
// ---------------------------------------------------------------------------

pub(crate) fn plus_one(x: u64) -> u64 {
    x + 1
}

fn double(x: u64) -> u64 {
    x * 2
}

pub(crate) fn sum_vec(v: Vec<f64>) -> f64 {
    sum_f64(&v)
}

fn sum_in_place(v: &[f64], (): ()) -> f64 {
    sum_f64(v)
}

fn sum_shared(s: SharedSlice<f64>) -> f64 {
    sum_f64(&s)
}

fn nap_pid(us: u64) -> u32 {
    std::thread::sleep(Duration::from_micros(us));
    std::process::id()
}

pub(crate) fn killer(_: ()) -> u64 {
    // SAFETY: plain system calls; the worker is meant to die here.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The sum W3 measures, in a worker and in-process alike: eight
/// independent accumulators, so that it runs at memory speed rather than
/// at the latency of one floating-point add.
pub(crate) fn sum_f64(xs: &[f64]) -> f64 {
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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn pool(workers: usize) -> Result<ProcessPoolExecutor> {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()?;
    heal(&ex, 0)?;
    Ok(ex)
}

/// Waits (untimed) until every slot of the pool has a ready worker and
/// none of them is `dead`.
fn heal(ex: &ProcessPoolExecutor, dead: u32) -> Result<()> {
    let n = ex.max_workers();
    let start = Instant::now();
    loop {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("the pool did not heal in 60 s: {:?}", ex.stats()).into());
        }
        let pids = ex.worker_pids();
        if pids.len() == n && !pids.contains(&dead) {
            // Ready workers each take one of n concurrent naps.
            let futs = (0..n)
                .map(|_| ex.submit(nap_pid, 300))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut ran = futs
                .iter()
                .map(|f| f.result())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            ran.sort_unstable();
            ran.dedup();
            if ran.len() == n && !ran.contains(&dead) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub(crate) fn check<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("wrong result: got {got:?}, expected {want:?}").into())
    }
}

/// The `p`th percentile (0..=100) of `v`, in `unit`.
pub(crate) fn pct(v: &mut [Duration], p: usize, unit: Unit) -> f64 {
    v.sort_unstable();
    let d = v[(v.len() * p / 100).min(v.len() - 1)];
    in_unit(d, unit)
}

pub(crate) fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn in_unit(d: Duration, unit: Unit) -> f64 {
    match unit {
        Unit::Us => d.as_secs_f64() * 1e6,
        Unit::Ms => d.as_secs_f64() * 1e3,
        _ => d.as_secs_f64(),
    }
}

pub(crate) fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn rayon_pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

// ---------------------------------------------------------------------------
// W1: submit x+1, wait, in sequence
// ---------------------------------------------------------------------------

fn w1(cfg: &Config) -> Result<Vec<Row>> {
    let (warm, n) = cfg.pick((200u64, 1_000u64), (1_000, 10_000));
    let ex = pool(cfg.workers)?;
    for i in 0..warm {
        check(ex.submit(plus_one, i)?.result()?, i + 1)?;
    }
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (dt, r) = time(|| ex.submit(plus_one, i).and_then(|f| f.result()));
        check(r?, i + 1)?;
        lat.push(dt);
    }
    drop(ex);

    // Reference: the same round trip to a thread over std channels.
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (rtx, rrx) = std::sync::mpsc::channel::<u64>();
    let echo = std::thread::spawn(move || {
        while let Ok(x) = rx.recv() {
            if rtx.send(x + 1).is_err() {
                break;
            }
        }
    });
    let mut thread_lat = Vec::with_capacity(n as usize);
    for i in 0..warm + n {
        let (dt, r) = time(|| {
            tx.send(i).ok();
            rrx.recv()
        });
        check(r?, i + 1)?;
        if i >= warm {
            thread_lat.push(dt);
        }
    }
    drop(tx);
    echo.join().map_err(|_| "the echo thread panicked")?;

    let note = format!(
        "{n} sequential round trips after {warm} warm-up, pool of {}",
        cfg.workers
    );
    let reference = "std thread + mpsc channels";
    Ok(vec![
        Row::new(
            "W1",
            "p50",
            "submit x+1 + result, p50",
            Unit::Us,
            pct(&mut lat, 50, Unit::Us),
        )
        .reference(reference, pct(&mut thread_lat, 50, Unit::Us))
        .note(note),
        Row::new(
            "W1",
            "p99",
            "submit x+1 + result, p99",
            Unit::Us,
            pct(&mut lat, 99, Unit::Us),
        )
        .reference(reference, pct(&mut thread_lat, 99, Unit::Us)),
    ])
}

// ---------------------------------------------------------------------------
// W2: map(x*2) over 1M and 10M u64
// ---------------------------------------------------------------------------

const W2_CHUNKS: [Option<usize>; 6] = [
    None,
    Some(4_096),
    Some(16_384),
    Some(32_768),
    Some(65_536),
    Some(262_144),
];

fn map_collect(ex: &ProcessPoolExecutor, data: &[u64], chunk: Option<usize>) -> Result<Vec<u64>> {
    let map = ex.map(double, data.iter().copied());
    let map = match chunk {
        Some(c) => map.chunksize(c),
        None => map,
    };
    Ok(map.into_vec()?)
}

fn w2(cfg: &Config) -> Result<Vec<Row>> {
    let reps = cfg.pick(1, 5);
    let ex = pool(cfg.workers)?;
    let threads = rayon_pool(cfg.workers)?;
    let (mut rows, mut shared_rows) = (Vec::new(), Vec::new());
    for n in [1_000_000u64, 10_000_000] {
        let label = format!("{}M", n / 1_000_000);
        let data: Vec<u64> = (0..n).collect();
        let last = 2 * (n - 1);
        // Warm-up, one whole map (as rayon gets one run): the workers'
        // chunk buffers and heaps, the parent's spill buffers. The first
        // maps of a pool ran at half speed.
        check(map_collect(&ex, &data, None)?.len() as u64, n)?;
        // Chunk sizes in turn, repetition by repetition, so that the host's
        // drift spreads over all of them alike.
        let mut times = vec![Vec::with_capacity(reps); W2_CHUNKS.len()];
        for _ in 0..reps {
            for (chunk, times) in W2_CHUNKS.iter().zip(&mut times) {
                let (dt, out) = time(|| map_collect(&ex, &data, *chunk));
                let out = out?;
                check(out.len() as u64, n)?;
                check(out[out.len() - 1], last)?;
                times.push(dt);
            }
        }
        let mut tried: Vec<(Duration, Option<usize>)> =
            times.iter_mut().map(|t| median(t)).zip(W2_CHUNKS).collect();
        tried.sort();
        let (best, best_chunk) = tried[0];

        // rayon and map_shared in turn, after one warm-up run each: their
        // ratio is the target, and runs far apart in time differ by more
        // than it on a shared host.
        let input = SharedVec::from_slice(&ex, &data)?;
        let pair_reps = cfg.pick(3, 11);
        let mut rayon_times = Vec::with_capacity(pair_reps);
        let mut shared_times = Vec::with_capacity(pair_reps);
        for i in 0..=pair_reps {
            let (dt, out) =
                time(|| threads.install(|| data.par_iter().map(|x| x * 2).collect::<Vec<u64>>()));
            check(out[out.len() - 1], last)?;
            drop(out);
            if i > 0 {
                rayon_times.push(dt);
            }
            let (dt, out) = time(|| ex.map_shared(double, &input));
            let out = out?;
            check(out.len() as u64, n)?;
            check(out.as_slice()[out.len() - 1], last)?;
            drop(out);
            if i > 0 {
                shared_times.push(dt);
            }
        }
        drop(input);
        let rayon_median = median(&mut rayon_times);
        let shared_median = median(&mut shared_times);

        let name = |c: Option<usize>| c.map_or("auto".to_owned(), |c| c.to_string());
        let detail: Vec<String> = W2_CHUNKS
            .iter()
            .map(|c| {
                let t = tried.iter().find(|(_, k)| k == c).map(|(t, _)| *t);
                let rate = t.map_or(f64::NAN, |t| n as f64 / t.as_secs_f64());
                format!(
                    "{} {}",
                    name(*c),
                    crate::report::fmt_value(rate, Unit::ItemsPerS)
                )
            })
            .collect();

        let rayon_name = format!("rayon par_iter, {} threads", cfg.workers);
        let rayon_rate = n as f64 / rayon_median.as_secs_f64();
        rows.push(
            Row::new(
                "W2",
                format!("items_per_s_{label}"),
                format!("map(x*2) over {label} u64"),
                Unit::ItemsPerS,
                n as f64 / best.as_secs_f64(),
            )
            .reference(&rayon_name, rayon_rate)
            .note(format!(
                "best chunksize {} (median of {reps} per chunksize: {}); results collected into a Vec (Map::into_vec), as rayon's",
                name(best_chunk),
                detail.join(", ")
            )),
        );
        shared_rows.push(
            Row::new(
                "W2",
                format!("items_per_s_{label}_shared"),
                format!("map_shared(x*2) over {label} u64, SharedVec in and out"),
                Unit::ItemsPerS,
                n as f64 / shared_median.as_secs_f64(),
            )
            .reference(&rayon_name, rayon_rate)
            .note(format!(
                "median of {pair_reps}, each run right after one of rayon's (the reference's median is of those); the input SharedVec is filled before (untimed), the output is allocated by map_shared (timed)"
            )),
        );
    }
    rows.extend(shared_rows);
    Ok(rows)
}

// ---------------------------------------------------------------------------
// W3: sum of a 256 MiB f64 array in a worker
// ---------------------------------------------------------------------------

fn w3(cfg: &Config) -> Result<Vec<Row>> {
    let bytes: usize = cfg.pick(32 << 20, 256 << 20);
    let reps = cfg.pick(2, 5);
    let size = format!("{} MiB", bytes >> 20);
    let data: Vec<f64> = (0..bytes / 8).map(|i| i as f64).collect();
    let expect = sum_f64(&data);

    // Reference: the same sum, in this process, one thread.
    let mut local = Vec::with_capacity(reps);
    for i in 0..=reps {
        let (dt, s) = time(|| sum_f64(black_box(&data)));
        check(s, expect)?;
        if i > 0 {
            local.push(dt);
        }
    }
    let local = median(&mut local).as_secs_f64();
    let reference = "the same sum in-process, 1 thread";

    let ex = pool(cfg.workers)?;
    let mut by_value = Vec::with_capacity(reps);
    for i in 0..=reps {
        let v = data.clone();
        let (dt, s) = time(|| ex.submit(sum_vec, v).and_then(|f| f.result()));
        check(s?, expect)?;
        if i > 0 {
            by_value.push(dt);
        }
    }
    let by_value = median(&mut by_value).as_secs_f64();

    let mut in_place = Vec::with_capacity(reps);
    for i in 0..=reps {
        let (dt, s) = time(|| {
            ex.submit_slice(sum_in_place, &data, ())
                .and_then(|f| f.result())
        });
        check(s?, expect)?;
        if i > 0 {
            in_place.push(dt);
        }
    }
    let in_place = median(&mut in_place).as_secs_f64();

    // By value with loky's shared-memory allocator, which this binary
    // installs but keeps off elsewhere: the clone is a shared block, and
    // the Vec travels as its own pages.
    loky::SharedMemoryAllocator::set_enabled(true);
    let zero_copy = by_value_zero_copy(cfg, &data, expect, reps);
    loky::SharedMemoryAllocator::set_enabled(false);
    let zero_copy = zero_copy?;

    let (fill, shared) = time(|| SharedVec::from_slice(&ex, &data));
    let shared = shared?;
    let mut in_shared = Vec::with_capacity(reps);
    for i in 0..=reps {
        let (dt, s) = time(|| {
            shared
                .slice(..)
                .and_then(|whole| ex.submit(sum_shared, whole))
                .and_then(|f| f.result())
        });
        check(s?, expect)?;
        if i > 0 {
            in_shared.push(dt);
        }
    }
    drop(shared);
    let in_shared = median(&mut in_shared).as_secs_f64();
    let gb = bytes as f64 / 1e9;
    let note =
        format!("median of {reps} after one warm-up call; the argument is an owned Vec of f64 (rkyv), cloned before each call (untimed)");
    Ok(vec![
        Row::new(
            "W3",
            "s_per_call",
            format!("sum {size} f64 by value, per call"),
            Unit::S,
            by_value,
        )
        .reference(reference, local)
        .note(note),
        Row::new(
            "W3",
            "GB_per_s",
            format!("sum {size} f64 by value"),
            Unit::GBps,
            gb / by_value,
        )
        .reference(reference, gb / local),
        Row::new(
            "W3",
            "s_per_call_in_place",
            format!("sum {size} f64 by value, read in place, per call"),
            Unit::S,
            in_place,
        )
        .reference(reference, local)
        .note(format!(
            "median of {reps} after one warm-up call; submit_slice(f, &data, ()): the slice is copied once into \
             the task's message and the worker's f(&[f64], ()) reads it there"
        )),
        Row::new(
            "W3",
            "GB_per_s_in_place",
            format!("sum {size} f64 by value, read in place"),
            Unit::GBps,
            gb / in_place,
        )
        .reference(reference, gb / local),
        Row::new(
            "W3",
            "s_per_call_zero_copy",
            format!("sum {size} f64 by value, shared-memory allocator, per call"),
            Unit::S,
            zero_copy,
        )
        .reference(reference, local)
        .note(format!(
            "median of {reps} after one warm-up call; with loky::SharedMemoryAllocator as the global allocator \
             (of parent and workers; loky-bench installs it and keeps it off for every other figure), the \
             owned Vec's clone (untimed) is a memfd of its own, which travels as itself: the worker maps the same pages"
        )),
        Row::new(
            "W3",
            "GB_per_s_zero_copy",
            format!("sum {size} f64 by value, shared-memory allocator"),
            Unit::GBps,
            gb / zero_copy,
        )
        .reference(reference, gb / local),
        Row::new(
            "W3",
            "s_per_call_shared",
            format!("sum {size} f64 in a SharedVec, per call"),
            Unit::S,
            in_shared,
        )
        .reference(reference, local)
        .note(format!(
            "median of {reps} after one warm-up call; the task gets a SharedSlice of the whole array; \
             filling the SharedVec once (SharedVec::from_slice, untimed) took {:.3} s",
            fill.as_secs_f64()
        )),
        Row::new(
            "W3",
            "GB_per_s_shared",
            format!("sum {size} f64 in a SharedVec"),
            Unit::GBps,
            gb / in_shared,
        )
        .reference(reference, gb / local),
    ])
}

/// Median seconds per call of W3 by value in a pool whose workers run the
/// shared-memory allocator (on in this process too, by the caller).
fn by_value_zero_copy(cfg: &Config, data: &[f64], expect: f64, reps: usize) -> Result<f64> {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(cfg.workers)
        .env(loky::SharedMemoryAllocator::ENV_SWITCH, "1")
        .build()?;
    heal(&ex, 0)?;
    let mut t = Vec::with_capacity(reps);
    for i in 0..=reps {
        let v = data.to_vec();
        let (dt, s) = time(|| ex.submit(sum_vec, v).and_then(|f| f.result()));
        check(s?, expect)?;
        if i > 0 {
            t.push(dt);
        }
    }
    Ok(median(&mut t).as_secs_f64())
}

// ---------------------------------------------------------------------------
// W4: cold pool, first result, drop
// ---------------------------------------------------------------------------

fn w4(cfg: &Config) -> Result<Vec<Row>> {
    let reps = cfg.pick(3, 20);
    let (mut first, mut total) = (Vec::new(), Vec::new());
    let (mut rayon_first, mut rayon_total) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        let ex = ProcessPoolExecutor::builder()
            .max_workers(cfg.workers)
            .build()?;
        check(ex.submit(plus_one, 1)?.result()?, 2)?;
        first.push(t.elapsed());
        drop(ex);
        total.push(t.elapsed());

        let t = Instant::now();
        let threads = rayon_pool(cfg.workers)?;
        check(threads.install(|| plus_one(1)), 2)?;
        rayon_first.push(t.elapsed());
        drop(threads);
        rayon_total.push(t.elapsed());
    }
    let reference = format!("rayon ThreadPool of {}", cfg.workers);
    Ok(vec![
        Row::new(
            "W4",
            "ms_create_first_result_shutdown",
            format!("cold pool of {}, first result, drop", cfg.workers),
            Unit::Ms,
            pct(&mut total, 50, Unit::Ms),
        )
        .reference(&reference, pct(&mut rayon_total, 50, Unit::Ms))
        .note(format!(
            "median of {reps}; drop waits for the workers to exit (max {:.1} ms)",
            pct(&mut total, 100, Unit::Ms)
        )),
        Row::new(
            "W4",
            "ms_to_first_result",
            format!("cold pool of {}, to the first result", cfg.workers),
            Unit::Ms,
            pct(&mut first, 50, Unit::Ms),
        )
        .reference(&reference, pct(&mut rayon_first, 50, Unit::Ms)),
    ])
}

// ---------------------------------------------------------------------------
// W5: warm get_reusable_executor, same config, one task
// ---------------------------------------------------------------------------

fn w5(cfg: &Config) -> Result<Vec<Row>> {
    let (warm, n) = cfg.pick((100u64, 500u64), (1_000, 10_000));
    let get = || get_reusable_executor().max_workers(cfg.workers).get();
    let ex = get()?;
    heal(&ex, 0)?;
    for i in 0..warm {
        check(get()?.submit(plus_one, i)?.result()?, i + 1)?;
    }
    let (mut both, mut get_only, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (dt, r) = time(|| get().and_then(|e| e.submit(plus_one, i)?.result()));
        check(r?, i + 1)?;
        both.push(dt);
        let (dt, e) = time(get);
        drop(e?);
        get_only.push(dt);
        let (dt, r) = time(|| ex.submit(plus_one, i).and_then(|f| f.result()));
        check(r?, i + 1)?;
        plain.push(dt);
    }
    if !ex.same_pool(&get()?) {
        return Err("get_reusable_executor() replaced the pool".into());
    }
    ex.shutdown(true, false, false);
    Ok(vec![
        Row::new(
            "W5",
            "us_get_and_one_task",
            "get_reusable_executor (warm, same config) + one task",
            Unit::Us,
            pct(&mut both, 50, Unit::Us),
        )
        .reference(
            "submit + result on the pool already held",
            pct(&mut plain, 50, Unit::Us),
        )
        .note(format!(
            "median of {n}, interleaved with the reference; the same pool every time"
        )),
        Row::new(
            "W5",
            "us_get_only",
            "get_reusable_executor alone",
            Unit::Us,
            pct(&mut get_only, 50, Unit::Us),
        ),
    ])
}

// ---------------------------------------------------------------------------
// W6: a task SIGKILLs its own worker
// ---------------------------------------------------------------------------

/// One W6 round on a healed pool: (submit → the future fails, that
/// failure → the next task's result).
fn kill_round(ex: &ProcessPoolExecutor) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    let r = ex.submit(killer, ())?.result();
    let to_error = t.elapsed();
    let dead = match r {
        Err(Error::TerminatedWorker { pid, .. }) => pid,
        other => return Err(format!("the killer's future got {other:?}").into()),
    };
    let t = Instant::now();
    check(ex.submit(plus_one, 41)?.result()?, 42)?;
    let next = t.elapsed();
    heal(ex, dead)?;
    Ok((to_error, next))
}

fn w6(cfg: &Config) -> Result<Vec<Row>> {
    let reps = cfg.pick(3, 15);
    let ex = pool(cfg.workers)?;
    let (mut to_error, mut next) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (e, n) = kill_round(&ex)?;
        to_error.push(e);
        next.push(n);
    }
    drop(ex);
    // On a pool of one, the next task waits for the replacement worker.
    let one = pool(1)?;
    let mut respawn = Vec::new();
    for _ in 0..reps {
        respawn.push(kill_round(&one)?.1);
    }
    drop(one);
    Ok(vec![
        Row::new(
            "W6",
            "ms_to_failure",
            "task SIGKILLs its worker: submit → the future fails",
            Unit::Ms,
            pct(&mut to_error, 50, Unit::Ms),
        )
        .note(format!(
            "median of {reps} kills; Error::TerminatedWorker; the pool heals between rounds (untimed)"
        )),
        Row::new(
            "W6",
            "ms_to_next_success",
            format!("failure → next task succeeds (pool of {})", cfg.workers),
            Unit::Ms,
            pct(&mut next, 50, Unit::Ms),
        ),
        Row::new(
            "W6",
            "ms_to_next_success_respawn",
            "failure → next task succeeds, pool of 1 (waits for the respawn)",
            Unit::Ms,
            pct(&mut respawn, 50, Unit::Ms),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_matches_a_plain_sum() {
        let xs: Vec<f64> = (0..1003).map(f64::from).collect();
        assert_eq!(sum_f64(&xs), xs.iter().sum::<f64>());
        assert_eq!(sum_f64(&[]), 0.0);
    }
}
