//! Process-wide hardening that needs no policy: no_new_privs and closing inherited descriptors.

use std::io;

use super::SandboxError;

/// `prctl(PR_SET_NO_NEW_PRIVS)`: execve can never grant privileges again (set-uid binaries,
/// file capabilities). Required before an unprivileged seccomp or Landlock restriction.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SandboxError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// Closes every descriptor >= 3 inherited from the parent, so nothing it left open (a socket, a
/// directory outside the sandbox) outlives Landlock and seccomp. Call first thing in `main`,
/// before any descriptor of our own is opened.
pub fn close_inherited_fds() -> Result<(), SandboxError> {
    // SAFETY: close_range only closes descriptors; none is in use by Rust code yet.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(SandboxError::CloseFds(err));
    }
    // Kernels before 5.9: list /proc/self/fd, then close what it showed.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(SandboxError::CloseFds)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= 3)
        .collect();
    for fd in fds {
        // SAFETY: see above. EBADF for the already closed read_dir descriptor is expected.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
