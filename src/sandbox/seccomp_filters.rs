//! Seccomp-BPF allow-lists, one per thread kind, in the spirit of Firecracker's filters.
//!
//! Each thread installs its own filter (no TSYNC) once its set-up is over, so the list only has
//! to cover what the thread does while the guest runs. The lists are plain tables
//! ([`AllowedSyscall`]) so that the same data builds the BPF program and prints
//! `volt --print-seccomp`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::SandboxError;

/// The threads of the VMM; each gets its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU worker: loops on `KVM_RUN` and forwards exits to the event loop.
    Vcpu,
    /// The single-threaded mio loop that owns every device.
    EventLoop,
    /// The main thread once the others are running: waits, then restores the terminal.
    Main,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Main];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Main => "main",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens to a system call that is not on the allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the whole process with SIGSYS (production default).
    #[default]
    Kill,
    /// Fail the call with EPERM (debugging: the VMM keeps running and reports the error).
    Errno,
    /// Allow the call but log it to the kernel audit log (to grow the lists).
    Log,
    /// No filter at all (`--no-seccomp`).
    Off,
}

impl SeccompMode {
    fn mismatch_action(self) -> Option<SeccompAction> {
        match self {
            SeccompMode::Kill => Some(SeccompAction::KillProcess),
            SeccompMode::Errno => Some(SeccompAction::Errno(libc::EPERM as u32)),
            SeccompMode::Log => Some(SeccompAction::Log),
            SeccompMode::Off => None,
        }
    }
}

impl FromStr for SeccompMode {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "errno" => Ok(SeccompMode::Errno),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(SandboxError::UnknownSeccompMode(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Errno => "errno",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The condition a call's arguments must meet for the call to be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgRule {
    /// Any arguments.
    Any,
    /// The 32-bit argument `arg` equals one of the named values (ioctl request numbers).
    OneOf {
        arg: u8,
        values: &'static [(&'static str, u64)],
    },
    /// Every bit of `mask` is clear in argument `arg` (e.g. no PROT_EXEC).
    BitsClear {
        arg: u8,
        mask: u64,
        mask_name: &'static str,
    },
    /// Every bit of `mask` is set in argument `arg` (e.g. AT_EMPTY_PATH: fd-only stat).
    BitsSet {
        arg: u8,
        mask: u64,
        mask_name: &'static str,
    },
    /// Argument `arg` is this process's id, read when the filter is built (signals stay inside
    /// the VMM).
    OwnPid { arg: u8 },
    /// Argument `arg` is the snapshot directory's fd (`--snapshot-dir`), read when the filter
    /// is built; without a snapshot directory nothing matches.
    SnapshotDirFd { arg: u8 },
    /// Every listed 32-bit argument equals its named value (e.g. socket's domain and type).
    AllEqual {
        args: &'static [(u8, &'static str, u64)],
    },
}

/// The fd of `--snapshot-dir`, if any (set once at start-up, before the filters are built).
static SNAPSHOT_DIR_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Lets the event loop create files under the directory open at `fd` (snapshots).
pub fn set_snapshot_dir_fd(fd: i32) {
    SNAPSHOT_DIR_FD.store(fd, std::sync::atomic::Ordering::Release);
}

/// One line of an allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedSyscall {
    pub name: &'static str,
    pub nr: i64,
    pub rule: ArgRule,
    /// Why the thread needs it (printed by `--print-seccomp`).
    pub why: &'static str,
}

const fn allow(name: &'static str, nr: i64, why: &'static str) -> AllowedSyscall {
    AllowedSyscall {
        name,
        nr,
        rule: ArgRule::Any,
        why,
    }
}

const fn allow_if(name: &'static str, nr: i64, rule: ArgRule, why: &'static str) -> AllowedSyscall {
    AllowedSyscall {
        name,
        nr,
        rule,
        why,
    }
}

// ioctl request numbers (x86_64 / generic Linux encoding).
/// `_IO(KVMIO = 0xAE, 0x80)`.
pub const KVM_RUN: u64 = 0xAE80;
/// `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = 0x4004_54D0;

/// `_IOC(dir, KVMIO, nr, size)` for the KVM requests the snapshot and pause code makes.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOR: u64 = 2;
const IOW: u64 = 1;
const IOWR: u64 = 3;
use kvm_bindings as kb;
use std::mem::size_of;
/// Pause/resume keep the guest clock: read on pause, written back on resume (event loop).
pub const KVM_GET_CLOCK: u64 = kvm_ioc(IOR, 0x7c, size_of::<kb::kvm_clock_data>());
pub const KVM_SET_CLOCK: u64 = kvm_ioc(IOW, 0x7b, size_of::<kb::kvm_clock_data>());
/// Snapshot of the VM-wide state (event loop).
pub const KVM_GET_IRQCHIP: u64 = kvm_ioc(IOWR, 0x62, size_of::<kb::kvm_irqchip>());
pub const KVM_GET_PIT2: u64 = kvm_ioc(IOR, 0x9f, size_of::<kb::kvm_pit_state2>());
/// Snapshot of a vCPU's state (its own thread, while parked).
pub const KVM_GET_REGS: u64 = kvm_ioc(IOR, 0x81, size_of::<kb::kvm_regs>());
pub const KVM_GET_SREGS: u64 = kvm_ioc(IOR, 0x83, size_of::<kb::kvm_sregs>());
pub const KVM_GET_FPU: u64 = kvm_ioc(IOR, 0x8c, size_of::<kb::kvm_fpu>());
pub const KVM_GET_XSAVE: u64 = kvm_ioc(IOR, 0xa4, size_of::<kb::kvm_xsave>());
pub const KVM_GET_XCRS: u64 = kvm_ioc(IOR, 0xa6, size_of::<kb::kvm_xcrs>());
pub const KVM_GET_LAPIC: u64 = kvm_ioc(IOR, 0x8e, size_of::<kb::kvm_lapic_state>());
pub const KVM_GET_MSRS: u64 = kvm_ioc(IOWR, 0x88, size_of::<kb::kvm_msrs>());
pub const KVM_GET_MP_STATE: u64 = kvm_ioc(IOR, 0x98, size_of::<kb::kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOR, 0x9f, size_of::<kb::kvm_vcpu_events>());
// libc's `Ioctl` is c_ulong on glibc but c_int on musl, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub const TCGETS: u64 = libc::TCGETS as u64;
#[allow(clippy::unnecessary_cast)]
pub const TCSETS: u64 = libc::TCSETS as u64;
#[allow(clippy::unnecessary_cast)]
pub const TCSETSW: u64 = libc::TCSETSW as u64;

/// Flags of every vsock socket (`accept4` flags; added to `socket`'s type).
const VSOCK_SOCK_FLAGS: u64 = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
const VSOCK_SOCKET_TYPE: u64 = libc::SOCK_STREAM as u64 | VSOCK_SOCK_FLAGS;

const NO_EXEC: ArgRule = ArgRule::BitsClear {
    arg: 2,
    mask: libc::PROT_EXEC as u64,
    mask_name: "PROT_EXEC",
};

/// Needed by every thread: allocation, synchronisation, signals, logging, exit.
const COMMON: &[AllowedSyscall] = &[
    allow(
        "futex",
        libc::SYS_futex,
        "channel / mutex / join wait and wake",
    ),
    allow(
        "sched_yield",
        libc::SYS_sched_yield,
        "crossbeam-channel spin back-off",
    ),
    allow_if(
        "mmap",
        libc::SYS_mmap,
        NO_EXEC,
        "memory allocation, never executable",
    ),
    allow_if(
        "mprotect",
        libc::SYS_mprotect,
        NO_EXEC,
        "glibc malloc grows thread arenas, never executable",
    ),
    allow(
        "munmap",
        libc::SYS_munmap,
        "memory release, thread stack teardown",
    ),
    allow("mremap", libc::SYS_mremap, "realloc of large buffers"),
    allow("brk", libc::SYS_brk, "heap growth"),
    allow_if(
        "madvise",
        libc::SYS_madvise,
        ArgRule::OneOf {
            arg: 2,
            values: &[("MADV_DONTNEED", libc::MADV_DONTNEED as u64)],
        },
        "free memory back (malloc trim, thread exit); the balloon drops guest pages (loop)",
    ),
    allow(
        "rt_sigreturn",
        libc::SYS_rt_sigreturn,
        "return from a signal handler (vCPU kick)",
    ),
    allow(
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        "signal masking in glibc and at thread exit",
    ),
    allow(
        "sigaltstack",
        libc::SYS_sigaltstack,
        "Rust stack-overflow guard, removed at thread exit",
    ),
    allow(
        "clock_gettime",
        libc::SYS_clock_gettime,
        "log timestamps, timeouts (vDSO fallback)",
    ),
    allow(
        "getrandom",
        libc::SYS_getrandom,
        "hash map seeds; virtio-rng entropy for the guest (loop)",
    ),
    allow(
        "write",
        libc::SYS_write,
        "stderr logging, eventfd signalling, API answers",
    ),
    allow("close", libc::SYS_close, "dropping file descriptors"),
    allow(
        "restart_syscall",
        libc::SYS_restart_syscall,
        "resume a wait interrupted by a signal",
    ),
    allow("exit", libc::SYS_exit, "thread exit"),
    allow("exit_group", libc::SYS_exit_group, "process exit"),
];

/// `fcntl(F_GETFD)`: debug builds of std check an OwnedFd is open before closing it.
const FCNTL_GETFD: AllowedSyscall = allow_if(
    "fcntl",
    libc::SYS_fcntl,
    ArgRule::OneOf {
        arg: 1,
        values: &[("F_GETFD", libc::F_GETFD as u64)],
    },
    "debug builds of std check an OwnedFd is open before closing it",
);

/// `pthread_kill` looks up its own pid, then signals one of our threads with tgkill.
const GETPID: AllowedSyscall = allow(
    "getpid",
    libc::SYS_getpid,
    "pthread_kill looks up its own pid",
);
const TGKILL_OWN_PROCESS: AllowedSyscall = allow_if(
    "tgkill",
    libc::SYS_tgkill,
    ArgRule::OwnPid { arg: 0 },
    "kick vCPU threads out of KVM_RUN, own process only",
);

/// A vCPU thread only runs the guest; its fds, registers and memory are set up before.
const VCPU: &[AllowedSyscall] = &[
    FCNTL_GETFD,
    allow_if(
        "ioctl",
        libc::SYS_ioctl,
        ArgRule::OneOf {
            arg: 1,
            values: &[
                ("KVM_RUN", KVM_RUN),
                ("TCGETS", TCGETS),
                ("KVM_GET_REGS", KVM_GET_REGS),
                ("KVM_GET_SREGS", KVM_GET_SREGS),
                ("KVM_GET_FPU", KVM_GET_FPU),
                ("KVM_GET_XSAVE", KVM_GET_XSAVE),
                ("KVM_GET_XCRS", KVM_GET_XCRS),
                ("KVM_GET_LAPIC", KVM_GET_LAPIC),
                ("KVM_GET_MSRS", KVM_GET_MSRS),
                ("KVM_GET_MP_STATE", KVM_GET_MP_STATE),
                ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS),
            ],
        },
        "run the guest; env_logger asks whether stderr is a terminal on every record; \
         KVM_GET_* read the vCPU's state for a snapshot (only while parked)",
    ),
];

/// The event loop moves bytes between devices and their host back-ends.
const EVENT_LOOP: &[AllowedSyscall] = &[
    FCNTL_GETFD,
    allow("epoll_wait", libc::SYS_epoll_wait, "mio poll"),
    allow("epoll_pwait", libc::SYS_epoll_pwait, "mio poll"),
    allow(
        "epoll_ctl",
        libc::SYS_epoll_ctl,
        "mio (re)registration; vsock adds its streams to its own epoll set",
    ),
    allow(
        "recvfrom",
        libc::SYS_recvfrom,
        "API socket: read a request (std reads sockets with recv)",
    ),
    allow(
        "sendto",
        libc::SYS_sendto,
        "API socket: write an answer (std writes sockets with send)",
    ),
    allow(
        "read",
        libc::SYS_read,
        "stdin, eventfds, ioeventfds, tap, API requests",
    ),
    allow("readv", libc::SYS_readv, "tap frames into guest buffers"),
    allow(
        "writev",
        libc::SYS_writev,
        "tap frames out of guest buffers",
    ),
    allow("pread64", libc::SYS_pread64, "disk image reads"),
    allow("pwrite64", libc::SYS_pwrite64, "disk image writes"),
    allow("preadv", libc::SYS_preadv, "disk image scatter reads"),
    allow("pwritev", libc::SYS_pwritev, "disk image gather writes"),
    allow("lseek", libc::SYS_lseek, "disk image size / position"),
    allow("fsync", libc::SYS_fsync, "virtio-blk flush"),
    allow("fdatasync", libc::SYS_fdatasync, "virtio-blk flush"),
    allow(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "virtio-blk io_uring engine: submit requests, wait for them on reset (ring set up before the filter)",
    ),
    allow("fstat", libc::SYS_fstat, "disk image size"),
    allow(
        "timerfd_settime",
        libc::SYS_timerfd_settime,
        "virtio-rng rate-limit and balloon statistics timers",
    ),
    allow_if(
        "statx",
        libc::SYS_statx,
        ArgRule::BitsSet {
            arg: 2,
            mask: libc::AT_EMPTY_PATH as u64,
            mask_name: "AT_EMPTY_PATH",
        },
        "Rust File::metadata on an open fd",
    ),
    allow_if(
        "openat",
        libc::SYS_openat,
        ArgRule::SnapshotDirFd { arg: 0 },
        "create snapshot files, only relative to the --snapshot-dir fd (Landlock confines them)",
    ),
    allow(
        "ftruncate",
        libc::SYS_ftruncate,
        "size the snapshot memory file (zero pages stay holes)",
    ),
    GETPID,
    TGKILL_OWN_PROCESS,
    allow_if(
        "accept4",
        libc::SYS_accept4,
        ArgRule::AllEqual {
            args: &[(3, "SOCK_NONBLOCK|SOCK_CLOEXEC", VSOCK_SOCK_FLAGS)],
        },
        "vsock: host clients connecting to the listener at PATH; the API socket's clients",
    ),
    allow_if(
        "socket",
        libc::SYS_socket,
        ArgRule::AllEqual {
            args: &[
                (0, "AF_UNIX", libc::AF_UNIX as u64),
                (
                    1,
                    "SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC",
                    VSOCK_SOCKET_TYPE,
                ),
            ],
        },
        "vsock: a Unix stream socket for a guest connection to host port P",
    ),
    allow(
        "connect",
        libc::SYS_connect,
        "vsock: connect that socket to PATH_P (only AF_UNIX sockets can be created)",
    ),
    allow_if(
        "shutdown",
        libc::SYS_shutdown,
        ArgRule::OneOf {
            arg: 1,
            values: &[("SHUT_WR", libc::SHUT_WR as u64)],
        },
        "vsock: the guest shut its sending side, the host peer reads end-of-file",
    ),
    allow_if(
        "ioctl",
        libc::SYS_ioctl,
        ArgRule::OneOf {
            arg: 1,
            values: &[
                ("TUNSETOFFLOAD", TUNSETOFFLOAD),
                ("TCGETS", TCGETS),
                ("TCSETS", TCSETS),
                ("KVM_GET_CLOCK", KVM_GET_CLOCK),
                ("KVM_SET_CLOCK", KVM_SET_CLOCK),
                ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP),
                ("KVM_GET_PIT2", KVM_GET_PIT2),
            ],
        },
        "tap offloads from virtio-net features, serial console terminal mode; \
         pause/resume keep the KVM clock; snapshots read the interrupt controllers and PIT",
    ),
];

/// The main thread, once the VM runs, waits for the others, stops the vCPUs and restores the
/// terminal.
const MAIN: &[AllowedSyscall] = &[
    allow_if(
        "ioctl",
        libc::SYS_ioctl,
        ArgRule::OneOf {
            arg: 1,
            values: &[("TCGETS", TCGETS), ("TCSETS", TCSETS), ("TCSETSW", TCSETSW)],
        },
        "restore the terminal",
    ),
    allow_if(
        "fcntl",
        libc::SYS_fcntl,
        ArgRule::OneOf {
            arg: 1,
            values: &[
                ("F_GETFD", libc::F_GETFD as u64),
                ("F_SETFL", libc::F_SETFL as u64),
            ],
        },
        "std's OwnedFd check (debug builds); give stdin back its blocking mode",
    ),
    GETPID,
    TGKILL_OWN_PROCESS,
    allow(
        "clock_nanosleep",
        libc::SYS_clock_nanosleep,
        "pause between kicks while a vCPU thread ends",
    ),
    allow("nanosleep", libc::SYS_nanosleep, "same, older libc"),
    allow(
        "poll",
        libc::SYS_poll,
        "wait for the VM's end or a SIGUSR1 thread-report request",
    ),
    allow(
        "rt_sigtimedwait",
        libc::SYS_rt_sigtimedwait,
        "take a pending SIGUSR1 (thread report)",
    ),
];

/// The complete allow-list of a thread kind: the common part followed by its own.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<AllowedSyscall> {
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::EventLoop => EVENT_LOOP,
        ThreadKind::Main => MAIN,
    };
    COMMON.iter().chain(own).copied().collect()
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    // Dword compares the low 32 bits: ioctl requests, flags and pids are 32-bit in the kernel,
    // whatever the caller left in the upper half of the register.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The seccompiler rule chain for one entry: empty means "any arguments"; several rules are
/// alternatives.
fn rule_chain(entry: &AllowedSyscall, own_pid: u64) -> Result<Vec<SeccompRule>, BackendError> {
    let single = |cond| SeccompRule::new(vec![cond]).map(|rule| vec![rule]);
    match entry.rule {
        ArgRule::Any => Ok(Vec::new()),
        ArgRule::OneOf { arg, values } => values
            .iter()
            .map(|&(_, value)| SeccompRule::new(vec![condition(arg, SeccompCmpOp::Eq, value)?]))
            .collect(),
        ArgRule::BitsClear { arg, mask, .. } => {
            single(condition(arg, SeccompCmpOp::MaskedEq(mask), 0)?)
        }
        ArgRule::BitsSet { arg, mask, .. } => {
            single(condition(arg, SeccompCmpOp::MaskedEq(mask), mask)?)
        }
        ArgRule::OwnPid { arg } => single(condition(arg, SeccompCmpOp::Eq, own_pid)?),
        ArgRule::SnapshotDirFd { arg } => {
            let fd = SNAPSHOT_DIR_FD.load(std::sync::atomic::Ordering::Acquire);
            // The kernel compares the low 32 bits: -1 (no directory) matches no real fd.
            single(condition(
                arg,
                SeccompCmpOp::Eq,
                u64::from(u32::from_ne_bytes(fd.to_ne_bytes())),
            )?)
        }
        ArgRule::AllEqual { args } => {
            let conditions = args
                .iter()
                .map(|&(arg, _, value)| condition(arg, SeccompCmpOp::Eq, value))
                .collect::<Result<Vec<_>, _>>()?;
            SeccompRule::new(conditions).map(|rule| vec![rule])
        }
    }
}

/// Builds the BPF program for `kind`; `None` when `mode` is [`SeccompMode::Off`].
pub fn filter_for(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SandboxError> {
    let Some(mismatch_action) = mode.mismatch_action() else {
        return Ok(None);
    };
    // SAFETY: getpid has no preconditions and cannot fail.
    let own_pid = unsafe { libc::getpid() } as u64;
    let build_err = |source| SandboxError::BuildFilter { kind, source };

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in allowed_syscalls(kind) {
        let chain = rule_chain(&entry, own_pid).map_err(build_err)?;
        rules.insert(entry.nr, chain);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build_err)?;
    let filter = SeccompFilter::new(rules, mismatch_action, SeccompAction::Allow, arch)
        .map_err(build_err)?;
    let program = BpfProgram::try_from(filter)
        .map_err(|source| SandboxError::CompileFilter { kind, source })?;
    Ok(Some(program))
}

/// Installs the filter of `kind` on the calling thread only (threads spawned by it afterwards
/// inherit it). Also sets no_new_privs, which seccomp requires of unprivileged callers.
pub fn apply_seccomp(kind: ThreadKind, mode: SeccompMode) -> Result<(), SandboxError> {
    match filter_for(kind, mode)? {
        Some(program) => seccompiler::apply_filter(&program)
            .map_err(|source| SandboxError::InstallFilter { kind, source }),
        None => {
            log::warn!("seccomp is off: the {kind} thread runs without a system-call filter");
            Ok(())
        }
    }
}

fn describe_rule(rule: &ArgRule) -> String {
    match *rule {
        ArgRule::Any => "any arguments".to_string(),
        ArgRule::OneOf { arg, values } => {
            let names: Vec<String> = values
                .iter()
                .map(|(name, value)| format!("{name} ({value:#x})"))
                .collect();
            format!("arg{arg} one of {}", names.join(", "))
        }
        ArgRule::BitsClear { arg, mask_name, .. } => format!("arg{arg} without {mask_name}"),
        ArgRule::BitsSet { arg, mask_name, .. } => format!("arg{arg} with {mask_name}"),
        ArgRule::OwnPid { arg } => format!("arg{arg} == own pid"),
        ArgRule::SnapshotDirFd { arg } => format!("arg{arg} == --snapshot-dir fd"),
        ArgRule::AllEqual { args } => {
            let parts: Vec<String> = args
                .iter()
                .map(|(arg, name, value)| format!("arg{arg} == {name} ({value:#x})"))
                .collect();
            parts.join(", ")
        }
    }
}

/// Human-readable listing of every thread kind's allow-list (`volt --print-seccomp`).
pub fn describe_filters(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "Seccomp allow-lists ({}); any other system call kills the process with SIGSYS \
         (--seccomp=errno: fails with EPERM, --seccomp=log: allowed and logged).",
        std::env::consts::ARCH
    )?;
    for kind in ThreadKind::ALL {
        let list = allowed_syscalls(kind);
        writeln!(out, "\n[{kind}] {} system calls", list.len())?;
        for entry in &list {
            writeln!(
                out,
                "  {:<16} {:<48} {}",
                entry.name,
                describe_rule(&entry.rule),
                entry.why
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_kind_and_mode_builds() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Kill, SeccompMode::Errno, SeccompMode::Log] {
                let program = filter_for(kind, mode).unwrap().expect("a filter");
                assert!(
                    program.len() > 10 && program.len() < 4096,
                    "{kind}: {}",
                    program.len()
                );
            }
            assert!(filter_for(kind, SeccompMode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn no_syscall_listed_twice_for_a_kind() {
        // A duplicate would silently replace the earlier rule chain in the BTreeMap.
        for kind in ThreadKind::ALL {
            let mut seen = HashSet::new();
            for entry in allowed_syscalls(kind) {
                assert!(seen.insert(entry.nr), "{kind}: {} listed twice", entry.name);
            }
        }
    }

    #[test]
    fn sockets_only_on_the_event_loop_and_only_unix_streams() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
            for entry in allowed_syscalls(kind) {
                assert!(
                    ![libc::SYS_socket, libc::SYS_connect, libc::SYS_accept4].contains(&entry.nr),
                    "{kind} allows {}",
                    entry.name
                );
            }
        }
        let socket = allowed_syscalls(ThreadKind::EventLoop)
            .into_iter()
            .find(|e| e.nr == libc::SYS_socket)
            .expect("vsock needs socket on the event loop");
        let ArgRule::AllEqual { args } = socket.rule else {
            panic!("socket must be argument-filtered: {:?}", socket.rule);
        };
        assert!(
            args.contains(&(0, "AF_UNIX", libc::AF_UNIX as u64)),
            "{args:?}"
        );
    }

    #[test]
    fn dangerous_calls_are_never_allowed() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_ptrace,
            libc::SYS_kill,
        ];
        for kind in ThreadKind::ALL {
            for entry in allowed_syscalls(kind) {
                // Creating snapshot files: only relative to the snapshot directory's fd.
                let snapshot_create = entry.nr == libc::SYS_openat
                    && kind == ThreadKind::EventLoop
                    && entry.rule == (ArgRule::SnapshotDirFd { arg: 0 });
                assert!(
                    !forbidden.contains(&entry.nr) || snapshot_create,
                    "{kind} allows {}",
                    entry.name
                );
            }
        }
    }

    #[test]
    fn mode_parses_from_cli_words() {
        assert_eq!("kill".parse::<SeccompMode>().unwrap(), SeccompMode::Kill);
        assert_eq!("errno".parse::<SeccompMode>().unwrap(), SeccompMode::Errno);
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
        assert_eq!("off".parse::<SeccompMode>().unwrap(), SeccompMode::Off);
        let err = "trap".parse::<SeccompMode>().unwrap_err();
        assert!(err.to_string().contains("`trap`"), "{err}");
    }

    #[test]
    fn kvm_state_ioctl_numbers_match_the_kernel_headers() {
        // Values from <linux/kvm.h> on x86_64.
        assert_eq!(KVM_GET_CLOCK, 0x8030_AE7C);
        assert_eq!(KVM_SET_CLOCK, 0x4030_AE7B);
        assert_eq!(KVM_GET_IRQCHIP, 0xC208_AE62);
        assert_eq!(KVM_GET_PIT2, 0x8070_AE9F);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_GET_FPU, 0x81A0_AE8C);
        assert_eq!(KVM_GET_XSAVE, 0x9000_AEA4);
        assert_eq!(KVM_GET_XCRS, 0x8188_AEA6);
        assert_eq!(KVM_GET_LAPIC, 0x8400_AE8E);
        assert_eq!(KVM_GET_MSRS, 0xC008_AE88);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_AE98);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_AE9F);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // _IO(type, nr) = type << 8 | nr; _IOW adds direction 1 << 30 and size << 16.
        assert_eq!(KVM_RUN, (0xAE << 8) | 0x80);
        assert_eq!(
            TUNSETOFFLOAD,
            (1 << 30) | (4 << 16) | ((b'T' as u64) << 8) | 208
        );
    }
}
