//! The smallest "kernel" Volt's loader accepts, wrapping a tiny test guest.

use std::path::{Path, PathBuf};

use super::GUEST_LOAD_ADDR;

/// An ELF64 executable whose single PT_LOAD puts `code` at the guest load address, with the
/// entry there: the smallest thing Volt's loader accepts as a vmlinux.
pub fn tiny_elf_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut elf = vec![0u8; EHDR + PHDR];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // entry
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    elf[52..54].copy_from_slice(&u16::try_from(EHDR).unwrap().to_le_bytes());
    elf[54..56].copy_from_slice(&u16::try_from(PHDR).unwrap().to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // one program header
    let ph = &mut elf[EHDR..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[8..16].copy_from_slice(&((EHDR + PHDR) as u64).to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(code);
    let path = dir.join("tiny-vmlinux");
    std::fs::write(&path, elf).unwrap();
    path
}
