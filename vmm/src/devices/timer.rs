//! A one-shot, nonblocking `CLOCK_MONOTONIC` timerfd: what a device on the VMM thread's
//! event loop waits on when it has to come back later (vsock's timeouts, a rate limiter's
//! refill). Created `TFD_NONBLOCK | TFD_CLOEXEC` when the device is built (before the run
//! loop's seccomp filter); arming it is one `timerfd_settime` (relative), reading it one
//! `read` of 8 bytes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("cannot create a timerfd: {0}")]
    Create(io::Error),
    #[error("cannot arm the timerfd: {0}")]
    Set(io::Error),
}

/// A one-shot, nonblocking `CLOCK_MONOTONIC` timerfd.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub fn new() -> Result<Timer, TimerError> {
        // SAFETY: timerfd_create(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TimerError::Create(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// Fires once after `after` (replacing any earlier setting).
    pub fn arm(&self, after: Duration) -> Result<(), TimerError> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                // Never all zero (that would disarm): at least one nanosecond.
                tv_nsec: libc::c_long::from(after.subsec_nanos().max(1)),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(TimerError::Set(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Takes the expirations (so the descriptor is no longer readable); true if it fired.
    pub fn consume(&self) -> bool {
        let mut count = [0u8; 8];
        // SAFETY: read(2) of at most 8 bytes into `count`; the descriptor is nonblocking.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        n == 8
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_fires_once() {
        let t = Timer::new().unwrap();
        assert!(!t.consume());
        t.arm(Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.consume());
        assert!(!t.consume());
    }
}
