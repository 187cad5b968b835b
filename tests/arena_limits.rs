//! The shared arena against the system's limits: the default limit under
//! `ulimit -v`, an arena the system refuses to map (in the parent and in a
//! worker), and an arena too fragmented for an array that would fit in
//! its free bytes.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use loky::{Error, ProcessPoolExecutor, SharedSlice, SharedVec};

mod support;

const MIB: usize = 1 << 20;

/// Set in the child this file's `ulimit -v` test re-runs itself as.
const CHILD: &str = "LOKY_TEST_ARENA_UNDER_RLIMIT_AS";

/// Fails the test (instead of hanging it) if `body` takes longer than
/// `secs`.
fn bounded<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    support::bounded(Duration::from_secs(secs), body)
}

/// The address-space limit of the child: `ulimit -v 4000000`, or the
/// machine's memory where that is less, so that an arena as large as the
/// machine's memory (the old default) cannot be mapped under it; and no
/// more than this process may raise its own limit to.
fn child_address_space() -> u64 {
    let physical = loky_ipc::sysmem::physical_memory() as u64;
    let ours = rustix::process::getrlimit(rustix::process::Resource::As).current;
    (4_000_000 << 10)
        .min(physical)
        .min(ours.unwrap_or(u64::MAX))
}

/// The child, under `RLIMIT_AS` of `limit` bytes: a pool with the default
/// arena makes a small array, a worker reads it, and a pool whose explicit
/// limit is the whole address space says it cannot be mapped.
fn child(limit: u64) {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let v = SharedVec::<u8>::zeroed(&ex, 16).unwrap_or_else(|e| {
        panic!("a 16-byte array under an address-space limit of {limit} bytes: {e}")
    });
    let arena = ex.shared_memory().limit as u64;
    assert!(
        arena <= limit / 2,
        "default arena of {arena} bytes under RLIMIT_AS of {limit}"
    );
    // The worker inherits the limit and maps the same arena.
    let len = ex
        .submit(|s: SharedSlice<u8>| s.len(), v.slice(..).unwrap())
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(len, 16);
    drop((v, ex));

    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .arena_limit(limit as usize)
        .build()
        .unwrap();
    match SharedVec::<u8>::zeroed(&ex, 16) {
        Err(Error::ArenaFull {
            requested, reason, ..
        }) => {
            assert_eq!(requested, 16);
            assert!(
                reason.contains("refused to map") && reason.contains("arena_limit"),
                "{reason}"
            );
        }
        other => panic!(
            "an arena as large as the address-space limit: expected ArenaFull, got {:?}",
            other.map(|v| v.len())
        ),
    }
    println!("CHILD OK");
}

#[test]
fn the_default_arena_fits_under_ulimit_v() {
    if let Some(limit) = std::env::var_os(CHILD) {
        let limit = limit.to_str().and_then(|l| l.parse().ok()).unwrap();
        child(limit);
        return;
    }
    let limit = child_address_space();
    let hard = rustix::process::getrlimit(rustix::process::Resource::As).maximum;
    let rlimit = rustix::process::Rlimit {
        current: Some(limit),
        maximum: hard,
    };
    support::rerun_in_child(
        "the_default_arena_fits_under_ulimit_v",
        CHILD,
        &limit.to_string(),
        |command: &mut Command| {
            // SAFETY: the closure runs in the child between fork and exec,
            // where only async-signal-safe calls are allowed: `setrlimit`
            // is a plain system call, and the error conversion allocates
            // nothing.
            unsafe {
                command.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::As, rlimit)
                        .map_err(std::io::Error::from)
                })
            };
        },
    );
}

/// This process's address space in bytes (`VmSize`).
fn address_space_in_use() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmSize in /proc/self/status")?;
    Ok(kib << 10)
}

#[test]
fn a_worker_that_cannot_map_the_arena_says_why() {
    bounded(120, || {
        let arena = 512 * MIB;
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .arena_limit(arena)
            .build()
            .unwrap();
        let v = SharedVec::<u8>::zeroed(&ex, 16).unwrap();
        // The worker (the only one) leaves itself 64 MiB of address space
        // to grow into: enough to run tasks, not to map the arena.
        ex.submit(
            |headroom: u64| -> Result<(), String> {
                let soft = address_space_in_use()? + headroom;
                let hard = rustix::process::getrlimit(rustix::process::Resource::As).maximum;
                rustix::process::setrlimit(
                    rustix::process::Resource::As,
                    rustix::process::Rlimit {
                        current: Some(soft),
                        maximum: hard,
                    },
                )
                .map_err(|e| e.to_string())
            },
            64 << 20,
        )
        .unwrap()
        .result()
        .unwrap()
        .unwrap();
        let err = ex
            .submit(|s: SharedSlice<u8>| s.len(), v.slice(..).unwrap())
            .unwrap()
            .result()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("cannot map the shared arena")
                && message.contains(&format!("{arena} bytes of address space"))
                && message.contains("arena_limit"),
            "{message}"
        );
    });
}

#[test]
fn a_fragmented_arena_names_its_largest_free_stretch() {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .arena_limit(4 * MIB)
        .build()
        .unwrap();
    let mut arrays: Vec<Option<SharedVec<u8>>> = (0..4)
        .map(|_| Some(SharedVec::zeroed(&ex, MIB).unwrap()))
        .collect();
    arrays[0] = None;
    arrays[2] = None;
    match SharedVec::<u8>::zeroed(&ex, 2 * MIB) {
        Err(e @ Error::ArenaFull { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("2097152 of 4194304 in use")
                    && message.contains("fragmented")
                    && message.contains("largest free stretch is 1048576 bytes"),
                "{message}"
            );
        }
        other => panic!("expected ArenaFull, got {:?}", other.map(|v| v.len())),
    }
    // Not fragmented, only full: no word of stretches.
    match SharedVec::<u8>::zeroed(&ex, 3 * MIB) {
        Err(e @ Error::ArenaFull { .. }) => {
            let message = e.to_string();
            assert!(
                !message.contains("fragmented") && message.contains("raise arena_limit"),
                "{message}"
            );
        }
        other => panic!("expected ArenaFull, got {:?}", other.map(|v| v.len())),
    }
    // Larger than the machine: no limit would help, and none is advised.
    match SharedVec::<u8>::zeroed(&ex, usize::MAX / 2) {
        Err(e @ Error::ArenaFull { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("more than this machine's memory and swap")
                    && !message.contains("raise arena_limit"),
                "{message}"
            );
        }
        other => panic!("expected ArenaFull, got {:?}", other.map(|v| v.len())),
    }
}
