//! Pausing the guest: the vCPU threads leave `KVM_RUN` (kicked by a signal) and park until the
//! event loop, which keeps serving the API meanwhile, resumes them. Parked, a thread also saves
//! its vCPU's state on request (for a snapshot): only the thread that owns a vCPU fd touches it.
//!
//! Protocol: the loop sets the shared `requested` flag and kicks every vCPU thread; each thread
//! checks the flag before every `KVM_RUN`, reports [`VcpuMessage::Paused`] on the same channel
//! as its exits (so every access it made before is served first) and waits for a command. A
//! kick that lands just before a thread enters `KVM_RUN` is lost, so the loop repeats it until
//! every vCPU has reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use kvm_ioctls::VcpuFd;

use crate::snapshot::vcpu_state::{save_vcpu, VcpuSnapshot, VcpuStateError};
use crate::vcpu::{kick_signal, VcpuMessage};

/// How often a parked thread checks whether the VMM is stopping.
const PARK_SLICE: Duration = Duration::from_millis(20);

/// What the loop asks of a parked vCPU thread.
pub enum VcpuCommand {
    /// Run the guest again.
    Resume,
    /// Read the vCPU's state and send it back.
    Save(Sender<Result<VcpuSnapshot, VcpuStateError>>),
}

/// Why the vCPUs' state could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the vCPUs are not paused")]
    NotPaused,
    #[error("a vCPU thread is gone")]
    ThreadGone,
    #[error("vcpu{0} did not answer the save request")]
    NoAnswer(usize),
    #[error("vcpu{index}: {source}")]
    State {
        index: usize,
        #[source]
        source: VcpuStateError,
    },
}

/// A vCPU thread's end of the pause protocol.
#[derive(Clone)]
pub struct VcpuPause {
    requested: Arc<AtomicBool>,
    commands: Receiver<VcpuCommand>,
}

/// How a parked thread left its park.
pub enum Unparked {
    /// Resumed (or never paused): enter the guest.
    Run,
    /// The VMM is stopping.
    Stop,
}

impl VcpuPause {
    /// Called before every `KVM_RUN`: parks while a pause is requested.
    pub fn park_if_requested(
        &self,
        index: usize,
        vcpu: &mut VcpuFd,
        send: impl Fn(VcpuMessage) -> bool,
        stop: &AtomicBool,
    ) -> Unparked {
        if !self.requested.load(Ordering::Acquire) {
            return Unparked::Run;
        }
        if !send(VcpuMessage::Paused { vcpu: index }) {
            return Unparked::Stop;
        }
        loop {
            match self.commands.recv_timeout(PARK_SLICE) {
                Ok(VcpuCommand::Resume) => return Unparked::Run,
                Ok(VcpuCommand::Save(reply)) => {
                    let _ = reply.send(save_vcpu(vcpu));
                }
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => {}
                Err(_) => return Unparked::Stop,
            }
        }
    }
}

/// The loop's end: asks the vCPU threads to park, resume and save.
pub struct PauseControl {
    requested: Arc<AtomicBool>,
    commands: Vec<Sender<VcpuCommand>>,
    /// The vCPU threads, known once they are spawned (after the loop thread).
    threads: Arc<OnceLock<Vec<libc::pthread_t>>>,
    parked: Vec<bool>,
}

/// Where the vCPU threads' ids are published for [`PauseControl`] once they exist.
#[derive(Clone, Default)]
pub struct VcpuThreads(Arc<OnceLock<Vec<libc::pthread_t>>>);

impl VcpuThreads {
    pub fn publish(&self, threads: impl Iterator<Item = libc::pthread_t>) {
        let _ = self.0.set(threads.collect());
    }
}

/// One [`VcpuPause`] per vCPU, the loop's [`PauseControl`], and where to publish the threads.
pub fn pause_channels(vcpus: usize) -> (Vec<VcpuPause>, PauseControl, VcpuThreads) {
    let requested = Arc::new(AtomicBool::new(false));
    let threads = VcpuThreads::default();
    let mut ends = Vec::with_capacity(vcpus);
    let mut commands = Vec::with_capacity(vcpus);
    for _ in 0..vcpus {
        let (tx, rx) = unbounded();
        commands.push(tx);
        ends.push(VcpuPause {
            requested: requested.clone(),
            commands: rx,
        });
    }
    let control = PauseControl {
        requested,
        commands,
        threads: threads.0.clone(),
        parked: vec![false; vcpus],
    };
    (ends, control, threads)
}

impl PauseControl {
    /// Asks every vCPU to park and kicks them out of `KVM_RUN`.
    pub fn request(&mut self) {
        self.requested.store(true, Ordering::Release);
        self.kick_unparked();
    }

    /// Kicks the vCPUs that have not parked yet (a kick can be lost, see the module docs).
    pub fn kick_unparked(&self) {
        let Some(threads) = self.threads.get() else {
            return;
        };
        for (thread, parked) in threads.iter().zip(&self.parked) {
            if !parked {
                // SAFETY: the thread ids belong to vCPU threads that are joined only after the
                // event loop has ended, so each id is valid; the kick handler does nothing.
                unsafe { libc::pthread_kill(*thread, kick_signal()) };
            }
        }
    }

    /// vCPU `index` reported it is parked; true once all are.
    pub fn parked(&mut self, index: usize) -> bool {
        if let Some(flag) = self.parked.get_mut(index) {
            *flag = true;
        }
        self.all_parked()
    }

    /// Lets one vCPU that parked after a pause was given up run again.
    pub fn resume_one(&mut self, index: usize) {
        if let (Some(commands), Some(parked)) =
            (self.commands.get(index), self.parked.get_mut(index))
        {
            let _ = commands.send(VcpuCommand::Resume);
            *parked = false;
        }
    }

    pub fn all_parked(&self) -> bool {
        self.parked.iter().all(|&p| p)
    }

    /// Lets every vCPU run again.
    pub fn resume(&mut self) {
        self.requested.store(false, Ordering::Release);
        for (commands, parked) in self.commands.iter().zip(self.parked.iter_mut()) {
            if *parked {
                let _ = commands.send(VcpuCommand::Resume);
            }
            *parked = false;
        }
    }

    /// The state of every vCPU, in index order; the vCPUs must be parked.
    pub fn save_all(&self, timeout: Duration) -> Result<Vec<VcpuSnapshot>, SaveError> {
        if !self.all_parked() {
            return Err(SaveError::NotPaused);
        }
        let mut replies = Vec::with_capacity(self.commands.len());
        for commands in &self.commands {
            let (tx, rx) = crossbeam_channel::bounded(1);
            commands
                .send(VcpuCommand::Save(tx))
                .map_err(|_| SaveError::ThreadGone)?;
            replies.push(rx);
        }
        replies
            .into_iter()
            .enumerate()
            .map(|(index, rx)| {
                rx.recv_timeout(timeout)
                    .map_err(|_| SaveError::NoAnswer(index))?
                    .map_err(|source| SaveError::State { index, source })
            })
            .collect()
    }
}
