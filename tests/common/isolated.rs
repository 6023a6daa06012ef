//! Running a test body in a re-executed copy of the test binary, so a sandbox it applies
//! (seccomp, Landlock, no_new_privs) never restricts the test harness itself.

use std::process::{Command, Output};

const CHILD_ENV: &str = "VOLT_SANDBOX_TEST_CHILD";

/// In the parent: re-runs `test_name` alone in a child process (after `configure` adjusts the
/// command) and returns its output. In the child (the env var names the test): runs `body`,
/// prints `CHILD OK` or `CHILD FAILED: …` and `_exit`s 0 or 1.
pub fn run_isolated(
    test_name: &str,
    configure: impl FnOnce(&mut Command),
    body: fn() -> Result<(), String>,
) -> Output {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test_name) {
        // A SIGSYS kill must not write a core file.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain setrlimit on our own process.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let code = match body() {
            Ok(()) => {
                eprintln!("CHILD OK");
                0
            }
            Err(msg) => {
                eprintln!("CHILD FAILED: {msg}");
                1
            }
        };
        // SAFETY: leave at once, without running the harness's exit path under the sandbox.
        unsafe { libc::_exit(code) }
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test_name);
    configure(&mut command);
    let output = command.output().expect("spawn the child test process");
    eprintln!(
        "--- child {test_name}: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn assert_child_succeeded(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "child failed: {stderr}");
    // Guards against a child that matched no test and exited 0 without running anything.
    assert!(
        stderr.contains("CHILD OK"),
        "child did not run the test body: {stderr}"
    );
}
