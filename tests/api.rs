//! The API socket driven over HTTP by a client, against the real `volt` binary: every
//! endpoint, bad input, wrong state, slow and vanishing clients.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::api_client::{call, read_answer, VoltProcess};
use common::guests::{counted, counting_guest, hello_guest};
use common::*;
use iced_x86::code_asm::*;

fn machine_config(vcpus: u8) -> String {
    format!(r#"{{"vcpu_count":{vcpus},"mem_size_mib":64}}"#)
}

fn boot_source(kernel: &std::path::Path) -> String {
    serde_json::json!({ "kernel_image_path": kernel, "boot_args": "console=ttyS0" }).to_string()
}

#[test]
fn before_start_the_api_describes_and_refuses_with_fault_messages() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    // No KVM is needed until InstanceStart.
    let volt = VoltProcess::start(&sock, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket must be owner-only");

    let info = volt.call("GET", "/", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.body["state"], "Not started");
    assert_eq!(info.body["app_name"], "Volt");

    let config = volt.call("GET", "/machine-config", None);
    assert_eq!(config.body["vcpu_count"], 1);
    assert_eq!(config.body["mem_size_mib"], 128);
    let put = volt.call("PUT", "/machine-config", Some(&machine_config(2)));
    assert_eq!(put.status, 204, "{:?}", put.body);
    assert_eq!(
        volt.call("GET", "/machine-config", None).body["vcpu_count"],
        2
    );

    let unknown = volt.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64,"cpu_template":"T2"}"#),
    );
    unknown.assert_refused("unknown field `cpu_template`");
    let bad_json = volt.call("PUT", "/boot-source", Some("{\"kernel_image_path\": "));
    bad_json.assert_refused("boot-source");
    let zero = volt.call("PUT", "/machine-config", Some(&machine_config(0)));
    zero.assert_refused("vcpu_count");

    let no_boot = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    no_boot.assert_refused("boot-source");
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#,
        ),
    ] {
        let answer = volt.call(method, path, Some(body));
        assert_eq!(answer.status, 400, "{path}");
        assert!(answer.fault().contains("not started"), "{}", answer.fault());
    }
    let missing_kernel = volt.call(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#),
    );
    assert_eq!(missing_kernel.status, 204);
    let drive = volt.call(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id":"rootfs","path_on_host":"/nonexistent.img","is_root_device":true}"#),
    );
    assert_eq!(drive.status, 204);
    let mismatch = volt.call(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#),
    );
    assert_eq!(mismatch.status, 400);
    let start = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    start.assert_refused("nonexistent");
    assert_eq!(volt.call("GET", "/nowhere", None).status, 404);
    assert_eq!(volt.call("DELETE", "/", None).status, 405);
    assert_eq!(volt.call("PUT", "/metrics", Some("{}")).status, 405);
    assert_eq!(
        volt.call("GET", "/metrics", None).body["vm"]["state"],
        "Not started"
    );
    // Still serving after all that.
    assert_eq!(volt.call("GET", "/", None).status, 200);
}

#[test]
fn malformed_oversized_stalled_and_vanishing_clients_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let volt = VoltProcess::start(&sock, &[]);

    // A client that sends half a request and keeps the connection open.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 34\r\n\r\n{\"vcpu")
        .unwrap();
    // A client that sends half a request and disappears.
    let mut gone = UnixStream::connect(&sock).unwrap();
    gone.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Le")
        .unwrap();
    drop(gone);
    assert_eq!(volt.call("GET", "/", None).status, 200);

    // Garbage gets 400 and the connection is closed.
    let mut garbage = UnixStream::connect(&sock).unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x02\x00 hello\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut BufReader::new(garbage));
    answer.assert_refused("malformed");

    // An oversized body is refused before it is read.
    let mut big = UnixStream::connect(&sock).unwrap();
    big.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut BufReader::new(big)).status, 413);

    // An endless header line is cut off.
    let mut endless = UnixStream::connect(&sock).unwrap();
    endless.write_all(b"GET / HTTP/1.1\r\nX-Long: ").unwrap();
    let _ = endless.write_all(&vec![b'a'; 64 * 1024]);
    assert_eq!(read_answer(&mut BufReader::new(endless)).status, 431);

    // Two requests in one write, answered in order on the same connection.
    let mut pipelined = UnixStream::connect(&sock).unwrap();
    pipelined
        .write_all(b"GET / HTTP/1.1\r\n\r\nGET /machine-config HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(pipelined);
    assert_eq!(read_answer(&mut reader).body["state"], "Not started");
    assert_eq!(read_answer(&mut reader).body["vcpu_count"], 1);

    // The stalled client finishes its request later and is answered.
    stalled
        .write_all(b"_count\":1,\"mem_size_mib\":64}")
        .unwrap();
    assert_eq!(read_answer(&mut BufReader::new(stalled)).status, 204);
    assert_eq!(
        call(&sock, "GET", "/machine-config", None).body["mem_size_mib"],
        64
    );
}

#[test]
fn instance_start_boots_the_guest_and_the_running_vm_is_served_by_the_event_loop() {
    if !kvm_available("instance_start_boots_the_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &counting_guest());
    let sock = dir.path().join("api.sock");
    let mut volt = VoltProcess::start(&sock, &[]);
    start_counting(&mut volt, &kernel, 1);

    let info = volt.call("GET", "/", None);
    assert_eq!(info.body["state"], "Running");
    assert_eq!(
        volt.call("GET", "/machine-config", None).body["mem_size_mib"],
        64
    );
    let metrics = volt.call("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body["exits"]["pio"].as_u64().unwrap() >= 5,
        "{}",
        metrics.body
    );
    assert!(metrics.body["serial"]["bytes_out"].as_u64().unwrap() >= 10);
    assert!(metrics.body["api"]["requests"].as_u64().unwrap() >= 1);

    let again = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    again.assert_refused("already running");
    let late = volt.call("PUT", "/machine-config", Some(&machine_config(2)));
    assert_eq!(late.status, 400);
    assert_eq!(volt.call("PUT", "/boot-source", Some("{")).status, 400);

    // A client vanishing mid-request does not stall the loop: the guest keeps counting.
    let mut gone = UnixStream::connect(&sock).unwrap();
    gone.write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"st")
        .unwrap();
    drop(gone);
    let seen = counted(&volt.console()).len();
    volt.wait_console(Duration::from_secs(20), |c| counted(c).len() >= seen + 5);
    assert_eq!(volt.call("GET", "/", None).status, 200);
    let stderr = volt.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_config_file_boots_the_vm_without_the_api() {
    if !kvm_available("a_config_file_boots_the_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"from a config file\n"));
    let config = dir.path().join("vm.json");
    let text = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel },
        "machine-config": { "vcpu_count": 2, "mem_size_mib": 64 },
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--config-file")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "from a config file\n"
    );

    std::fs::write(
        &config,
        r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":64,"x":1}}"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("--config-file")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown field `x`"), "{stderr}");
}

/// Polls the i8042 and prints every byte it delivers in hex; after 8 bytes, resets.
fn keyboard_echo_guest() -> Vec<u8> {
    assemble(|a| {
        let mut wait = a.create_label();
        a.xor(ebx, ebx)?;
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, b'>' as u32)?;
        a.out(dx, al)?;
        a.set_label(&mut wait)?;
        a.in_(al, 0x64u32)?;
        a.test(al, 1u32)?;
        a.jz(wait)?;
        a.in_(al, 0x60u32)?;
        a.mov(cl, al)?;
        // The high nibble, then the low one, as a hex digit.
        for high in [true, false] {
            let mut digit = a.create_label();
            a.mov(al, cl)?;
            if high {
                a.shr(al, 4u32)?;
            } else {
                a.and(al, 0xfu32)?;
            }
            a.add(al, b'0' as u32)?;
            a.cmp(al, b'9' as u32)?;
            a.jbe(digit)?;
            a.add(al, 7u32)?;
            a.set_label(&mut digit)?;
            a.out(dx, al)?;
        }
        a.mov(al, b' ' as u32)?;
        a.out(dx, al)?;
        a.inc(ebx)?;
        a.cmp(ebx, 8u32)?;
        a.jne(wait)?;
        a.mov(al, 0xfeu32)?;
        a.out(0x64u32, al)?;
        a.hlt()
    })
}

#[test]
fn send_ctrl_alt_del_reaches_the_guest_keyboard() {
    if !kvm_available("send_ctrl_alt_del_reaches_the_guest_keyboard") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &keyboard_echo_guest());
    let sock = dir.path().join("api.sock");
    let kernel_arg = kernel.to_str().unwrap().to_string();
    // With --kernel the VM boots at once and the API serves it from the start.
    let mut volt = VoltProcess::start(&sock, &["--kernel", &kernel_arg]);
    volt.wait_console(Duration::from_secs(20), |c| c.starts_with('>'));
    let answer = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    );
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    let (code, stderr, console) = volt.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(console, ">1D 38 E0 53 E0 D3 B8 9D ");
}

fn start_counting_vm(dir: &std::path::Path, vcpus: u8) -> VoltProcess {
    let kernel = tiny_elf_kernel(dir, &counting_guest());
    let volt = VoltProcess::start(&dir.join("api.sock"), &[]);
    assert_eq!(
        volt.call("PUT", "/boot-source", Some(&boot_source(&kernel)))
            .status,
        204
    );
    let config = volt.call("PUT", "/machine-config", Some(&machine_config(vcpus)));
    assert_eq!(config.status, 204);
    let start = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(start.status, 204, "{:?}", start.body);
    volt
}

/// The numbers must run 1, 2, 3, ... without a gap or a repeat.
fn assert_contiguous(numbers: &[u64]) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "count broken at line {i}: {numbers:?}");
    }
}

#[test]
fn a_paused_guest_stops_counting_and_resumes_where_it_stopped() {
    if !kvm_available("a_paused_guest_stops_counting") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two vCPUs: the second one (never started by the guest) must park as well.
    let mut volt = start_counting_vm(dir.path(), 2);
    volt.wait_console(Duration::from_secs(20), |c| counted(c).len() >= 5);
    let resume_early = volt.call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    resume_early.assert_refused("not paused");

    let pause = volt.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(pause.status, 204, "{:?}", pause.body);
    let at_pause = volt.console();
    assert_eq!(volt.call("GET", "/", None).body["state"], "Paused");
    assert_eq!(
        volt.call("GET", "/metrics", None).body["vm"]["state"],
        "Paused"
    );
    let twice = volt.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(twice.status, 400);
    // Paused means no guest instruction runs: nothing more is printed, however long we wait.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(volt.console(), at_pause, "the guest ran while paused");

    let resume = volt.call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(resume.status, 204, "{:?}", resume.body);
    assert_eq!(volt.call("GET", "/", None).body["state"], "Running");
    let paused_at = counted(&at_pause).len();
    let text = volt.wait_console(Duration::from_secs(20), |c| {
        counted(c).len() >= paused_at + 5
    });
    assert_contiguous(&counted(&text));

    // Pause and resume in quick succession many times: never lost, never stuck.
    for _ in 0..20 {
        assert_eq!(
            volt.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#))
                .status,
            204
        );
        assert_eq!(
            volt.call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
                .status,
            204
        );
    }
    let seen = counted(&volt.console()).len();
    let text = volt.wait_console(Duration::from_secs(20), |c| counted(c).len() >= seen + 3);
    assert_contiguous(&counted(&text));
    let stderr = volt.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn load_body(state: &std::path::Path, mem: &std::path::Path, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": { "backend_path": mem, "backend_type": "File" },
        "resume_vm": resume,
    })
    .to_string()
}

/// A fresh volt process restoring `state` + `mem`: the answer to the load.
fn restore_in_new_process(
    dir: &std::path::Path,
    name: &str,
    state: &std::path::Path,
    mem: &std::path::Path,
    resume: bool,
) -> (VoltProcess, common::api_client::Answer) {
    let volt = VoltProcess::start(&dir.join(name), &[]);
    let answer = volt.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(state, mem, resume)),
    );
    (volt, answer)
}

#[test]
fn a_snapshot_restored_in_a_new_process_continues_the_count() {
    if !kvm_available("a_snapshot_restored_in_a_new_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &counting_guest());
    let snap_arg = snaps.to_str().unwrap().to_string();
    let mut volt = VoltProcess::start(&dir.path().join("a.sock"), &["--snapshot-dir", &snap_arg]);
    start_counting(&mut volt, &kernel, 2);

    let create = r#"{"snapshot_path":"vm.state","mem_file_path":"vm.mem"}"#;
    let running = volt.call("PUT", "/snapshot/create", Some(create));
    running.assert_refused("paused");
    assert_eq!(
        volt.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#))
            .status,
        204
    );
    let outside = volt.call(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path":"/tmp/evil.state","mem_file_path":"vm.mem"}"#),
    );
    outside.assert_refused("outside");
    let unknown = volt.call(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path":"a","mem_file_path":"b","compress":true}"#),
    );
    assert_eq!(unknown.status, 400);
    let created = volt.call("PUT", "/snapshot/create", Some(create));
    assert_eq!(created.status, 204, "{:?}", created.body);
    let at_snapshot = counted(&volt.console());
    assert_contiguous(&at_snapshot);
    let last = *at_snapshot.last().unwrap();
    let stderr = volt.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");

    let state = snaps.join("vm.state");
    let mem = snaps.join("vm.mem");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 64 << 20);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Restored paused: nothing runs until resumed, then the count goes on from `last`.
    let (mut restored, answer) = restore_in_new_process(dir.path(), "b.sock", &state, &mem, false);
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(restored.call("GET", "/", None).body["state"], "Paused");
    assert_eq!(
        restored.call("GET", "/machine-config", None).body["vcpu_count"],
        2
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        restored.console(),
        "",
        "a guest restored paused must not run"
    );
    assert_eq!(
        restored
            .call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
            .status,
        204
    );
    let text = restored.wait_console(Duration::from_secs(20), |c| counted(c).len() >= 5);
    let after = counted(&text);
    let expected: Vec<u64> = (last + 1..=last + after.len() as u64).collect();
    assert_eq!(after, expected, "the count must continue from {last}");
    drop(restored);

    // Restored running, twice from the same files (MAP_PRIVATE: the file is not changed).
    for name in ["c.sock", "d.sock"] {
        let (mut clone, answer) = restore_in_new_process(dir.path(), name, &state, &mem, true);
        assert_eq!(answer.status, 204, "{:?}", answer.body);
        let text = clone.wait_console(Duration::from_secs(20), |c| counted(c).len() >= 3);
        assert_eq!(counted(&text)[0], last + 1, "{text}");
        assert_eq!(clone.call("GET", "/", None).body["state"], "Running");
    }
}

#[test]
fn damaged_or_foreign_snapshots_are_refused_with_a_clear_error() {
    if !kvm_available("damaged_or_foreign_snapshots_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let snap_arg = snaps.to_str().unwrap().to_string();
    let kernel = tiny_elf_kernel(dir.path(), &counting_guest());
    let kernel_arg = kernel.to_str().unwrap().to_string();
    let mut volt = VoltProcess::start(
        &dir.path().join("a.sock"),
        &[
            "--kernel",
            &kernel_arg,
            "--mem",
            "64M",
            "--snapshot-dir",
            &snap_arg,
        ],
    );
    volt.wait_console(Duration::from_secs(20), |c| counted(c).len() >= 2);
    assert_eq!(
        volt.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#))
            .status,
        204
    );
    let create = r#"{"snapshot_path":"vm.state","mem_file_path":"vm.mem"}"#;
    assert_eq!(
        volt.call("PUT", "/snapshot/create", Some(create)).status,
        204
    );
    drop(volt);
    let state = snaps.join("vm.state");
    let mem = snaps.join("vm.mem");
    let good = std::fs::read(&state).unwrap();

    let bad = dir.path().join("bad.state");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not a snapshot",
            b"{\"hello\":1}".to_vec(),
            "not a Volt snapshot",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
    ];
    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    cases.push(("corrupt", corrupt, "checksum"));
    let mut other_format = good.clone();
    other_format[8] = 99;
    cases.push(("other format", other_format, "format version 99"));
    // Another Volt version, with a valid checksum: the header is rebuilt around a new body.
    let body = std::str::from_utf8(&good[56..]).unwrap();
    let other_volt = body.replacen(
        &format!("\"volt_version\":\"{}\"", env!("CARGO_PKG_VERSION")),
        "\"volt_version\":\"0.0.1-other\"",
        1,
    );
    assert_ne!(other_volt, body);
    let mut reframed = good[..56].to_vec();
    reframed[16..24].copy_from_slice(&(other_volt.len() as u64).to_le_bytes());
    use sha2::Digest;
    reframed[24..56].copy_from_slice(&sha2::Sha256::digest(other_volt.as_bytes()));
    reframed.extend_from_slice(other_volt.as_bytes());
    cases.push(("other volt", reframed, "made by Volt 0.0.1-other"));
    for (i, (what, bytes, expected)) in cases.into_iter().enumerate() {
        std::fs::write(&bad, bytes).unwrap();
        let (volt, answer) =
            restore_in_new_process(dir.path(), &format!("{i}.sock"), &bad, &mem, true);
        assert_eq!(answer.status, 400, "{what}");
        assert!(
            answer.fault().contains(expected),
            "{what}: {}",
            answer.fault()
        );
        // The process is still serving, with no VM.
        assert_eq!(
            volt.call("GET", "/", None).body["state"],
            "Not started",
            "{what}"
        );
    }
    // A memory file of the wrong size.
    let short_mem = dir.path().join("short.mem");
    std::fs::write(&short_mem, vec![0u8; 4096]).unwrap();
    let (_volt, answer) = restore_in_new_process(dir.path(), "m.sock", &state, &short_mem, true);
    answer.assert_refused("memory file");
}

/// Describes the counting guest with `vcpus` vCPUs over the API, starts it and waits until it
/// has counted to 5.
fn start_counting(volt: &mut VoltProcess, kernel: &std::path::Path, vcpus: u8) {
    let boot = volt.call("PUT", "/boot-source", Some(&boot_source(kernel)));
    assert_eq!(boot.status, 204, "{:?}", boot.body);
    let config = volt.call("PUT", "/machine-config", Some(&machine_config(vcpus)));
    assert_eq!(config.status, 204, "{:?}", config.body);
    let start = volt.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(start.status, 204, "{:?}", start.body);
    volt.wait_console(Duration::from_secs(20), |c| counted(c).len() >= 5);
}
