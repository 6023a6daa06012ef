//! virtio-balloon through the virtio-mmio transport, driven like a guest driver would, no KVM.
//! Released pages are checked on the host with mincore(2): the guest memory of these tests is
//! a real private anonymous mapping, like the VMM's.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use devices::virtio::{Balloon, BalloonConfig, BalloonMetrics};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const VIRTIO_ID_BALLOON: u32 = 5;
const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const F_FREE_PAGE_HINT: u64 = 1 << 3;
const F_PAGE_POISON: u64 = 1 << 4;
const F_REPORTING: u64 = 1 << 5;
const PAGE: u64 = 4096;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;

/// Where the page frame number arrays go.
const PFN_ARRAY: u64 = DATA_START;
/// Pages the tests touch and give back live from here on.
const POOL: u64 = 4 << 20;

fn balloon(config: BalloonConfig) -> (Driver, Arc<BalloonMetrics>) {
    let device = Balloon::new(config).unwrap();
    let metrics = device.metrics();
    (Driver::new(Box::new(device)), metrics)
}

/// Resident pages of guest range [gpa, gpa + len), from mincore(2) on the host mapping.
fn resident_pages(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> usize {
    let host = mem.get_host_address(GuestAddress(gpa)).unwrap();
    let mut vec = vec![0u8; (len / PAGE) as usize];
    // SAFETY: [host, host + len) lies in the test's guest memory mapping; vec has one byte per
    // page.
    let rc = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// Writes `byte` into every page of the range, so it is resident.
fn touch(mem: &GuestMemoryMmap, gpa: u64, len: u64, byte: u8) {
    mem.write_slice(&vec![byte; len as usize], GuestAddress(gpa))
        .unwrap();
    assert_eq!(resident_pages(mem, gpa, len), (len / PAGE) as usize);
}

fn first_byte(mem: &GuestMemoryMmap, gpa: u64) -> u8 {
    mem.read_obj(GuestAddress(gpa)).unwrap()
}

/// Writes `pfns` as a little-endian u32 array at PFN_ARRAY, submits it on `queue`, kicks.
fn send_pfns(driver: &mut Driver, queue: usize, pfns: &[u32]) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    driver
        .mem
        .write_slice(&bytes, GuestAddress(PFN_ARRAY))
        .unwrap();
    let head = driver.add_chain(queue, &[Buf::r(PFN_ARRAY, bytes.len() as u32)]);
    driver.kick(queue);
    assert_eq!(
        driver.pop_used(queue),
        Some((u32::from(head), 0)),
        "the request came back"
    );
}

fn pfn(gpa: u64) -> u32 {
    (gpa / PAGE) as u32
}

#[test]
fn offers_reporting_and_deflate_on_oom_by_default_and_never_free_page_hints() {
    let (mut driver, _) = balloon(BalloonConfig::default());
    assert_eq!(driver.read32(REG_DEVICE_ID), VIRTIO_ID_BALLOON);
    let features = driver.device_features();
    assert_ne!(features & F_VERSION_1, 0);
    assert_ne!(features & F_REPORTING, 0);
    assert_ne!(features & F_DEFLATE_ON_OOM, 0);
    assert_eq!(
        features & (F_STATS_VQ | F_FREE_PAGE_HINT | F_PAGE_POISON),
        0
    );
    // inflate, deflate, reporting.
    driver.write32(REG_QUEUE_SEL, 2);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 256);
    driver.write32(REG_QUEUE_SEL, 3);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 0);

    let (mut driver, _) = balloon(BalloonConfig {
        free_page_reporting: false,
        stats_interval: Some(Duration::from_secs(1)),
        deflate_on_oom: false,
        ..BalloonConfig::default()
    });
    let features = driver.device_features();
    assert_ne!(features & F_STATS_VQ, 0);
    assert_eq!(features & (F_REPORTING | F_DEFLATE_ON_OOM), 0);
}

#[test]
fn config_space_has_the_target_and_takes_the_drivers_actual() {
    let (mut driver, metrics) = balloon(BalloonConfig {
        target_bytes: (64 << 20) + 100,
        ..BalloonConfig::default()
    });
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let num_pages = u32::from_le_bytes(driver.read_config(0, 4).try_into().unwrap());
    assert_eq!(num_pages, (64 << 20) / 4096, "num_pages, rounded down");
    assert_eq!(driver.read_config(4, 4), vec![0; 4]);
    driver
        .transport
        .write(REG_CONFIG + 4, &1234u32.to_le_bytes());
    assert_eq!(driver.read_config(4, 4), 1234u32.to_le_bytes().to_vec());
    assert_eq!(metrics.actual_pages.load(Ordering::Relaxed), 1234);
    // num_pages is the device's: a write there is ignored.
    driver.transport.write(REG_CONFIG, &7u32.to_le_bytes());
    assert_eq!(
        u32::from_le_bytes(driver.read_config(0, 4).try_into().unwrap()),
        num_pages
    );
}

#[test]
fn inflate_releases_the_pages_on_the_host_and_deflate_gives_them_back() {
    let (mut driver, metrics) = balloon(BalloonConfig::default());
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let mem = driver.mem.clone();
    touch(&mem, POOL, 16 * PAGE, 0xaa);

    // Pages 0-7 and 10 of the pool: two runs.
    let mut pfns: Vec<u32> = (0..8).map(|i| pfn(POOL + i * PAGE)).collect();
    pfns.push(pfn(POOL + 10 * PAGE));
    send_pfns(&mut driver, INFLATE, &pfns);
    assert!(driver.take_irq());

    assert_eq!(
        resident_pages(&mem, POOL, 8 * PAGE),
        0,
        "inflated pages dropped"
    );
    assert_eq!(resident_pages(&mem, POOL + 10 * PAGE, PAGE), 0);
    assert_eq!(
        resident_pages(&mem, POOL + 8 * PAGE, 2 * PAGE),
        2,
        "neighbours kept"
    );
    assert_eq!(resident_pages(&mem, POOL + 11 * PAGE, 5 * PAGE), 5);
    assert_eq!(
        first_byte(&mem, POOL),
        0,
        "a released page reads back as zeroes"
    );
    assert_eq!(first_byte(&mem, POOL + 9 * PAGE), 0xaa);
    assert_eq!(metrics.inflate_requests.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.inflated_pages.load(Ordering::Relaxed), 9);
    assert_eq!(metrics.released_pages.load(Ordering::Relaxed), 9);
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 0);

    send_pfns(&mut driver, DEFLATE, &pfns[..4]);
    assert_eq!(metrics.deflate_requests.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.deflated_pages.load(Ordering::Relaxed), 4);
    // The guest may use a deflated page again at once.
    mem.write_obj(0x77u8, GuestAddress(POOL)).unwrap();
    assert_eq!(first_byte(&mem, POOL), 0x77);
}

#[test]
fn malformed_and_out_of_range_page_numbers_are_refused_and_release_nothing_else() {
    let (mut driver, metrics) = balloon(BalloonConfig::default());
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let mem = driver.mem.clone();
    touch(&mem, POOL, 4 * PAGE, 0xbb);
    touch(&mem, PFN_ARRAY, PAGE, 0);
    let last_page = MEM_SIZE as u64 - PAGE;
    touch(&mem, last_page, PAGE, 0xcc);
    let ring_page = driver.queues[INFLATE].desc & !(PAGE - 1);
    touch(&mem, ring_page, PAGE, 0);
    let ring_resident = resident_pages(&mem, ring_page, PAGE);
    assert_eq!(ring_resident, 1);

    let pfns = [
        pfn(MEM_SIZE as u64),             // first page past guest RAM
        u32::MAX,                         // far outside
        pfn(ring_page),                   // the inflate queue's descriptor table
        pfn(driver.queues[INFLATE].used), // its used ring
        pfn(PFN_ARRAY),                   // the request's own buffer
        pfn(POOL + PAGE),                 // the only valid one
    ];
    send_pfns(&mut driver, INFLATE, &pfns);
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 5);
    assert_eq!(metrics.released_pages.load(Ordering::Relaxed), 1);
    assert_eq!(resident_pages(&mem, POOL, 4 * PAGE), 3);
    assert_eq!(first_byte(&mem, POOL + PAGE), 0);
    assert_eq!(first_byte(&mem, POOL), 0xbb);
    assert_eq!(
        first_byte(&mem, last_page),
        0xcc,
        "last page of RAM untouched"
    );
    assert_eq!(resident_pages(&mem, ring_page, PAGE), 1, "ring kept");
    assert_eq!(
        resident_pages(&mem, PFN_ARRAY, PAGE),
        1,
        "request buffer kept"
    );

    // An array whose length is not a whole number of u32s is refused whole.
    touch(&mem, POOL, 4 * PAGE, 0xbb);
    let bytes: Vec<u8> = [pfn(POOL), pfn(POOL + PAGE)]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    mem.write_slice(&bytes, GuestAddress(PFN_ARRAY)).unwrap();
    driver.add_chain(INFLATE, &[Buf::r(PFN_ARRAY, 7)]);
    // A buffer that leaves guest memory.
    driver.add_chain(INFLATE, &[Buf::r(MEM_SIZE as u64 - 4, 8)]);
    driver.kick(INFLATE);
    assert_eq!(driver.pop_used(INFLATE).map(|u| u.1), Some(0));
    assert_eq!(driver.pop_used(INFLATE).map(|u| u.1), Some(0));
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 7);
    assert_eq!(resident_pages(&mem, POOL, 4 * PAGE), 4, "nothing released");
    assert_eq!(metrics.released_pages.load(Ordering::Relaxed), 1);

    // Deflating pages outside RAM is counted, not acted upon.
    send_pfns(&mut driver, DEFLATE, &[u32::MAX, pfn(POOL)]);
    assert_eq!(metrics.deflated_pages.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 8);
}

/// Reporting queue index when the driver negotiated only reporting.
const REPORTING_NO_STATS: usize = 2;

#[test]
fn reported_free_ranges_really_leave_the_host() {
    let (mut driver, metrics) = balloon(BalloonConfig::default());
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let mem = driver.mem.clone();
    let block = 2 << 20; // Linux reports pageblock-sized blocks: 2 MiB on x86
    touch(&mem, POOL, 2 * block, 0xdd);
    let rss_before = smaps_rss_kib(&mem, POOL, 2 * block);

    // Like Linux: one chain, one device-writable descriptor per free block.
    let head = driver.add_chain(
        REPORTING_NO_STATS,
        &[
            Buf::w(POOL, block as u32),
            Buf::w(POOL + block, block as u32),
        ],
    );
    driver.kick(REPORTING_NO_STATS);
    assert_eq!(
        driver.pop_used(REPORTING_NO_STATS),
        Some((u32::from(head), 0))
    );
    assert!(driver.take_irq());
    assert_eq!(resident_pages(&mem, POOL, 2 * block), 0);
    assert_eq!(metrics.reports.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.reported_pages.load(Ordering::Relaxed),
        2 * block / PAGE
    );
    assert_eq!(
        metrics.released_pages.load(Ordering::Relaxed),
        2 * block / PAGE
    );
    let rss_after = smaps_rss_kib(&mem, POOL, 2 * block);
    if !std::path::Path::new("/proc/self/smaps").exists() {
        println!("SKIP: no /proc/self/smaps, only mincore checked");
        return;
    }
    let (Some(before), Some(after)) = (rss_before, rss_after) else {
        panic!("guest memory mapping not found in /proc/self/smaps");
    };
    {
        assert!(
            before >= 4000 && after + 4000 <= before,
            "smaps Rss of the mapping went from {before} KiB to {after} KiB"
        );
    }
}

/// Rss (KiB) of the /proc/self/smaps entry containing the guest range, when readable.
fn smaps_rss_kib(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<u64> {
    let start = mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    let end = start + len;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    inside = lo <= start && end <= hi;
                    continue;
                }
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("Rss:") {
                return rest.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
    }
    None
}

#[test]
fn malformed_reports_are_refused_and_nothing_is_released() {
    let (mut driver, metrics) = balloon(BalloonConfig::default());
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let mem = driver.mem.clone();
    let last = MEM_SIZE as u64 - 2 * PAGE;
    touch(&mem, POOL, 8 * PAGE, 0xee);
    touch(&mem, last, 2 * PAGE, 0xee);
    let rings = driver.queues[0].desc & !(PAGE - 1);
    let ring_pages = resident_pages(&mem, rings, PAGE);

    let bad = [
        Buf::w(POOL + 100, PAGE as u32),      // unaligned start
        Buf::w(POOL, PAGE as u32 + 1),        // length not whole pages
        Buf::w(POOL, 0),                      // empty
        Buf::w(last, 4 * PAGE as u32),        // runs past the end of RAM
        Buf::w(MEM_SIZE as u64, PAGE as u32), // wholly outside RAM
        Buf::w(rings, PAGE as u32),           // covers the queue rings
    ];
    let head = driver.add_chain(REPORTING_NO_STATS, &bad);
    driver.kick(REPORTING_NO_STATS);
    // A descriptor outside guest memory does not stop the device from returning the chain.
    assert_eq!(
        driver.pop_used(REPORTING_NO_STATS),
        Some((u32::from(head), 0))
    );
    assert_eq!(metrics.refused.load(Ordering::Relaxed), bad.len() as u64);
    assert_eq!(metrics.released_pages.load(Ordering::Relaxed), 0);
    assert_eq!(resident_pages(&mem, POOL, 8 * PAGE), 8);
    assert_eq!(resident_pages(&mem, last, 2 * PAGE), 2);
    assert_eq!(resident_pages(&mem, rings, PAGE), ring_pages);
    assert_eq!(first_byte(&mem, last + PAGE), 0xee);

    // The device still works afterwards.
    let head = driver.add_chain(REPORTING_NO_STATS, &[Buf::w(POOL, 8 * PAGE as u32)]);
    driver.kick(REPORTING_NO_STATS);
    assert_eq!(
        driver.pop_used(REPORTING_NO_STATS),
        Some((u32::from(head), 0))
    );
    assert_eq!(resident_pages(&mem, POOL, 8 * PAGE), 0);
}

#[test]
fn queues_follow_the_negotiated_features_like_linux_numbers_them() {
    // Device offers stats and reporting; a driver that takes only reporting sets up three
    // queues, and the third is the reporting queue.
    let (mut driver, metrics) = balloon(BalloonConfig {
        stats_interval: Some(Duration::from_secs(10)),
        ..BalloonConfig::default()
    });
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    assert_eq!(driver.status() & S_DRIVER_OK, S_DRIVER_OK);
    let mem = driver.mem.clone();
    touch(&mem, POOL, PAGE, 1);
    driver.add_chain(2, &[Buf::w(POOL, PAGE as u32)]);
    driver.kick(2);
    assert!(driver.pop_used(2).is_some());
    assert_eq!(metrics.reported_pages.load(Ordering::Relaxed), 1);

    // With both, reporting moves to index 3.
    driver.init(F_VERSION_1 | F_STATS_VQ | F_REPORTING, 4, 64);
    touch(&mem, POOL, PAGE, 1);
    driver.add_chain(3, &[Buf::w(POOL, PAGE as u32)]);
    driver.kick(3);
    assert!(driver.pop_used(3).is_some());
    assert_eq!(metrics.reported_pages.load(Ordering::Relaxed), 2);
    assert_eq!(resident_pages(&mem, POOL, PAGE), 0);
}

#[test]
fn statistics_are_recorded_and_the_buffer_is_held_until_the_interval() {
    let (mut driver, metrics) = balloon(BalloonConfig {
        stats_interval: Some(Duration::from_millis(20)),
        ..BalloonConfig::default()
    });
    driver.init(F_VERSION_1 | F_STATS_VQ | F_REPORTING, 4, 64);
    const STATS: usize = 2;
    let buf = DATA_START + 0x8000;
    let mut entries = Vec::new();
    for (tag, value) in [(4u16, 1234u64), (5, 5678), (99, 1)] {
        entries.extend_from_slice(&tag.to_le_bytes());
        entries.extend_from_slice(&value.to_le_bytes());
    }
    driver.mem.write_slice(&entries, GuestAddress(buf)).unwrap();
    let head = driver.add_chain(STATS, &[Buf::r(buf, entries.len() as u32)]);
    driver.kick(STATS);
    assert_eq!(
        driver.pop_used(STATS),
        None,
        "held until the device wants more"
    );
    assert_eq!(metrics.stat(4), Some(1234));
    assert_eq!(metrics.stat(5), Some(5678));
    assert_eq!(metrics.stat(0), None);
    assert_eq!(metrics.stats_updates.load(Ordering::Relaxed), 1);

    // The held buffer is protected from release.
    touch(&driver.mem.clone(), buf & !(PAGE - 1), PAGE, 0);
    driver.mem.write_slice(&entries, GuestAddress(buf)).unwrap();
    driver.add_chain(3, &[Buf::w(buf & !(PAGE - 1), PAGE as u32)]);
    driver.kick(3);
    assert!(driver.pop_used(3).is_some());
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 1);

    let timer = driver.transport.event_sources()[0];
    assert!(wait_readable(timer, Duration::from_secs(5)), "timer fired");
    driver.take_irq();
    driver.transport.handle_event_source(0);
    assert_eq!(driver.pop_used(STATS), Some((u32::from(head), 0)));
    assert!(
        driver.take_irq(),
        "the driver is told to send fresh numbers"
    );

    // The driver answers with new numbers.
    driver
        .mem
        .write_obj(4321u64, GuestAddress(buf + 2))
        .unwrap();
    driver.add_chain(STATS, &[Buf::r(buf, entries.len() as u32)]);
    driver.kick(STATS);
    assert_eq!(metrics.stat(4), Some(4321));
    assert_eq!(metrics.stats_updates.load(Ordering::Relaxed), 2);
}

#[test]
fn guest_memory_regions_with_a_gap_are_respected() {
    // Two regions with a hole between them, like RAM below and above the MMIO gap.
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 16 << 20),
        (GuestAddress(32 << 20), 16 << 20),
    ])
    .unwrap();
    assert!(mem.address_in_range(GuestAddress(32 << 20)));
    let device = Balloon::new(BalloonConfig::default()).unwrap();
    let metrics = device.metrics();
    let mut driver = Driver::with_memory(Box::new(device), mem.clone());
    driver.init(F_VERSION_1 | F_REPORTING, 3, 64);
    let top = (16 << 20) - PAGE;
    touch(&mem, top, PAGE, 1);
    touch(&mem, 32 << 20, PAGE, 1);
    // A range across the hole is refused; the pages on both sides stay.
    driver.add_chain(2, &[Buf::w(top, 4 * PAGE as u32)]);
    driver.kick(2);
    assert!(driver.pop_used(2).is_some());
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 1);
    assert_eq!(resident_pages(&mem, top, PAGE), 1);
    assert_eq!(resident_pages(&mem, 32 << 20, PAGE), 1);
    // Inside the upper region works.
    driver.add_chain(2, &[Buf::w(32 << 20, PAGE as u32)]);
    driver.kick(2);
    assert!(driver.pop_used(2).is_some());
    assert_eq!(resident_pages(&mem, 32 << 20, PAGE), 0);
}

#[test]
fn a_statistics_buffer_posted_before_driver_ok_is_picked_up_at_activation() {
    // Linux adds the first statistics buffer and kicks before it sets DRIVER_OK.
    let (mut driver, metrics) = balloon(BalloonConfig {
        stats_interval: Some(Duration::from_secs(60)),
        ..BalloonConfig::default()
    });
    let offered = driver.device_features();
    assert!(driver.negotiate((F_VERSION_1 | F_STATS_VQ | F_REPORTING) & offered));
    for index in 0..4 {
        driver.setup_queue(index, 64);
    }
    let buf = DATA_START + 0x8000;
    let mut entry = 5u16.to_le_bytes().to_vec();
    entry.extend_from_slice(&(256u64 << 20).to_le_bytes());
    driver.mem.write_slice(&entry, GuestAddress(buf)).unwrap();
    driver.add_chain(2, &[Buf::r(buf, 10)]);
    driver.kick(2);
    assert_eq!(
        metrics.stats_updates.load(Ordering::Relaxed),
        0,
        "ignored before DRIVER_OK"
    );
    driver.write32(
        REG_STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_eq!(metrics.stats_updates.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.stat(5), Some(256 << 20));
    assert_eq!(driver.pop_used(2), None, "held for the next interval");
}
