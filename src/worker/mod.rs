//! The worker side: bootstrap before `main`, then the task loop.

pub(crate) mod bootstrap;

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use loky_ipc::{Receiver, Region, Sender, Start};
use rkyv::util::AlignedVec;

use crate::pool::{binary_tag, WorkerSpec, REGION_FD, SOCKET_FD};
use crate::protocol::{
    read_header, ResultHeader, TaskHeader, RESULT_HEADER, STATUS_OK, TAG_EXIT, TAG_INIT, TAG_READY,
    TAG_RESULT, TAG_TASK,
};

/// Exit code: the initializer panicked or failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 77;
/// Exit code: the region's tag did not match (a different binary).
pub(crate) const EXIT_BAD_BINARY: i32 = 78;
/// Exit code: the worker could not set itself up.
pub(crate) const EXIT_BOOTSTRAP: i32 = 79;
/// Exit code: a task kept a shared-array handle past its end.
pub(crate) const EXIT_KEPT_HANDLE: i32 = 80;
/// Exit code: the pool, killing the worker to stop its task, held the next
/// one ([`stop_before_held_task`]).
pub(crate) const EXIT_HELD: i32 = 81;

/// What a worker's end says, where loky knows: its own exit codes, and the
/// signal that out-of-memory kills send.
pub(crate) fn exit_hint(status: loky_ipc::ExitStatus) -> Option<&'static str> {
    use loky_ipc::ExitStatus::{Exited, Signaled};
    Some(match status {
        Exited(EXIT_INIT_FAILED) => "the initializer panicked",
        Exited(EXIT_BAD_BINARY) => {
            "the worker is not the same binary as the parent (was it rebuilt while running?)"
        }
        Exited(EXIT_BOOTSTRAP) => {
            "the worker could not attach to the pool, or lost its link to it (a corrupt \
             ring, or a task closed the worker's descriptors); its standard error says which"
        }
        Exited(EXIT_KEPT_HANDLE) => "a task kept a shared array handle past its end",
        Exited(EXIT_HELD) => {
            "the pool stopping a task on it (kill, a time limit): it exited before its next task"
        }
        Signaled { signal: 9, .. } => {
            "SIGKILL: the pool stopping a task on it (kill, a time limit), \
             the kernel's OOM killer, or another process"
        }
        Signaled { signal: 6, .. } => {
            "SIGABRT: std::process::abort, a panic that could not unwind, or an \
             allocation that failed (past hard_memory_limit, say); the worker's \
             standard error says which"
        }
        Signaled { signal: 11 | 7, .. } => {
            "a memory error in unsafe or foreign code, or a stack overflow \
             (a worker has no overflow handler: run deep recursion on a thread \
             with a larger stack)"
        }
        _ => return None,
    })
}

/// Ends this worker at once, at task `task`, which the parent held
/// ([`loky_ipc::Claim::hold`]): the parent is killing the worker to stop
/// the task it ran, which ended meanwhile, and hands `task`, left unread in
/// the ring, to another worker. Nothing is released or sent, as if the kill
/// had come first.
fn stop_before_held_task(task: u64) -> ! {
    tracing::debug!(
        task,
        "the pool is ending this worker; exiting before its next task"
    );
    // SAFETY: `_exit` only ends the process: no destructor or exit handler
    // runs, so nothing in shared memory changes (the parent reads the rings
    // as a killed worker would have left them).
    unsafe { libc::_exit(EXIT_HELD) }
}

/// [`exit_hint`] as a suffix for an error message ("" if none).
pub(crate) fn exit_hint_suffix(status: &loky_ipc::ExitStatus) -> String {
    exit_hint(*status).map_or_else(String::new, |hint| format!(" ({hint})"))
}

/// How long a sleeping worker waits before checking its parent is alive
/// (the parent-death signal normally kills it first).
const PARENT_CHECK: Duration = Duration::from_millis(500);

fn fatal(code: i32, message: std::fmt::Arguments<'_>) -> i32 {
    // The only channel a worker that cannot attach has is its stderr.
    let _ = writeln!(
        std::io::stderr(),
        "loky worker {}: {message}",
        std::process::id()
    );
    code
}

/// The worker's life: attach, initialise, serve tasks until told to exit.
pub(crate) fn run(raw_spec: &str) -> i32 {
    let Some(spec) = WorkerSpec::decode(raw_spec) else {
        return fatal(
            EXIT_BOOTSTRAP,
            format_args!("malformed worker spec {raw_spec:?}"),
        );
    };
    // SAFETY: `signal` with SIG_IGN is async-signal-safe and affects only
    // this process; a worker, like a Rust `main`, ignores SIGPIPE. (SIGINT
    // is ignored from before exec: see `Pool::launch`.)
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if spec.data_limit == 0 && !spec.report_rss {
        keep_freed_memory();
    } else {
        // Memory limits measure private memory (RLIMIT_DATA, the private
        // resident size); shared-memory blocks would escape them.
        loky_ipc::shm_alloc::set_enabled(false);
    }
    // Freed shared-memory blocks (a large argument the task consumed) are
    // unmapped after the result is sent, not before.
    loky_ipc::shm_alloc::defer_release(true);
    // Pinning (`spec.cpu`) was applied by the parent before exec.
    loky_ipc::bulk::set_max_threads(spec.copy_threads as usize);
    if spec.data_limit > 0 {
        let limit = rustix::process::Rlimit {
            current: Some(spec.data_limit),
            maximum: Some(spec.data_limit),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Data, limit) {
            return fatal(EXIT_BOOTSTRAP, format_args!("setrlimit(RLIMIT_DATA): {e}"));
        }
    }
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(spec.parent) {
        return 0; // the parent died before we got here
    }
    // SAFETY: the parent placed the region memfd and our socket end at these
    // numbers before exec; nothing else in this process owns them.
    let (region_fd, socket) = unsafe {
        (
            OwnedFd::from_raw_fd(REGION_FD),
            OwnedFd::from_raw_fd(SOCKET_FD),
        )
    };
    // Programs a task starts must not inherit the region (they could write
    // into slots the parent re-initialises for later workers) nor our
    // socket end (the parent would not see it close when we die).
    for fd in [&region_fd, &socket] {
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }
    let region = match Region::attach(region_fd, binary_tag()) {
        Ok(r) => r,
        Err(loky_ipc::Error::BadHeader(why)) => {
            return fatal(
                EXIT_BAD_BINARY,
                format_args!("not the same binary as the parent ({why}); refusing to run"),
            )
        }
        Err(e) => {
            return fatal(
                EXIT_BOOTSTRAP,
                format_args!("cannot attach the shared region: {e}"),
            )
        }
    };
    if spec.slot >= region.config().slots || region.slot(spec.slot).generation() != spec.generation
    {
        return fatal(
            EXIT_BOOTSTRAP,
            format_args!("slot {} is not ours", spec.slot),
        );
    }
    let socket2 = match socket.try_clone() {
        Ok(s) => s,
        Err(e) => return fatal(EXIT_BOOTSTRAP, format_args!("dup: {e}")),
    };
    // The region lives as long as the process: the lifeline below must stay
    // mapped until this thread dies.
    let region: &'static Region = Box::leak(Box::new(region));
    // A task that scribbles over memory must not reach the messages the
    // parent reads back after this process died (to run them elsewhere),
    // nor another worker's rings.
    // SAFETY: `spec.slot` is this worker's slot (checked above), and no
    // thread of this process uses another slot of `region` from here on:
    // the worker makes only the `down` consumer and `up` producer of its
    // own slot below, and uses its header (pid, bell, claim, lifeline);
    // of the other slots it only reads the `spinning` and `running` flags
    // (`Region::activity`, to decide whether to spin). Nothing else gets
    // the region (it is leaked into a private `&'static`, and nested pools
    // in tasks create their own).
    if let Err(e) = unsafe { region.protect_for_slot(spec.slot) } {
        return fatal(EXIT_BOOTSTRAP, format_args!("cannot guard the rings: {e}"));
    }
    let slot = region.slot(spec.slot);
    slot.set_pid(std::process::id());
    // From here on the parent learns of this thread's death the moment it
    // starts, not once the kernel has torn the process down.
    if let Err(e) = slot.lifeline().hold() {
        tracing::debug!(error = %e, "no lifeline; the parent relies on the pidfd");
    }
    // SAFETY: the parent initialised this slot for us (generation checked);
    // the worker is the only consumer of `down` and producer of `up`.
    let (rx, tx) = unsafe {
        (
            // Its messages may be taken back should this process die.
            Receiver::new(slot.down_consumer(), socket).guarded(),
            // A result given away is the parent's alone once announced.
            Sender::new(slot.up_producer(), socket2).forgetting_donated(),
        )
    };
    crate::transport::install_panic_hook();
    // Shared-array handles in arguments map the arena at `ARENA_FD`.
    crate::shared::set_worker(spec.grant_key);
    let mut w = WorkerLoop {
        region,
        spec,
        rx,
        tx,
        out: AlignedVec::with_capacity(4096),
        spilled: None,
    };
    w.serve()
}

struct WorkerLoop<'r> {
    region: &'r Region,
    spec: WorkerSpec,
    rx: Receiver<'r>,
    tx: Sender<'r>,
    out: AlignedVec,
    /// A large result written straight into shared memory (then `out`
    /// holds only its header), and its length.
    spilled: Option<(loky_ipc::spill::Buffer, usize)>,
}

impl WorkerLoop<'_> {
    fn serve(&mut self) -> i32 {
        // Up from the start: its first messages (the initializer, or tasks
        // queued before it was ready) may be waiting already, and running
        // them must count as a busy core.
        self.region
            .slot(self.spec.slot)
            .running()
            .store(1, std::sync::atomic::Ordering::Relaxed);
        if !self.spec.has_init {
            self.send_header(TAG_READY, 0, STATUS_OK);
        }
        loop {
            if !self.wait_for_message() {
                return 0; // parent gone
            }
            let (tag, header) = match self.rx.peek() {
                Ok(Some(m)) => (m.tag, read_header::<TaskHeader>(m.bytes).map(|h| h.0)),
                Ok(None) => continue,
                Err(e) => return fatal(EXIT_BOOTSTRAP, format_args!("corrupt task ring: {e}")),
            };
            match (tag, header) {
                (TAG_EXIT, _) => return 0,
                (TAG_TASK, Some(h)) => {
                    match self.region.slot(self.spec.slot).claim().start(h.task_id) {
                        Start::Run => {
                            self.run_one(h);
                            self.send(TAG_RESULT);
                            // What the task freed of shared memory goes now,
                            // its result on its way.
                            loky_ipc::shm_alloc::release_deferred();
                        }
                        Start::Skip => {
                            if let Err(code) = self.skip(h.task_id) {
                                return code;
                            }
                        }
                        Start::Hold => stop_before_held_task(h.task_id),
                    }
                }
                (TAG_INIT, Some(h)) => {
                    let status = self.run_one(h);
                    if status != STATUS_OK {
                        let _ = self.rx.pop();
                        // Its report would be the task's result; the parent
                        // only learns that the worker exited, so say it here.
                        let report = match self.spilled {
                            None => {
                                crate::executor::decode_failure(status, &self.out[RESULT_HEADER..])
                                    .to_string()
                            }
                            Some(_) => format!("status {status}"),
                        };
                        return fatal(
                            EXIT_INIT_FAILED,
                            format_args!("initializer failed: {report}"),
                        );
                    }
                    self.send_header(TAG_READY, 0, STATUS_OK);
                }
                _ => return fatal(EXIT_BOOTSTRAP, format_args!("unexpected message tag {tag}")),
            }
        }
    }

    /// Answers the task at the head of the ring, which the parent withdrew
    /// before it started (its future failed already), without running it:
    /// an empty result, so that the parent's books move on.
    /// Fails (with the exit code) if the message cannot be released: the
    /// withdrawal is consumed, so seeing the message again would run it.
    fn skip(&mut self, task_id: u64) -> Result<(), i32> {
        if let Err(e) = self.rx.pop() {
            return Err(fatal(
                EXIT_BOOTSTRAP,
                format_args!("corrupt task ring: {e}"),
            ));
        }
        self.send_header(TAG_RESULT, task_id, crate::protocol::STATUS_SKIPPED);
        Ok(())
    }

    /// Runs the task at the head of the ring; leaves the encoded outcome
    /// (its header first) in `self.out`, or a large one in `self.spilled`,
    /// and releases the message.
    fn run_one(&mut self, h: TaskHeader) -> u32 {
        let start = Instant::now();
        crate::shared::begin_task(h.task_id);
        self.out.clear();
        self.out.extend_from_slice(&[0u8; RESULT_HEADER]);
        let status = match self.rx.peek() {
            Ok(Some(m)) => {
                let arg = &m.bytes[crate::protocol::TASK_HEADER..];
                // SAFETY: the offset was computed by `transport::offset_of`
                // in the parent, which runs this same binary (the region tag
                // checked at attach proves it).
                let trampoline = unsafe { crate::transport::resolve(h.trampoline) };
                // A large result goes straight into a spill buffer.
                // A large argument sent in its own memory may be kept
                // rather than copied (`donation`).
                let (status, spilled) = crate::donation::receiving(m.donated, m.bytes, || {
                    crate::codec::direct_encode(&mut self.out, |out| trampoline(arg, out))
                });
                self.spilled = spilled;
                // Shared-array handles this task received expire with it. If
                // one is still alive (leaked, or held by a thread the task
                // started), the parent must not reuse its memory: exit, so
                // the task fails and its arrays are released only once this
                // process is gone.
                let kept = crate::shared::task_finished();
                if kept > 0 {
                    std::process::exit(fatal(
                        EXIT_KEPT_HANDLE,
                        format_args!(
                            "task {} kept {kept} shared array handle(s) past its end; \
                             exiting so that their memory is not reused under them",
                            h.task_id
                        ),
                    ));
                }
                status
            }
            _ => crate::protocol::STATUS_DECODE_ARG,
        };
        let _ = self.rx.pop();
        let rss_kib = if self.spec.report_rss { rss_kib() } else { 0 };
        let header = ResultHeader {
            task_id: h.task_id,
            elapsed_ns: start.elapsed().as_nanos() as u64,
            status,
            rss_kib,
            _reserved: 0,
        };
        self.out[..RESULT_HEADER].copy_from_slice(bytemuck::bytes_of(&header));
        if let Some((spill, _)) = &mut self.spilled {
            spill.as_mut_slice()[..RESULT_HEADER].copy_from_slice(bytemuck::bytes_of(&header));
        }
        status
    }

    /// Sends a message that is a result header alone (a worker ready, a
    /// skipped task), waiting for room.
    fn send_header(&mut self, tag: u32, task_id: u64, status: u32) {
        self.spilled = None;
        self.out.clear();
        let header = ResultHeader {
            task_id,
            elapsed_ns: 0,
            status,
            rss_kib: 0,
            _reserved: 0,
        };
        self.out.extend_from_slice(bytemuck::bytes_of(&header));
        self.send(tag);
    }

    /// Sends `self.out`, or the large result `run_one` left in a spill
    /// buffer, waiting for room.
    fn send(&mut self, tag: u32) {
        match self.spilled.take() {
            Some((spill, len)) => match loky_ipc::spill::SpilledMessage::new(spill, len) {
                // The channel hands the buffer over, no copy.
                Ok(message) => self.push(|tx| tx.try_send_spilled(tag, &message)),
                Err(e) => {
                    std::process::exit(fatal(
                        EXIT_BOOTSTRAP,
                        format_args!("cannot send a result: {e}"),
                    ));
                }
            },
            None => {
                let out = std::mem::take(&mut self.out);
                self.push(|tx| tx.try_send(tag, &out));
                self.out = out;
            }
        }
        self.region.parent_bell().ring();
        if self.out.capacity() > (64 << 20) {
            self.out = AlignedVec::with_capacity(4096);
        }
    }

    /// Sends one message with `try_send` (which says whether it was sent),
    /// waiting for room.
    fn push(&mut self, mut try_send: impl FnMut(&mut Sender<'_>) -> loky_ipc::Result<bool>) {
        let mut pause = Duration::from_micros(20);
        loop {
            match try_send(&mut self.tx) {
                Ok(true) => break,
                Ok(false) => {
                    // The parent is behind; it drains continuously, so back
                    // off gently rather than burn a core.
                    self.region.parent_bell().ring();
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                    if !self.parent_alive() {
                        std::process::exit(0);
                    }
                }
                Err(e) => {
                    std::process::exit(fatal(
                        EXIT_BOOTSTRAP,
                        format_args!("cannot send a result: {e}"),
                    ));
                }
            }
        }
    }

    fn parent_alive(&self) -> bool {
        rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32)
            == Some(self.spec.parent)
    }

    /// Waits for the next message (see [`WorkerLoop::idle_until_message`]).
    /// False if the parent died.
    fn wait_for_message(&mut self) -> bool {
        if self.rx.has_message() {
            return true;
        }
        // Down while idle: other workers and the parent read it to decide
        // whether a core is free to spin on.
        let running = self.region.slot(self.spec.slot).running();
        running.store(0, std::sync::atomic::Ordering::Relaxed);
        let found = self.idle_until_message();
        running.store(1, std::sync::atomic::Ordering::Relaxed);
        found
    }

    /// Spins briefly if a core is free for it
    /// ([`worker_may_spin`](crate::spin_policy::worker_may_spin)), then
    /// sleeps on the slot's doorbell. Called with this worker's flags down,
    /// so the region's counts are of the others.
    fn idle_until_message(&mut self) -> bool {
        let slot = self.region.slot(self.spec.slot);
        if crate::spin_policy::worker_may_spin(self.region.activity(), self.spec.ncpu) {
            slot.spinning()
                .store(1, std::sync::atomic::Ordering::Relaxed);
            let rx = &mut self.rx;
            let found = loky_ipc::spin_until(self.spec.spin, || rx.has_message());
            slot.spinning()
                .store(0, std::sync::atomic::Ordering::Relaxed);
            if found {
                return true;
            }
        }
        let bell = slot.bell();
        let idle_since = Instant::now();
        let mut released = false;
        loop {
            let token = bell.announce_sleep();
            if self.rx.has_message() {
                token.cancel();
                return true;
            }
            token.wait(Some(PARENT_CHECK));
            if self.rx.has_message() {
                return true;
            }
            if !self.parent_alive() {
                return false;
            }
            if !released && idle_since.elapsed() >= self.spec.keep_freed {
                released = true;
                release_heap();
                let bytes = loky_ipc::spill::trim(Duration::ZERO);
                tracing::trace!(spill_bytes = bytes, "idle: memory given back");
            }
        }
    }
}

/// Makes glibc malloc keep freed memory for reuse, and serve large blocks
/// from the heap instead of a fresh `mmap` each (its mmap threshold cannot
/// go above 32 MiB). A task that takes or returns a 256 MiB `Vec` then
/// reuses the pages of the previous one: without this, every such
/// allocation is a fresh mapping whose page faults cost several times the
/// copy into it. The trade-off: a worker holds on to its peak heap while
/// busy, and gives it back after
/// [`keep_freed_memory`](crate::ProcessPoolExecutorBuilder::keep_freed_memory)
/// without work. Not applied
/// when the pool has a `memory_limit` or a `hard_memory_limit`: memory the
/// worker keeps would count against them (and fragmentation of a heap that
/// is never trimmed could reach a hard limit sooner), so such workers free
/// as glibc does by default. Workers whose binary installs another global
/// allocator are unaffected (only C code calling `malloc` sees the change).
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes glibc malloc's tunables, under its own
    // lock; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Gives freed heap memory back to the system (see [`keep_freed_memory`]).
fn release_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases memory glibc malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Private resident memory in KiB (resident minus shared pages, from
/// `/proc/self/statm`): shared arrays a task reads are not the worker's
/// growth.
fn rss_kib() -> u32 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let mut fields = s
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let resident = fields.next().unwrap_or(0);
    let shared = fields.next().unwrap_or(0);
    let pages = resident.saturating_sub(shared);
    let page = rustix::param::page_size() as u64;
    (pages * page / 1024).min(u64::from(u32::MAX)) as u32
}
