//! Per-vCPU CPUID, derived from what KVM supports (`KVM_GET_SUPPORTED_CPUID`).
//!
//! The topology we advertise is flat: one package, one core per vCPU, one thread per core,
//! x2APIC id = initial APIC id = vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::vcpu_count::VcpuIndex;

const LEAF_MAX_BASIC: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// V2 extended topology; dropped so the guest falls back to our leaf 0xB.
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: EBX[23:16] holds a valid logical processor count.
const EDX_HTT: u32 = 1 << 28;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;

/// CPUID.4:EAX[31:26]: cores per package - 1. EAX[25:14]: logical CPUs sharing the cache - 1.
const EAX_CORES_SHIFT: u32 = 26;
const EAX_SHARING_SHIFT: u32 = 14;
const EAX_SHARING_MASK: u32 = 0xfff << EAX_SHARING_SHIFT;
const EAX_CACHE_TYPE_MASK: u32 = 0x1f;
const EAX_CACHE_LEVEL_SHIFT: u32 = 5;

/// CPUID.0xB:ECX[15:8] level types.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Errors while building a vCPU's CPUID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error(
        "too many CPUID entries (KVM accepts at most {})",
        kvm_bindings::KVM_MAX_CPUID_ENTRIES
    )]
    TooManyEntries,
}

/// CPUID leaf 0xD (XSAVE): subleaf 0 EDX:EAX are the state components XCR0 may enable.
const LEAF_XSAVE: u32 = 0xd;

/// The XSAVE state components `cpuid` lets the guest enable in XCR0 (x87 at least).
pub fn xsave_features(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)
        .map_or(1, |e| u64::from(e.eax) | u64::from(e.edx) << 32 | 1)
}

/// Number of bits needed to hold values 0..n (ceil(log2 n)); 0 for n <= 1.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn entry(function: u32, index: u32, flags: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        ..Default::default()
    }
}

/// The CPUID for `vcpu` (of its VM's vCPUs), starting from `base` (KVM's supported set).
pub fn vcpu_cpuid(base: &CpuId, vcpu: VcpuIndex) -> Result<CpuId, CpuidError> {
    let apic_id = u32::from(vcpu.get());
    let n = u32::from(vcpu.count().get());

    // Leaf 0xB replaces whatever KVM reported: we define the topology. Leaf 0x1F would
    // describe the host's topology instead, so it goes (a missing leaf reads as zeros).
    let mut entries: Vec<kvm_cpuid_entry2> = base
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_EXT_TOPOLOGY && e.function != LEAF_EXT_TOPOLOGY_V2)
        .copied()
        .collect();

    if !entries.iter().any(|e| e.function == LEAF_FEATURES) {
        entries.push(entry(LEAF_FEATURES, 0, 0));
    }
    for e in entries.iter_mut() {
        match e.function {
            LEAF_MAX_BASIC => e.eax = e.eax.max(LEAF_EXT_TOPOLOGY),
            LEAF_FEATURES => {
                e.ebx &= !(0xff << EBX_APIC_ID_SHIFT | 0xff << EBX_LOGICAL_COUNT_SHIFT);
                e.ebx |= apic_id << EBX_APIC_ID_SHIFT | n << EBX_LOGICAL_COUNT_SHIFT;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE_PARAMS if e.eax & EAX_CACHE_TYPE_MASK != 0 => {
                // One thread per core: L1/L2 are private, L3 and above are shared by all.
                let level = (e.eax >> EAX_CACHE_LEVEL_SHIFT) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax &= !(0x3f << EAX_CORES_SHIFT | EAX_SHARING_MASK);
                e.eax |= (n - 1) << EAX_CORES_SHIFT | sharing << EAX_SHARING_SHIFT;
            }
            _ => {}
        }
    }

    let significant = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    let mut smt = entry(LEAF_EXT_TOPOLOGY, 0, significant);
    smt.eax = 0; // no SMT: the core id starts at bit 0
    smt.ebx = 1;
    smt.ecx = LEVEL_TYPE_SMT << 8;
    smt.edx = apic_id;
    let mut core = entry(LEAF_EXT_TOPOLOGY, 1, significant);
    core.eax = bits_for(n);
    core.ebx = n;
    core.ecx = LEVEL_TYPE_CORE << 8 | 1;
    core.edx = apic_id;
    let mut invalid = entry(LEAF_EXT_TOPOLOGY, 2, significant);
    invalid.ecx = LEVEL_TYPE_INVALID << 8 | 2;
    invalid.edx = apic_id;
    entries.extend([smt, core, invalid]);

    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::VcpuCount;

    fn vcpu(index: u8, count: u8) -> VcpuIndex {
        VcpuCount::new(count).unwrap().index(index).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("missing leaf {function:#x}.{index}"))
    }

    fn synthetic_base() -> CpuId {
        let mut leaf0 = entry(0, 0, 0);
        leaf0.eax = 0xd;
        let mut leaf1 = entry(1, 0, 0);
        leaf1.eax = 0x806e9;
        // Stale host values in the fields we own: APIC id 0x55, 0x22 logical CPUs.
        leaf1.ebx = 0x5522_0800;
        leaf1.ecx = 0x7ffa_fbff;
        leaf1.edx = 0xbfeb_fbff;
        let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        // Cache leaves: L1d, L1i, L2, L3 (type in [4:0], level in [7:5]), then the terminator.
        let caches = [(1, 1), (2, 1), (3, 2), (3, 3)];
        let mut entries = vec![leaf0, leaf1];
        for (i, (ty, level)) in (0u32..).zip(caches.iter()) {
            let mut e = entry(4, i, sig);
            e.eax = 0xfc00_0000 | 0x3ffc000 | (level << 5) | ty;
            e.ebx = 0x01c0_003f;
            entries.push(e);
        }
        entries.push(entry(4, 4, sig));
        // A stale host topology leaf that must be replaced.
        let mut stale = entry(0xb, 0, sig);
        stale.ebx = 8;
        entries.push(stale);
        entries.push(entry(0x8000_0000, 0, 0));
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn leaf1_apic_id_count_htt_hypervisor() {
        let base = synthetic_base();
        for (index, cpus) in [(0u8, 1u8), (3, 4), (253, 254)] {
            let c = vcpu_cpuid(&base, vcpu(index, cpus)).unwrap();
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(index), "initial APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(cpus), "logical count");
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH/brand bits kept");
            assert_eq!(l1.edx & EDX_HTT != 0, cpus > 1, "HTT for {cpus} cpus");
            assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
            assert_eq!(l1.eax, 0x806e9, "signature untouched");
        }
    }

    #[test]
    fn leaf_b_topology() {
        let base = synthetic_base();
        let c = vcpu_cpuid(&base, vcpu(5, 6)).unwrap();
        let subleaves: Vec<_> = c.as_slice().iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(subleaves.len(), 3, "stale leaf replaced, not duplicated");
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let invalid = find(&c, 0xb, 2);
        assert_eq!((invalid.eax, invalid.ebx, invalid.ecx), (0, 0, 2));
        assert_eq!(invalid.edx, 5);
        for e in subleaves {
            assert_eq!(e.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
    }

    #[test]
    fn core_shift_holds_the_core_count() {
        for (cpus, shift) in [
            (1u8, 0u32),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (128, 7),
            (254, 8),
        ] {
            let c = vcpu_cpuid(&synthetic_base(), vcpu(0, cpus)).unwrap();
            assert_eq!(find(&c, 0xb, 1).eax, shift, "{cpus} cpus");
            assert!(u32::from(cpus - 1) >> shift == 0);
        }
    }

    #[test]
    fn leaf4_cores_per_package_on_every_cache() {
        let c = vcpu_cpuid(&synthetic_base(), vcpu(1, 4)).unwrap();
        for i in 0..4 {
            let e = find(&c, 4, i);
            assert_eq!(e.eax >> 26, 3, "subleaf {i}: cores - 1");
            let sharing = (e.eax >> 14) & 0xfff;
            let level = (e.eax >> 5) & 7;
            assert_eq!(sharing, if level == 3 { 3 } else { 0 }, "subleaf {i}");
            assert_eq!(e.ebx, 0x01c0_003f, "geometry untouched");
        }
        // The null terminator subleaf stays all zero.
        assert_eq!(find(&c, 4, 4).eax, 0);
    }

    #[test]
    fn missing_leaves_are_added_and_max_leaf_raised() {
        let mut leaf0 = entry(0, 0, 0);
        leaf0.eax = 0x7;
        let base = CpuId::from_entries(&[leaf0]).unwrap();
        let c = vcpu_cpuid(&base, vcpu(1, 2)).unwrap();
        assert_eq!(find(&c, 0, 0).eax, 0xb);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(find(&c, 0xb, 1).ebx, 2);
        assert!(!c.as_slice().iter().any(|e| e.function == 4));
    }

    #[test]
    fn xsave_features_come_from_leaf_0xd() {
        let mut xsave = entry(0xd, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        xsave.eax = 0x207; // x87, SSE, AVX, PKRU
        xsave.edx = 0x1;
        let mut sub1 = entry(0xd, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        sub1.eax = 0xf;
        let with = CpuId::from_entries(&[sub1, xsave]).unwrap();
        assert_eq!(xsave_features(&with), 0x1_0000_0207);
        let without = CpuId::from_entries(&[entry(1, 0, 0)]).unwrap();
        assert_eq!(xsave_features(&without), 1, "x87 only");
    }

    #[test]
    fn real_kvm_supported_cpuid() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("SKIP: real_kvm_supported_cpuid: cannot open /dev/kvm: {e}");
                return;
            }
        };
        let base = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let c = vcpu_cpuid(&base, vcpu(2, 3)).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 3);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(find(&c, 0xb, 1).ebx, 3);
        assert_eq!(find(&c, 0xb, 0).edx, 2);
        assert!(find(&c, 0, 0).eax >= 0xb);
        // Every leaf KVM reported (other than 0xB) survives.
        for e in base
            .as_slice()
            .iter()
            .filter(|e| e.function != 0xb && e.function != 0x1f)
        {
            find(&c, e.function, e.index);
        }
    }
}
