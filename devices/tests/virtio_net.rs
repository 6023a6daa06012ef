//! virtio-net through the virtio-mmio transport against a real host tap interface.
//! Each test creates its own tap (needs root and /dev/net/tun) or prints `SKIP:` and returns.

mod common;

use std::time::Duration;

use common::*;
use devices::virtio::Net;
use vm_memory::{Bytes, GuestAddress};

const F_NET_CSUM: u64 = 1 << 0;
const F_NET_GUEST_CSUM: u64 = 1 << 1;
const F_NET_MAC: u64 = 1 << 5;
const F_NET_GUEST_TSO4: u64 = 1 << 7;
const F_NET_STATUS: u64 = 1 << 16;
const RX: usize = 0;
const TX: usize = 1;
const VNET_HDR: usize = 12;
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0x01];
const RX_BUF: u64 = DATA_START;
const RX_BUF_LEN: u32 = 2048;
const TX_BUF: u64 = DATA_START + 0x10_0000;

/// Creates a tap for this test, or explains why it cannot (the caller skips).
fn test_tap(tag: &str) -> Option<TestTap> {
    let name = TestTap::unique_name(tag);
    match TestTap::create(&name) {
        Ok(tap) => Some(tap),
        Err(e) => {
            eprintln!("SKIP: cannot create tap {name} for the virtio-net test: {e}");
            None
        }
    }
}

fn net_driver(tap: &TestTap) -> Driver {
    let net = Net::new(&tap.name, Some(GUEST_MAC)).unwrap();
    assert_eq!(net.tap_name(), tap.name);
    let mut driver = Driver::new(Box::new(net));
    driver.init(
        F_VERSION_1
            | F_EVENT_IDX
            | F_NET_MAC
            | F_NET_STATUS
            | F_NET_CSUM
            | F_NET_GUEST_CSUM
            | F_NET_GUEST_TSO4,
        2,
        256,
    );
    driver
}

fn post_rx_buffers(driver: &mut Driver, count: u64) {
    for i in 0..count {
        driver.add_chain(
            RX,
            &[Buf::w(RX_BUF + i * u64::from(RX_BUF_LEN), RX_BUF_LEN)],
        );
    }
}

/// What the event loop does when the tap fd becomes readable.
fn tap_event(driver: &mut Driver) {
    let fd = driver.transport.event_sources()[0];
    wait_readable(fd, Duration::from_secs(2));
    driver.transport.handle_event_source(0);
}

/// Finds the used RX buffer that holds a frame with `payload`; returns (header, frame).
fn find_rx_frame(driver: &mut Driver, payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    while let Some((id, len)) = driver.pop_used(RX) {
        // Buffers were posted one descriptor each, in order, so id = buffer index.
        let mut data = vec![0u8; len as usize];
        let addr = RX_BUF + u64::from(id) * u64::from(RX_BUF_LEN);
        driver
            .mem
            .read_slice(&mut data, GuestAddress(addr))
            .unwrap();
        let frame = data.split_off(VNET_HDR);
        if frame.windows(payload.len()).any(|w| w == payload) {
            return Some((data, frame));
        }
    }
    None
}

#[test]
fn config_space_has_mac_and_link_up() {
    let Some(tap) = test_tap("c") else { return };
    let mut driver = net_driver(&tap);
    assert_eq!(driver.read32(REG_DEVICE_ID), 1);
    assert_eq!(driver.read_config(0, 6), GUEST_MAC);
    assert_eq!(driver.read_config(6, 2), vec![1, 0], "VIRTIO_NET_S_LINK_UP");
    let features = driver.device_features();
    for bit in [
        F_VERSION_1,
        F_NET_MAC,
        F_NET_STATUS,
        F_NET_CSUM,
        F_NET_GUEST_TSO4,
    ] {
        assert_ne!(features & bit, 0, "feature {bit:#x} offered");
    }
    assert_eq!(driver.transport.queue_events().len(), 2);
    assert_eq!(driver.transport.event_sources().len(), 1);
}

#[test]
fn guest_tx_frame_comes_out_of_the_tap() {
    let Some(tap) = test_tap("t") else { return };
    let mut driver = net_driver(&tap);
    let host = PacketSocket::bind(tap.ifindex).unwrap();
    let payload = b"volt guest-to-host frame";
    let frame = test_frame(GUEST_MAC, payload);
    // Header and frame in separate descriptors: the device must gather them.
    driver
        .mem
        .write_slice(&[0u8; VNET_HDR], GuestAddress(TX_BUF))
        .unwrap();
    driver
        .mem
        .write_slice(&frame, GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    let head = driver.add_chain(
        TX,
        &[
            Buf::r(TX_BUF, u32::try_from(VNET_HDR).unwrap()),
            Buf::r(TX_BUF + 0x1000, u32::try_from(frame.len()).unwrap()),
        ],
    );
    driver.kick(TX);
    assert_eq!(driver.pop_used(TX), Some((u32::from(head), 0)));
    assert!(driver.take_irq());
    let got = host
        .recv_matching(Duration::from_secs(2), |f| {
            f.windows(payload.len()).any(|w| w == payload)
        })
        .expect("frame arrived on the host side of the tap");
    assert_eq!(got, frame);
}

#[test]
fn host_frame_arrives_in_a_guest_rx_buffer_with_a_vnet_header() {
    let Some(tap) = test_tap("r") else { return };
    let mut driver = net_driver(&tap);
    let host = PacketSocket::bind(tap.ifindex).unwrap();
    post_rx_buffers(&mut driver, 8);
    driver.kick(RX);
    assert_eq!(driver.pop_used(RX), None, "nothing to receive yet");

    let payload = b"volt host-to-guest frame";
    let frame = test_frame([0x02, 0, 0, 0, 0, 0x99], payload);
    host.send(&frame).unwrap();
    tap_event(&mut driver);
    let (header, got) = find_rx_frame(&mut driver, payload).expect("frame delivered to guest");
    assert_eq!(got, frame);
    assert_eq!(header[0], 0, "no checksum offload flags for a raw frame");
    assert_eq!(header[1], 0, "VIRTIO_NET_HDR_GSO_NONE");
    assert_eq!(
        u16::from_le_bytes([header[10], header[11]]),
        1,
        "num_buffers"
    );
    assert!(driver.take_irq());
}

#[test]
fn rx_backpressure_keeps_frames_in_the_tap_until_buffers_arrive() {
    let Some(tap) = test_tap("b") else { return };
    let mut driver = net_driver(&tap);
    let host = PacketSocket::bind(tap.ifindex).unwrap();

    let payloads: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("volt backpressure {i}").into_bytes())
        .collect();
    for payload in &payloads {
        host.send(&test_frame([0x02, 0, 0, 0, 0, 0x98], payload))
            .unwrap();
    }
    // The tap is readable but the guest posted no buffers: the device must not consume
    // (and lose) frames, and must return instead of spinning.
    tap_event(&mut driver);
    tap_event(&mut driver);
    assert_eq!(driver.queues[RX].used_idx(&driver.mem), 0);
    assert!(!driver.take_irq());

    // One buffer: exactly one frame moves; the rest keep waiting.
    post_rx_buffers(&mut driver, 1);
    driver.kick(RX);
    assert_eq!(driver.queues[RX].pending_used(&driver.mem), 1);
    assert!(
        find_rx_frame(&mut driver, &payloads[0]).is_some(),
        "first frame, in order"
    );

    // More buffers and a kick: the remaining frames arrive.
    for i in 1..4u64 {
        let addr = RX_BUF + i * u64::from(RX_BUF_LEN);
        driver.add_chain(RX, &[Buf::w(addr, RX_BUF_LEN)]);
    }
    driver.kick(RX);
    assert!(find_rx_frame(&mut driver, &payloads[1]).is_some());
    assert!(find_rx_frame(&mut driver, &payloads[2]).is_some());
    assert!(driver.take_irq());
}

#[test]
fn frames_waiting_before_driver_ok_are_received_on_activation() {
    let Some(tap) = test_tap("a") else { return };
    let net = Net::new(&tap.name, None).unwrap();
    let mac = net.mac();
    assert_eq!(mac[0] & 3, 2, "random MAC is local unicast");
    let mut driver = Driver::new(Box::new(net));
    assert_eq!(driver.read_config(0, 6), mac);
    let host = PacketSocket::bind(tap.ifindex).unwrap();
    let payload = b"volt early frame";
    host.send(&test_frame([0x02, 0, 0, 0, 0, 0x97], payload))
        .unwrap();
    // The loop saw the tap readable before the guest driver was up: ignored for now.
    tap_event(&mut driver);

    let offered = driver.device_features();
    assert!(driver.negotiate(offered & (F_VERSION_1 | F_NET_MAC)));
    driver.setup_queue(RX, 256);
    driver.setup_queue(TX, 256);
    post_rx_buffers(&mut driver, 4);
    driver.write32(
        REG_STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    assert!(find_rx_frame(&mut driver, payload).is_some());
}

#[test]
fn too_small_rx_buffer_drops_the_frame_visibly_but_keeps_going() {
    let Some(tap) = test_tap("s") else { return };
    let mut driver = net_driver(&tap);
    let host = PacketSocket::bind(tap.ifindex).unwrap();
    driver.add_chain(RX, &[Buf::w(RX_BUF, 16)]);
    driver.kick(RX);
    host.send(&test_frame([0x02, 0, 0, 0, 0, 0x96], b"volt big frame"))
        .unwrap();
    tap_event(&mut driver);
    assert_eq!(
        driver.pop_used(RX),
        Some((0, 0)),
        "buffer returned with nothing in it"
    );
}

#[test]
fn malformed_tx_chains_are_returned_without_sending() {
    let Some(tap) = test_tap("m") else { return };
    let mut driver = net_driver(&tap);
    // Shorter than a virtio-net header.
    driver.add_chain(TX, &[Buf::r(TX_BUF, 4)]);
    // Outside guest memory.
    driver.add_chain(TX, &[Buf::r(MEM_SIZE as u64 + 0x1000, 64)]);
    driver.kick(TX);
    assert_eq!(driver.pop_used(TX).map(|(_, len)| len), Some(0));
    assert_eq!(driver.pop_used(TX).map(|(_, len)| len), Some(0));
}

#[test]
fn reset_then_reinit_still_passes_traffic() {
    let Some(tap) = test_tap("z") else { return };
    let mut driver = net_driver(&tap);
    driver.write32(REG_STATUS, 0);
    assert_eq!(driver.status(), 0);
    driver.init(F_VERSION_1 | F_NET_MAC, 2, 256);
    let host = PacketSocket::bind(tap.ifindex).unwrap();
    let payload = b"volt after reset";
    let frame = test_frame(GUEST_MAC, payload);
    let mut bytes = vec![0u8; VNET_HDR];
    bytes.extend_from_slice(&frame);
    driver
        .mem
        .write_slice(&bytes, GuestAddress(TX_BUF))
        .unwrap();
    driver.add_chain(TX, &[Buf::r(TX_BUF, u32::try_from(bytes.len()).unwrap())]);
    driver.kick(TX);
    assert!(host
        .recv_matching(Duration::from_secs(2), |f| f == frame.as_slice())
        .is_some());
}

#[test]
fn a_tap_already_in_use_is_a_clear_error() {
    let Some(tap) = test_tap("u") else { return };
    let _first = Net::new(&tap.name, None).unwrap();
    let err = Net::new(&tap.name, None)
        .err()
        .expect("second attach refused");
    let msg = err.to_string();
    assert!(msg.contains(&tap.name), "{msg}");
    assert!(msg.contains("cannot attach"), "{msg}");
}

#[test]
fn an_interface_that_is_not_a_tap_is_refused() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: /dev/net/tun does not exist");
        return;
    }
    let err = Net::new("lo", None).err().expect("lo is not a tap");
    let msg = err.to_string();
    assert!(msg.contains("cannot attach to tap interface lo"), "{msg}");
    let err = Net::new("bad/name", None).err().unwrap();
    assert!(
        err.to_string().contains("invalid tap interface name"),
        "{err}"
    );
}
