//! virtio-block through the virtio-mmio transport, driven like a guest driver would, no KVM.
//! Every device test runs once per engine (synchronous and io_uring); io_uring-only tests and
//! the fallback test follow.
// Test code: small test values and guest addresses cast on purpose (issue 12 lints).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;

use common::*;
use devices::virtio::{Block, BlockEngine, MmioTransport};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const F_BLK_RO: u64 = 1 << 5;
const F_BLK_FLUSH: u64 = 1 << 9;

const HDR: u64 = DATA_START;
const STATUS: u64 = DATA_START + 0x100;
const DATA: u64 = DATA_START + 0x1000;
const DISK_SECTORS: u64 = 64;

fn disk(sectors: u64) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    file.write_all(&content).unwrap();
    file
}

fn block_driver(file: &tempfile::NamedTempFile, read_only: bool, engine: BlockEngine) -> Driver {
    let block = Block::with_engine(file.path(), read_only, engine).unwrap();
    assert_eq!(block.engine(), engine);
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1 | F_EVENT_IDX | F_BLK_FLUSH | F_BLK_RO, 1, 64);
    driver
}

fn status_byte(driver: &Driver, at: u64) -> u8 {
    driver.mem.read_obj(GuestAddress(at)).unwrap()
}

/// Submits one request (header, data, status), kicks, returns (status, used length).
fn request(driver: &mut Driver, request_type: u32, sector: u64, data: Option<Buf>) -> (u8, u32) {
    driver.write_blk_header(HDR, request_type, sector);
    driver.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut bufs = vec![Buf::r(HDR, 16)];
    bufs.extend(data);
    bufs.push(Buf::w(STATUS, 1));
    let head = driver.add_chain(0, &bufs);
    driver.kick(0);
    let (id, len) = driver.wait_used(0).expect("request completed");
    assert_eq!(id, u32::from(head));
    (status_byte(driver, STATUS), len)
}

fn identifies_as_modern_virtio_mmio_block(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), false, engine).unwrap(),
    ));
    assert_eq!(driver.read32(REG_MAGIC), 0x7472_6976);
    assert_eq!(driver.read32(REG_VERSION), 2);
    assert_eq!(driver.read32(REG_DEVICE_ID), 2);
    let features = driver.device_features();
    assert_ne!(features & F_VERSION_1, 0);
    assert_ne!(features & F_EVENT_IDX, 0);
    assert_ne!(features & F_BLK_FLUSH, 0);
    assert_eq!(features & F_BLK_RO, 0);
    driver.write32(REG_QUEUE_SEL, 0);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 256);
    driver.write32(REG_QUEUE_SEL, 1);
    assert_eq!(driver.read32(REG_QUEUE_NUM_MAX), 0, "only one queue");
    let capacity = u64::from_le_bytes(driver.read_config(0, 8).try_into().unwrap());
    assert_eq!(capacity, DISK_SECTORS);
    // Byte-wise config access works too.
    assert_eq!(driver.read_config(0, 1), vec![DISK_SECTORS as u8]);
    let blk_size = u32::from_le_bytes(driver.read_config(20, 4).try_into().unwrap());
    assert_eq!(blk_size, 512);
    assert_eq!(driver.transport.device_type(), 2);
}

fn write_then_read_back_through_the_queue(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    driver
        .mem
        .write_slice(&pattern, GuestAddress(DATA))
        .unwrap();

    let (status, len) = request(&mut driver, T_OUT, 3, Some(Buf::r(DATA, 1024)));
    assert_eq!(status, S_OK);
    assert_eq!(len, 1, "a write only returns the status byte");
    assert!(driver.take_irq(), "completion raised the interrupt");
    assert_eq!(driver.read32(REG_INTERRUPT_STATUS) & 1, 1);
    driver.write32(REG_INTERRUPT_ACK, 1);
    assert_eq!(driver.read32(REG_INTERRUPT_STATUS), 0);

    let mut on_disk = vec![0u8; 1024];
    file.as_file().read_exact_at(&mut on_disk, 3 * 512).unwrap();
    assert_eq!(on_disk, pattern);
    // Neighbouring sectors are untouched.
    let mut before = [0u8; 512];
    file.as_file().read_exact_at(&mut before, 2 * 512).unwrap();
    assert_eq!(before[0], ((2 * 512) % 251) as u8);

    // Read it back into a different buffer, split in two descriptors.
    let readback = DATA + 0x10000;
    driver.write_blk_header(HDR, T_IN, 3);
    let head = driver.add_chain(
        0,
        &[
            Buf::r(HDR, 16),
            Buf::w(readback, 512),
            Buf::w(readback + 512, 512),
            Buf::w(STATUS, 1),
        ],
    );
    driver.kick(0);
    assert_eq!(driver.wait_used(0), Some((u32::from(head), 1025)));
    assert_eq!(status_byte(&driver, STATUS), S_OK);
    let mut got = vec![0u8; 1024];
    driver
        .mem
        .read_slice(&mut got, GuestAddress(readback))
        .unwrap();
    assert_eq!(got, pattern);
}

fn several_requests_in_one_kick_all_complete(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    let mut heads = Vec::new();
    for i in 0..8u64 {
        let hdr = HDR + i * 32;
        let status = STATUS + i;
        driver.write_blk_header(hdr, T_IN, i);
        heads.push(driver.add_chain(
            0,
            &[
                Buf::r(hdr, 16),
                Buf::w(DATA + i * 512, 512),
                Buf::w(status, 1),
            ],
        ));
    }
    driver.kick(0);
    // io_uring may complete them in any order.
    let mut used: Vec<(u32, u32)> = (0..8).filter_map(|_| driver.wait_used(0)).collect();
    used.sort_unstable();
    let expected: Vec<(u32, u32)> = heads.iter().map(|h| (u32::from(*h), 513)).collect();
    assert_eq!(used, expected);
    for i in 0..8usize {
        assert_eq!(status_byte(&driver, STATUS + i as u64), S_OK);
        let first: u8 = driver
            .mem
            .read_obj(GuestAddress(DATA + i as u64 * 512))
            .unwrap();
        assert_eq!(first, ((i * 512) % 251) as u8);
    }
    assert_eq!(driver.pop_used(0), None);
}

fn read_only_disk_refuses_writes(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, true, engine);
    assert_ne!(driver.device_features() & F_BLK_RO, 0);
    driver
        .mem
        .write_slice(&[0xaa; 512], GuestAddress(DATA))
        .unwrap();
    let (status, len) = request(&mut driver, T_OUT, 0, Some(Buf::r(DATA, 512)));
    assert_eq!(status, S_IOERR);
    assert_eq!(len, 1);
    let mut on_disk = [0u8; 512];
    file.as_file().read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk[1], 1, "image unchanged");
    // Reads still work.
    let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

fn out_of_range_requests_fail_without_touching_the_image(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    driver
        .mem
        .write_slice(&[0xaa; 1024], GuestAddress(DATA))
        .unwrap();
    // Starts past the end.
    let (status, _) = request(&mut driver, T_OUT, DISK_SECTORS, Some(Buf::r(DATA, 512)));
    assert_eq!(status, S_IOERR);
    // Straddles the end.
    let (status, _) = request(
        &mut driver,
        T_OUT,
        DISK_SECTORS - 1,
        Some(Buf::r(DATA, 1024)),
    );
    assert_eq!(status, S_IOERR);
    // Sector * 512 overflows u64.
    let (status, _) = request(&mut driver, T_IN, u64::MAX / 256, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_IOERR);
    // Not a whole number of sectors.
    let (status, _) = request(&mut driver, T_OUT, 0, Some(Buf::r(DATA, 100)));
    assert_eq!(status, S_IOERR);
    assert_eq!(
        file.as_file().metadata().unwrap().len(),
        DISK_SECTORS * 512,
        "image did not grow"
    );
    let mut last = [0u8; 512];
    file.as_file()
        .read_exact_at(&mut last, (DISK_SECTORS - 1) * 512)
        .unwrap();
    assert_ne!(last, [0xaa; 512], "last sector untouched");
    // The very last sector itself is fine.
    let (status, _) = request(&mut driver, T_IN, DISK_SECTORS - 1, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

fn malformed_chains_get_an_error_status_or_are_dropped(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);

    // Read whose data buffer is device-readable: wrong direction.
    let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::r(DATA, 512)));
    assert_eq!(status, S_IOERR);
    // Write whose data buffer is device-writable: wrong direction, and nothing written.
    let (status, _) = request(&mut driver, T_OUT, 0, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_IOERR);

    // Header shorter than 16 bytes.
    driver.write_blk_header(HDR, T_IN, 0);
    driver.add_chain(0, &[Buf::r(HDR, 8), Buf::w(STATUS, 1)]);
    driver.kick(0);
    assert_eq!(driver.wait_used(0).map(|(_, len)| len), Some(1));
    assert_eq!(status_byte(&driver, STATUS), S_IOERR);

    // No writable descriptor at all: no status byte, dropped with used length 0.
    driver.add_chain(0, &[Buf::r(HDR, 16)]);
    driver.kick(0);
    assert_eq!(driver.wait_used(0).map(|(_, len)| len), Some(0));

    // Data buffer outside guest memory: error status, no panic.
    let outside = MEM_SIZE as u64 + 0x1000;
    let (status, _) = request(&mut driver, T_OUT, 0, Some(Buf::r(outside, 512)));
    assert_eq!(status, S_IOERR);

    // Status descriptor of zero length is no status byte either.
    driver.add_chain(0, &[Buf::r(HDR, 16), Buf::w(STATUS, 0)]);
    driver.kick(0);
    assert_eq!(driver.wait_used(0).map(|(_, len)| len), Some(0));

    // The device still serves good requests afterwards.
    let (status, _) = request(&mut driver, T_IN, 1, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

fn impossible_avail_index_stops_the_queue_without_spinning(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    // 64-entry queue, driver claims 1000 new buffers.
    driver.queues[0].set_avail_idx(&driver.mem, 1000);
    driver.kick(0);
    assert_eq!(driver.pop_used(0), None);
}

fn flush_get_id_and_unsupported_types(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let block = Block::with_engine(file.path(), false, engine).unwrap();
    let expected_id = *block.disk_id();
    assert!(expected_id.starts_with(b"volt"));
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1 | F_BLK_FLUSH, 1, 16);

    let (status, len) = request(&mut driver, T_FLUSH, 0, None);
    assert_eq!((status, len), (S_OK, 1));

    let (status, len) = request(&mut driver, T_GET_ID, 0, Some(Buf::w(DATA, 20)));
    assert_eq!((status, len), (S_OK, 21));
    let mut id = [0u8; 20];
    driver.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(id, expected_id);

    let (status, _) = request(&mut driver, T_DISCARD, 0, Some(Buf::r(DATA, 16)));
    assert_eq!(status, S_UNSUPP);
}

fn feature_negotiation_without_version_1_is_refused(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), false, engine).unwrap(),
    ));
    assert!(
        !driver.negotiate(F_BLK_FLUSH),
        "legacy driver must be refused"
    );
    assert_eq!(driver.status() & S_FEATURES_OK, 0);
    // DRIVER_OK cannot be reached without FEATURES_OK.
    driver.write32(
        REG_STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_eq!(driver.status() & S_DRIVER_OK, 0);
    // After a reset a correct negotiation works.
    assert!(driver.negotiate(F_VERSION_1 | F_BLK_FLUSH));
}

fn unoffered_feature_bits_are_not_acked(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    // Writable disk: RO is not offered, a driver acking it anyway must not make it read-only
    // or break negotiation.
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), false, engine).unwrap(),
    ));
    assert!(driver.negotiate(F_VERSION_1 | F_BLK_RO | (1 << 40)));
}

fn queue_notify_write_signals_the_queue_eventfd(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    driver.write32(REG_QUEUE_NOTIFY, 0);
    assert_eq!(driver.transport.queue_events()[0].read().unwrap(), 1);
    assert_eq!(driver.transport.queue_events().len(), 1);
    // io_uring adds its completion eventfd; the synchronous engine has nothing to watch.
    let sources = usize::from(engine == BlockEngine::Uring);
    assert_eq!(driver.transport.event_sources().len(), sources);
}

fn event_idx_suppresses_interrupts_until_used_event(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    // Driver wants an interrupt only after the 3rd completion (used index passes 2).
    driver.queues[0].set_used_event(&driver.mem, 2);
    for expect_irq in [false, false, true] {
        let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::w(DATA, 512)));
        assert_eq!(status, S_OK);
        assert_eq!(driver.take_irq(), expect_irq);
    }
}

fn reset_in_the_middle_of_work_drops_queues_and_can_restart(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    driver
        .mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .unwrap();
    driver.write_blk_header(HDR, T_OUT, 5);
    driver.add_chain(0, &[Buf::r(HDR, 16), Buf::r(DATA, 512), Buf::w(STATUS, 1)]);
    // The guest notifies, but resets before the loop gets to the event.
    driver.write32(REG_QUEUE_NOTIFY, 0);
    driver.write32(REG_STATUS, 0);
    assert_eq!(driver.status(), 0);
    driver.write32(REG_QUEUE_SEL, 0);
    assert_eq!(driver.read32(REG_QUEUE_READY), 0, "reset un-readies queues");
    driver.transport.handle_queue_event(0);
    assert_eq!(
        driver.queues[0].used_idx(&driver.mem),
        0,
        "nothing processed after reset"
    );
    let mut sector = [0u8; 512];
    file.as_file().read_exact_at(&mut sector, 5 * 512).unwrap();
    assert_ne!(sector, [0x55; 512]);
    assert!(!driver.take_irq());

    // Re-initialise and the device works from a clean slate.
    driver.init(F_VERSION_1, 1, 16);
    let (status, _) = request(&mut driver, T_OUT, 5, Some(Buf::r(DATA, 512)));
    assert_eq!(status, S_OK);
    file.as_file().read_exact_at(&mut sector, 5 * 512).unwrap();
    assert_eq!(sector, [0x55; 512]);
}

fn queue_registers_are_frozen_after_driver_ok(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    driver.write32(REG_QUEUE_SEL, 0);
    driver.write32(REG_QUEUE_READY, 0);
    assert_eq!(driver.read32(REG_QUEUE_READY), 1);
    let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

fn activation_with_unready_queue_sets_needs_reset(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), false, engine).unwrap(),
    ));
    assert!(driver.negotiate(F_VERSION_1));
    driver.write32(
        REG_STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert_ne!(driver.status() & 0x40, 0, "NEEDS_RESET");
    assert!(driver.take_irq(), "config-change interrupt");
    assert_eq!(driver.read32(REG_INTERRUPT_STATUS) & 2, 2);
    // Kicks are ignored, not processed against garbage.
    driver.transport.handle_queue_event(0);
}

fn narrow_register_accesses_are_ignored(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), false, engine).unwrap(),
    ));
    let mut byte = [0xffu8; 1];
    driver.transport.read(REG_MAGIC, &mut byte);
    assert_eq!(byte, [0]);
    driver.transport.write(REG_STATUS, &[1]);
    assert_eq!(driver.status(), 0);
    assert_eq!(driver.read32(REG_CONFIG_GENERATION), 0);
}

fn opening_bad_paths_names_the_path(engine: BlockEngine) {
    let missing = std::path::Path::new("/nonexistent/volt-disk.img");
    let err = Block::with_engine(missing, false, engine)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/volt-disk.img"), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Block::with_engine(dir.path(), true, engine)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    // A file without write permission cannot be opened read-write (root bypasses this).
    let file = disk(1);
    let mut perms = file.as_file().metadata().unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(file.path(), perms).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("SKIP: permission-denied case: running as root, which bypasses file modes");
    } else {
        let err = Block::with_engine(file.path(), false, engine)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Permission denied"), "{err}");
    }
    assert!(Block::with_engine(file.path(), true, engine).is_ok());
}

fn transport_rejects_nothing_for_a_plain_device_construction(engine: BlockEngine) {
    // MmioTransport::new is usable directly with any VirtioDevice.
    let file = disk(DISK_SECTORS);
    let irq = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let transport = MmioTransport::new(
        Box::new(Block::with_engine(file.path(), false, engine).unwrap()),
        guest_memory(),
        irq,
    )
    .unwrap();
    assert_eq!(transport.queue_events().len(), 1);
}

/// Whether io_uring works here; prints a SKIP line for `test` when it does not.
fn uring_available(test: &str) -> bool {
    let file = disk(1);
    match Block::with_engine(file.path(), false, BlockEngine::Uring) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: {test} (io_uring engine): {e}");
            false
        }
    }
}

/// Each device test above, once per engine.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sync_engine {
            use super::*;
            $( #[test] fn $name() { super::$name(BlockEngine::Sync) } )*
        }
        mod uring_engine {
            use super::*;
            $( #[test] fn $name() {
                if uring_available(stringify!($name)) {
                    super::$name(BlockEngine::Uring)
                }
            } )*
        }
    };
}

on_both_engines!(
    identifies_as_modern_virtio_mmio_block,
    write_then_read_back_through_the_queue,
    several_requests_in_one_kick_all_complete,
    read_only_disk_refuses_writes,
    out_of_range_requests_fail_without_touching_the_image,
    malformed_chains_get_an_error_status_or_are_dropped,
    impossible_avail_index_stops_the_queue_without_spinning,
    flush_get_id_and_unsupported_types,
    feature_negotiation_without_version_1_is_refused,
    unoffered_feature_bits_are_not_acked,
    queue_notify_write_signals_the_queue_eventfd,
    event_idx_suppresses_interrupts_until_used_event,
    reset_in_the_middle_of_work_drops_queues_and_can_restart,
    queue_registers_are_frozen_after_driver_ok,
    activation_with_unready_queue_sets_needs_reset,
    narrow_register_accesses_are_ignored,
    opening_bad_paths_names_the_path,
    transport_rejects_nothing_for_a_plain_device_construction,
    many_requests_in_flight_beyond_the_ring_size,
    flush_completes_after_the_writes_before_it,
    io_errors_fail_only_their_own_request,
    reads_past_a_shrunken_image_fail_per_request,
);

/// Collects `n` used elements (any order), serving the device's completions.
fn wait_all(driver: &mut Driver, n: usize) -> Vec<(u32, u32)> {
    let used: Vec<(u32, u32)> = (0..n).map_while(|_| driver.wait_used(0)).collect();
    assert_eq!(
        used.len(),
        n,
        "only {} of {n} requests completed",
        used.len()
    );
    used
}

/// 200 reads in one kick, more than the io_uring engine keeps in flight
/// (devices::virtio::URING_IN_FLIGHT = 128): the rest are served as room frees up, each into
/// its own buffer, with the right data.
fn many_requests_in_flight_beyond_the_ring_size(engine: BlockEngine) {
    const N: u64 = 200;
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(
        Block::with_engine(file.path(), true, engine).unwrap(),
    ));
    driver.init(F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC, 1, 256);
    let table = DATA_START + 0x40_0000;
    let data = DATA_START + 0x80_0000;
    let mut heads = std::collections::HashMap::new();
    for i in 0..N {
        let hdr = HDR + i * 16;
        let status = STATUS + 0x1000 + i;
        let sector = (i * 7) % DISK_SECTORS;
        driver.write_blk_header(hdr, T_IN, sector);
        driver.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let bufs = [
            Buf::r(hdr, 16),
            Buf::w(data + i * 512, 512),
            Buf::w(status, 1),
        ];
        let head = driver.queues[0].add_indirect_chain(&driver.mem, table + i * 64, &bufs);
        heads.insert(u32::from(head), (i, sector));
    }
    driver.kick(0);
    let used = wait_all(&mut driver, N as usize);
    let mut seen = std::collections::HashSet::new();
    for (id, len) in used {
        assert_eq!(len, 513);
        let (i, sector) = heads[&id];
        assert!(seen.insert(i), "request {i} completed twice");
        assert_eq!(status_byte(&driver, STATUS + 0x1000 + i), S_OK);
        let mut got = [0u8; 512];
        driver
            .mem
            .read_slice(&mut got, GuestAddress(data + i * 512))
            .unwrap();
        let expected: Vec<u8> = (sector * 512..(sector + 1) * 512)
            .map(|b| (b % 251) as u8)
            .collect();
        assert_eq!(got.to_vec(), expected, "request {i} (sector {sector})");
    }
    assert_eq!(driver.pop_used(0), None);
}

/// Writes, then a FLUSH, then reads, all in one kick: the flush is returned after every write
/// submitted before it and before anything submitted after it.
fn flush_completes_after_the_writes_before_it(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false, engine);
    let mut kinds = std::collections::HashMap::new();
    for i in 0..12u64 {
        let hdr = HDR + i * 16;
        let status = STATUS + i;
        let buf = DATA + i * 4096;
        let bufs: Vec<Buf> = match i {
            0..=7 => {
                driver
                    .mem
                    .write_slice(&[i as u8 + 1; 4096], GuestAddress(buf))
                    .unwrap();
                driver.write_blk_header(hdr, T_OUT, i * 8);
                vec![Buf::r(hdr, 16), Buf::r(buf, 4096), Buf::w(status, 1)]
            }
            8 => {
                driver.write_blk_header(hdr, T_FLUSH, 0);
                vec![Buf::r(hdr, 16), Buf::w(status, 1)]
            }
            _ => {
                driver.write_blk_header(hdr, T_IN, (i - 9) * 8);
                vec![Buf::r(hdr, 16), Buf::w(buf, 4096), Buf::w(status, 1)]
            }
        };
        let head = driver.add_chain(0, &bufs);
        kinds.insert(u32::from(head), i);
    }
    driver.kick(0);
    let order: Vec<u64> = wait_all(&mut driver, 12)
        .iter()
        .map(|(id, _)| kinds[id])
        .collect();
    let flush_at = order.iter().position(|&i| i == 8).unwrap();
    assert!(
        order[..flush_at].iter().all(|&i| i < 8) && order[flush_at + 1..].iter().all(|&i| i > 8),
        "completion order {order:?}"
    );
    for i in 0..12u64 {
        assert_eq!(status_byte(&driver, STATUS + i), S_OK, "request {i}");
    }
    // The reads after the flush see the writes before it.
    for i in 9..12u64 {
        let got: u8 = driver.mem.read_obj(GuestAddress(DATA + i * 4096)).unwrap();
        assert_eq!(got, (i - 9) as u8 + 1);
    }
    let mut on_disk = [0u8; 4096];
    file.as_file()
        .read_exact_at(&mut on_disk, 7 * 4096)
        .unwrap();
    assert_eq!(on_disk, [8u8; 4096]);
}

/// A disk whose writes fail (the image is open read-only but served read-write): each write
/// gets IOERR, the reads beside it still succeed, and the image is unchanged.
fn io_errors_fail_only_their_own_request(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let read_only_fd = std::fs::File::open(file.path()).unwrap();
    let block = Block::from_file(read_only_fd, file.path(), false, engine).unwrap();
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1 | F_EVENT_IDX, 1, 64);
    driver
        .mem
        .write_slice(&[0xee; 1024], GuestAddress(DATA))
        .unwrap();
    let mut kinds = std::collections::HashMap::new();
    for i in 0..4u64 {
        let hdr = HDR + i * 16;
        let status = STATUS + i;
        let (kind, data) = if i % 2 == 0 {
            (T_OUT, Buf::r(DATA, 512))
        } else {
            (T_IN, Buf::w(DATA + 0x1000 + i * 512, 512))
        };
        driver.write_blk_header(hdr, kind, i);
        driver.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = driver.add_chain(0, &[Buf::r(hdr, 16), data, Buf::w(status, 1)]);
        kinds.insert(u32::from(head), i);
    }
    driver.kick(0);
    for (id, len) in wait_all(&mut driver, 4) {
        let i = kinds[&id];
        let expected = if i % 2 == 0 {
            (S_IOERR, 1)
        } else {
            (S_OK, 513)
        };
        assert_eq!(
            (status_byte(&driver, STATUS + i), len),
            expected,
            "request {i}"
        );
    }
    let mut sector = [0u8; 512];
    file.as_file().read_exact_at(&mut sector, 0).unwrap();
    assert_eq!(sector[1], 1, "image unchanged");
    let first: u8 = driver
        .mem
        .read_obj(GuestAddress(DATA + 0x1000 + 512))
        .unwrap();
    assert_eq!(first, (512 % 251) as u8);
}

/// The image shrinks after the device was built: reads past its new end come back short and
/// fail with IOERR, one request at a time; reads inside it still work.
fn reads_past_a_shrunken_image_fail_per_request(engine: BlockEngine) {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, true, engine);
    file.as_file().set_len(DISK_SECTORS / 2 * 512).unwrap();
    let mut kinds = std::collections::HashMap::new();
    for (i, sector) in [(0u64, DISK_SECTORS - 1), (1, 3), (2, DISK_SECTORS / 2 - 1)] {
        let hdr = HDR + i * 16;
        let status = STATUS + i;
        driver.write_blk_header(hdr, T_IN, sector);
        // The last one straddles the new end: half of it is there.
        let len = if i == 2 { 1024 } else { 512 };
        let head = driver.add_chain(
            0,
            &[
                Buf::r(hdr, 16),
                Buf::w(DATA + i * 0x1000, len),
                Buf::w(status, 1),
            ],
        );
        kinds.insert(u32::from(head), i);
    }
    driver.kick(0);
    for (id, _) in wait_all(&mut driver, 3) {
        let i = kinds[&id];
        let expected = if i == 1 { S_OK } else { S_IOERR };
        assert_eq!(status_byte(&driver, STATUS + i), expected, "request {i}");
    }
    assert_eq!(
        file.as_file().metadata().unwrap().len(),
        DISK_SECTORS / 2 * 512
    );
}

/// Where io_uring cannot be set up (here: a seccomp filter makes io_uring_setup fail with
/// ENOSYS, as on a kernel without it), `auto` falls back to the synchronous engine and still
/// serves requests, while an explicit `uring` is a clear error naming the image. Runs in a
/// child process (this test binary again), since the filter cannot be removed.
#[test]
fn auto_falls_back_to_sync_when_io_uring_is_refused() {
    const CHILD: &str = "VOLT_TEST_URING_REFUSED_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "auto_falls_back_to_sync_when_io_uring_is_refused",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("URING-REFUSED-CHECKED"),
            "child failed:\n{stdout}\n{stderr}"
        );
        return;
    }
    refuse_io_uring_setup();
    let file = disk(DISK_SECTORS);
    let err = Block::with_engine(file.path(), false, BlockEngine::Uring)
        .err()
        .expect("engine=uring must fail without io_uring")
        .to_string();
    assert!(err.contains(&file.path().display().to_string()), "{err}");
    assert!(err.contains("engine=sync"), "{err}");
    let block = Block::with_engine(file.path(), false, BlockEngine::Auto).unwrap();
    assert_eq!(block.engine(), BlockEngine::Sync);
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1 | F_EVENT_IDX, 1, 64);
    assert!(driver.transport.event_sources().is_empty());
    let (status, len) = request(&mut driver, T_IN, 2, Some(Buf::w(DATA, 512)));
    assert_eq!((status, len), (S_OK, 513));
    let first: u8 = driver.mem.read_obj(GuestAddress(DATA)).unwrap();
    assert_eq!(first, (1024 % 251) as u8);
    println!("URING-REFUSED-CHECKED");
}

/// Installs a seccomp filter on this thread: io_uring_setup fails with ENOSYS, all else runs.
fn refuse_io_uring_setup() {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        // seccomp_data.nr is at offset 0.
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        insn(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
        insn(RET_K, 0, 0, RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; fprog points at a valid program that outlives the call (the
    // kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}
