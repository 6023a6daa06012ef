//! The 8250/16550A UART on COM1 (port 0x3f8) that carries the guest console.
//!
//! The register model comes from `vm-superio`; this wrapper adds what the VMM needs around it:
//! interrupts through an irqfd, host input that waits while the guest's 64-byte FIFO is full,
//! and output that is buffered and flushed once per event-loop iteration instead of once per
//! byte (the kernel writes its console a byte at a time).

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Raises a guest interrupt by writing to an eventfd that KVM routes to a GSI (an irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Console output that only reaches the real writer on [`ConsoleOutput::flush_buffered`].
pub struct ConsoleOutput {
    buffer: Vec<u8>,
    sink: Box<dyn Write + Send>,
}

impl ConsoleOutput {
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        ConsoleOutput {
            buffer: Vec::with_capacity(4096),
            sink,
        }
    }

    /// Writes out everything the guest produced since the last call.
    pub fn flush_buffered(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self
            .sink
            .write_all(&self.buffer)
            .and_then(|_| self.sink.flush());
        self.buffer.clear();
        result
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    /// Deliberately a no-op: vm-superio flushes after every byte.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Host input waiting for room in the guest FIFO is capped so a flood cannot grow without bound.
const MAX_PENDING_INPUT: usize = 1 << 20;

/// COM1: a 16550A with host input and buffered output.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
    pending_input: VecDeque<u8>,
    bytes_out: u64,
    /// MCR bit 4: output loops back into the receiver, so a data write changes the LSR.
    loopback: bool,
}

impl SerialConsole {
    pub fn new(irq: EventFd, output: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger(irq), ConsoleOutput::new(output)),
            pending_input: VecDeque::new(),
            bytes_out: 0,
            loopback: false,
        }
    }

    /// The line status register while reading it has no side effect and no posted data write
    /// can change it (not in loopback mode), else `None`. A vCPU may answer LSR reads with this
    /// value itself until the next access to the UART; Linux reads the LSR before every byte
    /// it writes to the console.
    pub fn stable_line_status(&mut self) -> Option<u8> {
        (!self.loopback).then(|| self.uart.read(LINE_STATUS_REGISTER as u8))
    }

    /// Whether more host input can be accepted; when false the caller stops reading its source.
    pub fn wants_input(&self) -> bool {
        self.pending_input.len() < MAX_PENDING_INPUT
    }

    /// Queues host input (keyboard, pipe) for the guest and moves what fits into the FIFO.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
        self.fill_fifo();
    }

    /// Writes buffered guest output to the host.
    pub fn flush_output(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush_buffered()
    }

    /// Number of bytes the guest has written to the console so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    fn fill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.drain(..room).collect();
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::warn!("serial: cannot pass input to the guest: {e:?}");
        }
    }
}

const DATA_REGISTER: u64 = 0;
/// Port offset of the line status register.
pub const LINE_STATUS_REGISTER: u64 = 5;
const MODEM_CONTROL_REGISTER: u64 = 4;
const MCR_LOOPBACK: u8 = 0x10;

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = self.uart.read(offset as u8);
        if offset == DATA_REGISTER {
            self.fill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let is_output = offset == DATA_REGISTER && self.uart.read(3) & 0x80 == 0;
        if offset == MODEM_CONTROL_REGISTER {
            self.loopback = value & MCR_LOOPBACK != 0;
        }
        if let Err(e) = self.uart.write(offset as u8, value) {
            log::warn!("serial: write to register {offset} failed: {e:?}");
        } else if is_output {
            self.bytes_out += 1;
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
}
