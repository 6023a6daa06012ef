//! Virtio devices on the virtio-mmio transport.
//!
//! [`MmioTransport`] speaks the virtio-mmio register protocol (virtio 1.x, version 2) to the
//! guest driver and owns the virtqueues; a [`VirtioDevice`] (block, net) implements the
//! device-specific part. Both live on the VMM's single event-loop thread.
//!
//! Wiring in the VMM: route MMIO accesses in the device's window to
//! [`crate::BusDevice`]; register each of [`MmioTransport::queue_events`] as a KVM ioeventfd
//! at window base + 0x50 with datamatch = queue index and with the loop, calling
//! [`MmioTransport::handle_queue_event`] when one is readable; watch
//! [`MmioTransport::event_sources`] (READABLE | WRITABLE, edge-triggered) and call
//! [`MmioTransport::handle_event_source`]; the `irq_evt` given to [`MmioTransport::new`] is
//! the KVM irqfd of the device's interrupt line.

mod balloon;
// Every cast in block/ is bounded: virtio status constants (0-2) to u8, iovec and in-flight
// counts (at most the queue size, 256) to u32/c_int, data lengths built from u32 descriptor
// lengths, and ring slots that came from a usize.
#[allow(clippy::cast_possible_truncation)]
mod block;
mod mmio;
mod net;
mod rng;
mod tap;
mod timer;
mod vsock;

use std::os::unix::io::RawFd;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

pub use balloon::{Balloon, BalloonConfig, BalloonMetrics, BALLOON_STATS_TAGS};
pub use block::{Block, BlockEngine, BlockError, URING_IN_FLIGHT};
pub use mmio::{MmioTransport, QueueSnapshot, TransportSnapshot};
pub use net::{Net, NetError};
pub use rng::{Rng, RngConfig, RngMetrics, MAX_REQUEST_BYTES as RNG_MAX_REQUEST_BYTES};
pub use tap::{Tap, TapError};
pub use vsock::{
    Vsock, VsockCounters, VsockError, VsockMetrics, CONN_BUF_ALLOC as VSOCK_CONN_BUF_ALLOC,
    MAX_CONNECTIONS as VSOCK_MAX_CONNECTIONS, MAX_GUEST_CID as VSOCK_MAX_GUEST_CID,
    MIN_GUEST_CID as VSOCK_MIN_GUEST_CID, VIRTIO_ID_VSOCK,
};

/// Feature bit: the device complies with virtio 1.x (mandatory for this transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: the used/avail event index notification suppression scheme.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Feature bit: indirect descriptor tables (handled by `virtio-queue`).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Largest queue size the devices here offer.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Why a device refused to start when the driver set DRIVER_OK.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// A queue the device needs was not set up (or points outside guest memory).
    #[error("virtqueue {0} is not ready or not valid in guest memory")]
    QueueNotReady(usize),
}

/// What a device sees of the transport while it processes work: guest memory and the
/// virtqueues, which the transport owns (so it can answer queue registers and decide on
/// interrupts with `needs_notification`).
pub struct QueueContext<'a> {
    /// Guest memory the queues and buffers live in.
    pub mem: &'a GuestMemoryMmap,
    /// All virtqueues of the device, by index.
    pub queues: &'a mut [Queue],
}

/// What every device states the same way, answered by [`VirtioDevice`]'s provided methods:
/// its id, the features it offers, its queues (all of [`QUEUE_MAX_SIZE`]) and, for a device
/// whose config space never changes, the config space bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioCommon {
    pub device_type: u32,
    /// Must include `VIRTIO_F_VERSION_1`.
    pub avail_features: u64,
    pub queue_max_sizes: Vec<u16>,
    /// Read by the provided [`VirtioDevice::read_config`]; bytes past the end read 0.
    pub config: Vec<u8>,
}

impl VirtioCommon {
    /// A device with `queues` queues of [`QUEUE_MAX_SIZE`] and an empty config space.
    pub fn new(device_type: u32, avail_features: u64, queues: usize) -> Self {
        VirtioCommon {
            device_type,
            avail_features,
            queue_max_sizes: vec![QUEUE_MAX_SIZE; queues],
            config: Vec::new(),
        }
    }

    /// The same, with a fixed config space.
    pub fn with_config(self, config: &[u8]) -> Self {
        VirtioCommon {
            config: config.to_vec(),
            ..self
        }
    }
}

/// The device-specific half of a virtio device.
///
/// Every method that processes work returns `true` when it added used buffers to any queue:
/// the transport then asks each queue whether the driver wants an interrupt (EVENT_IDX).
/// `Send` so a device can be built on one thread and handed to the event-loop thread; it is
/// never shared.
pub trait VirtioDevice: Send {
    /// The id, features, queue sizes and fixed config space the provided methods answer from.
    fn common(&self) -> &VirtioCommon;
    /// Virtio device id (`VIRTIO_ID_BLOCK`, `VIRTIO_ID_NET`, ...).
    fn device_type(&self) -> u32 {
        self.common().device_type
    }
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.common().queue_max_sizes
    }
    /// How many queues (from index 0) the driver must set up for `acked_features`; all of
    /// them by default. A device whose queues depend on features (the balloon) says fewer.
    fn queues_needed(&self, _acked_features: u64) -> usize {
        self.queue_max_sizes().len()
    }
    /// Feature bits the device offers (must include `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64 {
        self.common().avail_features
    }
    /// Reads `data.len()` bytes of device config space at `offset`. Bytes past the end read 0.
    /// By default from [`VirtioCommon::config`]; a device whose config changes overrides it.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.common().config, offset, data);
    }
    /// Driver writes to config space; ignored by default (block and net have none writable).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::rl_warn!(
            "virtio: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }
    /// The driver set DRIVER_OK: start with the negotiated features and the given queues
    /// (which the transport has checked). Nothing to do by default.
    fn activate(
        &mut self,
        _acked_features: u64,
        _ctx: &mut QueueContext,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool;
    /// Host-side file descriptors the event loop watches for this device (edge-triggered).
    fn event_sources(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Event source `index` (from [`VirtioDevice::event_sources`]) became ready.
    fn process_event_source(&mut self, _index: usize, _ctx: &mut QueueContext) -> bool {
        false
    }
    /// The driver reset the device: drop all in-flight state and negotiated features.
    fn reset(&mut self);
    /// Finishes all work the host side has in flight (e.g. io_uring requests) so that the
    /// queues alone describe the device, before a snapshot. True if buffers were used.
    fn quiesce(&mut self, _ctx: &mut QueueContext) -> bool {
        false
    }
    /// The device's counters (requests, bytes, errors, drops), if it keeps any.
    fn counters(&self) -> Option<crate::DeviceCounters> {
        None
    }
}

/// The low 32 bits of `value` (feature words, split addresses).
#[allow(clippy::cast_possible_truncation)] // dropping the high half is the point
pub(crate) fn low_u32(value: u64) -> u32 {
    value as u32
}

/// Whether the `count`-th occurrence of a guest-triggerable problem should be logged: the
/// first few, then only at powers of two, so a hostile guest cannot flood the host's log.
pub(crate) fn log_allowed(count: u64) -> bool {
    count <= 4 || count.is_power_of_two()
}

/// Tests whether feature `bit` is set in `features`.
pub(crate) fn has_feature(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// Copies the bytes of `config` at `offset` into `data`; bytes past the end read as 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Pops the next available descriptor chain. `Err` means the driver published an impossible
/// avail index; the caller must stop processing the queue rather than spin on it.
fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
    let mut iter = queue.iter(mem)?;
    Ok(iter.next())
}

/// The next chain to process, or `None` when the queue is drained (or broken: logged, and the
/// queue is left alone until the next kick). When it looks empty, notifications are re-enabled
/// and the ring checked once more, closing the race with a driver that added buffers without
/// kicking because notifications were off. `what` names the queue in log lines.
pub(crate) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    what: &str,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    loop {
        match pop_chain(queue, mem) {
            Ok(Some(chain)) => return Some(chain),
            Ok(None) => match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    crate::rl_warn!("{what}: cannot enable notifications: {e}");
                    return None;
                }
            },
            Err(e) => {
                crate::rl_warn!("{what}: broken available ring, queue stopped: {e}");
                return None;
            }
        }
    }
}
