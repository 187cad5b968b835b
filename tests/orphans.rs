//! A parent that is SIGKILLed leaves no worker behind: each worker has
//! `PR_SET_PDEATHSIG` and re-checks its parent.
//!
//! The test re-runs this test binary as the "parent" (rayon-core's crash
//! test pattern), reads its workers' pids, SIGKILLs it, and watches the
//! workers disappear.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loky::ProcessPoolExecutor;

const ROLE: &str = "LOKY_ORPHANS_TEST_ROLE";

/// Alive and not a zombie (a zombie has exited; it only awaits reaping).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[test]
fn workers_exit_when_the_parent_is_killed() {
    if std::env::var_os(ROLE).is_some() {
        // We are the parent to be killed: start a pool, report, wait.
        let ex = ProcessPoolExecutor::new(2).unwrap();
        ex.submit(|x: u8| x, 1).unwrap().result().unwrap();
        while ex.worker_pids().len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pids: Vec<String> = ex.worker_pids().iter().map(u32::to_string).collect();
        println!("WORKERS {}", pids.join(" "));
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "workers_exit_when_the_parent_is_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut workers = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test <name> ... " on the same line first.
        if let Some(rest) = line.split("WORKERS ").nth(1) {
            workers = rest
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap())
                .collect();
            break;
        }
    }
    assert_eq!(workers.len(), 2, "the child reported its workers");
    assert!(workers.iter().all(|&p| running(p)));
    child.kill().unwrap(); // SIGKILL: no destructor, no shutdown runs
    let killed = Instant::now();
    child.wait().unwrap();
    while workers.iter().any(|&p| running(p)) {
        // A hang detector, not a timing assertion: the measured time is
        // printed (PDEATHSIG makes it immediate).
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "workers outlived their parent: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "workers gone {:?} after the parent was killed",
        killed.elapsed()
    );
}
