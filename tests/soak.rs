//! Soak test (ignored by default): many tasks on a 2-worker pool while 1 % of
//! them SIGKILL their own worker.
//!
//! ```text
//! LOKY_SOAK_TASKS=3000 cargo test --release --test soak -- --ignored --nocapture --test-threads=1
//! cargo test --release --test soak -- --ignored --nocapture --test-threads=1   # 100 000 tasks
//! ```
//!
//! One test at a time: the soak counts the process's file descriptors and
//! threads, and the round-trip test keeps every core busy. The stop race
//! (`LOKY_STOP_RACE_ROUNDS`, default 2000 rounds on each of two threads)
//! takes a few seconds.
//!
//! `LOKY_SOAK_TASKS` (default 100 000) is the number of tasks;
//! `LOKY_SOAK_SECS` (default 600) a wall-clock budget after which no more
//! tasks are submitted and what was submitted is checked.
//!
//! Checked: every future resolves within 60 s (a timeout is a hang), none is
//! lost, every value is right, every killer task fails with
//! `TerminatedWorker`, each death fails no other task (the one waiting
//! behind the killer in the same worker never started: it runs again
//! elsewhere), every `TerminatedWorker` names a killer task and SIGKILL, and
//! the parent leaks no file descriptors or threads across the respawns.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use loky::{Error, ExitStatus, Future, ProcessPoolExecutor};

mod support;
use support::count_dir;

/// A future not resolved after this long is a hang.
const HANG: Duration = Duration::from_secs(60);
/// Futures outstanding at most (keeps memory flat).
const WINDOW: usize = 64;
/// One task in this many kills its worker.
const KILL_ONE_IN: u64 = 100;

/// Pseudo-random 1 % of the indices (sometimes two in a row, so a killer can
/// also wait behind an earlier killer).
fn is_killer(x: u64) -> bool {
    // splitmix64's finalizer: well mixed, so killers also come in pairs.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % KILL_ONE_IN == 0
}

fn expected(x: u64) -> u64 {
    x.wrapping_mul(2_654_435_761)
}

fn task(x: u64) -> u64 {
    if is_killer(x) {
        // SAFETY: plain system calls; the worker is meant to die here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL to oneself is delivered before kill() returns; never
        // report a value from a task that should have died.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    expected(x)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Crashing workers dump no core (inherited by the workers spawned later).
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call on a valid struct; only lowers a limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    resolved: u64,
    ok: u64,
    killers: u64,
    killers_failed: u64,
    /// Killers whose error names themselves as the running task.
    killers_ran: u64,
    bystanders: u64,
    /// `task` field of every `TerminatedWorker` seen.
    blamed: Vec<u64>,
    /// Future id of every killer submitted.
    killer_ids: HashSet<u64>,
}

struct Pending {
    x: u64,
    fut: Future<u64>,
}

fn resolve(ex: &ProcessPoolExecutor, p: Pending, t: &mut Tally) {
    let killer = is_killer(p.x);
    let id = p.fut.id();
    match p.fut.result_timeout(HANG) {
        Ok(v) => {
            assert!(!killer, "killer task {} (x = {}) returned {v}", id, p.x);
            assert_eq!(v, expected(p.x), "wrong value for x = {}", p.x);
            t.ok += 1;
        }
        Err(Error::TerminatedWorker { pid, status, task }) => {
            assert!(
                matches!(
                    status,
                    ExitStatus::Signaled {
                        signal: libc::SIGKILL,
                        ..
                    }
                ),
                "task {id} (x = {}): worker {pid} died with {status}, not SIGKILL",
                p.x
            );
            t.blamed.push(task);
            if killer {
                t.killers_failed += 1;
                if task == id {
                    t.killers_ran += 1;
                }
            } else {
                assert_ne!(task, id, "bystander task {id} blamed for its own death");
                t.bystanders += 1;
            }
        }
        Err(Error::Timeout) => panic!(
            "HANG: task {id} (x = {}, killer = {killer}) unresolved after {HANG:?}\nstats: {:?}\n{}",
            p.x,
            ex.stats(),
            ex.debug_state()
        ),
        Err(e) => panic!("task {id} (x = {}, killer = {killer}): unexpected error {e}", p.x),
    }
    t.resolved += 1;
}

#[test]
#[ignore = "soak test; run with --ignored (see the file header)"]
fn soak_one_percent_of_tasks_kill_their_worker() {
    let tasks: u64 = env_or("LOKY_SOAK_TASKS", 100_000);
    let budget = Duration::from_secs(env_or("LOKY_SOAK_SECS", 600));
    no_core_dumps();
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .build()
        .expect("pool");
    // Warm: both workers up, so the baseline counts their fds and threads.
    let mut warm = Vec::new();
    let mut x_warm = u64::MAX;
    while warm.len() < 4 {
        x_warm -= 1;
        if !is_killer(x_warm) {
            warm.push((x_warm, ex.submit(task, x_warm).unwrap()));
        }
    }
    for (x, f) in warm {
        assert_eq!(f.result_timeout(HANG).unwrap(), expected(x));
    }
    let fds_before = count_dir("/proc/self/fd");
    let threads_before = count_dir("/proc/self/task");
    let rss_before = rss_kib();

    let start = Instant::now();
    let mut t = Tally::default();
    let mut window: VecDeque<Pending> = VecDeque::with_capacity(WINDOW);
    let mut submitted = 0u64;
    let mut stopped_early = false;
    let report_every = (tasks / 10).max(1);
    for x in 0..tasks {
        if start.elapsed() >= budget {
            stopped_early = true;
            break;
        }
        if window.len() == WINDOW {
            let p = window.pop_front().unwrap();
            resolve(&ex, p, &mut t);
        }
        let fut = ex
            .submit(task, x)
            .unwrap_or_else(|e| panic!("submit #{x} failed: {e}; stats {:?}", ex.stats()));
        if is_killer(x) {
            t.killers += 1;
            t.killer_ids.insert(fut.id());
        }
        window.push_back(Pending { x, fut });
        submitted += 1;
        if submitted % report_every == 0 {
            eprintln!(
                "soak: {submitted}/{tasks} submitted, {:.1} s, {:?}",
                start.elapsed().as_secs_f64(),
                ex.stats()
            );
        }
    }
    while let Some(p) = window.pop_front() {
        resolve(&ex, p, &mut t);
    }
    let elapsed = start.elapsed();

    // The pool healed: a task after all that still runs, on 2 live workers.
    let last = (0..).find(|x| !is_killer(*x)).unwrap();
    assert_eq!(
        ex.submit(task, last).unwrap().result_timeout(HANG).unwrap(),
        expected(last)
    );
    // The last killer's replacement may still be starting.
    let stats = support::wait_for_stats("every dead worker replaced", &ex, HANG, |s| {
        s.workers_alive == 2
    });
    let fds_after = count_dir("/proc/self/fd");
    let threads_after = count_dir("/proc/self/task");
    let rss_after = rss_kib();
    let rate = t.resolved as f64 / elapsed.as_secs_f64();
    eprintln!(
        "soak summary: tasks {} (of {tasks}{}), kills {} (killer tasks {}, of which ran {}), \
         bystanders {}, run again {}, ok {}, elapsed {:.2} s, {:.0} tasks/s, respawns {}, crashed {}, \
         workers alive {}, fds {fds_before}->{fds_after}, threads {threads_before}->{threads_after}, \
         rss {rss_before}->{rss_after} KiB",
        t.resolved,
        if stopped_early { ", stopped by LOKY_SOAK_SECS" } else { "" },
        stats.crashed,
        t.killers,
        t.killers_ran,
        t.bystanders,
        stats.rerun,
        t.ok,
        elapsed.as_secs_f64(),
        rate,
        stats.respawned,
        stats.crashed,
        stats.workers_alive,
    );

    assert_eq!(t.resolved, submitted, "futures lost");
    assert_eq!(
        t.ok + t.killers_failed + t.bystanders,
        submitted,
        "every future is a value or TerminatedWorker"
    );
    assert_eq!(
        t.killers_failed, t.killers,
        "every killer got TerminatedWorker"
    );
    assert_eq!(
        stats.crashed, t.killers_ran,
        "one worker death per killer that ran, and no other"
    );
    // Tasks (killers included) waiting behind a killer never started: they
    // run again on another worker instead of failing with it.
    if support::reruns_supported() {
        assert_eq!(
            (t.bystanders, t.killers_ran),
            (0, t.killers),
            "a death failed tasks other than the killer that ran"
        );
    }
    for task in &t.blamed {
        assert!(
            t.killer_ids.contains(task),
            "a TerminatedWorker names task {task}, which is not a killer"
        );
    }
    assert!(
        stats.respawned >= stats.crashed,
        "every dead worker replaced: {stats:?}"
    );
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors leak: {fds_before} before, {fds_after} after {} respawns",
        stats.respawned
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads leak: {threads_before} before, {threads_after} after {} respawns",
        stats.respawned
    );
}

/// Round trips one after the other, with callers that sleep at once (no
/// spinning), where a missed wake-up shows as a result left unread until
/// the manager's 100 ms nap ends.
#[test]
#[ignore = "stress test; run with --ignored (see the file header)"]
fn round_trips_never_wait_for_the_managers_nap() {
    // Busy cores make the race likely: the manager still counts as awake
    // (draining, housekeeping) when a worker publishes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let _stop_hogs = Guard(Some(move || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in hogs {
            let _ = h.join();
        }
    }));
    for prefetch in [true, false] {
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .spin(Duration::ZERO)
            .prefetch(prefetch)
            .build()
            .unwrap();
        let mut slow = Vec::new();
        for x in 0..50_000u64 {
            let start = Instant::now();
            let got = ex.submit(|x: u64| x + 1, x).unwrap().result_timeout(HANG);
            assert_eq!(got.unwrap(), x + 1);
            let took = start.elapsed();
            if took >= Duration::from_millis(90) {
                slow.push(took);
            }
        }
        eprintln!("prefetch {prefetch}: round trips over 90 ms: {slow:?}");
        // One may be the machine's doing (a descheduled thread); a missed
        // wake-up made about ten per run.
        assert!(slow.len() <= 1, "prefetch {prefetch}: {slow:?}");
    }
}

/// Runs its closure when dropped (also when the test fails).
struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn nap_us(us: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(us));
    us
}

fn byte_sum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Stops (kills, or lets a time limit fall on) tasks just as they end,
/// while another task waits behind each in its worker's ring: a stop that
/// comes too late to matter must not kill the worker after it has gone on
/// to the next task (which was never stopped, and would fail with
/// `TerminatedWorker`). Every fourth task behind is too large for the ring
/// (its argument travels in a spill buffer, which the worker takes off the
/// ring before it looks at the task). `LOKY_STOP_RACE_ROUNDS` (default
/// 2000) rounds per thread, two threads.
#[test]
#[ignore = "stress test; run with --ignored (see the file header)"]
fn a_stop_that_races_the_end_of_its_task_never_takes_the_next_one() {
    let rounds: u64 = env_or("LOKY_STOP_RACE_ROUNDS", 2000);
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let hurt = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for thread in 0..2u64 {
            let (ex, hurt) = (&ex, &hurt);
            s.spawn(move || {
                for round in 0..rounds {
                    // 0.2 to 1.2 ms, spread over the rounds.
                    let us = 200 + (round * 7919 + thread * 104_729) % 1000;
                    let by_limit = round % 2 == 1;
                    let victim = if by_limit {
                        ex.submit_with_timeout(nap_us, us, Duration::from_micros(us + 50))
                    } else {
                        ex.submit(nap_us, us)
                    }
                    .unwrap();
                    let len = if round % 4 == 0 { 600 << 10 } else { 16 };
                    let bytes = vec![(round % 251) as u8; len];
                    let expected = (round % 251) * len as u64;
                    let bystander = ex.submit(byte_sum, bytes).unwrap();
                    if !by_limit {
                        std::thread::sleep(Duration::from_micros(us));
                        victim.kill();
                    }
                    match victim.result_timeout(Duration::from_secs(60)) {
                        Ok(v) => assert_eq!(v, us),
                        Err(Error::TimeLimit | Error::Cancelled) => {}
                        Err(e) => panic!("round {round}: the stopped task: {e:?}"),
                    }
                    match bystander.result_timeout(Duration::from_secs(60)) {
                        Ok(v) => assert_eq!(v, expected),
                        Err(e) => {
                            hurt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            eprintln!("round {round} (thread {thread}): the task behind: {e:?}");
                        }
                    }
                }
            });
        }
    });
    let stats = ex.stats();
    eprintln!("{} rounds x 2 threads: {stats:?}", rounds);
    assert_eq!(
        hurt.into_inner(),
        0,
        "tasks never stopped failed; {stats:?}"
    );
}

fn byte_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// Large arguments (each sent with a descriptor over the worker's socket)
/// while another thread SIGKILLs the workers every 10 ms: a task that was
/// handed to a worker that had just died runs elsewhere; submit never
/// fails and no task ends with a transport error, only with its value or
/// `TerminatedWorker`. `LOKY_SOAK_SECS` bounds it (default 8 s here).
#[test]
#[ignore = "stress test; run with --ignored (see the file header)"]
fn large_arguments_outlive_workers_killed_from_outside() {
    let secs: u64 = env_or("LOKY_SOAK_SECS", 8).min(8);
    let ex = ProcessPoolExecutor::new(3).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut ok, mut terminated) = (0u64, 0u64);
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut kills = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let pids = ex.worker_pids();
                if let Some(&pid) = pids.get(kills as usize % pids.len().max(1)) {
                    // SAFETY: a plain system call on a worker of this pool.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    kills += 1;
                }
            }
            kills
        });
        // Stops the killer however this thread leaves (a failed check
        // would otherwise leave the scope waiting for it for ever).
        let stop_killer = Guard(Some(|| {
            stop.store(true, std::sync::atomic::Ordering::Relaxed)
        }));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let futures: Vec<_> = (0..4)
                .map(|_| ex.submit(byte_len, vec![0u8; 2 << 20]).unwrap())
                .collect();
            for f in futures {
                match f.result_timeout(Duration::from_secs(60)) {
                    Ok(len) => {
                        assert_eq!(len, 2 << 20);
                        ok += 1;
                    }
                    Err(Error::TerminatedWorker { .. }) => terminated += 1,
                    Err(e) => panic!("a task of a killed pool: {e:?}"),
                }
            }
        }
        drop(stop_killer);
        killer.join().unwrap()
    });
    eprintln!(
        "{kills} kills: {ok} ok, {terminated} TerminatedWorker; {:?}",
        ex.stats()
    );
    assert!(ok > 0 && kills > 0);
}
