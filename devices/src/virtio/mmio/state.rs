//! Save/restore of a virtio-mmio transport: its registers, negotiated features, pending
//! interrupt bits and every virtqueue (addresses, size, ready, next avail/used indices). The
//! device behind it is re-activated with the saved features, which also re-arms its host
//! back-end (e.g. the tap's offloads).

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_queue::{Queue, QueueState, QueueT};

use super::MmioTransport;
use crate::state::{Persist, StateError};
use crate::virtio::QueueContext;

/// One virtqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl MmioTransport {
    /// Lets the device finish what its host side has in flight (see
    /// [`crate::virtio::VirtioDevice::quiesce`]) and interrupts the guest for it: call before
    /// [`Persist::save`], with the vCPUs paused.
    pub fn quiesce(&mut self) {
        if !self.activated {
            return;
        }
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
        };
        if self.device.quiesce(&mut ctx) {
            self.signal_used_queues();
        }
    }
}

impl Persist for MmioTransport {
    type State = TransportSnapshot;

    fn save(&self) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|queue| {
                    let state = queue.state();
                    QueueSnapshot {
                        max_size: state.max_size,
                        size: state.size,
                        ready: state.ready,
                        desc_table: state.desc_table,
                        avail_ring: state.avail_ring,
                        used_ring: state.used_ring,
                        next_avail: state.next_avail,
                        next_used: state.next_used,
                        event_idx_enabled: state.event_idx_enabled,
                    }
                })
                .collect(),
        }
    }

    fn restore(&mut self, state: &TransportSnapshot) -> Result<(), StateError> {
        let refuse = |problem: String| StateError::new("virtio-mmio", problem);
        if state.device_type != self.device.device_type() {
            return Err(refuse(format!(
                "saved device type {} does not match device type {}",
                state.device_type,
                self.device.device_type()
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(refuse(format!(
                "{} saved queues for a device with {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        let unoffered = state.acked_features & !self.device.avail_features();
        if unoffered != 0 {
            return Err(refuse(format!(
                "acked features {unoffered:#x} that the device does not offer"
            )));
        }
        if state.activated && state.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return Err(refuse("activated without DRIVER_OK".to_string()));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, current)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != current.max_size() {
                return Err(refuse(format!(
                    "queue {index}: saved maximum size {} differs from {}",
                    saved.max_size,
                    current.max_size()
                )));
            }
            let queue = Queue::try_from(QueueState {
                max_size: saved.max_size,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: saved.event_idx_enabled,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            })
            .map_err(|e| refuse(format!("queue {index}: {e}")))?;
            if state.activated && !queue.is_valid(&self.mem) {
                return Err(refuse(format!(
                    "queue {index} is not valid in guest memory"
                )));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.activated = false;
        if state.activated {
            let mut ctx = QueueContext {
                mem: &self.mem,
                queues: &mut self.queues,
            };
            self.device
                .activate(self.acked_features, &mut ctx)
                .map_err(|e| refuse(format!("re-activating the device: {e}")))?;
            self.activated = true;
        }
        if self.interrupt_status != 0 {
            // The guest has not acknowledged this interrupt yet: raise it again.
            self.raise_interrupt(self.interrupt_status & VIRTIO_MMIO_INT_VRING);
        }
        Ok(())
    }
}
