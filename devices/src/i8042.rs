//! The i8042 keyboard controller, reduced to what a Linux guest needs from it:
//! - command 0xFE on port 0x64 resets the CPU, which is how a guest booted with `reboot=k`
//!   reboots or powers off: the VMM then ends the VM;
//! - the controller answers Linux's probe (read/write the control register, self-test,
//!   interface test) at once. The minimal model in `vm-superio` answers nothing, so Linux
//!   waits 0.5 s for the control register and gives up ("Can't read CTR") on every boot.
//!
//! There is no keyboard behind it and it raises no interrupt: Linux drives the probe by polling
//! the status register, and `i8042.dumbkbd` (Volt's default command line) keeps the keyboard
//! driver from sending commands that would need IRQ 1.
//!
//! Bytes for the guest wait in a fixed 16-byte buffer, as in real controllers (which hold a
//! single byte) and in Firecracker: a guest that keeps sending commands without reading the
//! answers cannot make the VMM grow. What does not fit is dropped and counted.

use vmm_sys_util::eventfd::EventFd;

use crate::{rl_debug, BusDevice, DeviceCounters};

// Save and restore for snapshots.
mod state;
pub use state::I8042Snapshot;

/// Port 0x60 is offset 0 of the device window, port 0x64 (command/status) offset 4.
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_COUNT: u16 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// "System flag": set once the controller passed its self-test.
const STATUS_SYSTEM: u8 = 0x04;
/// Keyboard not inhibited (clear means "keylock active", which Linux warns about).
const STATUS_UNLOCKED: u8 = 0x10;

/// Controller commands Linux sends during its probe, and the reset.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

/// Control register bits for the keyboard/aux "disabled" flags.
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
/// What a freshly reset controller reports: keyboard interrupt and translation on, system flag.
const CTR_DEFAULT: u8 = 0x45;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// A keyboard acknowledges every command byte.
const KBD_ACK: u8 = 0xfa;

/// Ctrl, Alt, Del pressed and released, in scan code set 1 (the controller translates).
const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// Control register bit: raise IRQ 1 when keyboard data is waiting.
const CTR_KBD_INT: u8 = 0x01;

/// Bytes the controller holds for the guest to read from port 0x60.
pub const OUTPUT_BUFFER_SIZE: usize = 16;

/// A fixed ring of [`OUTPUT_BUFFER_SIZE`] bytes.
#[derive(Debug, Default)]
struct OutputBuffer {
    bytes: [u8; OUTPUT_BUFFER_SIZE],
    head: usize,
    len: usize,
}

impl OutputBuffer {
    /// Appends `byte`; `false` (and nothing stored) when the buffer is full.
    fn push(&mut self, byte: u8) -> bool {
        if self.len == OUTPUT_BUFFER_SIZE {
            return false;
        }
        self.bytes[(self.head + self.len) % OUTPUT_BUFFER_SIZE] = byte;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.bytes[self.head];
        self.head = (self.head + 1) % OUTPUT_BUFFER_SIZE;
        self.len -= 1;
        Some(byte)
    }
}

/// The controller. Counters: `requests` are guest port accesses, `bytes` bytes the guest read
/// from the output buffer, `errors` unknown commands, `drops` answers lost to a full buffer.
pub struct I8042 {
    reset_evt: EventFd,
    control: u8,
    /// A command that takes its argument from the next data-port write.
    pending: Option<u8>,
    output: OutputBuffer,
    counters: DeviceCounters,
    /// IRQ 1, for key presses the VMM injects.
    keyboard_irq: Option<EventFd>,
    /// How many of the bytes at the end of `output` are key presses (each gets an IRQ).
    key_bytes: usize,
}

impl I8042 {
    /// `reset_evt` is signalled when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            reset_evt,
            control: CTR_DEFAULT,
            pending: None,
            output: OutputBuffer::default(),
            counters: DeviceCounters::default(),
            keyboard_irq: None,
            key_bytes: 0,
        }
    }

    /// Key presses injected with [`I8042::send_ctrl_alt_del`] raise this interrupt (IRQ 1).
    pub fn set_keyboard_irq(&mut self, irq: EventFd) {
        self.keyboard_irq = Some(irq);
    }

    /// Presses and releases Ctrl-Alt-Del on the keyboard, as Firecracker's `SendCtrlAltDel`:
    /// Linux then signals init, which reboots (or powers off) the guest. Nothing is queued
    /// when the output buffer has no room for the whole sequence.
    pub fn send_ctrl_alt_del(&mut self) {
        if self.output.len + CTRL_ALT_DEL.len() > OUTPUT_BUFFER_SIZE {
            self.counters.drops += 1;
            return;
        }
        for byte in CTRL_ALT_DEL {
            self.output.push(byte);
        }
        self.key_bytes += CTRL_ALT_DEL.len();
        self.keyboard_interrupt();
    }

    fn keyboard_interrupt(&self) {
        if let (Some(irq), true) = (&self.keyboard_irq, self.control & CTR_KBD_INT != 0) {
            if let Err(e) = irq.write(1) {
                rl_debug!("i8042: cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    /// Bytes waiting for the guest to read (at most [`OUTPUT_BUFFER_SIZE`]).
    pub fn output_len(&self) -> usize {
        self.output.len
    }

    /// Requests, bytes, errors and drops (see the type's docs).
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Queues a byte for the guest, dropping (and counting) it when the buffer is full.
    fn respond(&mut self, byte: u8) {
        if !self.output.push(byte) {
            self.counters.drops += 1;
            rl_debug!("i8042: output buffer full, byte {byte:#x} dropped");
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.len == 0 {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        STATUS_SYSTEM | STATUS_UNLOCKED | full
    }

    fn command(&mut self, command: u8) {
        match command {
            CMD_READ_CTR => self.respond(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(command),
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CTR_AUX_DISABLED,
            CMD_DISABLE_KBD => self.control |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CTR_KBD_DISABLED,
            CMD_SELF_TEST => self.respond(SELF_TEST_PASSED),
            CMD_TEST_KBD | CMD_TEST_AUX => self.respond(INTERFACE_TEST_PASSED),
            CMD_RESET_CPU => self.reset(),
            other => {
                self.counters.errors += 1;
                rl_debug!("i8042: ignoring controller command {other:#x}");
            }
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            // Output port bit 0 low holds the CPU in reset: another way to reboot.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => self.reset(),
            Some(_) => {}
            // A byte for the keyboard: there is none, but acknowledge like one.
            None => self.respond(KBD_ACK),
        }
    }

    fn reset(&mut self) {
        if let Err(e) = self.reset_evt.write(1) {
            crate::rl_error!("i8042: cannot signal the reset: {e}");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        self.counters.requests += 1;
        *first = match offset {
            DATA_OFFSET => {
                let byte = match self.output.pop() {
                    Some(byte) => {
                        self.counters.bytes += 1;
                        byte
                    }
                    None => 0,
                };
                self.key_bytes = self.key_bytes.min(self.output.len);
                if self.key_bytes > 0 {
                    // One interrupt per key byte, as a real keyboard controller.
                    self.keyboard_interrupt();
                }
                byte
            }
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        self.counters.requests += 1;
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    fn read(i8042: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0u8];
        i8042.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn reset_command_signals_the_event() {
        let (mut i8042, evt) = controller();
        i8042.write(DATA_OFFSET, &[CMD_RESET_CPU]); // data port: a keyboard byte, not a reset
        assert!(evt.read().is_err(), "a data-port write must not reset");
        i8042.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn ctrl_alt_del_is_queued_as_scan_codes_with_an_interrupt_per_byte() {
        let (mut i8042, _reset) = controller();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        i8042.set_keyboard_irq(irq.try_clone().unwrap());
        i8042.send_ctrl_alt_del();
        assert_eq!(irq.read().unwrap(), 1);
        let mut bytes = Vec::new();
        while read(&mut i8042, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0 {
            bytes.push(read(&mut i8042, DATA_OFFSET));
        }
        assert_eq!(bytes, CTRL_ALT_DEL);
        assert_eq!(
            irq.read().unwrap(),
            7,
            "one more interrupt for each byte left"
        );
        for _ in 0..10 {
            i8042.send_ctrl_alt_del();
        }
        assert!(i8042.output_len() <= OUTPUT_BUFFER_SIZE);
        assert_eq!(
            i8042.output_len() % CTRL_ALT_DEL.len(),
            0,
            "whole sequences only"
        );
    }

    #[test]
    fn output_port_with_reset_line_low_resets() {
        let (mut i8042, evt) = controller();
        i8042.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        i8042.write(DATA_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn answers_the_linux_probe_sequence() {
        let (mut i8042, evt) = controller();
        // Nothing to read: output-full is clear, system flag and keyboard-unlocked set.
        assert_eq!(
            read(&mut i8042, COMMAND_OFFSET),
            STATUS_SYSTEM | STATUS_UNLOCKED
        );
        i8042.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(
            read(&mut i8042, COMMAND_OFFSET) & STATUS_OUTPUT_FULL,
            STATUS_OUTPUT_FULL
        );
        assert_eq!(read(&mut i8042, DATA_OFFSET), CTR_DEFAULT);
        assert_eq!(read(&mut i8042, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);

        i8042.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        i8042.write(DATA_OFFSET, &[0x47]);
        i8042.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        i8042.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut i8042, DATA_OFFSET), 0x47 | CTR_KBD_DISABLED);

        i8042.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut i8042, DATA_OFFSET), SELF_TEST_PASSED);
        i8042.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut i8042, DATA_OFFSET), INTERFACE_TEST_PASSED);
        i8042.write(DATA_OFFSET, &[0xf4]); // keyboard "enable scanning"
        assert_eq!(read(&mut i8042, DATA_OFFSET), KBD_ACK);
        assert!(evt.read().is_err(), "the probe must not reset the machine");
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_output_buffer() {
        let (mut i8042, evt) = controller();
        let commands = [CMD_READ_CTR, CMD_SELF_TEST, CMD_TEST_KBD, CMD_TEST_AUX];
        for i in 0..1_000_000usize {
            // Keyboard bytes on the data port (each answered with an ACK) and answered
            // controller commands, never reading port 0x60.
            i8042.write(DATA_OFFSET, &[0xf4]);
            i8042.write(COMMAND_OFFSET, &[commands[i % commands.len()]]);
            assert!(i8042.output_len() <= OUTPUT_BUFFER_SIZE);
        }
        let counters = i8042.counters();
        assert_eq!(counters.requests, 2_000_000);
        assert_eq!(counters.drops, 2_000_000 - OUTPUT_BUFFER_SIZE as u64);
        // The oldest answers are kept, in order: ACK, CTR, ACK, self-test...
        assert_eq!(read(&mut i8042, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut i8042, DATA_OFFSET), CTR_DEFAULT);
        assert_eq!(read(&mut i8042, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut i8042, DATA_OFFSET), SELF_TEST_PASSED);
        for _ in 4..OUTPUT_BUFFER_SIZE {
            read(&mut i8042, DATA_OFFSET);
        }
        assert_eq!(read(&mut i8042, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(i8042.counters().bytes, OUTPUT_BUFFER_SIZE as u64);
        // Room again: answers are queued once more.
        i8042.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut i8042, DATA_OFFSET), SELF_TEST_PASSED);
        assert!(evt.read().is_err());
    }
}
