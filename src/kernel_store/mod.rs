//! The local store of guest kernels behind `volt kernel add|list|rm|default|verify` and
//! `volt --kernel NAME`.
//!
//! Layout of a store directory:
//! - `kernels.json`: metadata ([`StoreMetadata`]), replaced atomically (temp + fsync + rename);
//! - `images/<name>-<sha256 prefix>`: the copied images, written the same way;
//! - `.lock`: `flock`ed exclusively by every writer around read-modify-write of the metadata.
//!
//! The metadata rename is the single commit point of every change: an image file is renamed
//! into place before the metadata names it, and an old image is deleted only after the
//! metadata stopped naming it, so a crash leaves at worst an unreferenced file.

mod cli;
mod durable;
mod error;
pub mod image;
mod metadata;
mod naming;
mod resolve;
mod time;

use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use cli::{run_kernel_command, KernelArgs, KernelCommand};
pub use error::KernelStoreError;
pub use image::{detect_format, ImageInfo, KernelFormat};
pub use metadata::{KernelEntry, StoreMetadata};
pub use naming::validate_name;
pub use resolve::{resolve_kernel, resolve_kernel_file, ResolvedKernel};

use durable::{hash_stream, StoreLock, TempFile};
use naming::derive_name;

/// Environment variable naming the store directory (overridden by `--store`).
pub const STORE_ENV: &str = "VOLT_KERNEL_STORE";
const METADATA_FILE: &str = "kernels.json";
const LOCK_FILE: &str = ".lock";
const IMAGES_DIR: &str = "images";
/// Temp files this old were left by a crashed `add`; no live add takes an hour to copy.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Options of [`KernelStore::add`].
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Store name; derived from the file name or version when `None`.
    pub name: Option<String>,
    /// Replace an existing kernel of the same name instead of failing.
    pub force: bool,
    /// Also make the new kernel the default.
    pub make_default: bool,
}

/// The result of [`KernelStore::remove`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub entry: KernelEntry,
    /// The removed kernel was the default, so the store has no default now.
    pub cleared_default: bool,
}

/// The health of one stored image as found by [`KernelStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyStatus {
    Ok,
    Corrupt {
        actual_sha256: String,
        actual_size: u64,
    },
    Missing,
    Unreadable {
        error: String,
    },
}

/// One line of a verify report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub name: String,
    pub path: PathBuf,
    pub expected_sha256: String,
    pub status: VerifyStatus,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.status == VerifyStatus::Ok
    }
}

/// Picks the store directory from `VOLT_KERNEL_STORE`, `XDG_DATA_HOME` and `HOME`, in that
/// order (a relative `XDG_DATA_HOME` is ignored, as the XDG spec says).
fn store_dir_from(
    volt_store: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(volt_store) {
        return Some(dir);
    }
    if let Some(xdg) = non_empty(xdg_data_home).filter(|p| p.is_absolute()) {
        return Some(xdg.join("volt/kernels"));
    }
    non_empty(home).map(|home| home.join(".local/share/volt/kernels"))
}

/// The store directory used when no `--store` is given.
pub fn default_store_dir() -> Result<PathBuf, KernelStoreError> {
    store_dir_from(
        env::var_os(STORE_ENV),
        env::var_os("XDG_DATA_HOME"),
        env::var_os("HOME"),
    )
    .ok_or(KernelStoreError::NoStoreDir)
}

/// A kernel store rooted at one directory. Opening does no I/O; the directory is created by
/// the first `add`, and a missing directory reads as an empty store.
#[derive(Clone, Debug)]
pub struct KernelStore {
    dir: PathBuf,
}

impl KernelStore {
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        KernelStore { dir: dir.into() }
    }

    /// Opens the store chosen by the environment (see [`default_store_dir`]).
    pub fn open_default() -> Result<Self, KernelStoreError> {
        default_store_dir().map(Self::open)
    }

    /// Opens `dir` when given (a `--store` flag), else the default store.
    pub fn open_or_default(dir: Option<PathBuf>) -> Result<Self, KernelStoreError> {
        match dir {
            Some(dir) => Ok(Self::open(dir)),
            None => Self::open_default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn metadata_path(&self) -> PathBuf {
        self.dir.join(METADATA_FILE)
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.join(IMAGES_DIR)
    }

    /// Where the image of `entry` lives.
    pub fn image_path(&self, entry: &KernelEntry) -> PathBuf {
        self.images_dir().join(&entry.file)
    }

    /// Takes the writers' lock, creating the store directory if needed.
    fn lock_for_writing(&self) -> Result<StoreLock, KernelStoreError> {
        fs::create_dir_all(&self.dir).map_err(KernelStoreError::io(
            "cannot create store directory",
            &self.dir,
        ))?;
        StoreLock::acquire(&self.dir.join(LOCK_FILE), true)
    }

    /// Takes a shared lock so no writer deletes an image while we read it. Best effort: the
    /// metadata is replaced atomically, so readers are correct without it, and a missing or
    /// read-only store must still be readable.
    fn lock_for_reading(&self) -> Option<StoreLock> {
        StoreLock::acquire(&self.dir.join(LOCK_FILE), false).ok()
    }

    fn load(&self) -> Result<StoreMetadata, KernelStoreError> {
        StoreMetadata::load(&self.metadata_path())
    }

    fn unknown(&self, name: &str) -> KernelStoreError {
        KernelStoreError::UnknownKernel {
            name: name.to_string(),
            store: self.dir.clone(),
        }
    }

    /// Copies the kernel image at `source` into the store and records it.
    pub fn add(&self, source: &Path, options: AddOptions) -> Result<KernelEntry, KernelStoreError> {
        let source_meta =
            fs::metadata(source).map_err(KernelStoreError::io("cannot read", source))?;
        if !source_meta.is_file() {
            return Err(KernelStoreError::NotAKernel {
                path: source.to_path_buf(),
                reason: image::NotAKernel::NotARegularFile,
            });
        }
        // Reject non-kernels and bad names before copying anything.
        image::check_header(source)?;
        if let Some(name) = &options.name {
            validate_name(name)?;
            if !options.force && self.load()?.get(name).is_some() {
                return Err(self.name_exists(name));
            }
        }

        let images_dir = self.images_dir();
        fs::create_dir_all(&images_dir).map_err(KernelStoreError::io(
            "cannot create store directory",
            &images_dir,
        ))?;
        let mut temp = TempFile::create_in(&images_dir)?;
        let mut input = File::open(source).map_err(KernelStoreError::io("cannot open", source))?;
        let temp_path = temp.path().to_path_buf();
        let digest = hash_stream(&mut input, Some(temp.file()))
            .map_err(KernelStoreError::io("cannot copy kernel to", &temp_path))?;
        // Inspect our private copy so the recorded format and version match the stored bytes.
        let info = image::inspect(&temp_path).map_err(|e| match e {
            KernelStoreError::NotAKernel { reason, .. } => KernelStoreError::NotAKernel {
                path: source.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        let name = match options.name {
            Some(name) => name,
            None => derive_name(source, &info)?,
        };
        let entry = KernelEntry {
            file: format!("{name}-{}", &digest.sha256[..16]),
            name,
            format: info.format,
            version: info.release().map(str::to_string),
            version_string: info.version_string.clone(),
            size: digest.size,
            sha256: digest.sha256,
            added: time::rfc3339_utc(SystemTime::now()),
            source: fs::canonicalize(source)
                .unwrap_or_else(|_| source.to_path_buf())
                .to_string_lossy()
                .into_owned(),
        };

        let _lock = self.lock_for_writing()?;
        let mut meta = self.load()?;
        if !options.force && meta.get(&entry.name).is_some() {
            return Err(self.name_exists(&entry.name));
        }
        temp.persist(&self.image_path(&entry))?;
        if options.make_default {
            meta.default = Some(entry.name.clone());
        }
        let replaced = meta.upsert(entry.clone());
        meta.save(&self.metadata_path())?;
        if let Some(old) = replaced.filter(|old| old.file != entry.file) {
            self.delete_image(&old)?;
        }
        durable::remove_stale_temp_files(&images_dir, STALE_TEMP_AGE);
        durable::remove_stale_temp_files(&self.dir, STALE_TEMP_AGE);
        Ok(entry)
    }

    fn name_exists(&self, name: &str) -> KernelStoreError {
        KernelStoreError::NameExists {
            name: name.to_string(),
            store: self.dir.clone(),
        }
    }

    fn delete_image(&self, entry: &KernelEntry) -> Result<(), KernelStoreError> {
        let path = self.image_path(entry);
        match fs::remove_file(&path) {
            Ok(()) => durable::sync_parent_dir(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KernelStoreError::io("cannot remove", path)(e)),
        }
    }

    /// All kernels, sorted by name.
    pub fn list(&self) -> Result<Vec<KernelEntry>, KernelStoreError> {
        Ok(self.load()?.kernels)
    }

    /// The whole metadata (kernels and default) as one consistent snapshot.
    pub fn snapshot(&self) -> Result<StoreMetadata, KernelStoreError> {
        self.load()
    }

    /// The kernel called `name`.
    pub fn get(&self, name: &str) -> Result<KernelEntry, KernelStoreError> {
        self.load()?
            .get(name)
            .cloned()
            .ok_or_else(|| self.unknown(name))
    }

    /// Removes `name` and its image; removing the default leaves no default.
    pub fn remove(&self, name: &str) -> Result<Removed, KernelStoreError> {
        validate_name(name)?;
        let _lock = self.lock_for_writing()?;
        let mut meta = self.load()?;
        let was_default = meta.default.as_deref() == Some(name);
        let entry = meta.remove(name).ok_or_else(|| self.unknown(name))?;
        meta.save(&self.metadata_path())?;
        self.delete_image(&entry)?;
        Ok(Removed {
            entry,
            cleared_default: was_default,
        })
    }

    /// Makes `name` the kernel used when `--kernel` is not given.
    pub fn set_default(&self, name: &str) -> Result<(), KernelStoreError> {
        validate_name(name)?;
        let _lock = self.lock_for_writing()?;
        let mut meta = self.load()?;
        if meta.get(name).is_none() {
            return Err(self.unknown(name));
        }
        meta.default = Some(name.to_string());
        meta.save(&self.metadata_path())
    }

    /// The default kernel's name, if one is set.
    pub fn default(&self) -> Result<Option<String>, KernelStoreError> {
        Ok(self.load()?.default)
    }

    /// Hashes the image of `entry` through one open file, returned (rewound) when it matches.
    fn check(&self, entry: &KernelEntry) -> (VerifyReport, Option<File>) {
        let path = self.image_path(entry);
        let hashed = File::open(&path).and_then(|mut file| {
            let digest = hash_stream(&mut file, None)?;
            file.seek(SeekFrom::Start(0))?;
            Ok((digest, file))
        });
        let (status, file) = match hashed {
            Ok((d, file)) if d.sha256 == entry.sha256 && d.size == entry.size => {
                (VerifyStatus::Ok, Some(file))
            }
            Ok((d, _)) => (
                VerifyStatus::Corrupt {
                    actual_sha256: d.sha256,
                    actual_size: d.size,
                },
                None,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (VerifyStatus::Missing, None),
            Err(e) => (
                VerifyStatus::Unreadable {
                    error: e.to_string(),
                },
                None,
            ),
        };
        let report = VerifyReport {
            name: entry.name.clone(),
            path,
            expected_sha256: entry.sha256.clone(),
            status,
        };
        (report, file)
    }

    /// Re-hashes `name` (or every kernel) against the recorded SHA-256.
    pub fn verify(&self, name: Option<&str>) -> Result<Vec<VerifyReport>, KernelStoreError> {
        let _lock = self.lock_for_reading();
        let meta = self.load()?;
        match name {
            Some(name) => {
                let entry = meta.get(name).ok_or_else(|| self.unknown(name))?;
                Ok(vec![self.check(entry).0])
            }
            None => Ok(meta.kernels.iter().map(|e| self.check(e).0).collect()),
        }
    }

    /// The image path of `name` after checking its SHA-256; corrupt or missing images are
    /// refused.
    pub fn verified_path(&self, name: &str) -> Result<PathBuf, KernelStoreError> {
        self.open_verified(name).map(|kernel| kernel.path)
    }

    /// Opens the image of `name` and checks its SHA-256 through that same open file, so the
    /// bytes the caller reads are the bytes that were verified (images are only ever replaced
    /// by rename, never rewritten in place).
    pub fn open_verified(&self, name: &str) -> Result<ResolvedKernel, KernelStoreError> {
        let _lock = self.lock_for_reading();
        let entry = self.get(name)?;
        let (report, file) = self.check(&entry);
        match (report.status, file) {
            (VerifyStatus::Ok, Some(file)) => Ok(ResolvedKernel {
                path: report.path,
                file,
                entry: Some(entry),
            }),
            (
                VerifyStatus::Corrupt {
                    actual_sha256,
                    actual_size,
                },
                _,
            ) => Err(KernelStoreError::Corrupt {
                name: entry.name,
                path: report.path,
                expected: entry.sha256,
                actual: actual_sha256,
                expected_size: entry.size,
                actual_size,
            }),
            (VerifyStatus::Missing, _) => Err(KernelStoreError::MissingImage {
                name: entry.name,
                path: report.path,
            }),
            (VerifyStatus::Unreadable { error }, _) => Err(KernelStoreError::UnreadableImage {
                name: entry.name,
                path: report.path,
                error,
            }),
            (VerifyStatus::Ok, None) => unreachable!("a verified image always comes with its file"),
        }
    }

    /// See [`resolve_kernel`].
    pub fn resolve(&self, arg: Option<&str>) -> Result<PathBuf, KernelStoreError> {
        resolve_kernel(arg, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            store_dir_from(s("/v"), s("/x"), s("/h")),
            Some(PathBuf::from("/v"))
        );
        assert_eq!(
            store_dir_from(None, s("/x"), s("/h")),
            Some(PathBuf::from("/x/volt/kernels"))
        );
        assert_eq!(
            store_dir_from(s(""), s("relative"), s("/h")),
            Some(PathBuf::from("/h/.local/share/volt/kernels"))
        );
        assert_eq!(store_dir_from(None, None, None), None);
    }
}
