//! Driver-side test helpers: a guest virtio driver that programs `MmioTransport` through its
//! registers and builds split virtqueues in guest memory, plus host-side tap helpers.
//! Shared by the integration tests and the bench example.
// A test driver: it splits addresses into 32-bit register halves and builds small test values
// on purpose, so truncating casts are intended here.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use devices::virtio::{MmioTransport, VirtioDevice};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: usize = 32 << 20;
/// Queue structures live below this address; data buffers above it.
pub const DATA_START: u64 = 0x10_0000;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;

pub const F_VERSION_1: u64 = 1 << 32;
pub const F_EVENT_IDX: u64 = 1 << 29;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;
pub const F_INDIRECT_DESC: u64 = 1 << 28;

/// One buffer of a descriptor chain: guest address, length, device-writable?
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buf {
    pub fn r(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// The driver's view of one split virtqueue in guest memory.
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Queue `index` gets its own 16 KiB area below `DATA_START`.
    pub fn new(index: usize, size: u16) -> DriverQueue {
        let base = 0x1_0000 + index as u64 * 0x1_0000;
        DriverQueue {
            size,
            desc: base,
            avail: base + 0x4000,
            used: base + 0x8000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Writes a descriptor chain and publishes it in the avail ring; returns the head index.
    /// Does not notify the device.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty());
        let ids: Vec<u16> = (0..bufs.len())
            .map(|i| (self.next_desc + i as u16) % self.size)
            .collect();
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.writable { VRING_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            let addr = GuestAddress(self.desc + u64::from(ids[i]) * 16);
            mem.write_obj(buf.addr, addr).unwrap();
            mem.write_obj(buf.len, GuestAddress(addr.0 + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(addr.0 + 12)).unwrap();
            mem.write_obj(next, GuestAddress(addr.0 + 14)).unwrap();
        }
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write_obj(ids[0], GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        ids[0]
    }

    /// Like [`DriverQueue::add_chain`], but the buffers go in an indirect descriptor table
    /// written at `table` (VIRTIO_RING_F_INDIRECT_DESC): the chain takes one ring descriptor.
    pub fn add_indirect_chain(&mut self, mem: &GuestMemoryMmap, table: u64, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty());
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.writable { VRING_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
                i as u16 + 1
            } else {
                0
            };
            let addr = GuestAddress(table + i as u64 * 16);
            mem.write_obj(buf.addr, addr).unwrap();
            mem.write_obj(buf.len, GuestAddress(addr.0 + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(addr.0 + 12)).unwrap();
            mem.write_obj(next, GuestAddress(addr.0 + 14)).unwrap();
        }
        let id = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        let addr = GuestAddress(self.desc + u64::from(id) * 16);
        mem.write_obj(table, addr).unwrap();
        mem.write_obj(bufs.len() as u32 * 16, GuestAddress(addr.0 + 8))
            .unwrap();
        mem.write_obj(VRING_DESC_F_INDIRECT, GuestAddress(addr.0 + 12))
            .unwrap();
        mem.write_obj(0u16, GuestAddress(addr.0 + 14)).unwrap();
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write_obj(id, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        id
    }

    /// Publishes an avail index without a matching ring entry (a buggy or hostile driver).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// The used index as written by the device.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Next used element (descriptor id, length) the driver has not seen yet.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        let elem = self.used + 4 + u64::from(self.last_used % self.size) * 8;
        let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// EVENT_IDX: ask for an interrupt only once the used index passes `idx`.
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, idx: u16) {
        let addr = self.avail + 4 + u64::from(self.size) * 2;
        mem.write_obj(idx, GuestAddress(addr)).unwrap();
    }

    /// EVENT_IDX as Linux uses it: interrupt on the next completion after what was seen.
    pub fn arm_used_event(&self, mem: &GuestMemoryMmap) {
        self.set_used_event(mem, self.last_used);
    }

    /// How many used elements have not been popped yet.
    pub fn pending_used(&self, mem: &GuestMemoryMmap) -> u16 {
        self.used_idx(mem).wrapping_sub(self.last_used)
    }
}

/// A guest virtio driver talking to a transport through its registers.
pub struct Driver {
    pub transport: MmioTransport,
    pub mem: GuestMemoryMmap,
    pub irq: EventFd,
    pub queues: Vec<DriverQueue>,
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl Driver {
    /// Writes a virtio-blk request header (type, reserved, sector) at `at`.
    pub fn write_blk_header(&self, at: u64, request_type: u32, sector: u64) {
        self.mem.write_obj(request_type, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    pub fn new(device: Box<dyn VirtioDevice>) -> Driver {
        Driver::with_memory(device, guest_memory())
    }

    /// A driver over caller-made guest memory (e.g. several regions).
    pub fn with_memory(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Driver {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(device, mem.clone(), irq.try_clone().unwrap()).unwrap();
        Driver {
            transport,
            mem,
            irq,
            queues: Vec::new(),
        }
    }

    pub fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write32(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn read_config(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.transport.read(REG_CONFIG + offset, &mut data);
        data
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(REG_DEVICE_FEATURES);
        self.write32(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read32(REG_DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    pub fn status(&mut self) -> u32 {
        self.read32(REG_STATUS)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns whether the device
    /// kept FEATURES_OK set.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write32(REG_STATUS, 0);
        self.write32(REG_STATUS, S_ACKNOWLEDGE);
        self.write32(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.write32(REG_DRIVER_FEATURES_SEL, 0);
        self.write32(REG_DRIVER_FEATURES, features as u32);
        self.write32(REG_DRIVER_FEATURES_SEL, 1);
        self.write32(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.write32(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        self.status() & S_FEATURES_OK != 0
    }

    /// Programs queue `index` with `size` entries at the addresses of a fresh `DriverQueue`.
    pub fn setup_queue(&mut self, index: usize, size: u16) {
        let q = DriverQueue::new(index, size);
        self.write32(REG_QUEUE_SEL, index as u32);
        assert!(self.read32(REG_QUEUE_NUM_MAX) >= u32::from(size));
        self.write32(REG_QUEUE_NUM, u32::from(size));
        self.write32(REG_QUEUE_DESC_LOW, q.desc as u32);
        self.write32(REG_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        self.write32(REG_QUEUE_DRIVER_LOW, q.avail as u32);
        self.write32(REG_QUEUE_DRIVER_HIGH, (q.avail >> 32) as u32);
        self.write32(REG_QUEUE_DEVICE_LOW, q.used as u32);
        self.write32(REG_QUEUE_DEVICE_HIGH, (q.used >> 32) as u32);
        self.write32(REG_QUEUE_READY, 1);
        // Clear the rings a previous run may have left behind.
        for addr in [q.avail, q.used] {
            self.mem.write_obj(0u32, GuestAddress(addr)).unwrap();
        }
        if self.queues.len() <= index {
            self.queues
                .resize_with(index + 1, || DriverQueue::new(0, 1));
        }
        self.queues[index] = q;
    }

    /// The whole virtio init sequence with `features` (minus what the device does not offer),
    /// `num_queues` queues of `size`, and DRIVER_OK.
    pub fn init(&mut self, features: u64, num_queues: usize, size: u16) {
        let offered = self.device_features();
        assert!(self.negotiate(features & offered), "FEATURES_OK refused");
        self.queues.clear();
        for index in 0..num_queues {
            self.setup_queue(index, size);
        }
        self.write32(
            REG_STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert_eq!(self.status() & S_DRIVER_OK, S_DRIVER_OK);
    }

    /// Guest kick: a QueueNotify write, then the event loop noticing the EventFd.
    pub fn kick(&mut self, index: usize) {
        self.write32(REG_QUEUE_NOTIFY, index as u32);
        self.transport.handle_queue_event(index);
    }

    /// Whether the irq EventFd fired since the last call (and clears it).
    pub fn take_irq(&mut self) -> bool {
        self.irq.read().is_ok()
    }

    pub fn add_chain(&mut self, queue: usize, bufs: &[Buf]) -> u16 {
        self.queues[queue].add_chain(&self.mem, bufs)
    }

    pub fn pop_used(&mut self, queue: usize) -> Option<(u32, u32)> {
        self.queues[queue].pop_used(&self.mem)
    }

    /// Serves the device's own event sources (e.g. io_uring completions) that are ready
    /// within `timeout`, as the event loop would; returns whether any was.
    pub fn serve_sources(&mut self, timeout: Duration) -> bool {
        let sources = self.transport.event_sources();
        if sources.is_empty() {
            return false;
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of fds.len() pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready <= 0 {
            return false;
        }
        for (index, fd) in fds.iter().enumerate() {
            if fd.revents != 0 {
                self.transport.handle_event_source(index);
            }
        }
        true
    }

    /// The next used element of `queue`, serving the device's event sources for up to 5 s
    /// while there is none (asynchronous engines complete after the kick returns).
    pub fn wait_used(&mut self, queue: usize) -> Option<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(used) = self.pop_used(queue) {
                return Some(used);
            }
            let now = Instant::now();
            if now >= deadline || self.transport.event_sources().is_empty() {
                return None;
            }
            self.serve_sources((deadline - now).min(Duration::from_millis(100)));
        }
    }
}

/// A host tap interface created for a test; deleted again on drop.
pub struct TestTap {
    pub name: String,
    pub ifindex: i32,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> IfReq {
    let mut ifr = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    ifr.name[..name.len()].copy_from_slice(name.as_bytes());
    ifr
}

fn tun_attach(name: &str) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut ifr = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    // SAFETY: ifr is a valid ifreq-sized struct for the duration of the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn set_persist(file: &std::fs::File, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(on),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TestTap {
    /// Creates a persistent tap `name`, disables IPv6 on it (so the host sends no
    /// unsolicited frames) and brings it up.
    pub fn create(name: &str) -> io::Result<TestTap> {
        let file = tun_attach(name)?;
        set_persist(&file, true)?;
        drop(file);
        // From here on, drop deletes the interface again if a later step fails.
        let mut tap = TestTap {
            name: name.to_string(),
            ifindex: 0,
        };
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // SAFETY: plain socket(2) call.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sock is a fresh fd we own.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = ifreq(name, libc::IFF_UP | libc::IFF_RUNNING);
        // SAFETY: valid ifreq for SIOCSIFFLAGS.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: cname is a valid C string.
        tap.ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        Ok(tap)
    }

    /// A unique name for this process and `tag` (at most 15 bytes).
    pub fn unique_name(tag: &str) -> String {
        format!("vt{}{}", std::process::id() % 1_000_000, tag)
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        // Re-attach and clear persistence: the interface disappears when this fd closes.
        if let Ok(file) = tun_attach(&self.name) {
            let _ = set_persist(&file, false);
        }
    }
}

/// An AF_PACKET socket bound to an interface: the "host side" of a tap.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn bind(ifindex: i32) -> io::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: addr is a valid sockaddr_ll of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Transmits `frame` out of the interface (the tap reads it).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of the given length.
        let ret = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Discards every frame queued on the socket.
    pub fn drain(&self) {
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is a valid writable buffer of its length.
        while unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } > 0
        {
        }
    }

    /// Waits up to `timeout` for a frame accepted by `matches`; ignores other frames.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        matches: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                let frame = &buf[..n as usize];
                if matches(frame) {
                    return Some(frame.to_vec());
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            wait_readable(self.fd.as_raw_fd(), deadline - now);
        }
    }
}

/// poll(2) for readability, up to `timeout`.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd array of length 1.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as i32) };
    ret > 0
}

/// An Ethernet frame with the local experimental ethertype 0x88b5 and `payload`.
pub fn test_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(payload);
    // Pad to the Ethernet minimum so no one adds bytes behind our back.
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}
