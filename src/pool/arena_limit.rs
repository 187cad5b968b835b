//! The default size of a pool's shared arena.
//!
//! The arena maps its whole limit (address space, not memory) the first
//! time a shared array is made, in the parent and in every worker that
//! receives one. A limit past what the process may map therefore fails
//! every shared array, however small, so the default stays within the
//! address-space limit and the cgroup's memory, not only the machine's.

use std::path::Path;

use crate::topology::CgroupMemoryLimit;

/// No default arena is smaller than this, whatever the limits say: below
/// it shared arrays are hardly worth having, and an explicit
/// [`arena_limit`](crate::ProcessPoolExecutorBuilder::arena_limit) can
/// still go lower.
const FLOOR: u64 = 64 << 20;

/// The default arena limit: the smallest of the machine's physical memory,
/// half the soft address-space limit (`ulimit -v`) and the memory limit of
/// our cgroup and its ancestors, and at least [`FLOOR`].
///
/// Half the address space, because the process (and each worker, which
/// inherits the limit) needs room for its own mappings next to the arena.
/// The arena commits only what live arrays use, so a generous limit costs
/// nothing until it is used.
pub(super) fn default_arena_limit() -> usize {
    let address_space = rustix::process::getrlimit(rustix::process::Resource::As).current;
    let cgroup = crate::topology::cgroup_memory_limit(Path::new("/"), Path::new("/proc"));
    let physical = u64::try_from(loky_ipc::sysmem::physical_memory()).unwrap_or(u64::MAX);
    let (bytes, source) = smallest_bound(physical, address_space, cgroup);
    tracing::debug!(bytes, %source, "default shared arena limit");
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The smallest of the bounds `default_arena_limit` takes, raised to
/// [`FLOOR`], and which bound set it. `address_space` is the soft
/// `RLIMIT_AS` (`None`: unlimited).
fn smallest_bound(
    physical: u64,
    address_space: Option<u64>,
    cgroup: Option<CgroupMemoryLimit>,
) -> (u64, String) {
    let mut smallest = (physical, "physical memory".to_owned());
    let others = [
        address_space.map(|soft| {
            (
                soft / 2,
                format!("half the address-space limit (RLIMIT_AS of {soft} bytes)"),
            )
        }),
        cgroup.map(|limit| {
            (
                limit.bytes,
                format!("cgroup memory limit ({})", limit.source.display()),
            )
        }),
    ];
    for (bytes, source) in others.into_iter().flatten() {
        if bytes < smallest.0 {
            smallest = (bytes, source);
        }
    }
    if smallest.0 < FLOOR {
        let (bytes, source) = smallest;
        return (
            FLOOR,
            format!("the {} MiB floor ({source} is {bytes} bytes)", FLOOR >> 20),
        );
    }
    smallest
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cgroup(bytes: u64) -> Option<CgroupMemoryLimit> {
        Some(CgroupMemoryLimit {
            bytes,
            source: "/sys/fs/cgroup/job/memory.max".into(),
        })
    }

    #[test]
    fn physical_memory_without_other_limits() {
        assert_eq!(smallest_bound(16 * GIB, None, None).0, 16 * GIB);
        assert_eq!(
            smallest_bound(16 * GIB, Some(64 * GIB), cgroup(32 * GIB)).0,
            16 * GIB
        );
    }

    #[test]
    fn half_the_address_space_limit() {
        // `ulimit -v 4000000` (KiB) on a 16 GiB machine.
        let (bytes, source) = smallest_bound(16 * GIB, Some(4_096_000_000), None);
        assert_eq!(bytes, 2_048_000_000);
        assert!(source.contains("RLIMIT_AS"), "{source}");
    }

    #[test]
    fn the_cgroup_memory_limit() {
        let (bytes, source) = smallest_bound(16 * GIB, Some(8 * GIB), cgroup(GIB));
        assert_eq!(bytes, GIB);
        assert!(source.contains("memory.max"), "{source}");
    }

    #[test]
    fn never_below_the_floor() {
        let (bytes, source) = smallest_bound(16 * GIB, Some(40 << 20), cgroup(GIB));
        assert_eq!(bytes, FLOOR);
        assert!(
            source.contains("floor") && source.contains("RLIMIT_AS"),
            "{source}"
        );
        assert_eq!(smallest_bound(16 << 20, None, None).0, FLOOR);
    }
}
