//! The VM's devices and where the guest finds them: port ranges, MMIO windows and IRQs.
//! `Devices` lives inside the event loop and routes each forwarded access to its device.

use std::os::fd::{AsRawFd, RawFd};

use devices::acpi_sleep::{AcpiSleep, SLEEP_PORT_BASE, SLEEP_PORT_COUNT};
use devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_COUNT};
use devices::serial::SerialConsole;
use devices::virtio::MmioTransport;
use devices::BusDevice;
use mio::Interest;

use crate::boot::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::boot::VirtioMmioDevice;
use crate::fast_path::LineStatusMirror;
use crate::vcpu::AddressSpace;

/// COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_COUNT: u16 = 8;
/// COM1's ISA IRQ.
pub const SERIAL_IRQ: u32 = 4;

/// Offset of the QueueNotify register, where the queue ioeventfds sit.
pub const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;
/// ISA IRQs free for virtio devices: not the serial (4), keyboard (1), RTC (8), PS/2 mouse
/// (12), nor the PIT/cascade (0, 2). The MP table routes exactly IRQs 0-15 to the I/O APIC.
pub const VIRTIO_IRQS: [u32; 9] = [5, 6, 7, 9, 10, 11, 13, 14, 15];

/// Where the `index`-th virtio device lives and which IRQ it raises, if one is left.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let irq = *VIRTIO_IRQS.get(index)?;
    Some((VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE, irq))
}

/// The kernel command-line entry that announces a virtio-mmio device to Linux.
pub fn virtio_cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Whether port `addr` belongs to COM1.
pub fn is_serial_port(addr: u64) -> bool {
    (u64::from(SERIAL_PORT_BASE)..u64::from(SERIAL_PORT_BASE + SERIAL_PORT_COUNT)).contains(&addr)
}

/// COM1's line status register.
pub const SERIAL_LSR_PORT: u64 = SERIAL_PORT_BASE as u64 + devices::serial::LINE_STATUS_REGISTER;

/// A virtio device in its MMIO window.
pub struct VirtioSlot {
    pub base: u64,
    pub irq: u32,
    pub transport: MmioTransport,
}

impl VirtioSlot {
    /// The slot as the ACPI DSDT describes it.
    pub fn acpi_device(&self) -> VirtioMmioDevice {
        VirtioMmioDevice {
            base: self.base,
            size: VIRTIO_MMIO_SIZE,
            irq: self.irq,
        }
    }
}

/// A file descriptor the loop watches for a device, and what to do when it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest kicked queue `queue` of virtio slot `slot` (its ioeventfd fired).
    QueueKick { slot: usize, queue: usize },
    /// Device-specific fd number `source` of slot `slot` (e.g. the tap) is ready.
    Source { slot: usize, source: usize },
}

pub struct Devices {
    pub serial: SerialConsole,
    pub i8042: I8042,
    pub virtio: Vec<VirtioSlot>,
    /// The ACPI sleep registers (the FADT points at them); None with `--acpi off`.
    pub acpi_sleep: Option<AcpiSleep>,
    events: Vec<DeviceEvent>,
    /// The UART's line status, published for the vCPU threads after every UART access.
    line_status: LineStatusMirror,
}

impl Devices {
    pub fn new(mut serial: SerialConsole, i8042: I8042, virtio: Vec<VirtioSlot>) -> Self {
        let line_status = LineStatusMirror::default();
        line_status.publish(serial.stable_line_status());
        let mut events = Vec::new();
        for (slot, device) in virtio.iter().enumerate() {
            let queues = device.transport.queue_events().len();
            events.extend((0..queues).map(|queue| DeviceEvent::QueueKick { slot, queue }));
            let sources = device.transport.event_sources().len();
            events.extend((0..sources).map(|source| DeviceEvent::Source { slot, source }));
        }
        Devices {
            serial,
            i8042,
            virtio,
            acpi_sleep: None,
            events,
            line_status,
        }
    }

    /// True once the guest wrote S5 to the ACPI sleep control register (`poweroff`).
    pub fn take_power_off(&mut self) -> bool {
        self.acpi_sleep
            .as_mut()
            .is_some_and(AcpiSleep::take_power_off)
    }

    /// The vCPU threads' view of the UART line status (see [`crate::fast_path`]).
    pub fn line_status_mirror(&self) -> LineStatusMirror {
        self.line_status.clone()
    }

    /// Host console input for the guest.
    pub fn queue_console_input(&mut self, bytes: &[u8]) {
        self.serial.queue_input(bytes);
        self.line_status.publish(self.serial.stable_line_status());
    }

    /// The fds the loop must watch for the devices; the position of each is the `index`
    /// later given to [`Devices::handle_event_source`].
    pub fn event_sources(&self) -> Vec<(RawFd, Interest)> {
        self.events
            .iter()
            .map(|event| match *event {
                DeviceEvent::QueueKick { slot, queue } => (
                    self.virtio[slot].transport.queue_events()[queue].as_raw_fd(),
                    Interest::READABLE,
                ),
                DeviceEvent::Source { slot, source } => (
                    self.virtio[slot].transport.event_sources()[source],
                    Interest::READABLE | Interest::WRITABLE,
                ),
            })
            .collect()
    }

    /// Called when the `index`-th fd of [`Devices::event_sources`] is ready; says what it was.
    pub fn handle_event_source(&mut self, index: usize) -> Option<DeviceEvent> {
        let event = self.events.get(index).copied();
        match event {
            Some(DeviceEvent::QueueKick { slot, queue }) => {
                self.virtio[slot].transport.handle_queue_event(queue)
            }
            Some(DeviceEvent::Source { slot, source }) => {
                self.virtio[slot].transport.handle_event_source(source)
            }
            None => log::warn!("event on unknown device source {index}"),
        }
        event
    }

    /// The device at `addr` and the offset into its window.
    fn device_at(&mut self, space: AddressSpace, addr: u64) -> Option<(&mut dyn BusDevice, u64)> {
        let within =
            |base: u16, count: u16| (u64::from(base)..u64::from(base + count)).contains(&addr);
        match space {
            AddressSpace::Pio if within(SERIAL_PORT_BASE, SERIAL_PORT_COUNT) => {
                Some((&mut self.serial, addr - u64::from(SERIAL_PORT_BASE)))
            }
            AddressSpace::Pio if within(I8042_PORT_BASE, I8042_PORT_COUNT) => {
                Some((&mut self.i8042, addr - u64::from(I8042_PORT_BASE)))
            }
            AddressSpace::Pio if within(SLEEP_PORT_BASE, SLEEP_PORT_COUNT) => {
                let device = self.acpi_sleep.as_mut()?;
                Some((device, addr - u64::from(SLEEP_PORT_BASE)))
            }
            AddressSpace::Pio => None,
            AddressSpace::Mmio => {
                let index = addr.checked_sub(VIRTIO_MMIO_BASE)? / VIRTIO_MMIO_SIZE;
                let slot = self.virtio.get_mut(usize::try_from(index).ok()?)?;
                let offset = addr - slot.base;
                Some((&mut slot.transport, offset))
            }
        }
    }

    /// Returns false when no device claims the address (the read then yields zeros).
    pub fn read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) -> bool {
        let claimed = match self.device_at(space, addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => false,
        };
        self.after_access(space, addr);
        claimed
    }

    /// Returns false when no device claims the address (the write is dropped).
    pub fn write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) -> bool {
        let claimed = match self.device_at(space, addr) {
            Some((device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        };
        self.after_access(space, addr);
        claimed
    }

    fn after_access(&mut self, space: AddressSpace, addr: u64) {
        if space == AddressSpace::Pio && is_serial_port(addr) {
            self.line_status.publish(self.serial.stable_line_status());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_avoid_the_serial_irq_and_stay_in_isa_range() {
        let mut bases = Vec::new();
        let mut index = 0;
        while let Some((base, irq)) = virtio_slot(index) {
            assert_ne!(irq, SERIAL_IRQ);
            assert!(
                (1..16).contains(&irq),
                "IRQ {irq} is outside the MP table's 16 entries"
            );
            bases.push(base);
            index += 1;
        }
        assert_eq!(index, VIRTIO_IRQS.len());
        assert!(bases.windows(2).all(|w| w[1] - w[0] == VIRTIO_MMIO_SIZE));
        assert_eq!(
            virtio_cmdline_entry(bases[1], 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
