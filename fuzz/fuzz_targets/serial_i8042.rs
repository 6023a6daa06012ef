//! Register sequences on the 8250 UART and the i8042, mixed with host input and a host console
//! that sometimes cannot take output (EAGAIN) or fails. Checked: every buffer stays within its
//! bound, and the counters agree with what reached the host.
#![no_main]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use devices::i8042::{I8042, OUTPUT_BUFFER_SIZE};
use devices::serial::{SerialConsole, MAX_BUFFERED_OUTPUT, MAX_PENDING_INPUT};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use volt_fuzz::Input;

/// The host console: takes at most `room` bytes, then says WouldBlock; or fails outright.
#[derive(Clone, Default)]
struct Host {
    room: Arc<Mutex<usize>>,
    broken: Arc<Mutex<bool>>,
    written: Arc<Mutex<u64>>,
}

impl Write for Host {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if *self.broken.lock().unwrap() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut room = self.room.lock().unwrap();
        if *room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = data.len().min(*room);
        *room -= n;
        *self.written.lock().unwrap() += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let host = Host::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut serial = SerialConsole::new(irq.try_clone().unwrap(), Box::new(host.clone()));
    let reset = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut i8042 = I8042::new(reset.try_clone().unwrap());
    let mut input = Input::new(data);
    // Floods are capped per input so each run stays fast; one flood still passes the bound.
    let mut flood_budget = MAX_BUFFERED_OUTPUT + 4096;
    for _ in 0..4096 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 9 {
            0 | 1 => {
                let offset = u64::from(input.u8() % 9);
                serial.write(offset, &[input.u8()]);
            }
            2 => {
                let mut byte = [0u8];
                serial.read(u64::from(input.u8() % 9), &mut byte);
            }
            3 => {
                let len = usize::from(input.u8());
                // Repeat the chunk to reach the input cap quickly now and then.
                let chunk = input.bytes(len).to_vec();
                for _ in 0..=input.u8() % 4 {
                    if serial.wants_input() {
                        serial.queue_input(&chunk);
                    }
                }
            }
            4 => {
                *host.room.lock().unwrap() = usize::from(input.u16());
                let _ = serial.flush_output();
            }
            5 => *host.broken.lock().unwrap() = input.u8() % 8 == 0,
            6 => {
                // A burst of console output, as a guest flood.
                let count = (usize::from(input.u8()) * 512).min(flood_budget);
                flood_budget -= count;
                let byte = input.u8();
                for _ in 0..count {
                    serial.write(0, &[byte]);
                }
            }
            7 => {
                let offset = if input.u8() & 1 == 0 { 0 } else { 4 };
                i8042.write(offset, &[input.u8()]);
            }
            _ => {
                let mut byte = [0u8];
                i8042.read(u64::from(input.u8() % 5), &mut byte);
            }
        }
        assert!(i8042.output_len() <= OUTPUT_BUFFER_SIZE);
        assert!(serial.buffered_output() <= MAX_BUFFERED_OUTPUT);
        assert!(serial.pending_input() <= MAX_PENDING_INPUT);
    }
    let _ = irq.read();
    let _ = reset.read();
    // Every output byte either reached the host, is still buffered, or was counted as dropped.
    let counters = serial.counters();
    let written = *host.written.lock().unwrap();
    assert!(written + serial.buffered_output() as u64 <= counters.bytes);
});
