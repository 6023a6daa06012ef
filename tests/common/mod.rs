//! Helpers shared by the integration tests: KVM detection with a visible skip, tiny guests
//! assembled with iced-x86, and a console that the test can read back.
#![allow(dead_code)]

pub mod isolated;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::CodeAssembler;
use volt::event_loop::{LoopStats, VmExit};
use volt::sandbox::SeccompMode;
use volt::vm::{BootSource, Vm, VmConfig};

/// Where raw test guests are loaded and start (1 MiB, like a kernel).
pub const GUEST_LOAD_ADDR: u64 = 0x10_0000;

/// True when /dev/kvm opens; otherwise prints a visible SKIP line for `test`.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: {test}: /dev/kvm cannot be opened ({e})");
            false
        }
    }
}

/// The guest console, readable by the test after the VM took its writer.
#[derive(Clone, Default)]
pub struct CapturedConsole(Arc<Mutex<Vec<u8>>>);

impl CapturedConsole {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedConsole {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// 64-bit code, assembled for the address the guest is loaded at.
pub fn assemble(
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut asm = CodeAssembler::new(64).unwrap();
    build(&mut asm).unwrap();
    asm.assemble(GUEST_LOAD_ADDR).unwrap()
}

pub struct RawRun {
    pub exit: VmExit,
    pub stats: LoopStats,
    pub console: String,
}

/// Runs `code` on `vcpus` vCPUs through the real vCPU threads and event loop.
pub fn run_raw_guest(code: Vec<u8>, vcpus: u8, seccomp: SeccompMode) -> RawRun {
    run_raw_guest_with_disks(code, vcpus, seccomp, Vec::new())
}

/// Like [`run_raw_guest`], with virtio-block disks (the first at 0xd000_0000, IRQ 5).
pub fn run_raw_guest_with_disks(
    code: Vec<u8>,
    vcpus: u8,
    seccomp: SeccompMode,
    disks: Vec<volt::vm::DiskConfig>,
) -> RawRun {
    run_raw_guest_configured(code, vcpus, seccomp, |config| config.disks = disks)
}

/// Like [`run_raw_guest`], after `configure` changed the VM's configuration (devices).
pub fn run_raw_guest_configured(
    code: Vec<u8>,
    vcpus: u8,
    seccomp: SeccompMode,
    configure: impl FnOnce(&mut VmConfig),
) -> RawRun {
    let console = CapturedConsole::default();
    let mut config = VmConfig {
        vcpus,
        mem_bytes: 64 << 20,
        boot: BootSource::Raw {
            code,
            load_addr: GUEST_LOAD_ADDR,
        },
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
        rng: false,
        balloon: None,
        console_out: Box::new(console.clone()),
        console_in: None,
        console_out_fd: None,
        seccomp,
        watchdog: None,
        acpi: true,
    };
    configure(&mut config);
    let (exit, stats) = Vm::run(config).expect("the VM runs");
    RawRun {
        exit,
        stats,
        console: console.text(),
    }
}
