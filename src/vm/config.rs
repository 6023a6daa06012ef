//! What a VM is made of: boot source, disks, network cards and the rest of [`VmConfig`].

use super::*;

pub use crate::boot::{VcpuCount, MAX_VCPUS};

/// What the guest runs.
pub enum BootSource {
    /// A Linux kernel (ELF vmlinux or bzImage) booted through the 64-bit boot protocol.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Bare machine code copied to `load_addr`; every vCPU starts there in 64-bit mode with
    /// its index in RDI. Used by the tests to run tiny guests through the real VMM.
    Raw { code: Vec<u8>, load_addr: u64 },
    /// A snapshot: its memory file is the guest memory and its state is written back.
    Snapshot(Box<Restore>),
}

/// A host file served to the guest as a virtio-block disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// io_uring or synchronous I/O; `Auto` picks io_uring where the kernel offers it.
    pub engine: BlockEngine,
}

/// A host tap device behind a virtio-net card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

pub struct VmConfig {
    pub vcpus: VcpuCount,
    pub mem_bytes: u64,
    pub boot: BootSource,
    /// The first disk is /dev/vda.
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<crate::vsock::VsockConfig>,
    /// A virtio-rng entropy device.
    pub rng: bool,
    /// A virtio-balloon, if any.
    pub balloon: Option<devices::virtio::BalloonConfig>,
    /// Where the guest's serial console goes.
    pub console_out: Box<dyn Write + Send>,
    /// Host input for the guest's serial console (stdin), if any.
    pub console_in: Option<RawFd>,
    /// The fd behind `console_out` when it may be non-blocking (stdout): the loop then waits
    /// for it to become writable instead of ever blocking on it.
    pub console_out_fd: Option<RawFd>,
    pub seccomp: SeccompMode,
    /// ACPI tables beside the MP table (`--acpi on|off`).
    pub acpi: bool,
    /// Print a thread report when no thread made progress for this long (`--watchdog`).
    pub watchdog: Option<std::time::Duration>,
}
