//! The host side of virtio-vsock: Unix sockets in Firecracker's convention, and the device's
//! own epoll set that holds them.
//!
//! Every call here is one the event loop's seccomp list allows with these exact arguments:
//! `accept4(.., SOCK_NONBLOCK|SOCK_CLOEXEC)`, `socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|
//! SOCK_CLOEXEC, 0)`, `connect`, `shutdown(.., SHUT_WR)`, `read`, `write`, `epoll_ctl` and
//! `epoll_wait`. The listener and the epoll set are created before the sandbox applies.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Flags of every socket the device creates or accepts.
pub const SOCK_FLAGS: libc::c_int = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
/// The longest `CONNECT <port>\n` line read from a host client (port up to 4294967295).
pub const MAX_CONNECT_LINE: usize = 32;

/// An epoll set owned by the device; the event loop watches only its fd.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds `fd` edge-triggered with `events` and `token` as its user data.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events | libc::EPOLLET as u32,
            u64: token,
        };
        // SAFETY: event is a valid epoll_event for the duration of the call.
        let ret =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ready events, without waiting.
    pub fn poll(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: events is a valid writable array of `max` entries.
        let ret = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Binds the listening socket at `path`. A stale socket left by an earlier run (nobody
/// listening) is replaced; anything else at `path` is an error.
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let stale = meta.file_type().is_socket()
            && matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
        if !stale {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a stale socket; remove it or pick another",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Accepts one pending connection, non-blocking; `Ok(None)` when none is waiting.
pub fn accept(listener: &UnixListener) -> io::Result<Option<UnixStream>> {
    // SAFETY: null address pointers are allowed by accept4; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            SOCK_FLAGS,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    Ok(Some(unsafe { UnixStream::from_raw_fd(fd) }))
}

/// `PATH_P`: where a guest connection to host port `port` goes.
pub fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects, non-blocking, to the Unix stream socket at `path`. A Unix connect completes at
/// once or fails (EAGAIN when the listener's backlog is full): it never stays in progress.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or_default();
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | SOCK_FLAGS, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns; dropping the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // At most size_of::<sockaddr_un>() (checked above), so it fits a socklen_t.
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"))?;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let ret = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// read(2) on a socket (not recvfrom: the allow-list has read and write).
pub fn read(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let ret = unsafe { libc::read(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// write(2) on a socket. SIGPIPE is ignored by the Rust runtime, so a closed peer is EPIPE.
pub fn write(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length.
    let ret = unsafe { libc::write(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// The guest will send no more: the host peer reads end-of-file.
pub fn shutdown_write(stream: &UnixStream) -> io::Result<()> {
    // SAFETY: plain shutdown(2) on a socket we own.
    if unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a host client's first line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// `CONNECT <port>\n` is complete.
    Port(u32),
    /// More bytes are needed.
    Incomplete,
    /// Not a valid `CONNECT` line.
    Invalid,
}

/// Parses the bytes a host client sent so far (Firecracker's `CONNECT <port>\n`).
pub fn parse_connect_line(line: &[u8]) -> ConnectLine {
    let Some(body) = line.strip_suffix(b"\n") else {
        return if line.len() >= MAX_CONNECT_LINE || line.contains(&b'\n') {
            ConnectLine::Invalid
        } else {
            ConnectLine::Incomplete
        };
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return ConnectLine::Invalid;
    };
    match text.strip_prefix("CONNECT ").map(str::trim) {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => port
            .parse()
            .map(ConnectLine::Port)
            .unwrap_or(ConnectLine::Invalid),
        _ => ConnectLine::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), ConnectLine::Port(52));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967295\n"),
            ConnectLine::Port(u32::MAX)
        );
        assert_eq!(parse_connect_line(b"CONNECT 5"), ConnectLine::Incomplete);
        assert_eq!(parse_connect_line(b""), ConnectLine::Incomplete);
        for bad in [
            &b"CONNECT 4294967296\n"[..],
            b"CONNECT\n",
            b"CONNECT -1\n",
            b"CONNECT x\n",
            b"connect 5\n",
            b"CONNECT 5 6\n",
            b"\xff\n",
        ] {
            assert_eq!(parse_connect_line(bad), ConnectLine::Invalid, "{bad:?}");
        }
        assert_eq!(
            parse_connect_line(&[b'1'; MAX_CONNECT_LINE]),
            ConnectLine::Invalid
        );
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 1234),
            PathBuf::from("/run/v.sock_1234")
        );
    }
}
