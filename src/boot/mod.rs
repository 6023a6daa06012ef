//! Guest boot: everything written into guest memory and vCPU registers before the first KVM_RUN.
//!
//! Direct 64-bit Linux boot: the kernel (ELF vmlinux or bzImage), command line, initrd and
//! zero page go into guest memory together with an MP table, identity page tables and a GDT;
//! the boot vCPU starts in long mode at the kernel's 64-bit entry with RSI = zero page.
//! [`load_linux`] does the memory part once per VM, [`configure_vcpu`] the register part per
//! vCPU. The memory map is in [`layout`].

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod regs;

use std::fs::File;

use kvm_bindings::{kvm_mp_state, CpuId, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use cpuid::CpuidError;
pub use layout::{create_guest_memory, guest_ram_ranges};
pub use loader::LoaderError;
pub use mptable::{MptableError, MAX_CPUS};
pub use regs::RegsError;

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
    #[error("--cpus must be 1..={MAX_CPUS}, got {0}")]
    CpuCount(u8),
    #[error("vCPU index {index} is out of range for {num_cpus} vCPUs")]
    VcpuIndex { index: u8, num_cpus: u8 },
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

fn check_cpus(num_cpus: u8) -> Result<(), BootError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(BootError::CpuCount(num_cpus));
    }
    Ok(())
}

fn memory(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::Memory { what, source }
}

/// Writes the tables every 64-bit start needs: GDT, identity page tables and the MP table.
/// Enough on its own for raw images that start in 64-bit mode at a known address.
pub fn write_boot_tables(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), BootError> {
    check_cpus(num_cpus)?;
    gdt::write_gdt(mem).map_err(memory("GDT"))?;
    paging::write_identity_page_tables(mem).map_err(memory("page tables"))?;
    mptable::setup_mptable(mem, num_cpus)?;
    Ok(())
}

/// Loads kernel, optional initrd and command line, and writes the zero page and boot tables.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
    num_cpus: u8,
) -> Result<BootEntry, BootError> {
    check_cpus(num_cpus)?;
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
    write_boot_tables(mem, num_cpus)?;
    Ok(BootEntry {
        entry: loaded.entry,
        boot_params: zero_page,
    })
}

/// Per-vCPU setup: CPUID (topology for `index` of `num_cpus`), LAPIC LINT0/LINT1, and with
/// `start` long mode at its entry. Without `start` the vCPU (an AP) waits for INIT/SIPI; with
/// `start` on an AP it is made runnable right away (raw images that start every vCPU).
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    supported_cpuid: &CpuId,
    index: u8,
    num_cpus: u8,
    start: Option<&BootEntry>,
) -> Result<(), BootError> {
    check_cpus(num_cpus)?;
    if index >= num_cpus {
        return Err(BootError::VcpuIndex { index, num_cpus });
    }
    let cpuid = cpuid::vcpu_cpuid(supported_cpuid, index, num_cpus)?;
    vcpu.set_cpuid2(&cpuid).map_err(|source| BootError::Kvm {
        what: "set the CPUID",
        index,
        source,
    })?;
    regs::setup_lapic_lints(vcpu)?;
    if let Some(start) = start {
        regs::setup_long_mode(vcpu, mem, start.entry, Some(start.boot_params))?;
        if index != 0 {
            let runnable = kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            };
            vcpu.set_mp_state(runnable)
                .map_err(|source| BootError::Kvm {
                    what: "make runnable",
                    index,
                    source,
                })?;
        }
    }
    Ok(())
}
