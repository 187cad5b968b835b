//! 200 create / submit / drop cycles (half of them with a shared array)
//! leave the process's descriptors,
//! mappings, children and /dev/shm as they were; programs a task starts
//! inherit none of the pool's descriptors.

use std::time::Duration;

use loky::ProcessPoolExecutor;

mod support;
use support::fd_count;

fn map_count() -> usize {
    support::mappings("")
}

fn shm_entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reaps any child left behind; returns how many there were.
fn zombies() -> usize {
    let mut n = 0;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child, non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return n;
        }
        n += 1;
    }
}

fn cycle(i: u64) {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    assert_eq!(
        ex.submit(|x: u64| x + 1, i)
            .unwrap()
            .result_timeout(Duration::from_secs(60))
            .unwrap(),
        i + 1
    );
    if i % 2 == 0 {
        // The shared arena: its memfd, both mappings and the task's pin.
        let v = loky::SharedVec::from_slice(&ex, &[i; 1000]).unwrap();
        let sum = ex
            .submit(
                |s: loky::SharedSlice<u64>| s.iter().sum::<u64>(),
                v.slice(..).unwrap(),
            )
            .unwrap();
        assert_eq!(
            sum.result_timeout(Duration::from_secs(60)).unwrap(),
            i * 1000
        );
    }
    if i % 3 == 0 {
        ex.shutdown(true, true, true);
    } else if i % 3 == 1 {
        ex.shutdown(true, false, false);
    } // else: plain drop
}

/// The tests of this file count the process's descriptors and mappings:
/// one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_hundred_cycles_leak_nothing() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Warm up lazily initialised process state (thread-locals, allocator).
    cycle(0);
    let (fds, maps, shm) = (fd_count(), map_count(), shm_entries());
    for i in 1..=200 {
        cycle(i);
    }
    assert_eq!(zombies(), 0, "no zombie worker left behind");
    assert_eq!(fd_count(), fds, "descriptors leaked");
    // Thread stacks of exited threads may be cached by the allocator; allow
    // a small constant slack but no growth per cycle.
    let now = map_count();
    assert!(
        now <= maps + 4,
        "mappings grew from {maps} to {now} over 200 cycles"
    );
    assert_eq!(shm_entries(), shm, "nothing is created in /dev/shm");
}

/// What the descriptors of a shell that a task starts point to.
fn fds_of_a_task_child(_: ()) -> Vec<String> {
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done"])
        .output()
        .expect("run /bin/sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn programs_a_task_starts_inherit_no_pool_descriptor() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ex = ProcessPoolExecutor::new(1).unwrap();
    // A shared array in an earlier task maps the arena in the worker too.
    let v = loky::SharedVec::from_slice(&ex, &[1u64, 2, 3]).unwrap();
    let whole = v.slice(..).unwrap();
    let n = ex.submit(|s: loky::SharedSlice<u64>| s.len(), whole);
    assert_eq!(n.unwrap().result().unwrap(), 3);
    let fds = ex
        .submit(fds_of_a_task_child, ())
        .unwrap()
        .result()
        .unwrap();
    assert!(!fds.is_empty(), "the shell listed no descriptors");
    for fd in &fds {
        assert!(
            !fd.contains("memfd:") && !fd.starts_with("socket:"),
            "a task's child inherited {fd} (all: {fds:?})"
        );
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Touches `mib` MiB of fresh heap, then frees it; the pid.
fn churn(mib: u64) -> u32 {
    let v = vec![1u8; (mib as usize) << 20];
    std::hint::black_box(&v);
    drop(v);
    std::process::id()
}

/// An idle worker gives back what its tasks freed after `keep_freed_memory`
/// (1 s by default), and keeps it for reuse as long as asked.
#[test]
fn idle_workers_keep_freed_memory_as_long_as_asked() {
    for keep in [None, Some(Duration::from_secs(3600))] {
        let mut builder = ProcessPoolExecutor::builder().max_workers(1);
        if let Some(d) = keep {
            builder = builder.keep_freed_memory(d);
        }
        let ex = builder.build().unwrap();
        let pid = ex.submit(churn, 200).unwrap().result().unwrap();
        let busy = rss_mib(pid);
        std::thread::sleep(Duration::from_millis(2500));
        let idle = rss_mib(pid);
        match keep {
            None => assert!(
                idle < 100,
                "kept {idle} MiB after 2.5 s idle (held {busy} MiB)"
            ),
            Some(_) => assert!(idle >= 150, "gave back: {idle} MiB of {busy} MiB"),
        }
    }
}
