//! Passing file descriptors between processes (`SCM_RIGHTS` over a
//! `SOCK_SEQPACKET` Unix socket pair).
//!
//! Protocol: the sender calls [`send_fd`] *before* it publishes the ring
//! message that refers to the descriptor, so a receiver that sees the
//! message finds the descriptor already queued, and [`recv_fd`] never
//! blocks.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::error::OsContext;
use crate::{Error, Result};

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .os("socketpair")
}

/// Sends one descriptor. Never raises `SIGPIPE` (a dead peer is an error)
/// and never blocks: a peer that left its socket full (it reads one
/// descriptor per message it takes, so this takes many unread messages) is
/// an error too, rather than a hang of the sender.
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Error::Config("ancillary buffer too small".into()));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&[1])],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .os("sendmsg(SCM_RIGHTS)")?;
    Ok(())
}

/// Receives one descriptor that the peer already sent (never blocks).
pub fn recv_fd(socket: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )
    .os("recvmsg(SCM_RIGHTS)")?;
    if msg.bytes == 0 {
        return Err(Error::Corrupt("peer closed the descriptor socket".into()));
    }
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(Error::Corrupt(
        "message without a descriptor on the descriptor socket".into(),
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn passes_a_memfd() {
        let (a, b) = socket_pair().unwrap();
        let fd = rustix::fs::memfd_create("passed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::pwrite(&fd, &[9], 0).unwrap();
        send_fd(a.as_fd(), fd.as_fd()).unwrap();
        let got = recv_fd(b.as_fd()).unwrap();
        // The same file, not a copy: a write through either is seen by both.
        rustix::io::pwrite(&fd, &[7], 1).unwrap();
        let mut buf = [0u8; 2];
        rustix::io::pread(&got, &mut buf, 0).unwrap();
        assert_eq!(buf, [9, 7]);
    }

    #[test]
    fn empty_queue_is_an_error_not_a_hang() {
        let (_a, b) = socket_pair().unwrap();
        assert!(recv_fd(b.as_fd()).is_err());
    }
}
