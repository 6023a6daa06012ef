//! The host terminal: raw mode while the guest owns the console, restored on every way out
//! (normal return, error, signal, panic).

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;

/// What stdin and stdout looked like before Volt changed them.
struct SavedState {
    termios: Option<libc::termios>,
    stdin_flags: libc::c_int,
    /// Set when stdout got a private description that Volt made non-blocking.
    stdout_flags: Option<libc::c_int>,
}

static SAVED: OnceLock<SavedState> = OnceLock::new();

/// Makes stdin non-blocking (the event loop drains it) and, when it is a terminal, raw, so
/// keys go to the guest as typed. Ctrl-C still ends Volt (ISIG stays on).
///
/// `O_NONBLOCK` is a flag of the open file description, which stdin shares with stdout when
/// both are the same terminal, and with the parent shell. So stdin and stdout (terminals and
/// pipes) first get private descriptions of their own, reopened through `/proc/self/fd`:
/// non-blocking stdin then leaks neither onto stdout nor into the shell, and stdout is made
/// non-blocking too, so a slow terminal can never stall the event loop (the serial console
/// keeps what the host cannot take yet and writes it once stdout is writable again).
///
/// Reopening needs `/proc` and must happen before Landlock is applied. When it cannot be done,
/// stdin's own description is made non-blocking as before; if stdout shares it, console
/// writes may see `EAGAIN`, which the console output path handles without losing bytes.
pub fn take_over_stdin() {
    let stdin_private = reopen_private(STDIN, libc::O_RDONLY).unwrap_or_else(|e| {
        log::debug!("stdin keeps its shared description: {e}");
        false
    });
    let stdout_private = reopen_private(STDOUT, libc::O_WRONLY).unwrap_or_else(|e| {
        log::debug!("stdout keeps its shared description: {e}");
        false
    });
    log::debug!("private descriptions: stdin {stdin_private}, stdout {stdout_private}");
    // SAFETY: fcntl(F_GETFL) on fd 0 takes no pointer.
    let flags = unsafe { libc::fcntl(STDIN, libc::F_GETFL) };
    if flags < 0 {
        return; // no stdin at all
    }
    let stdout_flags = if stdout_private {
        // SAFETY: fcntl(F_GETFL) on fd 1 takes no pointer.
        let flags = unsafe { libc::fcntl(STDOUT, libc::F_GETFL) };
        (flags >= 0).then_some(flags)
    } else {
        None
    };
    // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: isatty/tcgetattr on fd 0 with a valid pointer to local storage.
    let is_tty = unsafe { libc::isatty(STDIN) == 1 && libc::tcgetattr(STDIN, &mut termios) == 0 };
    let termios = is_tty.then_some(termios);
    let saved = SavedState {
        termios,
        stdin_flags: flags,
        stdout_flags,
    };
    if SAVED.set(saved).is_err() {
        return;
    }
    install_restore_hooks();
    if let Some(original) = termios {
        let mut raw = original;
        // SAFETY: cfmakeraw/tcsetattr get valid pointers to local storage; fd 0 is a terminal.
        unsafe {
            libc::cfmakeraw(&mut raw);
            raw.c_lflag |= libc::ISIG;
            raw.c_oflag |= libc::OPOST | libc::ONLCR; // keep "\n" -> "\r\n" for host-side logs
            libc::tcsetattr(STDIN, libc::TCSANOW, &raw);
        }
    }
    // SAFETY: fcntl(F_SETFL) with an integer argument.
    unsafe { libc::fcntl(STDIN, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if let Some(flags) = stdout_flags {
        // SAFETY: as above, on fd 1, whose description is private to this process.
        unsafe { libc::fcntl(STDOUT, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
}

/// Replaces `fd` by a new open file description of the same terminal or pipe (opened through
/// `/proc/self/fd/N` with `access`), so file status flags set on it are private to Volt.
/// `Ok(false)` when `fd` is not a terminal or pipe (a regular file keeps its offset shared,
/// a socket cannot be reopened) and nothing was done.
pub fn reopen_private(fd: RawFd, access: libc::c_int) -> io::Result<bool> {
    // SAFETY: stat is plain old data; fstat fills it through a valid pointer.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind != libc::S_IFCHR && kind != libc::S_IFIFO {
        return Ok(false);
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // O_NONBLOCK only for the open itself: opening a pipe's write end must not wait.
    let flags = access | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: path is a valid NUL-terminated string.
    let fresh = unsafe { libc::open(path.as_ptr(), flags) };
    if fresh < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh is an fd we own; dup2 onto `fd` replaces it atomically (and clears
    // close-on-exec on the copy), then the temporary is closed.
    unsafe {
        let ok = libc::dup2(fresh, fd) >= 0
            && libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK,
            ) == 0;
        let error = io::Error::last_os_error();
        libc::close(fresh);
        if ok {
            Ok(true)
        } else {
            Err(error)
        }
    }
}

/// Puts stdin (and stdout) back as they were. Async-signal-safe: only fcntl and tcsetattr.
pub fn restore_stdin() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: restores values read from the same fds earlier.
        unsafe {
            if let Some(termios) = &saved.termios {
                libc::tcsetattr(STDIN, libc::TCSANOW, termios);
            }
            libc::fcntl(STDIN, libc::F_SETFL, saved.stdin_flags);
            if let Some(flags) = saved.stdout_flags {
                libc::fcntl(STDOUT, libc::F_SETFL, flags);
            }
        }
    }
}

fn install_restore_hooks() {
    extern "C" fn on_signal(signal: libc::c_int) {
        restore_stdin();
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_stdin();
        previous(info);
    }));
}
