//! Turning a virtio-block descriptor chain into a checked request, shared by both engines.
//!
//! Everything the guest controls is checked here, before any I/O starts: the 16-byte header,
//! the direction of each buffer, the sector range against the disk size, and that every data
//! buffer lies in guest memory. A request that passes becomes an [`IoRequest`] whose data is a
//! list of host iovecs pointing straight into guest memory (no bounce buffer).

use virtio_bindings::virtio_blk::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::SECTOR_SIZE;

/// Request header: type (u32), reserved (u32), sector (u64).
const REQUEST_HEADER_LEN: usize = 16;
/// The kernel's limit on iovecs per preadv/pwritev or io_uring readv/writev.
pub(super) const MAX_IOVECS: usize = 1024;

/// A guest-physical byte range of one descriptor (or part of one).
#[derive(Clone, Copy, Debug)]
struct Range {
    addr: GuestAddress,
    len: usize,
}

/// Host iovecs into guest memory.
///
/// The pointers stay valid as long as the guest memory mapping they were taken from, which
/// the transport keeps for the device's whole life; engines finish (or drain) every request
/// before the device goes away.
pub(super) struct Iovecs(pub Vec<libc::iovec>);

// SAFETY: the iovecs only point into guest memory (mapped for the life of the VM, shared with
// the guest anyway) and are only used by the event-loop thread that owns the device; moving
// them between threads with the device (built on main, run on the loop) is sound.
unsafe impl Send for Iovecs {}

/// The disk operation of a checked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IoOp {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
}

/// A request that passed every check and needs the disk.
pub(super) struct IoRequest {
    pub head: u16,
    pub op: IoOp,
    /// Where the data goes (read) or comes from (write); empty for a flush.
    pub iovecs: Iovecs,
    /// Total bytes of `iovecs`.
    pub len: usize,
    pub status_addr: GuestAddress,
}

/// What to do with one chain.
pub(super) enum Parsed {
    /// The chain has no byte the status can go to: it is returned with used length 0.
    NoStatus { head: u16, why: String },
    /// Answered without I/O (bad requests, GET_ID): `status` goes to `status_addr`.
    Done {
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        used_len: u32,
        /// A guest error worth a (rate-limited) log line.
        why: Option<String>,
    },
    /// Needs the disk.
    Io(IoRequest),
}

/// What the parser needs to know about the disk.
pub(super) struct DiskInfo<'a> {
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub disk_id: &'a [u8],
}

/// Checks one chain and turns it into a [`Parsed`].
pub(super) fn parse(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    disk: &DiskInfo,
) -> Parsed {
    let head = chain.head_index();
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for desc in chain {
        let range = Range {
            addr: desc.addr(),
            len: desc.len() as usize,
        };
        if desc.is_write_only() {
            writable.push(range);
        } else {
            readable.push(range);
        }
    }
    let writable_len: usize = writable.iter().map(|r| r.len).sum();
    // The status byte is the last writable byte of the chain.
    let Some(status_addr) = writable_len
        .checked_sub(1)
        .and_then(|last| byte_at(&writable, last))
        .filter(|addr| mem.check_range(*addr, 1))
    else {
        return Parsed::NoStatus {
            head,
            why: "request without a usable status byte dropped".into(),
        };
    };
    let data_in = sub_ranges(&writable, 0, writable_len - 1);
    let data_in_len = writable_len - 1;
    let done = |status: u32, why: Option<String>| Parsed::Done {
        head,
        status_addr,
        status: status as u8,
        used_len: 1,
        why,
    };
    let ioerr = |why: String| done(VIRTIO_BLK_S_IOERR, Some(why));

    let mut header = [0u8; REQUEST_HEADER_LEN];
    if !read_ranges(mem, &readable, &mut header) {
        return ioerr("request header shorter than 16 bytes or outside guest memory".into());
    }
    let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let readable_len: usize = readable.iter().map(|r| r.len).sum();
    let data_out = sub_ranges(
        &readable,
        REQUEST_HEADER_LEN,
        readable_len - REQUEST_HEADER_LEN,
    );
    let data_out_len = readable_len - REQUEST_HEADER_LEN;

    let (op, ranges, len) = match request_type {
        VIRTIO_BLK_T_IN => {
            if data_out_len != 0 {
                return ioerr("read request with device-readable data buffers".into());
            }
            let Some(offset) = checked_offset(disk, sector, data_in_len) else {
                return ioerr(format!(
                    "read of {data_in_len} bytes at sector {sector} is outside the disk or not sector-sized"
                ));
            };
            (IoOp::Read { offset }, data_in, data_in_len)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return done(VIRTIO_BLK_S_IOERR, None);
            }
            if data_in_len != 0 {
                return ioerr("write request with device-writable data buffers".into());
            }
            let Some(offset) = checked_offset(disk, sector, data_out_len) else {
                return ioerr(format!(
                    "write of {data_out_len} bytes at sector {sector} is outside the disk or not sector-sized"
                ));
            };
            (IoOp::Write { offset }, data_out, data_out_len)
        }
        VIRTIO_BLK_T_FLUSH => (IoOp::Flush, Vec::new(), 0),
        VIRTIO_BLK_T_GET_ID => {
            let len = data_in_len.min(disk.disk_id.len());
            if !write_ranges(mem, &data_in, &disk.disk_id[..len]) {
                return ioerr("GET_ID buffer outside guest memory".into());
            }
            return Parsed::Done {
                head,
                status_addr,
                status: VIRTIO_BLK_S_OK as u8,
                used_len: len as u32 + 1,
                why: None,
            };
        }
        other => {
            return done(
                VIRTIO_BLK_S_UNSUPP,
                Some(format!("unsupported request type {other}")),
            )
        }
    };
    let Some(iovecs) = host_iovecs(mem, &ranges) else {
        return ioerr(format!(
            "{op:?}: data buffers outside guest memory or more than {MAX_IOVECS} pieces"
        ));
    };
    Parsed::Io(IoRequest {
        head,
        op,
        iovecs: Iovecs(iovecs),
        len,
        status_addr,
    })
}

/// Byte offset of `sector`, if `len` bytes from there are whole sectors inside the disk.
fn checked_offset(disk: &DiskInfo, sector: u64, len: usize) -> Option<u64> {
    let len = len as u64;
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (len % SECTOR_SIZE == 0 && end <= disk.capacity_sectors * SECTOR_SIZE).then_some(offset)
}

/// The guest address of byte `index` of the concatenated ranges.
fn byte_at(ranges: &[Range], mut index: usize) -> Option<GuestAddress> {
    for range in ranges {
        if index < range.len {
            return range.addr.0.checked_add(index as u64).map(GuestAddress);
        }
        index -= range.len;
    }
    None
}

/// The part `[skip, skip + take)` of the concatenated ranges, as ranges.
fn sub_ranges(ranges: &[Range], mut skip: usize, mut take: usize) -> Vec<Range> {
    let mut out = Vec::new();
    for range in ranges {
        if take == 0 {
            break;
        }
        if skip >= range.len {
            skip -= range.len;
            continue;
        }
        let len = (range.len - skip).min(take);
        // An address that overflows is left as u64::MAX: it fails the memory check later.
        let addr = range.addr.0.saturating_add(skip as u64);
        out.push(Range {
            addr: GuestAddress(addr),
            len,
        });
        take -= len;
        skip = 0;
    }
    out
}

/// Fills `buf` from the start of the ranges; false if they are too short or not in memory.
fn read_ranges(mem: &GuestMemoryMmap, ranges: &[Range], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for range in sub_ranges(ranges, 0, buf.len()) {
        if mem
            .read_slice(&mut buf[done..done + range.len], range.addr)
            .is_err()
        {
            return false;
        }
        done += range.len;
    }
    done == buf.len()
}

/// Writes `bytes` to the start of the ranges (which must be long enough).
fn write_ranges(mem: &GuestMemoryMmap, ranges: &[Range], bytes: &[u8]) -> bool {
    let mut done = 0;
    for range in sub_ranges(ranges, 0, bytes.len()) {
        if mem
            .write_slice(&bytes[done..done + range.len], range.addr)
            .is_err()
        {
            return false;
        }
        done += range.len;
    }
    done == bytes.len()
}

/// Host iovecs for the ranges, split where guest memory regions end; `None` if any byte is
/// outside guest memory or there would be more than [`MAX_IOVECS`].
fn host_iovecs(mem: &GuestMemoryMmap, ranges: &[Range]) -> Option<Vec<libc::iovec>> {
    let mut iovecs = Vec::with_capacity(ranges.len());
    for range in ranges {
        if range.len == 0 {
            continue;
        }
        let mut covered = 0;
        for slice in GuestMemoryBackend::get_slices(mem, range.addr, range.len) {
            let slice = slice.ok()?;
            covered += slice.len();
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        if covered != range.len || iovecs.len() > MAX_IOVECS {
            return None;
        }
    }
    Some(iovecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(addr: u64, len: usize) -> Range {
        Range {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn sub_ranges_cut_across_descriptors() {
        let ranges = [r(0x1000, 10), r(0x2000, 6), r(0x3000, 100)];
        let cut = sub_ranges(&ranges, 12, 20);
        let got: Vec<(u64, usize)> = cut.iter().map(|r| (r.addr.0, r.len)).collect();
        assert_eq!(got, vec![(0x2002, 4), (0x3000, 16)]);
        assert!(sub_ranges(&ranges, 116, 5).is_empty());
        assert_eq!(byte_at(&ranges, 15).unwrap().0, 0x2005);
        assert_eq!(byte_at(&ranges, 115).unwrap().0, 0x3063);
        assert!(byte_at(&ranges, 116).is_none());
    }

    #[test]
    fn iovecs_refuse_memory_outside_the_guest_and_split_at_region_ends() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap();
        let iovecs = host_iovecs(&mem, &[r(0xff00, 0x200)]).unwrap();
        assert_eq!(iovecs.len(), 2);
        assert_eq!(iovecs[0].iov_len + iovecs[1].iov_len, 0x200);
        assert!(host_iovecs(&mem, &[r(0x1ff00, 0x200)]).is_none());
        assert!(host_iovecs(&mem, &[r(u64::MAX - 4, 0x10)]).is_none());
        let many: Vec<Range> = (0..MAX_IOVECS as u64 + 1).map(|i| r(i * 16, 8)).collect();
        assert!(host_iovecs(&mem, &many).is_none());
    }
}
