//! Raw test images: bare machine code every vCPU starts in 64-bit mode (the tests' and
//! benchmarks' tiny guests, `BootSource::Raw`).

use super::*;

/// Raw images get one small stack per vCPU, growing down from here (below the EBDA).
pub(super) const RAW_STACK_TOP: u64 = 0x8_0000;
pub(super) const RAW_STACK_SIZE: u64 = 0x400;

/// Puts a vCPU of a raw test image into 64-bit mode at the image's start with RDI = index.
pub(super) fn start_raw_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    load_addr: u64,
    vcpu_index: boot::VcpuIndex,
) -> Result<(), VmError> {
    let index = vcpu_index.get();
    boot::regs::setup_long_mode(vcpu, mem, GuestAddress(load_addr), None)
        .map_err(BootError::from)?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rdi = index.into();
    regs.rsp = RAW_STACK_TOP - u64::from(index) * RAW_STACK_SIZE;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    if !vcpu_index.is_boot() {
        // Application processors wait for INIT/SIPI; a raw image has them start at once.
        let mut mp_state = vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        mp_state.mp_state = kvm_bindings::KVM_MP_STATE_RUNNABLE;
        vcpu.set_mp_state(mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}
