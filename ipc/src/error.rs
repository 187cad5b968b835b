use std::io;

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed; `op` names it.
    #[error("{op} failed: {source}{}", os_hint(source))]
    Os {
        /// The operation that failed, e.g. `memfd_create`.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A region's header does not match what this binary expects: it was
    /// created by another version of loky, or it is not a loky region's
    /// header at all. (A descriptor that is not a memfd sealed against
    /// shrinking is [`Error::Config`].)
    #[error(
        "shared region header mismatch: {0}; was the worker built from another version of loky?"
    )]
    BadHeader(String),
    /// The peer wrote something that breaks the ring protocol. The channel
    /// cannot be trusted any more; drop it (and its worker).
    #[error("ring protocol violated: {0}")]
    Corrupt(String),
    /// A configuration value is out of range, or a descriptor is unfit for
    /// its use (a region that is not a memfd sealed against shrinking).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the error says the other end of a connection is gone (its
    /// process died, or closed its end): `EPIPE`, `ECONNRESET` or
    /// `ENOTCONN` from a system call. Nothing more can be sent to it.
    pub fn peer_gone(&self) -> bool {
        matches!(
            self,
            Error::Os { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN))
        )
    }
}

/// Shorthand for `Result<T, loky_ipc::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait OsContext<T> {
    fn os(self, op: &'static str) -> Result<T>;
}

/// What to do about an error that has a usual cause.
fn os_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EMFILE) => {
            " (this process reached its open-file limit, `ulimit -n` or RLIMIT_NOFILE: \
             raise it, or use fewer pools or workers)"
        }
        Some(libc::ENFILE) => " (the system-wide open-file limit is reached)",
        _ => "",
    }
}

impl<T> OsContext<T> for std::result::Result<T, rustix::io::Errno> {
    fn os(self, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::Os {
            op,
            source: e.into(),
        })
    }
}

impl<T> OsContext<T> for io::Result<T> {
    fn os(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Os { op, source })
    }
}
