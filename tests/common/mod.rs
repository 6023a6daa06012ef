//! Helpers shared by the integration tests: KVM detection with a visible skip, tiny guests
//! assembled with iced-x86, and a console that the test can read back.
#![allow(dead_code)]

pub mod api_client;
pub mod guests;
pub mod isolated;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::CodeAssembler;
use volt::event_loop::{LoopStats, VmExit};
use volt::sandbox::SeccompMode;
use volt::vm::{BootSource, VcpuCount, Vm, VmConfig};

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
        vcpus: VcpuCount::new(vcpus).expect("a test asks for 1 to 254 vCPUs"),
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

/// An ELF64 executable whose single PT_LOAD puts `code` at the guest load address, with the
/// entry there: the smallest thing Volt's loader accepts as a vmlinux.
pub fn tiny_elf_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut elf = vec![0u8; EHDR + PHDR];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // entry
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    elf[52..54].copy_from_slice(&u16::try_from(EHDR).unwrap().to_le_bytes());
    elf[54..56].copy_from_slice(&u16::try_from(PHDR).unwrap().to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // one program header
    let ph = &mut elf[EHDR..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[8..16].copy_from_slice(&((EHDR + PHDR) as u64).to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(code);
    let path = dir.join("tiny-vmlinux");
    std::fs::write(&path, elf).unwrap();
    path
}
