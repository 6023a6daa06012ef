//! virtio-vsock through the virtio-mmio transport, with real virtqueues in guest memory and
//! real host Unix sockets in a temporary directory. The test plays the guest driver; packet
//! headers are encoded here independently of the device's own code.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use devices::virtio::{
    Vsock, VsockCounters, VsockMetrics, VIRTIO_ID_VSOCK, VSOCK_CONN_BUF_ALLOC,
    VSOCK_MAX_CONNECTIONS,
};
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 42;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const HDR: usize = 44;
const RX_BUF_LEN: u32 = 4096 + HDR as u32;
const RX_SLOTS: u64 = 128;
const RX_AREA: u64 = DATA_START;
const TX_AREA: u64 = DATA_START + 0x40_0000;
const TX_SLOT: u64 = 0x2_0000;
const GUEST_BUF_ALLOC: u32 = 64 << 10;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;

/// A virtio_vsock_hdr plus its payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

impl Pkt {
    /// A stream packet from the guest port `src` to host port `dst`.
    fn guest(op: u16, src: u32, dst: u32) -> Pkt {
        Pkt {
            src_cid: CID,
            dst_cid: 2,
            src_port: src,
            dst_port: dst,
            type_: 1,
            op,
            buf_alloc: GUEST_BUF_ALLOC,
            ..Pkt::default()
        }
    }

    fn with_data(mut self, data: &[u8]) -> Pkt {
        self.len = data.len() as u32;
        self.data = data.to_vec();
        self
    }

    fn header(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HDR);
        b.extend_from_slice(&self.src_cid.to_le_bytes());
        b.extend_from_slice(&self.dst_cid.to_le_bytes());
        b.extend_from_slice(&self.src_port.to_le_bytes());
        b.extend_from_slice(&self.dst_port.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.type_.to_le_bytes());
        b.extend_from_slice(&self.op.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.buf_alloc.to_le_bytes());
        b.extend_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Pkt {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        Pkt {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
            data: b[HDR..].to_vec(),
        }
    }
}

/// The test's guest: a driver with vsock's three queues, RX buffers it keeps posted, and the
/// host socket directory.
struct Guest {
    d: Driver,
    metrics: Arc<VsockMetrics>,
    dir: tempfile::TempDir,
    path: PathBuf,
    rx_free: Vec<u64>,
    rx_posted: HashMap<u32, u64>,
    tx_next: u64,
}

impl Guest {
    fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let vsock = Vsock::new(CID, &path).unwrap();
        assert_eq!(vsock.cid(), CID);
        let metrics = vsock.metrics();
        let mut d = Driver::new(Box::new(vsock));
        assert_eq!(d.read32(REG_DEVICE_ID), VIRTIO_ID_VSOCK);
        d.init(F_VERSION_1 | F_EVENT_IDX, 3, 256);
        for q in 0..3 {
            d.queues[q].arm_used_event(&d.mem);
        }
        let rx_free = (0..RX_SLOTS)
            .map(|i| RX_AREA + i * u64::from(RX_BUF_LEN).next_multiple_of(0x1000))
            .collect();
        Guest {
            d,
            metrics,
            dir,
            path,
            rx_free,
            rx_posted: HashMap::new(),
            tx_next: 0,
        }
    }

    fn counters(&self) -> VsockCounters {
        self.metrics.snapshot()
    }

    /// Posts `n` RX buffers (one descriptor each) and kicks RX.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.rx_free.pop().expect("a free RX slot");
            let head = self.d.add_chain(RX, &[Buf::w(addr, RX_BUF_LEN)]);
            self.rx_posted.insert(u32::from(head), addr);
        }
        self.d.kick(RX);
    }

    /// Every packet the device completed on RX, in order.
    fn recv(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        while let Some((id, len)) = self.d.pop_used(RX) {
            let addr = self.rx_posted.remove(&id).expect("used id was posted");
            self.rx_free.push(addr);
            assert!(
                len as usize >= HDR,
                "RX used length {len} shorter than a header"
            );
            let mut bytes = vec![0u8; len as usize];
            self.d
                .mem
                .read_slice(&mut bytes, GuestAddress(addr))
                .unwrap();
            let pkt = Pkt::parse(&bytes);
            assert_eq!(pkt.len as usize, pkt.data.len(), "{pkt:?}");
            assert_eq!(pkt.dst_cid, CID, "{pkt:?}");
            out.push(pkt);
        }
        out
    }

    fn next_tx_addr(&mut self) -> u64 {
        let addr = TX_AREA + (self.tx_next % 16) * TX_SLOT;
        self.tx_next += 1;
        addr
    }

    /// Queues `pkt` on TX as header + payload descriptors and kicks.
    fn send(&mut self, pkt: &Pkt) {
        let addr = self.next_tx_addr();
        let hdr = pkt.header();
        self.d.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
        let mut bufs = vec![Buf::r(addr, HDR as u32)];
        if !pkt.data.is_empty() {
            self.d
                .mem
                .write_slice(&pkt.data, GuestAddress(addr + 0x1000))
                .unwrap();
            bufs.push(Buf::r(addr + 0x1000, pkt.data.len() as u32));
        }
        self.send_raw(&bufs);
    }

    /// Queues an arbitrary TX chain, kicks, and checks the device returned it.
    fn send_raw(&mut self, bufs: &[Buf]) {
        let head = self.d.add_chain(TX, bufs);
        self.d.kick(TX);
        assert_eq!(
            self.d.pop_used(TX),
            Some((u32::from(head), 0)),
            "TX chain returned"
        );
    }

    /// What the event loop does when the device's epoll fd is readable.
    fn host_event(&mut self) {
        let fd = self.d.transport.event_sources()[0];
        wait_readable(fd, Duration::from_millis(500));
        self.d.transport.handle_event_source(0);
    }

    /// Handles host events until an RX packet matching `want` arrives (or gives up).
    fn wait_for(&mut self, what: &str, want: impl Fn(&Pkt) -> bool) -> Pkt {
        for _ in 0..20 {
            if let Some(pkt) = self.recv().into_iter().find(&want) {
                return pkt;
            }
            self.host_event();
        }
        panic!("no {what} packet arrived");
    }

    fn port_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.path.display()))
    }
}

fn host_client(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// The device closed `stream` without sending anything (closing a Unix socket with unread
/// bytes in it resets the peer: that counts as closed too).
fn assert_closed(stream: &mut UnixStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A host client connects with `CONNECT port`; the guest accepts. Returns the client and
/// the host port the device chose.
fn host_initiated(g: &mut Guest, guest_port: u32) -> (UnixStream, u32) {
    let mut client = host_client(&g.path);
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let req = g.wait_for("REQUEST", |p| p.op == OP_REQUEST);
    assert_eq!(req.dst_port, guest_port);
    assert!(req.src_port >= 1 << 30, "host port {}", req.src_port);
    assert_eq!(req.buf_alloc, VSOCK_CONN_BUF_ALLOC);
    assert_eq!(req.fwd_cnt, 0);
    g.send(&Pkt::guest(OP_RESPONSE, guest_port, req.src_port));
    assert_eq!(read_line(&mut client), format!("OK {}\n", req.src_port));
    (client, req.src_port)
}

#[test]
fn config_space_and_features() {
    let mut g = Guest::new();
    assert_eq!(g.d.read_config(0, 8), CID.to_le_bytes());
    let features = g.d.device_features();
    assert_ne!(features & F_VERSION_1, 0);
    assert_ne!(features & 1, 0, "VIRTIO_VSOCK_F_STREAM");
    assert_eq!(g.d.transport.queue_events().len(), 3);
    assert_eq!(
        g.d.transport.event_sources().len(),
        1,
        "one inner epoll fd is the only event source"
    );
    assert!(g.path.exists(), "listener created with the device");
    assert!(
        Vsock::new(2, &g.dir.path().join("x")).is_err(),
        "CID 2 is the host"
    );
    assert!(Vsock::new(u64::from(u32::MAX), &g.dir.path().join("y")).is_err());
    // The event queue is accepted and never used.
    g.d.add_chain(EVENT, &[Buf::w(RX_AREA + 0x30_0000, 8)]);
    g.d.kick(EVENT);
    assert_eq!(g.d.pop_used(EVENT), None);
}

#[test]
fn existing_path_is_refused_but_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"data").unwrap();
    let err = Vsock::new(CID, &file).err().unwrap().to_string();
    assert!(err.contains("file") && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data", "not removed");

    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    Vsock::new(CID, &stale).expect("stale socket replaced");

    let live = dir.path().join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    assert!(
        Vsock::new(CID, &live).is_err(),
        "a live listener is not stolen"
    );
}

#[test]
fn host_connect_handshake_and_data_both_ways() {
    let mut g = Guest::new();
    g.post_rx(16);
    let (mut client, host_port) = host_initiated(&mut g, 52);

    client.write_all(b"ping from host").unwrap();
    let rw = g.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!((rw.src_port, rw.dst_port), (host_port, 52));
    assert_eq!(rw.data, b"ping from host");

    g.send(&Pkt::guest(OP_RW, 52, host_port).with_data(b"pong from guest"));
    let mut buf = [0u8; 15];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong from guest");
    assert!(g.d.take_irq(), "RX completions interrupt the guest");

    // The guest closes (Linux: SHUTDOWN with both flags, then waits for the RST).
    g.send(&Pkt {
        flags: 3,
        ..Pkt::guest(OP_SHUTDOWN, 52, host_port)
    });
    let rst = g.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (host_port, 52));
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "host client sees end-of-file"
    );

    let c = g.counters();
    assert_eq!(c.host_connections, 1);
    assert_eq!(c.bytes_to_guest, 14);
    assert_eq!(c.bytes_to_host, 15);
    assert_eq!(c.rst_sent, 1);
    assert_eq!(c.active, 0);
    assert_eq!(c.dropped, 0);
    let dc =
        g.d.transport
            .device_counters()
            .expect("vsock keeps counters");
    assert_eq!((dc.requests, dc.bytes, dc.errors, dc.drops), (1, 29, 0, 0));
}

#[test]
fn bytes_sent_right_behind_the_connect_line_are_not_lost() {
    let mut g = Guest::new();
    g.post_rx(8);
    let mut client = host_client(&g.path);
    client.write_all(b"CONNECT 7\nearly bytes").unwrap();
    let req = g.wait_for("REQUEST", |p| p.op == OP_REQUEST);
    g.send(&Pkt::guest(OP_RESPONSE, 7, req.src_port));
    assert_eq!(read_line(&mut client), format!("OK {}\n", req.src_port));
    let rw = g.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(rw.data, b"early bytes");
}

#[test]
fn guest_connects_to_a_host_listener_at_path_port() {
    let mut g = Guest::new();
    g.post_rx(8);
    let listener = UnixListener::bind(g.port_path(5000)).unwrap();
    g.send(&Pkt::guest(OP_REQUEST, 1234, 5000));
    let resp = g.wait_for("RESPONSE", |p| p.op == OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 1234));
    assert_eq!(resp.buf_alloc, VSOCK_CONN_BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    g.send(&Pkt::guest(OP_RW, 1234, 5000).with_data(b"hello host"));
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    host.write_all(b"hello guest").unwrap();
    let rw = g.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(rw.data, b"hello guest");
    assert_eq!(rw.fwd_cnt, 10, "the credit the guest used is reported back");

    // Host closes: the guest is told nothing more comes, in both directions.
    drop(host);
    let shut = g.wait_for("SHUTDOWN", |p| p.op == OP_SHUTDOWN);
    assert_eq!(
        shut.flags, 3,
        "SHUTDOWN_RCV | SHUTDOWN_SEND after a hang-up"
    );
    g.send(&Pkt::guest(OP_RST, 1234, 5000));
    let c = g.counters();
    assert_eq!(c.guest_connections, 1);
    assert_eq!(c.rst_received, 1);
    assert_eq!(c.active, 0);
}

#[test]
fn half_close_from_the_guest_gives_the_host_end_of_file_and_keeps_the_other_way() {
    let mut g = Guest::new();
    g.post_rx(8);
    let (mut client, host_port) = host_initiated(&mut g, 80);
    g.send(&Pkt::guest(OP_RW, 80, host_port).with_data(b"request"));
    g.send(&Pkt {
        flags: 2, // SHUTDOWN_SEND
        ..Pkt::guest(OP_SHUTDOWN, 80, host_port)
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"request");
    client.write_all(b"reply").unwrap();
    let rw = g.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(rw.data, b"reply");
}

#[test]
fn rst_for_unknown_ports_and_streams() {
    let mut g = Guest::new();
    g.post_rx(8);
    // Nobody listens at PATH_9.
    g.send(&Pkt::guest(OP_REQUEST, 1000, 9));
    let rst = g.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (9, 1000));
    // Data, credit and shutdown packets for a stream that does not exist.
    for op in [OP_RW, OP_CREDIT_UPDATE, OP_SHUTDOWN, OP_RESPONSE] {
        g.send(&Pkt::guest(op, 1001, 10).with_data(if op == OP_RW { b"x" } else { b"" }));
        let rst = g.wait_for("RST", |p| p.op == OP_RST);
        assert_eq!((rst.src_port, rst.dst_port), (10, 1001), "op {op}");
    }
    // A RST is never answered.
    g.send(&Pkt::guest(OP_RST, 1002, 11));
    g.d.kick(RX);
    assert!(g.recv().is_empty());
    // A host client asking for a port nobody listens on in the guest: the guest RSTs the
    // REQUEST and the client sees end-of-file instead of OK.
    let mut client = host_client(&g.path);
    client.write_all(b"CONNECT 99\n").unwrap();
    let req = g.wait_for("REQUEST", |p| p.op == OP_REQUEST);
    g.send(&Pkt::guest(OP_RST, 99, req.src_port));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let c = g.counters();
    assert_eq!(c.refused, 1);
    assert_eq!(c.rst_sent, 5);
    assert_eq!(c.active, 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut g = Guest::new();
    g.post_rx(8);
    for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'9'; 64]] {
        let mut client = host_client(&g.path);
        client.write_all(line).unwrap();
        g.host_event();
        assert_closed(&mut client);
    }
    assert!(g.recv().is_empty(), "nothing reached the guest");
    assert_eq!(g.counters().refused, 3);
    assert_eq!(g.counters().active, 0);
}

/// Sends 64 KiB RW packets on (guest_port -> host_port) as long as the device's credit, as
/// the guest learns it from RX packets, allows. Returns the bytes sent.
fn send_until_out_of_credit(g: &mut Guest, guest_port: u32, host_port: u32) -> u64 {
    let chunk = vec![0x5au8; 64 << 10];
    let mut sent: u64 = 0;
    let mut peer_fwd: u32 = 0;
    let mut peer_alloc = VSOCK_CONN_BUF_ALLOC;
    for _ in 0..1000 {
        let pkts = g.recv();
        g.post_rx(pkts.len());
        for p in pkts {
            if p.src_port == host_port {
                peer_fwd = p.fwd_cnt;
                peer_alloc = p.buf_alloc;
            }
        }
        let credit = u64::from(peer_alloc) - (sent - u64::from(peer_fwd));
        if credit == 0 {
            g.host_event();
            let pkts = g.recv();
            g.post_rx(pkts.len());
            for p in pkts {
                peer_fwd = p.fwd_cnt;
            }
            if u64::from(peer_alloc) - (sent - u64::from(peer_fwd)) == 0 {
                return sent;
            }
            continue;
        }
        let n = credit.min(chunk.len() as u64) as usize;
        g.send(&Pkt::guest(OP_RW, guest_port, host_port).with_data(&chunk[..n]));
        sent += n as u64;
    }
    panic!("a host peer that never reads must stop the guest");
}

#[test]
fn a_host_peer_that_never_reads_stops_the_guest_with_bounded_memory() {
    let mut g = Guest::new();
    g.post_rx(32);
    let listener = UnixListener::bind(g.port_path(6000)).unwrap();
    g.send(&Pkt::guest(OP_REQUEST, 2000, 6000));
    g.wait_for("RESPONSE", |p| p.op == OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();

    let sent = send_until_out_of_credit(&mut g, 2000, 6000);
    let c = g.counters();
    assert!(
        c.buffered_bytes <= u64::from(VSOCK_CONN_BUF_ALLOC)
            && c.buffered_peak <= u64::from(VSOCK_CONN_BUF_ALLOC),
        "{c:?}"
    );
    assert_eq!(c.bytes_to_host + c.buffered_bytes, sent, "nothing lost");
    assert!(
        c.buffered_bytes > 0,
        "the host socket is full: the device holds the rest"
    );

    // The host starts reading: the device flushes and gives the guest its credit back.
    host.set_nonblocking(true).unwrap();
    let mut drained = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..100 {
        match host.read(&mut buf) {
            Ok(n) => drained += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                g.host_event();
                if drained == sent {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(drained, sent);
    assert_eq!(g.counters().buffered_bytes, 0);
    let update = g
        .recv()
        .into_iter()
        .rfind(|p| p.op == OP_CREDIT_UPDATE)
        .expect("a CREDIT_UPDATE once the host reads");
    let believed_in_flight = sent - u64::from(update.fwd_cnt);
    assert!(
        believed_in_flight < u64::from(VSOCK_CONN_BUF_ALLOC / 2),
        "the guest again believes at least half the buffer is free ({believed_in_flight})"
    );
}

#[test]
fn a_guest_exceeding_its_credit_is_reset() {
    let mut g = Guest::new();
    g.post_rx(32);
    let listener = UnixListener::bind(g.port_path(6001)).unwrap();
    g.send(&Pkt::guest(OP_REQUEST, 2001, 6001));
    g.wait_for("RESPONSE", |p| p.op == OP_RESPONSE);
    let (_host, _) = listener.accept().unwrap();
    send_until_out_of_credit(&mut g, 2001, 6001);
    let before = g.counters();
    g.send(&Pkt::guest(OP_RW, 2001, 6001).with_data(&[1u8; 4096]));
    let rst = g.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (6001, 2001));
    let c = g.counters();
    assert_eq!(c.dropped, before.dropped + 1);
    assert_eq!(c.buffered_bytes, 0, "the stream's buffer is gone with it");
    assert!(c.buffered_peak <= u64::from(VSOCK_CONN_BUF_ALLOC));
    assert_eq!(c.active, 0);
}

#[test]
fn a_guest_that_never_reads_gets_no_more_than_its_credit() {
    let mut g = Guest::new();
    g.post_rx(64);
    let (mut client, host_port) = host_initiated(&mut g, 53);
    // host_initiated answered with buf_alloc 64 KiB: fill far beyond it.
    client.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0usize;
    for _ in 0..64 {
        match client.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        g.host_event();
    }
    for _ in 0..3 {
        g.host_event();
    }
    let pkts = g.recv();
    let got: usize = pkts
        .iter()
        .filter(|p| p.op == OP_RW)
        .map(|p| p.data.len())
        .sum();
    assert_eq!(got, GUEST_BUF_ALLOC as usize, "exactly the guest's credit");
    assert!(
        written > got,
        "the rest stayed in the host socket ({written} written)"
    );
    assert_eq!(g.counters().bytes_to_guest, u64::from(GUEST_BUF_ALLOC));
    assert!(
        pkts.iter().any(|p| p.op == OP_CREDIT_REQUEST),
        "the device asks for credit once it has none"
    );
    // The guest reads it all and says so: the next 64 KiB flow.
    g.send(&Pkt {
        fwd_cnt: GUEST_BUF_ALLOC,
        ..Pkt::guest(OP_CREDIT_UPDATE, 53, host_port)
    });
    let more: usize = g
        .recv()
        .iter()
        .filter(|p| p.op == OP_RW)
        .map(|p| p.data.len())
        .sum();
    assert_eq!(more, GUEST_BUF_ALLOC as usize);
}

#[test]
fn malformed_packets_and_chains_are_refused_without_panic() {
    let mut g = Guest::new();
    g.post_rx(32);
    let addr = TX_AREA + 15 * TX_SLOT;
    let mem = g.d.mem.clone();
    let put = |pkt: &Pkt| mem.write_slice(&pkt.header(), GuestAddress(addr)).unwrap();

    // Shorter than a header.
    g.send_raw(&[Buf::r(addr, 10)]);
    // Only a device-writable descriptor: nothing to read.
    g.send_raw(&[Buf::w(addr, 64)]);
    // A descriptor outside guest memory.
    g.send_raw(&[Buf::r(MEM_SIZE as u64 + 0x1000, 64)]);
    // A spoofed source CID: dropped without a reply.
    put(&Pkt {
        src_cid: 7,
        ..Pkt::guest(OP_REQUEST, 1, 2)
    });
    g.send_raw(&[Buf::r(addr, HDR as u32)]);
    let before = g.counters();
    assert_eq!(before.dropped, 4, "{before:?}");
    assert!(g.recv().is_empty(), "none of these is answered");

    // Replies with RST: payload longer than the chain, longer than any packet, unknown op,
    // another CID, another socket type.
    let bad = [
        Pkt {
            len: 100,
            ..Pkt::guest(OP_RW, 3, 4)
        },
        Pkt {
            len: 1 << 20,
            ..Pkt::guest(OP_RW, 3, 4)
        },
        Pkt::guest(99, 3, 4),
        Pkt::guest(0, 3, 4),
        Pkt {
            dst_cid: 5,
            ..Pkt::guest(OP_REQUEST, 3, 4)
        },
        Pkt {
            type_: 2,
            ..Pkt::guest(OP_REQUEST, 3, 4)
        },
    ];
    for pkt in &bad {
        put(pkt);
        g.send_raw(&[Buf::r(addr, HDR as u32), Buf::r(addr + 0x1000, 50)]);
        let rst = g.wait_for("RST", |p| p.op == OP_RST);
        assert_eq!((rst.src_port, rst.dst_port), (4, 3), "{pkt:?}");
    }
    assert_eq!(g.counters().dropped, before.dropped + 4);

    // The device still serves good packets.
    let _listener = UnixListener::bind(g.port_path(8000)).unwrap();
    g.send(&Pkt::guest(OP_REQUEST, 1, 8000));
    g.wait_for("RESPONSE", |p| p.op == OP_RESPONSE);

    // A broken avail index on TX stops the queue without a panic or a spin.
    let idx = g.d.queues[TX].used_idx(&g.d.mem);
    let mem = g.d.mem.clone();
    g.d.queues[TX].set_avail_idx(&mem, idx.wrapping_add(1000));
    g.d.kick(TX);
    assert_eq!(g.d.queues[TX].used_idx(&g.d.mem), idx);
}

#[test]
fn rx_buffers_too_small_for_a_header_are_given_back_empty() {
    let mut g = Guest::new();
    let small = g.d.add_chain(RX, &[Buf::w(RX_AREA + 0x30_0000, 8)]);
    let good = g.d.add_chain(RX, &[Buf::w(RX_AREA + 0x30_1000, 64)]);
    g.d.kick(RX);
    g.send(&Pkt::guest(OP_REQUEST, 5, 6)); // nobody listens: a RST is owed
    assert_eq!(g.d.pop_used(RX), Some((u32::from(small), 0)));
    assert_eq!(g.d.pop_used(RX), Some((u32::from(good), HDR as u32)));
    let mut bytes = [0u8; HDR];
    g.d.mem
        .read_slice(&mut bytes, GuestAddress(RX_AREA + 0x30_1000))
        .unwrap();
    assert_eq!(Pkt::parse(&bytes).op, OP_RST);
    assert_eq!(g.counters().dropped, 1);
}

#[test]
fn connections_are_capped() {
    let mut g = Guest::new();
    g.post_rx(4);
    let mut clients: Vec<UnixStream> = (0..VSOCK_MAX_CONNECTIONS)
        .map(|_| host_client(&g.path))
        .collect();
    g.host_event();
    assert_eq!(g.counters().active, VSOCK_MAX_CONNECTIONS as u64);
    let mut extra = host_client(&g.path);
    g.host_event();
    let mut rest = Vec::new();
    extra.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the client over the cap is closed");
    assert_eq!(g.counters().refused, 1);
    // A guest REQUEST over the cap gets a RST.
    let _listener = UnixListener::bind(g.port_path(7)).unwrap();
    g.send(&Pkt::guest(OP_REQUEST, 1, 7));
    assert!(g.recv().iter().any(|p| p.op == OP_RST));
    // Freed slots are usable again.
    clients.pop();
    g.host_event();
    g.send(&Pkt::guest(OP_REQUEST, 2, 7));
    assert!(g.recv().iter().any(|p| p.op == OP_RESPONSE));
}

#[test]
fn a_driver_reset_closes_every_stream() {
    let mut g = Guest::new();
    g.post_rx(8);
    let (mut client, _) = host_initiated(&mut g, 52);
    g.d.write32(REG_STATUS, 0);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(g.counters().active, 0);
}
