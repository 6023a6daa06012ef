//! The boot GDT: null, 64-bit code, data and TSS descriptors, and their `kvm_segment` form.
//!
//! In long mode base and limit of code/data segments are ignored, but KVM checks that the
//! hidden segment state in `kvm_sregs` matches a sane descriptor, so we derive both from the
//! same 64-bit descriptor value.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{GDT_START, IDT_START};

/// Flags word (bits 8..16 access byte, 20..24 G/DB/L/AVL) of each descriptor.
/// Code: present, ring 0, code, exec/read, accessed; L=1 (64-bit).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Data: present, ring 0, data, read/write, accessed; G=1, D/B=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// TSS: present, 64-bit TSS (busy); G=1.
pub const TSS_FLAGS: u16 = 0x808b;

/// Index of each descriptor in the table; the selector is index * 8.
pub const CODE_INDEX: u8 = 1;
pub const DATA_INDEX: u8 = 2;
pub const TSS_INDEX: u8 = 3;

/// The four boot descriptors, in table order.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Encodes a segment descriptor from its flags word, base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn descriptor_base(entry: u64) -> u64 {
    ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)
}

fn descriptor_limit(entry: u64) -> u32 {
    let limit = super::layout::low_u32((entry & 0xffff) | ((entry >> 32) & 0x000f_0000));
    // With G=1 the limit counts 4 KiB pages.
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

/// The `kvm_segment` (hidden segment register state) for descriptor `entry` at `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: descriptor_base(entry),
        limit: descriptor_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT at [`GDT_START`] and an empty IDT slot at [`IDT_START`].
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_bit_by_bit() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x008f_8b00_0000_ffff);
        let code = gdt[1];
        assert_eq!((code >> 47) & 1, 1, "present");
        assert_eq!((code >> 44) & 1, 1, "code/data, not system");
        assert_eq!((code >> 43) & 1, 1, "executable");
        assert_eq!((code >> 53) & 1, 1, "L: 64-bit");
        assert_eq!((code >> 54) & 1, 0, "D/B must be 0 when L=1");
        assert_eq!((code >> 45) & 3, 0, "ring 0");
    }

    #[test]
    fn gdt_entry_places_base_and_limit() {
        let e = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        assert_eq!(descriptor_base(e), 0x1234_5678);
        assert_eq!(e & 0xffff, 0xbcde);
        assert_eq!((e >> 48) & 0xf, 0xa);
        assert_eq!((e >> 40) & 0xff, 0x93);
        assert_eq!((e >> 52) & 0xf, 0xc);
    }

    #[test]
    fn kvm_segments() {
        let gdt = boot_gdt();
        let code = kvm_segment_from_gdt(gdt[1], CODE_INDEX);
        assert_eq!(
            (code.selector, code.type_, code.present, code.s),
            (8, 0xb, 1, 1)
        );
        assert_eq!((code.l, code.db, code.g, code.dpl), (1, 0, 1, 0));
        assert_eq!((code.base, code.limit, code.unusable), (0, 0xffff_ffff, 0));
        let data = kvm_segment_from_gdt(gdt[2], DATA_INDEX);
        assert_eq!((data.selector, data.type_, data.s), (16, 0x3, 1));
        assert_eq!((data.l, data.db, data.g), (0, 1, 1));
        let tss = kvm_segment_from_gdt(gdt[3], TSS_INDEX);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.present),
            (24, 0xb, 0, 1)
        );
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt(&mem).unwrap();
        for (i, e) in boot_gdt().iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *e);
        }
        assert_eq!(mem.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
    }
}
