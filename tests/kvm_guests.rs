//! Tiny guests, assembled in the test, run through the real vCPU threads and event loop.

mod common;

use common::*;
use iced_x86::code_asm::*;
use volt::event_loop::VmExit;
use volt::sandbox::SeccompMode;
use volt::vcpu::AddressSpace;

/// `out 0x3f8, byte` for every byte of `text`.
fn print(a: &mut CodeAssembler, text: &[u8]) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8u32)?;
    for &byte in text {
        a.mov(al, u32::from(byte))?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// i8042 command 0xFE: the CPU reset Linux uses with `reboot=k`.
fn i8042_reset(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(al, 0xfeu32)?;
    a.out(0x64u32, al)?;
    a.hlt()
}

#[test]
fn serial_output_reaches_the_console_and_i8042_reset_ends_the_vm() {
    if !kvm_available("serial_output_reaches_the_console") {
        return;
    }
    let code = assemble(|a| {
        print(a, b"hello from the guest\n")?;
        i8042_reset(a)
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert_eq!(run.console, "hello from the guest\n");
    assert_eq!(run.exit, VmExit::Reset);
    assert_eq!(run.exit.exit_code(), 0);
    assert!(
        run.stats.pio_exits >= 22,
        "every byte and the reset are port exits: {:?}",
        run.stats
    );
}

#[test]
fn a_triple_fault_shuts_the_vm_down_cleanly() {
    if !kvm_available("a_triple_fault_shuts_the_vm_down_cleanly") {
        return;
    }
    // An empty IDT makes the first exception a triple fault.
    let code = assemble(|a| {
        let idt = a.create_label();
        a.lidt(ptr(idt))?;
        a.ud2()?;
        a.set_label(&mut { idt })?;
        a.dw(&[0])?;
        a.dq(&[0])
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert!(
        matches!(run.exit, VmExit::Shutdown { vcpu: 0 }),
        "{:?}",
        run.exit
    );
    assert_eq!(run.exit.exit_code(), 0);
}

/// Every vCPU prints its index; vCPU 0 waits for all of them, then resets the machine.
fn smp_guest(vcpus: u8) -> Vec<u8> {
    assemble(|a| {
        let counter = a.create_label();
        let wait = a.create_label();
        let park = a.create_label();
        // RDI holds this vCPU's index. Serialize the prints with a ticket on `counter`:
        // vCPU i prints once the counter reaches i.
        let mut spin = a.create_label();
        a.set_label(&mut spin)?;
        a.mov(rax, qword_ptr(counter))?;
        a.cmp(rax, rdi)?;
        a.jne(spin)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(rax, rdi)?;
        a.add(al, b'0' as u32)?;
        a.out(dx, al)?;
        a.lock().inc(qword_ptr(counter))?;
        a.test(rdi, rdi)?;
        a.jnz(park)?;
        let mut wait_label = wait;
        a.set_label(&mut wait_label)?;
        a.mov(rax, qword_ptr(counter))?;
        a.cmp(rax, u32::from(vcpus) as i32)?;
        a.jne(wait_label)?;
        print(a, b"\nall cpus ran\n")?;
        i8042_reset(a)?;
        let mut park_label = park;
        a.set_label(&mut park_label)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(park_label)?;
        let mut counter_label = counter;
        a.set_label(&mut counter_label)?;
        a.dq(&[0])
    })
}

#[test]
fn two_and_four_vcpus_each_run_on_their_own_thread() {
    if !kvm_available("two_and_four_vcpus_each_run") {
        return;
    }
    for vcpus in [2u8, 4] {
        let run = run_raw_guest(smp_guest(vcpus), vcpus, SeccompMode::Kill);
        let expected: String = (0..vcpus).map(|i| char::from(b'0' + i)).collect();
        assert_eq!(
            run.console,
            format!("{expected}\nall cpus ran\n"),
            "{vcpus} vCPUs"
        );
        assert_eq!(run.exit, VmExit::Reset);
    }
}

#[test]
fn an_mmio_access_to_an_unmapped_address_reaches_the_event_loop() {
    if !kvm_available("an_mmio_access_to_an_unmapped_address") {
        return;
    }
    // 768 MiB is past the 64 MiB of RAM (but inside the 1 GiB identity map) and no device
    // lives there. The read must
    // come back as zeros (the loop answers it) for the guest to print "0".
    let code = assemble(|a| {
        a.mov(rbx, 0x3000_0000u64)?;
        a.mov(dword_ptr(rbx), 0x1234_5678u32)?;
        a.mov(eax, dword_ptr(rbx + 8))?;
        a.add(al, b'0' as u32)?;
        a.mov(dx, 0x3f8u32)?;
        a.out(dx, al)?;
        i8042_reset(a)
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert_eq!(run.console, "0");
    assert_eq!(
        run.stats.unhandled,
        vec![
            (AddressSpace::Mmio, 0x3000_0000, true),
            (AddressSpace::Mmio, 0x3000_0008, false)
        ]
    );
    assert_eq!(run.stats.mmio_exits, 2);
}

#[test]
fn a_vcpu_waiting_for_a_read_when_the_guest_resets_does_not_hang_the_teardown() {
    if !kvm_available("a_vcpu_waiting_for_a_read_when_the_guest_resets") {
        return;
    }
    // Linux's reboot does this: the reset command, then status reads of the controller. The
    // loop ends on the reset with reads still queued that it will never answer; tearing down
    // must not wait for those answers (it used to hang now and then).
    let code = assemble(|a| {
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.in_(al, 0x64u32)?;
        a.jmp(again)
    });
    for _ in 0..20 {
        let run = run_raw_guest(code.clone(), 1, SeccompMode::Kill);
        assert_eq!(run.exit, VmExit::Reset);
    }
}

#[test]
fn string_port_io_of_any_length_reaches_the_device_whole() {
    if !kvm_available("string_port_io_of_any_length") {
        return;
    }
    // 4 KiB of text in one `rep outsb` (one exit carrying a page of data), then 16 bytes of the
    // UART's line status register (0x60: transmitter empty) read with one `rep insb` and echoed.
    let text: Vec<u8> = (0..4096u32)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let code = assemble(|a| {
        let data = a.create_label();
        let buffer = a.create_label();
        a.lea(rsi, ptr(data))?;
        a.mov(rcx, 4096u64)?;
        a.mov(dx, 0x3f8u32)?;
        a.rep().outsb()?;
        a.lea(rdi, ptr(buffer))?;
        a.mov(rcx, 16u64)?;
        a.mov(dx, 0x3fdu32)?;
        a.rep().insb()?;
        a.lea(rsi, ptr(buffer))?;
        a.mov(rcx, 16u64)?;
        a.mov(dx, 0x3f8u32)?;
        a.rep().outsb()?;
        i8042_reset(a)?;
        a.set_label(&mut { data })?;
        a.db(&text)?;
        a.set_label(&mut { buffer })?;
        a.db(&[0xaa; 16])
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    let mut expected = String::from_utf8(text).unwrap();
    expected.push_str(&"`".repeat(16));
    assert_eq!(run.console.len(), expected.len(), "{:?}", run.stats);
    assert_eq!(run.console, expected);
    assert_eq!(run.exit, VmExit::Reset);
}

#[test]
fn acpi_s5_through_the_sleep_registers_powers_the_vm_off() {
    if !kvm_available("acpi_s5_through_the_sleep_registers_powers_the_vm_off") {
        return;
    }
    // What Linux's acpi_hw_extended_sleep() does for S5 (\_S5 = 5): clear WAK_STS, write
    // SLP_TYP << 2 | SLP_EN to the control register, then poll the status register for a wake.
    let code = assemble(|a| {
        a.mov(dx, 0x601u32)?;
        a.mov(al, 0x80u32)?;
        a.out(dx, al)?;
        a.mov(dx, 0x600u32)?;
        a.mov(al, (5u32 << 2) | 0x20)?;
        a.out(dx, al)?;
        a.mov(dx, 0x601u32)?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.in_(al, dx)?;
        a.test(al, 0x80u32)?;
        a.jz(again)?;
        a.hlt()
    });
    for _ in 0..10 {
        let run = run_raw_guest(code.clone(), 2, SeccompMode::Kill);
        assert_eq!(run.exit, VmExit::PowerOff);
        assert_eq!(run.exit.exit_code(), 0);
    }
}

#[test]
fn other_sleep_states_do_not_end_the_vm() {
    if !kvm_available("other_sleep_states_do_not_end_the_vm") {
        return;
    }
    // S3 (not offered in the DSDT) is ignored; the guest then reboots through the i8042.
    let code = assemble(|a| {
        a.mov(dx, 0x600u32)?;
        a.mov(al, (3u32 << 2) | 0x20)?;
        a.out(dx, al)?;
        print(a, b"still here\n")?;
        i8042_reset(a)
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert_eq!(run.console, "still here\n");
    assert_eq!(run.exit, VmExit::Reset);
}

/// Prints `text` the way Linux's 8250 console does: the line status register before each byte.
fn print_polling_lsr(a: &mut CodeAssembler, text: &[u8]) -> Result<(), IcedError> {
    for &byte in text {
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        a.test(al, 0x20u32)?;
        a.jz(wait)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, u32::from(byte))?;
        a.out(dx, al)?;
    }
    Ok(())
}

#[test]
fn line_status_reads_are_answered_on_the_vcpu_thread() {
    if !kvm_available("line_status_reads_are_answered_on_the_vcpu_thread") {
        return;
    }
    let text = b"every byte polls the LSR first\n";
    let code = assemble(|a| {
        print_polling_lsr(a, text)?;
        i8042_reset(a)
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert_eq!(run.console.as_bytes(), text);
    assert_eq!(
        run.stats.pio_answered_on_vcpu,
        text.len() as u64,
        "{:?}",
        run.stats
    );
    // The loop saw the data writes and the reset, not the LSR reads.
    assert!(
        run.stats.pio_exits <= text.len() as u64 + 2,
        "{:?}",
        run.stats
    );
}

#[test]
fn in_loopback_mode_the_loop_answers_line_status_reads() {
    if !kvm_available("in_loopback_mode_the_loop_answers_line_status_reads") {
        return;
    }
    // MCR loopback on, send 'Z' (it lands in the receiver), read LSR and RBR, loopback off,
    // then print what was read: the LSR must show data ready (0x61 = 'a') and RBR the 'Z'.
    let code = assemble(|a| {
        a.mov(dx, 0x3fcu32)?;
        a.mov(al, 0x10u32)?;
        a.out(dx, al)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, u32::from(b'Z'))?;
        a.out(dx, al)?;
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        a.mov(bl, al)?;
        a.mov(dx, 0x3f8u32)?;
        a.in_(al, dx)?;
        a.mov(cl, al)?;
        a.mov(dx, 0x3fcu32)?;
        a.mov(al, 0u32)?;
        a.out(dx, al)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, bl)?;
        a.out(dx, al)?;
        a.mov(al, cl)?;
        a.out(dx, al)?;
        i8042_reset(a)
    });
    let run = run_raw_guest(code, 1, SeccompMode::Kill);
    assert!(run.console.ends_with("aZ"), "{:?}", run.console);
    assert_eq!(run.stats.pio_answered_on_vcpu, 0, "{:?}", run.stats);
}

/// Every vCPU writes `bytes` console bytes the way Linux does (LSR poll, then the byte), then
/// counts itself done; vCPU 0 resets the machine once all are.
fn console_flood_guest(vcpus: u8, bytes: u32) -> Vec<u8> {
    assemble(|a| {
        let counter = a.create_label();
        let mut park = a.create_label();
        let mut wait_lsr = a.create_label();
        let mut wait_all = a.create_label();
        a.mov(ecx, bytes)?;
        // The next byte starts with its LSR poll.
        a.set_label(&mut wait_lsr)?;
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        a.test(al, 0x20u32)?;
        a.jz(wait_lsr)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(rax, rdi)?;
        a.add(al, b'a' as u32)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(wait_lsr)?;
        a.lock().inc(qword_ptr(counter))?;
        a.test(rdi, rdi)?;
        a.jnz(park)?;
        a.set_label(&mut wait_all)?;
        a.mov(rax, qword_ptr(counter))?;
        a.cmp(rax, u32::from(vcpus) as i32)?;
        a.jne(wait_all)?;
        i8042_reset(a)?;
        a.set_label(&mut park)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(park)?;
        let mut counter_label = counter;
        a.set_label(&mut counter_label)?;
        a.dq(&[0])
    })
}

/// The loop spins for the next exit only while every vCPU thread and the loop have a host CPU
/// each; with more vCPU threads than host CPUs (4 on the 2-core development machines) it must
/// sleep instead, and a console flood from every vCPU must still come through whole.
#[test]
fn a_console_flood_comes_through_whole_with_fewer_and_more_vcpus_than_host_cpus() {
    if !kvm_available("a_console_flood_comes_through_whole") {
        return;
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bytes = 3000u32;
    for vcpus in [1u8, 4, 8] {
        let run = run_raw_guest(console_flood_guest(vcpus, bytes), vcpus, SeccompMode::Kill);
        assert_eq!(
            run.exit,
            VmExit::Reset,
            "{vcpus} vCPUs on {host_cpus} host CPUs"
        );
        for i in 0..vcpus {
            let mine = run.console.bytes().filter(|&b| b == b'a' + i).count();
            assert_eq!(
                mine, bytes as usize,
                "vCPU {i} of {vcpus} on {host_cpus} host CPUs"
            );
        }
        assert_eq!(
            run.stats.pio_answered_on_vcpu,
            u64::from(bytes) * u64::from(vcpus),
            "every LSR poll answered on its vCPU thread"
        );
    }
}
