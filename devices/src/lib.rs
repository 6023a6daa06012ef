//! Volt's device models.
//!
//! Every device here is owned by the VMM's single-threaded event loop: no device is shared
//! across threads, so none of them needs a lock. vCPU threads never touch a device; they
//! forward their port-I/O and MMIO exits to the loop, which calls [`BusDevice::read`] /
//! [`BusDevice::write`] with the offset inside the device's window.

pub mod acpi_sleep;
pub mod counters;
pub mod i8042;
pub mod ratelimit;
pub mod serial;
pub mod state;
pub mod virtio;

pub use counters::DeviceCounters;

/// The `log` crate as the rate-limited logging macros name it (so callers need no `log`
/// dependency of their own).
#[doc(hidden)]
pub use log as __log;

/// A device that answers guest port-I/O or MMIO accesses inside its address window.
pub trait BusDevice {
    /// The guest reads `data.len()` bytes at `offset` from the start of the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the start of the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}
