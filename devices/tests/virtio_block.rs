//! virtio-block through the virtio-mmio transport, driven like a guest driver would, no KVM.
// Test code: small test values and guest addresses cast on purpose (issue 12 lints).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;

use common::*;
use devices::virtio::{Block, MmioTransport};
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

fn block_driver(file: &tempfile::NamedTempFile, read_only: bool) -> Driver {
    let block = Block::new(file.path(), read_only).unwrap();
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1 | F_EVENT_IDX | F_BLK_FLUSH | F_BLK_RO, 1, 64);
    driver
}

fn write_header(driver: &Driver, at: u64, request_type: u32, sector: u64) {
    driver
        .mem
        .write_obj(request_type, GuestAddress(at))
        .unwrap();
    driver.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    driver.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
}

fn status_byte(driver: &Driver, at: u64) -> u8 {
    driver.mem.read_obj(GuestAddress(at)).unwrap()
}

/// Submits one request (header, data, status), kicks, returns (status, used length).
fn request(driver: &mut Driver, request_type: u32, sector: u64, data: Option<Buf>) -> (u8, u32) {
    write_header(driver, HDR, request_type, sector);
    driver.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut bufs = vec![Buf::r(HDR, 16)];
    bufs.extend(data);
    bufs.push(Buf::w(STATUS, 1));
    let head = driver.add_chain(0, &bufs);
    driver.kick(0);
    let (id, len) = driver.pop_used(0).expect("request completed");
    assert_eq!(id, u32::from(head));
    (status_byte(driver, STATUS), len)
}

#[test]
fn identifies_as_modern_virtio_mmio_block() {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
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

#[test]
fn write_then_read_back_through_the_queue() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
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
    write_header(&driver, HDR, T_IN, 3);
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
    assert_eq!(driver.pop_used(0), Some((u32::from(head), 1025)));
    assert_eq!(status_byte(&driver, STATUS), S_OK);
    let mut got = vec![0u8; 1024];
    driver
        .mem
        .read_slice(&mut got, GuestAddress(readback))
        .unwrap();
    assert_eq!(got, pattern);
}

#[test]
fn several_requests_in_one_kick_all_complete() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    let mut heads = Vec::new();
    for i in 0..8u64 {
        let hdr = HDR + i * 32;
        let status = STATUS + i;
        write_header(&driver, hdr, T_IN, i);
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
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(driver.pop_used(0), Some((u32::from(*head), 513)));
        assert_eq!(status_byte(&driver, STATUS + i as u64), S_OK);
        let first: u8 = driver
            .mem
            .read_obj(GuestAddress(DATA + i as u64 * 512))
            .unwrap();
        assert_eq!(first, ((i * 512) % 251) as u8);
    }
    assert_eq!(driver.pop_used(0), None);
}

#[test]
fn read_only_disk_refuses_writes() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, true);
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

#[test]
fn out_of_range_requests_fail_without_touching_the_image() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
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

#[test]
fn malformed_chains_get_an_error_status_or_are_dropped() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);

    // Read whose data buffer is device-readable: wrong direction.
    let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::r(DATA, 512)));
    assert_eq!(status, S_IOERR);
    // Write whose data buffer is device-writable: wrong direction, and nothing written.
    let (status, _) = request(&mut driver, T_OUT, 0, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_IOERR);

    // Header shorter than 16 bytes.
    write_header(&driver, HDR, T_IN, 0);
    driver.add_chain(0, &[Buf::r(HDR, 8), Buf::w(STATUS, 1)]);
    driver.kick(0);
    assert_eq!(driver.pop_used(0).map(|(_, len)| len), Some(1));
    assert_eq!(status_byte(&driver, STATUS), S_IOERR);

    // No writable descriptor at all: no status byte, dropped with used length 0.
    driver.add_chain(0, &[Buf::r(HDR, 16)]);
    driver.kick(0);
    assert_eq!(driver.pop_used(0).map(|(_, len)| len), Some(0));

    // Data buffer outside guest memory: error status, no panic.
    let outside = MEM_SIZE as u64 + 0x1000;
    let (status, _) = request(&mut driver, T_OUT, 0, Some(Buf::r(outside, 512)));
    assert_eq!(status, S_IOERR);

    // Status descriptor of zero length is no status byte either.
    driver.add_chain(0, &[Buf::r(HDR, 16), Buf::w(STATUS, 0)]);
    driver.kick(0);
    assert_eq!(driver.pop_used(0).map(|(_, len)| len), Some(0));

    // The device still serves good requests afterwards.
    let (status, _) = request(&mut driver, T_IN, 1, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

#[test]
fn impossible_avail_index_stops_the_queue_without_spinning() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    // 64-entry queue, driver claims 1000 new buffers.
    driver.queues[0].set_avail_idx(&driver.mem, 1000);
    driver.kick(0);
    assert_eq!(driver.pop_used(0), None);
}

#[test]
fn flush_get_id_and_unsupported_types() {
    let file = disk(DISK_SECTORS);
    let block = Block::new(file.path(), false).unwrap();
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

#[test]
fn feature_negotiation_without_version_1_is_refused() {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
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

#[test]
fn unoffered_feature_bits_are_not_acked() {
    let file = disk(DISK_SECTORS);
    // Writable disk: RO is not offered, a driver acking it anyway must not make it read-only
    // or break negotiation.
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
    assert!(driver.negotiate(F_VERSION_1 | F_BLK_RO | (1 << 40)));
}

#[test]
fn queue_notify_write_signals_the_queue_eventfd() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    driver.write32(REG_QUEUE_NOTIFY, 0);
    assert_eq!(driver.transport.queue_events()[0].read().unwrap(), 1);
    assert_eq!(driver.transport.queue_events().len(), 1);
    assert!(driver.transport.event_sources().is_empty());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    // Driver wants an interrupt only after the 3rd completion (used index passes 2).
    driver.queues[0].set_used_event(&driver.mem, 2);
    for expect_irq in [false, false, true] {
        let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::w(DATA, 512)));
        assert_eq!(status, S_OK);
        assert_eq!(driver.take_irq(), expect_irq);
    }
}

#[test]
fn reset_in_the_middle_of_work_drops_queues_and_can_restart() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    driver
        .mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .unwrap();
    write_header(&driver, HDR, T_OUT, 5);
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

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let file = disk(DISK_SECTORS);
    let mut driver = block_driver(&file, false);
    driver.write32(REG_QUEUE_SEL, 0);
    driver.write32(REG_QUEUE_READY, 0);
    assert_eq!(driver.read32(REG_QUEUE_READY), 1);
    let (status, _) = request(&mut driver, T_IN, 0, Some(Buf::w(DATA, 512)));
    assert_eq!(status, S_OK);
}

#[test]
fn activation_with_unready_queue_sets_needs_reset() {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
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

#[test]
fn narrow_register_accesses_are_ignored() {
    let file = disk(DISK_SECTORS);
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
    let mut byte = [0xffu8; 1];
    driver.transport.read(REG_MAGIC, &mut byte);
    assert_eq!(byte, [0]);
    driver.transport.write(REG_STATUS, &[1]);
    assert_eq!(driver.status(), 0);
    assert_eq!(driver.read32(REG_CONFIG_GENERATION), 0);
}

#[test]
fn opening_bad_paths_names_the_path() {
    let missing = std::path::Path::new("/nonexistent/volt-disk.img");
    let err = Block::new(missing, false).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/volt-disk.img"), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Block::new(dir.path(), true).err().unwrap().to_string();
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
        let err = Block::new(file.path(), false).err().unwrap().to_string();
        assert!(err.contains("Permission denied"), "{err}");
    }
    assert!(Block::new(file.path(), true).is_ok());
}

#[test]
fn transport_rejects_nothing_for_a_plain_device_construction() {
    // MmioTransport::new is usable directly with any VirtioDevice.
    let file = disk(DISK_SECTORS);
    let irq = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let transport = MmioTransport::new(
        Box::new(Block::new(file.path(), false).unwrap()),
        guest_memory(),
        irq,
    )
    .unwrap();
    assert_eq!(transport.queue_events().len(), 1);
}
