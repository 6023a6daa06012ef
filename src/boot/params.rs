//! The zero page (`struct boot_params`): setup header, command line and initrd location, and
//! the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    addr32, low_ram_end, low_u32, ACPI_START, CMDLINE_START, EBDA_END, EBDA_START, HIMEM_START,
    MMIO_GAP_END,
};
use super::loader::InitrdPlacement;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id, as every VMM uses.
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;
/// Alignment reported for ELF images, which have no setup header of their own (16 MiB, the
/// largest CONFIG_PHYSICAL_ALIGN; the value Firecracker reports too).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page besides the memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootParamsConfig {
    /// Total guest RAM in bytes.
    pub mem_bytes: u64,
    /// Command line size including its NUL; it lives at [`CMDLINE_START`].
    pub cmdline_size: usize,
    pub initrd: Option<InitrdPlacement>,
    /// The bzImage setup header; None for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
}

/// The e820 map for `mem_bytes` of guest RAM laid out by `layout::guest_ram_ranges`.
pub fn e820_map(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let low_end = low_ram_end(mem_bytes);
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        // The MP table lives here (and may run on into the VGA hole, which is left out).
        entry(EBDA_START, EBDA_END, E820_RESERVED),
        // The ACPI tables and the BIOS ROM area.
        entry(ACPI_START, HIMEM_START, E820_RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push(entry(HIMEM_START, low_end, E820_RAM));
    }
    if mem_bytes > low_end {
        map.push(entry(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_bytes - low_end),
            E820_RAM,
        ));
    }
    map
}

/// Builds the zero page.
pub fn build_boot_params(config: &BootParamsConfig) -> boot_params {
    let hdr = match config.setup_header {
        Some(hdr) => hdr,
        None => setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            kernel_alignment: KERNEL_ALIGNMENT,
            ..Default::default()
        },
    };
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = const { addr32(CMDLINE_START) };
    // At most CMDLINE_MAX_SIZE (2 KiB): load_cmdline refuses longer lines.
    params.hdr.cmdline_size = u32::try_from(config.cmdline_size).unwrap_or(u32::MAX);
    if let Some(initrd) = config.initrd {
        params.hdr.ramdisk_image = low_u32(initrd.addr.0);
        params.hdr.ramdisk_size = low_u32(initrd.size);
        params.ext_ramdisk_image = low_u32(initrd.addr.0 >> 32);
        params.ext_ramdisk_size = low_u32(initrd.size >> 32);
    }
    let map = e820_map(config.mem_bytes);
    // A handful of entries, far below the table's 128 slots.
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    params.e820_table[..map.len()].copy_from_slice(&map);
    params
}

/// Writes `params` at `addr` (normally [`super::layout::ZERO_PAGE_START`]).
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    params: &boot_params,
    addr: GuestAddress,
) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(*params, addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::ZERO_PAGE_START;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn e820(p: &boot_params) -> Vec<(u64, u64, u32)> {
        p.e820_table[..usize::from(p.e820_entries)]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect()
    }

    fn round_trip(config: &BootParamsConfig) -> boot_params {
        let mem = mem();
        write_boot_params(
            &mem,
            &build_boot_params(config),
            GuestAddress(ZERO_PAGE_START),
        )
        .unwrap();
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn zero_page_for_an_elf_kernel() {
        let p = round_trip(&BootParamsConfig {
            mem_bytes: 128 << 20,
            cmdline_size: 31,
            initrd: None,
            setup_header: None,
        });
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 31);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!(
            e820(&p),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x100000, (128 << 20) - 0x100000, E820_RAM),
            ]
        );
        // Nothing else leaked into the page: the rest of the table is zero.
        assert_eq!({ p.e820_table[4].size }, 0);
        assert_eq!({ p.hdr.version }, 0);
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header_and_sets_the_initrd() {
        let hdr = setup_header {
            setup_sects: 27,
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x20f,
            loadflags: 1,
            code32_start: 0x100000,
            kernel_alignment: 0x20_0000,
            xloadflags: 0x7f,
            init_size: 0x123_4000,
            ..Default::default()
        };
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x7ff_0000),
            size: 0xf123,
        };
        let p = round_trip(&BootParamsConfig {
            mem_bytes: 128 << 20,
            cmdline_size: 100,
            initrd: Some(initrd),
            setup_header: Some(hdr),
        });
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.xloadflags }, 0x7f);
        assert_eq!({ p.hdr.init_size }, 0x123_4000);
        assert_eq!(p.hdr.type_of_loader, 0xff, "overrides the image's 0");
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 100);
        assert_eq!({ p.hdr.ramdisk_image }, 0x7ff_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0xf123);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.ext_ramdisk_size }, 0);
        assert_eq!(p.e820_entries, 4);
    }

    #[test]
    fn e820_for_memory_above_the_gap() {
        let mem_bytes = 6u64 << 30;
        assert_eq!(
            e820_map(mem_bytes)
                .iter()
                .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
                .collect::<Vec<_>>(),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x100000, 0xc000_0000 - 0x100000, E820_RAM),
                (0x1_0000_0000, (6 << 30) - 0xc000_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_ram_matches_guest_ram_outside_the_legacy_holes() {
        // Every RAM entry lies inside guest RAM, and the RAM entries add up to it minus the
        // EBDA and the 640 KiB..1 MiB hole.
        for mem_bytes in [2u64 << 20, 512 << 20, 3 << 30, 5 << 30] {
            let ram: u64 = e820_map(mem_bytes)
                .iter()
                .filter(|e| e.r#type == E820_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, mem_bytes - (HIMEM_START - EBDA_START), "{mem_bytes}");
        }
    }
}
