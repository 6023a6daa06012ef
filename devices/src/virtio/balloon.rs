//! virtio-balloon (virtio 1.2 §5.5): inflate/deflate queues, memory statistics, and free page
//! reporting, so that memory the guest no longer uses goes back to the host.
//!
//! Queues, in the order Linux sets them up (absent ones take no index): inflateq, deflateq,
//! statsq (with `VIRTIO_BALLOON_F_STATS_VQ`), reporting_vq (with `VIRTIO_BALLOON_F_REPORTING`).
//! `VIRTIO_BALLOON_F_FREE_PAGE_HINT` and `VIRTIO_BALLOON_F_PAGE_POISON` are not offered.
//!
//! Releasing pages is `madvise(MADV_DONTNEED)` on the host mapping of guest RAM (private
//! anonymous memory: the host frees the pages, a later guest access faults in a zero page).
//! Every page frame number and reported range is checked first: it must be page-aligned and lie
//! wholly inside one guest RAM region, and it must not cover any virtqueue ring of this device,
//! a buffer of the request itself, or the statistics buffer the device holds. Anything else is
//! refused and counted; nothing outside guest RAM is ever released. A request's contents are
//! read completely, then its pages are released, and only then is its descriptor returned to
//! the driver. The other devices complete their requests synchronously on the same loop
//! thread, so no device holds a guest buffer while the balloon releases pages.

use std::io;
use std::ops::Range;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::timer::DeviceTimer;
use super::{
    has_feature, log_allowed, next_chain, read_config_bytes, ActivateError, QueueContext,
    VirtioCommon, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The host should be told before a page is deflated (not offered: pages need no notice).
#[allow(dead_code)]
const F_MUST_TELL_HOST: u32 = 0;
/// A statistics virtqueue is present.
const F_STATS_VQ: u32 = 1;
/// The guest deflates the balloon when it runs out of memory.
const F_DEFLATE_ON_OOM: u32 = 2;
/// Free page reporting virtqueue.
const F_REPORTING: u32 = 5;

/// The balloon always counts in 4 KiB pages (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const BALLOON_PAGE_SIZE: u64 = 4096;
const PFN_SHIFT: u32 = 12;
/// An inflate or deflate request holds at most this many page frame numbers (Linux sends at
/// most 256); longer requests are refused whole, so the device's buffer stays bounded.
const MAX_PFNS_PER_REQUEST: usize = 4096;
/// A statistics buffer holds at most this many 10-byte entries; more are ignored.
const MAX_STATS_ENTRIES: usize = 32;
const STATS_ENTRY_LEN: usize = 10;
/// A request made of more descriptors than this is refused whole (a reporting request from
/// Linux has at most 32).
const MAX_DESCRIPTORS_PER_REQUEST: usize = 256;

/// Names of the statistics tags (virtio 1.2 §5.5.6.3 plus the later reclaim counters); the
/// index is the tag.
pub const BALLOON_STATS_TAGS: [&str; 16] = [
    "swap-in",
    "swap-out",
    "major-faults",
    "minor-faults",
    "free-memory",
    "total-memory",
    "available-memory",
    "disk-caches",
    "hugetlb-allocations",
    "hugetlb-failures",
    "oom-kills",
    "alloc-stalls",
    "async-scans",
    "direct-scans",
    "async-reclaims",
    "direct-reclaims",
];

/// What the balloon offers the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonConfig {
    /// How much memory the balloon should take from the guest (config `num_pages`, rounded
    /// down to 4 KiB pages).
    pub target_bytes: u64,
    /// Offer free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
    pub free_page_reporting: bool,
    /// Offer the statistics queue; the device asks for fresh statistics this often.
    pub stats_interval: Option<Duration>,
    /// Let the guest take pages back from the balloon under memory pressure.
    pub deflate_on_oom: bool,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            target_bytes: 0,
            free_page_reporting: true,
            stats_interval: None,
            deflate_on_oom: true,
        }
    }
}

/// Counters of a balloon device, shared (lock-free) with whoever wants to read them.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Inflate requests handled.
    pub inflate_requests: AtomicU64,
    /// Pages the guest put into the balloon (valid page frame numbers).
    pub inflated_pages: AtomicU64,
    /// Deflate requests handled.
    pub deflate_requests: AtomicU64,
    /// Pages the guest took back out of the balloon.
    pub deflated_pages: AtomicU64,
    /// Free page reporting requests handled.
    pub reports: AtomicU64,
    /// Pages in valid reported ranges.
    pub reported_pages: AtomicU64,
    /// Pages released on the host (inflated plus reported), 4 KiB each.
    pub released_pages: AtomicU64,
    /// Page frame numbers or ranges refused: outside guest RAM, unaligned, overlapping a
    /// virtqueue or request buffer, or part of a malformed request.
    pub refused: AtomicU64,
    /// `madvise` calls that failed.
    pub release_errors: AtomicU64,
    /// Statistics buffers received from the driver.
    pub stats_updates: AtomicU64,
    /// The driver's `actual` config field: pages it says the balloon holds.
    pub actual_pages: AtomicU64,
    /// The latest statistics, by tag (see [`BALLOON_STATS_TAGS`]).
    pub stats: [AtomicU64; 16],
    /// Bit `tag` set: `stats[tag]` has been reported by the driver.
    pub stats_present: AtomicU64,
}

impl BalloonMetrics {
    /// The latest value the driver reported for statistics `tag`, if any.
    pub fn stat(&self, tag: usize) -> Option<u64> {
        let present = self.stats_present.load(Ordering::Acquire);
        (tag < self.stats.len() && present & (1 << tag) != 0)
            .then(|| self.stats[tag].load(Ordering::Relaxed))
    }
}

/// What each queue index is for, given the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// A virtio-balloon device.
pub struct Balloon {
    config: BalloonConfig,
    /// No fixed config: `num_pages` and `actual` change (see `read_config`).
    common: VirtioCommon,
    roles: Vec<Role>,
    num_pages: u32,
    actual: u32,
    /// Present when statistics are offered.
    timer: Option<DeviceTimer>,
    /// The statistics request the device holds until it wants fresh numbers, and its buffers.
    held_stats: Option<(u16, Vec<Range<u64>>)>,
    pfns: Vec<u32>,
    request_bufs: Vec<Range<u64>>,
    /// Guest memory a release must not touch: the rings of every queue and the held
    /// statistics buffer (refreshed for each request).
    protected: Vec<Range<u64>>,
    metrics: Arc<BalloonMetrics>,
}

/// Why a page or range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Unaligned,
    OutsideRam,
    InUse,
}

impl Balloon {
    /// A balloon with `config`; creates the statistics timer if statistics are offered.
    pub fn new(config: BalloonConfig) -> io::Result<Balloon> {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        let mut queues = 2;
        if config.stats_interval.is_some() {
            avail_features |= 1 << F_STATS_VQ;
            queues += 1;
        }
        if config.deflate_on_oom {
            avail_features |= 1 << F_DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            avail_features |= 1 << F_REPORTING;
            queues += 1;
        }
        let timer = match config.stats_interval {
            Some(_) => Some(DeviceTimer::new()?),
            None => None,
        };
        let num_pages = u32::try_from(config.target_bytes / BALLOON_PAGE_SIZE).unwrap_or(u32::MAX);
        Ok(Balloon {
            config,
            common: VirtioCommon::new(VIRTIO_ID_BALLOON, avail_features, queues),
            roles: Vec::new(),
            num_pages,
            actual: 0,
            timer,
            held_stats: None,
            pfns: Vec::with_capacity(MAX_PFNS_PER_REQUEST),
            request_bufs: Vec::with_capacity(MAX_DESCRIPTORS_PER_REQUEST),
            protected: Vec::new(),
            metrics: Arc::new(BalloonMetrics::default()),
        })
    }

    /// The device's counters (the same object for the device's whole life).
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    /// The balloon size the device asks for, in 4 KiB pages (config `num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    fn roles_for(&self, acked: u64) -> Vec<Role> {
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if has_feature(acked & self.common.avail_features, F_STATS_VQ) {
            roles.push(Role::Stats);
        }
        if has_feature(acked & self.common.avail_features, F_REPORTING) {
            roles.push(Role::Reporting);
        }
        roles
    }

    fn refuse(&self, count: u64, what: &str) {
        let total = self.metrics.refused.fetch_add(count, Ordering::Relaxed) + count;
        if log_allowed(total) {
            warn!("virtio-balloon: refused {what} ({total} refused so far)");
        }
    }

    /// Collects the guest-physical ranges of the chain's descriptors into `request_bufs`;
    /// `false` if the chain is too long or a descriptor is malformed.
    fn collect_buffers(&mut self, chain: DescriptorChain<&GuestMemoryMmap>) -> bool {
        self.request_bufs.clear();
        for desc in chain {
            if self.request_bufs.len() == MAX_DESCRIPTORS_PER_REQUEST {
                return false;
            }
            let start = desc.addr().0;
            let Some(end) = start.checked_add(u64::from(desc.len())) else {
                return false;
            };
            self.request_bufs.push(start..end);
        }
        true
    }

    /// Reads the page frame numbers of an inflate/deflate request (its device-readable
    /// buffers) into `pfns`; `false` if malformed.
    fn read_pfns(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.pfns.clear();
        let total: u64 = self.request_bufs.iter().map(|r| r.end - r.start).sum();
        if total % 4 != 0 || total / 4 > MAX_PFNS_PER_REQUEST as u64 {
            return false;
        }
        for range in &self.request_bufs {
            let mut addr = range.start;
            while addr < range.end {
                match mem.read_obj::<u32>(GuestAddress(addr)) {
                    Ok(pfn) => self.pfns.push(u32::from_le(pfn)),
                    Err(_) => return false,
                }
                addr += 4;
            }
        }
        true
    }

    /// Checks that `[gpa, gpa + len)` may be released; returns its host address. Unless the
    /// range is itself one of the request's buffers (a reported range), it must not overlap
    /// them either.
    fn check_release(
        &self,
        mem: &GuestMemoryMmap,
        gpa: u64,
        len: u64,
        is_request_buffer: bool,
    ) -> Result<*mut u8, Refusal> {
        if len == 0 || gpa % BALLOON_PAGE_SIZE != 0 || len % BALLOON_PAGE_SIZE != 0 {
            return Err(Refusal::Unaligned);
        }
        let end = gpa.checked_add(len).ok_or(Refusal::OutsideRam)?;
        let (region, offset) = mem
            .to_region_addr(GuestAddress(gpa))
            .ok_or(Refusal::OutsideRam)?;
        let fits = offset
            .0
            .checked_add(len)
            .is_some_and(|region_end| region_end <= region.len());
        if !fits {
            return Err(Refusal::OutsideRam);
        }
        let range = gpa..end;
        let overlaps = |other: &Range<u64>| other.start < range.end && range.start < other.end;
        let in_use = self.protected.iter().any(overlaps)
            || (!is_request_buffer && self.request_bufs.iter().any(overlaps));
        if in_use {
            return Err(Refusal::InUse);
        }
        region
            .get_host_address(offset)
            .map_err(|_| Refusal::OutsideRam)
    }

    /// `madvise(MADV_DONTNEED)` on a range `check_release` approved.
    fn release(&self, host: *mut u8, len: u64) -> bool {
        // SAFETY: `check_release` verified that [host, host + len) is page-aligned and lies
        // inside the mapping of one guest RAM region, which `mem` keeps alive. Dropping the
        // pages of that private anonymous mapping only makes the guest read zeroes there; no
        // Rust object of the VMM lives in guest RAM.
        let Ok(host_len) = usize::try_from(len) else {
            return false;
        };
        // SAFETY: as above.
        let rc = unsafe { libc::madvise(host.cast(), host_len, libc::MADV_DONTNEED) };
        if rc != 0 {
            let errors = self.metrics.release_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if log_allowed(errors) {
                warn!(
                    "virtio-balloon: madvise(MADV_DONTNEED) failed: {}",
                    io::Error::last_os_error()
                );
            }
            return false;
        }
        self.metrics
            .released_pages
            .fetch_add(len / BALLOON_PAGE_SIZE, Ordering::Relaxed);
        true
    }

    /// Inflate: validates every page, then releases the valid ones, coalescing runs of
    /// consecutive frames into one madvise.
    fn inflate(&mut self, mem: &GuestMemoryMmap) {
        self.metrics
            .inflate_requests
            .fetch_add(1, Ordering::Relaxed);
        let mut run: Option<(*mut u8, u64, u64)> = None; // host start, next gpa, length
        let mut valid = 0u64;
        let mut refused = 0u64;
        for i in 0..self.pfns.len() {
            let gpa = u64::from(self.pfns[i]) << PFN_SHIFT;
            let host = match self.check_release(mem, gpa, BALLOON_PAGE_SIZE, false) {
                Ok(host) => host,
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            valid += 1;
            run = match run {
                // Consecutive in guest memory and (same region) on the host.
                Some((start, next, len))
                    if next == gpa
                        && start.wrapping_add(usize::try_from(len).unwrap_or(usize::MAX))
                            == host =>
                {
                    Some((start, next + BALLOON_PAGE_SIZE, len + BALLOON_PAGE_SIZE))
                }
                Some((start, _, len)) => {
                    self.release(start, len);
                    Some((host, gpa + BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE))
                }
                None => Some((host, gpa + BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE)),
            };
        }
        if let Some((start, _, len)) = run {
            self.release(start, len);
        }
        self.metrics
            .inflated_pages
            .fetch_add(valid, Ordering::Relaxed);
        if refused > 0 {
            self.refuse(
                refused,
                "inflate page frame numbers outside guest RAM or in use",
            );
        }
    }

    /// Deflate: the pages are the guest's again. Nothing to do on the host (a released page
    /// faults back in as zeroes); only out-of-range numbers are counted.
    fn deflate(&mut self, mem: &GuestMemoryMmap) {
        self.metrics
            .deflate_requests
            .fetch_add(1, Ordering::Relaxed);
        let mut valid = 0u64;
        for &pfn in &self.pfns {
            let gpa = u64::from(pfn) << PFN_SHIFT;
            let inside = mem
                .to_region_addr(GuestAddress(gpa))
                .is_some_and(|(region, offset)| offset.0 + BALLOON_PAGE_SIZE <= region.len());
            valid += u64::from(inside);
        }
        let refused = self.pfns.len() as u64 - valid;
        self.metrics
            .deflated_pages
            .fetch_add(valid, Ordering::Relaxed);
        if refused > 0 {
            self.refuse(refused, "deflate page frame numbers outside guest RAM");
        }
    }

    /// Free page reporting: each descriptor of the request is one free range of guest memory.
    fn report(&mut self, mem: &GuestMemoryMmap) {
        self.metrics.reports.fetch_add(1, Ordering::Relaxed);
        let mut refused = 0u64;
        for i in 0..self.request_bufs.len() {
            let range = self.request_bufs[i].clone();
            let len = range.end - range.start;
            match self.check_release(mem, range.start, len, true) {
                Ok(host) => {
                    if self.release(host, len) {
                        self.metrics
                            .reported_pages
                            .fetch_add(len / BALLOON_PAGE_SIZE, Ordering::Relaxed);
                    }
                }
                Err(_) => refused += 1,
            }
        }
        if refused > 0 {
            self.refuse(
                refused,
                "reported ranges unaligned, outside guest RAM or in use",
            );
        }
    }

    /// Handles one request on an inflate, deflate or reporting queue.
    fn process_pages(&mut self, role: Role, index: usize, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        let mut used_any = false;
        loop {
            let Some(queue) = ctx.queues.get_mut(index) else {
                return used_any;
            };
            let Some(chain) = next_chain(queue, mem, "virtio-balloon") else {
                return used_any;
            };
            let head = chain.head_index();
            // The whole request is read before anything is released.
            if !self.collect_buffers(chain) {
                self.refuse(1, "a request with a malformed descriptor chain");
            } else {
                match role {
                    Role::Inflate | Role::Deflate => {
                        if !self.read_pfns(mem) {
                            self.refuse(1, "a malformed page frame number array");
                        } else if role == Role::Inflate {
                            self.set_protected(ctx.queues);
                            self.inflate(mem);
                        } else {
                            self.deflate(mem);
                        }
                    }
                    Role::Reporting => {
                        self.set_protected(ctx.queues);
                        self.report(mem);
                    }
                    Role::Stats => unreachable!("statistics have their own handler"),
                }
            }
            self.request_bufs.clear();
            // Released (or refused) before the descriptor goes back to the driver.
            if let Some(queue) = ctx.queues.get_mut(index) {
                if let Err(e) = queue.add_used(mem, head, 0) {
                    warn!("virtio-balloon: cannot add used buffer: {e}");
                }
            }
            used_any = true;
        }
    }

    /// The driver posted a statistics buffer: record the numbers and hold the buffer until the
    /// next interval.
    fn process_stats(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        let mem = ctx.mem;
        let mut used_any = false;
        let Some(queue) = ctx.queues.get_mut(index) else {
            return false;
        };
        while let Some(chain) = next_chain(queue, mem, "virtio-balloon stats") {
            let head = chain.head_index();
            // A driver sends one buffer at a time; an older one goes back first.
            if let Some((old, _)) = self.held_stats.take() {
                if let Err(e) = queue.add_used(mem, old, 0) {
                    warn!("virtio-balloon: cannot add used buffer: {e}");
                }
                used_any = true;
            }
            let mut entries = [0u8; MAX_STATS_ENTRIES * STATS_ENTRY_LEN];
            let mut filled = 0usize;
            let mut bufs = Vec::new();
            let mut malformed = false;
            for desc in chain {
                if bufs.len() == MAX_DESCRIPTORS_PER_REQUEST || desc.is_write_only() {
                    malformed = true;
                    break;
                }
                let start = desc.addr().0;
                let Some(end) = start.checked_add(u64::from(desc.len())) else {
                    malformed = true;
                    break;
                };
                bufs.push(start..end);
                let n = (desc.len() as usize).min(entries.len() - filled);
                if mem
                    .read_slice(&mut entries[filled..filled + n], desc.addr())
                    .is_err()
                {
                    malformed = true;
                    break;
                }
                filled += n;
            }
            if malformed {
                self.refuse(1, "a malformed statistics buffer");
                if let Err(e) = queue.add_used(mem, head, 0) {
                    warn!("virtio-balloon: cannot add used buffer: {e}");
                }
                used_any = true;
                continue;
            }
            for entry in entries[..filled].chunks_exact(STATS_ENTRY_LEN) {
                let tag = usize::from(u16::from_le_bytes([entry[0], entry[1]]));
                let value = u64::from_le_bytes(entry[2..10].try_into().unwrap());
                if let Some(slot) = self.metrics.stats.get(tag) {
                    slot.store(value, Ordering::Relaxed);
                    self.metrics
                        .stats_present
                        .fetch_or(1 << tag, Ordering::Release);
                }
            }
            self.metrics.stats_updates.fetch_add(1, Ordering::Relaxed);
            self.held_stats = Some((head, bufs));
            if let (Some(timer), Some(interval)) = (self.timer.as_mut(), self.config.stats_interval)
            {
                if let Err(e) = timer.arm(interval) {
                    warn!("virtio-balloon: cannot arm the statistics timer: {e}");
                }
            }
        }
        used_any
    }
}

impl Balloon {
    /// Records what a release must not touch: every configured ring of `queues` and the held
    /// statistics buffer.
    fn set_protected(&mut self, queues: &[Queue]) {
        self.protected.clear();
        for queue in queues.iter().filter(|q| q.ready()) {
            let size = u64::from(queue.size());
            for (start, len) in [
                (queue.desc_table(), 16 * size),
                (queue.avail_ring(), 6 + 2 * size),
                (queue.used_ring(), 6 + 8 * size),
            ] {
                self.protected.push(start..start.saturating_add(len));
            }
        }
        if let Some((_, bufs)) = &self.held_stats {
            self.protected.extend(bufs.iter().cloned());
        }
    }
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn queues_needed(&self, acked_features: u64) -> usize {
        self.roles_for(acked_features).len()
    }

    /// virtio_balloon_config: num_pages @0, actual @4, free_page_hint_cmd_id @8, poison_val @12.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write.
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let in_actual = start >= 4 && start.checked_add(data.len()).is_some_and(|end| end <= 8);
        if !in_actual {
            let refused = self.metrics.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if log_allowed(refused) {
                warn!(
                    "virtio-balloon: ignored {}-byte config write at {offset:#x}",
                    data.len()
                );
            }
            return;
        }
        let mut bytes = self.actual.to_le_bytes();
        bytes[start - 4..start - 4 + data.len()].copy_from_slice(data);
        self.actual = u32::from_le_bytes(bytes);
        self.metrics
            .actual_pages
            .store(u64::from(self.actual), Ordering::Relaxed);
    }

    fn activate(
        &mut self,
        acked_features: u64,
        ctx: &mut QueueContext,
    ) -> Result<(), ActivateError> {
        self.roles = self.roles_for(acked_features);
        // Linux primes the statistics queue and kicks it before DRIVER_OK, when the transport
        // still ignores kicks: pick that first buffer up now. Nothing is returned to the driver
        // here (the buffer is held), so no interrupt is needed.
        if let Some(index) = self.roles.iter().position(|&r| r == Role::Stats) {
            self.process_stats(index, ctx);
        }
        Ok(())
    }

    fn process_queue(&mut self, index: usize, ctx: &mut QueueContext) -> bool {
        match self.roles.get(index).copied() {
            Some(Role::Stats) => self.process_stats(index, ctx),
            Some(role) => self.process_pages(role, index, ctx),
            None => false,
        }
    }

    fn event_sources(&self) -> Vec<RawFd> {
        self.timer.iter().map(DeviceTimer::raw_fd).collect()
    }

    /// The statistics interval passed: hand the held buffer back so the driver refills it.
    fn process_event_source(&mut self, _index: usize, ctx: &mut QueueContext) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        if !timer.take_expiry() {
            return false;
        }
        let Some(index) = self.roles.iter().position(|&r| r == Role::Stats) else {
            return false;
        };
        let Some((head, _)) = self.held_stats.take() else {
            return false;
        };
        let Some(queue) = ctx.queues.get_mut(index) else {
            return false;
        };
        if let Err(e) = queue.add_used(ctx.mem, head, 0) {
            warn!("virtio-balloon: cannot add used buffer: {e}");
            return false;
        }
        true
    }

    fn reset(&mut self) {
        self.roles.clear();
        self.held_stats = None;
        self.actual = 0;
        self.metrics.actual_pages.store(0, Ordering::Relaxed);
        if let Some(timer) = self.timer.as_mut() {
            timer.disarm();
        }
    }
}

impl Drop for Balloon {
    fn drop(&mut self) {
        let m = &self.metrics;
        log::info!(
            "virtio-balloon: {} pages released ({} inflated, {} reported in {} reports), {} deflated, {} refused, {} madvise errors",
            m.released_pages.load(Ordering::Relaxed),
            m.inflated_pages.load(Ordering::Relaxed),
            m.reported_pages.load(Ordering::Relaxed),
            m.reports.load(Ordering::Relaxed),
            m.deflated_pages.load(Ordering::Relaxed),
            m.refused.load(Ordering::Relaxed),
            m.release_errors.load(Ordering::Relaxed)
        );
    }
}
