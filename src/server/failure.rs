//! The errors an operation on a socket can end with, mapped from errno in this one place so
//! every caller decides by kind, not by number.

use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// We cancelled the operation.
    Cancelled,
    /// A receive found the provided buffer ring empty for a moment; retry.
    NoBuffers,
    /// The peer went away (reset, or gave up while queued for accept).
    PeerGone(i32),
    /// The process or the kernel is out of descriptors or memory: retry later, not now.
    Exhausted(i32),
    /// Anything else.
    Other(i32),
}

impl Failure {
    /// The failure an errno stands for (`ENOBUFS` is memory here; see [`Failure::of_recv`]).
    pub fn of(errno: i32) -> Failure {
        match errno {
            libc::ECANCELED => Failure::Cancelled,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Failure::Exhausted(errno),
            libc::ECONNRESET
            | libc::EPIPE
            | libc::ECONNABORTED
            | libc::ETIMEDOUT
            | libc::EPERM
            | libc::EPROTO => Failure::PeerGone(errno),
            _ => Failure::Other(errno),
        }
    }

    /// The failure of a receive into provided buffers, where `ENOBUFS` means the ring ran dry.
    pub fn of_recv(errno: i32) -> Failure {
        match errno {
            libc::ENOBUFS => Failure::NoBuffers,
            _ => Failure::of(errno),
        }
    }

    /// An io_uring completion's result: the value, or the failure its negative errno means.
    pub fn check(result: i32) -> Result<u32, Failure> {
        u32::try_from(result).map_err(|_| Failure::of(-result))
    }

    /// For a log line.
    pub fn error(self) -> io::Error {
        match self {
            Failure::Cancelled => io::Error::from_raw_os_error(libc::ECANCELED),
            Failure::NoBuffers => io::Error::from_raw_os_error(libc::ENOBUFS),
            Failure::PeerGone(errno) | Failure::Exhausted(errno) | Failure::Other(errno) => {
                io::Error::from_raw_os_error(errno)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_is_one_kind() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(Failure::of(errno), Failure::Exhausted(errno));
        }
    }

    #[test]
    fn enobufs_on_a_buffered_receive_means_the_ring_ran_dry() {
        assert_eq!(Failure::of_recv(libc::ENOBUFS), Failure::NoBuffers);
        assert_eq!(Failure::of_recv(libc::ECANCELED), Failure::Cancelled);
        assert_eq!(
            Failure::of_recv(libc::ECONNRESET),
            Failure::PeerGone(libc::ECONNRESET)
        );
    }

    #[test]
    fn a_result_is_a_value_or_a_failure() {
        assert_eq!(Failure::check(7), Ok(7));
        assert_eq!(Failure::check(0), Ok(0));
        assert_eq!(Failure::check(-libc::ECANCELED), Err(Failure::Cancelled));
        assert_eq!(
            Failure::check(-libc::EINVAL),
            Err(Failure::Other(libc::EINVAL))
        );
        assert_eq!(
            Failure::check(-libc::ECONNABORTED),
            Err(Failure::PeerGone(libc::ECONNABORTED))
        );
    }
}
