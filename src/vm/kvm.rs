//! The KVM side of a VM: guest memory slots and the in-kernel interrupt controllers.

use super::*;

pub(super) fn map_guest_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Io {
                what: "mapping guest memory",
                source: io::Error::other(e),
            })?;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM's use of it: the event
        // loop holds a clone and the vCPU threads are joined before either is dropped.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The in-kernel PIC, I/O APIC, LAPICs and PIT: the guest's timer and interrupt routing.
pub(super) fn create_interrupt_controllers(vm_fd: &VmFd) -> Result<(), VmError> {
    // Intel VMX needs three pages for the real-mode TSS, out of the guest's way below 4 GiB.
    vm_fd
        .set_tss_address(0xfffb_d000)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}
