//! Save/restore of the serial console: the UART registers and FIFO, and host input waiting.

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::{ConsoleOutput, IrqTrigger, SerialConsole, MAX_PENDING_INPUT};
use crate::state::{Persist, StateError};

/// The UART's registers (vm-superio's `SerialState`) plus the console's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet (the FIFO).
    pub fifo: Vec<u8>,
    pub pending_input: Vec<u8>,
    pub bytes_out: u64,
    pub loopback: bool,
}

impl Persist for SerialConsole {
    type State = SerialSnapshot;

    fn save(&self) -> SerialSnapshot {
        let uart = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: uart.baud_divisor_low,
            baud_divisor_high: uart.baud_divisor_high,
            interrupt_enable: uart.interrupt_enable,
            interrupt_identification: uart.interrupt_identification,
            line_control: uart.line_control,
            line_status: uart.line_status,
            modem_control: uart.modem_control,
            modem_status: uart.modem_status,
            scratch: uart.scratch,
            fifo: uart.in_buffer,
            pending_input: self.pending_input.iter().copied().collect(),
            bytes_out: self.bytes_out(),
            loopback: self.loopback,
        }
    }

    fn restore(&mut self, state: &SerialSnapshot) -> Result<(), StateError> {
        let refuse = |problem: String| StateError::new("serial", problem);
        if state.pending_input.len() > MAX_PENDING_INPUT {
            return Err(refuse(format!(
                "{} bytes of pending input (at most {MAX_PENDING_INPUT})",
                state.pending_input.len()
            )));
        }
        let registers = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.fifo.clone(),
        };
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| refuse(format!("cannot clone the interrupt eventfd: {e}")))?;
        let placeholder_irq = irq
            .try_clone()
            .map_err(|e| refuse(format!("cannot clone the interrupt eventfd: {e}")))?;
        // The UART is rebuilt around the same interrupt and console output.
        let placeholder = Serial::new(
            IrqTrigger(placeholder_irq),
            ConsoleOutput::new(Box::new(std::io::sink())),
        );
        let old = std::mem::replace(&mut self.uart, placeholder);
        let mut output = old.into_writer();
        output.bytes = state.bytes_out;
        self.uart = Serial::from_state(&registers, IrqTrigger(irq), NoEvents, output)
            .map_err(|e| refuse(format!("invalid UART state: {e:?}")))?;
        self.pending_input = state.pending_input.iter().copied().collect();
        self.loopback = state.loopback;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn registers_fifo_and_counters_survive_a_round_trip() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq.try_clone().unwrap(), Box::new(std::io::sink()));
        serial.write(3, &[0x83]); // DLAB on
        serial.write(0, &[0x0c]); // divisor 12
        serial.write(3, &[0x03]); // 8N1
        serial.write(7, &[0x5a]); // scratch
        serial.write(0, b"x");
        serial.queue_input(&[b'a'; 100]); // 64 in the FIFO, 36 waiting
        let saved = serial.save();
        assert_eq!(saved.scratch, 0x5a);
        assert_eq!(saved.fifo.len() + saved.pending_input.len(), 100);

        let mut restored = SerialConsole::new(irq, Box::new(std::io::sink()));
        restored.restore(&saved).unwrap();
        assert_eq!(restored.save(), saved);
        let mut scratch = [0u8];
        restored.read(7, &mut scratch);
        assert_eq!(scratch[0], 0x5a);
        assert_eq!(restored.bytes_out(), 1);

        let mut bad = saved.clone();
        bad.fifo = vec![0; 1000];
        assert!(restored.restore(&bad).is_err());
    }
}
