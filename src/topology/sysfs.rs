//! What `/sys/devices/system/cpu` says: which CPUs are online, and how they
//! group into cores and packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cpulist;
use super::explain::{CpuLimit, LimitKind, LimitValue};
use super::read::{read_or_log, read_text};

/// The CPU topology: packages (sockets), their cores, and each core's
/// processing units (logical CPUs, several per core with SMT).
///
/// Read from `/sys/devices/system/cpu/cpuN/topology/` for every online CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Packages, sorted by id.
    pub packages: Vec<Package>,
}

/// A physical package (socket) in a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The kernel's `physical_package_id` (0 where the kernel reports none).
    pub id: usize,
    /// Cores of this package, sorted by their lowest CPU number.
    pub cores: Vec<Core>,
}

/// A physical core in a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// The kernel's `core_id` (unique within a package only, and not always
    /// then), or the core's lowest CPU number where the kernel reports none.
    pub id: usize,
    /// The core's online logical CPUs (SMT siblings), sorted.
    pub cpus: Vec<usize>,
}

impl Topology {
    /// All cores, package by package.
    pub fn cores(&self) -> impl Iterator<Item = &Core> + '_ {
        self.packages
            .iter()
            .flat_map(|package| package.cores.iter())
    }

    /// All logical CPUs, sorted.
    pub fn cpus(&self) -> Vec<usize> {
        let mut cpus: Vec<usize> = self
            .cores()
            .flat_map(|core| core.cpus.iter().copied())
            .collect();
        cpus.sort_unstable();
        cpus
    }

    /// The number of cores that have at least one CPU in `cpus` (sorted).
    /// CPUs of `cpus` that the topology does not know count as a core each.
    pub(crate) fn cores_among(&self, cpus: &[usize]) -> usize {
        let mut known = 0;
        let mut cores = 0;
        for core in self.cores() {
            let hits = core
                .cpus
                .iter()
                .filter(|cpu| cpus.binary_search(cpu).is_ok())
                .count();
            known += hits;
            cores += usize::from(hits > 0);
        }
        cores + cpus.len().saturating_sub(known)
    }
}

pub(crate) fn cpu_dir(sysfs: &Path) -> PathBuf {
    sysfs.join("devices/system/cpu")
}

/// Reads the online CPU list, as a limit and as the list itself.
pub(crate) fn online(sysfs: &Path) -> (CpuLimit, Option<Vec<usize>>) {
    let path = cpu_dir(sysfs).join("online");
    let source = path.display().to_string();
    let text = match read_text(&path) {
        Ok(Some(text)) => text,
        Ok(None) => {
            tracing::debug!(path = %source, "online CPU list not found; ignored");
            let limit = CpuLimit::new(
                LimitKind::Online,
                source,
                None,
                unavailable("file not found"),
            );
            return (limit, None);
        }
        Err(e) => {
            tracing::warn!(path = %source, error = %e, "cannot read the online CPU list; ignored");
            let limit = CpuLimit::new(LimitKind::Online, source, None, unavailable(&e.to_string()));
            return (limit, None);
        }
    };
    match cpulist::parse(&text) {
        Ok(cpus) if !cpus.is_empty() => {
            let limit = CpuLimit::new(
                LimitKind::Online,
                source,
                Some(&text),
                LimitValue::Cpus(cpus.len()),
            );
            (limit, Some(cpus))
        }
        Ok(_) => {
            tracing::warn!(path = %source, "online CPU list is empty; ignored");
            (
                CpuLimit::new(
                    LimitKind::Online,
                    source,
                    Some(&text),
                    unavailable("empty list"),
                ),
                None,
            )
        }
        Err(why) => {
            tracing::warn!(path = %source, content = %text.trim(), "malformed online CPU list ({why}); ignored");
            (
                CpuLimit::new(LimitKind::Online, source, Some(&text), unavailable(&why)),
                None,
            )
        }
    }
}

fn unavailable(why: &str) -> LimitValue {
    LimitValue::Unavailable(why.to_owned())
}

/// The CPUs whose topology to read when the online list is unknown: every
/// `cpuN` directory.
pub(crate) fn present_cpus(sysfs: &Path) -> Vec<usize> {
    let dir = cpu_dir(sysfs);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        tracing::debug!(path = %dir.display(), "no CPU directory in sysfs");
        return Vec::new();
    };
    let mut cpus: Vec<usize> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let digits = name.to_str()?.strip_prefix("cpu")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok().filter(|&cpu| cpu < cpulist::MAX_CPUS)
        })
        .collect();
    cpus.sort_unstable();
    cpus
}

/// How CPUs are recognised as sharing a core, best evidence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CoreKey {
    /// Lowest CPU of the sibling list (`core_cpus_list` / `thread_siblings_list`).
    Siblings(usize),
    /// `die_id` and `core_id`, where no sibling list could be read.
    Id(i64, usize),
    /// Nothing readable: the CPU is a core of its own.
    Alone(usize),
}

/// Reads the topology of `cpus` (sorted). Missing or malformed files never
/// fail: the affected CPU is treated as a core of its own (or of package 0).
pub(crate) fn topology(sysfs: &Path, cpus: &[usize]) -> Topology {
    let dir = cpu_dir(sysfs);
    // (package, core key) -> (core id, cpus)
    let mut cores: BTreeMap<(usize, CoreKey), (usize, Vec<usize>)> = BTreeMap::new();
    for &cpu in cpus {
        let topo = dir.join(format!("cpu{cpu}/topology"));
        let package = read_id(&topo.join("physical_package_id"))
            .and_then(|id| usize::try_from(id).ok())
            .unwrap_or(0);
        let core_id = read_id(&topo.join("core_id")).and_then(|id| usize::try_from(id).ok());
        let siblings = ["core_cpus_list", "thread_siblings_list"]
            .iter()
            .find_map(|name| read_list(&topo.join(name)));
        let key = match (siblings, core_id) {
            (Some(siblings), _) => {
                CoreKey::Siblings(siblings.first().map_or(cpu, |&first| first.min(cpu)))
            }
            (None, Some(core_id)) => {
                CoreKey::Id(read_id(&topo.join("die_id")).unwrap_or(0), core_id)
            }
            (None, None) => CoreKey::Alone(cpu),
        };
        let entry = cores
            .entry((package, key))
            .or_insert_with(|| (core_id.unwrap_or(cpu), Vec::new()));
        entry.1.push(cpu);
    }
    let mut packages: BTreeMap<usize, Vec<Core>> = BTreeMap::new();
    for ((package, _), (id, cpus)) in cores {
        packages.entry(package).or_default().push(Core { id, cpus });
    }
    Topology {
        packages: packages
            .into_iter()
            .map(|(id, mut cores)| {
                cores.sort_by_key(|core| core.cpus.first().copied());
                Package { id, cores }
            })
            .collect(),
    }
}

/// Reads a topology id such as `core_id`; `-1` (unknown) is kept as is.
fn read_id(path: &Path) -> Option<i64> {
    let text = read_or_log(path, "CPU topology")?;
    match text.trim().parse() {
        Ok(id) => Some(id),
        Err(_) => {
            tracing::warn!(path = %path.display(), content = %text.trim(), "malformed topology id; ignored");
            None
        }
    }
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    let text = read_or_log(path, "CPU topology")?;
    match cpulist::parse(&text) {
        Ok(cpus) if !cpus.is_empty() => Some(cpus),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "empty sibling list; ignored");
            None
        }
        Err(why) => {
            tracing::warn!(path = %path.display(), content = %text.trim(), "malformed sibling list ({why}); ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(cores: &[&[usize]]) -> Topology {
        Topology {
            packages: vec![Package {
                id: 0,
                cores: cores
                    .iter()
                    .enumerate()
                    .map(|(id, cpus)| Core {
                        id,
                        cpus: cpus.to_vec(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn counts_cores_among_a_cpu_set() {
        let t = topo(&[&[0, 4], &[1, 5], &[2, 6], &[3, 7]]);
        assert_eq!(t.cores_among(&[0, 1, 2, 3, 4, 5, 6, 7]), 4);
        assert_eq!(t.cores_among(&[0, 4]), 1);
        assert_eq!(t.cores_among(&[0, 5]), 2);
        assert_eq!(t.cores_among(&[]), 0);
        // CPU 9 is unknown to the topology: a core of its own.
        assert_eq!(t.cores_among(&[0, 4, 9]), 2);
        assert_eq!(t.cpus(), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
