//! Tasks that crash their worker in every way a process can die, mixed
//! with tasks that behave: each crash fails its future with a meaningful
//! error, the pool replaces the dead worker, and the tasks on the other
//! worker, and all later ones, complete.
//!
//! Each worker holds up to two tasks (one running, one waiting in its ring,
//! so it never idles between tasks). The one waiting behind a crash never
//! started, so the pool runs it again on another worker, a large argument
//! included (it is read back from its spill buffer). It fails with the
//! crash instead if it holds shared arrays, or in the few other cases the
//! guide page `loky::guide::faults` lists (pages other than 4 KiB, a task
//! that already ran again 4 times); the program counts those as "waited
//! behind a crash".
//!
//! ```sh
//! cargo run --release --example crash_recovery
//! ```

use std::time::Duration;

use loky::{Error, ProcessPoolExecutor};

/// What a task does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Nothing,
    Panic,
    Abort,
    Segfault,
    Exit,
    StackOverflow,
    Hang,
}

const FAULTS: [Fault; 7] = [
    Fault::Nothing,
    Fault::Panic,
    Fault::Abort,
    Fault::Segfault,
    Fault::Exit,
    Fault::StackOverflow,
    Fault::Hang,
];

/// Runs in a worker: squares `x`, after misbehaving as `FAULTS[fault]`
/// says.
fn risky((fault, x): (u8, u64)) -> u64 {
    match FAULTS[usize::from(fault)] {
        Fault::Nothing => {}
        Fault::Panic => panic!("item {x} is cursed"),
        Fault::Abort => std::process::abort(),
        Fault::Segfault => {
            // SAFETY: none: this writes through a null pointer on purpose,
            // to show the pool surviving a SIGSEGV in a worker.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(x) }
        }
        Fault::Exit => std::process::exit(3),
        Fault::StackOverflow => return recurse(x),
        Fault::Hang => std::thread::sleep(Duration::from_secs(3600)),
    }
    x * x
}

/// Recursion with a frame the optimiser cannot remove: overflows the
/// worker's stack.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[0]
}

fn main() -> Result<(), loky::Error> {
    let ex = ProcessPoolExecutor::new(2)?;

    // Every fault once, each between two well-behaved tasks. The hanging
    // one gets a time limit: when it passes, its worker is killed.
    let mut futures = Vec::new();
    for (i, fault) in FAULTS.iter().enumerate() {
        let i = i as u64;
        futures.push((Fault::Nothing, ex.submit(risky, (0, 10 * i))?));
        let arg = (*fault as u8, 10 * i + 1);
        let fut = match fault {
            Fault::Hang => ex.submit_with_timeout(risky, arg, Duration::from_millis(300))?,
            _ => ex.submit(risky, arg)?,
        };
        futures.push((*fault, fut));
        futures.push((Fault::Nothing, ex.submit(risky, (0, 10 * i + 2))?));
    }

    println!("{:<14} outcome", "task");
    let (mut ok, mut bystanders) = (0, 0);
    for (fault, fut) in &futures {
        let outcome = match fut.result() {
            Ok(v) => {
                ok += 1;
                format!("Ok({v})")
            }
            Err(Error::TerminatedWorker { pid, status, task }) => {
                let mut text = format!("TerminatedWorker: worker {pid} died with {status}");
                if task != fut.id() {
                    bystanders += 1;
                    text += &format!(" (running task {task}; this one waited behind it)");
                }
                text
            }
            Err(Error::TaskPanicked {
                message, location, ..
            }) => format!("TaskPanicked at {location}: {message} (the worker lives on)"),
            Err(Error::TimeLimit) => "TimeLimit: the worker was killed and replaced".to_owned(),
            Err(e) => format!("Err({e})"),
        };
        println!("{:<14} {outcome}", format!("{fault:?}"));
    }
    let well_behaved = futures
        .iter()
        .filter(|(f, _)| matches!(f, Fault::Nothing))
        .count();
    println!(
        "\n{ok} of {well_behaved} well-behaved tasks succeeded; {bystanders} waited on a worker \
         behind a crash and failed with it"
    );

    // The pool is whole again: a map over all its workers goes through.
    let squares: u64 = ex
        .map(risky, (0..1000).map(|x| (0u8, x)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    println!("then a map over 1000 items: sum of squares {squares}");
    let stats = ex.stats();
    println!(
        "stats: {} workers alive, {} crashed, {} respawned; tasks: {} completed, {} failed, \
         {} aborted (a crash, a time limit), {} run again after waiting behind a crash",
        stats.workers_alive,
        stats.crashed,
        stats.respawned,
        stats.completed,
        stats.failed,
        stats.aborted,
        stats.rerun
    );
    Ok(())
}
