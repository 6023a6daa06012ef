//! virtio-rng through the virtio-mmio transport, driven like a guest driver would, no KVM.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::{Rng, RngConfig, RngMetrics, RNG_MAX_REQUEST_BYTES};
use vm_memory::{Bytes, GuestAddress};

const VIRTIO_ID_RNG: u32 = 4;
const BUF: u64 = DATA_START;

fn rng_driver(config: RngConfig) -> (Driver, std::sync::Arc<RngMetrics>) {
    let rng = Rng::new(config).unwrap();
    let metrics = rng.metrics();
    let mut driver = Driver::new(Box::new(rng));
    driver.init(F_VERSION_1 | F_EVENT_IDX, 1, 64);
    (driver, metrics)
}

fn read_guest(driver: &Driver, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    driver.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

#[test]
fn identifies_as_an_entropy_device_with_one_queue() {
    let mut driver = Driver::new(Box::new(Rng::new(RngConfig::default()).unwrap()));
    assert_eq!(driver.read32(REG_DEVICE_ID), VIRTIO_ID_RNG);
    assert_ne!(driver.device_features() & F_VERSION_1, 0);
    driver.write32(REG_QUEUE_SEL, 0);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 256);
    driver.write32(REG_QUEUE_SEL, 1);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 0, "only one queue");
    assert_eq!(driver.read_config(0, 4), vec![0; 4], "no config space");
    assert_eq!(driver.transport.event_sources().len(), 1, "the rate timer");
}

#[test]
fn reads_fill_exactly_the_buffers_with_differing_random_bytes() {
    let (mut driver, metrics) = rng_driver(RngConfig::default());
    driver
        .mem
        .write_slice(&[0x5a; 0x3000], GuestAddress(BUF))
        .unwrap();
    let first = driver.add_chain(0, &[Buf::w(BUF, 64)]);
    // Two descriptors in one request: 100 + 28 bytes.
    let second = driver.add_chain(0, &[Buf::w(BUF + 0x1000, 100), Buf::w(BUF + 0x2000, 28)]);
    driver.kick(0);
    assert!(driver.take_irq());
    assert_eq!(driver.pop_used(0), Some((u32::from(first), 64)));
    assert_eq!(driver.pop_used(0), Some((u32::from(second), 128)));

    let a = read_guest(&driver, BUF, 64);
    let b = read_guest(&driver, BUF + 0x1000, 64);
    assert_ne!(a, b, "two reads gave the same bytes");
    assert!(
        a.iter().filter(|&&x| x == 0x5a).count() < 8,
        "buffer not filled: {a:?}"
    );
    // Nothing is written past the buffers.
    assert_eq!(read_guest(&driver, BUF + 64, 16), vec![0x5a; 16]);
    assert_eq!(read_guest(&driver, BUF + 0x1000 + 100, 16), vec![0x5a; 16]);
    assert_eq!(read_guest(&driver, BUF + 0x2000 + 28, 16), vec![0x5a; 16]);
    assert_ne!(read_guest(&driver, BUF + 0x2000, 28), vec![0x5a; 28]);

    assert_eq!(metrics.requests.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.bytes.load(Ordering::Relaxed), 192);
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 0);
}

#[test]
fn a_huge_request_gets_at_most_the_per_request_cap() {
    let (mut driver, metrics) = rng_driver(RngConfig {
        bytes_per_sec: 1 << 30,
        burst_bytes: 1 << 30,
    });
    let head = driver.add_chain(0, &[Buf::w(BUF, 8 << 20)]);
    driver.kick(0);
    let cap = RNG_MAX_REQUEST_BYTES as u32;
    assert_eq!(driver.pop_used(0), Some((u32::from(head), cap)));
    assert_eq!(metrics.bytes.load(Ordering::Relaxed), u64::from(cap));
}

#[test]
fn requests_without_writable_buffers_or_outside_memory_are_errors() {
    let (mut driver, metrics) = rng_driver(RngConfig::default());
    let readable = driver.add_chain(0, &[Buf::r(BUF, 64)]);
    let outside = driver.add_chain(0, &[Buf::w(MEM_SIZE as u64 - 16, 64)]);
    driver.kick(0);
    assert_eq!(driver.pop_used(0), Some((u32::from(readable), 0)));
    // The part inside guest memory may be filled; nothing beyond it.
    let (id, len) = driver.pop_used(0).unwrap();
    assert_eq!(id, u32::from(outside));
    assert!(
        len < 64,
        "wrote {len} bytes into a buffer that leaves guest memory"
    );
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 2);
}

#[test]
fn the_rate_limit_holds_and_deferred_requests_complete_on_the_timer() {
    let rate = 4096u64;
    let burst = 8192u64;
    let (mut driver, metrics) = rng_driver(RngConfig {
        bytes_per_sec: rate,
        burst_bytes: burst,
    });
    let mut heads = Vec::new();
    for i in 0..4u64 {
        heads.push(driver.add_chain(0, &[Buf::w(BUF + i * 0x1000, 4096)]));
    }
    let start = Instant::now();
    driver.kick(0);
    // Kicking again while the bucket is empty must not serve more than the bucket allows.
    for _ in 0..100 {
        driver.kick(0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let served = metrics.bytes.load(Ordering::Relaxed);
    let allowed = burst + (rate as f64 * elapsed).ceil() as u64;
    assert!(served >= burst, "the burst is available at once: {served}");
    assert!(
        served <= allowed,
        "{served} bytes served in {elapsed:.3} s; the bucket allows {allowed}"
    );
    assert!(metrics.rate_limited.load(Ordering::Relaxed) >= 1);
    let done_early = driver.queues[0].pending_used(&driver.mem);
    assert!(done_early < 4, "all four requests done at once: no limit");

    // The timer brings the rest, within what the rate allows.
    let timer = driver.transport.event_sources()[0];
    let mut completed = 0usize;
    while driver.pop_used(0).is_some() {
        completed += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while completed < 4 && Instant::now() < deadline {
        if wait_readable(timer, Duration::from_secs(5)) {
            driver.transport.handle_event_source(0);
        }
        while driver.pop_used(0).is_some() {
            completed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let served = metrics.bytes.load(Ordering::Relaxed);
    assert!(
        served <= burst + (rate as f64 * elapsed).ceil() as u64,
        "{served} bytes in {elapsed:.3} s"
    );
    // Partial fills are allowed (the used length says how much); every request returns.
    assert!(completed >= 4, "only {completed} of 4 requests completed");
}

#[test]
fn reset_keeps_the_bucket_empty() {
    let (mut driver, metrics) = rng_driver(RngConfig {
        bytes_per_sec: 1,
        burst_bytes: 1024,
    });
    driver.add_chain(0, &[Buf::w(BUF, 4096)]);
    driver.kick(0);
    assert_eq!(metrics.bytes.load(Ordering::Relaxed), 1024);
    // A reset and re-initialisation does not refill the bucket.
    driver.init(F_VERSION_1, 1, 64);
    driver.add_chain(0, &[Buf::w(BUF, 4096)]);
    driver.kick(0);
    assert!(metrics.bytes.load(Ordering::Relaxed) <= 1026);
}
