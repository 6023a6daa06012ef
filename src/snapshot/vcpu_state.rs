//! A vCPU's architectural state as KVM exposes it: read on the (parked) vCPU thread that owns
//! the fd, written back on the main thread of the restoring process before the thread starts.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct VcpuStateError {
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError { what, source }
}

/// `kvm_fpu` (which kvm-bindings does not serialize), field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(fpu: &kvm_fpu) -> Self {
        FpuState {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(fpu: &FpuState) -> Self {
        kvm_fpu {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM keeps about one vCPU that a guest can observe.
#[derive(Serialize, Deserialize)]
pub struct VcpuSnapshot {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSnapshot")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish_non_exhaustive()
    }
}

/// The MSRs a snapshot saves: what KVM lists, set by the VMM before any vCPU thread starts.
static MSR_INDICES: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// Records the MSRs to save (KVM_GET_MSR_INDEX_LIST on /dev/kvm, done once at VM build).
pub fn set_msr_indices(indices: Vec<u32>) {
    let _ = MSR_INDICES.set(indices);
}

/// Reads as many of `indices` as KVM lets us: an MSR the host refuses is skipped, not fatal.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(64)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stops at the first MSR it cannot read: skip that one and go on after it.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(saved)
}

/// Reads the vCPU's state. The vCPU must not be running (its thread calls this while parked).
pub fn save_vcpu(vcpu: &VcpuFd) -> Result<VcpuSnapshot, VcpuStateError> {
    let indices = MSR_INDICES.get().map(Vec::as_slice).unwrap_or(&[]);
    Ok(VcpuSnapshot {
        // The MP state first: KVM_GET_MP_STATE settles pending INIT/SIPI (as Firecracker).
        mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        fpu: FpuState::from(&vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?),
        xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
        lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        msrs: read_msrs(vcpu, indices)?,
        events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Writes a saved state into a freshly created vCPU (CPUID already set), in the order KVM
/// needs: special registers before the LAPIC (APIC base), the LAPIC before the MSRs (TSC
/// deadline), pending events last.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuSnapshot) -> Result<(), VcpuStateError> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_fpu(&kvm_fpu::from(&state.fpu))
        .map_err(kvm("KVM_SET_FPU"))?;
    // SAFETY: the kvm_xsave comes from KVM_GET_XSAVE on the same kind of host (checked by the
    // snapshot's version and checksum); KVM validates its contents.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    vcpu.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let mut rest = state.msrs.as_slice();
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(&rest[..rest.len().min(64)]).map_err(|_| VcpuStateError {
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let chunk = msrs.as_slice().len();
        let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if written < chunk {
            log::warn!(
                "KVM refused to restore MSR {:#x}; skipping it",
                msrs.as_slice()[written].index
            );
            rest = &rest[written + 1..];
        } else {
            rest = &rest[chunk..];
        }
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_vcpu_events(&state.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
