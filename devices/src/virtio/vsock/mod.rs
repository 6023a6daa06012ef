//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and host Unix sockets,
//! in Firecracker's convention so existing host agents work unchanged.
//!
//! - A host client connects to the Unix socket at `PATH` and writes `CONNECT <port>\n`; once a
//!   guest listener on `<port>` accepts, the client reads `OK <host_port>\n` and the socket
//!   carries the stream.
//! - A guest connecting to host port `P` reaches the Unix listener at `PATH_P`.
//!
//! The event loop registers a device's fds once, so the device keeps its own epoll set (like
//! Firecracker's muxer) holding the listener and every connection; that set's fd is the one
//! event source the loop watches. Flow control is the virtio credit scheme: a guest is never
//! given more credit than the device will buffer, and the host socket is read only while the
//! guest has credit, so a peer that does not read stalls its own stream and nothing grows.

mod connection;
mod host;
mod metrics;
mod packet;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    next_chain, QueueContext, VirtioCommon, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use connection::{pending, ConnError, ConnKey, ConnState, Connection};
use metrics::inc;
use packet::{
    op, wire_u32, Header, HDR_LEN, HOST_CID, MAX_PKT_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

pub use connection::CONN_BUF_ALLOC;
pub use metrics::{VsockCounters, VsockMetrics};

/// `VIRTIO_ID_VSOCK`.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// `VIRTIO_VSOCK_F_STREAM`: stream sockets (the only kind served).
pub const VIRTIO_VSOCK_F_STREAM: u64 = 1 << 0;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Streams open at once (host clients in the handshake included). With [`CONN_BUF_ALLOC`]
/// this bounds what slow host peers can make the device buffer: 64 x 256 KiB.
pub const MAX_CONNECTIONS: usize = 64;
/// RSTs waiting for a guest RX buffer; the TX queue is not read while this is full.
const MAX_CONTROL: usize = 2 * MAX_CONNECTIONS;
/// Smallest and largest guest CID (0-2 are reserved, u32::MAX is VMADDR_CID_ANY).
pub const MIN_GUEST_CID: u64 = 3;
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// First port handed to host-initiated streams (as Firecracker: well above guest ports).
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Inner epoll token of the listener; connections count up from 1.
const LISTENER_TOKEN: u64 = 0;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;

/// Why a vsock device could not be created.
#[derive(Debug, Error)]
pub enum VsockError {
    #[error("vsock guest CID {0} is invalid: it must be between {MIN_GUEST_CID} and {MAX_GUEST_CID} (0-2 are reserved)")]
    InvalidCid(u64),
    #[error("cannot listen on vsock socket {}: {source}", path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot create the vsock epoll set: {0}")]
    Epoll(io::Error),
}

/// A host client that connected to `PATH` and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A virtio-vsock device whose host side is Unix sockets.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: host::Epoll,
    /// Config space: the guest's CID (le64).
    common: VirtioCommon,
    conns: BTreeMap<ConnKey, Connection>,
    /// Inner epoll token -> stream.
    tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_host_port: u32,
    /// RSTs owed to the guest for streams that no longer (or never) existed.
    control: VecDeque<Header>,
    /// The stream served last, for round-robin fairness on the RX queue.
    rx_cursor: Option<ConnKey>,
    /// TX was left unread because `control` was full.
    tx_stalled: bool,
    scratch: Vec<u8>,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// A device for guest `cid` listening at `path` (created now: call before the sandbox).
    pub fn new(cid: u64, path: &Path) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(VsockError::InvalidCid(cid));
        }
        let listen_err = |source| VsockError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = host::bind_listener(path).map_err(listen_err)?;
        let epoll = host::Epoll::new().map_err(VsockError::Epoll)?;
        epoll
            .add(listener.as_raw_fd(), LISTENER_TOKEN, libc::EPOLLIN as u32)
            .map_err(VsockError::Epoll)?;
        Ok(Vsock {
            cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            common: VirtioCommon::new(
                VIRTIO_ID_VSOCK,
                VIRTIO_F_VERSION_1
                    | VIRTIO_RING_F_EVENT_IDX
                    | VIRTIO_RING_F_INDIRECT_DESC
                    | VIRTIO_VSOCK_F_STREAM,
                3,
            )
            .with_config(&cid.to_le_bytes()),
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            rx_cursor: None,
            tx_stalled: false,
            scratch: vec![0; MAX_PKT_PAYLOAD],
            metrics: Arc::new(VsockMetrics::default()),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host socket path (`PATH`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's counters, readable from any thread.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    fn open_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// A guest packet or buffer refused: counted, and logged rate-limited (the guest controls
    /// how often this happens).
    fn bad_packet(&mut self, what: std::fmt::Arguments) {
        inc(&self.metrics.dropped, 1);
        crate::rl_warn!("virtio-vsock: {what}");
    }

    fn update_gauges(&self) {
        let buffered: usize = self.conns.values().map(Connection::buffered).sum();
        self.metrics.set_buffered(buffered as u64);
        self.metrics.active.store(
            self.open_count() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Queues a RST to the guest (for a stream given by its ports).
    fn queue_rst(&mut self, hdr: Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(hdr);
        } else {
            self.bad_packet(format_args!("control queue full, RST dropped"));
        }
    }

    /// A RST answering the guest packet `hdr`.
    fn rst_reply(&self, hdr: &Header) -> Header {
        Header {
            src_cid: hdr.dst_cid,
            type_: hdr.type_,
            ..Header::to_guest(self.cid, hdr.dst_port, hdr.src_port, op::RST)
        }
    }

    /// Ends a stream, telling the guest with a RST when `rst`.
    fn remove(&mut self, key: ConnKey, rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if rst {
                self.queue_rst(Header::to_guest(
                    self.cid,
                    key.host_port,
                    key.guest_port,
                    op::RST,
                ));
            }
        }
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// A host port for a host-initiated stream that no open stream uses.
    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|k| k.host_port == port) {
                return port;
            }
        }
    }

    // ---- guest -> host (TX queue) ----

    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        self.tx_stalled = false;
        loop {
            if self.control.len() >= MAX_CONTROL {
                // Replies cannot be queued: leave guest packets in the ring until the guest
                // takes what is waiting on the RX queue.
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = next_chain(queue, mem, "virtio-vsock TX") else {
                break;
            };
            let head = chain.head_index();
            self.handle_tx_chain(Reader::new(mem, chain));
            if let Err(e) = queue.add_used(mem, head, 0) {
                crate::rl_warn!("virtio-vsock: cannot add used TX buffer: {e}");
            }
            used_any = true;
        }
        used_any
    }

    fn handle_tx_chain(&mut self, reader: Result<Reader, virtio_queue::Error>) {
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(e) => return self.bad_packet(format_args!("unusable TX buffer: {e}")),
        };
        let mut raw = [0u8; HDR_LEN];
        let available = reader.available_bytes();
        if available < HDR_LEN || reader.read_exact(&mut raw).is_err() {
            return self.bad_packet(format_args!(
                "TX buffer of {available} bytes is shorter than a packet header"
            ));
        }
        let hdr = Header::from_bytes(&raw);
        let cid = self.cid;
        if hdr.src_cid != cid {
            return self.bad_packet(format_args!(
                "TX packet from CID {} (guest is {cid}) dropped",
                hdr.src_cid
            ));
        }
        let key = ConnKey {
            host_port: hdr.dst_port,
            guest_port: hdr.src_port,
        };
        let len = hdr.len as usize;
        if len > MAX_PKT_PAYLOAD || len > reader.available_bytes() {
            self.bad_packet(format_args!(
                "TX packet claims {len} payload bytes, buffer holds {}",
                reader.available_bytes()
            ));
            if hdr.op != op::RST {
                self.remove(key, false);
                let rst = self.rst_reply(&hdr);
                self.queue_rst(rst);
            }
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != packet::TYPE_STREAM {
            // Another CID or a socket type not served: refuse the stream.
            if hdr.op != op::RST {
                let rst = self.rst_reply(&hdr);
                self.queue_rst(rst);
            }
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(key, &hdr),
            op::RST => {
                inc(&self.metrics.rst_received, 1);
                self.remove(key, false);
            }
            op::RESPONSE | op::SHUTDOWN | op::RW | op::CREDIT_UPDATE | op::CREDIT_REQUEST => {
                self.stream_packet(key, &hdr, &mut reader)
            }
            other => {
                self.bad_packet(format_args!("TX packet with unknown op {other}"));
                self.remove(key, false);
                let rst = self.rst_reply(&hdr);
                self.queue_rst(rst);
            }
        }
    }

    /// The guest connects to host port `key.host_port`: `PATH_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        let rst = self.rst_reply(hdr);
        if self.conns.contains_key(&key) {
            // A second REQUEST for a live stream: both are void.
            self.bad_packet(format_args!("REQUEST for an open stream {key:?}"));
            return self.remove(key, true);
        }
        if self.open_count() >= MAX_CONNECTIONS {
            inc(&self.metrics.refused, 1);
            return self.queue_rst(rst);
        }
        let path = host::port_path(&self.path, key.host_port);
        let stream = match host::connect(&path) {
            Ok(stream) => stream,
            Err(e) => {
                inc(&self.metrics.refused, 1);
                log::debug!(
                    "virtio-vsock: guest port {} -> {}: {e}",
                    key.guest_port,
                    path.display()
                );
                return self.queue_rst(rst);
            }
        };
        let token = self.take_token();
        if let Err(e) = self.epoll.add(stream.as_raw_fd(), token, CONN_EVENTS) {
            crate::rl_warn!("virtio-vsock: cannot watch a new stream: {e}");
            return self.queue_rst(rst);
        }
        let mut conn = Connection::new(stream, token, ConnState::Established, pending::RESPONSE);
        conn.update_peer_credit(hdr);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        inc(&self.metrics.guest_connections, 1);
    }

    /// RESPONSE, SHUTDOWN, RW and credit packets on an existing stream.
    fn stream_packet(&mut self, key: ConnKey, hdr: &Header, reader: &mut Reader) {
        let Some(conn) = self.conns.get_mut(&key) else {
            let rst = self.rst_reply(hdr);
            return self.queue_rst(rst);
        };
        conn.update_peer_credit(hdr);
        let result = match (hdr.op, conn.state) {
            (op::RESPONSE, ConnState::HostInit) => {
                conn.state = ConnState::Established;
                let line = format!("OK {}\n", key.host_port);
                match host::write(&conn.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => {
                        inc(&self.metrics.host_connections, 1);
                        Ok(())
                    }
                    Ok(_) => Err(ConnError::Host(io::ErrorKind::WriteZero.into())),
                    Err(e) => Err(ConnError::Host(e)),
                }
            }
            (op::RW, ConnState::Established) => {
                let len = hdr.len as usize;
                let data = &mut self.scratch[..len];
                match reader.read_exact(data) {
                    Ok(()) => conn.guest_data(data).map(|written| {
                        inc(&self.metrics.bytes_to_host, written as u64);
                    }),
                    Err(e) => Err(ConnError::Host(e)),
                }
            }
            (op::SHUTDOWN, ConnState::Established) => {
                conn.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                conn.close_host_write_if_done()
            }
            (op::CREDIT_REQUEST, ConnState::Established) => {
                conn.credit_requested();
                Ok(())
            }
            (op::CREDIT_UPDATE, ConnState::Established) => Ok(()),
            (code, state) => {
                let what = format!("op {code} on a stream in state {state:?}");
                self.bad_packet(format_args!("{what}"));
                return self.remove(key, true);
            }
        };
        match result {
            Ok(()) => self.end_if_closed(key),
            Err(ConnError::Host(e)) => {
                log::debug!("virtio-vsock: stream {key:?} reset: host socket: {e}");
                self.remove(key, true);
            }
            Err(e) => {
                self.bad_packet(format_args!("stream {key:?} reset: {e}"));
                self.remove(key, true);
            }
        }
    }

    /// A stream the guest shut down both ways ends (with the RST the guest waits for) once
    /// every byte it sent reached the host socket.
    fn end_if_closed(&mut self, key: ConnKey) {
        let done = self
            .conns
            .get(&key)
            .is_some_and(|c| c.guest_shut_send && c.guest_shut_rcv && c.buffered() == 0);
        if done {
            self.remove(key, true);
        }
    }

    // ---- host -> guest (RX queue) ----

    /// The next stream with something for the guest, round-robin after the last one served.
    /// `data_room` is whether the RX buffer at hand can take payload.
    fn next_ready_conn(&self, data_room: bool) -> Option<ConnKey> {
        let ready = |c: &Connection| {
            c.pending != 0
                || (c.wants_host_read()
                    && ((data_room && c.peer_free() > 0) || c.wants_credit_request()))
        };
        let after = match self.rx_cursor {
            Some(cursor) => self
                .conns
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .find(|(_, c)| ready(c)),
            None => None,
        };
        after
            .or_else(|| self.conns.iter().find(|(_, c)| ready(c)))
            .map(|(k, _)| *k)
    }

    fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || self.next_ready_conn(true).is_some()
    }

    /// Builds the next packet for the guest into a header and `scratch[..len]`; `room` is the
    /// payload space of the RX buffer at hand.
    fn next_rx_packet(&mut self, room: usize) -> Option<(Header, usize)> {
        loop {
            if let Some(hdr) = self.control.pop_front() {
                return Some((hdr, 0));
            }
            let key = self.next_ready_conn(room > 0)?;
            self.rx_cursor = Some(key);
            let cid = self.cid;
            let conn = self.conns.get_mut(&key)?;
            if let Some((code, flags)) = conn.take_control() {
                let mut hdr = conn.header(cid, key, code);
                hdr.flags = flags;
                return Some((hdr, 0));
            }
            let credit = conn.peer_free() as usize;
            if credit == 0 || room == 0 {
                if conn.wants_credit_request() {
                    conn.credit_request_sent();
                    return Some((conn.header(cid, key, op::CREDIT_REQUEST), 0));
                }
                continue;
            }
            let want = room.min(credit).min(self.scratch.len());
            match host::read(&conn.stream, &mut self.scratch[..want]) {
                Ok(0) => conn.host_end_of_file(),
                Ok(n) => {
                    conn.sent_to_guest(wire_u32(n));
                    let mut hdr = conn.header(cid, key, op::RW);
                    hdr.len = wire_u32(n);
                    inc(&self.metrics.bytes_to_guest, n as u64);
                    return Some((hdr, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("virtio-vsock: host socket of {key:?} failed: {e}");
                    self.remove(key, true);
                }
            }
        }
    }

    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while self.has_rx_work() {
            let Some(chain) = next_chain(queue, mem, "virtio-vsock RX") else {
                break;
            };
            let head = chain.head_index();
            let mut writer = match Writer::new(mem, chain) {
                Ok(writer) if writer.available_bytes() >= HDR_LEN => writer,
                Ok(writer) => {
                    let len = writer.available_bytes();
                    self.bad_packet(format_args!("RX buffer of {len} bytes is too small"));
                    self.add_used(queue, mem, head, 0);
                    used_any = true;
                    continue;
                }
                Err(e) => {
                    self.bad_packet(format_args!("unusable RX buffer: {e}"));
                    self.add_used(queue, mem, head, 0);
                    used_any = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HDR_LEN).min(MAX_PKT_PAYLOAD);
            let Some((hdr, len)) = self.next_rx_packet(room) else {
                // Nothing after all (the host socket had no bytes): give the buffer back.
                queue.go_to_previous_position();
                break;
            };
            let written = writer
                .write_all(&hdr.to_bytes())
                .and_then(|()| writer.write_all(&self.scratch[..len]));
            if let Err(e) = written {
                // Cannot happen with the room checked above; the stream is lost if it does.
                self.bad_packet(format_args!("cannot write an RX packet: {e}"));
                let key = ConnKey {
                    host_port: hdr.src_port,
                    guest_port: hdr.dst_port,
                };
                if hdr.op != op::RST {
                    self.remove(key, true);
                }
            } else if hdr.op == op::RST {
                inc(&self.metrics.rst_sent, 1);
            }
            self.add_used(queue, mem, head, wire_u32(HDR_LEN + len));
            used_any = true;
        }
        used_any
    }

    fn add_used(&self, queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if let Err(e) = queue.add_used(mem, head, len) {
            crate::rl_warn!("virtio-vsock: cannot add used buffer: {e}");
        }
    }

    /// RX first (replies free TX), then TX if it stalled on a full control queue, then RX
    /// again for what TX produced.
    fn run_queues(&mut self, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        let mut used = self.process_rx(&mut ctx.queues[RX_QUEUE], mem);
        if self.tx_stalled {
            used |= self.process_tx(&mut ctx.queues[TX_QUEUE], mem);
            used |= self.process_rx(&mut ctx.queues[RX_QUEUE], mem);
        }
        self.update_gauges();
        used
    }

    // ---- host sockets (the inner epoll set) ----

    fn handle_host_events(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        loop {
            let n = match self.epoll.poll(&mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::rl_warn!("virtio-vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                let (flags, token) = (event.events, event.u64);
                self.handle_host_event(token, flags);
            }
            // Until empty: handling one event (an accept) may have made another ready.
            if n == 0 {
                return;
            }
        }
    }

    fn handle_host_event(&mut self, token: u64, flags: u32) {
        if token == LISTENER_TOKEN {
            return self.accept_clients();
        }
        if self.handshakes.contains_key(&token) {
            return self.read_connect_line(token);
        }
        let Some(&key) = self.tokens.get(&token) else {
            return; // closed earlier in this batch
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let hangup = flags & (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0;
        if flags & libc::EPOLLHUP as u32 != 0 {
            conn.host_hup = true;
        }
        if flags & (libc::EPOLLIN as u32) != 0 || hangup {
            conn.readable = true;
        }
        let closed = flags & libc::EPOLLHUP as u32 != 0;
        if flags & libc::EPOLLERR as u32 != 0 || (conn.state == ConnState::HostInit && closed) {
            // The host client failed or went away before the guest answered.
            return self.remove(key, true);
        }
        if flags & libc::EPOLLOUT as u32 != 0 && conn.buffered() > 0 {
            let result = conn
                .flush()
                .and_then(|written| conn.close_host_write_if_done().map(|()| written));
            match result {
                Ok(written) => {
                    inc(&self.metrics.bytes_to_host, written as u64);
                    self.end_if_closed(key);
                }
                Err(e) => {
                    log::debug!("virtio-vsock: stream {key:?} reset: {e}");
                    self.remove(key, true);
                }
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match host::accept(&self.listener) {
                Ok(Some(stream)) => stream,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and the like: the client stays queued until a later edge.
                    crate::rl_warn!(
                        "virtio-vsock: accept on {} failed: {e}",
                        self.path.display()
                    );
                    return;
                }
            };
            if self.open_count() >= MAX_CONNECTIONS {
                inc(&self.metrics.refused, 1);
                continue; // dropped: the client sees end-of-file
            }
            let token = self.take_token();
            if let Err(e) = self.epoll.add(stream.as_raw_fd(), token, CONN_EVENTS) {
                crate::rl_warn!("virtio-vsock: cannot watch a host client: {e}");
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::with_capacity(host::MAX_CONNECT_LINE),
                },
            );
        }
    }

    /// Reads a host client's `CONNECT <port>\n` one byte at a time, so no byte of the stream
    /// behind it is consumed.
    fn read_connect_line(&mut self, token: u64) {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match host::read(&handshake.stream, &mut byte) {
                Ok(1) => handshake.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
            match host::parse_connect_line(&handshake.line) {
                host::ConnectLine::Incomplete => continue,
                host::ConnectLine::Port(port) => break Some(port),
                host::ConnectLine::Invalid => break None,
            }
        };
        let Some(handshake) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(guest_port) = port else {
            inc(&self.metrics.refused, 1);
            return; // dropping the stream closes it
        };
        let key = ConnKey {
            host_port: self.alloc_host_port(),
            guest_port,
        };
        let conn = Connection::new(
            handshake.stream,
            token,
            ConnState::HostInit,
            pending::REQUEST,
        );
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        log::info!("virtio-vsock: {}", self.metrics.snapshot());
    }
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        let used = match index {
            TX_QUEUE => self.process_tx(&mut ctx.queues[TX_QUEUE], mem),
            // New RX buffers: whatever waited for them goes out below.
            RX_QUEUE => false,
            // The event queue only carries transport resets, which Volt never sends.
            EVENT_QUEUE => return false,
            _ => return false,
        };
        used | self.run_queues(ctx)
    }

    fn event_sources(&self) -> Vec<RawFd> {
        vec![self.epoll.as_raw_fd()]
    }

    fn process_event_source(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        if index != 0 {
            return false;
        }
        self.handle_host_events();
        self.run_queues(ctx)
    }

    /// requests: streams opened (both directions); bytes: payload moved both ways; errors:
    /// guest packets and buffers refused; drops: connection attempts refused.
    fn counters(&self) -> Option<crate::DeviceCounters> {
        let c = self.metrics.snapshot();
        Some(crate::DeviceCounters {
            requests: c.host_connections + c.guest_connections,
            bytes: c.bytes_to_host + c.bytes_to_guest,
            errors: c.dropped,
            drops: c.refused,
        })
    }

    fn reset(&mut self) {
        // Host clients see their streams end; the listener stays for the next driver.
        self.conns.clear();
        self.tokens.clear();
        self.handshakes.clear();
        self.control.clear();
        self.rx_cursor = None;
        self.tx_stalled = false;
        self.update_gauges();
    }
}
