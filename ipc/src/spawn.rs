//! Spawning a worker: `clone(CLONE_VM | CLONE_VFORK)` + `execve` (the way
//! `posix_spawn` forks), never a fork without exec.
//!
//! The spawning thread blocks every signal around the `clone`, so that no
//! handler of the parent runs in the child while it shares the parent's
//! memory, and restores its own mask afterwards. Between `clone` and
//! `execve` the child runs only async-signal-safe calls
//! (`sched_setaffinity`, `fcntl`, `dup2`, `sigaction`, `pthread_sigmask`,
//! `prctl`, `getppid`, `write`, `_exit`) on data prepared before the clone,
//! so it is safe in a multi-threaded parent. The child:
//!
//! 1. pins itself to one CPU with `sched_setaffinity`, if asked
//!    ([`Spawn::cpu`]);
//! 2. moves the descriptors it must keep (the exec-status pipe included)
//!    above every target number;
//! 3. points stdin at `/dev/null`, then `dup2`s each kept descriptor to its
//!    fixed target (which clears close-on-exec), in that order because a
//!    target may reuse the number `/dev/null` had;
//! 4. resets every caught signal to its default handler with `sigaction`
//!    (the handlers are the parent's and would run on its memory; ignored
//!    signals stay ignored, as across `execve`), then ignores those asked
//!    for ([`Spawn::ignore_signal`]);
//! 5. clears the signal mask, the all-blocked one set around the `clone`;
//! 6. sets `PR_SET_PDEATHSIG`, then re-checks `getppid()` in case the parent
//!    died before the call (the signal is tied to the *thread* that spawned it,
//!    so spawn from a long-lived thread);
//! 7. `execve`s, or reports `errno` through a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::OsContext;
use crate::{Error, PidFd, Result};

/// Descriptor targets are below this.
const MAX_TARGET: RawFd = 512;

/// The steps of the child between `clone` and `execve` that can fail: the
/// child reports the step and its `errno` through the error pipe, so that
/// the parent names the call that failed.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Step {
    Affinity = 1,
    MoveFds = 2,
    PlaceFds = 3,
    DeathSignal = 4,
    Exec = 5,
}

impl Step {
    /// The call that failed, as the parent's error names it.
    fn op(code: u32) -> &'static str {
        match code {
            c if c == Step::Affinity as u32 => "sched_setaffinity (in the new process)",
            c if c == Step::MoveFds as u32 => "fcntl(F_DUPFD_CLOEXEC) (in the new process)",
            c if c == Step::PlaceFds as u32 => "dup2 (in the new process)",
            c if c == Step::DeathSignal as u32 => "prctl(PR_SET_PDEATHSIG) (in the new process)",
            _ => "execve",
        }
    }
}

/// Ends the new process after `step` failed with `errno`, telling the
/// parent through the error pipe `pipe`: 8 bytes, `step` then `errno` (one
/// pipe write that short is atomic).
///
/// # Safety
/// Only in the new process between `clone` and `execve` (it `_exit`s).
unsafe fn fail_to(pipe: RawFd, step: Step, errno: i32) -> ! {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    out[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: a write from a local buffer and `_exit`, both
    // async-signal-safe; the caller is the new process.
    unsafe {
        libc::write(pipe, out.as_ptr().cast(), out.len());
        libc::_exit(127)
    }
}

/// CPUs [`Spawn::cpu`] can pin to are below this: what a `cpu_set_t`
/// holds (`CPU_SETSIZE`).
pub const MAX_CPUS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// What to run.
#[derive(Debug)]
pub struct Spawn<'a> {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    fds: Vec<(BorrowedFd<'a>, RawFd)>,
    death_signal: Option<i32>,
    cpu: Option<usize>,
    ignored: Vec<i32>,
}

impl<'a> Spawn<'a> {
    /// Runs `program` (e.g. `/proc/self/exe`) with `argv[0] = arg0`.
    pub fn new(program: &Path, arg0: &str) -> Result<Self> {
        Ok(Self {
            program: cstring(program.as_os_str().as_bytes())?,
            args: vec![cstring(arg0.as_bytes())?],
            env: Vec::new(),
            fds: Vec::new(),
            death_signal: None,
            cpu: None,
            ignored: Vec::new(),
        })
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: &str) -> Result<Self> {
        self.args.push(cstring(arg.as_bytes())?);
        Ok(self)
    }

    /// Sets the whole environment (`KEY=VALUE` pairs).
    pub fn env<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        for (k, v) in vars {
            let mut kv = k.as_ref().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_ref());
            self.env.push(cstring(&kv)?);
        }
        Ok(self)
    }

    /// Makes `fd` appear in the child as descriptor number `target`
    /// (`3 <= target < 512`).
    pub fn fd(mut self, fd: BorrowedFd<'a>, target: RawFd) -> Result<Self> {
        if !(3..MAX_TARGET).contains(&target) || self.fds.iter().any(|&(_, t)| t == target) {
            return Err(Error::Config(format!(
                "descriptor target {target} invalid or taken"
            )));
        }
        self.fds.push((fd, target));
        Ok(self)
    }

    /// Signal the child receives when the spawning thread exits.
    pub fn death_signal(mut self, signal: i32) -> Self {
        self.death_signal = Some(signal);
        self
    }

    /// Makes the child ignore `signal` from before it executes (an ignored
    /// signal stays ignored across `execve`), so that one arriving while the
    /// program starts is dropped rather than acted on. One sent while the
    /// child is being created is dropped too.
    pub fn ignore_signal(mut self, signal: i32) -> Self {
        self.ignored.push(signal);
        self
    }

    /// Pins the child to one CPU before it executes (the affinity carries
    /// over `execve`, so the program runs pinned from its first instruction).
    /// [`Self::spawn`] fails with [`Error::Config`] for a CPU number that a
    /// `cpu_set_t` cannot hold ([`MAX_CPUS`], 1024, or more).
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Starts the child and executes the program (see the module docs);
    /// returns the child's pidfd once `execve` succeeded.
    pub fn spawn(self) -> Result<PidFd> {
        let cpu_set = self.cpu.map(only_cpu).transpose()?;
        let argv: Vec<*const libc::c_char> = self
            .args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = self
            .env
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let devnull: OwnedFd = std::fs::File::open("/dev/null")
            .os("open(/dev/null)")?
            .into();
        let (err_read, err_write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).os("pipe2")?;
        let srcs: Vec<(RawFd, RawFd)> = self
            .fds
            .iter()
            .map(|(fd, t)| (fd.as_raw_fd(), *t))
            .collect();
        let parent = std::process::id() as libc::pid_t;
        let death_signal = self.death_signal.unwrap_or(0);
        let (devnull_raw, err_raw) = (devnull.as_raw_fd(), err_write.as_raw_fd());
        // The child moves its descriptors above every target before placing
        // them: just above, so that a low descriptor limit (`ulimit -n`)
        // still leaves room.
        let scratch = srcs.iter().map(|&(_, t)| t + 1).max().unwrap_or(3).max(3);

        let args = ChildArgs {
            cpu: cpu_set.as_ref(),
            program: &self.program,
            argv: &argv,
            envp: &envp,
            srcs: &srcs,
            devnull: devnull_raw,
            err: err_raw,
            scratch,
            death_signal,
            parent,
            ignored: &self.ignored,
        };
        let pid = clone_vfork(&args)?;
        drop(err_write);
        // From here on an error must not leave a child running that the
        // caller does not know of: it is killed and reaped.
        let abandon = |e: Error| {
            // SAFETY: plain system calls on our own, unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            e
        };
        let mut buf = [0u8; 8];
        let n = loop {
            match rustix::io::read(&err_read, &mut buf) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other.os("read(exec status)").map_err(abandon)?,
            }
        };
        if n == 0 {
            return PidFd::open(pid as u32).map_err(abandon);
        }
        // A step before exec, or exec, failed: reap the child, report the
        // step and its errno (written at once: a pipe write of 8 bytes is
        // atomic).
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let [s0, s1, s2, s3, e0, e1, e2, e3] = buf;
        let step = u32::from_ne_bytes([s0, s1, s2, s3]);
        let errno = if n == buf.len() {
            i32::from_ne_bytes([e0, e1, e2, e3])
        } else {
            libc::EIO
        };
        Err(Error::Os {
            op: Step::op(step),
            source: std::io::Error::from_raw_os_error(errno),
        })
    }
}

/// The CPU set holding `cpu` alone; an error for a CPU number beyond what a
/// `cpu_set_t` holds (`CPU_SET` would index past its array and panic).
fn only_cpu(cpu: usize) -> Result<libc::cpu_set_t> {
    if cpu >= MAX_CPUS {
        return Err(Error::Config(format!(
            "CPU {cpu} is out of range: a CPU set holds CPUs 0 to {}",
            MAX_CPUS - 1
        )));
    }
    // SAFETY: `cpu_set_t` is an array of integers; all-zero is a valid
    // value (the empty set).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: both write only into `set`, and `cpu` is below the number of
    // bits it holds (checked above).
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    Ok(set)
}

/// What the child needs, prepared before it is started.
struct ChildArgs<'a> {
    cpu: Option<&'a libc::cpu_set_t>,
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    srcs: &'a [(RawFd, RawFd)],
    devnull: RawFd,
    err: RawFd,
    /// The lowest number descriptors are moved to before placing them
    /// (above every target).
    scratch: RawFd,
    death_signal: i32,
    parent: libc::pid_t,
    ignored: &'a [i32],
}

/// Stack of the child between `clone` and `execve`.
const CHILD_STACK: usize = 64 << 10;

/// Starts the child with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn`
/// does: the child borrows the parent's memory instead of copying its page
/// tables, so spawning costs the same for a parent holding 1 GiB as for one
/// holding 1 MiB (a plain `fork` of a 1 GiB parent takes ~10 ms here, and
/// blocks the parent's other threads meanwhile). The calling thread is
/// suspended until the child has called `execve` or exited.
fn clone_vfork(args: &ChildArgs<'_>) -> Result<libc::pid_t> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down; keep its top 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write
    // to the sets we pass. Blocking every signal keeps the parent's handlers
    // from running in the child while it shares the parent's memory; the
    // child resets its handlers before it unblocks them.
    // SAFETY: sigset_t is plain integers; all-zero is a valid value.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: see the comment above the two sets.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: `child_entry` gets a pointer to `args`, which outlives the
    // child's use of it because CLONE_VFORK suspends this thread until the
    // child has exec'd or exited; the child runs on `stack` (alive for the
    // same reason) and makes only async-signal-safe calls.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            args as *const ChildArgs<'_> as *mut libc::c_void,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(clone_error).os("clone");
    }
    Ok(pid)
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` passed by `clone_vfork`, alive while
    // the parent thread is suspended.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: we are the freshly cloned child; only async-signal-safe
    // calls, on data prepared before the clone.
    unsafe {
        if let Some(set) = a.cpu {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                fail_to(a.err, Step::Affinity, *libc::__errno_location());
            }
        }
        child(a)
    }
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::Config("argument or variable contains a NUL byte".into()))
}

/// The child between clone and exec.
///
/// # Safety
/// Must only be called in a freshly cloned child; all pointers valid.
unsafe fn child(a: &ChildArgs<'_>) -> ! {
    let ChildArgs {
        program,
        argv,
        envp,
        srcs,
        devnull,
        err,
        scratch,
        death_signal,
        parent,
        ignored,
        cpu: _,
    } = *a;
    // SAFETY: async-signal-safe calls only (see module docs).
    unsafe {
        // Move the error pipe and every source above all targets. `fail`
        // writes to the moved pipe: a target may reuse the original number.
        let moved_err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, scratch);
        if moved_err < 0 {
            // Nothing was placed yet: the pipe is still at its number.
            fail_to(err, Step::MoveFds, *libc::__errno_location());
        }
        let fail = |step: Step, errno: i32| -> ! { fail_to(moved_err, step, errno) };
        let mut moved = [0 as RawFd; 16];
        if srcs.len() > moved.len() {
            fail(Step::MoveFds, libc::E2BIG);
        }
        for (i, &(src, _)) in srcs.iter().enumerate() {
            let m = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, scratch);
            if m < 0 {
                fail(Step::MoveFds, *libc::__errno_location());
            }
            moved[i] = m;
        }
        // stdin before the targets: a target may reuse `devnull`'s number.
        // Opened at 0 (the parent's stdin is closed), `dup2` would leave it
        // close-on-exec: the program would start without a stdin.
        if devnull == 0 {
            if libc::fcntl(0, libc::F_SETFD, 0) < 0 {
                fail(Step::PlaceFds, *libc::__errno_location());
            }
        } else if libc::dup2(devnull, 0) < 0 {
            fail(Step::PlaceFds, *libc::__errno_location());
        }
        for (i, &(_, target)) in srcs.iter().enumerate() {
            if libc::dup2(moved[i], target) < 0 {
                fail(Step::PlaceFds, *libc::__errno_location());
            }
        }
        // Handlers were copied from the parent and would run on its memory:
        // back to the defaults (ignored signals stay ignored, as after exec).
        for sig in 1..=libc::SIGRTMAX() {
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                && act.sa_sigaction != libc::SIG_DFL
                && act.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // Before unblocking: a pending one is dropped here.
        for &sig in ignored {
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(sig, &ign, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if death_signal != 0 {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                fail(Step::DeathSignal, *libc::__errno_location());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Step::Exec, *libc::__errno_location())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ExitStatus;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn places_fd_and_passes_env() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let child = Spawn::new(Path::new("/bin/sh"), "sh")
            .unwrap()
            .arg("-c")
            .unwrap()
            .arg("echo \"$GREETING\" >&7")
            .unwrap()
            .env([("GREETING", "hello")])
            .unwrap()
            .fd(w.as_fd(), 7)
            .unwrap()
            .death_signal(9)
            .spawn()
            .unwrap();
        drop(w);
        let st = child.wait_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(st, Some(ExitStatus::Exited(0)));
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
    }

    /// The child's ignored-signal mask (`SigIgn` of /proc/<pid>/status) as
    /// its program sees it after `execve`.
    fn ignored_mask(spawn: impl FnOnce(Spawn<'_>) -> Spawn<'_>) -> u64 {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let base = Spawn::new(Path::new("/bin/sh"), "sh")
            .unwrap()
            .arg("-c")
            .unwrap()
            .arg("grep '^SigIgn:' /proc/self/status >&7")
            .unwrap()
            .fd(w.as_fd(), 7)
            .unwrap();
        let child = spawn(base).spawn().unwrap();
        drop(w);
        let st = child.wait_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(st, Some(ExitStatus::Exited(0)));
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        u64::from_str_radix(line.trim_start_matches("SigIgn:").trim(), 16).unwrap()
    }

    #[test]
    fn asked_signals_are_ignored_in_the_program() {
        let own = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap();
        // A child ignores by default what this process ignores (a shell
        // running tests in the background ignores SIGINT), and nothing
        // more; asked, it ignores SIGINT and SIGUSR2 whatever this process
        // does.
        let bits = (1u64 << (libc::SIGINT - 1)) | (1u64 << (libc::SIGUSR2 - 1));
        assert_eq!(ignored_mask(|s| s) & bits, own & bits);
        let asked = ignored_mask(|s| s.ignore_signal(libc::SIGINT).ignore_signal(libc::SIGUSR2));
        assert_eq!(asked & bits, bits);
    }

    /// A parent whose stdin is closed opens `/dev/null` as descriptor 0:
    /// the program must still get it as its stdin (`dup2(0, 0)` would leave
    /// it close-on-exec).
    #[test]
    fn the_program_gets_dev_null_as_stdin_when_the_parent_has_none() {
        // In a forked child, which may close its own stdin: the test
        // process's is shared by the other tests. It allocates (glibc's
        // malloc is safe after fork) and makes system calls; nothing there
        // takes a lock another test thread could hold.
        let status = crate::test_child::in_child(|| {
            // SAFETY: closes the forked child's own stdin.
            unsafe { libc::close(0) };
            let ok = Spawn::new(Path::new("/bin/sh"), "sh")
                .and_then(|s| s.arg("-c"))
                .and_then(|s| s.arg("test \"$(readlink /proc/self/fd/0)\" = /dev/null"))
                .and_then(Spawn::spawn)
                .and_then(|child| child.wait_timeout(Duration::from_secs(20)))
                .is_ok_and(|st| st == Some(ExitStatus::Exited(0)));
            // SAFETY: ends the forked child with its verdict.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }

    #[test]
    fn exec_failure_is_reported() {
        let err = Spawn::new(Path::new("/nonexistent/program"), "x")
            .unwrap()
            .spawn()
            .unwrap_err();
        assert!(matches!(err, Error::Os { op: "execve", .. }), "{err}");
    }

    /// Targets may be any numbers, including those that `spawn` itself
    /// happens to use for `/dev/null` and the exec-status pipe: stdin is
    /// still `/dev/null`, and an exec failure is still reported.
    #[test]
    fn targets_may_cover_spawns_own_descriptors() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut spawn = Spawn::new(Path::new("/bin/sh"), "sh")
            .unwrap()
            .arg("-c")
            .unwrap()
            .arg("readlink /proc/self/fd/0 >&3")
            .unwrap();
        for target in 3..19 {
            spawn = spawn.fd(w.as_fd(), target).unwrap();
        }
        let child = spawn.spawn().unwrap();
        let st = child.wait_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(st, Some(ExitStatus::Exited(0)));
        drop(w);
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "/dev/null\n");

        let (_r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut spawn = Spawn::new(Path::new("/nonexistent/program"), "x").unwrap();
        for target in 3..19 {
            spawn = spawn.fd(w.as_fd(), target).unwrap();
        }
        let err = spawn.spawn().unwrap_err();
        assert!(matches!(err, Error::Os { op: "execve", .. }), "{err}");
    }

    #[test]
    fn a_cpu_beyond_a_cpu_set_is_an_error() {
        for cpu in [1024, 1 << 20, usize::MAX] {
            let err = Spawn::new(Path::new("/bin/true"), "t")
                .unwrap()
                .cpu(cpu)
                .spawn()
                .unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{cpu}: {err}");
        }
        let set = only_cpu(1023).unwrap();
        // SAFETY: reads only `set`, 1023 is inside it.
        assert!(unsafe { libc::CPU_ISSET(1023, &set) });
    }

    #[test]
    fn rejects_bad_targets() {
        let (_r, w) = rustix::pipe::pipe().unwrap();
        assert!(Spawn::new(Path::new("/bin/true"), "t")
            .unwrap()
            .fd(w.as_fd(), 1)
            .is_err());
    }
}
