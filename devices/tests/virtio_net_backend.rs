//! virtio-net on a socketpair backend ([`Tap::from_file`]): the transport and device run
//! their whole TX/RX path without /dev/net/tun or root, and the counters follow.

mod common;

use std::fs::File;
use std::io::{Read, Write};

use common::*;
use devices::virtio::{Net, Tap};
use vm_memory::{Bytes, GuestAddress};

const RX: usize = 0;
const TX: usize = 1;
const VNET_HDR: usize = 12;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

fn driver() -> (Driver, File) {
    let (tap, host_end) = Tap::socketpair("pair0").unwrap();
    let net = Net::with_tap(tap, MAC);
    let mut driver = Driver::new(Box::new(net));
    driver.init(F_VERSION_1 | F_EVENT_IDX, 2, 16);
    (driver, host_end)
}

#[test]
fn tx_and_rx_through_a_socketpair_backend_are_counted() {
    let (mut driver, mut host) = driver();
    assert_eq!(driver.read_config(0, 6), MAC);

    // TX: header + frame in one buffer comes out on the host end, byte for byte.
    let frame: Vec<u8> = [vec![0u8; VNET_HDR], test_frame(MAC, b"to host")].concat();
    driver
        .mem
        .write_slice(&frame, GuestAddress(DATA_START))
        .unwrap();
    let len = u32::try_from(frame.len()).unwrap();
    driver.add_chain(TX, &[Buf::r(DATA_START, len)]);
    driver.kick(TX);
    let mut got = vec![0u8; 4096];
    let n = host.read(&mut got).unwrap();
    assert_eq!(&got[..n], &frame[..]);

    // A malformed TX chain (shorter than the header) is dropped, not sent.
    driver.add_chain(TX, &[Buf::r(DATA_START, 4)]);
    driver.kick(TX);
    assert!(host.read(&mut got).is_err(), "nothing more was sent");

    // RX: a frame from the host lands in the guest buffer.
    let incoming: Vec<u8> = [vec![0u8; VNET_HDR], test_frame(MAC, b"to guest")].concat();
    host.write_all(&incoming).unwrap();
    driver.add_chain(RX, &[Buf::w(DATA_START + 0x1_0000, 2048)]);
    driver.kick(RX);
    let (_, len) = driver.pop_used(RX).expect("frame delivered");
    assert_eq!(len as usize, incoming.len());
    let mut data = vec![0u8; incoming.len()];
    driver
        .mem
        .read_slice(&mut data, GuestAddress(DATA_START + 0x1_0000))
        .unwrap();
    assert_eq!(&data[VNET_HDR..], &incoming[VNET_HDR..]);

    // An RX buffer too small for the next frame: dropped and counted.
    host.write_all(&incoming).unwrap();
    driver.add_chain(RX, &[Buf::w(DATA_START + 0x2_0000, 16)]);
    driver.kick(RX);
    assert_eq!(driver.pop_used(RX).map(|(_, len)| len), Some(0));

    let counters = driver
        .transport
        .device_counters()
        .expect("net keeps counters");
    assert_eq!(counters.requests, 4, "2 TX chains + 2 RX frames");
    assert_eq!(counters.bytes, (frame.len() + incoming.len()) as u64);
    assert_eq!(counters.drops, 2);
    assert_eq!(counters.errors, 1, "the short TX chain");
    assert!(
        driver.transport.counters().requests > 20,
        "register accesses"
    );
}
