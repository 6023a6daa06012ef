//! How much one guest exit costs through Volt's vCPU-to-loop hand-off.
//!
//! A tiny guest (assembled here) does N port accesses of one kind in a loop and resets the
//! machine; the whole VM runs through the real vCPU threads and event loop. Per kind it prints
//! the wall time per access (VM set-up subtracted with an N = 0 run):
//!   - `lsr read`: the UART line status register, answered on the vCPU thread (fast path);
//!   - `msr read`: the UART modem status register, a blocking round trip through the loop;
//!   - `thr write`: a console byte, a posted write (the vCPU does not wait);
//!   - `scratch write`: a UART register write that waits for the loop (mode changes do).
//!
//! usage: cargo run --release --example exit_latency [-- N]   (needs /dev/kvm)
use std::io::{self, Write};
use std::time::Instant;

use iced_x86::code_asm::*;
use volt::sandbox::SeccompMode;
use volt::vm::{BootSource, Vm, VmConfig};

const LOAD_ADDR: u64 = 0x10_0000;

struct Sink;
impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `count` accesses of `kind` to `port`, then an i8042 reset.
fn guest(port: u16, write: bool, count: u64) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.mov(rcx, count).unwrap();
    a.mov(dx, u32::from(port)).unwrap();
    a.mov(al, u32::from(b'.')).unwrap();
    a.set_label(&mut top).unwrap();
    a.test(rcx, rcx).unwrap();
    a.jz(done).unwrap();
    if write {
        a.out(dx, al).unwrap();
    } else {
        a.in_(al, dx).unwrap();
    }
    a.dec(rcx).unwrap();
    a.jmp(top).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(al, 0xfeu32).unwrap();
    a.out(0x64u32, al).unwrap();
    a.hlt().unwrap();
    a.assemble(LOAD_ADDR).unwrap()
}

fn run(port: u16, write: bool, count: u64) -> f64 {
    let config = VmConfig {
        vcpus: volt::vm::VcpuCount::ONE,
        mem_bytes: 64 << 20,
        boot: BootSource::Raw {
            code: guest(port, write, count),
            load_addr: LOAD_ADDR,
        },
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
        rng: false,
        balloon: None,
        console_out: Box::new(Sink),
        console_in: None,
        console_out_fd: None,
        seccomp: SeccompMode::Kill,
        watchdog: None,
        acpi: true,
    };
    let start = Instant::now();
    Vm::run(config).expect("the VM runs");
    start.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let cases = [
        ("lsr read (vCPU thread)", 0x3fd, false),
        ("msr read (loop round trip)", 0x3fe, false),
        ("thr write (posted)", 0x3f8, true),
        ("scratch write (waits for loop)", 0x3ff, true),
    ];
    println!("{n} accesses per case, 1 vCPU; median of 5 runs, VM set-up subtracted");
    println!("| access | us per exit |");
    println!("|---|---|");
    for (name, port, write) in cases {
        let mut times: Vec<f64> = (0..5)
            .map(|_| run(port, write, n) - run(port, write, 0))
            .collect();
        times.sort_by(f64::total_cmp);
        println!("| {name} | {:.2} |", times[2] * 1e6 / n as f64);
    }
}
