//! A virtio-mmio transport saved mid-life and restored into a fresh transport (as a snapshot
//! restore does): the driver carries on with the same queues, indices and features.

mod common;

use std::io::Write;

use common::*;
use devices::state::Persist;
use devices::virtio::{Block, MmioTransport};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const T_OUT: u32 = 1;
const T_IN: u32 = 0;
const HDR: u64 = DATA_START;
const STATUS: u64 = DATA_START + 0x100;
const DATA: u64 = DATA_START + 0x1000;

fn disk() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![0u8; 64 * 512]).unwrap();
    file
}

/// One block request; returns the status byte.
fn request(driver: &mut Driver, request_type: u32, sector: u64, data: Buf) -> u8 {
    driver.write_blk_header(HDR, request_type, sector);
    driver.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    driver.add_chain(0, &[Buf::r(HDR, 16), data, Buf::w(STATUS, 1)]);
    driver.kick(0);
    driver.pop_used(0).expect("request completed");
    driver.mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn a_restored_transport_continues_the_driver_s_queues() {
    let file = disk();
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
    driver.init(F_VERSION_1 | F_EVENT_IDX, 1, 64);
    driver
        .mem
        .write_slice(b"before", GuestAddress(DATA))
        .unwrap();
    assert_eq!(request(&mut driver, T_OUT, 1, Buf::r(DATA, 512)), 0);
    assert!(driver.take_irq());
    let saved = driver.transport.save();
    assert!(saved.activated);
    assert_eq!(saved.queues[0].next_avail, 1);
    assert_eq!(saved.queues[0].next_used, 1);
    assert_ne!(saved.acked_features & F_EVENT_IDX, 0);

    // A fresh transport (a new process) over the same guest memory and disk.
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let device = Box::new(Block::new(file.path(), false).unwrap());
    let mut restored =
        MmioTransport::new(device, driver.mem.clone(), irq.try_clone().unwrap()).unwrap();
    restored.restore(&saved).unwrap();
    assert_eq!(restored.save(), saved);
    driver.transport = restored;
    driver.irq = irq;
    assert_eq!(driver.status() & S_DRIVER_OK, S_DRIVER_OK);
    // The next request goes through the restored queue: index 1, not 0.
    assert_eq!(request(&mut driver, T_IN, 1, Buf::w(DATA + 0x1000, 512)), 0);
    let mut back = [0u8; 6];
    driver
        .mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(&back, b"before");
    assert_eq!(driver.transport.save().queues[0].next_used, 2);
}

#[test]
fn states_the_device_could_not_be_in_are_refused() {
    let file = disk();
    let mut driver = Driver::new(Box::new(Block::new(file.path(), false).unwrap()));
    driver.init(F_VERSION_1, 1, 64);
    let saved = driver.transport.save();
    let fresh = || {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let device = Box::new(Block::new(file.path(), false).unwrap());
        MmioTransport::new(device, driver.mem.clone(), irq).unwrap()
    };
    let mut unoffered = saved.clone();
    unoffered.acked_features |= 1 << 50;
    let mut not_ok = saved.clone();
    not_ok.status = 0;
    let mut outside = saved.clone();
    outside.queues[0].desc_table = 1 << 40;
    let mut other_type = saved.clone();
    other_type.device_type = 1;
    let mut more_queues = saved.clone();
    more_queues.queues.push(saved.queues[0].clone());
    let mut bad_size = saved.clone();
    bad_size.queues[0].size = 3;
    for (what, state, expected) in [
        ("unoffered features", unoffered, "does not offer"),
        ("activated without DRIVER_OK", not_ok, "DRIVER_OK"),
        ("queue outside memory", outside, "not valid"),
        ("other device type", other_type, "device type"),
        ("extra queue", more_queues, "saved queues"),
        ("queue size not a power of two", bad_size, "queue 0"),
    ] {
        let err = fresh().restore(&state).expect_err(what).to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
}

#[test]
fn quiesce_finishes_io_uring_requests_in_flight_before_the_save() {
    let file = disk();
    let block = match Block::with_engine(file.path(), false, devices::virtio::BlockEngine::Uring) {
        Ok(block) => block,
        Err(e) => {
            eprintln!("SKIP: quiesce_finishes_io_uring_requests: no io_uring here ({e})");
            return;
        }
    };
    let mut driver = Driver::new(Box::new(block));
    driver.init(F_VERSION_1, 1, 64);
    for i in 0..8u64 {
        let at = DATA + i * 0x1000;
        driver
            .mem
            .write_obj(T_OUT, GuestAddress(HDR + i * 0x20))
            .unwrap();
        driver
            .mem
            .write_obj(i, GuestAddress(HDR + i * 0x20 + 8))
            .unwrap();
        driver.add_chain(
            0,
            &[
                Buf::r(HDR + i * 0x20, 16),
                Buf::r(at, 512),
                Buf::w(STATUS + i, 1),
            ],
        );
    }
    // Submitted to the ring, completions not reaped (as if a snapshot came now).
    driver.write32(REG_QUEUE_NOTIFY, 0);
    driver.transport.handle_queue_event(0);
    driver.transport.quiesce();
    let saved = driver.transport.save();
    assert_eq!(saved.queues[0].next_avail, 8);
    assert_eq!(
        saved.queues[0].next_used, 8,
        "every request finished before the save"
    );
    let mut done = 0;
    while driver.pop_used(0).is_some() {
        done += 1;
    }
    assert_eq!(done, 8);
}
