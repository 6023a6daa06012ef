//! Intel MultiProcessor Specification 1.4 tables, the way a BIOS leaves them for the OS.
//!
//! Linux finds the 16-byte floating pointer by scanning the last KiB of base memory
//! ([`EBDA_START`]); it points at the PCMP configuration table that follows it directly.
//! The table lists one processor entry per vCPU, the ISA bus, the I/O APIC and the routing
//! of ISA IRQs 0-15 to I/O APIC pins.
//!
//! Up to 41 vCPUs the whole table fits in the reserved EBDA KiB. Larger tables run on into
//! the legacy VGA/option-ROM hole, which the e820 map never reports as RAM, so the guest never
//! reuses it; the table must end before the ACPI tables at [`ACPI_START`].

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{addr32, low_u32, ACPI_START, EBDA_START, IOAPIC_START, LAPIC_START};
use super::vcpu_count::VcpuCount;

const MPC_SPEC_REV: u8 = 4;
const MP_FEATURE2_IMCR: u8 = 0x80;
/// Linux prints these as `MPTABLE: OEM ID: NOVAFLAR` and `MPTABLE: Product ID: VOLT VM`; the
/// ACPI tables carry matching ids (see `acpi::OEM_ID`).
pub const MPC_OEM_ID: [u8; 8] = *b"NOVAFLAR";
pub const MPC_PRODUCT_ID: [u8; 12] = *b"VOLT VM     ";

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;

const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Local APIC version of an integrated APIC (what KVM's in-kernel LAPIC reports).
const LAPIC_VERSION: u8 = 0x14;
/// Family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_FLAG_ENABLED: u8 = 1;
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: [u8; 6] = *b"ISA   ";
const INT_TYPE_INT: u8 = 0;
/// Polarity and trigger "conform to bus" (edge, active high for ISA).
const INT_FLAG_CONFORMS: u16 = 0;
const ISA_IRQS: u8 = 16;

/// MP floating pointer structure ("_MP_"), 16 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpFloatingPointer {
    pub signature: [u8; 4],
    pub physptr: u32,
    pub length: u8,
    pub spec_rev: u8,
    pub checksum: u8,
    pub feature1: u8,
    pub feature2: u8,
    pub feature3: [u8; 3],
}

/// MP configuration table header ("PCMP"), 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpConfigHeader {
    pub signature: [u8; 4],
    pub length: u16,
    pub spec_rev: u8,
    pub checksum: u8,
    pub oem_id: [u8; 8],
    pub product_id: [u8; 12],
    pub oem_table_ptr: u32,
    pub oem_table_size: u16,
    pub entry_count: u16,
    pub lapic_addr: u32,
    pub ext_table_length: u16,
    pub ext_table_checksum: u8,
    pub reserved: u8,
}

/// Processor entry, 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpProcessor {
    pub entry_type: u8,
    pub apic_id: u8,
    pub apic_version: u8,
    pub cpu_flags: u8,
    pub cpu_signature: u32,
    pub feature_flags: u32,
    pub reserved: [u32; 2],
}

/// Bus entry, 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpBus {
    pub entry_type: u8,
    pub bus_id: u8,
    pub bus_type: [u8; 6],
}

/// I/O APIC entry, 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpIoApic {
    pub entry_type: u8,
    pub apic_id: u8,
    pub apic_version: u8,
    pub flags: u8,
    pub apic_addr: u32,
}

/// I/O interrupt assignment entry, 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpIntSrc {
    pub entry_type: u8,
    pub irq_type: u8,
    pub irq_flags: u16,
    pub src_bus_id: u8,
    pub src_bus_irq: u8,
    pub dst_apic_id: u8,
    pub dst_apic_pin: u8,
}

// SAFETY: all of the above are packed plain-old-data made of integers and byte arrays; every
// bit pattern is valid and there is no padding.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: see above.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: see above.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: see above.
unsafe impl ByteValued for MpBus {}
// SAFETY: see above.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: see above.
unsafe impl ByteValued for MpIntSrc {}

const _: () = assert!(size_of::<MpFloatingPointer>() == 16);
const _: () = assert!(size_of::<MpConfigHeader>() == 44);
const _: () = assert!(size_of::<MpProcessor>() == 20);
const _: () = assert!(size_of::<MpBus>() == 8);
const _: () = assert!(size_of::<MpIoApic>() == 8);
const _: () = assert!(size_of::<MpIntSrc>() == 8);

/// Errors while building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("MP table of {size} bytes at {start:#x} would run past {limit:#x}")]
    TooBig { size: usize, start: u64, limit: u64 },
    #[error("cannot write the MP table to guest memory at {0:#x} (is guest memory large enough?)")]
    Write(u64),
}

/// The I/O APIC's id for `count` vCPUs (whose APIC ids are 0..count): the first one free.
/// The ACPI MADT uses the same.
pub fn ioapic_id(count: VcpuCount) -> u8 {
    count.get()
}

/// Total size in bytes of the floating pointer plus the configuration table for `count` vCPUs.
pub fn mptable_size(count: VcpuCount) -> usize {
    size_of::<MpFloatingPointer>() + config_table_size(count)
}

fn config_table_size(count: VcpuCount) -> usize {
    size_of::<MpConfigHeader>()
        + size_of::<MpProcessor>() * count.as_usize()
        + size_of::<MpBus>()
        + size_of::<MpIoApic>()
        + size_of::<MpIntSrc>() * usize::from(ISA_IRQS)
}

fn checksum_add(sum: u8, bytes: &[u8]) -> u8 {
    bytes.iter().fold(sum, |acc, b| acc.wrapping_add(*b))
}

/// Value that makes `bytes` (with a zero checksum field) sum to 0 modulo 256.
fn checksum_for(sum: u8) -> u8 {
    0u8.wrapping_sub(sum)
}

/// Builds the complete table (floating pointer first) as it must appear at `start`.
fn build_mptable(count: VcpuCount, start: u64) -> Vec<u8> {
    let config_start = start + size_of::<MpFloatingPointer>() as u64;
    let mut entries: Vec<u8> = Vec::with_capacity(config_table_size(count));
    for cpu in count.indices() {
        let mut flags = CPU_FLAG_ENABLED;
        if cpu.is_boot() {
            flags |= CPU_FLAG_BSP;
        }
        let entry = MpProcessor {
            entry_type: ENTRY_PROCESSOR,
            apic_id: cpu.get(),
            apic_version: LAPIC_VERSION,
            cpu_flags: flags,
            cpu_signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURES,
            reserved: [0; 2],
        };
        entries.extend_from_slice(entry.as_slice());
    }
    let bus = MpBus {
        entry_type: ENTRY_BUS,
        bus_id: ISA_BUS_ID,
        bus_type: ISA_BUS_TYPE,
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic_id = ioapic_id(count);
    let ioapic = MpIoApic {
        entry_type: ENTRY_IOAPIC,
        apic_id: ioapic_id,
        apic_version: IOAPIC_VERSION,
        flags: IOAPIC_FLAG_ENABLED,
        apic_addr: const { addr32(IOAPIC_START) },
    };
    entries.extend_from_slice(ioapic.as_slice());
    for irq in 0..ISA_IRQS {
        let intsrc = MpIntSrc {
            entry_type: ENTRY_INTSRC,
            // Every ISA IRQ, IRQ0 (the PIT) included, is a plain interrupt on I/O APIC pin
            // `irq`, which is how KVM's in-kernel I/O APIC routes GSIs 0-15. Declaring pin 0 as
            // ExtINT instead makes Linux 6.1 look for the timer elsewhere and oops in
            // check_timer() (seen booting a real kernel under nested KVM). The 8259's ExtINT
            // reaches the CPUs through LAPIC LINT0 (see regs::setup_lapic_lints).
            irq_type: INT_TYPE_INT,
            irq_flags: INT_FLAG_CONFORMS,
            src_bus_id: ISA_BUS_ID,
            src_bus_irq: irq,
            dst_apic_id: ioapic_id,
            dst_apic_pin: irq,
        };
        entries.extend_from_slice(intsrc.as_slice());
    }

    let mut header = MpConfigHeader {
        signature: *b"PCMP",
        // At most 44 + 254 * 20 + 20 + 8 + 16 * 8 bytes: fits in u16.
        length: u16::try_from(config_table_size(count)).unwrap_or(u16::MAX),
        spec_rev: MPC_SPEC_REV,
        checksum: 0,
        oem_id: MPC_OEM_ID,
        product_id: MPC_PRODUCT_ID,
        oem_table_ptr: 0,
        oem_table_size: 0,
        entry_count: u16::from(count.get()) + 2 + u16::from(ISA_IRQS),
        lapic_addr: const { addr32(LAPIC_START) },
        ext_table_length: 0,
        ext_table_checksum: 0,
        reserved: 0,
    };
    let sum = checksum_add(checksum_add(0, header.as_slice()), &entries);
    header.checksum = checksum_for(sum);

    let mut floating = MpFloatingPointer {
        signature: *b"_MP_",
        physptr: low_u32(config_start), // in the EBDA, below 1 MiB
        length: 1,                      // in 16-byte paragraphs
        spec_rev: MPC_SPEC_REV,
        checksum: 0,
        feature1: 0, // 0: a configuration table is present
        feature2: MP_FEATURE2_IMCR,
        feature3: [0; 3],
    };
    floating.checksum = checksum_for(checksum_add(0, floating.as_slice()));

    let mut table = Vec::with_capacity(mptable_size(count));
    table.extend_from_slice(floating.as_slice());
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    table
}

/// Writes the MP floating pointer and configuration table for `count` vCPUs at
/// [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, count: VcpuCount) -> Result<(), MptableError> {
    let size = mptable_size(count);
    if EBDA_START + size as u64 > ACPI_START {
        return Err(MptableError::TooBig {
            size,
            start: EBDA_START,
            limit: ACPI_START,
        });
    }
    let table = build_mptable(count, EBDA_START);
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|_| MptableError::Write(EBDA_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::EBDA_END;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn n(count: u8) -> VcpuCount {
        VcpuCount::new(count).unwrap()
    }

    fn read_table(mem: &GuestMemoryMmap, count: u8) -> Vec<u8> {
        let mut buf = vec![0u8; mptable_size(n(count))];
        mem.read_slice(&mut buf, GuestAddress(EBDA_START)).unwrap();
        buf
    }

    fn sum(bytes: &[u8]) -> u8 {
        checksum_add(0, bytes)
    }

    #[test]
    fn sizes_match_the_spec_layout() {
        assert_eq!(mptable_size(n(1)), 224);
        assert_eq!(mptable_size(n(2)), 244);
        assert_eq!(mptable_size(n(4)), 284);
        assert_eq!(mptable_size(n(254)), 16 + 44 + 20 * 254 + 8 + 8 + 16 * 8);
    }

    #[test]
    fn floating_pointer_bytes() {
        let mem = mem();
        setup_mptable(&mem, n(1)).unwrap();
        let t = read_table(&mem, 1);
        assert_eq!(&t[0..4], b"_MP_");
        let physptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(physptr), EBDA_START + 16);
        assert_eq!(t[8], 1, "length in paragraphs");
        assert_eq!(t[9], 4, "spec rev 1.4");
        assert_eq!(t[11], 0, "feature1: table present, no default config");
        assert_eq!(t[12], 0x80, "IMCR present");
        assert_eq!(&t[13..16], &[0, 0, 0]);
        assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
    }

    #[test]
    fn config_header_bytes_and_checksum() {
        let mem = mem();
        for cpus in [1u8, 2, 4, 254] {
            setup_mptable(&mem, n(cpus)).unwrap();
            let t = read_table(&mem, cpus);
            let pcmp = &t[16..];
            assert_eq!(&pcmp[0..4], b"PCMP");
            let length = u16::from_le_bytes([pcmp[4], pcmp[5]]) as usize;
            assert_eq!(length, mptable_size(n(cpus)) - 16);
            assert_eq!(pcmp.len(), length);
            assert_eq!(pcmp[6], 4, "spec rev");
            assert_eq!(&pcmp[8..16], b"NOVAFLAR");
            assert_eq!(&pcmp[16..28], b"VOLT VM     ");
            let entry_count = u16::from_le_bytes([pcmp[34], pcmp[35]]);
            assert_eq!(entry_count, u16::from(cpus) + 18);
            let lapic = u32::from_le_bytes(pcmp[36..40].try_into().unwrap());
            assert_eq!(lapic, 0xfee0_0000);
            assert_eq!(sum(pcmp), 0, "PCMP checksum for {cpus} cpus");
            assert_eq!(sum(&t[0..16]), 0);
        }
    }

    #[test]
    fn processor_entries() {
        let mem = mem();
        setup_mptable(&mem, n(4)).unwrap();
        let t = read_table(&mem, 4);
        for cpu in 0..4usize {
            let e = &t[60 + cpu * 20..60 + (cpu + 1) * 20];
            assert_eq!(e[0], 0, "processor entry type");
            assert_eq!(e[1] as usize, cpu, "APIC id");
            assert_eq!(e[2], 0x14, "LAPIC version");
            let expected_flags = if cpu == 0 { 0b11 } else { 0b01 };
            assert_eq!(e[3], expected_flags, "EN/BP flags of cpu {cpu}");
            assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), 0x600);
            assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 0x201);
            assert_eq!(&e[12..20], &[0; 8]);
        }
    }

    #[test]
    fn bus_ioapic_and_interrupt_entries() {
        let mem = mem();
        let cpus = 2u8;
        setup_mptable(&mem, n(cpus)).unwrap();
        let t = read_table(&mem, cpus);
        let bus = &t[60 + 40..60 + 48];
        assert_eq!(bus, &[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        let ioapic = &t[108..116];
        assert_eq!(&ioapic[0..4], &[2, cpus, 0x11, 1]);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
        for irq in 0..16usize {
            let e = &t[116 + irq * 8..116 + (irq + 1) * 8];
            let irq8 = u8::try_from(irq).unwrap();
            assert_eq!(e, &[3, 0, 0, 0, 0, irq8, cpus, irq8], "IRQ {irq}");
        }
        assert_eq!(116 + 16 * 8, mptable_size(n(cpus)));
    }

    #[test]
    fn up_to_41_cpus_fit_in_the_ebda() {
        assert!(EBDA_START + mptable_size(n(41)) as u64 <= EBDA_END);
        assert!(EBDA_START + mptable_size(n(42)) as u64 > EBDA_END);
    }

    #[test]
    fn max_cpus_table_stays_below_the_acpi_tables() {
        let mem = mem();
        setup_mptable(&mem, n(254)).unwrap();
        let t = read_table(&mem, 254);
        assert!(EBDA_START + t.len() as u64 <= ACPI_START);
        // The last processor and the I/O APIC ids.
        let last = 60 + 253 * 20;
        assert_eq!(t[last + 1], 253);
        assert_eq!(t[last + 3], 1);
        let ioapic = 60 + 254 * 20 + 8;
        assert_eq!(t[ioapic + 1], 254);
    }

    #[test]
    fn memory_too_small_is_an_error() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9f000)]).unwrap();
        assert_eq!(
            setup_mptable(&tiny, n(1)),
            Err(MptableError::Write(EBDA_START))
        );
    }
}
