//! Watching processes through pidfds: a death is reported the moment it
//! happens (the pidfd becomes readable), with no polling interval.
//!
//! Only one waiter gets a child's exit status from the kernel. When the
//! program reaps children behind our back (it ignores `SIGCHLD`, so the
//! kernel reaps them at exit, or a thread of it calls `waitpid(-1, ..)`),
//! [`PidFd::try_wait`] asks the kernel for the status it keeps for pidfd
//! holders (Linux 6.15 and later) and reports [`ExitStatus::Unknown`] where
//! there is none: it never makes one up.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::error::OsContext;
use crate::{Error, Result};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It called `exit(code)` (or returned from `main`).
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// It ended, but how is lost: another part of the program reaped it
    /// first (it ignores `SIGCHLD`, so the kernel reaps children as they
    /// exit, or a thread of it waits for any child with `waitpid(-1, ..)`),
    /// on a kernel that keeps no exit status for pidfd holders (before
    /// Linux 6.15), or while the kernel had not finished releasing the
    /// process after some 20 ms (a stalled task). Leave `SIGCHLD` at its
    /// default and wait for your own children by pid to see the real
    /// status.
    Unknown,
}

impl ExitStatus {
    /// Decodes a status in the `wait(2)` encoding: a signal number (and the
    /// core-dump flag, `0x80`) in the low byte, else the exit code in the
    /// next one.
    pub(crate) fn from_wait_status(code: i32) -> Self {
        let signal = code & 0x7f;
        if signal != 0 {
            Self::Signaled {
                signal,
                core_dumped: code & 0x80 != 0,
            }
        } else {
            Self::Exited((code >> 8) & 0xff)
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Exited(code) => write!(f, "exit code {code}"),
            Self::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "signal {} ({signal})", signal_name(signal))?;
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            Self::Unknown => f.write_str(
                "exit status unknown (reaped by another part of the program: \
                 SIGCHLD ignored, or a waitpid(-1) elsewhere)",
            ),
        }
    }
}

/// The conventional name of a signal number (`SIGSEGV`), or `SIG<n>`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("SIG{signal}"),
    };
    name.to_owned()
}

/// A child process, held by a pidfd.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`. For a child that has not been reaped the pid
    /// cannot have been reused, so this is race-free.
    pub fn open(pid: u32) -> Result<Self> {
        let p = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| Error::Config(format!("invalid pid {pid}")))?;
        let fd = rustix::process::pidfd_open(p, PidfdFlags::empty()).os("pidfd_open")?;
        Ok(Self { fd, pid })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the process if it has exited; `None` while it runs. Does not
    /// block, except for a process reaped elsewhere that the kernel is
    /// still releasing: then it waits for its kept status, up to about
    /// 20 ms (microseconds in practice).
    ///
    /// A process someone else reaped first (the program ignores `SIGCHLD`,
    /// or a thread of it waits for any child), or that is not a child of
    /// this one, is reported once it has exited with the status the kernel
    /// keeps for pidfd holders (Linux 6.15 and later), else as
    /// [`ExitStatus::Unknown`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        match self.try_reap()? {
            Reap::Running => Ok(None),
            Reap::Exited(status) => Ok(Some(status)),
            Reap::Elsewhere => Ok(Some(self.kept_status_when_released())),
        }
    }

    /// The first half of [`PidFd::try_wait`], which never blocks: reaps the
    /// process if it has exited, or says that someone else did. A caller
    /// that must reap under a lock (its pid is free for reuse from then on)
    /// takes [`PidFd::kept_status_when_released`] after releasing it.
    pub fn try_reap(&self) -> Result<Reap> {
        let status = match rustix::process::waitid(
            WaitId::PidFd(self.fd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(status) => status,
            // No child of ours to reap (any more): exited and reaped by
            // someone else once the pidfd is readable.
            Err(rustix::io::Errno::CHILD) => {
                let exited =
                    wait_readable(&[self.fd.as_fd()], Some(Duration::ZERO))?.first() == Some(&true);
                return Ok(if exited {
                    Reap::Elsewhere
                } else {
                    Reap::Running
                });
            }
            Err(e) => return Err(e).os("waitid(P_PIDFD)"),
        };
        Ok(
            match status.and_then(|s| {
                if let Some(code) = s.exit_status() {
                    if s.exited() {
                        return Some(ExitStatus::Exited(code));
                    }
                }
                s.terminating_signal().map(|signal| ExitStatus::Signaled {
                    signal,
                    core_dumped: s.dumped(),
                })
            }) {
                Some(status) => Reap::Exited(status),
                None => Reap::Running,
            },
        )
    }

    /// How a process that someone else reaped ([`Reap::Elsewhere`])
    /// ended: the status the kernel kept, once it has released the process
    /// (waiting up to about 20 ms for that, microseconds in practice), or
    /// [`ExitStatus::Unknown`].
    pub fn kept_status_when_released(&self) -> ExitStatus {
        let deadline = Instant::now() + RELEASE_GRACE;
        loop {
            match self.kept_status() {
                Kept::Status(status) => return status,
                Kept::Pending if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(20));
                }
                Kept::Pending | Kept::Nothing => return ExitStatus::Unknown,
            }
        }
    }

    /// The exit status the kernel keeps for pidfd holders once the process
    /// has been reaped (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`).
    fn kept_status(&self) -> Kept {
        // SAFETY: `pidfd_info` is plain integers, for which all zeroes is a
        // valid value.
        let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
        info.mask = u64::from(libc::PIDFD_INFO_EXIT);
        // SAFETY: `PIDFD_GET_INFO` encodes the size of `pidfd_info`, and the
        // kernel writes no more than that into `info`, which outlives the
        // call; the descriptor is a pidfd we own.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) };
        if rc != 0 {
            // No such ioctl (before Linux 6.13), or the process is gone and
            // the kernel kept no status (6.13 and 6.14).
            return Kept::Nothing;
        }
        if info.mask & u64::from(libc::PIDFD_INFO_EXIT) != 0 {
            return Kept::Status(ExitStatus::from_wait_status(info.exit_code));
        }
        // Exited and still there: its reaper is releasing it right now (the
        // status is kept at release), or its parent, not us, has yet to
        // reap it.
        Kept::Pending
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if wait_readable(&[self.fd.as_fd()], Some(timeout))?.first() == Some(&true) {
            return self.try_wait();
        }
        Ok(None)
    }

    /// Sends a signal. A process that already exited is not an error.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        match rustix::process::pidfd_send_signal(&self.fd, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e).os("pidfd_send_signal"),
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How [`PidFd::try_reap`] found the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// It has not exited.
    Running,
    /// It exited, and this call reaped it.
    Exited(ExitStatus),
    /// It exited, and another part of the program reaped it: see
    /// [`PidFd::kept_status_when_released`].
    Elsewhere,
}

/// How long [`PidFd::try_wait`] waits for another reaper to finish
/// releasing a process whose status it took: microseconds, unless that
/// reaper is preempted in between.
const RELEASE_GRACE: Duration = Duration::from_millis(20);

/// What the kernel says of a process reaped by someone else.
enum Kept {
    /// The status it kept.
    Status(ExitStatus),
    /// Exited, not yet released: ask again.
    Pending,
    /// It keeps none (an older kernel).
    Nothing,
}

/// Polls descriptors for readability; returns one flag per descriptor.
/// `EINTR` counts as "nothing ready".
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match rustix::event::poll(&mut polls, ts.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e).os("poll"),
    }
    Ok(polls.iter().map(|p| !p.revents().is_empty()).collect())
}

/// An eventfd used to interrupt a thread blocked in [`wait_readable`].
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// A new, unsignalled notifier.
    pub fn new() -> Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .os("eventfd")?;
        Ok(Self { fd })
    }

    /// Makes the descriptor readable.
    pub fn notify(&self) {
        // A full counter (EAGAIN) is still readable: nothing to do.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Consumes pending notifications.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd (`waitid`)
    fn reports_signal_and_exit_code() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert_eq!(pidfd.try_wait().unwrap(), None);
        pidfd.kill(Signal::KILL).unwrap();
        let st = pidfd.wait_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(
            st,
            Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        assert_eq!(st.unwrap().to_string(), "signal SIGKILL (9)");

        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert_eq!(
            pidfd.wait_timeout(Duration::from_secs(20)).unwrap(),
            Some(ExitStatus::Exited(7))
        );
    }

    /// Whether this kernel keeps the exit status for pidfd holders
    /// (`PIDFD_INFO_EXIT`, Linux 6.15 and later), from its release string.
    fn kernel_keeps_exit_status() -> bool {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        (major, minor) >= (6, 15)
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by `waitpid` below
    fn a_child_reaped_elsewhere_reads_as_its_kept_status_or_unknown() {
        for (script, want) in [
            ("exit 7", ExitStatus::Exited(7)),
            (
                "kill -KILL $$",
                ExitStatus::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            ),
        ] {
            let child = std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            let pidfd = PidFd::open(child.id()).unwrap();
            let pid = child.id() as i32;
            let mut raw = 0;
            // Reaped behind the pidfd's back, as by a `waitpid(-1)` elsewhere.
            // SAFETY: waits for our own child; writes only `raw`.
            assert_eq!(unsafe { libc::waitpid(pid, &mut raw, 0) }, pid);
            let got = pidfd.try_wait().unwrap();
            if kernel_keeps_exit_status() {
                assert_eq!(got, Some(want), "{script}: the kernel kept it");
            } else {
                assert!(
                    got == Some(want) || got == Some(ExitStatus::Unknown),
                    "{script}: {got:?}"
                );
            }
            assert_eq!(ExitStatus::from_wait_status(raw), want, "{script}");
        }
    }

    #[test]
    fn an_unknown_status_says_why() {
        let s = ExitStatus::Unknown.to_string();
        assert!(
            s.contains("SIGCHLD ignored") && s.contains("waitpid(-1)"),
            "{s}"
        );
    }

    #[test]
    fn a_pid_out_of_range_is_an_error() {
        for pid in [0, 1 << 31, u32::MAX] {
            let err = PidFd::open(pid).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{pid}: {err}");
        }
    }

    #[test]
    fn notifier_interrupts_poll() {
        let n = Notifier::new().unwrap();
        assert_eq!(
            wait_readable(&[n.as_fd()], Some(Duration::ZERO)).unwrap(),
            vec![false]
        );
        n.notify();
        assert_eq!(
            wait_readable(&[n.as_fd()], Some(Duration::from_secs(20))).unwrap(),
            vec![true]
        );
        n.clear();
        assert_eq!(
            wait_readable(&[n.as_fd()], Some(Duration::ZERO)).unwrap(),
            vec![false]
        );
    }
}
