//! The running VM: the event-loop thread and one thread per vCPU, the signal masks they start
//! with, and waiting for the end (with thread reports).

use super::*;

/// How long the event loop spins for the next vCPU exit when it has a CPU of its own:
/// 50 us, or `VOLT_LOOP_SPIN_US` (0 turns it off; a knob for the benchmarks in perf/).
pub(super) fn loop_linger() -> Option<std::time::Duration> {
    let us = std::env::var("VOLT_LOOP_SPIN_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50);
    (us > 0).then(|| std::time::Duration::from_micros(us))
}

impl Vm {
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
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT on the calling thread; returns the old mask.
pub(super) fn block_termination_signals() -> libc::sigset_t {
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

pub(super) fn restore_signal_mask(previous: &libc::sigset_t) {
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
            &|| self.vcpus.iter().for_each(VcpuHandle::kick),
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
