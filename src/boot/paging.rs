//! Identity-mapped page tables for the first 1 GiB: PML4[0] -> PDPT[0] -> PD with 512
//! 2 MiB pages. Enough for the kernel's early 64-bit code, which builds its own tables.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDPT_START, PD_START, PML4_START};

/// Present and writable.
const PAGE_PRESENT_RW: u64 = 0x3;
/// Page size bit in a PD entry: a 2 MiB page.
const PAGE_PS: u64 = 0x80;
const PAGE_2M: u64 = 2 << 20;
const ENTRIES: u64 = 512;

/// Writes PML4, PDPT and PD; CR3 must be [`PML4_START`].
pub fn write_identity_page_tables(
    mem: &GuestMemoryMmap,
) -> Result<(), vm_memory::GuestMemoryError> {
    // The unused entries must be zero even if the memory was used before.
    for table in [PML4_START, PDPT_START] {
        mem.write_slice(&[0u8; 4096], GuestAddress(table))?;
    }
    mem.write_obj(PDPT_START | PAGE_PRESENT_RW, GuestAddress(PML4_START))?;
    mem.write_obj(PD_START | PAGE_PRESENT_RW, GuestAddress(PDPT_START))?;
    for i in 0..ENTRIES {
        let entry = (i * PAGE_2M) | PAGE_PRESENT_RW | PAGE_PS;
        mem.write_obj(entry, GuestAddress(PD_START + i * 8))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_map_the_first_gib_one_to_one() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // Garbage where the tables go, to prove unused entries are cleared.
        mem.write_slice(&[0xffu8; 0x3000], GuestAddress(PML4_START))
            .unwrap();
        write_identity_page_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_START), 0xa003);
        assert_eq!(read(PDPT_START), 0xb003);
        for i in 1..512 {
            assert_eq!(read(PML4_START + i * 8), 0, "PML4[{i}]");
            assert_eq!(read(PDPT_START + i * 8), 0, "PDPT[{i}]");
        }
        for i in 0..512u64 {
            let e = read(PD_START + i * 8);
            assert_eq!(e & 1, 1, "present");
            assert_eq!((e >> 1) & 1, 1, "writable");
            assert_eq!((e >> 2) & 1, 0, "supervisor");
            assert_eq!((e >> 7) & 1, 1, "2 MiB page");
            assert_eq!(e & !0xfff, i << 21, "PD[{i}] maps itself");
        }
        assert_eq!(read(PD_START + 511 * 8), 0x3fe0_0083);
    }
}
