//! `--vsock CID,PATH`: the flag's value and its checks. The device itself is
//! `devices::virtio::Vsock`; its listening socket at `PATH` is created while the VM is built,
//! before the sandbox applies.

use std::path::PathBuf;

use devices::virtio::{Vsock, VsockError};

/// Longest `PATH`: `PATH_<port>` (up to 11 more bytes) must still fit a Unix socket address.
pub const MAX_VSOCK_PATH: usize = 107 - "_4294967295".len();

/// A virtio-vsock device: the guest's CID and the host Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub path: PathBuf,
}

impl VsockConfig {
    /// Creates the device and its listening socket at `path`.
    pub fn build(&self) -> Result<Vsock, VsockError> {
        Vsock::new(self.cid, &self.path)
    }
}

/// Parses `CID,PATH` (also `cid=CID,path=PATH`).
pub fn parse_vsock(value: &str) -> Result<VsockConfig, String> {
    let usage = "--vsock needs CID,PATH (e.g. 3,/run/volt/v.sock)";
    let (cid, path) = value.split_once(',').ok_or(usage)?;
    let cid = cid.strip_prefix("cid=").unwrap_or(cid);
    let path = path.strip_prefix("path=").unwrap_or(path);
    let cid: u64 = cid
        .trim()
        .parse()
        .map_err(|_| format!("'{cid}' is not a vsock CID; {usage}"))?;
    let (min, max) = (
        devices::virtio::VSOCK_MIN_GUEST_CID,
        devices::virtio::VSOCK_MAX_GUEST_CID,
    );
    if !(min..=max).contains(&cid) {
        return Err(format!(
            "vsock CID {cid} is reserved: a guest CID is {min} to {max} (0-2 are the hypervisor, local and host)"
        ));
    }
    if path.is_empty() {
        return Err(usage.to_string());
    }
    if path.len() > MAX_VSOCK_PATH {
        return Err(format!(
            "vsock path '{path}' is {} bytes; at most {MAX_VSOCK_PATH} fit a Unix socket address with the _PORT suffix",
            path.len()
        ));
    }
    Ok(VsockConfig {
        cid,
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cid_and_path() {
        let want = VsockConfig {
            cid: 3,
            path: "/tmp/v.sock".into(),
        };
        assert_eq!(parse_vsock("3,/tmp/v.sock").unwrap(), want);
        assert_eq!(parse_vsock("cid=3,path=/tmp/v.sock").unwrap(), want);
        assert_eq!(parse_vsock("3,/a,b").unwrap().path, PathBuf::from("/a,b"));
    }

    #[test]
    fn refuses_reserved_cids_and_bad_paths() {
        for (bad, needle) in [
            ("2,/tmp/v", "reserved"),
            ("0,/tmp/v", "reserved"),
            ("4294967295,/tmp/v", "reserved"),
            ("x,/tmp/v", "not a vsock CID"),
            ("3", "CID,PATH"),
            ("3,", "CID,PATH"),
        ] {
            let err = parse_vsock(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = format!("3,/{}", "a".repeat(MAX_VSOCK_PATH));
        assert!(parse_vsock(&long).unwrap_err().contains("at most"));
    }
}
