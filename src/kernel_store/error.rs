//! Everything that can go wrong in the kernel store, each error naming the thing at fault.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// An error from a kernel store operation.
#[derive(Debug, Error)]
pub enum KernelStoreError {
    #[error("invalid kernel name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("kernel `{name}` already exists in store {store} (use --force to replace it)")]
    NameExists { name: String, store: PathBuf },

    #[error("no kernel named `{name}` in store {store}")]
    UnknownKernel { name: String, store: PathBuf },

    #[error("`{arg}` is neither an existing file nor a kernel in store {store}")]
    UnresolvedKernel { arg: String, store: PathBuf },

    #[error("kernel file {path} does not exist")]
    KernelFileNotFound { path: PathBuf },

    #[error("{path} is not a kernel image: {reason}")]
    NotAKernel {
        path: PathBuf,
        reason: super::image::NotAKernel,
    },

    #[error(
        "kernel `{name}` is corrupt: {path} has sha256 {actual} (size {actual_size}), \
         expected {expected} (size {expected_size})"
    )]
    Corrupt {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },

    #[error("kernel `{name}` is missing its image file {path}")]
    MissingImage { name: String, path: PathBuf },

    #[error("cannot read the image of kernel `{name}` ({path}): {error}")]
    UnreadableImage {
        name: String,
        path: PathBuf,
        error: String,
    },

    #[error("no default kernel set in store {store} (use `volt kernel default NAME` or --kernel)")]
    NoDefaultKernel { store: PathBuf },

    #[error("cannot derive a kernel name from {path}; pass --name NAME")]
    CannotDeriveName { path: PathBuf },

    #[error(
        "cannot locate the kernel store: set VOLT_KERNEL_STORE, XDG_DATA_HOME or HOME, or pass --store"
    )]
    NoStoreDir,

    #[error("kernel store metadata {path} is unreadable: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("kernel store metadata {path} is invalid: {reason}")]
    InvalidMetadata { path: PathBuf, reason: String },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl KernelStoreError {
    /// Wraps an I/O error with what we were doing and to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| KernelStoreError::Io {
            action,
            path,
            source,
        }
    }
}
