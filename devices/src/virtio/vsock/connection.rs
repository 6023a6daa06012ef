//! One vsock stream between a guest port and a host Unix socket, with the virtio credit
//! accounting of both directions (virtio 1.2 §5.10.6.3).
//!
//! Guest to host: bytes the host socket does not take at once wait in `pending`, which can
//! never hold more than [`CONN_BUF_ALLOC`] because that is the credit the guest is given;
//! `fwd_cnt` advances only as bytes reach the host socket. Host to guest: the host socket is
//! read only while the guest has credit, so a guest that does not read leaves the bytes in the
//! host socket and the host writer blocks.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;

use super::host;
use super::packet::{op, wire_u32, Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Receive buffer the device advertises per connection (`buf_alloc`), hence the most it ever
/// buffers for one connection.
pub const CONN_BUF_ALLOC: u32 = 256 << 10;
/// Tell the guest about forwarded bytes once it believes less than this much space is left.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;

/// (host port, guest port): a stream's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// A host client asked for a guest port; REQUEST sent, RESPONSE awaited.
    HostInit,
    /// Data flows.
    Established,
}

/// Control packets a connection owes the guest (one each at most: bounded).
pub mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SHUTDOWN: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
}

/// Why a connection must end with a RST.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit it was given.
    #[error("the guest sent more than its credit of {CONN_BUF_ALLOC} bytes")]
    CreditExceeded,
    /// The guest sent data after saying it would not.
    #[error("the guest sent data after shutting down its sending side")]
    DataAfterShutdown,
    /// The host socket failed (peer gone: EPIPE, ECONNRESET, ...).
    #[error("host socket: {0}")]
    Host(io::Error),
}

pub struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub state: ConnState,
    /// Bitmask of [`pending`] control packets.
    pub pending: u8,
    /// Guest bytes not yet taken by the host socket (at most `CONN_BUF_ALLOC`).
    buffered: VecDeque<u8>,
    /// Bytes received from the guest / written to the host socket (wrapping, as on the wire).
    rx_cnt: u32,
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard of.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest, and the guest's view of its receive buffer.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket may have bytes to read (edge-triggered: cleared on EAGAIN).
    pub readable: bool,
    /// The host socket reported a hang-up: the peer is gone in both directions.
    pub host_hup: bool,
    /// The host side reached end-of-file; the SHUTDOWN telling the guest is queued or sent.
    pub host_eof: bool,
    /// Flags of the SHUTDOWN owed to the guest.
    pub shutdown_flags: u32,
    /// The guest will send no more / receive no more.
    pub guest_shut_send: bool,
    pub guest_shut_rcv: bool,
    /// `shutdown(SHUT_WR)` was done on the host socket.
    host_write_closed: bool,
    /// A CREDIT_REQUEST was sent and the guest's credit has not moved since.
    credit_asked: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, token: u64, state: ConnState, pending: u8) -> Connection {
        Connection {
            stream,
            token,
            state,
            pending,
            buffered: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            // Bytes may already wait (sent behind the CONNECT line): look once.
            readable: true,
            host_hup: false,
            host_eof: false,
            shutdown_flags: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_closed: false,
            credit_asked: false,
        }
    }

    /// Takes the guest's credit fields from any packet it sent on this stream.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_free() > 0 {
            self.credit_asked = false;
        }
    }

    /// Host bytes wait but the guest gave no credit and was not asked yet.
    pub fn wants_credit_request(&self) -> bool {
        self.peer_free() == 0 && !self.credit_asked
    }

    /// A CREDIT_REQUEST went out; the next one only after the credit moved.
    pub fn credit_request_sent(&mut self) {
        self.credit_asked = true;
    }

    /// How many more bytes the guest can take now.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes held for the host socket.
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// The header of a packet to the guest, carrying this stream's credit.
    pub fn header(&mut self, guest_cid: u64, key: ConnKey, op: u16) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::to_guest(guest_cid, key.host_port, key.guest_port, op)
        }
    }

    /// The next control packet owed to the guest, if any (clears it).
    pub fn take_control(&mut self) -> Option<(u16, u32)> {
        let order = [
            (pending::REQUEST, op::REQUEST),
            (pending::RESPONSE, op::RESPONSE),
            (pending::CREDIT_UPDATE, op::CREDIT_UPDATE),
            (pending::SHUTDOWN, op::SHUTDOWN),
        ];
        let (bit, code) = order.into_iter().find(|(bit, _)| self.pending & bit != 0)?;
        self.pending &= !bit;
        let flags = if code == op::SHUTDOWN {
            self.shutdown_flags
        } else {
            0
        };
        Some((code, flags))
    }

    /// Whether the host socket should be read for the guest now.
    pub fn wants_host_read(&self) -> bool {
        self.state == ConnState::Established
            && self.readable
            && !self.host_eof
            && !self.guest_shut_rcv
    }

    /// Notes bytes sent to the guest.
    pub fn sent_to_guest(&mut self, len: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(len);
    }

    /// The host socket reached end-of-file: tell the guest with a SHUTDOWN.
    pub fn host_end_of_file(&mut self) {
        self.host_eof = true;
        self.shutdown_flags = SHUTDOWN_SEND | if self.host_hup { SHUTDOWN_RCV } else { 0 };
        self.pending |= pending::SHUTDOWN;
    }

    /// Data from the guest: written through to the host socket, the rest buffered within the
    /// credit the guest was given. Returns the bytes written to the host now.
    pub fn guest_data(&mut self, data: &[u8]) -> Result<usize, ConnError> {
        if self.guest_shut_send {
            return Err(ConnError::DataAfterShutdown);
        }
        if self.buffered.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(ConnError::CreditExceeded);
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(wire_u32(data.len()));
        let mut written = 0;
        if self.buffered.is_empty() {
            written = write_some(&self.stream, data)?;
        }
        self.buffered.extend(&data[written..]);
        self.forwarded(written);
        Ok(written)
    }

    /// The host socket became writable: moves buffered bytes on. Returns the bytes written.
    pub fn flush(&mut self) -> Result<usize, ConnError> {
        let mut total = 0;
        while !self.buffered.is_empty() {
            let (front, _) = self.buffered.as_slices();
            let n = write_some(&self.stream, front)?;
            if n == 0 {
                break;
            }
            self.buffered.drain(..n);
            total += n;
        }
        if self.buffered.is_empty() {
            // Give the memory back: a stalled peer may have filled it once.
            self.buffered = VecDeque::new();
        }
        self.forwarded(total);
        Ok(total)
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(wire_u32(n));
        let believed_in_flight = self.rx_cnt.wrapping_sub(self.fwd_cnt_sent);
        let believed_free = CONN_BUF_ALLOC.saturating_sub(believed_in_flight);
        if self.fwd_cnt != self.fwd_cnt_sent && believed_free < CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// The guest asked for our credit.
    pub fn credit_requested(&mut self) {
        self.pending |= pending::CREDIT_UPDATE;
    }

    /// Once everything is flushed and the guest said it sends no more, the host peer gets
    /// end-of-file.
    pub fn close_host_write_if_done(&mut self) -> Result<(), ConnError> {
        if self.guest_shut_send && self.buffered.is_empty() && !self.host_write_closed {
            self.host_write_closed = true;
            host::shutdown_write(&self.stream).map_err(ConnError::Host)?;
        }
        Ok(())
    }
}

/// Writes what the socket takes now; 0 when it would block.
fn write_some(stream: &UnixStream, data: &[u8]) -> Result<usize, ConnError> {
    match host::write(stream, data) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(ConnError::Host(e)),
    }
}
