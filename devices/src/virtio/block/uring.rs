//! The io_uring engine: many requests of a queue in flight at once, data moved by the kernel
//! straight between the image and guest memory (readv/writev on iovecs into guest RAM), and
//! completions announced on an eventfd that the event loop watches like any other source.
//!
//! Ordering: a FLUSH is submitted with `IOSQE_IO_DRAIN`, so it starts only after every request
//! submitted before it completed (the writes it must cover), and nothing after it starts
//! before it is done. The number of requests in flight is bounded by the ring size.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{IoOp, IoRequest};

/// A request whose completion has been reaped, with the kernel's result.
pub(super) struct Completed {
    pub request: IoRequest,
    /// Ok for a complete transfer (or a successful flush); else why it failed.
    pub result: Result<(), io::Error>,
}

/// An io_uring instance for one disk.
pub(super) struct UringEngine {
    ring: IoUring,
    eventfd: EventFd,
    /// In-flight requests by slot; the slot number is the SQE's user_data. The iovecs of a
    /// request live here (at a stable heap address) until its completion is reaped.
    slots: Vec<Option<IoRequest>>,
    free: Vec<usize>,
    /// Entries pushed to the submission queue but not yet accepted by the kernel.
    unsubmitted: bool,
}

impl UringEngine {
    /// Sets up a ring of `entries` (a power of two), checks the kernel has the operations the
    /// engine uses, and registers the completion eventfd. Fails where io_uring is missing,
    /// disabled (`kernel.io_uring_disabled`) or refused (a seccomp filter or container policy).
    pub fn new(entries: u32) -> io::Result<UringEngine> {
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Readv::CODE, "readv"),
            (opcode::Writev::CODE, "writev"),
            (opcode::Fsync::CODE, "fsync"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks {name}"),
                ));
            }
        }
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let capacity = ring.params().sq_entries() as usize;
        Ok(UringEngine {
            ring,
            eventfd,
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            unsubmitted: false,
        })
    }

    /// The completion eventfd, for the event loop.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Whether another request may be queued.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Requests queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queues `request` on `file` (submitted by the next [`UringEngine::submit`]). Hands the
    /// request back when the engine is full.
    pub fn push(&mut self, file: &File, request: IoRequest) -> Result<(), IoRequest> {
        let Some(slot) = self.free.pop() else {
            return Err(request);
        };
        let fd = types::Fd(file.as_raw_fd());
        // The parser caps iovecs at MAX_IOVECS (1024), so the count fits u32.
        let count = request.iovecs.0.len() as u32;
        let entry = match request.op {
            IoOp::Read { offset } => opcode::Readv::new(fd, request.iovecs.0.as_ptr(), count)
                .offset(offset)
                .build(),
            IoOp::Write { offset } => opcode::Writev::new(fd, request.iovecs.0.as_ptr(), count)
                .offset(offset)
                .build(),
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        // The submission queue has one entry per slot and a slot is taken per pushed entry,
        // so it has room unless entries are still unsubmitted after a failed submit.
        if self.ring.submission().is_full() {
            self.submit();
        }
        // SAFETY: the SQE points at the request's iovec array, which moves into `slots` below
        // (its heap buffer does not move) and stays there until the completion is reaped, and
        // at guest memory, which the parser checked and which outlives the device; the engine
        // drains every request before it is dropped.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(request);
        }
        self.slots[slot] = Some(request);
        self.unsubmitted = true;
        Ok(())
    }

    /// Hands the queued entries to the kernel (one io_uring_enter). On a transient failure the
    /// entries stay queued and the next call retries.
    pub fn submit(&mut self) {
        if !self.unsubmitted {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.unsubmitted = !self.ring.submission().is_empty(),
            Err(e) => log::debug!("virtio-block: io_uring submit deferred: {e}"),
        }
    }

    /// Clears the completion eventfd (call before [`UringEngine::reap`], so a completion
    /// posted after the reap signals the loop again).
    pub fn clear_event(&self) {
        let _ = self.eventfd.read();
    }

    /// Takes every completion the kernel has posted.
    pub fn reap(&mut self, mut done: impl FnMut(Completed)) {
        self.submit();
        // Collect first: the completion queue borrows the ring.
        let finished: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, res) in finished {
            let slot = user_data as usize;
            let Some(request) = self.slots.get_mut(slot).and_then(Option::take) else {
                log::warn!("virtio-block: io_uring completion for unknown slot {user_data}");
                continue;
            };
            self.free.push(slot);
            let result = completion_result(&request, res);
            done(Completed { request, result });
        }
    }

    /// Waits until every request in flight has completed, handing each to `done` (a snapshot:
    /// the guest must see them finished). Gives up, as [`UringEngine::drain`], on a broken ring.
    pub fn complete_all(&mut self, mut done: impl FnMut(Completed)) {
        while self.in_flight() > 0 {
            let waited = self.ring.submit_and_wait(1);
            self.unsubmitted = !self.ring.submission().is_empty();
            let before = self.in_flight();
            self.reap(&mut done);
            if let Err(e) = waited {
                if e.kind() != io::ErrorKind::Interrupted && self.in_flight() == before {
                    log::error!(
                        "virtio-block: io_uring wait failed with {before} requests in flight: {e}"
                    );
                    return;
                }
            }
        }
    }

    /// Waits for every request in flight and drops them (device reset or teardown: their
    /// guest buffers must not be written after this returns).
    pub fn drain(&mut self) {
        while self.in_flight() > 0 {
            let waited = self.ring.submit_and_wait(1);
            self.unsubmitted = !self.ring.submission().is_empty();
            let before = self.in_flight();
            self.reap(|_| {});
            if let Err(e) = waited {
                if e.kind() != io::ErrorKind::Interrupted && self.in_flight() == before {
                    // Nothing can complete (the ring is broken): give up rather than spin.
                    log::error!(
                        "virtio-block: io_uring drain failed with {before} requests in flight: {e}"
                    );
                    return;
                }
            }
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.drain();
    }
}

/// A readv/writev must move exactly the request's bytes; a flush must return 0.
fn completion_result(request: &IoRequest, res: i32) -> Result<(), io::Error> {
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    let expected = match request.op {
        IoOp::Flush => 0,
        IoOp::Read { .. } | IoOp::Write { .. } => request.len,
    };
    if res as usize == expected {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short transfer: {res} of {expected} bytes"),
        ))
    }
}
