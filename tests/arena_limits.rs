//! The shared arena against its limits: an arena a worker cannot map, and
//! an arena too fragmented for an array that would fit in its free bytes.

use std::time::Duration;

use loky::{Error, ProcessPoolExecutor, SharedSlice, SharedVec};

mod support;

const MIB: usize = 1 << 20;

/// Fails the test (instead of hanging it) if `body` takes longer than
/// `secs`.
fn bounded<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    support::bounded(Duration::from_secs(secs), body)
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
}
