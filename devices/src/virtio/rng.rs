//! virtio-rng, the entropy device (virtio 1.2 §5.4), served from the host's `getrandom(2)`.
//!
//! The guest posts device-writable buffers on its one queue; the device fills them with random
//! bytes. A token bucket (bytes per second, with a burst) bounds what the guest can take, so a
//! guest posting buffer after buffer cannot make the event loop spin on `getrandom`: once the
//! bucket is empty, requests wait in the ring and a timer wakes the device when enough tokens
//! have accumulated. Bytes are generated through a fixed 4 KiB scratch buffer and each request
//! is served at most [`MAX_REQUEST_BYTES`], so a guest asking for huge buffers costs no memory.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::timer::DeviceTimer;
use super::{
    log_allowed, next_chain, QueueContext, VirtioCommon, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// The most bytes one request gets, whatever its buffers' size (Linux asks for 64 at a time).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Random bytes are produced through a scratch buffer of this size.
const SCRATCH_BYTES: usize = 4096;
/// When the bucket is empty, the device waits until at least this many bytes are available
/// (or the whole burst, if that is smaller) before serving the next request.
const RESUME_BYTES: u64 = 512;

/// How fast the guest may draw entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngConfig {
    /// Sustained rate, bytes per second (at least 1).
    pub bytes_per_sec: u64,
    /// Bucket size: what an idle guest may take at once (at least 1).
    pub burst_bytes: u64,
}

impl Default for RngConfig {
    /// 1 MiB/s with a 64 KiB burst: far more than a guest's entropy pool needs (Linux reads 64
    /// bytes at boot and at each reseed), and a negligible load on the event loop.
    fn default() -> Self {
        RngConfig {
            bytes_per_sec: 1 << 20,
            burst_bytes: 64 << 10,
        }
    }
}

/// Counters of a virtio-rng device, shared (lock-free) with whoever wants to read them.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Requests completed (returned to the driver).
    pub requests: AtomicU64,
    /// Random bytes written into guest buffers.
    pub bytes: AtomicU64,
    /// Requests without a usable writable buffer, or where getrandom failed.
    pub errors: AtomicU64,
    /// Times the device stopped serving because the token bucket was empty.
    pub rate_limited: AtomicU64,
}

/// A token bucket of bytes.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(config: RngConfig) -> Self {
        let capacity = config.burst_bytes.max(1);
        TokenBucket {
            rate: config.bytes_per_sec.max(1),
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let earned = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        if earned == 0 {
            return;
        }
        // Advance `last` by exactly the time the earned tokens took, keeping the remainder.
        let spent_ns = earned * 1_000_000_000 / u128::from(self.rate);
        self.last += Duration::from_nanos(u64::try_from(spent_ns).unwrap_or(u64::MAX));
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
        if self.tokens == self.capacity {
            self.last = now;
        }
    }

    /// How long until `want` tokens (capped at the capacity) are available.
    fn wait_for(&self, want: u64) -> Duration {
        let missing = want.min(self.capacity).saturating_sub(self.tokens);
        let ns = u128::from(missing) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// A virtio-rng device.
pub struct Rng {
    /// No config space: virtio-rng has none.
    common: VirtioCommon,
    bucket: TokenBucket,
    timer: DeviceTimer,
    scratch: Vec<u8>,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    /// A device limited by `config`; creates its timer (a timerfd).
    pub fn new(config: RngConfig) -> io::Result<Rng> {
        Ok(Rng {
            common: VirtioCommon::new(
                VIRTIO_ID_RNG,
                VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC,
                1,
            ),
            bucket: TokenBucket::new(config),
            timer: DeviceTimer::new()?,
            scratch: vec![0; SCRATCH_BYTES],
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    /// The device's counters (the same object for the device's whole life).
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    fn count_error(&self, what: &str) {
        let errors = self.metrics.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if log_allowed(errors) {
            warn!("virtio-rng: {what} (error #{errors})");
        }
    }

    /// Serves requests until the ring is empty or the bucket is; arms the timer in the latter
    /// case. Returns whether any request completed.
    fn serve(&mut self, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(0) else {
            return false;
        };
        let mut used_any = false;
        loop {
            self.bucket.refill(Instant::now());
            if self.bucket.tokens == 0 {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                let delay = self.bucket.wait_for(RESUME_BYTES);
                if let Err(e) = self.timer.arm(delay) {
                    warn!("virtio-rng: cannot arm the rate-limit timer: {e}");
                }
                break;
            }
            let Some(chain) = next_chain(queue, mem, "virtio-rng") else {
                break;
            };
            let head = chain.head_index();
            let budget = self.bucket.tokens.min(MAX_REQUEST_BYTES);
            let written = self.fill(chain, mem, budget);
            self.bucket.tokens -= written;
            // `written` is at most MAX_REQUEST_BYTES, which fits u32.
            if let Err(e) = queue.add_used(mem, head, u32::try_from(written).unwrap_or(u32::MAX)) {
                warn!("virtio-rng: cannot add used buffer: {e}");
            }
            self.metrics.requests.fetch_add(1, Ordering::Relaxed);
            self.metrics.bytes.fetch_add(written, Ordering::Relaxed);
            used_any = true;
        }
        used_any
    }

    /// Writes up to `budget` random bytes into the chain's writable buffers; returns how many.
    fn fill(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        budget: u64,
    ) -> u64 {
        let mut written = 0u64;
        let mut saw_writable = false;
        for desc in chain {
            if !desc.is_write_only() {
                continue;
            }
            saw_writable = true;
            let mut offset = 0u64;
            let len = u64::from(desc.len());
            while offset < len && written < budget {
                let n = usize::try_from((len - offset).min(budget - written))
                    .unwrap_or(SCRATCH_BYTES)
                    .min(SCRATCH_BYTES);
                let buf = &mut self.scratch[..n];
                if let Err(e) = getrandom(buf) {
                    self.count_error(&format!("getrandom failed: {e}"));
                    return written;
                }
                let Some(addr) = desc.addr().0.checked_add(offset) else {
                    self.count_error("buffer address overflows");
                    return written;
                };
                if mem.write_slice(buf, GuestAddress(addr)).is_err() {
                    self.count_error("buffer outside guest memory");
                    return written;
                }
                offset += n as u64;
                written += n as u64;
            }
            if written >= budget {
                break;
            }
        }
        if !saw_writable {
            self.count_error("request without a device-writable buffer");
        }
        written
    }
}

/// Fills `buf` from the kernel's CSPRNG (never blocks once the host pool is initialised).
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        if index != 0 {
            return false;
        }
        // While the timer is armed the bucket is known to be empty: leave the requests queued
        // for the timer instead of spinning on kicks.
        if self.timer.is_armed() {
            return false;
        }
        self.serve(ctx)
    }

    fn event_sources(&self) -> Vec<RawFd> {
        vec![self.timer.raw_fd()]
    }

    fn process_event_source(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        if index != 0 || !self.timer.take_expiry() {
            return false;
        }
        self.serve(ctx)
    }

    fn reset(&mut self) {
        // The bucket is kept: resetting the device must not buy the guest fresh tokens.
        self.timer.disarm();
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        log::info!(
            "virtio-rng: {} requests, {} bytes, {} errors, rate-limited {} times",
            self.metrics.requests.load(Ordering::Relaxed),
            self.metrics.bytes.load(Ordering::Relaxed),
            self.metrics.errors.load(Ordering::Relaxed),
            self.metrics.rate_limited.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_the_burst() {
        let mut bucket = TokenBucket::new(RngConfig {
            bytes_per_sec: 1000,
            burst_bytes: 100,
        });
        assert_eq!(bucket.tokens, 100);
        bucket.tokens = 0;
        let start = bucket.last;
        bucket.refill(start + Duration::from_millis(50));
        assert_eq!(bucket.tokens, 50);
        // Fractions are kept: 2 x 0.5 ms earns one byte.
        bucket.tokens = 0;
        let t = bucket.last;
        bucket.refill(t + Duration::from_micros(500));
        bucket.refill(t + Duration::from_micros(1000));
        assert_eq!(bucket.tokens, 1);
        bucket.refill(t + Duration::from_secs(10));
        assert_eq!(bucket.tokens, 100);
        bucket.tokens = 10;
        assert_eq!(bucket.wait_for(60), Duration::from_millis(50));
        assert_eq!(bucket.wait_for(1000), Duration::from_millis(90));
        assert_eq!(bucket.wait_for(5), Duration::ZERO);
    }

    #[test]
    fn getrandom_fills_large_buffers() {
        let mut a = vec![0u8; 100_000];
        let mut b = vec![0u8; 100_000];
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(a[90_000..].iter().any(|&x| x != 0));
    }
}
