//! NUMA-aware placement through the system's hwloc 2.x (feature `hwloc`).
//!
//! [`Pinning::Numa`](crate::Pinning::Numa) asks this module where each
//! worker should run. The live topology is loaded with
//! [hwlocality](https://docs.rs/hwlocality) (which links `libhwloc`; install
//! `libhwloc-dev` to build with the feature), restricted to the CPUs this
//! process may use: hwloc itself drops the CPUs a cgroup `cpuset` forbids,
//! and this module further keeps only the thread's scheduler
//! [affinity mask](super::affinity_cpus).
//!
//! # Placement
//!
//! Every NUMA node is reduced to its usable physical cores, and each core to
//! its usable processing units (PUs, the logical CPUs; several per core with
//! SMT). Workers are then placed
//!
//! 1. **physical cores first**: the first PU of every core of every node is
//!    taken before any SMT sibling, so `n <= cores` workers never share a
//!    core;
//! 2. **round-robin across NUMA nodes**: consecutive workers go to
//!    different nodes, so a pool of `k` workers on `m` nodes puts `k / m`
//!    (rounded) on each node and uses the memory bandwidth of all of them;
//!    nodes are visited package by package in alternation (on 2 packages ×
//!    2 nodes the node order is `p0n0, p1n0, p0n1, p1n1`), so consecutive
//!    workers also use different packages (and their last-level caches) when
//!    there are several;
//! 3. **wrapping around** when there are more workers than PUs.
//!
//! On a machine with 2 packages × 2 NUMA nodes × 8 cores × 2 PUs (64 PUs,
//! numbered in order) the plan starts `0 32 16 48 2 34 18 50 …`: one worker
//! per node in turn, even PUs (first of each core) for the first 32 workers,
//! then their odd siblings.
//!
//! NUMA nodes without CPUs (memory-only nodes such as CXL or HBM expanders)
//! are listed by [`numa_nodes`] but receive no worker.
//!
//! # Memory locality
//!
//! A pinned worker keeps its memory local without further binding: Linux's
//! default memory policy allocates a page on the NUMA node of the CPU that
//! first touches it (*first touch*), and a pinned worker only ever runs on
//! its node's CPU. So its stack, heap, and every page of a shared-memory
//! arena that the *worker* writes first are local to it. Pages of the
//! shared arena that the *parent* writes first (inputs it prepares) land on
//! the parent's node; to keep such data local, let each worker produce its
//! own part of the data (first touch), or have the parent place inputs for
//! worker `i` only after that worker exists. No strict memory binding is
//! set: a strict `MPOL_BIND` would turn a full node into an out-of-memory
//! kill instead of a slower remote allocation.
//!
//! # Testing without NUMA hardware
//!
//! [`NumaTopology::from_synthetic`] builds the same view from an hwloc
//! [synthetic description](https://hwloc.readthedocs.io/en/stable/synthetic.html)
//! such as `"pack:2 numa:2 core:8 pu:2"`, so the placement is tested on
//! machines this one is not.
//!
//! ```
//! use loky::topology::hwloc::NumaTopology;
//! let topo = NumaTopology::from_synthetic("pack:2 numa:2 core:8 pu:2")?;
//! assert_eq!(topo.nodes().len(), 4);
//! assert_eq!(topo.spread_plan(4), vec![0, 32, 16, 48]);
//! # Ok::<(), loky::topology::hwloc::HwlocError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use hwlocality::Topology as HwTopology;

/// Why the hwloc topology could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwlocError {
    message: String,
}

impl HwlocError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for HwlocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hwloc: {}", self.message)
    }
}

impl std::error::Error for HwlocError {}

/// A NUMA node as hwloc reports it, reduced to the CPUs this process may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    /// The node's OS index (the `N` of `/sys/devices/system/node/nodeN`).
    pub os_index: usize,
    /// The OS index of the package (socket) the node belongs to, if it lies
    /// within one.
    pub package: Option<usize>,
    /// The node's local memory in bytes (0 if hwloc does not know it).
    pub memory: u64,
    /// The node's usable physical cores, each as its usable PUs (logical
    /// CPUs, by OS index), in hwloc's logical order. Empty for a
    /// memory-only node.
    pub cores: Vec<Vec<usize>>,
}

impl NumaNode {
    /// The node's usable logical CPUs, sorted.
    pub fn cpus(&self) -> Vec<usize> {
        let mut cpus: Vec<usize> = self.cores.iter().flatten().copied().collect();
        cpus.sort_unstable();
        cpus
    }
}

/// The NUMA nodes of a machine (live or synthetic) and the placement of
/// workers on them. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaTopology {
    nodes: Vec<NumaNode>,
}

impl NumaTopology {
    /// Loads this machine's topology, restricted to the CPUs this process
    /// may use (the cgroup cpuset, as hwloc applies it, and the calling
    /// thread's affinity mask).
    ///
    /// # Errors
    ///
    /// If hwloc cannot load the topology.
    pub fn live() -> Result<Self, HwlocError> {
        let topology =
            HwTopology::new().map_err(|e| HwlocError::new(format!("loading the topology: {e}")))?;
        let usable = super::affinity_cpus();
        // An unreadable mask restricts nothing (hwloc has applied the cgroup).
        let usable = (!usable.is_empty()).then_some(usable);
        Ok(Self::from_hwloc(&topology, usable.as_deref()))
    }

    /// Builds the topology from an hwloc [synthetic
    /// description](https://hwloc.readthedocs.io/en/stable/synthetic.html),
    /// for example `"pack:2 numa:2 core:8 pu:2"`. PUs are numbered in order
    /// (0 to 63 there) and all of them are usable.
    ///
    /// # Errors
    ///
    /// If hwloc rejects the description.
    pub fn from_synthetic(description: &str) -> Result<Self, HwlocError> {
        let topology = HwTopology::builder()
            .from_synthetic(description)
            .map_err(|e| HwlocError::new(format!("synthetic topology {description:?}: {e}")))?
            .build()
            .map_err(|e| HwlocError::new(format!("synthetic topology {description:?}: {e}")))?;
        Ok(Self::from_hwloc(&topology, None))
    }

    /// Extracts nodes → cores → PUs, keeping only PUs in `usable` (sorted)
    /// if given. A PU is claimed by the first node (by OS index) whose
    /// cpuset holds it, so nodes sharing CPUs do not count them twice.
    fn from_hwloc(topology: &HwTopology, usable: Option<&[usize]>) -> Self {
        let mut numa: Vec<&TopologyObject> =
            topology.objects_with_type(ObjectType::NUMANode).collect();
        numa.sort_by_key(|node| node.os_index());
        let mut claimed = BTreeSet::new();
        let mut nodes = Vec::with_capacity(numa.len());
        for (i, node) in numa.iter().enumerate() {
            let mut cores: Vec<(Option<u64>, Vec<usize>)> = Vec::new();
            if let Some(cpuset) = node.cpuset() {
                for pu in topology.objects_inside_cpuset_with_type(cpuset, ObjectType::PU) {
                    let Some(cpu) = pu.os_index() else { continue };
                    if usable.is_some_and(|u| u.binary_search(&cpu).is_err())
                        || !claimed.insert(cpu)
                    {
                        continue;
                    }
                    // A PU outside any Core object is a core of its own.
                    let core = pu
                        .first_ancestor_with_type(ObjectType::Core)
                        .map(|core| core.global_persistent_index());
                    match cores
                        .iter_mut()
                        .find(|(id, _)| core.is_some() && *id == core)
                    {
                        Some((_, pus)) => pus.push(cpu),
                        None => cores.push((core, vec![cpu])),
                    }
                }
            }
            nodes.push(NumaNode {
                os_index: node.os_index().unwrap_or(i),
                package: node
                    .first_ancestor_with_type(ObjectType::Package)
                    .and_then(TopologyObject::os_index),
                memory: node.total_memory(),
                cores: cores.into_iter().map(|(_, pus)| pus).collect(),
            });
        }
        Self { nodes }
    }

    /// The NUMA nodes, by OS index (memory-only nodes included).
    pub fn nodes(&self) -> &[NumaNode] {
        &self.nodes
    }

    /// The OS index of the node holding `cpu`, if any.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|node| node.cores.iter().flatten().any(|&c| c == cpu))
            .map(|node| node.os_index)
    }

    /// The CPU for each of `n` workers (see the [module
    /// documentation](self)); empty if no CPU is usable or `n` is 0.
    pub fn spread_plan(&self, n: usize) -> Vec<usize> {
        let ordered: Vec<Vec<Vec<usize>>> = self
            .node_order()
            .into_iter()
            .map(|node| node.cores.clone())
            .collect();
        spread(&ordered, n)
    }

    /// The nodes with CPUs, packages taken in alternation: the first node
    /// of each package, then the second of each, and so on.
    fn node_order(&self) -> Vec<&NumaNode> {
        let mut packages: Vec<(Option<usize>, Vec<&NumaNode>)> = Vec::new();
        for node in self.nodes.iter().filter(|node| !node.cores.is_empty()) {
            match packages.iter_mut().find(|(p, _)| *p == node.package) {
                Some((_, nodes)) => nodes.push(node),
                None => packages.push((node.package, vec![node])),
            }
        }
        let rounds = packages.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        (0..rounds)
            .flat_map(|round| {
                packages
                    .iter()
                    .filter_map(move |(_, nodes)| nodes.get(round).copied())
            })
            .collect()
    }
}

/// The NUMA nodes of this machine, restricted to the CPUs this process may
/// use (see [`NumaTopology::live`]).
///
/// # Errors
///
/// If hwloc cannot load the topology.
pub fn numa_nodes() -> Result<Vec<NumaNode>, HwlocError> {
    Ok(NumaTopology::live()?.nodes)
}

/// The CPU for each of `n` workers under [`Pinning::Numa`](crate::Pinning::Numa)
/// on this machine (see the [module documentation](self)).
///
/// # Errors
///
/// If hwloc cannot load the topology or it has no usable CPU.
pub fn numa_spread_plan(n: usize) -> Result<Vec<usize>, HwlocError> {
    let plan = NumaTopology::live()?.spread_plan(n);
    if plan.is_empty() && n > 0 {
        return Err(HwlocError::new("no usable CPU in the topology"));
    }
    Ok(plan)
}

/// The placement itself, on `nodes` → physical cores → PU OS indices (nodes
/// in the order they should be visited): for each SMT rank (the first PU of
/// every core, then the second, …), the cores' PUs of that rank taken
/// round-robin across the nodes; the whole order repeated to `n` entries.
/// Empty if there is no PU.
pub(crate) fn spread(nodes: &[Vec<Vec<usize>>], n: usize) -> Vec<usize> {
    let ranks = nodes.iter().flatten().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::new();
    for rank in 0..ranks {
        // Each node's PUs of this rank, in core order.
        let per_node: Vec<Vec<usize>> = nodes
            .iter()
            .map(|cores| {
                cores
                    .iter()
                    .filter_map(|pus| pus.get(rank).copied())
                    .collect()
            })
            .collect();
        let width = per_node.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..width {
            order.extend(per_node.iter().filter_map(|pus| pus.get(i).copied()));
        }
    }
    super::plan::assign(&order, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nodes` nodes of `cores` cores of `pus` PUs, numbered in order.
    fn uniform(nodes: usize, cores: usize, pus: usize) -> Vec<Vec<Vec<usize>>> {
        (0..nodes)
            .map(|n| {
                (0..cores)
                    .map(|c| (0..pus).map(|p| (n * cores + c) * pus + p).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn alternates_nodes_and_fills_cores_before_siblings() {
        let nodes = uniform(2, 2, 2); // node0: (0,1) (2,3); node1: (4,5) (6,7)
        assert_eq!(spread(&nodes, 8), vec![0, 4, 2, 6, 1, 5, 3, 7]);
        assert_eq!(spread(&nodes, 3), vec![0, 4, 2]);
    }

    #[test]
    fn wraps_around() {
        let nodes = uniform(2, 1, 1);
        assert_eq!(spread(&nodes, 5), vec![0, 1, 0, 1, 0]);
        assert_eq!(spread(&nodes, 0), Vec::<usize>::new());
    }

    #[test]
    fn empty_topology_gives_empty_plan() {
        assert!(spread(&[], 4).is_empty());
        assert!(spread(&[vec![], vec![]], 4).is_empty());
    }

    #[test]
    fn unequal_nodes_use_every_core_before_any_sibling() {
        // node0: 3 cores with SMT; node1: 1 core with SMT; node2: 1 core, no SMT.
        let nodes = vec![
            vec![vec![0, 10], vec![1, 11], vec![2, 12]],
            vec![vec![3, 13]],
            vec![vec![4]],
        ];
        assert_eq!(spread(&nodes, 9), vec![0, 3, 4, 1, 2, 10, 13, 11, 12]);
    }

    #[test]
    fn single_node_is_physical_first() {
        // Siblings adjacent, like plan::order with physical_first.
        let nodes = uniform(1, 4, 2);
        assert_eq!(spread(&nodes, 8), vec![0, 2, 4, 6, 1, 3, 5, 7]);
    }

    #[test]
    fn synthetic_two_packages_interleave_packages() {
        let topo = NumaTopology::from_synthetic("pack:2 numa:2 core:2 pu:1").unwrap();
        let packages: Vec<_> = topo.nodes().iter().map(|n| n.package).collect();
        assert_eq!(packages, vec![Some(0), Some(0), Some(1), Some(1)]);
        // Node order p0n0, p1n0, p0n1, p1n1.
        assert_eq!(topo.spread_plan(8), vec![0, 4, 2, 6, 1, 5, 3, 7]);
    }
}
