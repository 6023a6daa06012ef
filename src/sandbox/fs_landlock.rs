//! Landlock ruleset: once the VM's files are open, the process may only reopen its disk images.
//!
//! Everything Landlock knows how to restrict on the file system is handled (read, write, create,
//! remove, execute, truncate, device ioctls, ...) and the only grants are read (and write, for a
//! writable disk) on the disk image files themselves. TCP bind/connect are handled with no grant,
//! and abstract UNIX sockets / signals are scoped to the sandbox. The ruleset is best-effort:
//! an older kernel enforces what it knows and the report says so.
//!
//! vsock needs no grant: its listening socket at `PATH` is bound before the ruleset applies
//! (binding a new socket is then refused, `MakeSock`), and connecting to a pathname socket
//! (`PATH_P`, for guest-initiated streams) is not a file-system access Landlock handles up to
//! ABI 6 (`tests/sandbox_landlock.rs` checks both).

use std::fmt;
use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, PathBeneath,
    PathFd, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::SandboxError;

/// The newest Landlock ABI whose rights we ask for. ABI 6 (Linux 6.12) adds signal and
/// abstract-socket scoping; on an older kernel the missing rights are dropped (partial).
const TARGET_ABI: ABI = ABI::V6;

/// A file the sandboxed process may still open: a disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsAccess {
    pub path: PathBuf,
    pub writable: bool,
}

/// How much of the requested ruleset the running kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LandlockEnforcement {
    /// Every requested restriction is in force.
    Full,
    /// The kernel has an older Landlock ABI: some restrictions are in force.
    Partial,
    /// Nothing is enforced (kernel without Landlock, or disabled by the user).
    NotEnforced,
}

/// What the kernel offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LandlockKernel {
    /// Landlock available with this ABI version.
    Abi(i32),
    /// Built in but not enabled at boot (`lsm=` lacks landlock).
    NotEnabled,
    /// Not built into the kernel.
    NotImplemented,
    /// Not asked (`--no-landlock`).
    NotProbed,
}

/// Outcome of [`restrict_filesystem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandlockReport {
    pub enforcement: LandlockEnforcement,
    pub kernel: LandlockKernel,
    /// Whether PR_SET_NO_NEW_PRIVS is set (Landlock sets it itself).
    pub no_new_privs: bool,
}

impl LandlockReport {
    /// The report for `--no-landlock`.
    pub fn disabled() -> Self {
        LandlockReport {
            enforcement: LandlockEnforcement::NotEnforced,
            kernel: LandlockKernel::NotProbed,
            no_new_privs: false,
        }
    }

    fn from_status(status: &RestrictionStatus) -> Self {
        let enforcement = match status.ruleset {
            RulesetStatus::FullyEnforced => LandlockEnforcement::Full,
            RulesetStatus::PartiallyEnforced => LandlockEnforcement::Partial,
            RulesetStatus::NotEnforced => LandlockEnforcement::NotEnforced,
        };
        let kernel = match status.landlock {
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => LandlockKernel::Abi(kernel_abi.unwrap_or(effective_abi as i32)),
            LandlockStatus::NotEnabled => LandlockKernel::NotEnabled,
            LandlockStatus::NotImplemented => LandlockKernel::NotImplemented,
        };
        LandlockReport {
            enforcement,
            kernel,
            no_new_privs: status.no_new_privs,
        }
    }
}

impl fmt::Display for LandlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kernel = match self.kernel {
            LandlockKernel::Abi(abi) => format!("kernel Landlock ABI {abi}"),
            LandlockKernel::NotEnabled => "Landlock is not enabled in this kernel".to_string(),
            LandlockKernel::NotImplemented => "this kernel has no Landlock".to_string(),
            LandlockKernel::NotProbed => "disabled by --no-landlock".to_string(),
        };
        let enforcement = match self.enforcement {
            LandlockEnforcement::Full => "fully enforced",
            LandlockEnforcement::Partial => "partially enforced (older Landlock ABI)",
            LandlockEnforcement::NotEnforced => "NOT enforced",
        };
        write!(f, "Landlock file-system sandbox {enforcement} ({kernel})")
    }
}

fn rights_for(access: &FsAccess) -> BitFlags<AccessFs> {
    if access.writable {
        AccessFs::ReadFile | AccessFs::WriteFile
    } else {
        AccessFs::ReadFile.into()
    }
}

/// Restricts the calling thread, and every thread it spawns afterwards, to opening only the
/// files in `allowed` (read, plus write where `writable`). Nothing can be created, removed,
/// renamed or executed. Call on the main thread before spawning any other thread.
///
/// A kernel without Landlock is not an error: the report says `NotEnforced`.
pub fn restrict_filesystem(allowed: &[FsAccess]) -> Result<LandlockReport, SandboxError> {
    restrict_filesystem_with_dirs(allowed, &[])
}

/// [`restrict_filesystem`], plus directories beneath which regular files may be created,
/// truncated, read and written (the snapshot directory), and nothing else.
pub fn restrict_filesystem_with_dirs(
    allowed: &[FsAccess],
    writable_dirs: &[PathBuf],
) -> Result<LandlockReport, SandboxError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?;
    for access in allowed {
        let fd = PathFd::new(&access.path).map_err(|source| SandboxError::LandlockPath {
            path: access.path.clone(),
            source,
        })?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, rights_for(access)))?;
    }
    for dir in writable_dirs {
        let fd = PathFd::new(dir).map_err(|source| SandboxError::LandlockPath {
            path: dir.clone(),
            source,
        })?;
        let rights =
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, rights))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(LandlockReport::from_status(&status))
}
