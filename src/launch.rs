//! From a checked VM description to a running guest, shared by the command line, the config
//! file and the API's `InstanceStart`: resolve the kernel, build the VM, lock the process
//! down, start the threads and wait for the end.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use devices::virtio::{BalloonConfig, BlockEngine};

use crate::api::{ApiServer, CheckedSpec, MachineConfigBody};
use crate::cli::DEFAULT_CMDLINE;
use crate::error::Error;
use crate::event_loop::{LoopStats, VmExit};
use crate::kernel_store::{resolve_kernel, KernelStore, KernelStoreError};
use crate::sandbox::{self, FsAccess, SandboxConfig, SeccompMode, ThreadKind};
use crate::snapshot::{Restore, VirtioBackend};
use crate::vm::{BootSource, DiskConfig, NetConfig, Vm, VmConfig};
use crate::vsock::VsockConfig;
use crate::{clock, terminal};

/// How the process around the VM is set up.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub seccomp: SeccompMode,
    pub landlock: bool,
    /// Kernel store for `--kernel NAME` / `kernel_image_path` names.
    pub store: Option<PathBuf>,
    /// `--watchdog`: report the threads when none made progress for this long.
    pub watchdog: Option<std::time::Duration>,
    /// `--snapshot-dir`, canonical and already open: snapshots may be written beneath it.
    pub snapshot_dir: Option<PathBuf>,
    /// `--rng` / `--no-rng`, `--balloon`, `--acpi`: the devices a booted VM gets.
    pub rng: bool,
    pub balloon: Option<BalloonConfig>,
    pub acpi: bool,
    /// `--vsock CID,PATH`.
    pub vsock: Option<VsockConfig>,
}

/// What the API reports about the VM once it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub id: String,
    pub machine: MachineConfigBody,
}

impl VmInfo {
    pub fn of(spec: &CheckedSpec) -> Self {
        VmInfo {
            id: "volt".to_string(),
            machine: MachineConfigBody {
                vcpu_count: spec.vcpus.get(),
                mem_size_mib: spec.mem_bytes >> 20,
                ..MachineConfigBody::default()
            },
        }
    }
}

/// A kernel argument: a file path as is, anything else a name in the kernel store.
pub fn kernel_path(arg: Option<&str>, store: Option<PathBuf>) -> Result<PathBuf, KernelStoreError> {
    match arg {
        // A plain file needs no store (and no $HOME to find one).
        Some(path) if Path::new(path).is_file() => Ok(PathBuf::from(path)),
        name => resolve_kernel(name, &KernelStore::open_or_default(store)?),
    }
}

/// The VM configuration for `spec`, with the console on stdin/stdout.
pub fn vm_config(
    spec: &CheckedSpec,
    options: &LaunchOptions,
) -> Result<VmConfig, KernelStoreError> {
    let kernel = kernel_path(spec.kernel.as_deref(), options.store.clone())?;
    Ok(VmConfig {
        vcpus: spec.vcpus,
        mem_bytes: spec.mem_bytes,
        boot: BootSource::Linux {
            kernel,
            initrd: spec.initrd.clone(),
            cmdline: spec
                .boot_args
                .as_deref()
                .unwrap_or(DEFAULT_CMDLINE)
                .to_string(),
        },
        disks: spec.disks.clone(),
        nets: spec.nets.clone(),
        vsock: options.vsock.clone(),
        rng: options.rng,
        balloon: options.balloon.clone(),
        console_out: Box::new(io::stdout()),
        console_in: Some(0),
        console_out_fd: Some(1),
        seccomp: options.seccomp,
        acpi: options.acpi,
        watchdog: options.watchdog,
    })
}

/// The VM configuration that restores `restore`, and the description the API reports.
pub fn restore_config(restore: Restore, options: &LaunchOptions) -> (VmConfig, CheckedSpec) {
    let machine = restore.snapshot.machine.clone();
    let mut disks = Vec::new();
    let mut nets = Vec::new();
    for backend in &machine.backends {
        match backend {
            VirtioBackend::Block { path, read_only } => disks.push(DiskConfig {
                path: path.clone(),
                read_only: *read_only,
                engine: BlockEngine::default(),
            }),
            VirtioBackend::Net { tap, mac } => nets.push(NetConfig {
                tap: tap.clone(),
                mac: *mac,
            }),
        }
    }
    let spec = CheckedSpec {
        vcpus: machine.vcpus,
        mem_bytes: machine.mem_bytes,
        kernel: None,
        boot_args: None,
        initrd: None,
        disks: disks.clone(),
        nets: nets.clone(),
    };
    let config = VmConfig {
        vcpus: machine.vcpus,
        mem_bytes: machine.mem_bytes,
        boot: BootSource::Snapshot(Box::new(restore)),
        disks,
        nets,
        // Snapshots of a VM with vsock are refused (its connections cannot be restored).
        vsock: None,
        rng: machine.rng,
        balloon: machine.balloon.as_ref().map(Into::into),
        console_out: Box::new(io::stdout()),
        console_in: Some(0),
        console_out_fd: Some(1),
        seccomp: options.seccomp,
        acpi: machine.acpi,
        watchdog: options.watchdog,
    };
    (config, spec)
}

/// Locks the process down, runs the built VM (serving `api` from its event loop) and waits
/// for the guest to end.
pub fn run(
    mut vm: Vm,
    spec: &CheckedSpec,
    api: Option<ApiServer>,
    options: &LaunchOptions,
) -> Result<(VmExit, LoopStats), Error> {
    // Before Landlock: stdin and stdout get private descriptions through /proc/self/fd.
    terminal::take_over_stdin();
    // Everything is open: from here on the process may reopen only its disk images.
    let allowed: Vec<FsAccess> = spec
        .disks
        .iter()
        .map(|d| FsAccess {
            path: d.path.clone(),
            writable: !d.read_only,
        })
        .collect();
    let sandbox_config = SandboxConfig {
        seccomp: options.seccomp,
        landlock: options.landlock,
    };
    let writable_dirs: Vec<PathBuf> = options.snapshot_dir.iter().cloned().collect();
    sandbox::lock_down_process_with_dirs(&sandbox_config, &allowed, &writable_dirs)?;
    if let Some(api) = api {
        vm.attach_api(api, VmInfo::of(spec));
    }
    let running = vm.start()?;
    sandbox::apply_seccomp(ThreadKind::Main, options.seccomp)?;
    let (exit, stats) = running.wait()?;
    let _ = io::stdout().flush();
    log::info!(
        "guest ended ({exit:?}) after {} ms: {} port exits (+{} answered on the vCPU threads) and {} MMIO exits, {} console bytes",
        clock::since_start().as_millis(),
        stats.pio_exits,
        stats.pio_answered_on_vcpu,
        stats.mmio_exits,
        stats.console_bytes
    );
    Ok((exit, stats))
}
