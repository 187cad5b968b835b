//! procspawn, the Rust peer: W1–W4 and W6 through a `procspawn::Pool`
//! (serde over `ipc-channel`), in this process right after loky's own
//! figures, so both come from the same run. Its figures go into the rows'
//! [`RUST_PEER`] column; W5 (a reusable executor) and the `SharedVec` rows have no
//! procspawn counterpart.
//!
//! procspawn re-runs this binary for each worker and takes over in
//! [`init`], which `main` calls first.

use std::time::{Duration, Instant};

use procspawn::Pool;

use crate::report::{Cell, Row, Unit, RUST_PEER};
use crate::workloads::{
    check, killer, median, pct, plus_one, sum_f64, sum_vec, time, Config, Result,
};

/// Hands this process over to procspawn if it is one of its workers; in
/// any other process, returns at once.
pub(crate) fn init() {
    procspawn::init();
}

/// procspawn's figures of one workload, by row key, and how they were
/// taken.
type Measured = (Vec<(&'static str, f64)>, String);

/// Measures `workload` on procspawn, puts each figure in the row of `rows`
/// (loky's rows of that workload) with the same key, and returns a note on
/// how (`None` for a workload procspawn has no counterpart of).
pub(crate) fn fill(workload: &str, cfg: &Config, rows: &mut [Row]) -> Result<Option<String>> {
    let (cells, note) = match workload {
        "W1" => w1(cfg)?,
        "W2" => w2(cfg)?,
        "W3" => w3(cfg)?,
        "W4" => w4(cfg)?,
        "W6" => w6(cfg)?,
        _ => return Ok(None),
    };
    for row in rows.iter_mut().filter(|r| r.workload == workload) {
        let cell = cells
            .iter()
            .find(|(key, _)| *key == row.key)
            .map_or(Cell::NotApplicable, |(_, v)| Cell::Value(*v));
        row.peers.insert(RUST_PEER, cell);
    }
    Ok(Some(format!("{workload}: {note}")))
}

// Tasks: loky's own (`plus_one`, `sum_vec`, `killer`), and W2's chunk.
// procspawn sends a function pointer; serde carries the argument and the
// result.

fn double_chunk(chunk: Vec<u64>) -> Vec<u64> {
    chunk.into_iter().map(|x| x * 2).collect()
}

/// A pool of `workers` whose workers all answered once (untimed).
fn pool(workers: usize) -> Result<Pool> {
    let pool = Pool::new(workers)?;
    settle(&pool)?;
    Ok(pool)
}

/// One quick task per worker of `pool`, concurrently, until all answered
/// (after a kill: the replacement has started).
fn settle(pool: &Pool) -> Result<()> {
    let handles: Vec<_> = (0..pool.size() as u64)
        .map(|i| pool.spawn(i, plus_one))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        check(h.join()?, i as u64 + 1)?;
    }
    Ok(())
}

fn in_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn w1(cfg: &Config) -> Result<Measured> {
    let (warm, n) = cfg.pick((100u64, 500u64), (500, 5_000));
    let pool = pool(cfg.workers)?;
    for i in 0..warm {
        check(pool.spawn(i, plus_one).join()?, i + 1)?;
    }
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (dt, r) = time(|| pool.spawn(i, plus_one).join());
        check(r?, i + 1)?;
        lat.push(dt);
    }
    let cells = vec![
        ("p50", pct(&mut lat, 50, Unit::Us)),
        ("p99", pct(&mut lat, 99, Unit::Us)),
    ];
    let note = format!(
        "{n} sequential Pool::spawn + join after {warm} warm-up, pool of {}",
        cfg.workers
    );
    Ok((cells, note))
}

/// `map(x*2)` as a procspawn user writes it: one spawn per chunk, one
/// chunk per worker in flight, results appended in order.
///
/// Not two per worker, as loky's map: `Pool::spawn` writes the argument
/// into a socket that only a worker taking the call reads, and a finished
/// call hands its result over only when its handle is joined, so a spawn
/// past the pool's size with a large argument blocks for good (seen here).
fn map_collect(pool: &Pool, data: &[u64], chunk: usize, in_flight: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(data.len());
    let mut window = std::collections::VecDeque::new();
    let mut chunks = data.chunks(chunk);
    loop {
        while window.len() < in_flight {
            match chunks.next() {
                Some(c) => window.push_back(pool.spawn(c.to_vec(), double_chunk)),
                None => break,
            }
        }
        let Some(h) = window.pop_front() else {
            return Ok(out);
        };
        out.extend(h.join()?);
    }
}

/// The chunk sizes tried for procspawn: loky's fixed ones.
const W2_CHUNKS: [usize; 4] = [4_096, 16_384, 65_536, 262_144];

fn w2(cfg: &Config) -> Result<Measured> {
    let reps = cfg.pick(1, 3);
    let pool = pool(cfg.workers)?;
    let (mut out, mut best_chunks) = (Vec::new(), Vec::new());
    for (n, key) in [
        (1_000_000u64, "items_per_s_1M"),
        (10_000_000, "items_per_s_10M"),
    ] {
        let data: Vec<u64> = (0..n).collect();
        let mut best = (Duration::MAX, 0);
        for chunk in W2_CHUNKS {
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps {
                let (dt, got) = time(|| map_collect(&pool, &data, chunk, cfg.workers));
                let got = got?;
                check(got.len() as u64, n)?;
                check(got[got.len() - 1], 2 * (n - 1))?;
                times.push(dt);
            }
            best = best.min((median(&mut times), chunk));
        }
        out.push((key, n as f64 / best.0.as_secs_f64()));
        best_chunks.push(format!("{} for {}M", best.1, n / 1_000_000));
    }
    let note = format!(
        "one Pool::spawn per chunk of a Vec<u64>, one chunk per worker in flight \
         (with more, procspawn deadlocked: a spawn past the pool's size blocks writing \
         its argument until a worker is free, and a finished call waits for its handle \
         to be joined); best of chunksizes {W2_CHUNKS:?} (median of {reps} each): {}",
        best_chunks.join(", ")
    );
    Ok((out, note))
}

fn w3(cfg: &Config) -> Result<Measured> {
    let bytes: usize = cfg.pick(32 << 20, 256 << 20);
    let reps = cfg.pick(1, 3);
    let data: Vec<f64> = (0..bytes / 8).map(|i| i as f64).collect();
    let expect = sum_f64(&data);
    let pool = pool(1)?;
    let mut calls = Vec::with_capacity(reps);
    for i in 0..=reps {
        let v = data.clone();
        let (dt, s) = time(|| pool.spawn(v, sum_vec).join());
        check(s?, expect)?;
        if i > 0 {
            calls.push(dt);
        }
    }
    let call = median(&mut calls).as_secs_f64();
    let cells = vec![
        ("s_per_call", call),
        ("GB_per_s", bytes as f64 / 1e9 / call),
    ];
    let note = format!(
        "median of {reps} after one warm-up call; the Vec<f64> argument goes through serde \
         over procspawn's ipc-channel; pool of 1"
    );
    Ok((cells, note))
}

fn w4(cfg: &Config) -> Result<Measured> {
    let reps = cfg.pick(3, 20);
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        let pool = Pool::new(cfg.workers)?;
        check(pool.spawn(1, plus_one).join()?, 2)?;
        first.push(t.elapsed());
        drop(pool);
        total.push(t.elapsed());
    }
    let cells = vec![
        ("ms_create_first_result_shutdown", in_ms(median(&mut total))),
        ("ms_to_first_result", in_ms(median(&mut first))),
    ];
    let note = format!(
        "median of {reps}; dropping a procspawn Pool kills its workers without waiting \
         for them to exit"
    );
    Ok((cells, note))
}

/// One W6 round: (spawn → the handle fails, that failure → the next
/// task's result).
fn kill_round(pool: &Pool) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    let r = pool.spawn((), killer).join();
    let to_error = t.elapsed();
    if let Ok(v) = r {
        return Err(format!("the killer's handle got Ok({v})").into());
    }
    let t = Instant::now();
    check(pool.spawn(41, plus_one).join()?, 42)?;
    Ok((to_error, t.elapsed()))
}

fn w6(cfg: &Config) -> Result<Measured> {
    let reps = cfg.pick(3, 15);
    let two = pool(cfg.workers)?;
    let (mut to_error, mut next) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (e, n) = kill_round(&two)?;
        to_error.push(e);
        next.push(n);
        // Untimed: the replacement is up before the next round.
        settle(&two)?;
    }
    drop(two);
    let one = pool(1)?;
    let mut respawn = Vec::new();
    for _ in 0..reps {
        respawn.push(kill_round(&one)?.1);
    }
    let cells = vec![
        ("ms_to_failure", in_ms(median(&mut to_error))),
        ("ms_to_next_success", in_ms(median(&mut next))),
        ("ms_to_next_success_respawn", in_ms(median(&mut respawn))),
    ];
    let note = format!(
        "median of {reps} kills; join returns an error and the pool respawns the worker; \
         every worker answers again between rounds (untimed)"
    );
    Ok((cells, note))
}
