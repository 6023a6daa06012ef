//! The `volt` binary with its console on a terminal that is full: stdin and stdout are one
//! pseudo-terminal description, as in a shell, so stdin's O_NONBLOCK reaches stdout and the
//! console's writes meet EAGAIN. A guest prints 48 KiB while nobody reads the terminal; every
//! byte must arrive, in order, once the terminal is read. Below it, the fix itself on the same
//! kind of terminal: `terminal::reopen_private` gives stdin a description of its own.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use iced_x86::code_asm::*;
use volt::terminal::reopen_private;

const BYTES: u32 = 48 * 1024;

/// Byte `i` of the guest's output: printable, never '\n' (the terminal would add '\r').
fn expected() -> Vec<u8> {
    (0..BYTES)
        .map(|i| 0x40 + i.to_le_bytes()[0] % 0x20)
        .collect()
}

/// Writes `expected()` to COM1, counting up in ebx, then resets through the i8042.
fn flood_guest() -> Vec<u8> {
    assemble(|a| {
        let mut next = a.create_label();
        a.mov(dx, 0x3f8u32)?;
        a.xor(ebx, ebx)?;
        a.set_label(&mut next)?;
        a.mov(eax, ebx)?;
        a.and(eax, 0x1fu32)?;
        a.add(eax, 0x40u32)?;
        a.out(dx, al)?;
        a.inc(ebx)?;
        a.cmp(ebx, BYTES)?;
        a.jb(next)?;
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()
    })
}

/// A pseudo-terminal: (master, slave).
fn open_pty() -> Option<(File, OwnedFd)> {
    // SAFETY: plain libc pty calls; ptsname's result is used before any other pty call.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return None;
        }
        let master = File::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return None;
        }
        let name = libc::ptsname(master.as_raw_fd());
        if name.is_null() {
            return None;
        }
        let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        (slave >= 0).then(|| (master, OwnedFd::from_raw_fd(slave)))
    }
}

fn pending_on(master: &File) -> i32 {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::FIONREAD, &mut pending) };
    pending
}

#[test]
fn a_full_terminal_loses_no_console_output() {
    if !kvm_available("a_full_terminal_loses_no_console_output") {
        return;
    }
    let Some((mut master, slave)) = open_pty() else {
        eprintln!("SKIP: no pseudo-terminal available");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &flood_guest());
    let stdin = slave.try_clone().unwrap();
    let bin = std::env::var("VOLT_TEST_BIN").unwrap_or(env!("CARGO_BIN_EXE_volt").into());
    let mut child = Command::new(bin)
        .arg("--kernel")
        .arg(&kernel)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(slave)) // the same open file description as stdin
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr all along: a full stderr pipe must not be what stops volt.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    // Do not read until the terminal is full (volt's writes then get EAGAIN), and a while more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_on(&master) < 4000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut finished = false;
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            // 0 or EIO: volt exited and closed its side.
            _ => {
                finished = true;
                break;
            }
        }
    }
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let stderr = stderr_thread.join().unwrap();
    assert!(finished, "volt did not finish within 60 s\n{stderr}");
    assert!(status.success(), "volt failed: {status}\n{stderr}");
    let want = expected();
    let start = got
        .windows(64)
        .position(|w| w == &want[..64])
        .unwrap_or_else(|| panic!("no guest output in {} bytes; stderr: {stderr}", got.len()));
    let out = &got[start..];
    assert!(
        out.len() >= want.len() && out[..want.len()] == want[..],
        "console output lost or reordered: {} of {} bytes arrived\n{stderr}",
        out.len().min(want.len()),
        want.len()
    );
}

fn flags(fd: RawFd) -> libc::c_int {
    // SAFETY: fcntl(F_GETFL) takes no pointer.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn set_nonblocking(fd: RawFd) {
    let new_flags = flags(fd) | libc::O_NONBLOCK;
    // SAFETY: fcntl(F_SETFL) with an integer argument.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, new_flags) };
    assert_eq!(ret, 0);
}

/// A pseudo-terminal's slave side, opened once and duplicated: like a shell's stdin and
/// stdout, two fds on one open file description. With the master, which must stay open.
fn shared_terminal() -> Option<(File, OwnedFd, OwnedFd)> {
    let (master, slave) = open_pty()?;
    let stdout = slave.try_clone().ok()?;
    Some((master, slave, stdout))
}

#[test]
fn nonblocking_stdin_does_not_leak_onto_a_shared_terminal_stdout() {
    let Some((_master, stdin, stdout)) = shared_terminal() else {
        eprintln!("SKIP: no pseudo-terminal available");
        return;
    };
    // Without a private description the flag is shared: the bug.
    set_nonblocking(stdin.as_raw_fd());
    assert_ne!(flags(stdout.as_raw_fd()) & libc::O_NONBLOCK, 0);
    // SAFETY: fcntl(F_SETFL) with an integer argument.
    unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_SETFL, libc::O_RDWR) };

    assert!(reopen_private(stdin.as_raw_fd(), libc::O_RDONLY).unwrap());
    set_nonblocking(stdin.as_raw_fd());
    assert_eq!(flags(stdout.as_raw_fd()) & libc::O_NONBLOCK, 0);
    // Still the same terminal.
    // SAFETY: isatty takes no pointer.
    assert_eq!(unsafe { libc::isatty(stdin.as_raw_fd()) }, 1);
}

#[test]
fn a_pipe_gets_a_private_description_and_a_file_is_left_alone() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the valid array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_DUPFD_CLOEXEC takes an integer.
    let shared = unsafe {
        OwnedFd::from_raw_fd(libc::fcntl(write_end.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0))
    };
    assert!(reopen_private(write_end.as_raw_fd(), libc::O_WRONLY).unwrap());
    set_nonblocking(write_end.as_raw_fd());
    assert_eq!(flags(shared.as_raw_fd()) & libc::O_NONBLOCK, 0);
    // Writes through the private description reach the same pipe.
    // SAFETY: valid buffer of the given length.
    let written = unsafe { libc::write(write_end.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(written, 1);
    let mut byte = 0u8;
    // SAFETY: valid one-byte buffer.
    let read = unsafe { libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    assert_eq!(read, 1);
    assert_eq!(byte, b'x');

    let file = tempfile::tempfile().unwrap();
    assert!(!reopen_private(file.as_raw_fd(), libc::O_WRONLY).unwrap());
}
