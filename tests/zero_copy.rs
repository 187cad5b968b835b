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

#[test]
fn the_environment_switch_turns_shared_blocks_off_in_workers() {
    let _s = serial();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .env(loky_ipc::shm_alloc::ENV_SWITCH, "0")
        .build()
        .unwrap();
    let shared = ex
        .submit(|n: u64| block_inode(make(n).as_ptr()).is_some(), LEN as u64)
        .unwrap()
        .result()
        .unwrap();
    assert!(!shared);
    // What the parent sends is still adopted: the switch is about the
    // worker's own allocations.
    let v = tagged(make(LEN as u64));
    let same = ex
        .submit(|v: Vec<f64>| same_block(&v), v)
        .unwrap()
        .result()
        .unwrap();
    assert!(same);
}

#[test]
fn a_worker_keeps_no_view_of_the_blocks_it_gave_away_or_freed() {
    let _s = serial();
    let ex = pool(1);
    let views = |ex: &ProcessPoolExecutor| {
        ex.submit(|_: ()| support::mappings("memfd:loky-shm") as u64, ())
            .unwrap()
            .result()
            .unwrap()
    };
    // A result given away.
    let r = ex
        .submit(|n: u64| tagged(make(n)), LEN as u64)
        .unwrap()
        .result()
        .unwrap();
    assert!(same_block(&r));
    assert_eq!(views(&ex), 0, "the worker still maps the result it sent");
    // An argument consumed.
    let sum_of = ex
        .submit(|v: Vec<f64>| sum(&v), r)
        .unwrap()
        .result()
        .unwrap();
    assert!(sum_of > 0.0);
    assert_eq!(views(&ex), 0, "the worker still maps the argument it freed");
}

/// Stress: `Vec`s given away both ways while another thread SIGKILLs the
/// workers every 10 ms. Every task either returns its argument changed as
/// asked (never another's, never torn) or fails with `TerminatedWorker`;
/// afterwards the parent holds no block and no descriptor more than before.
/// `LOKY_SOAK_SECS` (at most 8, default 6) bounds it.
#[test]
#[ignore = "stress: run by .ci/soak.sh"]
fn given_away_values_survive_workers_killed_from_outside() {
    let _s = serial();
    let secs: u64 = std::env::var("LOKY_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
        .min(8);
    let (fds, segments) = (fd_count(), loky_ipc::shm_alloc::live_segments());
    let ex = pool(3);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut ok, mut terminated) = (0u64, 0u64);
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut kills = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let pids = ex.worker_pids();
                if let Some(&pid) = pids.get(kills as usize % pids.len().max(1)) {
                    // SAFETY: a plain system call on a worker of this pool.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    kills += 1;
                }
            }
            kills
        });
        let stop_killer = StopOnDrop(&stop);
        let start = std::time::Instant::now();
        let mut round = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            let futures: Vec<_> = (0..4u64)
                .map(|k| {
                    let id = (round * 4 + k) as f64;
                    let v: Vec<f64> = (0..1u64 << 20).map(|i| id + i as f64).collect();
                    let f = ex.submit(
                        |mut v: Vec<f64>| {
                            let id = v[0];
                            let whole = v.iter().enumerate().all(|(i, &x)| x == id + i as f64);
                            v.iter_mut().for_each(|x| *x += 1.0);
                            v.push(if whole { 1.0 } else { 0.0 });
                            v
                        },
                        v,
                    );
                    (id, f.unwrap())
                })
                .collect();
            for (id, f) in futures {
                match f.result_timeout(Duration::from_secs(60)) {
                    Ok(v) => {
                        assert_eq!(v.len(), (1 << 20) + 1);
                        assert_eq!(v[v.len() - 1], 1.0, "task {id} got a torn argument");
                        assert!(
                            v[..1 << 20]
                                .iter()
                                .enumerate()
                                .all(|(i, &x)| x == id + i as f64 + 1.0),
                            "task {id}: a wrong result"
                        );
                        ok += 1;
                    }
                    Err(loky::Error::TerminatedWorker { .. }) => terminated += 1,
                    Err(e) => panic!("task {id}: {e:?}"),
                }
            }
            round += 1;
        }
        drop(stop_killer);
        killer.join().unwrap()
    });
    eprintln!(
        "{kills} kills: {ok} ok, {terminated} TerminatedWorker; {:?}",
        ex.stats()
    );
    drop(ex);
    assert!(ok > 0 && kills > 0);
    assert_eq!(
        loky_ipc::shm_alloc::live_segments(),
        segments,
        "blocks left behind"
    );
    assert!(fd_count() <= fds, "descriptors: {fds} then {}", fd_count());
}

#[test]
fn many_large_arguments_waiting_for_a_busy_worker_all_wait_in_their_own_blocks() {
    let _s = serial();
    // Without prefetch the tasks wait in the parent's queue, not in the
    // worker's ring.
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .prefetch(false)
        .build()
        .unwrap();
    // More than the 16 spilled messages the queue keeps in their buffers,
    // made before the worker is kept busy.
    let args: Vec<Vec<f64>> = (0..24).map(|_| tagged(make(1 << 20))).collect();
    let busy = ex
        .submit(|_: ()| std::thread::sleep(Duration::from_millis(500)), ())
        .unwrap();
    let waiting: Vec<_> = args
        .into_iter()
        .map(|v| ex.submit(|v: Vec<f64>| same_block(&v), v).unwrap())
        .collect();
    assert!(ex.stats().queued >= 20, "{:?}", ex.stats());
    busy.result().unwrap();
    for (i, f) in waiting.into_iter().enumerate() {
        assert!(
            f.result().unwrap(),
            "argument {i} was copied while it waited"
        );
    }
}

#[test]
fn a_received_vec_shrunk_or_filled_to_capacity_can_be_sent_on() {
    let _s = serial();
    let ex = pool(1);
    // Parent side: a result, shrunk, sent back.
    let mut r = ex.submit(make, LEN as u64).unwrap().result().unwrap();
    r.truncate(LEN / 2);
    r.shrink_to_fit();
    let want = sum(&r);
    assert_eq!(
        ex.submit(|v: Vec<f64>| sum(&v), r)
            .unwrap()
            .result()
            .unwrap(),
        want
    );
    // Filled to its capacity, sent back: still its own block.
    let mut r = ex
        .submit(|n: u64| tagged(make(n)), LEN as u64)
        .unwrap()
        .result()
        .unwrap();
    r.resize(r.capacity(), 1.0);
    let n = r.len();
    let (same, len) = ex
        .submit(|v: Vec<f64>| (same_block(&v), v.len() as u64), r)
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(len, n as u64);
    assert!(same, "filled to capacity, it was copied");
    // Worker side: its argument shrunk, or filled, and returned.
    let shrunk = ex
        .submit(
            |mut v: Vec<f64>| {
                v.truncate(LEN / 4);
                v.shrink_to_fit();
                v
            },
            make(LEN as u64),
        )
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(shrunk, make(LEN as u64 / 4));
    let filled = ex
        .submit(
            |mut v: Vec<f64>| {
                v.resize(v.capacity(), 2.0);
                v
            },
            make(LEN as u64),
        )
        .unwrap()
        .result()
        .unwrap();
    assert!(filled.len() >= LEN && filled[LEN..].iter().all(|&x| x == 2.0));
    assert_eq!(filled[..LEN], make(LEN as u64)[..]);
}

#[test]
fn a_worker_that_only_receives_blocks_forks_without_sharing_them() {
    let _s = serial();
    // Its own allocations are private: it receives blocks, never makes one.
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .env(loky_ipc::shm_alloc::ENV_SWITCH, "0")
        .build()
        .unwrap();
    let v = tagged(make(LEN as u64));
    let (same, seen) = ex
        .submit(
            |mut v: Vec<f64>| {
                let same = same_block(&v);
                // SAFETY: the child writes to its copy and leaves at once.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    v[1] = 99.0;
                    // SAFETY: leave the child.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                (same, v[1])
            },
            v,
        )
        .unwrap()
        .result()
        .unwrap();
    assert!(same);
    assert_eq!(seen, 1.0, "the forked child wrote into the worker's block");
}

#[test]
fn a_task_that_frees_many_blocks_holds_on_to_one_at_most() {
    let _s = serial();
    let ex = pool(1);
    let mapped = ex
        .submit(
            |rounds: u64| {
                for i in 0..rounds {
                    let v = vec![i as u8; 16 << 20];
                    std::hint::black_box(&v);
                }
                support::mappings("memfd:loky-shm") as u64
            },
            20,
        )
        .unwrap()
        .result()
        .unwrap();
    assert!(mapped <= 1, "{mapped} freed blocks still mapped");
}
