//! Per-device counters: what a device did and what it refused, readable by tests and by the
//! metrics the VMM exposes. Every device on the event loop keeps one [`DeviceCounters`]; the
//! device's docs say what each field counts for it. All counters only grow (wrapping is not a
//! concern at u64).

/// Requests, bytes, errors and drops of one device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Units of work the guest asked for (register accesses, frames, requests).
    pub requests: u64,
    /// Payload bytes moved for the guest.
    pub bytes: u64,
    /// Requests refused as malformed, or host I/O that failed.
    pub errors: u64,
    /// Data dropped because a bounded buffer was full or a request could not be served.
    pub drops: u64,
}

impl DeviceCounters {
    /// The counters as (name, value) pairs, in a fixed order, for metrics output.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("requests", self.requests),
            ("bytes", self.bytes),
            ("errors", self.errors),
            ("drops", self.drops),
        ]
    }
}
