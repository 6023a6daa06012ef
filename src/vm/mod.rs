//! Builds a VM from a [`VmConfig`] and runs it: KVM objects, guest memory, boot state, devices,
//! then one thread per vCPU plus the event-loop thread.

mod config;
mod error;
mod kvm;
mod raw;
mod threads;
mod virtio;

pub use config::*;
pub use error::{open_kvm, VmError};
pub use threads::RunningVm;
pub use virtio::full_cmdline;

use error::{io_err, kvm_err};
use kvm::{create_interrupt_controllers, map_guest_memory};
use raw::start_raw_vcpu;
use virtio::{create_virtio_devices, virtio_backends};

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::bounded;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use mio::{Poll, Token, Waker};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use devices::acpi_sleep::AcpiSleep;
use devices::i8042::I8042;
use devices::serial::SerialConsole;
use devices::virtio::{Block, BlockEngine, MmioTransport, Net, VirtioDevice};

use crate::api::ApiServer;
use crate::boot::{self, BootError};
use crate::device_manager::{
    virtio_cmdline_entry, virtio_slot, Devices, VirtioSlot, SERIAL_IRQ, VIRTIO_IRQS,
    VIRTIO_MMIO_QUEUE_NOTIFY,
};
use crate::event_loop::{EventLoop, LoopStats, VmExit};
use crate::launch::VmInfo;
use crate::optional_devices;
use crate::pause::pause_channels;
use crate::sandbox::{apply_seccomp, SeccompMode, ThreadKind};
use crate::snapshot::{self, MachineLayout, Restore, SnapshotError, VirtioBackend};
use crate::thread_report::{wait_reporting, ReportSignal, ThreadStates};
use crate::vcpu::{spawn_vcpu, LoopLink, VcpuHandle, VcpuMessage};

/// The i8042's keyboard interrupt (Ctrl-Alt-Del from the API).
const KEYBOARD_IRQ: u32 = 1;

/// A VM whose memory, boot state and devices are ready, with no thread started yet.
pub struct Vm {
    _kvm: Kvm,
    _vm_fd: Arc<VmFd>,
    guest_memory: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    poll: Poll,
    devices: Devices,
    reset_evt: EventFd,
    console_in: Option<RawFd>,
    console_out_fd: Option<RawFd>,
    seccomp: SeccompMode,
    /// The API socket the event loop serves, if any.
    api: Option<(ApiServer, VmInfo)>,
    watchdog: Option<std::time::Duration>,
    /// Recorded in snapshots.
    layout: MachineLayout,
    /// A restored VM whose guest waits for `PATCH /vm {"state":"Resumed"}`.
    start_paused: bool,
    /// CPUs this process may run on, read before the sandbox closes /proc and /sys.
    host_cpus: usize,
}

impl Vm {
    /// Has the event loop serve `api` once the VM starts.
    pub fn attach_api(&mut self, api: ApiServer, info: VmInfo) {
        self.api = Some((api, info));
    }

    pub fn build(config: VmConfig) -> Result<Vm, VmError> {
        let kvm = open_kvm()?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = match &config.boot {
            BootSource::Snapshot(restore) => restore.memory.clone(),
            _ => boot::layout::create_guest_memory(config.mem_bytes)?,
        };
        map_guest_memory(&vm_fd, &mem)?;
        create_interrupt_controllers(&vm_fd)?;

        // Devices first: a missing disk or tap is reported before any kernel work.
        let virtio = create_virtio_devices(&vm_fd, &mem, &config)?;
        let entry = match &config.boot {
            BootSource::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut kernel_file = open(kernel, "kernel")?;
                let mut initrd_file = initrd.as_ref().map(|p| open(p, "initrd")).transpose()?;
                let cmdline = full_cmdline(cmdline, &config.disks, &virtio);
                log::debug!("kernel command line: {cmdline}");
                let entry = boot::load_linux(
                    &mem,
                    &mut kernel_file,
                    initrd_file.as_mut(),
                    &cmdline,
                    config.vcpus,
                )
                .map_err(|source| VmError::Kernel {
                    path: kernel.clone(),
                    source,
                })?;
                Some(entry)
            }
            BootSource::Raw { code, load_addr } => {
                boot::write_boot_tables(&mem, config.vcpus)?;
                mem.write_slice(code, GuestAddress(*load_addr))
                    .map_err(|e| VmError::Io {
                        what: "loading the guest image",
                        source: io::Error::other(e),
                    })?;
                None
            }
            BootSource::Snapshot(_) => None,
        };
        // A restored guest's tables are in its memory already.
        if config.acpi && !matches!(config.boot, BootSource::Snapshot(_)) {
            // Every virtio-mmio slot, whatever its device, appears in the DSDT.
            let windows: Vec<_> = virtio.iter().map(VirtioSlot::acpi_device).collect();
            boot::write_acpi_tables(&mem, config.vcpus, &windows)?;
        }

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        // The MSRs a snapshot saves (the vCPU threads cannot ask /dev/kvm later).
        if let Ok(list) = kvm.get_msr_index_list() {
            crate::snapshot::vcpu_state::set_msr_indices(list.as_slice().to_vec());
        }
        let mut vcpus = Vec::with_capacity(config.vcpus.as_usize());
        for index in config.vcpus.indices() {
            let vcpu = vm_fd
                .create_vcpu(index.get().into())
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let start = if index.is_boot() {
                entry.as_ref()
            } else {
                None
            };
            boot::configure_vcpu(&vcpu, &mem, &supported_cpuid, index, start)?;
            if let BootSource::Raw { load_addr, .. } = &config.boot {
                start_raw_vcpu(&vcpu, &mem, *load_addr, index)?;
            }
            vcpus.push(vcpu);
        }
        if let BootSource::Snapshot(restore) = &config.boot {
            snapshot::restore_machine(&vm_fd, &vcpus, &restore.snapshot)?;
        }

        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        vm_fd
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        let mut i8042 = I8042::new(reset_evt.try_clone().map_err(io_err("eventfd"))?);
        let keyboard_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        vm_fd
            .register_irqfd(&keyboard_irq, KEYBOARD_IRQ)
            .map_err(kvm_err("KVM_IRQFD (keyboard)"))?;
        i8042.set_keyboard_irq(keyboard_irq);
        let mut serial = SerialConsole::new(serial_irq, config.console_out);
        let mut virtio = virtio;
        if let BootSource::Snapshot(restore) = &config.boot {
            snapshot::restore_devices(&mut serial, &mut i8042, &mut virtio, &restore.snapshot)?;
        }
        let layout = MachineLayout {
            vcpus: config.vcpus,
            mem_bytes: config.mem_bytes,
            backends: virtio_backends(&config.disks, &config.nets),
            rng: config.rng,
            balloon: config.balloon.as_ref().map(Into::into),
            acpi: config.acpi,
            vsock: config.vsock.is_some(),
        };
        let start_paused = matches!(&config.boot, BootSource::Snapshot(r) if !r.resume);
        let mut devices = Devices::new(serial, i8042, virtio);
        devices.acpi_sleep = config.acpi.then(AcpiSleep::new);

        Ok(Vm {
            _kvm: kvm,
            _vm_fd: Arc::new(vm_fd),
            guest_memory: mem,
            vcpus,
            poll: Poll::new().map_err(io_err("epoll"))?,
            devices,
            reset_evt,
            console_in: config.console_in,
            console_out_fd: config.console_out_fd,
            seccomp: config.seccomp,
            api: None,
            watchdog: config.watchdog,
            layout,
            start_paused,
            host_cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
    /// Builds, runs and tears down a VM: the whole life of one guest.
    pub fn run(config: VmConfig) -> Result<(VmExit, LoopStats), VmError> {
        Vm::build(config)?.start()?.wait()
    }
}

fn open(path: &PathBuf, what: &'static str) -> Result<File, VmError> {
    let file = File::open(path).map_err(|source| VmError::OpenFile {
        what,
        path: path.clone(),
        source,
    })?;
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    if is_dir {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "it is a directory");
        return Err(VmError::OpenFile {
            what,
            path: path.clone(),
            source,
        });
    }
    Ok(file)
}
