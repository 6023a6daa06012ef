//! The single-threaded event loop that owns every device.
//!
//! It waits in `epoll` (through mio) for: vCPU exits forwarded over the channel (the vCPUs
//! wake it with a `mio::Waker`), host console input, the i8042 reset eventfd, virtqueue
//! ioeventfds and device fds such as taps. Nothing here is shared with another thread, so no
//! device needs a lock.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiServer;
use crate::device_manager::{DeviceEvent, Devices};
use crate::thread_report::{LoopPhase, ThreadStates};
use crate::vcpu::{AddressSpace, IoData, VcpuMessage, VcpuStop};

// The API socket and the VM control behind it (pause, snapshot, metrics).
mod control;

const VCPU_TOKEN: Token = Token(0);
const STDIN_TOKEN: Token = Token(1);
const RESET_TOKEN: Token = Token(2);
const CONSOLE_OUT_TOKEN: Token = Token(3);
/// vCPU exits served per wake-up before the loop looks at its other event sources again.
const VCPU_MESSAGE_BUDGET: usize = 256;
/// How long the loop keeps trying to hand the rest of the console output to a host that
/// cannot take it (a full pipe, a stopped terminal) when the VM ends.
const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// Tokens from here on name device event sources, in the order `Devices` lists them.
const FIRST_DEVICE_TOKEN: usize = 16;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 (Linux `reboot=k`): a clean end.
    Reset,
    /// A vCPU triple-faulted or KVM reported a shutdown/reset system event: a clean end.
    Shutdown { vcpu: usize },
    /// A vCPU failed; the VM cannot go on.
    VcpuError { vcpu: usize, message: String },
    /// Every vCPU stopped on its own without a reset (e.g. halted without an irqchip).
    AllVcpusStopped,
    /// The guest powered off through the ACPI sleep registers (S5, `poweroff`): a clean end.
    PowerOff,
}

impl VmExit {
    /// The process exit status `volt` reports for this end.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::Shutdown { .. } | VmExit::PowerOff => 0,
            VmExit::VcpuError { .. } | VmExit::AllVcpusStopped => 1,
        }
    }
}

/// Counters a test or benchmark can read after the run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopStats {
    pub pio_exits: u64,
    pub mmio_exits: u64,
    /// Port reads the vCPU threads answered without the loop (see [`crate::fast_path`]).
    pub pio_answered_on_vcpu: u64,
    /// Accesses no device claimed: (address space, address, is write).
    pub unhandled: Vec<(AddressSpace, u64, bool)>,
    pub console_bytes: u64,
    /// Console bytes the host never got (output buffer full, stdout failed or still full at
    /// the end).
    pub console_dropped: u64,
    /// Virtqueue notifications that arrived on an ioeventfd (no vCPU exit to user space).
    pub queue_kicks: u64,
}

/// At most this many unhandled accesses are remembered (they are also logged).
const MAX_UNHANDLED_RECORDED: usize = 64;

pub struct EventLoop {
    poll: Poll,
    /// Held so the waker's eventfd outlives every vCPU thread: closing its last copy would
    /// drop a wake-up that is still pending.
    _waker: Arc<Waker>,
    vcpu_rx: Receiver<VcpuMessage>,
    devices: Devices,
    reset_evt: EventFd,
    stdin: Option<RawFd>,
    vcpus_running: usize,
    stats: LoopStats,
    /// The API socket, when Volt runs with `--api-sock` (see [`control`]).
    api: Option<ApiServer>,
    control: Option<control::Control>,
    states: Arc<ThreadStates>,
    linger: Option<Duration>,
}

impl EventLoop {
    /// `poll` must be the one the vCPUs' waker was made from (registered as token 0).
    pub fn new(
        poll: Poll,
        waker: Arc<Waker>,
        vcpu_rx: Receiver<VcpuMessage>,
        devices: Devices,
        reset_evt: EventFd,
        stdin: Option<RawFd>,
        states: Arc<ThreadStates>,
    ) -> io::Result<Self> {
        let vcpu_count = states.vcpus.len();
        let registry = poll.registry();
        registry.register(
            &mut SourceFd(&reset_evt.as_raw_fd()),
            RESET_TOKEN,
            Interest::READABLE,
        )?;
        // Regular files and /dev/null cannot be polled: then the guest simply gets no input.
        let stdin = stdin.filter(|fd| {
            match registry.register(&mut SourceFd(fd), STDIN_TOKEN, Interest::READABLE) {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("console input disabled: stdin cannot be polled ({e})");
                    false
                }
            }
        });
        for (index, (fd, interest)) in devices.event_sources().into_iter().enumerate() {
            registry.register(
                &mut SourceFd(&fd),
                Token(FIRST_DEVICE_TOKEN + index),
                interest,
            )?;
        }
        Ok(EventLoop {
            poll,
            _waker: waker,
            vcpu_rx,
            devices,
            reset_evt,
            stdin,
            vcpus_running: vcpu_count,
            stats: LoopStats::default(),
            api: None,
            control: None,
            states,
            linger: None,
        })
    }

    /// Serves the VM until it ends.
    /// The thread's id must already be published ([`crate::thread_report::LoopState::started`]).
    pub fn run(mut self) -> io::Result<(VmExit, LoopStats)> {
        let result = self.serve();
        self.states.event_loop.set(LoopPhase::Finished, 0);
        result
    }

    fn serve(&mut self) -> io::Result<(VmExit, LoopStats)> {
        let mut events = Events::with_capacity(64);
        loop {
            self.states.event_loop.set(LoopPhase::Polling, 0);
            // vCPUs wake the loop only when it said it sleeps; a message queued before that
            // is seen here, and then epoll is only asked what else is ready.
            let rx = &self.vcpu_rx;
            let pending = self.states.event_loop.going_to_sleep(|| !rx.is_empty());
            let timeout = pending
                .then_some(Duration::ZERO)
                .or(self.control_poll_timeout());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.states.event_loop.woke();
            let mut served_vcpus = pending;
            let mut outcome = None;
            if pending {
                self.states.event_loop.set(LoopPhase::VcpuMessages, 0);
                outcome = self.drain_vcpu_messages();
            }
            for event in events.iter() {
                if outcome.is_some() {
                    break;
                }
                outcome = match event.token() {
                    VCPU_TOKEN => {
                        served_vcpus = true;
                        self.states.event_loop.set(LoopPhase::VcpuMessages, 0);
                        self.drain_vcpu_messages()
                    }
                    STDIN_TOKEN => {
                        self.states.event_loop.set(LoopPhase::ConsoleInput, 0);
                        self.read_console_input();
                        None
                    }
                    CONSOLE_OUT_TOKEN => None, // flushed below, like after every wake-up
                    RESET_TOKEN => {
                        let _ = self.reset_evt.read();
                        Some(VmExit::Reset)
                    }
                    token if ApiServer::owns(token) => self.handle_api_event(event),
                    Token(token) => {
                        let source = token - FIRST_DEVICE_TOKEN;
                        self.states
                            .event_loop
                            .set(LoopPhase::DeviceEvent, source as u64);
                        let event = self.devices.handle_event_source(source);
                        if let Some(DeviceEvent::QueueKick { .. }) = event {
                            self.stats.queue_kicks += 1;
                        }
                        None
                    }
                };
            }
            if let Some(exit) = outcome {
                self.finish();
                return Ok((exit, std::mem::take(&mut self.stats)));
            }
            self.flush_console();
            self.control_tick();
            if served_vcpus {
                self.linger();
            }
        }
    }

    /// After serving vCPU exits, stays awake a moment for the next one (a guest writing its
    /// console exits every few microseconds), so the vCPU need not wake the loop for each.
    /// Only when every vCPU thread and the loop have a host CPU of their own: with more
    /// threads than CPUs the spin would take the CPU from the vCPU it waits for.
    fn linger(&self) {
        let Some(limit) = self.linger else { return };
        let start = Instant::now();
        let mut spins = 0u32;
        while self.vcpu_rx.is_empty() {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 && start.elapsed() >= limit {
                return;
            }
        }
    }

    /// Lets the loop spin up to `limit` for the next vCPU message before it sleeps (see
    /// [`EventLoop::linger`]); `None` (the default) never spins.
    pub fn set_linger(&mut self, limit: Option<Duration>) {
        self.linger = limit;
    }

    /// Watches `fd`, the console's output, for writability: console output the host could not
    /// take yet is written when it can, never by blocking the loop. An fd epoll cannot watch
    /// (a regular file) never makes a write wait anyway.
    pub fn watch_console_output(&mut self, fd: RawFd) {
        let interest = Interest::WRITABLE;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), CONSOLE_OUT_TOKEN, interest)
        {
            log::debug!("console output is not watched ({e}): writes to it cannot block");
        }
    }

    fn finish(&mut self) {
        self.flush_console();
        // What the host could not take yet gets a last chance, bounded in time.
        let start = Instant::now();
        let mut events = Events::with_capacity(8);
        while self.devices.serial.has_pending_output() && start.elapsed() < FINAL_FLUSH_LIMIT {
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            self.flush_console();
        }
        let unwritten = self.devices.serial.buffered_output() as u64;
        self.stats.console_dropped = self.devices.serial.counters().drops + unwritten;
        self.stats.console_bytes = self.devices.serial.bytes_out();
    }

    fn flush_console(&mut self) {
        self.states.event_loop.set(LoopPhase::ConsoleOutput, 0);
        if let Err(e) = self.devices.serial.flush_output() {
            devices::rl_warn!("console output failed, buffered output dropped: {e}");
        }
    }

    /// Serves at most [`VCPU_MESSAGE_BUDGET`] queued vCPU exits: what is left is seen before the
    /// loop next sleeps (it then only asks epoll what else is ready, without waiting), so
    /// vCPUs that post writes without pause cannot starve the other event sources.
    fn drain_vcpu_messages(&mut self) -> Option<VmExit> {
        for _ in 0..VCPU_MESSAGE_BUDGET {
            let Ok(message) = self.vcpu_rx.try_recv() else {
                break;
            };
            self.states.event_loop.served_message();
            match message {
                VcpuMessage::Write {
                    space,
                    addr,
                    data,
                    done,
                    ..
                } => {
                    self.count_exit(space);
                    if !self.devices.write(space, addr, data.as_slice()) {
                        self.record_unhandled(space, addr, true);
                    }
                    if let Some(done) = done {
                        let _ = done.send(IoData::default());
                    }
                    // ACPI S5: end now, before the guest's status polling keeps the loop busy.
                    if self.devices.take_power_off() {
                        return Some(VmExit::PowerOff);
                    }
                }
                VcpuMessage::Read {
                    space,
                    addr,
                    len,
                    reply,
                    ..
                } => {
                    self.count_exit(space);
                    let mut data = IoData { len, bytes: [0; 8] };
                    if !self.devices.read(space, addr, data.as_mut_slice()) {
                        self.record_unhandled(space, addr, false);
                    }
                    // The vCPU may already be gone when the VM is stopping.
                    let _ = reply.send(data);
                }
                VcpuMessage::Paused { vcpu } => self.vcpu_parked(vcpu),
                VcpuMessage::Stopped { vcpu, reason } => match reason {
                    VcpuStop::Shutdown | VcpuStop::SystemEvent(_) => {
                        return Some(VmExit::Shutdown { vcpu })
                    }
                    VcpuStop::Error(message) => return Some(VmExit::VcpuError { vcpu, message }),
                    VcpuStop::Requested => {
                        self.vcpus_running = self.vcpus_running.saturating_sub(1);
                        if self.vcpus_running == 0 {
                            return Some(VmExit::AllVcpusStopped);
                        }
                    }
                },
            }
        }
        None
    }

    fn count_exit(&mut self, space: AddressSpace) {
        match space {
            AddressSpace::Pio => self.stats.pio_exits += 1,
            AddressSpace::Mmio => self.stats.mmio_exits += 1,
        }
    }

    fn record_unhandled(&mut self, space: AddressSpace, addr: u64, is_write: bool) {
        devices::rl_debug!(
            "unhandled {space:?} {} at {addr:#x}",
            if is_write { "write" } else { "read" }
        );
        if self.stats.unhandled.len() < MAX_UNHANDLED_RECORDED {
            self.stats.unhandled.push((space, addr, is_write));
        }
    }

    /// Reads host input until the fd is drained (mio is edge-triggered) or the guest's
    /// pending-input buffer is full.
    fn read_console_input(&mut self) {
        let Some(fd) = self.stdin else { return };
        let mut buf = [0u8; 256];
        while self.devices.serial.wants_input() {
            match read_fd(fd, &mut buf) {
                Ok(0) => {
                    // End of input: stop watching it.
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    self.stdin = None;
                    return;
                }
                Ok(n) => self.devices.queue_console_input(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("console input failed: {e}");
                    return;
                }
            }
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` stays open for the life of the loop; `buf` is a valid writable buffer.
    let mut file = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    file.read(buf)
}
