//! The VM's devices and where the guest finds them: port ranges, MMIO windows and IRQs.
//! `Devices` lives inside the event loop and routes each forwarded access to its device.

use std::os::fd::RawFd;

use devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_COUNT};
use devices::serial::SerialConsole;
use devices::BusDevice;

use crate::vcpu::AddressSpace;

/// COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_COUNT: u16 = 8;
/// COM1's ISA IRQ.
pub const SERIAL_IRQ: u32 = 4;

pub struct Devices {
    pub serial: SerialConsole,
    pub i8042: I8042,
}

impl Devices {
    pub fn new(serial: SerialConsole, i8042: I8042) -> Self {
        Devices { serial, i8042 }
    }

    /// File descriptors (other than the vCPU channel, stdin and reset) the loop must watch.
    pub fn event_sources(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Called when the `index`-th fd of [`Devices::event_sources`] is ready.
    pub fn handle_event_source(&mut self, index: usize) {
        log::warn!("event on unknown device source {index}");
    }

    /// The device at `addr` and the offset into its window.
    fn device_at(&mut self, space: AddressSpace, addr: u64) -> Option<(&mut dyn BusDevice, u64)> {
        let within = |base: u16, count: u16| (u64::from(base)..u64::from(base + count)).contains(&addr);
        match space {
            AddressSpace::Pio if within(SERIAL_PORT_BASE, SERIAL_PORT_COUNT) => {
                Some((&mut self.serial, addr - u64::from(SERIAL_PORT_BASE)))
            }
            AddressSpace::Pio if within(I8042_PORT_BASE, I8042_PORT_COUNT) => {
                Some((&mut self.i8042, addr - u64::from(I8042_PORT_BASE)))
            }
            _ => None,
        }
    }

    /// Returns false when no device claims the address (the read then yields zeros).
    pub fn read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) -> bool {
        match self.device_at(space, addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Returns false when no device claims the address (the write is dropped).
    pub fn write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) -> bool {
        match self.device_at(space, addr) {
            Some((device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}
