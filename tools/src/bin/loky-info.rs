//! `loky-info`: what loky sees of this machine.
//!
//! Prints the CPU counts loky uses, every limit behind them and where it was
//! read, the topology (packages → cores → logical CPUs) and the CPU each
//! worker would be pinned to under `Pinning::Cores` and
//! `Pinning::PhysicalCores`. Built with the `hwloc` feature
//! (`cargo run -p loky-tools --features hwloc --bin loky-info`), it also
//! prints the NUMA nodes hwloc sees and the `Pinning::Numa` plan.
//!
//! ```text
//! loky-info [--workers N] [--json] [--root DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../cli.rs"]
mod cli;

use loky::topology::{CpuCountReport, CpuLimit, CpuProbe, LimitValue, Topology};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: loky-info [--workers N] [--json] [--root DIR]

  --workers N   show the pinning plans for N workers (default: cpu_count())
  --json        print JSON instead of text
  --root DIR    read a fake system tree under DIR (DIR/sys, DIR/proc, ...)
                instead of this machine; LOKY_MAX_CPU_COUNT is then ignored
                (and NUMA nodes, which hwloc reads from this machine, are
                not shown)
  -h, --help    print this help";

struct Args {
    workers: Option<usize>,
    json: bool,
    root: Option<PathBuf>,
}

fn parse_args(p: &mut lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        workers: None,
        json: false,
        root: None,
    };
    while let Some(arg) = p.next()? {
        match arg {
            Short('n') | Long("workers") => {
                args.workers = Some(cli::positive("--workers", p.value()?)?);
            }
            Long("root") => args.root = Some(p.value()?.into()),
            Long("json") => args.json = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match cli::parse("loky-info", USAGE, parse_args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let probe = match &args.root {
        Some(root) => CpuProbe::with_root(root),
        None => CpuProbe::new(),
    };
    let report = probe.report();
    let topology = probe.topology();
    let workers = args.workers.unwrap_or(report.logical);
    let plans = Plans {
        workers,
        cores: probe.pinning_plan(workers, false),
        physical_cores: probe.pinning_plan(workers, true),
        numa: numa::read(args.root.is_some(), workers),
    };
    if args.json {
        let value = to_json(&report, &topology, &plans);
        match serde_json::to_string_pretty(&value) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("loky-info: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_text(&report, &topology, &plans);
    }
    ExitCode::SUCCESS
}

/// The pinning plans for `workers` workers.
struct Plans {
    workers: usize,
    /// `Pinning::Cores`: the affinity mask in CPU order.
    cores: Vec<usize>,
    /// `Pinning::PhysicalCores`: one CPU per physical core first.
    physical_cores: Vec<usize>,
    /// NUMA nodes and the `Pinning::Numa` plan, or why there are none.
    numa: Result<numa::Numa, String>,
}

/// What hwloc says, in builds with the `hwloc` feature.
mod numa {
    /// A NUMA node: OS index, package, local memory, usable CPUs by core.
    pub(crate) struct Node {
        pub(crate) os_index: usize,
        pub(crate) package: Option<usize>,
        pub(crate) memory: u64,
        pub(crate) cores: Vec<Vec<usize>>,
    }

    /// The NUMA nodes and the `Pinning::Numa` plan.
    pub(crate) struct Numa {
        pub(crate) nodes: Vec<Node>,
        pub(crate) plan: Vec<usize>,
    }

    #[cfg(feature = "hwloc")]
    pub(crate) fn read(fake_root: bool, workers: usize) -> Result<Numa, String> {
        use loky::topology::hwloc::NumaTopology;
        if fake_root {
            return Err("not shown with --root (hwloc reads this machine)".into());
        }
        let topo = NumaTopology::live().map_err(|e| e.to_string())?;
        Ok(Numa {
            plan: topo.spread_plan(workers),
            nodes: topo
                .nodes()
                .iter()
                .map(|node| Node {
                    os_index: node.os_index,
                    package: node.package,
                    memory: node.memory,
                    cores: node.cores.clone(),
                })
                .collect(),
        })
    }

    #[cfg(not(feature = "hwloc"))]
    pub(crate) fn read(_fake_root: bool, _workers: usize) -> Result<Numa, String> {
        Err(
            "built without the `hwloc` feature: Pinning::Numa pins like \
             PhysicalCores; rebuild with `--features hwloc` to see NUMA nodes"
                .into(),
        )
    }
}

fn print_text(report: &CpuCountReport, topology: &Topology, plans: &Plans) {
    println!("cpu_count()          = {}", report.logical);
    println!("cpu_count_physical() = {}", report.physical);
    println!();
    println!("{report}");
    println!();
    println!("topology (online CPUs; those outside the affinity mask in parentheses):");
    if topology.packages.is_empty() {
        println!("  (not readable)");
    }
    for package in &topology.packages {
        println!("  package {}", package.id);
        for core in &package.cores {
            let cpus: Vec<String> = core
                .cpus
                .iter()
                .map(|cpu| {
                    if report.usable_cpus.contains(cpu) {
                        format!("cpu{cpu}")
                    } else {
                        format!("(cpu{cpu})")
                    }
                })
                .collect();
            println!("    core {:<4} {}", core.id, cpus.join(" "));
        }
    }
    println!();
    println!("NUMA nodes (hwloc; usable CPUs by core):");
    match &plans.numa {
        Err(why) => println!("  ({why})"),
        Ok(numa) => {
            for node in &numa.nodes {
                let package = node
                    .package
                    .map_or_else(|| "-".to_owned(), |p| p.to_string());
                let cores: Vec<String> = node
                    .cores
                    .iter()
                    .map(|pus| {
                        let pus: Vec<String> = pus.iter().map(|cpu| format!("cpu{cpu}")).collect();
                        format!("[{}]", pus.join(" "))
                    })
                    .collect();
                println!(
                    "  node {:<3} package {package:<3} {:>10}  {}",
                    node.os_index,
                    human_bytes(node.memory),
                    if cores.is_empty() {
                        "(no usable CPU)".to_owned()
                    } else {
                        cores.join(" ")
                    }
                );
            }
        }
    }
    println!();
    let workers = plans.workers;
    println!("pinning plans for {workers} workers (the CPU of worker 0, 1, 2, ...):");
    let numa_plan = plans.numa.as_ref().ok().map(|numa| numa.plan.as_slice());
    let rows: [(&str, Option<&[usize]>); 3] = [
        ("Cores", Some(&plans.cores)),
        ("PhysicalCores", Some(&plans.physical_cores)),
        ("Numa", numa_plan),
    ];
    for (name, plan) in rows {
        match plan {
            None => println!("  {name:<14} (no NUMA view, see above)"),
            Some([]) => println!("  {name:<14} (no CPU known: workers would not be pinned)"),
            Some(plan) => {
                for (i, line) in plan_lines(plan).iter().enumerate() {
                    let label = if i == 0 { name } else { "" };
                    println!("  {label:<14} {line}");
                }
            }
        }
    }
}

/// The plan's CPUs, 16 workers a line (`w16: ...` marks where a line
/// starts); long plans show their first and last lines only.
fn plan_lines(plan: &[usize]) -> Vec<String> {
    const PER_LINE: usize = 16;
    const MAX_LINES: usize = 4;
    let mut lines: Vec<String> = plan
        .chunks(PER_LINE)
        .enumerate()
        .map(|(i, chunk)| {
            let cpus: Vec<String> = chunk.iter().map(|cpu| format!("{cpu:>3}")).collect();
            format!("w{:<4}{}", i * PER_LINE, cpus.join(""))
        })
        .collect();
    if lines.len() > MAX_LINES {
        let last = lines.pop().unwrap_or_default();
        lines.truncate(MAX_LINES - 2);
        lines.push("...  (--json for all)".to_owned());
        lines.push(last);
    }
    lines
}

fn human_bytes(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes == 0 {
        "? memory".to_owned()
    } else if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

fn to_json(report: &CpuCountReport, topology: &Topology, plans: &Plans) -> Value {
    let (numa_nodes, numa_plan, numa_unavailable) = match &plans.numa {
        Ok(numa) => (
            Value::from(
                numa.nodes
                    .iter()
                    .map(|node| {
                        json!({
                            "os_index": node.os_index,
                            "package": node.package,
                            "memory_bytes": node.memory,
                            "cores": node.cores,
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
            json!(numa.plan),
            Value::Null,
        ),
        Err(why) => (Value::Null, Value::Null, json!(why)),
    };
    json!({
        "cpu_count": report.logical,
        "cpu_count_physical": report.physical,
        "physical_cores": report.physical_cores,
        "usable_cpus": report.usable_cpus,
        "limits": report.limits.iter().map(limit_json).collect::<Vec<_>>(),
        "topology": {
            "packages": topology.packages.iter().map(|package| json!({
                "id": package.id,
                "cores": package.cores.iter().map(|core| json!({
                    "id": core.id,
                    "cpus": core.cpus,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "numa_nodes": numa_nodes,
        "numa_unavailable": numa_unavailable,
        "pinning_plans": {
            "workers": plans.workers,
            "Cores": plans.cores,
            "PhysicalCores": plans.physical_cores,
            "Numa": numa_plan,
        },
    })
}

fn limit_json(limit: &CpuLimit) -> Value {
    let (status, cpus, reason) = match &limit.value {
        LimitValue::Cpus(n) => ("cpus", Some(*n), None),
        LimitValue::Unlimited => ("unlimited", None, None),
        LimitValue::Unavailable(why) => ("unavailable", None, Some(why.as_str())),
        _ => ("unknown", None, None),
    };
    json!({
        "kind": limit.kind.name(),
        "source": limit.source,
        "raw": limit.raw,
        "status": status,
        "cpus": cpus,
        "reason": reason,
        "applied": limit.applied,
    })
}
