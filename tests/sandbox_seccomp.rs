//! Seccomp filters installed for real. Each test re-executes this test binary with an
//! environment variable naming the test: the copy applies the filter, exercises system calls and
//! `_exit`s; the parent checks the exit status or the signal, so the test harness itself is never
//! filtered.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use common::isolated::{assert_child_succeeded, run_isolated};
use volt::sandbox::{apply_seccomp, describe_filters, filter_for, SeccompMode, ThreadKind};

const KVM_RUN: libc::c_ulong = 0xAE80;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54D0;

/// Asserts that the child reached `marker` and was then killed by SIGSYS before printing
/// `SURVIVED`.
fn assert_killed_by_sigsys_after(output: &Output, marker: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(marker),
        "child never reached `{marker}`: {stderr}"
    );
    assert!(
        !stderr.contains("SURVIVED"),
        "forbidden call went through: {stderr}"
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSYS),
        "status {:?}",
        output.status
    );
}

/// Checks a raw return value: `Ok(rc)` if it is not -1.
fn ok(what: &str, rc: libc::c_long) -> Result<libc::c_long, String> {
    if rc == -1 {
        Err(format!("{what} failed: {}", io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

/// Checks that a raw call failed with `errno`.
fn fails_with(what: &str, rc: libc::c_long, errno: i32) -> Result<(), String> {
    let got = io::Error::last_os_error();
    if rc == -1 && got.raw_os_error() == Some(errno) {
        Ok(())
    } else {
        Err(format!(
            "{what}: rc={rc} ({got}), expected {}",
            io::Error::from_raw_os_error(errno)
        ))
    }
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    ok("pipe", unsafe { libc::pipe(fds.as_mut_ptr()) }
        as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

fn write_fd(fd: i32, bytes: &[u8]) -> libc::c_long {
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) as libc::c_long }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> libc::c_long {
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) as libc::c_long }
}

fn ioctl(fd: i32, request: libc::c_ulong) -> libc::c_long {
    let mut scratch = [0u8; 128];
    // SAFETY: the scratch buffer is bigger than any argument the tested requests read or write.
    unsafe { libc::ioctl(fd, request, scratch.as_mut_ptr()) as libc::c_long }
}

fn futex_wake(word: &u32) -> libc::c_long {
    // SAFETY: waking waiters of a valid address has no other effect.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const u32,
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    }
}

fn socket() -> libc::c_long {
    // SAFETY: plain socket creation.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as libc::c_long }
}

fn unix_socket(type_: libc::c_int) -> libc::c_long {
    // SAFETY: plain socket creation.
    unsafe { libc::socket(libc::AF_UNIX, type_, 0) as libc::c_long }
}

fn shutdown(fd: i32, how: libc::c_int) -> libc::c_long {
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(fd, how) as libc::c_long }
}

fn open_read(path: &str) -> libc::c_long {
    let path = CString::new(path).unwrap();
    // SAFETY: NUL-terminated path.
    unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_long }
}

fn execve_true() -> libc::c_long {
    let path = CString::new("/bin/true").unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NULL-terminated argv/envp of valid C strings.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) as libc::c_long }
}

fn mmap_anon(prot: i32) -> libc::c_long {
    // SAFETY: a fresh anonymous mapping does not alias anything.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        -1
    } else {
        addr as libc::c_long
    }
}

fn gettid() -> libc::c_long {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn tgkill(pid: libc::c_long, tid: libc::c_long) -> libc::c_long {
    // SAFETY: signal 0 only checks that the target exists.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) }
}

fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), String> {
    apply_seccomp(kind, mode).map_err(|e| e.to_string())
}

#[test]
fn vcpu_filter_errno_mode_allows_only_the_vcpu_calls() {
    let output = run_isolated(
        "vcpu_filter_errno_mode_allows_only_the_vcpu_calls",
        |_| {},
        || {
            let (rd, wr) = pipe()?;
            let futex_word = 0u32;
            install(ThreadKind::Vcpu, SeccompMode::Errno)?;

            // Allowed: eventfd-style write, futex, memory, KVM_RUN (ENOTTY on a pipe means the
            // filter let it reach the kernel).
            ok("write to pipe", write_fd(wr, b"x"))?;
            ok("futex wake", futex_wake(&futex_word))?;
            ok("mmap rw", mmap_anon(libc::PROT_READ | libc::PROT_WRITE))?;
            fails_with("ioctl KVM_RUN on a pipe", ioctl(rd, KVM_RUN), libc::ENOTTY)?;
            let boxed = vec![7u8; 1 << 20]; // malloc still works
            if boxed[12345] != 7 {
                return Err("allocation corrupted".into());
            }

            // Refused with EPERM.
            fails_with("ioctl TCGETS", ioctl(rd, libc::TCGETS), libc::ENOTTY)?;
            fails_with("ioctl TCSETS", ioctl(rd, libc::TCSETS), libc::EPERM)?;
            fails_with("ioctl TUNSETOFFLOAD", ioctl(rd, TUNSETOFFLOAD), libc::EPERM)?;
            fails_with("read", read_fd(rd, &mut [0u8; 1]), libc::EPERM)?;
            fails_with("openat", open_read("/etc/hostname"), libc::EPERM)?;
            fails_with("socket", socket(), libc::EPERM)?;
            fails_with("execve", execve_true(), libc::EPERM)?;
            fails_with(
                "mmap PROT_EXEC",
                mmap_anon(libc::PROT_READ | libc::PROT_EXEC),
                libc::EPERM,
            )?;
            if std::thread::Builder::new().spawn(|| ()).is_ok() {
                return Err("a vCPU thread could spawn a thread".into());
            }
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn vcpu_filter_kill_mode_kills_on_socket() {
    let output = run_isolated(
        "vcpu_filter_kill_mode_kills_on_socket",
        |_| {},
        || {
            let (_rd, wr) = pipe()?;
            install(ThreadKind::Vcpu, SeccompMode::Kill)?;
            ok("write to pipe", write_fd(wr, b"x"))?;
            eprintln!("ALLOWED CALLS OK, now socket()");
            socket();
            eprintln!("SURVIVED");
            Ok(())
        },
    );
    assert_killed_by_sigsys_after(&output, "ALLOWED CALLS OK");
}

#[test]
fn vcpu_filter_kill_mode_kills_on_a_foreign_ioctl() {
    let output = run_isolated(
        "vcpu_filter_kill_mode_kills_on_a_foreign_ioctl",
        |_| {},
        || {
            let (rd, _wr) = pipe()?;
            install(ThreadKind::Vcpu, SeccompMode::Kill)?;
            fails_with("ioctl KVM_RUN on a pipe", ioctl(rd, KVM_RUN), libc::ENOTTY)?;
            eprintln!("KVM_RUN PASSED THE FILTER, now TCSETS");
            ioctl(rd, libc::TCSETS);
            eprintln!("SURVIVED");
            Ok(())
        },
    );
    assert_killed_by_sigsys_after(&output, "KVM_RUN PASSED THE FILTER");
}

#[test]
fn event_loop_filter_errno_mode_allows_device_io_only() {
    let output = run_isolated(
        "event_loop_filter_errno_mode_allows_device_io_only",
        |_| {},
        || {
            let disk = tempfile::tempfile().map_err(|e| e.to_string())?;
            disk.write_all_at(b"sector zero", 0)
                .map_err(|e| e.to_string())?;
            let (rd, wr) = pipe()?;
            // SAFETY: plain epoll instance creation.
            let epoll = ok("epoll_create1", unsafe { libc::epoll_create1(0) }
                as libc::c_long)?;
            let epoll = i32::try_from(epoll).map_err(|e| e.to_string())?;
            let tid = gettid();
            // SAFETY: no arguments.
            let pid = unsafe { libc::getpid() } as libc::c_long;
            install(ThreadKind::EventLoop, SeccompMode::Errno)?;

            // Disk image I/O.
            let mut buf = [0u8; 11];
            disk.read_exact_at(&mut buf, 0)
                .map_err(|e| format!("pread: {e}"))?;
            if &buf != b"sector zero" {
                return Err(format!("pread returned {buf:?}"));
            }
            disk.write_all_at(b"one", 512)
                .map_err(|e| format!("pwrite: {e}"))?;
            disk.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
            let len = disk.metadata().map_err(|e| format!("fstat: {e}"))?.len();
            if len != 515 {
                return Err(format!("disk length {len}"));
            }
            // Pipes / eventfds, epoll.
            ok("write", write_fd(wr, b"y"))?;
            ok("read", read_fd(rd, &mut [0u8; 1]))?;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: events has room for 4 entries.
            let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 4, 0) };
            ok("epoll_wait", libc::c_long::from(ready))?;
            // Allowed ioctl numbers reach the kernel (ENOTTY on a pipe), others do not.
            fails_with("ioctl TCGETS", ioctl(rd, libc::TCGETS), libc::ENOTTY)?;
            fails_with(
                "ioctl TUNSETOFFLOAD",
                ioctl(rd, TUNSETOFFLOAD),
                libc::ENOTTY,
            )?;
            fails_with("ioctl KVM_RUN", ioctl(rd, KVM_RUN), libc::EPERM)?;
            // Signals only to our own threads.
            ok("tgkill own thread", tgkill(pid, tid))?;
            fails_with("tgkill pid 1", tgkill(1, 1), libc::EPERM)?;
            // No new files, sockets or programs.
            fails_with("openat", open_read("/etc/hostname"), libc::EPERM)?;
            fails_with("socket", socket(), libc::EPERM)?;
            fails_with("execve", execve_true(), libc::EPERM)?;
            // vsock: non-blocking close-on-exec AF_UNIX stream sockets only, SHUT_WR only.
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let unix = ok(
                "AF_UNIX stream socket",
                unix_socket(libc::SOCK_STREAM | flags),
            )? as i32;
            fails_with(
                "blocking AF_UNIX socket",
                unix_socket(libc::SOCK_STREAM),
                libc::EPERM,
            )?;
            fails_with(
                "AF_UNIX datagram socket",
                unix_socket(libc::SOCK_DGRAM | flags),
                libc::EPERM,
            )?;
            ok("shutdown SHUT_WR", shutdown(unix, libc::SHUT_WR))?;
            fails_with(
                "shutdown SHUT_RD",
                shutdown(unix, libc::SHUT_RD),
                libc::EPERM,
            )?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn event_loop_filter_kill_mode_kills_on_socket() {
    let output = run_isolated(
        "event_loop_filter_kill_mode_kills_on_socket",
        |_| {},
        || {
            let disk = tempfile::tempfile().map_err(|e| e.to_string())?;
            disk.write_all_at(b"abc", 0).map_err(|e| e.to_string())?;
            install(ThreadKind::EventLoop, SeccompMode::Kill)?;
            let mut buf = [0u8; 3];
            disk.read_exact_at(&mut buf, 0)
                .map_err(|e| format!("pread: {e}"))?;
            eprintln!("PREAD OK, now socket()");
            socket();
            eprintln!("SURVIVED");
            Ok(())
        },
    );
    assert_killed_by_sigsys_after(&output, "PREAD OK");
}

#[test]
fn main_filter_errno_mode_allows_terminal_restore_only() {
    let output = run_isolated(
        "main_filter_errno_mode_allows_terminal_restore_only",
        |_| {},
        || {
            let (rd, wr) = pipe()?;
            let disk = tempfile::tempfile().map_err(|e| e.to_string())?;
            install(ThreadKind::Main, SeccompMode::Errno)?;

            ok("write", write_fd(wr, b"z"))?;
            fails_with("ioctl TCGETS", ioctl(rd, libc::TCGETS), libc::ENOTTY)?;
            fails_with("ioctl TCSETSW", ioctl(rd, libc::TCSETSW), libc::ENOTTY)?;
            fails_with("ioctl TUNSETOFFLOAD", ioctl(rd, TUNSETOFFLOAD), libc::EPERM)?;
            fails_with("ioctl KVM_RUN", ioctl(rd, KVM_RUN), libc::EPERM)?;
            fails_with("read", read_fd(rd, &mut [0u8; 1]), libc::EPERM)?;
            match disk.read_at(&mut [0u8; 1], 0) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                other => return Err(format!("pread on the main thread: {other:?}")),
            }
            fails_with("socket", socket(), libc::EPERM)?;
            fails_with("openat", open_read("/etc/hostname"), libc::EPERM)?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn main_filter_kill_mode_kills_on_execve() {
    let output = run_isolated(
        "main_filter_kill_mode_kills_on_execve",
        |_| {},
        || {
            install(ThreadKind::Main, SeccompMode::Kill)?;
            eprintln!("FILTER INSTALLED, now execve()");
            execve_true();
            eprintln!("SURVIVED");
            Ok(())
        },
    );
    assert_killed_by_sigsys_after(&output, "FILTER INSTALLED");
}

#[test]
fn log_mode_lets_unlisted_calls_through() {
    let output = run_isolated(
        "log_mode_lets_unlisted_calls_through",
        |_| {},
        || {
            install(ThreadKind::Vcpu, SeccompMode::Log)?;
            let fd = ok("socket under the log action", socket())?;
            // SAFETY: closing the socket we just created.
            unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn filter_is_per_thread() {
    // Filtering one thread must leave the others (e.g. the main thread while it still sets
    // things up) unrestricted: no TSYNC.
    let output = run_isolated(
        "filter_is_per_thread",
        |_| {},
        || {
            let filtered = std::thread::spawn(|| {
                install(ThreadKind::Vcpu, SeccompMode::Errno)?;
                fails_with("socket on the filtered thread", socket(), libc::EPERM)
            });
            filtered.join().map_err(|_| "filtered thread panicked")??;
            let fd = ok("socket on an unfiltered thread", socket())?;
            // SAFETY: closing the socket we just created.
            unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn off_mode_builds_no_filter() {
    for kind in ThreadKind::ALL {
        assert!(filter_for(kind, SeccompMode::Off).unwrap().is_none());
        assert!(filter_for(kind, SeccompMode::Kill).unwrap().is_some());
    }
}

#[test]
fn describe_filters_lists_every_thread_kind() {
    let mut out = Vec::new();
    describe_filters(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for kind in ThreadKind::ALL {
        assert!(
            text.contains(&format!("[{kind}]")),
            "{kind} missing:\n{text}"
        );
    }
    for needle in [
        "KVM_RUN",
        "TUNSETOFFLOAD",
        "TCSETSW",
        "PROT_EXEC",
        "own pid",
        "epoll_wait",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    io::stderr().write_all(text.as_bytes()).unwrap();
}

#[test]
fn event_loop_filter_allows_the_rng_and_balloon_calls_only_as_listed() {
    let output = run_isolated(
        "event_loop_filter_allows_the_rng_and_balloon_calls_only_as_listed",
        |_| {},
        || {
            let page = ok("mmap", mmap_anon(libc::PROT_READ | libc::PROT_WRITE))?;
            // SAFETY: plain timerfd creation.
            let timer = ok("timerfd_create", unsafe {
                libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC)
            } as libc::c_long)? as i32;
            install(ThreadKind::EventLoop, SeccompMode::Errno)?;

            let madvise = |advice| {
                // SAFETY: `page` is a private anonymous page this child owns.
                unsafe { libc::madvise(page as *mut libc::c_void, 4096, advice) as libc::c_long }
            };
            ok(
                "madvise MADV_DONTNEED (balloon)",
                madvise(libc::MADV_DONTNEED),
            )?;
            fails_with(
                "madvise MADV_REMOVE",
                madvise(libc::MADV_REMOVE),
                libc::EPERM,
            )?;
            fails_with("madvise MADV_FREE", madvise(libc::MADV_FREE), libc::EPERM)?;
            fails_with(
                "madvise MADV_HWPOISON",
                madvise(libc::MADV_HWPOISON),
                libc::EPERM,
            )?;
            let mut bytes = [0u8; 32];
            // SAFETY: bytes is a valid writable buffer.
            ok("getrandom (virtio-rng)", unsafe {
                libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0)
            } as libc::c_long)?;
            // SAFETY: zeroed itimerspec disarms; no old value is requested.
            let spec: libc::itimerspec = unsafe { std::mem::zeroed() };
            // SAFETY: valid timerfd and itimerspec.
            ok("timerfd_settime (rng/balloon timers)", unsafe {
                libc::timerfd_settime(timer, 0, &spec, std::ptr::null_mut())
            }
                as libc::c_long)?;
            // SAFETY: no pointers; creating new timers is not the loop's business.
            let created = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) };
            fails_with("timerfd_create", created as libc::c_long, libc::EPERM)?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}
