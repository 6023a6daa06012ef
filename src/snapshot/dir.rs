//! Where snapshots may be written: one directory given at start (`--snapshot-dir`), opened
//! before the sandbox closes. Files are created with `openat` relative to it, which is all the
//! event loop's seccomp filter allows (`openat` on that directory fd only), and Landlock lets
//! the process create and write files beneath it and nowhere else.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use super::SnapshotError;

struct SnapshotDir {
    path: PathBuf,
    fd: OwnedFd,
}

static SNAPSHOT_DIR: OnceLock<SnapshotDir> = OnceLock::new();

/// Why `--snapshot-dir` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDirError {
    #[error("snapshot directory {path}: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("snapshot directory {0} has a NUL byte")]
    NulByte(PathBuf),
    #[error("cannot open snapshot directory {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshot directory is already set")]
    AlreadySet,
}

/// Opens the snapshot directory; call once, before the sandbox is applied. Returns its fd
/// (for the seccomp rule) and canonical path (for the Landlock rule).
pub fn open_snapshot_dir(path: &Path) -> Result<(RawFd, PathBuf), SnapshotDirError> {
    let canonical = path
        .canonicalize()
        .map_err(|source| SnapshotDirError::Resolve {
            path: path.to_path_buf(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(SnapshotDirError::NotADirectory(path.to_path_buf()));
    }
    let c_path = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| SnapshotDirError::NulByte(path.to_path_buf()))?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SnapshotDirError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    SNAPSHOT_DIR
        .set(SnapshotDir {
            path: canonical.clone(),
            fd,
        })
        .map_err(|_| SnapshotDirError::AlreadySet)?;
    Ok((raw, canonical))
}

/// `path` relative to the snapshot directory: a relative path is taken as inside it, an
/// absolute one must lie inside it. No `..`.
fn relative_name(dir: &Path, path: &Path) -> Result<PathBuf, SnapshotError> {
    let relative = if path.is_absolute() {
        path.strip_prefix(dir).map_err(|_| {
            SnapshotError::Path(format!(
                "{} is outside the snapshot directory {}",
                path.display(),
                dir.display()
            ))
        })?
    } else {
        path
    };
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if relative.as_os_str().is_empty() || !plain {
        return Err(SnapshotError::Path(format!(
            "{} must name a file inside the snapshot directory {} (no '..')",
            path.display(),
            dir.display()
        )));
    }
    Ok(relative.to_path_buf())
}

/// Creates (or truncates) `path` inside the snapshot directory, owner-only.
pub fn create_file(path: &Path) -> Result<File, SnapshotError> {
    let dir = SNAPSHOT_DIR.get().ok_or_else(|| {
        SnapshotError::Path(
            "snapshots are not enabled: start volt with --snapshot-dir DIR".to_string(),
        )
    })?;
    let name = relative_name(&dir.path, path)?;
    let c_name = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| SnapshotError::Path(format!("{} has a NUL byte", path.display())))?;
    // SAFETY: a valid directory fd and NUL-terminated relative name; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            dir.fd.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )
    };
    if fd < 0 {
        return Err(SnapshotError::Io {
            what: "create",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_stay_inside_the_directory() {
        let dir = Path::new("/srv/snaps");
        assert_eq!(
            relative_name(dir, Path::new("vm.state")).unwrap(),
            PathBuf::from("vm.state")
        );
        assert_eq!(
            relative_name(dir, Path::new("/srv/snaps/a/vm.mem")).unwrap(),
            PathBuf::from("a/vm.mem")
        );
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "/srv/snaps"] {
            assert!(relative_name(dir, Path::new(bad)).is_err(), "{bad}");
        }
    }
}
