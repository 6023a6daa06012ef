//! Builds a VM from a [`VmConfig`] and runs it: KVM objects, guest memory, boot state, devices,
//! then one thread per vCPU plus the event-loop thread.

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

/// The most vCPUs the MP table can describe (I/O APIC id = vCPU count must stay below 255).
pub const MAX_VCPUS: u8 = boot::MAX_CPUS;

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
    pub vcpus: u8,
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

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or enable virtualization)")]
    KvmMissing,
    #[error("no permission to open /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("--cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    BadVcpuCount(u8),
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

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
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

/// How long the event loop spins for the next vCPU exit when it has a CPU of its own:
/// 50 us, or `VOLT_LOOP_SPIN_US` (0 turns it off; a knob for the benchmarks in perf/).
fn loop_linger() -> Option<std::time::Duration> {
    let us = std::env::var("VOLT_LOOP_SPIN_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50);
    (us > 0).then(|| std::time::Duration::from_micros(us))
}

impl Vm {
    /// Has the event loop serve `api` once the VM starts.
    pub fn attach_api(&mut self, api: ApiServer, info: VmInfo) {
        self.api = Some((api, info));
    }

    pub fn build(config: VmConfig) -> Result<Vm, VmError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmError::BadVcpuCount(config.vcpus));
        }
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
        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for index in 0..config.vcpus {
            let vcpu = vm_fd
                .create_vcpu(index.into())
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let start = if index == 0 { entry.as_ref() } else { None };
            boot::configure_vcpu(&vcpu, &mem, &supported_cpuid, index, config.vcpus, start)?;
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

    /// Starts the event loop and the vCPUs; each thread installs its own seccomp filter first.
    /// Termination signals stay with the calling thread: the workers are spawned with them
    /// blocked, so a Ctrl-C is handled where the terminal may be restored.
    /// `SIGUSR1` is held for the thread reports (see [`crate::thread_report`]) while the VM runs.
    pub fn start(self) -> Result<RunningVm, VmError> {
        let report_signal = ReportSignal::block().map_err(io_err("signalfd for SIGUSR1"))?;
        let previous = block_termination_signals();
        let result = self.spawn_threads(report_signal);
        restore_signal_mask(&previous);
        result
    }

    fn spawn_threads(self, report_signal: ReportSignal) -> Result<RunningVm, VmError> {
        let Vm {
            _kvm,
            _vm_fd,
            guest_memory,
            vcpus,
            poll,
            devices,
            reset_evt,
            console_in,
            console_out_fd,
            seccomp,
            api,
            watchdog,
            layout,
            start_paused,
            host_cpus,
        } = self;
        // Bounded, so a guest that floods the loop with writes is slowed down, not buffered.
        let (sender, receiver) = bounded(1024);
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).map_err(io_err("waker"))?);
        let vcpu_count = vcpus.len();
        let states = Arc::new(ThreadStates::new(vcpu_count));
        let line_status = devices.line_status_mirror();
        let mut event_loop = EventLoop::new(
            poll,
            waker.clone(),
            receiver,
            devices,
            reset_evt,
            console_in,
            states.clone(),
        )
        .map_err(VmError::EventLoop)?;
        let (pause_ends, pause_control, vcpu_threads) = pause_channels(vcpu_count);
        event_loop.attach_vm_control(pause_control, _vm_fd.clone(), guest_memory.clone(), layout);
        if start_paused {
            event_loop.start_paused();
        }
        if let Some((api, info)) = api {
            event_loop
                .attach_api(api, info)
                .map_err(VmError::EventLoop)?;
        }
        if let Some(fd) = console_out_fd {
            event_loop.watch_console_output(fd);
        }
        // The loop may spin briefly for the next exit only if it never competes with a vCPU.
        if vcpu_count < host_cpus {
            event_loop.set_linger(loop_linger());
        }
        // Written when the loop thread ends, however it ends: the main thread waits on it.
        let loop_done = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        let loop_done_writer = loop_done.try_clone().map_err(io_err("eventfd"))?;
        let loop_states = states.clone();
        let loop_thread = thread::Builder::new()
            .name("volt-loop".into())
            .spawn(move || {
                loop_states.event_loop.started(); // gettid: before the filter
                let result = apply_seccomp(ThreadKind::EventLoop, seccomp)
                    .map_err(|e| io::Error::other(e.to_string()))
                    .and_then(|()| event_loop.run());
                let _ = loop_done_writer.write(1);
                result
            })
            .map_err(io_err("spawning the event loop"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(vcpu_count);
        for ((index, vcpu), pause) in vcpus.into_iter().enumerate().zip(pause_ends) {
            let link = LoopLink {
                sender: sender.clone(),
                waker: waker.clone(),
                line_status: line_status.clone(),
                pause: Some(pause),
                states: states.clone(),
            };
            match spawn_vcpu(index, vcpu, link, stop.clone(), seccomp, states.clone()) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    handles.into_iter().for_each(VcpuHandle::stop_and_join);
                    return Err(VmError::Io {
                        what: "spawning a vCPU thread",
                        source: e,
                    });
                }
            }
        }
        vcpu_threads.publish(handles.iter().map(VcpuHandle::pthread));
        Ok(RunningVm {
            loop_thread,
            loop_done,
            report_signal,
            states,
            channel: sender,
            watchdog,
            vcpus: handles,
            stop,
            _vm_fd,
            _kvm,
            _guest_memory: guest_memory,
        })
    }

    /// Builds, runs and tears down a VM: the whole life of one guest.
    pub fn run(config: VmConfig) -> Result<(VmExit, LoopStats), VmError> {
        Vm::build(config)?.start()?.wait()
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT on the calling thread; returns the old mask.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on local storage; pthread_sigmask affects this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
        previous
    }
}

fn restore_signal_mask(previous: &libc::sigset_t) {
    // SAFETY: restores a mask obtained from pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, previous, std::ptr::null_mut()) };
}

/// A started VM: the event-loop thread and the vCPU threads.
pub struct RunningVm {
    loop_thread: JoinHandle<io::Result<(VmExit, LoopStats)>>,
    loop_done: EventFd,
    report_signal: ReportSignal,
    states: Arc<ThreadStates>,
    /// Only for the channel depth in thread reports.
    channel: crossbeam_channel::Sender<VcpuMessage>,
    watchdog: Option<std::time::Duration>,
    vcpus: Vec<VcpuHandle>,
    stop: Arc<AtomicBool>,
    // Dropped last: the vCPU threads must be gone before the guest memory is unmapped and
    // the VM and KVM fds close.
    _vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    _guest_memory: GuestMemoryMmap,
}

impl RunningVm {
    /// Waits for the guest to end, then stops every vCPU thread.
    /// Until then it prints a thread report for every `SIGUSR1` (and on a `--watchdog` stall).
    pub fn wait(self) -> Result<(VmExit, LoopStats), VmError> {
        wait_reporting(
            &self.loop_done,
            &self.report_signal,
            &self.states,
            &self.channel,
            self.watchdog,
        );
        drop(self.channel);
        let result = self.loop_thread.join();
        self.stop.store(true, Ordering::Release);
        self.vcpus.into_iter().for_each(VcpuHandle::stop_and_join);
        match result {
            Ok(Ok((exit, mut stats))) => {
                stats.pio_answered_on_vcpu = self.states.answered_locally();
                Ok((exit, stats))
            }
            Ok(Err(e)) => Err(VmError::EventLoop(e)),
            Err(_) => Err(VmError::EventLoopPanicked),
        }
    }
}

/// The command line the guest gets: the user's (or the default), `root=` for the first disk
/// when the user named no root, and one announcement per virtio-mmio device.
pub fn full_cmdline(base: &str, disks: &[DiskConfig], virtio: &[VirtioSlot]) -> String {
    let mut cmdline = base.trim().to_string();
    let names_root = base.split_whitespace().any(|arg| arg.starts_with("root="));
    if let (Some(first), false) = (disks.first(), names_root) {
        let mode = if first.read_only { "ro" } else { "rw" };
        cmdline.push_str(&format!(" root=/dev/vda {mode}"));
    }
    for slot in virtio {
        cmdline.push(' ');
        cmdline.push_str(&virtio_cmdline_entry(slot.base, slot.irq));
    }
    cmdline
}

/// The host side of each virtio slot, in the order [`create_virtio_devices`] fills them.
fn virtio_backends(disks: &[DiskConfig], nets: &[NetConfig]) -> Vec<VirtioBackend> {
    let disks = disks.iter().map(|d| VirtioBackend::Block {
        path: d.path.clone(),
        read_only: d.read_only,
    });
    let nets = nets.iter().map(|n| VirtioBackend::Net {
        tap: n.tap.clone(),
        mac: n.mac,
    });
    disks.chain(nets).collect()
}

/// Opens every disk and tap, wraps each in a virtio-mmio transport with its own window, IRQ
/// (an irqfd) and one ioeventfd per queue, so a guest kick never exits to user space.
fn create_virtio_devices(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<Vec<VirtioSlot>, VmError> {
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        // The io_uring ring is set up here, before the sandbox applies.
        let block =
            Block::with_engine(&disk.path, disk.read_only, disk.engine).map_err(|source| {
                VmError::Disk {
                    path: disk.path.clone(),
                    source,
                }
            })?;
        log::info!("disk {}: {} engine", disk.path.display(), block.engine());
        models.push(Box::new(block));
    }
    for net in &config.nets {
        let card = Net::new(&net.tap, net.mac).map_err(|source| VmError::Net {
            tap: net.tap.clone(),
            source,
        })?;
        models.push(Box::new(card));
    }
    // After disks and nets, so the first disk stays /dev/vda at the first window.
    let balloon = config.balloon.as_ref();
    models.extend(optional_devices::create(
        config.rng,
        balloon,
        config.mem_bytes,
    )?);
    if let Some(vsock) = &config.vsock {
        models.push(Box::new(vsock.build()?));
    }
    let mut slots = Vec::with_capacity(models.len());
    for (index, model) in models.into_iter().enumerate() {
        let (base, irq) = virtio_slot(index).ok_or(VmError::TooManyDevices)?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        vm_fd
            .register_irqfd(&irq_evt, irq)
            .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let transport =
            MmioTransport::new(model, mem.clone(), irq_evt).map_err(io_err("virtio transport"))?;
        for (queue, evt) in (0u32..).zip(transport.queue_events()) {
            let notify = IoEventAddress::Mmio(base + VIRTIO_MMIO_QUEUE_NOTIFY);
            vm_fd
                .register_ioevent(evt, &notify, queue)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        slots.push(VirtioSlot {
            base,
            irq,
            transport,
        });
    }
    Ok(slots)
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

fn map_guest_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Io {
                what: "mapping guest memory",
                source: io::Error::other(e),
            })?;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM's use of it: the event
        // loop holds a clone and the vCPU threads are joined before either is dropped.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The in-kernel PIC, I/O APIC, LAPICs and PIT: the guest's timer and interrupt routing.
fn create_interrupt_controllers(vm_fd: &VmFd) -> Result<(), VmError> {
    // Intel VMX needs three pages for the real-mode TSS, out of the guest's way below 4 GiB.
    vm_fd
        .set_tss_address(0xfffb_d000)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// Raw images get one small stack per vCPU, growing down from here (below the EBDA).
const RAW_STACK_TOP: u64 = 0x8_0000;
const RAW_STACK_SIZE: u64 = 0x400;

/// Puts a vCPU of a raw test image into 64-bit mode at the image's start with RDI = index.
fn start_raw_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    load_addr: u64,
    index: u8,
) -> Result<(), VmError> {
    boot::regs::setup_long_mode(vcpu, mem, GuestAddress(load_addr), None)
        .map_err(BootError::from)?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rdi = index.into();
    regs.rsp = RAW_STACK_TOP - u64::from(index) * RAW_STACK_SIZE;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    if index > 0 {
        // Application processors wait for INIT/SIPI; a raw image has them start at once.
        let mut mp_state = vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        mp_state.mp_state = kvm_bindings::KVM_MP_STATE_RUNNABLE;
        vcpu.set_mp_state(mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}
