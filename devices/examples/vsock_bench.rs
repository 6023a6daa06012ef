//! virtio-vsock device-model benchmark: latency and throughput of one stream between a driver
//! in guest memory and a host Unix socket, through the virtio-mmio transport (no KVM, no
//! guest kernel).
//!
//! Run: `cargo run --release -p devices --example vsock_bench`
//!
//! Guest -> host: RW packets on TX, a kick, the device's write to the host socket, the host's
//! read. Host -> guest: the host's write, the device's epoll set becoming readable, the event
//! handler reading the socket into a guest RX buffer.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::Vsock;
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;
const RX_BUF_LEN: u32 = 4096 + 44;
const RX_BUFS: u64 = 128;
const TX_AREA: u64 = DATA_START + 0x40_0000;
const LAT_OPS: usize = 20_000;
const BULK_BYTES: usize = 256 << 20;

fn header(op: u16, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(44);
    b.extend_from_slice(&CID.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&GUEST_PORT.to_le_bytes());
    b.extend_from_slice(&HOST_PORT.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // stream
    b.extend_from_slice(&op.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // A guest that never runs short of receive buffer for the length of the run.
    b.extend_from_slice(&(1u32 << 30).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

struct Bench {
    d: Driver,
    epoll_fd: i32,
    rx_next: u64,
}

impl Bench {
    fn rx_addr(slot: u64) -> u64 {
        DATA_START + (slot % 256) * 0x2000
    }

    fn post_rx(&mut self, n: u64) {
        for _ in 0..n {
            let addr = Self::rx_addr(self.rx_next);
            self.d.add_chain(0, &[Buf::w(addr, RX_BUF_LEN)]);
            self.rx_next += 1;
        }
        self.d.kick(0);
    }

    /// Payload bytes in RW packets completed on RX (buffers are reposted).
    fn take_rx(&mut self) -> usize {
        let mut bytes = 0;
        let mut used = 0;
        while let Some((_, len)) = self.d.pop_used(0) {
            used += 1;
            bytes += (len as usize).saturating_sub(44);
        }
        if used > 0 {
            self.post_rx(used);
        }
        bytes
    }

    fn send(&mut self, slot: u64, op: u16, payload_len: u32) {
        let addr = TX_AREA + slot * 0x2_0000;
        self.d
            .mem
            .write_slice(&header(op, payload_len), GuestAddress(addr))
            .unwrap();
        let mut bufs = vec![Buf::r(addr, 44)];
        if payload_len > 0 {
            bufs.push(Buf::r(addr + 0x1000, payload_len));
        }
        self.d.add_chain(1, &bufs);
    }

    fn host_event(&mut self) {
        wait_readable(self.epoll_fd, Duration::from_millis(100));
        self.d.transport.handle_event_source(0);
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    // p is in [0, 1]: the index is within the slice.
    #[allow(clippy::cast_possible_truncation)]
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e6
}

fn main() {
    println!("volt vsock device-model bench (release build recommended)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).unwrap();
    let vsock = Vsock::new(CID, &path).unwrap();
    let metrics = vsock.metrics();
    let mut d = Driver::new(Box::new(vsock));
    d.init(F_VERSION_1 | F_EVENT_IDX, 3, 256);
    let epoll_fd = d.transport.event_sources()[0];
    let mut b = Bench {
        d,
        epoll_fd,
        rx_next: 0,
    };
    b.post_rx(RX_BUFS);
    b.send(0, 1, 0); // REQUEST
    b.d.kick(1);
    let (mut host, _) = listener.accept().unwrap();
    b.take_rx();

    // Guest -> host, 64-byte packets: kick to host read.
    let payload = [0x42u8; 64];
    b.d.mem
        .write_slice(&payload, GuestAddress(TX_AREA + 0x1000))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut samples = Vec::with_capacity(LAT_OPS);
    for _ in 0..LAT_OPS {
        let start = Instant::now();
        b.send(0, 5, 64);
        b.d.kick(1);
        host.read_exact(&mut buf[..64]).unwrap();
        samples.push(start.elapsed());
        while b.d.pop_used(1).is_some() {}
        b.take_rx(); // credit updates
    }
    println!(
        "vsock guest->host 64 B : p50 {:>6.2} us  p99 {:>6.2} us (kick -> host socket read)",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );

    // Host -> guest, 64-byte writes: host write to the packet in a guest buffer.
    samples.clear();
    for _ in 0..LAT_OPS {
        let start = Instant::now();
        host.write_all(&payload).unwrap();
        let mut got = 0;
        while got < 64 {
            b.host_event();
            got += b.take_rx();
        }
        samples.push(start.elapsed());
    }
    println!(
        "vsock host->guest 64 B : p50 {:>6.2} us  p99 {:>6.2} us (host write -> guest RX buffer)",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );

    // Guest -> host bulk: two 64 KiB packets per kick, within the device's credit.
    const CHUNK: u32 = 64 << 10;
    let chunk = vec![0x5au8; CHUNK as usize];
    for slot in 0..2 {
        b.d.mem
            .write_slice(&chunk, GuestAddress(TX_AREA + slot * 0x2_0000 + 0x1000))
            .unwrap();
    }
    host.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut moved = 0usize;
    while moved < BULK_BYTES {
        b.send(0, 5, CHUNK);
        b.send(1, 5, CHUNK);
        b.d.kick(1);
        let mut got = 0;
        while got < 2 * chunk.len() {
            match host.read(&mut buf) {
                Ok(n) => got += n,
                Err(_) => b.host_event(),
            }
        }
        while b.d.pop_used(1).is_some() {}
        b.take_rx();
        moved += got;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "vsock guest->host bulk : {:>8.1} MiB/s (64 KiB packets)",
        moved as f64 / secs / (1 << 20) as f64
    );
    host.set_nonblocking(false).unwrap();

    // Host -> guest bulk: a writer thread, the device fills 4 KiB guest buffers.
    let mut writer = host.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let data = vec![0x77u8; 256 << 10];
        let mut left = BULK_BYTES;
        while left > 0 {
            let n = left.min(data.len());
            writer.write_all(&data[..n]).unwrap();
            left -= n;
        }
    });
    let start = Instant::now();
    let mut got = 0;
    while got < BULK_BYTES {
        b.host_event();
        got += b.take_rx();
    }
    let secs = start.elapsed().as_secs_f64();
    feeder.join().unwrap();
    println!(
        "vsock host->guest bulk : {:>8.1} MiB/s (4 KiB guest buffers)",
        got as f64 / secs / (1 << 20) as f64
    );
    let c = metrics.snapshot();
    println!(
        "counters: to_host {} B, to_guest {} B, peak buffered {} B, dropped {}",
        c.bytes_to_host, c.bytes_to_guest, c.buffered_peak, c.dropped
    );
    drop(host);
}
