//! Large `Vec`s of numbers as arguments and results, with loky's
//! shared-memory allocator installed: they travel as their own memory (the
//! receiver maps the sender's pages), are never copied, and nothing is lost
//! or leaked when a worker dies with one on its way.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use loky::ProcessPoolExecutor;

mod support;
use support::fd_count;

#[global_allocator]
static ALLOC: loky::SharedMemoryAllocator = loky::SharedMemoryAllocator::new();

/// 32 MiB of `f64`: well past the allocator's 4 MiB threshold.
const LEN: usize = (32 << 20) / 8;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn make(len: u64) -> Vec<f64> {
    (0..len).map(|i| (i % 1000) as f64).collect()
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// The inode of the allocator's memfd whose mapping holds `p` (in the
/// process that calls it), if `p` is in one: two processes that see the
/// same inode share the pages; a copy would be in another memfd.
fn block_inode<T>(p: *const T) -> Option<u64> {
    let addr = p as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (a, b) = fields.next()?.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        let inode = fields.nth(3)?.parse().ok()?;
        ((a..b).contains(&addr) && l.contains("memfd:loky-shm")).then_some(inode)
    })
}

/// Whether `v` lies in the block whose inode its first element holds.
fn same_block(v: &[f64]) -> bool {
    block_inode(v.as_ptr()).is_some_and(|inode| inode as f64 == v[0])
}

/// `v` with its block's inode in its first element.
fn tagged(mut v: Vec<f64>) -> Vec<f64> {
    v[0] = block_inode(v.as_ptr()).expect("the allocator is installed") as f64;
    v
}

fn pool(workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .build()
        .expect("pool")
}

#[test]
fn a_large_vec_argument_is_read_in_the_senders_pages() {
    let _s = serial();
    let ex = pool(1);
    let v = tagged(make(LEN as u64));
    let expect = sum(&v);
    let (shared, got) = ex
        .submit(|v: Vec<f64>| (same_block(&v), sum(&v)), v)
        .unwrap()
        .result()
        .unwrap();
    assert!(shared, "the worker got a copy, not the sender's block");
    assert_eq!(got, expect);
}

#[test]
fn a_large_vec_result_is_read_in_the_workers_pages() {
    let _s = serial();
    let ex = pool(1);
    let r = ex
        .submit(|n: u64| tagged(make(n)), LEN as u64)
        .unwrap()
        .result()
        .unwrap();
    assert!(same_block(&r), "the parent got a copy");
    assert_eq!(r[1..], make(LEN as u64)[1..]);
}

#[test]
fn a_vec_sent_back_and_forth_stays_one_block_and_leaks_nothing() {
    let _s = serial();
    let ex = pool(2);
    let mut v = tagged(vec![0.0f64; 1 << 20]);
    // Warm up: workers started, their first descriptors open.
    v = ex.submit(|v: Vec<f64>| v, v).unwrap().result().unwrap();
    let (fds, segments) = (fd_count(), loky_ipc::shm_alloc::live_segments());
    for round in 1..=30 {
        v = ex
            .submit(
                |mut v: Vec<f64>| {
                    let n = v.len();
                    v[n - 1] = if same_block(&v) { 1.0 } else { -1.0 };
                    v[1] += 1.0;
                    v
                },
                v,
            )
            .unwrap()
            .result()
            .unwrap();
        assert_eq!(v[1], f64::from(round));
        assert_eq!(v[v.len() - 1], 1.0, "round {round}: the worker got a copy");
        assert!(same_block(&v), "round {round}: the parent got a copy");
    }
    assert_eq!(loky_ipc::shm_alloc::live_segments(), segments);
    // The senders let go of what their receivers took (a collect may lag
    // by a message).
    assert!(
        fd_count() <= fds + 2,
        "descriptors: {} then {}",
        fds,
        fd_count()
    );
}

#[test]
fn a_large_argument_behind_a_crashing_task_runs_elsewhere_whole() {
    let _s = serial();
    let ex = pool(1);
    let crash = ex
        .submit(
            |_: ()| -> u8 {
                std::thread::sleep(Duration::from_millis(300));
                std::process::abort()
            },
            (),
        )
        .unwrap();
    let v = tagged(make(LEN as u64));
    let expect = sum(&v);
    // Sent to the same worker's ring (prefetch), behind the crash.
    let behind = ex
        .submit(|v: Vec<f64>| (same_block(&v), sum(&v)), v)
        .unwrap();
    assert!(matches!(
        crash.result(),
        Err(loky::Error::TerminatedWorker { .. })
    ));
    let (shared, got) = behind
        .result()
        .expect("the task behind the crash runs again");
    assert!(shared);
    assert_eq!(got, expect);
}

#[test]
fn workers_with_a_memory_limit_allocate_privately() {
    let _s = serial();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .hard_memory_limit(8 << 30)
        .build()
        .unwrap();
    let shared = ex
        .submit(|n: u64| block_inode(make(n).as_ptr()).is_some(), LEN as u64)
        .unwrap()
        .result()
        .unwrap();
    assert!(!shared, "shared memory escapes RLIMIT_DATA");
    // Its results still arrive (copied).
    let r = ex.submit(make, LEN as u64).unwrap().result().unwrap();
    assert_eq!(r.len(), LEN);
}
