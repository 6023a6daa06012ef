//! A one-shot, non-blocking timer a device hands to the event loop as an event source (the
//! rng's rate limiter, the balloon's statistics interval).

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// The shortest delay armed: `timerfd_settime` with a zero delay would disarm the timer.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// A CLOCK_MONOTONIC timerfd in non-blocking mode, so a spurious readiness check never blocks
/// the event loop.
pub(crate) struct DeviceTimer {
    fd: TimerFd,
    armed: bool,
}

impl DeviceTimer {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = TimerFd::new().map_err(io::Error::from)?;
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DeviceTimer { fd, armed: false })
    }

    /// Fires once after `delay` (at least 1 ms), unless already armed.
    pub(crate) fn arm(&mut self, delay: Duration) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        self.fd
            .reset(delay.max(MIN_DELAY), None)
            .map_err(io::Error::from)?;
        self.armed = true;
        Ok(())
    }

    /// Stops the timer and forgets an expiry that was not consumed yet.
    pub(crate) fn disarm(&mut self) {
        let _ = self.fd.clear();
        let _ = self.fd.wait();
        self.armed = false;
    }

    /// Consumes the expiry; `true` if the timer had fired.
    pub(crate) fn take_expiry(&mut self) -> bool {
        match self.fd.wait() {
            Ok(count) if count > 0 => {
                self.armed = false;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
