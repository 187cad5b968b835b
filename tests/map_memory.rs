//! A `map` over 10 000 000 items peaks at the same memory as one over
//! 1 000 000: the map is lazy and keeps a bounded number of chunks in
//! flight, so neither the parent nor the workers hold anything per item.
//!
//! Each case runs in a fresh process (this test binary re-run with
//! [`CASE`] set, rayon-core's crash-test pattern), so that its peak
//! resident set (`VmHWM`) measures that map alone. The child consumes the
//! results without storing them (it sums them), then reports its own peak
//! and its workers' peaks, read before the pool is dropped.

use std::process::Command;

use loky::ProcessPoolExecutor;

/// Set in the child: `<items> <ordered|unordered>`.
const CASE: &str = "LOKY_MAP_MEMORY_CASE";
/// Slack allowed between the 1 M and the 10 M peaks (allocator noise, a
/// few more pages of the rings touched).
const SLACK_KIB: u64 = 16 * 1024;

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// The child: maps `n` items with automatic chunking and reports
/// `PEAK <parent KiB> <largest worker KiB> <sum>`.
fn child(case: &str) {
    let (n, mode) = case.split_once(' ').unwrap();
    let n: u64 = n.parse().unwrap();
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let mut sum = 0u64;
    let mut count = 0u64;
    let mut add = |r: loky::Result<u64>| {
        sum = sum.wrapping_add(r.unwrap());
        count += 1;
    };
    match mode {
        "ordered" => ex.map(|x: u64| x * 2, 0..n).for_each(&mut add),
        "unordered" => ex
            .map_unordered(|x: u64| x * 2, 0..n)
            .for_each(|(_, r)| add(r)),
        other => panic!("unknown mode {other}"),
    }
    assert_eq!(count, n);
    let workers = ex
        .worker_pids()
        .iter()
        .map(|p| peak_rss_kib(&p.to_string()))
        .max()
        .unwrap_or(0);
    let parent = peak_rss_kib("self");
    println!("PEAK {parent} {workers} {sum}");
}

/// Runs the child for `n` items; returns (parent KiB, worker KiB).
fn measure(n: u64, mode: &str) -> (u64, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "map_peak_memory_does_not_grow_with_the_item_count",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, format!("{n} {mode}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child for {n} items ({mode}) failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest may print "test <name> ... " on the same line first.
    let line = stdout
        .lines()
        .find_map(|l| l.split("PEAK ").nth(1))
        .unwrap_or_else(|| panic!("no PEAK line from the child:\n{stdout}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let expected = (0..n).fold(0u64, |s, x| s.wrapping_add(x * 2));
    assert_eq!(v[2], expected, "the sum of map(x * 2) over {n} items");
    (v[0], v[1])
}

#[test]
fn map_peak_memory_does_not_grow_with_the_item_count() {
    if let Some(case) = std::env::var_os(CASE) {
        child(case.to_str().unwrap());
        return;
    }
    for mode in ["ordered", "unordered"] {
        let (parent_1m, worker_1m) = measure(1_000_000, mode);
        let (parent_10m, worker_10m) = measure(10_000_000, mode);
        eprintln!(
            "peak RSS of {mode} map(x * 2): 1 M items: parent {parent_1m} KiB, worker \
             {worker_1m} KiB; 10 M items: parent {parent_10m} KiB, worker {worker_10m} KiB"
        );
        assert!(
            parent_10m < parent_1m + SLACK_KIB,
            "{mode}: the parent's peak grew from {parent_1m} KiB (1 M items) to {parent_10m} KiB (10 M items)"
        );
        assert!(
            worker_10m < worker_1m + SLACK_KIB,
            "{mode}: a worker's peak grew from {worker_1m} KiB (1 M items) to {worker_10m} KiB (10 M items)"
        );
    }
}
