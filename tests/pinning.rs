//! `pin(...)`: each worker runs on one CPU of the affinity mask, and a
//! replacement takes its predecessor's CPU.

use std::time::{Duration, Instant};

use loky::{Pinning, ProcessPoolExecutor};

const HANG: Duration = Duration::from_secs(60);

/// The CPUs a process may run on, read from the kernel.
fn affinity_of(pid: u32) -> Vec<usize> {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let set = rustix::thread::sched_getaffinity(Some(pid)).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

fn wait_for_workers(ex: &ProcessPoolExecutor, n: usize) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = ex.worker_pids();
        if pids.len() == n {
            return pids;
        }
        assert!(start.elapsed() < HANG, "workers did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pinned_workers_each_get_one_cpu_of_the_mask() {
    let mask = loky::topology::affinity_cpus();
    let n = mask.len().min(4);
    let ex = ProcessPoolExecutor::builder()
        .max_workers(n)
        .pin(Pinning::Cores)
        .build()
        .unwrap();
    ex.submit(|x: u8| x, 1)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    let pids = wait_for_workers(&ex, n);
    let mut cpus = Vec::new();
    for &pid in &pids {
        let a = affinity_of(pid);
        assert_eq!(a.len(), 1, "worker {pid} pinned to exactly one CPU: {a:?}");
        assert!(mask.contains(&a[0]));
        cpus.push(a[0]);
    }
    cpus.sort();
    cpus.dedup();
    assert_eq!(cpus.len(), n, "distinct CPUs while there are enough");
    // The task itself sees the pinning too.
    let seen = ex
        .submit(|_: ()| loky::topology::affinity_cpus().len(), ())
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(seen, 1);
}

#[test]
fn a_replacement_worker_takes_its_predecessors_cpu() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .pin(Pinning::PhysicalCores)
        .build()
        .unwrap();
    ex.submit(|x: u8| x, 1)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    let old = wait_for_workers(&ex, 1)[0];
    let cpu = affinity_of(old);
    let crash = ex
        .submit(|_: ()| -> u8 { std::process::abort() }, ())
        .unwrap();
    assert!(matches!(
        crash.result_timeout(HANG),
        Err(loky::Error::TerminatedWorker { .. })
    ));
    ex.submit(|x: u8| x, 1)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    let new = wait_for_workers(&ex, 1)[0];
    assert_ne!(old, new);
    assert_eq!(affinity_of(new), cpu);
}

#[test]
fn unpinned_workers_keep_the_whole_mask() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    ex.submit(|x: u8| x, 1)
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    let pid = wait_for_workers(&ex, 1)[0];
    assert_eq!(affinity_of(pid), loky::topology::affinity_cpus());
}
