//! Snapshot restore time and snapshot size, Volt against Firecracker, on the same guest.
//!
//! The guest is a tiny counting "kernel" (assembled here, packed as an ELF vmlinux that both
//! VMMs boot): it prints 1, 2, 3, ... on the serial console, one number a line. Each VMM boots
//! it, is paused and snapshotted through its API, then killed. Then, alternating between the
//! two, a fresh process is started and restores the snapshot (`resume_vm: true`):
//!   - `load answered`: `PUT /snapshot/load` sent until its answer came back;
//!   - `load to running`: `PUT /snapshot/load` sent until the guest printed its next line;
//!   - `start to running`: process spawned until the guest printed its next line.
//!
//! usage: cargo run --release --example restore_time -- VOLT_BIN FIRECRACKER_BIN [RUNS]
//! (needs /dev/kvm; both binaries are run with their default sandboxes)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

const LOAD_ADDR: u64 = 0x10_0000;
const MEM_MIB: u64 = 128;

/// Counts on COM1 with a short pause between lines (the counting guest of the tests).
fn counting_guest() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut next = a.create_label();
    let mut digits = a.create_label();
    let mut emit = a.create_label();
    let mut delay = a.create_label();
    const BUFFER_END: u64 = 0x20_0040;
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut next).unwrap();
    a.inc(rbx).unwrap();
    a.mov(rax, rbx).unwrap();
    a.mov(rsi, BUFFER_END).unwrap();
    a.mov(ecx, 10u32).unwrap();
    a.set_label(&mut digits).unwrap();
    a.xor(edx, edx).unwrap();
    a.div(rcx).unwrap();
    a.add(dl, b'0' as u32).unwrap();
    a.dec(rsi).unwrap();
    a.mov(byte_ptr(rsi), dl).unwrap();
    a.test(rax, rax).unwrap();
    a.jnz(digits).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.set_label(&mut emit).unwrap();
    a.mov(al, byte_ptr(rsi)).unwrap();
    a.out(dx, al).unwrap();
    a.inc(rsi).unwrap();
    a.mov(rdi, BUFFER_END).unwrap();
    a.cmp(rsi, rdi).unwrap();
    a.jne(emit).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    a.out(dx, al).unwrap();
    a.mov(ecx, 200u32).unwrap();
    a.set_label(&mut delay).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(delay).unwrap();
    a.jmp(next).unwrap();
    a.assemble(LOAD_ADDR).unwrap()
}

/// An ELF64 executable with one PT_LOAD putting `code` at LOAD_ADDR, entry there.
fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut elf = vec![0u8; EHDR + PHDR];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&62u16.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes());
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    elf[52..54].copy_from_slice(&u16::try_from(EHDR).unwrap().to_le_bytes());
    elf[54..56].copy_from_slice(&u16::try_from(PHDR).unwrap().to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut elf[EHDR..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes());
    ph[4..8].copy_from_slice(&7u32.to_le_bytes());
    ph[8..16].copy_from_slice(&((EHDR + PHDR) as u64).to_le_bytes());
    ph[16..24].copy_from_slice(&LOAD_ADDR.to_le_bytes());
    ph[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes());
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

fn call(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    // The socket file appears at bind(), a moment before listen(): retry a refused connect.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match UnixStream::connect(sock) {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => panic!("connect to {}: {e}", sock.display()),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    Volt,
    Firecracker,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Volt => "Volt",
            Vmm::Firecracker => "Firecracker",
        }
    }
}

/// Lines of the guest console arrive on a channel, with when they arrived.
fn console_lines(stdout: ChildStdout) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send((Instant::now(), line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn spawn(vmm: Vmm, bin: &Path, sock: &Path, extra: &[&str]) -> Child {
    let _ = std::fs::remove_file(sock);
    let mut command = Command::new(bin);
    command.arg("--api-sock").arg(sock).args(extra);
    if vmm == Vmm::Firecracker {
        command.args(["--level", "Error"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the VMM")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A number line printed by the guest (Firecracker also logs to stdout).
fn count_of(line: &str) -> Option<u64> {
    line.trim().parse().ok()
}

/// Boots the guest, pauses it, snapshots it into `dir`, kills the VMM. Returns the files.
fn make_snapshot(vmm: Vmm, bin: &Path, dir: &Path, kernel: &Path) -> (PathBuf, PathBuf) {
    let sock = dir.join(format!("{}-boot.sock", vmm.name()));
    let state = dir.join(format!("{}.state", vmm.name()));
    let mem = dir.join(format!("{}.mem", vmm.name()));
    let mut child = match vmm {
        Vmm::Volt => {
            let mem_arg = format!("{MEM_MIB}M");
            let args = [
                "--kernel",
                kernel.to_str().unwrap(),
                "--mem",
                &mem_arg,
                "--snapshot-dir",
                dir.to_str().unwrap(),
                // The same devices as the Firecracker VM: serial only.
                "--no-rng",
            ];
            spawn(vmm, bin, &sock, &args)
        }
        Vmm::Firecracker => {
            let config = dir.join("fc.json");
            let json = format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}},"drives":[]}}"#,
                kernel.display()
            );
            std::fs::write(&config, json).unwrap();
            spawn(
                vmm,
                bin,
                &sock,
                &["--config-file", config.to_str().unwrap()],
            )
        }
    };
    let lines = console_lines(child.stdout.take().unwrap());
    wait_for(&sock);
    // Let it count a little.
    let mut seen = 0;
    while seen < 20 {
        let (_, line) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the guest counts");
        if count_of(&line).is_some() {
            seen += 1;
        }
    }
    let (code, body) = call(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(code, 204, "{} pause: {body}", vmm.name());
    let create = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        state.display(),
        mem.display()
    );
    let started = Instant::now();
    let (code, body) = call(&sock, "PUT", "/snapshot/create", &create);
    assert_eq!(code, 204, "{} snapshot: {body}", vmm.name());
    println!(
        "{:<12} snapshot/create answered in {:.1} ms",
        vmm.name(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let _ = child.kill();
    let _ = child.wait();
    (state, mem)
}

struct Sample {
    load_answered: Duration,
    load_to_running: Duration,
    start_to_running: Duration,
}

fn restore_once(vmm: Vmm, bin: &Path, dir: &Path, state: &Path, mem: &Path) -> Sample {
    let sock = dir.join(format!("{}-restore.sock", vmm.name()));
    let spawned = Instant::now();
    let mut child = spawn(vmm, bin, &sock, &[]);
    let lines = console_lines(child.stdout.take().unwrap());
    wait_for(&sock);
    let load = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_path":"{}","backend_type":"File"}},"resume_vm":true}}"#,
        state.display(),
        mem.display()
    );
    let sent = Instant::now();
    let (code, body) = call(&sock, "PUT", "/snapshot/load", &load);
    let answered = Instant::now();
    assert_eq!(code, 204, "{} load: {body}", vmm.name());
    let running = loop {
        let (at, line) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the restored guest counts");
        if count_of(&line).is_some() {
            break at;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Sample {
        load_answered: answered - sent,
        load_to_running: running - sent,
        start_to_running: running - spawned,
    }
}

fn median(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: restore_time VOLT_BIN FIRECRACKER_BIN [RUNS]");
        std::process::exit(2);
    }
    let volt = PathBuf::from(&args[1]);
    let firecracker = PathBuf::from(&args[2]);
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("counting-vmlinux");
    std::fs::write(&kernel, elf(&counting_guest())).unwrap();

    let vmms = [(Vmm::Volt, volt), (Vmm::Firecracker, firecracker)];
    let mut files = Vec::new();
    for (vmm, bin) in &vmms {
        let (state, mem) = make_snapshot(*vmm, bin, dir.path(), &kernel);
        let state_size = std::fs::metadata(&state).unwrap().len();
        let meta = std::fs::metadata(&mem).unwrap();
        println!(
            "{:<12} state file {} bytes, memory file {} MiB ({} KiB on disk)",
            vmm.name(),
            state_size,
            meta.len() >> 20,
            (meta.blocks() * 512) >> 10
        );
        files.push((state, mem, state_size, meta.blocks() * 512));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, (vmm, bin)) in vmms.iter().enumerate() {
            let (state, mem, _, _) = &files[i];
            samples[i].push(restore_once(*vmm, bin, dir.path(), state, mem));
        }
    }
    let medians: Vec<[f64; 3]> = samples
        .iter()
        .map(|s| {
            [
                median(s.iter().map(|x| x.load_answered).collect()),
                median(s.iter().map(|x| x.load_to_running).collect()),
                median(s.iter().map(|x| x.start_to_running).collect()),
            ]
        })
        .collect();
    println!("\nmedians of {runs} restores each, alternating (ms):");
    println!(
        "{:<28} {:>10} {:>12} {:>8}",
        "figure", "Volt", "Firecracker", "ratio"
    );
    for (i, name) in [
        "load answered",
        "load to guest running",
        "process start to guest running",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{:<28} {:>10.2} {:>12.2} {:>8.2}",
            name,
            medians[0][i],
            medians[1][i],
            medians[0][i] / medians[1][i]
        );
    }
    println!(
        "{:<28} {:>10} {:>12} {:>8.2}",
        "state file (bytes)",
        files[0].2,
        files[1].2,
        files[0].2 as f64 / files[1].2 as f64
    );
    println!(
        "{:<28} {:>10} {:>12} {:>8.2}",
        "memory file on disk (KiB)",
        files[0].3 >> 10,
        files[1].3 >> 10,
        files[0].3 as f64 / files[1].3.max(1) as f64
    );
}
