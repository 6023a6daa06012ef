//! End-to-end: real Linux guests under Volt on a real KVM.
//!
//! All boots happen in ONE run of `tests/nested/run-e2e.sh` (a nested real-KVM guest on machines
//! whose /dev/kvm is paravirtual, or directly on a hardware-KVM host); the tests below share that
//! run and assert on its delimited per-boot output (see `tests/nested/lib.sh`, `boot_case`).
//! Ignored by default (slow: ~2 min on 2 cores after the one-off guest kernel build); run with
//! `cargo test --test real_linux -- --ignored`.
//!
//! The nested bed's outer guest can wedge or stop on its own; run-e2e.sh then resumes after the
//! groups of boots that had finished. A run that still stops early (too many of those, the bed's
//! timeout, a payload that failed) is one failure, of `every_boot_of_the_e2e_ran_to_its_end`,
//! naming the case it stopped in; the tests of boots that never ran print `SKIP:` and those that
//! ran are checked as usual.
//!
//! Environment: `VOLT_E2E_VMM=qemu` runs the same boots under QEMU microvm (to check the harness
//! itself); `VOLT_E2E_BIN=PATH` boots that volt binary instead of this build's;
//! `VOLT_E2E_MODE=direct|nested` overrides the automatic choice; `VOLT_E2E_LOG=PATH` saves the
//! run's whole output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One guest boot as reported by the payload.
#[derive(Debug, Default)]
struct BootCase {
    /// The VMM's stdout: the guest serial console.
    serial: String,
    /// The VMM's stderr (logs) followed by the host-side `HOST-...` lines.
    stderr: String,
    /// Exit status of the VMM (124 = killed by the payload's timeout).
    status: Option<i32>,
}

impl BootCase {
    fn has_host_line(&self, line: &str) -> bool {
        self.stderr.lines().any(|l| l.trim() == line)
    }

    /// The `VOLT-INIT-READY ... cpus=N` marker's N.
    fn init_cpus(&self) -> Option<u32> {
        self.serial
            .lines()
            .find_map(|l| l.trim().strip_prefix("VOLT-INIT-READY "))
            .and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix("cpus="))
            })
            .and_then(|n| n.parse().ok())
    }

    fn marker_value(&self, prefix: &str) -> Option<String> {
        self.serial
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_string())
    }
}

/// Parses the `VOLT-CASE-BEGIN` / `VOLT-CASE-STDERR` / `VOLT-CASE-END name status=S` blocks.
fn parse_cases(output: &str) -> HashMap<String, BootCase> {
    let mut cases = HashMap::new();
    let mut current: Option<(String, BootCase, bool)> = None;
    for line in output.lines() {
        let trimmed = line.trim_end_matches('\r');
        if let Some(name) = trimmed.strip_prefix("VOLT-CASE-BEGIN ") {
            current = Some((name.trim().to_string(), BootCase::default(), false));
        } else if trimmed == "VOLT-CASE-STDERR" {
            if let Some((_, _, in_stderr)) = current.as_mut() {
                *in_stderr = true;
            }
        } else if let Some(rest) = trimmed.strip_prefix("VOLT-CASE-END ") {
            if let Some((name, mut case, _)) = current.take() {
                case.status = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("status="))
                    .and_then(|s| s.parse().ok());
                cases.insert(name, case);
            }
        } else if let Some((_, case, in_stderr)) = current.as_mut() {
            let target = if *in_stderr {
                &mut case.stderr
            } else {
                &mut case.serial
            };
            target.push_str(trimmed);
            target.push('\n');
        }
    }
    cases
}

enum E2eRun {
    Skipped(String),
    Ran {
        vmm: String,
        output: String,
        cases: HashMap<String, BootCase>,
        /// Why the run stopped before its end (the bed timed out or kept wedging, or the payload
        /// failed): the boots it did not reach are skipped by their tests and reported once, by
        /// `every_boot_of_the_e2e_ran_to_its_end`.
        unfinished: Option<String>,
    },
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The run's `NESTED-WEDGED` / `NESTED-ENDED` lines: the bed's failures it resumed from (and the
/// one it gave up on, ending in `(no retries left)`).
fn bed_failures(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with("NESTED-WEDGED ") || l.starts_with("NESTED-ENDED "))
        .collect()
}

/// Why a run's output shows it did not finish, or None if it did.
fn unfinished_reason(output: &str, success: bool) -> Option<String> {
    let last_case = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("VOLT-CASE-BEGIN "))
        .unwrap_or("(none started)");
    let bed_failures = bed_failures(output);
    if let Some(line) = output.lines().find(|l| l.starts_with("NESTED-TIMEOUT")) {
        return Some(format!(
            "the nested bed timed out ({line}) in case {last_case}: the bed, not a test, failed\n{}",
            tail(output, 40)
        ));
    }
    if let Some(line) = bed_failures
        .iter()
        .find(|l| l.ends_with("(no retries left)"))
    {
        let times = line.split_whitespace().nth(1).unwrap_or("?");
        return Some(format!(
            "the nested bed's outer guest wedged or stopped {times} times, the last in case \
             {last_case}: the bed, not a test, failed\n{}\n{}",
            bed_failures.join("\n"),
            tail(output, 40)
        ));
    }
    if !success || !output.contains("E2E-DONE") {
        return Some(format!(
            "run-e2e.sh failed or did not finish (last case {last_case}):\n{output}"
        ));
    }
    None
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs every boot once per test binary; later callers get the stored result.
fn e2e() -> &'static E2eRun {
    static RUN: OnceLock<E2eRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let vmm = std::env::var("VOLT_E2E_VMM").unwrap_or_else(|_| "volt".to_string());
        let script = repo_root().join("tests/nested/run-e2e.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(["--vmm", &vmm]);
        if vmm == "volt" {
            // VOLT_E2E_BIN: e.g. a static release build (faster in the TCG-emulated outer guest).
            let volt =
                std::env::var("VOLT_E2E_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_volt").into());
            cmd.args(["--volt", &volt]);
        }
        // VOLT_E2E_REPLAY=PATH checks the output of an earlier run (e.g. a payload run by hand
        // with tests/nested/make-payload.sh) instead of booting anything.
        let (stdout, success) = match std::env::var("VOLT_E2E_REPLAY") {
            Ok(path) => {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read VOLT_E2E_REPLAY {path}: {e}"));
                let ok = text.contains("NESTED-EXIT 0");
                (text, ok)
            }
            Err(_) => {
                let out = cmd
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.code() == Some(77) {
                    let reason = stdout
                        .lines()
                        .find(|l| l.starts_with("SKIP:"))
                        .unwrap_or("SKIP: no real KVM")
                        .to_string();
                    return E2eRun::Skipped(reason);
                }
                let ok = out.status.success();
                (stdout, ok)
            }
        };
        // VOLT_E2E_LOG=PATH keeps the whole run (every boot's console), passing cases included.
        if let Ok(path) = std::env::var("VOLT_E2E_LOG") {
            let _ = std::fs::write(path, &stdout);
        }
        E2eRun::Ran {
            vmm,
            cases: parse_cases(&stdout),
            unfinished: unfinished_reason(&stdout, success),
            output: stdout,
        }
    })
}

/// The named boot, or None (after printing SKIP:) when no real KVM is available or the run
/// stopped before this boot (`every_boot_of_the_e2e_ran_to_its_end` then fails with the reason).
fn boot(name: &str) -> Option<&'static BootCase> {
    match e2e() {
        E2eRun::Skipped(reason) => {
            eprintln!("{reason}");
            None
        }
        E2eRun::Ran {
            vmm,
            output,
            cases,
            unfinished,
        } => match (cases.get(name), unfinished) {
            (Some(case), _) => Some(case),
            (None, Some(why)) => {
                let first = why.lines().next().unwrap_or_default();
                eprintln!(
                    "SKIP: {name} did not run: {first} \
                     (every_boot_of_the_e2e_ran_to_its_end fails with the details)"
                );
                None
            }
            (None, None) => panic!("{vmm}: no boot named {name} in the output:\n{output}"),
        },
    }
}

fn assert_serial_contains(name: &str, case: &BootCase, needle: &str) {
    assert!(
        case.serial.contains(needle),
        "{name}: guest serial lacks {needle:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
        case.serial,
        case.stderr
    );
}

fn assert_exited_cleanly(name: &str, case: &BootCase) {
    assert_eq!(
        case.status,
        Some(0),
        "{name}: VMM exit status\n--- serial ---\n{}\n--- stderr ---\n{}",
        case.serial,
        case.stderr
    );
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn debian_kernels_find_cpus_disk_and_nic_through_acpi_and_poweroff_ends_vmm() {
    for (name, cpus) in [
        ("debian-acpi-cpus1", 1),
        ("debian-acpi-cpus2", 2),
        ("debian-acpi-cpus4", 4),
        // linux-image-cloud-amd64: no CONFIG_X86_MPPARSE, the MADT is its only CPU list.
        ("debian-cloud-acpi-cpus4", 4),
    ] {
        let Some(case) = boot(name) else { return };
        assert_serial_contains(name, case, "ACPI: RSDP 0x00000000000E0000");
        assert_serial_contains(name, case, "Using ACPI (MADT) for SMP configuration");
        assert_eq!(
            case.init_cpus(),
            Some(cpus),
            "{name}: cpus in the init marker\n{}",
            case.serial
        );
        assert!(
            !case.serial.contains("VOLT-INSMOD-FAILED"),
            "{name}: a module failed to load\n{}",
            case.serial
        );
        // The kernel has no virtio_mmio.device= support: both devices came from the DSDT.
        let bound = case.marker_value("VOLT-VIRTIO-BOUND ").unwrap_or_default();
        assert!(
            bound.contains("LNRO0005:00") && bound.contains("LNRO0005:01"),
            "{name}: virtio-mmio devices bound through ACPI: {bound:?}\n{}",
            case.serial
        );
        assert_eq!(
            case.marker_value("VOLT-DISK-READ ").as_deref(),
            Some("VOLT-ACPI-DISK-OK"),
            "{name}: first line of /dev/vda\n{}",
            case.serial
        );
        assert_serial_contains(name, case, "VOLT-NIC eth0");
        assert_serial_contains(name, case, "VOLT-INIT-DONE");
        assert!(
            case.stderr.contains("guest ended (PowerOff)"),
            "{name}: Volt saw no ACPI power-off\n--- stderr ---\n{}",
            case.stderr
        );
        assert_exited_cleanly(name, case);
    }
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn debian_stock_kernel_with_acpi_off_brings_up_smp_from_the_mp_table() {
    let name = "stock-mptable-cpus4";
    let Some(case) = boot(name) else { return };
    // Linux took Volt's e820 map (256 MiB: the EBDA and the ACPI/BIOS area reserved).
    for e820 in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert_serial_contains(name, case, e820);
    }
    assert_serial_contains(name, case, "Intel MultiProcessor Specification v1.4");
    assert_serial_contains(name, case, "found SMP MP-table");
    assert_serial_contains(name, case, "MPTABLE: OEM ID: NOVAFLAR");
    assert_serial_contains(name, case, "MPTABLE: Product ID: VOLT VM");
    assert_serial_contains(name, case, "Processors: 4");
    assert_serial_contains(name, case, "Brought up 1 node, 4 CPUs");
    assert!(
        !case.serial.contains("ACPI: RSDP 0x"),
        "{name}: --acpi off still wrote ACPI tables\n{}",
        case.serial
    );
    assert_serial_contains(name, case, "VFS: Unable to mount root fs");
    // panic=1 reboots the guest, which ends the VMM with status 0.
    assert_exited_cleanly(name, case);
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn built_kernel_reports_vcpu_count_and_reboot_ends_vmm() {
    for (name, cpus) in [
        ("rootfs-cpus1", 1),
        ("rootfs-cpus2", 2),
        ("rootfs-cpus4-net", 4),
    ] {
        let Some(case) = boot(name) else { return };
        assert_eq!(
            case.init_cpus(),
            Some(cpus),
            "{name}: cpus in the init marker\n{}",
            case.serial
        );
        assert_serial_contains(name, case, "VOLT-INIT-DONE");
        assert_exited_cleanly(name, case);
    }
    // The project's kernel is built with ACPI: with acpi=off it finds its CPUs in the MP table.
    let Some(case) = boot("rootfs-cpus2") else {
        return;
    };
    assert_serial_contains("rootfs-cpus2", case, "MPTABLE: OEM ID: NOVAFLAR");
    let Some(case) = boot("rootfs-cpus4-net") else {
        return;
    };
    assert_serial_contains(
        "rootfs-cpus4-net",
        case,
        "Using ACPI (MADT) for SMP configuration",
    );
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn block_device_writes_survive_the_next_boot() {
    let boots = ["rootfs-cpus1", "rootfs-cpus2", "rootfs-cpus4-net"];
    let written = ["alpha", "beta", "gamma"];
    for (i, name) in boots.iter().enumerate() {
        let Some(case) = boot(name) else { return };
        assert_eq!(
            case.marker_value("VOLT-PERSIST-WRITTEN ").as_deref(),
            Some(written[i]),
            "{name}: write to the root block device\n{}",
            case.serial
        );
        let read_back = case.marker_value("VOLT-PERSIST ");
        if i == 0 {
            assert_serial_contains(name, case, "VOLT-PERSIST-NONE");
        } else {
            assert_eq!(
                read_back.as_deref(),
                Some(written[i - 1]),
                "{name}: value written by the previous boot\n{}",
                case.serial
            );
        }
    }
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn guest_answers_ping_over_tap() {
    let name = "rootfs-cpus4-net";
    let Some(case) = boot(name) else { return };
    assert_serial_contains(name, case, "VOLT-NET-UP 10.0.2.15");
    assert!(
        case.has_host_line("HOST-PING-OK 10.0.2.15"),
        "{name}: host ping of the guest\n--- serial ---\n{}\n--- stderr/host ---\n{}",
        case.serial,
        case.stderr
    );
}

/// The `VOLT-SNAPWORK N` steps a guest printed, in order.
fn snapwork_steps(case: &BootCase) -> Vec<u32> {
    case.serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VOLT-SNAPWORK "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A `HOST-... <number>` line the payload added to a case (e.g. the balloon's RSS samples).
fn host_number(case: &BootCase, prefix: &str) -> Option<u64> {
    case.stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn a_guest_snapshotted_mid_work_resumes_in_a_new_process_with_its_disk_and_nic() {
    if std::env::var("VOLT_E2E_VMM").is_ok_and(|vmm| vmm != "volt") {
        eprintln!("SKIP: snapshots are Volt's (VOLT_E2E_VMM is not volt)");
        return;
    }
    let Some(take) = boot("snapshot-take") else {
        return;
    };
    assert!(
        take.has_host_line("HOST-API PUT /snapshot/create 204"),
        "snapshot-take: the snapshot was not created\n--- serial ---\n{}\n--- stderr ---\n{}",
        take.serial,
        take.stderr
    );
    let before = snapwork_steps(take);
    let last = *before.last().expect("steps before the snapshot");
    assert!(last < 10, "the snapshot must be taken mid-work: {before:?}");

    let Some(restore) = boot("snapshot-restore") else {
        return;
    };
    assert!(
        restore.has_host_line("HOST-API PUT /snapshot/load 204"),
        "snapshot-restore: the load failed\n--- stderr ---\n{}",
        restore.stderr
    );
    let after = snapwork_steps(restore);
    let expected: Vec<u32> = (last + 1..=10).collect();
    assert_eq!(
        after, expected,
        "the restored guest must go on from step {last}\n--- serial ---\n{}",
        restore.serial
    );
    assert!(
        restore.has_host_line("HOST-PING-OK 10.0.2.15"),
        "the restored guest must answer a ping\n--- stderr ---\n{}",
        restore.stderr
    );
    assert_exited_cleanly("snapshot-restore", restore);

    let Some(read) = boot("snapshot-readback") else {
        return;
    };
    assert_eq!(
        read.marker_value("VOLT-SNAPWORK-READ ").as_deref(),
        Some("10"),
        "the restored guest's disk writes must be on the disk\n--- serial ---\n{}",
        read.serial
    );
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn guest_reads_random_bytes_from_hwrng() {
    let name = "rootfs-cpus1";
    let Some(case) = boot(name) else { return };
    let marker = case.marker_value("VOLT-HWRNG-OK ");
    assert!(
        marker
            .as_deref()
            .is_some_and(|m| m.contains("rng=virtio_rng")),
        "{name}: /dev/hwrng from virtio-rng\n--- serial ---\n{}\n--- stderr ---\n{}",
        case.serial,
        case.stderr
    );
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn memory_the_guest_frees_goes_back_to_the_host() {
    // The guest filled 128 MiB of tmpfs, then freed it; free page reporting must hand at least
    // 100 MiB of it back: the VMM's resident memory drops by that much.
    let name = "rootfs-cpus2";
    let Some(case) = boot(name) else { return };
    assert_serial_contains(name, case, "VOLT-BALLOON-DONE");
    let start = host_number(case, "HOST-RSS-START-KB ");
    let filled = host_number(case, "HOST-RSS-FILLED-KB ");
    let freed = host_number(case, "HOST-RSS-FREED-KB ");
    eprintln!("{name}: VMM RSS start {start:?} KiB, filled {filled:?} KiB, freed {freed:?} KiB");
    let (Some(filled), Some(freed)) = (filled, freed) else {
        panic!(
            "{name}: no RSS samples\n--- serial ---\n{}\n--- stderr ---\n{}",
            case.serial, case.stderr
        );
    };
    assert!(
        filled >= freed + 100 * 1024,
        "{name}: RSS {filled} KiB with 128 MiB in use, {freed} KiB after freeing it: \
         less than 100 MiB came back\n--- serial ---\n{}\n--- stderr ---\n{}",
        case.serial,
        case.stderr
    );
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn vsock_carries_data_both_ways_between_a_host_agent_and_the_guest() {
    if std::env::var("VOLT_E2E_VMM").is_ok_and(|v| v != "volt") {
        eprintln!("SKIP: the vsock case runs under volt only");
        return;
    }
    let name = "rootfs-cpus1";
    let Some(case) = boot(name) else { return };
    let report = || {
        format!(
            "--- serial ---\n{}\n--- stderr/host ---\n{}",
            case.serial, case.stderr
        )
    };
    // Guest -> host: the guest connected to host port 6000 (PATH_6000) and got the answer.
    assert_serial_contains(name, case, "VOLT-VSOCK-DEVICE");
    assert_serial_contains(name, case, "VOLT-VSOCK-REPLY hello-from-host");
    // Host -> guest: CONNECT 5000 reached the guest's listener; echo, round trips, 8 MiB each
    // way, and QUIT: five streams served.
    for line in [
        "HOST-VSOCK-FROM-GUEST hello-from-guest",
        "HOST-VSOCK-ECHO-OK ping-from-host",
        "HOST-VSOCK-QUIT-OK",
        "HOST-VSOCK-ALL-OK",
    ] {
        assert!(
            case.has_host_line(line),
            "{name}: no {line:?}\n{}",
            report()
        );
    }
    for prefix in [
        "HOST-VSOCK-BENCH to_guest bytes=8388608 got=8388608 ",
        "HOST-VSOCK-BENCH from_guest bytes=8388608 got=8388608 ",
        "HOST-VSOCK-BENCH rtt64 rounds=500 ",
    ] {
        assert!(
            case.stderr.lines().any(|l| l.starts_with(prefix)),
            "{name}: no {prefix:?}\n{}",
            report()
        );
    }
    assert_serial_contains(name, case, "VOLT-VSOCK-SERVED 5");
    assert_exited_cleanly(name, case);
}

/// The boots e2e-run.sh makes, by VMM.
fn expected_boots(vmm: &str) -> Vec<&'static str> {
    let mut boots = Vec::new();
    if vmm == "volt" {
        boots.extend([
            "debian-acpi-cpus1",
            "debian-acpi-cpus2",
            "debian-acpi-cpus4",
            "debian-cloud-acpi-cpus4",
        ]);
    }
    boots.extend([
        "stock-mptable-cpus4",
        "rootfs-cpus1",
        "rootfs-cpus2",
        "rootfs-cpus4-net",
    ]);
    if vmm == "volt" {
        boots.extend(["snapshot-take", "snapshot-restore", "snapshot-readback"]);
    }
    boots
}

#[test]
#[ignore = "boots real Linux on a real KVM (nested); run with --ignored"]
fn every_boot_of_the_e2e_ran_to_its_end() {
    let (vmm, output, cases, unfinished) = match e2e() {
        E2eRun::Skipped(reason) => {
            eprintln!("{reason}");
            return;
        }
        E2eRun::Ran {
            vmm,
            output,
            cases,
            unfinished,
        } => (vmm, output, cases, unfinished),
    };
    // Wedges and early ends the run resumed from are the bed's; they are listed, not failed.
    for line in bed_failures(output) {
        eprintln!("{line}");
    }
    if let Some(why) = unfinished {
        panic!("{why}");
    }
    let missing: Vec<_> = expected_boots(vmm)
        .into_iter()
        .filter(|b| !cases.contains_key(*b))
        .collect();
    assert!(
        missing.is_empty(),
        "{vmm}: boots missing from the output: {missing:?}\n{output}"
    );
}

#[test]
fn a_run_that_stopped_early_names_the_bed_and_the_case_it_was_in() {
    let wedged = "E2E-MODE nested\nVOLT-CASE-BEGIN a\nVOLT-CASE-END a status=0\nE2E-GROUP-DONE a\n\
                  NESTED-WEDGED 1 no heartbeat (in case b; groups done: a)\n\
                  VOLT-CASE-BEGIN b\nNESTED-WEDGED 2 no heartbeat (no retries left)\n";
    let why = unfinished_reason(wedged, false).expect("a wedged run did not finish");
    assert!(
        why.starts_with(
            "the nested bed's outer guest wedged or stopped 2 times, the last in case b:"
        ),
        "{why}"
    );
    let timed_out = "VOLT-CASE-BEGIN c\nserial\nNESTED-TIMEOUT 1200\n";
    let why = unfinished_reason(timed_out, false).expect("a timed-out run did not finish");
    assert!(
        why.starts_with("the nested bed timed out (NESTED-TIMEOUT 1200) in case c"),
        "{why}"
    );
    let no_done = "VOLT-CASE-BEGIN d\nVOLT-CASE-END d status=0\nNESTED-EXIT 0\n";
    let why = unfinished_reason(no_done, true).expect("no E2E-DONE: not finished");
    assert!(
        why.starts_with("run-e2e.sh failed or did not finish (last case d)"),
        "{why}"
    );
    // Resumed after a wedge and finished: done, and the cases of both attempts are there.
    let resumed = "VOLT-CASE-BEGIN a\nVOLT-CASE-END a status=0\nE2E-GROUP-DONE a\n\
                   NESTED-WEDGED 1 no heartbeat (in case b; groups done: a)\nE2E-GROUP-SKIPPED a\n\
                   VOLT-CASE-BEGIN b\nVOLT-CASE-END b status=0\nE2E-GROUP-DONE b\nE2E-DONE\n\
                   NESTED-EXIT 0\n";
    assert_eq!(unfinished_reason(resumed, true), None);
    let cases = parse_cases(resumed);
    assert!(cases.contains_key("a") && cases.contains_key("b"));
}

/// Runs tests/nested/common.sh's `run_payload_resuming` on a fake bed: its run.sh runs the
/// payload here and "wedges" (stops it and prints run.sh's wedge line) at the attempt:case pairs in
/// `wedges`, or "ends" (stops it with no NESTED-EXIT, as when the outer kernel crashes) at those in
/// `ends`. The payload is three groups made with the real lib.sh `run_group`; the middle one is
/// a chain of two boots. Returns the output, the exit status and how often each case started.
fn run_on_fake_bed(wedges: &str, ends: &str) -> (String, Option<i32>, HashMap<String, usize>) {
    let dir = tempfile::tempdir().unwrap();
    let bed = dir.path().join("shared/nested-kvm");
    std::fs::create_dir_all(&bed).unwrap();
    std::fs::write(
        bed.join("run.sh"),
        r#"#!/bin/bash
# fake nested-kvm/run.sh: the payload runs here; exit 99 from it stands for a wedged outer guest,
# exit 98 for one that stopped (no NESTED-EXIT)
n=$(( $(cat "$1/../attempt" 2>/dev/null || echo 0) + 1 )); echo $n > "$1/../attempt"
rc=0; out=$(cd "$1" && FAKE_ATTEMPT=$n sh ./run) || rc=$?
echo "$out" | sed 's/$/\r/' # the real payload's lines come over a serial port: CRLF
[ "$rc" = 99 ] && { echo "NESTED-WEDGED 1 fake wedge (no retries left)"; exit 125; }
[ "$rc" = 98 ] && exit 0
echo "NESTED-EXIT $rc"; exit $rc
"#,
    )
    .unwrap();
    let payload = dir.path().join("p");
    std::fs::create_dir_all(&payload).unwrap();
    std::fs::copy(
        repo_root().join("tests/nested/lib.sh"),
        payload.join("lib.sh"),
    )
    .unwrap();
    std::fs::write(
        payload.join("run"),
        r#". ./lib.sh
one() {
  echo "$1" >> "$P/../started"
  echo "VOLT-CASE-BEGIN $1"
  case " $FAKE_WEDGES " in *" $FAKE_ATTEMPT:$1 "*) exit 99 ;; esac
  case " $FAKE_ENDS " in *" $FAKE_ATTEMPT:$1 "*) exit 98 ;; esac
  echo "VOLT-INIT-READY cpus=1"; echo "VOLT-CASE-STDERR"; echo "VOLT-CASE-END $1 status=0"
}
chain() { one b; one c; }
run_group first one a
run_group chain chain
run_group last one d
echo "E2E-DONE"
"#,
    )
    .unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"set -euo pipefail; . "$0/tests/nested/common.sh"; run_payload_resuming "$1" volt"#)
        .arg(repo_root())
        .arg(&payload)
        .env("VOLT_SHARED_DIR", dir.path().join("shared"))
        .env("FAKE_WEDGES", wedges)
        .env("FAKE_ENDS", ends)
        .output()
        .unwrap();
    let mut started = HashMap::new();
    let list = std::fs::read_to_string(dir.path().join("started")).unwrap_or_default();
    for case in list.lines() {
        *started.entry(case.to_string()).or_insert(0) += 1;
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout, out.status.code(), started)
}

#[test]
fn a_wedged_bed_resumes_after_the_groups_that_finished() {
    // Wedged in the chain's second boot, then the outer guest stopped at the last group's boot.
    let (out, status, started) = run_on_fake_bed("1:c", "2:d");
    assert_eq!(status, Some(0), "{out}");
    assert_eq!(unfinished_reason(&out, true), None, "{out}");
    // The finished group ran once, the chain from its start again, each boot reported once.
    let starts = |c: &str| started.get(c).copied().unwrap_or(0);
    assert_eq!(
        (starts("a"), starts("b"), starts("c"), starts("d")),
        (1, 2, 2, 2),
        "{out}"
    );
    let cases = parse_cases(&out);
    for c in ["a", "b", "c", "d"] {
        assert_eq!(cases[c].init_cpus(), Some(1), "{c}: {out}");
        assert_eq!(
            out.matches(&format!("VOLT-CASE-BEGIN {c}\n")).count(),
            1,
            "{out}"
        );
    }
    let wedged = bed_failures(&out);
    assert_eq!(
        wedged,
        [
            "NESTED-WEDGED 1 fake wedge (in case c; groups done: first)",
            "NESTED-ENDED 2 the outer guest stopped before the payload did (status 0, no NESTED-EXIT) \
             (in case d; groups done: first chain)",
        ],
        "{out}"
    );
}

#[test]
fn a_bed_that_keeps_wedging_in_one_group_gives_up_and_says_where() {
    let (out, status, started) = run_on_fake_bed("1:d 3:d 4:d 5:d", "2:d");
    assert_eq!(status, Some(125), "{out}");
    assert_eq!(started.get("d"), Some(&4), "{out}");
    let why = unfinished_reason(&out, false).expect("gave up: not finished");
    assert!(
        why.starts_with(
            "the nested bed's outer guest wedged or stopped 4 times, the last in case d:"
        ),
        "{why}"
    );
    // What finished before is still there for the other tests.
    let cases = parse_cases(&out);
    assert!(cases.contains_key("a") && cases.contains_key("c") && !cases.contains_key("d"));
}

#[test]
fn case_parser_splits_serial_stderr_and_status() {
    let text =
        "noise\nVOLT-CASE-BEGIN a\nVOLT-CASE-COMMAND x\nVOLT-INIT-READY uptime=0.5 cpus=3\r\n\
                VOLT-PERSIST old\nVOLT-CASE-STDERR\nlog line\nHOST-PING-OK 10.0.2.15\n\
                VOLT-CASE-END a status=7 seconds=1\n";
    let cases = parse_cases(text);
    let a = &cases["a"];
    assert_eq!(a.status, Some(7));
    assert_eq!(a.init_cpus(), Some(3));
    assert_eq!(a.marker_value("VOLT-PERSIST ").as_deref(), Some("old"));
    assert!(a.has_host_line("HOST-PING-OK 10.0.2.15"));
    let b = &parse_cases(
        "VOLT-CASE-BEGIN b\nVOLT-CASE-STDERR\nHOST-RSS-FREED-KB 2048\nVOLT-CASE-END b status=0\n",
    )["b"];
    assert_eq!(host_number(b, "HOST-RSS-FREED-KB "), Some(2048));
    assert_eq!(host_number(b, "HOST-RSS-FILLED-KB "), None);
    assert!(!a.serial.contains("log line"));
    assert!(Path::new(&repo_root().join("tests/nested/run-e2e.sh")).exists());
}
