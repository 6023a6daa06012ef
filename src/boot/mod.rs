//! Guest boot: everything written into guest memory and vCPU registers before the first KVM_RUN.
//!
//! Direct 64-bit Linux boot: the kernel (ELF vmlinux or bzImage), command line, initrd and
//! zero page go into guest memory together with an MP table, identity page tables and a GDT;
//! the boot vCPU starts in long mode at the kernel's 64-bit entry with RSI = zero page.
//! [`load_linux`] does the memory part once per VM, [`configure_vcpu`] the register part per
//! vCPU. [`write_acpi_tables`] adds the ACPI tables beside the MP table (unless `--acpi off`).
//! The memory map is in [`layout`].

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod regs;
pub mod vcpu_count;

use std::fs::File;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use acpi::{AcpiError, VirtioMmioDevice};
pub use cpuid::CpuidError;
pub use layout::{create_guest_memory, guest_ram_ranges};
pub use loader::LoaderError;
pub use mptable::MptableError;
pub use regs::RegsError;
pub use vcpu_count::{VcpuCount, VcpuCountError, VcpuIndex, MAX_VCPUS};

use layout::ZERO_PAGE_START;

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// 64-bit entry point (RIP).
    pub entry: GuestAddress,
    /// The zero page (RSI).
    pub boot_params: GuestAddress,
}

/// Everything that can go wrong while preparing a guest to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(
        "guest memory size {0} bytes is invalid: it must be a multiple of 4 KiB and at least 2 MiB"
    )]
    InvalidMemorySize(u64),
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(String),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error("cannot write the {what} to guest memory (is guest memory large enough?): {source}")]
    Memory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot {what} of vCPU {index}: {source}")]
    Kvm {
        what: &'static str,
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn memory(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::Memory { what, source }
}

/// Writes the tables every 64-bit start needs: GDT, identity page tables and the MP table.
/// Enough on its own for raw images that start in 64-bit mode at a known address.
pub fn write_boot_tables(mem: &GuestMemoryMmap, vcpus: VcpuCount) -> Result<(), BootError> {
    gdt::write_gdt(mem).map_err(memory("GDT"))?;
    paging::write_identity_page_tables(mem).map_err(memory("page tables"))?;
    mptable::setup_mptable(mem, vcpus)?;
    Ok(())
}

/// Writes the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for `vcpus` vCPUs and the VM's
/// virtio-mmio devices. Called once, after [`load_linux`] or [`write_boot_tables`] and before any
/// vCPU runs.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    vcpus: VcpuCount,
    virtio: &[VirtioMmioDevice],
) -> Result<(), BootError> {
    acpi::setup_acpi(mem, vcpus, virtio)?;
    Ok(())
}

/// Loads kernel, optional initrd and command line, and writes the zero page and boot tables.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
    vcpus: VcpuCount,
) -> Result<BootEntry, BootError> {
    let loaded = loader::load_kernel(mem, kernel)?;
    let header = loaded.setup_header;
    let kernel_cmdline_max = header.map_or(0, |h| h.cmdline_size);
    let cmdline_size = loader::load_cmdline(mem, cmdline, kernel_cmdline_max)?;
    let initrd = match initrd {
        Some(file) => {
            let addr_max = header
                .map(|h| h.initrd_addr_max)
                .filter(|max| *max != 0)
                .map(u64::from);
            Some(loader::load_initrd(mem, file, loaded.end, addr_max)?)
        }
        None => None,
    };
    let boot_params = params::build_boot_params(&params::BootParamsConfig {
        mem_bytes: layout::guest_mem_bytes(mem),
        cmdline_size,
        initrd,
        setup_header: header,
    });
    let zero_page = GuestAddress(ZERO_PAGE_START);
    params::write_boot_params(mem, &boot_params, zero_page).map_err(memory("zero page"))?;
    write_boot_tables(mem, vcpus)?;
    Ok(BootEntry {
        entry: loaded.entry,
        boot_params: zero_page,
    })
}

/// Per-vCPU setup: CPUID (topology for `vcpu_index` of its VM's vCPUs), LAPIC LINT0/LINT1,
/// and with `start` (the boot vCPU of a Linux boot) long mode at its entry. Without `start`
/// the vCPU waits for INIT/SIPI, as an AP does (raw test images start every vCPU themselves:
/// `vm::raw`).
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    supported_cpuid: &CpuId,
    vcpu_index: VcpuIndex,
    start: Option<&BootEntry>,
) -> Result<(), BootError> {
    let index = vcpu_index.get();
    let cpuid = cpuid::vcpu_cpuid(supported_cpuid, vcpu_index)?;
    vcpu.set_cpuid2(&cpuid).map_err(|source| BootError::Kvm {
        what: "set the CPUID",
        index,
        source,
    })?;
    regs::enable_xsave_features(vcpu, cpuid::xsave_features(&cpuid), index);
    regs::setup_lapic_lints(vcpu)?;
    if let Some(start) = start {
        regs::setup_long_mode(vcpu, mem, start.entry, Some(start.boot_params))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_UNINITIALIZED};
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::Bytes;

    use layout::{CMDLINE_START, EBDA_START, HIMEM_START, PD_START, PML4_START};
    use loader::tests::{tiny_bzimage, tiny_elf};
    use regs::tests::{probe_expected_outs, run_collect_io, test_vm, LONG_MODE_PROBE};

    const MEM: u64 = 64 << 20;

    fn n(count: u8) -> VcpuCount {
        VcpuCount::new(count).unwrap()
    }

    fn nth(index: u8, count: u8) -> VcpuIndex {
        n(count).index(index).unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn load_linux_elf_with_initrd_writes_everything() {
        let mem = create_guest_memory(MEM).unwrap();
        let mut kernel = file_with(&tiny_elf(0x20_0000, &LONG_MODE_PROBE, 0x1000));
        let initrd_data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut initrd = file_with(&initrd_data);
        let cmdline = "console=ttyS0 panic=1";
        let start = load_linux(&mem, &mut kernel, Some(&mut initrd), cmdline, n(2)).unwrap();
        assert_eq!(start.entry, GuestAddress(0x20_0000));
        assert_eq!(start.boot_params, GuestAddress(ZERO_PAGE_START));

        let p = zero_page(&mem);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!(
            { p.hdr.cmd_line_ptr },
            u32::try_from(CMDLINE_START).unwrap()
        );
        assert_eq!(
            { p.hdr.cmdline_size },
            u32::try_from(cmdline.len() + 1).unwrap()
        );
        let (addr, size) = ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size });
        assert_eq!(size, 10_000);
        assert_eq!(
            u64::from(addr),
            MEM - 0x3000,
            "page-aligned at the top of RAM"
        );
        let mut got = vec![0u8; initrd_data.len()];
        mem.read_slice(&mut got, GuestAddress(u64::from(addr)))
            .unwrap();
        assert_eq!(got, initrd_data);
        let mut line = vec![0u8; cmdline.len() + 1];
        mem.read_slice(&mut line, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&line[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(line[cmdline.len()], 0);
        assert_eq!(p.e820_entries, 4);

        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            0xa003
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_START + 8)).unwrap(),
            0x20_0083
        );
    }

    #[test]
    fn load_linux_with_memory_above_4g() {
        let mem_bytes = (3 << 30) + (256 << 20);
        let mem = create_guest_memory(mem_bytes).unwrap();
        let mut kernel = file_with(&tiny_elf(0x100_0000, &[0xf4], 0x1000));
        let mut initrd = file_with(&[7u8; 4096]);
        load_linux(&mem, &mut kernel, Some(&mut initrd), "", n(4)).unwrap();
        let p = zero_page(&mem);
        assert_eq!(p.e820_entries, 5);
        let last = p.e820_table[4];
        assert_eq!(({ last.addr }, { last.size }), (1 << 32, 256 << 20));
        assert_eq!(
            { p.hdr.ramdisk_image },
            0xc000_0000 - 0x1000,
            "initrd stays below the gap"
        );
    }

    #[test]
    fn load_linux_bzimage_entry_is_startup_64() {
        let mem = create_guest_memory(MEM).unwrap();
        let mut payload = vec![0u8; 0x200];
        payload.extend_from_slice(&LONG_MODE_PROBE);
        let mut kernel = file_with(&tiny_bzimage(0x20f, 1, &payload));
        let start = load_linux(&mem, &mut kernel, None, "quiet", n(1)).unwrap();
        assert_eq!(start.entry, GuestAddress(HIMEM_START + 0x200));
        let p = zero_page(&mem);
        assert_eq!(
            { p.hdr.version },
            0x20f,
            "setup header copied from the bzImage"
        );
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.cmdline_size }, 6);
        assert_eq!({ p.hdr.ramdisk_image }, 0);

        let Some((kvm, vm)) = test_vm("load_linux_bzimage_entry_is_startup_64", &mem) else {
            return;
        };
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        configure_vcpu(&vcpu, &mem, &cpuid, nth(0, 1), Some(&start)).unwrap();
        assert_eq!(run_collect_io(&mut vcpu, 5), probe_expected_outs(0x7000));
    }

    #[test]
    fn boot_vcpu_runs_the_kernel_and_aps_wait_for_sipi() {
        let mem = create_guest_memory(MEM).unwrap();
        let mut kernel = file_with(&tiny_elf(0x20_0000, &LONG_MODE_PROBE, 0x1000));
        let start = load_linux(&mem, &mut kernel, None, "", n(2)).unwrap();
        let Some((kvm, vm)) = test_vm("boot_vcpu_runs_the_kernel_and_aps_wait_for_sipi", &mem)
        else {
            return;
        };
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let mut bsp = vm.create_vcpu(0).unwrap();
        let ap = vm.create_vcpu(1).unwrap();
        configure_vcpu(&bsp, &mem, &cpuid, nth(0, 2), Some(&start)).unwrap();
        configure_vcpu(&ap, &mem, &cpuid, nth(1, 2), None).unwrap();

        let ap_cpuid = ap.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = ap_cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .unwrap();
        assert_eq!(leaf1.ebx >> 24, 1, "AP's initial APIC id");
        assert_eq!(
            ap.get_mp_state().unwrap().mp_state,
            KVM_MP_STATE_UNINITIALIZED,
            "AP waits for INIT/SIPI"
        );
        assert_eq!(run_collect_io(&mut bsp, 5), probe_expected_outs(0x7000));
    }

    #[test]
    fn user_facing_errors() {
        let mem = create_guest_memory(MEM).unwrap();
        let mut junk = file_with(b"#!/bin/sh\necho not a kernel\n");
        let err = load_linux(&mem, &mut junk, None, "", n(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel image is neither ELF vmlinux nor bzImage"
        );

        let mut kernel = file_with(&tiny_elf(0x20_0000, &[0xf4], 1));
        let mut initrd = file_with(&vec![0u8; 63 << 20]);
        let err = load_linux(&mem, &mut kernel, Some(&mut initrd), "", n(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "initrd of {} bytes does not fit in 64 MiB of guest memory",
                63 << 20
            )
        );

        let mut dir = File::open("/").unwrap();
        let err = load_linux(&mem, &mut dir, None, "", n(1)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read the kernel image: "),
            "{err}"
        );

        let err = create_guest_memory(1 << 20).unwrap_err();
        assert!(err.to_string().contains("at least 2 MiB"), "{err}");

        // Boot tables need the low memory they live in.
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000)]).unwrap();
        let err = write_boot_tables(&tiny, n(1)).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::Memory {
                    what: "page tables",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Loads real kernels named in VOLT_TEST_KERNELS (paths separated by ':'), e.g. a distro
    /// vmlinuz and a vmlinux, and checks where they land.
    #[test]
    fn real_kernels_from_env() {
        let Ok(paths) = std::env::var("VOLT_TEST_KERNELS") else {
            eprintln!("SKIP: real_kernels_from_env: VOLT_TEST_KERNELS is not set");
            return;
        };
        for path in paths.split(':').filter(|p| !p.is_empty()) {
            let mem = create_guest_memory(256 << 20).unwrap();
            let mut kernel = File::open(path).unwrap();
            let start = load_linux(&mem, &mut kernel, None, "console=ttyS0", n(2))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let p = zero_page(&mem);
            eprintln!(
                "{path}: entry {:#x}, boot protocol {:#x}, init_size {:#x}",
                start.entry.0,
                { p.hdr.version },
                { p.hdr.init_size }
            );
            if { p.hdr.version } != 0 {
                assert_eq!(start.entry, GuestAddress(HIMEM_START + 0x200), "{path}");
                assert_ne!({ p.hdr.xloadflags } & 1, 0, "{path}: 64-bit entry");
            } else {
                assert!(start.entry.0 >= HIMEM_START, "{path}");
            }
        }
    }
}
