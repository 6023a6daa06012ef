//! virtio-net backed by a host tap interface.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};

use crate::{rl_debug, rl_warn, DeviceCounters};
use thiserror::Error;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::{
    has_feature, next_chain, ActivateError, QueueContext, VirtioCommon, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Largest frame with header: 64 KiB TSO payload + Ethernet/VLAN headers + virtio-net header.
const MAX_FRAME_LEN: usize = 65562;
/// Offset of `num_buffers` inside virtio_net_hdr_v1.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a virtio-net device could not be created.
#[derive(Debug, Error)]
pub enum NetError {
    /// The tap interface could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The MAC is a multicast address, which no NIC may use.
    #[error("invalid guest MAC {0}: multicast addresses cannot be assigned to a NIC")]
    MulticastMac(String),
    /// No randomness for a MAC address.
    #[error("cannot generate a random MAC address: {0}")]
    RandomMac(io::Error),
}

/// A virtio-net device.
///
/// Counters: `requests` are frames (TX chains and RX frames from the tap), `bytes` the bytes
/// of the frames delivered either way (virtio-net header included), `errors` malformed
/// chains and failed tap or ring operations, `drops` frames that were not delivered.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    common: VirtioCommon,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
    /// The tap refused a TX frame with EAGAIN; retry when it becomes writable.
    tx_blocked: bool,
    counters: DeviceCounters,
}

impl Net {
    /// Attaches to the existing tap `tap_name`; a random locally administered MAC is used
    /// when `mac` is `None`.
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        let mac = match mac {
            Some(mac) if mac[0] & 1 != 0 => return Err(NetError::MulticastMac(format_mac(&mac))),
            Some(mac) => mac,
            None => random_mac().map_err(NetError::RandomMac)?,
        };
        let tap = Tap::open(tap_name)?;
        Ok(Self::with_tap(tap, mac))
    }

    /// A device on an already open [`Tap`] (see [`Tap::from_file`] for a test backend).
    pub fn with_tap(tap: Tap, mac: [u8; 6]) -> Net {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        // The le16 status field: the low two bytes of the (small) constant.
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes()[..2]);
        let avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | [
                VIRTIO_NET_F_MAC,
                VIRTIO_NET_F_STATUS,
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
            ]
            .iter()
            .fold(0u64, |acc, bit| acc | (1u64 << bit));
        Net {
            tap,
            mac,
            common: VirtioCommon::new(VIRTIO_ID_NET, avail_features, 2).with_config(&config),
            rx_frame: vec![0; MAX_FRAME_LEN],
            tx_frame: vec![0; MAX_FRAME_LEN],
            tx_blocked: false,
            counters: DeviceCounters::default(),
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The name of the host tap interface.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Moves frames from the tap into guest RX buffers while the guest has buffers. With no
    /// buffers it stops reading, so frames wait in the tap's queue until the guest kicks RX.
    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = next_chain(queue, mem, "virtio-net RX") {
            let len = match self.tap.read(&mut self.rx_frame) {
                Ok(len) => len,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.counters.errors += 1;
                        rl_warn!("virtio-net: tap read failed: {e}");
                    }
                    // Give the buffer back; the next tap edge or RX kick resumes.
                    queue.go_to_previous_position();
                    break;
                }
            };
            let head = chain.head_index();
            self.counters.requests += 1;
            let used_len = self.deliver_rx_frame(len, Writer::new(mem, chain));
            if used_len == 0 {
                self.counters.drops += 1;
            } else {
                self.counters.bytes += u64::from(used_len);
            }
            if let Err(e) = queue.add_used(mem, head, used_len) {
                self.counters.errors += 1;
                rl_warn!("virtio-net: cannot add used RX buffer: {e}");
            }
            used_any = true;
        }
        used_any
    }

    /// Copies the frame in `rx_frame[..len]` into the guest buffer; returns the used length.
    fn deliver_rx_frame(&mut self, len: usize, writer: Result<Writer, virtio_queue::Error>) -> u32 {
        if len < VNET_HDR_LEN {
            rl_warn!("virtio-net: tap returned a {len}-byte frame without header; dropped");
            return 0;
        }
        // Without VIRTIO_NET_F_MRG_RXBUF a frame always takes exactly one buffer.
        self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&1u16.to_le_bytes());
        match writer {
            Ok(mut writer) if writer.available_bytes() >= len => {
                match writer.write_all(&self.rx_frame[..len]) {
                    // len <= MAX_FRAME_LEN (the size of rx_frame), far below u32::MAX.
                    Ok(()) => u32::try_from(len).unwrap_or(u32::MAX),
                    Err(e) => {
                        self.counters.errors += 1;
                        rl_warn!("virtio-net: cannot write RX frame to guest: {e}");
                        0
                    }
                }
            }
            Ok(writer) => {
                rl_warn!(
                    "virtio-net: guest RX buffer of {} bytes too small for a {len}-byte frame; frame dropped",
                    writer.available_bytes()
                );
                0
            }
            Err(e) => {
                self.counters.errors += 1;
                rl_warn!("virtio-net: unusable guest RX buffer: {e}");
                0
            }
        }
    }

    /// Sends every frame the guest queued for transmission to the tap.
    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = next_chain(queue, mem, "virtio-net TX") {
            let head = chain.head_index();
            self.counters.requests += 1;
            if let Some(len) = self.gather_tx_frame(Reader::new(mem, chain)) {
                match self.tap.write(&self.tx_frame[..len]) {
                    Ok(_) => self.counters.bytes += len as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Keep the frame in the ring and retry when the tap is writable.
                        queue.go_to_previous_position();
                        self.counters.requests -= 1; // counted again on the retry
                        self.tx_blocked = true;
                        return used_any;
                    }
                    Err(e) => {
                        self.counters.errors += 1;
                        self.counters.drops += 1;
                        rl_warn!("virtio-net: tap write failed, frame dropped: {e}");
                    }
                }
            } else {
                self.counters.drops += 1;
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                self.counters.errors += 1;
                rl_warn!("virtio-net: cannot add used TX buffer: {e}");
            }
            used_any = true;
        }
        self.tx_blocked = false;
        used_any
    }

    /// Gathers a TX chain into `tx_frame`; `None` (frame dropped) when it is malformed.
    fn gather_tx_frame(&mut self, reader: Result<Reader, virtio_queue::Error>) -> Option<usize> {
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                self.counters.errors += 1;
                rl_warn!("virtio-net: unusable guest TX buffer: {e}");
                return None;
            }
        };
        let len = reader.available_bytes();
        if !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len) {
            self.counters.errors += 1;
            rl_warn!("virtio-net: TX frame of {len} bytes (with header) dropped");
            return None;
        }
        if let Err(e) = reader.read_exact(&mut self.tx_frame[..len]) {
            self.counters.errors += 1;
            rl_warn!("virtio-net: cannot read TX frame from guest: {e}");
            return None;
        }
        Some(len)
    }

    fn offload_flags(acked_features: u64) -> libc::c_uint {
        let mut flags = 0;
        if has_feature(acked_features, VIRTIO_NET_F_GUEST_CSUM) {
            flags |= libc::TUN_F_CSUM;
            if has_feature(acked_features, VIRTIO_NET_F_GUEST_TSO4) {
                flags |= libc::TUN_F_TSO4;
            }
            if has_feature(acked_features, VIRTIO_NET_F_GUEST_TSO6) {
                flags |= libc::TUN_F_TSO6;
            }
        }
        flags
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn activate(
        &mut self,
        acked_features: u64,
        _ctx: &mut QueueContext,
    ) -> Result<(), ActivateError> {
        // The guest must be able to take whatever offloaded frames the tap hands over.
        let flags = Self::offload_flags(acked_features);
        if let Err(e) = self.tap.set_offload(flags) {
            rl_warn!(
                "virtio-net: TUNSETOFFLOAD {flags:#x} on {} failed, continuing without: {e}",
                self.tap.name()
            );
        }
        self.tx_blocked = false;
        Ok(())
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        match index {
            RX_QUEUE => self.process_rx(&mut ctx.queues[RX_QUEUE], mem),
            TX_QUEUE => self.process_tx(&mut ctx.queues[TX_QUEUE], mem),
            _ => false,
        }
    }

    fn event_sources(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    fn process_event_source(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        if index != 0 {
            return false;
        }
        let mem = ctx.mem;
        // Edge-triggered: we do not know whether it was readable or writable, so do both.
        let mut used_any = self.process_rx(&mut ctx.queues[RX_QUEUE], mem);
        if self.tx_blocked {
            used_any |= self.process_tx(&mut ctx.queues[TX_QUEUE], mem);
        }
        used_any
    }

    fn counters(&self) -> Option<DeviceCounters> {
        Some(self.counters)
    }

    fn reset(&mut self) {
        self.tx_blocked = false;
        if let Err(e) = self.tap.set_offload(0) {
            rl_debug!("virtio-net: clearing tap offloads failed: {e}");
        }
    }
}

/// A random unicast, locally administered MAC.
fn random_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_acked_guest_features() {
        assert_eq!(Net::offload_flags(0), 0);
        let tso_without_csum = 1u64 << VIRTIO_NET_F_GUEST_TSO4;
        assert_eq!(Net::offload_flags(tso_without_csum), 0);
        let all = (1u64 << VIRTIO_NET_F_GUEST_CSUM)
            | (1u64 << VIRTIO_NET_F_GUEST_TSO4)
            | (1u64 << VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(
            Net::offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }

    #[test]
    fn random_mac_is_local_unicast() {
        let mac = random_mac().unwrap();
        assert_eq!(mac[0] & 0x03, 0x02);
    }

    #[test]
    fn multicast_mac_is_rejected_before_touching_the_tap() {
        let err = Net::new("volt-none0", Some([0x01, 0, 0, 0, 0, 1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("multicast"), "{err}");
    }

    #[test]
    fn missing_tap_error_says_how_to_create_it() {
        let err = Net::new("voltmissing9", None).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("ip tuntap add dev voltmissing9 mode tap"),
            "{msg}"
        );
    }
}
