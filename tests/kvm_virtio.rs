//! The virtio data path through KVM: a guest's QueueNotify write goes to the device's
//! ioeventfd without a vCPU exit to user space, and the device's interrupt reaches the guest
//! through its irqfd, the in-kernel I/O APIC and LAPIC.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use common::guests::{map_high_gib_uncached, virtio_mmio_init};
use common::*;
use devices::virtio::BlockEngine;
use iced_x86::code_asm::*;
use volt::sandbox::SeccompMode;
use volt::vm::DiskConfig;

const VIRTIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQ: u32 = 5;
const VECTOR: u32 = 0x40;
/// Free low memory for the guest's own tables (raw images use none of Linux's layout).
const IDT: u64 = 0x3000;
const HIGH_PD: u64 = 0x4000;

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
        let park = a.create_label();
        let stray = a.create_label();
        let gates = a.create_label();

        // Virtio windows, I/O APIC and LAPIC.
        map_high_gib_uncached(a, HIGH_PD)?;

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
        ..DiskConfig::default()
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

// Where the block guest keeps its virtqueue and request (free RAM above the loaded code).
const BLK_DESC: u64 = 0x30_0000;
const BLK_AVAIL: u64 = 0x30_1000;
const BLK_USED: u64 = 0x30_2000;
const BLK_HDR: u64 = 0x30_3000;
const BLK_STATUS: u64 = 0x30_3100;
const BLK_DATA: u64 = 0x30_4000;
const BLK_HIGH_PD: u64 = 0x31_0000;
const BLK_SECTOR: u64 = 1;

/// A guest virtio-block driver in a few dozen instructions: it initialises the first virtio
/// device with one 8-entry queue, reads sector BLK_SECTOR, polls the used ring, prints the
/// status byte as a digit and the first data byte on COM1, and resets. 'T' means the request
/// never completed.
fn block_read_guest() -> Vec<u8> {
    assemble(|a| {
        let poll = a.create_label();
        let timeout = a.create_label();
        let report = a.create_label();
        // The virtio window.
        map_high_gib_uncached(a, BLK_HIGH_PD)?;

        // Request: header (IN, sector), 512-byte buffer, status byte; three chained descriptors.
        a.mov(rdi, BLK_HDR)?;
        a.mov(dword_ptr(rdi), 0u32)?;
        a.mov(dword_ptr(rdi + 4), 0u32)?;
        a.mov(rax, BLK_SECTOR)?;
        a.mov(qword_ptr(rdi + 8), rax)?;
        a.mov(rdi, BLK_STATUS)?;
        a.mov(byte_ptr(rdi), 0xffu32)?;
        a.mov(rdi, BLK_DESC)?;
        for (i, (addr, len, flags)) in [
            (BLK_HDR, 16u32, 1u32),
            (BLK_DATA, 512, 3),
            (BLK_STATUS, 1, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let at = i as i32 * 16;
            a.mov(rax, addr)?;
            a.mov(qword_ptr(rdi + at), rax)?;
            a.mov(dword_ptr(rdi + at + 8), len)?;
            a.mov(word_ptr(rdi + at + 12), flags)?;
            a.mov(
                word_ptr(rdi + at + 14),
                if flags & 1 != 0 { i as u32 + 1 } else { 0 },
            )?;
        }
        // Avail ring: flags 0, idx 1, ring[0] = descriptor 0. Used ring cleared.
        a.mov(rdi, BLK_AVAIL)?;
        a.mov(dword_ptr(rdi), 0x1_0000u32)?;
        a.mov(word_ptr(rdi + 4), 0u32)?;
        a.mov(rdi, BLK_USED)?;
        a.mov(dword_ptr(rdi), 0u32)?;

        // virtio-mmio init: ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queue 0, DRIVER_OK.
        a.mov(rbx, VIRTIO_BASE)?;
        virtio_mmio_init(a, 0, 1, |_| BLK_DESC)?;
        // Kick queue 0 (ioeventfd), then poll the used index for a while.
        a.mov(dword_ptr(rbx + 0x50), 0u32)?;
        a.mov(rdi, BLK_USED)?;
        a.mov(rcx, 2_000_000_000u64)?;
        let mut poll_label = poll;
        a.set_label(&mut poll_label)?;
        a.cmp(word_ptr(rdi + 2), 1u32)?;
        a.je(report)?;
        a.pause()?;
        a.dec(rcx)?;
        a.jnz(poll_label)?;
        let mut timeout_label = timeout;
        a.set_label(&mut timeout_label)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, u32::from(b'T'))?;
        a.out(dx, al)?;
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()?;

        let mut report_label = report;
        a.set_label(&mut report_label)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(rdi, BLK_STATUS)?;
        a.mov(al, byte_ptr(rdi))?;
        a.add(al, u32::from(b'0'))?;
        a.out(dx, al)?;
        a.mov(rdi, BLK_DATA)?;
        a.mov(al, byte_ptr(rdi))?;
        a.out(dx, al)?;
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()
    })
}

/// A 1 MiB image whose sector BLK_SECTOR is all 'V'.
fn block_guest_disk() -> tempfile::NamedTempFile {
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(disk.as_file(), &[b'V'; 512], BLK_SECTOR * 512)
        .unwrap();
    disk
}

/// Whether this host can set up io_uring; prints a SKIP line for `test` otherwise.
fn uring_available(test: &str) -> bool {
    let disk = block_guest_disk();
    match devices::virtio::Block::with_engine(disk.path(), true, BlockEngine::Uring) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: {test} (io_uring): {e}");
            false
        }
    }
}

/// A guest block read served by each engine, with the event loop under its seccomp filter in
/// kill mode: io_uring's submissions (io_uring_enter) run under the loop's allow-list.
#[test]
fn a_guest_reads_a_sector_on_both_engines_under_seccomp() {
    if !kvm_available("a_guest_reads_a_sector_on_both_engines_under_seccomp") {
        return;
    }
    let mut engines = vec![BlockEngine::Sync];
    if uring_available("a_guest_reads_a_sector_on_both_engines_under_seccomp") {
        engines.push(BlockEngine::Uring);
    }
    for engine in engines {
        let disk = block_guest_disk();
        let disks = vec![DiskConfig {
            path: disk.path().to_path_buf(),
            read_only: false,
            engine,
        }];
        let run = run_raw_guest_with_disks(block_read_guest(), 1, SeccompMode::Kill, disks);
        assert_eq!(
            run.console, "0V",
            "{engine}: {:?} {:?}",
            run.exit, run.stats
        );
        assert_eq!(run.stats.queue_kicks, 1, "{engine}: {:?}", run.stats);
    }
}

/// The same guest through the `volt` binary with the whole sandbox (seccomp kill mode and
/// Landlock): io_uring works under both, and the log names the engine.
#[test]
fn the_uring_engine_serves_a_guest_under_the_full_sandbox() {
    let test = "the_uring_engine_serves_a_guest_under_the_full_sandbox";
    if !kvm_available(test) || !uring_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &block_read_guest());
    let disk = block_guest_disk();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--disk")
        .arg(format!("{},engine=uring", disk.path().display()))
        .args(["--log-level", "info"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "0V", "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.contains("uring engine"), "{stderr}");
    assert!(!stderr.contains("Landlock is off"), "{stderr}");
}
