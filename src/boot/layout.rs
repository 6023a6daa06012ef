//! Guest physical memory map for the direct 64-bit Linux boot.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), IDT right after it (empty, limit 0)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  initial stack pointer of the boot vCPU (grows down, below PML4)
//! 0x0000_9000  PML4  \
//! 0x0000_a000  PDPT   } identity map of the first 1 GiB with 2 MiB pages
//! 0x0000_b000  PD    /
//! 0x0002_0000  kernel command line (CMDLINE_MAX_SIZE bytes, NUL included)
//! 0x0009_fc00  EBDA: MP floating pointer + MP configuration table (e820 reserved)
//! 0x000a_0000  legacy VGA / option ROM hole (never reported as RAM; the MP table runs on
//!              into it for more than 41 vCPUs)
//! 0x000e_0000  ACPI tables: RSDP first (Linux scans 0xE0000-0xFFFFF for it), then XSDT, FADT,
//!              MADT, DSDT (e820 reserved together with the BIOS ROM area)
//! 0x000f_0000  BIOS ROM area (e820 reserved)
//! 0x0010_0000  HIMEM: kernel load address; RAM continues up to min(end, MMIO_GAP_START)
//! 0xc000_0000  32-bit MMIO gap up to 4 GiB: no guest RAM here
//!   0xd000_0000  virtio-mmio devices, VIRTIO_MMIO_SIZE bytes each
//!   0xfec0_0000  I/O APIC
//!   0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above the gap when the guest has more than 3 GiB
//! ```

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::BootError;

/// Global descriptor table: null, code64, data, TSS (8 bytes each).
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table, right after the GDT. Linux installs its own; ours stays empty.
pub const IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`) handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial RSP/RBP of the boot vCPU; 16-byte aligned and below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table (PML4), loaded into CR3.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table referenced by PML4\[0\].
pub const PDPT_START: u64 = 0xa000;
/// Page directory referenced by PDPT\[0\]: 512 entries of 2 MiB = the first 1 GiB.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we write, terminating NUL included (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: the last KiB of base memory, where Linux scans for
/// the MP floating pointer. The MP table starts here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of base memory (640 KiB); [EBDA_START, EBDA_END) is reserved in the e820 map.
pub const EBDA_END: u64 = 0xa0000;
/// Start of the ACPI tables; the RSDP sits here, 16-byte aligned inside the BIOS area that
/// Linux scans for it. [ACPI_START, HIMEM_START) is reserved in the e820 map.
pub const ACPI_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI tables.
pub const ACPI_END: u64 = BIOS_ROM_START;
/// Start of the legacy BIOS ROM area, reported as reserved in the e820 map.
pub const BIOS_ROM_START: u64 = 0xf0000;
/// Start of high memory (1 MiB): the kernel is loaded here.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap; guest RAM never overlaps [MMIO_GAP_START, MMIO_GAP_END).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB); RAM that did not fit below the gap continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// I/O APIC MMIO base (the in-kernel irqchip's default).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base (architectural default).
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Smallest guest we accept: the boot tables and the kernel at HIMEM need at least 2 MiB.
pub const MIN_MEM_BYTES: u64 = 2 << 20;

// Volt runs x86-64 guests on x86-64 hosts only: guest sizes and addresses (u64) fit in usize.
const _: () = assert!(usize::BITS == 64);

/// A constant guest address below 4 GiB as the 32-bit field boot structures store it in;
/// checked at compile time when used in a `const`.
#[allow(clippy::cast_possible_truncation)] // asserted to fit just above
pub const fn addr32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64, "address above 4 GiB");
    addr as u32
}

/// The low 32 bits of `value` (the first half of a split 64-bit boot-protocol field).
#[allow(clippy::cast_possible_truncation)] // dropping the high half is the point
pub const fn low_u32(value: u64) -> u32 {
    value as u32
}

/// A guest memory size or offset as usize (lossless: see the assertion on usize::BITS).
#[allow(clippy::cast_possible_truncation)] // usize is 64 bits here
pub const fn to_usize(value: u64) -> usize {
    value as usize
}
/// Page granularity for guest memory sizes.
pub const PAGE_SIZE: u64 = 0x1000;

// The fixed regions must not overlap; checked at compile time.
const _: () = {
    assert!(IDT_START >= GDT_START + 4 * 8);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER - 0x800);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDPT_START == PML4_START + 0x1000 && PD_START == PDPT_START + 0x1000);
    assert!(PD_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_END <= ACPI_START && ACPI_START < ACPI_END);
    assert!(ACPI_END <= BIOS_ROM_START && BIOS_ROM_START < HIMEM_START);
    assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START && IOAPIC_START < LAPIC_START);
    assert!(LAPIC_START < MMIO_GAP_END);
};

/// Guest RAM regions for `mem_bytes` of memory: everything below the MMIO gap first, the rest
/// from 4 GiB up. Returns an empty list for 0 bytes.
pub fn guest_ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let high = mem_bytes - low;
    let mut ranges = Vec::with_capacity(2);
    if low > 0 {
        ranges.push((GuestAddress(0), to_usize(low)));
    }
    if high > 0 {
        ranges.push((GuestAddress(MMIO_GAP_END), to_usize(high)));
    }
    ranges
}

/// End (exclusive) of the RAM region that starts at 0, i.e. the top of low memory.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// Total bytes of guest RAM in `mem`.
pub fn guest_mem_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Allocates anonymous guest memory laid out by [`guest_ram_ranges`].
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, BootError> {
    if mem_bytes < MIN_MEM_BYTES || mem_bytes % PAGE_SIZE != 0 {
        return Err(BootError::InvalidMemorySize(mem_bytes));
    }
    GuestMemoryMmap::from_ranges(&guest_ram_ranges(mem_bytes))
        .map_err(|e| BootError::GuestMemory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, GuestMemoryBackend};

    #[test]
    fn small_memory_is_one_region_below_the_gap() {
        assert_eq!(
            guest_ram_ranges(256 << 20),
            vec![(GuestAddress(0), 256 << 20)]
        );
        assert_eq!(
            guest_ram_ranges(MMIO_GAP_START),
            vec![(GuestAddress(0), to_usize(MMIO_GAP_START))]
        );
        assert!(guest_ram_ranges(0).is_empty());
    }

    #[test]
    fn large_memory_continues_above_4g() {
        let ranges = guest_ram_ranges(4 << 30);
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), 0xc000_0000),
                (GuestAddress(0x1_0000_0000), 0x4000_0000)
            ]
        );
        let total: usize = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 4 << 30);
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn create_guest_memory_builds_the_ranges() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert_eq!(region.start_addr(), GuestAddress(0));
        assert_eq!(region.len(), 64 << 20);
        assert_eq!(mem.last_addr().raw_value(), (64 << 20) - 1);
    }

    #[test]
    fn create_guest_memory_skips_the_mmio_gap() {
        use vm_memory::{Bytes, GuestMemoryRegion};
        let mem = create_guest_memory((3 << 30) + (64 << 20)).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, 0xc000_0000), (0x1_0000_0000, 64 << 20)]);
        assert_eq!(guest_mem_bytes(&mem), (3 << 30) + (64 << 20));
        // RAM above 4 GiB is usable, the gap is not backed.
        mem.write_obj(0x55u8, GuestAddress(MMIO_GAP_END)).unwrap();
        assert!(mem
            .write_obj(0x55u8, GuestAddress(VIRTIO_MMIO_BASE))
            .is_err());
    }

    #[test]
    fn create_guest_memory_rejects_bad_sizes() {
        for bad in [0, 1 << 20, (64 << 20) + 1] {
            let err = create_guest_memory(bad).unwrap_err();
            assert!(
                matches!(err, BootError::InvalidMemorySize(n) if n == bad),
                "{err}"
            );
        }
    }
}
