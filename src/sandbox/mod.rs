//! Process sandboxing: seccomp-BPF filters per thread kind and a Landlock file-system ruleset.
//!
//! The order Volt follows at start-up:
//! 1. [`close_inherited_fds`] first thing in `main`, so no descriptor leaked by the parent
//!    (a socket, a file outside the sandbox) survives into the VMM;
//! 2. open the kernel, initrd, disk images, taps and `/dev/kvm`;
//! 3. [`lock_down_process`] (no_new_privs + Landlock) before any thread is spawned, so every
//!    thread inherits the file-system restriction;
//! 4. each thread calls [`apply_seccomp`] with its own [`ThreadKind`] once its set-up is done
//!    (vCPU threads after their registers are set, the event loop before its first poll, the
//!    main thread after spawning the others).
//!
//! no_new_privs, Landlock and seccomp are all per thread and inherited by threads spawned later:
//! a thread spawned before [`lock_down_process`] escapes Landlock, hence step 3 before any spawn.

mod fs_landlock;
mod process;
mod seccomp_filters;

pub use fs_landlock::{
    restrict_filesystem, restrict_filesystem_with_dirs, FsAccess, LandlockEnforcement,
    LandlockReport,
};
pub use process::{close_inherited_fds, set_no_new_privs};
pub use seccomp_filters::{
    allowed_syscalls, apply_seccomp, describe_filters, filter_for, set_snapshot_dir_fd,
    AllowedSyscall, ArgRule, SeccompMode, ThreadKind,
};
// Re-exported so callers can hold a filter without naming seccompiler themselves.
pub use seccompiler::BpfProgram;

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building or installing the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter for the {kind} thread: {source}")]
    BuildFilter {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot compile the seccomp filter for the {kind} thread to BPF: {source}")]
    CompileFilter {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter for the {kind} thread: {source}")]
    InstallFilter {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("unknown seccomp mode `{0}` (expected kill, errno, log or off)")]
    UnknownSeccompMode(String),
    #[error("cannot open `{path}` to grant it in the Landlock ruleset: {source}")]
    LandlockPath {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("cannot set up the Landlock ruleset: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("prctl(PR_SET_NO_NEW_PRIVS) failed: {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("cannot close inherited file descriptors: {0}")]
    CloseFds(#[source] io::Error),
}

/// What the user asked for on the command line (`--seccomp=…`, `--no-seccomp`, `--no-landlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxConfig {
    pub seccomp: SeccompMode,
    pub landlock: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seccomp: SeccompMode::Kill,
            landlock: true,
        }
    }
}

/// Process-wide lock-down, to be called on the main thread after every file the VM needs is
/// open and before any other thread is spawned: sets no_new_privs and, unless disabled, applies
/// the Landlock ruleset that only lets the process reopen the disk images in `allowed`.
///
/// Seccomp is per thread and is not installed here: each thread calls [`apply_seccomp`].
/// Disabled protections are reported with a warning, never silently.
pub fn lock_down_process(
    cfg: &SandboxConfig,
    allowed: &[FsAccess],
) -> Result<LandlockReport, SandboxError> {
    lock_down_process_with_dirs(cfg, allowed, &[])
}

/// [`lock_down_process`], plus directories in which files may be created and written
/// (`--snapshot-dir`).
pub fn lock_down_process_with_dirs(
    cfg: &SandboxConfig,
    allowed: &[FsAccess],
    writable_dirs: &[PathBuf],
) -> Result<LandlockReport, SandboxError> {
    set_no_new_privs()?;
    if cfg.seccomp == SeccompMode::Off {
        log::warn!("seccomp filters are disabled (--no-seccomp): a compromised thread may make any system call");
    }
    if !cfg.landlock {
        log::warn!("Landlock is disabled: the process keeps its full file-system access");
        return Ok(LandlockReport {
            no_new_privs: true,
            ..LandlockReport::disabled()
        });
    }
    let report = restrict_filesystem_with_dirs(allowed, writable_dirs)?;
    match report.enforcement {
        LandlockEnforcement::Full => log::info!("{report}"),
        _ => log::warn!("{report}"),
    }
    Ok(report)
}
