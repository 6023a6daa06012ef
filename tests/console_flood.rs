//! The `volt` binary with its console on a terminal that is full: stdin and stdout are one
//! pseudo-terminal description, as in a shell, so stdin's O_NONBLOCK reaches stdout and the
//! console's writes meet EAGAIN. A guest prints 48 KiB while nobody reads the terminal; every
//! byte must arrive, in order, once the terminal is read.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use iced_x86::code_asm::*;

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
