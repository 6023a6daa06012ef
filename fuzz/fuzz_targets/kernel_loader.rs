//! A hostile kernel image (ELF or bzImage headers and all) through the kernel loader, the
//! command line and boot-parameter writing (`boot::load_linux`), and the kernel store's
//! format detection and version scan. Checked: an error or a load, never a panic or a write
//! outside guest memory.
#![no_main]

use std::fs::File;
use std::io::{Cursor, Write};
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use volt::boot;
use volt::kernel_store::image::{detect_format, find_elf_banner, HEADER_LEN};

fn memfd(data: &[u8]) -> File {
    // SAFETY: a valid NUL-terminated name; the fd is fresh and owned by the File.
    let mut file = unsafe {
        let fd = libc::memfd_create(c"kernel".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        File::from_raw_fd(fd)
    };
    file.write_all(data).unwrap();
    file
}

fn guest_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| boot::create_guest_memory(32 << 20).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let _ = detect_format(&data[..data.len().min(HEADER_LEN)]);
    let _ = find_elf_banner(&mut Cursor::new(data));

    let mut kernel = memfd(data);
    let mut initrd = memfd(&[0x5a; 4096]);
    let with_initrd = data.len() % 2 == 0;
    let cpus = boot::VcpuCount::new(data.len() as u64 % 4 + 1).expect("1 to 4 vCPUs are valid");
    let _ = boot::load_linux(
        guest_memory(),
        &mut kernel,
        with_initrd.then_some(&mut initrd),
        "console=ttyS0 reboot=k panic=1",
        cpus,
    );
});
