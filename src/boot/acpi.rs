//! ACPI tables, written beside the MP table for kernels that find their CPUs and devices
//! through ACPI (some distribution kernels have no MP-table parser, none of Debian's has
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
//!
//! Built with rust-vmm's `acpi_tables` (tables, checksums, AML) and placed in
//! [`ACPI_START`, `ACPI_END`):
//! - **RSDP** at [`ACPI_START`], where Linux scans the BIOS area for it; it points at the XSDT.
//! - **XSDT** listing the FADT and the MADT.
//! - **FADT**, hardware-reduced (no PM1/GPE blocks, no SCI), pointing at the DSDT, with the
//!   sleep control/status registers of `devices::acpi_sleep` so that S5 (`poweroff`) reaches the
//!   VMM. IA-PC boot flags: an 8042 is present (Volt's i8042 ends the VM on reboot), no VGA, no
//!   MSI, no CMOS RTC.
//! - **MADT**: one enabled Local APIC per vCPU (processor UID = APIC id = vCPU index, as in the
//!   MP table and CPUID), the I/O APIC with the MP table's id, and one interrupt source override
//!   saying what the MP table says: ISA IRQ 0 (the PIT) is I/O APIC pin 0, not pin 2 as on PCs
//!   (KVM's default routing). Every other ISA IRQ is identity-mapped, the ACPI default.
//! - **DSDT**: COM1 (`PNP0501`, ports 0x3f8-0x3ff, IRQ 4), one `LNRO0005` device per virtio-mmio
//!   window with its IRQ (edge, active high), and `\_S5`.

use std::mem::size_of;

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::acpi_sleep::{
    S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET, SLEEP_PORT_BASE, SLEEP_STATUS_OFFSET,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    addr32, low_u32, ACPI_END, ACPI_START, IOAPIC_START, LAPIC_START, MMIO_GAP_END,
};
use super::mptable::ioapic_id;
use super::vcpu_count::VcpuCount;

/// OEM ID of every table: the 6-byte field holds the start of the MP table's `NOVAFLAR`.
pub const OEM_ID: [u8; 6] = *b"NOVAFL";
/// OEM table ID of every table: the MP table's product id `VOLT VM`.
pub const OEM_TABLE_ID: [u8; 8] = *b"VOLT VM ";
pub const OEM_REVISION: u32 = 1;

/// COM1 as the DSDT describes it (the device itself lives in `device_manager`).
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_COUNT: u8 = 8;
pub const COM1_IRQ: u32 = 4;
/// Pins of KVM's in-kernel I/O APIC: GSIs 0..24.
const IOAPIC_PINS: u32 = 24;

/// MADT flag: the machine also has dual 8259s (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_REVISION: u8 = 5;
const DSDT_REVISION: u8 = 2;
/// IA-PC boot architecture flags (FADT offset 109).
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// Tables are placed at this alignment inside the ACPI area.
const TABLE_ALIGN: u64 = 16;

/// One virtio-mmio device as the guest must find it: its MMIO window and its IRQ (= GSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("virtio-mmio window {base:#x}+{size:#x} does not fit below 4 GiB")]
    WindowAbove4G { base: u64, size: u64 },
    #[error("virtio-mmio IRQ {0} is not an I/O APIC pin (0..{IOAPIC_PINS})")]
    Irq(u32),
    #[error("ACPI tables of {size} bytes do not fit in [{ACPI_START:#x}, {ACPI_END:#x})")]
    TooBig { size: u64 },
    #[error(
        "cannot write the ACPI tables to guest memory at {0:#x} (is guest memory large enough?)"
    )]
    Write(u64),
}

/// MADT interrupt source override (ACPI 6.5, 5.2.12.5), 10 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct InterruptSourceOverride {
    entry_type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}
// SAFETY: packed plain-old-data of integers; every bit pattern is valid, no padding.
unsafe impl ByteValued for InterruptSourceOverride {}
const _: () = assert!(size_of::<InterruptSourceOverride>() == 10);
const MADT_TYPE_ISO: u8 = 2;
/// Polarity and trigger "conform to the bus" (ISA: edge, active high).
const ISO_FLAGS_CONFORMS: u16 = 0;

/// The tables and where each one goes, RSDP first.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// Address of the RSDP.
    pub fn rsdp_addr(&self) -> u64 {
        self.tables[0].0
    }

    /// One past the last byte used.
    pub fn end(&self) -> u64 {
        self.tables
            .iter()
            .map(|(addr, bytes)| addr + bytes.len() as u64)
            .max()
            .unwrap_or(ACPI_START)
    }
}

fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    item.to_aml_bytes(&mut bytes);
    bytes
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn dsdt(virtio: &[VirtioMmioDevice]) -> Sdt {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_COUNT);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let mut body = aml_bytes(&aml::Device::new(
        "\\_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    ));
    for (index, device) in virtio.iter().enumerate() {
        // Virtio windows live below 4 GiB (layout::VIRTIO_MMIO_BASE) and are 4 KiB each.
        let window = aml::Memory32Fixed::new(true, low_u32(device.base), low_u32(device.size));
        let irq = aml::Interrupt::new(true, true, false, false, device.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let uid = u32::try_from(index).unwrap_or(u32::MAX);
        let path = format!("\\_SB_.VR{index:02X}");
        body.extend(aml_bytes(&aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )));
    }
    // \_S5: SLP_TYPa, SLP_TYPb and two reserved values.
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]);
    body.extend(aml_bytes(&aml::Name::new("_S5_".into(), &s5)));
    dsdt.append_slice(&body);
    dsdt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let sleep_reg = |offset: u64| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(SLEEP_PORT_BASE) + offset,
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch =
        (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT)
            .into();
    fadt.sleep_control_reg = sleep_reg(SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = sleep_reg(SLEEP_STATUS_OFFSET);
    aml_bytes(&fadt.finalize())
}

fn madt(count: VcpuCount) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, addr32(LAPIC_START));
    madt.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for cpu in count.indices() {
        // Processor UID and APIC id are both the vCPU index, as in the MP table and CPUID.
        let lapic = ProcessorLocalApic::new(cpu.get(), cpu.get(), EnabledStatus::Enabled);
        entries.extend(aml_bytes(&lapic));
    }
    entries.extend(aml_bytes(&IoApic::new(
        ioapic_id(count),
        addr32(IOAPIC_START),
        0,
    )));
    let timer = InterruptSourceOverride {
        entry_type: MADT_TYPE_ISO,
        length: u8::try_from(size_of::<InterruptSourceOverride>()).unwrap_or(u8::MAX),
        bus: 0,
        source: 0,
        gsi: 0,
        flags: ISO_FLAGS_CONFORMS,
    };
    entries.extend_from_slice(timer.as_slice());
    madt.append_slice(&entries);
    madt
}

/// Builds every table for `count` vCPUs and the given virtio-mmio devices, each with the
/// address it must be written at.
pub fn build_acpi_tables(
    count: VcpuCount,
    virtio: &[VirtioMmioDevice],
) -> Result<AcpiTables, AcpiError> {
    for device in virtio {
        let end = device.base.checked_add(device.size);
        if end.map_or(true, |end| end > MMIO_GAP_END) {
            return Err(AcpiError::WindowAbove4G {
                base: device.base,
                size: device.size,
            });
        }
        if device.irq >= IOAPIC_PINS {
            return Err(AcpiError::Irq(device.irq));
        }
    }
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align_up(rsdp_addr + Rsdp::len() as u64);
    // The XSDT lists the FADT and the MADT.
    let fadt_addr = align_up(xsdt_addr + 36 + 2 * 8);
    let madt_addr = align_up(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let madt = madt(count);
    let dsdt_addr = align_up(madt_addr + madt.len() as u64);
    let dsdt = dsdt(virtio);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let tables = AcpiTables {
        tables: vec![
            (rsdp_addr, aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
            (xsdt_addr, aml_bytes(&xsdt)),
            (fadt_addr, fadt(dsdt_addr)),
            (madt_addr, madt.as_slice().to_vec()),
            (dsdt_addr, dsdt.as_slice().to_vec()),
        ],
    };
    if tables.end() > ACPI_END {
        return Err(AcpiError::TooBig {
            size: tables.end() - ACPI_START,
        });
    }
    Ok(tables)
}

/// Builds the tables and writes them into guest memory; returns the RSDP's address.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    count: VcpuCount,
    virtio: &[VirtioMmioDevice],
) -> Result<u64, AcpiError> {
    let tables = build_acpi_tables(count, virtio)?;
    for (addr, bytes) in &tables.tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::Write(*addr))?;
    }
    Ok(tables.rsdp_addr())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values
mod tests {
    use std::ptr::NonNull;
    use std::rc::Rc;

    use ::acpi::fadt::Fadt;
    use ::acpi::madt::{Madt, MadtEntry};
    use ::acpi::{AcpiHandler, PhysicalMapping};

    use super::*;
    use crate::boot::layout::{
        CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, GDT_START, HIMEM_START, PD_START, PML4_START,
        VIRTIO_MMIO_SIZE, ZERO_PAGE_START,
    };
    use crate::boot::mptable::{mptable_size, setup_mptable};
    use crate::boot::MAX_VCPUS;

    fn n(count: u8) -> VcpuCount {
        VcpuCount::new(count).unwrap()
    }
    use crate::boot::params::{e820_map, E820_RAM, E820_RESERVED};
    use crate::device_manager::{virtio_slot, VIRTIO_IRQS};

    /// All of the test guest's memory (the RSDP scan maps past 1 MiB).
    const LOW_MEM: usize = 2 << 20;

    /// The test guest's memory, mapped for the `acpi` crate as if it were physical memory.
    #[derive(Clone)]
    struct Snapshot(Rc<Vec<u8>>);

    impl AcpiHandler for Snapshot {
        unsafe fn map_physical_region<T>(
            &self,
            addr: usize,
            size: usize,
        ) -> PhysicalMapping<Self, T> {
            assert!(
                addr + size <= self.0.len(),
                "{addr:#x}+{size:#x} is outside low memory"
            );
            let ptr = NonNull::new(self.0.as_ptr().add(addr) as *mut T).unwrap();
            // SAFETY: the range lies inside the snapshot, which the mapping keeps alive.
            unsafe { PhysicalMapping::new(addr, ptr, size, size, self.clone()) }
        }

        fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    }

    fn snapshot(mem: &GuestMemoryMmap) -> Snapshot {
        let mut low = vec![0u8; LOW_MEM];
        mem.read_slice(&mut low, GuestAddress(0)).unwrap();
        Snapshot(Rc::new(low))
    }

    fn devices(count: usize) -> Vec<VirtioMmioDevice> {
        (0..count)
            .map(|index| {
                let (base, irq) = virtio_slot(index).unwrap();
                VirtioMmioDevice {
                    base,
                    size: VIRTIO_MMIO_SIZE,
                    irq,
                }
            })
            .collect()
    }

    /// A guest with the MP table and the ACPI tables written, as `load_linux` + `vm` leave it.
    fn guest(num_cpus: u8, virtio: &[VirtioMmioDevice]) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        setup_mptable(&mem, n(num_cpus)).unwrap();
        assert_eq!(setup_acpi(&mem, n(num_cpus), virtio).unwrap(), ACPI_START);
        mem
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    /// The SDT at `addr` in `low`, by the length in its header.
    fn sdt_at(low: &[u8], addr: u64) -> &[u8] {
        let addr = addr as usize;
        let len = u32_at(low, addr + 4) as usize;
        &low[addr..addr + len]
    }

    /// What the MP table at the EBDA says: (APIC id, is BSP) per processor entry, the I/O APIC
    /// id, (ISA IRQ, I/O APIC pin) per interrupt entry.
    type MpTable = (Vec<(u8, bool)>, u8, Vec<(u8, u8)>);

    fn mp_table(low: &[u8], num_cpus: u8) -> MpTable {
        let t = &low[EBDA_START as usize..][..mptable_size(n(num_cpus))];
        let mut cpus = Vec::new();
        let mut ioapic = None;
        let mut irqs = Vec::new();
        let mut at = 16 + 44;
        while at < t.len() {
            match t[at] {
                0 => {
                    cpus.push((t[at + 1], t[at + 3] & 2 != 0));
                    at += 20;
                }
                2 => {
                    ioapic = Some(t[at + 1]);
                    at += 8;
                }
                3 => {
                    irqs.push((t[at + 5], t[at + 7]));
                    at += 8;
                }
                _ => at += 8,
            }
        }
        (cpus, ioapic.unwrap(), irqs)
    }

    #[test]
    fn every_checksum_and_the_table_chain() {
        let mem = guest(4, &devices(3));
        let low = snapshot(&mem).0;
        let rsdp = &low[ACPI_START as usize..][..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum (ACPI 1.0 part)");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: the XSDT is used");
        let xsdt = sdt_at(&low, u64_at(rsdp, 24));
        let fadt = sdt_at(&low, u64_at(xsdt, 36));
        let madt = sdt_at(&low, u64_at(xsdt, 44));
        assert_eq!(xsdt.len(), 36 + 16);
        let dsdt = sdt_at(&low, u64_at(fadt, 140));
        for (sig, table) in [
            (b"XSDT", xsdt),
            (b"FACP", fadt),
            (b"APIC", madt),
            (b"DSDT", dsdt),
        ] {
            assert_eq!(&table[..4], sig);
            assert_eq!(sum(table), 0, "{} checksum", String::from_utf8_lossy(sig));
            assert_eq!(&table[10..16], b"NOVAFL");
            assert_eq!(&table[16..24], b"VOLT VM ");
            let end = table.as_ptr() as usize - low.as_ptr() as usize + table.len();
            assert!(end as u64 <= ACPI_END);
        }
        assert_eq!(&rsdp[9..15], b"NOVAFL");
    }

    #[test]
    fn the_acpi_crate_finds_and_validates_the_tables_as_linux_would() {
        let mem = guest(2, &devices(2));
        // SAFETY: the handler maps a snapshot of the guest's memory.
        let tables = unsafe { ::acpi::AcpiTables::search_for_rsdp_bios(snapshot(&mem)) }
            .expect("RSDP found by scanning the BIOS area");
        assert_eq!(tables.revision(), 2);
        // find_table validates signature and checksum.
        let fadt = tables.find_table::<Fadt>().expect("valid FADT");
        let flags = fadt.flags;
        assert!(flags.system_is_hw_reduced_acpi());
        let control = fadt.sleep_control_register().unwrap().unwrap();
        let status = fadt.sleep_status_register().unwrap().unwrap();
        assert_eq!(
            control.address_space,
            ::acpi::address::AddressSpace::SystemIo
        );
        assert_eq!(
            control.address,
            u64::from(SLEEP_PORT_BASE) + SLEEP_CONTROL_OFFSET
        );
        assert_eq!(
            status.address,
            u64::from(SLEEP_PORT_BASE) + SLEEP_STATUS_OFFSET
        );
        assert_eq!((control.bit_width, status.bit_width), (8, 8));
        let iapc = fadt.iapc_boot_arch;
        assert!(iapc.motherboard_implements_8042());
        let dsdt = tables.dsdt().expect("DSDT");
        assert!(dsdt.length > 0);
        tables.find_table::<Madt>().expect("valid MADT");
    }

    #[test]
    fn madt_matches_the_mp_table_for_1_2_4_and_64_vcpus() {
        for num_cpus in [1u8, 2, 4, 64, MAX_VCPUS] {
            let mem = guest(num_cpus, &devices(1));
            let handler = snapshot(&mem);
            let (mp_cpus, mp_ioapic, mp_irqs) = mp_table(&handler.0, num_cpus);
            assert_eq!(mp_cpus.len(), usize::from(num_cpus));
            // SAFETY: the handler maps a snapshot of the guest's memory.
            let tables =
                unsafe { ::acpi::AcpiTables::from_rsdp(handler, ACPI_START as usize) }.unwrap();
            let madt = tables.find_table::<Madt>().expect("valid MADT");
            assert_eq!({ madt.get().local_apic_address }, LAPIC_START as u32);
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut overrides = Vec::new();
            for entry in madt.get().entries() {
                match entry {
                    MadtEntry::LocalApic(e) => {
                        lapics.push((e.processor_id, e.apic_id, { e.flags }))
                    }
                    MadtEntry::IoApic(e) => ioapics.push((e.io_apic_id, { e.io_apic_address }, {
                        e.global_system_interrupt_base
                    })),
                    MadtEntry::InterruptSourceOverride(e) => {
                        overrides.push((e.bus, e.irq, { e.global_system_interrupt }, { e.flags }))
                    }
                    other => panic!("unexpected MADT entry {other:?}"),
                }
            }
            let expected: Vec<_> = mp_cpus
                .iter()
                .enumerate()
                .map(|(index, (apic_id, _))| (index as u8, *apic_id, 1))
                .collect();
            assert_eq!(
                lapics, expected,
                "{num_cpus} vCPUs: UID = index, same APIC ids, enabled"
            );
            assert_eq!(ioapics, vec![(mp_ioapic, IOAPIC_START as u32, 0)]);
            // Every override says what the MP table says about the same ISA IRQ.
            assert!(!overrides.is_empty());
            for (bus, irq, gsi, flags) in overrides {
                assert_eq!((bus, flags), (0, 0));
                let pin = mp_irqs.iter().find(|(i, _)| *i == irq).unwrap().1;
                assert_eq!(u32::from(pin), gsi, "ISA IRQ {irq}");
            }
        }
    }

    /// The parts of a DSDT device the guest uses.
    #[derive(Debug, PartialEq, Eq)]
    struct AmlDevice {
        path: String,
        hid: String,
        uid: u64,
        io: Vec<(u16, u8)>,
        memory: Vec<(u32, u32)>,
        irqs: Vec<(u32, u8)>,
    }

    /// A small, separate reader for the AML subset a DSDT of Volt's uses: Device, Name, integers,
    /// strings, EISA ids, Buffer (resource templates) and Package.
    struct AmlReader<'a> {
        b: &'a [u8],
        at: usize,
    }

    #[derive(Debug)]
    enum AmlValue {
        Int(u64),
        Str(String),
        Buffer(Vec<u8>),
        Package(Vec<AmlValue>),
    }

    impl AmlReader<'_> {
        fn byte(&mut self) -> u8 {
            self.at += 1;
            self.b[self.at - 1]
        }

        fn take(&mut self, n: usize) -> &[u8] {
            self.at += n;
            &self.b[self.at - n..self.at]
        }

        /// PkgLength; returns the end offset of the package.
        fn pkg_end(&mut self) -> usize {
            let start = self.at;
            let lead = self.byte();
            let extra = usize::from(lead >> 6);
            let mut len = if extra == 0 {
                usize::from(lead & 0x3f)
            } else {
                usize::from(lead & 0x0f)
            };
            for i in 0..extra {
                len |= usize::from(self.byte()) << (4 + 8 * i);
            }
            start + len
        }

        fn name(&mut self) -> String {
            let mut parts = Vec::new();
            let mut root = String::new();
            if self.b[self.at] == b'\\' {
                self.at += 1;
                root.push('\\');
            }
            let count = match self.b[self.at] {
                0x2e => {
                    self.at += 1;
                    2
                }
                0x2f => {
                    self.at += 1;
                    self.byte()
                }
                _ => 1,
            };
            for _ in 0..count {
                parts.push(String::from_utf8(self.take(4).to_vec()).unwrap());
            }
            root + &parts.join(".")
        }

        fn value(&mut self) -> AmlValue {
            match self.byte() {
                0x00 => AmlValue::Int(0),
                0x01 => AmlValue::Int(1),
                0x0a => AmlValue::Int(u64::from(self.byte())),
                0x0b => AmlValue::Int(u64::from(u16::from_le_bytes(
                    self.take(2).try_into().unwrap(),
                ))),
                0x0c => AmlValue::Int(u64::from(u32::from_le_bytes(
                    self.take(4).try_into().unwrap(),
                ))),
                0x0e => AmlValue::Int(u64::from_le_bytes(self.take(8).try_into().unwrap())),
                0x0d => {
                    let end = self.b[self.at..].iter().position(|c| *c == 0).unwrap();
                    let text = String::from_utf8(self.take(end).to_vec()).unwrap();
                    self.at += 1;
                    AmlValue::Str(text)
                }
                0x11 => {
                    let end = self.pkg_end();
                    let AmlValue::Int(size) = self.value() else {
                        panic!("buffer size")
                    };
                    let data = self.take(end - self.at).to_vec();
                    assert_eq!(data.len() as u64, size);
                    AmlValue::Buffer(data)
                }
                0x12 => {
                    let end = self.pkg_end();
                    let count = self.byte();
                    let items: Vec<_> = (0..count).map(|_| self.value()).collect();
                    assert_eq!(self.at, end);
                    AmlValue::Package(items)
                }
                op => panic!("unexpected AML opcode {op:#x} at {}", self.at - 1),
            }
        }

        /// The objects in [at, end): devices and top-level names.
        fn objects(
            &mut self,
            end: usize,
            devices: &mut Vec<AmlDevice>,
            names: &mut Vec<(String, AmlValue)>,
        ) {
            while self.at < end {
                match self.byte() {
                    0x5b => {
                        assert_eq!(self.byte(), 0x82, "only Device ext ops");
                        let dev_end = self.pkg_end();
                        let path = self.name();
                        let mut inner = Vec::new();
                        self.objects(dev_end, &mut Vec::new(), &mut inner);
                        devices.push(AmlDevice::from_names(path, inner));
                    }
                    0x08 => {
                        let name = self.name();
                        let value = self.value();
                        names.push((name, value));
                    }
                    op => panic!("unexpected AML opcode {op:#x}"),
                }
            }
        }
    }

    fn eisa_id(value: u32) -> String {
        let b = value.to_le_bytes();
        let c1 = ((b[0] >> 2) & 0x1f) + 0x40;
        let c2 = (((b[0] & 3) << 3) | (b[1] >> 5)) + 0x40;
        let c3 = (b[1] & 0x1f) + 0x40;
        format!(
            "{}{}{}{:02X}{:02X}",
            c1 as char, c2 as char, c3 as char, b[2], b[3]
        )
    }

    impl AmlDevice {
        fn from_names(path: String, names: Vec<(String, AmlValue)>) -> AmlDevice {
            let mut device = AmlDevice {
                path,
                hid: String::new(),
                uid: u64::MAX,
                io: Vec::new(),
                memory: Vec::new(),
                irqs: Vec::new(),
            };
            for (name, value) in names {
                match (name.as_str(), value) {
                    ("_HID", AmlValue::Str(s)) => device.hid = s,
                    ("_HID", AmlValue::Int(id)) => device.hid = eisa_id(id as u32),
                    ("_UID", AmlValue::Int(uid)) => device.uid = uid,
                    ("_CRS", AmlValue::Buffer(crs)) => device.resources(&crs),
                    (other, value) => panic!("unexpected {other} = {value:?}"),
                }
            }
            device
        }

        /// Resource descriptors: I/O port (0x47), Memory32Fixed (0x86), Extended IRQ (0x89).
        fn resources(&mut self, crs: &[u8]) {
            let mut at = 0;
            loop {
                match crs[at] {
                    0x47 => {
                        let min = u16::from_le_bytes([crs[at + 2], crs[at + 3]]);
                        let max = u16::from_le_bytes([crs[at + 4], crs[at + 5]]);
                        assert_eq!(min, max);
                        self.io.push((min, crs[at + 7]));
                        at += 8;
                    }
                    0x86 => {
                        assert_eq!(crs[at + 3], 1, "read-write");
                        self.memory.push((u32_at(crs, at + 4), u32_at(crs, at + 8)));
                        at += 12;
                    }
                    0x89 => {
                        assert_eq!(crs[at + 4], 1, "one interrupt");
                        self.irqs.push((u32_at(crs, at + 5), crs[at + 3]));
                        at += 9;
                    }
                    0x79 => {
                        // End tag: a zero checksum means "valid" (ACPI 6.5, 6.4.2.9).
                        let checksum = crs[at + 1];
                        assert!(
                            checksum == 0 || sum(&crs[..at + 2]) == 0,
                            "template checksum"
                        );
                        assert_eq!(at + 2, crs.len(), "nothing after the end tag");
                        return;
                    }
                    tag => panic!("unexpected resource descriptor {tag:#x}"),
                }
            }
        }
    }

    fn read_dsdt(
        num_cpus: u8,
        virtio: &[VirtioMmioDevice],
    ) -> (Vec<AmlDevice>, Vec<(String, AmlValue)>, Vec<u8>) {
        let mem = guest(num_cpus, virtio);
        let handler = snapshot(&mem);
        // SAFETY: the handler maps a snapshot of the guest's memory.
        let tables =
            unsafe { ::acpi::AcpiTables::from_rsdp(handler.clone(), ACPI_START as usize) }.unwrap();
        let aml = tables.dsdt().unwrap();
        let table = sdt_at(&handler.0, aml.address as u64 - 36).to_vec();
        assert_eq!(sum(&table), 0, "DSDT checksum");
        let body = &table[36..];
        assert_eq!(body.len(), aml.length as usize);
        let mut reader = AmlReader { b: body, at: 0 };
        let (mut devices, mut names) = (Vec::new(), Vec::new());
        reader.objects(body.len(), &mut devices, &mut names);
        (devices, names, table)
    }

    /// Edge-triggered, active-high, exclusive, consumer.
    const IRQ_FLAGS: u8 = 0b0011;

    #[test]
    fn dsdt_lists_com1_every_virtio_device_and_s5() {
        // E.g. two disks and a NIC: the first three slots.
        for count in [0, 3, VIRTIO_IRQS.len()] {
            let virtio = devices(count);
            let (devices, names, _) = read_dsdt(2, &virtio);
            assert_eq!(devices.len(), 1 + count);
            assert_eq!(
                devices[0],
                AmlDevice {
                    path: "\\_SB_.COM1".into(),
                    hid: "PNP0501".into(),
                    uid: 0,
                    io: vec![(0x3f8, 8)],
                    memory: vec![],
                    irqs: vec![(4, IRQ_FLAGS)],
                }
            );
            for (index, (device, slot)) in devices[1..].iter().zip(&virtio).enumerate() {
                assert_eq!(
                    *device,
                    AmlDevice {
                        path: format!("\\_SB_.VR{index:02X}"),
                        hid: "LNRO0005".into(),
                        uid: index as u64,
                        io: vec![],
                        memory: vec![(slot.base as u32, 0x1000)],
                        irqs: vec![(slot.irq, IRQ_FLAGS)],
                    }
                );
            }
            assert_eq!(names.len(), 1);
            let (name, AmlValue::Package(s5)) = &names[0] else {
                panic!("{names:?}")
            };
            assert_eq!(name, "_S5_");
            assert!(matches!(s5[0], AmlValue::Int(t) if t == u64::from(S5_SLEEP_TYPE)));
        }
    }

    /// Cross-check with ACPICA's disassembler (the AML interpreter Linux itself uses), when
    /// `iasl` is installed (Debian: acpica-tools).
    #[test]
    fn iasl_disassembles_the_dsdt() {
        let Ok(status) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("SKIP: iasl_disassembles_the_dsdt: iasl (acpica-tools) is not installed");
            return;
        };
        assert!(status.status.success());
        let virtio = devices(2);
        let (_, _, table) = read_dsdt(1, &virtio);
        let dir = tempfile::tempdir().unwrap();
        let dat = dir.path().join("dsdt.dat");
        std::fs::write(&dat, &table).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        for needle in [
            "Device (\\_SB.COM1)",
            "Name (_HID, EisaId (\"PNP0501\")",
            "IO (Decode16,",
            "0x03F8,",
            "Device (\\_SB.VR00)",
            "Device (\\_SB.VR01)",
            "Name (_HID, \"LNRO0005\")",
            "Memory32Fixed (ReadWrite,",
            "0xD0000000,",
            "0xD0001000,",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            "0x00000004,",
            "0x00000005,",
            "0x00000006,",
            "Name (_S5, Package (0x04)",
        ] {
            assert!(dsl.contains(needle), "iasl output lacks {needle:?}:\n{dsl}");
        }
    }

    #[test]
    fn tables_stay_in_their_reserved_area_and_overlap_nothing() {
        // The largest tables: every vCPU and every virtio slot.
        let tables = build_acpi_tables(n(MAX_VCPUS), &devices(VIRTIO_IRQS.len())).unwrap();
        let acpi = (ACPI_START, tables.end());
        assert!(acpi.1 <= ACPI_END);
        for pair in tables.tables.windows(2) {
            assert!(
                pair[0].0 + pair[0].1.len() as u64 <= pair[1].0,
                "tables overlap"
            );
        }
        let fixed = [
            ("GDT+IDT", GDT_START, GDT_START + 0x40),
            ("zero page", ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            ("page tables", PML4_START, PD_START + 0x1000),
            (
                "command line",
                CMDLINE_START,
                CMDLINE_START + CMDLINE_MAX_SIZE as u64,
            ),
            (
                "MP table",
                EBDA_START,
                EBDA_START + mptable_size(n(MAX_VCPUS)) as u64,
            ),
            ("kernel", HIMEM_START, u64::MAX),
        ];
        for (what, start, end) in fixed {
            assert!(
                end <= acpi.0 || start >= acpi.1,
                "ACPI tables overlap the {what}"
            );
        }
        // The e820 map reserves them and reports none of them as RAM.
        let map = e820_map(256 << 20);
        assert!(map
            .iter()
            .any(|e| e.r#type == E820_RESERVED && e.addr <= acpi.0 && e.addr + e.size >= ACPI_END));
        assert!(map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .all(|e| e.addr + e.size <= acpi.0 || e.addr >= ACPI_END));
    }

    #[test]
    fn bad_input_is_an_error() {
        let high = VirtioMmioDevice {
            base: 0xffff_f800,
            size: 0x1000,
            irq: 5,
        };
        assert!(matches!(
            build_acpi_tables(n(1), &[high]),
            Err(AcpiError::WindowAbove4G { .. })
        ));
        let bad_irq = VirtioMmioDevice {
            irq: 24,
            ..devices(1)[0]
        };
        assert_eq!(
            build_acpi_tables(n(1), &[bad_irq]).unwrap_err(),
            AcpiError::Irq(24)
        );
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9f000)]).unwrap();
        assert_eq!(
            setup_acpi(&tiny, n(1), &[]),
            Err(AcpiError::Write(ACPI_START))
        );
    }
}
