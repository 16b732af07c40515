//! Clocks and a nanosecond timer. The event loop needs absolute monotonic nanoseconds that a
//! timerfd understands (std's `Instant` is opaque), and per-thread CPU time to tell when the
//! load generator itself was the bottleneck.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call, no syscall).
#[inline]
pub fn now_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// CPU time (user + system) the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) of the whole process, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    read_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// A CLOCK_MONOTONIC timerfd armed at absolute times: epoll's own timeout has millisecond
/// granularity, far too coarse for planned send times microseconds apart.
pub struct Timer {
    fd: OwnedFd,
    armed_at: u64,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, armed_at: 0 })
    }

    /// Makes the timer fire once, no later than absolute monotonic time `at_ns` (`now_ns` is
    /// the time now). Armed already for a time still ahead and no later than `at_ns`, it is left
    /// as it is: the event loop asks after every turn, and an early wake-up costs one more turn
    /// where re-arming would cost a timerfd_settime each time.
    pub fn arm_by(&mut self, at_ns: u64, now_ns: u64) -> io::Result<()> {
        if self.armed_at > now_ns && self.armed_at <= at_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                // A zero it_value would disarm the timer: never ask for exactly 0.
                tv_nsec: (at_ns % 1_000_000_000).max(1) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_at = at_ns;
        Ok(())
    }

    /// Notes that the timer fired. No read is needed: re-arming resets the expiry count, and
    /// epoll reports the next expiry as a new edge.
    pub fn expired(&mut self) {
        self.armed_at = 0;
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_arming_still_ahead_is_kept_and_a_later_or_past_one_is_replaced() {
        let mut timer = Timer::new().unwrap();
        let now = now_ns();
        timer.arm_by(now + 1_000_000, now).unwrap();
        assert_eq!(timer.armed_at, now + 1_000_000);
        // Asked for later: the earlier expiry stands (one early wake-up, no re-arming).
        timer.arm_by(now + 2_000_000, now).unwrap();
        assert_eq!(timer.armed_at, now + 1_000_000);
        // Asked for sooner: brought forward.
        timer.arm_by(now + 500_000, now).unwrap();
        assert_eq!(timer.armed_at, now + 500_000);
        // Once its time has passed (fired, the event not seen yet), armed anew.
        let later = now + 600_000;
        timer.arm_by(later + 1_000_000, later).unwrap();
        assert_eq!(timer.armed_at, later + 1_000_000);
        // After the event, armed anew even for the same time.
        timer.expired();
        timer.arm_by(later + 1_000_000, later).unwrap();
        assert_eq!(timer.armed_at, later + 1_000_000);
    }
}
