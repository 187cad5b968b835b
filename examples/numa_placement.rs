//! Worker placement: one pool per `Pinning`, showing the plan, the CPU each
//! worker process is allowed on (from `/proc/<pid>/status`), its NUMA node,
//! and the time of a small memory-bound workload (each task fills and sums
//! a 32 MiB buffer of its own, so its pages are first touched, hence
//! allocated, on the worker's node).
//!
//! ```text
//! cargo run --release --example numa_placement                    # sysfs only
//! cargo run --release --example numa_placement --features hwloc   # NUMA view
//! cargo run --release --example numa_placement -- 4               # 4 workers
//! ```
//!
//! Without the `hwloc` feature, `Pinning::Numa` cannot see NUMA nodes and
//! pins like `Pinning::PhysicalCores` (loky logs a warning through
//! `tracing`).

use std::time::{Duration, Instant};

use loky::{Pinning, ProcessPoolExecutor};

/// Fills a 32 MiB buffer (first touch by this worker) and sums it.
fn touch_and_sum(seed: u64) -> f64 {
    const LEN: usize = 32 << 20 >> 3;
    let v: Vec<f64> = (0..LEN).map(|i| (i as u64 ^ seed) as f64).collect();
    v.iter().sum()
}

/// The `Cpus_allowed_list` line of `/proc/<pid>/status`.
fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The NUMA node of `cpu` (a single CPU number, else `-`), from its `nodeN`
/// link in sysfs.
fn node_of_cpu(cpu: &str) -> String {
    let Ok(cpu) = cpu.parse::<usize>() else {
        return "-".to_owned();
    };
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}"))
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .find_map(|name| {
                    name.strip_prefix("node")
                        .filter(|n| n.parse::<u32>().is_ok())
                        .map(str::to_owned)
                })
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn plan_of(pinning: Pinning, workers: usize) -> Option<Vec<usize>> {
    match pinning {
        Pinning::Cores => Some(loky::topology::pinning_plan(workers, false)),
        Pinning::PhysicalCores => Some(loky::topology::pinning_plan(workers, true)),
        #[cfg(feature = "hwloc")]
        Pinning::Numa => loky::topology::hwloc::numa_spread_plan(workers).ok(),
        #[cfg(not(feature = "hwloc"))]
        Pinning::Numa => Some(loky::topology::pinning_plan(workers, true)),
        _ => None,
    }
}

fn main() -> Result<(), loky::Error> {
    let workers: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(loky::cpu_count);
    println!(
        "{workers} workers; cpu_count() = {}, cpu_count_physical() = {}",
        loky::cpu_count(),
        loky::cpu_count_physical()
    );
    #[cfg(feature = "hwloc")]
    match loky::topology::hwloc::numa_nodes() {
        Ok(nodes) => {
            for node in nodes {
                println!(
                    "NUMA node {} (package {:?}): {} MiB, CPUs {:?}",
                    node.os_index,
                    node.package,
                    node.memory >> 20,
                    node.cpus()
                );
            }
        }
        Err(e) => println!("{e}"),
    }
    #[cfg(not(feature = "hwloc"))]
    println!("(built without the `hwloc` feature: no NUMA view; Numa falls back to PhysicalCores)");

    let tasks = 4 * workers as u64;
    for pinning in [
        Pinning::None,
        Pinning::Cores,
        Pinning::PhysicalCores,
        Pinning::Numa,
    ] {
        println!();
        match plan_of(pinning, workers) {
            Some(plan) => println!("{pinning:?}: plan (CPU of worker 0, 1, ...) {plan:?}"),
            None => println!("{pinning:?}: no plan, the kernel places workers"),
        }
        let ex = ProcessPoolExecutor::builder()
            .max_workers(workers)
            .pin(pinning)
            .build()?;
        // Warm up: start every worker.
        for r in ex.map(|x: u64| x, 0..workers as u64).chunksize(1) {
            r?;
        }
        let start = Instant::now();
        let mut total = 0.0;
        for r in ex.map(touch_and_sum, 0..tasks).chunksize(1) {
            total += r?;
        }
        let elapsed = start.elapsed();
        let mut pids = ex.worker_pids();
        pids.sort_unstable();
        for pid in pids {
            let cpus = cpus_allowed(pid);
            println!(
                "  worker pid {pid:<8} Cpus_allowed_list {cpus:<10} node {}",
                node_of_cpu(&cpus)
            );
        }
        println!(
            "  {tasks} tasks × 32 MiB fill+sum: {:.1} ms ({:.2} GB/s); checksum {total:e}",
            ms(elapsed),
            (tasks as f64 * (32 << 20) as f64) / elapsed.as_secs_f64() / 1e9
        );
        ex.shutdown(true, false, false);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
