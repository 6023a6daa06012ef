//! A hostile guest cannot flood the host's log: every log line it can trigger goes through a
//! per-call-site rate limiter. The test drives a few hundred thousand bad accesses into the
//! virtio-mmio transport, virtio-net (on a socketpair backend) and the i8042, captures every
//! log line with a test logger at the most verbose level, and checks that each call site
//! printed at most `BURST` lines per window.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use common::*;
use devices::i8042::I8042;
use devices::ratelimit::{BURST, INTERVAL_MS};
use devices::virtio::{Net, Tap};
use devices::BusDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Every record: (file, line, message).
static LINES: Mutex<Vec<(String, u32, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LINES.lock().unwrap().push((
            record.file().unwrap_or("?").to_string(),
            record.line().unwrap_or(0),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

#[test]
fn hostile_guest_gets_a_bounded_number_of_log_lines() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let start = Instant::now();
    const ROUNDS: u32 = 20_000;

    let (tap, _host) = Tap::socketpair("pair0").unwrap();
    let mut driver = Driver::new(Box::new(Net::with_tap(tap, [2, 0, 0, 0, 0, 1])));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut i8042 = I8042::new(evt.try_clone().unwrap());
    for round in 0..ROUNDS {
        // Transport, before and outside negotiation.
        driver.transport.write(REG_STATUS, &[1, 0]); // 2-byte register write
        driver.transport.write(REG_STATUS + 1, &[0; 4]); // unaligned
        let mut byte = [0u8; 1];
        driver.transport.read(REG_MAGIC, &mut byte); // 1-byte register read
        driver.write32(REG_DRIVER_FEATURES, 0xffff_ffff); // outside negotiation
        driver.write32(REG_QUEUE_NUM, 0x1_0010); // outside setup, and truncating
        driver.write32(REG_QUEUE_NOTIFY, 7); // no such queue
        driver.write32(0x0c0, round); // no such register
        driver.transport.handle_queue_event(0); // kick before DRIVER_OK
        driver.write32(REG_STATUS, 0);
        driver.write32(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        driver.write32(REG_DRIVER_FEATURES_SEL, 9);
        driver.write32(REG_DRIVER_FEATURES, 1);
        driver.write32(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK); // no VERSION_1
        driver.write32(REG_STATUS, S_ACKNOWLEDGE); // clears bits
                                                   // i8042: unknown commands and answers nobody reads.
        i8042.write(4, &[0x12]);
        i8042.write(0, &[0xf4]);
    }
    // Net after a proper start: malformed TX chains and RX buffers too small for a frame.
    driver.init(F_VERSION_1, 2, 256);
    for _ in 0..ROUNDS / 10 {
        driver.add_chain(1, &[Buf::r(DATA_START, 4)]);
        driver.kick(1);
        driver.add_chain(1, &[Buf::r(u64::MAX - 8, 64)]); // outside guest memory
        driver.kick(1);
    }
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap();

    let counters = driver.transport.counters();
    assert!(
        counters.errors >= u64::from(ROUNDS) * 8,
        "the hostile sequence really was refused: {counters:?}"
    );
    assert!(i8042.counters().errors >= u64::from(ROUNDS));

    let lines = LINES.lock().unwrap();
    let mut per_site: HashMap<(String, u32), usize> = HashMap::new();
    for (file, line, _) in lines.iter() {
        *per_site.entry((file.clone(), *line)).or_default() += 1;
    }
    // Windows the run touched (plus one for the limiter's window boundary).
    let windows = elapsed_ms / INTERVAL_MS + 2;
    let allowed = usize::try_from(BURST * windows).unwrap();
    for (site, count) in &per_site {
        assert!(
            *count <= allowed,
            "{site:?} logged {count} lines in {elapsed_ms} ms (at most {allowed})"
        );
    }
    assert!(per_site.len() >= 10, "the sites were reached: {per_site:?}");
    let sites_allowed = per_site.len() * allowed;
    assert!(
        lines.len() <= sites_allowed,
        "{} lines from {} sites",
        lines.len(),
        per_site.len()
    );
    eprintln!(
        "{} log lines from {} sites for {} refused accesses in {elapsed_ms} ms",
        lines.len(),
        per_site.len(),
        counters.errors + i8042.counters().errors
    );
}
