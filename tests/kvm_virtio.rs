//! The virtio data path through KVM: a guest's QueueNotify write goes to the device's
//! ioeventfd without a vCPU exit to user space, and the device's interrupt reaches the guest
//! through its irqfd, the in-kernel I/O APIC and LAPIC.

mod common;

use common::*;
use iced_x86::code_asm::*;
use volt::sandbox::SeccompMode;
use volt::vm::DiskConfig;

const VIRTIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQ: u32 = 5;
const VECTOR: u32 = 0x40;
/// Free low memory for the guest's own tables (raw images use none of Linux's layout).
const IDT: u64 = 0x3000;
const HIGH_PD: u64 = 0x4000;
/// The boot page tables' PDPT (see boot::layout); entry 3 maps 3-4 GiB.
const PDPT: u64 = 0xa000;

/// Writes an interrupt gate at [rdi] to the handler address in rax (rax is kept).
fn write_gate(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(rax)?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), 0x08u32)?;
    a.mov(word_ptr(rdi + 4), 0x8e00u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0u32)?;
    a.pop(rax)
}

fn virtio_guest() -> Vec<u8> {
    assemble(|a| {
        let handler = a.create_label();
        let idtr = a.create_label();
        let fill = a.create_label();
        let park = a.create_label();
        let stray = a.create_label();
        let gates = a.create_label();

        // Map 3-4 GiB (virtio windows, I/O APIC, LAPIC) with uncached 2 MiB pages.
        a.mov(rdi, HIGH_PD)?;
        a.mov(rax, 0xc000_0000u64 | 0x9b)?;
        a.mov(ecx, 512u32)?;
        let mut fill_label = fill;
        a.set_label(&mut fill_label)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.add(rax, 0x20_0000)?;
        a.add(rdi, 8)?;
        a.dec(ecx)?;
        a.jnz(fill_label)?;
        a.mov(rax, HIGH_PD | 3)?;
        a.mov(rdi, PDPT + 3 * 8)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;

        // IDT: every vector -> `stray` (so an unexpected interrupt is visible, not a triple
        // fault), VECTOR -> `handler`.
        a.lea(rax, ptr(stray))?;
        a.mov(rdi, IDT)?;
        a.mov(ecx, 256u32)?;
        let mut gates_label = gates;
        a.set_label(&mut gates_label)?;
        write_gate(a)?;
        a.add(rdi, 16)?;
        a.dec(ecx)?;
        a.jnz(gates_label)?;
        a.lea(rax, ptr(handler))?;
        a.mov(rdi, IDT + u64::from(VECTOR) * 16)?;
        write_gate(a)?;
        a.lidt(ptr(idtr))?;

        // LAPIC on (spurious vector register), I/O APIC pin 5 -> VECTOR, edge, CPU 0.
        a.mov(rbx, 0xfee0_00f0u64)?;
        a.mov(dword_ptr(rbx), 0x1ffu32)?;
        a.mov(rbx, 0xfec0_0000u64)?;
        a.mov(dword_ptr(rbx), 0x10 + 2 * VIRTIO_IRQ + 1)?;
        a.mov(dword_ptr(rbx + 0x10), 0u32)?;
        a.mov(dword_ptr(rbx), 0x10 + 2 * VIRTIO_IRQ)?;
        a.mov(dword_ptr(rbx + 0x10), VECTOR)?;

        a.mov(rbx, VIRTIO_BASE)?;
        // Kick queue 0: KVM signals the ioeventfd and the vCPU goes on without an exit.
        a.mov(dword_ptr(rbx + 0x50), 0u32)?;
        // A port read round trip, so the loop has handled the kick before we go on.
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        // Driver init with VERSION_1 but no queue set up: DRIVER_OK fails activation and the
        // device raises a configuration-change interrupt (NEEDS_RESET).
        a.mov(dword_ptr(rbx + 0x70), 1u32)?;
        a.mov(dword_ptr(rbx + 0x70), 3u32)?;
        a.mov(dword_ptr(rbx + 0x24), 1u32)?;
        a.mov(dword_ptr(rbx + 0x20), 1u32)?;
        a.mov(dword_ptr(rbx + 0x70), 0xbu32)?;
        a.mov(dword_ptr(rbx + 0x70), 0xfu32)?;
        a.sti()?;
        let mut park_label = park;
        a.set_label(&mut park_label)?;
        a.hlt()?;
        a.jmp(park_label)?;

        // Interrupt: print 'I' and the device's InterruptStatus, then reset the machine.
        let mut handler_label = handler;
        a.set_label(&mut handler_label)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, u32::from(b'I'))?;
        a.out(dx, al)?;
        a.mov(eax, dword_ptr(rbx + 0x60))?;
        a.add(al, u32::from(b'0'))?;
        a.out(dx, al)?;
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()?;

        // Any other interrupt: print '?' and its vector is lost on purpose; go back.
        let mut stray_label = stray;
        a.set_label(&mut stray_label)?;
        a.push(rax)?;
        a.push(rdx)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, u32::from(b'?'))?;
        a.out(dx, al)?;
        a.pop(rdx)?;
        a.pop(rax)?;
        a.iretq()?;

        let mut idtr_label = idtr;
        a.set_label(&mut idtr_label)?;
        a.dw(&[0xfff])?;
        a.dq(&[IDT])
    })
}

#[test]
fn queue_kicks_use_the_ioeventfd_and_interrupts_arrive_through_the_irqfd() {
    if !kvm_available("queue_kicks_use_the_ioeventfd_and_interrupts_arrive_through_the_irqfd") {
        return;
    }
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let disks = vec![DiskConfig {
        path: disk.path().to_path_buf(),
        read_only: false,
    }];
    let run = run_raw_guest_with_disks(virtio_guest(), 1, SeccompMode::Kill, disks);

    // The interrupt reached the guest's handler, and the status says "configuration change".
    // Other vectors ('?') may come first: the never-programmed legacy PIC can deliver through
    // LINT0 (ExtINT) as soon as interrupts are enabled.
    assert_eq!(
        run.console.trim_start_matches('?'),
        "I2",
        "{:?} {:?}",
        run.exit,
        run.stats
    );
    // The kick arrived on the ioeventfd ...
    assert_eq!(run.stats.queue_kicks, 1, "{:?}", run.stats);
    // ... and was not one of the MMIO exits the loop served: 6 register writes + 1 read.
    assert_eq!(run.stats.mmio_exits, 7, "{:?}", run.stats);
    assert!(run.stats.unhandled.is_empty(), "{:?}", run.stats.unhandled);
}
