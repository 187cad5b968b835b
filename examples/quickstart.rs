//! The classic loky "say hello": a pool of 4 workers, one task that reports
//! its pid, then a map over 50 items that shows how many processes served it.
//!
//! Run with `cargo run --release --example quickstart`.

use std::collections::BTreeSet;
use std::time::Duration;

use loky::ProcessPoolExecutor;

fn say_hello(k: u64) -> u32 {
    let pid = std::process::id();
    println!("Hello from {pid} with arg {k}");
    // Give every worker a chance to take a share of the map.
    std::thread::sleep(Duration::from_millis(10));
    pid
}

fn main() -> Result<(), loky::Error> {
    let executor = ProcessPoolExecutor::builder()
        .max_workers(4)
        .idle_timeout(Duration::from_secs(2))
        .build()?;

    let pid = executor.submit(say_hello, 1)?.result()?;
    println!("Got results from worker {pid}");

    let pids: BTreeSet<u32> = executor
        .map(say_hello, 0..50)
        .chunksize(1)
        .collect::<Result<_, _>>()?;
    println!("Number of used processes: {}", pids.len());
    Ok(())
}
