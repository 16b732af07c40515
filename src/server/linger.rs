//! How a backend closes connections, whatever its I/O model: how long a closing connection
//! lingers for the peer's FIN, how long a shutdown waits for unsent replies, and whether a
//! socket can be closed at once without the kernel throwing a reply away.

use std::os::fd::RawFd;
use std::time::Duration;

/// How long a closing connection waits for the peer to close after our FIN.
pub const LINGER: Duration = Duration::from_secs(2);

/// How long a shutdown waits for connections to take their replies before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whether a TCP socket has nothing in flight: every byte sent has been acknowledged and
/// nothing received waits to be read.
pub fn socket_is_quiet(fd: RawFd) -> bool {
    let (mut unacknowledged, mut unread): (libc::c_int, libc::c_int) = (0, 0);
    // SAFETY: both ioctls write one int into the variable we pass.
    let ok = unsafe {
        libc::ioctl(fd, libc::TIOCOUTQ, &mut unacknowledged) == 0
            && libc::ioctl(fd, libc::FIONREAD, &mut unread) == 0
    };
    ok && unacknowledged == 0 && unread == 0
}

/// Stops a listening socket from accepting: connections queued but not yet accepted are
/// reset and new ones refused, so a stopping server's clients go elsewhere at once instead
/// of waiting on a backlog nobody accepts from. (On Linux, shutting a listener down for
/// reading takes it out of the listening state; the descriptor stays valid until closed.)
pub fn stop_listening(fd: RawFd) {
    // SAFETY: shutting down a socket we own; failure only means it was not listening.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}
