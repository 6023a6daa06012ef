//! vCPU worker threads.
//!
//! Each thread owns one `VcpuFd` and runs `KVM_RUN` in a loop. It handles no device itself:
//! port-I/O and MMIO exits become [`VcpuMessage`]s on a channel to the event loop, which owns
//! every device. Port writes are posted (the vCPU goes on at once, ordering is kept by the
//! channel); reads and MMIO writes wait for the loop. MMIO writes must: a virtio driver's
//! InterruptACK has to take effect before the device can raise the next interrupt, or the
//! driver may see a second interrupt with an already cleared status and lose a completion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use mio::Waker;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::clock;
use crate::device_manager::{is_serial_port, SERIAL_LSR_PORT, SERIAL_PORT_BASE};
use crate::fast_path::LineStatusMirror;
use crate::pause::{Unparked, VcpuPause};
use crate::sandbox::{apply_seccomp, SeccompMode, ThreadKind};
use crate::thread_report::{Access, ThreadStates, VcpuPhase, VcpuState};

/// How long a vCPU waits for the loop's answer before it checks whether it must stop.
const REPLY_WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(20);

/// Port-I/O or MMIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    Pio,
    Mmio,
}

/// Up to 8 bytes moved by one guest access.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoData {
    pub len: usize,
    pub bytes: [u8; 8],
}

impl IoData {
    pub fn from_slice(data: &[u8]) -> Self {
        let mut io = IoData {
            len: data.len().min(8),
            bytes: [0; 8],
        };
        io.bytes[..io.len].copy_from_slice(&data[..io.len]);
        io
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// Triple fault or `KVM_EXIT_SHUTDOWN`: the guest reset the machine.
    Shutdown,
    /// `KVM_SYSTEM_EVENT_RESET` / `_SHUTDOWN`.
    SystemEvent(u32),
    /// The VMM asked the thread to stop.
    Requested,
    /// KVM reported a failure the guest cannot recover from.
    Error(String),
}

/// What a vCPU thread sends to the event loop.
#[derive(Debug)]
pub enum VcpuMessage {
    Write {
        vcpu: usize,
        space: AddressSpace,
        addr: u64,
        data: IoData,
        /// Answered once the write took effect, when the vCPU waits for that.
        done: Option<Sender<IoData>>,
    },
    Read {
        vcpu: usize,
        space: AddressSpace,
        addr: u64,
        len: usize,
        reply: Sender<IoData>,
    },
    Stopped {
        vcpu: usize,
        reason: VcpuStop,
    },
    /// The vCPU left the guest for a pause and waits for a command (see [`crate::pause`]).
    Paused {
        vcpu: usize,
    },
}

/// The loop's end of the vCPU channels, plus the wake-up that makes its `poll` return.
#[derive(Clone)]
pub struct LoopLink {
    pub sender: Sender<VcpuMessage>,
    pub waker: Arc<Waker>,
    /// UART line status reads are answered from here when the loop published a value.
    pub line_status: LineStatusMirror,
    /// Where the loop asks this vCPU to pause (`None`: the VM is never paused).
    pub pause: Option<VcpuPause>,
    /// The loop's published state: whether it sleeps and must be woken.
    pub states: Arc<ThreadStates>,
}

impl LoopLink {
    fn send(&self, message: VcpuMessage) -> bool {
        if self.sender.send(message).is_err() {
            return false; // the loop is gone: the VM is being torn down
        }
        // A loop that is awake takes the message before it sleeps: no wake-up (a syscall, and
        // on another CPU an interrupt) per console byte while output flows.
        if !self.states.event_loop.must_wake() {
            return true;
        }
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
        true
    }
}

/// The signal that interrupts `KVM_RUN` so a vCPU thread notices it must stop.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// A running vCPU thread.
pub struct VcpuHandle {
    index: usize,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// The thread, for kicking it out of `KVM_RUN` (pause).
    pub fn pthread(&self) -> libc::pthread_t {
        std::os::unix::thread::JoinHandleExt::as_pthread_t(&self.thread)
    }

    /// Interrupts `KVM_RUN` once (the thread goes on unless it was asked to stop).
    pub fn kick(&self) {
        if let Err(e) = self.thread.kill(kick_signal()) {
            log::debug!("kick of vcpu{} failed: {e}", self.index);
        }
    }

    /// Interrupts `KVM_RUN` until the thread has seen `stop` and ended. A single signal can
    /// arrive just before the thread enters `KVM_RUN` and be lost, hence the repetition.
    pub fn stop_and_join(self) {
        while !self.thread.is_finished() {
            self.kick();
            thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.thread.join().is_err() {
            log::error!("vcpu{} thread panicked", self.index);
        }
    }
}

/// Starts the worker thread for `vcpu`.
pub fn spawn_vcpu(
    index: usize,
    vcpu: VcpuFd,
    link: LoopLink,
    stop: Arc<AtomicBool>,
    seccomp: SeccompMode,
    states: Arc<ThreadStates>,
) -> std::io::Result<VcpuHandle> {
    install_kick_handler();
    let thread = thread::Builder::new()
        .name(format!("volt-vcpu{index}"))
        .spawn(move || {
            let state = &states.vcpus[index];
            state.started();
            if let Err(e) = apply_seccomp(ThreadKind::Vcpu, seccomp) {
                let reason =
                    VcpuStop::Error(format!("cannot install the vCPU seccomp filter: {e}"));
                link.send(VcpuMessage::Stopped {
                    vcpu: index,
                    reason,
                });
                return;
            }
            let reason = run_vcpu(index, vcpu, &link, &stop, state);
            state.set(VcpuPhase::Stopped);
            log::debug!("vcpu{index} stopped: {reason:?}");
            link.send(VcpuMessage::Stopped {
                vcpu: index,
                reason,
            });
        })?;
    Ok(VcpuHandle { index, thread })
}

fn run_vcpu(
    index: usize,
    mut vcpu: VcpuFd,
    link: &LoopLink,
    stop: &AtomicBool,
    state: &VcpuState,
) -> VcpuStop {
    // One reply channel per thread, reused for every read.
    let (reply_tx, reply_rx) = bounded::<IoData>(1);
    // The loop may end (guest reset) with our request still queued: it is never answered, and
    // as this thread holds a sender itself the channel never disconnects. So wait in slices and
    // give up once the VMM asks the thread to stop.
    let wait_for_loop = || -> Option<IoData> {
        state.set(VcpuPhase::WaitingReply);
        loop {
            match reply_rx.recv_timeout(REPLY_WAIT_SLICE) {
                Ok(answer) => return Some(answer),
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => continue,
                Err(_) => return None,
            }
        }
    };
    let write_and_wait = |space, addr, data: &[u8]| -> bool {
        state.sending(access(space, addr, true, data.len()));
        let data = IoData::from_slice(data);
        let request = VcpuMessage::Write {
            vcpu: index,
            space,
            addr,
            data,
            done: Some(reply_tx.clone()),
        };
        link.send(request) && wait_for_loop().is_some()
    };
    let read = |space, addr, data: &mut [u8]| -> bool {
        state.sending(access(space, addr, false, data.len()));
        let len = data.len().min(8);
        let request = VcpuMessage::Read {
            vcpu: index,
            space,
            addr,
            len,
            reply: reply_tx.clone(),
        };
        if !link.send(request) {
            return false;
        }
        match wait_for_loop() {
            Some(answer) => {
                data[..len].copy_from_slice(&answer.as_slice()[..len]);
                true
            }
            None => false,
        }
    };
    let mut pio_buf = [0u8; PIO_DATA_MAX];
    if index == 0 {
        log::info!(
            "vcpu0 entered guest after {} us",
            clock::since_start().as_micros()
        );
    }
    loop {
        if stop.load(Ordering::Acquire) {
            return VcpuStop::Requested;
        }
        if let Some(pause) = &link.pause {
            let send = |message| link.send(message);
            if let Unparked::Stop = pause.park_if_requested(index, &mut vcpu, send, stop) {
                return VcpuStop::Requested;
            }
        }
        if state.rip_wanted() {
            // A thread report asked where the guest is (it kicked us out of KVM_RUN for it).
            let rip = vcpu.get_regs().map_or(0, |r| r.rip);
            state.store_rip(rip, vcpu.get_sregs().map_or(0, |s| s.idt.base));
        }
        state.set(VcpuPhase::InGuest);
        let delivered = match vcpu.run() {
            // The console's line status, polled before every byte the guest prints, is answered
            // here from the loop's mirror (see crate::fast_path) when it is stable.
            Ok(VcpuExit::IoIn(port, data))
                if u64::from(port) == SERIAL_LSR_PORT && data.len() == 1 =>
            {
                match link.line_status.get() {
                    Some(lsr) => {
                        data[0] = lsr;
                        state.answered_locally();
                        true
                    }
                    None => read(AddressSpace::Pio, port.into(), data),
                }
            }
            // A string instruction (`rep outsb`, `rep insw`, ...) exits once with up to a page of
            // data: `count` accesses of `size` bytes, each of which the device must see.
            Ok(VcpuExit::IoOut(port, data)) => {
                let len = data.len().min(pio_buf.len());
                pio_buf[..len].copy_from_slice(&data[..len]);
                let size = pio_access_size(&mut vcpu);
                // UART mode changes take effect before the guest goes on: the loop republishes
                // the line status the fast path answers from (see crate::fast_path).
                let wait = is_serial_port(port.into()) && port != SERIAL_PORT_BASE;
                pio_buf[..len].chunks(size).all(|chunk| {
                    if wait {
                        return write_and_wait(AddressSpace::Pio, port.into(), chunk);
                    }
                    state.sending(access(AddressSpace::Pio, port.into(), true, chunk.len()));
                    link.send(VcpuMessage::Write {
                        vcpu: index,
                        space: AddressSpace::Pio,
                        addr: port.into(),
                        data: IoData::from_slice(chunk),
                        done: None,
                    })
                })
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let len = data.len().min(pio_buf.len());
                let size = pio_access_size(&mut vcpu);
                let delivered = pio_buf[..len]
                    .chunks_mut(size)
                    .all(|chunk| read(AddressSpace::Pio, port.into(), chunk));
                if delivered {
                    pio_in_data(&mut vcpu).copy_from_slice(&pio_buf[..len]);
                }
                delivered
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => write_and_wait(AddressSpace::Mmio, addr, data),
            Ok(VcpuExit::MmioRead(addr, data)) => read(AddressSpace::Mmio, addr, data),
            Ok(VcpuExit::Shutdown) => {
                log_shutdown_state(index, &vcpu);
                return VcpuStop::Shutdown;
            }
            Ok(VcpuExit::SystemEvent(kind, _))
                if matches!(
                    kind,
                    KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_CRASH
                ) =>
            {
                return VcpuStop::SystemEvent(kind)
            }
            // Without an in-kernel LAPIC a halted CPU never wakes again.
            Ok(VcpuExit::Hlt) => return VcpuStop::Error("vCPU halted with no way to wake".into()),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => true,
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return VcpuStop::Error(format!(
                    "KVM could not enter the guest (hardware reason {reason:#x} on cpu {cpu})"
                ))
            }
            Ok(VcpuExit::InternalError) => {
                return VcpuStop::Error("KVM internal error (emulation failure)".into())
            }
            Ok(other) => return VcpuStop::Error(format!("unexpected KVM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                true
            }
            Err(e) => return VcpuStop::Error(format!("KVM_RUN failed: {e}")),
        };
        if !delivered {
            return VcpuStop::Requested;
        }
    }
}

/// A shutdown exit is a triple fault (or a reset KVM turned into one): log the vCPU's state and
/// its last exception, once, since the VM ends with it. KVM on AMD has already put the vCPU
/// back into its INIT state by then (rip 0xfff0), so there the exception is what tells.
/// A guest that means to reboot through the i8042 never gets here.
fn log_shutdown_state(index: usize, vcpu: &VcpuFd) {
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        log::info!("vcpu{index}: shutdown exit (triple fault); registers unreadable");
        return;
    };
    let pending = vcpu.get_vcpu_events().map_or(String::from("?"), |e| {
        format!(
            "injected={} nr={} has_error={} error={:#x}",
            e.exception.injected,
            e.exception.nr,
            e.exception.has_error_code,
            e.exception.error_code
        )
    });
    log::info!(
        "vcpu{index}: shutdown exit (triple fault); registers after it: rip={:#x} rsp={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} rflags={:#x}; last exception: {pending}",
        regs.rip,
        regs.rsp,
        sregs.cs.selector,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        regs.rflags
    );
}

/// The most data one port-I/O exit carries: KVM's I/O data page.
const PIO_DATA_MAX: usize = 4096;

/// Bytes per access (1, 2 or 4) of the port-I/O exit the vCPU is in.
fn pio_access_size(vcpu: &mut VcpuFd) -> usize {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_IO, so `io` is the active member of the union.
    let size = usize::from(unsafe { run.__bindgen_anon_1.io.size });
    size.clamp(1, 8)
}

/// The data area of the port-input exit the vCPU is in, where the guest's bytes go.
fn pio_in_data(vcpu: &mut VcpuFd) -> &mut [u8] {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_IO, so `io` is the active member of the union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = (usize::from(io.size) * io.count as usize).min(PIO_DATA_MAX);
    let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
    let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
    // SAFETY: KVM maps the run structure and its I/O data page together (the mapping is
    // KVM_GET_VCPU_MMAP_SIZE bytes, at least two pages) and puts `size * count` bytes of data at
    // `data_offset` within it, which is what kvm-ioctls' own IoIn slice covers as well.
    unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) }
}

fn access(space: AddressSpace, addr: u64, write: bool, len: usize) -> Access {
    Access {
        space,
        addr,
        write,
        len: u8::try_from(len).unwrap_or(u8::MAX),
    }
}
