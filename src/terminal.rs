//! The host terminal: raw mode while the guest owns the console, restored on every way out
//! (normal return, error, signal, panic).

use std::os::fd::RawFd;
use std::sync::OnceLock;

const STDIN: RawFd = 0;

/// What stdin looked like before Volt changed it.
struct SavedState {
    termios: Option<libc::termios>,
    flags: libc::c_int,
}

static SAVED: OnceLock<SavedState> = OnceLock::new();

/// Makes stdin non-blocking (the event loop drains it) and, when it is a terminal, raw, so
/// keys go to the guest as typed. Ctrl-C still ends Volt (ISIG stays on).
pub fn take_over_stdin() {
    // SAFETY: plain libc calls on fd 0 with valid pointers to local storage.
    unsafe {
        let flags = libc::fcntl(STDIN, libc::F_GETFL);
        if flags < 0 {
            return; // no stdin at all
        }
        let mut termios: libc::termios = std::mem::zeroed();
        let termios = (libc::isatty(STDIN) == 1 && libc::tcgetattr(STDIN, &mut termios) == 0)
            .then_some(termios);
        if SAVED.set(SavedState { termios, flags }).is_err() {
            return;
        }
        install_restore_hooks();
        if let Some(original) = termios {
            let mut raw = original;
            libc::cfmakeraw(&mut raw);
            raw.c_lflag |= libc::ISIG;
            raw.c_oflag |= libc::OPOST | libc::ONLCR; // keep "\n" -> "\r\n" for host-side logs
            libc::tcsetattr(STDIN, libc::TCSANOW, &raw);
        }
        libc::fcntl(STDIN, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Puts stdin back as it was. Async-signal-safe: only fcntl and tcsetattr.
pub fn restore_stdin() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: restores values read from the same fd earlier.
        unsafe {
            if let Some(termios) = &saved.termios {
                libc::tcsetattr(STDIN, libc::TCSANOW, termios);
            }
            libc::fcntl(STDIN, libc::F_SETFL, saved.flags);
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
