//! A hostile guest drives virtio-net through the virtio-mmio transport, with a socketpair as
//! the tap (no /dev/net/tun needed). The fuzz input also plays the host: frames arrive on the
//! "tap", and the host end is drained or left full (TX backpressure).
#![no_main]

use std::io::{Read, Write};

use devices::virtio::{Net, Tap};
use libfuzzer_sys::fuzz_target;
use volt_fuzz::{Input, VirtioGuest};

fuzz_target!(|data: &[u8]| {
    let (tap, mut host) = Tap::socketpair("fuzz0").unwrap();
    let net = Net::with_tap(tap, [2, 0, 0, 0, 0, 1]);
    let mut guest = VirtioGuest::new(Box::new(net));
    let mut input = Input::new(data);
    let mut buf = vec![0u8; 70_000];
    for _ in 0..4096 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            // The host sends a frame (any length, header included).
            0 => {
                let len = usize::from(input.u16());
                let frame = input.bytes(len).to_vec();
                let _ = host.write(&frame);
            }
            // The host reads what the guest sent.
            1 => while host.read(&mut buf).is_ok() {},
            _ => {
                guest.step(&mut input);
            }
        }
    }
    if std::env::var_os("VOLT_FUZZ_TRACE").is_some() {
        eprintln!(
            "status {:#x} transport {:?} device {:?}",
            guest.transport.status(),
            guest.transport.counters(),
            guest.transport.device_counters()
        );
    }
});
