//! A guest that floods the legacy devices without ever reading leaves the VMM's memory where
//! it was: the i8042 answers and the console output wait in fixed-size buffers.
//! One test in its own binary, so nothing else allocates while the resident size is measured.

use std::io::{self, Write};

use devices::i8042::{I8042, OUTPUT_BUFFER_SIZE};
use devices::serial::{SerialConsole, MAX_BUFFERED_OUTPUT};
use devices::BusDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A host console that never takes a byte (a stopped terminal).
struct Stuck;
impl Write for Stuck {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Resident set size of this process in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_million_unread_writes_do_not_grow_memory() {
    const WRITES: usize = 1 << 20;
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut i8042 = I8042::new(evt.try_clone().unwrap());
    let mut serial = SerialConsole::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(Stuck));
    // Warm up so the buffers reach their final size before the baseline.
    for _ in 0..2 * MAX_BUFFERED_OUTPUT {
        serial.write(0, b"w");
        i8042.write(0, &[0xf4]);
    }
    let before = rss();
    let commands = [0x20u8, 0xaa, 0xab];
    for i in 0..WRITES {
        i8042.write(0, &[0xf4]); // keyboard byte: ACK queued
        i8042.write(4, &[commands[i % 3]]); // answered command
        serial.write(0, &[b'a' + u8::try_from(i % 26).unwrap()]);
        if i % 65536 == 0 {
            serial.flush_output().unwrap(); // the loop's flush, which cannot write
        }
    }
    let grown = rss().saturating_sub(before);
    // An unbounded queue would hold 2 MiB of i8042 answers and 1 MiB of console output here.
    assert!(grown < 256 * 1024, "resident memory grew by {grown} bytes");
    assert!(i8042.output_len() <= OUTPUT_BUFFER_SIZE);
    assert_eq!(serial.buffered_output(), MAX_BUFFERED_OUTPUT);
    assert_eq!(
        i8042.counters().drops,
        2 * WRITES as u64 + 2 * MAX_BUFFERED_OUTPUT as u64 - OUTPUT_BUFFER_SIZE as u64
    );
    eprintln!("resident memory grew by {grown} bytes over {WRITES} i8042 and console writes");
}
