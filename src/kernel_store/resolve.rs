//! `volt --kernel ARG`: a file path, a store name, or (without ARG) the default kernel.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{validate_name, KernelEntry, KernelStore, KernelStoreError};

/// A kernel chosen by `--kernel` (or the default), opened for loading.
#[derive(Debug)]
pub struct ResolvedKernel {
    pub path: PathBuf,
    /// Open at offset 0; for store kernels, the very file whose SHA-256 was checked.
    pub file: File,
    /// The store record, when the kernel came from the store.
    pub entry: Option<KernelEntry>,
}

/// Turns a `--kernel` value into an image path to boot.
///
/// - A value containing '/' or naming an existing file is a path and is returned as is.
/// - Otherwise it is a store name, whose image is verified (SHA-256) before it is returned.
/// - Without `--kernel`, the store's default kernel is used, verified the same way.
pub fn resolve_kernel(arg: Option<&str>, store: &KernelStore) -> Result<PathBuf, KernelStoreError> {
    resolve_kernel_file(arg, store).map(|kernel| kernel.path)
}

/// Like [`resolve_kernel`], but also hands back the opened image; loading from this file
/// rather than reopening the path closes the window between verification and use.
pub fn resolve_kernel_file(
    arg: Option<&str>,
    store: &KernelStore,
) -> Result<ResolvedKernel, KernelStoreError> {
    let Some(arg) = arg else {
        let name = store
            .default()?
            .ok_or_else(|| KernelStoreError::NoDefaultKernel {
                store: store.dir().to_path_buf(),
            })?;
        return store.open_verified(&name);
    };
    let path = Path::new(arg);
    if path.is_file() {
        let file = File::open(path).map_err(KernelStoreError::io("cannot open", path))?;
        return Ok(ResolvedKernel {
            path: path.to_path_buf(),
            file,
            entry: None,
        });
    }
    if arg.contains('/') {
        return Err(if path.exists() {
            KernelStoreError::NotAKernel {
                path: path.to_path_buf(),
                reason: super::image::NotAKernel::NotARegularFile,
            }
        } else {
            KernelStoreError::KernelFileNotFound {
                path: path.to_path_buf(),
            }
        });
    }
    let unresolved = || KernelStoreError::UnresolvedKernel {
        arg: arg.to_string(),
        store: store.dir().to_path_buf(),
    };
    if validate_name(arg).is_err() {
        return Err(unresolved());
    }
    match store.open_verified(arg) {
        Err(KernelStoreError::UnknownKernel { .. }) => Err(unresolved()),
        other => other,
    }
}
