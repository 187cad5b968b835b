//! Watching processes through pidfds: a death is reported the moment it
//! happens (the pidfd becomes readable), with no polling interval.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::error::OsContext;
use crate::{Error, Result};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Reaps the process if it has exited (non-blocking). Only the parent can
    /// reap; for others this reports `None` until the process exits and then
    /// an error.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let status = rustix::process::waitid(
            WaitId::PidFd(self.fd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )
        .os("waitid(P_PIDFD)")?;
        Ok(status.and_then(|s| {
            if let Some(code) = s.exit_status() {
                if s.exited() {
                    return Some(ExitStatus::Exited(code));
                }
            }
            s.terminating_signal().map(|signal| ExitStatus::Signaled {
                signal,
                core_dumped: s.dumped(),
            })
        }))
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
