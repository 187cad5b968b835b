//! CPU counts, topology and pinning plans, from sysfs, procfs and cgroups.
//!
//! [`cpu_count`] is what a pool should size itself by: the smallest of
//!
//! * the online CPUs (`/sys/devices/system/cpu/online`),
//! * the thread's scheduler affinity mask (`sched_getaffinity`; a cgroup
//!   `cpuset` shows up here),
//! * the CPU bandwidth quota of the process's own cgroup and of every
//!   ancestor, rounded up (v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
//!   `cpu.cfs_period_us`), found through `/proc/self/cgroup` and
//!   `/proc/self/mountinfo`,
//! * the [`LOKY_MAX_CPU_COUNT`](MAX_CPU_COUNT_ENV) environment variable,
//!
//! and never below 1. [`cpu_count_physical`] counts physical cores within
//! the affinity mask instead of logical CPUs, then applies the same quotas and
//! cap. [`cpu_count_report`] says which limit gave what and which one won;
//! `loky-info` prints it.
//!
//! Unreadable or malformed files never fail a count: the limit is skipped
//! with a `tracing` warning (a debug event for a file that is simply absent),
//! and the report says why.
//!
//! Every reader takes its paths from a [`CpuProbe`], so tests run the same
//! code on fake trees ([`CpuProbe::with_root`]).

mod affinity;
mod cgroup;
mod cpulist;
mod env;
mod explain;
#[cfg(feature = "hwloc")]
pub mod hwloc;
mod pinning;
mod plan;

pub(crate) use cgroup::{memory_limit as cgroup_memory_limit, MemoryLimit as CgroupMemoryLimit};
pub(crate) use pinning::plan_for;
pub use pinning::Pinning;
mod probe;
mod read;
mod sysfs;

pub use env::MAX_CPU_COUNT_ENV;
pub use explain::{CpuCountReport, CpuLimit, LimitKind, LimitValue};
pub use probe::CpuProbe;
pub use sysfs::{Core, Package, Topology};

/// The number of CPUs this process can use.
///
/// The smallest of the online CPUs, the affinity mask, the cgroup CPU quota
/// (rounded up) and `LOKY_MAX_CPU_COUNT`; at least 1. Read afresh on every
/// call. See the [module documentation](self) for details and
/// [`cpu_count_report`] for the reasoning.
///
/// ```
/// let n = loky::cpu_count();
/// assert!(n >= 1);
/// assert!(loky::cpu_count_physical() <= n);
/// ```
pub fn cpu_count() -> usize {
    CpuProbe::new().cpu_count()
}

/// The number of physical cores this process can use.
///
/// Distinct cores (by sysfs SMT sibling lists) among the online CPUs in the
/// affinity mask, then capped by the cgroup quota and `LOKY_MAX_CPU_COUNT`
/// like [`cpu_count`]; at least 1 and at most [`cpu_count`]. Falls back to
/// [`cpu_count`] where the topology cannot be read.
pub fn cpu_count_physical() -> usize {
    CpuProbe::new().cpu_count_physical()
}

/// Both counts together with every limit consulted, where it was read, and
/// which one applied. Its `Display` is a readable explanation.
///
/// ```
/// let report = loky::topology::cpu_count_report();
/// assert_eq!(report.logical, report.applied().and_then(|l| l.value.cpus()).unwrap_or(1));
/// assert!(report.to_string().contains("logical"));
/// ```
pub fn cpu_count_report() -> CpuCountReport {
    CpuProbe::new().report()
}

/// The CPUs this thread may run on (its affinity mask, restricted to online
/// CPUs), sorted.
pub fn affinity_cpus() -> Vec<usize> {
    CpuProbe::new().affinity_cpus()
}

/// The topology of the online CPUs: packages, their cores, and each core's
/// logical CPUs.
pub fn topology() -> Topology {
    CpuProbe::new().topology()
}

/// The CPU each of `n_workers` workers should be pinned to, from the
/// [affinity mask](affinity_cpus).
///
/// With `physical_first`, one CPU per physical core first, then the SMT
/// siblings; otherwise the CPUs in ascending order. With more workers than
/// CPUs the order repeats. Empty if no CPU could be determined (do not pin
/// then).
pub fn pinning_plan(n_workers: usize, physical_first: bool) -> Vec<usize> {
    CpuProbe::new().pinning_plan(n_workers, physical_first)
}
