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

/// A virtio-mmio driver's init through the registers at rbx: ACKNOWLEDGE, DRIVER,
/// VERSION_1 plus `features_low`, FEATURES_OK, then `queues` queues of 8 entries, queue i
/// at `queue_addr(i)` (descriptors there, the avail ring 0x1000 and the used ring 0x2000
/// above), then DRIVER_OK.
pub fn virtio_mmio_init(
    a: &mut CodeAssembler,
    features_low: u32,
    queues: u32,
    queue_addr: impl Fn(u32) -> u64,
) -> Result<(), IcedError> {
    a.mov(dword_ptr(rbx + 0x70), 1u32)?;
    a.mov(dword_ptr(rbx + 0x70), 3u32)?;
    a.mov(dword_ptr(rbx + 0x24), 1u32)?;
    a.mov(dword_ptr(rbx + 0x20), 1u32)?; // VIRTIO_F_VERSION_1 (bit 32)
    a.mov(dword_ptr(rbx + 0x24), 0u32)?;
    a.mov(dword_ptr(rbx + 0x20), features_low)?;
    a.mov(dword_ptr(rbx + 0x70), 0xbu32)?;
    for index in 0..queues {
        let base = queue_addr(index);
        a.mov(dword_ptr(rbx + 0x30), index)?;
        a.mov(dword_ptr(rbx + 0x38), 8u32)?;
        for (reg, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
            a.mov(
                dword_ptr(rbx + reg),
                u32::try_from(addr).expect("below 4 GiB"),
            )?;
            a.mov(dword_ptr(rbx + reg + 4), 0u32)?;
        }
        a.mov(dword_ptr(rbx + 0x44), 1u32)?;
    }
    a.mov(dword_ptr(rbx + 0x70), 0xfu32)
}
