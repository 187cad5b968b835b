//! Lifelines: a death notice that reaches the watcher before the kernel has
//! torn down the dying process.
//!
//! A pidfd turns readable only once its process is a zombie, that is after
//! the kernel has unmapped the whole address space and closed every file:
//! about 0.1 ms for a small worker, 2 ms for one with 64 MiB resident, and
//! tens of milliseconds per GiB. A *robust futex* is released much earlier:
//! the first thing the kernel does in `exit_mm` is walk the thread's robust
//! list, set [`OWNER_DIED`] in every word the thread still owns and wake one
//! waiter on each.
//!
//! A [`Lifeline`] is such a word in shared memory. A worker's main thread
//! takes it once ([`Lifeline::hold`]) and never lets go, so the word changes
//! exactly when that thread dies (or replaces its program with `execve`). A
//! watcher in the parent [`arm`](Lifeline::arm)s the lifelines it cares about
//! and sleeps on all of them at once, and on a doorbell too if it likes
//! (`futex_waitv`: [`wait_any`],
//! [`SleepToken::wait_watching`](crate::doorbell::SleepToken::wait_watching)).
//!
//! A broken lifeline says *that* the thread is going, not *how*: the watcher
//! reads the exit code the kernel has already recorded with an
//! [`ExitProbe`] (opened on `/proc/<pid>/stat` while the process lives), and
//! falls back to the pidfd when the probe cannot tell (a clean `exit(0)`,
//! an `execve`, or a kernel without the field).
//!
//! The robust list belongs to the C library, which keeps its robust mutexes
//! on it. `hold` therefore inserts the lifeline into the existing list the
//! way glibc links a mutex, leaving glibc's own bookkeeping intact; it is
//! available with glibc on 64-bit Linux and reports
//! [`HoldError::Unsupported`] elsewhere (the pidfd still works there).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::thread::futex;

use crate::error::OsContext;
use crate::pidfd::ExitStatus;

/// Set by the kernel in the word of a holder that died.
pub const OWNER_DIED: u32 = 0x4000_0000;
/// Set by a watcher that sleeps on the word, so the kernel wakes it.
pub const WAITERS: u32 = 0x8000_0000;
/// The part of the word that names the holder.
const TID_MASK: u32 = 0x3fff_ffff;

/// The most lifelines one [`wait_any`] covers (`futex_waitv` takes 128
/// words, one of which may be a doorbell's).
pub const MAX_WATCHED: usize = 127;

/// One lifeline: a robust-futex word and room for the list node the
/// holder's C library links it by. `#[repr(C)]`, one cache line, lives in
/// shared memory.
///
/// * `word`: 0 while nobody holds it; the holder's thread id once held;
///   [`OWNER_DIED`] (holder id cleared) once the holder died. Written by the
///   parent (reset), the holder (its id, once), the watcher ([`WAITERS`]) and
///   the kernel (at the holder's death).
/// * `node`: the holder's robust-list node. Written by the holder's C
///   library and kernel through raw pointers only; never read by Rust code.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Lifeline {
    word: AtomicU32,
    _pad: u32,
    node: [AtomicU64; 7],
}

const _: () = assert!(std::mem::size_of::<Lifeline>() == 64);

impl Default for Lifeline {
    fn default() -> Self {
        Self::new()
    }
}

/// What a watcher sees in a lifeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nobody holds it (yet).
    Free,
    /// Held by this thread id.
    Held(u32),
    /// The holder's thread exited or called `execve`.
    Broken,
}

/// Why [`Lifeline::hold`] did not take the lifeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// This C library or architecture does not keep a robust list we can
    /// join.
    #[error("lifelines need glibc on 64-bit Linux")]
    Unsupported,
    /// The kernel has no robust list registered for this thread, or it has
    /// a layout this code does not know.
    #[error("no usable robust futex list for this thread: {0}")]
    NoList(String),
    /// The lifeline is already held.
    #[error("the lifeline is already held")]
    Taken,
}

impl Lifeline {
    /// A free lifeline (to place in shared memory).
    pub const fn new() -> Self {
        Self {
            word: AtomicU32::new(0),
            _pad: 0,
            node: [const { AtomicU64::new(0) }; 7],
        }
    }

    /// Empties the lifeline, while no process holds or watches it.
    pub(crate) fn reset(&self) {
        for n in &self.node {
            n.store(0, Ordering::Relaxed);
        }
        self.word.store(0, Ordering::Release);
    }

    /// What the lifeline says now.
    pub fn state(&self) -> State {
        decode(self.word.load(Ordering::Acquire))
    }

    /// Prepares a watcher to sleep on a held lifeline: marks the word so
    /// that the kernel wakes a sleeper at the holder's death. Returns the
    /// holder's thread id and the value to sleep on, or `None` if the
    /// lifeline is free or already broken.
    pub fn arm(&self) -> Option<Armed<'_>> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let State::Held(tid) = decode(w) else {
                return None;
            };
            if w & WAITERS != 0 {
                return Some(Armed {
                    line: self,
                    tid,
                    expect: w,
                });
            }
            // SYNC POINT: pairs with the holder's Release store of its id
            // and with the kernel's update at death (a failed exchange
            // re-reads).
            match self.word.compare_exchange_weak(
                w,
                w | WAITERS,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Armed {
                        line: self,
                        tid,
                        expect: w | WAITERS,
                    })
                }
                Err(now) => w = now,
            }
        }
    }

    /// Makes the calling thread the holder until it exits: links the
    /// lifeline into the thread's robust futex list, behind the C library's
    /// own entries. Call it once, from the thread whose death should be
    /// reported, before anything else can die.
    ///
    /// The lifeline must stay mapped for as long as the thread lives (the C
    /// library updates the node when it unlinks a neighbouring mutex), hence
    /// the `'static` borrow.
    pub fn hold(&'static self) -> Result<(), HoldError> {
        hold(self)
    }
}

fn decode(w: u32) -> State {
    if w & OWNER_DIED != 0 {
        State::Broken
    } else if w & TID_MASK == 0 {
        State::Free
    } else {
        State::Held(w & TID_MASK)
    }
}

/// A held lifeline a watcher is about to sleep on ([`Lifeline::arm`]).
#[derive(Debug, Clone, Copy)]
pub struct Armed<'a> {
    line: &'a Lifeline,
    tid: u32,
    expect: u32,
}

impl Armed<'_> {
    /// The holder's thread id when it was armed.
    pub fn tid(&self) -> u32 {
        self.tid
    }

    /// Whether the holder armed here has died since.
    pub fn broken(&self) -> bool {
        self.line.word.load(Ordering::Acquire) != self.expect
            && self.line.state() != State::Held(self.tid)
    }
}

/// Sleeps until a lifeline in `armed` breaks or `timeout` passes (spurious
/// returns are possible: check the lifelines after it). Only the first
/// [`MAX_WATCHED`] lifelines are watched.
///
/// Needs Linux 5.16 (`futex_waitv`); on an older kernel this is an
/// [`Error::Os`](crate::Error::Os) with `ENOSYS`. To sleep on a doorbell at
/// the same time, see [`crate::doorbell::SleepToken::wait_watching`].
pub fn wait_any(armed: &[Armed<'_>], timeout: Duration) -> crate::Result<()> {
    waitv(None, armed, timeout).os("futex_waitv")
}

/// `futex_waitv` on `also` (if any) and the words of `armed`.
pub(crate) fn waitv(
    also: Option<futex::Wait>,
    armed: &[Armed<'_>],
    timeout: Duration,
) -> Result<(), rustix::io::Errno> {
    let mut waits = Vec::with_capacity(armed.len().min(MAX_WATCHED) + 1);
    waits.extend(also);
    // Shared words: the kernel wakes them from the holder's process.
    waits.extend(
        armed
            .iter()
            .take(MAX_WATCHED)
            .map(|a| shared_wait(&a.line.word, a.expect)),
    );
    if waits.is_empty() {
        std::thread::sleep(timeout);
        return Ok(());
    }
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let end = add(now, timeout);
    match futex::waitv(
        &waits,
        futex::WaitvFlags::empty(),
        Some(&end),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_)
        | Err(rustix::io::Errno::AGAIN)
        | Err(rustix::io::Errno::INTR)
        | Err(rustix::io::Errno::TIMEDOUT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A `futex_waitv` entry for a shared 32-bit word expected to hold `val`.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn shared_wait(word: &AtomicU32, val: u32) -> futex::Wait {
    let mut w = futex::Wait::new();
    w.val = u64::from(val);
    w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
    w.flags = futex::WaitFlags::SIZE_U32;
    w
}

fn add(t: rustix::time::Timespec, d: Duration) -> rustix::time::Timespec {
    let nanos = t.tv_nsec as u64 + u64::from(d.subsec_nanos());
    rustix::time::Timespec {
        tv_sec: t
            .tv_sec
            .saturating_add(d.as_secs().min(i64::MAX as u64) as i64)
            .saturating_add((nanos / 1_000_000_000) as i64),
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

/// Reads how a dying child is exiting before it is a zombie: the exit code
/// the kernel records (in `/proc/<pid>/stat`) as the thread starts to exit,
/// before its robust list is walked.
///
/// Open it while the child lives (a pid cannot be reused before its parent
/// reaps it); reading it costs one `pread`.
#[derive(Debug)]
pub struct ExitProbe {
    stat: File,
}

/// `PF_EXITING` in the `flags` field of `/proc/<pid>/stat`.
const PF_EXITING: u64 = 0x4;

impl ExitProbe {
    /// Opens the probe for process `pid`.
    pub fn open(pid: u32) -> crate::Result<Self> {
        let stat = File::open(format!("/proc/{pid}/stat")).map_err(|e| crate::Error::Os {
            op: "open /proc/<pid>/stat",
            source: e,
        })?;
        Ok(Self { stat })
    }

    /// How the process is exiting, if it is exiting and the kernel says how
    /// (a nonzero exit code or a signal). `None` while it runs, after an
    /// `execve`, for a clean `exit(0)`, and on kernels without the field:
    /// then only the pidfd can tell.
    pub fn exiting(&self) -> Option<ExitStatus> {
        let mut buf = [0u8; 1024];
        let n = self.stat.read_at(&mut buf, 0).ok()?;
        parse_stat(buf.get(..n)?)
    }
}

/// Parses `flags` (field 9) and `exit_code` (field 52) of a `stat` line.
fn parse_stat(line: &[u8]) -> Option<ExitStatus> {
    // The command name (field 2) is in parentheses and may contain spaces
    // or parentheses itself: fields resume after the last ')'.
    let close = line.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3.
    let flags: u64 = fields.nth(9 - 3)?.parse().ok()?;
    let code: i32 = fields.nth(52 - 9 - 1)?.parse().ok()?;
    if flags & PF_EXITING == 0 || code == 0 {
        return None;
    }
    Some(ExitStatus::from_wait_status(code))
}

#[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
fn hold(line: &'static Lifeline) -> Result<(), HoldError> {
    /// The kernel's `struct robust_list_head`.
    #[repr(C)]
    struct Head {
        list: *mut usize,
        futex_offset: isize,
        list_op_pending: *mut usize,
    }
    let mut head: *mut Head = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: get_robust_list(0, ..) writes the calling thread's head
    // pointer and length into the two valid locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut Head,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return Err(HoldError::NoList(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if head.is_null() || len != std::mem::size_of::<Head>() {
        return Err(HoldError::NoList(format!("head {head:?}, length {len}")));
    }
    // Read through the raw pointer: no Rust reference into glibc's memory.
    // SAFETY: glibc registered `head` for this thread (its descriptor's
    // `robust_head`): valid and aligned while the thread lives.
    let (list, futex_offset) = unsafe {
        (
            std::ptr::addr_of!((*head).list).read_volatile(),
            std::ptr::addr_of!((*head).futex_offset).read_volatile(),
        )
    };
    let head_addr = head as usize;
    if list as usize & !1 != head_addr {
        // A robust mutex is held right now; linking in front of it would
        // mean touching glibc's private back-pointer. Not at start-up.
        return Err(HoldError::NoList(
            "the list is not empty (a robust mutex is held)".into(),
        ));
    }
    // The kernel finds the word at `entry + futex_offset`, where `entry` is
    // the address of the node's `next` field; glibc's node is
    // `{ prev, next }`.
    let word_addr = line.word.as_ptr() as usize;
    let next_addr = word_addr.wrapping_sub(futex_offset as usize);
    let prev_addr = next_addr.wrapping_sub(std::mem::size_of::<usize>());
    let node_start = line.node.as_ptr() as usize;
    let node_end = node_start + std::mem::size_of_val(&line.node);
    if prev_addr < node_start
        || next_addr + std::mem::size_of::<usize>() > node_end
        || prev_addr % std::mem::align_of::<usize>() != 0
    {
        return Err(HoldError::NoList(format!(
            "futex offset {futex_offset} does not fit a lifeline"
        )));
    }
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    // SYNC POINT: pairs with the Acquire loads of `state`/`arm`.
    if line
        .word
        .compare_exchange(0, tid & TID_MASK, Ordering::Release, Ordering::Relaxed)
        .is_err()
    {
        return Err(HoldError::Taken);
    }
    // The node is filled in before `list` publishes it, as glibc's ENQUEUE
    // does: the kernel may walk the list at any instant.
    // SAFETY: the node lies inside `line.node` (checked above): 'static,
    // aligned, written by nobody else; `head` is valid as above.
    unsafe {
        (prev_addr as *mut usize).write_volatile(head_addr);
        (next_addr as *mut usize).write_volatile(head_addr);
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        std::ptr::addr_of_mut!((*head).list).write_volatile(next_addr as *mut usize);
    }
    Ok(())
}

#[cfg(not(all(target_env = "gnu", target_pointer_width = "64")))]
fn hold(_line: &'static Lifeline) -> Result<(), HoldError> {
    Err(HoldError::Unsupported)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // A comm with spaces and a ')' inside; flags has PF_EXITING.
        let mut line = String::from("42 (a b) c) R 1 2 3 4 5 4194308");
        for i in 10..=51 {
            line += &format!(" {i}");
        }
        let with = |code: i32| format!("{line} {code}\n");
        assert_eq!(
            parse_stat(with(9).as_bytes()),
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        assert_eq!(
            parse_stat(with(11 | 0x80).as_bytes()),
            Some(ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            })
        );
        assert_eq!(
            parse_stat(with(7 << 8).as_bytes()),
            Some(ExitStatus::Exited(7))
        );
        assert_eq!(parse_stat(with(0).as_bytes()), None, "exit(0) is not told");
        let running = with(9).replace(" 4194308 ", " 4194304 ");
        assert_eq!(parse_stat(running.as_bytes()), None, "not exiting");
        assert_eq!(parse_stat(line.as_bytes()), None, "no exit_code field");
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn states() {
        let l = Lifeline::new();
        assert_eq!(l.state(), State::Free);
        assert!(l.arm().is_none());
        l.word.store(1234, Ordering::Relaxed);
        assert_eq!(l.state(), State::Held(1234));
        let a = l.arm().expect("held");
        assert_eq!(a.tid(), 1234);
        assert!(!a.broken());
        assert_eq!(l.word.load(Ordering::Relaxed), 1234 | WAITERS);
        // What the kernel writes at the holder's death.
        l.word.store(WAITERS | OWNER_DIED, Ordering::Relaxed);
        assert!(a.broken());
        assert_eq!(l.state(), State::Broken);
        assert!(l.arm().is_none());
        l.reset();
        assert_eq!(l.state(), State::Free);
    }

    /// A page of anonymous shared memory that lives as long as the test
    /// process (a lifeline must outlive its holder).
    fn shared_page() -> &'static mut [u8; 4096] {
        // SAFETY: a fresh anonymous shared mapping, never unmapped: the
        // 'static borrow is sound, and zeroed bytes are valid for [u8].
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            &mut *p.cast::<[u8; 4096]>()
        }
    }

    /// Forks a child that runs `f` then SIGKILLs itself; returns its pid.
    /// The child never outlives the test: it dies with it, and exits (1)
    /// instead of unwinding into the forked test harness.
    fn fork_and_die(f: impl FnOnce()) -> libc::pid_t {
        // SAFETY: the child makes system calls, touches memory mapped before
        // the fork, and ends in _exit or SIGKILL without returning.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    libc::_exit(1);
                }
                libc::kill(libc::getpid(), libc::SIGKILL);
                libc::_exit(99);
            }
            pid
        }
    }

    /// In a child: waits (bounded) until the parent armed `line`.
    fn until_armed(line: &Lifeline) {
        let start = std::time::Instant::now();
        while line.word.load(Ordering::Acquire) & WAITERS == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never armed");
            std::hint::spin_loop();
        }
    }

    fn reap(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: plain system call on our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// Waits (bounded) for the child's lifeline to break, as the pool's
    /// watcher does: arm, sleep on the futexes, look again.
    fn watch_until_broken(line: &Lifeline) -> Armed<'_> {
        let start = std::time::Instant::now();
        let armed = loop {
            assert!(start.elapsed() < Duration::from_secs(10), "never held");
            if let Some(a) = line.arm() {
                break a;
            }
            assert_ne!(line.state(), State::Broken, "broken before it was armed");
            std::thread::sleep(Duration::from_millis(1));
        };
        while !armed.broken() {
            assert!(start.elapsed() < Duration::from_secs(10), "never broke");
            wait_any(&[armed], Duration::from_secs(1)).expect("futex_waitv");
        }
        armed
    }

    #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn a_killed_holder_breaks_its_lifeline_before_it_is_reaped() {
        let page = shared_page();
        // SAFETY: the page is zeroed, 64-aligned and big enough; Lifeline is
        // atomics only, valid when zeroed.
        let line: &'static Lifeline = unsafe { &*page.as_ptr().cast::<Lifeline>() };
        line.reset();
        let pid = fork_and_die(|| {
            line.hold().expect("hold");
            // The kill comes only after the parent armed the lifeline.
            until_armed(line);
        });
        let probe = ExitProbe::open(pid as u32).expect("probe");
        let armed = watch_until_broken(line);
        assert_eq!(
            armed.tid(),
            pid as u32,
            "the holder is the child's main thread"
        );
        assert_eq!(line.state(), State::Broken);
        // The exit code is known although the child may not be a zombie yet.
        assert_eq!(
            probe.exiting(),
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        let status = reap(pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == 9);
    }

    #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn glibc_robust_mutexes_still_work_beside_a_lifeline() {
        let page = shared_page();
        // SAFETY: as above.
        let line: &'static Lifeline = unsafe { &*page.as_ptr().cast::<Lifeline>() };
        // SAFETY: offset 64 of the 4096-byte page, past the lifeline; three
        // mutexes fit. They are initialised below before any use.
        let mutexes = unsafe { page.as_mut_ptr().add(64).cast::<libc::pthread_mutex_t>() };
        // SAFETY: initialising process-shared robust mutexes in place.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            for i in 0..3 {
                assert_eq!(libc::pthread_mutex_init(mutexes.add(i), &attr), 0);
            }
        }
        let mutexes = mutexes as usize;
        let pid = fork_and_die(move || {
            let m = mutexes as *mut libc::pthread_mutex_t;
            line.hold().expect("hold");
            // Each lock links a mutex in front: the list reads m2, m1, m0,
            // lifeline. Unlocking m0 unlinks the entry next to the lifeline,
            // which makes glibc rewrite the lifeline's node.
            // SAFETY: valid, initialised mutexes in shared memory.
            unsafe {
                for i in 0..3 {
                    assert_eq!(libc::pthread_mutex_lock(m.add(i)), 0);
                }
                assert_eq!(libc::pthread_mutex_unlock(m), 0);
            }
            until_armed(line);
        });
        let armed = watch_until_broken(line);
        assert_eq!(armed.tid(), pid as u32);
        reap(pid);
        let m = mutexes as *mut libc::pthread_mutex_t;
        // SAFETY: as above; the child died holding m1 and m2.
        unsafe {
            assert_eq!(
                libc::pthread_mutex_lock(m),
                0,
                "m0 was released before death"
            );
            assert_eq!(libc::pthread_mutex_unlock(m), 0);
            for i in 1..3 {
                assert_eq!(libc::pthread_mutex_lock(m.add(i)), libc::EOWNERDEAD, "m{i}");
                assert_eq!(libc::pthread_mutex_consistent(m.add(i)), 0);
                assert_eq!(libc::pthread_mutex_unlock(m.add(i)), 0);
            }
        }
    }

    #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn a_doorbell_sleeper_wakes_for_a_broken_lifeline_and_for_a_ring() {
        use crate::Doorbell;
        let page = shared_page();
        // SAFETY: as above; the doorbell lives at offset 64 (8 bytes,
        // atomics only, valid when zeroed) and is initialised below.
        let line: &'static Lifeline = unsafe { &*page.as_ptr().cast::<Lifeline>() };
        // SAFETY: in bounds and aligned (offset 64 of a page); written
        // before any other thread or process uses it.
        let bell: &'static Doorbell = unsafe {
            let p = page.as_mut_ptr().add(64).cast::<Doorbell>();
            p.write(Doorbell::new(1));
            &*p
        };
        // Sleeps (up to a minute) on the bell and `line`; reports when done.
        let sleeper = |armed: bool| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let lines: Vec<Armed<'_>> = if armed {
                    vec![line.arm().expect("held")]
                } else {
                    Vec::new()
                };
                bell.announce_sleep()
                    .wait_watching(&lines, Duration::from_secs(60));
                tx.send(()).unwrap();
            });
            rx
        };
        let pid = fork_and_die(|| {
            line.hold().expect("hold");
            until_armed(line);
        });
        while line.state() == State::Free {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The death wakes a sleeper that only the lifeline can wake.
        let woke = sleeper(true);
        woke.recv_timeout(Duration::from_secs(20))
            .expect("a broken lifeline woke the doorbell sleeper");
        assert_eq!(line.state(), State::Broken);
        reap(pid);
        // A ring wakes it as before (nothing armed: the plain wait).
        let woke = sleeper(false);
        while bell.awake() != 0 {
            std::thread::yield_now();
        }
        bell.ring();
        woke.recv_timeout(Duration::from_secs(20))
            .expect("a ring woke the doorbell sleeper");
    }

    #[test]
    fn a_running_process_is_not_exiting() {
        let probe = ExitProbe::open(std::process::id()).expect("probe");
        assert_eq!(probe.exiting(), None);
    }
}
