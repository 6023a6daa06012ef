//! virtio-block backed by a raw disk image file (or host block device).
//!
//! Requests are checked once ([`request`]: header, directions, sector range, every buffer in
//! guest memory) and then run by one of two engines: io_uring ([`uring`]: many requests in
//! flight, completions on an eventfd the loop watches) or the synchronous fallback ([`sync`]:
//! preadv/pwritev on the loop thread). Both move data straight between the image and guest
//! memory.

mod request;
mod sync;
mod uring;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use log::warn;
use thiserror::Error;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    next_chain, QueueContext, VirtioCommon, VirtioDevice, QUEUE_MAX_SIZE, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use request::{DiskInfo, IoOp, IoRequest, Parsed};
use uring::UringEngine;

/// Virtio-block always counts in 512-byte sectors, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Requests one disk may have in flight on io_uring (the ring size). Half the queue size: it
/// bounds the kernel-side work a guest can start, and a driver that fills the whole queue
/// gets the rest served as completions free room.
pub const URING_IN_FLIGHT: u32 = 128;

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
    /// `engine=uring` was asked for and the kernel cannot set up a ring.
    #[error("cannot set up io_uring for disk image {} (use engine=sync): {source}", path.display())]
    Uring {
        /// The image path as given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
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

/// Which engine serves a disk's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlockEngine {
    /// io_uring where the kernel offers it, else the synchronous engine (with a log line).
    #[default]
    Auto,
    /// Synchronous preadv/pwritev on the event-loop thread, one request at a time.
    Sync,
    /// io_uring, many requests in flight; an error if the kernel cannot set up a ring.
    Uring,
}

impl FromStr for BlockEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BlockEngine::Auto),
            "sync" => Ok(BlockEngine::Sync),
            "uring" | "io_uring" => Ok(BlockEngine::Uring),
            other => Err(format!(
                "unknown block engine '{other}' (auto, sync or uring)"
            )),
        }
    }
}

impl fmt::Display for BlockEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockEngine::Auto => "auto",
            BlockEngine::Sync => "sync",
            BlockEngine::Uring => "uring",
        })
    }
}

enum Engine {
    Sync,
    Uring {
        ring: Box<UringEngine>,
        /// The queue had requests left when the ring was full: serve it again once
        /// completions free room (its kick was already consumed).
        throttled: bool,
    },
}

/// A virtio-block device.
pub struct Block {
    /// First field, so it is dropped (and drains the requests in flight) before the file.
    engine: Engine,
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    disk_id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    common: VirtioCommon,
    guest_errors: LogLimit,
}

impl Block {
    /// Opens the disk image at `path`, read-write unless `read_only`, served by the
    /// synchronous engine.
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        Block::with_engine(path, read_only, BlockEngine::Sync)
    }

    /// Opens the disk image at `path` with the chosen engine. [`BlockEngine::Auto`] falls back
    /// to the synchronous engine, with a log line, when io_uring cannot be set up here;
    /// [`BlockEngine::Uring`] is an error then.
    pub fn with_engine(
        path: &Path,
        read_only: bool,
        engine: BlockEngine,
    ) -> Result<Block, BlockError> {
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
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        Block::from_file(file, path, read_only, engine)
    }

    /// Serves an already open image (`path` names it in messages). A file opened read-only
    /// but served read-write makes every write fail with an I/O error status.
    pub fn from_file(
        mut file: File,
        path: &Path,
        read_only: bool,
        engine: BlockEngine,
    ) -> Result<Block, BlockError> {
        let metadata = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
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

        let engine = match engine {
            BlockEngine::Sync => Engine::Sync,
            BlockEngine::Uring => Engine::Uring {
                ring: Box::new(UringEngine::new(URING_IN_FLIGHT).map_err(|source| {
                    BlockError::Uring {
                        path: path.to_path_buf(),
                        source,
                    }
                })?),
                throttled: false,
            },
            BlockEngine::Auto => match UringEngine::new(URING_IN_FLIGHT) {
                Ok(ring) => Engine::Uring {
                    ring: Box::new(ring),
                    throttled: false,
                },
                Err(e) => {
                    warn!(
                        "virtio-block: io_uring is unavailable here ({e}); {} uses the synchronous engine",
                        path.display()
                    );
                    Engine::Sync
                }
            },
        };

        Ok(Block {
            file,
            read_only,
            capacity_sectors,
            disk_id: disk_id(&metadata),
            common: VirtioCommon::new(VIRTIO_ID_BLOCK, avail_features, 1)
                .with_config(&build_config(capacity_sectors)),
            engine,
            guest_errors: LogLimit::default(),
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

    /// The engine serving this disk ([`BlockEngine::Sync`] or [`BlockEngine::Uring`], never
    /// `Auto`).
    pub fn engine(&self) -> BlockEngine {
        match self.engine {
            Engine::Sync => BlockEngine::Sync,
            Engine::Uring { .. } => BlockEngine::Uring,
        }
    }

    /// Checks a chain: requests that need no disk (errors, GET_ID) are answered at once and
    /// give `None`; disk requests are handed back for the engine.
    fn triage(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Option<IoRequest> {
        let disk = DiskInfo {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            disk_id: &self.disk_id,
        };
        match request::parse(chain, mem, &disk) {
            Parsed::Io(request) => Some(request),
            Parsed::NoStatus { head, why } => {
                self.guest_errors.warn(&why);
                add_used(queue, mem, head, 0);
                None
            }
            Parsed::Done {
                head,
                status_addr,
                status,
                used_len,
                why,
            } => {
                if let Some(why) = why {
                    self.guest_errors.warn(&why);
                }
                finish(queue, mem, head, status_addr, status, used_len);
                None
            }
        }
    }

    /// Writes the status of a finished disk request and returns it to the driver.
    fn complete(
        guest_errors: &mut LogLimit,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        request: &IoRequest,
        result: io::Result<()>,
    ) {
        let (status, used_len) = match result {
            Ok(()) => {
                let data_in = match request.op {
                    IoOp::Read { .. } => request.len,
                    _ => 0,
                };
                // The chain length fits u32, so its data length does too.
                (VIRTIO_BLK_S_OK, data_in as u32 + 1)
            }
            Err(e) => {
                guest_errors.warn(&format!("{:?} failed: {e}", request.op));
                (VIRTIO_BLK_S_IOERR, 1)
            }
        };
        finish(
            queue,
            mem,
            request.head,
            request.status_addr,
            status as u8,
            used_len,
        );
    }

    /// Serves the queue on the synchronous engine.
    fn process_sync(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = next_chain(queue, mem, "virtio-block") {
            used_any = true;
            if let Some(mut request) = self.triage(chain, queue, mem) {
                let result = sync::execute(&self.file, &mut request);
                Block::complete(&mut self.guest_errors, queue, mem, &request, result);
            }
        }
        used_any
    }

    /// Serves the queue on io_uring: queue as many requests as the ring takes, submit them
    /// in one call, and return what already completed.
    fn process_uring(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        loop {
            let Engine::Uring { ring, throttled } = &mut self.engine else {
                return false;
            };
            if !ring.has_room() {
                *throttled = true;
                break;
            }
            *throttled = false;
            let Some(chain) = next_chain(queue, mem, "virtio-block") else {
                break;
            };
            let Some(request) = self.triage(chain, queue, mem) else {
                used_any = true;
                continue;
            };
            let Engine::Uring { ring, .. } = &mut self.engine else {
                return used_any;
            };
            if let Err(request) = ring.push(&self.file, request) {
                // Cannot happen with room checked above; answer rather than lose it.
                Block::complete(
                    &mut self.guest_errors,
                    queue,
                    mem,
                    &request,
                    Err(io::Error::other("io_uring submission queue full")),
                );
                used_any = true;
            }
        }
        // Page-cache hits often complete inside the submit call: return them now.
        used_any | self.reap_uring(queue, mem)
    }

    /// Returns every completed io_uring request to the driver.
    fn reap_uring(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let Engine::Uring { ring, .. } = &mut self.engine else {
            return false;
        };
        let guest_errors = &mut self.guest_errors;
        let mut used_any = false;
        ring.reap(|done| {
            Block::complete(guest_errors, queue, mem, &done.request, done.result);
            used_any = true;
        });
        used_any
    }
}

/// Writes `status` at `status_addr` and adds the chain to the used ring.
fn finish(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    status_addr: GuestAddress,
    status: u8,
    used_len: u32,
) {
    // The parser checked the status byte lies in guest memory.
    if let Err(e) = mem.write_obj(status, status_addr) {
        warn!("virtio-block: cannot write status byte: {e}");
    }
    add_used(queue, mem, head, used_len);
}

fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        warn!("virtio-block: cannot add used buffer: {e}");
    }
}

/// Rate limit for log lines the guest can trigger: at most 10 per 5 s, then one line saying
/// how many were suppressed.
#[derive(Default)]
struct LogLimit {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    const PER_WINDOW: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(5);

    fn warn(&mut self, message: &str) {
        let now = Instant::now();
        let expired = self
            .window_start
            .map_or(true, |start| now.duration_since(start) >= Self::WINDOW);
        if expired {
            if self.suppressed > 0 {
                warn!(
                    "virtio-block: {} more guest request errors not logged",
                    self.suppressed
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < Self::PER_WINDOW {
            self.in_window += 1;
            warn!("virtio-block: {message}");
        } else {
            self.suppressed += 1;
        }
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

// activate: the provided no-op (the engine is ready since the device was built).
impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let Some(queue) = ctx.queues.get_mut(index) else {
            return false;
        };
        match self.engine {
            Engine::Sync => self.process_sync(queue, ctx.mem),
            Engine::Uring { .. } => self.process_uring(queue, ctx.mem),
        }
    }

    fn event_sources(&self) -> Vec<RawFd> {
        match &self.engine {
            Engine::Sync => Vec::new(),
            Engine::Uring { ring, .. } => vec![ring.eventfd()],
        }
    }

    fn process_event_source(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let resume = match &mut self.engine {
            Engine::Uring { ring, throttled } if index == 0 => {
                ring.clear_event();
                *throttled
            }
            _ => return false,
        };
        let Some(queue) = ctx.queues.get_mut(0) else {
            return false;
        };
        let mut used_any = self.reap_uring(queue, ctx.mem);
        // Room was freed: serve what the driver queued while the ring was full.
        if resume {
            used_any |= self.process_uring(queue, ctx.mem);
        }
        used_any
    }

    fn quiesce(&mut self, ctx: &mut QueueContext) -> bool {
        let Engine::Uring { ring, .. } = &mut self.engine else {
            return false;
        };
        let Some(queue) = ctx.queues.get_mut(0) else {
            return false;
        };
        let (mem, guest_errors) = (ctx.mem, &mut self.guest_errors);
        let mut used_any = false;
        ring.complete_all(|done| {
            Block::complete(guest_errors, queue, mem, &done.request, done.result);
            used_any = true;
        });
        used_any
    }

    fn reset(&mut self) {
        // No request may write into guest memory after the driver reset the device.
        if let Engine::Uring { ring, throttled } = &mut self.engine {
            ring.drain();
            *throttled = false;
        }
    }
}
