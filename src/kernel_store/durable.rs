//! Crash- and race-safe file primitives for the store: an exclusive `flock` lock file,
//! temp-file + fsync + rename writes, and streaming SHA-256.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::image::read_full;
use super::KernelStoreError;

/// Prefix of in-flight temp files; store names may not start with '.', so these never clash.
pub const TEMP_PREFIX: &str = ".tmp-";

/// An advisory `flock` held on a lock file until dropped (closing the fd releases it).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Blocks until this process holds the lock on `path` (created if missing), `exclusive`
    /// for writers, shared for readers.
    pub fn acquire(path: &Path, exclusive: bool) -> Result<Self, KernelStoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(KernelStoreError::io("cannot open lock file", path))?;
        let operation = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock on an fd we own; it touches no memory.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(StoreLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(KernelStoreError::io("cannot lock", path)(err));
            }
        }
    }
}

/// A file in `dir` with a unique name that is deleted on drop unless it was renamed away.
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
    persisted: bool,
}

impl TempFile {
    pub fn create_in(dir: &Path) -> Result<Self, KernelStoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "{TEMP_PREFIX}{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(KernelStoreError::io("cannot create temp file", path)(e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("temp file is open until persisted")
    }

    /// Flushes the data to disk and atomically renames the file to `target`, then syncs the
    /// directory so the rename itself survives a crash.
    pub fn persist(mut self, target: &Path) -> Result<(), KernelStoreError> {
        let file = self.file.take().expect("temp file is open until persisted");
        file.sync_all()
            .map_err(KernelStoreError::io("cannot fsync", &self.path))?;
        drop(file);
        fs::rename(&self.path, target)
            .map_err(KernelStoreError::io("cannot rename temp file to", target))?;
        self.persisted = true;
        sync_parent_dir(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Deletes this store's temp files in `dir` older than `age` (left behind by a crash).
/// Best effort: a failure here must not fail the operation that triggered the sweep.
pub fn remove_stale_temp_files(dir: &Path, age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_temp = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
        let is_stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|elapsed| elapsed > age);
        if is_temp && is_stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// fsyncs the directory holding `path`, making a rename or unlink in it durable.
pub fn sync_parent_dir(path: &Path) -> Result<(), KernelStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(KernelStoreError::io("cannot fsync directory", dir))
}

/// Writes `contents` to `target` atomically: readers see the old or the new file, never half.
pub fn write_atomically(target: &Path, contents: &[u8]) -> Result<(), KernelStoreError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut temp = TempFile::create_in(dir)?;
    let temp_path = temp.path().to_path_buf();
    temp.file()
        .write_all(contents)
        .map_err(KernelStoreError::io("cannot write", temp_path))?;
    temp.persist(target)
}

/// A lowercase hex SHA-256 digest and the number of bytes hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digested {
    pub sha256: String,
    pub size: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `reader` into the hash, and into `sink` when given.
pub fn hash_stream(reader: &mut impl Read, mut sink: Option<&mut File>) -> io::Result<Digested> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = read_full(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(sink) = sink.as_deref_mut() {
            sink.write_all(&buf[..n])?;
        }
        size += n as u64;
    }
    Ok(Digested {
        sha256: hex(&hasher.finalize()),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        let d = hash_stream(&mut &b"abc"[..], None).unwrap();
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.size, 3);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("meta.json");
        write_atomically(&target, b"one").unwrap();
        write_atomically(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("meta.json")]);
    }

    #[test]
    fn only_stale_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old_temp = dir.path().join(format!("{TEMP_PREFIX}old"));
        let fresh_temp = dir.path().join(format!("{TEMP_PREFIX}fresh"));
        let old_image = dir.path().join("kernel-0123");
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [&old_temp, &fresh_temp, &old_image] {
            File::create(path).unwrap();
        }
        for path in [&old_temp, &old_image] {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.set_modified(two_hours_ago).unwrap();
        }
        remove_stale_temp_files(dir.path(), Duration::from_secs(3600));
        assert!(!old_temp.exists());
        assert!(fresh_temp.exists());
        assert!(old_image.exists(), "only temp files may be swept");
    }

    #[test]
    fn dropped_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFile::create_in(dir.path()).unwrap();
        let path = temp.path().to_path_buf();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn exclusive_lock_excludes_another_open_file_description() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join(".lock");
        let held = StoreLock::acquire(&lock_path, true).unwrap();
        // A second description must not get the lock while the first holds it.
        let other = File::open(&lock_path).unwrap();
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1, "lock was not exclusive");
        drop(held);
        // SAFETY: as above.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "lock was not released on drop");
    }
}
