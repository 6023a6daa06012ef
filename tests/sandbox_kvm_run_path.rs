//! The seccomp allow-lists against Volt's real run-time shape, in Kill mode: a vCPU thread runs
//! `KVM_RUN` on a real-mode guest and forwards its port I/O over a crossbeam channel, waking a
//! mio event loop through a `Waker`; the loop answers, then kicks the vCPU out of `KVM_RUN` with a
//! signal; the main thread joins both. Landlock is in force too, as in Volt. Any call missing from a list kills the child with SIGSYS.
//! Runs in a re-executed copy of this test binary; prints `SKIP:` without usable /dev/kvm.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::os::unix::thread::JoinHandleExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use mio::{Events, Poll, Token, Waker};

use volt::sandbox::{
    apply_seccomp, close_inherited_fds, lock_down_process, SandboxConfig, SeccompMode, ThreadKind,
};

const CHILD_ENV: &str = "VOLT_SANDBOX_TEST_CHILD";
const GUEST_MEM: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
/// in al, 0x10 ; out 0x11, al ; out 0x12, al ; jmp $
const GUEST_CODE: [u8; 8] = [0xE4, 0x10, 0xE6, 0x11, 0xE6, 0x12, 0xEB, 0xFE];
const ANSWER: u8 = 0x5A;
const WAKER: Token = Token(0);

/// What the vCPU tells the event loop.
enum Exit {
    In(u16),
    Out(u16, u8),
    Kicked,
}

extern "C" fn ignore_kick(_: libc::c_int) {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

fn setup_vcpu(kvm: &Kvm) -> Result<(kvm_ioctls::VmFd, VcpuFd), String> {
    let vm = kvm.create_vm().map_err(|e| format!("create_vm: {e}"))?;
    // SAFETY: a fresh anonymous mapping, leaked for the life of the process (the guest's RAM).
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUEST_MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap guest memory failed".into());
    }
    // SAFETY: the code fits in the mapping at CODE_ADDR.
    unsafe {
        std::ptr::copy_nonoverlapping(
            GUEST_CODE.as_ptr(),
            (mem as *mut u8).add(usize::try_from(CODE_ADDR).unwrap()),
            GUEST_CODE.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: GUEST_MEM as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region is a valid mapping that outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory region: {e}"))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| format!("create_vcpu: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get_sregs: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set_sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| format!("set_regs: {e}"))?;
    Ok((vm, vcpu))
}

fn vcpu_thread(
    mut vcpu: VcpuFd,
    exits: Sender<Exit>,
    replies: Receiver<u8>,
    waker: std::sync::Arc<Waker>,
) -> Result<(), String> {
    apply_seccomp(ThreadKind::Vcpu, SeccompMode::Kill).map_err(|e| e.to_string())?;
    log::info!("vcpu: filtered, entering KVM_RUN");
    loop {
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                exits.send(Exit::In(port)).map_err(|e| e.to_string())?;
                waker.wake().map_err(|e| format!("wake: {e}"))?;
                data[0] = replies.recv().map_err(|e| e.to_string())?;
                continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => Exit::Out(port, data[0]),
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR => Exit::Kicked,
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        };
        let kicked = matches!(exit, Exit::Kicked);
        exits.send(exit).map_err(|e| e.to_string())?;
        waker.wake().map_err(|e| format!("wake: {e}"))?;
        if kicked {
            log::info!("vcpu: kicked out of KVM_RUN, exiting");
            return Ok(());
        }
    }
}

/// Returns the byte the guest echoed back.
fn event_loop_thread(
    mut poll: Poll,
    exits: Receiver<Exit>,
    replies: Sender<u8>,
    vcpu_thread: libc::pthread_t,
) -> Result<u8, String> {
    apply_seccomp(ThreadKind::EventLoop, SeccompMode::Kill).map_err(|e| e.to_string())?;
    log::info!("loop: filtered, polling");
    let mut events = Events::with_capacity(8);
    let mut echoed = None;
    let mut kicking = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .map_err(|e| format!("poll: {e}"))?;
        for exit in exits.try_iter() {
            match exit {
                Exit::In(0x10) => replies.send(ANSWER).map_err(|e| e.to_string())?,
                Exit::Out(0x11, value) => echoed = Some(value),
                Exit::Out(0x12, _) => kicking = true,
                Exit::Kicked => return echoed.ok_or("the guest never echoed".to_string()),
                Exit::In(port) | Exit::Out(port, _) => return Err(format!("port {port:#x}")),
            }
        }
        if kicking {
            // Repeated: a kick landing between two KVM_RUNs is absorbed by the handler.
            // SAFETY: the vCPU thread is alive until it reports Kicked.
            let rc = unsafe { libc::pthread_kill(vcpu_thread, kick_signal()) };
            if rc != 0 {
                return Err(format!(
                    "pthread_kill: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
        }
    }
    Err("timed out waiting for the vCPU".into())
}

fn child_body() -> Result<(), String> {
    // Logging as volt's main sets it up: timestamps, colour auto-detection, stderr.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .init();
    // Volt's start-up order: drop inherited fds, open everything, lock the process down, spawn.
    close_inherited_fds().map_err(|e| e.to_string())?;
    let kvm = Kvm::new().map_err(|e| format!("SKIP-KVM: {e}"))?;
    let (_vm, vcpu) = setup_vcpu(&kvm)?;
    let report = lock_down_process(&SandboxConfig::default(), &[]).map_err(|e| e.to_string())?;
    if !report.no_new_privs {
        return Err(format!("no_new_privs missing: {report:?}"));
    }
    // SAFETY: installing a handler that does nothing; no SA_RESTART so KVM_RUN returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_kick as *const () as usize;
        libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
    }
    let poll = Poll::new().map_err(|e| e.to_string())?;
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
    let (exit_tx, exit_rx) = unbounded();
    let (reply_tx, reply_rx) = unbounded();

    let vcpu_handle = std::thread::spawn(move || vcpu_thread(vcpu, exit_tx, reply_rx, waker));
    let vcpu_pthread = vcpu_handle.as_pthread_t();
    let loop_handle =
        std::thread::spawn(move || event_loop_thread(poll, exit_rx, reply_tx, vcpu_pthread));

    apply_seccomp(ThreadKind::Main, SeccompMode::Kill).map_err(|e| e.to_string())?;
    let echoed = loop_handle.join().map_err(|_| "event loop panicked")??;
    vcpu_handle.join().map_err(|_| "vcpu panicked")??;
    if echoed != ANSWER {
        return Err(format!("guest echoed {echoed:#x}, expected {ANSWER:#x}"));
    }
    // Terminal restore on the main thread (stderr is not a tty here: ENOTTY, but not killed).
    let mut termios = [0u8; 64];
    // SAFETY: the buffer is bigger than struct termios.
    unsafe { libc::ioctl(2, libc::TCGETS, termios.as_mut_ptr()) };
    log::info!("main: both threads joined, guest echoed {echoed:#x}");
    Ok(())
}

/// Where the child's stderr, and so its log, goes: env_logger behaves differently on a terminal
/// (it checks the terminal on every record), which is how Volt usually runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogSink {
    File,
    Terminal,
}

/// A pseudo-terminal pair (master, slave).
fn open_pty() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    // SAFETY: standard posix_openpt sequence; every descriptor is owned by a File at once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let master_file = std::fs::File::from_raw_fd(master);
        if libc::grantpt(master) != 0 || libc::unlockpt(master) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((master_file, std::fs::File::from_raw_fd(slave)))
    }
}

/// Runs the run-path child with its log going to `sink`; returns its status and log, or None
/// (after printing `SKIP:`) when KVM is not usable.
fn run_path_child(name: &str, sink: LogSink) -> Option<(ExitStatus, String)> {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        let code = match child_body() {
            Ok(()) => {
                eprintln!("CHILD OK");
                0
            }
            Err(msg) => {
                eprintln!("CHILD FAILED: {msg}");
                1
            }
        };
        // The normal exit path (atexit handlers, stdio flush) under the main thread's filter.
        std::process::exit(code)
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("SKIP: /dev/kvm unusable: {e}");
        return None;
    }
    let mut log_file = tempfile::tempfile().unwrap();
    let mut pty_reader = None;
    let stderr = match sink {
        LogSink::File => Stdio::from(log_file.try_clone().unwrap()),
        LogSink::Terminal => {
            let (mut master, slave) = open_pty().expect("open a pseudo-terminal");
            // Drain the terminal while the child writes; EIO once the child has exited.
            pty_reader = Some(std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = master.read(&mut chunk) {
                    bytes.extend_from_slice(&chunk[..n]);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }));
            Stdio::from(slave)
        }
    };
    let mut child = {
        // Dropped right after spawning so the parent keeps no copy of the terminal's slave.
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, name)
            .stdout(Stdio::null())
            .stderr(stderr);
        command.spawn().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("child hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = match pty_reader {
        Some(reader) => reader.join().unwrap(),
        None => {
            let mut text = String::new();
            std::io::Seek::rewind(&mut log_file).unwrap();
            log_file.read_to_string(&mut text).unwrap();
            text
        }
    };
    eprintln!("--- child: {status:?}\n{log}");
    if log.contains("SKIP-KVM") {
        eprintln!("SKIP: KVM cannot create a VM here");
        return None;
    }
    Some((status, log))
}

fn assert_run_path_survived(name: &str, sink: LogSink) {
    let Some((status, log)) = run_path_child(name, sink) else {
        return;
    };
    assert_ne!(
        status.signal(),
        Some(libc::SIGSYS),
        "a thread made a call its seccomp list lacks: {log}"
    );
    assert_eq!(status.code(), Some(0), "child failed: {log}");
    assert!(log.contains("CHILD OK"), "{log}");
    assert!(log.contains("guest echoed 0x5a"), "{log}");
}

#[test]
fn filters_survive_the_run_path_logging_to_a_file() {
    assert_run_path_survived(
        "filters_survive_the_run_path_logging_to_a_file",
        LogSink::File,
    );
}

#[test]
fn filters_survive_the_run_path_logging_to_a_terminal() {
    assert_run_path_survived(
        "filters_survive_the_run_path_logging_to_a_terminal",
        LogSink::Terminal,
    );
}
