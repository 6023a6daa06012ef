//! Tiny guests shared by several test files.

use iced_x86::code_asm::*;

use super::assemble;

/// Where the counting guest formats its digits: away from its code (a store into the page
/// being executed is very slow under nested paravirtual KVM).
const BUFFER_END: u64 = 0x20_0040;

/// Counts forever: prints 1, 2, 3, ... in decimal on COM1, one number a line, with a short
/// busy wait between lines. The count lives in RBX, so it survives only if the vCPU state does.
pub fn counting_guest() -> Vec<u8> {
    assemble(|a| {
        let mut next = a.create_label();
        let mut digits = a.create_label();
        let mut emit = a.create_label();
        let mut delay = a.create_label();
        a.xor(ebx, ebx)?;
        a.set_label(&mut next)?;
        a.inc(rbx)?;
        a.mov(rax, rbx)?;
        a.mov(rsi, BUFFER_END)?;
        a.mov(ecx, 10u32)?;
        a.set_label(&mut digits)?;
        a.xor(edx, edx)?;
        a.div(rcx)?;
        a.add(dl, b'0' as u32)?;
        a.dec(rsi)?;
        a.mov(byte_ptr(rsi), dl)?;
        a.test(rax, rax)?;
        a.jnz(digits)?;
        a.mov(dx, 0x3f8u32)?;
        a.set_label(&mut emit)?;
        a.mov(al, byte_ptr(rsi))?;
        a.out(dx, al)?;
        a.inc(rsi)?;
        a.mov(rdi, BUFFER_END)?;
        a.cmp(rsi, rdi)?;
        a.jne(emit)?;
        a.mov(al, b'\n' as u32)?;
        a.out(dx, al)?;
        a.mov(ecx, 10_000u32)?;
        a.set_label(&mut delay)?;
        a.dec(ecx)?;
        a.jnz(delay)?;
        a.jmp(next)
    })
}

/// The numbers a counting guest printed, in order (a partial last line is left out).
pub fn counted(console: &str) -> Vec<u64> {
    let complete = match console.rfind('\n') {
        Some(end) => &console[..end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Prints `text` on COM1, then resets through the i8042.
pub fn hello_guest(text: &[u8]) -> Vec<u8> {
    assemble(|a| {
        a.mov(dx, 0x3f8u32)?;
        for &byte in text {
            a.mov(al, u32::from(byte))?;
            a.out(dx, al)?;
        }
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()
    })
}

/// Maps 3-4 GiB (virtio windows, I/O APIC, LAPIC) with uncached 2 MiB pages, using the page
/// directory at `pd`, and flushes the TLB.
pub fn map_high_gib_uncached(a: &mut CodeAssembler, pd: u64) -> Result<(), IcedError> {
    let mut fill = a.create_label();
    a.mov(rdi, pd)?;
    a.mov(rax, 0xc000_0000u64 | 0x9b)?;
    a.mov(ecx, 512u32)?;
    a.set_label(&mut fill)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.add(rax, 0x20_0000)?;
    a.add(rdi, 8)?;
    a.dec(ecx)?;
    a.jnz(fill)?;
    a.mov(rax, pd | 3)?;
    a.mov(
        rdi,
        volt::boot::layout::PDPT_START + 3 * 8, /* entry 3: 3-4 GiB */
    )?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(rax, cr3)?;
    a.mov(cr3, rax)
}
