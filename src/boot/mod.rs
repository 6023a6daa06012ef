//! TEMPORARY stub until the boot branch lands.
use std::fs::File;
use kvm_bindings::{kvm_segment, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("stub: {0}")]
    Stub(String),
}
pub struct BootEntry {
    pub entry: GuestAddress,
}
pub mod layout {
    use super::*;
    pub fn create_guest_memory(bytes: u64) -> Result<GuestMemoryMmap, BootError> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).map_err(|e| BootError::Stub(e.to_string()))
    }
}
pub fn load_linux(_: &GuestMemoryMmap, _: &mut File, _: Option<&mut File>, _: &str, _: u8) -> Result<BootEntry, BootError> {
    Err(BootError::Stub("no linux".into()))
}
pub fn write_boot_tables(mem: &GuestMemoryMmap, _n: u8) -> Result<(), BootError> {
    let gdt: [u64; 4] = [0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x008f8b000000ffff];
    for (i, g) in gdt.iter().enumerate() {
        mem.write_obj(*g, GuestAddress(0x500 + i as u64 * 8)).unwrap();
    }
    mem.write_obj(0xa003u64, GuestAddress(0x9000)).unwrap();
    mem.write_obj(0xb003u64, GuestAddress(0xa000)).unwrap();
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(0xb000 + i * 8)).unwrap();
    }
    Ok(())
}
pub fn configure_vcpu(vcpu: &VcpuFd, _: &GuestMemoryMmap, cpuid: &CpuId, _: u8, _: u8, _: Option<&BootEntry>) -> Result<(), BootError> {
    vcpu.set_cpuid2(cpuid).unwrap();
    Ok(())
}
pub mod regs {
    use super::*;
    pub fn setup_long_mode(vcpu: &VcpuFd, _: &GuestMemoryMmap, entry: GuestAddress, _: Option<GuestAddress>) -> Result<(), BootError> {
        let mut s = vcpu.get_sregs().unwrap();
        let seg = |sel: u16, typ: u8, l: u8, db: u8| kvm_segment { base: 0, limit: 0xffffffff, selector: sel, type_: typ, present: 1, dpl: 0, db, s: 1, l, g: 1, avl: 0, unusable: 0, padding: 0 };
        s.cs = seg(8, 0xb, 1, 0);
        s.ds = seg(0x10, 3, 0, 1);
        s.es = s.ds; s.fs = s.ds; s.gs = s.ds; s.ss = s.ds;
        s.gdt.base = 0x500; s.gdt.limit = 31;
        s.cr3 = 0x9000; s.cr4 |= 0x20; s.cr0 |= 0x80000001; s.efer |= 0x500;
        vcpu.set_sregs(&s).unwrap();
        let mut r = vcpu.get_regs().unwrap();
        r.rip = entry.0; r.rflags = 2; r.rsp = 0x8ff0;
        vcpu.set_regs(&r).unwrap();
        Ok(())
    }
}
