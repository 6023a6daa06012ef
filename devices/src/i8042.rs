//! The i8042 keyboard controller, kept for one job: command 0xFE on port 0x64 resets the CPU,
//! which is how a Linux guest booted with `reboot=k` reboots or powers off. The VMM ends the VM.

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::serial::IrqTrigger;
use crate::BusDevice;

/// Port 0x60 is offset 0 of the device window, port 0x64 (command/status) offset 4.
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_COUNT: u16 = 5;

pub struct I8042 {
    device: I8042Device<IrqTrigger>,
}

impl I8042 {
    /// `reset_evt` is signalled when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            device: I8042Device::new(IrqTrigger(reset_evt)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.device.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if let Err(e) = self.device.write(offset as u8, value) {
            log::error!("i8042: cannot signal the reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(evt.try_clone().unwrap());
        i8042.write(0, &[0xFE]); // data port: ignored
        assert!(evt.read().is_err(), "a data-port write must not reset");
        i8042.write(4, &[0xFE]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
