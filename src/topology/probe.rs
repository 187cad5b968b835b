//! [`CpuProbe`]: where the limits are read from, and how they combine.

use std::path::{Path, PathBuf};

use super::explain::{CpuCountReport, CpuLimit, LimitKind, LimitValue};
use super::sysfs::Topology;
use super::{affinity, cgroup, cpulist, env, plan, sysfs};

/// Reads CPU counts, limits and topology from a system: the live one
/// ([`CpuProbe::new`]) or a fake tree of files ([`CpuProbe::with_root`]).
///
/// The free functions [`cpu_count`](super::cpu_count) and friends are
/// `CpuProbe::new()` followed by the method of the same name. Nothing is
/// cached: each call reads the files again (a handful for the counts, a few
/// per CPU for the topology).
///
/// ```
/// use loky::topology::CpuProbe;
///
/// let probe = CpuProbe::new();
/// assert!(probe.cpu_count_physical() <= probe.cpu_count());
/// ```
#[derive(Debug, Clone)]
pub struct CpuProbe {
    root: PathBuf,
    affinity: AffinitySource,
    env: EnvSource,
}

#[derive(Debug, Clone)]
enum AffinitySource {
    /// `sched_getaffinity`, falling back to `/proc/self/status`.
    Live,
    /// `Cpus_allowed_list` in `<root>/proc/self/status`, if present.
    Status,
    Fixed(Vec<usize>),
}

#[derive(Debug, Clone)]
enum EnvSource {
    Live,
    Fixed(Option<String>),
}

impl Default for CpuProbe {
    fn default() -> Self {
        CpuProbe::new()
    }
}

/// Everything but the topology: enough for the logical count.
struct Limits {
    limits: Vec<CpuLimit>,
    /// Online CPUs in the affinity mask (or whichever of the two is known).
    usable: Vec<usize>,
}

impl CpuProbe {
    /// A probe of the live system: `/sys`, `/proc`, the cgroup mounts, this
    /// thread's affinity mask and this process's `LOKY_MAX_CPU_COUNT`.
    pub fn new() -> Self {
        CpuProbe {
            root: PathBuf::from("/"),
            affinity: AffinitySource::Live,
            env: EnvSource::Live,
        }
    }

    /// A hermetic probe of a fake system under `root`: it reads
    /// `root/sys/devices/system/cpu/...`, `root/proc/self/{cgroup,mountinfo,status}`
    /// and the cgroup mounts listed there (below `root` too). The affinity
    /// mask comes from `Cpus_allowed_list` in `root/proc/self/status` (none
    /// if absent) and `LOKY_MAX_CPU_COUNT` is unset, unless given with
    /// [`affinity`](Self::affinity) and [`max_cpu_count_env`](Self::max_cpu_count_env).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        CpuProbe {
            root: root.into(),
            affinity: AffinitySource::Status,
            env: EnvSource::Fixed(None),
        }
    }

    /// Uses `cpus` as the affinity mask instead of reading it.
    pub fn affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut cpus: Vec<usize> = cpus.into_iter().collect();
        cpus.sort_unstable();
        cpus.dedup();
        self.affinity = AffinitySource::Fixed(cpus);
        self
    }

    /// Uses `value` as the value of `LOKY_MAX_CPU_COUNT` (`None`: unset)
    /// instead of reading the environment.
    pub fn max_cpu_count_env(mut self, value: Option<&str>) -> Self {
        self.env = EnvSource::Fixed(value.map(str::to_owned));
        self
    }

    /// The number of CPUs this process can use: the smallest of the online
    /// CPUs, the affinity mask, the cgroup quotas and `LOKY_MAX_CPU_COUNT`;
    /// at least 1. See [`cpu_count`](super::cpu_count).
    pub fn cpu_count(&self) -> usize {
        let mut limits = self.limits();
        mark_applied(&mut limits.limits)
    }

    /// The number of physical cores this process can use. See
    /// [`cpu_count_physical`](super::cpu_count_physical).
    pub fn cpu_count_physical(&self) -> usize {
        self.report().physical
    }

    /// Both counts with every limit behind them. See
    /// [`cpu_count_report`](super::cpu_count_report).
    pub fn report(&self) -> CpuCountReport {
        let Limits { mut limits, usable } = self.limits();
        let logical = mark_applied(&mut limits);
        let physical_cores = if usable.is_empty() {
            None
        } else {
            Some(self.topology().cores_among(&usable))
        };
        let caps = limits
            .iter()
            .filter(|limit| limit.kind.caps_physical())
            .filter_map(|limit| limit.value.cpus());
        let physical = caps
            .chain(physical_cores)
            .min()
            .unwrap_or(logical)
            .clamp(1, logical);
        CpuCountReport {
            logical,
            physical,
            physical_cores,
            usable_cpus: usable,
            limits,
        }
    }

    /// The CPUs this thread may run on: the affinity mask, restricted to
    /// online CPUs where both are known; sorted. See
    /// [`affinity_cpus`](super::affinity_cpus).
    pub fn affinity_cpus(&self) -> Vec<usize> {
        self.limits().usable
    }

    /// The topology of the online CPUs (of every CPU directory if the online
    /// list cannot be read). See [`topology`](super::topology()).
    pub fn topology(&self) -> Topology {
        let sysfs = self.sysfs();
        let cpus = match sysfs::online(&sysfs) {
            (_, Some(cpus)) => cpus,
            (_, None) => sysfs::present_cpus(&sysfs),
        };
        sysfs::topology(&sysfs, &cpus)
    }

    /// The CPU each of `n_workers` workers should be pinned to. See
    /// [`pinning_plan`](super::pinning_plan).
    pub fn pinning_plan(&self, n_workers: usize, physical_first: bool) -> Vec<usize> {
        let usable = self.affinity_cpus();
        let topology = if physical_first {
            self.topology()
        } else {
            Topology::default()
        };
        plan::assign(&plan::order(&topology, &usable, physical_first), n_workers)
    }

    fn sysfs(&self) -> PathBuf {
        self.root.join("sys")
    }

    fn procfs(&self) -> PathBuf {
        self.root.join("proc")
    }

    fn limits(&self) -> Limits {
        let (online_limit, online) = sysfs::online(&self.sysfs());
        let (mut affinity_limit, mask) = self.read_affinity();
        let usable = match (&online, &mask) {
            (Some(online), Some(mask)) => {
                let usable = cpulist::intersect(mask, online);
                if usable.is_empty() {
                    // Disjoint lists (a virtualised sysfs, say): the mask
                    // is what the scheduler goes by.
                    mask.clone()
                } else {
                    // A mask read from `Cpus_allowed_list` may name offline
                    // CPUs: only the online ones in it count.
                    if usable.len() < mask.len() && affinity_limit.value.cpus().is_some() {
                        affinity_limit.value = LimitValue::Cpus(usable.len());
                    }
                    usable
                }
            }
            (Some(cpus), None) | (None, Some(cpus)) => cpus.clone(),
            (None, None) => Vec::new(),
        };
        let mut limits = vec![online_limit, affinity_limit];
        limits.extend(cgroup::limits(&self.root, &self.procfs()));
        limits.push(match &self.env {
            EnvSource::Live => env::limit(
                env::live().as_deref(),
                format!("${}", env::MAX_CPU_COUNT_ENV),
            ),
            EnvSource::Fixed(value) => env::limit(
                value.as_deref(),
                format!("${} (injected)", env::MAX_CPU_COUNT_ENV),
            ),
        });
        Limits { limits, usable }
    }

    fn read_affinity(&self) -> (CpuLimit, Option<Vec<usize>>) {
        let status = |procfs: &Path| {
            let source = procfs.join("self/status").display().to_string() + " (Cpus_allowed_list)";
            match affinity::from_status(procfs) {
                Ok(Some((raw, cpus))) => mask_limit(source, &raw, cpus),
                Ok(None) => {
                    tracing::debug!(path = %source, "no affinity mask in the status file");
                    (
                        CpuLimit::new(LimitKind::Affinity, source, None, unavailable("not found")),
                        None,
                    )
                }
                Err(why) => {
                    tracing::warn!(path = %source, "{why}; affinity ignored");
                    (
                        CpuLimit::new(LimitKind::Affinity, source, None, unavailable(&why)),
                        None,
                    )
                }
            }
        };
        match &self.affinity {
            AffinitySource::Fixed(cpus) => {
                mask_limit("injected".to_owned(), &cpulist::format(cpus), cpus.clone())
            }
            AffinitySource::Status => status(&self.procfs()),
            AffinitySource::Live => match affinity::live() {
                Ok(cpus) => mask_limit(
                    "sched_getaffinity".to_owned(),
                    &cpulist::format(&cpus),
                    cpus,
                ),
                Err(why) => {
                    tracing::debug!("{why}; reading the mask from /proc/self/status instead");
                    status(&self.procfs())
                }
            },
        }
    }
}

fn unavailable(why: &str) -> LimitValue {
    LimitValue::Unavailable(why.to_owned())
}

fn mask_limit(source: String, raw: &str, cpus: Vec<usize>) -> (CpuLimit, Option<Vec<usize>>) {
    if cpus.is_empty() {
        tracing::warn!(source = %source, "empty affinity mask; ignored");
        return (
            CpuLimit::new(
                LimitKind::Affinity,
                source,
                Some(raw),
                unavailable("empty mask"),
            ),
            None,
        );
    }
    let value = LimitValue::Cpus(cpus.len());
    (
        CpuLimit::new(LimitKind::Affinity, source, Some(raw), value),
        Some(cpus),
    )
}

/// Marks the first limit with the smallest cap as applied and returns that
/// cap (1 if no limit has one).
fn mark_applied(limits: &mut [CpuLimit]) -> usize {
    let winner = limits
        .iter()
        .enumerate()
        .filter_map(|(i, limit)| Some((limit.value.cpus()?, i)))
        .min();
    match winner {
        Some((cpus, i)) => {
            limits[i].applied = true;
            cpus.max(1)
        }
        None => {
            tracing::warn!("no CPU limit could be read; assuming 1 CPU");
            1
        }
    }
}
