//! A hostile guest drives virtio-net through the virtio-mmio transport, with a socketpair as
//! the tap (no /dev/net/tun needed). The fuzz input also plays the host: frames arrive on the
//! "tap", and the host end is drained or left full (TX backpressure).
#![no_main]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use devices::virtio::{Net, Tap};
use libfuzzer_sys::fuzz_target;
use volt_fuzz::{Input, VirtioGuest};

fn frame_pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the valid 2-element array.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(a), File::from(b))
}

fuzz_target!(|data: &[u8]| {
    let (device_end, mut host) = frame_pipe();
    let net = Net::with_tap(Tap::from_file(device_end, "fuzz0"), [2, 0, 0, 0, 0, 1]);
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
