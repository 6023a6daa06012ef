//! Counters of the vsock device, shared with whoever reports them (tests, a metrics API).
//! Plain relaxed atomics: the event loop is the only writer, so no lock is ever taken.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by the device on the event loop.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub(super) host_connections: AtomicU64,
    pub(super) guest_connections: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) active: AtomicU64,
    pub(super) bytes_to_host: AtomicU64,
    pub(super) bytes_to_guest: AtomicU64,
    pub(super) rst_sent: AtomicU64,
    pub(super) rst_received: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) buffered_bytes: AtomicU64,
    pub(super) buffered_peak: AtomicU64,
}

/// A snapshot of [`VsockMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Streams a host client opened (`CONNECT` answered `OK`).
    pub host_connections: u64,
    /// Streams the guest opened to a host `PATH_<port>` listener.
    pub guest_connections: u64,
    /// Connection attempts refused: connection cap, no listener, bad `CONNECT` line.
    pub refused: u64,
    /// Streams open now (including host clients still in the handshake).
    pub active: u64,
    /// Payload bytes delivered to host sockets / to the guest.
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    /// RST packets sent to and received from the guest.
    pub rst_sent: u64,
    pub rst_received: u64,
    /// Malformed or refused guest packets and buffers, and control packets dropped.
    pub dropped: u64,
    /// Guest bytes waiting for slow host sockets now, and the most ever.
    pub buffered_bytes: u64,
    pub buffered_peak: u64,
}

impl std::fmt::Display for VsockCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} host-initiated and {} guest-initiated streams ({} refused, {} open), \
             {} bytes to the host, {} to the guest, {} RST sent, {} received, {} dropped, \
             at most {} bytes buffered",
            self.host_connections,
            self.guest_connections,
            self.refused,
            self.active,
            self.bytes_to_host,
            self.bytes_to_guest,
            self.rst_sent,
            self.rst_received,
            self.dropped,
            self.buffered_peak
        )
    }
}

impl VsockMetrics {
    pub fn snapshot(&self) -> VsockCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockCounters {
            host_connections: get(&self.host_connections),
            guest_connections: get(&self.guest_connections),
            refused: get(&self.refused),
            active: get(&self.active),
            bytes_to_host: get(&self.bytes_to_host),
            bytes_to_guest: get(&self.bytes_to_guest),
            rst_sent: get(&self.rst_sent),
            rst_received: get(&self.rst_received),
            dropped: get(&self.dropped),
            buffered_bytes: get(&self.buffered_bytes),
            buffered_peak: get(&self.buffered_peak),
        }
    }

    pub(super) fn set_buffered(&self, bytes: u64) {
        self.buffered_bytes.store(bytes, Ordering::Relaxed);
        self.buffered_peak.fetch_max(bytes, Ordering::Relaxed);
    }
}

pub(super) fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
