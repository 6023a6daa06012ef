//! Shared pieces of Volt's fuzz targets: a reader that turns fuzz input into operations, and
//! a hostile "guest driver" that programs a virtio-mmio transport with them.

use devices::virtio::{MmioTransport, VirtioDevice};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Takes values off the front of the fuzz input; zeros once it runs out.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let len = len.min(self.data.len());
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Guest memory of the virtio targets: small, so random addresses often land inside.
pub const GUEST_MEM: usize = 1 << 20;
/// Where [`VirtioGuest::setup`] puts each queue's rings (queue `i` at `RINGS + i * 0x4000`).
pub const RINGS: u64 = 0x1_0000;

/// A guest driving a virtio-mmio transport with operations taken from the fuzz input.
pub struct VirtioGuest {
    pub transport: MmioTransport,
    pub mem: GuestMemoryMmap,
    _irq: EventFd,
    queue_sizes: Vec<u16>,
}

impl VirtioGuest {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(device, mem.clone(), irq.try_clone().unwrap()).unwrap();
        VirtioGuest {
            transport,
            mem,
            _irq: irq,
            queue_sizes: Vec::new(),
        }
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// A well-behaved initialisation with fuzz-chosen features and queue sizes, so the fuzzer
    /// reaches the activated device quickly.
    fn setup(&mut self, input: &mut Input) {
        let features = input.u64() | (1 << 32); // VIRTIO_F_VERSION_1
        self.write32(0x70, 0);
        self.write32(0x70, 1);
        self.write32(0x70, 3);
        self.write32(0x24, 0);
        self.write32(0x20, features as u32);
        self.write32(0x24, 1);
        self.write32(0x20, (features >> 32) as u32);
        self.write32(0x70, 11);
        self.queue_sizes.clear();
        for queue in 0..self.transport.queue_events().len() {
            let size = 1u16 << (input.u8() % 9); // 1..=256
            let base = RINGS + queue as u64 * 0x4000;
            self.write32(0x30, queue as u32);
            self.write32(0x38, u32::from(size));
            for (reg, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
                self.write32(reg, addr as u32);
                self.write32(reg + 4, (addr >> 32) as u32);
            }
            self.write32(0x44, 1);
            self.queue_sizes.push(size);
        }
        self.write32(0x70, 15);
    }

    /// Writes descriptor `index` of queue `queue` as set up by [`VirtioGuest::setup`].
    fn descriptor(&mut self, input: &mut Input) {
        let queue = usize::from(input.u8()) % self.queue_sizes.len().max(1);
        let size = self.queue_sizes.get(queue).copied().unwrap_or(1);
        let index = input.u16() % size;
        // Mostly inside guest memory, sometimes anywhere.
        let addr = match input.u8() {
            0..=239 => u64::from(input.u32()) % GUEST_MEM as u64,
            _ => input.u64(),
        };
        let len = match input.u8() {
            0..=239 => input.u16().into(),
            _ => input.u32(),
        };
        let flags = input.u16() & 0x7;
        let next = input.u16() % size.max(1);
        let at = GuestAddress(RINGS + queue as u64 * 0x4000 + u64::from(index) * 16);
        let _ = self.mem.write_obj(addr, at);
        let _ = self.mem.write_obj(len, GuestAddress(at.0 + 8));
        let _ = self.mem.write_obj(flags, GuestAddress(at.0 + 12));
        let _ = self.mem.write_obj(next, GuestAddress(at.0 + 14));
    }

    /// Publishes `head` in the avail ring of a queue and bumps (or sets) its index.
    fn publish(&mut self, input: &mut Input) {
        let queue = usize::from(input.u8()) % self.queue_sizes.len().max(1);
        let size = self.queue_sizes.get(queue).copied().unwrap_or(1);
        let avail = RINGS + queue as u64 * 0x4000 + 0x1000;
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
        let head = input.u16() % size;
        let _ = self
            .mem
            .write_obj(head, GuestAddress(avail + 4 + u64::from(idx % size) * 2));
        let new_idx = match input.u8() {
            0..=223 => idx.wrapping_add(1),
            _ => input.u16(), // a hostile index
        };
        let _ = self.mem.write_obj(new_idx, GuestAddress(avail + 2));
    }

    /// Runs one operation; returns `false` when the input is used up.
    pub fn step(&mut self, input: &mut Input) -> bool {
        if input.is_empty() {
            return false;
        }
        match input.u8() % 10 {
            0 => self.setup(input),
            1 => {
                let offset = u64::from(input.u16() % 0x200);
                let len = [1, 2, 4, 8][usize::from(input.u8() % 4)];
                let data = input.bytes(len).to_vec();
                self.transport.write(offset, &data);
            }
            2 => {
                let offset = u64::from(input.u16() % 0x200);
                let mut data = vec![0u8; [1, 2, 4, 8][usize::from(input.u8() % 4)]];
                self.transport.read(offset, &mut data);
            }
            3 => self.descriptor(input),
            4 => self.publish(input),
            5 => {
                let queue = usize::from(input.u8()) % (self.transport.queue_events().len() + 1);
                self.transport.handle_queue_event(queue);
            }
            6 => {
                let addr = u64::from(input.u32()) % GUEST_MEM as u64;
                let len = usize::from(input.u8());
                let data = input.bytes(len).to_vec();
                let _ = self.mem.write_slice(&data, GuestAddress(addr));
            }
            7 => {
                let sources = self.transport.event_sources().len();
                if sources > 0 {
                    self.transport
                        .handle_event_source(usize::from(input.u8()) % sources);
                }
            }
            8 => {
                // QueueNotify through the register, as without an ioeventfd.
                self.write32(0x50, u32::from(input.u8() % 4));
                let queue = usize::from(input.u8()) % self.transport.queue_events().len().max(1);
                self.transport.handle_queue_event(queue);
            }
            _ => self.write32(0x64, input.u32()), // InterruptACK
        }
        true
    }
}
