//! A parent that is SIGKILLed leaves no worker behind: each worker has
//! `PR_SET_PDEATHSIG` and re-checks its parent. Ctrl-C (SIGINT to the
//! whole process group) is the parent's to handle: workers ignore it.
//!
//! The tests re-run this test binary as the "parent" (rayon-core's crash
//! test pattern), read what it reports, signal it, and watch its workers.

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

const CTRL_C_ROLE: &str = "LOKY_CTRL_C_TEST_ROLE";

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground process group,
/// workers included. A parent that handles it (here: notes it) still gets
/// the result of the task that was running; its worker carried on. (A
/// handler, not SIG_IGN: an ignored signal would stay ignored in the
/// workers it spawns, whatever loky does.)
#[test]
fn ctrl_c_to_the_process_group_leaves_running_tasks_to_the_parent() {
    if std::env::var_os(CTRL_C_ROLE).is_some() {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // nothing else in this test process handles SIGINT.
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let f = ex
            .submit(
                |ms: u64| {
                    // The worker shares the parent's stdout.
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "RUNNING");
                    let _ = out.flush();
                    std::thread::sleep(Duration::from_millis(ms));
                    std::process::id()
                },
                1500,
            )
            .unwrap();
        let got = f.result();
        let stats = ex.stats();
        let interrupted = INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "RESULT {} crashed {} interrupted {interrupted}",
            got.is_ok(),
            stats.crashed
        );
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ctrl_c_to_the_process_group_leaves_running_tasks_to_the_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CTRL_C_ROLE, "1")
        .process_group(0) // as a shell puts a job in its own group
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id() as libc::pid_t;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut result = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("RUNNING") {
            // What the terminal does on Ctrl-C.
            // SAFETY: signals the child's own process group, made above.
            assert_eq!(unsafe { libc::killpg(group, libc::SIGINT) }, 0);
        }
        if let Some(rest) = line.split("RESULT ").nth(1) {
            result = Some(rest.to_owned());
            break;
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        result.as_deref(),
        Some("true crashed 0 interrupted true"),
        "the running task's result (child: {status:?})"
    );
}
