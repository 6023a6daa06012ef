//! The `volt` binary end to end: a tiny guest packed as an ELF "kernel" boots under the full
//! sandbox (seccomp kill mode, Landlock), prints on the serial console and resets; bad input
//! gets one clear error line and a non-zero exit.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::guests::hello_guest;
use common::*;

/// This build's volt, or the binary `VOLT_TEST_BIN` names (tests/run.sh runs these tests again
/// against the release builds users run: the dynamic one and the static one).
fn volt() -> Command {
    match std::env::var_os("VOLT_TEST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_volt")),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_guest_boots_under_the_full_sandbox_and_its_reset_exits_zero() {
    if !kvm_available("a_guest_boots_under_the_full_sandbox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"booted by volt\n"));
    for cpus in ["1", "2"] {
        let output = volt()
            .arg("--kernel")
            .arg(&kernel)
            .args(["--cpus", cpus])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "booted by volt\n",
            "status {:?}: {}",
            output.status,
            stderr(&output)
        );
        assert!(
            output.status.success(),
            "status {:?}: {}",
            output.status,
            stderr(&output)
        );
    }
}

#[test]
fn a_guest_with_vsock_boots_under_the_full_sandbox_and_reuses_a_stale_socket() {
    if !kvm_available("a_guest_with_vsock_boots_under_the_full_sandbox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"vsock\n"));
    let socket = dir.path().join("v.sock");
    let vsock = format!("3,{}", socket.display());
    // The second run finds the socket the first one left behind (the sandbox forbids removing
    // it at exit) and replaces it.
    for _ in 0..2 {
        let output = volt()
            .arg("--kernel")
            .arg(&kernel)
            .args(["--vsock", &vsock, "--log-level", "info"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "vsock\n",
            "{}",
            stderr(&output)
        );
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(socket.exists(), "the listening socket was created");
        // The device's counters are logged when the event loop ends.
        assert!(
            stderr(&output).contains("virtio-vsock: 0 host-initiated and 0 guest-initiated"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_kernel_from_the_store_boots_by_name() {
    if !kvm_available("a_kernel_from_the_store_boots_by_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"from the store\n"));
    let add = volt()
        .args(["kernel", "add"])
        .arg(&kernel)
        .args(["--name", "tiny", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    let default = volt()
        .args(["kernel", "default", "tiny", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(default.status.success(), "{}", stderr(&default));

    let by_name = volt()
        .args(["--kernel", "tiny", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&by_name.stdout),
        "from the store\n",
        "{}",
        stderr(&by_name)
    );
    let by_default = volt().arg("--store").arg(&store).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&by_default.stdout),
        "from the store\n",
        "{}",
        stderr(&by_default)
    );
    assert!(by_default.status.success());
}

/// Runs volt with `args` and expects a failure whose stderr contains `expected`.
fn assert_fails_with(args: &[&str], expected: &str) {
    let output = volt().args(args).output().unwrap();
    let message = stderr(&output);
    assert!(!output.status.success(), "{args:?} must fail");
    assert!(
        message.contains(expected),
        "{args:?}: expected '{expected}' in: {message}"
    );
    assert!(
        !message.contains("panicked"),
        "{args:?} panicked: {message}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_str().unwrap();
    let not_a_kernel = dir.path().join("notes.txt");
    std::fs::write(
        &not_a_kernel,
        "just text, long enough to have a header of some sort...",
    )
    .unwrap();
    let not_a_kernel = not_a_kernel.to_str().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"x"));
    let kernel = kernel.to_str().unwrap();

    assert_fails_with(&["--kernel", "/no/such/vmlinux"], "/no/such/vmlinux");
    assert_fails_with(
        &["--kernel", not_a_kernel],
        "neither ELF vmlinux nor bzImage",
    );
    assert_fails_with(&["--kernel", not_a_kernel], not_a_kernel);
    assert_fails_with(&["--kernel", dir_path], dir_path);
    assert_fails_with(&["--kernel", kernel, "--mem", "12Q"], "unknown unit");
    assert_fails_with(&["--kernel", kernel, "--mem", "1M"], "minimum");
    assert_fails_with(&["--kernel", kernel, "--cpus", "0"], "1 to 254");
    assert_fails_with(&["--kernel", kernel, "--cpus", "255"], "1 to 254");
    assert_fails_with(
        &["--kernel", kernel, "--disk", "/no/such/disk.img"],
        "/no/such/disk.img",
    );
    assert_fails_with(
        &["--kernel", kernel, "--disk", dir_path],
        "not a regular file",
    );
    assert_fails_with(
        &["--kernel", kernel, "--net", "voltnotap9"],
        "ip tuntap add dev voltnotap9",
    );
    assert_fails_with(
        &["--kernel", "nosuchname", "--store", dir_path],
        "nosuchname",
    );
    assert_fails_with(
        &["--kernel", kernel, "--vsock", "2,/tmp/v.sock"],
        "reserved",
    );
    assert_fails_with(&["--kernel", kernel, "--vsock", "3"], "CID,PATH");
    let vsock_on_a_file = format!("3,{not_a_kernel}");
    assert_fails_with(&["--kernel", kernel, "--vsock", &vsock_on_a_file], "exists");
    assert_fails_with(
        &["--kernel", kernel, "--vsock", &vsock_on_a_file],
        not_a_kernel,
    );
}

#[test]
fn no_permission_on_dev_kvm_is_explained() {
    // Only root can drop to an unprivileged user for this check.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIP: no_permission_on_dev_kvm_is_explained: needs root and setpriv");
        return;
    }
    let mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if !matches!(mode, Ok(m) if m & 0o006 == 0) {
        eprintln!(
            "SKIP: no_permission_on_dev_kvm_is_explained: /dev/kvm is missing or world-accessible"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_elf_kernel(dir.path(), &hello_guest(b"x"));
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_volt"))
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no permission to open /dev/kvm"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn print_seccomp_lists_every_thread_kind() {
    let output = volt().arg("--print-seccomp").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for kind in ["vcpu", "event-loop", "main", "KVM_RUN"] {
        assert!(text.contains(kind), "missing {kind} in:\n{text}");
    }
}

/// Reads the child's stderr until a line containing `needle` arrives (or the stream ends).
fn read_until(stderr: &mut impl std::io::BufRead, needle: &str, seen: &mut String) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match stderr.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {
                seen.push_str(&line);
                if line.contains(needle) {
                    return true;
                }
            }
        }
    }
}

#[test]
fn a_stuck_guest_gets_thread_reports_from_the_watchdog_and_on_sigusr1() {
    if !kvm_available("a_stuck_guest_gets_thread_reports") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // vCPU 0 spins in the guest forever: no exit reaches the loop.
    let spin = assemble(|a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.jmp(top)
    });
    let kernel = tiny_elf_kernel(dir.path(), &spin);
    let mut child = volt()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--watchdog", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let watchdog = read_until(&mut stderr, "thread report (watchdog", &mut seen)
        && read_until(&mut stderr, "event loop (tid", &mut seen);
    // SAFETY: signals our own child, which is still running (it never ends by itself).
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let on_signal = read_until(&mut stderr, "thread report (SIGUSR1)", &mut seen)
        && read_until(&mut stderr, "event loop (tid", &mut seen);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(watchdog, "no watchdog report:\n{seen}");
    assert!(on_signal, "no SIGUSR1 report:\n{seen}");
    assert!(
        seen.contains("vcpu0 (tid ") && seen.contains("in KVM_RUN"),
        "the spinning vCPU is reported in KVM_RUN:\n{seen}"
    );
    assert!(seen.contains("in epoll_wait"), "idle loop:\n{seen}");
    // The report kicks the vCPU out of the guest to sample where it spins: the jmp at the entry.
    let rip = format!("guest rip={GUEST_LOAD_ADDR:#x},{GUEST_LOAD_ADDR:#x},");
    assert!(seen.contains(&rip), "no {rip} in:\n{seen}");
}

#[test]
fn a_triple_fault_is_logged_with_the_last_exception() {
    if !kvm_available("a_triple_fault_is_logged_with_the_last_exception") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An empty IDT makes the first exception (ud2's #UD) a triple fault.
    let code = assemble(|a| {
        let idt = a.create_label();
        a.lidt(iced_x86::code_asm::ptr(idt))?;
        a.ud2()?;
        a.set_label(&mut { idt })?;
        a.dw(&[0])?;
        a.dq(&[0])
    });
    let kernel = tiny_elf_kernel(dir.path(), &code);
    let out = volt()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--log-level", "info"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a triple fault is a clean end:\n{stderr}"
    );
    assert!(
        stderr.contains("vcpu0: shutdown exit (triple fault); registers after it: rip=")
            && stderr.contains("; last exception: injected="),
        "{stderr}"
    );
}
