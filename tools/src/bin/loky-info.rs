//! `loky-info`: what loky sees of this machine.
//!
//! Prints the CPU counts loky uses, every limit behind them and where it was
//! read, the topology (packages → cores → logical CPUs) and the CPU each
//! worker would be pinned to.
//!
//! ```text
//! loky-info [--workers N] [--json] [--root DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use loky::topology::{CpuCountReport, CpuLimit, CpuProbe, LimitValue, Topology};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: loky-info [--workers N] [--json] [--root DIR]

  --workers N   show the pinning plan for N workers (default: cpu_count())
  --json        print JSON instead of text
  --root DIR    read a fake system tree under DIR (DIR/sys, DIR/proc, ...)
                instead of this machine; LOKY_MAX_CPU_COUNT is then ignored
  -h, --help    print this help";

struct Args {
    workers: Option<usize>,
    json: bool,
    root: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workers: None,
        json: false,
        root: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("unexpected argument {arg:?}"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().and_then(|v| v.into_string().ok()))
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--workers" | "-n" => {
                let text = value("--workers")?;
                let n = text
                    .parse()
                    .map_err(|_| format!("--workers: {text:?} is not a number"))?;
                args.workers = Some(n);
            }
            "--root" => args.root = Some(PathBuf::from(value("--root")?)),
            "--json" => args.json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("loky-info: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let probe = match &args.root {
        Some(root) => CpuProbe::with_root(root),
        None => CpuProbe::new(),
    };
    let report = probe.report();
    let topology = probe.topology();
    let workers = args.workers.unwrap_or(report.logical);
    let plan = probe.pinning_plan(workers, true);
    if args.json {
        let value = to_json(&report, &topology, workers, &plan);
        match serde_json::to_string_pretty(&value) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("loky-info: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_text(&report, &topology, workers, &plan);
    }
    ExitCode::SUCCESS
}

fn print_text(report: &CpuCountReport, topology: &Topology, workers: usize, plan: &[usize]) {
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
    println!(
        "pinning plan for {workers} workers (one per physical core first, then SMT siblings):"
    );
    if plan.is_empty() {
        println!("  (no CPU known: workers would not be pinned)");
    }
    for (worker, cpu) in plan.iter().enumerate() {
        println!("  worker {worker:<4} -> cpu{cpu}");
    }
}

fn to_json(report: &CpuCountReport, topology: &Topology, workers: usize, plan: &[usize]) -> Value {
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
        "pinning_plan": {
            "workers": workers,
            "physical_first": true,
            "cpus": plan,
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
