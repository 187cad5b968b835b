//! `loky-bench`: the workloads W1–W6 (defined in
//! `tools/src/bench/workloads.rs`, listed by `--help`), measured in this
//! process through loky's public API, printed as one markdown table beside
//! their in-process references (rayon, a thread, the same loop) and, with
//! `--python`, the Python peers measured by `tools/python/peers.py`.
//!
//! ```text
//! cargo run --release -p loky-tools --bin loky-bench -- --python python3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../cli.rs"]
mod cli;
#[path = "../bench/machine.rs"]
mod machine;
#[path = "../bench/plot.rs"]
mod plot;
#[cfg(feature = "procspawn")]
#[path = "../bench/procspawn_peer.rs"]
mod procspawn_peer;
#[path = "../bench/python.rs"]
mod python;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/workloads.rs"]
mod workloads;

use workloads::{Config, WORKLOADS};

// W3 measures a large Vec by value with loky's shared-memory allocator too.
// It is off for everything else (see `main`), so that the other figures are
// those of a program that does not install it.
#[global_allocator]
static ALLOC: loky::SharedMemoryAllocator = loky::SharedMemoryAllocator::new();

const USAGE: &str = "\
usage: loky-bench [--json] [--plot FILE.svg] [--python PATH] [--quick]
                  [--workers N] [--only W1,W3] [--readme FILE]
                  [--no-procspawn]

Runs the workloads W1-W6 (listed below) on loky and prints a markdown
table: loky's figure, its in-process reference measured in the same run
(rayon par_iter, a thread round trip, the same loop in-process), the Rust
peer procspawn (its process Pool, measured right after loky), and with
--python the Python peers side by side.

  W1  submit x+1 then wait, 10 000 times in sequence: p50/p99 µs
  W2  map(x*2) over 1M and 10M u64, best chunksize: items/s vs rayon
  W3  sum of a 256 MiB f64 array in a worker: s per call, GB/s vs in-process
  W4  create a pool, first result, drop: ms (cold)
  W5  second get_reusable_executor with the same config + one task: µs
  W6  a task SIGKILLs its own worker: ms to the failure, then to the next success

  --json           print one JSON document (every figure, the machine) instead
  --plot FILE.svg  also draw the table as grouped bar charts (SVG)
  --python PATH    also run tools/python/peers.py with this interpreter
                   (concurrent.futures, loky, multiprocessing, joblib; peers it
                   lacks show as n/a)
  --quick          few repetitions and smaller arrays (a smoke run)
  --workers N      workers per pool and rayon threads (default 2)
  --only LIST      comma-separated workloads, e.g. W1,W3 (default: all)
  --readme FILE    also put the markdown report into FILE, between its lines
                   <!-- loky-bench: begin ... --> and <!-- loky-bench: end -->
  --no-procspawn   do not measure procspawn (built without the `procspawn`
                   feature, loky-bench never does)
  -h, --help       print this help

Progress goes to stderr; the table or the JSON to stdout.";

#[derive(Debug)]
struct Args {
    json: bool,
    plot: Option<PathBuf>,
    readme: Option<PathBuf>,
    python: Option<PathBuf>,
    procspawn: bool,
    quick: bool,
    workers: usize,
    only: Vec<&'static str>,
}

fn parse_args(p: &mut lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        json: false,
        plot: None,
        readme: None,
        python: None,
        procspawn: true,
        quick: false,
        workers: 2,
        only: WORKLOADS.to_vec(),
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("json") => args.json = true,
            Long("quick") => args.quick = true,
            Long("no-procspawn") => args.procspawn = false,
            Long("plot") => args.plot = Some(p.value()?.into()),
            Long("readme") => args.readme = Some(p.value()?.into()),
            Long("python") => args.python = Some(p.value()?.into()),
            Short('n') | Long("workers") => args.workers = cli::positive("--workers", p.value()?)?,
            Long("only") => args.only = parse_only(&p.value()?.to_string_lossy())?,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(args))
}

/// Measures procspawn on workload `w` into its rows and returns the note
/// on how; `Err` if that failed (said on stderr, and in the rows).
#[cfg(feature = "procspawn")]
fn rust_peer(w: &str, cfg: &Config, rows: &mut [report::Row]) -> Result<Option<String>, ()> {
    let start = std::time::Instant::now();
    eprintln!("# procspawn {w} ...");
    match procspawn_peer::fill(w, cfg, rows) {
        Ok(note) => {
            eprintln!("# procspawn {w}: {:.1} s", start.elapsed().as_secs_f64());
            Ok(note)
        }
        Err(e) => {
            eprintln!("loky-bench: procspawn {w} failed: {e}");
            for row in rows {
                row.peers
                    .insert(report::RUST_PEER, report::Cell::Error(e.to_string()));
            }
            Err(())
        }
    }
}

#[cfg(not(feature = "procspawn"))]
fn rust_peer(_: &str, _: &Config, _: &mut [report::Row]) -> Result<Option<String>, ()> {
    Ok(None)
}

/// The workloads named in `--only`'s comma-separated list, in order.
fn parse_only(text: &str) -> Result<Vec<&'static str>, lexopt::Error> {
    let mut only = Vec::new();
    for w in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let w = w.to_uppercase();
        let Some(known) = WORKLOADS.iter().find(|k| **k == w) else {
            return Err(format!(
                "--only: unknown workload {w:?} (choose from {})",
                WORKLOADS.join(",")
            )
            .into());
        };
        if !only.contains(known) {
            only.push(*known);
        }
    }
    if only.is_empty() {
        return Err("--only: no workload given".into());
    }
    only.sort();
    Ok(only)
}

fn main() -> ExitCode {
    // First: in procspawn's workers (this binary run again) this never
    // returns, and nothing before it may have side effects.
    #[cfg(feature = "procspawn")]
    procspawn_peer::init();
    // Off in this process and every process it starts (workers, peers)
    // unless a workload turns it on for itself.
    std::env::set_var(loky::SharedMemoryAllocator::ENV_SWITCH, "0");
    let args = match cli::parse("loky-bench", USAGE, parse_args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let machine = machine::Machine::probe(args.workers, args.quick);
    if !machine.release {
        eprintln!("loky-bench: a debug build; run with --release for figures worth reading");
    }
    let cfg = Config {
        workers: args.workers,
        quick: args.quick,
    };
    let mut rows = Vec::new();
    let mut rust_notes = Vec::new();
    let mut failed = false;
    for w in &args.only {
        let start = std::time::Instant::now();
        eprintln!("# loky {w} ...");
        match workloads::run(w, &cfg) {
            Ok(mut r) => {
                eprintln!("# loky {w}: {:.1} s", start.elapsed().as_secs_f64());
                if args.procspawn {
                    match rust_peer(w, &cfg, &mut r) {
                        Ok(note) => rust_notes.extend(note),
                        Err(()) => failed = true,
                    }
                }
                rows.extend(r);
            }
            Err(e) => {
                eprintln!("loky-bench: {w} failed: {e}");
                failed = true;
            }
        }
    }

    let peers = args
        .python
        .as_ref()
        .and_then(|py| match python::run(py, args.quick, &args.only) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("loky-bench: the Python peers were not measured: {e}");
                failed = true;
                None
            }
        });
    if let Some(p) = &peers {
        python::fill(&mut rows, p);
    }

    if let Some(path) = &args.plot {
        if let Err(e) = plot::draw(path, &machine, &rows, peers.is_some()) {
            eprintln!("loky-bench: cannot draw {}: {e}", path.display());
            failed = true;
        }
    }
    let markdown = report::markdown(&machine, &rows, &rust_notes, peers.as_ref());
    if let Some(path) = &args.readme {
        let spliced = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| report::splice(&text, &markdown))
            .and_then(|text| std::fs::write(path, text).map_err(|e| e.to_string()));
        if let Err(e) = spliced {
            eprintln!("loky-bench: cannot update {}: {e}", path.display());
            failed = true;
        }
    }
    if args.json {
        let doc = report::json(&machine, &rows, &rust_notes, peers.as_ref());
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("loky-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{markdown}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
