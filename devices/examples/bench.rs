//! Device-model benchmark: virtio-block and virtio-net request latency and throughput through
//! the virtio-mmio transport, with a driver-side queue in guest memory (no KVM, no guest).
//!
//! Run: `cargo run --release -p devices --example bench`
//!
//! What a number includes: writing the descriptors, the QueueNotify register write, the
//! event-loop handler (`handle_queue_event`, and for io_uring the completion eventfd), the
//! device's syscalls (preadv/pwritev or io_uring_enter on a
//! page-cached temp file; read/write on a tap), the used ring and the irq EventFd. It does
//! not include VM exits or a guest kernel.
// Test code: small test values and guest addresses cast on purpose (issue 12 lints).
#![allow(clippy::cast_possible_truncation)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::{Block, BlockEngine, Net};
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: u64 = 256 << 20;
const BLOCK_SIZE: u32 = 4096;
const BLOCK_OPS: usize = 40_000;
const NET_OPS: usize = 20_000;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            samples: Vec::new(),
        }
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.samples.sort_unstable();
        let index = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[index]
    }
}

/// Cheap xorshift so the access pattern does not depend on a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    println!("volt device-model bench (release build recommended)");
    bench_block();
    bench_net();
}

fn bench_block() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..DISK_SIZE / chunk.len() as u64 {
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    for engine in [BlockEngine::Sync, BlockEngine::Uring] {
        for (name, request_type) in [("randread", T_IN), ("randwrite", T_OUT)] {
            for depth in [1usize, 32] {
                let block = match Block::with_engine(file.path(), false, engine) {
                    Ok(block) => block,
                    Err(e) => {
                        println!("SKIP: block {engine} engine: {e}");
                        return;
                    }
                };
                let mut driver = Driver::new(Box::new(block));
                driver.init(F_VERSION_1 | F_EVENT_IDX, 1, 256);
                run_block(&mut driver, engine, name, request_type, depth);
            }
        }
    }
}

/// Submits batches of `depth` 4 KiB requests at random aligned offsets, one kick per batch;
/// a request's latency is from its submission to its completion being visible.
fn run_block(
    driver: &mut Driver,
    engine: BlockEngine,
    name: &str,
    request_type: u32,
    depth: usize,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let blocks = DISK_SIZE / u64::from(BLOCK_SIZE);
    let mut latency = Stats::new();
    let start = Instant::now();
    let mut done = 0;
    while done < BLOCK_OPS {
        let submitted = Instant::now();
        for slot in 0..depth as u64 {
            let hdr = DATA_START + slot * 32;
            let status = DATA_START + 0x1000 + slot;
            let data = DATA_START + 0x10000 + slot * u64::from(BLOCK_SIZE);
            let sector = (rng.next() % blocks) * u64::from(BLOCK_SIZE / 512);
            driver
                .mem
                .write_obj(request_type, GuestAddress(hdr))
                .unwrap();
            driver.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            let data_buf = if request_type == T_IN {
                Buf::w(data, BLOCK_SIZE)
            } else {
                Buf::r(data, BLOCK_SIZE)
            };
            driver.add_chain(0, &[Buf::r(hdr, 16), data_buf, Buf::w(status, 1)]);
        }
        driver.queues[0].arm_used_event(&driver.mem);
        driver.kick(0);
        // io_uring completes asynchronously: wait_used serves its completion eventfd.
        for _ in 0..depth {
            driver.wait_used(0).expect("request completed");
            latency.samples.push(submitted.elapsed());
        }
        assert!(driver.take_irq(), "completion interrupt");
        done += depth;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mib = (done as f64 * f64::from(BLOCK_SIZE)) / (1 << 20) as f64;
    println!(
        "block {engine:<5} {name:<9} 4KiB qd{depth:<2}: p50 {:>7.2} us  p99 {:>7.2} us  {:>9.0} IOPS  {:>8.1} MiB/s",
        latency.percentile(0.50).as_secs_f64() * 1e6,
        latency.percentile(0.99).as_secs_f64() * 1e6,
        done as f64 / elapsed,
        mib / elapsed
    );
}

fn bench_net() {
    let name = TestTap::unique_name("bench");
    let tap = match TestTap::create(&name) {
        Ok(tap) => tap,
        Err(e) => {
            println!("SKIP: net bench: cannot create tap {name}: {e}");
            return;
        }
    };
    // The release profile aborts on panic, which would leak the tap: report errors instead.
    if let Err(e) = run_net(&tap) {
        println!("net bench failed: {e}");
    }
}

fn run_net(tap: &TestTap) -> Result<(), String> {
    let host = PacketSocket::bind(tap.ifindex).map_err(|e| format!("packet socket: {e}"))?;
    let mac = [0x02, 0, 0, 0, 0, 0x42];
    let net = Net::new(&tap.name, Some(mac)).map_err(|e| e.to_string())?;
    let mut driver = Driver::new(Box::new(net));
    driver.init(F_VERSION_1 | F_EVENT_IDX | (1 << 5), 2, 256);

    for size in [64usize, 1500] {
        net_tx(&mut driver, &host, mac, size)?;
    }
    for size in [64usize, 1500] {
        net_rx(&mut driver, &host, size)?;
    }
    Ok(())
}

/// Guest TX: latency from the kick to the frame arriving on the host side of the tap, and
/// throughput with 64-frame batches per kick (measured at the device).
fn net_tx(
    driver: &mut Driver,
    host: &PacketSocket,
    mac: [u8; 6],
    size: usize,
) -> Result<(), String> {
    let tx_buf = DATA_START + 0x20_0000;
    // Frames from an earlier run would fill the socket buffer and get ours dropped.
    host.drain();
    let mut latency = Stats::new();
    for seq in 0..NET_OPS / 10 {
        let mut bytes = vec![0u8; 12];
        let payload = format!("volt-bench-tx-{seq:08}");
        let mut frame = test_frame(mac, payload.as_bytes());
        frame.resize(size.max(frame.len()), 0);
        bytes.extend_from_slice(&frame);
        let addr = tx_buf + (seq as u64 % 256) * 0x1_0000;
        driver.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        let start = Instant::now();
        driver.add_chain(1, &[Buf::r(addr, bytes.len() as u32)]);
        driver.kick(1);
        host.recv_matching(Duration::from_secs(1), |f| {
            f.len() > 40 && f[14..].starts_with(payload.as_bytes())
        })
        .ok_or_else(|| format!("TX frame {seq} did not reach the host"))?;
        latency.samples.push(start.elapsed());
        while driver.pop_used(1).is_some() {}
        driver.take_irq();
    }

    let mut frame = test_frame(mac, b"volt-bench-tx-bulk");
    frame.resize(size.max(frame.len()), 0);
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(&frame);
    for slot in 0..64u64 {
        let addr = tx_buf + slot * 0x1_0000;
        driver.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    }
    let start = Instant::now();
    let mut sent = 0;
    while sent < NET_OPS {
        for slot in 0..64u64 {
            driver.add_chain(1, &[Buf::r(tx_buf + slot * 0x1_0000, bytes.len() as u32)]);
        }
        driver.kick(1);
        while driver.pop_used(1).is_some() {
            sent += 1;
        }
        driver.take_irq();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "net   tx {size:>4}B frames : p50 {:>7.2} us  p99 {:>7.2} us (kick -> host socket)  {:>9.0} pkt/s  {:>8.1} MiB/s",
        latency.percentile(0.50).as_secs_f64() * 1e6,
        latency.percentile(0.99).as_secs_f64() * 1e6,
        sent as f64 / elapsed,
        sent as f64 * size as f64 / elapsed / (1 << 20) as f64
    );
    Ok(())
}

/// Guest RX: latency from the host sending a frame to it being in a guest buffer (tap
/// readable -> handle_event_source), and throughput with 64-frame bursts.
fn net_rx(driver: &mut Driver, host: &PacketSocket, size: usize) -> Result<(), String> {
    let rx_buf = DATA_START;
    let mut posted = 0u64;
    let mut post = |driver: &mut Driver, count: u64| {
        for _ in 0..count {
            let addr = rx_buf + (posted % 256) * 2048;
            driver.add_chain(0, &[Buf::w(addr, 2048)]);
            posted += 1;
        }
    };
    post(driver, 128);
    driver.kick(0);
    let tap_fd = driver.transport.event_sources()[0];
    host.drain();

    let mut latency = Stats::new();
    for seq in 0..NET_OPS / 10 {
        let mut frame = test_frame([0x02, 0, 0, 0, 0, 0x43], format!("rx{seq}").as_bytes());
        frame.resize(size.max(frame.len()), 0);
        let start = Instant::now();
        host.send(&frame).map_err(|e| format!("host send: {e}"))?;
        let mut received = 0;
        while received == 0 {
            if start.elapsed() > Duration::from_secs(2) {
                return Err(format!("RX frame {seq} never reached the guest"));
            }
            wait_readable(tap_fd, Duration::from_secs(1));
            driver.transport.handle_event_source(0);
            while driver.pop_used(0).is_some() {
                received += 1;
            }
        }
        latency.samples.push(start.elapsed());
        driver.take_irq();
        post(driver, received);
    }

    let frame = {
        let mut f = test_frame([0x02, 0, 0, 0, 0, 0x43], b"rx-bulk");
        f.resize(size.max(f.len()), 0);
        f
    };
    let start = Instant::now();
    let mut received = 0;
    while received < NET_OPS {
        for _ in 0..64 {
            host.send(&frame).map_err(|e| format!("host send: {e}"))?;
        }
        let mut batch = 0;
        let deadline = Instant::now() + Duration::from_secs(1);
        while batch < 64 && Instant::now() < deadline {
            wait_readable(tap_fd, Duration::from_millis(10));
            driver.transport.handle_event_source(0);
            while driver.pop_used(0).is_some() {
                batch += 1;
            }
        }
        driver.take_irq();
        post(driver, batch as u64);
        driver.kick(0);
        received += batch;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "net   rx {size:>4}B frames : p50 {:>7.2} us  p99 {:>7.2} us (host send -> guest buffer)  {:>9.0} pkt/s  {:>8.1} MiB/s",
        latency.percentile(0.50).as_secs_f64() * 1e6,
        latency.percentile(0.99).as_secs_f64() * 1e6,
        received as f64 / elapsed,
        received as f64 * size as f64 / elapsed / (1 << 20) as f64
    );
    Ok(())
}
