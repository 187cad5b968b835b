//! Which CPU each worker should be pinned to.
//!
//! With `physical_first`, workers go one per physical core first and only
//! then onto SMT siblings, so that `n <= cores` workers never share a core:
//! on a 4-core, 8-thread machine whose siblings are (0,4) (1,5) (2,6) (3,7)
//! the order is `0 1 2 3 4 5 6 7`; where siblings are (0,1) (2,3) (4,5)
//! (6,7) it is `0 2 4 6 1 3 5 7`. Cores come in the kernel's CPU numbering
//! (by their lowest CPU). Without `physical_first` the order is the usable
//! CPUs in ascending order.

use super::sysfs::Topology;

/// Usable CPUs (sorted) in the order workers should take them.
pub(crate) fn order(topology: &Topology, usable: &[usize], physical_first: bool) -> Vec<usize> {
    if !physical_first {
        return usable.to_vec();
    }
    // Each core's usable CPUs; usable CPUs the topology does not know are
    // cores of their own.
    let mut cores: Vec<Vec<usize>> = topology
        .cores()
        .map(|core| {
            core.cpus
                .iter()
                .copied()
                .filter(|cpu| usable.binary_search(cpu).is_ok())
                .collect::<Vec<_>>()
        })
        .filter(|cpus| !cpus.is_empty())
        .collect();
    let known = topology.cpus();
    cores.extend(
        usable
            .iter()
            .filter(|cpu| known.binary_search(cpu).is_err())
            .map(|&cpu| vec![cpu]),
    );
    cores.sort_by_key(|cpus| cpus[0]);
    let rounds = cores.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| {
            cores
                .iter()
                .filter_map(move |cpus| cpus.get(round).copied())
        })
        .collect()
}

/// The CPU for each of `n_workers` workers: the order, repeated from the
/// start if there are more workers than CPUs. Empty if no CPU is known.
pub(crate) fn assign(order: &[usize], n_workers: usize) -> Vec<usize> {
    if order.is_empty() {
        return Vec::new();
    }
    order.iter().copied().cycle().take(n_workers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::sysfs::{Core, Package};

    fn topo(packages: &[&[&[usize]]]) -> Topology {
        Topology {
            packages: packages
                .iter()
                .enumerate()
                .map(|(id, cores)| Package {
                    id,
                    cores: cores
                        .iter()
                        .enumerate()
                        .map(|(id, cpus)| Core {
                            id,
                            cpus: cpus.to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    const ALL: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

    #[test]
    fn siblings_far_apart() {
        let t = topo(&[&[&[0, 4], &[1, 5], &[2, 6], &[3, 7]]]);
        assert_eq!(order(&t, &ALL, true), ALL.to_vec());
        assert_eq!(order(&t, &ALL, false), ALL.to_vec());
    }

    #[test]
    fn siblings_adjacent() {
        let t = topo(&[&[&[0, 1], &[2, 3], &[4, 5], &[6, 7]]]);
        assert_eq!(order(&t, &ALL, true), vec![0, 2, 4, 6, 1, 3, 5, 7]);
        assert_eq!(order(&t, &ALL, false), ALL.to_vec());
        // Restricted mask: CPU 0's sibling and all of core (4,5) are out.
        assert_eq!(order(&t, &[1, 2, 3, 6, 7], true), vec![1, 2, 6, 3, 7]);
    }

    #[test]
    fn two_packages_and_unknown_cpus() {
        let t = topo(&[&[&[0, 2]], &[&[1, 3]]]);
        assert_eq!(order(&t, &[0, 1, 2, 3, 9], true), vec![0, 1, 9, 2, 3]);
    }

    #[test]
    fn assigns_with_wraparound() {
        assert_eq!(assign(&[0, 2, 1, 3], 2), vec![0, 2]);
        assert_eq!(assign(&[0, 2], 5), vec![0, 2, 0, 2, 0]);
        assert_eq!(assign(&[0, 2], 0), Vec::<usize>::new());
        assert_eq!(assign(&[], 3), Vec::<usize>::new());
    }
}
