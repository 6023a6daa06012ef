//! The virtio-mmio transport, modern register layout (virtio 1.x, version 2).

use std::io;
use std::os::unix::io::RawFd;

use crate::{rl_debug, rl_warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateError, QueueContext, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::{BusDevice, DeviceCounters};

// Save and restore for snapshots.
mod state;
pub use state::{QueueSnapshot, TransportSnapshot};

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver; Linux ignores it, 0 claims no particular vendor.
const VENDOR_ID: u32 = 0;

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq_evt: EventFd,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
    counters: DeviceCounters,
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is written whenever the device interrupts the guest.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq_evt: EventFd,
    ) -> io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            let queue = Queue::new(max).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid queue size {max}: {e}"),
                )
            })?;
            queues.push(queue);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            irq_evt,
            queue_evts,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
            counters: DeviceCounters::default(),
        })
    }

    /// One notification EventFd per queue (register each as an ioeventfd at window base +
    /// 0x50 with datamatch = queue index, and with the event loop).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Queue `queue_index` was notified: clears its EventFd and processes the queue.
    pub fn handle_queue_event(&mut self, queue_index: usize) {
        let Some(evt) = self.queue_evts.get(queue_index) else {
            rl_warn!("virtio-mmio: event for nonexistent queue {queue_index}");
            return;
        };
        // EAGAIN just means the loop called us without a pending kick; process anyway.
        let _ = evt.read();
        if !self.activated {
            self.counters.drops += 1;
            rl_debug!("virtio-mmio: queue {queue_index} notified before DRIVER_OK");
            return;
        }
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
        };
        if self.device.process_queue(queue_index, &mut ctx) {
            self.signal_used_queues();
        }
    }

    /// Device-specific file descriptors (the tap for net) the loop must watch.
    pub fn event_sources(&self) -> Vec<RawFd> {
        self.device.event_sources()
    }

    /// Device-specific event source `index` became ready.
    pub fn handle_event_source(&mut self, index: usize) {
        if !self.activated {
            return;
        }
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
        };
        if self.device.process_event_source(index, &mut ctx) {
            self.signal_used_queues();
        }
    }

    /// The virtio device id of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The transport's counters: `requests` are register and config-space accesses, `bytes`
    /// the bytes they moved, `errors` accesses refused (bad size or alignment, unknown
    /// registers, steps outside the virtio state machine, invalid queue settings, failed
    /// activations), `drops` queue notifications ignored because the device was not started.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// The wrapped device's own counters, if it keeps any.
    pub fn device_counters(&self) -> Option<DeviceCounters> {
        self.device.counters()
    }

    /// Device status register as the driver last set it (plus NEEDS_RESET on failure).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Raises a used-buffer interrupt if any queue's driver asked for one.
    fn signal_used_queues(&mut self) {
        let mut notify = false;
        for queue in &mut self.queues {
            // needs_notification also resets the queue's "added since last check" count, so
            // it must run on every queue.
            match queue.needs_notification(&self.mem) {
                Ok(needed) => notify |= needed,
                Err(e) => {
                    self.counters.errors += 1;
                    rl_warn!("virtio-mmio: cannot read used_event: {e}");
                    notify = true;
                }
            }
        }
        if notify {
            self.raise_interrupt(VIRTIO_MMIO_INT_VRING);
        }
    }

    fn raise_interrupt(&mut self, cause: u32) {
        self.interrupt_status |= cause;
        if let Err(e) = self.irq_evt.write(1) {
            self.counters.errors += 1;
            rl_warn!("virtio-mmio: cannot signal interrupt: {e}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue configuration is only allowed between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.activated = false;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // The driver may only add bits, one step at a time (virtio 1.x §3.1.1).
        if value & self.status != self.status {
            self.counters.errors += 1;
            rl_warn!(
                "virtio-mmio: driver cleared status bits {:#x} -> {value:#x}",
                self.status
            );
            return;
        }
        let new_bits = value & !self.status;
        let mut status = self.status;
        if new_bits & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if new_bits & VIRTIO_CONFIG_S_DRIVER != 0 && status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_DRIVER;
        }
        if new_bits & VIRTIO_CONFIG_S_FEATURES_OK != 0 && status & VIRTIO_CONFIG_S_DRIVER != 0 {
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                // Leaving FEATURES_OK clear tells the driver the feature set was refused.
                self.counters.errors += 1;
                rl_warn!(
                    "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; refusing FEATURES_OK"
                );
            } else {
                status |= VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new_bits & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            status |= VIRTIO_CONFIG_S_DRIVER_OK;
            self.status = status;
            self.activate();
            return;
        }
        self.status = status;
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for queue in &mut self.queues {
            queue.set_event_idx(event_idx);
        }
        // Check every queue the device needs here, once, for all devices.
        let needed = self.device.queues_needed(self.acked_features);
        let not_ready = self
            .queues
            .iter()
            .take(needed)
            .position(|queue| !queue.is_valid(&self.mem));
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
        };
        let result = match not_ready {
            Some(index) => Err(ActivateError::QueueNotReady(index)),
            None => self.device.activate(self.acked_features, &mut ctx),
        };
        match result {
            Ok(()) => {
                self.activated = true;
                // Host-side events (frames already waiting on the tap) were ignored before
                // activation and their edge is gone: look once now.
                for index in 0..self.device.event_sources().len() {
                    self.handle_event_source(index);
                }
            }
            Err(e) => {
                self.counters.errors += 1;
                rl_warn!("virtio-mmio: device activation failed: {e}");
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.raise_interrupt(VIRTIO_MMIO_INT_CONFIG);
            }
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => super::low_u32(self.device.avail_features()),
                1 => super::low_u32(self.device.avail_features() >> 32),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: length all-ones means "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => {
                self.counters.errors += 1;
                rl_debug!("virtio-mmio: read of unknown/write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            _ => {
                self.counters.errors += 1;
                rl_debug!("virtio-mmio: write of unknown/read-only register {offset:#x}");
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let driver_stage = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        if !driver_stage {
            self.counters.errors += 1;
            rl_warn!("virtio-mmio: driver features written outside feature negotiation");
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                self.counters.errors += 1;
                rl_debug!("virtio-mmio: driver features select {sel} ignored");
                return;
            }
        };
        let offered = self.device.avail_features();
        let mask = 0xffff_ffffu64 << shift;
        let requested = u64::from(value) << shift;
        if requested & !offered != 0 {
            self.counters.errors += 1;
            rl_warn!(
                "virtio-mmio: driver acked unoffered features {:#x}; ignoring them",
                requested & !offered
            );
        }
        self.acked_features = (self.acked_features & !mask) | (requested & offered);
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        if !self.queue_config_allowed() {
            self.counters.errors += 1;
            rl_warn!("virtio-mmio: queue register {offset:#x} written outside queue setup");
            return;
        }
        let Some(queue) = self.selected_queue() else {
            self.counters.errors += 1;
            rl_warn!("virtio-mmio: queue register {offset:#x} written for nonexistent queue");
            return;
        };
        let mut invalid = false;
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => {
                let size = u16::try_from(value);
                if let Err(e) = size
                    .map_err(|e| e.to_string())
                    .and_then(|size| queue.try_set_size(size).map_err(|e| e.to_string()))
                {
                    invalid = true;
                    rl_warn!("virtio-mmio: invalid queue size {value}: {e}");
                }
            }
            VIRTIO_MMIO_QUEUE_READY => queue.set_ready(value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => queue.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => queue.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => queue.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => unreachable!("only queue registers are dispatched here"),
        }
        if invalid {
            self.counters.errors += 1;
        }
    }

    /// QueueNotify without an ioeventfd: signal the same EventFd the ioeventfd would.
    fn notify(&mut self, value: u32) {
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    self.counters.errors += 1;
                    rl_warn!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => {
                self.counters.errors += 1;
                rl_warn!("virtio-mmio: notify for nonexistent queue {value}");
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.requests += 1;
        self.counters.bytes += data.len() as u64;
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            self.counters.errors += 1;
            rl_warn!(
                "virtio-mmio: {}-byte register read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        // Below VIRTIO_MMIO_CONFIG (checked above), so it fits.
        let value = self.read_register(u32::try_from(offset).unwrap_or(u32::MAX));
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.requests += 1;
        self.counters.bytes += data.len() as u64;
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.counters.errors += 1;
            rl_warn!(
                "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            self.counters.errors += 1;
            rl_warn!("virtio-mmio: unaligned register write at {offset:#x} ignored");
            return;
        }
        // Below VIRTIO_MMIO_CONFIG (checked above), so it fits.
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}
