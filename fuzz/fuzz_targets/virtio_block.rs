//! A hostile guest drives virtio-block through the virtio-mmio transport: registers, descriptor
//! chains and avail indices from the fuzz input, a temp file as the disk. Checked: no panic,
//! no hang, and the disk image never grows (no write outside it).
#![no_main]

use std::io::Write;

use devices::virtio::Block;
use libfuzzer_sys::fuzz_target;
use volt_fuzz::{Input, VirtioGuest};

const DISK_LEN: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut disk = tempfile::NamedTempFile::new().unwrap();
    disk.write_all(&vec![0xa5; DISK_LEN as usize]).unwrap();
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    let block = Block::new(disk.path(), read_only).unwrap();
    let mut guest = VirtioGuest::new(Box::new(block));
    let mut input = Input::new(data);
    let mut steps = 0;
    while steps < 4096 && guest.step(&mut input) {
        steps += 1;
    }
    if std::env::var_os("VOLT_FUZZ_TRACE").is_some() {
        eprintln!(
            "status {:#x} used {:?} status byte {:?} transport {:?} device {:?}",
            guest.transport.status(),
            vm_memory::Bytes::read_obj::<u16>(
                &guest.mem,
                vm_memory::GuestAddress(volt_fuzz::RINGS + 0x2002)
            ),
            vm_memory::Bytes::read_obj::<u8>(&guest.mem, vm_memory::GuestAddress(0x22000)),
            guest.transport.counters(),
            guest.transport.device_counters()
        );
    }
    let len = disk.as_file().metadata().unwrap().len();
    assert_eq!(
        len, DISK_LEN,
        "the guest changed the size of its disk image"
    );
});
