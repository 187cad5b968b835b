//! NUMA placement (feature `hwloc`): the plan on synthetic hwloc topologies
//! of machines this one is not, and on the live machine.
#![cfg(feature = "hwloc")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use loky::topology::hwloc::{numa_nodes, numa_spread_plan, NumaTopology};
use loky::{Pinning, ProcessPoolExecutor};

const HANG: Duration = Duration::from_secs(60);

/// 2 packages × 2 NUMA nodes × 8 cores × 2 PUs: 64 PUs, 32 cores.
const BIG: &str = "pack:2 numa:2 core:8 pu:2";

fn core_of(topo: &NumaTopology, cpu: usize) -> (usize, usize) {
    for node in topo.nodes() {
        for (i, pus) in node.cores.iter().enumerate() {
            if pus.contains(&cpu) {
                return (node.os_index, i);
            }
        }
    }
    panic!("cpu {cpu} not in the topology");
}

#[test]
fn synthetic_topology_is_read_as_nodes_cores_pus() {
    let topo = NumaTopology::from_synthetic(BIG).unwrap();
    let nodes = topo.nodes();
    assert_eq!(nodes.len(), 4);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.os_index, i);
        assert_eq!(node.package, Some(i / 2));
        assert_eq!(node.cores.len(), 8);
        assert!(node.cores.iter().all(|pus| pus.len() == 2));
        assert_eq!(node.cpus(), (i * 16..(i + 1) * 16).collect::<Vec<_>>());
    }
}

#[test]
fn consecutive_workers_alternate_numa_nodes_and_packages() {
    let topo = NumaTopology::from_synthetic(BIG).unwrap();
    let plan = topo.spread_plan(64);
    assert_eq!(&plan[..8], &[0, 32, 16, 48, 2, 34, 18, 50]);
    let node = |cpu| topo.node_of(cpu).unwrap();
    let package = |cpu| topo.nodes()[node(cpu)].package;
    for pair in plan.windows(2) {
        assert_ne!(node(pair[0]), node(pair[1]), "plan {plan:?}");
        assert_ne!(package(pair[0]), package(pair[1]), "plan {plan:?}");
    }
    // Every node gets a quarter of the workers, for any multiple of 4.
    for n in [4, 8, 12, 32, 64] {
        let plan = topo.spread_plan(n);
        for id in 0..4 {
            let on = plan.iter().filter(|&&cpu| node(cpu) == id).count();
            assert_eq!(on, n / 4, "node {id} with {n} workers: {plan:?}");
        }
    }
}

#[test]
fn physical_cores_are_used_before_any_smt_sibling() {
    let topo = NumaTopology::from_synthetic(BIG).unwrap();
    let plan = topo.spread_plan(64);
    // The first 32 workers each have a core of their own...
    let cores: BTreeSet<_> = plan[..32].iter().map(|&cpu| core_of(&topo, cpu)).collect();
    assert_eq!(cores.len(), 32);
    assert!(plan[..32].iter().all(|cpu| cpu % 2 == 0), "{plan:?}");
    // ...and the next 32 are their SMT siblings, in the same order.
    for (first, sibling) in plan[..32].iter().zip(&plan[32..]) {
        assert_eq!(core_of(&topo, *first), core_of(&topo, *sibling));
        assert_ne!(first, sibling);
    }
    let all: BTreeSet<_> = plan.iter().copied().collect();
    assert_eq!(all, (0..64).collect());
}

#[test]
fn more_workers_than_pus_wrap_around() {
    let topo = NumaTopology::from_synthetic(BIG).unwrap();
    let plan = topo.spread_plan(150);
    assert_eq!(plan.len(), 150);
    for (i, cpu) in plan.iter().enumerate() {
        assert_eq!(*cpu, plan[i % 64]);
    }
    assert!(topo.spread_plan(0).is_empty());
}

#[test]
fn other_synthetic_shapes() {
    // One node, no SMT: plain CPU order.
    let topo = NumaTopology::from_synthetic("core:4 pu:1").unwrap();
    assert_eq!(topo.nodes().len(), 1);
    assert_eq!(topo.spread_plan(6), vec![0, 1, 2, 3, 0, 1]);
    // Two nodes in one package, SMT 4.
    let topo = NumaTopology::from_synthetic("numa:2 core:2 pu:4").unwrap();
    assert_eq!(topo.spread_plan(4), vec![0, 8, 4, 12]);
    assert_eq!(&topo.spread_plan(16)[4..8], &[1, 9, 5, 13]);
    // A bad description is an error, not a panic.
    assert!(NumaTopology::from_synthetic("this is not hwloc").is_err());
}

#[test]
fn live_machine_plan_stays_in_the_affinity_mask() {
    let mask = loky::topology::affinity_cpus();
    let nodes = numa_nodes().unwrap();
    assert!(!nodes.is_empty());
    let in_nodes: BTreeSet<usize> = nodes.iter().flat_map(|n| n.cpus()).collect();
    assert!(in_nodes.iter().all(|cpu| mask.contains(cpu)), "{nodes:?}");
    for n in [1, mask.len(), 2 * mask.len() + 1] {
        let plan = numa_spread_plan(n).unwrap();
        assert_eq!(plan.len(), n);
        assert!(plan.iter().all(|cpu| mask.contains(cpu)), "{plan:?}");
    }
    // Every usable CPU is in the plan once before any repeats.
    let plan = numa_spread_plan(in_nodes.len()).unwrap();
    assert_eq!(plan.iter().copied().collect::<BTreeSet<_>>(), in_nodes);
}

#[test]
fn numa_pinned_workers_run_on_planned_cpus() {
    let mask = loky::topology::affinity_cpus();
    let n = mask.len().clamp(1, 2);
    let ex = ProcessPoolExecutor::builder()
        .max_workers(n)
        .pin(Pinning::Numa)
        .build()
        .unwrap();
    let seen = ex
        .submit(|_: ()| loky::topology::affinity_cpus(), ())
        .unwrap()
        .result_timeout(HANG)
        .unwrap();
    assert_eq!(seen.len(), 1, "a Numa-pinned worker runs on one CPU");
    let plan = numa_spread_plan(n).unwrap();
    assert!(plan.contains(&seen[0]), "{seen:?} not in {plan:?}");
    let start = Instant::now();
    while ex.worker_pids().len() < n {
        assert!(start.elapsed() < HANG, "workers did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn live_plan_follows_a_narrowed_affinity_mask() {
    let mask = loky::topology::affinity_cpus();
    let Some(&last) = mask.last() else { return };
    // A thread of its own, so the test process keeps its mask.
    let plan = std::thread::spawn(move || {
        let mut set = rustix::thread::CpuSet::new();
        set.set(last);
        rustix::thread::sched_setaffinity(None, &set).unwrap();
        numa_spread_plan(3).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(plan, vec![last; 3]);
}
