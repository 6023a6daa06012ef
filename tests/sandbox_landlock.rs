//! Landlock ruleset, no_new_privs and inherited-descriptor closing, applied for real in a
//! re-executed copy of this test binary (so the test harness itself stays unrestricted).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::isolated::{assert_child_succeeded, run_isolated};
use volt::sandbox::{
    close_inherited_fds, lock_down_process, restrict_filesystem, set_no_new_privs, FsAccess,
    LandlockEnforcement, SandboxConfig, SandboxError, SeccompMode,
};

const DIR_ENV: &str = "VOLT_SANDBOX_TEST_DIR";
/// The descriptor number the parent leaks into the child for the close_inherited_fds test.
const LEAKED_FD: i32 = 57;

/// The kernel's Landlock ABI version, or None without Landlock.
fn kernel_landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: the version query takes no ruleset and writes nothing.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi)
}

fn test_dir() -> PathBuf {
    PathBuf::from(std::env::var(DIR_ENV).expect("the parent passes the test directory"))
}

fn expect_denied<T: std::fmt::Debug>(what: &str, result: io::Result<T>) -> Result<(), String> {
    match result {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
        other => Err(format!("{what}: expected EACCES, got {other:?}")),
    }
}

fn check<T>(what: &str, result: io::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Lays out a directory as the VMM would see it: two disks, a secret and an executable.
fn populate(dir: &Path) {
    fs::write(dir.join("rw.img"), b"writable disk").unwrap();
    fs::write(dir.join("ro.img"), b"read-only disk").unwrap();
    fs::write(dir.join("secret.txt"), b"not for the guest").unwrap();
    fs::copy("/bin/true", dir.join("tool")).unwrap();
    fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn landlock_allows_only_the_given_disks() {
    let Some(abi) = kernel_landlock_abi() else {
        eprintln!("SKIP: this kernel has no Landlock");
        return;
    };
    eprintln!("kernel Landlock ABI {abi}");
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let dir_path = dir.path().to_path_buf();
    let output = run_isolated(
        "landlock_allows_only_the_given_disks",
        |cmd| {
            cmd.env(DIR_ENV, &dir_path);
        },
        || {
            let dir = test_dir();
            let report = lock_down_process(
                &SandboxConfig::default(),
                &[
                    FsAccess {
                        path: dir.join("rw.img"),
                        writable: true,
                    },
                    FsAccess {
                        path: dir.join("ro.img"),
                        writable: false,
                    },
                ],
            )
            .map_err(|e| e.to_string())?;
            eprintln!("{report}");
            // ABI 6 has every right we ask for.
            if kernel_landlock_abi().unwrap_or(0) >= 6
                && report.enforcement != LandlockEnforcement::Full
            {
                return Err(format!("expected full enforcement: {report:?}"));
            }
            if !report.no_new_privs {
                return Err("no_new_privs not set".into());
            }

            // The writable disk: read and write.
            let mut rw = check(
                "open rw.img read-write",
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join("rw.img")),
            )?;
            check("write rw.img", rw.write_all(b"WRITABLE"))?;
            check("seek rw.img", rw.seek(SeekFrom::Start(0)))?;
            let mut text = String::new();
            check("read rw.img", rw.read_to_string(&mut text))?;
            if text != "WRITABLE disk" {
                return Err(format!("rw.img reads back {text:?}"));
            }
            // The read-only disk: read, never write.
            let ro = check("read ro.img", fs::read(dir.join("ro.img")))?;
            if ro != b"read-only disk" {
                return Err(format!("ro.img reads back {ro:?}"));
            }
            expect_denied(
                "open ro.img for writing",
                OpenOptions::new().write(true).open(dir.join("ro.img")),
            )?;
            // Nothing else: other files, new files, listing, removing, executing.
            expect_denied("read secret.txt", fs::read(dir.join("secret.txt")))?;
            expect_denied("read /etc/passwd", fs::read("/etc/passwd"))?;
            expect_denied("create new.img", File::create(dir.join("new.img")))?;
            expect_denied("list the directory", fs::read_dir(&dir))?;
            expect_denied("remove rw.img", fs::remove_file(dir.join("rw.img")))?;
            expect_denied(
                "rename rw.img",
                fs::rename(dir.join("rw.img"), dir.join("moved.img")),
            )?;
            expect_denied("execute tool", Command::new(dir.join("tool")).status())?;
            expect_denied("execute /bin/true", Command::new("/bin/true").status())?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
    // The sandbox really wrote, and really created nothing.
    assert_eq!(
        fs::read(dir.path().join("rw.img")).unwrap(),
        b"WRITABLE disk"
    );
    assert!(!dir.path().join("new.img").exists());
}

#[test]
fn landlock_lets_vsock_reach_unix_listeners_but_create_none() {
    let Some(abi) = kernel_landlock_abi() else {
        eprintln!("SKIP: this kernel has no Landlock");
        return;
    };
    eprintln!("kernel Landlock ABI {abi}");
    let dir = tempfile::tempdir().unwrap();
    // A host service listening at PATH_P, as vsock's guest-initiated streams expect.
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
    let dir_path = dir.path().to_path_buf();
    let output = run_isolated(
        "landlock_lets_vsock_reach_unix_listeners_but_create_none",
        |cmd| {
            cmd.env(DIR_ENV, &dir_path);
        },
        || {
            let dir = test_dir();
            lock_down_process(&SandboxConfig::default(), &[]).map_err(|e| e.to_string())?;
            check(
                "connect to PATH_52",
                std::os::unix::net::UnixStream::connect(dir.join("v.sock_52")),
            )?;
            expect_denied(
                "bind a new socket",
                std::os::unix::net::UnixListener::bind(dir.join("new.sock")),
            )?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn landlock_rejects_a_missing_disk_with_its_name() {
    // The error comes from opening the path, before anything is restricted.
    let err = restrict_filesystem(&[FsAccess {
        path: PathBuf::from("/nonexistent/volt-disk.img"),
        writable: true,
    }])
    .unwrap_err();
    assert!(matches!(err, SandboxError::LandlockPath { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/volt-disk.img"),
        "{err}"
    );
}

#[test]
fn lock_down_without_landlock_only_sets_no_new_privs() {
    let output = run_isolated(
        "lock_down_without_landlock_only_sets_no_new_privs",
        |_| {},
        || {
            let cfg = SandboxConfig {
                seccomp: SeccompMode::Kill,
                landlock: false,
            };
            let report = lock_down_process(&cfg, &[]).map_err(|e| e.to_string())?;
            if report.enforcement != LandlockEnforcement::NotEnforced || !report.no_new_privs {
                return Err(format!("landlock off but report says {report:?}"));
            }
            // no_new_privs is per thread: look at this one, not the thread-group leader.
            let status = check(
                "read /proc/thread-self/status",
                fs::read_to_string("/proc/thread-self/status"),
            )?;
            if !status
                .lines()
                .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"]))
            {
                return Err("NoNewPrivs is not 1".into());
            }
            // The file system is still open.
            check("read /etc/passwd", fs::read("/etc/passwd"))?;
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

#[test]
fn no_new_privs_is_set() {
    let output = run_isolated(
        "no_new_privs_is_set",
        |_| {},
        || {
            set_no_new_privs().map_err(|e| e.to_string())?;
            // SAFETY: plain prctl query.
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            if nnp != 1 {
                return Err(format!("PR_GET_NO_NEW_PRIVS returned {nnp}"));
            }
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

#[test]
fn inherited_descriptors_are_closed() {
    let leak = tempfile::tempfile().unwrap();
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let output = run_isolated(
        "inherited_descriptors_are_closed",
        |cmd| {
            // SAFETY: dup2 is async-signal-safe; it leaves LEAKED_FD open across exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(leak_fd, LEAKED_FD) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
        || {
            if !fd_is_open(LEAKED_FD) {
                return Err(format!(
                    "fd {LEAKED_FD} was not inherited: the test proves nothing"
                ));
            }
            close_inherited_fds().map_err(|e| e.to_string())?;
            if fd_is_open(LEAKED_FD) {
                return Err(format!("fd {LEAKED_FD} is still open"));
            }
            for std_fd in 0..3 {
                if !fd_is_open(std_fd) {
                    return Err(format!("standard fd {std_fd} was closed"));
                }
            }
            Ok(())
        },
    );
    assert_child_succeeded(&output);
}
