//! What each VMM thread is doing, for finding where a stuck Volt waits.
//!
//! Every vCPU thread and the event loop publish their current phase in a few atomics (relaxed
//! stores, no lock, no system call). The main thread, which otherwise only waits for the VM to
//! end, prints a report of them on stderr when the process gets `SIGUSR1` (`kill -USR1 PID`),
//! and with `--watchdog SECS` also by itself when neither a vCPU nor the loop made progress for
//! that long. The report names, per thread, its kernel thread id, what it is doing (in
//! `KVM_RUN`, waiting for the loop's answer to which access, polling, in which handler), its
//! counters, and the depth of the vCPU-to-loop channel.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use vmm_sys_util::eventfd::EventFd;

use crate::clock;
use crate::vcpu::{AddressSpace, VcpuMessage};

/// A vCPU thread's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuPhase {
    Starting = 0,
    /// Inside `KVM_RUN`: the guest runs (or halts in the kernel).
    InGuest = 1,
    /// Handing an exit to the loop (the channel may be full).
    Sending = 2,
    /// Waiting for the loop's answer to the access in `detail`.
    WaitingReply = 3,
    Stopped = 4,
}

/// The event loop's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LoopPhase {
    Starting = 0,
    /// In `epoll_wait`.
    Polling = 1,
    /// Serving vCPU exits.
    VcpuMessages = 2,
    /// Reading host console input.
    ConsoleInput = 3,
    /// Serving a device's fd (queue kick, tap, ...); `detail` is the source index.
    DeviceEvent = 4,
    /// Writing guest console output to stdout.
    ConsoleOutput = 5,
    Finished = 6,
}

/// The access a vCPU exit is about, packed into one u64: address, space, write flag, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub space: AddressSpace,
    pub addr: u64,
    pub write: bool,
    pub len: u8,
}

impl Access {
    fn pack(self) -> u64 {
        // MMIO addresses fit 48 bits, ports 16; the top bits carry the rest.
        let space = match self.space {
            AddressSpace::Pio => 0u64,
            AddressSpace::Mmio => 1,
        };
        (self.addr & 0xffff_ffff_ffff)
            | space << 48
            | u64::from(self.write) << 49
            | u64::from(self.len & 0xf) << 52
    }

    fn unpack(word: u64) -> Access {
        Access {
            space: if word >> 48 & 1 == 0 {
                AddressSpace::Pio
            } else {
                AddressSpace::Mmio
            },
            addr: word & 0xffff_ffff_ffff,
            write: word >> 49 & 1 == 1,
            len: (word >> 52 & 0xf) as u8,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let space = match self.space {
            AddressSpace::Pio => "port",
            AddressSpace::Mmio => "mmio",
        };
        let dir = if self.write { "write" } else { "read" };
        write!(f, "{space} {dir} of {} bytes at {:#x}", self.len, self.addr)
    }
}

/// One vCPU thread's published state.
#[derive(Debug, Default)]
pub struct VcpuState {
    tid: AtomicU32,
    phase: AtomicU8,
    /// The last access handed to the loop ([`Access`] packed).
    access: AtomicU64,
    /// Exits handed to the loop so far.
    exits: AtomicU64,
    /// Exits answered on the vCPU thread (see [`crate::fast_path`]).
    local: AtomicU64,
    /// Set by the reporter: the thread stores the guest's RIP at its next pass between two
    /// `KVM_RUN`s (the reporter kicks it out of the guest to get there).
    rip_wanted: AtomicBool,
    /// The guest RIP last sampled.
    guest_rip: AtomicU64,
    /// The guest's IDT base at that sample. Early in boot it is Linux's `idt_table`, which
    /// gives a randomized (KASLR) kernel's offset (perf/symbolize.py).
    guest_idt: AtomicU64,
    /// Samples taken so far: the reporter waits for this to move.
    rip_samples: AtomicU64,
}

impl VcpuState {
    /// Called first thing on the vCPU thread.
    pub fn started(&self) {
        self.tid.store(gettid(), Ordering::Relaxed);
    }

    pub fn set(&self, phase: VcpuPhase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The thread answered an exit itself.
    pub fn answered_locally(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the reporter asked for the guest's RIP (a relaxed load: cheap on every exit).
    pub fn rip_wanted(&self) -> bool {
        self.rip_wanted.load(Ordering::Relaxed)
    }

    /// The vCPU thread answers [`VcpuState::rip_wanted`].
    pub fn store_rip(&self, rip: u64, idt_base: u64) {
        self.guest_rip.store(rip, Ordering::Relaxed);
        self.guest_idt.store(idt_base, Ordering::Relaxed);
        self.rip_wanted.store(false, Ordering::Relaxed);
        self.rip_samples.fetch_add(1, Ordering::Release);
    }

    /// The thread hands `access` to the loop.
    pub fn sending(&self, access: Access) {
        self.access.store(access.pack(), Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
        self.set(VcpuPhase::Sending);
    }
}

/// The event loop's published state.
#[derive(Debug, Default)]
pub struct LoopState {
    /// Set while the loop is in (or about to enter) `epoll_wait`: only then must a vCPU that
    /// queued a message wake it (see [`LoopState::going_to_sleep`]).
    idle: AtomicBool,
    tid: AtomicU32,
    phase: AtomicU8,
    detail: AtomicU64,
    /// `epoll_wait` returns so far.
    wakeups: AtomicU64,
    /// vCPU messages served so far.
    messages: AtomicU64,
}

impl LoopState {
    pub fn started(&self) {
        self.tid.store(gettid(), Ordering::Relaxed);
    }

    pub fn set(&self, phase: LoopPhase, detail: u64) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.detail.store(detail, Ordering::Relaxed);
    }

    pub fn woke(&self) {
        self.idle.store(false, Ordering::Relaxed);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// The loop is about to sleep. Returns true if it must not: `has_work` (checked after the
    /// flag is visible) found a queued message. Pairs with [`LoopState::must_wake`]: of a vCPU
    /// that queues a message and then checks the flag, and the loop that sets the flag and then
    /// checks the queue, at least one sees the other (both sides fence with SeqCst), so a
    /// message never waits for a wake-up nobody sends.
    pub fn going_to_sleep(&self, has_work: impl FnOnce() -> bool) -> bool {
        self.idle.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if has_work() {
            self.idle.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Called by a vCPU after it queued a message: whether the loop may be asleep.
    pub fn must_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.idle.load(Ordering::Relaxed)
    }

    pub fn served_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every thread's state; shared (in an `Arc`) by the threads that publish it and the reporter.
#[derive(Debug)]
pub struct ThreadStates {
    pub vcpus: Vec<VcpuState>,
    pub event_loop: LoopState,
}

impl ThreadStates {
    pub fn new(vcpu_count: usize) -> Self {
        ThreadStates {
            vcpus: (0..vcpu_count).map(|_| VcpuState::default()).collect(),
            event_loop: LoopState::default(),
        }
    }

    /// Exits the vCPU threads answered themselves, all together.
    pub fn answered_locally(&self) -> u64 {
        self.vcpus
            .iter()
            .map(|v| v.local.load(Ordering::Relaxed))
            .sum()
    }

    /// A number that grows whenever any thread makes progress.
    pub fn progress(&self) -> u64 {
        let exits: u64 = self
            .vcpus
            .iter()
            .map(|v| v.exits.load(Ordering::Relaxed))
            .sum();
        exits
            .wrapping_add(self.answered_locally())
            .wrapping_add(self.event_loop.wakeups.load(Ordering::Relaxed))
            .wrapping_add(self.event_loop.messages.load(Ordering::Relaxed))
    }

    /// The report, one line per thread. `channel_depth` is the number of vCPU messages the loop
    /// has not taken yet.
    ///
    /// `rips[i]` are guest RIPs sampled from vCPU `i` just before (see [`sample_guest_rips`]).
    pub fn report(&self, reason: &str, channel_depth: usize, rips: &[Vec<u64>]) -> String {
        let mut out = format!(
            "volt: thread report ({reason}) at {} ms; {channel_depth} vCPU message(s) queued for the loop\n",
            clock::since_start().as_millis()
        );
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            let access = Access::unpack(vcpu.access.load(Ordering::Relaxed));
            let exits = vcpu.exits.load(Ordering::Relaxed);
            let phase = match vcpu.phase.load(Ordering::Relaxed) {
                1 => "in KVM_RUN (guest running or halted)".to_string(),
                2 => format!("handing the loop a {access}"),
                3 => format!("waiting for the loop's answer to a {access}"),
                4 => "stopped".to_string(),
                _ => "starting".to_string(),
            };
            let sampled = match rips.get(index) {
                Some(rips) if !rips.is_empty() => {
                    let list: Vec<String> = rips.iter().map(|r| format!("{r:#x}")).collect();
                    let idt = vcpu.guest_idt.load(Ordering::Relaxed);
                    format!("; guest rip={} idt={idt:#x}", list.join(","))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  vcpu{index} (tid {}): {phase}; {exits} exits handed to the loop (last a {access}), {} answered itself{sampled}",
                vcpu.tid.load(Ordering::Relaxed),
                vcpu.local.load(Ordering::Relaxed)
            );
        }
        let l = &self.event_loop;
        let detail = l.detail.load(Ordering::Relaxed);
        let phase = match l.phase.load(Ordering::Relaxed) {
            1 => "in epoll_wait".to_string(),
            2 => "serving vCPU exits".to_string(),
            3 => "reading console input".to_string(),
            4 => format!("serving device event source {detail}"),
            5 => "writing console output".to_string(),
            6 => "finished".to_string(),
            _ => "starting".to_string(),
        };
        let _ = writeln!(
            out,
            "  event loop (tid {}): {phase}; {} wake-ups, {} vCPU messages served",
            l.tid.load(Ordering::Relaxed),
            l.wakeups.load(Ordering::Relaxed),
            l.messages.load(Ordering::Relaxed)
        );
        out
    }
}

fn gettid() -> u32 {
    // The raw system call: in a static glibc build the `gettid` wrapper can resolve to a null
    // weak symbol (a call through it crashed the static release build).
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    u32::try_from(tid).unwrap_or(0)
}

/// `SIGUSR1` held back from every thread and read from a signalfd by the reporter. Blocked on
/// the calling thread before the VM's threads exist, so all of them inherit the mask. It stays
/// blocked afterwards: unblocking it would let a late `SIGUSR1` kill the process.
pub struct ReportSignal {
    fd: OwnedFd,
}

impl ReportSignal {
    pub fn block() -> std::io::Result<Self> {
        // SAFETY: sigset manipulation on local storage; pthread_sigmask affects this thread only;
        // signalfd returns a new fd that we own (checked below).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(ReportSignal {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// Consumes every pending report request; true if there was one. (sigtimedwait rather than
    /// a read of the signalfd, so the main thread's filter need not allow `read`.)
    fn take(&self) -> bool {
        let mut got = false;
        // SAFETY: sigset manipulation on local storage; a zero timeout never blocks.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGUSR1 {
                got = true;
            }
        }
        got
    }
}

/// Guest RIPs of every vCPU: `samples` rounds, `gap` apart. Each round asks every vCPU thread
/// for its RIP, calls `kick` (which interrupts `KVM_RUN`) and waits up to 50 ms for the answers;
/// a vCPU that does not answer in time (waiting for the loop, or stopped) is left out.
pub fn sample_guest_rips(
    states: &ThreadStates,
    kick: &dyn Fn(),
    samples: usize,
    gap: Duration,
) -> Vec<Vec<u64>> {
    let mut rips = vec![Vec::new(); states.vcpus.len()];
    for round in 0..samples {
        if round > 0 {
            std::thread::sleep(gap);
        }
        let before: Vec<u64> = states
            .vcpus
            .iter()
            .map(|v| {
                v.rip_wanted.store(true, Ordering::Relaxed);
                v.rip_samples.load(Ordering::Acquire)
            })
            .collect();
        kick();
        let deadline = Instant::now() + Duration::from_millis(50);
        loop {
            let answered = states
                .vcpus
                .iter()
                .zip(&before)
                .all(|(v, b)| v.rip_samples.load(Ordering::Acquire) != *b);
            if answered || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for ((v, b), out) in states.vcpus.iter().zip(&before).zip(&mut rips) {
            if v.rip_samples.load(Ordering::Acquire) != *b {
                out.push(v.guest_rip.load(Ordering::Relaxed));
            }
            v.rip_wanted.store(false, Ordering::Relaxed);
        }
    }
    rips
}

/// Waits until `done` is signalled (the event loop ended), printing a thread report on stderr
/// for every `SIGUSR1` and, with `watchdog`, once whenever no thread made progress for that long.
pub fn wait_reporting(
    done: &EventFd,
    signal: &ReportSignal,
    states: &ThreadStates,
    channel: &Sender<VcpuMessage>,
    watchdog: Option<Duration>,
    kick: &dyn Fn(),
) {
    let tick = watchdog.map_or(-1, |w| w.as_millis().clamp(100, 1000) as i32);
    let print_report = |reason: &str| {
        let rips = sample_guest_rips(states, kick, 4, Duration::from_millis(20));
        eprint!("{}", states.report(reason, channel.len(), &rips));
    };
    let mut last_progress = (states.progress(), Instant::now());
    let mut reported_stall = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: done.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signal.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, tick) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("waiting for the VM failed ({e}); no more thread reports");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 && signal.take() {
            print_report("SIGUSR1");
        }
        if let Some(limit) = watchdog {
            let now = states.progress();
            if now != last_progress.0 {
                last_progress = (now, Instant::now());
                reported_stall = false;
            } else if !reported_stall && last_progress.1.elapsed() >= limit {
                reported_stall = true;
                let reason = format!("watchdog: no progress for {} s", limit.as_secs());
                print_report(&reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_round_trips_through_its_packed_form() {
        for access in [
            Access {
                space: AddressSpace::Pio,
                addr: 0x3fd,
                write: false,
                len: 1,
            },
            Access {
                space: AddressSpace::Mmio,
                addr: 0xd000_0050,
                write: true,
                len: 4,
            },
        ] {
            assert_eq!(Access::unpack(access.pack()), access);
        }
    }

    #[test]
    fn rip_samples_come_from_the_vcpus_that_answer_the_kick() {
        let states = ThreadStates::new(2);
        let kicks_seen = std::cell::Cell::new(0u64);
        // vCPU 0 answers every kick with a new RIP; vCPU 1 never answers (waiting for the loop).
        let kick = || {
            kicks_seen.set(kicks_seen.get() + 1);
            if states.vcpus[0].rip_wanted() {
                states.vcpus[0].store_rip(0x1000 + kicks_seen.get(), 0);
            }
        };
        let rips = sample_guest_rips(&states, &kick, 3, Duration::ZERO);
        assert_eq!(kicks_seen.get(), 3);
        assert_eq!(rips, vec![vec![0x1001, 0x1002, 0x1003], vec![]]);
        assert!(
            !states.vcpus[1].rip_wanted(),
            "an unanswered request is withdrawn"
        );
    }

    #[test]
    fn report_names_each_thread_phase_and_access() {
        let states = ThreadStates::new(2);
        states.vcpus[0].set(VcpuPhase::InGuest);
        states.vcpus[1].sending(Access {
            space: AddressSpace::Mmio,
            addr: 0xd000_0070,
            write: true,
            len: 4,
        });
        states.vcpus[1].set(VcpuPhase::WaitingReply);
        states.event_loop.set(LoopPhase::DeviceEvent, 3);
        let before = states.progress();
        states.event_loop.woke();
        assert!(states.progress() > before, "a wake-up is progress");
        let report = states.report("test", 5, &[vec![0xffff_ffff_8100_0000, 0x10], vec![]]);
        assert!(
            report
                .contains("0 answered itself; guest rip=0xffffffff81000000,0x10 idt=0x0\n  vcpu1"),
            "{report}"
        );
        assert!(report.contains("5 vCPU message(s) queued"), "{report}");
        assert!(report.contains("vcpu0 (tid 0): in KVM_RUN"), "{report}");
        assert!(
            report.contains("vcpu1 (tid 0): waiting for the loop's answer to a mmio write of 4 bytes at 0xd0000070; 1 exits"),
            "{report}"
        );
        assert!(
            report.contains("serving device event source 3; 1 wake-ups"),
            "{report}"
        );
    }
}
