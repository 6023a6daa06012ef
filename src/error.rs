//! Every way `volt` can fail, kept typed from where it happens up to `main`, which prints the
//! message with its chain of causes.

use std::error::Error as _;
use std::io;
use std::path::PathBuf;

use crate::api::{ApiSocketError, SpecError};
use crate::event_loop::VmExit;
use crate::kernel_store::KernelStoreError;
use crate::sandbox::SandboxError;
use crate::snapshot::dir::SnapshotDirError;
use crate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    KernelStore(#[from] KernelStoreError),
    #[error(transparent)]
    ApiSocket(#[from] ApiSocketError),
    #[error("the API loop failed")]
    ApiLoop(#[source] io::Error),
    #[error("cannot print the seccomp allow-lists")]
    PrintSeccomp(#[source] io::Error),
    #[error("cannot read the config file {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The config file's JSON or its values are wrong.
    #[error("config file {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error(transparent)]
    SnapshotDir(#[from] SnapshotDirError),
    #[error("the guest stopped abnormally: {0:?}")]
    GuestFailed(VmExit),
}

impl Error {
    /// The message and every cause below it that it does not already spell out, joined by
    /// ": " - what `main` prints.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(error) = cause {
            let line = error.to_string();
            if !text.contains(&line) {
                text.push_str(": ");
                text.push_str(&line);
            }
            cause = error.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_adds_causes_the_message_does_not_already_name() {
        let read = Error::ReadConfig {
            path: PathBuf::from("/x/vm.json"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(
            read.report(),
            "cannot read the config file /x/vm.json: entity not found"
        );
        let wrapped = Error::Vm(VmError::OpenFile {
            what: "disk",
            path: PathBuf::from("/d.img"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(
            wrapped.report(),
            "cannot open disk /d.img: entity not found",
            "a cause already in the message is not repeated"
        );
    }
}
