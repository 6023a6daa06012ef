//! Why building or running a VM failed, and opening /dev/kvm.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or enable virtualization)")]
    KvmMissing,
    #[error("no permission to open /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("cannot open {what} {path}: {source}")]
    OpenFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot boot {path}: {source}")]
    Kernel { path: PathBuf, source: BootError },
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what} failed: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The block error names the image.
    #[error("{source}")]
    Disk {
        path: PathBuf,
        source: devices::virtio::BlockError,
    },
    /// The net error names the tap.
    #[error("{source}")]
    Net {
        tap: String,
        source: devices::virtio::NetError,
    },
    #[error(transparent)]
    Vsock(#[from] devices::virtio::VsockError),
    #[error(transparent)]
    OptionalDevice(#[from] crate::optional_devices::OptionalDeviceError),
    #[error("too many virtio devices: at most {} disks, network cards, rng, balloon and vsock together (--no-rng frees one)", VIRTIO_IRQS.len())]
    TooManyDevices,
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the event loop failed: {0}")]
    EventLoop(io::Error),
    #[error("the event loop thread panicked")]
    EventLoopPanicked,
}

pub(super) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Opens /dev/kvm with an error that says what to do about it.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}
