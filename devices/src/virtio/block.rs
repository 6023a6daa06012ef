//! virtio-block backed by a raw disk image file (or host block device).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::warn;
use thiserror::Error;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    next_chain, read_config_bytes, ActivateError, QueueContext, VirtioDevice, QUEUE_MAX_SIZE,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Virtio-block always counts in 512-byte sectors, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Request header: type (u32), reserved (u32), sector (u64).
const REQUEST_HEADER_LEN: usize = 16;
/// Data is moved through a bounce buffer of at most this many bytes at a time, so a huge
/// request cannot make the VMM allocate unbounded memory.
const BOUNCE_CHUNK: usize = 128 * 1024;
const QUEUE_SIZES: [u16; 1] = [QUEUE_MAX_SIZE];

/// Why a disk image could not be opened.
#[derive(Debug, Error)]
pub enum BlockError {
    /// open(2) or stat(2) failed (missing file, no permission, ...).
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is a directory or some other non-disk file.
    #[error("disk image {} is not a regular file or block device", path.display())]
    NotADisk {
        /// The image path as given.
        path: PathBuf,
    },
    /// Seeking to the end to learn the size failed.
    #[error("cannot determine the size of disk image {}: {source}", path.display())]
    Size {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A virtio-block device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    disk_id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: Vec<u8>,
    avail_features: u64,
    bounce: Vec<u8>,
}

/// What a request asked for, after its header was parsed.
enum Outcome {
    Ok,
    IoErr,
    Unsupported,
}

impl Outcome {
    fn status_byte(&self) -> u8 {
        match self {
            Outcome::Ok => VIRTIO_BLK_S_OK as u8,
            Outcome::IoErr => VIRTIO_BLK_S_IOERR as u8,
            Outcome::Unsupported => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

impl Block {
    /// Opens the disk image at `path`, read-write unless `read_only`.
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(open_err)?;
        let file_type = metadata.file_type();
        if !(file_type.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&file_type)) {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // Seeking works for block devices too, where metadata().len() is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        let capacity_sectors = size / SECTOR_SIZE;
        if size % SECTOR_SIZE != 0 {
            warn!(
                "virtio-block: {} is not a multiple of 512 bytes; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }

        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }

        Ok(Block {
            file,
            read_only,
            capacity_sectors,
            disk_id: disk_id(&metadata),
            config: build_config(capacity_sectors),
            avail_features,
            bounce: vec![0; BOUNCE_CHUNK],
        })
    }

    /// Disk size in 512-byte sectors, as reported to the guest.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The 20-byte serial returned by GET_ID.
    pub fn disk_id(&self) -> &[u8; VIRTIO_BLK_ID_BYTES as usize] {
        &self.disk_id
    }

    /// Runs one request chain; returns the number of bytes written into guest buffers (the
    /// used-ring length), 0 when the chain has nowhere to put a status byte.
    fn execute(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let mut data_writer = match Writer::new(mem, chain.clone()) {
            Ok(writer) => writer,
            Err(e) => {
                warn!("virtio-block: request with unusable writable buffers dropped: {e}");
                return 0;
            }
        };
        let writable = data_writer.available_bytes();
        if writable == 0 {
            warn!("virtio-block: request without a status byte dropped");
            return 0;
        }
        // The status byte is the last writable byte of the chain.
        let Ok(mut status_writer) = data_writer.split_at(writable - 1) else {
            return 0;
        };
        let outcome = match Reader::new(mem, chain) {
            Ok(reader) => self.handle(reader, &mut data_writer),
            Err(e) => {
                warn!("virtio-block: request with unusable readable buffers: {e}");
                Outcome::IoErr
            }
        };
        if let Err(e) = status_writer.write_all(&[outcome.status_byte()]) {
            warn!("virtio-block: cannot write status byte: {e}");
            return 0;
        }
        // data_writer.bytes_written() is at most the chain length, which fits u32.
        (data_writer.bytes_written() + 1) as u32
    }

    fn handle(&mut self, mut reader: Reader, data_writer: &mut Writer) -> Outcome {
        let mut header = [0u8; REQUEST_HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            warn!("virtio-block: request header shorter than 16 bytes");
            return Outcome::IoErr;
        }
        let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        match request_type {
            VIRTIO_BLK_T_IN => {
                if reader.available_bytes() != 0 {
                    warn!("virtio-block: read request with device-readable data buffers");
                    return Outcome::IoErr;
                }
                let len = data_writer.available_bytes();
                let Some(offset) = self.checked_offset(sector, len) else {
                    return Outcome::IoErr;
                };
                self.read_to_guest(offset, len, data_writer)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Outcome::IoErr;
                }
                if data_writer.available_bytes() != 0 {
                    warn!("virtio-block: write request with device-writable data buffers");
                    return Outcome::IoErr;
                }
                let len = reader.available_bytes();
                let Some(offset) = self.checked_offset(sector, len) else {
                    return Outcome::IoErr;
                };
                self.write_from_guest(offset, len, &mut reader)
            }
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => Outcome::Ok,
                Err(e) => {
                    warn!("virtio-block: fdatasync failed: {e}");
                    Outcome::IoErr
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let len = data_writer.available_bytes().min(self.disk_id.len());
                match data_writer.write_all(&self.disk_id[..len]) {
                    Ok(()) => Outcome::Ok,
                    Err(_) => Outcome::IoErr,
                }
            }
            other => {
                warn!("virtio-block: unsupported request type {other}");
                Outcome::Unsupported
            }
        }
    }

    /// Byte offset of `sector`, if `len` bytes from there are whole sectors inside the disk.
    fn checked_offset(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        let in_range = len % SECTOR_SIZE == 0 && end <= self.capacity_sectors * SECTOR_SIZE;
        if !in_range {
            warn!("virtio-block: request for sector {sector}, {len} bytes is outside the disk or not sector-sized");
            return None;
        }
        Some(offset)
    }

    fn read_to_guest(&mut self, mut offset: u64, mut len: usize, writer: &mut Writer) -> Outcome {
        while len > 0 {
            let chunk = len.min(self.bounce.len());
            let buf = &mut self.bounce[..chunk];
            if let Err(e) = self.file.read_exact_at(buf, offset) {
                warn!("virtio-block: read at {offset} failed: {e}");
                return Outcome::IoErr;
            }
            if writer.write_all(buf).is_err() {
                return Outcome::IoErr;
            }
            offset += chunk as u64;
            len -= chunk;
        }
        Outcome::Ok
    }

    fn write_from_guest(
        &mut self,
        mut offset: u64,
        mut len: usize,
        reader: &mut Reader,
    ) -> Outcome {
        while len > 0 {
            let chunk = len.min(self.bounce.len());
            let buf = &mut self.bounce[..chunk];
            if reader.read_exact(buf).is_err() {
                return Outcome::IoErr;
            }
            if let Err(e) = self.file.write_all_at(buf, offset) {
                warn!("virtio-block: write at {offset} failed: {e}");
                return Outcome::IoErr;
            }
            offset += chunk as u64;
            len -= chunk;
        }
        Outcome::Ok
    }
}

/// virtio_blk_config: capacity @0, size_max @8, seg_max @12, geometry @16, blk_size @20.
fn build_config(capacity_sectors: u64) -> Vec<u8> {
    let mut config = vec![0u8; 24];
    config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
    // One descriptor each is taken by the header and the status byte.
    let seg_max = u32::from(QUEUE_MAX_SIZE) - 2;
    config[12..16].copy_from_slice(&seg_max.to_le_bytes());
    config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    config
}

/// A stable serial for GET_ID, derived from the image's device and inode numbers.
fn disk_id(metadata: &std::fs::Metadata) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let text = format!("volt{:x}-{:x}", metadata.dev(), metadata.ino());
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let len = text.len().min(id.len());
    id[..len].copy_from_slice(&text.as_bytes()[..len]);
    id
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        _acked_features: u64,
        _ctx: &mut QueueContext,
    ) -> Result<(), ActivateError> {
        // The transport checked the queue; requests are served synchronously, nothing to start.
        Ok(())
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let Some(queue) = ctx.queues.get_mut(index) else {
            return false;
        };
        let mem = ctx.mem;
        let mut used_any = false;
        while let Some(chain) = next_chain(queue, mem, "virtio-block") {
            let head = chain.head_index();
            let len = self.execute(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                warn!("virtio-block: cannot add used buffer: {e}");
            }
            used_any = true;
        }
        used_any
    }

    fn reset(&mut self) {
        // Requests are executed synchronously, so nothing is in flight.
    }
}
