//! virtio-rng and virtio-balloon inside the real VMM: a tiny guest (assembled here) drives both
//! devices through their MMIO registers and ioeventfds while the event loop runs under its
//! seccomp filter in kill mode, so getrandom, madvise and the timers must be on the list.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, known values

mod common;

use common::guests::{map_high_gib_uncached, virtio_mmio_init};
use common::*;
use devices::virtio::BalloonConfig;
use iced_x86::code_asm::*;
use volt::sandbox::SeccompMode;

/// With no disk or net: the rng takes the first window, the balloon the second.
const RNG_BASE: u64 = 0xd000_0000;
const BALLOON_BASE: u64 = 0xd000_1000;
const HIGH_PD: u64 = 0x4000;

const RNG_QUEUE: u64 = 0x80_0000;
const RNG_BUF: u64 = 0x80_3000;
/// Balloon queue i: descriptors at +0, avail at +0x1000, used at +0x2000.
const BALLOON_QUEUES: u64 = 0x90_0000;
/// The range the guest fills and then reports free.
const REPORTED: u64 = 0x100_0000;
const REPORTED_LEN: u32 = 0x20_0000;

fn balloon_queue(index: u32) -> u64 {
    BALLOON_QUEUES + u64::from(index) * 0x4000
}

/// Writes `byte` to the serial port.
fn putc(a: &mut CodeAssembler, byte: u8) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8u32)?;
    a.mov(al, u32::from(byte))?;
    a.out(dx, al)
}

/// Publishes descriptor 0 (`addr`, `len`, device-writable) as the first request of the queue
/// at `queue`, kicks queue `index` and spins until the used index moves (or gives up, printing
/// 'T' and resetting the machine).
fn submit_and_wait(
    a: &mut CodeAssembler,
    queue: u64,
    index: u32,
    addr: u64,
    len: u32,
) -> Result<(), IcedError> {
    a.mov(rdi, queue)?;
    a.mov(rax, addr)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(dword_ptr(rdi + 8), len)?;
    a.mov(word_ptr(rdi + 12), 2u32)?; // VRING_DESC_F_WRITE
    a.mov(word_ptr(rdi + 14), 0u32)?;
    a.mov(word_ptr(rdi + 0x1004), 0u32)?; // avail ring[0] = descriptor 0
    a.mov(word_ptr(rdi + 0x1002), 1u32)?; // avail idx = 1
    a.mov(dword_ptr(rbx + 0x50), index)?;
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.mov(ecx, 200_000_000u32)?;
    a.set_label(&mut wait)?;
    a.cmp(word_ptr(rdi + 0x2002), 0u32)?;
    a.jne(done)?;
    a.pause()?;
    a.dec(ecx)?;
    a.jnz(wait)?;
    putc(a, b'T')?;
    a.mov(al, 0xfeu32)?;
    a.out(0x64u32, al)?;
    a.hlt()?;
    a.set_label(&mut done)
}

fn guest() -> Vec<u8> {
    assemble(|a| {
        // The virtio windows.
        map_high_gib_uncached(a, HIGH_PD)?;

        // virtio-rng: one 64-byte request. Prints 'R', the used length + '0' ('p' for 64) and
        // 'N' if the first 8 bytes are not all zero.
        a.mov(rbx, RNG_BASE)?;
        virtio_mmio_init(a, 0, 1, |_| RNG_QUEUE)?;
        submit_and_wait(a, RNG_QUEUE, 0, RNG_BUF, 64)?;
        putc(a, b'R')?;
        a.mov(rdi, RNG_QUEUE)?;
        a.mov(eax, dword_ptr(rdi + 0x2008))?; // used ring[0].len
        a.add(eax, u32::from(b'0'))?;
        a.mov(dx, 0x3f8u32)?;
        a.out(dx, al)?;
        let mut zero = a.create_label();
        a.mov(rdi, RNG_BUF)?;
        a.mov(rax, qword_ptr(rdi))?;
        a.test(rax, rax)?;
        a.jz(zero)?;
        putc(a, b'N')?;
        a.set_label(&mut zero)?;

        // virtio-balloon with free page reporting: inflateq, deflateq, reporting_vq. Fill 2 MiB
        // with 0xa5, report it free, and print 'B' then 'Z' if it reads back as zeroes.
        a.mov(rbx, BALLOON_BASE)?;
        virtio_mmio_init(a, 1 << 5, 3, balloon_queue)?;
        a.mov(rdi, REPORTED)?;
        a.mov(rcx, u64::from(REPORTED_LEN) / 8)?;
        a.mov(rax, 0xa5a5_a5a5_a5a5_a5a5u64)?;
        a.rep().stosq()?;
        submit_and_wait(a, balloon_queue(2), 2, REPORTED, REPORTED_LEN)?;
        putc(a, b'B')?;
        let mut kept = a.create_label();
        a.mov(rdi, REPORTED + u64::from(REPORTED_LEN) / 2)?;
        a.mov(rax, qword_ptr(rdi))?;
        a.test(rax, rax)?;
        a.jnz(kept)?;
        putc(a, b'Z')?;
        a.set_label(&mut kept)?;

        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()
    })
}

#[test]
fn rng_and_balloon_work_under_the_event_loops_seccomp_filter() {
    if !kvm_available("rng_and_balloon_work_under_the_event_loops_seccomp_filter") {
        return;
    }
    let run = run_raw_guest_configured(guest(), 1, SeccompMode::Kill, |config| {
        config.rng = true;
        config.balloon = Some(BalloonConfig {
            stats_interval: Some(std::time::Duration::from_secs(1)),
            ..BalloonConfig::default()
        });
    });
    // 'p' = '0' + 64: the rng filled all 64 bytes; 'Z': the reported range was dropped on the
    // host and reads back as zeroes.
    assert_eq!(run.console, "RpNBZ", "{:?} {:?}", run.exit, run.stats);
    assert_eq!(run.stats.queue_kicks, 2, "{:?}", run.stats);
    assert!(run.stats.unhandled.is_empty(), "{:?}", run.stats.unhandled);
}
