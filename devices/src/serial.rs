//! The 8250/16550A UART on COM1 (port 0x3f8) that carries the guest console.
//!
//! The register model comes from `vm-superio`; this wrapper adds what the VMM needs around it:
//! interrupts through an irqfd, host input that waits while the guest's 64-byte FIFO is full,
//! and output that is buffered and flushed once per event-loop iteration instead of once per
//! byte (the kernel writes its console a byte at a time).
//!
//! Everything the guest can grow is bounded: console output waits in a buffer of at most
//! [`MAX_BUFFERED_OUTPUT`] bytes (more is dropped and counted, the guest is never stalled), and
//! host input in one of at most [`MAX_PENDING_INPUT`] bytes (the loop stops reading its source
//! while it is full). Flushing never blocks on a non-blocking sink: bytes the host cannot take
//! now (`EAGAIN`) stay buffered until the next flush, which the loop runs when the sink becomes
//! writable again.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::{rl_warn, BusDevice, DeviceCounters};

// Save and restore for snapshots.
mod state;
pub use state::SerialSnapshot;

/// Raises a guest interrupt by writing to an eventfd that KVM routes to a GSI (an irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Guest console output held for the host at most; beyond it output is dropped and counted.
pub const MAX_BUFFERED_OUTPUT: usize = 64 * 1024;

/// Console output that only reaches the real writer on [`ConsoleOutput::flush_buffered`].
///
/// `vm-superio` writes here only what is real output: not divisor-latch writes and not
/// loopback-mode bytes, so this is also where output is counted.
pub struct ConsoleOutput {
    buffer: VecDeque<u8>,
    sink: Box<dyn Write + Send>,
    /// The sink took bytes but its own `flush` has not completed yet (it said `WouldBlock`).
    sink_unflushed: bool,
    /// Guest output bytes (including dropped ones).
    bytes: u64,
    /// Output bytes that never reached the sink.
    dropped: u64,
    /// Sink failures other than `WouldBlock`.
    errors: u64,
}

impl ConsoleOutput {
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        ConsoleOutput {
            buffer: VecDeque::with_capacity(4096),
            sink,
            sink_unflushed: false,
            bytes: 0,
            dropped: 0,
            errors: 0,
        }
    }

    /// Writes out as much as the sink takes now of everything the guest produced.
    ///
    /// `Ok(())` also when the sink would block: the rest stays buffered (see
    /// [`ConsoleOutput::has_pending`]) for the next call. A hard error drops the buffered bytes
    /// (counted) and is returned.
    pub fn flush_buffered(&mut self) -> io::Result<()> {
        while !self.buffer.is_empty() {
            let (front, _) = self.buffer.as_slices();
            match self.sink.write(front) {
                Ok(0) => return Err(self.fail(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.buffer.drain(..n.min(front.len()));
                    self.sink_unflushed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            }
        }
        if self.sink_unflushed {
            loop {
                match self.sink.flush() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => {
                        self.sink_unflushed = false;
                        return Err(self.fail(e));
                    }
                }
            }
            self.sink_unflushed = false;
        }
        Ok(())
    }

    /// Whether output is still waiting for the sink (it returned `WouldBlock`).
    pub fn has_pending(&self) -> bool {
        !self.buffer.is_empty() || self.sink_unflushed
    }

    /// Bytes waiting in the buffer (at most [`MAX_BUFFERED_OUTPUT`]).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        self.errors += 1;
        self.dropped += self.buffer.len() as u64;
        self.buffer.clear();
        error
    }
}

impl Write for ConsoleOutput {
    /// Never fails and never blocks: what does not fit in the buffer is dropped and counted.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_BUFFERED_OUTPUT.saturating_sub(self.buffer.len());
        let kept = data.len().min(room);
        self.buffer.extend(&data[..kept]);
        self.bytes += data.len() as u64;
        self.dropped += (data.len() - kept) as u64;
        Ok(data.len())
    }

    /// Deliberately a no-op: vm-superio flushes after every byte.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Host input waiting for room in the guest FIFO is capped so a flood cannot grow without bound.
pub const MAX_PENDING_INPUT: usize = 1 << 20;

const DATA_REGISTER: u64 = 0;
const MCR_REGISTER: u8 = 4;
/// Modem control: loopback mode (the transmitter feeds the receiver, no host I/O).
const MCR_LOOPBACK: u8 = 0x10;
const LSR_REGISTER: u8 = 5;
/// Port offset of the line status register.
pub const LINE_STATUS_REGISTER: u64 = LSR_REGISTER as u64;

/// COM1: a 16550A with host input and buffered output.
///
/// Counters: `requests` are guest register accesses, `bytes` console output bytes the guest
/// wrote (loopback-mode bytes are not output), `drops` the part of those that never reached
/// the host plus host input beyond [`MAX_PENDING_INPUT`], `errors` failed host writes and
/// failed interrupt signals.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
    pending_input: VecDeque<u8>,
    accesses: u64,
    errors: u64,
    bytes_in: u64,
    input_dropped: u64,
    /// MCR bit 4: output loops back into the receiver, so a data write changes the LSR, and
    /// host input waits.
    loopback: bool,
}

impl SerialConsole {
    pub fn new(irq: EventFd, output: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger(irq), ConsoleOutput::new(output)),
            pending_input: VecDeque::new(),
            accesses: 0,
            errors: 0,
            bytes_in: 0,
            input_dropped: 0,
            loopback: false,
        }
    }

    /// The line status register while reading it has no side effect and no posted data write
    /// can change it (not in loopback mode), else `None`. A vCPU may answer LSR reads with this
    /// value itself until the next access to the UART; Linux reads the LSR before every byte
    /// it writes to the console.
    pub fn stable_line_status(&mut self) -> Option<u8> {
        (!self.loopback).then(|| self.uart.read(LSR_REGISTER))
    }

    /// Whether more host input can be accepted; when false the caller stops reading its source.
    pub fn wants_input(&self) -> bool {
        self.pending_input.len() < MAX_PENDING_INPUT
    }

    /// Queues host input (keyboard, pipe) for the guest and moves what fits into the FIFO.
    /// Input beyond [`MAX_PENDING_INPUT`] is dropped (counted); callers check
    /// [`SerialConsole::wants_input`] first so that does not happen.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending_input.len());
        let kept = bytes.len().min(room);
        self.pending_input.extend(&bytes[..kept]);
        self.input_dropped += (bytes.len() - kept) as u64;
        self.fill_fifo();
    }

    /// Writes buffered guest output to the host, as much as it takes without blocking.
    ///
    /// Returns `Ok(())` when the host would block: [`SerialConsole::has_pending_output`] then
    /// stays true and the caller flushes again once the output fd is writable. An error means
    /// the buffered output was dropped (counted).
    pub fn flush_output(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush_buffered()
    }

    /// Whether guest output is waiting for the host to become writable.
    pub fn has_pending_output(&self) -> bool {
        self.uart.writer().has_pending()
    }

    /// Bytes of guest output waiting in the buffer (at most [`MAX_BUFFERED_OUTPUT`]).
    pub fn buffered_output(&self) -> usize {
        self.uart.writer().buffered()
    }

    /// Host input bytes waiting for room in the guest FIFO (at most [`MAX_PENDING_INPUT`]).
    pub fn pending_input(&self) -> usize {
        self.pending_input.len()
    }

    /// Number of bytes the guest has written to the console so far (dropped ones included).
    pub fn bytes_out(&self) -> u64 {
        self.uart.writer().bytes
    }

    /// Host input bytes handed to the guest's FIFO so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Requests, bytes, errors and drops (see the type's docs).
    pub fn counters(&self) -> DeviceCounters {
        let out = self.uart.writer();
        DeviceCounters {
            requests: self.accesses,
            bytes: out.bytes,
            errors: self.errors + out.errors,
            drops: out.dropped + self.input_dropped,
        }
    }

    fn in_loopback(&self) -> bool {
        self.loopback
    }

    fn fill_fifo(&mut self) {
        // In loopback mode the receiver is wired to the transmitter, not to the host: host
        // input waits until the guest leaves loopback.
        while !self.pending_input.is_empty() && !self.in_loopback() {
            let room = self.uart.fifo_capacity().min(self.pending_input.len());
            if room == 0 {
                return;
            }
            let (front, _) = self.pending_input.as_slices();
            let chunk = &front[..room.min(front.len())];
            match self.uart.enqueue_raw_bytes(chunk) {
                Ok(0) => return,
                Ok(n) => {
                    self.pending_input.drain(..n);
                    self.bytes_in += n as u64;
                }
                Err(e) => {
                    self.errors += 1;
                    rl_warn!("serial: cannot pass input to the guest: {e:?}");
                    return;
                }
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        self.accesses += 1;
        let Ok(register) = u8::try_from(offset) else {
            *first = 0;
            return;
        };
        *first = self.uart.read(register);
        if offset == DATA_REGISTER {
            self.fill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        self.accesses += 1;
        let Ok(register) = u8::try_from(offset) else {
            return;
        };
        if register == MCR_REGISTER {
            self.loopback = value & MCR_LOOPBACK != 0;
        }
        if let Err(e) = self.uart.write(register, value) {
            self.errors += 1;
            rl_warn!("serial: write to register {offset} failed: {e:?}");
        }
        if register == MCR_REGISTER {
            // Leaving loopback reconnects the receiver to the host.
            self.fill_fifo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can look into after the console took ownership of it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn console() -> (SerialConsole, Captured, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = Captured::default();
        let serial = SerialConsole::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (serial, out, irq)
    }

    #[test]
    fn output_is_held_until_flushed() {
        let (mut serial, out, _irq) = console();
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert!(out.0.lock().unwrap().is_empty());
        serial.flush_output().unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert_eq!(serial.bytes_out(), 2);
    }

    #[test]
    fn line_status_is_stable_except_in_loopback_mode() {
        let (mut serial, _out, _irq) = console();
        assert_eq!(serial.stable_line_status(), Some(0x60), "THR and TSR empty");
        serial.queue_input(b"x");
        assert_eq!(serial.stable_line_status(), Some(0x61), "data ready");
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(serial.stable_line_status(), Some(0x60));
        serial.write(4, &[MCR_LOOPBACK]);
        assert_eq!(
            serial.stable_line_status(),
            None,
            "a data write may change it"
        );
        serial.write(4, &[0x0b]);
        assert_eq!(serial.stable_line_status(), Some(0x60));
    }

    #[test]
    fn divisor_latch_writes_are_not_output() {
        let (mut serial, out, _irq) = console();
        serial.write(3, &[0x80]); // LCR: DLAB on
        serial.write(0, &[0x01]); // divisor low byte
        serial.write(3, &[0x03]); // 8N1, DLAB off
        serial.flush_output().unwrap();
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(serial.bytes_out(), 0);
    }

    #[test]
    fn input_beyond_the_fifo_waits_for_the_guest_to_read() {
        let (mut serial, _out, irq) = console();
        serial.write(1, &[0x01]); // IER: received-data interrupt
        let input: Vec<u8> = (0..100u8).collect();
        serial.queue_input(&input);
        assert!(irq.read().unwrap() >= 1, "input must raise the interrupt");
        let mut received = Vec::new();
        for _ in 0..input.len() {
            let mut lsr = [0u8];
            serial.read(5, &mut lsr);
            assert_eq!(
                lsr[0] & 1,
                1,
                "data-ready must stay set while input is pending"
            );
            let mut byte = [0u8];
            serial.read(0, &mut byte);
            received.push(byte[0]);
        }
        assert_eq!(received, input);
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
    }

    /// A sink like a non-blocking tty: takes at most `room` bytes, then says `WouldBlock`
    /// until the test makes room again.
    #[derive(Clone, Default)]
    struct Throttled {
        written: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
        fail: Arc<Mutex<Option<io::ErrorKind>>>,
    }
    impl Write for Throttled {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if let Some(kind) = *self.fail.lock().unwrap() {
                return Err(kind.into());
            }
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = data.len().min(*room).min(1000); // partial writes too
            *room -= n;
            self.written.lock().unwrap().extend_from_slice(&data[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn write_bytes(serial: &mut SerialConsole, bytes: impl IntoIterator<Item = u8>) {
        for b in bytes {
            serial.write(0, &[b]);
        }
    }

    #[test]
    fn would_block_keeps_the_rest_of_the_batch_for_the_next_flush() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Throttled::default();
        let mut serial = SerialConsole::new(irq, Box::new(sink.clone()));
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        write_bytes(&mut serial, text.iter().copied());
        *sink.room.lock().unwrap() = 2500;
        serial.flush_output().unwrap();
        assert!(serial.has_pending_output());
        assert_eq!(serial.buffered_output(), 7500);
        // The host drains its side a bit at a time; every flush continues where it stopped.
        while serial.has_pending_output() {
            *sink.room.lock().unwrap() = 1700;
            serial.flush_output().unwrap();
        }
        assert_eq!(*sink.written.lock().unwrap(), text);
        assert_eq!(serial.counters().drops, 0);
        assert_eq!(serial.bytes_out(), 10_000);
    }

    #[test]
    fn output_flood_is_bounded_dropped_and_counted() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Throttled::default(); // no room: the host never reads
        let mut serial = SerialConsole::new(irq, Box::new(sink.clone()));
        let flood = 1_000_000usize;
        for i in 0..flood {
            serial.write(0, &[u8::try_from(i % 251).unwrap()]);
            if i % 4096 == 0 {
                serial.flush_output().unwrap(); // what the loop does every iteration
            }
        }
        assert_eq!(serial.buffered_output(), MAX_BUFFERED_OUTPUT);
        let counters = serial.counters();
        assert_eq!(counters.bytes, flood as u64);
        assert_eq!(counters.drops, (flood - MAX_BUFFERED_OUTPUT) as u64);
        assert_eq!(counters.requests, flood as u64);
        // What was kept is the oldest output, in order.
        *sink.room.lock().unwrap() = usize::MAX;
        serial.flush_output().unwrap();
        let written = sink.written.lock().unwrap();
        assert_eq!(written.len(), MAX_BUFFERED_OUTPUT);
        assert!(written
            .iter()
            .enumerate()
            .all(|(i, &b)| usize::from(b) == i % 251));
    }

    #[test]
    fn a_broken_sink_drops_and_counts_instead_of_growing() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Throttled::default();
        *sink.fail.lock().unwrap() = Some(io::ErrorKind::BrokenPipe);
        let mut serial = SerialConsole::new(irq, Box::new(sink));
        write_bytes(&mut serial, *b"lost");
        assert!(serial.flush_output().is_err());
        assert!(!serial.has_pending_output());
        let counters = serial.counters();
        assert_eq!((counters.bytes, counters.drops, counters.errors), (4, 4, 1));
    }

    #[test]
    fn loopback_neither_drains_host_input_nor_counts_as_output() {
        let (mut serial, out, _irq) = console();
        serial.write(u64::from(MCR_REGISTER), &[MCR_LOOPBACK]);
        serial.queue_input(b"host");
        // The guest sees only its own looped-back byte, not the host's input.
        serial.write(0, b"x");
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(byte[0], b'x');
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(
            lsr[0] & 1,
            0,
            "host input must not reach a looped-back receiver"
        );
        assert_eq!(serial.pending_input(), 4);
        serial.flush_output().unwrap();
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(serial.bytes_out(), 0);
        // Leaving loopback hands the waiting input over, intact.
        serial.write(u64::from(MCR_REGISTER), &[0x0b]);
        let mut received = Vec::new();
        for _ in 0..4 {
            serial.read(0, &mut byte);
            received.push(byte[0]);
        }
        assert_eq!(received, b"host");
        assert_eq!(serial.bytes_in(), 4);
    }

    #[test]
    fn host_input_beyond_the_cap_is_dropped_and_counted() {
        let (mut serial, _out, _irq) = console();
        serial.queue_input(&vec![b'k'; MAX_PENDING_INPUT + 100]);
        // 64 bytes moved on into the FIFO at once.
        assert_eq!(serial.pending_input(), MAX_PENDING_INPUT - 64);
        assert_eq!(serial.counters().drops, 100);
        assert!(serial.wants_input());
    }
}
