//! Starting a worker: the environment it is recognised by, the descriptors
//! it inherits, and the parent's handles to its slot.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loky_ipc::spawn::Spawn;
use loky_ipc::{fdpass, Receiver, Sender};

use super::{Pool, Worker};
use crate::error::Result;

/// The variable that turns a re-executed binary into a worker.
pub(crate) const ENV_WORKER: &str = "LOKY_WORKER_SPEC";
/// The region's memfd in the worker.
pub(crate) const REGION_FD: i32 = 3;
/// The worker's end of the descriptor socket.
pub(crate) const SOCKET_FD: i32 = 4;
/// The shared arena's memfd in the worker.
pub(crate) const ARENA_FD: i32 = 5;

/// What a worker learns from its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerSpec {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) parent: u32,
    pub(crate) ncpu: u32,
    pub(crate) spin: Duration,
    pub(crate) has_init: bool,
    pub(crate) report_rss: bool,
    /// `RLIMIT_DATA` for the worker in bytes (0: unlimited).
    pub(crate) data_limit: u64,
    /// The CPU to pin to, plus one (0: not pinned).
    pub(crate) cpu: u64,
    /// The most threads one large copy may use in the worker
    /// (`loky_ipc::bulk::set_max_threads`).
    pub(crate) copy_threads: u32,
    /// The pool's key for the grants of shared-array handles.
    pub(crate) grant_key: crate::shared::GrantKey,
    /// How long the worker keeps freed memory once idle.
    pub(crate) keep_freed: Duration,
}

impl WorkerSpec {
    pub(crate) fn encode(&self) -> String {
        format!(
            "v4:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}",
            self.slot,
            self.generation,
            self.parent,
            self.ncpu,
            self.spin.as_micros(),
            u8::from(self.has_init),
            u8::from(self.report_rss),
            self.data_limit,
            self.cpu,
            self.copy_threads,
            self.grant_key[0],
            self.grant_key[1],
            u64::try_from(self.keep_freed.as_micros()).unwrap_or(u64::MAX)
        )
    }

    pub(crate) fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        if it.next()? != "v4" {
            return None;
        }
        let mut num = || it.next()?.parse::<u64>().ok();
        let spec = Self {
            slot: u32::try_from(num()?).ok()?,
            generation: u32::try_from(num()?).ok()?,
            parent: u32::try_from(num()?).ok()?,
            ncpu: u32::try_from(num()?).ok()?,
            spin: Duration::from_micros(num()?),
            has_init: num()? != 0,
            report_rss: num()? != 0,
            data_limit: num()?,
            cpu: num()?,
            copy_threads: u32::try_from(num()?).ok()?,
            grant_key: [num()?, num()?],
            keep_freed: Duration::from_micros(num()?),
        };
        if it.next().is_some() {
            return None;
        }
        Some(spec)
    }
}

impl Pool {
    /// Spawns a worker into the (free) slot `i`. Runs on the watchdog
    /// thread, which lives as long as the pool, because the workers'
    /// parent-death signal is tied to the thread that spawned them.
    pub(super) fn launch(self: &Arc<Self>, i: usize) -> Result<()> {
        // Keep the worker entry point linked into every binary that spawns.
        std::hint::black_box(&crate::worker::bootstrap::ENTRY);
        let generation = {
            let mut st = self.state();
            st.generations[i] = st.generations[i].wrapping_add(1);
            st.generations[i]
        };
        let slot = self.region.slot(i as u32);
        // SAFETY: slot `i` is free: its previous worker (if any) was reaped
        // by the watchdog, which also dropped the parent's receiver for it
        // (and the sender went with the `Worker`).
        unsafe { self.region.init_slot(i as u32, generation) };
        let (parent_sock, child_sock) = fdpass::socket_pair()?;
        let spec = WorkerSpec {
            slot: i as u32,
            generation,
            parent: std::process::id(),
            ncpu: self.ncpu,
            spin: self.config.spin,
            has_init: self.config.initializer.is_some(),
            report_rss: self.config.memory_limit.is_some(),
            data_limit: self.config.hard_memory_limit.unwrap_or(0),
            cpu: self
                .cpu_plan
                .as_ref()
                .map_or(0, |plan| plan[i % plan.len()] as u64 + 1),
            copy_threads: copy_threads(self.ncpu as usize, self.max_workers()),
            grant_key: self.grant_key,
            keep_freed: self.config.keep_freed,
        };
        let spec_cpu = (spec.cpu > 0)
            .then(|| (spec.cpu - 1) as usize)
            .filter(|&cpu| {
                // Past what a spawn can pin to (1024 CPUs) the worker runs
                // unpinned rather than not at all.
                let fits = cpu < loky_ipc::spawn::MAX_CPUS;
                if !fits {
                    tracing::warn!(
                        cpu,
                        "CPU number too large to pin to; the worker runs unpinned"
                    );
                }
                fits
            });
        let spec = spec.encode();
        let env = self
            .worker_env
            .iter()
            .map(|(k, v)| (k.as_encoded_bytes(), v.as_encoded_bytes()))
            .chain(std::iter::once((ENV_WORKER.as_bytes(), spec.as_bytes())));
        // Everything that can fail is done before the worker exists: an
        // error after the spawn would leave a running child that the pool
        // does not know, on a slot it would hand to the next worker.
        let sock2: OwnedFd = parent_sock.try_clone().map_err(|e| loky_ipc::Error::Os {
            op: "dup",
            source: e,
        })?;
        // The parent's ends are attached now, before the worker runs: they
        // start from the counters `init_slot` just wrote, which the worker
        // could otherwise have changed first.
        // SAFETY: the region lives in an `Arc` held by the pool, and the
        // pool drops every Sender/Receiver (in `Worker` and `receivers`)
        // before its `region` field, so extending the borrow to 'static
        // never outlives the mapping. The slot was just initialised and the
        // parent is its only producer of `down` and consumer of `up`.
        let (mut sender, receiver, bell) = unsafe {
            let region: &'static loky_ipc::Region = &*Arc::as_ptr(&self.region);
            let slot = region.slot(i as u32);
            (
                Sender::new(slot.down_producer(), sock2),
                Receiver::new(slot.up_consumer(), parent_sock),
                slot.bell(),
            )
        };
        let _ = slot;
        // The initializer's argument waits in the ring for the worker.
        if let Some(init) = &self.config.initializer {
            if !sender.try_send(crate::protocol::TAG_INIT, init)? {
                return Err(crate::Error::InvalidConfig(
                    "initializer argument does not fit".into(),
                ));
            }
        }
        let pidfd = Spawn::new(Path::new("/proc/self/exe"), &worker_arg0())?
            .env(env)?
            .fd(self.region.fd(), REGION_FD)?
            .fd(child_sock.as_fd(), SOCKET_FD)?
            .fd(self.arena.fd(), ARENA_FD)?
            .death_signal(libc::SIGKILL)
            // Ctrl-C in a terminal signals the whole foreground process
            // group, workers included: what an interrupt means (stop at
            // once, or finish the running tasks) is for the parent to
            // decide, and a parent that dies of it takes its workers along
            // (parent-death signal, lifelines). Ignored from before exec:
            // one arriving while the worker starts must not kill it (three
            // such deaths in a row would break the pool).
            .ignore_signal(libc::SIGINT);
        let pidfd = match spec_cpu {
            Some(cpu) => pidfd.cpu(cpu),
            None => pidfd,
        }
        .spawn()?;
        drop(child_sock);
        let pid = pidfd.pid();
        tracing::debug!(pid, slot = i, generation, "worker spawned");
        // Opened now: the pid of an unreaped child cannot be reused.
        let probe = match loky_ipc::lifeline::ExitProbe::open(pid) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(pid, error = %e, "no exit probe; deaths are reported at reaping");
                None
            }
        };
        let mut worker = Worker {
            pid,
            pidfd: Arc::new(pidfd),
            sender,
            bell,
            in_flight: Default::default(),
            ready: false,
            exiting: false,
            exit_owed: false,
            kill_reason: None,
            task_kill: None,
            withdrawn: None,
            last_ran: 0,
            tasks_done: 0,
            rss_baseline: None,
            idle_since: Instant::now(),
            probe,
            watch_lifeline: true,
            dying: false,
            died: None,
            reaped: false,
        };
        if self.config.initializer.is_some() {
            worker.wake();
        }
        {
            let mut st = self.state();
            // The pool shrank while this worker started (`resize` counts
            // only the workers it sees): it leaves again at once rather than
            // keep the pool above its size.
            if st.staying() >= st.max_workers {
                tracing::debug!(
                    pid,
                    slot = i,
                    "the pool shrank while this worker started; it exits"
                );
                worker.exiting = true;
                worker.send_exit();
            }
            st.workers[i] = Some(worker);
            if std::mem::replace(&mut st.had_worker[i], true) {
                // The slot had a worker before: this one replaces it.
                // Counted here, when it exists, not when the other died
                // (a pool closing in between starts no replacement), and
                // not for a slot whose first start failed.
                st.stats.respawned += 1;
            }
            if st.killing {
                // Started while a shutdown killed the workers: killed too
                // (its initializer may take long, or for ever).
                if let Some(w) = st.workers[i].as_mut() {
                    w.kill_reason
                        .get_or_insert(crate::error::Error::ShutdownExecutor);
                    let _ = w.pidfd.kill(rustix::process::Signal::KILL);
                }
            } else if st.shutdown {
                // Started while the pool was shutting down (queued work
                // needed it, or a race): it exits once idle like the others.
                st.exit_idle_workers();
            }
        }
        // Only now may the worker's first message (READY) be drained: it
        // must find the worker in `state`.
        self.set_receiver(i, Some(receiver));
        self.region.parent_bell().wake_all();
        Ok(())
    }
}

/// The workers' environment: the parent's at pool creation, the builder's
/// `env` entries, and the nesting depth (the spec is added per worker).
pub(crate) fn worker_env(config: &super::Config) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != ENV_WORKER && k != super::ENV_DEPTH)
        .collect();
    for (k, v) in &config.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env.push((super::ENV_DEPTH.into(), super::child_depth().into()));
    env
}

/// Room left in [`check_env_size`]'s budget for what a worker's `execve`
/// gets besides the environment checked: its program path, its arguments
/// and the per-worker variables (a few hundred bytes in all).
const EXEC_MARGIN: usize = 4096;

/// An [`Error::InvalidConfig`] where `execve` would refuse the workers'
/// environment `env` with `E2BIG` (every worker would then fail to start):
/// one `NAME=value` longer than the kernel takes for one string
/// (`MAX_ARG_STRLEN`, 32 pages), or the whole more than its limit for
/// arguments and environment together (a quarter of the stack limit,
/// within 32 pages and 6 MiB). Names only in the message: a value may be
/// a secret, and errors get logged.
pub(crate) fn check_env_size(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let page = rustix::param::page_size();
    let max_one = 32 * page;
    // `NAME=value` and its NUL.
    let string = |k: &std::ffi::OsString, v: &std::ffi::OsString| {
        k.as_bytes().len() + v.as_bytes().len() + 2
    };
    if let Some((k, v)) = env.iter().find(|(k, v)| string(k, v) > max_one) {
        return Err(crate::Error::InvalidConfig(format!(
            "the workers' environment variable {k:?} is {} bytes long, more than the {max_one} \
             bytes the kernel passes for one variable (NAME=value) to a new process; \
             pass large data in a task's argument or a file instead",
            string(k, v) - 1
        )));
    }
    let stack = rustix::process::getrlimit(rustix::process::Resource::Stack)
        .current
        .map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
    let limit = (stack / 4).clamp(max_one, 6 << 20);
    let pointers = (env.len() + 4) * std::mem::size_of::<usize>();
    let total = env.iter().map(|(k, v)| string(k, v)).sum::<usize>() + pointers;
    if total.saturating_add(EXEC_MARGIN) > limit {
        let mut largest: Vec<_> = env.iter().collect();
        largest.sort_by_key(|(k, v)| std::cmp::Reverse(string(k, v)));
        let names: Vec<_> = largest.iter().take(3).map(|(k, _)| k).collect();
        return Err(crate::Error::InvalidConfig(format!(
            "the workers' environment ({} variables, {total} bytes: the parent's and the \
             builder's env entries) is more than the {limit} bytes the kernel passes to a new \
             process (a quarter of the stack limit, ulimit -s); the largest: {names:?}",
            env.len()
        )));
    }
    Ok(())
}

fn worker_arg0() -> String {
    let exe = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = Path::new(&exe)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{base} [loky worker]")
}

/// The most threads a worker's large copies use: its share of the CPUs,
/// but at least two (a copy is short next to most tasks, and a pool rarely
/// has every worker copying at once) and at most `bulk::MAX_THREADS`.
fn copy_threads(ncpu: usize, workers: usize) -> u32 {
    let share = ncpu / workers.max(1);
    share.clamp(2, loky_ipc::bulk::MAX_THREADS) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let spec = WorkerSpec {
            slot: 3,
            generation: 9,
            parent: 1234,
            ncpu: 2,
            spin: Duration::from_micros(50),
            has_init: true,
            report_rss: false,
            data_limit: 1 << 30,
            cpu: 3,
            copy_threads: 2,
            grant_key: [u64::MAX, 7],
            keep_freed: Duration::from_secs(1),
        };
        assert_eq!(WorkerSpec::decode(&spec.encode()), Some(spec));
        // Never (`Duration::MAX`) travels as the longest time it can.
        let never = WorkerSpec {
            keep_freed: Duration::MAX,
            ..spec
        };
        let back = WorkerSpec::decode(&never.encode()).expect("decodes");
        assert!(back.keep_freed > Duration::from_secs(1 << 40));
        assert_eq!(WorkerSpec::decode("v1:1:2:3:4:5:6:7:8:9"), None);
        assert_eq!(WorkerSpec::decode("v2:1:2:3:4:5:6:7:8:9:10"), None);
        assert_eq!(WorkerSpec::decode("v3:1:2"), None);
        assert_eq!(WorkerSpec::decode("v4:1:2"), None);
        assert_eq!(WorkerSpec::decode(&format!("{}:1", spec.encode())), None);
    }

    #[test]
    fn workers_copy_with_their_share_of_the_cpus() {
        assert_eq!(copy_threads(2, 1), 2);
        assert_eq!(copy_threads(2, 2), 2, "one helper even on a full machine");
        assert_eq!(copy_threads(16, 16), 2);
        assert_eq!(copy_threads(16, 4), 4);
        assert_eq!(copy_threads(64, 2) as usize, loky_ipc::bulk::MAX_THREADS);
        assert_eq!(copy_threads(1, 8), 2);
    }
}
